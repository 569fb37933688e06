"""
rmux in front of a real Redis Cluster (L{rmux.cluster}), started by the
tests; and the cluster's placement, checked against Redis's own vectors.
"""

import json
import os
import signal
import subprocess
import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux import cluster
from rmux.cluster import SLOTS, SlotMap, keySlot
from rmux.config import BackendAddress, ConfigError, fromFlags, fromJSON
from rmux.replies import DeferredReply
from rmux.pubsub import SHARD_CHANNELS
from rmux.resp import encodeRequest
from tests.redisserver import REDIS_CLI, startCluster, startRedis
from tests.test_integration import (
    ThreadedClients, WriteLoad, socketPath, startListener, startRmux)


class KeySlotTests(SynchronousTestCase):
    def test_crc16(self):
        """
        The slot is CRC16 (XMODEM) modulo 16384: Redis's test vector
        C{123456789} has CRC 0x31C3.
        """
        self.assertEqual(keySlot(b"123456789"), 0x31C3)
        self.assertEqual(keySlot(b"foo"), 12182)

    def test_hashTags(self):
        """
        Only the first C{{...}} with something in it is hashed, as the
        cluster specification's examples say.
        """
        self.assertEqual(keySlot(b"{user1000}.following"), keySlot(b"user1000"))
        self.assertEqual(keySlot(b"{user1000}.followers"), keySlot(b"user1000"))
        self.assertEqual(keySlot(b"foo{}{bar}"), keySlot(b"foo{}{bar}"))
        self.assertNotEqual(keySlot(b"foo{}{bar}"), keySlot(b"bar"))
        self.assertEqual(keySlot(b"foo{{bar}}zap"), keySlot(b"{bar"))
        self.assertEqual(keySlot(b"foo{bar}{zap}"), keySlot(b"bar"))

    def test_slotMap(self):
        """
        A C{CLUSTER SLOTS} reply gives each slot its master; a master
        listed without an endpoint is the node that answered.
        """
        reply = (
            b"*2\r\n"
            b"*3\r\n:0\r\n:99\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n"
            b"*4\r\n:100\r\n:16383\r\n*3\r\n$0\r\n\r\n:7002\r\n$2\r\nid\r\n"
            b"*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n"
        )
        slotMap = SlotMap.fromClusterSlots(reply, ("10.0.0.2", 7002))
        self.assertEqual(slotMap.owners[0], ("127.0.0.1", 7001))
        self.assertEqual(slotMap.owners[99], ("127.0.0.1", 7001))
        self.assertEqual(slotMap.owners[100], ("10.0.0.2", 7002))
        self.assertEqual(slotMap.owners[SLOTS - 1], ("10.0.0.2", 7002))
        self.assertEqual(slotMap.masters(), [("10.0.0.2", 7002), ("127.0.0.1", 7001)])
        self.assertEqual(slotMap.slotsOf(("127.0.0.1", 7001)), 100)

    def test_slotMapFromShards(self):
        """
        A C{CLUSTER SHARDS} reply gives each slot range its shard's master
        and online replicas at their preferred endpoints (a node without
        one is reached as the node that answered); with TLS, their TLS
        ports.
        """
        def bulk(value):
            if isinstance(value, int):
                return b":%d\r\n" % (value,)
            return b"$%d\r\n%b\r\n" % (len(value), value)

        def array(*items):
            return b"*%d\r\n" % (len(items),) + b"".join(
                item if isinstance(item, bytes) and item[:1] == b"*" else bulk(item)
                for item in items)

        def node(endpoint, port, role, health=b"online"):
            return array(b"id", b"x" * 40, b"port", port, b"tls-port", port + 1000,
                         b"ip", b"10.9.9.9", b"endpoint", endpoint, b"role", role,
                         b"replication-offset", 7, b"health", health)

        reply = array(
            array(b"slots", array(0, 99, 200, 300), b"nodes", array(
                node(b"127.0.0.1", 7001, b"master"),
                node(b"127.0.0.1", 7004, b"replica"),
                node(b"127.0.0.1", 7005, b"replica", b"fail"))),
            array(b"slots", array(100, 199, 301, 16383), b"nodes", array(
                node(b"?", 7002, b"master"))),
            array(b"slots", array(), b"nodes", array(node(b"127.0.0.1", 7003, b"master"))),
        )
        slotMap = SlotMap.fromClusterShards(reply, ("10.0.0.2", 7002))
        self.assertEqual(slotMap.owners[0], ("127.0.0.1", 7001))
        self.assertEqual(slotMap.owners[250], ("127.0.0.1", 7001))
        self.assertEqual(slotMap.owners[150], ("10.0.0.2", 7002))
        self.assertEqual(slotMap.owners[SLOTS - 1], ("10.0.0.2", 7002))
        self.assertEqual(slotMap.replicas[300], (("127.0.0.1", 7004),))
        self.assertEqual(slotMap.replicas[301], ())
        self.assertEqual(slotMap.masters(), [("10.0.0.2", 7002), ("127.0.0.1", 7001)])
        self.assertEqual(slotMap.slotsOf(("127.0.0.1", 7001)), 201)
        tls = SlotMap.fromClusterShards(reply, ("10.0.0.2", 7002), tls=True)
        self.assertEqual(tls.owners[0], ("127.0.0.1", 8001))
        self.assertRaises(ValueError, SlotMap.fromClusterShards, b"+OK\r\n", ("h", 1))

    def test_config(self):
        listener = fromFlags({"cluster": "127.0.0.1:7001 127.0.0.1:7002"}).listeners[0]
        self.assertEqual(listener.topology, "cluster")
        self.assertEqual([str(seed) for seed in listener.backends],
                         ["127.0.0.1:7001", "127.0.0.1:7002"])
        with self.assertRaises(ConfigError) as caught:
            fromFlags({"cluster": "127.0.0.1:7001", "tcpConnections": "127.0.0.1:6379"})
        self.assertIn("--cluster: not with tcpConnections", str(caught.exception))


class ClusterRouteRouterTests(SynchronousTestCase):
    """
    A listener's router with a cluster route, on a clock: what waits for
    the route's map, and where its redirections go.
    """

    def setUp(self):
        from twisted.internet.testing import MemoryReactorClock

        from rmux.commands import CommandTable
        from rmux.pool import BackendPool
        from rmux.router import ClusterGroup, PoolGroup, Router
        from tests.test_sentinel import RecordingSender

        self.clock = MemoryReactorClock()
        self.server = BackendPool(self.clock, BackendAddress.fromString("server:6379"))
        seed = BackendAddress.fromString("node-a:7000")
        self.cluster = cluster.ClusterRouter(
            self.clock, [seed], lambda address: BackendPool(self.clock, address))
        self.router = Router(PoolGroup([self.server]),
                             [(b"c:", ClusterGroup(self.cluster))])
        self.changes = []
        self.router.onChange.append(lambda: self.changes.append(True))
        self.router._watchClusters()
        self.sender = RecordingSender()
        self.table = CommandTable.default()

    def route(self, *args):
        args = list(args)
        waiter = DeferredReply()
        self.router.route(args, self.table.lookup(args), waiter, self.sender)
        return waiter

    def test_waitsForTheMapOnlyForItsKeys(self):
        """
        A command for the route's keys waits for its first map, and goes to
        the slot's master then; other commands do not wait; a command for
        every server waits too, and then includes the masters.
        """
        self.route(b"get", b"c:x")
        self.route(b"get", b"p:x")
        self.route(b"dbsize")
        self.assertEqual([pool for pool, _ in self.sender.sent], [self.server])
        # The seed answers the read the first command started.
        seed = self.cluster._poolFor(("node-a", 7000))
        self.cluster._answer(
            b"*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$6\r\nnode-a\r\n:7000\r\n$2\r\nid\r\n",
            seed, [], [], False)
        self.assertEqual(self.changes, [True])
        node = self.cluster.owners[0]
        self.assertEqual([pool for pool, _ in self.sender.sent],
                         [self.server, node, self.server, node])
        self.assertEqual(self.router.pools, [self.server, node])

    def test_noMapIsAnError(self):
        """
        A command that waited for the route's first map gets an error when
        that read finds none (no seed answers), rather than waiting on.
        """
        waiting = self.route(b"get", b"c:x")
        args = [b"get", b"x"]
        direct = DeferredReply()
        self.cluster.route(args, self.table.lookup(args), direct, self.sender)
        self.assertNoResult(waiting.deferred)
        self.assertNoResult(direct.deferred)
        for _ in range(4):
            self.clock.advance(5)
        self.assertEqual(self.successResultOf(waiting.deferred),
                         b"-ERR rmux: the cluster's slot map is not known yet\r\n")
        # As on a cluster listener.
        self.assertEqual(self.successResultOf(direct.deferred),
                         b"-ERR rmux: the cluster's slot map is not known yet\r\n")
        self.assertEqual(self.cluster.cluster.refreshFailures, 1)

    def test_redirection(self):
        """
        A route's node answering C{MOVED} sends the command to the node it
        names, and the cluster's map learns it; a server's error is the
        client's.
        """
        self.cluster._install(SlotMap([("node-a", 7000)] * SLOTS))
        moved = self.route(b"get", b"c:x")
        plain = self.route(b"get", b"p:x")
        (_, toNode), (_, toServer) = self.sender.sent
        slot = keySlot(b"c:x")
        toNode.fill(b"-MOVED %d node-b:7001\r\n" % (slot,))
        toServer.fill(b"-MOVED %d node-b:7001\r\n" % (slot,))
        self.assertEqual(self.successResultOf(plain.deferred),
                         b"-MOVED %d node-b:7001\r\n" % (slot,))
        self.assertNoResult(moved.deferred)
        pool, again = self.sender.sent[-1]
        self.assertEqual((pool.address.host, pool.address.port), ("node-b", 7001))
        self.assertIs(self.cluster.owners[slot], pool)
        again.fill(b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(moved.deferred), b"$1\r\nv\r\n")
        self.assertEqual(self.router.blockingRedirect(b"-ASK 1 node-b:7001\r\n", 0),
                         (pool, True))
        self.assertIsNone(self.router.blockingRedirect(b"-MOVED 1 elsewhere:1\r\n", 0))


def _redisPy(path):
    import redis

    return redis.Redis(unix_socket_path=path, socket_timeout=10)


class ClusterTests(TestCase):
    """
    A plain client of rmux's socket on a three-master cluster.
    """

    timeout = 60

    if REDIS_CLI is None:
        skip = "redis-cli is not installed"

    def setUp(self):
        self.cluster = startCluster(self)
        self.rmux = startRmux(self, [], unixConnections=None,
                              cluster=" ".join(self.cluster.addresses()[:1]))
        self.threads = ThreadedClients(self, size=4)
        self.client = _redisPy(self.rmux.path)
        self.addCleanup(self.client.close)
        # INFO topology does not wait for the first map, and these tests
        # are about what comes after it.
        return self.rmux.router.refresh()

    def clusterClient(self):
        from redis.cluster import RedisCluster

        port = self.cluster.servers[0].port
        client = RedisCluster(host="127.0.0.1", port=port)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_placement(self):
        """
        Keys written by a plain client through rmux are where a
        cluster-aware client looks for them, on their slots' owners.
        """
        client = self.client

        def write():
            pipe = client.pipeline(transaction=False)
            for i in range(2000):
                pipe.set("key:%d" % (i,), "value:%d" % (i,))
            return pipe.execute()

        replies = yield self.threads.run(write)
        self.assertEqual(replies, [True] * 2000)

        def readBack():
            aware = self.clusterClient()
            return [aware.get("key:%d" % (i,)) for i in range(2000)]

        values = yield self.threads.run(readBack)
        self.assertEqual(values, [b"value:%d" % (i,) for i in range(2000)])
        sizes = [int(server.command(b"DBSIZE\r\n")[1:-2]) for server in self.cluster.servers]
        self.assertEqual(sum(sizes), 2000)
        self.assertTrue(all(size > 500 for size in sizes), sizes)

    @inlineCallbacks
    def test_pubSub(self):
        """
        SSUBSCRIBE and SPUBLISH go to each shard channel's slot owner, and
        a message reaches its subscriber; PUBLISH and SUBSCRIBE work as the
        cluster propagates them.
        """
        channels = ["news", "sport", "weather", "{x}1"]
        self.assertEqual(len({keySlot(c.encode()) for c in channels}), 4)

        def exchange():
            pubsub = self.client.pubsub()
            try:
                for channel in channels:
                    pubsub.ssubscribe(channel)
                pubsub.subscribe("plain")
                confirmed = [pubsub.get_message(timeout=5)["type"] for _ in range(5)]
                counts = [self.client.spublish(c, "to " + c) for c in channels]
                counts.append(self.client.publish("plain", "to plain"))
                received = [pubsub.get_message(timeout=5) for _ in range(5)]
                return confirmed, counts, [(m["type"], m["channel"], m["data"])
                                           for m in received]
            finally:
                pubsub.close()

        confirmed, counts, received = yield self.threads.run(exchange)
        self.assertEqual(confirmed, ["ssubscribe"] * 4 + ["subscribe"])
        self.assertEqual(counts, [1] * 5)
        self.assertEqual(sorted(received), sorted(
            [("smessage", c.encode(), b"to " + c.encode()) for c in channels]
            + [("message", b"plain", b"to plain")]))

    @inlineCallbacks
    def test_patternSeesEachMessageOnce(self):
        """
        The cluster propagates a PUBLISH to every node: a pattern is
        subscribed on one of them, so its subscriber gets each message
        once, and PUBLISH counts it, whichever node the channel is on.
        """
        yield self.threads.run(patternSeesEachMessageOnce, self, self.client,
                               ["news", "sport", "weather", "{x}1"])

    @inlineCallbacks
    def test_blockingFollowsMoved(self):
        """
        A blocking command sent where rmux's map says, after its slot moved
        without rmux knowing, meets C{MOVED} and is sent again to the new
        owner, where it blocks until a push through rmux wakes it.
        """
        key = b"queue"
        slot = keySlot(key)
        source = yield self.threads.run(self.ownerOf, slot)
        target = next(s for s in self.cluster.servers if s is not source
                      and s.port in {port for _, port in self.rmux.router.map.masters()})
        moveSlotSilently(self.cluster, slot, source, target)
        self.assertEqual(self.rmux.router.owners[slot].address.port, source.port)
        moved = self.rmux.router.cluster.moved
        self.assertEqual((yield poppedAfterPush(self, key, [target])), (key, b"woken"))
        self.assertGreater(self.rmux.router.cluster.moved, moved)

    @inlineCallbacks
    def test_reload(self):
        """
        A reload of a cluster listener takes its client-side and pool
        settings while its map stays; a change to its seeds is refused,
        naming it.
        """
        service = self.rmux
        same = fromFlags({"socket": service.path, "cluster": self.cluster.addresses()[0],
                          "remoteTimeout": "1500", "idleTimeout": "30000",
                          "allowFlush": "true"}).listeners[0]
        owners = list(service.router.owners)
        reload = service.prepareReload(same)
        yield reload.ready()
        reload.apply()
        self.assertEqual(service.factory.idleTimeout, 30.0)
        self.assertTrue(service.router.allowFlush)
        self.assertEqual({pool.readTimeout for pool in service.router.ownPools()}, {1.5})
        self.assertEqual(service.router.owners, owners)
        self.assertEqual((yield self.threads.run(self.client.set, "after", "reload")), True)
        other = fromFlags({"socket": service.path,
                           "cluster": self.cluster.addresses()[1]}).listeners[0]
        error = self.assertRaises(ValueError, service.prepareReload, other)
        self.assertEqual(str(error), "backends changed: a cluster listener's topology is "
                                     "not reloaded; restart rmux to change it")

    @inlineCallbacks
    def test_shardsAndSlotsAgree(self):
        """
        rmux reads the map with C{CLUSTER SHARDS}; on a real cluster it is
        the map C{CLUSTER SLOTS} gives.
        """
        router = self.rmux.router
        self.assertTrue(router.askShards)
        server = self.cluster.servers[0]
        answeredBy = ("127.0.0.1", server.port)
        fromShards = SlotMap.fromClusterShards(
            server.command(b"CLUSTER SHARDS\r\n"), answeredBy)
        fromSlots = SlotMap.fromClusterSlots(server.command(b"CLUSTER SLOTS\r\n"), answeredBy)
        self.assertEqual(fromShards.owners, fromSlots.owners)
        self.assertEqual([set(r) for r in fromShards.replicas],
                         [set(r) for r in fromSlots.replicas])
        self.assertEqual(router.map.owners, fromSlots.owners)
        # A node that does not know the subcommand (before Redis 7): SLOTS.
        self.patch(cluster, "_CLUSTER_SHARDS", encodeRequest([b"CLUSTER", b"NOSUCHTHING"]))
        router.map = None
        yield router.refresh()
        self.assertFalse(router.askShards)
        self.assertEqual(router.map.owners, fromSlots.owners)

    @inlineCallbacks
    def test_shardChannelFollowsItsSlot(self):
        """
        When a shard channel's slot moves to another master, rmux subscribes
        it there (the old node ends it on its own): the subscriber sees
        nothing of the move and gets what is published afterwards.  A
        subscription on the old node that did not move stays as it was.
        """
        channel = b"news"
        slot = keySlot(channel)
        source = yield self.threads.run(self.ownerOf, slot)
        owners = self.rmux.router.map.owners
        other = next(name for name in (b"c%d" % (i,) for i in range(100000))
                     if keySlot(name) != slot and owners[keySlot(name)][1] == source.port)
        target = next(s for s in self.cluster.servers if s is not source
                      and s.port in {port for _, port in self.rmux.router.map.masters()})
        pubsub = self.client.pubsub()
        self.addCleanup(pubsub.close)

        def subscribe():
            pubsub.ssubscribe(channel)
            pubsub.ssubscribe(other)
            return [pubsub.get_message(timeout=5)["type"] for _ in range(2)]

        self.assertEqual((yield self.threads.run(subscribe)), ["ssubscribe"] * 2)
        sourceId = _cli(source, "CLUSTER", "MYID")
        targetId = _cli(target, "CLUSTER", "MYID")
        _cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", sourceId)
        _cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", targetId)
        for server in [target, source]:
            _cli(server, "CLUSTER", "SETSLOT", str(slot), "NODE", targetId)
        deadline = reactor.seconds() + 10
        while (_cli(target, "PUBSUB", "SHARDNUMSUB", channel) != "%s\n1" % (channel.decode(),)
               and reactor.seconds() < deadline):
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(_cli(target, "PUBSUB", "SHARDNUMSUB", channel), "news\n1")
        self.assertEqual(_cli(source, "PUBSUB", "SHARDNUMSUB", channel), "news\n0")

        def exchange():
            counts = [self.client.spublish(channel, "moved"), self.client.spublish(other, "stayed")]
            return counts, [pubsub.get_message(timeout=5) for _ in range(2)]

        counts, received = yield self.threads.run(exchange)
        self.assertEqual(counts, [1, 1])
        self.assertEqual(sorted((m["type"], m["channel"], m["data"]) for m in received),
                         [("smessage", other, b"stayed"), ("smessage", channel, b"moved")])
        # The old node's subscriber connection was not dropped and redone.
        backend = self.rmux.hub.backendFor(
            next(pool for pool in self.rmux.router.pools if pool.address.port == source.port))
        self.assertIn((SHARD_CHANNELS, other), backend.active)

    @inlineCallbacks
    def test_subscribeWaitsForTheMap(self):
        """
        Before a listener's first map is read, its pub/sub hub is told to
        wait for the reading, and afterwards places channels at once.
        """
        from rmux.service import ListenerService

        config = fromFlags({"socket": self.rmux.path + ".2",
                            "cluster": self.cluster.addresses()[0]})
        service = ListenerService(config.listeners[0], reactor)
        self.addCleanup(lambda: DeferredList(service.router.stop()))
        self.assertFalse(service.router.ready())
        waiting = service.hub.whenPlaced()
        self.assertIsNotNone(waiting)
        yield waiting
        self.assertTrue(service.router.ready())
        self.assertIsNone(service.hub.whenPlaced())
        self.assertIn(service.hub.placeChannel(b"news"), service.router.pools)

    def test_checkConfigAsksTheSeeds(self):
        """
        C{--checkConfig} asks each seed for the cluster's state, and says
        which does not answer.
        """
        from rmux.tap import probeTopology

        config = fromFlags({"cluster": "%s 127.0.0.1:1" % (self.cluster.addresses()[0],)})
        lines = probeTopology(config.listeners[0])
        self.assertEqual(lines[0], "rmux: cluster seed %s: cluster_state:ok"
                         % (self.cluster.addresses()[0],))
        self.assertTrue(lines[1].startswith("rmux: cluster seed 127.0.0.1:1: no answer: "),
                        lines[1])
        self.assertEqual(len(lines), 2)

    @inlineCallbacks
    def test_infoTopology(self):
        """
        INFO's Topology section names the masters rmux learned, with the
        slots each serves, and counts the map reads.
        """
        info = yield self.threads.run(self.client.info, "topology")
        self.assertEqual(info["topology"], "cluster")
        self.assertGreaterEqual(info["cluster_map_reads"], 1)
        nodes = [info["node%d" % (i,)] for i in range(3)]
        self.assertEqual(sorted(node["name"] for node in nodes),
                         sorted(self.cluster.addresses()))
        self.assertEqual(sum(node["slots"] for node in nodes), SLOTS)
        # The twemproxy-style stats port says the same.
        from rmux.metrics import twemproxyStats

        stats = twemproxyStats([self.rmux.factory.snapshot()], 0, "h")
        pool = stats[self.rmux.path]
        self.assertEqual(sum(pool[node]["slots"] for node in self.cluster.addresses()), SLOTS)
        self.assertGreaterEqual(pool["cluster_map_reads"], info["cluster_map_reads"])

    @inlineCallbacks
    def test_multiKey(self):
        """
        MSET, MGET, EXISTS and DEL over keys of many slots answer as one
        server; DBSIZE adds up the masters; SCAN visits every key once.
        """
        client = self.client
        keys = ["multi:%d" % (i,) for i in range(50)]

        def exchange():
            client.mset({key: key.upper() for key in keys})
            values = client.mget(keys + ["missing"])
            scanned = list(client.scan_iter(count=7))
            return (values, client.exists(*keys), client.dbsize(), scanned,
                    client.delete(*keys[:20]), client.dbsize())

        values, exists, size, scanned, deleted, after = yield self.threads.run(exchange)
        self.assertEqual(values, [key.upper().encode() for key in keys] + [None])
        self.assertEqual((exists, size, deleted, after), (50, 50, 20, 30))
        self.assertEqual(sorted(scanned), sorted(key.encode() for key in keys))

    @inlineCallbacks
    def test_crossSlot(self):
        """
        A command that must run whole gets Redis's CROSSSLOT error when its
        keys span slots, and runs when a hash tag keeps them together.
        """
        import redis

        client = self.client

        def exchange():
            client.set("{user1}:a", "1")
            renamed = client.rename("{user1}:a", "{user1}:b")
            with self.assertRaises(redis.ResponseError) as caught:
                client.rename("{user1}:b", "other")
            return renamed, str(caught.exception), client.get("{user1}:b")

        renamed, error, value = yield self.threads.run(exchange)
        self.assertTrue(renamed)
        self.assertEqual(error, "Keys in request don't hash to the same slot")
        self.assertEqual(value, b"1")

    @inlineCallbacks
    def test_ask(self):
        """
        A key already migrated from a slot being migrated is served through
        ASK from its new node; a key not migrated yet still from the old.
        """
        slot = keySlot(b"{m}:moved")
        source = yield self.threads.run(self.ownerOf, slot)
        target = next(s for s in self.cluster.servers if s is not source)
        client = self.client
        yield self.threads.run(client.mset, {"{m}:moved": "here", "{m}:stays": "there"})
        sourceId = _cli(source, "CLUSTER", "MYID")
        targetId = _cli(target, "CLUSTER", "MYID")
        _cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", sourceId)
        _cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", targetId)
        _cli(source, "MIGRATE", "127.0.0.1", str(target.port), "{m}:moved", "0", "5000")
        asks = self.rmux.router.cluster.ask
        moved = yield self.threads.run(client.get, "{m}:moved")
        stays = yield self.threads.run(client.get, "{m}:stays")
        self.assertEqual((moved, stays), (b"here", b"there"))
        self.assertEqual(self.rmux.router.cluster.ask, asks + 1)

    @inlineCallbacks
    def test_blockingFollowsAsk(self):
        """
        A blocking command on a key of a slot being migrated, and not on
        the old node, meets C{ASK}: it is sent with C{ASKING} to the new
        node, where it blocks until a push (through rmux, following the
        same C{ASK}) wakes it.
        """
        key = b"{q}:queue"
        slot = keySlot(key)
        source = yield self.threads.run(self.ownerOf, slot)
        target = next(s for s in self.cluster.servers if s is not source)
        _cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", _cli(source, "CLUSTER", "MYID"))
        _cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", _cli(target, "CLUSTER", "MYID"))
        asks = self.rmux.router.cluster.ask
        self.assertEqual((yield poppedAfterPush(self, key, [target])), (key, b"woken"))
        self.assertEqual(self.rmux.router.cluster.ask, asks + 2)
        self.assertEqual(self.rmux.router.owners[slot].address.port, source.port)

    def ownerOf(self, slot):
        return ownerOf(self.cluster, slot)

    @inlineCallbacks
    def test_reshardUnderLoad(self):
        """
        While 1,000 slots move between masters (C{redis-cli --cluster
        reshard}), a client writing through rmux gets no error, and every
        write is there afterwards.
        """
        client = self.client
        stop = threading.Event()
        written = []
        errors = []

        def writer():
            i = 0
            while not stop.is_set():
                try:
                    client.set("load:%d" % (i,), i)
                    written.append(i)
                except Exception as e:
                    errors.append(e)
                i += 1

        sourceId = _cli(self.cluster.servers[0], "CLUSTER", "MYID")
        targetId = _cli(self.cluster.servers[1], "CLUSTER", "MYID")

        def reshard():
            try:
                subprocess.run(
                    [REDIS_CLI, "--cluster", "reshard", self.cluster.addresses()[0],
                     "--cluster-from", sourceId, "--cluster-to", targetId,
                     "--cluster-slots", "1000", "--cluster-yes"],
                    check=True, capture_output=True, timeout=40,
                )
            finally:
                stop.set()

        load = self.threads.run(writer)
        yield self.threads.run(reshard)
        yield load
        self.assertEqual(errors, [])
        self.assertGreater(len(written), 100)

        def readBack():
            pipe = client.pipeline(transaction=False)
            for i in written:
                pipe.get("load:%d" % (i,))
            return pipe.execute()

        values = yield self.threads.run(readBack)
        self.assertEqual(values, [b"%d" % (i,) for i in written])
        self.assertGreater(self.rmux.router.cluster.moved, 0)


def patternSeesEachMessageOnce(testCase, client, channels):
    """
    Subscribe a pattern matching C{channels} and one of them, publish to
    each: every message arrives once, and PUBLISH counts its receivers.
    """
    pubsub = client.pubsub()
    try:
        pubsub.psubscribe("*")
        pubsub.subscribe(channels[0])
        testCase.assertEqual([pubsub.get_message(timeout=5)["type"] for _ in range(2)],
                             ["psubscribe", "subscribe"])
        counts = [client.publish(channel, "to " + channel) for channel in channels]
        received = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            received.append((message["type"], message["channel"].decode()))
    finally:
        pubsub.close()
    testCase.assertEqual(counts, [2] + [1] * (len(channels) - 1))
    testCase.assertEqual(sorted(received), sorted(
        [("message", channels[0])] + [("pmessage", channel) for channel in channels]))


@inlineCallbacks
def poppedAfterPush(testCase, key, nodes):
    """
    BLPOP C{key} through rmux, wait until one of C{nodes} has it blocked,
    then RPUSH through rmux on another connection.

    @return: a L{Deferred} firing with what the BLPOP returned.
    """
    blocked = testCase.threads.run(testCase.client.blpop, [key], 10)
    deadline = reactor.seconds() + 5
    while not any(b"cmd=blpop" in node.command(b"CLIENT LIST\r\n") for node in nodes) \
            and reactor.seconds() < deadline:
        yield deferLater(reactor, 0.05, lambda: None)
    other = _redisPy(testCase.rmux.path)
    testCase.addCleanup(other.close)
    yield testCase.threads.run(other.rpush, key, b"woken")
    return (yield blocked)


def ownerOf(cluster, slot):
    """
    The master of C{cluster} that serves C{slot}, as the cluster says.
    """
    import redis

    direct = redis.Redis(host="127.0.0.1", port=cluster.servers[0].port)
    try:
        ranges = direct.execute_command("CLUSTER SLOTS")
    finally:
        direct.close()
    for start, end, master, *replicas in ranges:
        if start <= slot <= end:
            return next(s for s in cluster.servers if s.port == master[1])
    raise AssertionError("nobody serves slot %d" % (slot,))


def moveSlotSilently(cluster, slot, source, target):
    """
    Give C{slot} from C{source} to C{target} without migrating anything,
    as a resharding's last step does, so that a proxy's map is out of date.
    """
    targetId = _cli(target, "CLUSTER", "MYID")
    _cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", _cli(source, "CLUSTER", "MYID"))
    _cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", targetId)
    for server in [target, source]:
        _cli(server, "CLUSTER", "SETSLOT", str(slot), "NODE", targetId)


def _cli(server, *arguments):
    return subprocess.run(
        [REDIS_CLI, "-p", str(server.port)] + list(arguments),
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout.strip()


def _commandCalls(server, name):
    """
    How many times C{server} ran command C{name}, from its INFO.
    """
    info = server.command(b"INFO commandstats\r\n").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_%s:calls=" % (name,)):
            return int(line.split("=", 1)[1].split(",", 1)[0])
    return 0


class ClusterRouteTests(TestCase):
    """
    A prefix route whose keys a cluster places, beside a listener's own
    redis-server: one socket serves both, as one server.
    """

    timeout = 60

    if REDIS_CLI is None:
        skip = "redis-cli is not installed"

    def setUp(self):
        self.cluster = startCluster(self)
        self.server = startRedis(self)
        seeds = self.cluster.addresses()[:1]
        listener = fromJSON(json.dumps([{
            "socket": socketPath(self), "unixConnections": [self.server.path],
            "routes": [{"prefix": "c:", "cluster": seeds}],
        }])).listeners[0]
        self.rmux = startListener(self, listener)
        self.route = self.rmux.router.clusters[0]
        self.threads = ThreadedClients(self, size=2)
        self.client = _redisPy(self.rmux.path)
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_keysWhereTheyBelong(self):
        """
        Keys of the route are on their slots' owners, where a cluster-aware
        client reads them; the others on the listener's server.  Multi-key
        and keyspace-wide commands answer as one server over both.
        """
        client = self.client
        clustered = ["c:%d" % (i,) for i in range(300)]
        plain = ["p:%d" % (i,) for i in range(100)]

        def exchange():
            # The first command waits for the route's map.
            client.mset({key: key.upper() for key in clustered + plain})
            aware = self.clusterClient()
            return (
                [aware.get(key) for key in clustered],
                client.mget(plain[:5] + clustered[:50] + ["c:missing"]),
                sorted(client.scan_iter(count=50)),
                client.dbsize(),
                client.delete(*(clustered[:20] + plain[:10])),
                client.dbsize(),
            )

        direct, values, scanned, size, deleted, after = yield self.threads.run(exchange)
        self.assertEqual(direct, [key.upper().encode() for key in clustered])
        self.assertEqual(values, [key.upper().encode() for key in plain[:5] + clustered[:50]]
                         + [None])
        self.assertEqual(scanned, sorted(key.encode() for key in clustered + plain))
        self.assertEqual((size, deleted, after), (400, 30, 370))
        self.assertEqual(self.server.command(b"DBSIZE\r\n"), b":90\r\n")
        nodes = [int(s.command(b"DBSIZE\r\n")[1:-2]) for s in self.cluster.servers]
        self.assertTrue(all(size > 50 for size in nodes), nodes)

    @inlineCallbacks
    def test_singleNodeCommands(self):
        """
        Transactions, scripts and blocking commands on the route's keys run
        on their slot's node; keys of several slots get Redis's CROSSSLOT.
        """
        import redis

        client = self.client

        def exchange():
            pipe = client.pipeline(transaction=True)
            pipe.set("c:{u}:a", "1").incr("c:{u}:b").get("c:{u}:a")
            transaction = pipe.execute()
            script = client.eval("return redis.call('incrby', KEYS[1], ARGV[1])",
                                 1, "c:{u}:b", 5)
            with self.assertRaises(redis.ResponseError) as caught:
                client.rename("c:{u}:a", "c:{v}:a")
            return transaction, script, str(caught.exception)

        transaction, script, crossSlot = yield self.threads.run(exchange)
        self.assertEqual(transaction, [True, 1, b"1"])
        self.assertEqual(script, 6)
        self.assertEqual(crossSlot, "Keys in request don't hash to the same slot")
        owner = yield self.threads.run(ownerOf, self.cluster, keySlot(b"c:{u}:b"))
        self.assertEqual(owner.command(b"GET c:{u}:b\r\n"), b"$1\r\n6\r\n")

        popped = yield poppedAfterPush(self, b"c:queue", self.cluster.servers)
        self.assertEqual(popped, (b"c:queue", b"woken"))

    @inlineCallbacks
    def test_movedFollowed(self):
        """
        A key of the route whose slot moved without rmux knowing is sent
        again where the cluster says, and the map learns it; pub/sub on a
        shard channel of the route works.
        """
        key = b"c:moving"
        yield self.threads.run(self.client.set, key, b"1")
        slot = keySlot(key)
        source = yield self.threads.run(ownerOf, self.cluster, slot)
        target = next(s for s in self.cluster.servers if s is not source)
        moveSlotSilently(self.cluster, slot, source, target)
        moved = self.route.cluster.moved
        # The value stayed on the source: the target answers as a new owner.
        self.assertEqual((yield self.threads.run(self.client.get, key)), None)
        self.assertEqual((yield self.threads.run(self.client.set, key, b"2")), True)
        self.assertEqual(target.command(b"GET c:moving\r\n"), b"$1\r\n2\r\n")
        self.assertEqual(self.route.cluster.moved, moved + 1)
        self.assertEqual(self.route.owners[slot].address.port, target.port)

        def shardChannel():
            pubsub = self.client.pubsub()
            try:
                pubsub.ssubscribe("c:news")
                confirmed = pubsub.get_message(timeout=5)["type"]
                count = self.client.spublish("c:news", "hello")
                message = pubsub.get_message(timeout=5)
                return confirmed, count, message["data"]
            finally:
                pubsub.close()

        self.assertEqual((yield self.threads.run(shardChannel)), ("ssubscribe", 1, b"hello"))
        yield self.threads.run(patternSeesEachMessageOnce, self, self.client,
                               ["c:news", "c:sport", "c:weather", "plain"])
        info = yield self.threads.run(self.client.info, "topology")
        self.assertEqual((info["topology"], info["cluster_moved"]), ("cluster", moved + 1))

    @inlineCallbacks
    def test_reload(self):
        """
        A reload that keeps a cluster route keeps its router, map and
        connections; one that adds a route starts its router before
        switching; one that drops it stops it, and its keys go where the
        new placement says.
        """
        service = self.rmux
        seeds = self.cluster.addresses()

        def reloadTo(routes):
            return fromJSON(json.dumps([{
                "socket": service.path, "unixConnections": [self.server.path],
                "routes": routes}])).listeners[0]

        yield self.threads.run(self.client.set, "c:kept", "1")
        reload = service.prepareReload(reloadTo([
            {"prefix": "c:", "cluster": seeds[:1]},
            {"prefix": "d:", "cluster": seeds[1:2]}]))
        yield reload.ready()
        reload.apply()
        kept, added = service.router.clusters
        self.assertIs(kept, self.route)
        self.assertIsNot(added, kept)
        self.assertIsNotNone(added.map)
        yield self.threads.run(self.client.set, "d:new", "2")
        self.assertEqual((yield self.threads.run(self.clusterClient().get, "d:new")), b"2")

        reload = service.prepareReload(reloadTo([]))
        yield reload.ready()
        reload.apply()
        self.assertEqual(service.router.clusters, [])
        self.assertFalse(kept._loop.running or added._loop.running)
        yield self.threads.run(self.client.set, "c:kept", "on the server")
        self.assertEqual(self.server.command(b"GET c:kept\r\n"),
                         b"$13\r\non the server\r\n")

    def test_checkConfigAsksTheSeeds(self):
        """
        C{--checkConfig} asks a cluster route's seeds too.
        """
        from rmux.tap import probeTopology

        lines = probeTopology(fromJSON(json.dumps([{
            "port": 1, "tcpConnections": ["127.0.0.1:2"],
            "routes": [{"prefix": "c:", "cluster": ["127.0.0.1:1"]},
                       {"prefix": "d:", "cluster": self.cluster.addresses()[:1]}],
        }])).listeners[0])
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[0].startswith("rmux: cluster seed 127.0.0.1:1: no answer: "))
        self.assertEqual(lines[1], "rmux: warning: no cluster seed of localhost:1's route 'c:' answered")
        self.assertEqual(lines[2], "rmux: cluster seed %s: cluster_state:ok"
                         % (self.cluster.addresses()[0],))

    def clusterClient(self):
        from redis.cluster import RedisCluster

        client = RedisCluster(host="127.0.0.1", port=self.cluster.servers[0].port)
        self.addCleanup(client.close)
        return client


class ReplicaReadTests(TestCase):
    """
    C{readFrom}: read-only commands on replicas, writes on masters.
    """

    timeout = 90

    if REDIS_CLI is None:
        skip = "redis-cli is not installed"

    @inlineCallbacks
    def test_readsFromReplicas(self):
        """
        With C{readFrom=replica}, GETs go to the replicas (whose
        connections rmux set READONLY) and are answered there, SETs to the
        masters; MGET over several slots still answers as one server.
        """
        cluster = startCluster(self, masters=3, replicas=1)
        rmux = startRmux(self, [], unixConnections=None,
                         cluster=cluster.addresses()[0], readFrom="replica")
        threads = ThreadedClients(self, size=1)
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        masters, replicas = cluster.servers[:3], cluster.servers[3:]
        keys = ["read:%d" % (i,) for i in range(30)]

        def write():
            for key in keys:
                client.set(key, key)
            # Replication is asynchronous: wait until each replica has
            # what its master was sent.
            deadline = time.monotonic() + 10
            while any(_keys(r) != _keys(m) for m, r in _pairs(masters, replicas)):
                if time.monotonic() > deadline:
                    raise AssertionError("the replicas did not catch up")
                time.sleep(0.05)

        yield threads.run(write)
        # CLUSTER SLOTS leaves out a replica that has not replicated a byte
        # yet (as when rmux first read the map), until the cluster bus has
        # told the node that answers otherwise.
        for attempt in range(100):
            yield rmux.router.refresh()
            if all(rmux.router.replicaPools):
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(all(rmux.router.replicaPools))
        values, together = yield threads.run(
            lambda: ([client.get(key) for key in keys], client.mget(keys)))
        self.assertEqual(values, [key.encode() for key in keys])
        self.assertEqual(together, values)
        self.assertEqual(sum(_commandCalls(r, "get") for r in replicas), 30)
        self.assertEqual(sum(_commandCalls(m, "get") for m in masters), 0)
        # (A replica's count of SETs is what replication ran.)
        self.assertEqual(sum(_commandCalls(m, "set") for m in masters), 30)
        self.assertGreaterEqual(min(_commandCalls(r, "readonly") for r in replicas), 1)


def _keys(server):
    return int(server.command(b"DBSIZE\r\n")[1:-2])


def _pairs(masters, replicas):
    """
    Each master with its replica, from the replicas' INFO replication.
    """
    byPort = {m.port: m for m in masters}
    for replica in replicas:
        info = replica.command(b"INFO replication\r\n").decode()
        port = int(info.split("master_port:", 1)[1].split("\r\n", 1)[0])
        yield byPort[port], replica


class ClusterFailoverTests(TestCase):
    """
    A master killed under load, in a cluster with a replica for each.
    """

    timeout = 90

    if REDIS_CLI is None:
        skip = "redis-cli is not installed"

    @inlineCallbacks
    def test_masterKilled(self):
        """
        A client writing through rmux while a master is killed gets errors
        only until the cluster has promoted its replica (within 8 s with
        a node timeout of 2 s), none after; a write rmux acknowledged is
        lost only if it was acknowledged before the kill (what Redis's
        asynchronous replication can lose).
        """
        cluster = startCluster(self, replicas=1)
        rmux = startRmux(self, [], unixConnections=None, cluster=cluster.addresses()[0])
        threads = ThreadedClients(self, size=2)
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        writes = WriteLoad(client)
        load = threads.run(writes.run)
        victim = cluster.servers[0]

        def killAndWait():
            try:
                time.sleep(0.5)
                killed = time.monotonic()
                os.kill(victim.process.pid, signal.SIGKILL)
                victim.process.wait()
                victim.process = None
                cluster.waitUntilOk(timeout=20, without=victim)
                recovered = time.monotonic()
                time.sleep(1.0)
                return killed, recovered
            finally:
                writes.stopped.set()

        killed, recovered = yield threads.run(killAndWait)
        yield load
        self.assertLess(recovered - killed, 8)
        late = [error for error in writes.errors if error[0] > recovered]
        self.assertEqual(late, [])
        lost = yield threads.run(writes.lost)
        self.assertTrue(all(writes.acknowledged[i] <= killed for i in lost), lost)
        self.assertGreater(len(writes.acknowledged), 100)
