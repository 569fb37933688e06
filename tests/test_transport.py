"""
Tests for L{rmux.transport}: immediate writes and the recv-reading UNIX
transports.
"""

import os
import shutil
import socket
import tempfile

from twisted.internet import reactor, tcp, unix
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.error import ConnectionDone
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from rmux.interfaces import ISinkProtocol
from rmux.resp import BodySink

try:
    from rmux import _speedups
except ImportError:
    _speedups = None

from rmux.transport import (
    FastClientCreator, TCPClient, TCPPort, TCPServer,
    TCPServerEndpoint, UNIXClient, UNIXServer, UNIXServerEndpoint,
    TWISTED_INTERNALS, _GatheringWrite, knowsWriteBuffer, setNoDelay, unsentBytes, writeNow,
    writeSequenceNow,
)


class FakeTransport:
    """
    The parts of a Twisted stream transport that L{writeNow} looks at,
    over a real socket.
    """

    def __init__(self, sock):
        self.socket = sock
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.offset = 0
        self.connected = True
        self.disconnecting = False
        self.written = []

    def write(self, data):
        self.written.append(data)

    def writeSequence(self, pieces):
        self.written.append(list(pieces))

    def _maybePauseProducer(self):
        self.pauseChecked = True

    def startWriting(self):
        self.writing = True


class SocketPairMixin:
    """
    C{self.ours}, a non-blocking socket, connected to C{self.peer}.
    """

    def setUp(self):
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)


class WriteNowTests(SocketPairMixin, SynchronousTestCase):

    def test_sendsAtOnce(self):
        transport = FakeTransport(self.ours)
        writeNow(transport, b"+OK\r\n")
        self.assertEqual(self.peer.recv(100), b"+OK\r\n")
        self.assertEqual(transport.written, [])

    def test_queuedDataKeepsOrder(self):
        """
        With data already queued, the new data goes behind it.
        """
        transport = FakeTransport(self.ours)
        transport._tempDataBuffer.append(b"first")
        writeNow(transport, b"second")
        self.assertEqual(transport.written, [b"second"])
        self.peer.setblocking(False)
        self.assertRaises(BlockingIOError, self.peer.recv, 100)

    def test_partialSendQueuesTheRest(self):
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = FakeTransport(self.ours)
        data = os.urandom(1 << 20)
        writeNow(transport, data)
        # The rest becomes the send buffer as it is, not a copy.
        self.assertEqual(transport.written, [])
        self.assertIs(transport.dataBuffer, data)
        self.assertTrue(0 < transport.offset < len(data))
        self.assertEqual(self.peer.recv(1 << 20, socket.MSG_PEEK)[:10], data[:10])
        self.assertTrue(transport.pauseChecked)
        self.assertTrue(transport.writing)

    def test_sendBufferRaisedOnce(self):
        """
        A transport with a C{backlogSendBuffer} raises its socket's send
        buffer the first time a write does not fit, and offers the rest
        again at once.
        """
        with open("/proc/sys/net/core/wmem_max") as f:
            wmemMax = int(f.read())
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        small = self.ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        transport = FakeTransport(self.ours)
        transport.backlogSendBuffer = 1 << 20
        transport.sendBufferRaised = False
        data = os.urandom(4 << 20)
        writeNow(transport, data)
        self.assertTrue(transport.sendBufferRaised)
        raised = self.ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.assertEqual(raised, 2 * min(1 << 20, wmemMax))
        if raised > small:
            # The kernel's accounting puts more than a byte per byte.
            self.assertGreater(transport.offset, small)
        self.assertIs(transport.dataBuffer, data)
        # Once only: shrunk again, drained, and written to again, the
        # buffer stays as it is.
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        FakeTransport.__init__(transport, self.ours)
        self.peer.setblocking(False)
        while True:
            try:
                self.peer.recv(1 << 20)
            except BlockingIOError:
                break
        writeNow(transport, data)
        self.assertTrue(0 < transport.offset < len(data))
        self.assertEqual(self.ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), small)

    def test_noSocket(self):
        class Plain:
            def __init__(self):
                self.written = []

            def write(self, data):
                self.written.append(data)

        transport = Plain()
        writeNow(transport, b"x")
        self.assertEqual(transport.written, [b"x"])


class WriteSequenceNowTests(SocketPairMixin, SynchronousTestCase):

    def test_sendsAtOnce(self):
        """
        With nothing queued, the pieces go out in one C{sendmsg}.
        """
        transport = FakeTransport(self.ours)
        writeSequenceNow(transport, [b"*1\r\n", b"$4\r\nPING", b"\r\n"])
        self.assertEqual(self.peer.recv(100), b"*1\r\n$4\r\nPING\r\n")
        self.assertEqual(transport.written, [])

    def test_queuedDataKeepsOrder(self):
        transport = FakeTransport(self.ours)
        transport._tempDataBuffer.append(b"first")
        writeSequenceNow(transport, [b"a", b"b"])
        self.assertEqual(transport.written, [[b"a", b"b"]])

    def test_partialSendKeepsThePieces(self):
        """
        The piece the socket stopped in becomes the send buffer as it is,
        and the pieces after it are queued, none of them joined.
        """
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = FakeTransport(self.ours)
        big = os.urandom(1 << 20)
        pieces = [b"head", big, b"\r\n", big]
        writeSequenceNow(transport, pieces)
        self.assertIs(transport.dataBuffer, big)
        self.assertTrue(0 < transport.offset < len(big))
        self.assertEqual(transport.written, [[b"\r\n", big]])
        self.assertEqual(self.peer.recv(1 << 20, socket.MSG_PEEK)[:14], b"head" + big[:10])

    def test_partialSendOfTheLastPiece(self):
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = FakeTransport(self.ours)
        big = os.urandom(1 << 20)
        writeSequenceNow(transport, [b"head", big])
        self.assertIs(transport.dataBuffer, big)
        self.assertEqual(transport.written, [])
        self.assertTrue(transport.pauseChecked)
        self.assertTrue(transport.writing)


class Queue(_GatheringWrite):
    """
    The buffer state of a Twisted transport, for L{_GatheringWrite}.
    """

    SEND_LIMIT = 100

    def __init__(self, dataBuffer, offset, pieces):
        self.dataBuffer = dataBuffer
        self.offset = offset
        self._tempDataBuffer = pieces
        self._tempDataLen = sum(map(len, pieces))

    def queued(self):
        return bytes(self.dataBuffer[self.offset:]) + b"".join(self._tempDataBuffer)


class GatheringWriteTests(SynchronousTestCase):
    def test_bigPieceSentAsItIs(self):
        big = b"x" * 1000
        queue = Queue(b"done", 4, [big, b"tail"])
        queue._takeQueued()
        self.assertIs(queue.dataBuffer, big)
        self.assertEqual((queue.offset, queue._tempDataBuffer, queue._tempDataLen),
                         (0, [b"tail"], 4))

    def test_onlyTheLimitIsCopied(self):
        """
        Behind other bytes, only as much of a big piece is copied as fills
        C{SEND_LIMIT}; the rest stays queued as a view of it.
        """
        big = bytes(range(200)) * 5
        queue = Queue(b"..left", 2, [b"ab" * 10, big, b"tail"])
        before = queue.queued()
        queue._takeQueued()
        self.assertEqual(len(queue.dataBuffer), 100)
        self.assertEqual(queue.queued(), before)
        self.assertEqual(queue._tempDataLen, len(before) - 100)
        self.assertIsInstance(queue._tempDataBuffer[0], memoryview)
        self.assertIs(queue._tempDataBuffer[0].obj, big)

    def test_smallPiecesJoined(self):
        queue = Queue(b"", 0, [b"a" * 60, b"b" * 60, b"c" * 60])
        queue._takeQueued()
        self.assertEqual(queue.dataBuffer, b"a" * 60 + b"b" * 40)
        self.assertEqual(queue.queued(), b"a" * 60 + b"b" * 60 + b"c" * 60)


class Echo(Protocol):
    def dataReceived(self, data):
        writeNow(self.transport, data)


class Collect(Protocol):
    def __init__(self):
        self.received = Deferred()

    def dataReceived(self, data):
        self.received.callback((data, self.transport))


class UNIXTests(TestCase):
    @inlineCallbacks
    def test_roundTrip(self):
        """
        The endpoint listens with the recv-reading server transport, and
        L{FastClientCreator} connects with the recv-reading client one.
        """
        directory = tempfile.mkdtemp(prefix="rmux-tr-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s.sock")
        port = yield UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=True).listen(
            Factory.forProtocol(Echo)
        )
        self.addCleanup(port.stopListening)
        client = yield FastClientCreator(reactor, Collect).connectUNIX(path)
        self.addCleanup(client.transport.loseConnection)
        self.assertIsInstance(client.transport, UNIXClient)
        self.assertEqual(client.transport.bufferSize, UNIXServer.bufferSize)
        client.transport.write(b"PING")
        data, transport = yield client.received
        self.assertEqual(data, b"PING")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertIs(port.transport, UNIXServer)



class NameTransport(Protocol):
    """
    Answers anything with the name of its transport's class.
    """

    def dataReceived(self, data):
        writeNow(self.transport, type(self.transport).__name__.encode())


class TCPServerEndpointTests(TestCase):
    """
    L{TCPServerEndpoint} listens with rmux's TCP connections, on IPv4 and
    IPv6 interfaces alike.
    """

    @inlineCallbacks
    def roundTrip(self, interface):
        port = yield TCPServerEndpoint(reactor, 0, backlog=7, interface=interface).listen(
            Factory.forProtocol(NameTransport))
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, TCPPort)
        self.assertEqual(port.backlog, 7)
        client = yield FastClientCreator(reactor, Collect).connectTCP(
            interface, port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(b"?")
        data, transport = yield client.received
        self.assertEqual(data, TCPServer.__name__.encode())
        return port

    def test_ipv4(self):
        return self.roundTrip("127.0.0.1")

    @inlineCallbacks
    def test_ipv6(self):
        try:
            probe = socket.socket(socket.AF_INET6)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            raise SkipTest("no IPv6 loopback here")
        port = yield self.roundTrip("::1")
        self.assertEqual(port.getHost().type, "TCP")
        self.assertEqual(port.getHost().host, "::1")

    @inlineCallbacks
    def test_noDelay(self):
        """
        Accepted connections, and backend connections through
        L{setNoDelay} (under TLS too: it finds the TCP transport beneath),
        send small writes at once, without Nagle's wait for an ACK.
        """
        accepted = []

        class Keep(Protocol):
            def connectionMade(self):
                accepted.append(self.transport)

        port = yield TCPServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Keep))
        self.addCleanup(port.stopListening)
        client = yield FastClientCreator(reactor, Protocol).connectTCP(
            "127.0.0.1", port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        self.assertFalse(client.transport.getTcpNoDelay())
        setNoDelay(client.transport)
        self.assertTrue(client.transport.getTcpNoDelay())

        class Wrapper:
            transport = client.transport

        client.transport.setTcpNoDelay(False)
        setNoDelay(Wrapper())
        self.assertTrue(client.transport.getTcpNoDelay())
        setNoDelay(object())  # a unix transport: nothing to do
        while not accepted:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(accepted[0].getTcpNoDelay())

    def test_otherReactors(self):
        """
        On a reactor that is not a POSIX one (a test's), it listens as
        Twisted's endpoint would.
        """
        from twisted.internet.testing import MemoryReactor

        memory = MemoryReactor()
        TCPServerEndpoint(memory, 1234, backlog=9, interface="127.0.0.1").listen(Factory())
        ((port, factory, backlog, interface),) = memory.tcpServers
        self.assertEqual((port, backlog, interface), (1234, 9, "127.0.0.1"))


class Drain(Protocol):
    """
    Reads everything, and fires C{done} with it once C{expected} bytes came.
    """

    def __init__(self, expected):
        self.expected = expected
        self.chunks = []
        self.size = 0
        self.done = Deferred()

    def dataReceived(self, data):
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= self.expected and not self.done.called:
            self.done.callback(b"".join(self.chunks))


class TCPTests(TestCase):
    @inlineCallbacks
    def test_bigPiecesArriveWhole(self):
        """
        L{FastClientCreator} connects over TCP with L{TCPClient}, and
        megabyte pieces queued behind each other arrive byte for byte.
        """
        pieces = [b"head", os.urandom(1 << 20), b"\r\n", os.urandom(3 << 20), b"end"]
        expected = b"".join(pieces)
        drain = Drain(2 * len(expected))
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: drain), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield FastClientCreator(reactor, Protocol).connectTCP(
            "127.0.0.1", port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        self.assertIsInstance(client.transport, TCPClient)
        self.assertEqual(client.transport.bufferSize, UNIXServer.bufferSize)
        client.transport.writeSequence(pieces)
        writeSequenceNow(client.transport, pieces)
        received = yield drain.done
        self.assertEqual(len(received), 2 * len(expected))
        self.assertTrue(received == expected * 2)



class Send(Protocol):
    """
    Sends C{data} once connected, then closes.
    """

    def __init__(self, data):
        self.data = data

    def connectionMade(self):
        self.transport.write(self.data)
        self.transport.loseConnection()


class SinkCollect(Protocol):
    """
    Offers a sink of C{size} bytes, then collects the rest with
    C{dataReceived}.
    """

    def __init__(self, size):
        self.sink = BodySink(_speedups.newBody(size), 0)
        self.body = self.sink.body
        self.sizes = []
        self.after = b""
        self.lost = Deferred()

    def bodyReceived(self, size):
        self.sizes.append(size)
        self.sink.filled += size
        if self.sink.filled == len(self.sink.body):
            self.sink = None

    def dataReceived(self, data):
        self.after += data

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


class ISinkProtocolTests(SynchronousTestCase):
    """
    rmux's client and backend protocols offer big values a sink.
    """

    def test_provided(self):
        from zope.interface.verify import verifyObject

        from rmux.pool import BackendProtocol
        from rmux.proxy import ClientProtocol

        for protocol in (ClientProtocol(), BackendProtocol()):
            self.assertTrue(verifyObject(ISinkProtocol, protocol))
            self.assertIsNone(protocol.sink)


class SinkReadTests(TestCase):
    """
    rmux's transports receive into their protocol's C{sink}, when it has
    one, and never more than it holds.
    """

    if _speedups is None:
        skip = "the C accelerator was not built"

    @inlineCallbacks
    def receive(self, connect, listen, sent):
        port = listen(Factory.forProtocol(lambda: Send(sent)))
        self.addCleanup(port.stopListening)
        protocol = yield connect(port)
        yield protocol.lost
        return protocol, protocol.reason

    def overTCP(self, size, sent):
        return self.receive(
            lambda port: FastClientCreator(reactor, SinkCollect, size).connectTCP(
                "127.0.0.1", port.getHost().port),
            lambda factory: reactor.listenTCP(0, factory, interface="127.0.0.1"),
            sent)

    def overUNIX(self, size, sent):
        directory = tempfile.mkdtemp(prefix="rmux-tr-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "s.sock")
        return self.receive(
            lambda port: FastClientCreator(reactor, SinkCollect, size).connectUNIX(path),
            lambda factory: reactor.listenUNIX(path, factory),
            sent)

    @inlineCallbacks
    def test_intoTheSinkThenAsUsual(self):
        """
        The sink's bytes go into it, the rest to C{dataReceived}, over TCP
        and UNIX sockets alike.
        """
        value = os.urandom(3 << 20)
        for receive in (self.overTCP, self.overUNIX):
            protocol, reason = yield receive(len(value), value + b"after")
            self.assertTrue(protocol.body == value)
            self.assertEqual(sum(protocol.sizes), len(value))
            self.assertEqual(protocol.after, b"after")
            reason.trap(ConnectionDone)

    @inlineCallbacks
    def test_closedWhileSinking(self):
        """
        A peer that closes before the sink is full ends the connection
        cleanly, as at any other point.
        """
        for receive in (self.overTCP, self.overUNIX):
            protocol, reason = yield receive(1 << 20, b"x" * 1000)
            self.assertEqual(sum(protocol.sizes), 1000)
            self.assertIsNotNone(protocol.sink)
            reason.trap(ConnectionDone)


class Connected(Protocol):
    """
    Fires C{made} with itself once connected.
    """

    def __init__(self, made):
        self.made = made

    def connectionMade(self):
        self.made.callback(self)


class TwistedInternalsTests(TestCase):
    """
    The attributes of Twisted's write buffer that rmux relies on exist on
    the real transports of this Twisted release, Twisted's own classes and
    rmux's subclasses, on both ends of TCP and UNIX connections; and where
    one would be missing, rmux says so once and keeps every limit.
    """

    @inlineCallbacks
    def transports(self, listen, connect):
        """
        The server and client transports of one real connection.
        """
        accepted = Deferred()
        port = yield listen(Factory.forProtocol(lambda: Connected(accepted)))
        self.addCleanup(port.stopListening)
        client = yield connect(port)
        self.addCleanup(client.transport.loseConnection)
        server = yield accepted
        self.addCleanup(server.transport.loseConnection)
        return server.transport, client.transport

    def assertKnown(self, transport):
        missing = [name for name in TWISTED_INTERNALS if not hasattr(transport, name)]
        self.assertEqual(missing, [], type(transport))
        self.assertTrue(knowsWriteBuffer(transport))
        self.assertEqual(unsentBytes(transport), 0)

    @inlineCallbacks
    def test_tcp(self):
        def connect(port):
            return FastClientCreator(reactor, Protocol).connectTCP(
                "127.0.0.1", port.getHost().port)

        for listen in (
            lambda factory: reactor.listenTCP(0, factory, interface="127.0.0.1"),
            lambda factory: TCPServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory),
        ):
            server, client = yield self.transports(listen, connect)
            self.assertIsInstance(server, tcp.Server)
            self.assertIsInstance(client, TCPClient)
            self.assertKnown(server)
            self.assertKnown(client)

    @inlineCallbacks
    def test_unix(self):
        directory = tempfile.mkdtemp(prefix="rmux-tw-")
        self.addCleanup(shutil.rmtree, directory, True)
        paths = iter(os.path.join(directory, name) for name in ("a.sock", "b.sock"))

        def connect(port):
            return FastClientCreator(reactor, Protocol).connectUNIX(port.getHost().name)

        for listen in (
            lambda factory: reactor.listenUNIX(next(paths), factory),
            lambda factory: UNIXServerEndpoint(reactor, next(paths)).listen(factory),
        ):
            server, client = yield self.transports(listen, connect)
            self.assertIsInstance(server, unix.Server)
            self.assertIsInstance(client, UNIXClient)
            self.assertKnown(server)
            self.assertKnown(client)

    def test_missingIsReportedOnceAndWritesTakeThePublicPath(self):
        """
        A Twisted transport class without one of the attributes is logged
        as critical once, and written to through C{write}.
        """

        class Renamed(TCPServer):
            def __init__(self, sock):
                self.socket = sock
                self.connected = True
                self.disconnecting = False
                self.written = []

            def write(self, data):
                self.written.append(data)

        events = []
        addObserver = globalLogPublisher.addObserver
        addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        one, other = socket.socketpair()
        self.addCleanup(one.close)
        self.addCleanup(other.close)
        transport = Renamed(one)
        writeNow(transport, b"a")
        writeNow(Renamed(one), b"b")
        self.assertEqual(transport.written, [b"a"])
        self.assertIsNone(unsentBytes(transport))
        critical = [e for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertIn("_tempDataBuffer, _tempDataLen", formatEvent(critical[0]))
