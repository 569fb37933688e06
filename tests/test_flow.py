"""
Tests for L{rmux.flow}: heavy reads take turns, light ones never wait, and
the output limits count every reply rmux holds for a client.
"""

import socket

from twisted.internet import reactor
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux.flow import Admission
from rmux.resp import encodeCommand
from tests.redisserver import startRedis
from tests.test_integration import ThreadedClients, startRmux
from tests.test_proxy import makeClient


class FakeClient:
    disconnected = False

    def __init__(self):
        self.events = []

    def admitted(self):
        self.events.append("admitted")

    def heavyExpired(self):
        self.events.append("expired")


class AdmissionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.admission = Admission(self.clock, limit=2, holdLimit=0.1)

    def test_placesThenQueue(self):
        """
        Up to C{limit} heavy reads go at once; the next waits, in order,
        and is admitted when a place is given back.
        """
        a, b, c, d = [FakeClient() for _ in range(4)]
        self.assertTrue(self.admission.enter(a))
        self.assertTrue(self.admission.enter(b))
        self.assertFalse(self.admission.enter(c))
        self.assertFalse(self.admission.enter(d))
        self.admission.leave(a)
        self.assertEqual(c.events, ["admitted"])
        self.assertEqual(d.events, [])
        self.admission.leave(b)
        self.assertEqual(d.events, ["admitted"])

    def test_noOvertaking(self):
        """
        While reads wait, a new heavy read queues behind them even if a
        place is free for a moment.
        """
        a, b, c = FakeClient(), FakeClient(), FakeClient()
        self.admission.limit = 1
        self.admission.enter(a)
        self.assertFalse(self.admission.enter(b))
        self.admission.holders.clear()
        self.assertFalse(self.admission.enter(c))

    def test_heldTooLong(self):
        """
        A heavy read that still waits for a reply after C{holdLimit} (a
        blocking command) gives its place up, and its client is read again.
        """
        a, b, c = FakeClient(), FakeClient(), FakeClient()
        self.admission.enter(a)
        self.clock.advance(0.05)
        self.admission.enter(b)
        self.admission.enter(c)
        self.clock.advance(0.05)
        self.assertEqual(a.events, ["expired"])
        self.assertEqual(b.events, [])
        self.assertEqual(c.events, ["admitted"])
        self.clock.advance(0.05)
        self.assertEqual(b.events, ["expired"])

    def test_goneClients(self):
        """
        A client that leaves gives its place back, or its turn up.
        """
        a, b, c = FakeClient(), FakeClient(), FakeClient()
        self.admission.limit = 1
        self.admission.enter(a)
        self.admission.enter(b)
        self.admission.enter(c)
        self.admission.forget(b)
        c.disconnected = True
        self.admission.forget(a)
        self.assertEqual((b.events, c.events), ([], []))
        self.assertEqual(self.admission.holders, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])


def command(*args):
    return encodeCommand([a if isinstance(a, bytes) else str(a).encode() for a in args])


def sendOnly(path, payload):
    """
    Connect, send C{payload}, read nothing; the caller closes the socket.
    """
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    s.sendall(payload)
    return s


def readReplies(s, count):
    """
    Read C{count} replies of C{s} (bulk strings of known form) and return
    them, then close it.
    """
    import hiredis

    reader = hiredis.Reader()
    replies = []
    try:
        while len(replies) < count:
            data = s.recv(1 << 20)
            if not data:
                break
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is False:
                    break
                replies.append(reply)
    finally:
        s.close()
    return replies


class HeavyReadTests(TestCase):
    """
    Clients that pipeline thousands of requests, through a real rmux and
    redis-server.
    """

    def setUp(self):
        self.server = startRedis(self)
        self.threads = ThreadedClients(self, size=12)

    @inlineCallbacks
    def test_heavyReadersTakeTurns(self):
        """
        Ten clients pipeline 3,000 GETs each and read nothing for a while:
        at most the admission's limit of their reads is worked on at once,
        each is answered in full and in order once it reads, and a light
        client is answered meanwhile.
        """
        rmux = startRmux(self, [self.server])
        admission = rmux.factory.admission
        seen = []
        original = admission._hold

        def hold(client):
            original(client)
            seen.append(len(admission.holders))

        admission._hold = hold
        values = {i: b"value-%d" % i * 20 for i in range(100)}
        yield self.threads.run(
            lambda: readReplies(
                sendOnly(rmux.path, b"".join(command("SET", "k%d" % i, v)
                                             for i, v in values.items())),
                len(values),
            )
        )
        pipeline = b"".join(command("GET", "k%d" % (i % 100)) for i in range(3000))
        heavy = yield DeferredList(
            [self.threads.run(sendOnly, rmux.path, pipeline) for _ in range(10)]
        )
        light = yield self.threads.run(
            lambda: readReplies(sendOnly(rmux.path, command("GET", "k1")), 1)
        )
        self.assertEqual(light, [values[1]])
        replies = yield DeferredList(
            [self.threads.run(readReplies, s, 3000) for ok, s in heavy]
        )
        expected = [values[i % 100] for i in range(3000)]
        for ok, got in replies:
            self.assertTrue(ok)
            self.assertEqual(got, expected)
        self.assertTrue(seen)
        self.assertLessEqual(max(seen), admission.limit)

    @inlineCallbacks
    def test_blockedClientIsStillRead(self):
        """
        A heavy read ending in a blocking command does not keep its client
        unread: the client's leaving is seen, and its place is given back.
        """
        rmux = startRmux(self, [self.server])
        payload = b"".join(command("SET", "x%d" % i, "v") for i in range(200))
        s = yield self.threads.run(
            sendOnly, rmux.path, payload + command("BLPOP", "nothing", "0")
        )
        yield self.threads.run(readReplies, s, 200)
        deadline = reactor.seconds() + 5
        while rmux.factory.clients and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(rmux.factory.clients), 0)
        self.assertEqual(rmux.factory.admission.holders, {})


class OutputLimitTests(TestCase):
    def setUp(self):
        self.server = startRedis(self)
        self.threads = ThreadedClients(self, size=4)
        self.closings = []

        def observe(event):
            if "output limit" in event.get("log_format", ""):
                self.closings.append(event["buffered"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @inlineCallbacks
    def test_pipelinedRepliesCount(self):
        """
        A client that pipelines 300 GETs of a 1 MB value and never reads is
        closed once about 1 MB of replies is held for it, not after rmux
        gathered the whole pipeline's replies (one server: the pipeline is
        forwarded whole, and its replies used to be joined before any was
        written).
        """
        rmux = startRmux(self, [self.server], clientOutputLimit="1mb")
        value = b"v" * (1 << 20)
        yield self.threads.run(
            lambda: readReplies(sendOnly(rmux.path, command("SET", "big", value)), 1)
        )
        s = yield self.threads.run(
            sendOnly, rmux.path, command("GET", "big") * 300
        )
        self.addCleanup(s.close)
        deadline = reactor.seconds() + 10
        while not self.closings and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.closings), 1)
        # Within 1 MB of the limit (issue 15's bound): a reply past it.
        self.assertLess(self.closings[0], 2 << 20)
        self.assertEqual(rmux.factory.stats.outputLimitDrops, 1)

    @inlineCallbacks
    def test_subscriberLimits(self):
        """
        A subscriber that does not read is closed past the pub/sub hard
        limit, as Redis closes it, though it is far below the limit of
        ordinary clients.
        """
        rmux = startRmux(self, [self.server], pubsubOutputLimit="2mb")
        s = yield self.threads.run(sendOnly, rmux.path, command("SUBSCRIBE", "news"))
        self.addCleanup(s.close)
        message = b"m" * (256 * 1024)
        publisher = yield self.threads.run(sendOnly, rmux.path, b"")
        self.addCleanup(publisher.close)
        deadline = reactor.seconds() + 10
        while not self.closings and reactor.seconds() < deadline:
            yield self.threads.run(publisher.sendall, command("PUBLISH", "news", message))
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(self.closings), 1)
        self.assertGreater(self.closings[0], 2 << 20)
        self.assertLess(self.closings[0], 3 << 20)


class RequestLimitTests(SynchronousTestCase):
    """
    What rmux holds of incomplete requests, with a Clock and string
    transports.
    """

    def test_readTimeoutFromTheFirstByte(self):
        """
        A request must be complete within the local read timeout of its
        first byte, however steadily its bytes trickle in.
        """
        client, transport, router, clock = makeClient(localReadTimeout="500")
        client.dataReceived(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n")
        for _ in range(4):
            clock.advance(0.1)
            client.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertEqual(
            transport.value(),
            b"-ERR rmux: request not completed within the local read timeout\r\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_nextRequestStartsItsOwnClock(self):
        """
        A read that completes one request and starts another starts the
        other's clock.
        """
        client, transport, router, clock = makeClient(localReadTimeout="500")
        client.dataReceived(b"*2\r\n$3\r\nGET\r\n")
        clock.advance(0.4)
        client.dataReceived(b"$1\r\na\r\n*2\r\n$3\r\nGET\r\n")
        clock.advance(0.4)
        self.assertFalse(client.closing)
        clock.advance(0.1)
        self.assertTrue(client.closing)
        # The first GET's reply is still owed: it goes out before the error.
        router.routed[0][1].fill(b"$1\r\nv\r\n")
        self.assertEqual(
            transport.value(),
            b"$1\r\nv\r\n"
            b"-ERR rmux: request not completed within the local read timeout\r\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_queryBufferLimit(self):
        """
        A client holding more than its query buffer limit of an incomplete
        request is told why and closed, and what it held is let go.
        """
        client, transport, router, clock = makeClient(clientQueryBufferLimit="1kb")
        client.dataReceived(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n" + b"x" * 900)
        self.assertFalse(transport.disconnecting)
        client.dataReceived(b"x" * 200)
        self.assertEqual(
            transport.value(),
            b"-ERR rmux: request over the query buffer limit (clientQueryBufferLimit, "
            b"1024 bytes)\r\n",
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(client.factory.partialBytes, 0)

    def test_bigValueReceivedInPlace(self):
        """
        The bytes of a big value received straight into its buffer count
        too; once the client is dropped, nothing is received into it.
        """
        client, transport, router, clock = makeClient(clientQueryBufferLimit="200kb")
        client.dataReceived(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n" + b"x" * 10)
        self.assertIsNotNone(client.sink)
        client.bodyReceived(150 * 1024)
        self.assertFalse(client.closing)
        client.bodyReceived(100 * 1024)
        self.assertTrue(client.closing)
        self.assertIsNone(client.sink)
        self.assertIn(b"clientQueryBufferLimit", transport.value())
        self.assertEqual(client.factory.partialBytes, 0)

    def test_totalOverClients(self):
        """
        Past the total for incomplete requests, the client holding the most
        is closed with an error; a lone client may hold more.
        """
        first, firstTransport, router, clock = makeClient(queryBuffersLimit="10kb")
        factory = first.factory
        second = factory.buildProtocol(UNIXAddress(None))
        secondTransport = StringTransport()
        second.makeConnection(secondTransport)
        header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n"
        first.dataReceived(header + b"x" * 12000)
        self.assertFalse(firstTransport.disconnecting)
        second.dataReceived(header + b"x" * 3000)
        self.assertTrue(firstTransport.disconnecting)
        self.assertIn(b"more than queryBuffersLimit", firstTransport.value())
        self.assertFalse(secondTransport.disconnecting)
        self.assertEqual(factory.partialBytes, second.partial)
        second.connectionLost(Failure(ConnectionDone()))
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.partialBytes, 0)


class GaugeTests(TestCase):
    """
    Operators' gauges after blocking commands.
    """

    @inlineCallbacks
    def test_pinnedDropsWhenClientsLeave(self):
        """
        Five clients' BLPOPs end and the clients leave: no dedicated
        connection counts as in use, though they are kept open for the next
        ones; and the waits are not in the backend's latency.
        """
        from rmux.stats import listenerSnapshot

        server = startRedis(self)
        rmux = startRmux(self, [server])
        threads = ThreadedClients(self, size=5)
        replies = yield DeferredList([
            threads.run(lambda: readReplies(
                sendOnly(rmux.path, command("BLPOP", "nothing", "0.2")), 1))
            for _ in range(5)
        ])
        self.assertEqual([r for ok, r in replies], [[None]] * 5)
        deadline = reactor.seconds() + 5
        while rmux.factory.clients and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)
        (pool,) = rmux.pools
        self.assertEqual(pool.pinned, 5)
        (backend,) = listenerSnapshot(rmux.factory, rmux.pools, None)["backends"]
        self.assertEqual((backend["pinned"], backend["connectionsInUse"]), (0, 0))
        self.assertLess(pool.stats.latency.sum, 0.2)


class SubscribedHub:
    """
    A hub for which every client is subscribed.
    """

    def isSubscribed(self, client):
        return True


class SoftLimitTests(SynchronousTestCase):
    def test_pubsubSoftLimit(self):
        """
        A subscribed client may stay over the soft limit for the soft time,
        not longer; dropping under it starts the time again.
        """
        from tests.transports import BufferedTransport

        client, transport, router, clock = makeClient(
            transportClass=BufferedTransport, pubsubOutputSoftLimit="1kb",
            pubsubOutputSoftTime="1000",
        )
        client.factory.hub = SubscribedHub()
        client.usedPubSub = True
        client.pauseProducing()
        transport._tempDataLen = 2000
        client.reply(b"+x\r\n")
        clock.advance(0.9)
        client.reply(b"+x\r\n")
        self.assertFalse(transport.disconnecting)
        transport._tempDataLen = 10
        client.reply(b"+x\r\n")
        transport._tempDataLen = 2000
        clock.advance(0.5)
        client.reply(b"+x\r\n")
        clock.advance(0.6)
        client.reply(b"+x\r\n")
        self.assertFalse(transport.disconnecting)
        clock.advance(0.5)
        client.reply(b"+x\r\n")
        self.assertTrue(transport.disconnecting)
