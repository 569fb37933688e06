# -*- test-case-name: tests.test_sentinel -*-
"""
Redis Sentinel behind rmux: the primaries a Sentinel group watches, by name.

A sentinel listener is given sentinels and one or more master names (one
per shard, placed with rmux's hashing by name, so a failover moves no key).
L{SentinelRouter} asks the sentinels where each master is
(C{SENTINEL GET-MASTER-ADDR-BY-NAME}), checks the answer with C{ROLE}
before sending it anything, follows C{+switch-master} on a sentinel's
pub/sub (every listed sentinel's), and asks again periodically and after a
subscription is lost.

A command that meets the switch (a write answered C{-READONLY} by the
demoted master, a master that cannot be reached, C{-LOADING},
C{-MASTERDOWN}) is sent again to the shard's current master for a few
seconds; such a command did not run, so sending it again is safe.  A
command whose connection was cut mid-request may have run: its client
gets the error.
"""

import weakref
from dataclasses import replace

import hiredis
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from rmux.cluster import MIN_REFRESH_GAP
from rmux.interfaces import IRouter
from rmux.pubsub import connectToBackend
from rmux.replies import DeferredReply
from rmux.resp import encodeRequest, errorReply
from rmux.hashing import hashTagged
from rmux.router import (
    RETRY_DELAY, PlacementError, PoolGroup, RedirectingSender, ReplicaReads, Router)

#: The channels a sentinel announces a failover on: the replica it tells
#: to become master, the same once it has seen it done (up to a second
#: later), and the end of the failover.  rmux follows the first: every
#: write the old master takes after the promotion is lost.
PROMOTING_CHANNEL = b"+failover-state-send-slaveof-noone"
PROMOTED_CHANNEL = b"+promoted-slave"
SWITCH_CHANNEL = b"+switch-master"
CHANNELS = (PROMOTING_CHANNEL, PROMOTED_CHANNEL, SWITCH_CHANNEL)

#: After C{PROMOTING_CHANNEL}, how often and how many times the replica's
#: ROLE is asked until it says master.
PROMOTION_POLL = 0.02
PROMOTION_POLLS = 100

_ROLE = encodeRequest([b"ROLE"])
_MASTER_ROLE = b"*3\r\n$6\r\nmaster\r\n"

#: Replies that mean the command did not run on a master that was one:
#: sent again to the shard's current master.
_RETRIED = (
    b"-READONLY ", b"-LOADING ", b"-MASTERDOWN ",
    b"-ERR rmux: cannot connect to backend ",
)

#: Seconds between two attempts to subscribe to a sentinel after losing one.
RESUBSCRIBE_DELAY = 1.0


def parseMasterAddress(reply):
    """
    The C{(host, port)} in a C{SENTINEL GET-MASTER-ADDR-BY-NAME} reply.

    @raise ValueError: the reply is an error, nil (an unknown name), or
        not an address.
    """
    reader = hiredis.Reader()
    reader.feed(reply)
    value = reader.gets()
    if isinstance(value, hiredis.ReplyError):
        raise ValueError(str(value))
    if value is None:
        raise ValueError("the sentinel does not know this master")
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("not an address: %r" % (reply[:80],))
    return value[0].decode("utf-8"), int(value[1])


def parseReplicas(reply):
    """
    The C{(host, port)} of each replica a C{SENTINEL REPLICAS} reply lists
    as serving: flagged only C{slave} (not down, not disconnected), its link
    to the master up; in address order.

    @raise ValueError: the reply is an error or not such a list.
    """
    reader = hiredis.Reader()
    reader.feed(reply)
    entries = reader.gets()
    if isinstance(entries, hiredis.ReplyError):
        raise ValueError(str(entries))
    if not isinstance(entries, list):
        raise ValueError("not a list of replicas: %r" % (reply[:80],))
    nodes = []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) % 2:
            raise ValueError("not a replica: %r" % (entry,))
        fields = dict(zip(entry[::2], entry[1::2]))
        if (fields.get(b"flags") == b"slave"
                and fields.get(b"master-link-status") == b"ok"):
            nodes.append((fields[b"ip"].decode("utf-8"), int(fields[b"port"])))
    return sorted(nodes)


def _role(reply):
    """
    The role in a C{ROLE} reply, or the error, as text.
    """
    reader = hiredis.Reader()
    reader.feed(reply)
    try:
        value = reader.gets()
    except hiredis.ProtocolError:
        value = None
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return value[0].decode("utf-8", "replace")
    return reply[:60].decode("utf-8", "replace").strip()


class SentinelStats:
    """
    What the Sentinel router counts.
    """

    def __init__(self):
        self.switches = 0
        self.retries = 0
        self.refreshes = 0
        self.refreshFailures = 0

    def counters(self):
        return {"switches": self.switches, "retries": self.retries,
                "rounds": self.refreshes, "round_failures": self.refreshFailures}


class SwitchSubscriber(Protocol):
    """
    A subscription to a sentinel's failover announcements: each message is
    handed to C{onSwitch} with its channel.
    """

    log = Logger()

    def __init__(self, address, onSwitch, onLost):
        self.address = address
        self.onSwitch = onSwitch
        self.onLost = onLost
        self.reader = hiredis.Reader()

    def connectionMade(self):
        request = []
        if self.address.password is not None:
            credentials = [self.address.password.encode("utf-8")]
            if self.address.username is not None:
                credentials.insert(0, self.address.username.encode("utf-8"))
            request.append(encodeRequest([b"AUTH"] + credentials))
        request.append(encodeRequest([b"SUBSCRIBE", *CHANNELS]))
        self.transport.write(b"".join(request))

    def dataReceived(self, data):
        self.reader.feed(data)
        while True:
            try:
                message = self.reader.gets()
            except hiredis.ProtocolError:
                self.transport.abortConnection()
                return
            if message is False:
                return
            if isinstance(message, hiredis.ReplyError):
                self.log.warn(
                    "rmux: sentinel {address} refused the subscription: {why}",
                    address=str(self.address), why=str(message),
                )
                self.transport.loseConnection()
            elif isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                self.onSwitch(message[1], message[2])

    def connectionLost(self, reason):
        self.onLost(self)


@implementer(IRouter)
class SentinelRouter(ReplicaReads, Router):
    """
    Routes one listener's commands over the masters a Sentinel group names.

    @ivar names: the master names, in hashing order (one shard each).
    @ivar nodes: each shard's master address C{(host, port)}, or L{None}
        until one is known.
    @ivar pools: the masters' pools, in shard order, once all are known.
    """

    log = Logger()

    def __init__(self, reactor, sentinels, masters, newPool, ring=None, hashTag=None,
                 interval=5.0, allowFlush=False, stats=None, retire=None, retryBudget=8.0,
                 readFrom="master"):
        """
        @param sentinels: the sentinels' addresses (L{rmux.config.BackendAddress}).
        @param masters: one address per shard whose host is the master's
            name, and whose credentials, db and TLS its connections use.
        @param newPool: makes a pool from an address.
        @param ring: the placement over the shards (by name).
        @param interval: seconds between two periodic rounds of questions.
        @param retire: called with the pools of masters that were replaced.
        @param retryBudget: seconds during which a command that met a
            switch is sent again before its client gets the error.
        @param readFrom: where read-only commands go: C{"master"},
            C{"preferReplica"} or C{"replica"} (the replicas the sentinels
            list, asked each round; see L{ReplicaReads}).
        """
        Router.__init__(self, PoolGroup([None] * len(masters), ring, hashTag),
                        allowFlush=allowFlush, stats=stats)
        self.reactor = reactor
        self.sentinels = list(sentinels)
        self.masters = list(masters)
        self.names = [master.host for master in masters]
        self.newPool = newPool
        self.retire = retire or (lambda pools: [pool.stop() for pool in pools])
        self.retryBudget = retryBudget
        self.sentinelPools = [newPool(address) for address in self.sentinels]
        self.nodes = [None] * len(masters)
        self.readFrom = readFrom
        self.replicaPools = [()] * len(masters)
        self._replicaByNode = {}
        self.pools = []
        self.shardOf = weakref.WeakKeyDictionary()
        self.sentinel = SentinelStats()
        self.onChange = []
        self.lastErrors = {}
        self._refreshing = None
        self._outstanding = 0
        self._lastRefresh = None
        self._ready = []
        self._subscribers = {}
        self._resubscribing = {}
        self._stopped = False
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = reactor
        self._interval = interval

    def start(self):
        self._loop.start(self._interval, now=True)
        for address in self.sentinels:
            self._subscribe(address)

    def stop(self):
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        for call in self._resubscribing.values():
            if call.active():
                call.cancel()
        self._resubscribing.clear()
        for subscriber in list(self._subscribers.values()):
            if subscriber.transport is not None:
                subscriber.transport.abortConnection()
        self._fireReady()
        return [pool.stop() for pool in self.ownPools()]

    def ownPools(self):
        """
        Every pool this router made: masters, replicas, sentinels.
        """
        masters = [pool for pool in self.default.pools if pool is not None]
        return masters + list(self._replicaByNode.values()) + self.sentinelPools

    def adopt(self, other):
        """
        Refused: the masters are the sentinels' to place.
        """
        raise ValueError("a sentinel listener is not reloaded; restart rmux to change it")

    # Where the masters are

    def refresh(self):
        """
        Ask the sentinels for every master, unless a round is in flight.

        @return: a L{Deferred} that fires when this round is over.
        """
        if self._refreshing is not None:
            return self._refreshing
        self._lastRefresh = self.reactor.seconds()
        done = self._refreshing = Deferred()
        self._outstanding = len(self.names)
        for index in range(len(self.names)):
            self._ask(index, list(self.sentinelPools), [])
        return done

    def _ask(self, index, candidates, failures):
        if not candidates:
            self.sentinel.refreshFailures += 1
            why = self.lastErrors[index] = "; ".join(failures)
            self.log.warn("rmux: master {name} not found: {why}",
                          name=self.names[index], why=why)
            self._answered()
            return
        pool = candidates.pop(0)
        query = DeferredReply()
        pool.send(encodeRequest(
            [b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", self.names[index].encode("utf-8")]
        ), query)

        def answered(reply):
            try:
                node = parseMasterAddress(reply)
            except ValueError as e:
                failures.append("sentinel %s: %s" % (pool.address, e))
                self._ask(index, candidates, failures)
                return
            checked = self.check(index, node)
            if self.readFrom != "master":
                checked.addCallback(lambda _: self._askReplicas(index, pool))
            checked.addCallback(lambda _: self._answered())

        query.deferred.addCallback(answered)

    def _askReplicas(self, index, sentinel):
        """
        Ask C{sentinel} for shard C{index}'s replicas, and use those it
        lists as serving; on an error, the ones known stay.

        @return: a L{Deferred} that fires when that is settled.
        """
        query = DeferredReply()
        sentinel.send(encodeRequest(
            [b"SENTINEL", b"REPLICAS", self.names[index].encode("utf-8")]), query)

        def answered(reply):
            try:
                nodes = parseReplicas(reply)
            except ValueError as e:
                self.log.warn("rmux: replicas of {name} not read from sentinel {address}: {why}",
                              name=self.names[index], address=sentinel.address, why=e)
                return
            self._installReplicas(index, [node for node in nodes if node != self.nodes[index]])

        return query.deferred.addCallback(answered)

    def _installReplicas(self, index, nodes):
        """
        Read shard C{index}'s read-only commands from C{nodes}; pools no
        shard reads from any more are retired.
        """
        pools = []
        for node in nodes:
            pool = self._replicaByNode.get(node)
            if pool is None:
                pool = self._replicaByNode[node] = self.newPool(
                    replace(self.masters[index], host=node[0], port=node[1]))
            pools.append(pool)
        if tuple(pools) == self.replicaPools[index]:
            return
        self.replicaPools[index] = tuple(pools)
        self.log.info("rmux: {name} is read from {replicas}", name=self.names[index],
                      replicas=", ".join("%s:%d" % node for node in nodes) or "its master")
        used = {pool for shard in self.replicaPools for pool in shard}
        gone = [node for node, pool in self._replicaByNode.items() if pool not in used]
        if gone:
            self.retire([self._replicaByNode.pop(node) for node in gone])

    def _answered(self):
        self._outstanding -= 1
        if self._outstanding:
            return
        self.sentinel.refreshes += 1
        done, self._refreshing = self._refreshing, None
        self._fireReady()
        done.callback(None)

    def check(self, index, node):
        """
        Make C{node} shard C{index}'s master if C{ROLE} says it is one.

        @return: a L{Deferred} that fires when that is settled.
        """
        if node == self.nodes[index]:
            pool = self.default.pools[index]
        else:
            pool = self.newPool(replace(self.masters[index], host=node[0], port=node[1]))
        role = DeferredReply()
        pool.send(_ROLE, role)

        def answered(reply):
            current = self.default.pools[index]
            if node == self.nodes[index] and pool is not current:
                # Another check of the same node won.
                pool.stop()
            elif reply.startswith(_MASTER_ROLE):
                self.lastErrors.pop(index, None)
                self._install(index, node, pool)
            else:
                self.lastErrors[index] = "%s:%d is not a master (ROLE: %s)" % (
                    node[0], node[1], _role(reply))
                if pool is not current:
                    pool.stop()

        return role.deferred.addCallback(answered)

    def _install(self, index, node, pool):
        previous = self.default.pools[index]
        if pool is previous:
            return
        self.nodes[index] = node
        self.default.pools[index] = pool
        self.shardOf[pool] = index
        if None not in self.default.pools:
            self.pools = list(self.default.pools)
            # One master takes everything, unless reads go to replicas.
            self.single = (self.pools[0] if len(self.pools) == 1 and self.readFrom == "master"
                           else None)
        self.log.info(
            "rmux: master {name} is {host}:{port}", name=self.names[index],
            host=node[0], port=node[1],
        )
        if previous is not None:
            self.sentinel.switches += 1
            self.retire([previous])
            if self.readFrom != "master":
                # The replicas changed too: the promoted one is the master.
                self.refresh()
        for callback in self.onChange:
            callback()

    def _fireReady(self):
        ready, self._ready = self._ready, []
        for waiter in ready:
            waiter.callback(None)

    def whenReady(self):
        """
        A L{Deferred} that fires once a round of questions is over (or the
        router stops).
        """
        waiter = Deferred()
        self._ready.append(waiter)
        self.refresh()
        return waiter

    # The switch announcements

    def _subscribe(self, address):
        """
        Listen to C{address}'s announcements: every listed sentinel's, so
        that a failover any of them makes (several Sentinel groups, one
        sentinel down) is heard at once; the same news twice is checked
        once (L{check}).
        """
        self._resubscribing.pop(address, None)
        if self._stopped:
            return
        subscriber = SwitchSubscriber(address, self.switched, self._subscriptionLost)
        pool = self.sentinelPools[self.sentinels.index(address)]
        # As the sentinel's pool connects (over TLS for rediss://).
        connecting = connectToBackend(self.reactor, pool, subscriber, timeout=5)

        def connected(protocol):
            self._subscribers[address] = protocol
            if self._stopped:
                protocol.transport.abortConnection()
                return
            # A switch may have happened while nobody listened.
            self.refresh()

        connecting.addCallbacks(connected, lambda reason: self._retrySubscription(address))

    def _subscriptionLost(self, subscriber):
        if self._subscribers.get(subscriber.address) is subscriber:
            del self._subscribers[subscriber.address]
            self._retrySubscription(subscriber.address)

    def _retrySubscription(self, address):
        if not self._stopped and address not in self._resubscribing:
            self._resubscribing[address] = self.reactor.callLater(
                RESUBSCRIBE_DELAY, self._subscribe, address)

    def switched(self, channel, message):
        """
        A sentinel announced a failover: check the new master and use it.

        @param channel: one of L{CHANNELS}: C{+switch-master}'s message
            is C{NAME OLD-IP OLD-PORT IP PORT}, the others' C{slave
            IP:PORT IP PORT @ NAME ...}.
        """
        try:
            words = message.decode("utf-8").split(" ")
            if channel == SWITCH_CHANNEL:
                name, host, port = words[0], words[3], words[4]
            else:
                name, host, port = words[5], words[2], words[3]
            node = (host, int(port))
        except (ValueError, IndexError):
            return
        if name in self.names:
            polls = PROMOTION_POLLS if channel == PROMOTING_CHANNEL else 1
            self._follow(self.names.index(name), node, polls)

    def _follow(self, index, node, polls):
        """
        Check C{node} until it is shard C{index}'s master, at most C{polls}
        times.
        """
        def checked(_):
            if self.nodes[index] != node and polls > 1 and not self._stopped:
                self.reactor.callLater(PROMOTION_POLL, self._follow, index, node, polls - 1)

        self.check(index, node).addCallback(checked)

    # Commands that met a switch

    def redirect(self, request, reply):
        """
        Send C{request} (a L{rmux.router.Redirectable}) again to its
        shard's master if C{reply} says it did not run because the master
        changed, within the retry budget.

        @return: whether the request was taken.
        """
        if not reply.startswith(_RETRIED):
            return False
        now = self.reactor.seconds()
        if request.pool not in self.shardOf or not request.mayRetry(now, self.retryBudget):
            return False
        self.sentinel.retries += 1
        if self._lastRefresh is None or now - self._lastRefresh >= MIN_REFRESH_GAP:
            self.refresh()
        self.reactor.callLater(RETRY_DELAY, self._retry, request)
        return True

    def _retry(self, request):
        request.sendTo(self.default.pools[self.shardOf[request.pool]])

    # IRouter

    def route(self, args, spec, waiter, sender, payload=None):
        if None in self.default.pools:
            self.whenReady().addCallback(
                lambda _: self._routeKnown(args, spec, waiter, sender, payload))
            return
        self._routeKnown(args, spec, waiter, sender, payload)

    def _routeKnown(self, args, spec, waiter, sender, payload):
        try:
            self._place(args, spec, waiter, self.passThroughSender(sender), payload)
        except PlacementError as e:
            waiter.fill(e.reply)

    def ready(self):
        return None not in self.default.pools

    def whenPlaced(self):
        return self.whenReady() if None in self.default.pools else None

    def topologySnapshot(self):
        nodes = {}
        for index, name in enumerate(self.names):
            node = self.nodes[index]
            nodes[name] = "master=%s" % ("%s:%d" % node if node else "unknown",)
        return {"kind": "sentinel", "counters": self.sentinel.counters(), "nodes": nodes}

    def passThroughPool(self, commands):
        # Reads for the replicas take the general path, which tells them
        # from writes.
        if self.readFrom != "master":
            return None
        return Router.passThroughPool(self, commands)

    # ReplicaReads

    def shardOfKey(self, key):
        ring = self.default.ring
        if ring is None:
            return 0
        hashTag = self.default.hashTag
        return ring.backendOf(key if hashTag is None else hashTagged(key, hashTag))

    def replicasOf(self, index):
        return self.replicaPools[index]

    def hasMaster(self, index):
        return self.nodes[index] is not None

    def describeShard(self, index):
        return self.names[index]

    def passThroughSender(self, sender):
        if self.retryBudget:
            return RedirectingSender(self, sender)
        return sender

    def _unknown(self, index):
        why = self.lastErrors.get(index, "no sentinel has answered yet")
        return PlacementError(errorReply(
            "rmux: master %s is not known: %s" % (self.names[index], why)))

    def poolForKey(self, key):
        pool = Router.poolForKey(self, key)
        if pool is None:
            raise self._unknown(self.default.pools.index(None))
        return pool

    def anyPool(self):
        pool = self.default.pools[0]
        if pool is None:
            raise self._unknown(0)
        return pool

    def livePools(self):
        if None in self.default.pools:
            raise self._unknown(self.default.pools.index(None))
        return self.pools
