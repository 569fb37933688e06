# -*- test-case-name: tests.test_integration -*-
"""
The rmux service: what C{twistd rmux}, C{rmux.tac} and embedding programs
run.

L{makeService} turns an L{rmux.config.RmuxConfig} into one
L{MultiService} with a child L{ListenerService} per listener; each listener
owns its backend pools, health monitor and server endpoint, and shares
nothing with the others (as in Go rmux).
"""

import ctypes
import ctypes.util
import socket

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

from rmux.commands import CommandTable
from rmux.health import HealthMonitor
from rmux.pool import BackendPool
from rmux.proxy import ProxyFactory
from rmux.pubsub import SubscriptionHub, connectAuthenticated
from rmux.hashing import makeRing, twemproxyServerName
from rmux.router import PoolGroup, Router
from rmux.transport import UNIXServerEndpoint


#: Connections the kernel may queue for accept.  A burst of short-lived
#: clients (a web server's workers starting requests together) must not
#: find it full: on a unix socket that is an immediate EAGAIN for them.
LISTEN_BACKLOG = socket.SOMAXCONN


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
        self._poolsByServer = {}
        self.pools = []
        default = self._group(
            listener.backends, listener.distribution, listener.hash,
            listener.hashTag, listener.failover,
        )
        routes = [
            (
                route.prefix,
                self._group(
                    route.backends, route.distribution, route.hash,
                    route.hashTag, route.failover,
                ),
            )
            for route in listener.routes
        ]
        self.health = HealthMonitor(
            reactor,
            self.pools,
            interval=_seconds(listener.healthInterval),
            timeout=_seconds(listener.healthTimeout),
            fall=listener.healthFailures,
            rise=listener.healthSuccesses,
            startupWait=_seconds(listener.startupWait),
        )
        self.router = Router(default, routes, self.health, listener.allowFlush)
        self.hub = SubscriptionHub(
            reactor,
            self.router.poolForKey,
            lambda: self.router.pools,
            lambda pool, protocol: connectAuthenticated(reactor, pool, protocol),
        )
        self.health.onChange.append(lambda *_: self.hub.placementChanged())
        self.health.onChange.append(self._backendChanged)
        table = table or CommandTable.default()
        if listener.commands:
            table = CommandTable.load()
            table.extend(listener.commands)
        self.factory = ProxyFactory(
            reactor, self.router, table, listener, self.health, self.hub
        )
        self.endpointService = StreamServerEndpointService(
            self.endpoint(), self.factory
        )
        # A socket or port that cannot be had (a live rmux holds the socket's
        # lock, the port is taken) stops the start, with its reason, instead
        # of leaving a process that serves nothing.
        self.endpointService._raiseSynchronously = True
        self.endpointService.setServiceParent(self)

    def _backendChanged(self, check, previous, state):
        if state == "up":
            for pool in self.pools:
                if pool.address == check.address:
                    pool.serverIsBack()

    def _pool(self, address):
        """
        The pool for one server, shared by every route that lists it.
        """
        key = (address.kind, address.host, address.port, address.path,
               address.username, address.db)
        pool = self._poolsByServer.get(key)
        if pool is None:
            listener = self.listener
            pool = self._poolsByServer[key] = BackendPool(
                self.reactor,
                address,
                size=listener.poolSize,
                connectTimeout=_seconds(listener.remoteConnectTimeout),
                readTimeout=_seconds(listener.remoteReadTimeout),
                writeTimeout=_seconds(listener.remoteWriteTimeout),
                maxPinned=getattr(listener, "maxPinned", 32),
                pinnedWait=_seconds(getattr(listener, "pinnedWait", 1000)),
            )
            self.pools.append(pool)
        return pool

    def _group(self, backends, distribution, hashName, hashTag, failover):
        pools = [self._pool(address) for address in backends]
        ring = None
        if len(pools) > 1:
            ring = makeRing(
                distribution,
                [
                    (twemproxyServerName(str(address), address.name), address.weight)
                    for address in backends
                ],
                hashName,
            )
        tag = hashTag.encode("utf-8") if isinstance(hashTag, str) else hashTag
        return PoolGroup(pools, ring, tag, failover)

    def endpoint(self):
        listener = self.listener
        if listener.socket:
            # wantPID takes a lock beside the socket, so a stale socket file
            # left by a dead rmux is replaced but a live one is not stolen.
            return UNIXServerEndpoint(
                self.reactor,
                listener.socket,
                backlog=LISTEN_BACKLOG,
                mode=listener.socketMode,
                wantPID=True,
                owner=getattr(listener, "socketOwner", None),
            )
        if ":" in listener.host:
            return TCP6ServerEndpoint(
                self.reactor, listener.port, backlog=LISTEN_BACKLOG, interface=listener.host
            )
        return TCP4ServerEndpoint(
            self.reactor, listener.port, backlog=LISTEN_BACKLOG, interface=listener.host
        )

    def startService(self):
        # Listen first: if the socket or port cannot be had, nothing else
        # has started.
        MultiService.startService(self)
        self.health.start()

    def stopService(self):
        """
        Stop listening, let clients collect the replies they are owed, then
        close every backend connection.
        """
        d = maybeDeferred(MultiService.stopService, self)
        d.addCallback(lambda _: self.factory.disconnectAll())
        d.addCallback(
            lambda _: DeferredList(
                [self.health.stop(), self.hub.stop()]
                + [pool.stop() for pool in self.pools]
            )
        )
        return d


def _mallocTrim():
    """
    glibc's C{malloc_trim}, or L{None} elsewhere.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


class MemoryTrimmer(TimerService):
    """
    Hands memory freed after a burst (many clients, large values) back to
    the system every C{interval} seconds: glibc keeps freed memory in its
    arenas, so without this rmux's RSS stays at its peak.
    """

    def __init__(self, reactor, interval=30.0):
        trim = _mallocTrim()
        TimerService.__init__(self, interval, trim if trim is not None else lambda _: None, 0)
        self.clock = reactor


class RmuxService(MultiService):
    """
    Every listener of one rmux configuration.
    """

    def __init__(self, config, reactor):
        MultiService.__init__(self)
        self.config = config
        MemoryTrimmer(reactor).setServiceParent(self)
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
    @return: an L{IService}: an L{RmuxService}, or with C{maxProcesses}
        above 1 an L{rmux.workers.ParentService} whose worker processes
        each run the listeners.
    """
    if reactor is None:
        from twisted.internet import reactor
    from rmux import workers

    if workers.workerCount(config) > 1:
        return workers.ParentService(config, reactor)
    return RmuxService(config, reactor)
