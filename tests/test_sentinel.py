"""
rmux in front of a master that real sentinels watch (L{rmux.sentinel}),
started by the tests: discovery, the ROLE check, and following a failover
under load.
"""

import time
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from rmux.config import BackendAddress, ConfigError, fromFlags
from rmux.hashing import RmuxRing
from rmux.interfaces import IRequestSender
from rmux.pool import BackendPool
from rmux.replies import DeferredReply
from rmux.router import RETRY_DELAY, Redirectable
from rmux.sentinel import SentinelRouter, parseMasterAddress, parseReplicas
from tests.redisserver import RedisSentinel, RedisServer, startRedis, startSentinels
from tests.test_integration import ThreadedClients, WriteLoad, socketPath, startListener


class ConfigTests(SynchronousTestCase):
    def test_flags(self):
        """
        C{--sentinels} and C{--sentinelMaster} make a sentinel listener
        whose backends are the masters, by name.
        """
        listener = fromFlags({
            "sentinels": "127.0.0.1:26379 127.0.0.1:26380",
            "sentinelMaster": "cache redis://:secret@sessions/2",
        }).listeners[0]
        self.assertEqual(listener.topology, "sentinel")
        self.assertEqual([str(s) for s in listener.sentinels],
                         ["127.0.0.1:26379", "127.0.0.1:26380"])
        self.assertEqual([m.host for m in listener.backends], ["cache", "sessions"])
        self.assertEqual((listener.backends[1].password, listener.backends[1].db),
                         ("secret", 2))

    def test_refused(self):
        """
        One without the other, or with servers of its own, is an error that
        says so.
        """
        cases = [
            ({"sentinels": "127.0.0.1:26379"}, "--sentinels: needs --sentinelMaster"),
            ({"sentinelMaster": "cache"}, "--sentinelMaster: needs --sentinels"),
            ({"sentinels": "127.0.0.1:26379", "sentinelMaster": "cache",
              "tcpConnections": "127.0.0.1:6379"}, "--sentinels: not with tcpConnections"),
            ({"sentinels": "redis://127.0.0.1:26379/2", "sentinelMaster": "cache"},
             "a sentinel has no db"),
        ]
        for flags, message in cases:
            with self.assertRaises(ConfigError) as caught:
                fromFlags(flags)
            self.assertIn(message, str(caught.exception))

    def test_readFrom(self):
        """
        C{--readFrom} goes with sentinels as with a cluster; with servers of
        its own it is refused, saying why.
        """
        listener = fromFlags({"sentinels": "127.0.0.1:26379", "sentinelMaster": "cache",
                              "readFrom": "replica"}).listeners[0]
        self.assertEqual(listener.readFrom, "replica")
        with self.assertRaises(ConfigError) as caught:
            fromFlags({"tcpConnections": "127.0.0.1:6379", "readFrom": "replica"})
        self.assertIn("--readFrom: only with --cluster or --sentinels", str(caught.exception))

    def test_replicas(self):
        """
        C{SENTINEL REPLICAS}: the replicas flagged only C{slave}, with their
        link to the master up, in address order.
        """
        def replica(ip, port, flags, link=b"ok"):
            fields = [b"name", b"%s:%d" % (ip, port), b"ip", ip, b"port", b"%d" % (port,),
                      b"flags", flags, b"master-link-status", link]
            return b"*%d\r\n" % (len(fields),) + b"".join(
                b"$%d\r\n%b\r\n" % (len(f), f) for f in fields)

        reply = b"*4\r\n" + b"".join([
            replica(b"127.0.0.1", 7002, b"slave"),
            replica(b"127.0.0.1", 7001, b"slave"),
            replica(b"127.0.0.1", 7003, b"s_down,slave,disconnected"),
            replica(b"127.0.0.1", 7004, b"slave", b"err"),
        ])
        self.assertEqual(parseReplicas(reply), [("127.0.0.1", 7001), ("127.0.0.1", 7002)])
        self.assertEqual(parseReplicas(b"*0\r\n"), [])
        for bad in [b"-ERR No such master with that name\r\n", b":1\r\n"]:
            self.assertRaises(ValueError, parseReplicas, bad)

    def test_masterAddress(self):
        self.assertEqual(
            parseMasterAddress(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n"), ("127.0.0.1", 6380))
        for reply, why in [(b"*-1\r\n", "does not know"), (b"-ERR no\r\n", "ERR no"),
                           (b":1\r\n", "not an address")]:
            with self.assertRaises(ValueError) as caught:
                parseMasterAddress(reply)
            self.assertIn(why, str(caught.exception))


@implementer(IRequestSender)
class RecordingSender:
    """
    A client's sender that only records what it is asked to send.
    """

    db = 0
    protocolVersion = 2

    def __init__(self):
        self.sent = []

    def send(self, pool, payload, waiter, count=1):
        self.sent.append((pool, waiter))


class RetryTests(SynchronousTestCase):
    """
    Commands the old master refused, sent again on the clock.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        master = BackendAddress.fromString("cache")
        sentinel = BackendAddress.fromString("127.0.0.1:26379")
        self.router = SentinelRouter(
            self.reactor, [sentinel], [master],
            lambda address: BackendPool(self.reactor, address), retryBudget=1.0)
        self.old = BackendPool(self.reactor, replace(master, host="127.0.0.1", port=7001))
        self.new = BackendPool(self.reactor, replace(master, host="127.0.0.1", port=7002))
        self.router._install(0, ("127.0.0.1", 7001), self.old)

    def test_readOnlyRetried(self):
        """
        A C{-READONLY} reply from the old master never reaches the client:
        the command goes to the shard's master of the moment, every
        L{RETRY_DELAY}, until one answers.
        """
        sender = RecordingSender()
        waiter = DeferredReply()
        Redirectable(self.router, sender, b"SET", waiter, self.old).fill(READONLY)
        self.router._install(0, ("127.0.0.1", 7002), self.new)
        self.reactor.advance(RETRY_DELAY)
        self.assertEqual([pool for pool, _ in sender.sent], [self.new])
        sender.sent[-1][1].fill(b"+OK\r\n")
        self.assertEqual(waiter.data, b"+OK\r\n")
        self.assertEqual(self.router.sentinel.retries, 1)

    def test_budget(self):
        """
        Past the retry budget, the client gets the refusal.
        """
        sender = RecordingSender()
        waiter = DeferredReply()
        request = Redirectable(self.router, sender, b"SET", waiter, self.old)
        request.fill(READONLY)
        while waiter.data is None:
            self.reactor.advance(RETRY_DELAY)
            sender.sent[-1][1].fill(READONLY)
        self.assertEqual(waiter.data, READONLY)
        self.assertEqual(len(sender.sent), 4)

    def test_notRetried(self):
        """
        A lost connection (the command may have run) and other errors go to
        the client at once.
        """
        for reply in [b"-ERR rmux: lost connection to backend 127.0.0.1:7001\r\n",
                      b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"]:
            waiter = DeferredReply()
            Redirectable(self.router, RecordingSender(), b"SET", waiter, self.old).fill(reply)
            self.assertEqual(waiter.data, reply)


READONLY = b"-READONLY You can't write against a read only replica.\r\n"


def _redisPy(path):
    import redis

    return redis.Redis(unix_socket_path=path, socket_timeout=10)


def startSentinelRmux(testCase, group, **flags):
    values = {
        "socket": socketPath(testCase),
        "sentinels": " ".join(group.addresses()),
        "sentinelMaster": group.name,
    }
    values.update(flags)
    return startListener(testCase, fromFlags(values).listeners[0])


class SentinelTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_discovery(self):
        """
        Commands go to the master the sentinels name (the first sentinel
        down, the next one answers), not to its replica.
        """
        group = startSentinels(self)
        group.sentinels[0].stop()
        rmux = startSentinelRmux(self, group)
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        threads = ThreadedClients(self, size=2)

        def exchange():
            client.set("where", "master")
            return client.get("where"), client.dbsize()

        value, size = yield threads.run(exchange)
        self.assertEqual((value, size), (b"master", 1))
        self.assertEqual(group.master.command(b"GET where\r\n"), b"$6\r\nmaster\r\n")
        self.assertEqual(rmux.router.nodes, [("127.0.0.1", group.master.port)])
        info = yield threads.run(client.info, "topology")
        self.assertEqual((info["topology"], info["node0"]),
                         ("sentinel", {"name": "mymaster",
                                       "master": "127.0.0.1:%d" % (group.master.port,)}))
        self.assertGreaterEqual(info["sentinel_rounds"], 1)

    @inlineCallbacks
    def test_readsFromReplicas(self):
        """
        With C{readFrom=replica}, GETs go to the replica the sentinels list
        (its C{cmdstat_get}), SETs to the master; without a replica, a read
        gets an error that says why, and C{preferReplica} reads the master.
        """
        from tests.test_cluster import _commandCalls

        group = startSentinels(self)
        rmux = startSentinelRmux(self, group, readFrom="replica")
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        threads = ThreadedClients(self, size=2)
        [replica] = group.replicas
        yield threads.run(client.set, "k", "v")
        deadline = time.monotonic() + 5
        while replica.command(b"GET k\r\n") != b"$1\r\nv\r\n" and time.monotonic() < deadline:
            time.sleep(0.02)
        before = (_commandCalls(group.master, "get"), _commandCalls(replica, "get"))
        values = yield threads.run(lambda: [client.get("k") for _ in range(20)])
        after = (_commandCalls(group.master, "get"), _commandCalls(replica, "get"))
        self.assertEqual(values, [b"v"] * 20)
        self.assertEqual((after[0] - before[0], after[1] - before[1]), (0, 20))
        self.assertEqual(group.master.command(b"GET k\r\n"), b"$1\r\nv\r\n")

        lonely = startSentinels(self, name="lonely", replicas=0, sentinels=1)
        for readFrom, expected in [("replica", "rmux: no replica serves lonely "
                                               "(readFrom is replica)"),
                                   ("preferReplica", None)]:
            other = startSentinelRmux(self, lonely, readFrom=readFrom)
            otherClient = _redisPy(other.path)
            self.addCleanup(otherClient.close)

            def read():
                try:
                    return otherClient.get("nothing")
                except Exception as e:
                    return str(e)

            self.assertEqual((yield threads.run(read)), expected)

    @inlineCallbacks
    def test_tls(self):
        """
        Sentinels and a master that serve TLS only (C{rediss://} sentinels
        and master name): rmux asks the sentinels, subscribes to their
        announcements and serves the master over TLS.
        """
        from tests.test_tls import OPENSSL, Certificates, startTLSRedis

        if OPENSSL is None:
            raise SkipTest("openssl is not installed")
        certificates = Certificates(self)
        master = startTLSRedis(self, certificates)
        certificate, key = certificates.issue("sentinel")
        sentinel = RedisSentinel([("secure", master)])
        sentinel.args = ["--port", "0", "--tls-port", str(sentinel.port),
                         "--tls-cert-file", certificate, "--tls-key-file", key,
                         "--tls-ca-cert-file", certificates.ca, "--tls-auth-clients", "no",
                         "--tls-replication", "yes"]
        sentinel.start()
        self.addCleanup(sentinel.stop)
        rmux = startListener(self, fromFlags({
            "socket": socketPath(self),
            "sentinels": "rediss://127.0.0.1:%d" % (sentinel.port,),
            "sentinelMaster": "rediss://secure",
            "tlsCaCertFile": certificates.ca,
        }).listeners[0])
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        threads = ThreadedClients(self, size=1)

        def exchange():
            client.set("tls", "through sentinel")
            return client.get("tls")

        self.assertEqual((yield threads.run(exchange)), b"through sentinel")
        self.assertEqual(rmux.router.nodes, [("127.0.0.1", master.tlsPort)])
        deadline = time.monotonic() + 5
        while not rmux.router._subscribers and time.monotonic() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)
        [subscriber] = rmux.router._subscribers.values()
        self.assertTrue(ISSLTransport.providedBy(subscriber.transport))
        # The sentinel has it: a client subscribed to its three channels.
        self.assertIn(b" sub=3 ", sentinel.command(b"CLIENT LIST\r\n"))

    def test_checkConfigAsksTheSentinels(self):
        """
        C{--checkConfig} asks each sentinel where each master is; when none
        answers, a last line says so.
        """
        from rmux.tap import probeTopology

        group = startSentinels(self, replicas=0, sentinels=1)
        listener = fromFlags({"sentinels": " ".join(group.addresses()),
                              "sentinelMaster": "mymaster nosuch"}).listeners[0]
        self.assertEqual(probeTopology(listener), [
            "rmux: sentinel %s: mymaster at 127.0.0.1:%d, nosuch unknown"
            % (group.addresses()[0], group.master.port)])
        group.sentinels[0].stop()
        lines = probeTopology(listener)
        self.assertEqual(lines[-1], "rmux: warning: no sentinel of localhost:6379 answered")

    @inlineCallbacks
    def test_unknownMaster(self):
        """
        A name the sentinels do not know: commands get an error naming it
        and saying why.
        """
        group = startSentinels(self, replicas=0, sentinels=1)
        rmux = startSentinelRmux(self, group, sentinelMaster="nosuch")
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        threads = ThreadedClients(self, size=1)
        error = yield threads.run(lambda: self._error(client.get, "k"))
        self.assertIn("rmux: master nosuch is not known: sentinel 127.0.0.1:", error)
        self.assertIn("does not know this master", error)

    @inlineCallbacks
    def test_notMaster(self):
        """
        A sentinel naming a server that is not a master (ROLE says
        replica) is not believed.
        """
        group = startSentinels(self, replicas=0, sentinels=1)
        replica = RedisServer(tcp=True, args=["--replicaof", "127.0.0.1", str(group.master.port)])
        self.addCleanup(replica.cleanup)
        replica.start()
        rmux = startSentinelRmux(self, group)
        yield rmux.router.refresh()
        result = yield rmux.router.check(0, ("127.0.0.1", replica.port))
        self.assertIsNone(result)
        self.assertEqual(rmux.router.nodes, [("127.0.0.1", group.master.port)])
        self.assertEqual(rmux.router.lastErrors[0],
                         "127.0.0.1:%d is not a master (ROLE: slave)" % (replica.port,))

    @inlineCallbacks
    def test_sentinelLost(self):
        """
        With one of the sentinels gone, rmux still hears the others, and
        follows a failover one of them makes.
        """
        group = startSentinels(self)
        rmux = startSentinelRmux(self, group)
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        threads = ThreadedClients(self, size=1)
        yield threads.run(client.set, "before", "1")
        group.sentinels[0].stop()
        newMaster = group.replicas[0]

        def failover():
            self.assertEqual(group.failover(via=1), b"+OK\r\n")
            deadline = time.monotonic() + 5
            while rmux.router.nodes != [("127.0.0.1", newMaster.port)]:
                self.assertLess(time.monotonic(), deadline, "rmux did not follow")
                time.sleep(0.01)
            client.set("after", "2")

        yield threads.run(failover)
        self.assertEqual(newMaster.command(b"GET after\r\n"), b"$1\r\n2\r\n")

    @inlineCallbacks
    def test_shards(self):
        """
        Several master names are shards, placed by name with rmux's
        hashing: each key is on the master the ring gives its name's index.
        """
        masters = [startRedis(self, tcp=True) for _ in range(2)]
        sentinel = RedisSentinel([("cache1", masters[0]), ("cache2", masters[1])])
        self.addCleanup(sentinel.cleanup)
        sentinel.start()
        rmux = startListener(self, fromFlags({
            "socket": socketPath(self),
            "sentinels": "127.0.0.1:%d" % (sentinel.port,),
            "sentinelMaster": "cache1 cache2",
        }).listeners[0])
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        threads = ThreadedClients(self, size=1)
        keys = ["shard:%d" % (i,) for i in range(200)]

        def write():
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, key)
            pipe.execute()
            return client.dbsize()

        size = yield threads.run(write)
        self.assertEqual(size, 200)
        ring = RmuxRing(2)
        for index, master in enumerate(masters):
            mine = [key for key in keys if ring.backendOf(key.encode()) == index]
            self.assertGreater(len(mine), 50)
            self.assertEqual(int(master.command(b"DBSIZE\r\n")[1:-2]), len(mine))
            self.assertEqual(master.command(b"GET %s\r\n" % (mine[0].encode(),)),
                             b"$%d\r\n%s\r\n" % (len(mine[0]), mine[0].encode()))

    def _error(self, f, *args):
        import redis

        try:
            f(*args)
        except redis.ResponseError as e:
            return str(e)
        return None

    @inlineCallbacks
    def test_failoverUnderLoad(self):
        """
        A client writing through rmux during C{SENTINEL FAILOVER} gets
        errors for at most 5 s (none, with the retries), its writes go to
        the new master afterwards, and only writes sent before rmux saw the
        promotion may be lost.
        """
        group = startSentinels(self)
        rmux = startSentinelRmux(self, group)
        threads = ThreadedClients(self, size=2)
        client = _redisPy(rmux.path)
        self.addCleanup(client.close)
        writes = WriteLoad(client)
        load = threads.run(writes.run)
        newMaster = group.replicas[0]

        def failover():
            try:
                time.sleep(0.5)
                started = time.monotonic()
                self.assertEqual(group.failover(), b"+OK\r\n")
                deadline = started + 5
                while rmux.router.nodes != [("127.0.0.1", newMaster.port)]:
                    self.assertLess(time.monotonic(), deadline, "rmux did not follow")
                    time.sleep(0.005)
                switched = time.monotonic()
                time.sleep(1.5)
                return started, switched
            finally:
                writes.stopped.set()

        started, switched = yield threads.run(failover)
        yield load
        errors = writes.errors
        if errors:
            self.assertLess(errors[-1][0] - errors[0][0], 5, errors[:3])
        self.assertEqual(rmux.router.nodes, [("127.0.0.1", newMaster.port)])
        self.assertEqual(rmux.router.sentinel.switches, 1)

        lost = yield threads.run(writes.lost)
        acknowledged = writes.acknowledged
        # What Redis's asynchronous replication loses: writes the old
        # master took after its replica was promoted, sent before rmux
        # switched (rmux switches once ROLE confirms the promotion).
        self.assertTrue(all(writes.sent[i] <= switched for i in lost), lost)
        late = [i for i, at in acknowledged.items() if at > switched + 0.5]
        self.assertGreater(len(late), 50)
        self.assertEqual(newMaster.command(b"GET fail:%d\r\n" % (late[-1],)),
                         b"$%d\r\n%d\r\n" % (len(str(late[-1])), late[-1]))
        print("sentinel failover: %d writes, %d errors, %d lost, switch seen %.2f s after "
              "SENTINEL FAILOVER" % (len(acknowledged), len(errors), len(lost),
                                     switched - started))
