# -*- test-case-name: tests.test_integration -*-
"""
The rmux service: what C{twistd rmux}, C{rmux.tac} and embedding programs
run.

L{RmuxService} turns an L{rmux.config.RmuxConfig} into one
L{MultiService} with a child L{ListenerService} per listener; each listener
owns its backend pools, health monitor and server endpoint, and shares
nothing with the others (as in Go rmux).

SIGHUP re-reads the C{--config} file and applies it to the running
listeners (L{RmuxService.reload}; see L{rmux.reload}): each listener builds
its new placement beside the running one, reusing the pools of the
servers it keeps, and switches to it in one step.
"""

import ctypes
import ctypes.util
import socket

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import (
    DeferredList,
    DeferredLock,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger

from rmux.commands import CommandTable
from rmux.config import ConfigError
from rmux.health import HealthMonitor
from rmux.pool import BackendPool
from rmux.proxy import ProxyFactory
from rmux.pubsub import SubscriptionHub, connectAuthenticated
from rmux.hashing import makeRing, twemproxyServerName
from rmux.reload import (
    HangupHandler,
    NothingToReload,
    PoolRetirement,
    ReloadRefused,
    describeChanges,
    describeSource,
    nextConfig,
    serverKey,
)
from rmux.router import ClusterGroup, PoolGroup, Router
from rmux.startup import ListeningService, notify
from rmux.stats import ListenerStats
from rmux.transport import TCPServerEndpoint, UNIXServerEndpoint


#: Connections the kernel may queue for accept.  A burst of short-lived
#: clients (a web server's workers starting requests together) must not
#: find it full: on a unix socket that is an immediate EAGAIN for them.
LISTEN_BACKLOG = socket.SOMAXCONN


def _seconds(milliseconds):
    return milliseconds / 1000.0


class _PoolSet:
    """
    The pools of one placement, one per server however many routes list
    it; on a reload, the running pool of a server that stays is reused, so
    it keeps its connections.

    @ivar pools: the distinct pools, in configuration order.
    @ivar byServer: the same, by L{serverKey}.
    @ivar created: the pools made here rather than reused.
    @ivar clusters: the routers of the cluster routes, by their seeds.
    @ivar createdClusters: those made here rather than reused.
    """

    def __init__(self, reactor, listener, running=None, newCluster=None, runningClusters=None):
        """
        @param listener: the L{rmux.config.ListenerConfig} new pools are
            configured from.
        @param running: the running pools by L{serverKey}, to reuse.
        @param newCluster: C{newCluster(seeds, poolSet)} makes the
            L{rmux.cluster.ClusterRouter} of a cluster route.
        @param runningClusters: the running cluster routes' routers by
            their seeds, to reuse (with their maps and connections).
        """
        self.reactor = reactor
        self.listener = listener
        self.running = running or {}
        self.newCluster = newCluster
        self.runningClusters = runningClusters or {}
        self.pools = []
        self.byServer = {}
        self.created = []
        self.clusters = {}
        self.createdClusters = []
        self._tls = None

    def pool(self, address):
        """
        The pool for one server.
        """
        key = serverKey(address)
        pool = self.byServer.get(key)
        if pool is not None:
            return pool
        pool = self.running.get(key)
        if pool is None or pool.address.password != address.password:
            # New credentials are a new pool: the running one's connections
            # are logged in with the old ones.
            pool = _newPool(self.reactor, address, self.listener, self.tls(address))
            self.created.append(pool)
        self.byServer[key] = pool
        self.pools.append(pool)
        return pool

    def tls(self, address):
        """
        The TLS settings for C{address}'s connections, if it is reached
        over TLS: the listener's, read once per configuration.
        """
        if not address.tls:
            return None
        if self._tls is None:
            from rmux.tls import BackendTLS

            self._tls = BackendTLS.fromListener(self.listener)
        return self._tls

    def group(self, backends, distribution, hashName, hashTag, failover):
        pools = [self.pool(address) for address in backends]
        return PoolGroup(pools, placementRing(backends, distribution, hashName),
                         _tag(hashTag), failover)

    def clusterGroup(self, seeds):
        """
        A cluster route's group: the running router of the same seeds, or
        a new one.
        """
        cluster = self.clusters.get(seeds) or self.runningClusters.get(seeds)
        if cluster is None:
            cluster = self.newCluster(seeds, self)
            self.createdClusters.append(cluster)
        self.clusters[seeds] = cluster
        return ClusterGroup(cluster)

    def placement(self):
        """
        The listener's catch-all group and its routes, built from this set.

        @return: C{(default, routes)} for L{Router}.
        """
        listener = self.listener
        default = self.group(
            listener.backends, listener.distribution, listener.hash,
            listener.hashTag, listener.failover,
        )
        routes = [
            (
                route.prefix,
                self.clusterGroup(route.backends) if route.cluster else self.group(
                    route.backends, route.distribution, route.hash,
                    route.hashTag, route.failover,
                ),
            )
            for route in listener.routes
        ]
        return default, routes


def listenerLabel(listener):
    """
    The option a listener listens for, as messages name it.
    """
    if listener.socket:
        return "--socket=%s" % (listener.socket,)
    return "--port=%d (on %s)" % (listener.port, listener.host or "every interface")


def placementRing(backends, distribution, hashName):
    """
    The ring that places keys over C{backends}, or L{None} for one.
    """
    if len(backends) < 2:
        return None
    return makeRing(
        distribution,
        [(twemproxyServerName(str(address), address.name), address.weight)
         for address in backends],
        hashName,
    )


def _tag(hashTag):
    return hashTag.encode("utf-8") if isinstance(hashTag, str) else hashTag


def _poolSettings(listener):
    """
    The settings of L{BackendPool.configure} that C{listener} sets.
    """
    return dict(
        size=listener.poolSize,
        connectTimeout=_seconds(listener.remoteConnectTimeout),
        readTimeout=_seconds(listener.remoteReadTimeout),
        writeTimeout=_seconds(listener.remoteWriteTimeout),
        maxPinned=listener.maxPinned,
        pinnedWait=_seconds(listener.pinnedWait),
    )


def _healthSettings(listener):
    return dict(
        interval=_seconds(listener.healthInterval),
        timeout=_seconds(listener.healthTimeout),
        fall=listener.healthFailures,
        rise=listener.healthSuccesses,
        startupWait=_seconds(listener.startupWait),
    )


def _newPool(reactor, address, listener, tls=None):
    return BackendPool(reactor, address, tls=tls, **_poolSettings(listener))


class ListenerService(MultiService):
    """
    One rmux listener: a server endpoint, its pools and its health monitor.

    A reload (L{prepareReload}) changes its backends and settings in place;
    its endpoint, and the router, hub and factory objects that clients
    hold, stay for its whole life.

    @ivar factory: the L{ProxyFactory} serving clients.
    @ivar pools: one L{BackendPool} per configured backend, in hashing order.
    @ivar retiring: the L{PoolRetirement}s of pools a reload removed and
        that still owe replies.
    """

    def __init__(self, listener, reactor, table=None):
        MultiService.__init__(self)
        self.listener = listener
        self.reactor = reactor
        self.retiring = set()
        pools = _PoolSet(reactor, listener, newCluster=self._routeCluster)
        self.stats = ListenerStats()
        if listener.topology == "cluster":
            self.router = self._clusterRouter(pools)
        elif listener.topology == "sentinel":
            self.router = self._sentinelRouter(pools)
        else:
            default, routes = pools.placement()
        self.pools = pools.pools
        self._poolsByServer = pools.byServer
        self.health = HealthMonitor(reactor, self.pools, **_healthSettings(listener))
        if listener.topology == "servers":
            self.router = Router(default, routes, self.health, listener.allowFlush, self.stats,
                                 listener.crossServerTransactions)
        # The hub and every client hold this router for good: a reload
        # changes what it holds (Router.adopt), never which router it is.
        self.hub = SubscriptionHub(
            reactor,
            self.router.poolForKey,
            lambda: self.router.pools,
            lambda pool, protocol: connectAuthenticated(reactor, pool, protocol),
        )
        self.health.onChange.append(lambda *_: self.hub.placementChanged())
        # A cluster's map (the listener's, or a route's) moves channels too.
        self.router.onChange.append(self.hub.placementChanged)
        self.hub.patternPools = self.router.patternPools
        self.hub.patternPoolOf = self.router.patternPoolOf
        self.hub.whenPlaced = self.router.whenPlaced
        self.hub.refreshPlacement = self.router.refresh
        self.health.onChange.append(self._backendChanged)
        table = table or CommandTable.default()
        if listener.commands:
            table = CommandTable.load()
            table.extend(listener.commands)
        self.factory = ProxyFactory(
            reactor, self.router, table, listener, self.health, self.hub, self.stats
        )
        # A socket or port that cannot be had (a live rmux holds the socket's
        # lock, the port is taken) stops the start, with its reason, instead
        # of leaving a process that serves nothing.
        self.endpointService = ListeningService(
            self.endpoint(), self.factory, listenerLabel(listener))
        self.endpointService.setServiceParent(self)
        self.serverTLS = None
        if listener.tlsPort:
            from rmux.tls import ServerTLS, serverEndpoint

            self.serverTLS = ServerTLS(listener)
            tlsService = ListeningService(
                serverEndpoint(reactor, listener, LISTEN_BACKLOG, self.serverTLS),
                self.factory, "--tlsPort=%d" % (listener.tlsPort,),
            )
            tlsService.setServiceParent(self)

    def _clusterRouter(self, pools, seeds=None, readFrom=None):
        """
        The router of a cluster listener, or of a cluster route (its
        C{seeds}; reads from its masters): its pools are the nodes', made
        as the cluster's map names them, with the listener's settings.
        """
        from rmux.cluster import ClusterRouter

        listener = self.listener
        return ClusterRouter(
            self.reactor, seeds or listener.backends,
            # A node found later gets the settings of the day (a reload's).
            lambda address: _newPool(self.reactor, address, self.listener, pools.tls(address)),
            interval=_seconds(listener.clusterRefreshInterval),
            allowFlush=listener.allowFlush, stats=self.stats,
            retire=lambda gone: self.retire(gone),
            retryBudget=_seconds(listener.clusterRetryTime),
            readFrom=readFrom or listener.readFrom,
        )

    def _routeCluster(self, seeds, pools):
        return self._clusterRouter(pools, seeds, readFrom="master")

    def _sentinelRouter(self, pools):
        """
        The router of a sentinel listener: its pools are the masters', made
        as the sentinels name them, with the listener's settings.
        """
        from rmux.sentinel import SentinelRouter

        listener = self.listener
        return SentinelRouter(
            self.reactor, listener.sentinels, listener.backends,
            lambda address: _newPool(self.reactor, address, self.listener, pools.tls(address)),
            ring=placementRing(listener.backends, listener.distribution, listener.hash),
            hashTag=_tag(listener.hashTag),
            interval=_seconds(listener.clusterRefreshInterval),
            allowFlush=listener.allowFlush, stats=self.stats,
            retire=lambda gone: self.retire(gone),
            retryBudget=_seconds(listener.clusterRetryTime),
            readFrom=listener.readFrom,
        )

    def _backendChanged(self, check, previous, state):
        if state == "up":
            for pool in self.pools:
                if pool.address == check.address:
                    pool.serverIsBack()

    def rereadCertificates(self):
        """
        Read the listener's TLS files again, for the connections made from
        now on: the TLS port's certificate and key, and the CAs and client
        certificate of its C{rediss://} backends.  Either all of them are
        taken or, if one file cannot be used, none.

        @return: whether the listener uses TLS at all.
        @raise ConfigError: a file that cannot be used, named; what runs
            stays.
        """
        listener = self.listener
        tlsPools = [pool for pool in self.pools if pool.address.tls]
        if self.serverTLS is None and not tlsPools:
            return False
        backendTLS = None
        if tlsPools:
            from rmux.tls import BackendTLS

            backendTLS = BackendTLS.fromListener(listener)
        if self.serverTLS is not None:
            self.serverTLS.reread(listener)
        for pool in tlsPools:
            pool.tls = backendTLS
        self.health.tlsChanged(tlsPools)
        return True

    def prepareReload(self, listener):
        """
        Build what C{listener} needs beside what runs: pools for new
        servers (the running pool of every server that stays is reused) and
        a whole new placement.  Nothing changes for clients until the
        result's C{apply}.

        @param listener: the new L{rmux.config.ListenerConfig}, for the
            same address.
        @return: a L{ListenerReload}.
        @raise ValueError: if a placement cannot be built, or a cluster or
            Sentinel listener's topology changed (its seeds, sentinels,
            masters, replica reads...: a restart changes those).
        """
        placedElsewhere = {listener.topology, self.listener.topology} - {"servers"}
        if placedElsewhere:
            changed = [name for name in TOPOLOGY_FIELDS
                       if getattr(listener, name) != getattr(self.listener, name)]
            if changed:
                raise ValueError(
                    "%s changed: a %s listener's topology is not reloaded; restart rmux "
                    "to change it" % (", ".join(changed), " or ".join(sorted(placedElsewhere))))
            return TopologyReload(self, listener)
        return ListenerReload(self, listener)

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
                owner=listener.socketOwner,
            )
        return TCPServerEndpoint(
            self.reactor, listener.port, backlog=LISTEN_BACKLOG, interface=listener.host
        )

    def whenReady(self):
        """
        A L{Deferred} that fires once every backend has its first health
        verdict (or the startup wait is over), or once the first reading
        of a cluster's or Sentinel group's map is over.
        """
        if self.listener.topology != "servers":
            return self.router.refresh()
        started = self.health.whenStarted() or succeed(None)
        if not self.router.clusters:
            return started
        return gatherResults([started, self.router.refresh()])

    def describeState(self):
        """
        One listener in the ready line: where it listens and what of its
        backends is up.
        """
        topology = self.listener.topology
        if topology == "cluster":
            what = "cluster, %d masters" % (len(self.router.pools),)
        elif topology == "sentinel":
            known = [n for n in self.router.nodes if n is not None]
            what = "sentinel, %d of %d masters found" % (len(known), len(self.router.nodes))
        else:
            up = sum(1 for pool in self.pools if self.health.isUp(pool))
            what = "%d of %d backends up" % (up, len(self.pools))
            for cluster in self.router.clusters:
                what += ", a cluster route: %d masters" % (len(cluster.pools),)
        return "%s (%s)" % (self.listener.name, what)

    def startService(self):
        # Listen first: if the socket or port cannot be had, nothing else
        # has started.
        MultiService.startService(self)
        self.health.start()
        self.router.start()

    def stopService(self):
        """
        Stop listening, let clients collect the replies they are owed, then
        close every backend connection, those of pools a reload removed
        included.
        """
        d = maybeDeferred(MultiService.stopService, self)
        d.addCallback(lambda _: self.factory.disconnectAll())
        d.addCallback(
            lambda _: DeferredList(
                [self.health.stop(), self.hub.stop()]
                + [pool.stop() for pool in self.pools]
                + self.router.stop()
                + [retirement.finish() for retirement in list(self.retiring)]
            )
        )
        return d

    def retire(self, pools):
        """
        Take C{pools}, which the placement no longer uses, out of service
        once they have delivered what they owe (see L{PoolRetirement}).
        """
        for pool in pools:
            retirement = PoolRetirement(
                self.reactor, pool, self.factory.shutdownTimeout, self.factory.forgetPool
            )
            self.retiring.add(retirement)
            retirement.start().addBoth(
                lambda result, retirement=retirement: self.retiring.discard(retirement)
            )


class ListenerReload:
    """
    One listener's part of a reload, built beside what runs and applied in
    one step.

    @ivar added: pools of servers the new configuration adds.
    @ivar removed: running pools of servers it drops.
    """

    def __init__(self, service, listener):
        self.service = service
        self.listener = listener
        running = {tuple(cluster.seeds): cluster for cluster in service.router.clusters}
        pools = _PoolSet(service.reactor, listener, service._poolsByServer,
                         service._routeCluster, running)
        try:
            default, routes = pools.placement()
        except BaseException:
            for pool in pools.created:
                pool.stop()
            for cluster in pools.createdClusters:
                cluster.stop()
            raise
        self.pools = pools
        self.router = Router(
            default, routes, service.health, listener.allowFlush, service.stats,
            listener.crossServerTransactions,
        )
        self.added = pools.created
        self.tlsPools = [pool for pool in pools.pools if pool.address.tls]
        self.backendTLS = pools.tls(self.tlsPools[0].address) if self.tlsPools else None
        staying = set(pools.pools)
        self.removed = [pool for pool in service.pools if pool not in staying]
        #: Cluster routes' routers: made for the new configuration, and
        #: running ones it no longer has.
        self.addedClusters = pools.createdClusters
        kept = list(pools.clusters.values())
        self.removedClusters = [c for c in service.router.clusters if c not in kept]

    def ready(self):
        """
        Check the new servers' health now, so that the new placement knows
        whether they are up before it sends them anything.

        @return: a L{Deferred} that fires when each new server has its
            first verdict, or after the listener's C{startupWait}, and each
            new cluster route's first map reading is over.
        """
        reads = []
        for cluster in self.addedClusters:
            cluster.start()
            reads.append(cluster.refresh())
        return gatherResults([self.service.health.watch(self.added)] + reads)

    def apply(self):
        """
        Switch the listener to the new configuration.  Everything here runs
        in one turn of the reactor, so no request sees a mix of old and
        new: from the next request on, commands are placed the new way;
        those already sent get their replies from where they went.
        """
        service = self.service
        listener = self.listener
        settings = _poolSettings(listener)
        added = set(self.added)
        for pool in self.pools.pools:
            if pool not in added:
                pool.configure(**settings)
        for pool in self.tlsPools:
            pool.tls = self.backendTLS
        service.health.tlsChanged(self.tlsPools)
        service.router.adopt(self.router)
        service.pools = self.pools.pools
        service._poolsByServer = self.pools.byServer
        service.listener = listener
        service.health.configure(**_healthSettings(listener))
        service.factory.configure(listener)
        service.health.unwatch(self.removed)
        service.retire(self.removed)
        for cluster in self.removedClusters:
            # Its nodes' pools deliver what they owe, as a removed server's.
            cluster.stopRefreshing()
            service.retire(cluster.ownPools())
        hub = service.hub
        hub.placementChanged()
        for pool in self.removed:
            subscriber = hub.backends.get(pool)
            if subscriber is not None and not subscriber.wanted:
                # Every channel moved to its new server: the idle
                # connection to the removed one has no more use.
                del hub.backends[pool]
                subscriber.stop()

    def abandon(self):
        """
        Give up the new configuration (the service is stopping, or another
        listener's part failed): close what was built for it.
        """
        self.service.health.unwatch(self.added)
        for pool in self.added:
            pool.stop()
        for cluster in self.addedClusters:
            cluster.stop()


#: What a cluster or Sentinel listener's router was built from: a reload
#: that changes any of them is refused (see L{TopologyReload}).
TOPOLOGY_FIELDS = ("topology", "backends", "sentinels", "readFrom", "distribution", "hash",
                   "hashTag", "clusterRefreshInterval", "clusterRetryTime")


class TopologyReload:
    """
    A cluster or Sentinel listener's part of a reload: its placement is the
    cluster's or the sentinels' and stays as it runs; everything else is
    taken (client-side settings, the timeouts and sizes of its pools, and
    of the pools it makes later).
    """

    added = removed = ()

    def __init__(self, service, listener):
        self.service = service
        self.listener = listener

    def ready(self):
        return succeed(None)

    def apply(self):
        service = self.service
        settings = _poolSettings(self.listener)
        for pool in service.router.ownPools():
            pool.configure(**settings)
        service.router.allowFlush = self.listener.allowFlush
        service.listener = self.listener
        service.factory.configure(self.listener)

    def abandon(self):
        pass


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
    arenas, so without this rmux's RSS stays at its peak.  A trim with
    nothing to give back takes microseconds, so it runs often enough that
    a burst of megabyte values is not still held when the next load comes.
    """

    def __init__(self, reactor, interval=5.0):
        trim = _mallocTrim()
        TimerService.__init__(self, interval, trim if trim is not None else lambda _: None, 0)
        self.clock = reactor


class Listeners(MultiService):
    """
    Every listener of one configuration, which a reload changes as a whole:
    what a process that serves clients runs (L{RmuxService}, and
    L{rmux.workers.child.WorkerService} in each worker process).

    @ivar config: the L{rmux.config.RmuxConfig} in force.
    @ivar listeners: the L{ListenerService}s, in the configuration's order.
    """

    log = Logger()

    #: How a reload names the configuration it applies, in its log line.
    reloadSource = None

    def __init__(self, config, reactor):
        MultiService.__init__(self)
        self.config = config
        self.reactor = reactor
        self.listeners = []
        self._reloads = DeferredLock()
        self._stopping = False

    def snapshots(self):
        """
        Every listener's counters (L{rmux.proxy.ProxyFactory.snapshot}),
        in the configuration's order.
        """
        return [listener.factory.snapshot() for listener in self.listeners]

    def reload(self, newConfig=None):
        """
        Apply a new configuration to the running listeners, keeping every
        client and every request (see L{rmux.reload}).  Reloads run one at a
        time, in the order asked.  What happens is logged in one line: what
        changed, or why nothing did.

        @param newConfig: an L{rmux.config.RmuxConfig} with the same
            listeners (addresses) as the running one, or L{None} to re-read
            the C{--config} file (C{config.configPath}).
        @return: a L{Deferred} that fires with C{True} once the new
            configuration is in force, or with C{False} if it was refused
            (the running one stays) or there was nothing to reload.
        """
        return self._reloads.run(self._reload, newConfig)

    def rereadCertificates(self):
        """
        Re-read every listener's TLS files (SIGHUP's rotation), logging
        what was done or, for each listener whose files cannot be used,
        why its running certificates stay.
        """
        for service in self.listeners:
            try:
                if service.rereadCertificates():
                    self.log.info(
                        "rmux: TLS certificates re-read for {listener}",
                        listener=service.listener.name,
                    )
            except ConfigError as e:
                self.log.error(
                    "rmux: TLS certificates not re-read for {listener}, the "
                    "running ones stay: {why}",
                    listener=service.listener.name, why=str(e),
                )

    @inlineCallbacks
    def _reload(self, newConfig):
        source = self.reloadSource or describeSource(self.config, newConfig)
        self.rereadCertificates()
        try:
            newConfig = nextConfig(self.config, newConfig)
        except NothingToReload as e:
            self.log.info("rmux: nothing to reload: {why}", why=str(e))
            return False
        except ReloadRefused as e:
            self.log.error(
                "rmux: reload refused, the running configuration stays: {why}",
                why=str(e),
            )
            return False
        if self._stopping:
            return False
        changes = describeChanges(self.config, newConfig)
        reloads = []
        try:
            for service, listener in zip(self.listeners, newConfig.listeners):
                reloads.append(service.prepareReload(listener))
        except Exception:
            for prepared in reloads:
                prepared.abandon()
            self.log.failure(
                "rmux: reload failed, the running configuration stays"
            )
            return False
        yield DeferredList([prepared.ready() for prepared in reloads])
        if self._stopping:
            for prepared in reloads:
                prepared.abandon()
            return False
        for prepared in reloads:
            prepared.apply()
        self.config = newConfig
        self.log.info(
            "rmux: reloaded {source}: {changes}", source=source, changes=changes
        )
        return True

    def stopService(self):
        self._stopping = True
        return MultiService.stopService(self)


def metricsService(config, reactor, snapshots):
    """
    The stats and metrics reporting C{config} asks for, if any.

    L{rmux.metrics} (and the libraries it needs) is imported only when
    some report is configured.

    @param snapshots: returns the listeners' snapshots, one per listener.
    @return: an L{rmux.metrics.MetricsService}, or L{None}.
    """
    if not (config.statsPort or config.metricsPort or config.graphite):
        return None
    from rmux.metrics import MetricsService, metricsWanted

    if not metricsWanted(config):
        return None
    return MetricsService(config, reactor, snapshots)


class RmuxService(Listeners):
    """
    Every listener of one rmux configuration, in this process; SIGHUP
    reloads the configuration (L{reload}).

    @cvar reloadOnHangup: whether the service handles SIGHUP while it runs;
        a program that embeds rmux and has its own use for the signal turns
        it off, and calls L{reload} itself.
    """

    reloadOnHangup = True

    def __init__(self, config, reactor):
        Listeners.__init__(self, config, reactor)
        MemoryTrimmer(reactor).setServiceParent(self)
        table = CommandTable.default()
        for listener in config.listeners:
            service = ListenerService(listener, reactor, table)
            service.setServiceParent(self)
            self.listeners.append(service)
        self.metrics = metricsService(config, reactor, self.snapshots)
        if self.metrics is not None:
            self.metrics.setServiceParent(self)
        self.hangup = HangupHandler(reactor, self.reload)

    def startService(self):
        Listeners.startService(self)
        if self.reloadOnHangup:
            self.hangup.install()
        self.ready = DeferredList(
            [listener.whenReady() for listener in self.listeners]
        ).addCallback(lambda _: self._announceReady())

    def _announceReady(self):
        if not self.running:
            return
        self.log.info(
            "rmux: ready: {listeners}",
            listeners="; ".join(listener.describeState() for listener in self.listeners),
        )
        notify("READY=1")

    def reload(self, newConfig=None):
        notify("RELOADING=1")
        done = Listeners.reload(self, newConfig)

        def reloaded(result):
            notify("READY=1")
            return result

        return done.addBoth(reloaded)

    def stopService(self):
        notify("STOPPING=1")
        self.log.info("rmux: stopping")
        self.hangup.uninstall()
        return Listeners.stopService(self)
