"""
Tests for L{rmux.tap} and the C{twistd rmux} plugin.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import types

from zope.interface.verify import verifyObject

from twisted.application.service import IServiceMaker, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

import rmux
from rmux import logs, tap
from rmux.startup import StartGuard
from rmux.config import FLAG_NAMES, BackendAddress, ListenerConfig, RmuxConfig, fromFlags

REPOSITORY = FilePath(__file__).parent().parent()


def parse(*arguments: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(arguments))
    return options


# rmux's flag, a command-line value, and how to read the result back.
PARAMETER_CASES = [
    ("host", "127.0.0.2", lambda c: c.listeners[0].host, "127.0.0.2"),
    ("port", "7000", lambda c: c.listeners[0].port, 7000),
    ("socket", "/tmp/rmux.sock", lambda c: c.listeners[0].socket, "/tmp/rmux.sock"),
    ("socketMode", "0600", lambda c: c.listeners[0].socketMode, 0o600),
    (
        "tcpConnections",
        "r1:6380  r2",
        lambda c: [str(b) for b in c.listeners[0].backends],
        ["r1:6380", "r2:6379"],
    ),
    (
        "unixConnections",
        "/u1 /u2",
        lambda c: [str(b) for b in c.listeners[0].backends],
        ["/u1", "/u2"],
    ),
    (
        "cluster",
        "127.0.0.1:7001 127.0.0.1:7002",
        lambda c: (c.listeners[0].topology, [str(b) for b in c.listeners[0].backends]),
        ("cluster", ["127.0.0.1:7001", "127.0.0.1:7002"]),
    ),
    (
        "sentinels",
        "127.0.0.1:26379 127.0.0.1:26380",
        lambda c: (c.listeners[0].topology, [str(b) for b in c.listeners[0].sentinels]),
        ("sentinel", ["127.0.0.1:26379", "127.0.0.1:26380"]),
    ),
    (
        "sentinelMaster",
        "cache sessions",
        lambda c: [b.host for b in c.listeners[0].backends],
        ["cache", "sessions"],
    ),
    ("readFrom", "preferReplica", lambda c: c.listeners[0].readFrom, "preferReplica"),
    ("clusterRefreshInterval", "2000", lambda c: c.listeners[0].clusterRefreshInterval, 2000),
    ("clusterRetryTime", "3000", lambda c: c.listeners[0].clusterRetryTime, 3000),
    ("poolSize", "7", lambda c: c.listeners[0].poolSize, 7),
    ("maxProcesses", "3", lambda c: c.listeners[0].maxProcesses, 3),
    (
        "localTimeout",
        "100",
        lambda c: (c.listeners[0].localReadTimeout, c.listeners[0].localWriteTimeout),
        (100, 100),
    ),
    ("localReadTimeout", "101", lambda c: c.listeners[0].localReadTimeout, 101),
    ("localWriteTimeout", "102", lambda c: c.listeners[0].localWriteTimeout, 102),
    ("idleTimeout", "103", lambda c: c.listeners[0].idleTimeout, 103),
    (
        "remoteTimeout",
        "2000",
        lambda c: (
            c.listeners[0].remoteConnectTimeout,
            c.listeners[0].remoteReadTimeout,
            c.listeners[0].remoteWriteTimeout,
        ),
        (2000, 2000, 2000),
    ),
    ("remoteConnectTimeout", "201", lambda c: c.listeners[0].remoteConnectTimeout, 201),
    ("remoteReadTimeout", "202", lambda c: c.listeners[0].remoteReadTimeout, 202),
    ("remoteWriteTimeout", "203", lambda c: c.listeners[0].remoteWriteTimeout, 203),
    ("graphite", "stats:8125", lambda c: c.graphite, "stats:8125"),
    ("cpuProfile", "/tmp/cpu.prof", lambda c: c.cpuProfile, "/tmp/cpu.prof"),
    ("distribution", "ketama", lambda c: c.listeners[0].distribution, "ketama"),
    ("hash", "md5", lambda c: c.listeners[0].hash, "md5"),
    ("hashTag", "{}", lambda c: c.listeners[0].hashTag, b"{}"),
    ("healthInterval", "250", lambda c: c.listeners[0].healthInterval, 250),
    ("healthTimeout", "40", lambda c: c.listeners[0].healthTimeout, 40),
    ("healthFailures", "5", lambda c: c.listeners[0].healthFailures, 5),
    ("healthSuccesses", "4", lambda c: c.listeners[0].healthSuccesses, 4),
    ("startupWait", "0", lambda c: c.listeners[0].startupWait, 0),
    ("requirepass", "s3cret", lambda c: c.listeners[0].requirepass, "s3cret"),
    ("maxPinned", "8", lambda c: c.listeners[0].maxPinned, 8),
    ("pinnedWait", "250", lambda c: c.listeners[0].pinnedWait, 250),
    ("maxClients", "50", lambda c: c.listeners[0].maxClients, 50),
    ("clientOutputLimit", "64mb", lambda c: c.listeners[0].clientOutputLimit, 67108864),
    ("pubsubOutputLimit", "64mb", lambda c: c.listeners[0].pubsubOutputLimit, 67108864),
    ("pubsubOutputSoftLimit", "0", lambda c: c.listeners[0].pubsubOutputSoftLimit, 0),
    ("pubsubOutputSoftTime", "5000", lambda c: c.listeners[0].pubsubOutputSoftTime, 5000),
    ("clientQueryBufferLimit", "2gb", lambda c: c.listeners[0].clientQueryBufferLimit, 2 << 30),
    ("queryBuffersLimit", "0", lambda c: c.listeners[0].queryBuffersLimit, 0),
    ("tlsPort", "6390", lambda c: c.listeners[0].tlsPort, 6390),
    ("tlsCertFile", "/dev/null", lambda c: c.listeners[0].tlsCertFile, "/dev/null"),
    ("tlsKeyFile", "/dev/null", lambda c: c.listeners[0].tlsKeyFile, "/dev/null"),
    ("tlsCaCertFile", "/dev/null", lambda c: c.listeners[0].tlsCaCertFile, "/dev/null"),
    ("tlsClientCertFile", "/dev/null", lambda c: c.listeners[0].tlsClientCertFile, "/dev/null"),
    ("tlsClientKeyFile", "/dev/null", lambda c: c.listeners[0].tlsClientKeyFile, "/dev/null"),
    ("tlsServerName", "cache.example", lambda c: c.listeners[0].tlsServerName, "cache.example"),
    ("socketOwner", "redis:www-data", lambda c: c.listeners[0].socketOwner, "redis:www-data"),
    ("maxBulkLength", "1gb", lambda c: c.listeners[0].maxBulkLength, 1073741824),
    ("maxArguments", "64", lambda c: c.listeners[0].maxArguments, 64),
    ("maxInlineLength", "4k", lambda c: c.listeners[0].maxInlineLength, 4000),
    ("shutdownTimeout", "0", lambda c: c.listeners[0].shutdownTimeout, 0),
    ("denyCommands", "keys @admin", lambda c: c.listeners[0].denyCommands, "keys @admin"),
    ("statsPort", "22222", lambda c: c.statsPort, 22222),
    ("metricsPort", "9121", lambda c: c.metricsPort, 9121),
    ("statsHost", "::1", lambda c: c.statsHost, "::1"),
    ("statsInterval", "1000", lambda c: c.statsInterval, 1000),
]

# Options a case needs besides its own: --hash is refused without ketama,
# --socketOwner without --socket.
PREREQUISITES = {"hash": ["--distribution=ketama"], "socketOwner": ["--socket=/tmp/r.sock"],
                 "sentinels": ["--sentinelMaster=cache"],
                 "readFrom": ["--cluster=127.0.0.1:7000"],
                 "sentinelMaster": ["--sentinels=127.0.0.1:26379"],
                 "tlsClientCertFile": ["--tlsClientKeyFile=/dev/null"],
                 "tlsPort": ["--tlsCertFile=/dev/null", "--tlsKeyFile=/dev/null"],
                 "tlsAuthClients": ["--tlsCaCertFile=/dev/null"],
                 "tlsClientKeyFile": ["--tlsClientCertFile=/dev/null"]}

FLAG_CASES = [
    ("failover", lambda c: c.listeners[0].failover),
    ("allowFlush", lambda c: c.listeners[0].allowFlush),
    ("crossServerTransactions", lambda c: c.listeners[0].crossServerTransactions),
    ("tlsSkipVerify", lambda c: c.listeners[0].tlsSkipVerify),
    ("tlsAuthClients", lambda c: c.listeners[0].tlsAuthClients),
    ("debug", lambda c: c.debug),
    ("useSyslog", lambda c: c.useSyslog),
    ("timing", lambda c: c.timing),
]


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{tap.Options}.
    """

    def test_everyFlagHasAnOption(self):
        """
        Every flag L{rmux.config.fromFlags} knows is an option, and the
        cases below cover all of them.
        """
        options = tap.Options()
        for name in FLAG_NAMES:
            self.assertIn(name, options)
        covered = {case[0] for case in PARAMETER_CASES} | {case[0] for case in FLAG_CASES}
        self.assertEqual(covered | {"config", "requirepassFile"}, set(FLAG_NAMES))

    def test_dashed(self):
        self.assertEqual(tap.dashed("remoteReadTimeout"), "remote-read-timeout")
        self.assertEqual(tap.dashed("tcpConnections"), "tcp-connections")
        self.assertEqual(tap.dashed("host"), "host")

    def test_parametersInEverySpelling(self):
        """
        Each parameter works as rmux spells it, dashed, in Go's single-dash
        form, with C{=} or as the next argument.
        """
        for name, value, read, expected in PARAMETER_CASES:
            for spelling in (name, tap.dashed(name)):
                for arguments in (
                    [f"--{spelling}={value}"],
                    [f"--{spelling}", value],
                    [f"-{spelling}={value}"],
                    [f"-{spelling}", value],
                ):
                    options = parse(*PREREQUISITES.get(name, []), *arguments)
                    self.assertEqual(read(options.config), expected, arguments)
                    self.assertEqual(options[name], value, arguments)

    def test_flagsInEverySpelling(self):
        for name, read in FLAG_CASES:
            self.assertFalse(read(parse().config))
            for spelling in {name, tap.dashed(name)}:
                for arguments in (
                    [f"--{spelling}"],
                    [f"-{spelling}"],
                    [f"--{spelling}=true"],
                    [f"-{spelling}=1"],
                ):
                    config = parse(*PREREQUISITES.get(name, []), *arguments).config
                    self.assertTrue(read(config), arguments)
                for arguments in (
                    [f"-{spelling}=false"],
                    [f"--{spelling}", f"--{spelling}=F"],
                ):
                    config = parse(*PREREQUISITES.get(name, []), *arguments).config
                    self.assertFalse(read(config), arguments)

    def test_goBooleanError(self):
        error = self.assertRaises(usage.UsageError, parse, "--failover=yes")
        self.assertEqual(str(error), "--failover: must be true or false, got 'yes'")

    def test_defaults(self):
        """
        Without options, the configuration is rmux's defaults.
        """
        self.assertEqual(parse().config, fromFlags({}))
        self.assertEqual(
            parse().config,
            RmuxConfig(listeners=[ListenerConfig(backends=["localhost:6380", "localhost:6381"])]),
        )

    def test_operatorExample(self):
        config = parse(
            "--socket=/tmp/rmux.sock", "--tcpConnections=redis1:6379 redis2:6379"
        ).config
        listener = config.listeners[0]
        self.assertEqual(listener.socket, "/tmp/rmux.sock")
        self.assertEqual(
            listener.backends,
            (
                BackendAddress(kind="tcp", host="redis1", port=6379),
                BackendAddress(kind="tcp", host="redis2", port=6379),
            ),
        )
        self.assertTrue(listener.multiplexing)

    def test_unixOnly(self):
        """
        C{--unixConnections} alone does not bring in the default TCP
        backends.
        """
        config = parse("--unix-connections=/tmp/redis.sock").config
        self.assertEqual([str(b) for b in config.listeners[0].backends], ["/tmp/redis.sock"])

    def test_configFile(self):
        path = FilePath(self.mktemp())
        path.setContent(b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1"]}]')
        config = parse(f"--config={path.path}", "--pool-size=3", "--debug").config
        self.assertEqual(config.listeners[0].poolSize, 20)
        self.assertEqual(config.listeners[0].socket, "/tmp/a.sock")
        self.assertTrue(config.debug)

    def test_configErrorBecomesUsageError(self):
        """
        A L{ConfigError} reaches twistd as a L{usage.UsageError} with the
        same message.
        """
        for arguments, message in [
            (["--poolSize=-3"], "--poolSize: must be a positive integer (0 means 20), got '-3'"),
            (["--pool-size", "x"], "--poolSize: must be a positive integer (0 means 20), got 'x'"),
            (
                ["--tcpConnections="],
                "at least one backend is required (--tcpConnections or --unixConnections)",
            ),
            (
                ["--remote-read-timeout=-1"],
                "--remoteReadTimeout: must be a non-negative integer (ms), got '-1'",
            ),
            (
                ["--hash=md5"],
                "--hash: only used by the ketama distribution "
                "(set --distribution to ketama, or leave --hash out)",
            ),
            (
                ["--distribution", "modula"],
                "--distribution: must be 'rmux' or 'ketama', got 'modula'",
            ),
            (
                ["--hash-tag={"],
                "--hashTag: must be two printable ASCII characters such as '{}', got '{'",
            ),
            (
                ["--health-interval=-5"],
                "--healthInterval: must be a positive integer (ms; 0 means 100), got '-5'",
            ),
            (
                ["--tcpConnections=r1:6379:2 r2"],
                "--tcpConnections: 'r1:6379:2': weight 2 is only used by the ketama "
                "distribution; with rmux's placement list a server twice instead",
            ),
            (["-allowFlush=maybe"], "--allowFlush: must be true or false, got 'maybe'"),
        ]:
            error = self.assertRaises(usage.UsageError, parse, *arguments)
            self.assertEqual(str(error), message)

    def test_unknownOption(self):
        self.assertRaises(usage.UsageError, parse, "--poolsize=3")
        self.assertRaises(usage.UsageError, parse, "--pool_size=3")
        self.assertRaises(usage.UsageError, parse, "extra")

    def test_afterDoubleDash(self):
        """
        Arguments after C{--} are not rewritten (and we take none).
        """
        self.assertEqual(
            tap._canonicalArguments(["--pool-size=1", "--", "--pool-size=2"]),
            ["--poolSize=1", "--", "--pool-size=2"],
        )
        self.assertEqual(tap._canonicalArguments(["--socket", "-debug"]), ["--socket", "-debug"])

    def test_help(self):
        """
        C{--help} lists each option once under rmux's name, with its default
        and units, and explains the other spellings.
        """
        usage = tap.Options().getUsage(width=2000)
        listed = re.findall(r"^ +--([A-Za-z-]+)=? ", usage, re.MULTILINE)
        self.assertEqual(
            sorted(listed), sorted(list(FLAG_NAMES) + ["checkConfig", "help", "version"])
        )
        text = " ".join(usage.split())
        for alias in ("--tcp-connections", "--pool-size", "--remote-read-timeout"):
            self.assertIn(alias, text)
            self.assertNotIn(alias + "=", text)
        self.assertIn("--poolSize= Connections per backend; 0 means 20. [default: 20]", text)
        self.assertIn("Backend read timeout (ms); 0 = --remoteTimeout.", text)
        self.assertIn("0 = 500", text)
        self.assertIn("localhost:6380 localhost:6381", text)

    def test_helpGroups(self):
        """
        C{--help} shows the options by topic, each group under a title, and
        an option no group names under "Other options", so that a new
        option is never left out.
        """
        usage = tap.Options().getUsage(width=2000)
        titles = re.findall(r"^(\S[^:\n]*):$", usage, re.MULTILINE)
        self.assertEqual(titles, [title for title, names in tap.Options.helpGroups])
        logging = usage.split("Logging and profiling:\n")[1].split("\n\n")[0]
        self.assertEqual(
            re.findall(r"^  --(\w+)", logging, re.MULTILINE), ["debug", "useSyslog", "cpuProfile"]
        )
        self.patch(tap.Options, "helpGroups", tap.Options.helpGroups[1:])
        usage = tap.Options().getUsage(width=2000)
        self.assertIn("Other options:\n  --host=", usage)
        listed = re.findall(r"^ +--([A-Za-z-]+)=? ", usage, re.MULTILINE)
        self.assertEqual(len(listed), len(set(listed)))

    def test_helpLongDescription(self):
        """
        The description after the options mentions SIGHUP, the stats and
        metrics ports, and the rmux command.
        """
        text = " ".join(tap.Options().getUsage(width=2000).split())
        for phrase in ("SIGHUP (kill -HUP) re-reads the --config file", "--statsPort",
                       "--metricsPort", "after the rmux command", "--checkConfig checks"):
            self.assertIn(phrase, text)
        self.assertIn(
            "--debug Log debug events too; without it, info and above. Either way, one "
            "event repeated is shown at most 5 times per 10 s, then counted.",
            text,
        )

    def test_helpNewOptions(self):
        """
        The placement, health and flush options say their defaults, what 0
        means, and where routes and names are set.
        """
        text = " ".join(tap.Options().getUsage(width=2000).split())
        for alias in ("--hash-tag", "--health-interval", "--startup-wait", "--allow-flush"):
            self.assertNotIn(alias + "=", text)
        self.assertIn("--distribution= Key placement when multiplexing", text)
        self.assertIn("[default: rmux]", text)
        self.assertIn(
            "Key hash for --distribution=ketama: fnv1a_64 or md5. Default: fnv1a_64.", text
        )
        self.assertIn("--hashTag= Two characters, such as '{}'", text)
        self.assertIn("(ms); 0 = 100. [default: 100]", text)
        self.assertIn("Time a health check may take (ms); 0 = --remoteConnectTimeout.", text)
        self.assertIn("take a backend down; 0 = 3. [default: 3]", text)
        self.assertIn("bring a backend back; 0 = 2. [default: 2]", text)
        self.assertIn("0 = fail at once, as Go rmux does. [default: 1000]", text)
        self.assertIn("--allowFlush When multiplexing, send FLUSHDB and FLUSHALL", text)
        self.assertIn("host:port:weight", text)
        self.assertIn("unix:///path?weight=N&name=NAME", text)
        self.assertIn(
            "Prefix routes and ACL-style users are set in the --config file only.", text
        )
        self.assertIn(
            "0 means 'not set' (for --startupWait, --pinnedWait and --shutdownTimeout: do "
            "not wait)",
            text,
        )

    def test_ketamaCommandLine(self):
        """
        A twemproxy-style pool on the command line: weights in the backend
        list, a hash tag, and Go's single-dash spelling.
        """
        config = parse(
            "-distribution=ketama",
            "--tcp-connections=r1:6379:3 r2:6379:1",
            "--unix-connections",
            "unix:///tmp/r.sock?weight=2",
            "-hashTag={}",
            "--allow-flush",
            "-startupWait=0",
        ).config
        listener = config.listeners[0]
        self.assertEqual(
            [(str(b), b.weight) for b in listener.backends],
            [("r1:6379", 3), ("r2:6379", 1), ("/tmp/r.sock", 2)],
        )
        self.assertEqual(
            (
                listener.distribution,
                listener.hash,
                listener.hashTag,
                listener.allowFlush,
                listener.startupWait,
            ),
            ("ketama", "fnv1a_64", b"{}", True, 0),
        )

    def test_newDefaults(self):
        """
        The defaults shown in C{--help} are the configuration's.
        """
        listener = parse().config.listeners[0]
        self.assertEqual(
            (
                listener.distribution,
                listener.hash,
                listener.hashTag,
                listener.healthInterval,
                listener.healthTimeout,
                listener.healthFailures,
                listener.healthSuccesses,
                listener.startupWait,
                listener.allowFlush,
            ),
            ("rmux", "fnv1a_64", None, 100, 500, 3, 2, 1000, False),
        )
        self.assertEqual(
            parse("--remote-connect-timeout=70").config.listeners[0].healthTimeout, 70
        )


class AuthenticationOptionsTests(SynchronousTestCase):
    """
    C{--requirepass}, C{--maxPinned} and C{--pinnedWait}, and passwords
    kept out of C{--help} and errors.
    """

    def test_values(self):
        listener = parse(
            "--requirepass", "hunter2", "--max-pinned=4", "-pinnedWait=0"
        ).config.listeners[0]
        self.assertEqual(
            (listener.requirepass, listener.maxPinned, listener.pinnedWait), ("hunter2", 4, 0)
        )
        self.assertTrue(listener.authenticator().check(None, "hunter2"))

    def test_defaults(self):
        """
        The defaults shown in C{--help} are the configuration's; without
        C{--requirepass} no AUTH is needed.
        """
        listener = parse().config.listeners[0]
        self.assertEqual(
            (listener.requirepass, listener.users, listener.maxPinned, listener.pinnedWait),
            (None, (), 32, 1000),
        )
        self.assertFalse(listener.authenticator().required)

    def test_help(self):
        text = " ".join(tap.Options().getUsage(width=2000).split())
        for alias in ("--max-pinned", "--pinned-wait"):
            self.assertNotIn(alias + "=", text)
        self.assertIn(
            "--requirepass= Password clients must send with AUTH, as Redis's requirepass", text
        )
        self.assertIn('Other local users can read a command line (ps): prefer --requirepassFile', text)
        self.assertIn("Default: none, no AUTH needed. --requirepassFile=", text)
        self.assertIn(
            "(transactions after WATCH/MULTI, blocking commands); 0 = 32. [default: 32]", text
        )
        self.assertIn("before it gets an error (ms); 0 = fail at once. [default: 1000]", text)

    def test_helpShowsNoPassword(self):
        """
        C{--help} shows the defaults, not the values given, so a password
        given before it does not appear.
        """
        options = tap.Options()
        printed = []
        self.patch(sys, "stdout", types.SimpleNamespace(write=printed.append, flush=lambda: None))
        self.patch(sys, "exit", lambda status=0: printed.append(f"<exit {status}>"))
        try:
            options.parseOptions(
                ["--requirepass=hunter2", "--tcpConnections=redis://:s3cret@r1", "--help"]
            )
        except (SystemExit, usage.UsageError):
            pass
        shown = "".join(printed)
        self.assertIn("--requirepass=", shown)
        self.assertNotIn("hunter2", shown)
        self.assertNotIn("s3cret", shown)

    def test_errors(self):
        for arguments, message in [
            (
                ["--requirepass="],
                "--requirepass: must not be empty (leave it out for no password)",
            ),
            (["--max-pinned=-1"], "--maxPinned: must be a positive integer (0 means 32), got '-1'"),
            (["--pinnedWait", "x"], "--pinnedWait: must be a non-negative integer (ms), got 'x'"),
            (
                ["--tcpConnections=redis://alice:hunter2@r1:x"],
                "--tcpConnections: 'redis://alice:***@r1:x': port must be an integer "
                "from 1 to 65535, got '***'",
            ),
        ]:
            error = self.assertRaises(usage.UsageError, parse, *arguments)
            self.assertEqual(str(error), message)

    def test_notWithConfig(self):
        path = FilePath(self.mktemp())
        path.setContent(b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1"]}]')
        error = self.assertRaises(
            usage.UsageError, parse, f"--config={path.path}", "--requirepass=hunter2"
        )
        self.assertIn("--requirepass: not used with --config", str(error))
        self.assertNotIn("hunter2", str(error))
        path.setContent(
            b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1"], "requirepass": "hunter2",'
            b' "users": [{"name": "app", "password": "s3cret"}]}]'
        )
        listener = parse(f"--config={path.path}").config.listeners[0]
        self.assertEqual(listener.authenticator().users, ("app", "default"))

    def test_reprHidesPasswords(self):
        options = parse("--requirepass=hunter2", "--tcpConnections=redis://:s3cret@r1 r2")
        for secret in ("hunter2", "s3cret"):
            self.assertNotIn(secret, repr(options.config))
            self.assertNotIn(secret, str(options.config))


class PasswordFileTests(SynchronousTestCase):
    """
    C{--requirepassFile}: the password out of the command line.
    """

    def passwordFile(self, content):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(content)
        return path

    def test_readsTheFirstLine(self):
        path = self.passwordFile("hunter2\nignored\n")
        options = parse("--requirepassFile", path)
        self.assertEqual(options.config.listeners[0].requirepass, "hunter2")
        self.assertEqual(options.passwordFlags, [])

    def test_refusals(self):
        """
        A file that cannot be read or holds nothing, or a password given
        both ways, is refused, naming the file.
        """
        missing = self.mktemp()
        for arguments, message in [
            (("--requirepassFile", missing),
             "--requirepassFile: cannot read %s: No such file or directory" % (missing,)),
            (("--requirepassFile", self.passwordFile("\n")),
             "holds no password"),
            (("--requirepassFile", self.passwordFile("a\n"), "--requirepass", "b"),
             "--requirepassFile: not used with --requirepass; give the password one way"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                parse(*arguments)
            self.assertIn(message, str(caught.exception))

    def test_warnsOfPasswordsOnTheCommandLine(self):
        """
        A password given as a flag, or in a backend URL on the command
        line, is warned of once at start.
        """
        from rmux import application

        self.patch(application, "makeService", lambda config, reactor=None: MultiService())
        self.patch(logs, "configureLogging", lambda *args: None)
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = parse("--requirepass", "s3cret",
                        "--tcpConnections", "redis://:pw@127.0.0.1:6379")
        tap.makeService(options, Clock())
        warnings = [formatEvent(e) for e in events if "command line" in formatEvent(e)]
        self.assertEqual(len(warnings), 1)
        self.assertIn("--requirepass, --tcpConnections", warnings[0])
        self.assertNotIn("s3cret", warnings[0])


class ClientLimitsOptionsTests(SynchronousTestCase):
    """
    C{--maxClients}, C{--clientOutputLimit}, C{--socketOwner},
    C{--maxBulkLength}, C{--maxArguments}, C{--maxInlineLength} and
    C{--shutdownTimeout}.
    """

    NAMES = (
        "maxClients",
        "clientOutputLimit",
        "socketOwner",
        "maxBulkLength",
        "maxArguments",
        "maxInlineLength",
        "shutdownTimeout",
    )

    def limits(self, options):
        listener = options.config.listeners[0]
        return tuple(getattr(listener, name) for name in self.NAMES)

    def test_values(self):
        options = parse(
            "-socket=/tmp/r.sock",
            "--max-clients=5",
            "--client-output-limit",
            "1GB",
            "-socketOwner=:33",
            "--max-bulk-length=100",
            "--maxArguments",
            "10",
            "--max-inline-length=1kb",
            "-shutdown-timeout=30000",
        )
        self.assertEqual(self.limits(options), (5, 1073741824, ":33", 100, 10, 1024, 30000))

    def test_defaults(self):
        """
        The defaults shown in C{--help} are the configuration's.
        """
        self.assertEqual(
            self.limits(parse()), (10000, 268435456, None, 536870912, 2147483647, 65536, 5000)
        )
        self.assertEqual(
            [parse()[name] for name in self.NAMES],
            [10000, "256mb", None, "512mb", 2147483647, "64kb", 5000],
        )

    def test_zeros(self):
        options = parse(
            *[f"--{tap.dashed(name)}=0" for name in self.NAMES if name != "socketOwner"]
        )
        self.assertEqual(self.limits(options), (10000, 0, None, 536870912, 2147483647, 65536, 0))

    def test_help(self):
        """
        Each option is listed once, under rmux's name, with its default,
        what 0 means, and the units sizes take.
        """
        text = " ".join(tap.Options().getUsage(width=2000).split())
        for name in self.NAMES:
            self.assertEqual(text.count(f"--{name}="), 1, name)
            self.assertNotIn(tap.dashed(name) + "=", text)
        self.assertIn(
            "--maxClients= Most clients connected at once, as Redis's maxclients; one more "
            "gets '-ERR max number of clients reached' and is closed; 0 = 10000. "
            "[default: 10000]",
            text,
        )
        self.assertIn(
            "--clientOutputLimit= Disconnect a client whose replies not yet sent exceed this "
            "size (bytes, or with a unit such as 64mb); 0 = unlimited. [default: 256mb]",
            text,
        )
        self.assertIn(
            "--socketOwner= Owner of the --socket file: user, user:group or :group (names or "
            "numeric ids). Default: the user and group rmux runs as. --host=",
            text,
        )
        self.assertIn("as Redis's proto-max-bulk-len", text)
        self.assertIn("(bytes, or with a unit); 0 = 512mb. [default: 512mb]", text)
        self.assertIn(
            "--maxArguments= Most arguments in one command; 0 = 2147483647, Redis's own limit "
            "(the bytes they take are what is limited in practice). [default: 2147483647]",
            text,
        )
        self.assertIn("(bytes, or with a unit); 0 = 64kb. [default: 64kb]", text)
        self.assertIn(
            "before they are closed (ms); 0 = close them at once. [default: 5000]", text
        )
        self.assertIn(
            "Sizes are in bytes, or a number with a unit as in redis.conf: kb, mb, gb count "
            "in 1024s, k, m, g in 1000s (64mb).",
            text,
        )

    def test_errors(self):
        for arguments, message in [
            (
                ["--max-clients=-1"],
                "--maxClients: must be a positive integer (0 means 10000), got '-1'",
            ),
            (
                ["--client-output-limit", "64 mb"],
                "--clientOutputLimit: must be a non-negative number of bytes, such as 65536 "
                "or 64kb (0 means unlimited), got '64 mb'",
            ),
            (
                ["-maxBulkLength=1.5gb"],
                "--maxBulkLength: must be a positive number of bytes, such as 65536 or 64kb "
                "(0 means 512mb), got '1.5gb'",
            ),
            (
                ["--max-arguments=many"],
                "--maxArguments: must be a positive integer (0 means 2147483647), got 'many'",
            ),
            (
                ["--max-inline-length=-1"],
                "--maxInlineLength: must be a positive number of bytes, such as 65536 or 64kb "
                "(0 means 64kb), got '-1'",
            ),
            (
                ["--shutdown-timeout=5s"],
                "--shutdownTimeout: must be a non-negative integer (ms), got '5s'",
            ),
            (
                ["--socket-owner=redis"],
                "--socketOwner: only used with --socket (it is the owner of the unix socket "
                "file)",
            ),
            (
                ["--socket=/tmp/r.sock", "--socket-owner=redis:"],
                "--socketOwner: must be user, user:group or :group (names or numeric ids), "
                "got 'redis:'",
            ),
        ]:
            error = self.assertRaises(usage.UsageError, parse, *arguments)
            self.assertEqual(str(error), message)

    def test_configFile(self):
        """
        The options are listener options, which C{--config} replaces; the
        file has the same names.
        """
        path = FilePath(self.mktemp())
        path.setContent(
            b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1"], "socketOwner": "redis",'
            b' "maxClients": 7, "clientOutputLimit": "1mb", "shutdownTimeout": 0}]'
        )
        options = parse(f"--config={path.path}", "--max-clients=3", "--max-arguments=2")
        self.assertEqual(
            self.limits(options), (7, 1048576, "redis", 536870912, 2147483647, 65536, 0)
        )


class MakeServiceTests(SynchronousTestCase):
    """
    Tests for L{tap.makeService}.
    """

    def test_delegates(self):
        """
        L{tap.makeService} hands the parsed configuration to
        L{rmux.application.makeService}.
        """
        from rmux import application

        calls = []
        made = MultiService()
        self.patch(application, "makeService",
                   lambda config, reactor=None: calls.append(config) or made)
        configured = []
        self.patch(logs, "configureLogging", lambda *args: configured.append(args))
        options = parse("--socket=/tmp/r.sock")
        clock = Clock()
        guard = tap.makeService(options, clock)
        self.assertIsInstance(guard, StartGuard)
        self.assertEqual(list(guard), [made])
        self.assertEqual(calls, [options.config])
        self.assertEqual(configured, [(options.config, clock)])

    def test_cpuProfile(self):
        """
        With C{--cpuProfile}, the service runs inside a
        L{tap.CPUProfiledService} that writes to the file.
        """
        from rmux import application

        made = MultiService()
        self.patch(application, "makeService", lambda config, reactor=None: made)
        self.patch(logs, "configureLogging", lambda *args: None)
        guard = tap.makeService(parse("--socket=/tmp/r.sock", "--cpuProfile=cpu.prof"), Clock())
        (profiled,) = guard
        self.assertIsInstance(profiled, tap.CPUProfiledService)
        self.assertEqual(profiled.path, "cpu.prof")
        self.assertEqual(list(profiled), [made])


class FakeProfile:
    """
    Stands in for L{cProfile.Profile}.
    """

    def __init__(self):
        self.calls = []

    def enable(self):
        self.calls.append("enable")

    def disable(self):
        self.calls.append("disable")

    def dump_stats(self, path):
        self.calls.append(("dump", path))
        if path.endswith("unwritable"):
            raise PermissionError(13, "Permission denied")


class SlowService(Service):
    """
    A service whose stop takes until L{stopped} fires.
    """

    def stopService(self):
        super().stopService()
        self.stopped = Deferred()
        return self.stopped


class CPUProfiledServiceTests(SynchronousTestCase):
    """
    Tests for L{tap.CPUProfiledService}, C{--cpuProfile}.
    """

    def setUp(self):
        self.profiles = []
        self.events = []
        self.patch(tap.CPUProfiledService, "log", Logger(observer=self.events.append))

    def profiled(self, path):
        def factory():
            self.profiles.append(FakeProfile())
            return self.profiles[-1]

        service = tap.CPUProfiledService(path, profileFactory=factory)
        child = SlowService()
        child.setServiceParent(service)
        return service, child

    def test_profilesUntilStopped(self):
        """
        Profiling starts before the children and ends after they have
        stopped (graceful stops take a while), then the file is written.
        """
        path = self.mktemp()
        service, child = self.profiled(path)
        service.startService()
        self.assertTrue(child.running)
        [profile] = self.profiles
        self.assertEqual(profile.calls, ["enable"])
        stopped = service.stopService()
        self.assertEqual(profile.calls, ["enable"])
        child.stopped.callback(None)
        self.assertEqual(profile.calls, ["enable", "disable", ("dump", path)])
        self.successResultOf(stopped)
        self.assertIn(f"rmux: wrote the CPU profile to {path}", [formatEvent(e) for e in self.events])

    def test_unwritableAtStart(self):
        """
        A file that cannot be written is reported at start, and rmux runs
        unprofiled.
        """
        path = os.path.join(self.mktemp(), "missing-directory", "cpu.prof")
        service, child = self.profiled(path)
        service.startService()
        self.assertTrue(child.running)
        self.assertEqual(self.profiles, [])
        self.assertEqual(self.events[0]["log_level"], LogLevel.error)
        self.assertIn("cannot write a CPU profile", formatEvent(self.events[0]))
        stopped = service.stopService()
        child.stopped.callback(None)
        self.successResultOf(stopped)

    def test_unwritableAtStop(self):
        path = self.mktemp() + "-unwritable"
        service, child = self.profiled(path)
        service.startService()
        stopped = service.stopService()
        child.stopped.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.events[-1]["log_level"], LogLevel.critical)
        self.assertIn("could not write the CPU profile", formatEvent(self.events[-1]))

    def test_realProfile(self):
        """
        With the real L{cProfile}, the file is a profile that L{pstats}
        reads.
        """
        import pstats

        path = self.mktemp()
        service = tap.CPUProfiledService(path)
        service.startService()
        sum(range(1000))
        self.successResultOf(service.stopService())
        self.assertGreater(pstats.Stats(path).total_calls, 0)


class CheckConfigTests(SynchronousTestCase):
    """
    C{--checkConfig}, within this process; L{tests.test_packaging} runs it
    through twistd and the rmux command.
    """

    def setUp(self):
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_valid(self):
        exit = self.assertRaises(
            SystemExit,
            parse,
            "--checkConfig",
            "--socket=/tmp/r.sock",
            "--tcpConnections=r1 r2:7000",
        )
        self.assertEqual(exit.code, 0)
        self.assertEqual(
            self.stdout.getvalue(),
            "rmux: configuration OK: 1 listener: /tmp/r.sock with 2 backends\n",
        )

    def test_invalid(self):
        exit = self.assertRaises(SystemExit, parse, "--checkConfig", "--poolSize=-3")
        self.assertEqual(exit.code, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "rmux: configuration error: --poolSize: must be a positive integer "
            "(0 means 20), got '-3'\n",
        )

    def test_file(self):
        path = FilePath(self.mktemp())
        path.setContent(
            b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1"],'
            b' "routes": [{"prefix": "s:", "tcpConnections": ["r2", "r3"]}]},'
            b' {"port": 6400, "unixConnections": ["/tmp/r.sock"]}]'
        )
        exit = self.assertRaises(SystemExit, parse, "--checkConfig", f"--config={path.path}")
        self.assertEqual(exit.code, 0)
        self.assertEqual(
            self.stdout.getvalue(),
            f"rmux: configuration OK: 2 listeners ({path.path}): /tmp/a.sock with 3 "
            "backends and 1 route, localhost:6400 with 1 backend\n",
        )

    def test_version(self):
        import platform

        import twisted

        exit = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(exit.code, 0)
        self.assertEqual(
            self.stdout.getvalue(),
            f"rmux {rmux.__version__} (Twisted {twisted.__version__}, "
            f"Python {platform.python_version()})\n",
        )


class PluginTests(SynchronousTestCase):
    """
    Tests for the plugin in C{twisted/plugins/rmux_plugin.py}.
    """

    def setUp(self):
        import twisted.plugins

        pluginDirectory = REPOSITORY.child("twisted").child("plugins").path
        if pluginDirectory not in [os.path.abspath(p) for p in twisted.plugins.__path__]:
            self.patch(
                twisted.plugins, "__path__", list(twisted.plugins.__path__) + [pluginDirectory]
            )

    def findPlugin(self):
        for plugin in getPlugins(IServiceMaker):
            if plugin.tapname == "rmux":
                return plugin
        self.fail("no rmux IServiceMaker plugin found")

    def test_badOptionIsOneLine(self):
        """
        Under twistd, a wrong option prints the error and a pointer to
        C{--help}, not twistd's whole usage, and exits with status 1.
        """
        import io

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        for arguments, message in [(["--pooolSize=5"], "option --pooolSize not recognized"),
                                   (["--poolSize=x"], "--poolSize: must be a positive integer")]:
            err.truncate(0)
            err.seek(0)
            exit = self.assertRaises(SystemExit, tap.TwistdOptions().parseOptions, arguments)
            self.assertEqual(exit.code, 1)
            first, second = err.getvalue().splitlines()
            self.assertTrue(first.startswith("twistd rmux: " + message), first)
            self.assertEqual(second, "twistd rmux: see twistd rmux --help")

    def test_found(self):
        plugin = self.findPlugin()
        verifyObject(IServiceMaker, plugin)
        verifyObject(IPlugin, plugin)
        self.assertIs(plugin.options, tap.TwistdOptions)
        self.assertIn("Redis", plugin.description)

    def test_makeService(self):
        plugin = self.findPlugin()
        seen = []
        self.patch(tap, "makeService", lambda options: seen.append(options) or "service")
        options = parse()
        self.assertEqual(plugin.makeService(options), "service")
        self.assertEqual(seen, [options])


def runPython(testCase, *arguments, executable=None):
    """
    Run a Python program of the repository's virtualenv, the way an
    operator would: with the repository on C{PYTHONPATH}, from an empty
    directory.
    """
    environment = dict(os.environ, PYTHONPATH=REPOSITORY.path)
    directory = testCase.mktemp()
    os.mkdir(directory)
    return subprocess.run(
        [executable or sys.executable, *arguments],
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        text=True,
    )


class CommandLineTests(SynchronousTestCase):
    """
    The real C{twistd} and a bare import, in child processes.
    """

    def test_twistdRejectsBadPoolSize(self):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            twistd = REPOSITORY.child(".venv").child("bin").child("twistd").path
        result = runPython(self, "-n", "rmux", "--poolSize=-3", executable=twistd)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn(
            "--poolSize: must be a positive integer (0 means 20), got '-3'", result.stdout
        )

    def test_pluginImportsLittle(self):
        """
        Importing the plugin module, as every plugin search does, does not
        import rmux itself.
        """
        result = runPython(
            self,
            "-c",
            "import sys, twisted.plugins.rmux_plugin as p; "
            "print(p.serviceMaker.tapname, "
            "sorted(m for m in sys.modules if m.startswith('rmux')))",
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertEqual(result.stdout.strip(), "rmux []")
