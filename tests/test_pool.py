"""
Tests for L{rmux.pool}: pipelining, lazy db/protocol switches, and the
remote timeouts, driven by L{Clock}; then the pool against a real Redis.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux.config import BackendAddress
from rmux.pool import BackendPool, BackendProtocol, errorReply
from rmux.resp import encodeCommand
from rmux.stats import ListenerStats, PoolStats
from tests.redisserver import freePort, startRedis
from tests.transports import BufferedTransport


class Collector:
    """
    A waiter that remembers its reply.
    """

    def __init__(self, log=None):
        self.reply = None
        self.log = log

    def fill(self, reply):
        self.reply = reply
        if self.log is not None:
            self.log.append(self)


class FakePool:
    address = "redis.example:6379"

    def __init__(self):
        self.failures = []
        self.gone = []
        self.stats = PoolStats()

    def connectionFailed(self, protocol, why, timedOut):
        self.failures.append((why, timedOut))

    def connectionGone(self, protocol):
        self.gone.append(protocol)

    def connectionReady(self, protocol):
        pass


class TurnClock(Clock):
    """
    A L{Clock} that advances as the reactor's turns do: the calls due when
    it advances run, and what they schedule waits for the next advance
    (a reactor polls its sockets between the two).
    """

    def advance(self, amount):
        self.rightNow += amount
        self._sortCalls()
        for call in [c for c in self.calls if c.getTime() <= self.rightNow]:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def connect(readTimeout=0.5, writeTimeout=0.5, transportClass=StringTransport,
            clockClass=Clock):
    clock = clockClass()
    protocol = BackendProtocol()
    protocol.pool = FakePool()
    protocol.clock = clock
    protocol.readTimeout = readTimeout
    protocol.writeTimeout = writeTimeout
    transport = transportClass()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def command(*args):
    return encodeCommand(list(args))


def written(transport, clock):
    """
    What the connection has sent once the current loop turn is over
    (requests are batched per turn).
    """
    clock.advance(0)
    return transport.value()


class BackendProtocolTests(SynchronousTestCase):
    def test_pipelinedRepliesInOrder(self):
        """
        Requests are written at once, and the n-th reply goes to the n-th
        waiter, even when replies arrive split anywhere.
        """
        protocol, transport, clock = connect()
        waiters = [Collector() for _ in range(3)]
        for i, waiter in enumerate(waiters):
            protocol.send(command(b"GET", b"k%d" % i), waiter)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(
            written(transport, clock),
            b"".join(command(b"GET", b"k%d" % i) for i in range(3)),
        )
        stream = b"$2\r\nv0\r\n$-1\r\n+OK\r\n"
        for byte in range(len(stream)):
            protocol.dataReceived(stream[byte : byte + 1])
        self.assertEqual(
            [w.reply for w in waiters], [b"$2\r\nv0\r\n", b"$-1\r\n", b"+OK\r\n"]
        )

    def test_oneWritePerTurn(self):
        """
        Requests from many clients in one loop turn leave in one write.
        """
        protocol, transport, clock = connect()
        writes = []
        transport.write = writes.append
        for i in range(50):
            protocol.send(command(b"INCR", b"k%d" % i), Collector())
        self.assertEqual(writes, [])
        clock.advance(0)
        self.assertEqual(
            writes, [b"".join(command(b"INCR", b"k%d" % i) for i in range(50))]
        )

    def test_selectHoldsLaterRequests(self):
        """
        A request for another db makes the connection send SELECT first and
        hold every later request until SELECT's +OK is back.
        """
        protocol, transport, clock = connect()
        first, second = Collector(), Collector()
        protocol.send(command(b"SET", b"a", b"1"), first, db=5)
        protocol.send(command(b"GET", b"a"), second, db=5)
        self.assertEqual(written(transport, clock), command(b"SELECT", b"5"))
        transport.clear()
        protocol.dataReceived(b"+OK\r\n")
        self.assertEqual(
            written(transport, clock), command(b"SET", b"a", b"1") + command(b"GET", b"a")
        )
        protocol.dataReceived(b"+OK\r\n$1\r\n1\r\n")
        self.assertEqual((first.reply, second.reply), (b"+OK\r\n", b"$1\r\n1\r\n"))
        self.assertEqual(protocol.db, 5)

    def test_failedSelectNeverRunsTheRequest(self):
        """
        If SELECT fails, the held requests get its error and are never
        written, and the connection is retired.
        """
        protocol, transport, clock = connect()
        held = Collector()
        protocol.send(command(b"SET", b"a", b"1"), held, db=99)
        written(transport, clock)
        transport.clear()
        protocol.dataReceived(b"-ERR DB index is out of range\r\n")
        self.assertEqual(held.reply, b"-ERR DB index is out of range\r\n")
        self.assertEqual(written(transport, clock), b"")
        self.assertTrue(protocol.broken)
        self.assertTrue(transport.disconnecting)

    def test_helloSwitchesProtocol(self):
        protocol, transport, clock = connect()
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter, protocolVersion=3)
        self.assertEqual(written(transport, clock), command(b"HELLO", b"3"))
        transport.clear()
        protocol.dataReceived(b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
        self.assertEqual(written(transport, clock), command(b"GET", b"a"))
        protocol.dataReceived(b"_\r\n")
        self.assertEqual(waiter.reply, b"_\r\n")

    def test_readTimeout(self):
        """
        When the backend is silent for the read timeout, every waiter gets an
        error naming the backend and the connection is closed for good.
        """
        protocol, transport, clock = connect(readTimeout=0.5)
        waiters = [Collector(), Collector()]
        for waiter in waiters:
            protocol.send(command(b"GET", b"a"), waiter)
        clock.advance(0)  # the loop turn ends: the requests are sent
        clock.advance(0.49)
        self.assertIsNone(waiters[0].reply)
        clock.advance(0.01)
        expected = errorReply(
            "rmux: backend redis.example:6379 did not reply within 500 ms"
        )
        self.assertEqual([w.reply for w in waiters], [expected, expected])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol.pool.failures, [("did not reply within 500 ms", True)])
        late = Collector()
        protocol.send(command(b"GET", b"a"), late)
        self.assertTrue(late.reply.startswith(b"-ERR rmux: lost connection"))

    def test_progressExtendsReadTimeout(self):
        """
        The read timeout measures silence, not the age of a long pipeline.
        """
        protocol, transport, clock = connect(readTimeout=0.5)
        waiters = [Collector(), Collector()]
        for waiter in waiters:
            protocol.send(command(b"GET", b"a"), waiter)
        clock.advance(0)
        clock.advance(0.4)
        protocol.dataReceived(b"+OK\r\n")
        clock.advance(0.4)
        self.assertIsNone(waiters[1].reply)
        clock.advance(0.1)
        self.assertTrue(waiters[1].reply.startswith(b"-ERR rmux: backend"))

    def test_readTimeoutStartsWhenSent(self):
        """
        The read timeout counts from when the request reached the server,
        not from when a client gave it to rmux: a loop turn that takes
        longer than the timeout is rmux's queueing, not the server's.
        """
        protocol, transport, clock = connect(readTimeout=0.5)
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter)
        clock.advance(0.7)  # one long turn; its end flushes the request
        self.assertIsNone(waiter.reply)
        self.assertEqual(transport.value(), command(b"GET", b"a"))
        clock.advance(0.45)
        protocol.dataReceived(b"+OK\r\n")
        self.assertEqual(waiter.reply, b"+OK\r\n")

    def test_passedDeadlineWaitsOneTurn(self):
        """
        A deadline that has passed is judged one turn later, after the
        reactor read what had arrived: what arrived in that turn counts.
        """
        protocol, transport, clock = connect(readTimeout=0.5, clockClass=TurnClock)
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter)
        clock.advance(0)
        clock.advance(0.5)
        self.assertIsNone(waiter.reply)
        protocol.dataReceived(b"+OK\r\n")
        clock.advance(0)
        self.assertEqual(waiter.reply, b"+OK\r\n")
        self.assertFalse(transport.disconnecting)
        # Nothing arrives in the turn after a deadline: the server is failed.
        late = Collector()
        protocol.send(command(b"GET", b"b"), late)
        clock.advance(0)
        clock.advance(0.5)
        self.assertIsNone(late.reply)
        clock.advance(0)
        self.assertIn(b"did not reply within 500 ms", late.reply)
        self.assertTrue(transport.disconnecting)

    def test_progressInALongTurnCounts(self):
        """
        Bytes read early in a turn that then lasts long (thousands of
        clients served in it) clear the suspicion, though by the turn's
        end they are old.
        """
        protocol, transport, clock = connect(readTimeout=0.5, clockClass=TurnClock)
        waiters = [Collector(), Collector()]
        for waiter in waiters:
            protocol.send(command(b"GET", b"a"), waiter)
        clock.advance(0)
        clock.advance(0.5)
        protocol.dataReceived(b"+OK\r\n")
        clock.advance(2.0)
        self.assertFalse(transport.disconnecting)
        clock.advance(0)
        clock.advance(0)
        self.assertIn(b"did not reply within 500 ms", waiters[1].reply)

    def test_blockingWaitIsNotLatency(self):
        """
        The batch holding a blocking command is not counted in the latency
        histogram (its wait is the command's, not the server's); the next
        batch is.
        """
        protocol, transport, clock = connect(readTimeout=0)
        protocol.blocking = True
        protocol.send(command(b"BLPOP", b"l", b"0"), Collector())
        clock.advance(0)
        clock.advance(30)
        protocol.dataReceived(b"*-1\r\n")
        self.assertEqual(protocol.stats.latency.count, 0)
        protocol.send(command(b"GET", b"a"), Collector())
        clock.advance(0)
        clock.advance(0.01)
        protocol.dataReceived(b"$-1\r\n")
        self.assertEqual(protocol.stats.latency.count, 1)

    def test_trickledReplyHasALimit(self):
        """
        Bytes that keep coming without completing the reply do not hold the
        request forever: a reply must be complete within five read timeouts.
        """
        protocol, transport, clock = connect(readTimeout=0.5)
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter)
        clock.advance(0)
        for _ in range(12):
            clock.advance(0.2)
            protocol.dataReceived(b"x" if protocol.framer.buffered else b"+x")
        self.assertIsNone(waiter.reply)
        clock.advance(0.1)
        self.assertIn(b"did not complete a reply within 2500 ms", waiter.reply)

    def test_earlyRejectionIsAConnectFailure(self):
        """
        A server that answers before anything was asked (Redis past
        maxclients) fails the connect instead of joining the pool.
        """
        pool = FakePool()
        pool.reactor = Clock()
        pool.readTimeout = pool.writeTimeout = 0.5
        protocol = BackendProtocol(pool)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"-ERR max number of clients reached\r\n")
        self.assertTrue(protocol.broken)
        self.assertEqual(
            pool.failures,
            [("sent a reply nobody asked for: -ERR max number of clients reached", False)],
        )

    def test_noTimerWhenIdle(self):
        protocol, transport, clock = connect()
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter)
        protocol.dataReceived(b"+OK\r\n")
        clock.advance(10)
        self.assertFalse(protocol.broken)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_writeTimeout(self):
        """
        A backend that stops reading our writes for the write timeout is
        given up on.
        """
        protocol, transport, clock = connect(writeTimeout=0.2)
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter)
        protocol.pauseProducing()
        clock.advance(0.2)
        self.assertIn(b"did not accept a write within 200 ms", waiter.reply)

    def test_slowDrainIsNotATimeout(self):
        """
        A backend that keeps taking our writes, only more slowly than they
        pile up, is not given up on; one that stops taking them is.
        """
        protocol, transport, clock = connect(
            readTimeout=0, writeTimeout=0.2, transportClass=BufferedTransport)
        transport.dataBuffer, transport.offset, transport._tempDataLen = b"x" * 1000, 0, 0
        waiter = Collector()
        protocol.send(command(b"SET", b"a", b"b"), waiter)
        protocol.pauseProducing()
        for taken in (100, 200, 300):
            transport.offset = taken
            clock.advance(0.2)
            self.assertFalse(protocol.broken)
        clock.advance(0.2)
        self.assertTrue(protocol.broken)
        self.assertIn(b"did not accept a write within 200 ms", waiter.reply)

    def test_resumeCancelsWriteTimeout(self):
        protocol, transport, clock = connect(readTimeout=0, writeTimeout=0.2)
        protocol.pauseProducing()
        protocol.resumeProducing()
        clock.advance(1)
        self.assertFalse(protocol.broken)

    def test_unexpectedReplyPoisonsNothing(self):
        """
        A reply nobody asked for means the stream is out of step: the
        connection is dropped rather than handing it to a later request.
        """
        protocol, transport, clock = connect()
        protocol.dataReceived(b"+OK\r\n")
        self.assertTrue(protocol.broken)
        self.assertTrue(transport.disconnecting)

    def test_malformedReply(self):
        protocol, transport, clock = connect()
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter)
        protocol.dataReceived(b"?garbage\r\n")
        self.assertIn(b"malformed reply", waiter.reply)
        self.assertTrue(transport.disconnecting)

    def test_pushIsNotAReply(self):
        protocol, transport, clock = connect()
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter, protocolVersion=2)
        protocol.dataReceived(b">3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\nv\r\n")
        self.assertIsNone(waiter.reply)
        protocol.dataReceived(b"$1\r\nv\r\n")
        self.assertEqual(waiter.reply, b"$1\r\nv\r\n")

    def test_connectionLostFailsInFlight(self):
        protocol, transport, clock = connect()
        waiter = Collector()
        protocol.send(command(b"GET", b"a"), waiter)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            waiter.reply,
            errorReply("rmux: lost connection to backend redis.example:6379"),
        )
        self.assertEqual(clock.getDelayedCalls(), [])


class BackendPoolTests(TestCase):
    """
    The pool against a real redis-server.
    """

    def send(self, pool, *args, **kwargs):
        d = Deferred()

        class Waiter:
            def fill(self, reply):
                d.callback(reply)

        pool.send(encodeCommand(list(args)), Waiter(), **kwargs)
        return d

    def makePool(self, address, **kwargs):
        pool = BackendPool(reactor, address, **kwargs)
        self.addCleanup(pool.stop)
        return pool

    @inlineCallbacks
    def test_lazyConnectAndPipeline(self):
        """
        No connection is opened before the first request; requests sent
        before the connect completes wait for it and keep their order.
        """
        server = startRedis(self)
        pool = self.makePool(BackendAddress(kind="unix", path=server.path), size=2)
        self.assertEqual(pool.connections, [])
        replies = [self.send(pool, b"ECHO", b"%d" % i) for i in range(50)]
        results = []
        for d in replies:
            results.append((yield d))
        self.assertEqual(results, [b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(50)])
        self.assertLessEqual(len(pool.connections), 2)

    @inlineCallbacks
    def test_growsUpToSize(self):
        server = startRedis(self)
        pool = self.makePool(BackendAddress(kind="unix", path=server.path), size=3)
        pool.growthThreshold = 1
        for round in range(5):
            yield self.send(pool, b"PING")
            replies = [self.send(pool, b"PING") for _ in range(20)]
            for d in replies:
                self.assertEqual((yield d), b"+PONG\r\n")
        self.assertEqual(len(pool.connections), 3)

    @inlineCallbacks
    def test_dbIsolation(self):
        """
        Requests for different dbs interleaved on one connection each run in
        their own db.
        """
        server = startRedis(self)
        pool = self.makePool(BackendAddress(kind="unix", path=server.path), size=1)
        sets = [
            self.send(pool, b"SET", b"k", b"db%d" % (i % 3), db=i % 3) for i in range(30)
        ]
        for d in sets:
            self.assertEqual((yield d), b"+OK\r\n")
        for db in range(3):
            self.assertEqual(
                (yield self.send(pool, b"GET", b"k", db=db)), b"$3\r\ndb%d\r\n" % db
            )

    @inlineCallbacks
    def test_connectRefused(self):
        """
        A server that refuses connections gives an error naming it, at once.
        """
        port = freePort()
        pool = self.makePool(BackendAddress(kind="tcp", host="127.0.0.1", port=port))
        reply = yield self.send(pool, b"GET", b"a")
        self.assertTrue(
            reply.startswith(b"-ERR rmux: cannot connect to backend 127.0.0.1:%d" % port),
            reply,
        )

    @inlineCallbacks
    def test_reconnectsAfterRestart(self):
        server = startRedis(self)
        pool = self.makePool(BackendAddress(kind="unix", path=server.path))
        self.assertEqual((yield self.send(pool, b"PING")), b"+PONG\r\n")
        server.stop()
        reply = yield self.send(pool, b"PING")
        self.assertTrue(reply.startswith(b"-ERR rmux:"), reply)
        server.start()
        yield deferLater(reactor, pool.retryDelay + 0.05, lambda: None)
        self.assertEqual((yield self.send(pool, b"PING")), b"+PONG\r\n")


def fullPool(case, size=3):
    """
    Give C{case} a C{reactor}, a C{pool} of C{size} and its C{connections},
    all open, on string transports.
    """
    from twisted.internet.testing import MemoryReactorClock

    case.reactor = MemoryReactorClock()
    case.pool = BackendPool(
        case.reactor, BackendAddress(kind="unix", path="/r.sock"), size=size
    )
    case.connections = []
    for _ in range(size):
        protocol = BackendProtocol(case.pool)
        protocol.makeConnection(StringTransport())
        case.pool.connectionReady(protocol)
        case.connections.append(protocol)


class SaturatedPoolTests(SynchronousTestCase):
    """
    A full pool whose connections are all busy spreads requests in turn,
    and concentrates them again once a connection is quiet.
    """

    def setUp(self):
        fullPool(self)
        self.pool.growthThreshold = 2

    def send(self, db=0):
        return self.pool.send(command(b"GET", b"k"), Collector(), db=db)

    def test_takesTurns(self):
        first = [self.send() for _ in range(6)]
        self.assertEqual(first, [self.connections[i] for i in (0, 0, 1, 1, 2, 2)])
        self.assertFalse(self.pool._saturated)
        self.send()
        self.assertTrue(self.pool._saturated)
        spread = [self.connections.index(self.send()) for _ in range(6)]
        self.assertEqual(spread[:3], spread[3:])
        self.assertEqual(sorted(spread[:3]), [0, 1, 2])

    def test_quietConnectionFoundAgain(self):
        for _ in range(7):
            self.send()
        self.connections[2].dataReceived(b"+OK\r\n+OK\r\n")
        self.pool._saturated = 1
        self.send()
        self.assertIs(self.send(), self.connections[2])

    def test_unwrittenBytesInSnapshot(self):
        """
        The stats snapshot counts the bytes of requests not yet written:
        gathered for this turn's write, or held behind a db switch.
        """
        from rmux.stats import listenerSnapshot

        self.send()
        self.send(db=3)

        class Factory:
            stats = ListenerStats()
            listener = None
            clients = ()
            reactor = self.reactor
            startedAt = 0.0

        (backend,) = listenerSnapshot(Factory(), [self.pool])["backends"]
        get = len(command(b"GET", b"k"))
        select = len(command(b"SELECT", b"3"))
        # The second GET waits for its connection's SELECT 3.
        self.assertEqual((backend["inQueue"], backend["outQueue"]), (1, 2))
        self.assertEqual(backend["inQueueBytes"], 2 * get + select)
        self.reactor.advance(0)
        (backend,) = listenerSnapshot(Factory(), [self.pool])["backends"]
        self.assertEqual(backend["inQueueBytes"], get)

    def test_stateRespected(self):
        for _ in range(7):
            self.send()
        connection = self.send(db=3)
        self.assertEqual(connection.db, 3)
        self.assertIs(self.send(db=3), connection)


class ConcentrationTests(SynchronousTestCase):
    """
    Requests concentrate on few connections, so each send and read carries
    many of them, but not behind a connection whose server is not keeping
    up with a big value.
    """

    def setUp(self):
        fullPool(self)

    def sendPipeline(self, count=16):
        payload = command(b"GET", b"k") * count
        return self.pool.send(payload, Collector(), count=count)

    def test_pipelinesShareAConnection(self):
        """
        Pipelines of 16 from many clients go on one connection, in one
        write per loop turn, until it owes C{growthThreshold} replies.
        """
        first, second = self.connections[:2]
        self.assertEqual([self.sendPipeline() for _ in range(8)], [first] * 8)
        while len(first.waiting) < self.pool.growthThreshold:
            self.assertIs(self.sendPipeline(), first)
        self.assertIs(self.sendPipeline(), second)
        self.reactor.advance(0)
        self.assertEqual(
            first.transport.value(),
            command(b"GET", b"k") * self.pool.growthThreshold,
        )

    def test_backedUpConnectionPassedOver(self):
        """
        A connection whose transport paused us (its send buffer is full,
        a big value in transit) gets no new requests while another one is
        free, and gets them again once the transport resumes us.
        """
        first, second = self.connections[:2]
        self.assertIs(self.sendPipeline(1), first)
        first.pauseProducing()
        self.assertTrue(first.backedUp)
        self.assertIs(self.sendPipeline(1), second)
        first.resumeProducing()
        self.assertFalse(first.backedUp)
        self.assertIs(self.sendPipeline(1), first)

    def test_everyConnectionBackedUp(self):
        """
        When every connection is backed up and the pool is full, the
        request still goes out, on the least-loaded connection.
        """
        second = self.connections[1]
        self.sendPipeline(2)
        for connection in self.connections:
            connection.pauseProducing()
        self.assertIs(self.sendPipeline(1), second)
        self.reactor.advance(0)
        self.assertEqual(second.transport.value(), command(b"GET", b"k"))

class ReconnectBackoffTests(SynchronousTestCase):
    """
    A server that refuses connections is retried with growing, jittered
    delays, and requests meanwhile fail at once instead of piling up.
    """

    def setUp(self):
        from random import Random

        from twisted.internet.testing import MemoryReactorClock

        self.reactor = MemoryReactorClock()
        self.pool = BackendPool(
            self.reactor, BackendAddress(kind="unix", path="/nonexistent.sock"), size=4
        )
        self.pool.random = Random(7)

    def attempt(self):
        waiter = Collector()
        self.pool.send(command(b"PING"), waiter)
        return waiter

    def refuse(self):
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        address, factory, timeout, checkPID = self.reactor.unixClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.reactor.advance(0)  # ClientCreator reports the failure next turn

    def test_backoffDoublesWithJitter(self):
        waiter = self.attempt()
        self.refuse()
        self.assertIn(b"cannot connect to backend /nonexistent.sock", waiter.reply)
        attempts = [self.reactor.seconds()]
        for _ in range(8):
            while len(self.reactor.unixClients) == len(attempts):
                self.reactor.advance(0.01)
                self.attempt()
            attempts.append(self.reactor.seconds())
            self.refuse()
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        for n, gap in enumerate(gaps):
            expected = min(0.1 * 2**n, 5.0)
            self.assertTrue(expected * 0.8 - 0.011 <= gap <= expected * 1.2 + 0.011, (n, gap))
        self.assertNotEqual(gaps[0] / 0.1, gaps[1] / 0.2)

    def test_failFastDuringBackoff(self):
        self.attempt()
        self.refuse()
        waiter = self.attempt()
        self.assertIn(b"cannot connect", waiter.reply)
        self.assertEqual(len(self.reactor.unixClients), 1)

    def test_serverIsBackResetsBackoff(self):
        self.attempt()
        self.refuse()
        self.pool.serverIsBack()
        self.attempt()
        self.assertEqual(len(self.reactor.unixClients), 2)

    def test_connectRateLimited(self):
        """
        New connections to one server are rate-limited by a token bucket.
        """
        self.pool.connectRate = 1.0
        self.pool.tokens = 1.0
        self.attempt()
        self.refuse()
        self.pool.serverIsBack()
        waiter = self.attempt()
        self.assertEqual(len(self.reactor.unixClients), 1)
        self.assertIn(b"too many connection attempts", waiter.reply)
        self.reactor.advance(1.0)
        self.attempt()
        self.assertEqual(len(self.reactor.unixClients), 2)
