# -*- test-case-name: tests.test_cluster -*-
"""
Redis Cluster behind rmux: plain clients see one server.

L{ClusterRouter} is an L{IRouter} over the cluster's own placement: a
key's hash slot (CRC16 of the key or of its C{{hash tag}}, modulo 16384),
owned by one master in the slot map that rmux learns from the cluster
(C{CLUSTER SHARDS}, or C{CLUSTER SLOTS} from a node before Redis 7).  What L{rmux.router.Router} does over independent
servers (splitting MGET/MSET/DEL, fanning out keyspace-wide commands,
SCAN's walk) it does over the masters, with two differences: a multi-key
command is split per slot (a cluster refuses keys of several slots even on
one node), and a command that must run whole needs all its keys in one
slot (Redis's CROSSSLOT).

A reply of C{-MOVED} or C{-ASK} never reaches the client: the command is
sent again where the cluster says (C{ASKING} first for C{-ASK}), at most
L{MAX_REDIRECTS} times, and C{-MOVED} updates the map and asks for a fresh
one.  A command that meets a failover (its node lost, C{-TRYAGAIN},
C{-CLUSTERDOWN}) is sent again for a few seconds, where the next map says.  The map is also refreshed periodically and after a connection to a
node fails; never more than one refresh is in flight.
"""

import binascii
from dataclasses import replace

import hiredis
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from rmux import commands as C
from rmux.interfaces import IRouter
from rmux.replies import DeferredReply, IgnoredReply
from rmux.resp import encodeRequest, errorReply
from rmux.router import (
    MAP_UNKNOWN, RETRY_DELAY, SLOT_CROSSSLOT, PlacementError, RedirectingSender, ReplicaReads, Router)

SLOTS = 16384

#: How many times one command follows C{-MOVED}, C{-ASK}, C{-TRYAGAIN} or
#: C{-CLUSTERDOWN} before the client gets the error (redis-py's cluster
#: client follows 16; a map refreshed on the first MOVED needs one).
MAX_REDIRECTS = 5

_ASKING = encodeRequest([b"ASKING"])
_CLUSTER_SLOTS = encodeRequest([b"CLUSTER", b"SLOTS"])
_CLUSTER_SHARDS = encodeRequest([b"CLUSTER", b"SHARDS"])

#: The least time between two refreshes asked for by redirections: a
#: resharding answers many commands with MOVED at once.
MIN_REFRESH_GAP = 0.1


def keySlot(key):
    """
    The hash slot of C{key}, as Redis Cluster computes it: CRC16 (XMODEM)
    of the key, or of its hash tag (what is between the first C{{} and the
    first C{}} after it, if not empty), modulo 16384.
    """
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


class SlotMap:
    """
    Which master serves each slot: one entry per slot, a node address
    C{(host, port)} or L{None} for a slot nobody serves; and the replicas
    of each slot's master, a tuple of addresses per slot.
    """

    def __init__(self, owners, replicas=None):
        self.owners = owners
        self.replicas = replicas if replicas is not None else [()] * SLOTS

    @classmethod
    def fromClusterSlots(cls, reply, answeredBy):
        """
        The map in a C{CLUSTER SLOTS} reply.

        @param reply: the raw reply (RESP bytes).
        @param answeredBy: the address C{(host, port)} of the node that
            answered, for a master it lists without an endpoint.
        @raise ValueError: if C{reply} is not such a reply.
        """
        ranges = _parsed(reply, "CLUSTER SLOTS")
        owners = [None] * SLOTS
        replicas = [()] * SLOTS

        def address(endpoint):
            return _nodeAddress(endpoint[0], endpoint[1], answeredBy)

        for entry in ranges:
            start, end = entry[0], entry[1]
            count = end + 1 - start
            owners[start:end + 1] = [address(entry[2])] * count
            replicas[start:end + 1] = [tuple(address(r) for r in entry[3:])] * count
        return cls(owners, replicas)

    @classmethod
    def fromClusterShards(cls, reply, answeredBy, tls=False):
        """
        The map in a C{CLUSTER SHARDS} reply (Redis 7): each shard's slot
        ranges, its master, and its replicas that are online, each at its
        preferred endpoint (as C{CLUSTER SLOTS} gives them).

        @param tls: whether rmux reaches the nodes over TLS: their
            C{tls-port} then, else their C{port}.
        @raise ValueError: if C{reply} is not such a reply.
        """
        shards = _parsed(reply, "CLUSTER SHARDS")
        owners = [None] * SLOTS
        replicas = [()] * SLOTS
        for shard in shards:
            shard = _pairs(shard)
            master = None
            others = []
            for node in shard[b"nodes"]:
                node = _pairs(node)
                port = node.get(b"tls-port") if tls else node.get(b"port")
                if port is None:
                    continue
                address = _nodeAddress(node.get(b"endpoint", node.get(b"ip")), port, answeredBy)
                if node.get(b"role") == b"master":
                    master = address
                elif node.get(b"health") == b"online":
                    others.append(address)
            if master is None:
                continue
            ranges = shard[b"slots"]
            for start, end in zip(ranges[::2], ranges[1::2]):
                count = end + 1 - start
                owners[start:end + 1] = [master] * count
                replicas[start:end + 1] = [tuple(others)] * count
        return cls(owners, replicas)

    def masters(self):
        """
        The nodes that serve at least one slot, in address order.
        """
        return sorted({node for node in self.owners if node is not None})

    def slotsOf(self, node):
        return sum(1 for owner in self.owners if owner == node)


def _parsed(reply, command):
    reader = hiredis.Reader()
    reader.feed(reply)
    parsed = reader.gets()
    if not isinstance(parsed, list):
        raise ValueError("not a %s reply: %r" % (command, reply[:80]))
    return parsed


def _pairs(flat):
    """
    The RESP2 form of a map, C{[key, value, key, value, ...]}, as a dict.
    """
    if not isinstance(flat, list) or len(flat) % 2:
        raise ValueError("not a map: %r" % (flat,))
    return dict(zip(flat[::2], flat[1::2]))


def _nodeAddress(endpoint, port, answeredBy):
    """
    A node's C{(host, port)}; a node listed without an endpoint (C{""} or
    C{"?"}) is reached as the node that answered is.
    """
    host = endpoint.decode("utf-8") if endpoint else ""
    if host in ("", "?"):
        host = answeredBy[0]
    return (host, int(port))


def parseRedirection(reply):
    """
    @return: C{(kind, slot, (host, port))} of a C{-MOVED} or C{-ASK}
        C{reply}.
    @raise ValueError: it is not one.
    """
    kind, slot, where = reply[1:-2].split(b" ")
    host, _, port = where.decode("utf-8").rpartition(":")
    return kind, int(slot), (host, int(port))


_MOVED = (b"-MOVED ", b"-ASK ")
_RETRIED = (
    b"-TRYAGAIN", b"-CLUSTERDOWN", b"-ERR rmux: lost connection to backend ",
    b"-ERR rmux: cannot connect to backend ", b"-ERR rmux: backend ",
)


class ClusterStats:
    """
    What the cluster router counts: redirections followed and maps read.
    """

    def __init__(self):
        self.moved = 0
        self.ask = 0
        self.retries = 0
        self.refreshes = 0
        self.refreshFailures = 0

    def counters(self):
        return {"moved": self.moved, "ask": self.ask, "retries": self.retries,
                "map_reads": self.refreshes, "map_read_failures": self.refreshFailures}


@implementer(IRouter)
class ClusterRouter(ReplicaReads, Router):
    """
    Routes one listener's commands over a Redis Cluster.

    @ivar seeds: the configured nodes (L{rmux.config.BackendAddress}),
        asked for the map when no known master answers.
    @ivar map: the L{SlotMap}, or L{None} until one is known.
    @ivar pools: the masters' pools, in address order.
    """

    log = Logger()

    def __init__(self, reactor, seeds, newPool, interval=5.0, allowFlush=False, stats=None,
                 retire=None, retryBudget=8.0, readFrom="master"):
        """
        @param newPool: makes the pool of a node from its address (a
            L{rmux.config.BackendAddress} like the seeds', for its host and
            port).
        @param interval: seconds between two periodic refreshes of the map.
        @param retire: called with the pools of nodes that left the map.
        @param retryBudget: seconds during which a command that met a
            failover (a lost node, C{-TRYAGAIN}, C{-CLUSTERDOWN}) is sent
            again before the client gets the error.
        @param readFrom: where read-only commands go: C{"master"},
            C{"preferReplica"} or C{"replica"}.
        """
        self.retryBudget = retryBudget
        self.readFrom = readFrom
        self.replicaPools = [()] * SLOTS
        self.reactor = reactor
        self.seeds = list(seeds)
        self.newPool = newPool
        self.retire = retire or (lambda pools: [pool.stop() for pool in pools])
        self.allowFlush = allowFlush
        self.crossServerTransactions = False
        self.stats = stats
        self.health = None
        self.routes = None
        self.single = None
        self.map = None
        self.pools = []
        self.byNode = {}
        self.owners = [None] * SLOTS
        self.cluster = ClusterStats()
        self.onChange = []
        #: Whether the map is read with CLUSTER SHARDS (Redis 7), or with
        #: CLUSTER SLOTS, once a node did not know SHARDS.
        self.askShards = True
        self._refreshing = None
        self._lastRefresh = None
        self._ready = []
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = reactor
        self._interval = interval

    def start(self):
        self._loop.start(self._interval, now=True)

    def stop(self):
        self.stopRefreshing()
        return [pool.stop() for pool in self.ownPools()]

    def stopRefreshing(self):
        """
        Read the map no more, and let commands waiting for a first map go
        on (a reload dropped this cluster's route: they are placed again,
        the new way).
        """
        if self._loop.running:
            self._loop.stop()
        for waiter in self._ready:
            waiter.callback(None)
        self._ready = []

    def ownPools(self):
        """
        Every pool this router made: masters, replicas, seeds.
        """
        return list(self.byNode.values())

    def adopt(self, other):
        """
        Refused: a cluster's placement is the cluster's, and its seeds
        change with a restart (L{rmux.service.ListenerService.prepareReload}
        says so before this could be reached).
        """
        raise ValueError("a cluster listener is not reloaded; restart rmux to change it")

    # The map

    def _poolFor(self, node):
        pool = self.byNode.get(node)
        if pool is None:
            seed = self.seeds[0]
            pool = self.byNode[node] = self.newPool(replace(seed, host=node[0], port=node[1]))
            # Any node may be a replica rmux reads from, or become one.
            pool.readsFromReplica = self.readFrom != "master"
        return pool

    def _candidates(self):
        """
        The pools to ask for the map, in order: the known masters, then the
        seeds.
        """
        candidates = list(self.pools)
        for seed in self.seeds:
            pool = self._poolFor((seed.host, seed.port))
            if pool not in candidates:
                candidates.append(pool)
        return candidates

    def refresh(self):
        """
        Read the slot map from the first node that gives it, unless a read
        is already in flight.

        @return: a L{Deferred} that fires when this read is over.
        """
        if self._refreshing is not None:
            return self._refreshing
        self._lastRefresh = self.reactor.seconds()
        done = self._refreshing = Deferred()
        self._ask(self._candidates(), [])
        return done

    def _ask(self, candidates, failures):
        if not candidates:
            self.cluster.refreshFailures += 1
            self.log.warn("rmux: cluster map not read: {why}", why="; ".join(failures))
            self._refreshed()
            return
        pool = candidates.pop(0)
        query = DeferredReply()
        shards = self.askShards
        pool.send(_CLUSTER_SHARDS if shards else _CLUSTER_SLOTS, query)
        query.deferred.addCallback(self._answer, pool, candidates, failures, shards)

    def _answer(self, reply, pool, candidates, failures, shards):
        address = pool.address
        if shards and reply[:1] == b"-" and b"unknown subcommand" in reply.lower():
            # Before Redis 7: CLUSTER SLOTS, from now on.
            self.askShards = False
            self._ask([pool] + candidates, failures)
            return
        try:
            if reply[:1] in (b"-", b"!"):
                raise ValueError(reply[1:-2].decode("utf-8", "replace"))
            answeredBy = (address.host, address.port)
            if shards:
                slotMap = SlotMap.fromClusterShards(reply, answeredBy, bool(self.seeds[0].tls))
            else:
                slotMap = SlotMap.fromClusterSlots(reply, answeredBy)
        except (ValueError, KeyError, TypeError) as e:
            failures.append("%s: %s" % (address, e))
            self._ask(candidates, failures)
            return
        self._install(slotMap)
        self._refreshed()

    def _refreshed(self):
        self.cluster.refreshes += 1
        done, self._refreshing = self._refreshing, None
        done.callback(None)
        # Commands waiting for a first map go on, to the map read, or to
        # an error if none could be: no command waits longer than a read.
        ready, self._ready = self._ready, []
        for waiter in ready:
            waiter.callback(None)

    def _install(self, slotMap):
        masters = slotMap.masters()
        previous = set(self.pools)
        moved = self.map is None or self.map.owners != slotMap.owners
        self.map = slotMap
        self.pools = [self._poolFor(node) for node in masters]
        self.owners = [None if node is None else self.byNode[node] for node in slotMap.owners]
        current = set(self.pools)
        kept = set(current)
        if self.readFrom != "master":
            byReplicas = {replicas: tuple(self._poolFor(node) for node in replicas)
                          for replicas in set(slotMap.replicas)}
            self.replicaPools = [byReplicas[replicas] for replicas in slotMap.replicas]
            kept.update(pool for pools in byReplicas.values() for pool in pools)
        seedNodes = {(seed.host, seed.port) for seed in self.seeds}
        gone = [pool for node, pool in list(self.byNode.items())
                if pool not in kept and node not in seedNodes]
        for pool in gone:
            del self.byNode[(pool.address.host, pool.address.port)]
        if gone:
            self.retire(gone)
        if current != previous:
            self.log.info(
                "rmux: cluster map: {masters} masters ({nodes})",
                masters=len(masters), nodes=", ".join("%s:%d" % node for node in masters),
            )
        if moved:
            # Shard channels follow their slots (see SubscriptionHub).
            for callback in self.onChange:
                callback()

    def whenReady(self):
        """
        A L{Deferred} that fires when the map read in progress (or started
        now) is over, whether it found a map or not, or the router stops.
        """
        waiter = Deferred()
        self._ready.append(waiter)
        if self._refreshing is None:
            self.refresh()
        return waiter

    # Redirections

    def redirect(self, request, reply):
        """
        Send C{request} (a L{Redirectable}) again where the error C{reply}
        says, if it says to.

        @return: whether the request was taken (else C{reply} is the
            client's).
        """
        if reply.startswith(_MOVED):
            if request.redirects >= MAX_REDIRECTS:
                return False
            request.redirects += 1
            target = self._follow(reply)
            if target is None:
                return False
            pool, asking = target
            if asking:
                request.sender.send(pool, _ASKING, IgnoredReply())
            request.sendTo(pool)
            return True
        if not reply.startswith(_RETRIED):
            return False
        # TRYAGAIN, CLUSTERDOWN, a node lost: the cluster is changing;
        # send it again a moment later, within the budget.
        if not request.mayRetry(self.reactor.seconds(), self.retryBudget):
            return False
        self.cluster.retries += 1
        self.refresh()
        self.reactor.callLater(RETRY_DELAY, self._retry, request)
        return True

    def _redirection(self, reply):
        """
        @return: C{(kind, slot, pool)} of a C{-MOVED} or C{-ASK} C{reply}.
        @raise ValueError: it is not one.
        """
        kind, slot, node = parseRedirection(reply)
        return kind, slot, self._poolFor(node)

    def _moved(self, slot, pool):
        """
        C{slot} is C{pool}'s now, a node said: use it at once, and read the
        whole map again (at most every L{MIN_REFRESH_GAP}).
        """
        self.cluster.moved += 1
        self.owners[slot] = pool
        if self._lastRefresh is None or (
            self.reactor.seconds() - self._lastRefresh >= MIN_REFRESH_GAP
        ):
            self.refresh()

    def owns(self, pool):
        """
        Whether C{pool} is one of this cluster's nodes.
        """
        address = pool.address
        return self.byNode.get((address.host, address.port)) is pool

    def knowsTarget(self, reply):
        """
        Whether the node a C{-MOVED} or C{-ASK} C{reply} names is one of
        this cluster's, as far as its map says.
        """
        try:
            return parseRedirection(reply)[2] in self.byNode
        except (ValueError, UnicodeDecodeError):
            return False

    def blockingRedirect(self, reply, redirects):
        if redirects >= MAX_REDIRECTS or not reply.startswith(_MOVED):
            return None
        return self._follow(reply)

    def _follow(self, reply):
        """
        Where a C{-MOVED} or C{-ASK} C{reply} sends its command, counted
        (and a C{MOVED} taken into the map).

        @return: C{(pool, asking)}, or L{None} if C{reply} is not one.
        """
        try:
            kind, slot, pool = self._redirection(reply)
        except (ValueError, UnicodeDecodeError):
            return None
        if kind == b"MOVED":
            self._moved(slot, pool)
            return pool, False
        self.cluster.ask += 1
        return pool, True

    def _retry(self, request):
        """
        Send C{request} again: to the node it went to if that still is a
        master (it redirects if the slot moved), else to any master, which
        does.
        """
        pool = request.pool
        if pool not in self.pools:
            if not self.pools:
                request.fill(errorReply("rmux: no cluster node serves now"))
                return
            pool = self.pools[0]
        request.sendTo(pool)

    # IRouter

    def route(self, args, spec, waiter, sender, payload=None):
        if self.map is None:
            self.whenReady().addCallback(
                lambda _: self._routeKnown(args, spec, waiter, sender, payload))
            return
        self._routeKnown(args, spec, waiter, sender, payload)

    def _routeKnown(self, args, spec, waiter, sender, payload):
        if self.map is None:
            waiter.fill(errorReply(MAP_UNKNOWN))
            return
        try:
            self._place(args, spec, waiter, RedirectingSender(self, sender), payload)
        except PlacementError as e:
            waiter.fill(e.reply)

    # ReplicaReads

    shardOfKey = staticmethod(keySlot)

    def replicasOf(self, slot):
        return self.replicaPools[slot]

    def hasMaster(self, slot):
        return self.owners[slot] is not None

    def describeShard(self, slot):
        return "slot %d" % (slot,)

    def poolForKey(self, key):
        pool = self.owners[keySlot(key)]
        if pool is None:
            if self.map is None:
                raise PlacementError.because(MAP_UNKNOWN)
            raise PlacementError(b"-CLUSTERDOWN Hash slot not served\r\n")
        return pool

    def poolForCommand(self, args, spec):
        if spec.name in ("publish", "spublish"):
            return self.poolForKey(args[1])
        if spec.routing == C.KEYLESS_ANY:
            return None
        if spec.routing not in (C.KEYED, C.SPLIT):
            raise PlacementError.because(
                "%s cannot run on a single node's connection through rmux "
                "with a cluster" % (spec.name.upper().replace("|", " "),)
            )
        keys = [args[i] for i in spec.keyIndexes(args)]
        if not keys:
            return None
        slot = keySlot(keys[0])
        for key in keys[1:]:
            if keySlot(key) != slot:
                raise PlacementError(SLOT_CROSSSLOT)
        return self.poolForKey(keys[0])

    def ready(self):
        return self.map is not None and bool(self.pools)

    def topologySnapshot(self):
        nodes = {}
        if self.map is not None:
            counts = {}
            for owner in self.map.owners:
                if owner is not None:
                    counts[owner] = counts.get(owner, 0) + 1
            nodes = {"%s:%d" % node: "slots=%d" % count for node, count in counts.items()}
        return {"kind": "cluster", "counters": self.cluster.counters(), "nodes": nodes}

    def passThroughPool(self, commands):
        """
        One command's node (a batch of several could meet a redirection
        part way, which only the general path follows per command); none
        when reads may go to replicas, which only the general path tells
        from writes.
        """
        if len(commands) != 1 or self.readFrom != "master":
            return None
        return self.owners[keySlot(commands[0][1])]

    def passThroughSender(self, sender):
        return RedirectingSender(self, sender)

    def anyPool(self):
        if not self.pools:
            raise PlacementError.because(MAP_UNKNOWN)
        return self.pools[0]

    def patternPools(self):
        return self.pools[:1]

    def whenPlaced(self):
        return self.whenReady() if self.map is None else None

    def patternPoolOf(self, pool):
        return self.pools[0] if self.pools else pool

    def livePools(self):
        if not self.pools:
            raise PlacementError.because(MAP_UNKNOWN)
        return self.pools

    def splitUnit(self, key):
        """
        A split command's keys are grouped by slot: a node refuses keys of
        several slots in one command, even slots it owns.
        """
        return keySlot(key), self.poolForKey(key)
