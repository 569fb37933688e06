"""
rmux end to end: real redis-server processes started by the tests, rmux
running in this process on the real reactor, and real clients (redis-py in
threads, txredisapi, redis-cli, raw sockets).
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import redis
from twisted.internet import reactor, threads
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from rmux.config import fromFlags
from rmux.resp import ReplyFramer, RequestParser
from rmux.service import ListenerService
from tests.redisserver import startRedis

REDIS_CLI = shutil.which("redis-cli")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def socketPath(testCase):
    """
    A unix socket path in a fresh temp dir, removed by cleanup (trial's own
    temp dirs make paths too long for a unix socket).
    """
    directory = tempfile.mkdtemp(prefix="rmux-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "rmux.sock")


def startListener(testCase, listener):
    """
    Run the rmux listener C{listener} on the real reactor, stopped by
    cleanup.
    """
    service = ListenerService(listener, reactor)
    service.startService()
    testCase.addCleanup(service.stopService)
    service.path = listener.socket
    return service


def startRmux(testCase, servers, **flags):
    """
    Run an rmux listener on a unix socket in a fresh temp dir, in front of
    C{servers} (reached over their unix sockets), stopped by cleanup.
    """
    values = {
        "socket": socketPath(testCase),
        "unixConnections": " ".join(s.path for s in servers),
    }
    values.update(flags)
    return startListener(testCase, fromFlags(values).listeners[0])


class ThreadedClients:
    """
    A thread pool of our own for blocking clients, big enough for the
    concurrency tests, stopped by cleanup.
    """

    def __init__(self, testCase, size=25):
        self.pool = ThreadPool(size, size, "rmux-test-clients")
        self.pool.start()
        testCase.addCleanup(self.pool.stop)

    def run(self, f, *args, **kwargs):
        return threads.deferToThreadPool(reactor, self.pool, f, *args, **kwargs)


class WriteLoad:
    """
    A redis-py client writing C{fail:N} = N as fast as it can, in a
    thread, until stopped: when each write was sent and acknowledged, and
    each error, for fault tests to judge.
    """

    def __init__(self, client):
        self.client = client
        self.stopped = threading.Event()
        self.sent = {}
        self.acknowledged = {}
        self.errors = []

    def run(self):
        i = 0
        while not self.stopped.is_set():
            self.sent[i] = time.monotonic()
            try:
                self.client.set("fail:%d" % (i,), i)
                self.acknowledged[i] = time.monotonic()
            except Exception as e:
                self.errors.append((time.monotonic(), str(e)))
            i += 1

    def lost(self):
        """
        The acknowledged writes that are not there now (read in a thread).
        """
        pipe = self.client.pipeline(transaction=False)
        for i in self.acknowledged:
            pipe.get("fail:%d" % (i,))
        values = dict(zip(self.acknowledged, pipe.execute()))
        return [i for i, value in values.items() if value != b"%d" % (i,)]


def rawExchange(path, payload, expectClose=False, timeout=5.0, until=None):
    """
    Send raw bytes to a unix socket and read until C{until} bytes have
    arrived (or the peer closes).
    """
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(payload)
        received = b""
        while until is None or len(received) < until:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


class IntegrationTestCase(TestCase):
    timeout = 60

    def setUp(self):
        self.server = startRedis(self, tcp=True)
        self.rmux = startRmux(self, [self.server], poolSize="4")
        self.clients = ThreadedClients(self)

    def redisPy(self, **kwargs):
        client = redis.Redis(unix_socket_path=self.rmux.path, **kwargs)
        self.addCleanup(client.close)
        return client

    def direct(self, db=0):
        client = redis.Redis(unix_socket_path=self.server.path, db=db)
        self.addCleanup(client.close)
        return client

    def inThread(self, f, *args, **kwargs):
        return self.clients.run(f, *args, **kwargs)


class DataTypesTests(IntegrationTestCase):
    """
    Everyday Redis use through rmux gives what the same client gets from
    Redis directly: with redis-py's defaults (RESP3) and with RESP2.
    """

    @staticmethod
    def exercise(client):
        value = os.urandom(1024 * 1024)
        results = [
            client.ping(),
            client.set("s", "v"),
            client.get("s"),
            client.incr("n"),
            client.incrbyfloat("f", 1.5),
            client.rpush("l", "a", "b", "c"),
            client.lrange("l", 0, -1),
            client.hset("h", mapping={"x": "1", "y": "2"}),
            client.hgetall("h"),
            client.sadd("set", "a", "b"),
            client.smembers("set"),
            client.zadd("z", {"a": 1, "b": 2.5}),
            client.zrange("z", 0, -1, withscores=True),
            client.zscore("z", "b"),
            client.expire("s", 100),
            0 < client.ttl("s") <= 100,
            client.set("e", "v", px=50000),
            client.pttl("e") > 0,
            [client.set("scan:%d" % i, i) for i in range(30)],
            sorted(client.scan_iter("scan:*", count=7)),
            client.set("big", value),
            client.get("big") == value,
            client.delete("s", "n"),
            client.exists("s"),
            client.type("l"),
            client.object("encoding", "l"),
            client.hrandfield("h", 5) is not None,
            client.xadd("stream", {"f": "v"}, id="1-1"),
            client.xrange("stream"),
            client.lpos("l", "b"),
            client.getdel("e"),
            client.execute_command("LOLWUT", "VERSION", "5")[:0],
        ]
        client.flushdb()
        return results

    @inlineCallbacks
    def compare(self, **kwargs):
        direct = redis.Redis(unix_socket_path=self.server.path, db=1, **kwargs)
        proxied = self.redisPy(db=2, **kwargs)
        try:
            expected = yield self.inThread(self.exercise, direct)
        finally:
            direct.close()
        got = yield self.inThread(self.exercise, proxied)
        self.assertEqual(got, expected)
        return got

    @inlineCallbacks
    def test_redisPyResp3(self):
        """
        redis-py's RESP3 connection (HELLO 3, CLIENT SETINFO) works, and
        RESP3 replies (maps, sets, doubles) arrive as they would from Redis.
        """
        got = yield self.compare(protocol=3)
        self.assertEqual(got[13], 2.5)

    @inlineCallbacks
    def test_redisPyDefault(self):
        yield self.compare()

    @inlineCallbacks
    def test_redisPyResp2(self):
        yield self.compare(protocol=2)

    @inlineCallbacks
    def test_resp3IsByteExact(self):
        """
        A RESP3 client gets the backend's RESP3 bytes exactly: a map for
        HGETALL and a double for ZSCORE.
        """
        yield self.inThread(self.direct().hset, "h", "f", "v")
        yield self.inThread(self.direct().zadd, "z", {"m": 1.5})
        payload = (
            b"HELLO 3\r\n"
            b"*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n"
            b"*3\r\n$6\r\nZSCORE\r\n$1\r\nz\r\n$1\r\nm\r\n"
        )
        expected = b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n,1.5\r\n"
        got = yield self.inThread(rawExchange, self.rmux.path, payload + b"QUIT\r\n")
        self.assertTrue(got.endswith(expected + b"+OK\r\n"), got)


class ClientLibraryTests(IntegrationTestCase):
    @inlineCallbacks
    def test_txredisapi(self):
        """
        txredisapi, a Twisted client, talks to rmux over its unix socket.
        """
        import txredisapi

        connection = yield txredisapi.UnixConnection(
            self.rmux.path, reconnect=False, dbid=2
        )
        try:
            yield connection.set("tx", "value")
            self.assertEqual((yield connection.get("tx")), "value")
            results = yield DeferredList(
                [connection.incr("counter") for _ in range(100)]
            )
            self.assertEqual(sorted(r for ok, r in results), list(range(1, 101)))
        finally:
            yield connection.disconnect()
        # SELECTed through rmux: the key is in db 2 on the server.
        self.assertEqual((yield self.inThread(self.direct(2).get, "tx")), b"value")

    @inlineCallbacks
    def test_redisCli(self):
        """
        redis-cli, as an operator would use it.
        """
        if REDIS_CLI is None:
            raise AssertionError("redis-cli is required (apt-get install redis-tools)")

        def cli(*args):
            return subprocess.run(
                [REDIS_CLI, "-s", self.rmux.path] + list(args),
                capture_output=True, timeout=10, check=True,
            ).stdout

        self.assertEqual((yield self.inThread(cli, "SET", "cli", "a b")), b"OK\n")
        self.assertEqual((yield self.inThread(cli, "GET", "cli")), b"a b\n")
        info = yield self.inThread(cli, "INFO", "server")
        self.assertIn(b"# Server\r\nredis_version:", info)
        self.assertNotIn(b"rmux_version:", info)
        self.assertIn(b"rmux_version:", (yield self.inThread(cli, "INFO", "rmux")))
        self.assertEqual((yield self.inThread(cli, "-n", "3", "SET", "x", "1")), b"OK\n")
        self.assertEqual((yield self.inThread(self.direct(3).get, "x")), b"1")


class OrderingTests(IntegrationTestCase):
    @inlineCallbacks
    def test_thousandCommandPipeline(self):
        """
        A 1000-command pipeline mixing forwarded and locally answered
        commands gets every reply, in order.
        """
        client = self.redisPy()

        def run():
            pipe = client.pipeline(transaction=False)
            for i in range(1000):
                kind = i % 4
                if kind == 0:
                    pipe.incr("counter")
                elif kind == 1:
                    pipe.echo("echo-%d" % i)
                elif kind == 2:
                    pipe.set("key-%d" % i, i)
                else:
                    pipe.get("key-%d" % (i - 1))
            return pipe.execute()

        results = yield self.inThread(run)
        self.assertEqual(len(results), 1000)
        for i, result in enumerate(results):
            kind = i % 4
            if kind == 0:
                self.assertEqual(result, i // 4 + 1)
            elif kind == 1:
                self.assertEqual(result, b"echo-%d" % i)
            elif kind == 2:
                self.assertIs(result, True)
            else:
                self.assertEqual(result, b"%d" % (i - 1))

    @inlineCallbacks
    def test_twentyConcurrentClients(self):
        """
        20 clients pipelining at once over a pool of 4 connections each see
        only their own replies.
        """

        def run(n):
            client = redis.Redis(unix_socket_path=self.rmux.path, protocol=2 + n % 2)
            try:
                for round in range(10):
                    pipe = client.pipeline(transaction=False)
                    for i in range(50):
                        pipe.set("c%d:%d" % (n, i), "%d-%d-%d" % (n, round, i))
                        pipe.get("c%d:%d" % (n, i))
                        pipe.echo("c%d" % n)
                    results = pipe.execute()
                    for i in range(50):
                        assert results[3 * i] is True
                        assert results[3 * i + 1] == b"%d-%d-%d" % (n, round, i), results
                        assert results[3 * i + 2] == b"c%d" % n
                return n
            finally:
                client.close()

        results = yield DeferredList(
            [self.inThread(run, n) for n in range(20)], consumeErrors=True
        )
        for ok, value in results:
            if not ok:
                value.raiseException()
        self.assertEqual(sorted(v for ok, v in results), list(range(20)))

    @inlineCallbacks
    def test_selectIsolation(self):
        """
        Clients in different dbs sharing one pooled connection never write
        into each other's db.
        """
        self.rmux = startRmux(self, [self.server], poolSize="1")

        def run(db):
            client = redis.Redis(unix_socket_path=self.rmux.path, db=db)
            try:
                for i in range(200):
                    client.set("shared", "db%d-%d" % (db, i))
                    assert client.get("shared") == b"db%d-%d" % (db, i)
                    client.rpush("log", db)
            finally:
                client.close()

        yield DeferredList([self.inThread(run, db) for db in range(4)])
        for db in range(4):
            direct = self.direct(db)
            self.assertEqual((yield self.inThread(direct.get, "shared")), b"db%d-199" % db)
            log = yield self.inThread(direct.lrange, "log", 0, -1)
            self.assertEqual(log, [b"%d" % db] * 200)

    @inlineCallbacks
    def test_pipelinedSelectAppliesOnlyToLaterCommands(self):
        """
        Go rmux ran 'SET pa' of 'SET pa; SELECT 5; SET pb' in db 5; here each
        command runs in the db selected when it was sent.
        """
        payload = b"SET pa 1\r\nSELECT 5\r\nSET pb 2\r\nQUIT\r\n"
        got = yield self.inThread(rawExchange, self.rmux.path, payload)
        self.assertEqual(got, b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n")
        self.assertEqual((yield self.inThread(self.direct(0).get, "pa")), b"1")
        self.assertEqual((yield self.inThread(self.direct(5).get, "pb")), b"2")
        self.assertIsNone((yield self.inThread(self.direct(5).get, "pa")))


class LargeValueTests(IntegrationTestCase):
    @inlineCallbacks
    def test_64MB(self):
        """
        A 64 MB value goes through in both directions, byte for byte.
        """
        value = os.urandom(1024) * (64 * 1024)
        client = self.redisPy()
        self.assertTrue((yield self.inThread(client.set, "huge", value)))
        self.assertEqual((yield self.inThread(self.direct().strlen, "huge")), len(value))
        got = yield self.inThread(client.get, "huge")
        self.assertEqual(len(got), len(value))
        self.assertTrue(got == value)

    @inlineCallbacks
    def test_sizesAroundInPlace(self):
        """
        Values just below, at and above the sizes rmux receives in place
        (see L{rmux.resp.BodySink}) go through both ways, byte for byte,
        pipelined with small commands and several clients at once.
        """
        low, high = RequestParser.sinkMinimum, RequestParser.sinkMaximum
        sizes = [low - 1, low, low + 1, 1000003, high, high + 1]

        def run(n):
            client = self.redisPy()
            try:
                values = {}
                pipe = client.pipeline(transaction=False)
                for i, size in enumerate(sizes):
                    values["v%d-%d" % (n, i)] = os.urandom(size)
                for key, value in values.items():
                    pipe.set(key, value)
                    pipe.incr("counter%d" % n)
                for key in values:
                    pipe.get(key)
                    pipe.strlen(key)
                got = pipe.execute()
            finally:
                client.close()
            count = len(values)
            assert got[:2 * count:2] == [True] * count, got[:2 * count:2]
            assert got[1:2 * count:2] == list(range(1, count + 1))
            assert got[2 * count::2] == list(values.values()), "a value changed"
            assert got[2 * count + 1::2] == [len(v) for v in values.values()]
            return values

        results = yield DeferredList([self.inThread(run, n) for n in range(3)],
                                     consumeErrors=True)
        direct = self.direct()
        for ok, values in results:
            self.assertTrue(ok, values)
            for key, value in values.items():
                self.assertTrue((yield self.inThread(direct.get, key)) == value, key)


class LocalCommandTests(IntegrationTestCase):
    def exchange(self, payload, **kwargs):
        return self.inThread(rawExchange, self.rmux.path, payload, **kwargs)

    @inlineCallbacks
    def test_pingEchoQuit(self):
        got = yield self.exchange(
            b"PING\r\nPING hello\r\n*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\nQUIT\r\nPING\r\n"
        )
        self.assertEqual(got, b"+PONG\r\n$5\r\nhello\r\n$4\r\na\r\nb\r\n+OK\r\n")

    @inlineCallbacks
    def test_quitWaitsForEarlierReplies(self):
        """
        QUIT's +OK comes after the replies of the commands before it, then
        the connection closes.
        """
        got = yield self.exchange(b"SET q 1\r\nGET q\r\nQUIT\r\nGET q\r\n")
        self.assertEqual(got, b"+OK\r\n$1\r\n1\r\n+OK\r\n")

    @inlineCallbacks
    def test_selectErrors(self):
        """
        SELECT is checked like Redis does, with the db count learned from
        the backend.
        """
        yield deferLater(reactor, 0.3, lambda: None)
        got = yield self.exchange(
            b"SELECT x\r\nSELECT 16\r\nSELECT -1\r\nSELECT\r\nSELECT 15\r\nQUIT\r\n"
        )
        self.assertEqual(
            got,
            b"-ERR value is not an integer or out of range\r\n"
            b"-ERR DB index is out of range\r\n"
            b"-ERR DB index is out of range\r\n"
            b"-ERR wrong number of arguments for 'select' command\r\n"
            b"+OK\r\n+OK\r\n",
        )

    @inlineCallbacks
    def test_info(self):
        """
        INFO is the server's, with rmux's sections after it, in Redis's
        layout, so redis-py parses it.
        """
        client = self.redisPy()
        yield deferLater(reactor, 0.3, lambda: None)
        info = yield self.inThread(client.info)
        server = yield self.inThread(self.direct().info, "server")
        self.assertEqual(info["process_id"], server["process_id"])
        self.assertEqual(info["arch_bits"], server["arch_bits"])
        self.assertEqual(info["rmux_process_id"], os.getpid())
        self.assertEqual(info["total_endpoints"], 1)
        self.assertEqual(info["active_endpoints"], 1)
        self.assertEqual(info["role"], "master")
        self.assertGreaterEqual(info["connected_clients"], 1)
        self.assertEqual(info["rmux_connected_clients"], 1)
        clients = yield self.inThread(client.info, "clients")
        self.assertIn("blocked_clients", clients)
        self.assertNotIn("rmux_connected_clients", clients)

    @inlineCallbacks
    def test_clientCommands(self):
        client = self.redisPy(protocol=2)
        self.assertTrue((yield self.inThread(client.client_setname, "worker-1")))
        self.assertEqual((yield self.inThread(client.client_getname)), "worker-1")
        client_id = yield self.inThread(client.client_id)
        info = yield self.inThread(client.client_info)
        self.assertEqual(info["id"], str(client_id) if isinstance(info["id"], str) else client_id)
        self.assertEqual(info["name"], "worker-1")

    @inlineCallbacks
    def test_helloReply(self):
        got = yield self.exchange(b"HELLO 3 SETNAME me\r\nCLIENT GETNAME\r\nHELLO 4\r\nQUIT\r\n")
        self.assertTrue(got.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), got)
        self.assertIn(b"$5\r\nproto\r\n:3\r\n", got)
        self.assertTrue(
            got.endswith(b"$2\r\nme\r\n-NOPROTO unsupported protocol version\r\n+OK\r\n"), got
        )


class RefusalTests(IntegrationTestCase):
    @inlineCallbacks
    def test_connectionStateThroughRmux(self):
        """
        Commands about the connection's own state are Redis's answers:
        CLIENT REPLY drops replies, tracking and no-evict run on the
        client's own connection, CLIENT UNBLOCK and KILL name rmux's
        clients, and the client carries on.
        """
        payload = (b"CLIENT REPLY OFF\r\nSET ok 1\r\nCLIENT REPLY SKIP\r\nGET ok\r\n"
                   b"CLIENT REPLY ON\r\nCLIENT TRACKING ON\r\nCLIENT NO-EVICT ON\r\n"
                   b"CLIENT UNBLOCK 99999\r\nCLIENT KILL ID 99999\r\nCLIENT TRACKING OFF\r\n"
                   b"GET ok\r\nQUIT\r\n")
        got = yield self.inThread(rawExchange, self.rmux.path, payload)
        self.assertEqual(got, b"+OK\r\n+OK\r\n+OK\r\n:0\r\n:0\r\n+OK\r\n$1\r\n1\r\n+OK\r\n")

    @inlineCallbacks
    def test_resetTurnsRepliesBackOn(self):
        """
        RESET ends CLIENT REPLY OFF, as Redis's does, and says so.
        """
        got = yield self.inThread(rawExchange, self.rmux.path,
                                  b"CLIENT REPLY OFF\r\nPING\r\nRESET\r\nPING\r\nQUIT\r\n")
        self.assertEqual(got, b"+RESET\r\n+PONG\r\n+OK\r\n")

    @inlineCallbacks
    def test_adminAndUnknown(self):
        """
        Server-wide commands reach the server; unknown ones and wrong
        arities get Redis's errors.
        """
        got = yield self.inThread(
            rawExchange, self.rmux.path,
            b"CONFIG SET maxmemory 1000000\r\nFOO bar\r\nGET\r\nXREAD STREAMS s 0\r\n"
            b"CONFIG GET maxmemory\r\nCONFIG SET maxmemory 0\r\nQUIT\r\n",
        )
        lines = got.split(b"\r\n")
        self.assertEqual(lines[0], b"+OK")
        self.assertEqual(lines[1], b"-ERR unknown command 'FOO', with args beginning with: 'bar' ")
        self.assertEqual(lines[2], b"-ERR wrong number of arguments for 'get' command")
        self.assertEqual(lines[3], b"*-1")  # XREAD without BLOCK is forwarded
        self.assertEqual(lines[4:9], [b"*2", b"$9", b"maxmemory", b"$7", b"1000000"])
        self.assertEqual(lines[9], b"+OK")

    @inlineCallbacks
    def test_inlineQuoting(self):
        got = yield self.inThread(
            rawExchange, self.rmux.path,
            b'SET "a b" \'c d\'\r\nGET "a b"\r\nSET "x\\x41\\n" y\r\nGET "xA\\n"\r\nQUIT\r\n',
        )
        self.assertEqual(got, b"+OK\r\n$3\r\nc d\r\n+OK\r\n$1\r\ny\r\n+OK\r\n")

    @inlineCallbacks
    def test_protocolErrorClosesAfterReply(self):
        got = yield self.inThread(
            rawExchange, self.rmux.path, b"PING\r\n*1\r\n$-5\r\nPING\r\n"
        )
        self.assertEqual(got, b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n")


class BackendFaultTests(IntegrationTestCase):
    timeout = 60

    @inlineCallbacks
    def test_backendDiesAndReturns(self):
        """
        While the backend is down, requests get an error naming it and the
        client stays connected; when it is back, they work again.
        """
        client = self.redisPy(protocol=2)
        self.assertTrue((yield self.inThread(client.set, "k", "v")))
        self.server.stop()
        try:
            yield self.inThread(client.get, "k")
        except redis.ResponseError as e:
            self.assertIn("rmux:", str(e))
            self.assertIn(self.server.path, str(e))
        else:
            self.fail("no error while the backend was down")
        self.assertTrue((yield self.inThread(client.ping)))
        self.server.start()
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertTrue((yield self.inThread(client.set, "k", "again")))
        self.assertEqual((yield self.inThread(client.get, "k")), b"again")

    @inlineCallbacks
    def test_readTimeoutKeepsClient(self):
        """
        A hung backend (SIGSTOP) makes the waiting request fail after the
        remote read timeout with a clear error; the client stays connected,
        and the late reply never reaches anyone.
        """
        self.rmux = startRmux(self, [self.server], remoteReadTimeout="300")
        client = self.redisPy(protocol=2)
        self.assertTrue((yield self.inThread(client.set, "k", "before")))
        self.server.pause()
        try:
            try:
                yield self.inThread(client.set, "k", "during")
            except redis.ResponseError as e:
                self.assertIn("did not reply within 300 ms", str(e))
            else:
                self.fail("no timeout error")
            self.assertTrue((yield self.inThread(client.ping)))
        finally:
            self.server.resume()
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((yield self.inThread(client.get, "k")), b"during")
        self.assertEqual((yield self.inThread(client.echo, "fresh")), b"fresh")
        self.assertTrue((yield self.inThread(client.set, "k", "after")))
        self.assertEqual((yield self.inThread(client.get, "k")), b"after")


class TcpTests(TestCase):
    """
    TCP on both sides: rmux listens on a loopback port and reaches Redis
    over TCP.
    """

    def listen(self):
        """
        Start a redis-server on TCP and rmux on a loopback port before it.

        @return: rmux's port.
        """
        from tests.redisserver import freePort

        server = startRedis(self, tcp=True)
        port = freePort()
        listener = fromFlags(
            {
                "host": "127.0.0.1",
                "port": str(port),
                "tcpConnections": "127.0.0.1:%d" % server.port,
            }
        ).listeners[0]
        service = ListenerService(listener, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return port

    @inlineCallbacks
    def test_tcp(self):
        port = self.listen()

        def run():
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                client.set("tcp", "yes")
                return client.get("tcp")
            finally:
                client.close()

        self.assertEqual((yield threads.deferToThread(run)), b"yes")

    @inlineCallbacks
    def test_bigValues(self):
        """
        Values around the sizes received in place go through a TCP
        listener byte for byte, both ways.
        """
        port = self.listen()
        low, high = RequestParser.sinkMinimum, RequestParser.sinkMaximum
        values = [os.urandom(size) for size in (low - 1, low + 1, 1000003, high + 1)]

        def run():
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                pipe = client.pipeline(transaction=False)
                for i, value in enumerate(values):
                    pipe.set("big%d" % i, value)
                    pipe.get("big%d" % i)
                return pipe.execute()
            finally:
                client.close()

        got = yield threads.deferToThread(run)
        self.assertEqual(got[::2], [True] * len(values))
        self.assertTrue(got[1::2] == values)


class WithoutSpeedupsMixin:
    """
    Run a class's tests with the parser rmux has where its C accelerator
    could not be built: hiredis and the pure-Python parser.
    """

    def setUp(self):
        self.patch(RequestParser, "useSpeedups", False)
        self.patch(ReplyFramer, "useSpeedups", False)
        return super().setUp()


class InPlaceEverywhereMixin:
    """
    Run a class's tests with every bulk string that is not whole in one
    read received in place (L{rmux.resp.BodySink}), however short: rmux
    does so only from 128 KB on.
    """

    def setUp(self):
        self.patch(RequestParser, "sinkMinimum", 1)
        self.patch(ReplyFramer, "sinkMinimum", 1)
        return super().setUp()


class OrderingWithoutSpeedupsTests(WithoutSpeedupsMixin, OrderingTests):
    pass


class OrderingInPlaceEverywhereTests(InPlaceEverywhereMixin, OrderingTests):
    pass


class LargeValueInPlaceEverywhereTests(InPlaceEverywhereMixin, LargeValueTests):
    pass


class LargeValueWithoutSpeedupsTests(WithoutSpeedupsMixin, LargeValueTests):
    pass


class RefusalWithoutSpeedupsTests(WithoutSpeedupsMixin, RefusalTests):
    pass


class TwistdTests(TestCase):
    """
    The twistd plugin, run as an operator runs it.
    """

    timeout = 60

    @inlineCallbacks
    def test_twistdRmux(self):
        server = startRedis(self)
        directory = tempfile.mkdtemp(prefix="rmux-twistd-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "rmux.sock")
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
                "--logfile", os.path.join(directory, "rmux.log"),
                "rmux", "--socket=" + path, "--unixConnections=" + server.path,
            ],
            cwd=directory, env=env,
        )

        def stop():
            if process.poll() is None:
                process.terminate()
                process.wait(10)

        self.addCleanup(stop)

        def use():
            import time

            deadline = time.monotonic() + 20
            while not os.path.exists(path):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(open(os.path.join(directory, "rmux.log")).read())
                time.sleep(0.05)
            client = redis.Redis(unix_socket_path=path)
            try:
                client.set("plugin", "works")
                return client.get("plugin"), os.stat(path).st_mode & 0o777
            finally:
                client.close()

        value, mode = yield threads.deferToThread(use)
        self.assertEqual(value, b"works")
        self.assertEqual(mode, 0o666)
        process.terminate()
        # twistd shuts down cleanly, then re-raises SIGTERM so that its exit
        # status says why it stopped.
        self.assertEqual((yield threads.deferToThread(process.wait, 10)), -15)
        with open(os.path.join(directory, "rmux.log")) as log:
            self.assertIn("Server Shut Down.", log.read())
        self.assertFalse(os.path.exists(path))


class TacTests(TestCase):
    """
    rmux.tac, the embedding example, builds a working service.
    """

    def test_tacBuildsService(self):
        from twisted.application.service import IService, loadApplication

        from rmux.service import ListenerService, RmuxService

        application = loadApplication(os.path.join(ROOT, "rmux.tac"), "python")
        services = list(IService(application))
        self.assertEqual(len(services), 1)
        self.assertIsInstance(services[0], RmuxService)
        (listener,) = services[0].listeners
        self.assertIsInstance(listener, ListenerService)
        self.assertEqual(listener.listener.socket, "/tmp/rmux.sock")
        self.assertEqual(str(listener.pools[0].address), "localhost:6379")
