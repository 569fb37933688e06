"""
Tests for L{rmux.config}: rmux's flags and JSON file, the validated config
objects, and the error messages an operator sees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from rmux.config import (
    DEFAULT_TCP_CONNECTIONS,
    FLAG_NAMES,
    BackendAddress,
    ConfigError,
    ListenerConfig,
    RmuxConfig,
    fromFlags,
    fromJSON,
    loadConfigFile,
)


def tcp(host: str, port: int = 6379) -> BackendAddress:
    return BackendAddress(kind="tcp", host=host, port=port)


def unix(path: str) -> BackendAddress:
    return BackendAddress(kind="unix", path=path)


class ErrorAssertions:
    """
    Mixin: check that a call raises L{ConfigError} with an exact message.
    """

    def assertConfigError(self, message, f, *args, **kwargs):
        error = self.assertRaises(ConfigError, f, *args, **kwargs)
        self.assertEqual(str(error), message)
        return error

    def assertConfigErrorContains(self, fragments, f, *args, **kwargs):
        error = self.assertRaises(ConfigError, f, *args, **kwargs)
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return error


class BackendAddressTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{BackendAddress.fromString}, C{str} and C{repr}.
    """

    def test_hostPort(self):
        address = BackendAddress.fromString("redis1:6380")
        self.assertEqual(address, tcp("redis1", 6380))
        self.assertEqual(
            (address.kind, address.path, address.username, address.password, address.db),
            ("tcp", None, None, None, None),
        )
        self.assertEqual(str(address), "redis1:6380")

    def test_bareHost(self):
        """
        A host without a port gets Redis's port, 6379.
        """
        self.assertEqual(BackendAddress.fromString("redis1"), tcp("redis1", 6379))

    def test_ipv6(self):
        address = BackendAddress.fromString("[::1]:6380")
        self.assertEqual(address, tcp("::1", 6380))
        self.assertEqual(str(address), "[::1]:6380")
        self.assertEqual(BackendAddress.fromString("[fe80::1]"), tcp("fe80::1"))

    def test_ipv6WithoutBrackets(self):
        self.assertConfigError(
            "'::1:6379': an IPv6 address needs brackets, as in [::1]:6379",
            BackendAddress.fromString,
            "::1:6379",
        )

    def test_badIPv6(self):
        self.assertConfigErrorContains(
            ["invalid IPv6 address 'nope'"], BackendAddress.fromString, "[nope]:1"
        )
        self.assertConfigErrorContains(["missing ']'"], BackendAddress.fromString, "[::1")

    def test_badPorts(self):
        for text, port in [("h:0", "0"), ("h:65536", "65536"), ("h:abc", "abc"), ("h:", "")]:
            self.assertConfigError(
                f"{text!r}: port must be an integer from 1 to 65535, got {port!r}",
                BackendAddress.fromString,
                text,
            )
        self.assertEqual(BackendAddress.fromString("h:65535").port, 65535)
        self.assertEqual(BackendAddress.fromString("h:1").port, 1)

    def test_missingHost(self):
        self.assertConfigError("':6379': missing host", BackendAddress.fromString, ":6379")
        self.assertConfigError("'': empty address", BackendAddress.fromString, "")

    def test_unixPath(self):
        address = BackendAddress.fromString("/var/run/redis.sock", "unix")
        self.assertEqual(address, unix("/var/run/redis.sock"))
        self.assertEqual(str(address), "/var/run/redis.sock")
        self.assertEqual((address.host, address.port), (None, None))

    def test_guessKind(self):
        """
        Without a kind, a path is a unix socket and anything else TCP.
        """
        self.assertEqual(BackendAddress.fromString("/tmp/r.sock").kind, "unix")
        self.assertEqual(BackendAddress.fromString("r:1").kind, "tcp")

    def test_redisURL(self):
        address = BackendAddress.fromString("redis://alice:s3cret@redis1:6380/2")
        self.assertEqual(
            (address.kind, address.host, address.port, address.username, address.password),
            ("tcp", "redis1", 6380, "alice", "s3cret"),
        )
        self.assertEqual(address.db, 2)
        self.assertEqual(str(address), "redis1:6380")

    def test_redisURLDefaults(self):
        address = BackendAddress.fromString("redis://redis1")
        self.assertEqual(address, tcp("redis1", 6379))
        self.assertEqual(BackendAddress.fromString("redis://redis1:7000/"), tcp("redis1", 7000))

    def test_redisURLPasswordOnly(self):
        address = BackendAddress.fromString("redis://:p%40ss%2Fword@[::1]:7000?db=3")
        self.assertEqual(
            (address.host, address.port, address.username, address.password, address.db),
            ("::1", 7000, None, "p@ss/word", 3),
        )

    def test_redisURLUserWithoutPassword(self):
        self.assertConfigErrorContains(
            ["username: a user name needs a password", "redis://:password@host"],
            BackendAddress.fromString,
            "redis://alice@redis1",
        )

    def test_badURLs(self):
        cases = [
            ("rediss://h", "TLS (rediss://) is not supported"),
            ("http://h", "unsupported URL scheme 'http'"),
            ("redis://", "a redis URL needs a host"),
            ("redis://h/x", "the database must be a non-negative integer, got 'x'"),
            ("redis://h/1?db=2", "the database is given both in the path and as ?db="),
            ("redis://h?timeout=3", "unknown URL parameter 'timeout'"),
            ("redis://h#x", "a backend URL cannot have a #fragment"),
            ("unix://host/tmp/r.sock", "three slashes"),
            ("unix://", "a unix URL needs a socket path"),
        ]
        for text, message in cases:
            self.assertConfigErrorContains([message], BackendAddress.fromString, text)

    def test_unixURL(self):
        address = BackendAddress.fromString("unix:///tmp/redis.sock?db=4", "unix")
        self.assertEqual((address.kind, address.path, address.db), ("unix", "/tmp/redis.sock", 4))
        address = BackendAddress.fromString("unix://bob:pw@/tmp/redis.sock")
        self.assertEqual((address.username, address.password), ("bob", "pw"))
        self.assertEqual(str(address), "/tmp/redis.sock")
        self.assertEqual(BackendAddress.fromString("unix:/tmp/r.sock"), unix("/tmp/r.sock"))

    def test_kindMismatch(self):
        """
        Which list a backend is in decides its place in the hash order, so a
        URL of the other kind is refused rather than moved.
        """
        self.assertConfigError(
            "'unix:///tmp/r.sock' is a unix address; list it in unixConnections",
            BackendAddress.fromString,
            "unix:///tmp/r.sock",
            "tcp",
        )
        self.assertConfigError(
            "'redis://:***@h' is a tcp address; list it in tcpConnections",
            BackendAddress.fromString,
            "redis://:pw@h",
            "unix",
        )
        self.assertConfigError(
            "'/tmp/r.sock': looks like a socket path; list it in unixConnections",
            BackendAddress.fromString,
            "/tmp/r.sock",
            "tcp",
        )

    def test_passwordHidden(self):
        """
        Neither C{str}, C{repr} nor an error message shows the password.
        """
        address = BackendAddress.fromString("redis://alice:hunter2@redis1/1")
        self.assertNotIn("hunter2", str(address))
        self.assertNotIn("hunter2", repr(address))
        self.assertEqual(
            repr(address),
            "BackendAddress(kind='tcp', host='redis1', port=6379, "
            "username='alice', password=<hidden>, db=1)",
        )
        listener = ListenerConfig(port=1, backends=[address])
        self.assertNotIn("hunter2", repr(listener))
        self.assertNotIn("hunter2", repr(RmuxConfig(listeners=[listener])))
        error = self.assertRaises(
            ConfigError, BackendAddress.fromString, "redis://alice:hunter2@redis1:x"
        )
        self.assertNotIn("hunter2", str(error))
        self.assertIn("redis://alice:***@redis1:x", str(error))
        error = self.assertRaises(
            ConfigError, BackendAddress.fromString, "redis://alice:hunter2@[bad"
        )
        self.assertNotIn("hunter2", str(error))

    @settings(max_examples=50, deadline=None)
    @given(
        host=st.text(string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=20),
        port=st.integers(1, 65535),
        password=st.text(min_size=4, max_size=20).filter(
            lambda p: p not in "BackendAddress(kind='tcp', password=<hidden>)"
        ),
    )
    def test_roundTrip(self, host, port, password):
        """
        C{str} of a TCP address parses back to it, and a URL password
        never shows.
        """
        address = tcp(host, port)
        self.assertEqual(BackendAddress.fromString(str(address)), address)
        withPassword = dataclasses.replace(address, password=password)
        self.assertNotIn(password, repr(withPassword).replace(repr(host), ""))
        self.assertEqual(str(withPassword), str(address))

    def test_constructorValidates(self):
        self.assertConfigError(
            "port: must be an integer from 1 to 65535, got 0",
            BackendAddress,
            kind="tcp",
            host="h",
            port=0,
        )
        self.assertConfigError(
            "kind: must be 'tcp' or 'unix', got 'udp'", BackendAddress, kind="udp"
        )
        self.assertConfigErrorContains(["path: must be a non-empty"], BackendAddress, kind="unix")
        self.assertConfigErrorContains(
            ["db: must be a non-negative integer"], BackendAddress, kind="unix", path="/x", db=-1
        )

    def test_frozen(self):
        address = tcp("h")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, address, "port", 1)


class ListenerConfigTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{ListenerConfig} built in code, as a C{.tac} file does.
    """

    def test_defaults(self):
        listener = ListenerConfig(backends=[tcp("r")])
        self.assertEqual(
            (listener.host, listener.port, listener.socket, listener.socketMode),
            ("localhost", 6379, None, 0o666),
        )
        self.assertEqual(
            (listener.poolSize, listener.failover, listener.maxProcesses), (20, False, 0)
        )
        self.assertEqual(
            (listener.localReadTimeout, listener.localWriteTimeout, listener.idleTimeout),
            (0, 0, 0),
        )
        self.assertEqual(
            (
                listener.remoteConnectTimeout,
                listener.remoteReadTimeout,
                listener.remoteWriteTimeout,
            ),
            (500, 500, 500),
        )

    def test_tcpBeforeUnix(self):
        """
        Backends are ordered TCP first, then unix, each group as given, as
        rmux builds its list from its two flags.
        """
        listener = ListenerConfig(backends=["/a.sock", "r1", unix("/b.sock"), "r2:7000"])
        self.assertEqual(
            listener.backends, (tcp("r1"), tcp("r2", 7000), unix("/a.sock"), unix("/b.sock"))
        )
        self.assertIsInstance(listener.backends, tuple)

    def test_multiplexing(self):
        """
        More than one configured backend means multiplexing, even if it is
        the same server twice.
        """
        self.assertFalse(ListenerConfig(backends=[tcp("r")]).multiplexing)
        self.assertTrue(ListenerConfig(backends=[tcp("r"), tcp("r")]).multiplexing)
        self.assertTrue(ListenerConfig(backends=[tcp("r"), unix("/s")]).multiplexing)

    def test_name(self):
        self.assertEqual(ListenerConfig(socket="/tmp/r.sock", backends=["r"]).name, "/tmp/r.sock")
        self.assertEqual(ListenerConfig(port=7000, backends=["r"]).name, "localhost:7000")
        self.assertEqual(ListenerConfig(host="::1", port=7000, backends=["r"]).name, "[::1]:7000")
        self.assertEqual(ListenerConfig(host="", port=7000, backends=["r"]).name, "*:7000")

    def test_validation(self):
        cases = [
            ({"poolSize": 0}, "poolSize: must be a positive integer, got 0"),
            ({"port": 65536}, "port: must be an integer from 0 to 65535, got 65536"),
            ({"socketMode": 0o1777}, "socketMode: must be a mode from 0 to 0777, got 1023"),
            ({"idleTimeout": -1}, "idleTimeout: must be a non-negative integer (ms), got -1"),
            (
                {"remoteReadTimeout": 0},
                "remoteReadTimeout: must be a positive integer (ms), got 0",
            ),
            ({"failover": 1}, "failover: must be true or false, got 1"),
            ({"poolSize": True}, "poolSize: must be a positive integer, got True"),
            ({"socket": ""}, "socket: must be a non-empty path, got ''"),
        ]
        for kwargs, message in cases:
            self.assertConfigError(message, ListenerConfig, backends=["r"], **kwargs)
        self.assertConfigError("at least one backend is required", ListenerConfig, backends=[])
        self.assertConfigErrorContains(
            ["expected a sequence"], ListenerConfig, backends="redis1:6379"
        )

    def test_immutable(self):
        listener = ListenerConfig(backends=["r"])
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, listener, "poolSize", 3)

    def test_replaceValidates(self):
        listener = ListenerConfig(backends=["r"])
        self.assertEqual(dataclasses.replace(listener, poolSize=3).poolSize, 3)
        self.assertRaises(ConfigError, dataclasses.replace, listener, poolSize=-1)

    def test_keywordOnly(self):
        """
        Fields are keyword-only, so adding fields later cannot shift
        positional arguments under existing callers.
        """
        self.assertRaises(TypeError, ListenerConfig, "localhost", 6379)


class RmuxConfigTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{RmuxConfig}.
    """

    def test_defaults(self):
        config = RmuxConfig(listeners=[ListenerConfig(backends=["r"])])
        self.assertIsInstance(config.listeners, tuple)
        self.assertEqual(
            (config.debug, config.useSyslog, config.graphite, config.timing, config.cpuProfile),
            (False, False, None, False, None),
        )

    def test_noListeners(self):
        self.assertConfigError("at least one listener is required", RmuxConfig, listeners=())

    def test_duplicateSocket(self):
        listeners = [
            ListenerConfig(socket="/tmp/r.sock", backends=["a"]),
            ListenerConfig(socket="/tmp/../tmp/r.sock", backends=["b"]),
        ]
        self.assertConfigError(
            "listener 2: listens on /tmp/../tmp/r.sock, as listener 1 already does",
            RmuxConfig,
            listeners=listeners,
        )

    def test_duplicatePort(self):
        self.assertConfigError(
            "listener 2: listens on localhost:7000, as listener 1 already does",
            RmuxConfig,
            listeners=[ListenerConfig(port=7000, backends=["a"])] * 2,
        )
        self.assertConfigError(
            "listener 2: listens on *:7000, as listener 1 already does",
            RmuxConfig,
            listeners=[
                ListenerConfig(host="127.0.0.1", port=7000, backends=["a"]),
                ListenerConfig(host="", port=7000, backends=["a"]),
            ],
        )

    def test_distinctListeners(self):
        """
        Different interfaces, ports or sockets are fine, and so are two
        listeners on port 0, which each get a free port.
        """
        RmuxConfig(
            listeners=[
                ListenerConfig(host="127.0.0.1", port=7000, backends=["a"]),
                ListenerConfig(host="127.0.0.2", port=7000, backends=["a"]),
                ListenerConfig(port=0, backends=["a"]),
                ListenerConfig(port=0, backends=["a"]),
                ListenerConfig(socket="/tmp/a", port=7000, backends=["a"]),
            ]
        )

    def test_ownBackend(self):
        self.assertConfigError(
            "listener 1: /tmp/r.sock is also one of its own backends; "
            "commands would loop through rmux",
            RmuxConfig,
            listeners=[ListenerConfig(socket="/tmp/r.sock", backends=["/tmp/r.sock"])],
        )

    def test_graphite(self):
        listeners = [ListenerConfig(backends=["a"])]
        self.assertEqual(
            RmuxConfig(listeners=listeners, graphite="stats:8125").graphite, "stats:8125"
        )
        self.assertConfigError(
            "graphite: 'stats': missing port (expected host:port)",
            RmuxConfig,
            listeners=listeners,
            graphite="stats",
        )


class FromFlagsTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{fromFlags}: rmux's flag semantics.
    """

    def listener(self, **values):
        config = fromFlags(values)
        self.assertEqual(len(config.listeners), 1)
        return config.listeners[0]

    def test_defaults(self):
        """
        With no flags, the result is Go rmux's defaults, except syslog.
        """
        config = fromFlags({})
        self.assertEqual(
            config,
            RmuxConfig(listeners=[ListenerConfig(backends=["localhost:6380", "localhost:6381"])]),
        )
        self.assertFalse(config.useSyslog)
        self.assertEqual(DEFAULT_TCP_CONNECTIONS, "localhost:6380 localhost:6381")

    def test_noneMeansNotGiven(self):
        self.assertEqual(fromFlags({name: None for name in FLAG_NAMES}), fromFlags({}))

    def test_allFlags(self):
        """
        Every flag lands in its field, from strings as on the command line.
        """
        config = fromFlags(
            {
                "host": "0.0.0.0",
                "port": "7000",
                "socket": "/tmp/r.sock",
                "socketMode": "0660",
                "tcpConnections": "r1:6380 r2",
                "unixConnections": "/s1 /s2",
                "poolSize": "5",
                "failover": 1,
                "maxProcesses": "4",
                "localReadTimeout": "11",
                "localWriteTimeout": "12",
                "idleTimeout": "13",
                "remoteConnectTimeout": "21",
                "remoteReadTimeout": "22",
                "remoteWriteTimeout": "23",
                "debug": 1,
                "useSyslog": 1,
                "graphite": "stats:8125",
                "timing": 1,
                "cpuProfile": "/tmp/cpu.prof",
            }
        )
        self.assertEqual(
            config,
            RmuxConfig(
                listeners=[
                    ListenerConfig(
                        host="0.0.0.0",
                        port=7000,
                        socket="/tmp/r.sock",
                        socketMode=0o660,
                        backends=[tcp("r1", 6380), tcp("r2"), unix("/s1"), unix("/s2")],
                        poolSize=5,
                        failover=True,
                        maxProcesses=4,
                        localReadTimeout=11,
                        localWriteTimeout=12,
                        idleTimeout=13,
                        remoteConnectTimeout=21,
                        remoteReadTimeout=22,
                        remoteWriteTimeout=23,
                    )
                ],
                debug=True,
                useSyslog=True,
                graphite="stats:8125",
                timing=True,
                cpuProfile="/tmp/cpu.prof",
            ),
        )

    def test_coercedValues(self):
        """
        Values already converted (by a caller's own option parser) work too.
        """
        listener = self.listener(port=7000, poolSize=3, failover=True, socketMode=0o600)
        self.assertEqual(
            (listener.port, listener.poolSize, listener.failover, listener.socketMode),
            (7000, 3, True, 0o600),
        )
        self.assertTrue(fromFlags({"debug": "true"}).debug)
        self.assertFalse(fromFlags({"debug": "false"}).debug)

    def test_milliseconds(self):
        """
        Timeouts are integer milliseconds, stored as given.
        """
        listener = self.listener(remoteReadTimeout="1500", idleTimeout="60000")
        self.assertEqual((listener.remoteReadTimeout, listener.idleTimeout), (1500, 60000))
        self.assertConfigError(
            "--remoteReadTimeout: must be a non-negative integer (ms), got '1.5'",
            fromFlags,
            {"remoteReadTimeout": "1.5"},
        )

    def test_remoteTimeout(self):
        """
        C{remoteTimeout} sets all three remote timeouts; individual ones win;
        0 means not set at every level, falling back to 500 ms.
        """
        listener = self.listener(remoteTimeout="2000")
        self.assertEqual(
            (
                listener.remoteConnectTimeout,
                listener.remoteReadTimeout,
                listener.remoteWriteTimeout,
            ),
            (2000, 2000, 2000),
        )
        listener = self.listener(
            remoteTimeout="2000", remoteReadTimeout="100", remoteWriteTimeout="0"
        )
        self.assertEqual(
            (
                listener.remoteConnectTimeout,
                listener.remoteReadTimeout,
                listener.remoteWriteTimeout,
            ),
            (2000, 100, 2000),
        )
        listener = self.listener(remoteTimeout="0", remoteConnectTimeout="50")
        self.assertEqual(
            (
                listener.remoteConnectTimeout,
                listener.remoteReadTimeout,
                listener.remoteWriteTimeout,
            ),
            (50, 500, 500),
        )

    def test_localTimeout(self):
        listener = self.listener(localTimeout="300")
        self.assertEqual((listener.localReadTimeout, listener.localWriteTimeout), (300, 300))
        listener = self.listener(localTimeout="300", localWriteTimeout="40")
        self.assertEqual((listener.localReadTimeout, listener.localWriteTimeout), (300, 40))

    def test_negativeTimeout(self):
        for name in (
            "localTimeout",
            "localReadTimeout",
            "localWriteTimeout",
            "idleTimeout",
            "remoteTimeout",
            "remoteConnectTimeout",
            "remoteReadTimeout",
            "remoteWriteTimeout",
        ):
            self.assertConfigError(
                f"--{name}: must be a non-negative integer (ms), got '-1'",
                fromFlags,
                {name: "-1"},
            )

    def test_poolSize(self):
        self.assertEqual(self.listener(poolSize="0").poolSize, 20)
        self.assertEqual(self.listener(poolSize="1").poolSize, 1)
        self.assertConfigError(
            "--poolSize: must be a positive integer (0 means 20), got '-3'",
            fromFlags,
            {"poolSize": "-3"},
        )
        self.assertConfigError(
            "--poolSize: must be a positive integer (0 means 20), got 'many'",
            fromFlags,
            {"poolSize": "many"},
        )

    def test_ports(self):
        self.assertEqual(self.listener(port="0").port, 0)
        self.assertEqual(self.listener(port="65535").port, 65535)
        self.assertConfigError(
            "--port: must be an integer from 0 to 65535, got '65536'", fromFlags, {"port": "65536"}
        )
        self.assertConfigError(
            "--tcpConnections: 'r:0': port must be an integer from 1 to 65535, got '0'",
            fromFlags,
            {"tcpConnections": "r:0"},
        )

    def test_maxProcesses(self):
        self.assertEqual(self.listener(maxProcesses="8").maxProcesses, 8)
        self.assertConfigError(
            "--maxProcesses: must be a non-negative integer, got '-1'",
            fromFlags,
            {"maxProcesses": "-1"},
        )

    def test_tcpThenUnix(self):
        listener = self.listener(unixConnections="/u1 /u2", tcpConnections="t1 t2")
        self.assertEqual(listener.backends, (tcp("t1"), tcp("t2"), unix("/u1"), unix("/u2")))

    def test_whitespace(self):
        """
        Any run of whitespace separates backends; Go rmux turned a double
        space into an empty backend.
        """
        listener = self.listener(
            tcpConnections="  t1  t2\tt3\n t4 ", unixConnections=" /u1   /u2 "
        )
        self.assertEqual(
            [str(b) for b in listener.backends],
            ["t1:6379", "t2:6379", "t3:6379", "t4:6379", "/u1", "/u2"],
        )

    def test_defaultTCPConnections(self):
        """
        The default backends apply only when neither list is given.
        """
        self.assertEqual(
            self.listener().backends, (tcp("localhost", 6380), tcp("localhost", 6381))
        )
        self.assertEqual(self.listener(unixConnections="/u").backends, (unix("/u"),))
        self.assertConfigError(
            "at least one backend is required (--tcpConnections or --unixConnections)",
            fromFlags,
            {"tcpConnections": ""},
        )
        self.assertConfigError(
            "at least one backend is required (--tcpConnections or --unixConnections)",
            fromFlags,
            {"tcpConnections": "  ", "unixConnections": ""},
        )

    def test_socket(self):
        listener = self.listener(socket="/tmp/r.sock", host="ignored", port="1")
        self.assertEqual(listener.socket, "/tmp/r.sock")
        self.assertEqual(listener.name, "/tmp/r.sock")
        self.assertIsNone(self.listener(socket="").socket)

    def test_socketMode(self):
        for text in ("0660", "660", "0o660"):
            self.assertEqual(self.listener(socketMode=text).socketMode, 0o660)
        self.assertConfigError(
            "--socketMode: must be an octal mode such as '0660', got '0668'",
            fromFlags,
            {"socketMode": "0668"},
        )
        self.assertConfigError(
            "--socketMode: must be a mode from 0 to 0777, got '1777'",
            fromFlags,
            {"socketMode": "1777"},
        )

    def test_booleans(self):
        self.assertConfigError(
            "--failover: must be true or false, got 'yes'", fromFlags, {"failover": "yes"}
        )
        self.assertFalse(self.listener(failover=0).failover)

    def test_urlBackends(self):
        listener = self.listener(
            tcpConnections="redis://:pw@r1:6380/1", unixConnections="unix:///tmp/r.sock?db=2"
        )
        self.assertEqual(
            [(b.kind, str(b), b.password, b.db) for b in listener.backends],
            [("tcp", "r1:6380", "pw", 1), ("unix", "/tmp/r.sock", None, 2)],
        )

    def test_unknownFlag(self):
        self.assertConfigError("--poolsize: unknown option", fromFlags, {"poolsize": "3"})

    def test_ownBackend(self):
        """
        A listener on localhost:6379 that forwards to localhost:6379 is
        refused; on the command line there is no listener number.
        """
        self.assertConfigError(
            "localhost:6379 is also one of its own backends; commands would loop through rmux",
            fromFlags,
            {"tcpConnections": "localhost:6379"},
        )

    def test_graphite(self):
        self.assertEqual(fromFlags({"graphite": "stats:8125"}).graphite, "stats:8125")
        self.assertIsNone(fromFlags({"graphite": ""}).graphite)
        self.assertConfigError(
            "--graphite: 'stats': missing port (expected host:port)",
            fromFlags,
            {"graphite": "stats"},
        )

    def test_configWins(self):
        """
        C{--config} replaces the pool-related flags, but the global flags
        still apply.
        """
        path = FilePath(self.mktemp())
        path.setContent(b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1:6380"]}]')
        config = fromFlags(
            {
                "config": path.path,
                "socket": "/tmp/ignored.sock",
                "poolSize": "3",
                "tcpConnections": "ignored:1",
                "debug": 1,
                "graphite": "stats:8125",
            }
        )
        self.assertEqual(
            config,
            RmuxConfig(
                listeners=[ListenerConfig(socket="/tmp/a.sock", backends=["r1:6380"])],
                debug=True,
                graphite="stats:8125",
            ),
        )

    def test_configMissing(self):
        path = self.mktemp()
        self.assertConfigError(
            f"{path}: cannot read config file: No such file or directory",
            fromFlags,
            {"config": path},
        )


class FromJSONTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{fromJSON} and L{loadConfigFile}: rmux's JSON config.
    """

    def load(self, document):
        return fromJSON(json.dumps(document))

    def test_twoSocketListeners(self):
        """
        rmux's own test: two instances, each on a socket with one TCP
        backend.
        """
        config = fromJSON("""[
              {"socket": "/tmp/rmux1.sock", "tcpConnections": ["localhost:6379"]},
              {"socket": "/tmp/rmux2.sock", "tcpConnections": ["localhost:6380"]}
            ]""")
        self.assertEqual(
            config.listeners,
            (
                ListenerConfig(socket="/tmp/rmux1.sock", backends=[tcp("localhost")]),
                ListenerConfig(socket="/tmp/rmux2.sock", backends=[tcp("localhost", 6380)]),
            ),
        )
        self.assertFalse(config.listeners[0].multiplexing)

    def test_allFields(self):
        """
        rmux's own test: every field, including C{failover}.
        """
        config = fromJSON("""[{
              "host": "127.0.0.1", "port": 7000, "socket": "/tmp/rmux.sock",
              "maxProcesses": 2, "poolSize": 7, "failover": true,
              "tcpConnections": ["r1:6380", "r2"],
              "unixConnections": ["/tmp/redis.sock"],
              "localTimeout": 100, "localReadTimeout": 101, "localWriteTimeout": 0,
              "remoteTimeout": 900, "remoteReadTimeout": 901, "remoteWriteTimeout": 0,
              "remoteConnectTimeout": 902,
              "socketMode": "0600", "idleTimeout": 30000
            }]""")
        self.assertEqual(
            config.listeners,
            (
                ListenerConfig(
                    host="127.0.0.1",
                    port=7000,
                    socket="/tmp/rmux.sock",
                    socketMode=0o600,
                    backends=[tcp("r1", 6380), tcp("r2"), unix("/tmp/redis.sock")],
                    poolSize=7,
                    failover=True,
                    maxProcesses=2,
                    localReadTimeout=101,
                    localWriteTimeout=100,
                    idleTimeout=30000,
                    remoteConnectTimeout=902,
                    remoteReadTimeout=901,
                    remoteWriteTimeout=900,
                ),
            ),
        )
        self.assertTrue(config.listeners[0].multiplexing)

    def test_stringForArray(self):
        """
        rmux's own test: a string where an array is expected is an error.
        """
        self.assertConfigError(
            "listener 2: tcpConnections: expected an array of strings, got a string",
            self.load,
            [
                {"socket": "/tmp/a", "tcpConnections": ["r1"]},
                {"socket": "/tmp/b", "tcpConnections": "r1 r2"},
            ],
        )

    def test_repositoryExamples(self):
        """
        The two examples in rmux's repository: a pooler with a small pool
        and a long timeout, and a "mux" listing one backend twice.
        """
        config = self.load(
            [
                {
                    "socket": "/tmp/rmux.sock",
                    "tcpConnections": ["localhost:6379"],
                    "poolSize": 2,
                    "remoteTimeout": 2000,
                },
                {
                    "socket": "/tmp/rmux-mux.sock",
                    "tcpConnections": ["localhost:6379", "localhost:6379"],
                },
            ]
        )
        pooler, mux = config.listeners
        self.assertEqual(
            (pooler.poolSize, pooler.remoteReadTimeout, pooler.multiplexing), (2, 2000, False)
        )
        self.assertTrue(mux.multiplexing)

    def test_defaults(self):
        listener = self.load([{"port": 7000, "tcpConnections": ["r"]}]).listeners[0]
        self.assertEqual(listener, ListenerConfig(host="localhost", port=7000, backends=["r"]))
        self.assertEqual(listener.poolSize, 20)
        self.assertEqual(listener.remoteConnectTimeout, 500)

    def test_zeroMeansDefault(self):
        listener = self.load(
            [{"port": 7000, "tcpConnections": ["r"], "poolSize": 0, "remoteTimeout": 0}]
        ).listeners[0]
        self.assertEqual((listener.poolSize, listener.remoteReadTimeout), (20, 500))

    def test_nullIsMissing(self):
        """
        As in Go, C{null} leaves a field at its default.
        """
        listener = self.load(
            [{"port": 7000, "tcpConnections": ["r"], "poolSize": None, "socket": None}]
        ).listeners[0]
        self.assertEqual((listener.poolSize, listener.socket), (20, None))

    def test_tcpThenUnix(self):
        listener = self.load(
            [{"port": 1, "unixConnections": ["/u1", "/u2"], "tcpConnections": ["t1", "t2"]}]
        ).listeners[0]
        self.assertEqual(listener.backends, (tcp("t1"), tcp("t2"), unix("/u1"), unix("/u2")))

    def test_noBackends(self):
        self.assertConfigError(
            "listener 1: at least one backend is required (tcpConnections or unixConnections)",
            self.load,
            [{"port": 7000}],
        )
        self.assertConfigError(
            "listener 1: at least one backend is required (tcpConnections or unixConnections)",
            self.load,
            [{"port": 7000, "tcpConnections": [], "unixConnections": []}],
        )

    def test_noAddress(self):
        message = (
            "listener 1: needs a socket or a port to listen on "
            "(Go rmux would pick a random port)"
        )
        self.assertConfigError(message, self.load, [{"tcpConnections": ["r"]}])
        self.assertConfigError(
            message, self.load, [{"host": "localhost", "socket": "", "tcpConnections": ["r"]}]
        )
        self.assertEqual(self.load([{"port": 0, "tcpConnections": ["r"]}]).listeners[0].port, 0)

    def test_unknownField(self):
        self.assertConfigError(
            "listener 1: tcpConnection: unknown field (did you mean tcpConnections?)",
            self.load,
            [{"port": 1, "tcpConnection": ["r"]}],
        )
        self.assertConfigError(
            "listener 1: colour: unknown field",
            self.load,
            [{"port": 1, "tcpConnections": ["r"], "colour": "blue"}],
        )

    def test_duplicateField(self):
        self.assertConfigError(
            "listener 1: port: given more than once",
            fromJSON,
            '[{"port": 1, "tcpConnections": ["r"], "port": 2}]',
        )

    def test_wrongTypes(self):
        cases = [
            ("port", "7000", "expected an integer, got a string"),
            ("port", 7000.5, "expected an integer, got a number"),
            ("poolSize", True, "expected an integer, got a boolean"),
            ("failover", "true", "expected a boolean, got a string"),
            ("failover", 1, "expected a boolean, got an integer"),
            ("host", 1, "expected a string, got an integer"),
            ("socket", [], "expected a string, got an array"),
            ("remoteTimeout", {}, "expected an integer, got an object"),
            ("unixConnections", "/u", "expected an array of strings, got a string"),
            (
                "tcpConnections",
                ["r", 1],
                "expected an array of strings, got an array containing an integer",
            ),
            ("socketMode", 660, 'expected an octal string such as "0660", got an integer'),
        ]
        for name, value, problem in cases:
            listener = {"port": 1, "tcpConnections": ["r"]}
            listener[name] = value
            self.assertConfigError(f"listener 1: {name}: {problem}", self.load, [listener])

    def test_badValues(self):
        cases = [
            ("port", 65536, "port: must be an integer from 0 to 65535, got 65536"),
            ("port", -1, "port: must be an integer from 0 to 65535, got -1"),
            ("poolSize", -3, "poolSize: must be a positive integer (0 means 20), got -3"),
            (
                "remoteReadTimeout",
                -5,
                "remoteReadTimeout: must be a non-negative integer (ms), got -5",
            ),
            ("socketMode", "0999", "socketMode: must be an octal mode such as '0660', got '0999'"),
            (
                "tcpConnections",
                ["r1", "r2:99999"],
                "tcpConnections[1]: 'r2:99999': "
                "port must be an integer from 1 to 65535, got '99999'",
            ),
            (
                "unixConnections",
                ["redis://:secret@r"],
                "unixConnections[0]: 'redis://:***@r' is a tcp address; list it in tcpConnections",
            ),
        ]
        for name, value, problem in cases:
            listener = {"port": 1, "tcpConnections": ["r"]}
            listener[name] = value
            self.assertConfigError(f"listener 1: {problem}", self.load, [listener])

    def test_duplicateListeners(self):
        self.assertConfigError(
            "listener 3: listens on /tmp/a.sock, as listener 1 already does",
            self.load,
            [
                {"socket": "/tmp/a.sock", "tcpConnections": ["r"]},
                {"port": 7000, "tcpConnections": ["r"]},
                {"socket": "/tmp/a.sock", "tcpConnections": ["r"]},
            ],
        )
        self.assertConfigError(
            "listener 2: listens on localhost:7000, as listener 1 already does",
            self.load,
            [{"port": 7000, "tcpConnections": ["a"]}, {"port": 7000, "tcpConnections": ["b"]}],
        )

    def test_invalidJSON(self):
        self.assertConfigError(
            "invalid JSON: Expecting ',' delimiter (line 2, column 3)",
            fromJSON,
            '[{"port": 1}\n  {"port": 2}]',
        )
        self.assertConfigError("invalid JSON: Expecting value (line 1, column 1)", fromJSON, "")

    def test_topLevel(self):
        self.assertConfigError(
            "expected an array of listener objects, got an object "
            "(wrap the listener object in [ ])",
            self.load,
            {"port": 1, "tcpConnections": ["r"]},
        )
        self.assertConfigError("at least one listener is required", self.load, [])
        self.assertConfigError(
            "listener 2: expected an object, got a string",
            self.load,
            [{"port": 1, "tcpConnections": ["r"]}, "x"],
        )

    def test_urlBackends(self):
        listener = self.load(
            [
                {
                    "port": 1,
                    "tcpConnections": ["redis://alice:pw@r1:6380/2"],
                    "unixConnections": ["unix:///tmp/r.sock?db=1"],
                }
            ]
        ).listeners[0]
        first, second = listener.backends
        self.assertEqual((first.username, first.password, first.db), ("alice", "pw", 2))
        self.assertEqual((second.path, second.db), ("/tmp/r.sock", 1))

    def test_bytes(self):
        self.assertEqual(
            fromJSON(b'\xef\xbb\xbf[{"port": 1, "tcpConnections": ["r"]}]').listeners[0].port, 1
        )

    def test_loadConfigFile(self):
        path = FilePath(self.mktemp())
        path.setContent(b'[{"socket": "/tmp/a.sock", "unixConnections": ["/tmp/r.sock"]}]')
        self.assertEqual(
            loadConfigFile(path.path).listeners,
            (ListenerConfig(socket="/tmp/a.sock", backends=[unix("/tmp/r.sock")]),),
        )
        self.assertEqual(loadConfigFile(path).listeners, loadConfigFile(path.path).listeners)

    def test_loadConfigFileErrors(self):
        """
        Errors from a file start with the file's name.
        """
        path = FilePath(self.mktemp())
        path.setContent(b'[{"port": 1, "tcpConnections": "r"}]')
        self.assertConfigError(
            f"{path.path}: listener 1: tcpConnections: expected an array of strings, got a string",
            loadConfigFile,
            path.path,
        )
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertConfigErrorContains(
            [f"{directory}: cannot read config file"], loadConfigFile, directory
        )
