"""
Every implementation of an interface in L{rmux.interfaces} provides it, as
C{verifyObject} checks: the attributes and methods the contract names, with
compatible signatures.
"""

from twisted.internet.address import UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from rmux.cluster import ClusterRouter
from rmux.commands import CommandTable
from rmux.config import BackendAddress, fromFlags
from rmux.health import HealthMonitor
from rmux.interfaces import (
    IBackendConnection, IBackendPool, IClient, IHealth, IReplyWaiter, IRequestSender,
    IRouter, ISinkProtocol,
)
from rmux.pool import BackendPool, BackendProtocol
from rmux.proxy import ProxyFactory
from rmux.replies import IgnoredReply, PipelineWaiter, ReplyQueue
from rmux.router import FanOut, PoolGroup, Redirectable, RedirectingSender, Router
from rmux.sentinel import SentinelRouter
from rmux.stats import ListenerStats


class ImplementationTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = BackendPool(self.clock, BackendAddress.fromString("redis-a:6379"))
        self.health = HealthMonitor(self.clock, [self.pool])
        self.router = Router(PoolGroup([self.pool]), health=self.health)

    def test_router(self):
        verifyObject(IRouter, self.router)

    def test_topologyRouters(self):
        """
        The routers over a cluster and a Sentinel group, and the sender and
        waiter they wrap a client's requests in.
        """
        address = BackendAddress.fromString("redis-a:6379")
        newPool = lambda a: BackendPool(self.clock, a)
        cluster = ClusterRouter(self.clock, [address], newPool)
        verifyObject(IRouter, cluster)
        verifyObject(IRouter, SentinelRouter(self.clock, [address], [address], newPool))
        listener = fromFlags({"socket": "/tmp/rmux-i.sock", "unixConnections": "/tmp/r"})
        factory = ProxyFactory(
            self.clock, self.router, CommandTable.default(), listener.listeners[0])
        client = factory.buildProtocol(UNIXAddress(None))
        client.makeConnection(StringTransport())
        sender = RedirectingSender(cluster, client.session)
        verifyObject(IRequestSender, sender)
        verifyObject(IReplyWaiter, Redirectable(cluster, None, b"", IgnoredReply(), self.pool))

    def test_pool(self):
        verifyObject(IBackendPool, self.pool)

    def test_backendConnection(self):
        protocol = BackendProtocol(self.pool)
        verifyObject(IBackendConnection, protocol)
        verifyObject(ISinkProtocol, protocol)

    def test_health(self):
        verifyObject(IHealth, self.health)

    def test_clientAndItsSession(self):
        listener = fromFlags({"socket": "/tmp/rmux-i.sock", "unixConnections": "/tmp/r"})
        factory = ProxyFactory(
            self.clock, self.router, CommandTable.default(), listener.listeners[0])
        client = factory.buildProtocol(UNIXAddress(None))
        client.makeConnection(StringTransport())
        verifyObject(IClient, client)
        verifyObject(ISinkProtocol, client)
        verifyObject(IRequestSender, client.session)

    def test_waiters(self):
        queue = ReplyQueue(None, StringTransport(), ListenerStats())
        slot = queue.newSlot()
        verifyObject(IReplyWaiter, slot)
        verifyObject(IReplyWaiter, PipelineWaiter(slot, 2, ListenerStats()))
        verifyObject(IReplyWaiter, IgnoredReply())
        verifyObject(IReplyWaiter, FanOut(slot, "sum", 2).part(0))
