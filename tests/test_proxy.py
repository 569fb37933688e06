"""
Unit tests for L{rmux.proxy}: reply ordering, local commands and the local
timeouts, with a L{Clock} and a router stand-in whose replies the test
delivers in any order it likes.  (Everything involving Redis itself is in
L{tests.test_integration}, against real servers.)
"""

import gc
import weakref

from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rmux.commands import LOCAL, CommandTable
from rmux.local import HANDLERS
from rmux.config import fromFlags
from rmux.proxy import ProxyFactory
from rmux.resp import encodeCommand
from rmux.transport import unsentBytes
from tests.transports import BufferedTransport


class RecordingRouter:
    """
    Keeps every routed request so the test can answer it later.
    """

    pools = ()
    single = None

    def __init__(self):
        self.routed = []
        self.payloads = []

    def route(self, args, spec, waiter, sender, payload=None):
        self.routed.append((args, waiter, sender.db, sender.protocolVersion))
        self.payloads.append(payload)

    #: Where every batch of plain single-key commands may go whole, with
    #: several servers (None: the general path).
    passThroughTo = None

    def passThroughPool(self, commands):
        return self.passThroughTo

    def blockingRedirect(self, reply, redirects):
        return None

    def passThroughSender(self, sender):
        return sender

    #: What whenPlaced returns: None, or a Deferred the test fires.
    placed = None

    def whenPlaced(self):
        return self.placed

    def topologySnapshot(self):
        return {"kind": "servers", "counters": {}, "nodes": {}}

    def ready(self):
        return True


class RefusingPool:
    """
    The one backend of a test in which nothing may be passed through.
    """

    def __init__(self, testCase):
        self.testCase = testCase

    def send(self, *args):
        self.testCase.fail("passed through")


def makeClient(transportClass=StringTransport, **flags):
    values = {"socket": "/tmp/rmux-unit.sock", "unixConnections": "/tmp/r.sock"}
    values.update(flags)
    listener = fromFlags(values).listeners[0]
    clock = Clock()
    router = RecordingRouter()
    factory = ProxyFactory(clock, router, CommandTable.default(), listener)
    protocol = factory.buildProtocol(UNIXAddress(None))
    transport = transportClass(
        hostAddress=UNIXAddress(b"/tmp/rmux-unit.sock"),
        peerAddress=UNIXAddress(None),
    )
    protocol.makeConnection(transport)
    return protocol, transport, router, clock


class PassThroughTests(SynchronousTestCase):
    """
    Canonically encoded requests are forwarded as the client sent them.
    """

    def test_oneCommandKeepsItsBytes(self):
        client, transport, router, clock = makeClient()
        data = encodeCommand([b"GET", b"a"])
        client.dataReceived(data)
        client.dataReceived(b"GET b\r\n")
        self.assertEqual(router.payloads, [data, None])

    def test_pipelineForwardedWhole(self):
        """
        With one backend, a plain pipeline goes out as one payload with one
        waiter for all its replies, and the client gets them in order.
        """
        client, transport, router, clock = makeClient()
        sent = []

        class Single:
            def send(self, payload, waiter, db, protocolVersion, after, count):
                sent.append((self, payload, waiter, db, protocolVersion, count))

        router.single = Single()
        data = encodeCommand([b"SET", b"a", b"1"]) + encodeCommand([b"GET", b"a"])
        client.dataReceived(data)
        ((pool, payload, waiter, db, protocolVersion, count),) = sent
        self.assertEqual((pool, payload, count), (router.single, data, 2))
        self.assertEqual(router.routed, [])
        client.dataReceived(b"PING\r\n")
        waiter.fill(b"+OK\r\n")
        self.assertEqual(transport.value(), b"")
        waiter.fill(b"$1\r\n1\r\n")
        self.assertEqual(transport.value(), b"+OK\r\n$1\r\n1\r\n+PONG\r\n")
        self.assertEqual(client.factory.stats.responses, 3)

    def test_keyedPipelineToOneOfSeveral(self):
        """
        With several servers, a pipeline of single-key commands whose keys
        the router places on one server goes out whole; one with a command
        of another shape (MGET, split over servers) goes one by one.
        """
        client, transport, router, clock = makeClient()
        sent = []

        class Chosen:
            def send(self, payload, waiter, db, protocolVersion, after, count):
                sent.append((payload, count))

        router.passThroughTo = Chosen()
        data = encodeCommand([b"SET", b"a", b"1"]) + encodeCommand([b"INCR", b"b"])
        client.dataReceived(data)
        self.assertEqual(sent, [(data, 2)])
        client.dataReceived(encodeCommand([b"GET", b"a"]) + encodeCommand([b"MGET", b"a", b"b"]))
        self.assertEqual(len(sent), 1)
        self.assertEqual([args[0] for args, *_ in router.routed], [b"GET", b"MGET"])

    def test_wrongArityOrContainerGoesOneByOne(self):
        """
        A pipeline holding a command with the wrong number of arguments, or
        a command with subcommands, is handled command by command, so each
        gets what Redis would answer.
        """
        client, transport, router, clock = makeClient()
        router.single = RefusingPool(self)
        client.dataReceived(encodeCommand([b"get", b"a"]) + encodeCommand([b"GET"]))
        self.assertEqual(len(router.routed), 1)
        client.dataReceived(encodeCommand([b"Get", b"a"]) + encodeCommand([b"OBJECT", b"ENCODING", b"a"]))
        self.assertEqual(len(router.routed), 3)
        self.assertEqual(
            client.factory.plainArities, {b"get": 2, b"GET": 2, b"Get": 2, b"OBJECT": None}
        )

    def test_pipelineWithLocalCommandsGoesOneByOne(self):
        client, transport, router, clock = makeClient()
        router.single = RefusingPool(self)
        data = encodeCommand([b"GET", b"a"]) + encodeCommand([b"PING"])
        client.dataReceived(data)
        self.assertEqual(len(router.routed), 1)
        self.assertEqual(transport.value(), b"")


class OrderingTests(SynchronousTestCase):
    def test_repliesLeaveInRequestOrder(self):
        """
        Backend replies that arrive out of order are held until every
        earlier reply, including local ones, has been written.
        """
        client, transport, router, clock = makeClient()
        client.dataReceived(b"GET a\r\nPING\r\nGET b\r\nECHO x\r\n")
        self.assertEqual(transport.value(), b"")
        (_, first, _, _), (_, second, _, _) = router.routed
        second.fill(b"$1\r\nb\r\n")
        self.assertEqual(transport.value(), b"")
        first.fill(b"$1\r\na\r\n")
        self.assertEqual(
            transport.value(), b"$1\r\na\r\n+PONG\r\n$1\r\nb\r\n$1\r\nx\r\n"
        )

    def test_waitsOnceForAFirstMap(self):
        """
        While the router reads a first map, a command that needs to know
        its server at once (here a local one; MULTI, WATCH and blocking
        ones alike) waits for the read, with the commands behind it in
        order; forwarded ones wait in the router.  A client waits for one
        read only.
        """
        client, transport, router, clock = makeClient()
        router.placed = Deferred()
        client.dataReceived(b"CLIENT SETNAME n\r\nGET a\r\nPING\r\n")
        self.assertEqual((transport.value(), router.routed), (b"", []))
        read, router.placed = router.placed, Deferred()
        read.callback(None)
        self.assertEqual(transport.value(), b"+OK\r\n")
        router.routed[0][1].fill(b"$-1\r\n")
        self.assertEqual(transport.value(), b"+OK\r\n$-1\r\n+PONG\r\n")
        self.assertEqual((client.name, client.factory.stats.commands), (b"n", 3))
        client.dataReceived(b"PING\r\n")
        self.assertTrue(transport.value().endswith(b"+PONG\r\n+PONG\r\n"), transport.value())

    def test_localReplyWithNothingPendingIsImmediate(self):
        client, transport, router, clock = makeClient()
        client.dataReceived(b"PING\r\n")
        self.assertEqual(transport.value(), b"+PONG\r\n")

    def test_errorsKeepTheirPlace(self):
        """
        An error for a refused command does not overtake earlier replies
        (Go rmux wrote errors immediately).
        """
        client, transport, router, clock = makeClient()
        client.dataReceived(b"SET k1 a\r\nSCRIPT DEBUG YES\r\nGET k1\r\n")
        (_, first, _, _), (_, third, _, _) = router.routed
        third.fill(b"$1\r\na\r\n")
        first.fill(b"+OK\r\n")
        value = transport.value()
        self.assertTrue(value.startswith(b"+OK\r\n-ERR SCRIPT DEBUG"), value)
        self.assertTrue(value.endswith(b"$1\r\na\r\n"), value)

    def test_quitAfterPendingReplies(self):
        client, transport, router, clock = makeClient()
        client.dataReceived(b"GET a\r\nQUIT\r\nGET b\r\n")
        self.assertEqual(len(router.routed), 1)
        self.assertFalse(transport.disconnecting)
        router.routed[0][1].fill(b"$-1\r\n")
        self.assertEqual(transport.value(), b"$-1\r\n+OK\r\n")
        self.assertTrue(transport.disconnecting)

    def test_outputLimitWithoutTwistedsBuffer(self):
        """
        With a transport that does not say what it holds, what was written
        since the client stopped reading counts against the limit: it is
        never skipped.
        """
        client, transport, router, clock = makeClient(clientOutputLimit="1000")
        self.assertIsNone(unsentBytes(transport))
        client.dataReceived(b"GET a\r\nGET b\r\n")
        client.pauseProducing()
        client.reply(b"+" + b"x" * 900 + b"\r\n")
        router.routed[0][1].fill(b"$1\r\nx\r\n")
        self.assertFalse(transport.disconnecting)
        client.resumeProducing()
        client.pauseProducing()
        router.routed[1][1].fill(b"$1\r\nx\r\n")
        self.assertFalse(transport.disconnecting)
        client.reply(b"+" + b"x" * 1000 + b"\r\n")
        self.assertTrue(transport.disconnecting)

    def test_dbAndProtocolTravelWithTheRequest(self):
        client, transport, router, clock = makeClient()
        client.dataReceived(b"GET a\r\nSELECT 3\r\nHELLO 3\r\nGET b\r\n")
        self.assertEqual(
            [(args, db, version) for args, slot, db, version in router.routed],
            [([b"GET", b"a"], 0, 2), ([b"GET", b"b"], 3, 3)],
        )

    def test_goneClientFreedAtOnce(self):
        """
        A client that has gone is freed as soon as nothing refers to it,
        without waiting for the cycle collector: with a new connection per
        request, that would be every request's garbage.
        """
        client, transport, router, clock = makeClient()
        client.dataReceived(b"GET a\r\nSET b c\r\n")
        router.routed[0][1].fill(b"$-1\r\n")
        client.connectionLost(Failure(ConnectionDone()))
        transport.producer = None  # as Twisted's transports do
        gone = weakref.ref(client)
        gc.disable()
        self.addCleanup(gc.enable)
        del client, transport
        router.routed[:] = []
        self.assertIsNone(gone())

    def test_replyForDisconnectedClientIsDropped(self):
        client, transport, router, clock = makeClient()
        client.dataReceived(b"GET a\r\n")
        client.connectionLost(Failure(ConnectionDone()))
        router.routed[0][1].fill(b"$-1\r\n")
        self.assertEqual(transport.value(), b"")


class LocalCommandTests(SynchronousTestCase):
    def exchange(self, data, **flags):
        client, transport, router, clock = makeClient(**flags)
        client.dataReceived(data)
        return transport.value()

    def test_everyLocalCommandHasAHandler(self):
        """
        The command table sends no command to rmux's own handlers that
        they do not have (CLIENT HELP once closed the connection).
        """
        local = [spec.name for spec in CommandTable.default() if spec.policy == LOCAL]
        self.assertEqual([name for name in local if name not in HANDLERS], [])

    def test_clientHelpIsTheServers(self):
        client, transport, router, clock = makeClient()
        client.dataReceived(b"CLIENT HELP\r\n")
        self.assertEqual([args for args, slot, db, version in router.routed],
                         [[b"CLIENT", b"HELP"]])

    def test_ping(self):
        self.assertEqual(
            self.exchange(b"PING\r\nping hi\r\nPING a b\r\n"),
            b"+PONG\r\n$2\r\nhi\r\n-ERR wrong number of arguments for 'ping' command\r\n",
        )

    def test_selectWithoutKnownDbCount(self):
        self.assertEqual(
            self.exchange(b"SELECT 1\r\nSELECT 01\r\nSELECT 1.5\r\n"),
            b"+OK\r\n-ERR value is not an integer or out of range\r\n"
            b"-ERR value is not an integer or out of range\r\n",
        )

    def test_authWithoutPassword(self):
        self.assertEqual(
            self.exchange(b"AUTH secret\r\nAUTH default x\r\nAUTH bob x\r\n"),
            b"-ERR AUTH <password> called without any password configured for the "
            b"default user. Are you sure your configuration is correct?\r\n"
            b"+OK\r\n"
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        )

    def test_hello2IsAFlatArray(self):
        value = self.exchange(b"HELLO 2\r\n")
        self.assertTrue(value.startswith(b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), value)

    def test_helloErrors(self):
        self.assertEqual(
            self.exchange(b"HELLO x\r\nHELLO 3 BOGUS\r\nHELLO 3 SETNAME\r\n"),
            b"-ERR Protocol version is not an integer or out of range\r\n"
            b"-ERR Syntax error in HELLO option 'BOGUS'\r\n"
            b"-ERR Syntax error in HELLO option 'SETNAME'\r\n",
        )

    def test_clientSetinfo(self):
        self.assertEqual(
            self.exchange(
                b"CLIENT SETINFO LIB-NAME redis-py\r\nCLIENT SETINFO lib-ver 8.1\r\n"
                b"CLIENT SETINFO color red\r\nCLIENT SETNAME 'a b'\r\n"
            ),
            b"+OK\r\n+OK\r\n-ERR Unrecognized option 'color'\r\n"
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
        )

    def test_infoSections(self):
        """
        With no server to ask (the router here has none), INFO is rmux's
        own sections, and INFO rmux asks nobody else.
        """
        client, transport, router, clock = makeClient()
        client.dataReceived(b"INFO rmux\r\n")
        body = transport.value().decode()
        self.assertTrue(body.startswith("$"), body)
        self.assertIn("# Rmux\r\nrmux_version:", body)
        self.assertIn("rmux_connected_clients:1\r\n", body)
        self.assertNotIn("# Backends", body)
        transport.clear()
        client.dataReceived(b"INFO\r\n")
        body = transport.value().decode()
        for section in ("# Rmux", "# Backends"):
            self.assertIn(section + "\r\n", body)
        self.assertIn("total_endpoints:0\r\n", body)

    def test_protocolErrorReplyThenClose(self):
        client, transport, router, clock = makeClient()
        client.dataReceived(b"PING\r\n*1\r\n$x\r\n")
        self.assertEqual(
            transport.value(), b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
        )
        self.assertTrue(transport.disconnecting)


class LocalTimeoutTests(SynchronousTestCase):
    def test_idleTimeout(self):
        """
        A client that sends nothing for the idle timeout is closed; one with
        a request in flight is not.
        """
        client, transport, router, clock = makeClient(idleTimeout="1000")
        clock.advance(0.9)
        client.dataReceived(b"PING\r\n")
        clock.advance(0.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_idleTimeoutSparesBusyClients(self):
        client, transport, router, clock = makeClient(idleTimeout="1000")
        client.dataReceived(b"GET a\r\n")
        clock.advance(5)
        self.assertFalse(transport.disconnecting)
        router.routed[0][1].fill(b"$-1\r\n")
        clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_readTimeout(self):
        """
        A request that has begun must be completed within the local read
        timeout; an idle client is not affected.
        """
        client, transport, router, clock = makeClient(localReadTimeout="500")
        clock.advance(5)
        self.assertFalse(transport.disconnecting)
        client.dataReceived(b"*2\r\n$3\r\nGET\r\n")
        clock.advance(0.5)
        self.assertEqual(
            transport.value(),
            b"-ERR rmux: request not completed within the local read timeout\r\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_writeTimeout(self):
        """
        A client that stops reading its replies for the local write timeout
        is dropped.
        """
        client, transport, router, clock = makeClient(localWriteTimeout="300")
        client.pauseProducing()
        clock.advance(0.2)
        self.assertFalse(transport.disconnecting)
        client.resumeProducing()
        clock.advance(0.5)
        client.pauseProducing()
        clock.advance(0.3)
        self.assertTrue(transport.disconnecting)

    def test_noTimersWithoutTimeouts(self):
        client, transport, router, clock = makeClient()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_disconnectCancelsTimer(self):
        client, transport, router, clock = makeClient(idleTimeout="1000")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class OverloadTests(SynchronousTestCase):
    def test_maxClients(self):
        """
        Past maxClients, a new client gets Redis's error and is closed; it
        is not counted.
        """
        first, firstTransport, router, clock = makeClient(maxClients="1")
        factory = first.factory
        second = factory.buildProtocol(UNIXAddress(None))
        transport = StringTransport()
        second.makeConnection(transport)
        self.assertEqual(transport.value(), b"-ERR max number of clients reached\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(factory.clients), 1)
        second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(factory.clients), 1)

    def test_slowReaderStopsBeingRead(self):
        """
        A client that does not read its replies is not read from either, so
        it cannot make rmux queue its requests without bound.
        """
        client, transport, router, clock = makeClient()
        client.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        client.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_tooManyOutstanding(self):
        client, transport, router, clock = makeClient()
        client.factory.maxPending = 10
        client.dataReceived(b"GET a\r\n" * 11)
        self.assertEqual(transport.producerState, "paused")
        for args, slot, db, version in router.routed[:6]:
            slot.fill(b"$-1\r\n")
        self.assertEqual(transport.producerState, "producing")

    def test_outputLimit(self):
        """
        A client whose unsent replies exceed the output limit is dropped.
        """
        client, transport, router, clock = makeClient(
            clientOutputLimit="1000", transportClass=BufferedTransport)
        client.pauseProducing()
        transport._tempDataLen = 999
        client.reply(b"+OK\r\n")
        self.assertFalse(transport.disconnecting)
        transport._tempDataLen = 1001
        client.reply(b"+OK\r\n")
        self.assertTrue(transport.disconnecting)
