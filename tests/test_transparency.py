"""
rmux answering like one Redis server, end to end: three real redis-servers
behind one rmux listener, and the tools a user points at Redis (redis-cli's
--scan, --bigkeys and --stat, redis-py's scan_iter, monitor and client
commands, raw RESP3 for client tracking).
"""

import os
import signal
import socket
import subprocess

import hiredis
import redis
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest

from rmux.hashing import RmuxRing
from tests.test_integration import REDIS_CLI, rawExchange
from tests.test_multiplex import MultiplexTestCase


def keysOnEveryServer(count, servers=3):
    """
    C{count} key names, and how many of them each server holds.
    """
    ring = RmuxRing(servers)
    keys = ["t:%d" % i for i in range(count)]
    spread = [0] * servers
    for key in keys:
        spread[ring.backendOf(key.encode())] += 1
    return keys, spread


def redisCli(path, *args, timeout=30):
    if REDIS_CLI is None:
        raise SkipTest("redis-cli is not installed")
    done = subprocess.run([REDIS_CLI, "-s", path] + list(args), capture_output=True,
                          timeout=timeout)
    if done.returncode:
        raise AssertionError("redis-cli %s: %r" % (" ".join(args), done.stdout + done.stderr))
    return done.stdout.decode()


class Connection:
    """
    A raw client connection that reads whole replies (hiredis), for what
    redis-py does not show: pushes, a MONITOR feed, a killed connection.
    """

    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = hiredis.Reader(notEnoughData=Ellipsis)

    def send(self, *commands):
        self.sock.sendall(b"".join(c + b"\r\n" for c in commands))

    def read(self):
        while True:
            reply = self.reader.gets()
            if reply is not Ellipsis:
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.reader.feed(data)

    def call(self, command):
        self.send(command)
        return self.read()

    def close(self):
        self.sock.close()


class TransparencyTestCase(MultiplexTestCase):
    servers = 3

    def connect(self):
        connection = Connection(self.path)
        self.addCleanup(connection.close)
        return connection


class ScanTests(TransparencyTestCase):
    @inlineCallbacks
    def test_redisCliScanSeesEveryKeyOnce(self):
        """
        C{redis-cli --scan} through rmux lists every key of every server,
        each once, as SCAN guarantees for one server.
        """
        keys, spread = keysOnEveryServer(300)
        self.assertTrue(all(spread), spread)
        client = self.client()
        yield self.inThread(client.mset, {k: "v" for k in keys})
        out = yield self.inThread(redisCli, self.path, "--scan", "--pattern", "t:*")
        listed = out.split()
        self.assertEqual(len(listed), 300)
        self.assertEqual(sorted(listed), sorted(keys))

    @inlineCallbacks
    def test_matchAndType(self):
        """
        MATCH and TYPE apply on every server.
        """
        client = self.client()

        def run():
            for i in range(60):
                client.hset("h:%d" % i, "f", "v")
                client.set("s:%d" % i, "v")
            return (sorted(client.scan_iter("h:*", count=5)),
                    sorted(client.scan_iter(_type="string", count=1000)))

        hashes, strings = yield self.inThread(run)
        self.assertEqual(hashes, sorted(b"h:%d" % i for i in range(60)))
        self.assertEqual(strings, sorted(b"s:%d" % i for i in range(60)))

    @inlineCallbacks
    def test_badCursors(self):
        """
        A cursor that is not a number, or names no server, is Redis's
        C{invalid cursor}; the connection goes on.
        """
        got = yield self.inThread(
            rawExchange, self.path,
            b"SCAN abc\r\nSCAN -1\r\nSCAN %d\r\nSCAN 0 COUNT 1000\r\nQUIT\r\n" % (3 << 55))
        self.assertEqual(
            got,
            b"-ERR invalid cursor\r\n-ERR invalid cursor\r\n-ERR invalid cursor\r\n"
            b"*2\r\n$17\r\n36028797018963968\r\n*0\r\n+OK\r\n",
        )

    @inlineCallbacks
    def test_bigkeys(self):
        """
        C{redis-cli --bigkeys} samples every key through rmux.
        """
        keys, _ = keysOnEveryServer(90)
        client = self.client()
        yield self.inThread(client.mset, {k: "v" * (i + 1) for i, k in enumerate(keys)})
        yield self.inThread(client.rpush, "biglist", *range(50))
        out = yield self.inThread(redisCli, self.path, "--bigkeys")
        self.assertIn("Sampled 91 keys in the keyspace!", out)
        self.assertIn("Biggest string found '\"t:89\"' has 90 bytes", out)
        self.assertIn("Biggest   list found '\"biglist\"' has 50 items", out)

    @inlineCallbacks
    def test_stat(self):
        """
        C{redis-cli --stat} reads INFO through rmux: its keys column is the
        keys of every server.
        """
        keys, _ = keysOnEveryServer(120)
        client = self.client()
        yield self.inThread(client.mset, {k: "v" for k in keys})

        def firstStatLine():
            if REDIS_CLI is None:
                raise SkipTest("redis-cli is not installed")
            process = subprocess.Popen([REDIS_CLI, "-s", self.path, "--stat", "-i", "0.1"],
                                       stdout=subprocess.PIPE)
            try:
                process.stdout.readline()
                header = process.stdout.readline()
                return header, process.stdout.readline()
            finally:
                os.kill(process.pid, signal.SIGTERM)
                process.wait()
                process.stdout.close()

        header, line = yield self.inThread(firstStatLine)
        self.assertIn(b"keys", header)
        self.assertEqual(line.split()[0], b"120")


class ServerWideTests(TransparencyTestCase):
    @inlineCallbacks
    def test_configSetReachesEveryServer(self):
        client = self.client()
        self.assertTrue((yield self.inThread(client.config_set, "maxmemory-policy", "allkeys-lru")))
        for i in range(self.servers):
            got = yield self.inThread(self.direct(i).config_get, "maxmemory-policy")
            self.assertEqual(got, {"maxmemory-policy": "allkeys-lru"})
        got = yield self.inThread(client.config_get, "maxmemory-policy")
        self.assertEqual(got, {"maxmemory-policy": "allkeys-lru"})

    @inlineCallbacks
    def test_infoAddsUpKeyspace(self):
        keys, spread = keysOnEveryServer(99)
        client = self.client()
        yield self.inThread(client.mset, {k: "v" for k in keys})
        keyspace = yield self.inThread(client.info, "keyspace")
        self.assertEqual(keyspace["db0"]["keys"], 99)
        sizes = yield self.inThread(lambda: [self.direct(i).dbsize() for i in range(3)])
        self.assertEqual(sizes, spread)
        everything = yield self.inThread(client.info)
        self.assertEqual(everything["total_endpoints"], 3)
        self.assertEqual(everything["active_endpoints"], 3)

    @inlineCallbacks
    def test_publishCountsEverySubscriber(self):
        """
        PUBLISH through rmux counts the subscribers of rmux's clients and the
        server's own, as Redis counts its clients.
        """
        channel = "news"
        home = RmuxRing(3).backendOf(channel.encode())
        subscribers = [self.client().pubsub(), self.client().pubsub(),
                       self.direct(home).pubsub()]

        def run():
            for pubsub in subscribers:
                pubsub.subscribe(channel)
                pubsub.get_message(timeout=2)
            counted = self.client().publish(channel, "hello")
            received = [p.get_message(timeout=2) for p in subscribers]
            for pubsub in subscribers:
                pubsub.close()
            return counted, [m and m["data"] for m in received]

        counted, received = yield self.inThread(run)
        self.assertEqual(received, [b"hello"] * 3)
        self.assertEqual(counted, 3)

    @inlineCallbacks
    def test_randomKeyExists(self):
        client = self.client()
        self.assertIsNone((yield self.inThread(client.randomkey)))
        yield self.inThread(client.set, "only", "1")
        for _ in range(5):
            self.assertEqual((yield self.inThread(client.randomkey)), b"only")

    @inlineCallbacks
    def test_scriptFlushForgotten(self):
        """
        After SCRIPT FLUSH, EVALSHA of a script loaded before is NOSCRIPT,
        as in Redis: rmux does not load it again behind the client's back.
        """
        client = self.client()
        sha = yield self.inThread(client.script_load, "return 7")
        self.assertEqual((yield self.inThread(client.evalsha, sha, 0)), 7)
        yield self.inThread(client.script_flush)
        error = yield self.assertFailure(self.inThread(client.evalsha, sha, 0),
                                         redis.exceptions.NoScriptError)
        self.assertIn("No matching script", str(error))


class OwnConnectionTests(TransparencyTestCase):
    @inlineCallbacks
    def test_monitorSeesOtherClients(self):
        """
        MONITOR through rmux shows the commands every server runs, other
        clients' included, in Redis's format.
        """
        ring = RmuxRing(3)
        keys = {ring.backendOf(b"m%d" % i): b"m%d" % i for i in range(50)}
        self.assertEqual(len(keys), 3)

        def run():
            watcher = self.connect()
            self.assertEqual(watcher.call(b"MONITOR"), b"OK")
            client = self.client()
            for key in keys.values():
                client.set(key, "v")
            seen = set()
            while len(seen) < 3:
                line = watcher.read()
                for key in keys.values():
                    if b'"SET" "' + key + b'" "v"' in line:
                        seen.add(key)
            return line

        line = yield self.inThread(run)
        self.assertRegex(line, rb'^\d+\.\d+ \[0 ')

    @inlineCallbacks
    def test_monitorSeesCommandsRmuxAnswers(self):
        """
        The commands rmux answers itself, which no server sees, are shown
        to MONITOR in Redis's format, in order, with AUTH's secrets
        redacted and admin commands hidden, as Redis does.
        """
        def run():
            watcher = self.connect()
            self.assertEqual(watcher.call(b"MONITOR"), b"OK")
            other = self.connect()
            for command in (b'PING', b'ECHO "a\\"b\\n"', b"CLIENT LIST", b"CLIENT SETNAME x",
                            b"SELECT 2", b"HELLO 2 AUTH default nopass"):
                other.call(command)
            other.call(b"GET end")
            lines = []
            while b'"GET" "end"' not in (lines[-1] if lines else b""):
                lines.append(watcher.read())
            return lines

        lines = yield self.inThread(run)
        mine = b" unix:" + self.path.encode() + b"] "
        shown = [line.split(b"] ", 1)[1] for line in lines if mine in line]
        self.assertEqual(shown, [
            b'"PING"', b'"ECHO" "a\\"b\\n"', b'"CLIENT" "SETNAME" "x"', b'"SELECT" "2"',
            b'"HELLO" "2" "AUTH" "(redacted)" "(redacted)"',
        ])
        self.assertRegex(lines[0], rb"^\d+\.\d{6} \[0 unix:")
        self.assertIn(b"[2 unix:" + self.path.encode(), [l for l in lines if b"HELLO" in l][0])

    @inlineCallbacks
    def test_trackingInvalidates(self):
        """
        Client-side caching: a RESP3 client tracking a key is told when
        another client changes it, on whichever server it lives.
        """
        def run():
            reader = self.connect()
            reader.call(b"HELLO 3")
            self.assertEqual(reader.call(b"CLIENT TRACKING ON"), b"OK")
            got = [reader.call(b"GET tracked:%d" % i) for i in range(6)]
            self.client().set("tracked:4", "new")
            return got, reader.read()

        got, push = yield self.inThread(run)
        self.assertEqual(got, [None] * 6)
        self.assertEqual(push, [b"invalidate", [b"tracked:4"]])

    @inlineCallbacks
    def test_trackingRedirectResp2(self):
        """
        RESP2 client-side caching: a client subscribed to
        C{__redis__:invalidate} gets the invalidations of another rmux
        client that tracks with C{REDIRECT} to its id, whichever server
        the keys live on.
        """
        keys = {RmuxRing(3).backendOf(b"r%d" % i): b"r%d" % i for i in range(50)}
        self.assertEqual(len(keys), 3)

        def run():
            listener = self.connect()
            listenerId = listener.call(b"CLIENT ID")
            self.assertEqual(listener.call(b"SUBSCRIBE __redis__:invalidate"),
                             [b"subscribe", b"__redis__:invalidate", 1])
            reader = self.connect()
            self.assertEqual(reader.call(b"CLIENT TRACKING ON REDIRECT %d" % listenerId), b"OK")
            self.assertEqual(reader.call(b"CLIENT GETREDIR"), listenerId)
            for key in keys.values():
                reader.call(b"GET " + key)
            writer = self.client()
            seen = []
            for key in sorted(keys.values()):
                writer.set(key, "new")
                seen.append(listener.read())
            return seen

        seen = yield self.inThread(run)
        self.assertEqual(seen, [[b"message", b"__redis__:invalidate", [key]]
                                for key in sorted(keys.values())])

    @inlineCallbacks
    def test_trackingBroadcastAndOptIn(self):
        """
        BCAST with a PREFIX is told of every matching key written, read or
        not; OPTIN tracks only the reads after CLIENT CACHING YES.
        """
        def run():
            broadcast = self.connect()
            broadcast.call(b"HELLO 3")
            self.assertEqual(broadcast.call(b"CLIENT TRACKING ON BCAST PREFIX user:"), b"OK")
            optin = self.connect()
            optin.call(b"HELLO 3")
            self.assertEqual(optin.call(b"CLIENT TRACKING ON OPTIN"), b"OK")
            optin.call(b"GET plain")
            self.assertEqual(optin.call(b"CLIENT CACHING YES"), b"OK")
            optin.call(b"GET cached")
            writer = self.client()
            writer.set("other", "x")
            writer.set("user:1", "x")
            writer.set("plain", "x")
            writer.set("cached", "x")
            return broadcast.read(), optin.read()

        toBroadcast, toOptin = yield self.inThread(run)
        self.assertEqual(toBroadcast, [b"invalidate", [b"user:1"]])
        self.assertEqual(toOptin, [b"invalidate", [b"cached"]])

    @inlineCallbacks
    def test_cachingErrors(self):
        """
        CLIENT CACHING is checked as Redis checks it.
        """
        got = yield self.inThread(
            rawExchange, self.path,
            b"CLIENT CACHING YES\r\nCLIENT TRACKING ON\r\nCLIENT CACHING YES\r\n"
            b"CLIENT CACHING NO\r\nCLIENT TRACKING OFF\r\nCLIENT TRACKING ON OPTOUT\r\n"
            b"CLIENT CACHING MAYBE\r\nCLIENT CACHING NO\r\nQUIT\r\n")
        self.assertEqual(got.split(b"\r\n"), [
            b"-ERR CLIENT CACHING can be called only when the client is in tracking mode "
            b"with OPTIN or OPTOUT mode enabled",
            b"+OK",
            b"-ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            b"-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            b"+OK", b"+OK", b"-ERR syntax error", b"+OK", b"+OK", b""])

    @inlineCallbacks
    def test_clientKill(self):
        """
        CLIENT LIST shows rmux's clients; CLIENT KILL ID closes one.
        """
        def run():
            victim = self.connect()
            victim.call(b"CLIENT SETNAME victim")
            victimId = victim.call(b"CLIENT ID")
            killer = self.connect()
            listing = killer.call(b"CLIENT LIST")
            killed = killer.call(b"CLIENT KILL ID %d" % victimId)
            try:
                victim.call(b"PING")
            except (EOFError, ConnectionError) as e:
                closed = e
            else:
                closed = None
            return victimId, listing, killed, closed

        victimId, listing, killed, closed = yield self.inThread(run)
        self.assertIn(b"id=%d " % victimId, listing)
        self.assertIn(b" name=victim ", listing)
        self.assertEqual(killed, 1)
        self.assertIsNotNone(closed)


class DenyTests(TransparencyTestCase):
    flags = {"denyCommands": "shutdown client|kill @dangerous"}

    @inlineCallbacks
    def test_deniedAsRedisSays(self):
        """
        A denied command gets Redis's NOPERM text, by name, subcommand or
        ACL category; others run; the servers are untouched.
        """
        got = yield self.inThread(
            rawExchange, self.path,
            b"SHUTDOWN NOSAVE\r\nCLIENT KILL ID 1\r\nFLUSHALL\r\nKEYS *\r\n"
            b"CLIENT ID\r\nSET a 1\r\nQUIT\r\n")
        lines = got.split(b"\r\n")
        self.assertEqual(lines[:4], [
            b"-NOPERM this user has no permissions to run the 'shutdown' command",
            b"-NOPERM this user has no permissions to run the 'client|kill' command",
            b"-NOPERM this user has no permissions to run the 'flushall' command",
            b"-NOPERM this user has no permissions to run the 'keys' command",
        ])
        self.assertTrue(lines[4].startswith(b":"), lines[4])
        self.assertEqual(lines[5:], [b"+OK", b"+OK", b""])
        for i in range(self.servers):
            self.assertTrue((yield self.inThread(self.direct(i).ping)))


class DefaultDenyTests(TransparencyTestCase):
    @inlineCallbacks
    def test_shutdownAndReplicaofDenied(self):
        """
        By default a client cannot stop or demote the servers every host
        shares.
        """
        got = yield self.inThread(
            rawExchange, self.path, b"SHUTDOWN\r\nREPLICAOF 127.0.0.1 1\r\nQUIT\r\n")
        self.assertEqual(
            got,
            b"-NOPERM this user has no permissions to run the 'shutdown' command\r\n"
            b"-NOPERM this user has no permissions to run the 'replicaof' command\r\n+OK\r\n",
        )


class CrossServerTransactionTests(TransparencyTestCase):
    flags = {"crossServerTransactions": "true"}

    @inlineCallbacks
    def test_pipelineOverServers(self):
        """
        A redis-py transaction whose keys live on every server runs, its
        replies in order, each server's part applied.
        """
        keys, _ = keysOnEveryServer(6)
        client = self.client()

        def run():
            pipe = client.pipeline(transaction=True)
            for key in keys:
                pipe.set(key, key)
                pipe.incr(key + ":n")
            for key in keys:
                pipe.get(key)
            return pipe.execute()

        got = yield self.inThread(run)
        self.assertEqual(got, [True, 1] * 6 + [k.encode() for k in keys])
        ring = RmuxRing(3)
        for key in keys:
            direct = self.direct(ring.backendOf(key.encode()))
            self.assertEqual((yield self.inThread(direct.get, key)), key.encode())

    @inlineCallbacks
    def test_errorsInPlace(self):
        """
        A command that fails at EXEC fails in its place, the others run, as
        in Redis.
        """
        keys, _ = keysOnEveryServer(3)
        client = self.client()
        yield self.inThread(client.set, keys[0], "text")

        def run():
            pipe = client.pipeline(transaction=True)
            pipe.incr(keys[0])
            pipe.incr(keys[1])
            pipe.incr(keys[2])
            return pipe.execute(raise_on_error=False)

        got = yield self.inThread(run)
        self.assertIsInstance(got[0], redis.exceptions.ResponseError)
        self.assertEqual(got[1:], [1, 1])
