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
from rmux.config import (
    DEFAULT_CLIENT_OUTPUT_LIMIT,
    DEFAULT_HEALTH_FAILURES,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_SUCCESSES,
    DEFAULT_MAX_ARGUMENTS,
    DEFAULT_MAX_BULK_LENGTH,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_INLINE_LENGTH,
    DEFAULT_MAX_PINNED,
    DEFAULT_PINNED_WAIT,
    DEFAULT_POOL_SIZE,
    DEFAULT_REMOTE_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_STARTUP_WAIT,
    DEFAULT_STATS_HOST,
    DEFAULT_STATS_INTERVAL,
    DEFAULT_TCP_CONNECTIONS,
    HASHES,
    FLAG_NAMES,
    ConfigError,
    RmuxConfig,
    fromFlags,
    parseFlagBoolean,
)

__all__ = ["Options", "CPUProfiledService", "describeConfig", "makeService"]


def dashed(name: str) -> str:
    """
    The twistd-style spelling of an rmux flag name:
    C{"remoteReadTimeout"} -> C{"remote-read-timeout"}.
    """
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)


def _size(size: int) -> str:
    """
    A size as C{--help} shows it and an operator writes it: C{"256mb"}.
    """
    for unit, factor in (("gb", 1024**3), ("mb", 1024**2), ("kb", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


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

    helpGroups = (
        ("Listening", ("socket", "socketMode", "socketOwner", "host", "port", "maxProcesses")),
        (
            "Backends",
            (
                "tcpConnections",
                "unixConnections",
                "config",
                "poolSize",
                "remoteTimeout",
                "remoteConnectTimeout",
                "remoteReadTimeout",
                "remoteWriteTimeout",
                "maxPinned",
                "pinnedWait",
            ),
        ),
        ("Key placement", ("distribution", "hash", "hashTag", "failover", "allowFlush")),
        (
            "Health checks",
            ("healthInterval", "healthTimeout", "healthFailures", "healthSuccesses", "startupWait"),
        ),
        (
            "Clients",
            (
                "requirepass",
                "maxClients",
                "localTimeout",
                "localReadTimeout",
                "localWriteTimeout",
                "idleTimeout",
                "clientOutputLimit",
                "maxBulkLength",
                "maxArguments",
                "maxInlineLength",
                "shutdownTimeout",
            ),
        ),
        (
            "Stats and metrics",
            ("statsPort", "metricsPort", "statsHost", "statsInterval", "graphite", "timing"),
        ),
        ("Logging and profiling", ("debug", "useSyslog", "cpuProfile")),
        ("This command", ("checkConfig", "help", "version")),
    )
    """
    How C{--help} groups the options: a title, then option names in the
    order shown.  An option left out of every group is shown under "Other
    options", so that each option is listed exactly once however this
    table and the options drift apart.
    """

    optFlags = [
        [
            "failover",
            None,
            "When multiplexing, send a key whose backend is down to the next "
            "live backend instead of failing the command.",
        ],
        [
            "allowFlush",
            None,
            "When multiplexing, send FLUSHDB and FLUSHALL to every backend "
            "instead of refusing them.",
        ],
        [
            "debug",
            None,
            "Log debug events too; without it, info and above. Either way, "
            f"one event repeated is shown at most {logs.REPEAT_BURST} times per "
            f"{logs.REPEAT_INTERVAL:g} s, then counted.",
        ],
        [
            "useSyslog",
            None,
            "Also send every event to syslog, one line each (ident rmux, "
            "facility daemon, priority by level). Off by default, unlike Go "
            "rmux, since twistd logs already; twistd's own --syslog sends "
            "its log there instead, so use one or the other.",
        ],
        ["timing", None, "Also send timing metrics to --graphite."],
        [
            "checkConfig",
            None,
            "Check the options and the --config file, print the result and "
            "exit (0 if valid, 1 if not) instead of running.",
        ],
    ]

    optParameters = [
        ["host", None, "localhost", "TCP interface to listen on (ignored with --socket)."],
        ["port", None, 6379, "TCP port to listen on (ignored with --socket)."],
        [
            "socket",
            None,
            None,
            "Unix socket to listen on instead of --host/--port.",
        ],
        ["socketMode", None, "0666", "Permissions of the --socket file, in octal."],
        [
            "tcpConnections",
            None,
            None,
            "Backend Redis servers, host:port (or redis:// URLs), separated "
            f"by spaces. Default: '{DEFAULT_TCP_CONNECTIONS}' when neither "
            "this nor --unixConnections is given. For ketama, host:port:weight "
            "(or ?weight=N&name=NAME in a URL) gives a server a weight.",
        ],
        [
            "unixConnections",
            None,
            None,
            "Backend Redis unix sockets (or unix:// URLs), separated by "
            "spaces. They come after all TCP backends in the hashing order. "
            "A weight is given as unix:///path?weight=N&name=NAME.",
        ],
        [
            "poolSize",
            None,
            DEFAULT_POOL_SIZE,
            f"Connections per backend; 0 means {DEFAULT_POOL_SIZE}.",
        ],
        [
            "maxProcesses",
            None,
            0,
            "Go rmux's GOMAXPROCS setting, kept for worker processes; 0 = not set.",
        ],
        ["localTimeout", None, 0, "Client read and write timeout (ms); 0 = none."],
        ["localReadTimeout", None, 0, "Client read timeout (ms); 0 = --localTimeout."],
        ["localWriteTimeout", None, 0, "Client write timeout (ms); 0 = --localTimeout."],
        ["idleTimeout", None, 0, "Disconnect a client idle this long (ms); 0 = never."],
        [
            "remoteTimeout",
            None,
            0,
            "Backend connect, read and write timeout (ms); " f"0 = {DEFAULT_REMOTE_TIMEOUT}.",
        ],
        [
            "remoteConnectTimeout",
            None,
            0,
            "Backend connect timeout (ms); 0 = --remoteTimeout.",
        ],
        ["remoteReadTimeout", None, 0, "Backend read timeout (ms); 0 = --remoteTimeout."],
        ["remoteWriteTimeout", None, 0, "Backend write timeout (ms); 0 = --remoteTimeout."],
        [
            "distribution",
            None,
            "rmux",
            "Key placement when multiplexing: 'rmux' (Go rmux's, keeps its "
            "key placement) or 'ketama' (twemproxy's consistent hashing, with "
            "backend weights).",
        ],
        [
            "hash",
            None,
            None,
            f"Key hash for --distribution=ketama: {' or '.join(HASHES)}. "
            f"Default: {HASHES[0]}.",
        ],
        [
            "hashTag",
            None,
            None,
            "Two characters, such as '{}': only the part of a key between them "
            "is hashed, so related keys share a backend. Default: none.",
        ],
        [
            "healthInterval",
            None,
            DEFAULT_HEALTH_INTERVAL,
            f"Time between health checks of a backend (ms); 0 = {DEFAULT_HEALTH_INTERVAL}.",
        ],
        [
            "healthTimeout",
            None,
            0,
            "Time a health check may take (ms); 0 = --remoteConnectTimeout.",
        ],
        [
            "healthFailures",
            None,
            DEFAULT_HEALTH_FAILURES,
            "Consecutive failed health checks that take a backend down; "
            f"0 = {DEFAULT_HEALTH_FAILURES}.",
        ],
        [
            "healthSuccesses",
            None,
            DEFAULT_HEALTH_SUCCESSES,
            "Consecutive good health checks that bring a backend back; "
            f"0 = {DEFAULT_HEALTH_SUCCESSES}.",
        ],
        [
            "startupWait",
            None,
            DEFAULT_STARTUP_WAIT,
            "How long a request for a backend not yet health-checked waits "
            "for its first check (ms); 0 = fail at once, as Go rmux does.",
        ],
        [
            "requirepass",
            None,
            None,
            "Password clients must send with AUTH, as Redis's requirepass "
            "(the default user's). Other local users can read a command line "
            "(ps): prefer \"requirepass\" in the --config file, which also "
            "takes ACL-style users. Default: none, no AUTH needed.",
        ],
        [
            "maxPinned",
            None,
            DEFAULT_MAX_PINNED,
            "Per backend server, the most connections dedicated each to one "
            "client at a time (transactions after WATCH/MULTI, blocking "
            f"commands); 0 = {DEFAULT_MAX_PINNED}.",
        ],
        [
            "pinnedWait",
            None,
            DEFAULT_PINNED_WAIT,
            "How long a client waits for a dedicated connection when "
            "--maxPinned are in use, before it gets an error (ms); 0 = fail "
            "at once.",
        ],
        [
            "maxClients",
            None,
            DEFAULT_MAX_CLIENTS,
            "Most clients connected at once, as Redis's maxclients; one more "
            "gets '-ERR max number of clients reached' and is closed; "
            f"0 = {DEFAULT_MAX_CLIENTS}.",
        ],
        [
            "clientOutputLimit",
            None,
            _size(DEFAULT_CLIENT_OUTPUT_LIMIT),
            "Disconnect a client whose replies not yet sent exceed this size "
            "(bytes, or with a unit such as 64mb); 0 = unlimited.",
        ],
        [
            "socketOwner",
            None,
            None,
            "Owner of the --socket file: user, user:group or :group (names or "
            "numeric ids). Default: the user and group rmux runs as.",
        ],
        [
            "maxBulkLength",
            None,
            _size(DEFAULT_MAX_BULK_LENGTH),
            "Longest argument a client may send, as Redis's proto-max-bulk-len "
            f"(bytes, or with a unit); 0 = {_size(DEFAULT_MAX_BULK_LENGTH)}.",
        ],
        [
            "maxArguments",
            None,
            DEFAULT_MAX_ARGUMENTS,
            f"Most arguments in one command; 0 = {DEFAULT_MAX_ARGUMENTS}.",
        ],
        [
            "maxInlineLength",
            None,
            _size(DEFAULT_MAX_INLINE_LENGTH),
            "Longest inline command, or RESP header line, a client may send "
            f"(bytes, or with a unit); 0 = {_size(DEFAULT_MAX_INLINE_LENGTH)}.",
        ],
        [
            "shutdownTimeout",
            None,
            DEFAULT_SHUTDOWN_TIMEOUT,
            "On SIGTERM, how long clients may still collect the replies they "
            "are owed before they are closed (ms); 0 = close them at once.",
        ],
        [
            "config",
            None,
            None,
            "JSON config file: an array of listener objects with these "
            "options' names. Replaces every listener and backend option; "
            "--debug, --graphite etc. still apply.",
        ],
        ["graphite", None, None, "statsd host:port (UDP) to send metrics to."],
        [
            "statsPort",
            None,
            0,
            "TCP port serving twemproxy-compatible stats JSON (0 = none).",
        ],
        [
            "metricsPort",
            None,
            0,
            "TCP port serving Prometheus metrics at /metrics (0 = none).",
        ],
        [
            "statsHost",
            None,
            DEFAULT_STATS_HOST,
            "Interface the stats and metrics ports listen on.",
        ],
        [
            "statsInterval",
            None,
            DEFAULT_STATS_INTERVAL,
            "How often statsd gets the counters, and workers report theirs (ms).",
        ],
        [
            "cpuProfile",
            None,
            None,
            "Profile rmux's CPU use (cProfile) from start to stop and write it "
            "to this file when rmux stops; read it with python -m pstats. With "
            "--maxProcesses, only the parent process is profiled.",
        ],
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
            self.config = fromFlags({name: self[name] for name in FLAG_NAMES})
        except ConfigError as e:
            if self["checkConfig"]:
                print(f"rmux: configuration error: {e}", file=sys.stderr)
                raise SystemExit(1) from None
            raise usage.UsageError(str(e)) from None
        if self["checkConfig"]:
            print(f"rmux: configuration OK: {describeConfig(self.config)}")
            raise SystemExit(0)


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
    from rmux import service

    config = options.config
    logs.configureLogging(config, reactor)
    rmuxService = service.makeService(config, reactor=reactor)
    if config.cpuProfile is None:
        return rmuxService
    profiled = CPUProfiledService(config.cpuProfile)
    rmuxService.setServiceParent(profiled)
    return profiled
