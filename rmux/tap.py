# -*- test-case-name: tests.test_tap -*-
"""
The command line of C{twistd rmux}.

Every flag of Go rmux is here under rmux's own camelCase name, so that an
init script that ran C{rmux -socket=/tmp/rmux.sock -poolSize=5} needs only
C{twistd -n rmux} in front.  Each camelCase flag also has a dashed spelling
in twistd's style (C{--pool-size}), and Go's single-dash form
(C{-poolSize=5}, C{-failover=true}) is accepted too; C{--help} lists each
option once, under rmux's name.

The values are handed to L{rmux.config.fromFlags} unconverted, so that every
check and every error message lives in one place; a L{ConfigError} becomes a
L{usage.UsageError}, which twistd prints before exiting with status 1.
C{--checkConfig} stops there: it prints the verdict and exits, while twistd
is still reading its command line, before any pid file or log is touched.

L{makeService} is where rmux's own logging flags take effect
(L{rmux.logs.configureLogging}), and C{--cpuProfile}.  The C{rmux} command
(L{rmux.cli}) runs the same options and service through twistd.
"""

from __future__ import annotations

import cProfile
import os
import re
import sys
import textwrap
from typing import Sequence

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

import rmux
from rmux import logs
from rmux import settings
from rmux.config import FLAG_NAMES, ConfigError, RmuxConfig, fromFlags, parseFlagBoolean
from rmux.config.flags import DEFAULT_TCP_CONNECTIONS, passwordsOnCommandLine, usesDefaultBackends

__all__ = ["Options", "CPUProfiledService", "describeConfig", "makeService"]


def dashed(name: str) -> str:
    """
    The twistd-style spelling of an rmux flag name:
    C{"remoteReadTimeout"} -> C{"remote-read-timeout"}.
    """
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)


class Options(usage.Options):
    """
    C{twistd rmux} options: Go rmux's flags, plus C{--socketMode},
    C{--idleTimeout}, key placement (C{--distribution}, C{--hash},
    C{--hashTag}), health checks (C{--healthInterval}, C{--healthTimeout},
    C{--healthFailures}, C{--healthSuccesses}, C{--startupWait}),
    C{--allowFlush}, client authentication (C{--requirepass}),
    dedicated connections (C{--maxPinned}, C{--pinnedWait}), limits on
    clients (C{--maxClients}, C{--clientOutputLimit}, C{--maxBulkLength},
    C{--maxArguments}, C{--maxInlineLength}), C{--socketOwner} and
    C{--shutdownTimeout}.  Prefix
    routes and ACL-style users exist only in the C{--config} file, and so
    do backend names, except as C{?name=} in a backend URL.

    C{--requirepass} has no default, so C{--help} never prints a password;
    its help text points to the file, because a command line is visible
    to every local user.

    After parsing, L{config} holds the validated L{RmuxConfig}.

    The defaults in this table are only the ones that mean the same whether
    given or not (C{--poolSize=20} is the default pool size); flags whose
    absence matters, such as C{--tcpConnections} or the individual remote
    timeouts that would otherwise override C{--remoteTimeout}, default to
    C{None} (or 0, rmux's "not set") and say their default in words.

    @ivar config: The configuration built by L{postOptions}.
    @type config: L{RmuxConfig}
    """

    synopsis = "[options]"

    longdesc = (
        "A Redis connection pooler and key-hashing proxy, compatible with "
        "Pardot's Go rmux. Example: twistd -n rmux --socket=/tmp/rmux.sock "
        '--tcpConnections="redis1:6379 redis2:6379", or the same options '
        "after the rmux command, which runs in the foreground.\n\n"
        "Timeouts are integers in milliseconds, and 0 means "
        "'not set' (for --startupWait, --pinnedWait and --shutdownTimeout: do "
        "not wait). Sizes are in bytes, or a number with a unit as in "
        "redis.conf: kb, mb, gb count in 1024s, k, m, g in 1000s (64mb). Every "
        "camelCase option may also be spelled with dashes (--tcp-connections, "
        "--pool-size, --remote-read-timeout, ...), and Go rmux's single-dash "
        "spelling (-poolSize=5, -failover=true) works too.\n\n"
        "Prefix routes and ACL-style users are set in the --config file only. "
        "SIGHUP (kill -HUP) re-reads the --config file and applies it without "
        "dropping a client; --checkConfig checks a file before that. "
        "--statsPort serves twemproxy-style stats JSON and --metricsPort "
        "Prometheus metrics, on --statsHost."
    )

    helpGroups = tuple(
        (group, tuple(s.name for s in settings.SETTINGS if s.group == group and s.flag)
         + (("help", "version") if group == "This command" else ()))
        for group in settings.GROUPS
    )
    """
    How C{--help} groups the options: a title, then option names in the
    order shown, as L{rmux.settings} lists them.  An option left out of
    every group is shown under "Other options", so that each option is
    listed exactly once however this table and the options drift apart.
    """

    optFlags = [
        [s.name, None, s.helpText()] for s in settings.SETTINGS
        if s.flag and s.kind == settings.BOOLEAN
    ]

    optParameters = [
        [s.name, None, s.flagDefault(), s.helpText()] for s in settings.SETTINGS
        if s.flag and s.kind != settings.BOOLEAN
    ]

    config: RmuxConfig

    def opt_version(self) -> None:
        """
        Display rmux's version, and Twisted's and Python's, and exit.
        """
        import platform

        import twisted

        print(
            f"rmux {rmux.__version__} (Twisted {twisted.__version__}, "
            f"Python {platform.python_version()})"
        )
        sys.exit(0)

    def getUsage(self, width: int | None = None) -> str:
        """
        The C{--help} text: the options in L{helpGroups}, each group in its
        own order, then L{longdesc} paragraph by paragraph.

        L{usage.Options} lists all options in one alphabetical run, which
        puts C{--healthTimeout} between C{--hashTag} and C{--host}; an
        operator looking for what a flag is for reads better by topic.
        """
        if not width:
            width = int(os.environ.get("COLUMNS", "80"))
        entries = {}
        for declared in self.longOpt:
            name = declared.rstrip("=")
            doc = (self.docs.get(name) or "").strip()
            if declared.endswith("="):
                if self.defaults.get(name) is not None:
                    doc = f"{doc} [default: {self.defaults[name]}]"
                entries[name] = (name + "=", doc)
            else:
                entries[name] = (name, doc)
        labelWidth = max(len(label) for label, doc in entries.values())
        indent = labelWidth + len("  --  ")
        chunks = ["\n"]
        for title, names in self._groupedOptions(entries):
            chunks.append(f"{title}:\n")
            for name in names:
                label, doc = entries[name]
                lines = textwrap.wrap(" ".join(doc.split()), max(width - indent, 20)) or [""]
                chunks.append(f"  --{label:<{labelWidth}}  {lines[0]}\n")
                chunks.extend(" " * indent + line + "\n" for line in lines[1:])
            chunks.append("\n")
        for paragraph in self.longdesc.split("\n\n"):
            chunks.append("\n".join(textwrap.wrap(paragraph, width)) + "\n\n")
        return "".join(chunks).rstrip("\n") + "\n"

    def _groupedOptions(self, entries):
        """
        L{helpGroups}, restricted to options that exist, plus "Other
        options" for those no group names.
        """
        listed = set()
        for title, names in self.helpGroups:
            present = [name for name in names if name in entries and name not in listed]
            listed.update(present)
            if present:
                yield title, present
        others = [name for name in sorted(entries) if name not in listed]
        if others:
            yield "Other options", others

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Accept the dashed and the Go spellings by rewriting them to rmux's
        before L{usage.Options} (and its C{getopt}) sees them; that way the
        aliases need no entries of their own, and C{--help} stays one line
        per option.
        """
        if options is None:
            options = sys.argv[1:]
        super().parseOptions(_canonicalArguments(list(options)))

    def postOptions(self) -> None:
        """
        Build and validate L{config}; with C{--checkConfig}, print the
        verdict and exit.

        C{--checkConfig} exits from here, while twistd is still parsing its
        command line: before it checks or writes a pid file, begins logging,
        or builds the service.  L{SystemExit} goes through twistd, which
        only catches usage errors, so its code is the process's.

        @raise usage.UsageError: With L{ConfigError}'s message, which names
            the flag.
        @raise SystemExit: With C{--checkConfig}: 0 when the configuration
            is valid, 1 when not.
        """
        try:
            values = {name: self[name] for name in FLAG_NAMES}
            self.config = fromFlags(values)
            self.passwordFlags = passwordsOnCommandLine(values)
        except ConfigError as e:
            if self["checkConfig"]:
                print(f"rmux: configuration error: {e}", file=sys.stderr)
                raise SystemExit(1) from None
            raise usage.UsageError(str(e)) from None
        if self["checkConfig"]:
            note = ""
            if usesDefaultBackends(values):
                note = (f" (no backends given: Go rmux's default, "
                        f"{DEFAULT_TCP_CONNECTIONS.replace(' ', ', ')})")
            print(f"rmux: configuration OK: {describeConfig(self.config)}{note}")
            for listener in self.config.listeners:
                lines = probeTopology(listener)
                if lines:
                    print("\n".join(lines))
            raise SystemExit(0)


def _ask(address, commands, timeout=1.0):
    """
    Send C{commands} to a Redis or sentinel at C{address} on a blocking
    socket, as C{--checkConfig} does before anything runs, and return their
    replies (hiredis values), or raise L{OSError} or L{ValueError}.
    """
    import socket

    import hiredis

    from rmux.resp import encodeRequest

    asked = len(commands)
    if address.password is not None:
        credentials = [address.password.encode("utf-8")]
        if address.username is not None:
            credentials.insert(0, address.username.encode("utf-8"))
        commands = [[b"AUTH"] + credentials] + commands
    with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
        sock.sendall(b"".join(encodeRequest(command) for command in commands))
        reader = hiredis.Reader()
        replies = []
        while len(replies) < len(commands):
            data = sock.recv(65536)
            if not data:
                raise ValueError("the connection was closed")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise ValueError(str(reply))
                replies.append(reply)
    return replies[-asked:]


def probeTopology(listener) -> list[str]:
    """
    For C{--checkConfig}: ask a cluster's seeds (the listener's, or a
    cluster route's) for the cluster's state, or a Sentinel listener's
    sentinels where each master is.  The configuration is valid either way
    (they may be out of this host's reach); a last line warns when none of
    a group answered.

    @return: one line per seed or sentinel, and the warnings if any.
    """
    if listener.topology == "sentinel":
        names = [master.host for master in listener.backends]
        return _probe(listener.name, "sentinel", listener.sentinels,
                      lambda address: _mastersFound(address, names))
    groups = [(f"{listener.name}'s route {route.prefix.decode('utf-8', 'replace')!r}",
               route.backends) for route in listener.routes if route.cluster]
    if listener.topology == "cluster":
        groups.insert(0, (listener.name, listener.backends))
    return [line for owner, seeds in groups
            for line in _probe(owner, "cluster seed", seeds, _clusterState)]


def _probe(owner, kind, addresses, ask):
    lines = []
    answered = False
    for address in addresses:
        if address.tls:
            lines.append(f"rmux: {kind} {address}: reached over TLS, not checked here")
            answered = True
            continue
        try:
            found = ask(address)
        except (OSError, ValueError) as e:
            lines.append(f"rmux: {kind} {address}: no answer: {e}")
            continue
        answered = True
        lines.append(f"rmux: {kind} {address}: {found}")
    if not answered:
        lines.append(f"rmux: warning: no {kind} of {owner} answered")
    return lines


def _clusterState(address):
    (info,) = _ask(address, [[b"CLUSTER", b"INFO"]])
    state = [line for line in info.decode().splitlines() if line.startswith("cluster_state:")]
    return state[0] if state else "no cluster_state"


def _mastersFound(address, names):
    replies = _ask(address, [[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", name.encode()]
                             for name in names])
    return ", ".join(
        f"{name} at {reply[0].decode()}:{reply[1].decode()}" if reply
        else f"{name} unknown" for name, reply in zip(names, replies))


class TwistdOptions(Options):
    """
    L{Options} as C{twistd rmux} uses them: a wrong option or value prints
    the error and a pointer to C{--help}, and exits with status 1, where
    twistd would print its whole usage, rmux's included, before the error.
    """

    def parseOptions(self, options=None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            print(f"twistd rmux: {e}", file=sys.stderr)
            print("twistd rmux: see twistd rmux --help", file=sys.stderr)
            raise SystemExit(1) from None


def _optionNames() -> tuple[dict[str, str], frozenset[str]]:
    """
    Every spelling we accept (camelCase and dashed) mapped to rmux's name,
    and the set of rmux names that are boolean flags.
    """
    flags = frozenset(flag[0] for flag in Options.optFlags)
    names: dict[str, str] = {}
    for name in [flag[0] for flag in Options.optFlags] + [
        parameter[0] for parameter in Options.optParameters
    ]:
        names[name] = name
        names[dashed(name)] = name
    return names, flags


_SPELLINGS, _BOOLEAN_OPTIONS = _optionNames()


def _canonicalArguments(arguments: list[str]) -> list[str]:
    """
    Rewrite C{--pool-size=5}, C{-poolSize 5} and C{-failover=false} into
    C{--poolSize=5}, C{--poolSize 5} and nothing.

    Go's flag package accepts one or two dashes, and a value after C{=} for
    booleans (C{-useSyslog=false} is common in rmux init scripts).  Anything
    that is not one of our names is left for C{getopt} to judge; rewriting
    stops, as C{getopt} does, at C{--} or the first non-option.

    @raise usage.UsageError: For a boolean flag with a value that is not a
        Go boolean.
    """
    result: list[str] = []
    remaining = iter(arguments)
    for argument in remaining:
        if argument == "--" or not argument.startswith("-") or argument == "-":
            result.append(argument)
            result.extend(remaining)
            break
        body = argument[2:] if argument.startswith("--") else argument[1:]
        spelled, equals, value = body.partition("=")
        name = _SPELLINGS.get(spelled)
        if name is None:
            result.append(argument)
        elif name in _BOOLEAN_OPTIONS:
            # As with Go, the last one wins: -failover -failover=false is off.
            result = [a for a in result if a != "--" + name]
            try:
                on = parseFlagBoolean(value, name) if equals else True
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
            if on:
                result.append("--" + name)
        elif equals:
            result.append(f"--{name}={value}")
        else:
            result.append("--" + name)
            following = next(remaining, None)
            if following is not None:
                result.append(following)
    return result


def describeConfig(config: RmuxConfig) -> str:
    """
    One line saying what C{config} runs, for C{--checkConfig}: each
    listener with its number of backend entries and prefix routes.

    @param config: An L{RmuxConfig}.
    """

    def plural(count: int, noun: str) -> str:
        return f"{count} {noun}{'' if count == 1 else 's'}"

    listeners = []
    for listener in config.listeners:
        if listener.topology == "cluster":
            what = plural(len(listener.backends), "cluster seed")
        elif listener.topology == "sentinel":
            what = (f"{plural(len(listener.backends), 'master')} from "
                    f"{plural(len(listener.sentinels), 'sentinel')}")
        else:
            what = plural(len(listener.allBackends), "backend")
        if listener.routes:
            what += f" and {plural(len(listener.routes), 'route')}"
        listeners.append(f"{listener.name} with {what}")
    source = f" ({config.configPath})" if config.configPath else ""
    return f"{plural(len(listeners), 'listener')}{source}: {', '.join(listeners)}"


class CPUProfiledService(MultiService):
    """
    Profiles the CPU time of its child services, with L{cProfile}, from
    before they start until they have stopped, and then writes the
    statistics to a file: C{--cpuProfile}.

    Go rmux wrote a pprof profile; this is Python's equivalent, read with
    C{python -m pstats FILE} or a viewer such as snakeviz.  The profile
    covers the thread the reactor runs in, which is where rmux works.  As a
    parent of the service it profiles, it can wait for the service's
    graceful stop (clients collecting their replies) before writing.

    @ivar path: The file the statistics are written to.
    """

    log = Logger()

    def __init__(self, path: str, profileFactory=cProfile.Profile) -> None:
        """
        @param path: See L{path}.
        @param profileFactory: Makes the profiler; L{cProfile.Profile}.
        """
        super().__init__()
        self.path = path
        self._profileFactory = profileFactory
        self._profile = None

    def startService(self) -> None:
        """
        Start profiling, then start the children.  A file that cannot be
        written is reported now, and nothing is profiled, rather than found
        out when rmux stops.
        """
        try:
            with open(self.path, "ab"):
                pass
        except OSError as e:
            self.log.error(
                "rmux: cannot write a CPU profile to {path}: {error}; not profiling",
                path=self.path,
                error=e.strerror or e,
            )
        else:
            self._profile = self._profileFactory()
            self._profile.enable()
            self.log.info(
                "rmux: profiling CPU use; the profile goes to {path} when rmux stops",
                path=self.path,
            )
        super().startService()

    def stopService(self):
        """
        Stop the children, and once they have stopped, write the profile.
        """
        return super().stopService().addBoth(self._write)

    def _write(self, result):
        profile, self._profile = self._profile, None
        if profile is None:
            return result
        profile.disable()
        try:
            profile.dump_stats(self.path)
        except OSError:
            self.log.failure("rmux: could not write the CPU profile to {path}", path=self.path)
        else:
            self.log.info("rmux: wrote the CPU profile to {path}", path=self.path)
        return result


def makeService(options: Options, reactor=None):
    """
    Build the rmux service from parsed L{Options}, and have rmux's logging
    flags apply to the log twistd is about to begin.

    @param options: Parsed L{Options}.
    @param reactor: The reactor; the global one if L{None}.
    @return: An L{IService} running every configured listener; with
        C{--cpuProfile}, inside a L{CPUProfiledService}.
    """
    if reactor is None:
        from twisted.internet import reactor
    # Imported here so that --help and option errors do not need it.
    from rmux import application

    config = options.config
    logs.configureLogging(config, reactor)
    shown = getattr(options, "passwordFlags", ())
    if shown:
        Logger().warn(
            "a password is on the command line ({flags}), where every local user can "
            "read it (ps, /proc/PID/cmdline): use --requirepassFile, or the --config "
            "file for backend passwords",
            flags=", ".join(shown),
        )
    from rmux.startup import StartGuard

    rmuxService = application.makeService(config, reactor=reactor)
    guard = StartGuard()
    if config.cpuProfile is None:
        rmuxService.setServiceParent(guard)
        return guard
    profiled = CPUProfiledService(config.cpuProfile)
    rmuxService.setServiceParent(profiled)
    profiled.setServiceParent(guard)
    return guard
