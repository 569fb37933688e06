"""
Overload: rmux's own queueing must slow its clients down, never make a
healthy server look dead.
"""

import socket
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor

from rmux.config import BackendAddress
from rmux.pool import BackendPool
from rmux.replies import DeferredReply
from rmux.resp import encodeCommand
from tests.redisserver import startRedis

PING = encodeCommand([b"PING"])


@implementer(IReadDescriptor)
class _Stall:
    """
    A reader whose one event runs C{action} and then blocks the reactor for
    C{seconds}: a loop turn as busy as one that reads thousands of clients'
    pipelines.
    """

    def __init__(self, action, seconds):
        self.action = action
        self.seconds = seconds
        self.ours, self.theirs = socket.socketpair()
        reactor.addReader(self)
        self.theirs.send(b"x")

    def fileno(self):
        return self.ours.fileno()

    def logPrefix(self):
        return "stall"

    def doRead(self):
        reactor.removeReader(self)
        self.ours.recv(1)
        self.action()
        time.sleep(self.seconds)

    def connectionLost(self, reason):
        pass

    def close(self):
        self.ours.close()
        self.theirs.close()


class BusyLoopTests(TestCase):
    """
    A reactor turn that takes longer than the backend timeouts, while the
    server answers at once: the timers pass before the reactor reads the
    answer, and must not be taken for the server's fault.
    """

    def pool(self, address, timeout=0.2):
        pool = BackendPool(
            reactor, address, size=1,
            connectTimeout=timeout, readTimeout=timeout, writeTimeout=timeout,
        )
        self.addCleanup(pool.stop)
        return pool

    def stallWhile(self, action, seconds=0.6):
        stall = _Stall(action, seconds)
        self.addCleanup(stall.close)

    def test_readTimeout(self):
        """
        A PING written just before a 600 ms turn is answered, with a 200 ms
        read timeout.
        """
        server = startRedis(self)
        pool = self.pool(BackendAddress(kind="unix", path=server.path))
        first = DeferredReply()
        pool.send(PING, first)

        def connected(_):
            second = DeferredReply()

            def sendAndFlush():
                pool.send(PING, second)
                for connection in pool.connections:
                    connection.flush()

            self.stallWhile(sendAndFlush)
            return second.deferred

        def answered(reply):
            self.assertEqual(reply, b"+PONG\r\n")
            self.assertEqual(pool.stats.timeouts, 0)

        return first.deferred.addCallback(connected).addCallback(answered)

    def test_connectTimeout(self):
        """
        A TCP connect started just before a 600 ms turn succeeds, with a
        200 ms connect timeout: the connection was made during the turn.
        """
        server = startRedis(self, tcp=True)
        pool = self.pool(BackendAddress(kind="tcp", host="127.0.0.1", port=server.port))
        reply = DeferredReply()
        self.stallWhile(lambda: pool.send(PING, reply))

        def answered(data):
            self.assertEqual(data, b"+PONG\r\n")
            self.assertEqual(pool.stats.connectFailures, 0)

        return reply.deferred.addCallback(answered)

    def test_hungServerStillTimesOut(self):
        """
        The extra turn only lets the reactor read what has arrived: a server
        that does not answer still fails the request.
        """
        server = startRedis(self)
        pool = self.pool(BackendAddress(kind="unix", path=server.path))
        first = DeferredReply()
        pool.send(PING, first)

        def connected(_):
            server.pause()
            self.addCleanup(server.resume)
            second = DeferredReply()
            pool.send(PING, second)
            return second.deferred

        def failed(reply):
            self.assertIn(b"did not reply within 200 ms", reply)
            self.assertEqual(pool.stats.timeouts, 1)

        return first.deferred.addCallback(connected).addCallback(failed)
