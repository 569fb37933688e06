"""
Tests for L{rmux.poller}: accepted connections wait for their events in
rmux's own epoll set, which the reactor watches as one reader.  Real
sockets, the real reactor.
"""

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from rmux import poller as pollerModule
from rmux.poller import ConnectionPoller
from rmux.transport import FastClientCreator, TCPServerEndpoint, UNIXServer, UNIXServerEndpoint


class Record(Protocol):
    """
    A server protocol that answers each read with its length, and records
    its life in its factory.
    """

    def connectionMade(self):
        self.received = b""
        self.lost = Deferred()
        self.factory.made.append(self)
        if self.factory.waiting:
            self.factory.waiting.pop(0).callback(self)

    def dataReceived(self, data):
        self.received += data
        if data == b"boom":
            1 / 0
        if data == b"abort":
            self.transport.abortConnection()
            return
        self.transport.write(b"%d" % len(data))

    def connectionLost(self, reason):
        # The type: a Failure would make the Deferred fail.
        self.lost.callback(reason.type)


class RecordFactory(Factory):
    protocol = Record

    def __init__(self):
        self.made = []
        self.waiting = []

    def nextConnection(self):
        waiting = Deferred()
        self.waiting.append(waiting)
        return waiting


class Client(Protocol):
    """
    A client that collects what it receives and fires C{lost} at the end.
    """

    def __init__(self):
        self.received = b""
        self.lost = Deferred()
        self.arrived = None

    def dataReceived(self, data):
        self.received += data
        if self.arrived is not None:
            arrived, self.arrived = self.arrived, None
            arrived.callback(self.received)

    def nextData(self):
        self.arrived = Deferred()
        return self.arrived

    def connectionLost(self, reason):
        # The type: a Failure would make the Deferred fail.
        self.lost.callback(reason.type)


class PollerTests(TestCase):
    """
    Connections accepted by rmux's ports go through the reactor's
    L{ConnectionPoller}.
    """

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "p.sock")
        self.factory = RecordFactory()
        return UNIXServerEndpoint(reactor, self.path).listen(self.factory).addCallback(
            self._listening)

    def _listening(self, port):
        self.port = port
        self.addCleanup(port.stopListening)

    @inlineCallbacks
    def connect(self, data=None):
        """
        Connect a client, send C{data}, and return it with its server side
        protocol once the server has it (and its reply, if data was sent).
        """
        made = self.factory.nextConnection()
        client = yield FastClientCreator(reactor, Client).connectUNIX(self.path)
        self.addCleanup(lambda: client.transport.loseConnection() if client.transport.connected else None)
        server = yield made
        if data is not None:
            arrived = client.nextData()
            client.transport.write(data)
            yield arrived
        return client, server

    def poller(self):
        return ConnectionPoller.forReactor(reactor)

    @inlineCallbacks
    def test_oneReaderForTheReactor(self):
        """
        The reactor watches the poller, not the connections; the poller
        leaves the reactor once its last connection has closed, with the
        reason the reactor would have given.
        """
        pairs = []
        for data in (b"a", b"bb", b"ccc"):
            pairs.append((yield self.connect(data)))
        poller = self.poller()
        self.assertEqual([client.received for client, _ in pairs], [b"1", b"2", b"3"])
        readers = reactor.getReaders()
        self.assertIn(poller, readers)
        for _, server in pairs:
            self.assertIsInstance(server.transport, UNIXServer)
            self.assertIs(server.transport.poller, poller)
            self.assertNotIn(server.transport, readers)
        self.assertEqual(len(poller), 3)
        for client, _ in pairs:
            client.transport.loseConnection()
        reasons = yield gatherResults([server.lost for _, server in pairs])
        self.assertEqual(set(reasons), {ConnectionDone})
        self.assertEqual(len(poller), 0)
        self.assertNotIn(poller, reactor.getReaders())

    @inlineCallbacks
    def test_writesWaitForTheSocket(self):
        """
        What the socket does not take is sent when it is writable, through
        the poller; then C{loseConnection} closes the connection.
        """
        client, server = yield self.connect()
        client.transport.pauseProducing()
        big = os.urandom(8 << 20)
        server.transport.write(big)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(server.transport.pollEvents & pollerModule._OUT)
        server.transport.loseConnection()
        client.transport.resumeProducing()
        yield client.lost
        self.assertEqual(len(client.received), len(big))
        self.assertTrue(client.received == big)
        reason = yield server.lost
        self.assertIs(reason, ConnectionDone)

    @inlineCallbacks
    def test_errorInTheProtocol(self):
        """
        An exception from the protocol closes that connection, logged, as
        the reactor does; the others are served.
        """
        other, _ = yield self.connect(b"x")
        client, server = yield self.connect()
        client.transport.write(b"boom")
        reason = yield server.lost
        self.assertIs(reason, ZeroDivisionError)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        yield client.lost
        arrived = other.nextData()
        other.transport.write(b"yy")
        self.assertEqual((yield arrived), b"12")

    @inlineCallbacks
    def test_abort(self):
        """
        An aborted connection is closed at once, and its protocol told so.
        """
        client, server = yield self.connect()
        client.transport.write(b"abort")
        reason = yield server.lost
        self.assertIs(reason, ConnectionAborted)
        # (A UNIX socket has no reset to send: the client sees it closed.)
        yield client.lost
        self.assertEqual(len(self.poller()), 0)

    @inlineCallbacks
    def test_batches(self):
        """
        More events than one batch takes are handled on the next turns.
        """
        self.patch(ConnectionPoller, "batchSize", 1)
        pairs = []
        for _ in range(4):
            pairs.append((yield self.connect()))
        arrivals = []
        for client, _ in pairs:
            arrivals.append(client.nextData())
            client.transport.write(b"four")
        self.assertEqual((yield gatherResults(arrivals)), [b"4"] * 4)

    @inlineCallbacks
    def test_reactorDropsThePoller(self):
        """
        When the reactor drops the poller (as it drops every reader when it
        stops), its connections are lost with the reactor's reason.
        """
        pairs = [(yield self.connect(b"a")), (yield self.connect(b"b"))]
        poller = self.poller()
        poller.connectionLost(Failure(ConnectionLost()))
        reasons = yield gatherResults([server.lost for _, server in pairs])
        self.assertEqual(set(reasons), {ConnectionLost})
        self.assertEqual(len(poller), 0)
        self.assertNotIn(poller, reactor.getReaders())
        yield gatherResults([client.lost for client, _ in pairs])

    @inlineCallbacks
    def test_withoutEpoll(self):
        """
        Without C{select.epoll}, connections are the reactor's, as usual.
        """
        self.patch(pollerModule, "_epoll", None)
        port = yield UNIXServerEndpoint(reactor, self.path + "2").listen(self.factory)
        self.addCleanup(port.stopListening)
        self.path += "2"
        client, server = yield self.connect(b"abc")
        self.assertEqual(client.received, b"3")
        self.assertIsNone(server.transport.poller)
        self.assertIn(server.transport, reactor.getReaders())
        client.transport.loseConnection()
        reason = yield server.lost
        self.assertIs(reason, ConnectionDone)
        self.assertNotIn(server.transport, reactor.getReaders())

    @inlineCallbacks
    def test_tcp(self):
        """
        rmux's TCP port's connections use the poller too.
        """
        port = yield TCPServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.factory)
        self.addCleanup(port.stopListening)
        made = self.factory.nextConnection()
        client = yield FastClientCreator(reactor, Client).connectTCP(
            "127.0.0.1", port.getHost().port)
        server = yield made
        arrived = client.nextData()
        client.transport.write(b"tcp")
        self.assertEqual((yield arrived), b"3")
        self.assertIs(server.transport.poller, self.poller())
        self.assertEqual(server.transport.getPeer().host, "127.0.0.1")
        client.transport.loseConnection()
        reason = yield server.lost
        self.assertIs(reason, ConnectionDone)
