"""
Tests for L{rmux.transport}: immediate writes and the recv-reading UNIX
transports.
"""

import os
import shutil
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux.transport import FastClientCreator, UNIXClient, UNIXServer, UNIXServerEndpoint, writeNow


class FakeTransport:
    """
    The parts of a Twisted stream transport that L{writeNow} looks at,
    over a real socket.
    """

    def __init__(self, sock):
        self.socket = sock
        self._tempDataBuffer = []
        self.dataBuffer = b""
        self.offset = 0
        self.connected = True
        self.disconnecting = False
        self.written = []

    def write(self, data):
        self.written.append(data)

    def _maybePauseProducer(self):
        self.pauseChecked = True

    def startWriting(self):
        self.writing = True


class WriteNowTests(SynchronousTestCase):
    def setUp(self):
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)

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

    def test_noSocket(self):
        class Plain:
            def __init__(self):
                self.written = []

            def write(self, data):
                self.written.append(data)

        transport = Plain()
        writeNow(transport, b"x")
        self.assertEqual(transport.written, [b"x"])


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
        client.transport.write(b"PING")
        data, transport = yield client.received
        self.assertEqual(data, b"PING")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertIs(port.transport, UNIXServer)
