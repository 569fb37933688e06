"""
Tests for L{rmux.commands}: key positions, classification, lookup and the
exact error texts, checked against a real redis-server where Redis is the
authority (C{COMMAND GETKEYS}, its error replies).
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from importlib import resources

import hiredis

from twisted.trial.unittest import SynchronousTestCase

from rmux import commands
from rmux.commands import (
    BLOCKING, FORWARD, KEYED, KEYLESS_ALL, KEYLESS_ANY, KEYLESS_REFUSED,
    LOCAL, MERGES, POLICIES, PUBSUB, REFUSED, ROUTINGS, SPLIT, STATEFUL,
    CommandTable, KeySpec, NEWER_COMMANDS, unknownCommandError,
    unknownSubcommandError, wrongArityError)


REDIS_SERVER = shutil.which("redis-server")
TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "tools", "gen_commands.py")


def b(*words):
    """
    A command as the parser hands it over: a list of C{bytes}.
    """
    return [w.encode("utf-8") if isinstance(w, str) else w for w in words]


def encode(args):
    """
    Encode a command as a RESP array.
    """
    out = [b"*%d\r\n" % (len(args),)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class RedisServerMixin:
    """
    Start a private redis-server on a unix socket for one test and stop it
    in cleanup.
    """

    def startRedis(self):
        """
        @return: the path of the server's unix socket.
        """
        if REDIS_SERVER is None:
            self.skipTest("redis-server is not on PATH")
        directory = tempfile.mkdtemp(prefix="rmux-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "r.sock")
        process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", path, "--save", "",
             "--appendonly", "no", "--dir", directory,
             "--logfile", os.path.join(directory, "log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

        def stop():
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.callRaw(path, [b"PING"])
                return path
            except OSError:
                time.sleep(0.01)
        self.fail("redis-server did not start")

    def connect(self, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        self.addCleanup(sock.close)
        return sock

    def callRaw(self, path, *requests):
        """
        Send commands in one pipeline and return the raw bytes of each
        reply.  Only for replies of one line (errors, statuses, integers).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(path)
            sock.sendall(b"".join(encode(r) for r in requests))
            data = b""
            while data.count(b"\r\n") < len(requests):
                chunk = sock.recv(65536)
                if not chunk:
                    raise OSError("connection closed")
                data += chunk
        finally:
            sock.close()
        return [line + b"\r\n" for line in data.split(b"\r\n")[:-1]]

    def callParsed(self, path, requests):
        """
        Send commands in one pipeline and return their parsed replies;
        error replies come back as L{hiredis.ReplyError} instances.
        """
        sock = self.connect(path)
        sock.sendall(b"".join(encode(r) for r in requests))
        reader = hiredis.Reader()
        replies = []
        while len(replies) < len(requests):
            reply = reader.gets()
            if reply is False:
                reader.feed(sock.recv(1 << 20))
            else:
                replies.append(reply)
        return replies


class TableTests(SynchronousTestCase):
    """
    The generated table as a whole.
    """

    def setUp(self):
        self.table = CommandTable.default()

    def test_version(self):
        """
        The table records the Redis version it was generated from.
        """
        self.assertTrue(self.table.redisVersion.startswith("7."))

    def test_default(self):
        """
        L{CommandTable.default} is built once; L{CommandTable.load} builds
        a fresh table every time.
        """
        self.assertIs(CommandTable.default(), self.table)
        self.assertIsNot(CommandTable.load(), self.table)

    def test_size(self):
        """
        Every Redis 7.0 command and subcommand is there.
        """
        top = [s for s in self.table if s.container is None]
        subs = [s for s in self.table if s.container is not None]
        self.assertGreaterEqual(len(top), 240)
        self.assertGreaterEqual(len(subs), 120)
        self.assertEqual(len(self.table), len(top) + len(subs))
        for name in ["client|setname", "config|get", "object|encoding",
                     "script|load", "xinfo|stream", "memory|usage",
                     "function|load", "pubsub|numsub", "command|getkeys"]:
            self.assertIn(name, self.table)

    def test_iterationSorted(self):
        """
        Iteration yields every spec once, sorted by name.
        """
        names = [s.name for s in self.table]
        self.assertEqual(names, sorted(set(names)))

    def test_jsonSortedOneLinePerCommand(self):
        """
        C{commands.json} is sorted and has one command per line, so that a
        regenerated table diffs command by command.
        """
        text = resources.files("rmux").joinpath("commands.json").read_text()
        rows = [line for line in text.splitlines()
                if line.startswith('{"name": ')]
        names = [json.loads(line.rstrip(","))["name"] for line in rows]
        self.assertEqual(names, sorted(names))
        self.assertEqual(len(names), len(json.loads(text)["commands"]))

    def test_everyCommandClassified(self):
        """
        Every command has a valid policy and routing; a merge hint exactly
        when its replies must be merged; a reason whenever it can be
        refused.
        """
        for spec in self.table:
            self.assertIn(spec.policy, POLICIES, spec.name)
            self.assertIn(spec.routing, ROUTINGS, spec.name)
            if spec.routing in (KEYLESS_ALL, SPLIT):
                self.assertIn(spec.merge, MERGES, spec.name)
            else:
                self.assertIsNone(spec.merge, spec.name)
            if spec.policy == REFUSED or spec.routing == KEYLESS_REFUSED:
                self.assertTrue(spec.reason, spec.name)
            else:
                self.assertIsNone(spec.reason, spec.name)

    def test_deliberate(self):
        """
        No dangerous, admin, connection or keyless command is classified by
        a fallback rule alone: each is forwarded (with one server rmux is
        that server) or blocking by Redis's C{blocking} flag, or listed in
        one of the module's tables; and every keyless one says where it goes
        with several servers.
        """
        for spec in self.table:
            if spec.subcommands is not None:
                continue    # bare containers are arity errors (but COMMAND)
            listed = (spec.name in commands._POLICY_TABLE
                      or spec.container in commands._POLICY_TABLE)
            risky = ({"@dangerous", "@admin", "@connection", "@transaction",
                      "@pubsub", "@blocking"} & spec.categories
                     or {"admin", "blocking", "pubsub"} & spec.flags)
            if risky and not listed:
                if "blocking" in spec.flags:
                    self.assertEqual(spec.policy, BLOCKING, spec.name)
                else:
                    self.assertEqual(spec.policy, FORWARD, spec.name)
            if not spec.hasKeys and spec.policy != REFUSED:
                self.assertTrue(spec.name in commands._KEYLESS_TABLE
                                or spec.container in commands._FAMILY_ROUTING, spec.name)

    def test_tablesNameRealCommands(self):
        """
        The module's tables only name commands of the generated table, or
        of newer Redis versions on purpose.
        """
        newer = {"client|setinfo", "client|no-touch", "waitaof"}
        for table in (commands._POLICY_TABLE, commands._KEYLESS_TABLE,
                      commands._SPLIT_TABLE, commands._KEY_FINDERS):
            for name in table:
                if name not in newer:
                    self.assertIn(name, self.table, name)
        for name in commands._KEYLESS_TABLE:
            spec = self.table.get(name)
            if spec is not None:
                self.assertFalse(spec.hasKeys, name)


class LookupTests(SynchronousTestCase):
    """
    L{CommandTable.lookup}.
    """

    def setUp(self):
        self.table = CommandTable.default()

    def test_anyCase(self):
        """
        Command names are found in any case, and lower and upper case are
        direct dictionary hits.
        """
        spec = self.table.get("set")
        for name in [b"set", b"SET", b"Set", b"sEt"]:
            self.assertIs(self.table.lookup([name, b"k", b"v"]), spec)
        self.assertIs(self.table._lookup[b"SET"], spec)
        self.assertIs(self.table._lookup[b"set"], spec)

    def test_unknown(self):
        """
        Unknown commands give L{None}.
        """
        self.assertIsNone(self.table.lookup([b"nosuchcommand", b"a"]))
        self.assertIsNone(self.table.lookup([b""]))

    def test_subcommand(self):
        """
        A container's subcommand is looked up by C{args[1]}, in any case.
        """
        spec = self.table.get("client|setname")
        self.assertEqual(spec.name, "client|setname")
        self.assertEqual(spec.container, "client")
        self.assertEqual(spec.displayName, "CLIENT SETNAME")
        for args in [b("CLIENT", "SETNAME", "x"), b("client", "setname", "x"),
                     b("Client", "SetName", "x")]:
            self.assertIs(self.table.lookup(args), spec)
        self.assertEqual(self.table.lookup(b("config", "get", "x")).name,
                         "config|get")
        self.assertEqual(self.table.lookup(b("OBJECT", "ENCODING", "k")).name,
                         "object|encoding")
        self.assertEqual(self.table.lookup(b("script", "LOAD", "s")).name,
                         "script|load")

    def test_unknownSubcommand(self):
        """
        An unknown subcommand gives L{None}; the container alone gives the
        container.
        """
        self.assertIsNone(self.table.lookup(b("CLIENT", "nosuch")))
        client = self.table.lookup(b("client"))
        self.assertEqual(client.name, "client")
        self.assertIn("client|kill", [s.name for s in
                                      client.subcommands.values()])
        self.assertEqual(self.table.lookup(b("COMMAND")).name, "command")

    def test_hasSubcommands(self):
        """
        L{CommandTable.hasSubcommands} tells containers apart.
        """
        for name in [b"client", b"CLIENT", b"Config", "object", "SCRIPT"]:
            self.assertTrue(self.table.hasSubcommands(name), name)
        for name in [b"get", "set", b"nosuch", "client|kill"]:
            self.assertFalse(self.table.hasSubcommands(name), name)

    def test_get(self):
        """
        L{CommandTable.get} and C{in} take full names in any case.
        """
        self.assertEqual(self.table.get("GET").name, "get")
        self.assertEqual(self.table.get("Client|Kill").name, "client|kill")
        self.assertIsNone(self.table.get("nosuch"))
        self.assertIn("CONFIG|SET", self.table)


class ArityTests(SynchronousTestCase):
    """
    L{CommandSpec.checkArity}.
    """

    def test_arity(self):
        table = CommandTable.default()
        cases = [("get", 2, True), ("get", 1, False), ("get", 3, False),
                 ("set", 2, False), ("set", 3, True), ("set", 7, True),
                 ("ping", 1, True), ("ping", 2, True),
                 ("client|setname", 3, True), ("client|setname", 2, False),
                 ("client|setname", 4, False), ("config", 1, False),
                 ("command", 1, True), ("mset", 3, True)]
        for name, argc, ok in cases:
            self.assertEqual(table.get(name).checkArity(argc), ok,
                             (name, argc))


# Commands whose keys move with their arguments, with the keys Redis finds.
# Key arguments are named k*/d* so that the expectation reads at a glance.
MOVABLE = [
    (["EVAL", "return 1", "2", "k1", "k2", "arg"], ["k1", "k2"]),
    (["EVAL", "return 1", "0", "arg"], []),
    (["EVAL_RO", "return 1", "1", "k1"], ["k1"]),
    (["EVALSHA", "a" * 40, "3", "k1", "k2", "k3"], ["k1", "k2", "k3"]),
    (["EVALSHA_RO", "a" * 40, "1", "k1", "x"], ["k1"]),
    (["FCALL", "f", "2", "k1", "k2", "x"], ["k1", "k2"]),
    (["FCALL_RO", "f", "1", "k1"], ["k1"]),
    (["ZUNIONSTORE", "d", "2", "k1", "k2", "WEIGHTS", "1", "2"],
     ["d", "k1", "k2"]),
    (["ZINTERSTORE", "d", "1", "k1", "AGGREGATE", "MAX"], ["d", "k1"]),
    (["ZDIFFSTORE", "d", "2", "k1", "k2"], ["d", "k1", "k2"]),
    (["ZUNION", "2", "k1", "k2", "WITHSCORES"], ["k1", "k2"]),
    (["ZINTER", "3", "k1", "k2", "k3"], ["k1", "k2", "k3"]),
    (["ZDIFF", "2", "k1", "k2"], ["k1", "k2"]),
    (["ZINTERCARD", "2", "k1", "k2", "LIMIT", "5"], ["k1", "k2"]),
    (["SINTERCARD", "3", "k1", "k2", "k3"], ["k1", "k2", "k3"]),
    (["LMPOP", "2", "k1", "k2", "LEFT", "COUNT", "2"], ["k1", "k2"]),
    (["BLMPOP", "0", "2", "k1", "k2", "RIGHT"], ["k1", "k2"]),
    (["ZMPOP", "1", "k1", "MIN"], ["k1"]),
    (["BZMPOP", "1.5", "2", "k1", "k2", "MAX", "COUNT", "3"], ["k1", "k2"]),
    (["XREAD", "COUNT", "2", "BLOCK", "100", "STREAMS", "k1", "k2", "0", "0"],
     ["k1", "k2"]),
    (["XREAD", "STREAMS", "k1", "$"], ["k1"]),
    (["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "NOACK", "STREAMS",
      "k1", "k2", ">", ">"], ["k1", "k2"]),
    (["XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "k1", ">"],
     ["k1"]),
    (["XREADGROUP", "GROUP", "streams", "block", "STREAMS", "k1", ">"],
     ["k1"]),
    (["SORT", "k1"], ["k1"]),
    (["SORT", "k1", "BY", "w_*", "GET", "g_*", "LIMIT", "0", "10", "STORE",
      "d"], ["k1", "d"]),
    (["SORT", "k1", "STORE", "d1", "STORE", "d2"], ["k1", "d2"]),
    (["SORT", "k1", "GET", "store", "ALPHA"], ["k1"]),
    (["SORT_RO", "k1", "BY", "w_*", "GET", "#"], ["k1"]),
    (["MIGRATE", "host", "6379", "k1", "0", "100"], ["k1"]),
    (["MIGRATE", "host", "6379", "k1", "0", "100", "COPY", "REPLACE"],
     ["k1"]),
    (["MIGRATE", "host", "6379", "", "0", "100", "COPY", "REPLACE", "AUTH",
      "keys", "KEYS", "k1", "k2"], ["k1", "k2"]),
    (["MIGRATE", "host", "6379", "", "0", "100", "AUTH2", "u", "keys", "KEYS",
      "k1"], ["k1"]),
    (["OBJECT", "ENCODING", "k1"], ["k1"]),
    (["OBJECT", "FREQ", "k1"], ["k1"]),
    (["MEMORY", "USAGE", "k1", "SAMPLES", "5"], ["k1"]),
    (["GEORADIUS", "k1", "0", "0", "10", "km", "STORE", "d1"], ["k1", "d1"]),
    (["GEORADIUS", "k1", "0", "0", "10", "km", "COUNT", "3", "STOREDIST",
      "d2"], ["k1", "d2"]),
    (["GEORADIUS", "k1", "0", "0", "10", "km", "WITHDIST"], ["k1"]),
    (["GEORADIUSBYMEMBER", "k1", "m", "10", "km", "STORE", "d1"],
     ["k1", "d1"]),
    (["GEORADIUSBYMEMBER", "k1", "m", "10", "km", "STOREDIST", "d1"],
     ["k1", "d1"]),
    (["GEORADIUS_RO", "k1", "0", "0", "10", "km"], ["k1"]),
    (["GEOSEARCHSTORE", "d1", "k1", "FROMMEMBER", "m", "BYRADIUS", "1", "km"],
     ["d1", "k1"]),
    (["BITOP", "AND", "d", "k1", "k2"], ["d", "k1", "k2"]),
    (["MSET", "k1", "v1", "k2", "v2"], ["k1", "k2"]),
    (["MSETNX", "k1", "v1", "k2", "v2"], ["k1", "k2"]),
    (["DEL", "k1", "k2", "k3"], ["k1", "k2", "k3"]),
    (["BLPOP", "k1", "k2", "0"], ["k1", "k2"]),
    (["BZPOPMIN", "k1", "0"], ["k1"]),
    (["BRPOPLPUSH", "k1", "k2", "0"], ["k1", "k2"]),
    (["BLMOVE", "k1", "k2", "LEFT", "RIGHT", "0"], ["k1", "k2"]),
    (["COPY", "k1", "k2", "DB", "1"], ["k1", "k2"]),
    (["ZRANGESTORE", "d", "k1", "0", "-1"], ["d", "k1"]),
    (["XGROUP", "CREATE", "k1", "g", "$", "MKSTREAM"], ["k1"]),
    (["XINFO", "STREAM", "k1", "FULL"], ["k1"]),
    (["WATCH", "k1", "k2"], ["k1", "k2"]),
    (["SET", "k1", "v", "GET"], ["k1"]),
    (["BITFIELD", "k1", "GET", "u8", "0"], ["k1"]),
    (["SPUBLISH", "channel", "message"], []),
    (["PUBLISH", "channel", "message"], []),
    (["SSUBSCRIBE", "c1", "c2"], []),
]


class KeyIndexTests(SynchronousTestCase):
    """
    L{CommandSpec.keyIndexes} and L{CommandSpec.firstKey}.
    """

    def setUp(self):
        self.table = CommandTable.default()

    def keys(self, words):
        args = b(*words)
        spec = self.table.lookup(args)
        return [args[i].decode() for i in spec.keyIndexes(args)]

    def test_movable(self):
        """
        Keys are found in every form of the commands whose keys move.
        """
        for words, expected in MOVABLE:
            self.assertEqual(self.keys(words), expected, words)

    def test_indexes(self):
        """
        The indexes point into the arguments, the command name at 0.
        """
        spec = self.table.get("zunionstore")
        self.assertEqual(spec.keyIndexes(b("zunionstore", "d", "2", "a", "b")),
                         [1, 3, 4])
        spec = self.table.get("client|setname")
        self.assertEqual(spec.keyIndexes(b("client", "setname", "x")), [])

    def test_shortArguments(self):
        """
        Too few or malformed arguments give the keys that are there and
        never raise: arity is checked separately, syntax by the server.
        """
        cases = [
            (["GET"], []),
            (["OBJECT", "ENCODING"], []),
            (["EVAL", "s"], []),
            (["EVAL", "s", "x", "k1"], []),
            (["EVAL", "s", "5", "k1", "k2"], ["k1", "k2"]),
            (["EVAL", "s", "-1", "k1"], []),
            (["ZUNIONSTORE", "d"], ["d"]),
            (["ZUNIONSTORE", "d", "3", "k1"], ["d", "k1"]),
            (["XREAD", "STREAMS"], []),
            (["XREAD", "COUNT"], []),
            (["XREAD", "STREAMS", "k1", "k2", "0"], ["k1"]),
            (["XREADGROUP", "GROUP", "g"], []),
            (["MIGRATE", "h"], []),
            (["MIGRATE", "h", "1", "k1"], ["k1"]),
            (["MIGRATE", "h", "1", "k1", "0", "9", "KEYS", "k2"], []),
            (["SORT"], []),
            (["SORT", "k1", "STORE"], ["k1"]),
            (["SORT", "k1", "LIMIT"], ["k1"]),
            (["SORT_RO"], []),
            (["MSET", "k1"], ["k1"]),
            (["BLPOP", "k1"], []),
            (["GEORADIUS", "k1", "0", "0", "1", "km", "STORE"], ["k1"]),
            (["LMPOP", "x"], []),
        ]
        for words, expected in cases:
            self.assertEqual(self.keys(words), expected, words)

    def test_firstKey(self):
        """
        L{CommandSpec.firstKey} gives the routing key, or L{None}.
        """
        get = self.table.get("get")
        self.assertEqual(get._fixedKey, 1)
        self.assertEqual(get.firstKey(b("GET", "k")), b"k")
        self.assertIsNone(get.firstKey(b("GET")))
        encoding = self.table.get("object|encoding")
        self.assertEqual(encoding._fixedKey, 2)
        self.assertEqual(encoding.firstKey(b("OBJECT", "ENCODING", "k")),
                         b"k")
        self.assertEqual(self.table.get("eval").firstKey(
            b("EVAL", "s", "2", "k1", "k2")), b"k1")
        self.assertIsNone(self.table.get("eval").firstKey(b("EVAL", "s", "0")))
        self.assertIsNone(self.table.get("time").firstKey(b("TIME")))
        self.assertEqual(self.table.get("mset").keys(b("MSET", "a", "1", "b",
                                                       "2")), [b"a", b"b"])

    def test_keySpecForms(self):
        """
        Keyword searches run forwards from a positive start and backwards
        from a negative one; a C{limit} takes a fraction of the rest.
        """
        forward = KeySpec(["keyword", "KEYS", 2], ["range", -1, 1, 0])
        self.assertEqual(forward.indexes(b("c", "x", "KEYS", "a", "b")),
                         [3, 4])
        self.assertEqual(forward.indexes(b("c", "keys", "KEYS", "a")), [3])
        self.assertEqual(forward.indexes(b("c", "x", "y", "KEYS")), [])
        backward = KeySpec(["keyword", "KEYS", -2], ["range", -1, 1, 0])
        self.assertEqual(backward.indexes(b("c", "KEYS", "x", "KEYS", "a")),
                         [4])
        self.assertEqual(backward.indexes(b("c", "x", "y")), [])
        half = KeySpec(["index", 1], ["range", -1, 1, 2])
        self.assertEqual(half.indexes(b("c", "a", "b", "1", "2")), [1, 2])
        third = KeySpec(["index", 1], ["range", -1, 1, 3])
        self.assertEqual(third.indexes(b("c", "a", "b", "1", "2", "x", "y")),
                         [1, 2])
        stepped = KeySpec(["index", 1], ["range", -1, 2, 0])
        self.assertEqual(stepped.indexes(b("c", "a", "1", "b", "2")), [1, 3])
        fromEnd = KeySpec(["index", 1], ["range", -2, 1, 0])
        self.assertEqual(fromEnd.indexes(b("c", "a", "b", "0")), [1, 2])
        # A step above 1 takes numkeys keys (Redis 7.0 would take
        # numkeys arguments; none of its own commands has such a spec).
        keynum = KeySpec(["index", 2], ["keynum", 0, 1, 2])
        self.assertEqual(keynum.indexes(b("c", "x", "2", "a", "1", "b", "2")),
                         [3, 5])
        unknown = KeySpec(["unknown"], ["unknown"])
        self.assertFalse(unknown.isUsable)
        self.assertEqual(unknown.indexes(b("c", "a")), [])
        self.assertEqual(KeySpec.fromJSON(forward.toJSON()), forward)


class GetKeysTests(RedisServerMixin, SynchronousTestCase):
    """
    L{CommandSpec.keyIndexes} agrees with the server's C{COMMAND GETKEYS}.
    """

    def compare(self, samples):
        table = CommandTable.default()
        path = self.startRedis()
        # COMMAND GETKEYS wants at least one argument after the name.
        for args in [a for a in samples if len(a) < 2]:
            self.assertEqual(table.lookup(args).keyIndexes(args), [], args)
        samples = [a for a in samples if len(a) >= 2]
        requests = [[b"COMMAND", b"GETKEYS"] + args for args in samples]
        replies = self.callParsed(path, requests)
        invalid = []
        for args, reply in zip(samples, replies):
            spec = table.lookup(args)
            indexes = spec.keyIndexes(args)
            if isinstance(reply, hiredis.ReplyError):
                if "Invalid arguments" in str(reply):
                    # Redis gives up when a spec runs past the end (PFMERGE
                    # with one key); rmux keeps the keys that are there.
                    invalid.append(args)
                    self.assertTrue(set(indexes) <= set(range(1, len(args))))
                    continue
                self.assertIn("no key arguments", str(reply), args)
                reply = []
            self.assertEqual([args[i] for i in indexes], reply, args)
        return invalid

    def test_movable(self):
        """
        The hand-written sample of commands whose keys move.
        """
        self.assertEqual(self.compare([b(*words) for words, _ in MOVABLE]),
                         [])

    def test_everyCommand(self):
        """
        Every command and subcommand with fixed key positions, at its
        minimum argument count and with two more arguments.
        """
        samples = []
        newer = {entry["name"] for entry in NEWER_COMMANDS}
        for spec in CommandTable.default():
            if spec.subcommands is not None or "movablekeys" in spec.flags:
                continue
            if spec.name in newer:
                # Unknown to the redis-server this test runs.
                continue
            prefix = spec.name.split("|")
            counts = [abs(spec.arity)]
            if spec.arity < 0:
                counts.append(abs(spec.arity) + 2)
            for count in counts:
                filler = ["a%d" % (i,) for i in range(count - len(prefix))]
                samples.append(b(*(prefix + filler)))
        self.assertGreater(len(samples), 400)
        invalid = self.compare(samples)
        self.assertEqual(invalid, [[b"pfmerge", b"a0"]])


class PolicyTests(SynchronousTestCase):
    """
    The classification of representative commands.
    """

    def setUp(self):
        self.table = CommandTable.default()

    def assertPolicy(self, policy, names):
        for name in names:
            self.assertEqual(self.table.get(name).policy, policy, name)

    def test_local(self):
        self.assertPolicy(LOCAL, [
            "ping", "echo", "quit", "select", "info", "hello", "auth",
            "client|setname", "client|getname", "client|id", "client|info",
            "client|list", "client|kill", "client|unblock", "client|getredir",
            "acl|whoami", "config|set", "acl|setuser"])

    def test_forward(self):
        self.assertPolicy(FORWARD, [
            "client|help", "config|get", "shutdown", "debug",
            "replicaof", "save", "bgsave", "failover", "module|load",
            "cluster|info", "migrate", "swapdb", "latency|doctor", "slowlog|get",
            "memory|stats", "client|pause", "client|unpause", "lastsave",
            "restore-asking", "pfselftest",
            "get", "set", "command", "command|info", "command|docs",
            "command|getkeys", "lolwut", "time", "sort", "keys", "flushdb",
            "flushall", "restore", "move", "role", "publish", "spublish",
            "pubsub|channels", "script|load", "function|load", "eval",
            "memory|usage", "object|encoding",
            "client|trackinginfo", "scan", "dbsize",
            "acl|cat"])

    def test_refused(self):
        self.assertPolicy(REFUSED, ["sync", "psync", "replconf", "script|debug"])

    def test_stateful(self):
        self.assertPolicy(STATEFUL, [
            "multi", "exec", "discard", "watch", "unwatch", "reset",
            "monitor", "client|reply", "client|tracking", "client|caching",
            "client|no-evict", "client|no-touch", "readonly", "readwrite"])

    def test_blocking(self):
        self.assertPolicy(BLOCKING, [
            "blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin",
            "bzpopmax", "bzmpop", "wait", "xread", "xreadgroup"])

    def test_pubsub(self):
        self.assertPolicy(PUBSUB, [
            "subscribe", "psubscribe", "unsubscribe", "punsubscribe",
            "ssubscribe", "sunsubscribe"])

    def test_reasons(self):
        """
        Refusals say what to do instead.
        """
        self.assertEqual(
            self.table.get("sync").reason,
            "SYNC turns the connection into a replication stream; replicate "
            "from the Redis server itself")
        self.assertIn("cluster", self.table.get("cluster|nodes").reason)
        self.assertIn("run it directly", self.table.get("shutdown").reason)

    def test_blockingOption(self):
        """
        XREAD and XREADGROUP are BLOCKING but block only with a BLOCK
        option, found by parsing their options rather than by looking for
        the word.
        """
        xread = self.table.get("xread")
        xreadgroup = self.table.get("xreadgroup")
        cases = [
            (xread, ["XREAD", "STREAMS", "k", "0"], False),
            (xread, ["XREAD", "COUNT", "5", "STREAMS", "block", "0"], False),
            (xread, ["xread", "block", "0", "STREAMS", "k", "0"], True),
            (xread, ["XREAD", "COUNT", "1", "BLOCK", "10", "STREAMS", "k",
                     "0"], True),
            (xreadgroup, ["XREADGROUP", "GROUP", "block", "block", "STREAMS",
                          "k", ">"], False),
            (xreadgroup, ["XREADGROUP", "GROUP", "g", "c", "NOACK", "BLOCK",
                          "0", "STREAMS", "k", ">"], True),
        ]
        for spec, words, blocks in cases:
            self.assertEqual(spec.isBlocking(b(*words)), blocks, words)
            self.assertEqual(spec.policyFor(b(*words)),
                             BLOCKING if blocks else FORWARD, words)
        blpop = self.table.get("blpop")
        self.assertTrue(blpop.isBlocking(b("BLPOP", "k", "0")))
        self.assertEqual(blpop.policyFor(b("BLPOP", "k", "0")), BLOCKING)
        get = self.table.get("get")
        self.assertFalse(get.isBlocking(b("GET", "k")))
        self.assertEqual(get.policyFor(b("GET", "k")), FORWARD)

    def test_flushNeedsOption(self):
        """
        FLUSHDB and FLUSHALL name the switch that must allow them.
        """
        for name in ["flushdb", "flushall"]:
            spec = self.table.get(name)
            self.assertEqual(spec.requiresOption, commands.OPTION_ALLOW_FLUSH)
            self.assertEqual(spec.routing, KEYLESS_ALL)
        self.assertIsNone(self.table.get("get").requiresOption)


class RoutingTests(SynchronousTestCase):
    """
    Routing decisions for several servers.
    """

    def setUp(self):
        self.table = CommandTable.default()

    def routing(self, name):
        spec = self.table.get(name)
        return spec.routing, spec.merge

    def test_keyed(self):
        for name in ["get", "set", "eval", "zunionstore", "xread", "sort",
                     "rename", "msetnx", "pfcount", "object|encoding",
                     "memory|usage", "xgroup|create", "watch", "blpop",
                     "migrate"]:
            self.assertEqual(self.routing(name), (KEYED, None), name)

    def test_split(self):
        self.assertEqual(self.routing("mget"),
                         (SPLIT, commands.MERGE_IN_ORDER))
        self.assertEqual(self.routing("mset"), (SPLIT, commands.MERGE_ALL_OK))
        self.assertEqual(self.table.get("mset").keyStep, 2)
        for name in ["del", "unlink", "exists", "touch"]:
            self.assertEqual(self.routing(name), (SPLIT, commands.MERGE_SUM))

    def test_keylessAll(self):
        for name, merge in [("dbsize", commands.MERGE_SUM),
                            ("keys", commands.MERGE_CONCAT),
                            ("script|load", commands.MERGE_SAME),
                            ("script|exists", commands.MERGE_AND),
                            ("script|flush", commands.MERGE_ALL_OK),
                            ("function|load", commands.MERGE_SAME),
                            ("function|delete", commands.MERGE_ALL_OK),
                            ("pubsub|channels", commands.MERGE_UNION),
                            ("pubsub|numsub", commands.MERGE_PAIRS_SUM),
                            ("pubsub|numpat", commands.MERGE_MAX),
                            ("config|set", commands.MERGE_ALL_OK),
                            ("slowlog|len", commands.MERGE_SUM),
                            ("lastsave", commands.MERGE_MIN),
                            ("randomkey", commands.MERGE_ANY_NON_NIL),
                            ("flushdb", commands.MERGE_ALL_OK)]:
            self.assertEqual(self.routing(name), (KEYLESS_ALL, merge), name)

    def test_publishPlacedByChannel(self):
        """
        PUBLISH is routed like a keyed command (the router places it by
        its channel), so a channel lives on one server.
        """
        for name in ("publish", "spublish"):
            self.assertEqual(self.routing(name), (KEYED, None), name)

    def test_keylessAny(self):
        for name in ["time", "lolwut", "command", "command|count",
                     "command|getkeys", "echo", "ping", "role", "acl|cat"]:
            self.assertEqual(self.routing(name), (KEYLESS_ANY, None), name)

    def test_keylessRefused(self):
        for name in ["function|stats", "shutdown", "cluster|info", "replicaof"]:
            spec = self.table.get(name)
            self.assertEqual(spec.routing, KEYLESS_REFUSED, name)
            self.assertTrue(spec.reason, name)


class ErrorTextTests(RedisServerMixin, SynchronousTestCase):
    """
    The error replies are byte for byte the server's.
    """

    def test_unknownCommand(self):
        """
        Unknown commands, including Redis's truncation of long names and
        argument lists, NUL bytes and newlines.
        """
        samples = [
            [b"foo"],
            [b"foo", b"a", b"b"],
            [b""],
            [b"foo" * 60, b"x" * 200, b"y"],
            [b"foo", b"a" * 100, b"b" * 100, b"c"],
            [b"foo", b"a" * 126, b"b"],
            [b"foo", b"a" * 125, b"bcd", b"e"],
            [b"foo", b"a" * 124, b"bcd", b"e"],
            [b"foo"] + [b"a"] * 100,
            [b"f\x00oo", b"a\x00b", b"c"],
            [b"fo\r\no", b"a\nb", b"c\rd"],
        ]
        expected = [unknownCommandError(args) for args in samples]
        table = CommandTable.default()
        for args in samples:
            self.assertIsNone(table.lookup(args))
            self.assertEqual(table.unknownError(args),
                             unknownCommandError(args))
        self.assertEqual(self.callRaw(self.startRedis(), *samples), expected)

    def test_wrongArity(self):
        """
        Wrong argument counts name the command, or C{container|sub}.
        """
        table = CommandTable.default()
        samples = [[b"GET"], [b"GeT", b"a", b"b"], [b"CLIENT", b"SETNAME"],
                   [b"config"], [b"CLIENT"], [b"XINFO", b"STREAM"],
                   [b"set", b"k"],
                   [b"object", b"encoding"]]
        expected = []
        for args in samples:
            spec = table.lookup(args)
            self.assertFalse(spec.checkArity(len(args)), args)
            expected.append(wrongArityError(spec.name))
        self.assertEqual(wrongArityError("get"),
                         b"-ERR wrong number of arguments for 'get' command"
                         b"\r\n")
        self.assertEqual(self.callRaw(self.startRedis(), *samples), expected)

    def test_unknownSubcommand(self):
        """
        Unknown subcommands suggest the container's HELP.
        """
        table = CommandTable.default()
        samples = [[b"cLiEnt", b"fOo"], [b"COMMAND", b"foo", b"x"],
                   [b"config", b"x" * 200], [b"object", b"x\x00y"],
                   [b"client", b"a\r\nb"], [b"XGROUP", b""]]
        expected = []
        for args in samples:
            self.assertIsNone(table.lookup(args))
            expected.append(table.unknownError(args))
            self.assertEqual(expected[-1],
                             unknownSubcommandError(args[0], args[1]))
        self.assertEqual(unknownSubcommandError("client", "foo"),
                         b"-ERR unknown subcommand 'foo'. Try CLIENT HELP."
                         b"\r\n")
        self.assertEqual(self.callRaw(self.startRedis(), *samples), expected)


class ExtendTests(SynchronousTestCase):
    """
    L{CommandTable.extend} adds module and newer commands.
    """

    def setUp(self):
        self.table = CommandTable.load()

    def test_moduleCommand(self):
        """
        A command described by first/last/step gets key positions, a
        policy from its flags and a routing.
        """
        self.table.extend([
            {"name": "JSON.GET", "arity": -2, "firstKey": 1, "lastKey": 1,
             "step": 1, "flags": ["readonly"]},
            {"name": "json.mget", "arity": -3, "firstKey": 1, "lastKey": -2,
             "step": 1, "flags": ["readonly"]},
        ])
        spec = self.table.lookup(b("json.get", "doc", "$"))
        self.assertEqual(spec.name, "json.get")
        self.assertIs(self.table.lookup(b("JSON.GET", "doc")), spec)
        self.assertEqual(spec.policy, FORWARD)
        self.assertEqual(spec.routing, KEYED)
        self.assertEqual(spec.firstKey(b("JSON.GET", "doc", "$")), b"doc")
        self.assertTrue(spec.checkArity(2))
        mget = self.table.get("json.mget")
        self.assertEqual(mget.keyIndexes(b("JSON.MGET", "a", "b", "$")),
                         [1, 2])
        self.assertNotIn("json.get", CommandTable.default())

    def test_keySpecsAndOverrides(self):
        """
        Entries may carry key specs and rmux's own decisions.
        """
        self.table.extend([
            {"name": "my.multi", "arity": -3,
             "keySpecs": [{"begin": ["index", 1],
                           "find": ["keynum", 0, 1, 1]}],
             "policy": "forward"},
            {"name": "my.admin", "arity": 1, "flags": ["admin"]},
            {"name": "my.block", "arity": 2, "firstKey": 1, "lastKey": 1,
             "step": 1, "policy": "blocking"},
            {"name": "my.stats", "arity": 1, "routing": "keyless-all",
             "merge": "sum"},
        ])
        spec = self.table.get("my.multi")
        self.assertEqual(spec.keyIndexes(b("my.multi", "2", "a", "b", "c")),
                         [2, 3])
        admin = self.table.get("my.admin")
        self.assertEqual((admin.policy, admin.routing), (FORWARD, KEYLESS_ANY))
        self.assertEqual(self.table.get("my.block").policy, BLOCKING)
        stats = self.table.get("my.stats")
        self.assertEqual((stats.routing, stats.merge),
                         (KEYLESS_ALL, commands.MERGE_SUM))

    def test_subcommands(self):
        """
        C{container|sub} names add subcommands to a container, making the
        container if needed; a known name is replaced.
        """
        self.table.extend([
            {"name": "client|no-touch", "arity": 3,
             "categories": ["@connection"]},
            {"name": "client|setname", "arity": -3},
            {"name": "mod.box|open", "arity": 3, "firstKey": 2,
             "lastKey": 2, "step": 1},
        ])
        noTouch = self.table.lookup(b("CLIENT", "NO-TOUCH", "ON"))
        self.assertEqual(noTouch.name, "client|no-touch")
        self.assertEqual(noTouch.policy, STATEFUL)
        setname = self.table.lookup(b("client", "SETNAME", "a", "b"))
        self.assertTrue(setname.checkArity(4))
        self.assertEqual(setname.policy, LOCAL)
        self.assertIs(self.table.get("client|setname"), setname)
        self.assertEqual(
            self.table.lookup(b("client", "kill", "x", "y")).name,
            "client|kill")
        box = self.table.lookup(b("MOD.BOX", "open", "k"))
        self.assertEqual(box.firstKey(b("MOD.BOX", "open", "k")), b"k")
        self.assertIsNone(self.table.lookup(b("mod.box", "close")))
        self.assertEqual(self.table.lookup(b("mod.box")).name, "mod.box")

    def test_replaceContainerKeepsSubcommands(self):
        """
        Replacing a container keeps its subcommands.
        """
        self.table.extend([{"name": "config", "arity": -2}])
        self.assertEqual(self.table.lookup(b("CONFIG", "GET", "x")).name,
                         "config|get")

    def test_invalid(self):
        """
        Malformed entries raise L{ValueError} and add nothing.
        """
        for bad in [{"arity": 2}, {"name": "x"},
                    {"name": "x", "arity": 1, "policy": "sometimes"},
                    {"name": "x", "arity": 1, "routing": "somewhere"},
                    {"name": "x", "arity": 1, "merge": "mix"},
                    {"name": "x", "arity": 1, "routing": "keyless-all"},
                    {"name": "x", "arity": 1, "merge": "sum"}]:
            self.assertRaises(ValueError, self.table.extend,
                              [{"name": "ok.cmd", "arity": 1}, bad])
        self.assertNotIn("ok.cmd", self.table)


class GeneratorTests(RedisServerMixin, SynchronousTestCase):
    """
    C{tools/gen_commands.py} reproduces the committed table.
    """

    def loadTool(self):
        spec = importlib.util.spec_from_file_location("gen_commands", TOOLS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def test_reproducible(self):
        """
        Reading the running server, over RESP2 or RESP3, gives exactly the
        committed file when the server is the version it was made from.
        """
        tool = self.loadTool()
        path = self.startRedis()
        client = tool.MiniClient(path)
        self.addCleanup(client.close)
        table = tool.readTable(client)
        committed = resources.files("rmux").joinpath(
            "commands.json").read_text()
        if table["redisVersion"] != json.loads(committed)["redisVersion"]:
            self.skipTest("redis-server is %s" % (table["redisVersion"],))
        self.assertEqual(tool.render(table), committed)
        client.call("HELLO", "3")
        self.assertEqual(tool.render(tool.readTable(client)), committed)

    def test_normaliseKeySpec(self):
        """
        Key specs are stored in a compact form, from RESP2 or RESP3.
        """
        tool = self.loadTool()
        raw = [b"flags", [b"RO", b"access"],
               b"begin_search", [b"type", b"keyword", b"spec",
                                 [b"keyword", b"STREAMS", b"startfrom", 1]],
               b"find_keys", [b"type", b"range", b"spec",
                              [b"lastkey", -1, b"keystep", 1, b"limit", 2]]]
        expected = {"begin": ["keyword", "STREAMS", 1],
                    "find": ["range", -1, 1, 2], "flags": ["RO", "access"]}
        self.assertEqual(tool.normaliseKeySpec(raw), expected)
        resp3 = {b"flags": {b"access", b"RO"},
                 b"begin_search": {b"type": b"keyword",
                                   b"spec": {b"keyword": b"STREAMS",
                                             b"startfrom": 1}},
                 b"find_keys": {b"type": b"range",
                                b"spec": {b"lastkey": -1, b"keystep": 1,
                                          b"limit": 2}}}
        self.assertEqual(tool.normaliseKeySpec(resp3), expected)
