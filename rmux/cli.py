# -*- test-case-name: tests.test_packaging -*-
"""
The C{rmux} command: C{twistd -n rmux}, under the name operators know.

C{rmux --socket=/tmp/rmux.sock --tcpConnections="..."} runs rmux in the
foreground, logging to stdout, as Go rmux did and as a systemd unit or a
container wants.  It takes every option of C{twistd rmux} and a few of
twistd's own (L{TWISTD_OPTIONS}); for the rest of twistd's (daemonizing,
C{--uid}, C{--chroot}) run C{twistd rmux} itself.

The command parses its options once, with L{CommandOptions}, a subclass
of L{rmux.tap.Options}, so that C{--help}, C{--version}, C{--checkConfig}
and errors come out under its own name.  It then runs twistd's
application runner with those very options, handed over as twistd's
C{rmux} subcommand (L{_TwistdOptions}), so that what runs is exactly
what C{twistd -n rmux} runs.  twistd's plugin search, and with it the
plugin cache (C{dropin.cache}), is not involved: the command works
whether or not the twistd plugin is installed where Twisted looks.
It does bring the cache up to date for C{twistd rmux}, when it may
(L{refreshPluginCache}).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from zope.interface import implementer

from twisted.application.service import IServiceMaker
from twisted.python import usage

from rmux import tap

__all__ = ["CommandOptions", "TWISTD_OPTIONS", "main", "refreshPluginCache"]

TWISTD_OPTIONS = ("pidfile", "logfile", "syslog", "prefix", "umask", "reactor")
"""
The options of twistd that the C{rmux} command passes on to it.
"""


class CommandOptions(tap.Options):
    """
    The options of the C{rmux} command: all of C{twistd rmux}'s, and
    L{TWISTD_OPTIONS}, which L{twistdArguments} turns back into twistd's
    command line.
    """

    synopsis = "Usage: rmux [options]"

    longdesc = (
        "A Redis connection pooler and key-hashing proxy, compatible with "
        "Pardot's Go rmux, in the foreground: "
        'rmux --socket=/tmp/rmux.sock --tcpConnections="redis1:6379 redis2:6379". '
        "It is twistd -n rmux under a shorter name; for what the twistd "
        "options here do not cover (daemonizing, --uid, --chroot), run "
        "twistd rmux.\n\n" + tap.Options.longdesc.split("\n\n", 1)[1]
    )

    helpGroups = tap.Options.helpGroups + (("Passed on to twistd", TWISTD_OPTIONS),)

    optFlags = [
        [
            "syslog",
            None,
            "Log to syslog instead of --logfile, all of it at one priority "
            "(twistd's --syslog); --useSyslog is rmux's copy by level.",
        ],
    ]

    optParameters = [
        [
            "pidfile",
            None,
            None,
            "Write the process id to this file. Default: none (twistd's "
            "default, twistd.pid in the current directory, would stop a second "
            "rmux started there).",
        ],
        [
            "logfile",
            None,
            None,
            "Log to this file instead of stdout ('-'); twistd rotates it "
            "by size and on SIGUSR1.",
        ],
        ["prefix", None, "rmux", "The syslog identity for --syslog."],
        ["umask", None, None, "The file creation mask, in octal (twistd's --umask)."],
        ["reactor", None, None, "The reactor to run on (twistd --help-reactors); default: twistd's."],
    ]

    def twistdArguments(self) -> list[str]:
        """
        twistd's command line, up to the subcommand: in the foreground, and
        the L{TWISTD_OPTIONS} given.
        """
        arguments = ["--nodaemon", f"--pidfile={self['pidfile'] or ''}"]
        if self["syslog"]:
            arguments.append("--syslog")
        for name in ("logfile", "prefix", "umask", "reactor"):
            if self[name] is not None:
                arguments.append(f"--{name}={self[name]}")
        return arguments


@implementer(IServiceMaker)
class _ParsedServiceMaker:
    """
    The rmux service maker, for twistd's C{rmux} subcommand, with options
    already parsed: twistd's parse of an empty argument list for them only
    validates them again.
    """

    tapname = "rmux"
    description = "Redis connection pooler and key-hashing proxy."

    def __init__(self, options: CommandOptions) -> None:
        self._options = options

    def options(self) -> CommandOptions:
        return self._options

    def makeService(self, options: CommandOptions):
        return tap.makeService(options)


def _twistdServerOptions():
    """
    twistd's L{ServerOptions} for this platform, imported late: it imports
    much of Twisted, which C{--help} and C{--checkConfig} do not need.
    """
    from twisted.scripts.twistd import ServerOptions

    return ServerOptions


def _twistdOptionsFor(options: CommandOptions):
    """
    twistd's options for running C{rmux} with C{options}, parsed.
    """
    ServerOptions = _twistdServerOptions()

    class _TwistdOptions(ServerOptions):
        """
        twistd's options with one subcommand, rmux, whose options are
        C{options}: no plugin search, no plugin cache.
        """

        def _getPlugins(self, interface):
            return [_ParsedServiceMaker(options)]

    serverOptions = _TwistdOptions()
    serverOptions.parseOptions(options.twistdArguments() + ["rmux"])
    return serverOptions


def refreshPluginCache() -> bool:
    """
    Bring Twisted's plugin cache up to date, if this process may write it.

    C{pip install} puts C{rmux_plugin.py} into C{twisted/plugins} but
    cannot regenerate that directory's C{dropin.cache} (wheels have no
    post-install step).  Twisted notices a stale cache and reads the plugin
    modules again, so C{twistd rmux} works regardless; but only a process
    that may write the directory can save the result, and any other logs
    "Unable to write to plugin cache" at every start.  So the first C{rmux}
    run by the user who installed rmux (C{rmux --help} will do) saves it,
    as does C{python -c "from twisted.plugin import IPlugin, getPlugins;
    list(getPlugins(IPlugin))"}.  Other users skip this, silently: the
    command itself never searches for plugins.

    @return: Whether the cache was brought up to date.
    """
    import twisted.plugins
    from twisted.plugin import IPlugin, getPlugins

    directories = [path for path in twisted.plugins.__path__ if os.path.isdir(path)]
    if not directories or not all(os.access(path, os.W_OK) for path in directories):
        return False
    list(getPlugins(IPlugin, twisted.plugins))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the C{rmux} command.

    @param argv: The arguments, without the program name; C{sys.argv[1:]}
        if L{None}.
    @return: The exit status, when rmux has stopped.  C{--help},
        C{--version} and C{--checkConfig} exit through L{SystemExit}.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    refreshPluginCache()
    options = CommandOptions()
    try:
        options.parseOptions(arguments)
        serverOptions = _twistdOptionsFor(options)
    except usage.UsageError as e:
        print(f"rmux: {e}", file=sys.stderr)
        print("rmux: see rmux --help", file=sys.stderr)
        return 1
    from twisted.scripts.twistd import runApp

    runApp(serverOptions)
    return 0
