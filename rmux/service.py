# -*- test-case-name: tests.test_integration -*-
"""
The rmux service: what C{twistd rmux}, C{rmux.tac} and embedding programs
run.

L{makeService} turns an L{rmux.config.RmuxConfig} into one
L{MultiService} with a child L{ListenerService} per listener; each listener
owns its backend pools, health monitor and server endpoint, and shares
nothing with the others (as in Go rmux).
"""

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)

from rmux.commands import CommandTable
from rmux.health import HealthMonitor
from rmux.pool import BackendPool
from rmux.proxy import ProxyFactory
from rmux.router import Router


def _seconds(milliseconds):
    return milliseconds / 1000.0


class ListenerService(MultiService):
    """
    One rmux listener: a server endpoint, its pools and its health monitor.

    @ivar factory: the L{ProxyFactory} serving clients.
    @ivar pools: one L{BackendPool} per configured backend, in hashing order.
    """

    def __init__(self, listener, reactor, table=None):
        MultiService.__init__(self)
        self.listener = listener
        self.reactor = reactor
        self.pools = [
            BackendPool(
                reactor,
                address,
                size=listener.poolSize,
                connectTimeout=_seconds(listener.remoteConnectTimeout),
                readTimeout=_seconds(listener.remoteReadTimeout),
                writeTimeout=_seconds(listener.remoteWriteTimeout),
            )
            for address in listener.backends
        ]
        self.health = HealthMonitor(
            reactor, self.pools, timeout=_seconds(listener.remoteConnectTimeout)
        )
        router = Router(self.pools, self.health, listener.failover)
        self.factory = ProxyFactory(
            reactor, router, table or CommandTable.default(), listener, self.health
        )
        self.endpointService = StreamServerEndpointService(
            self.endpoint(), self.factory
        )
        self.endpointService.setServiceParent(self)

    def endpoint(self):
        listener = self.listener
        if listener.socket:
            # wantPID takes a lock beside the socket, so a stale socket file
            # left by a dead rmux is replaced but a live one is not stolen.
            return UNIXServerEndpoint(
                self.reactor, listener.socket, mode=listener.socketMode, wantPID=True
            )
        if ":" in listener.host:
            return TCP6ServerEndpoint(self.reactor, listener.port, interface=listener.host)
        return TCP4ServerEndpoint(self.reactor, listener.port, interface=listener.host)

    def startService(self):
        self.health.start()
        MultiService.startService(self)

    def stopService(self):
        """
        Stop listening, let clients collect the replies they are owed, then
        close every backend connection.
        """
        d = maybeDeferred(MultiService.stopService, self)
        d.addCallback(lambda _: self.factory.disconnectAll())
        d.addCallback(
            lambda _: DeferredList(
                [self.health.stop()] + [pool.stop() for pool in self.pools]
            )
        )
        return d


class RmuxService(MultiService):
    """
    Every listener of one rmux configuration.
    """

    def __init__(self, config, reactor):
        MultiService.__init__(self)
        self.config = config
        self.listeners = []
        table = CommandTable.default()
        for listener in config.listeners:
            service = ListenerService(listener, reactor, table)
            service.setServiceParent(self)
            self.listeners.append(service)


def makeService(config, reactor=None):
    """
    Build the rmux service for C{config}.

    This is the public way to embed rmux in a Twisted program::

        from rmux.config import fromFlags
        from rmux.service import makeService

        config = fromFlags({"socket": "/tmp/rmux.sock",
                            "tcpConnections": "127.0.0.1:6379"})
        makeService(config).setServiceParent(application)

    @param config: an L{rmux.config.RmuxConfig}.
    @param reactor: the reactor to run on; the global one if L{None}.
    @return: an L{IService} (an L{RmuxService}).
    """
    if reactor is None:
        from twisted.internet import reactor
    return RmuxService(config, reactor)
