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

from rmux.auth import Authenticator
from rmux.config import (
    DEFAULT_CLIENT_OUTPUT_LIMIT,
    DEFAULT_MAX_ARGUMENTS,
    DEFAULT_MAX_BULK_LENGTH,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_INLINE_LENGTH,
    DEFAULT_MAX_PINNED,
    DEFAULT_PINNED_WAIT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TCP_CONNECTIONS,
    FLAG_NAMES,
    BackendAddress,
    ConfigError,
    ListenerConfig,
    RmuxConfig,
    RouteConfig,
    UserConfig,
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
            ("rediss:///tmp/r.sock", "a redis URL needs a host"),
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
        shown = repr(withPassword).replace(repr(host), "").replace(f"port={port!r}", "")
        self.assertNotIn(password, shown)
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

    def test_weightAndNameDefaults(self):
        address = BackendAddress.fromString("r1:6380")
        self.assertEqual((address.weight, address.name), (1, None))
        self.assertEqual(repr(address), "BackendAddress(kind='tcp', host='r1', port=6380)")

    def test_twemproxyWeight(self):
        """
        twemproxy's C{host:port:weight} gives a weight; C{str} stays the
        bare address, C{repr} shows the weight.
        """
        address = BackendAddress.fromString("r1:6380:3")
        self.assertEqual(address, BackendAddress(kind="tcp", host="r1", port=6380, weight=3))
        self.assertEqual(str(address), "r1:6380")
        self.assertEqual(
            repr(address), "BackendAddress(kind='tcp', host='r1', port=6380, weight=3)"
        )
        address = BackendAddress.fromString("[::1]:6379:2")
        self.assertEqual((address.host, address.port, address.weight), ("::1", 6379, 2))
        self.assertEqual(str(address), "[::1]:6379")

    def test_twemproxyName(self):
        """
        A name follows the address after whitespace, as in twemproxy's
        C{host:port:weight name}; the weight may be left out.
        """
        address = BackendAddress.fromString("  r1:6380:2 \t cache-a ")
        self.assertEqual(
            (address.host, address.port, address.weight, address.name),
            ("r1", 6380, 2, "cache-a"),
        )
        self.assertEqual(str(address), "r1:6380")
        self.assertEqual(
            repr(address),
            "BackendAddress(kind='tcp', host='r1', port=6380, weight=2, name='cache-a')",
        )
        self.assertEqual(BackendAddress.fromString("r1 a").name, "a")
        # Guessing the kind looks at the address, not at the name.
        self.assertEqual(BackendAddress.fromString("r1:6379:2 eu/a").name, "eu/a")
        self.assertEqual(BackendAddress.fromString("[::1]:7000:4 v6").name, "v6")

    def test_urlWeightAndName(self):
        address = BackendAddress.fromString("redis://:pw@r1:6380/2?weight=3&name=cache-a")
        self.assertEqual(
            (str(address), address.db, address.weight, address.name, address.password),
            ("r1:6380", 2, 3, "cache-a", "pw"),
        )
        self.assertNotIn("pw", repr(address))
        address = BackendAddress.fromString("redis://r1 cache-b")
        self.assertEqual(address.name, "cache-b")
        address = BackendAddress.fromString("unix:///tmp/r.sock?db=1&weight=2&name=u", "unix")
        self.assertEqual(
            (address.path, address.db, address.weight, address.name), ("/tmp/r.sock", 1, 2, "u")
        )
        self.assertConfigError(
            "'redis://r1?name=a b': the name is given both after the URL and as ?name=",
            BackendAddress.fromString,
            "redis://r1?name=a b",
        )

    def test_badWeights(self):
        for text, weight in [("r:1:0", "0"), ("r:1:x", "x"), ("r:1:", ""), ("[::1]:1:-2", "-2")]:
            self.assertConfigError(
                f"{text!r}: weight must be a positive integer, got {weight!r}",
                BackendAddress.fromString,
                text,
            )
        self.assertConfigError(
            "'redis://r?weight=0': weight must be a positive integer, got '0'",
            BackendAddress.fromString,
            "redis://r?weight=0",
        )
        # Two colons without brackets are still an unbracketed IPv6 address.
        for text in ("fe80::1", "::1", "::1:6379"):
            self.assertConfigErrorContains(
                ["an IPv6 address needs brackets"], BackendAddress.fromString, text
            )

    def test_badNames(self):
        self.assertConfigError(
            "'r:1:2 a b': name: must be a non-empty name without spaces or control "
            "characters, got 'a b'",
            BackendAddress.fromString,
            "r:1:2 a b",
        )
        for name in ("", "a b", "a\x00", "\x1b[31m", 3):
            self.assertConfigErrorContains(
                ["name: must be a non-empty name"],
                BackendAddress,
                kind="tcp",
                host="h",
                port=1,
                name=name,
            )

    def test_constructorValidatesWeight(self):
        for weight in (0, -1, True, 1.5, "2"):
            self.assertConfigErrorContains(
                [f"weight: must be a positive integer, got {weight!r}"],
                BackendAddress,
                kind="tcp",
                host="h",
                port=1,
                weight=weight,
            )
        self.assertEqual(BackendAddress(kind="unix", path="/s", weight=7).weight, 7)

    def test_socketPathCarriesNoWeight(self):
        """
        A plain socket path is taken as it is, so one that looks like it
        carries a twemproxy weight or name is refused with the two ways to
        give them.
        """
        for text, kind in [
            ("/tmp/r.sock:2", "unix"),
            ("/tmp/r.sock:2 name", "unix"),
            ("/tmp/r.sock name", None),
            ("/tmp/my redis.sock", "unix"),
        ]:
            self.assertConfigError(
                f"{text!r}: a socket path cannot carry a weight or name here (a path may "
                "contain ':' and spaces); write unix:///path?weight=N&name=NAME, or in the "
                'JSON file an object {"address": "/path", "weight": N, "name": "NAME"}',
                BackendAddress.fromString,
                text,
                kind,
            )
        self.assertEqual(BackendAddress.fromString("/tmp/a:b.sock", "unix").path, "/tmp/a:b.sock")


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

    def test_placementAndHealthDefaults(self):
        """
        Go rmux's placement, no hash tag, no routes, a 100 ms health check
        with hysteresis, a second's wait at startup, no FLUSH fan-out.
        """
        listener = ListenerConfig(backends=["r"])
        self.assertEqual(
            (listener.distribution, listener.hash, listener.hashTag, listener.routes),
            ("rmux", "fnv1a_64", None, ()),
        )
        self.assertEqual(
            (
                listener.healthInterval,
                listener.healthTimeout,
                listener.healthFailures,
                listener.healthSuccesses,
                listener.startupWait,
                listener.allowFlush,
            ),
            (100, 500, 3, 2, 1000, False),
        )

    def test_healthTimeoutDefault(self):
        """
        The health timeout defaults to the remote connect timeout, and the
        stored value is the effective one.
        """
        listener = ListenerConfig(backends=["r"], remoteConnectTimeout=70)
        self.assertEqual(listener.healthTimeout, 70)
        self.assertEqual(
            listener, ListenerConfig(backends=["r"], remoteConnectTimeout=70, healthTimeout=70)
        )
        self.assertEqual(ListenerConfig(backends=["r"], healthTimeout=20).healthTimeout, 20)
        # replace() passes the effective value on.
        self.assertEqual(dataclasses.replace(listener, remoteConnectTimeout=9).healthTimeout, 70)

    def test_hashTag(self):
        """
        A hash tag is stored as two bytes; C{""} means none.
        """
        self.assertEqual(ListenerConfig(backends=["r"], hashTag="{}").hashTag, b"{}")
        self.assertEqual(ListenerConfig(backends=["r"], hashTag=b"$$").hashTag, b"$$")
        self.assertIsNone(ListenerConfig(backends=["r"], hashTag="").hashTag)

    def test_newValidation(self):
        cases = [
            ({"distribution": "modula"}, "distribution: must be 'rmux' or 'ketama', got 'modula'"),
            ({"distribution": None}, "distribution: must be 'rmux' or 'ketama', got None"),
            ({"hash": "crc32"}, "hash: must be 'fnv1a_64' or 'md5', got 'crc32'"),
            (
                {"hashTag": "{"},
                "hashTag: must be two printable ASCII characters such as '{}', got '{'",
            ),
            (
                {"hashTag": "\u00ab\u00bb"},
                "hashTag: must be two printable ASCII characters such as '{}', "
                "got '\u00ab\u00bb'",
            ),
            (
                {"hashTag": "{ "},
                "hashTag: must be two printable ASCII characters such as '{}', got '{ '",
            ),
            (
                {"hashTag": 12},
                "hashTag: must be two printable ASCII characters such as '{}', got 12",
            ),
            ({"healthInterval": 0}, "healthInterval: must be a positive integer (ms), got 0"),
            ({"healthTimeout": 0}, "healthTimeout: must be a positive integer (ms), got 0"),
            ({"healthFailures": 0}, "healthFailures: must be a positive integer, got 0"),
            ({"healthSuccesses": -1}, "healthSuccesses: must be a positive integer, got -1"),
            ({"startupWait": -1}, "startupWait: must be a non-negative integer (ms), got -1"),
            ({"allowFlush": "yes"}, "allowFlush: must be true or false, got 'yes'"),
            (
                {"routes": "session:"},
                "routes: expected a sequence of RouteConfig, got 'session:'",
            ),
            (
                {"routes": [{"prefix": "a"}]},
                "routes[0]: expected a RouteConfig, got {'prefix': 'a'}",
            ),
        ]
        for kwargs, message in cases:
            self.assertConfigError(message, ListenerConfig, backends=["r"], **kwargs)
        self.assertEqual(ListenerConfig(backends=["r"], startupWait=0).startupWait, 0)

    def test_weightNeedsKetama(self):
        """
        rmux's placement has no weights: a weight other than 1 is refused
        rather than ignored.
        """
        heavy = BackendAddress(kind="tcp", host="r2", port=6379, weight=2)
        self.assertConfigError(
            "backends[1]: weight 2 is only used by the ketama distribution; "
            "with rmux's placement list a server twice instead",
            ListenerConfig,
            backends=["r1", heavy],
        )
        listener = ListenerConfig(backends=["r1", heavy], distribution="ketama")
        self.assertEqual([b.weight for b in listener.backends], [1, 2])

    def test_namesUniqueInPool(self):
        for distribution in ("rmux", "ketama"):
            self.assertConfigError(
                "backends[2]: name 'a' is already used by r1:6379 in this pool",
                ListenerConfig,
                backends=["r1 a", "r2 b", "r3 a"],
                distribution=distribution,
            )

    def test_ketamaIdentities(self):
        """
        ketama places an entry by its name, or its address without one, so
        an address listed twice needs names; rmux keeps counting entries.
        """
        self.assertTrue(ListenerConfig(backends=["r1", "r1"]).multiplexing)
        self.assertConfigError(
            "backends[1]: ketama places each entry by its name, or its address when "
            "unnamed, and 'r1:6379' already places an earlier entry; give the entries "
            "distinct names (or list the server once, with a weight)",
            ListenerConfig,
            backends=["r1", "redis://r1/1"],
            distribution="ketama",
        )
        self.assertConfigErrorContains(
            ["backends[1]: ketama places", "'r1:6379' already places"],
            ListenerConfig,
            backends=["r2 r1:6379", "r1"],
            distribution="ketama",
        )
        listener = ListenerConfig(backends=["r1 db0", "redis://r1/1 db1"], distribution="ketama")
        self.assertEqual([b.name for b in listener.backends], ["db0", "db1"])

    def test_ketamaNameLength(self):
        long = "n" * 81
        self.assertConfigErrorContains(
            ["backends[0]: ketama places", "longer than twemproxy allows (80 bytes)"],
            ListenerConfig,
            backends=[f"r1 {long}"],
            distribution="ketama",
        )
        ListenerConfig(backends=[f"r1 {long}"])
        ListenerConfig(backends=["r1 " + "n" * 80], distribution="ketama")

    def test_rmuxBackendLimit(self):
        """
        rmux's slot table stops at 101 backends; ketama has no such limit.
        """
        many = [f"r{i}" for i in range(102)]
        ListenerConfig(backends=many[:101])
        self.assertConfigError(
            "rmux's placement handles at most 101 backends per pool, got 102; "
            "use the ketama distribution",
            ListenerConfig,
            backends=many,
        )
        self.assertEqual(len(ListenerConfig(backends=many, distribution="ketama").backends), 102)

    def test_routes(self):
        route = RouteConfig(prefix="session:", backends=["/s.sock", "s1", "s2"])
        listener = ListenerConfig(backends=["r"], routes=[route])
        self.assertEqual(listener.routes, (route,))
        self.assertIsInstance(listener.routes, tuple)
        self.assertEqual(route.prefix, b"session:")
        self.assertEqual(route.backends, (tcp("s1"), tcp("s2"), unix("/s.sock")))
        self.assertEqual(listener.allBackends, (tcp("r"), tcp("s1"), tcp("s2"), unix("/s.sock")))

    def test_routesMeanMultiplexing(self):
        """
        With routes keys are placed, even if every pool has one backend.
        """
        listener = ListenerConfig(
            backends=["r"], routes=[RouteConfig(prefix=b"a:", backends=["s"])]
        )
        self.assertTrue(listener.multiplexing)
        self.assertFalse(ListenerConfig(backends=["r"], routes=[]).multiplexing)

    def test_allBackendsKeepsDuplicates(self):
        listener = ListenerConfig(
            backends=["r", "r"],
            routes=[
                RouteConfig(prefix="a:", backends=["r"]),
                RouteConfig(prefix="b:", backends=["s", "r"]),
            ],
        )
        self.assertEqual(
            [str(b) for b in listener.allBackends],
            ["r:6379", "r:6379", "r:6379", "s:6379", "r:6379"],
        )

    def test_duplicatePrefix(self):
        self.assertConfigError(
            "routes[2]: prefix 'a:' is already routed by routes[0]",
            ListenerConfig,
            backends=["r"],
            routes=[
                RouteConfig(prefix="a:", backends=["s"]),
                RouteConfig(prefix="a", backends=["s"]),
                RouteConfig(prefix=b"a:", backends=["t"]),
            ],
        )

    def test_namesAcrossRoutes(self):
        """
        A name means one server throughout a listener: routes may share a
        named server, but not give its name to another.
        """
        listener = ListenerConfig(
            backends=["r1 a", "r2 b"],
            distribution="ketama",
            routes=[
                RouteConfig(prefix="x", backends=["r1:6379:3 a", "r3 c"], distribution="ketama")
            ],
        )
        self.assertEqual(listener.routes[0].backends[0].weight, 3)
        self.assertConfigError(
            "routes[1]: backends[0]: name 'c' already names r3:6379; "
            "a name must mean one server throughout a listener",
            ListenerConfig,
            backends=["r1 a"],
            routes=[
                RouteConfig(prefix="x", backends=["r3 c"]),
                RouteConfig(prefix="y", backends=["r4 c"]),
            ],
        )

    def test_ownBackendInRoute(self):
        self.assertConfigError(
            "listener 1: localhost:7000 is also one of its own backends; "
            "commands would loop through rmux",
            RmuxConfig,
            listeners=[
                ListenerConfig(
                    port=7000,
                    backends=["r"],
                    routes=[RouteConfig(prefix="x", backends=["localhost:7000"])],
                )
            ],
        )


class RouteConfigTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{RouteConfig} built in code.
    """

    def test_defaults(self):
        """
        Built in code, a route has a listener's defaults, not its
        listener's values.
        """
        route = RouteConfig(prefix="a:", backends=["r"])
        self.assertEqual(
            (
                route.prefix,
                route.backends,
                route.distribution,
                route.hash,
                route.hashTag,
                route.failover,
            ),
            (b"a:", (tcp("r"),), "rmux", "fnv1a_64", None, False),
        )

    def test_values(self):
        route = RouteConfig(
            prefix="caf\u00e9:",
            backends=["r1:1:2", "r2"],
            distribution="ketama",
            hash="md5",
            hashTag="{}",
            failover=True,
        )
        self.assertEqual(route.prefix, "caf\u00e9:".encode())
        self.assertEqual((route.hash, route.hashTag, route.failover), ("md5", b"{}", True))

    def test_validation(self):
        cases = [
            (
                {"prefix": ""},
                "prefix: must not be empty; keys no route matches go to the "
                "listener's own backends",
            ),
            ({"prefix": 1}, "prefix: must be a string, got 1"),
            ({"backends": []}, "at least one backend is required"),
            ({"distribution": "random"}, "distribution: must be 'rmux' or 'ketama', got 'random'"),
            ({"hash": "murmur"}, "hash: must be 'fnv1a_64' or 'md5', got 'murmur'"),
            (
                {"hashTag": "{{{"},
                "hashTag: must be two printable ASCII characters such as '{}', got '{{{'",
            ),
            ({"failover": None}, "failover: must be true or false, got None"),
            (
                {"backends": ["r:1:2"]},
                "backends[0]: weight 2 is only used by the ketama distribution; "
                "with rmux's placement list a server twice instead",
            ),
        ]
        for override, message in cases:
            kwargs = {"prefix": "a:", "backends": ["r"]}
            kwargs.update(override)
            self.assertConfigError(message, RouteConfig, **kwargs)

    def test_immutable(self):
        route = RouteConfig(prefix="a:", backends=["r"])
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, route, "prefix", b"b")
        self.assertRaises(TypeError, RouteConfig, "a:", ["r"])

    def test_clusterRouteInCode(self):
        """
        Built in code, a cluster route's seeds are TCP nodes and it has no
        placement of its own.
        """
        self.assertConfigError(
            "backends[0]: a cluster node is reached over TCP",
            RouteConfig, prefix=b"s:", backends=["/tmp/node.sock"], cluster=True,
        )
        self.assertConfigError(
            "hashTag: not with cluster: a cluster places keys itself (by hash slot, "
            "with {hash tags})",
            RouteConfig, prefix=b"s:", backends=["c1:7000"], hashTag=b"{}", cluster=True,
        )


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

    def test_placementFlags(self):
        listener = self.listener(
            tcpConnections="r1:6380:2 r2 r3:6379:1",
            distribution="ketama",
            hash="md5",
            hashTag="{}",
        )
        self.assertEqual(
            (listener.distribution, listener.hash, listener.hashTag), ("ketama", "md5", b"{}")
        )
        self.assertEqual([b.weight for b in listener.backends], [2, 1, 1])
        self.assertEqual([str(b) for b in listener.backends], ["r1:6380", "r2:6379", "r3:6379"])
        listener = self.listener(distribution="rmux", hashTag="")
        self.assertEqual((listener.distribution, listener.hashTag), ("rmux", None))
        self.assertEqual(self.listener(distribution="ketama").hash, "fnv1a_64")

    def test_placementFlagErrors(self):
        for values, message in [
            (
                {"distribution": "modula"},
                "--distribution: must be 'rmux' or 'ketama', got 'modula'",
            ),
            (
                {"distribution": "ketama", "hash": "crc16"},
                "--hash: must be 'fnv1a_64' or 'md5', got 'crc16'",
            ),
            (
                {"hash": "md5"},
                "--hash: only used by the ketama distribution "
                "(set --distribution to ketama, or leave --hash out)",
            ),
            (
                {"hash": "fnv1a_64", "distribution": "rmux"},
                "--hash: only used by the ketama distribution "
                "(set --distribution to ketama, or leave --hash out)",
            ),
            (
                {"hashTag": "{"},
                "--hashTag: must be two printable ASCII characters such as '{}', got '{'",
            ),
            ({"hashTag": 2}, "--hashTag: must be a string, got 2"),
            ({"distribution": 1}, "--distribution: must be a string, got 1"),
            (
                {"tcpConnections": "r1 r2:6379:2"},
                "--tcpConnections: 'r2:6379:2': weight 2 is only used by the ketama "
                "distribution; with rmux's placement list a server twice instead",
            ),
            (
                {"tcpConnections": "r1:1:0", "distribution": "ketama"},
                "--tcpConnections: 'r1:1:0': weight must be a positive integer, got '0'",
            ),
            (
                {"tcpConnections": "r1 r1", "distribution": "ketama"},
                "--tcpConnections: 'r1': ketama places each entry by its name, or its "
                "address when unnamed, and 'r1:6379' already places an earlier entry; give "
                "the entries distinct names (or list the server once, with a weight)",
            ),
        ]:
            self.assertConfigError(message, fromFlags, values)

    def test_unixWeightFlags(self):
        """
        A flag cannot hold a JSON object, so a unix backend's weight is
        written as a URL; a twemproxy-style path is refused.
        """
        listener = self.listener(
            unixConnections="unix:///tmp/a.sock?weight=3 /tmp/b.sock", distribution="ketama"
        )
        self.assertEqual(
            [(str(b), b.weight) for b in listener.backends],
            [("/tmp/a.sock", 3), ("/tmp/b.sock", 1)],
        )
        self.assertConfigErrorContains(
            ["--unixConnections: '/tmp/a.sock:3': a socket path cannot carry a weight"],
            fromFlags,
            {"unixConnections": "/tmp/a.sock:3", "distribution": "ketama"},
        )

    def test_healthFlags(self):
        listener = self.listener(
            healthInterval="250",
            healthTimeout="40",
            healthFailures="5",
            healthSuccesses="4",
            startupWait="3000",
        )
        self.assertEqual(
            (
                listener.healthInterval,
                listener.healthTimeout,
                listener.healthFailures,
                listener.healthSuccesses,
                listener.startupWait,
            ),
            (250, 40, 5, 4, 3000),
        )

    def test_healthFlagZeros(self):
        """
        0 means the default for the health settings, and the connect timeout
        for C{healthTimeout}; for C{startupWait} it means "do not wait".
        """
        listener = self.listener(
            healthInterval="0",
            healthTimeout="0",
            healthFailures="0",
            healthSuccesses="0",
            startupWait="0",
            remoteTimeout="900",
        )
        self.assertEqual(
            (
                listener.healthInterval,
                listener.healthTimeout,
                listener.healthFailures,
                listener.healthSuccesses,
                listener.startupWait,
            ),
            (100, 900, 3, 2, 0),
        )
        self.assertEqual(self.listener(remoteConnectTimeout="60").healthTimeout, 60)
        self.assertEqual(self.listener().startupWait, 1000)

    def test_healthFlagErrors(self):
        for name, what in [
            ("healthInterval", "a positive integer (ms; 0 means 100)"),
            ("healthTimeout", "a positive integer (ms; 0 means remoteConnectTimeout)"),
            ("healthFailures", "a positive integer (0 means 3)"),
            ("healthSuccesses", "a positive integer (0 means 2)"),
            ("startupWait", "a non-negative integer (ms)"),
        ]:
            for value in ("-1", "1.5", "soon"):
                self.assertConfigError(
                    f"--{name}: must be {what}, got {value!r}", fromFlags, {name: value}
                )

    def test_allowFlush(self):
        self.assertFalse(self.listener().allowFlush)
        self.assertTrue(self.listener(allowFlush=1).allowFlush)
        self.assertTrue(self.listener(allowFlush="true").allowFlush)
        self.assertFalse(self.listener(allowFlush="F").allowFlush)
        self.assertConfigError(
            "--allowFlush: must be true or false, got 'yes'", fromFlags, {"allowFlush": "yes"}
        )

    def test_configWinsOverNewFlags(self):
        """
        The new listener flags are pool-related: C{--config} replaces them.
        """
        path = FilePath(self.mktemp())
        path.setContent(b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1", "r2"]}]')
        listener = fromFlags(
            {
                "config": path.path,
                "distribution": "ketama",
                "hash": "md5",
                "hashTag": "{}",
                "healthInterval": "5",
                "startupWait": "0",
                "allowFlush": 1,
            }
        ).listeners[0]
        self.assertEqual(listener, ListenerConfig(socket="/tmp/a.sock", backends=["r1", "r2"]))

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
            "listener 1: zebra: unknown field",
            self.load,
            [{"port": 1, "tcpConnections": ["r"], "zebra": "blue"}],
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
            ("socketMode", 660, 'expected an octal string such as "0660", got an integer'),
            ("distribution", 1, "expected a string, got an integer"),
            ("hash", ["md5"], "expected a string, got an array"),
            ("hashTag", 2, "expected a string, got an integer"),
            ("routes", {}, "expected an array of objects, got an object"),
            ("healthInterval", "100", "expected an integer, got a string"),
            ("healthTimeout", 1.5, "expected an integer, got a number"),
            ("healthFailures", True, "expected an integer, got a boolean"),
            ("healthSuccesses", [], "expected an integer, got an array"),
            ("startupWait", "0", "expected an integer, got a string"),
            ("allowFlush", "true", "expected a boolean, got a string"),
        ]
        for name, value, problem in cases:
            listener = {"port": 1, "tcpConnections": ["r"]}
            listener[name] = value
            self.assertConfigError(f"listener 1: {name}: {problem}", self.load, [listener])

    def test_backendElementTypes(self):
        """
        A backend list holds address strings or objects; anything else is
        named by its index.
        """
        for value, got in [(1, "an integer"), (["r"], "an array"), (True, "a boolean")]:
            self.assertConfigError(
                "listener 1: tcpConnections[1]: "
                f"expected an address string or an object, got {got}",
                self.load,
                [{"port": 1, "tcpConnections": ["r", value]}],
            )

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


class NewFieldsFromJSONTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for the listener fields Go rmux does not have, in the JSON file:
    placement, weighted and named backends, health checks, C{allowFlush}.
    """

    def load(self, document):
        return fromJSON(json.dumps(document))

    def listener(self, **fields):
        document = dict({"port": 1, "tcpConnections": ["r1", "r2"]}, **fields)
        return self.load([document]).listeners[0]

    def test_placement(self):
        listener = self.listener(distribution="ketama", hash="md5", hashTag="{}")
        self.assertEqual(
            (listener.distribution, listener.hash, listener.hashTag), ("ketama", "md5", b"{}")
        )
        listener = self.listener(distribution="rmux", hashTag="")
        self.assertEqual(
            (listener.distribution, listener.hash, listener.hashTag), ("rmux", "fnv1a_64", None)
        )

    def test_placementErrors(self):
        cases = [
            ({"distribution": "modula"}, "distribution: must be 'rmux' or 'ketama', got 'modula'"),
            (
                {"distribution": "ketama", "hash": "MD5"},
                "hash: must be 'fnv1a_64' or 'md5', got 'MD5'",
            ),
            (
                {"hash": "md5"},
                "hash: only used by the ketama distribution "
                "(set distribution to ketama, or leave hash out)",
            ),
            (
                {"hashTag": "{}{}"},
                "hashTag: must be two printable ASCII characters such as '{}', got '{}{}'",
            ),
        ]
        for fields, problem in cases:
            self.assertConfigError(f"listener 1: {problem}", self.listener, **fields)

    def test_twemproxyStrings(self):
        listener = self.listener(
            distribution="ketama",
            tcpConnections=["10.0.0.1:6379:2 cache-a", "[::1]:6380:1 cache-b", "r3 cache-c"],
        )
        self.assertEqual(
            [(str(b), b.weight, b.name) for b in listener.backends],
            [
                ("10.0.0.1:6379", 2, "cache-a"),
                ("[::1]:6380", 1, "cache-b"),
                ("r3:6379", 1, "cache-c"),
            ],
        )

    def test_backendObjects(self):
        listener = self.listener(
            distribution="ketama",
            tcpConnections=[
                {"address": "r1:6380", "weight": 2, "name": "cache-a"},
                {"address": "redis://:pw@r2/3"},
                "r3",
                {"address": "r4", "weight": None, "name": None},
            ],
            unixConnections=[{"address": "/tmp/odd:1 path.sock", "weight": 3, "name": "u"}],
        )
        self.assertEqual(
            [(str(b), b.weight, b.name, b.db) for b in listener.backends],
            [
                ("r1:6380", 2, "cache-a", None),
                ("r2:6379", 1, None, 3),
                ("r3:6379", 1, None, None),
                ("r4:6379", 1, None, None),
                ("/tmp/odd:1 path.sock", 3, "u", None),
            ],
        )

    def test_backendObjectErrors(self):
        cases = [
            ({"weight": 2}, 'address: required, as in {"address": "host:port", "weight": 2}'),
            ({"address": None}, 'address: required, as in {"address": "host:port", "weight": 2}'),
            ({"address": 6379}, "address: expected a string, got an integer"),
            ({"address": "r", "weight": "2"}, "weight: expected an integer, got a string"),
            ({"address": "r", "weight": 0}, "weight: must be a positive integer, got 0"),
            ({"address": "r", "name": 1}, "name: expected a string, got an integer"),
            (
                {"address": "r", "name": "a b"},
                "name: must be a non-empty name without spaces or control characters, "
                "got 'a b'",
            ),
            ({"address": "r", "wieght": 2}, "wieght: unknown field (did you mean weight?)"),
            ({"address": "r", "timeout": 2}, "timeout: unknown field"),
            (
                {"address": "r:1:2"},
                "address: 'r:1:2': an object's \"address\" cannot carry a weight; "
                'use the object\'s "weight" field',
            ),
            (
                {"address": "r:1 a"},
                "address: 'r:1 a': an object's \"address\" cannot carry a name; "
                'use the object\'s "name" field',
            ),
            (
                {"address": "redis://r?weight=2"},
                "address: 'redis://r?weight=2': an object's \"address\" cannot carry a "
                'weight; use the object\'s "weight" field',
            ),
            (
                {"address": "/tmp/r.sock"},
                "address: '/tmp/r.sock': looks like a socket path; list it in unixConnections",
            ),
        ]
        for obj, problem in cases:
            self.assertConfigError(
                f"listener 1: tcpConnections[1]: {problem}",
                self.listener,
                distribution="ketama",
                tcpConnections=["r0", obj],
            )

    def test_backendObjectDuplicateField(self):
        self.assertConfigError(
            "listener 1: unixConnections[0]: weight: given more than once",
            fromJSON,
            '[{"port": 1, "distribution": "ketama",'
            ' "unixConnections": [{"address": "/s", "weight": 1, "weight": 2}]}]',
        )

    def test_pooledChecksNameTheEntry(self):
        """
        Checks that need the whole pool name the list and index.
        """
        self.assertConfigError(
            "listener 1: unixConnections[0]: weight 4 is only used by the ketama "
            "distribution; with rmux's placement list a server twice instead",
            self.listener,
            unixConnections=[{"address": "/s", "weight": 4}],
        )
        self.assertConfigError(
            "listener 1: tcpConnections[2]: name 'a' is already used by r1:6379 in this pool",
            self.listener,
            tcpConnections=["r1 a", "r2 b", {"address": "r3", "name": "a"}],
        )

    def test_health(self):
        listener = self.listener(
            healthInterval=250,
            healthTimeout=40,
            healthFailures=5,
            healthSuccesses=4,
            startupWait=3000,
            allowFlush=True,
        )
        self.assertEqual(
            (
                listener.healthInterval,
                listener.healthTimeout,
                listener.healthFailures,
                listener.healthSuccesses,
                listener.startupWait,
                listener.allowFlush,
            ),
            (250, 40, 5, 4, 3000, True),
        )

    def test_healthZeros(self):
        listener = self.listener(
            healthInterval=0,
            healthTimeout=0,
            healthFailures=0,
            healthSuccesses=0,
            startupWait=0,
            remoteConnectTimeout=80,
        )
        self.assertEqual(
            (
                listener.healthInterval,
                listener.healthTimeout,
                listener.healthFailures,
                listener.healthSuccesses,
                listener.startupWait,
            ),
            (100, 80, 3, 2, 0),
        )
        self.assertEqual(self.listener(remoteTimeout=700).healthTimeout, 700)
        self.assertEqual(self.listener(startupWait=None).startupWait, 1000)

    def test_healthErrors(self):
        for name, what in [
            ("healthInterval", "a positive integer (ms; 0 means 100)"),
            ("healthTimeout", "a positive integer (ms; 0 means remoteConnectTimeout)"),
            ("healthFailures", "a positive integer (0 means 3)"),
            ("healthSuccesses", "a positive integer (0 means 2)"),
            ("startupWait", "a non-negative integer (ms)"),
        ]:
            self.assertConfigError(
                f"listener 1: {name}: must be {what}, got -1", self.listener, **{name: -1}
            )

    def test_defaults(self):
        self.assertEqual(self.listener(), ListenerConfig(port=1, backends=["r1", "r2"]))


class RoutesFromJSONTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for C{routes} in the JSON file.
    """

    def load(self, document):
        return fromJSON(json.dumps(document))

    def listener(self, routes, **fields):
        document = dict({"port": 1, "tcpConnections": ["r1", "r2"], "routes": routes}, **fields)
        return self.load([document]).listeners[0]

    def test_route(self):
        listener = self.listener(
            [
                {
                    "prefix": "session:",
                    "unixConnections": ["/s.sock"],
                    "tcpConnections": ["s1:6380", {"address": "s2", "weight": 2}],
                    "distribution": "ketama",
                    "hash": "md5",
                    "hashTag": "{}",
                    "failover": True,
                },
                {"prefix": "cache:", "tcpConnections": ["c1"]},
            ]
        )
        session, cache = listener.routes
        self.assertEqual(
            session,
            RouteConfig(
                prefix=b"session:",
                backends=[
                    tcp("s1", 6380),
                    BackendAddress(kind="tcp", host="s2", port=6379, weight=2),
                    unix("/s.sock"),
                ],
                distribution="ketama",
                hash="md5",
                hashTag=b"{}",
                failover=True,
            ),
        )
        self.assertEqual(cache, RouteConfig(prefix="cache:", backends=["c1"]))
        self.assertTrue(listener.multiplexing)
        self.assertEqual(len(listener.allBackends), 6)

    def test_inherits(self):
        """
        Fields a route leaves out (or sets to null) are the listener's.
        """
        listener = self.listener(
            [
                {"prefix": "a:", "tcpConnections": ["s1", "s2"]},
                {
                    "prefix": "b:",
                    "tcpConnections": ["s1"],
                    "distribution": None,
                    "hashTag": None,
                    "failover": None,
                },
            ],
            distribution="ketama",
            hash="md5",
            hashTag="<>",
            failover=True,
        )
        for route in listener.routes:
            self.assertEqual(
                (route.distribution, route.hash, route.hashTag, route.failover),
                ("ketama", "md5", b"<>", True),
            )

    def test_overrides(self):
        """
        A route's own values win; C{"hashTag": ""} turns an inherited tag
        off.
        """
        route = self.listener(
            [
                {
                    "prefix": "a:",
                    "tcpConnections": ["s1"],
                    "distribution": "ketama",
                    "hash": "fnv1a_64",
                    "hashTag": "",
                    "failover": False,
                }
            ],
            distribution="ketama",
            hash="md5",
            hashTag="{}",
            failover=True,
        ).routes[0]
        self.assertEqual(
            (route.distribution, route.hash, route.hashTag, route.failover),
            ("ketama", "fnv1a_64", None, False),
        )
        route = self.listener(
            [{"prefix": "a:", "tcpConnections": ["s1"], "distribution": "rmux"}],
            distribution="ketama",
            hash="md5",
        ).routes[0]
        self.assertEqual((route.distribution, route.hash), ("rmux", "md5"))

    def test_listenerHashForRoutes(self):
        """
        A listener's C{hash} is accepted when only a ketama route uses it,
        and refused when nothing does.
        """
        listener = self.listener(
            [{"prefix": "a:", "tcpConnections": ["s1"], "distribution": "ketama"}], hash="md5"
        )
        self.assertEqual((listener.distribution, listener.routes[0].hash), ("rmux", "md5"))
        message = (
            "listener 1: hash: only used by the ketama distribution "
            "(set distribution to ketama, or leave hash out)"
        )
        self.assertConfigError(
            message, self.listener, [{"prefix": "a:", "tcpConnections": ["s1"]}], hash="md5"
        )
        self.assertConfigError(
            message,
            self.listener,
            [
                {
                    "prefix": "a:",
                    "tcpConnections": ["s1"],
                    "distribution": "ketama",
                    "hash": "fnv1a_64",
                }
            ],
            hash="md5",
        )
        self.assertConfigError(
            "listener 1: routes[0]: hash: only used by the ketama distribution "
            "(set distribution to ketama, or leave hash out)",
            self.listener,
            [{"prefix": "a:", "tcpConnections": ["s1"], "hash": "md5"}],
        )

    def test_errors(self):
        cases = [
            ("x", "routes[0]: expected an object, got a string"),
            ({"tcpConnections": ["s"]}, 'routes[0]: prefix: required, as in "prefix": "session:"'),
            (
                {"prefix": None, "tcpConnections": ["s"]},
                'routes[0]: prefix: required, as in "prefix": "session:"',
            ),
            (
                {"prefix": 1, "tcpConnections": ["s"]},
                "routes[0]: prefix: expected a string, got an integer",
            ),
            (
                {"prefix": "", "tcpConnections": ["s"]},
                "routes[0]: prefix: must not be empty; keys no route matches go to the "
                "listener's own backends",
            ),
            (
                {"prefix": "a:"},
                "routes[0]: at least one backend is required (tcpConnections or unixConnections)",
            ),
            (
                {"prefix": "a:", "tcpConnections": [], "unixConnections": []},
                "routes[0]: at least one backend is required (tcpConnections or unixConnections)",
            ),
            (
                {"prefix": "a:", "tcpConnections": "s"},
                "routes[0]: tcpConnections: expected an array of strings, got a string",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s", 2]},
                "routes[0]: tcpConnections[1]: expected an address string or an object, "
                "got an integer",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s:0"]},
                "routes[0]: tcpConnections[0]: 's:0': port must be an integer from 1 to 65535, "
                "got '0'",
            ),
            (
                {
                    "prefix": "a:",
                    "unixConnections": [{"address": "/s", "weight": -1}],
                    "distribution": "ketama",
                },
                "routes[0]: unixConnections[0]: weight: must be a positive integer, got -1",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s1", "s2:6379:2"]},
                "routes[0]: tcpConnections[1]: weight 2 is only used by the ketama "
                "distribution; with rmux's placement list a server twice instead",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s1", "s1"], "distribution": "ketama"},
                "routes[0]: tcpConnections[1]: ketama places each entry by its name, or its "
                "address when unnamed, and 's1:6379' already places an earlier entry; give "
                "the entries distinct names (or list the server once, with a weight)",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s"], "distribution": "maglev"},
                "routes[0]: distribution: must be 'rmux' or 'ketama', got 'maglev'",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s"], "hashTag": "{"},
                "routes[0]: hashTag: must be two printable ASCII characters such as '{}', "
                "got '{'",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s"], "failover": "yes"},
                "routes[0]: failover: expected a boolean, got a string",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s"], "poolSize": 3},
                "routes[0]: poolSize: unknown field (poolSize is set for the whole listener)",
            ),
            (
                {"prefix": "a:", "tcpConnection": ["s"]},
                "routes[0]: tcpConnection: unknown field (did you mean tcpConnections?)",
            ),
            (
                {"prefix": "a:", "tcpConnections": ["s"], "removePrefix": True},
                "routes[0]: removePrefix: unknown field",
            ),
        ]
        for route, problem in cases:
            self.assertConfigError(f"listener 1: {problem}", self.listener, [route])

    def test_secondRouteNamed(self):
        self.assertConfigError(
            "listener 1: routes[1]: tcpConnections[0]: 's:0': port must be an integer "
            "from 1 to 65535, got '0'",
            self.listener,
            [
                {"prefix": "a:", "tcpConnections": ["s"]},
                {"prefix": "b:", "tcpConnections": ["s:0"]},
            ],
        )

    def test_routesType(self):
        self.assertConfigError(
            "listener 1: routes: expected an array of objects, got a string",
            self.listener,
            "session:",
        )
        self.assertEqual(self.listener([]).routes, ())
        self.assertEqual(self.listener(None).routes, ())

    def test_duplicateField(self):
        self.assertConfigError(
            "listener 1: routes[0]: prefix: given more than once",
            fromJSON,
            '[{"port": 1, "tcpConnections": ["r"],'
            ' "routes": [{"prefix": "a", "tcpConnections": ["s"], "prefix": "b"}]}]',
        )

    def test_duplicatePrefix(self):
        self.assertConfigError(
            "listener 1: routes[2]: prefix 'a:' is already routed by routes[0]",
            self.listener,
            [
                {"prefix": "a:", "tcpConnections": ["s1"]},
                {"prefix": "a", "tcpConnections": ["s2"]},
                {"prefix": "a:", "tcpConnections": ["s3"]},
            ],
        )

    def test_namesAcrossRoutes(self):
        listener = self.listener(
            [{"prefix": "a:", "tcpConnections": ["r1:6379:5 one"], "distribution": "ketama"}],
            tcpConnections=["r1 one", "r2 two"],
        )
        self.assertEqual(listener.routes[0].backends[0].name, "one")
        self.assertConfigError(
            "listener 1: routes[0]: tcpConnections[1]: name 'two' already names r2:6379; "
            "a name must mean one server throughout a listener",
            self.listener,
            [{"prefix": "a:", "tcpConnections": ["r1 one", "r3 two"]}],
            tcpConnections=["r1 one", "r2 two"],
        )

    def test_catchAllRequired(self):
        """
        The listener's own backends take the keys no route matches, so
        they are required even with routes.
        """
        self.assertConfigError(
            "listener 1: at least one backend is required (tcpConnections or "
            "unixConnections); with routes, they take the keys no route matches",
            self.load,
            [{"port": 1, "routes": [{"prefix": "a:", "tcpConnections": ["s"]}]}],
        )

    def test_prefixOnListener(self):
        self.assertConfigError(
            "listener 1: prefix: unknown field (prefix belongs to an element of routes)",
            self.load,
            [{"port": 1, "tcpConnections": ["r"], "prefix": "a:"}],
        )

    def test_utf8Prefix(self):
        route = self.listener([{"prefix": "caf\u00e9:", "tcpConnections": ["s"]}]).routes[0]
        self.assertEqual(route.prefix, b"caf\xc3\xa9:")

    def test_clusterRoute(self):
        """
        A route's keys may be a Redis Cluster's, given by its seeds; it
        takes none of the listener's placement.
        """
        listener = self.listener(
            [{"prefix": "s:", "cluster": ["10.0.0.1:7000", "rediss://10.0.0.2:7001"]}],
            hashTag="{}", distribution="ketama",
        )
        route = listener.routes[0]
        self.assertTrue(route.cluster)
        self.assertEqual([(seed.host, seed.port, seed.tls) for seed in route.backends],
                         [("10.0.0.1", 7000, False), ("10.0.0.2", 7001, True)])
        self.assertEqual((route.hashTag, route.failover, route.distribution),
                         (None, False, "rmux"))
        self.assertFalse(self.listener([{"prefix": "a:", "tcpConnections": ["s"]}])
                         .routes[0].cluster)

    def test_clusterRouteRefusesPlacement(self):
        for extra in [{"tcpConnections": ["s"]}, {"hashTag": "{}"}, {"failover": True}]:
            field = next(iter(extra))
            self.assertConfigError(
                "listener 1: routes[0]: %s: not with cluster: a cluster places keys "
                "itself (by hash slot, with {hash tags})" % (field,),
                self.listener, [dict({"prefix": "s:", "cluster": ["c1:7000"]}, **extra)],
            )
        self.assertConfigError(
            'listener 1: routes[0]: cluster: at least one seed node, as in '
            '"cluster": ["10.0.0.1:6379"]',
            self.listener, [{"prefix": "s:", "cluster": []}],
        )

    def test_ownBackendInRoute(self):
        self.assertConfigError(
            "listener 1: /tmp/rmux.sock is also one of its own backends; "
            "commands would loop through rmux",
            self.load,
            [
                {
                    "socket": "/tmp/rmux.sock",
                    "tcpConnections": ["r"],
                    "routes": [{"prefix": "a:", "unixConnections": ["/tmp/rmux.sock"]}],
                }
            ],
        )


class CommandsFieldTests(SynchronousTestCase):
    """
    The C{commands} field extends the command table for module commands.
    """

    def listener(self, commands):
        return fromJSON(
            json.dumps(
                [{"socket": "/tmp/x.sock", "tcpConnections": ["localhost:6379"],
                  "commands": commands}]
            )
        ).listeners[0]

    def test_accepted(self):
        entry = {"name": "json.get", "arity": -2, "firstKey": 1, "lastKey": 1,
                 "step": 1, "flags": ["readonly"]}
        self.assertEqual(self.listener([entry]).commands, (entry,))

    def test_badEntryNamed(self):
        e = self.assertRaises(ConfigError, self.listener, [{"name": "json.get"}])
        self.assertIn("listener 1: commands[0]:", str(e))
        self.assertIn("arity", str(e))

    def test_notAnArray(self):
        e = self.assertRaises(ConfigError, self.listener, {"name": "x"})
        self.assertIn("commands", str(e))

    def test_serviceTableHasThem(self):
        from twisted.internet.testing import MemoryReactorClock

        from rmux.commands import CommandTable
        from rmux.service import ListenerService

        entry = {"name": "json.get", "arity": -2, "firstKey": 1, "lastKey": 1, "step": 1}
        service = ListenerService(self.listener([entry]), MemoryReactorClock())
        spec = service.factory.table.lookup([b"JSON.GET", b"doc", b"$"])
        self.assertEqual((spec.policy, spec.keyIndexes([b"JSON.GET", b"doc", b"$"])),
                         ("forward", [1]))
        self.assertIsNone(CommandTable.default().lookup([b"JSON.GET", b"doc"]))


class ClientAuthenticationTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{ListenerConfig.requirepass}, L{ListenerConfig.users},
    L{UserConfig} and L{ListenerConfig.authenticator}.
    """

    def test_defaults(self):
        """
        Existing callers get no authentication and the default caps.
        """
        listener = ListenerConfig(backends=["r1"])
        self.assertEqual(
            (listener.requirepass, listener.users, listener.maxPinned, listener.pinnedWait),
            (None, (), DEFAULT_MAX_PINNED, DEFAULT_PINNED_WAIT),
        )
        self.assertEqual((DEFAULT_MAX_PINNED, DEFAULT_PINNED_WAIT), (32, 1000))
        authenticator = listener.authenticator()
        self.assertIsInstance(authenticator, Authenticator)
        self.assertFalse(authenticator.required)

    def test_requirepass(self):
        listener = ListenerConfig(backends=["r1"], requirepass="hunter2")
        authenticator = listener.authenticator()
        self.assertTrue(authenticator.required)
        self.assertTrue(authenticator.check(None, "hunter2"))
        self.assertFalse(authenticator.check(None, "hunter3"))

    def test_users(self):
        """
        Users are given as L{UserConfig}s or as a mapping, which is
        normalized to them.
        """
        fromMapping = ListenerConfig(backends=["r1"], users={"app": "a-pw", "cron": "c-pw"})
        fromSequence = ListenerConfig(
            backends=["r1"],
            users=[
                UserConfig(name="app", password="a-pw"),
                UserConfig(name="cron", password="c-pw"),
            ],
        )
        self.assertEqual(fromMapping, fromSequence)
        self.assertEqual(
            fromMapping.users,
            (UserConfig(name="app", password="a-pw"), UserConfig(name="cron", password="c-pw")),
        )
        authenticator = fromMapping.authenticator()
        self.assertEqual(authenticator.users, ("app", "cron"))
        self.assertTrue(authenticator.check("cron", "c-pw"))
        self.assertFalse(authenticator.check(None, "a-pw"))

    def test_defaultUser(self):
        """
        A user named C{default} takes the place of C{requirepass}.
        """
        listener = ListenerConfig(backends=["r1"], users={"default": "d-pw"})
        self.assertTrue(listener.authenticator().check(None, "d-pw"))

    def test_replaceValidates(self):
        listener = ListenerConfig(backends=["r1"], users={"default": "d-pw"})
        self.assertConfigError(
            "users[0]: 'default' is the user requirepass sets the password of; "
            "give that password once, as requirepass or as this user",
            dataclasses.replace,
            listener,
            requirepass="x",
        )

    def test_repr(self):
        """
        C{repr} says whether there is a C{requirepass} and which users
        exist, never a password.
        """
        listener = ListenerConfig(
            backends=["redis://:b4ckend@r1"], requirepass="hunter2", users={"app": "s3cret"}
        )
        text = repr(listener)
        for secret in ("hunter2", "s3cret", "b4ckend"):
            self.assertNotIn(secret, text)
            self.assertNotIn(secret, repr(RmuxConfig(listeners=[listener])))
        self.assertIn("requirepass=<hidden>", text)
        self.assertIn("users=(UserConfig(name='app', password=<hidden>),)", text)
        self.assertIn("maxPinned=32, pinnedWait=1000", text)
        self.assertNotIn("requirepass", repr(ListenerConfig(backends=["r1"])))
        self.assertEqual(
            repr(UserConfig(name="app", password="s3cret")),
            "UserConfig(name='app', password=<hidden>)",
        )

    def test_reprIsTheDataclasses(self):
        """
        Apart from hiding C{requirepass}, C{repr} is the one the dataclass
        would make, field by field.
        """
        listener = ListenerConfig(backends=["r1"], maxPinned=3)
        fields = ", ".join(
            f"{f.name}={getattr(listener, f.name)!r}"
            for f in dataclasses.fields(listener)
            if f.name != "requirepass"
        )
        self.assertEqual(repr(listener), f"ListenerConfig({fields})")

    def test_userConfig(self):
        user = UserConfig(name="app", password="s3cret")
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, user, "password", "x")
        self.assertRaises(TypeError, UserConfig, "app", "s3cret")
        self.assertConfigError(
            "name: must be a non-empty name without spaces or control characters, got 'a b'",
            UserConfig,
            name="a b",
            password="s3cret",
        )
        self.assertConfigError(
            "password: must not be empty (leave it out for no password)",
            UserConfig,
            name="app",
            password="",
        )
        self.assertConfigError(
            "password: must be a string, got bytes", UserConfig, name="app", password=b"s3cret"
        )

    def test_validation(self):
        """
        Each field's errors name it; none shows a password, not even one of
        the wrong type.
        """
        cases = [
            ({"requirepass": ""}, "requirepass: must not be empty (leave it out for no password)"),
            ({"requirepass": 12345678}, "requirepass: must be a string, got int"),
            ({"requirepass": b"hunter2"}, "requirepass: must be a string, got bytes"),
            (
                {"users": "app:hunter2"},
                "users: expected a sequence of UserConfig or a mapping of names to "
                "passwords, got str",
            ),
            ({"users": [("app", "hunter2")]}, "users[0]: expected a UserConfig, got tuple"),
            ({"users": {"app": 12345678}}, "users[0]: password: must be a string, got int"),
            (
                {"users": {"ok": "x", "": "hunter2"}},
                "users[1]: name: must be a non-empty name without spaces or control "
                "characters, got ''",
            ),
            (
                {
                    "users": [
                        UserConfig(name="app", password="hunter2"),
                        UserConfig(name="app", password="hunter3"),
                    ]
                },
                "users[1]: name 'app' is already used by users[0]",
            ),
            (
                {"requirepass": "hunter2", "users": {"app": "x", "default": "hunter3"}},
                "users[1]: 'default' is the user requirepass sets the password of; "
                "give that password once, as requirepass or as this user",
            ),
            ({"maxPinned": 0}, "maxPinned: must be a positive integer, got 0"),
            ({"maxPinned": True}, "maxPinned: must be a positive integer, got True"),
            ({"maxPinned": "8"}, "maxPinned: must be a positive integer, got '8'"),
            ({"pinnedWait": -1}, "pinnedWait: must be a non-negative integer (ms), got -1"),
            ({"pinnedWait": 1.5}, "pinnedWait: must be a non-negative integer (ms), got 1.5"),
        ]
        for fields, message in cases:
            error = self.assertConfigError(message, ListenerConfig, backends=["r1"], **fields)
            for secret in ("hunter", "12345678"):
                self.assertNotIn(secret, str(error))

    def test_pinned(self):
        listener = ListenerConfig(backends=["r1"], maxPinned=1, pinnedWait=0)
        self.assertEqual((listener.maxPinned, listener.pinnedWait), (1, 0))


class AuthenticationFlagsTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for C{requirepass}, C{maxPinned} and C{pinnedWait} as flags.
    """

    def listener(self, **values):
        return fromFlags(values).listeners[0]

    def test_values(self):
        listener = self.listener(requirepass="hunter2", maxPinned="8", pinnedWait="250")
        self.assertEqual(
            (listener.requirepass, listener.maxPinned, listener.pinnedWait), ("hunter2", 8, 250)
        )
        self.assertTrue(listener.authenticator().check(None, "hunter2"))

    def test_defaults(self):
        listener = self.listener()
        self.assertEqual(
            (listener.requirepass, listener.users, listener.maxPinned, listener.pinnedWait),
            (None, (), 32, 1000),
        )
        self.assertEqual(self.listener(requirepass=None).requirepass, None)

    def test_zeros(self):
        """
        As for C{poolSize}, a C{maxPinned} of 0 means the default; as for
        C{startupWait}, a C{pinnedWait} of 0 means "do not wait".
        """
        listener = self.listener(maxPinned="0", pinnedWait="0")
        self.assertEqual((listener.maxPinned, listener.pinnedWait), (32, 0))

    def test_spacesKept(self):
        """
        A password is taken as given, spaces included.
        """
        self.assertEqual(self.listener(requirepass=" two words ").requirepass, " two words ")

    def test_errors(self):
        cases = [
            (
                {"requirepass": ""},
                "--requirepass: must not be empty (leave it out for no password)",
            ),
            ({"requirepass": 12345678}, "--requirepass: must be a string, got int"),
            ({"maxPinned": "-1"}, "--maxPinned: must be a positive integer (0 means 32), got '-1'"),
            ({"maxPinned": "x"}, "--maxPinned: must be a positive integer (0 means 32), got 'x'"),
            (
                {"pinnedWait": "-5"},
                "--pinnedWait: must be a non-negative integer (ms), got '-5'",
            ),
            ({"pinnedWait": "1s"}, "--pinnedWait: must be a non-negative integer (ms), got '1s'"),
        ]
        for values, message in cases:
            error = self.assertConfigError(message, fromFlags, values)
            self.assertNotIn("12345678", str(error))

    def test_notWithConfig(self):
        """
        C{--config} replaces the listener flags; a password would be lost
        without a word, so the two are refused together.  The other new
        flags follow the rule of the rest.
        """
        path = FilePath(self.mktemp())
        path.setContent(b'[{"socket": "/tmp/a.sock", "tcpConnections": ["r1"]}]')
        error = self.assertConfigError(
            "--requirepass: not used with --config, which replaces every listener "
            'option; set "requirepass" in the listener objects of the file',
            fromFlags,
            {"config": path.path, "requirepass": "hunter2"},
        )
        self.assertNotIn("hunter2", str(error))
        listener = fromFlags(
            {"config": path.path, "maxPinned": "3", "pinnedWait": "0"}
        ).listeners[0]
        self.assertEqual((listener.maxPinned, listener.pinnedWait), (32, 1000))


class AuthenticationFromJSONTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for C{requirepass}, C{users}, C{maxPinned} and C{pinnedWait} in
    the JSON file.
    """

    def listener(self, **fields):
        document = dict({"port": 1, "tcpConnections": ["r1"]}, **fields)
        return fromJSON(json.dumps([document])).listeners[0]

    def test_values(self):
        listener = self.listener(
            requirepass="hunter2",
            users=[{"name": "app", "password": "s3cret"}, {"name": "cron", "password": "0ther"}],
            maxPinned=4,
            pinnedWait=0,
        )
        self.assertEqual(
            listener,
            ListenerConfig(
                port=1,
                backends=["r1"],
                requirepass="hunter2",
                users={"app": "s3cret", "cron": "0ther"},
                maxPinned=4,
                pinnedWait=0,
            ),
        )
        authenticator = listener.authenticator()
        self.assertEqual(authenticator.users, ("app", "cron", "default"))
        self.assertTrue(authenticator.check("app", "s3cret"))
        self.assertTrue(authenticator.check(None, "hunter2"))

    def test_defaultsAndNulls(self):
        for listener in (
            self.listener(),
            self.listener(requirepass=None, users=None, maxPinned=None, pinnedWait=None),
            self.listener(users=[], maxPinned=0),
        ):
            self.assertEqual(
                (listener.requirepass, listener.users, listener.maxPinned, listener.pinnedWait),
                (None, (), 32, 1000),
            )

    def test_usersOnly(self):
        listener = self.listener(users=[{"name": "app", "password": "s3cret"}])
        self.assertIsNone(listener.requirepass)
        self.assertTrue(listener.authenticator().required)

    def test_errors(self):
        """
        Errors name the listener, the field and, for a user, its index;
        none shows a password.
        """
        cases = [
            ({"requirepass": 12345678}, "requirepass: expected a string, got an integer"),
            ({"requirepass": ""}, "requirepass: must not be empty (leave it out for no password)"),
            (
                {"users": {"app": "hunter2"}},
                "users: expected an array of objects, got an object",
            ),
            (
                {"users": ["app:hunter2"]},
                'users[0]: expected an object such as {"name": "app", "password": "..."}, '
                "got a string",
            ),
            (
                {"users": [{"name": "app"}]},
                'users[0]: password: required, as in {"name": "app", "password": "..."}',
            ),
            (
                {"users": [{"password": "hunter2"}]},
                'users[0]: name: required, as in {"name": "app", "password": "..."}',
            ),
            (
                {"users": [{"name": "app", "password": None}]},
                'users[0]: password: required, as in {"name": "app", "password": "..."}',
            ),
            (
                {"users": [{"name": "app", "password": 12345678}]},
                "users[0]: password: expected a string, got an integer",
            ),
            (
                {"users": [{"name": "app", "password": ""}]},
                "users[0]: password: must not be empty (leave it out for no password)",
            ),
            (
                {"users": [{"name": "my app", "password": "hunter2"}]},
                "users[0]: name: must be a non-empty name without spaces or control "
                "characters, got 'my app'",
            ),
            (
                {"users": [{"name": "", "password": "hunter2"}]},
                "users[0]: name: must be a non-empty name without spaces or control "
                "characters, got ''",
            ),
            (
                {"users": [{"name": "app", "passwd": "hunter2"}]},
                "users[0]: passwd: unknown field (did you mean password?)",
            ),
            (
                {
                    "users": [
                        {"name": "app", "password": "hunter2"},
                        {"name": "cron", "password": "hunter3"},
                        {"name": "app", "password": "hunter4"},
                    ]
                },
                "users[2]: name 'app' is already used by users[0]",
            ),
            (
                {"requirepass": "hunter2", "users": [{"name": "default", "password": "hunter3"}]},
                "users[0]: 'default' is the user requirepass sets the password of; "
                "give that password once, as requirepass or as this user",
            ),
            ({"maxPinned": -1}, "maxPinned: must be a positive integer (0 means 32), got -1"),
            ({"maxPinned": "8"}, "maxPinned: expected an integer, got a string"),
            ({"pinnedWait": -1}, "pinnedWait: must be a non-negative integer (ms), got -1"),
            ({"pinnedWait": 0.5}, "pinnedWait: expected an integer, got a number"),
        ]
        for fields, problem in cases:
            error = self.assertConfigError(f"listener 1: {problem}", self.listener, **fields)
            for secret in ("hunter", "12345678"):
                self.assertNotIn(secret, str(error))

    def test_duplicateUserField(self):
        error = self.assertConfigError(
            "listener 2: users[0]: password: given more than once",
            fromJSON,
            '[{"port": 1, "tcpConnections": ["r1"]},'
            ' {"port": 2, "tcpConnections": ["r1"],'
            '  "users": [{"name": "a", "password": "hunter2", "password": "hunter3"}]}]',
        )
        self.assertNotIn("hunter", str(error))

    def test_notInRoutes(self):
        self.assertConfigError(
            "listener 1: routes[0]: requirepass: unknown field "
            "(requirepass is set for the whole listener)",
            self.listener,
            routes=[{"prefix": "a:", "tcpConnections": ["r2"], "requirepass": "hunter2"}],
        )

    def test_loadConfigFileError(self):
        """
        A file's errors start with its name and still hide the password.
        """
        path = FilePath(self.mktemp())
        path.setContent(
            json.dumps(
                [
                    {
                        "port": 1,
                        "tcpConnections": ["r1"],
                        "users": [{"name": "a b", "password": "hunter2"}],
                    }
                ]
            ).encode()
        )
        error = self.assertRaises(ConfigError, loadConfigFile, path)
        self.assertTrue(str(error).startswith(f"{path.path}: listener 1: users[0]: name: "))
        self.assertNotIn("hunter2", str(error))


class BackendCredentialsTests(ErrorAssertions, SynchronousTestCase):
    """
    Backend credentials in JSON backend objects, and a backend password
    hidden wherever an address is shown.
    """

    def listener(self, *backends, **fields):
        document = dict({"port": 1, "tcpConnections": list(backends)}, **fields)
        return fromJSON(json.dumps([document])).listeners[0]

    def test_objectCredentials(self):
        """
        A backend object may carry C{username}, C{password} and C{db}: a
        password then needs no percent-encoding.
        """
        listener = self.listener(
            {"address": "r1:6380", "username": "alice", "password": "p@ss/w rd?#", "db": 2},
            {"address": "r2", "password": "pw"},
            unixConnections=[{"address": "/tmp/r.sock", "password": "pw", "db": 0}],
        )
        self.assertEqual(
            listener.backends,
            (
                BackendAddress(
                    kind="tcp", host="r1", port=6380, username="alice", password="p@ss/w rd?#", db=2
                ),
                BackendAddress(kind="tcp", host="r2", port=6379, password="pw"),
                BackendAddress(kind="unix", path="/tmp/r.sock", password="pw", db=0),
            ),
        )
        self.assertEqual(str(listener.backends[0]), "r1:6380")
        self.assertNotIn("p@ss", repr(listener))

    def test_objectMatchesURL(self):
        self.assertEqual(
            self.listener({"address": "r1", "username": "a", "password": "p/w", "db": 3}).backends,
            self.listener("redis://a:p%2Fw@r1/3").backends,
        )

    def test_objectErrors(self):
        cases = [
            (
                {"address": "redis://:hunter2@r1", "password": "hunter3"},
                "password: also given in the address; give it in one place",
            ),
            (
                {"address": "redis://alice:hunter2@r1", "username": "bob", "password": "hunter3"},
                "username: also given in the address; give it in one place",
            ),
            (
                {"address": "redis://r1/2", "db": 3},
                "db: also given in the address; give it in one place",
            ),
            (
                {"address": "redis://r1?db=2", "db": 2},
                "db: also given in the address; give it in one place",
            ),
            (
                {"address": "r1", "username": "alice"},
                'username: a user name needs a password; add "password"',
            ),
            (
                {"address": "r1", "password": 12345678},
                "password: expected a string, got an integer",
            ),
            (
                {"address": "r1", "username": 7, "password": "hunter2"},
                "username: expected a string, got an integer",
            ),
            ({"address": "r1", "db": -1}, "db: must be a non-negative integer, got -1"),
            ({"address": "r1", "db": "2"}, "db: expected an integer, got a string"),
            (
                {"address": "r1", "passwrd": "hunter2"},
                "passwrd: unknown field (did you mean password?)",
            ),
        ]
        for obj, problem in cases:
            error = self.assertConfigError(
                f"listener 1: tcpConnections[1]: {problem}", self.listener, "r0", obj
            )
            for secret in ("hunter", "12345678"):
                self.assertNotIn(secret, str(error))

    def test_objectWithUsernameInAddressAndPassword(self):
        """
        A password for a user named in the address URL goes in the URL too:
        the address alone must be a valid one.
        """
        self.assertConfigErrorContains(
            ["username: a user name needs a password"],
            self.listener,
            {"address": "redis://alice@r1", "password": "hunter2"},
        )

    def test_percentEncodingRequired(self):
        """
        A URL password with a character that would end it is refused rather
        than parsed into a wrong host or port (which an error might quote).
        """
        for address in (
            "redis://alice:hunter2/x@r1",
            "redis://alice:hunter2?x@r1",
            "redis://alice:hunter2#x@r1",
            "redis://alice:hunter2@x@r1",
            "redis://alice:hunter2 x@r1",
            "unix://alice:hunter2/x@/tmp/r.sock",
        ):
            error = self.assertRaises(ConfigError, BackendAddress.fromString, address)
            self.assertIn(
                "must be percent-encoded: %40 for @, %2F for /, %3F for ?, %23 for #, "
                "%20 for a space",
                str(error),
            )
            self.assertNotIn("hunter2", str(error))
            self.assertIn(":***@", str(error))

    def test_pathsAreNotSecrets(self):
        """
        A socket path may hold C{@} and C{:}; it is shown as it is.
        """
        for text in ("/run/redis@cache/r.sock", "unix:///run/a:b@c.sock"):
            address = BackendAddress.fromString(text)
            self.assertEqual(address.kind, "unix")
        self.assertEqual(
            str(BackendAddress.fromString("unix:///run/a:b@c.sock")), "/run/a:b@c.sock"
        )
        self.assertConfigError(
            "'/run/redis@cache/r.sock:2': a socket path cannot carry a weight or name here "
            "(a path may contain ':' and spaces); write unix:///path?weight=N&name=NAME, or in "
            'the JSON file an object {"address": "/path", "weight": N, "name": "NAME"}',
            BackendAddress.fromString,
            "/run/redis@cache/r.sock:2",
            "unix",
        )

    def test_schemelessCredentials(self):
        """
        C{user:password@host} without C{redis://} is an error that does not
        show the password.
        """
        error = self.assertRaises(
            ConfigError, BackendAddress.fromString, "alice:hunter2@r1:6379", "tcp"
        )
        self.assertNotIn("hunter2", str(error))
        self.assertIn("'alice:***@r1:6379'", str(error))

    def test_constructorHost(self):
        error = self.assertConfigError(
            "host: invalid host name: it contains an @ (credentials go in username and password)",
            BackendAddress,
            kind="tcp",
            host="alice:hunter2@r1",
            port=1,
        )
        self.assertNotIn("hunter2", str(error))

    def test_flagHalves(self):
        """
        A flag's backend list is split on whitespace, so a password with a
        space arrives in two pieces; neither piece shows in the error.
        """
        for tcpConnections in ("redis://alice:hunter two@r1", "r0 two@r1"):
            error = self.assertRaises(ConfigError, fromFlags, {"tcpConnections": tcpConnections})
            self.assertNotIn("hunter", str(error))
            self.assertNotIn("two", str(error))
        self.assertConfigError(
            "--tcpConnections: 'redis://alice:***': port must be an integer from 1 to 65535, "
            "got '***'",
            fromFlags,
            {"tcpConnections": "redis://alice:hunter two@r1"},
        )

    def test_poolErrorLabel(self):
        """
        An error about a backend that parsed (here, a weight without
        ketama) names it on the command line by its text, password hidden.
        """
        error = self.assertConfigError(
            "--tcpConnections: 'redis://alice:***@r1?weight=2': weight 2 is only used by the "
            "ketama distribution; with rmux's placement list a server twice instead",
            fromFlags,
            {"tcpConnections": "redis://alice:hunter2@r1?weight=2 r2"},
        )
        self.assertNotIn("hunter2", str(error))

    def test_unixListHalves(self):
        """
        In a unix list, scheme-less C{user:password@host} is refused as
        credentials rather than taken as a relative socket path.  The limit
        of what can be done: split on a space in the password, it can make
        two valid socket paths, and a path is not a secret.
        """
        error = self.assertRaises(
            ConfigError, fromFlags, {"unixConnections": "alice:hunter2@r1"}
        )
        self.assertEqual(
            str(error),
            "--unixConnections: 'alice:***@r1': looks like credentials, not a socket path; "
            "a backend with a password is written redis://user:password@host or "
            "unix://user:password@/path (and a relative socket path with an @ as ./path)",
        )
        self.assertEqual(
            [b.path for b in fromFlags({"unixConnections": "./a:b@c"}).listeners[0].backends],
            ["./a:b@c"],
        )
        listener = fromFlags({"unixConnections": "alice:hunter /2@r1"}).listeners[0]
        self.assertEqual([b.path for b in listener.backends], ["alice:hunter", "/2@r1"])

    @settings(max_examples=int(os.environ.get("RMUX_SECRET_EXAMPLES", "200")), deadline=None)
    @given(
        middle=st.text(
            alphabet=string.ascii_letters + string.digits + " :/?#@%[]'\"\\.-_",
            min_size=0,
            max_size=12,
        ),
        template=st.sampled_from(
            [
                "redis://alice:{}@r1:6379",
                "redis://:{}@r1/2",
                "redis://alice:{}@r1:x",
                "redis://alice:{}@r1/x",
                "redis://alice:{}@[bad",
                "redis://alice:{}@r1?timeout=1",
                "redis://alice:{}@r1:6379:0",
                "unix://alice:{}@/tmp/r.sock",
                "unix://alice:{}@/tmp/r.sock?bad=1",
                "alice:{}@r1",
                "alice:{}@r1:6379",
                "redis://alice:{}@r1?weight=2",
                "redis://alice:{}@r1 cache-a",
                "redis://alice:{}@r1 r2 r1",
                "r0 redis://alice:{}@r1/1?name=r0",
            ]
        ),
    )
    def test_neverShown(self, middle, template):
        """
        Whatever the password and whatever is wrong with the address, no
        part of the password shows in C{str}, C{repr} or an error, whether
        the address is parsed alone, from a flag or from the file.  The
        password starts and ends with markers that no message contains, so
        any leaked end shows.
        """
        text = template.format("Zq" + middle + "Xj")
        url = "://" in template

        def check(parse):
            try:
                result = parse()
            except ConfigError as e:
                shown = str(e)
            else:
                shown = str(result) + repr(result)
            self.assertNotIn("Zq", shown, text)
            self.assertNotIn("Xj", shown, text)

        check(lambda: BackendAddress.fromString(text, "tcp"))
        check(lambda: fromFlags({"tcpConnections": text}))
        check(lambda: fromJSON(json.dumps([{"port": 1, "tcpConnections": [text]}])))
        check(lambda: fromJSON(json.dumps([{"port": 1, "tcpConnections": [{"address": text}]}])))
        if url:
            # Without a scheme, text in a unix list is a socket path, and
            # pieces of "user:pass word@host" split on the space can be two
            # valid paths (see test_unixListHalves).
            check(lambda: BackendAddress.fromString(text, "unix"))
            check(lambda: fromFlags({"unixConnections": text}))
            check(lambda: fromJSON(json.dumps([{"port": 1, "unixConnections": [text]}])))


LIMIT_FIELDS = (
    "maxClients",
    "clientOutputLimit",
    "socketOwner",
    "maxBulkLength",
    "maxArguments",
    "maxInlineLength",
    "shutdownTimeout",
)
"""The client limits, socket owner and shutdown fields, in their order."""

LIMIT_DEFAULTS = (10000, 268435456, None, 536870912, 2147483647, 65536, 5000)


def limits(listener: ListenerConfig) -> tuple[object, ...]:
    return tuple(getattr(listener, name) for name in LIMIT_FIELDS)


# A size as an operator writes it and the bytes it means: as in Redis's
# config, kb/mb/gb count in 1024s, k/m/g in 1000s, in any case.
SIZE_CASES = [
    ("0", 0),
    ("1", 1),
    ("100b", 100),
    ("1k", 1000),
    ("1kb", 1024),
    ("64KB", 65536),
    ("2m", 2000000),
    ("64mb", 67108864),
    ("64Mb", 67108864),
    ("1g", 1000000000),
    ("1gb", 1073741824),
    ("3GB", 3221225472),
    (" 8mb ", 8388608),
]

BAD_SIZES = ["", "mb", "-1", "-1mb", "+5", "1.5gb", "64 mb", "64mib", "1tb", "0x10", "1e6"]


class ClientLimitsTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for L{ListenerConfig.maxClients}, C{clientOutputLimit},
    C{socketOwner}, C{maxBulkLength}, C{maxArguments}, C{maxInlineLength}
    and C{shutdownTimeout} built in code.
    """

    def test_defaults(self):
        """
        Existing callers get Redis's limits, no socket owner and five
        seconds to shut down.
        """
        self.assertEqual(limits(ListenerConfig(backends=["r1"])), LIMIT_DEFAULTS)
        self.assertEqual(
            (
                DEFAULT_MAX_CLIENTS,
                DEFAULT_CLIENT_OUTPUT_LIMIT,
                DEFAULT_MAX_BULK_LENGTH,
                DEFAULT_MAX_ARGUMENTS,
                DEFAULT_MAX_INLINE_LENGTH,
                DEFAULT_SHUTDOWN_TIMEOUT,
            ),
            (10000, 256 * 1024**2, 512 * 1024**2, 2**31 - 1, 64 * 1024, 5000),
        )

    def test_values(self):
        listener = ListenerConfig(
            socket="/tmp/r.sock",
            backends=["r1"],
            maxClients=1,
            clientOutputLimit=0,
            socketOwner="redis:www-data",
            maxBulkLength=1,
            maxArguments=1,
            maxInlineLength=1,
            shutdownTimeout=0,
        )
        self.assertEqual(limits(listener), (1, 0, "redis:www-data", 1, 1, 1, 0))
        self.assertIn(
            "maxClients=1, clientOutputLimit=0, pubsubOutputLimit=33554432, "
            "pubsubOutputSoftLimit=8388608, pubsubOutputSoftTime=60000, "
            "clientQueryBufferLimit=1073741824, queryBuffersLimit=268435456, "
            "socketOwner='redis:www-data'", repr(listener)
        )

    def test_socketOwnerForms(self):
        """
        A socket owner is a user, a user and a group, or a group alone,
        each by name or by numeric id.
        """
        for owner in (
            "redis",
            "redis:www-data",
            ":www-data",
            "1000",
            "1000:33",
            ":0",
            "redis:33",
            "svc.redis_1$",
            "4294967294:4294967294",
        ):
            listener = ListenerConfig(socket="/tmp/r.sock", backends=["r1"], socketOwner=owner)
            self.assertEqual(listener.socketOwner, owner)

    def test_socketOwnerSyntax(self):
        """
        A socket owner that is not C{user}, C{user:group} or C{:group} is
        refused, and so is a numeric id that C{uid_t} cannot hold or that
        C{chown} takes as "leave unchanged".
        """
        for owner in ("", ":", "redis:", "a:b:c", "re dis", "redis:www data", "-1", "r:-1", "\t"):
            self.assertConfigError(
                "socketOwner: must be user, user:group or :group (names or numeric ids), "
                f"got {owner!r}",
                ListenerConfig,
                socket="/tmp/r.sock",
                backends=["r1"],
                socketOwner=owner,
            )
        for owner in ("4294967295", ":4294967295", "0:99999999999"):
            self.assertConfigError(
                f"socketOwner: a numeric id must be at most 4294967294, got {owner!r}",
                ListenerConfig,
                socket="/tmp/r.sock",
                backends=["r1"],
                socketOwner=owner,
            )
        self.assertConfigError(
            "socketOwner: must be a string such as 'redis', 'redis:www' or ':www', got 1000",
            ListenerConfig,
            socket="/tmp/r.sock",
            backends=["r1"],
            socketOwner=1000,
        )

    def test_socketOwnerNeedsSocket(self):
        message = "socketOwner: only used with socket (it is the owner of the unix socket file)"
        self.assertConfigError(message, ListenerConfig, backends=["r1"], socketOwner="redis")
        listener = ListenerConfig(socket="/tmp/r.sock", backends=["r1"], socketOwner="redis")
        self.assertConfigError(message, dataclasses.replace, listener, socket=None)

    def test_validation(self):
        cases = [
            ({"maxClients": 0}, "maxClients: must be a positive integer, got 0"),
            ({"maxClients": True}, "maxClients: must be a positive integer, got True"),
            ({"maxClients": "10"}, "maxClients: must be a positive integer, got '10'"),
            (
                {"clientOutputLimit": -1},
                "clientOutputLimit: must be a non-negative integer (bytes), got -1",
            ),
            (
                {"clientOutputLimit": "64mb"},
                "clientOutputLimit: must be a non-negative integer (bytes), got '64mb'",
            ),
            ({"maxBulkLength": 0}, "maxBulkLength: must be a positive integer (bytes), got 0"),
            (
                {"maxBulkLength": 1.5},
                "maxBulkLength: must be a positive integer (bytes), got 1.5",
            ),
            ({"maxArguments": 0}, "maxArguments: must be a positive integer, got 0"),
            (
                {"maxInlineLength": -2},
                "maxInlineLength: must be a positive integer (bytes), got -2",
            ),
            (
                {"shutdownTimeout": -1},
                "shutdownTimeout: must be a non-negative integer (ms), got -1",
            ),
            (
                {"shutdownTimeout": None},
                "shutdownTimeout: must be a non-negative integer (ms), got None",
            ),
        ]
        for fields, message in cases:
            self.assertConfigError(message, ListenerConfig, backends=["r1"], **fields)

    def test_replaceValidates(self):
        listener = ListenerConfig(backends=["r1"])
        self.assertEqual(dataclasses.replace(listener, maxClients=5).maxClients, 5)
        self.assertRaises(ConfigError, dataclasses.replace, listener, maxArguments=0)


class ClientLimitsFlagsTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for C{--maxClients}, C{--clientOutputLimit}, C{--socketOwner},
    C{--maxBulkLength}, C{--maxArguments}, C{--maxInlineLength} and
    C{--shutdownTimeout}.
    """

    def listener(self, **values):
        return fromFlags(values).listeners[0]

    def test_defaults(self):
        self.assertEqual(limits(self.listener()), LIMIT_DEFAULTS)
        self.assertEqual(limits(self.listener(**dict.fromkeys(LIMIT_FIELDS))), LIMIT_DEFAULTS)

    def test_values(self):
        """
        Every flag lands in its field, from strings as on the command line
        or from values already converted.
        """
        listener = self.listener(
            socket="/tmp/r.sock",
            maxClients="50",
            clientOutputLimit="1048576",
            socketOwner="redis:www-data",
            maxBulkLength="4096",
            maxArguments="64",
            maxInlineLength="512",
            shutdownTimeout="250",
        )
        self.assertEqual(limits(listener), (50, 1048576, "redis:www-data", 4096, 64, 512, 250))
        listener = self.listener(
            maxClients=50,
            clientOutputLimit=1048576,
            maxBulkLength=4096,
            maxArguments=64,
            maxInlineLength=512,
            shutdownTimeout=250,
        )
        self.assertEqual(limits(listener), (50, 1048576, None, 4096, 64, 512, 250))

    def test_zeros(self):
        """
        As for C{poolSize}, 0 means the default, except for
        C{clientOutputLimit}, where it means "unlimited", and, as for
        C{startupWait}, C{shutdownTimeout}, where it means "do not wait".
        """
        zeros = {name: "0" for name in LIMIT_FIELDS if name != "socketOwner"}
        self.assertEqual(
            limits(self.listener(**zeros)), (10000, 0, None, 536870912, 2147483647, 65536, 0)
        )

    def test_sizes(self):
        """
        The sizes take Redis's units.
        """
        for text, size in SIZE_CASES:
            listener = self.listener(
                clientOutputLimit=text, maxBulkLength=text, maxInlineLength=text
            )
            self.assertEqual(listener.clientOutputLimit, size, text)
            if size:
                self.assertEqual((listener.maxBulkLength, listener.maxInlineLength), (size, size))

    def test_sizeErrors(self):
        rules = {
            "clientOutputLimit": "a non-negative number of bytes, such as 65536 or 64kb "
            "(0 means unlimited)",
            "maxBulkLength": "a positive number of bytes, such as 65536 or 64kb (0 means 512mb)",
            "maxInlineLength": "a positive number of bytes, such as 65536 or 64kb (0 means 64kb)",
        }
        for name, rule in rules.items():
            for text in BAD_SIZES:
                self.assertConfigError(
                    f"--{name}: must be {rule}, got {text!r}", fromFlags, {name: text}
                )
            self.assertConfigError(f"--{name}: must be {rule}, got True", fromFlags, {name: True})
            self.assertConfigError(f"--{name}: must be {rule}, got -1", fromFlags, {name: -1})

    def test_errors(self):
        cases = [
            (
                {"maxClients": "-1"},
                "--maxClients: must be a positive integer (0 means 10000), got '-1'",
            ),
            (
                {"maxClients": "lots"},
                "--maxClients: must be a positive integer (0 means 10000), got 'lots'",
            ),
            (
                {"maxArguments": "1k"},
                "--maxArguments: must be a positive integer (0 means 2147483647), got '1k'",
            ),
            (
                {"shutdownTimeout": "-1"},
                "--shutdownTimeout: must be a non-negative integer (ms), got '-1'",
            ),
            (
                {"shutdownTimeout": "5s"},
                "--shutdownTimeout: must be a non-negative integer (ms), got '5s'",
            ),
            (
                {"socketOwner": "redis"},
                "--socketOwner: only used with --socket (it is the owner of the unix socket file)",
            ),
            (
                {"socket": "/tmp/r.sock", "socketOwner": "redis:"},
                "--socketOwner: must be user, user:group or :group (names or numeric ids), "
                "got 'redis:'",
            ),
            (
                {"socket": "/tmp/r.sock", "socketOwner": ""},
                "--socketOwner: must be user, user:group or :group (names or numeric ids), "
                "got ''",
            ),
            (
                {"socket": "/tmp/r.sock", "socketOwner": "-1:-1"},
                "--socketOwner: must be user, user:group or :group (names or numeric ids), "
                "got '-1:-1'",
            ),
            (
                {"socket": "/tmp/r.sock", "socketOwner": "4294967295"},
                "--socketOwner: a numeric id must be at most 4294967294, got '4294967295'",
            ),
            (
                {"socket": "/tmp/r.sock", "socketOwner": 1000},
                "--socketOwner: must be a string, got 1000",
            ),
        ]
        for values, message in cases:
            self.assertConfigError(message, fromFlags, values)

    def test_socketOwnerWithEmptySocket(self):
        """
        An empty C{--socket} is not given, so it cannot carry an owner.
        """
        self.assertConfigError(
            "--socketOwner: only used with --socket (it is the owner of the unix socket file)",
            fromFlags,
            {"socket": "", "socketOwner": "redis"},
        )

    def test_configWins(self):
        """
        The new flags are listener flags: C{--config} replaces them, as it
        does the rest.
        """
        path = FilePath(self.mktemp())
        path.setContent(b'[{"port": 7000, "tcpConnections": ["r1"]}]')
        values = {"config": path.path, "socketOwner": "redis"}
        values.update({name: "3" for name in LIMIT_FIELDS if name != "socketOwner"})
        self.assertEqual(limits(fromFlags(values).listeners[0]), LIMIT_DEFAULTS)


class ClientLimitsFromJSONTests(ErrorAssertions, SynchronousTestCase):
    """
    Tests for C{maxClients}, C{clientOutputLimit}, C{socketOwner},
    C{maxBulkLength}, C{maxArguments}, C{maxInlineLength} and
    C{shutdownTimeout} in the JSON file.
    """

    def listener(self, **fields):
        document = dict({"port": 1, "tcpConnections": ["r1"]}, **fields)
        return fromJSON(json.dumps([document])).listeners[0]

    def test_values(self):
        listener = self.listener(
            port=None,
            socket="/tmp/r.sock",
            maxClients=50,
            clientOutputLimit=1048576,
            socketOwner=":www-data",
            maxBulkLength=4096,
            maxArguments=64,
            maxInlineLength=512,
            shutdownTimeout=250,
        )
        self.assertEqual(
            listener,
            ListenerConfig(
                socket="/tmp/r.sock",
                backends=["r1"],
                maxClients=50,
                clientOutputLimit=1048576,
                socketOwner=":www-data",
                maxBulkLength=4096,
                maxArguments=64,
                maxInlineLength=512,
                shutdownTimeout=250,
            ),
        )

    def test_defaultsAndNulls(self):
        self.assertEqual(limits(self.listener()), LIMIT_DEFAULTS)
        self.assertEqual(limits(self.listener(**dict.fromkeys(LIMIT_FIELDS))), LIMIT_DEFAULTS)

    def test_zeros(self):
        zeros = {name: 0 for name in LIMIT_FIELDS if name != "socketOwner"}
        self.assertEqual(
            limits(self.listener(**zeros)), (10000, 0, None, 536870912, 2147483647, 65536, 0)
        )
        self.assertEqual(self.listener(clientOutputLimit="0mb").clientOutputLimit, 0)
        self.assertEqual(self.listener(maxBulkLength="0kb").maxBulkLength, 536870912)

    def test_sizes(self):
        """
        A size is an integer or a string with Redis's units.
        """
        for text, size in SIZE_CASES:
            listener = self.listener(
                clientOutputLimit=text, maxBulkLength=text, maxInlineLength=text
            )
            self.assertEqual(listener.clientOutputLimit, size, text)
            if size:
                self.assertEqual((listener.maxBulkLength, listener.maxInlineLength), (size, size))

    def test_sizeErrors(self):
        rule = "a positive number of bytes, such as 65536 or 64kb (0 means 512mb)"
        for text in BAD_SIZES:
            self.assertConfigError(
                f"listener 1: maxBulkLength: must be {rule}, got {text!r}",
                self.listener,
                maxBulkLength=text,
            )
        self.assertConfigError(
            f"listener 1: maxBulkLength: must be {rule}, got -1", self.listener, maxBulkLength=-1
        )
        for value, kind in [(1.5, "a number"), (True, "a boolean"), ([1], "an array")]:
            self.assertConfigError(
                'listener 1: clientOutputLimit: expected an integer or a string such as "64mb", '
                f"got {kind}",
                self.listener,
                clientOutputLimit=value,
            )

    def test_errors(self):
        """
        Errors name the listener and the field.
        """
        cases = [
            ({"maxClients": -1}, "maxClients: must be a positive integer (0 means 10000), got -1"),
            ({"maxClients": "100"}, "maxClients: expected an integer, got a string"),
            (
                {"clientOutputLimit": -5},
                "clientOutputLimit: must be a non-negative number of bytes, such as 65536 or "
                "64kb (0 means unlimited), got -5",
            ),
            ({"maxArguments": "1k"}, "maxArguments: expected an integer, got a string"),
            (
                {"maxArguments": -1},
                "maxArguments: must be a positive integer (0 means 2147483647), got -1",
            ),
            (
                {"maxInlineLength": "64 kb"},
                "maxInlineLength: must be a positive number of bytes, such as 65536 or 64kb "
                "(0 means 64kb), got '64 kb'",
            ),
            (
                {"shutdownTimeout": -1},
                "shutdownTimeout: must be a non-negative integer (ms), got -1",
            ),
            ({"shutdownTimeout": "5s"}, "shutdownTimeout: expected an integer, got a string"),
            (
                {"socketOwner": "redis"},
                "socketOwner: only used with socket (it is the owner of the unix socket file)",
            ),
            (
                {"socket": "", "socketOwner": "redis"},
                "socketOwner: only used with socket (it is the owner of the unix socket file)",
            ),
            (
                {"socket": "/tmp/r.sock", "socketOwner": 1000},
                "socketOwner: expected a string, got an integer",
            ),
            (
                {"socket": "/tmp/r.sock", "socketOwner": "a b"},
                "socketOwner: must be user, user:group or :group (names or numeric ids), "
                "got 'a b'",
            ),
            ({"maxClient": 5}, "maxClient: unknown field (did you mean maxClients?)"),
        ]
        for fields, problem in cases:
            self.assertConfigError(f"listener 1: {problem}", self.listener, **fields)

    def test_secondListener(self):
        self.assertConfigError(
            "listener 2: maxInlineLength: must be a positive number of bytes, such as 65536 or "
            "64kb (0 means 64kb), got '1tb'",
            fromJSON,
            '[{"port": 1, "tcpConnections": ["r1"]},'
            ' {"port": 2, "tcpConnections": ["r1"], "maxInlineLength": "1tb"}]',
        )

    def test_notInRoutes(self):
        self.assertConfigError(
            "listener 1: routes[0]: maxClients: unknown field "
            "(maxClients is set for the whole listener)",
            self.listener,
            routes=[{"prefix": "a:", "tcpConnections": ["r2"], "maxClients": 5}],
        )

    def test_loadConfigFile(self):
        path = FilePath(self.mktemp())
        path.setContent(
            b'[{"socket": "/tmp/r.sock", "socketOwner": "redis:redis", "tcpConnections": ["r1"],'
            b' "clientOutputLimit": "1gb", "maxBulkLength": "1mb", "shutdownTimeout": 30000}]'
        )
        listener = loadConfigFile(path).listeners[0]
        self.assertEqual(
            limits(listener), (10000, 1073741824, "redis:redis", 1048576, 2147483647, 65536, 30000)
        )
        self.assertEqual(fromFlags({"config": path.path}).listeners[0], listener)
