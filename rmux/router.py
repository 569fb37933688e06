# -*- test-case-name: tests.test_router,tests.test_multiplex -*-
"""
Turns a parsed command into backend requests, and their replies into one.

With one backend every command goes to its pool.  With several, each key is
placed by its listener's routes (longest prefix), hash tag, distribution and
health: a command whose keys all live on one server goes there; MGET, MSET,
DEL, UNLINK, EXISTS and TOUCH are split per server and merged; keyless
commands go to any one server, to every server (merged), or are refused, as
the command table says.
"""

import random

from twisted.internet.defer import gatherResults
from zope.interface import implementer

from rmux import commands as C
from rmux.hashing import PrefixRoutes, hashTagged
from rmux.interfaces import IReplyWaiter, IRequestSender, IRouter
from rmux.resp import ReplyFramer, encodeRequest, errorReply

#: Commands whose first argument is a channel, placed like a key so that
#: every rmux host publishes a channel on the same server.
_CHANNEL_COMMANDS = frozenset(["publish", "spublish"])

CROSSSLOT = (
    b"-CROSSSLOT Keys in request don't hash to the same server behind rmux\r\n"
)
#: Redis Cluster's error for keys in several slots, byte for byte, for keys
#: a cluster places (a listener's or a route's).
SLOT_CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"

#: How long a command waits before it is sent again after C{-TRYAGAIN},
#: C{-CLUSTERDOWN} or a lost connection (a failover in progress).
RETRY_DELAY = 0.25


class PlacementError(Exception):
    """
    A command cannot be placed on a server now: its server is down, its
    keys span servers, no route takes its key.

    @ivar reply: what the client gets instead, an error reply (C{bytes}).
    """

    def __init__(self, reply):
        Exception.__init__(self, reply)
        self.reply = reply

    @classmethod
    def because(cls, message):
        """
        A placement error whose reply is C{-ERR message}.
        """
        return cls(errorReply(message))


class PoolGroup:
    """
    The servers one route places keys over.

    @ivar pools: one L{rmux.pool.BackendPool} per configured backend, in
        hashing order (a pool may appear twice if its server is listed
        twice, as Go rmux allows).
    @ivar ring: the distribution (L{rmux.hashing.RmuxRing} or
        L{rmux.hashing.KetamaRing}), or L{None} with a single backend.
    """

    #: The L{rmux.cluster.ClusterRouter} placing this route's keys, or
    #: L{None}: the servers above do.
    cluster = None

    def __init__(self, pools, ring=None, hashTag=None, failover=False):
        self.pools = pools
        self.ring = ring if len(pools) > 1 else None
        self.hashTag = hashTag
        self.failover = failover


class ClusterGroup(PoolGroup):
    """
    A route whose keys a Redis Cluster places: its router's map says which
    node serves each key, the nodes it names are its pools.
    """

    def __init__(self, cluster):
        PoolGroup.__init__(self, [])
        self.cluster = cluster


#: What a command gets when a cluster's map is needed and none is known.
MAP_UNKNOWN = "rmux: the cluster's slot map is not known yet"


class MapPending(PlacementError):
    """
    A key of a cluster route whose map is not read yet: the command waits
    for it, as a cluster listener's commands do.

    @ivar cluster: the L{rmux.cluster.ClusterRouter} being waited for.
    """

    def __init__(self, cluster):
        PlacementError.__init__(self, errorReply(MAP_UNKNOWN))
        self.cluster = cluster


@implementer(IReplyWaiter)
class Redirectable:
    """
    The waiter of a request its router may send again: the client's waiter
    gets the reply, unless the router's C{redirect(request, reply)} takes
    it to ask elsewhere or again (L{ClusterRouter.redirect},
    L{rmux.sentinel.SentinelRouter.redirect}).

    @ivar pool: where the request went last.
    @ivar deadline: when retries after a failure stop (set at the first).
    """

    __slots__ = ("router", "sender", "payload", "waiter", "pool", "redirects", "deadline",
                 "data")

    def __init__(self, router, sender, payload, waiter, pool):
        self.router = router
        self.sender = sender
        self.payload = payload
        self.waiter = waiter
        self.pool = pool
        self.redirects = 0
        self.deadline = None
        self.data = None

    def fill(self, reply):
        if reply[:1] == b"-" and self.router.redirect(self, reply):
            return
        self.data = reply
        self.waiter.fill(reply)

    def sendTo(self, pool):
        self.pool = pool
        self.sender.send(pool, self.payload, self)

    def mayRetry(self, now, budget):
        """
        Whether a retry L{RETRY_DELAY} from C{now} is within C{budget}
        seconds of the first failure (which this call notes).
        """
        if self.deadline is None:
            self.deadline = now + budget
            return True
        return now + RETRY_DELAY <= self.deadline


@implementer(IRequestSender)
class RedirectingSender:
    """
    A client's sender whose requests its router may send again (a cluster's
    redirections, a Sentinel failover).
    """

    __slots__ = ("router", "sender")

    def __init__(self, router, sender):
        self.router = router
        self.sender = sender

    @property
    def db(self):
        return self.sender.db

    @property
    def protocolVersion(self):
        return self.sender.protocolVersion

    def send(self, pool, payload, waiter, count=1):
        self.sender.send(
            pool, payload, Redirectable(self.router, self.sender, payload, waiter, pool), count
        )


class ClusterRoutes:
    """
    The part of a L{Router} that serves its cluster routes (routes whose
    keys a Redis Cluster places, L{ClusterGroup}): their routers' maps are
    read while it runs, their masters count among its pools, and their
    nodes' redirections are followed by the cluster they come from.

    @ivar clusters: the cluster routes' L{rmux.cluster.ClusterRouter}s.
    @ivar servers: the configured servers' pools, which the health monitor
        judges.
    @ivar onChange: called when a cluster route's map changes where keys
        go.
    """

    clusters = ()

    def start(self):
        """
        Start reading the cluster routes' maps; the rest of the placement
        is the configuration's.
        """
        self._watchClusters()
        for cluster in self.clusters:
            cluster.start()

    def stop(self):
        """
        @return: the L{Deferred}s of what stops: the cluster routes' pools
            (the servers' pools are the listener's).
        """
        return [stopped for cluster in self.clusters for stopped in cluster.stop()]

    def refresh(self):
        """
        Read the cluster routes' maps again.

        @return: a L{Deferred} that fires when every read is over.
        """
        return gatherResults([cluster.refresh() for cluster in self.clusters])

    def _watchClusters(self):
        for cluster in self.clusters:
            if self._clusterChanged not in cluster.onChange:
                cluster.onChange.append(self._clusterChanged)

    def _clusterChanged(self):
        self._countPools()
        for callback in self.onChange:
            callback()

    def _countPools(self):
        """
        The pools this listener serves from: its servers', then the cluster
        routes' masters, as their maps say now.
        """
        pools = list(self.servers)
        for cluster in self.clusters:
            pools.extend(pool for pool in cluster.pools if pool not in pools)
        self.pools = pools

    def clusterOf(self, pool):
        """
        The cluster route whose node C{pool} is, or L{None}: a server's.
        """
        for cluster in self.clusters:
            if cluster.owns(pool):
                return cluster
        return None

    def redirect(self, request, reply):
        """
        A cluster route's redirection or retry, by the cluster whose node
        C{request} went to (see L{Redirectable}); a server's errors are the
        client's.
        """
        cluster = self.clusterOf(request.pool)
        return cluster is not None and cluster.redirect(request, reply)

    def _clusterPool(self, cluster, key):
        if cluster.map is None:
            raise MapPending(cluster)
        return cluster.poolForKey(key)

    def whenPlaced(self):
        for cluster in self.clusters:
            if cluster.map is None:
                return cluster.whenReady()
        return None

    def patternPools(self):
        """
        The servers, and one master of each cluster route (see
        L{rmux.interfaces.IRouter.patternPools}).
        """
        return [pool for pool in self.pools if self.clusterOf(pool) is None] + [
            cluster.pools[0] for cluster in self.clusters if cluster.pools]

    def patternPoolOf(self, pool):
        cluster = self.clusterOf(pool)
        return pool if cluster is None else cluster.patternPoolOf(pool)

    def blockingRedirect(self, reply, redirects):
        """
        A cluster route's node redirected a blocking command: its cluster
        says where (independent servers never redirect).
        """
        for cluster in self.clusters:
            if cluster.knowsTarget(reply):
                return cluster.blockingRedirect(reply, redirects)
        return None

    def _countMasters(self):
        """
        Take the cluster routes' masters into L{pools} as their maps say
        now (a command waiting for a first map runs before its change is
        told).

        @raise MapPending: a cluster route's masters are not known yet (a
            command for every server would miss them).
        """
        for cluster in self.clusters:
            if cluster.map is None:
                raise MapPending(cluster)
        if self.clusters:
            self._countPools()


@implementer(IRouter)
class Router(ClusterRoutes):
    """
    Routes one listener's commands.

    @ivar pools: every distinct pool of the listener, for INFO and health.
    @ivar stats: the listener's L{rmux.stats.ListenerStats}, which count
        the requests a command was split into.
    """

    def __init__(self, default, routes=(), health=None, allowFlush=False, stats=None,
                 crossServerTransactions=False):
        """
        @param default: the catch-all L{PoolGroup}.
        @param routes: C{(prefix, group)} pairs: keys starting with
            C{prefix} (bytes; the longest match wins) go to that
            L{PoolGroup} instead.
        @param health: the L{rmux.health.HealthMonitor}, or L{None}.
        """
        self.default = default
        self.routes = PrefixRoutes(list(routes), default) if routes else None
        self.health = health
        self.allowFlush = allowFlush
        self.crossServerTransactions = crossServerTransactions
        self.stats = stats
        groups = [default] + [group for prefix, group in routes]
        seen = []
        for group in groups:
            for pool in group.pools:
                if pool not in seen:
                    seen.append(pool)
        #: The configured servers' pools, which the health monitor judges.
        self.servers = seen
        #: The cluster routes' routers, whose maps name their pools.
        self.clusters = [group.cluster for group in groups if group.cluster is not None]
        self.pools = seen
        self.single = default.pools[0] if len(seen) == 1 and not self.clusters else None
        #: Called when a cluster route's map changes where keys go.
        self.onChange = []

    def adopt(self, other):
        """
        Take C{other}'s placement (groups, routes, pools, settings), all in
        one step: a live reload builds a whole new L{Router}, then this one,
        which every client and the pub/sub hub hold on to, becomes it.
        Nothing runs between the assignments, so no request sees half of
        the new placement; requests already sent stay where they went.

        Every attribute is copied, so that one added to L{Router} later
        cannot be forgotten here, but for who is told of changes.  The
        cluster routes C{other} brings are started by the reload.
        """
        onChange = self.onChange
        vars(self).update(vars(other))
        self.onChange = onChange
        self._watchClusters()
        self._countPools()

    def route(self, args, spec, waiter, sender, payload=None):
        """
        Send one command; C{waiter.fill} gets its reply.

        @param sender: the client's L{rmux.interfaces.IRequestSender}.
        @param payload: C{args} as the client encoded them, when that is
            canonical: sent as they are to the one server the command goes
            to, instead of encoding C{args} again.
        """
        if self.single is not None:
            sender.send(self.single, payload or encodeRequest(args), waiter)
            return
        if self.health is not None and self.health.starting:
            pending = self.health.whenStarted()
            if pending is not None:
                pending.addCallback(
                    lambda _: self.route(args, spec, waiter, sender, payload)
                )
                return
        try:
            self._place(args, spec, waiter, self.passThroughSender(sender), payload)
        except MapPending as e:
            e.cluster.whenReady().addCallback(
                lambda _: self._routeOnce(args, spec, waiter, sender, payload))
        except PlacementError as e:
            waiter.fill(e.reply)

    def _routeOnce(self, args, spec, waiter, sender, payload):
        """
        Place a command that waited for a cluster route's map: with the
        map read, or with the error that it could not be.
        """
        try:
            self._place(args, spec, waiter, self.passThroughSender(sender), payload)
        except PlacementError as e:
            waiter.fill(e.reply)

    def _place(self, args, spec, waiter, sender, payload):
        routing = spec.routing
        if routing == C.SPLIT:
            indexes = spec.keyIndexes(args)
            if len(indexes) > 1:
                self._split(args, spec, waiter, sender, indexes)
                return
        if routing in (C.KEYED, C.SPLIT) or spec.name in _CHANNEL_COMMANDS or (
            routing == C.KEYLESS_ANY
        ):
            pool = None
            if routing != C.KEYLESS_ANY:
                pool = self.poolForCommand(args, spec)
            if pool is None:
                pool = self.anyPool()
            sender.send(pool, payload or encodeRequest(args), waiter)
        elif routing == C.KEYLESS_ALL:
            if spec.requiresOption == C.OPTION_ALLOW_FLUSH and not self.allowFlush:
                raise PlacementError.because(
                    "%s is disabled in rmux: it would empty every server; "
                    "enable it with allowFlush" % (spec.name.upper(),)
                )
            self._all(args, spec, waiter, sender)
        elif routing == C.CURSOR:
            self._scan(args, waiter, sender)
        else:
            raise PlacementError.because(
                "%s cannot run through rmux with several servers: %s"
                % (spec.name.upper().replace("|", " "), spec.reason or "unsupported")
            )

    # Placement

    def poolForKey(self, key):
        """
        The pool that must serve C{key} now.

        @return: a pool.
        @raise PlacementError: the key's server is down and failover
            cannot help, or no route takes the key.
        """
        group = self.default
        if self.routes is not None:
            group = self.routes.match(key)
            if group is None:
                raise PlacementError.because("rmux: no route for this key")
            if group.cluster is not None:
                return self._clusterPool(group.cluster, key)
        ring = group.ring
        if ring is None:
            return group.pools[0]
        hashed = key if group.hashTag is None else hashTagged(key, group.hashTag)
        index = ring.backendOf(hashed)
        pools = group.pools
        health = self.health
        if health is None or health.isUp(pools[index]):
            return pools[index]
        if not group.failover:
            raise PlacementError.because("rmux: backend %s is down" % (pools[index].address,))
        index = ring.failoverOf(hashed, lambda i: health.isUp(pools[i]))
        if index is None:
            raise PlacementError.because("rmux: every backend is down")
        return pools[index]

    def poolForCommand(self, args, spec):
        """
        The one server that must run C{args} when it cannot be split: in a
        transaction, or as a blocking command on a dedicated connection.

        @return: a pool, or L{None} when any server will do (no keys).
        @raise PlacementError: the keys span servers, one is down, or the
            command cannot run on one server.
        """
        if self.single is not None:
            return self.single
        if spec.name in _CHANNEL_COMMANDS:
            keys = [args[1]]
        elif spec.routing in (C.KEYED, C.SPLIT):
            keys = [args[i] for i in spec.keyIndexes(args)]
        elif spec.routing == C.KEYLESS_ANY:
            return None
        else:
            raise PlacementError.because(
                "%s cannot run on a single server's connection through rmux "
                "with several servers" % (spec.name.upper().replace("|", " "),)
            )
        if not keys:
            return None
        pool = self.poolForKey(keys[0])
        cluster = self.clusterOf(pool)
        if cluster is not None:
            slot = cluster.shardOfKey(keys[0])
            if any(cluster.shardOfKey(key) != slot for key in keys[1:]):
                raise PlacementError(SLOT_CROSSSLOT)
        for key in keys[1:]:
            if self.poolForKey(key) is not pool:
                raise PlacementError(CROSSSLOT)
        return pool

    def ready(self):
        """
        Whether the listener can serve: every server has been found up by
        the health checks, or with failover at least one (no health
        monitor: always).
        """
        if not all(cluster.ready() for cluster in self.clusters):
            return False
        if self.health is None:
            return True
        states = self.health.states()
        up = sum(1 for pool in self.servers if states.get(pool) == "up")
        return up > 0 and (self.default.failover or up == len(self.servers))

    def topologySnapshot(self):
        """
        What the placement is made of, for INFO and /metrics: its kind,
        its counters (none for configured servers), and the nodes it
        learned, each with a short text.
        """
        if not self.clusters:
            return {"kind": "servers", "counters": {}, "nodes": {}}
        counters, nodes = {}, {}
        for cluster in self.clusters:
            snapshot = cluster.topologySnapshot()
            for name, count in snapshot["counters"].items():
                counters[name] = counters.get(name, 0) + count
            nodes.update(snapshot["nodes"])
        return {"kind": "cluster", "counters": counters, "nodes": nodes}

    def passThroughPool(self, commands):
        """
        The one server every command of C{commands} (each with its only key
        as its first argument) goes to, or L{None}: they span servers, one
        cannot be placed (the general path gives the error), or the health
        monitor has no first verdicts yet.
        """
        if self.single is not None:
            return self.single
        if self.health is not None and self.health.starting:
            return None
        try:
            pool = self.poolForKey(commands[0][1])
            for args in commands[1:]:
                if self.poolForKey(args[1]) is not pool:
                    return None
        except PlacementError:
            return None
        if len(commands) > 1 and self.clusterOf(pool) is not None:
            # A batch could meet a redirection part way (see ClusterRouter).
            return None
        return pool

    def passThroughSender(self, sender):
        if self.clusters:
            return RedirectingSender(self, sender)
        return sender

    def anyPool(self):
        """
        A live server of the catch-all group.

        @raise PlacementError: every server is down.
        """
        health = self.health
        for pool in self.default.pools:
            if health is None or health.isUp(pool):
                return pool
        raise PlacementError.because("rmux: every backend is down")

    def _split(self, args, spec, waiter, sender, indexes):
        """
        Split a multi-key command per server, keeping each key's arguments
        (MSET's value) with it.
        """
        units = {}
        order = []
        pools = {}
        bounds = indexes[1:] + [len(args)]
        for position, (start, end) in enumerate(zip(indexes, bounds)):
            unit, pool = self.splitUnit(args[start])
            if unit not in units:
                units[unit] = []
                order.append(unit)
                pools[unit] = pool
            units[unit].append((position, args[start:end]))
        if len(order) == 1:
            sender.send(pools[order[0]], encodeRequest(args), waiter)
            return
        head = args[: indexes[0]]
        fanOut = FanOut(waiter, spec.merge, len(order), len(indexes))
        self._countFragments(len(order))
        for part, unit in enumerate(order):
            pool = pools[unit]
            pieces = units[unit]
            partArgs = list(head)
            for position, unit in pieces:
                partArgs.extend(unit)
            part = fanOut.part(part, [position for position, unit in pieces])
            sender.send(pool, encodeRequest(partArgs), part)

    def splitUnit(self, key):
        """
        What a split command's keys are grouped by, and where that group
        goes: here, their server.

        @return: C{(unit, pool)}.
        """
        pool = self.poolForKey(key)
        cluster = self.clusterOf(pool)
        if cluster is not None:
            # A node refuses keys of several slots in one command.
            return (pool, cluster.shardOfKey(key)), pool
        return pool, pool

    def _all(self, args, spec, waiter, sender):
        pools = self.livePools()
        if len(pools) == 1:
            sender.send(pools[0], encodeRequest(args), waiter)
            return
        fanOut = FanOut(waiter, spec.merge, len(pools))
        self._countFragments(len(pools))
        payload = encodeRequest(args)
        for part, pool in enumerate(pools):
            sender.send(pool, payload, fanOut.part(part, pool=pool))

    def livePools(self):
        """
        The servers a command for every server goes to: all of them; with
        failover, those that are up.

        @raise PlacementError: a server is down and failover is off (the
            answer would silently miss its data), or every server is down.
        """
        self._countMasters()
        health = self.health
        if health is None:
            return self.pools
        live = [pool for pool in self.pools if health.isUp(pool)]
        if len(live) < len(self.pools) and not self.default.failover:
            down = next(pool for pool in self.pools if pool not in live)
            raise PlacementError.because("rmux: backend %s is down" % (down.address,))
        if not live:
            raise PlacementError.because("rmux: every backend is down")
        return live

    # SCAN

    #: The bits of a SCAN cursor that hold the server's own cursor; the
    #: ones above say which server (counted in L{pools}).  The cursor
    #: stays below 2**63, which clients that keep it in a signed 64-bit
    #: integer (phpredis) need.
    cursorBits = 55

    def _scan(self, args, waiter, sender):
        """
        SCAN over every server in turn: the cursor rmux hands out says which
        server to ask next and where in it, so that a loop visits every
        key of every server as Redis guarantees for one.
        """
        cursor = _cursor(args[1])
        if cursor is None:
            raise PlacementError(b"-ERR invalid cursor\r\n")
        self._countMasters()
        index, position = cursor >> self.cursorBits, cursor & ((1 << self.cursorBits) - 1)
        pools = self.pools
        health = self.health
        while index < len(pools) and health is not None and not health.isUp(pools[index]):
            if not self.default.failover:
                raise PlacementError.because(
                    "rmux: backend %s is down" % (pools[index].address,))
            index, position = index + 1, 0
        if index >= len(pools):
            if cursor >> self.cursorBits >= len(pools):
                raise PlacementError(b"-ERR invalid cursor\r\n")
            waiter.fill(b"*2\r\n$1\r\n0\r\n*0\r\n")
            return
        command = [args[0], b"%d" % (position,)] + list(args[2:])
        sender.send(pools[index], encodeRequest(command), _ScanPart(self, waiter, index))

    def nextCursor(self, index, position):
        """
        The cursor rmux hands out after server C{index} answered with
        C{position}.
        """
        if position == 0:
            index += 1
            return index << self.cursorBits if index < len(self.pools) else 0
        if position >> self.cursorBits:
            return None
        return (index << self.cursorBits) | position

    def _countFragments(self, count):
        """
        Count the requests one client request was split into (twemproxy's
        C{fragments}).
        """
        if self.stats is not None:
            self.stats.fragments += count


def _cursor(text):
    """
    A SCAN cursor as Redis reads it: an unsigned decimal, or L{None}.
    """
    if not text.isdigit() or len(text) > 20:
        return None
    value = int(text)
    return value if value < 2 ** 64 else None


@implementer(IReplyWaiter)
class _ScanPart:
    """
    The waiter for one server's SCAN: its reply with rmux's cursor in place
    of the server's.
    """

    __slots__ = ("router", "waiter", "index", "data")

    def __init__(self, router, waiter, index):
        self.router = router
        self.waiter = waiter
        self.index = index
        self.data = None

    def fill(self, reply):
        self.data = reply
        if reply[:2] != b"*2":
            self.waiter.fill(reply)
            return
        header = reply.index(b"\r\n", 4)
        start = header + 2
        end = reply.index(b"\r\n", start)
        cursor = self.router.nextCursor(self.index, int(reply[start:end]))
        if cursor is None:
            self.waiter.fill(errorReply("rmux: backend SCAN cursor too large to carry"))
            return
        text = b"%d" % (cursor,)
        self.waiter.fill(b"*2\r\n$%d\r\n%b\r\n" % (len(text), text) + reply[end + 2:])


@implementer(IReplyWaiter)
class _Part:
    """
    The waiter for one server's share of a fanned-out command.
    """

    __slots__ = ("fanOut", "index", "positions", "pool", "data")

    def __init__(self, fanOut, index, positions, pool=None):
        self.fanOut = fanOut
        self.index = index
        self.positions = positions
        self.pool = pool
        self.data = None

    def fill(self, reply):
        self.data = reply
        self.fanOut.partFilled()


class FanOut:
    """
    One client reply made from several servers' replies, merged when the
    last arrives.
    """

    def __init__(self, waiter, merge, parts, width=0):
        self.waiter = waiter
        self.merge = merge
        self.parts = []
        self.remaining = parts
        self.width = width

    def part(self, index, positions=(), pool=None):
        waiter = _Part(self, index, positions, pool)
        self.parts.append(waiter)
        return waiter

    def partFilled(self):
        self.remaining -= 1
        if self.remaining == 0:
            self.waiter.fill(merge(self.merge, self.parts, self.width))


def _elements(reply):
    """
    The raw elements of an array (or set/map) reply.
    """
    header = reply.index(b"\r\n") + 2
    if reply[1:header - 2] in (b"-1", b"?"):
        return []
    return ReplyFramer().feed(reply[header:])


def _isError(reply):
    return reply[:1] in (b"-", b"!")


def _isNil(reply):
    return reply in (b"$-1\r\n", b"*-1\r\n", b"_\r\n")


def _firstError(errors, total):
    """
    The error a fanned-out command answers: the servers' own when every
    one gave the same, else the first, naming its server.
    """
    first = errors[0]
    if len(errors) == total and all(e.data == first.data for e in errors):
        return first.data
    if getattr(first, "pool", None) is None or first.data[:1] != b"-":
        return first.data
    return first.data[:-2] + b" (backend %s)\r\n" % (str(first.pool.address).encode(),)


def merge(kind, parts, width=0):
    """
    Merge the replies of C{parts} (L{_Part}s, in sending order) into the
    reply one server holding all the data would have given.

    Any error wins, except where one success is enough (C{one-ok},
    C{any-non-nil}).

    @return: the merged reply, as bytes.
    """
    replies = [part.data for part in parts]
    if kind == C.MERGE_ONE_OK:
        for reply in replies:
            if not _isError(reply):
                return reply
        return replies[0]
    if kind == C.MERGE_ANY_NON_NIL:
        errors = [r for r in replies if _isError(r)]
        found = [r for r in replies if not _isError(r) and not _isNil(r)]
        if found:
            return random.choice(found)
        return errors[0] if errors else replies[0]
    errors = [part for part in parts if _isError(part.data)]
    if errors:
        return _firstError(errors, len(parts))
    if kind == C.MERGE_SUM:
        return b":%d\r\n" % sum(int(r[1:-2]) for r in replies)
    if kind == C.MERGE_MIN:
        return b":%d\r\n" % min(int(r[1:-2]) for r in replies)
    if kind == C.MERGE_MAX:
        return b":%d\r\n" % max(int(r[1:-2]) for r in replies)
    if kind == C.MERGE_ALL_OK:
        return replies[0]
    if kind == C.MERGE_SAME:
        if all(r == replies[0] for r in replies):
            return replies[0]
        return errorReply("rmux: the servers gave different replies")
    if kind == C.MERGE_IN_ORDER:
        elements = [None] * width
        for part in parts:
            for position, element in zip(part.positions, _elements(part.data)):
                elements[position] = element
        return b"*%d\r\n" % width + b"".join(elements)
    if kind == C.MERGE_CONCAT or kind == C.MERGE_UNION:
        elements = []
        for reply in replies:
            elements.extend(_elements(reply))
        if kind == C.MERGE_UNION:
            elements = list(dict.fromkeys(elements))
        return replies[0][:1] + b"%d\r\n" % len(elements) + b"".join(elements)
    if kind == C.MERGE_AND:
        columns = zip(*[_elements(r) for r in replies])
        elements = [b":0\r\n" if b":0\r\n" in column else b":1\r\n" for column in columns]
        return b"*%d\r\n" % len(elements) + b"".join(elements)
    if kind == C.MERGE_PAIRS_SUM:
        first = _elements(replies[0])
        counts = [0] * (len(first) // 2)
        for reply in replies:
            elements = _elements(reply)
            for i in range(len(counts)):
                counts[i] += int(elements[2 * i + 1][1:-2])
        out = []
        for i, count in enumerate(counts):
            out.append(first[2 * i])
            out.append(b":%d\r\n" % count)
        return b"*%d\r\n" % len(out) + b"".join(out)
    return errorReply("rmux: cannot merge replies (%s)" % (kind,))


class ReplicaReads:
    """
    The part of a router (a cluster's, a Sentinel group's) that sends
    read-only commands whose keys are all in one shard to a replica of that
    shard's master, taken in turn, as its C{readFrom} says: C{"master"}
    (never), C{"preferReplica"} (the master when the shard has none) or
    C{"replica"} (an error then).  Writes, transactions, blocking commands
    and commands over several shards stay on the masters.

    The router says what a shard is: L{shardOfKey}, L{replicasOf},
    L{hasMaster}, L{describeShard}.
    """

    readFrom = "master"
    _nextReplica = 0

    def _place(self, args, spec, waiter, sender, payload):
        if self.readFrom != "master" and spec.routing == C.KEYED and "readonly" in spec.flags:
            pool = self._replicaFor(args, spec)
            if pool is not None:
                sender.send(pool, payload or encodeRequest(args), waiter)
                return
        Router._place(self, args, spec, waiter, sender, payload)

    def _replicaFor(self, args, spec):
        """
        A replica of the shard of C{args}'s keys, or L{None} for the master
        (C{preferReplica} and no replica, keys of several shards, no keys).

        @raise PlacementError: C{replica}, and the shard's master has none.
        """
        keys = [args[i] for i in spec.keyIndexes(args)]
        if not keys:
            return None
        shard = self.shardOfKey(keys[0])
        if any(self.shardOfKey(key) != shard for key in keys[1:]):
            return None
        replicas = self.replicasOf(shard)
        if not replicas:
            if self.readFrom == "replica" and self.hasMaster(shard):
                raise PlacementError.because(
                    "rmux: no replica serves %s (readFrom is replica)"
                    % (self.describeShard(shard),))
            return None
        self._nextReplica += 1
        return replicas[self._nextReplica % len(replicas)]

