"""
Multiplexing end to end: four real redis-servers behind one rmux listener.

Checks that keys are physically where the placement says, that a killed
server's keys fail over and come home, that split commands merge into what
one server would have answered, and that refusals leave the client usable.
"""

import json

import redis
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from rmux.config import fromFlags, fromJSON
from rmux.hashing import KetamaRing, RmuxRing, twemproxyServerName
from tests.redisserver import RedisServer, startServers
from tests.test_integration import ThreadedClients, rawExchange, socketPath, startListener


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


class MultiplexTestCase(TestCase):
    timeout = 60
    servers = 4
    flags = {}

    def setUp(self):
        self.redis = startServers(self, self.servers)
        self.clients = ThreadedClients(self)
        self.path = socketPath(self)
        values = {
            "socket": self.path,
            "unixConnections": " ".join(s.path for s in self.redis),
            "healthInterval": "20",
            "healthFailures": "2",
            "healthSuccesses": "2",
        }
        values.update(self.flags)
        return self.startListener(fromFlags(values).listeners[0])

    def startListener(self, listener):
        self.service = startListener(self, listener)
        # Let the first health verdicts land.
        return sleep(0.1)

    def client(self, **kwargs):
        client = redis.Redis(unix_socket_path=self.path, **kwargs)
        self.addCleanup(client.close)
        return client

    def direct(self, index):
        """
        A client of server C{index} itself (cached; redis-py clients are
        thread-safe).
        """
        cache = self.__dict__.setdefault("_direct", {})
        if index not in cache:
            cache[index] = redis.Redis(unix_socket_path=self.redis[index].path)
            self.addCleanup(cache[index].close)
        return cache[index]

    def inThread(self, f, *args, **kwargs):
        return self.clients.run(f, *args, **kwargs)

    def where(self, key):
        """
        The indexes of the servers that hold C{key}.
        """
        return [
            i for i in range(self.servers)
            if self.redis[i].process is not None and self.direct(i).exists(key)
        ]

    @inlineCallbacks
    def waitForState(self, index, state, timeout=5.0):
        pool = self.service.pools[index]
        waited = 0.0
        while self.service.health.states()[pool] != state:
            if waited > timeout:
                self.fail("backend %d never became %s" % (index, state))
            yield sleep(0.02)
            waited += 0.02


class PlacementTests(MultiplexTestCase):
    @inlineCallbacks
    def test_keysLandWhereTheHashSays(self):
        """
        Each key is on exactly the server Go rmux's placement picks.
        """
        client = self.client()
        keys = [b"key:%d" % i for i in range(200)] + [b"a", b"b", b"foo", b"user:1000"]

        def run():
            for key in keys:
                client.set(key, key)
            return {key: self.where(key) for key in keys}

        places = yield self.inThread(run)
        ring = RmuxRing(4)
        for key in keys:
            self.assertEqual(places[key], [ring.backendOf(key)], key)
        self.assertEqual(sorted({p[0] for p in places.values()}), [0, 1, 2, 3])

    @inlineCallbacks
    def test_pipelineOverEveryServer(self):
        """
        A client pipelining 1000 mixed commands over keys on every server
        gets every reply in order.
        """
        client = self.client()

        def run():
            pipe = client.pipeline(transaction=False)
            for i in range(1000):
                key = "p%d" % (i // 4)
                step = i % 4
                if step == 0:
                    pipe.set(key, i)
                elif step == 1:
                    pipe.get(key)
                elif step == 2:
                    pipe.incr(key)
                else:
                    pipe.mget(key, "p%d" % (i // 4 + 1), "missing")
            return pipe.execute()

        results = yield self.inThread(run)
        for i, result in enumerate(results):
            step = i % 4
            base = i - step
            if step == 0:
                self.assertIs(result, True)
            elif step == 1:
                self.assertEqual(result, b"%d" % base)
            elif step == 2:
                self.assertEqual(result, base + 1)
            else:
                self.assertEqual(result, [b"%d" % (base + 1), None, None])


class PublishTests(MultiplexTestCase):
    @inlineCallbacks
    def test_publishGoesToTheChannelsServer(self):
        """
        PUBLISH is placed by its channel, so a subscriber on that server
        (as every rmux host would pick) receives it.
        """
        channel = b"news"
        home = RmuxRing(4).backendOf(channel)
        pubsub = self.direct(home).pubsub()
        self.addCleanup(pubsub.close)

        def run():
            pubsub.subscribe(channel)
            pubsub.get_message(timeout=1)
            receivers = self.client().publish(channel, "hello")
            return receivers, pubsub.get_message(timeout=2)

        receivers, message = yield self.inThread(run)
        self.assertEqual(receivers, 1)
        self.assertEqual(message["data"], b"hello")


class FanOutTests(MultiplexTestCase):
    @inlineCallbacks
    def test_fragmentsCounted(self):
        """
        The parts a command is split into are counted, as twemproxy's
        C{fragments}: per server for MGET, on every server for DBSIZE.
        """
        ring = RmuxRing(4)
        keys = [next("f%d" % i for i in range(100) if ring.backendOf(b"f%d" % i) == server)
                for server in (0, 1, 2)]
        client = self.client()
        yield self.clients.run(client.mget, keys)
        yield self.clients.run(client.get, keys[0])
        yield self.clients.run(client.dbsize)
        self.assertEqual(self.service.factory.snapshot()["fragments"], 3 + 4)

    @inlineCallbacks
    def test_sameAsOneServer(self):
        """
        Split and fanned-out commands give what a single server holding all
        the data gives.
        """
        proxied = self.client()
        single = RedisServer()
        self.addCleanup(single.cleanup)
        single.start()
        alone = redis.Redis(unix_socket_path=single.path)
        self.addCleanup(alone.close)

        def run(client):
            keys = ["k%d" % i for i in range(40)]
            results = [
                client.mset({k: "v" + k for k in keys[:30]}),
                client.mget(keys + ["nope", "k3", "k3"]),
                client.exists(*keys, "k1", "k1"),
                client.touch(*keys[:10]),
                client.dbsize(),
                sorted(client.keys("k*")),
                client.delete(*keys[:20], "k0"),
                client.unlink(*keys[20:25]),
                client.dbsize(),
                client.mget(keys[15:30]),
                client.exists("k1"),
            ]
            sha = client.script_load("return 1")
            results.append(sha)
            results.append(client.script_exists(sha, "0" * 40))
            results.append(client.evalsha(sha, 0))
            results.append(client.randomkey() is not None)
            results.append(client.pubsub_numsub("c1", "c2"))
            return results

        expected = yield self.inThread(run, alone)
        got = yield self.inThread(run, proxied)
        self.assertEqual(got, expected)

    @inlineCallbacks
    def test_scriptLoadedEverywhere(self):
        client = self.client()
        sha = yield self.inThread(client.script_load, "return 'x'")
        for i in range(self.servers):
            self.assertEqual(
                (yield self.inThread(self.direct(i).script_exists, sha)), [True]
            )

    @inlineCallbacks
    def test_refusalsKeepTheConnection(self):
        """
        Cross-server multi-key commands, keyless commands that cannot be
        merged, and FLUSHDB (not enabled) are refused; the client carries on.
        """
        ring = RmuxRing(4)
        a, b = b"a", b"b"
        self.assertNotEqual(ring.backendOf(a), ring.backendOf(b))
        payload = (
            b"SINTER a b\r\nRENAME a b\r\nFUNCTION STATS\r\nFLUSHDB\r\nMSETNX a 1 b 2\r\n"
            b"SET a 1\r\nGET a\r\nQUIT\r\n"
        )
        got = yield self.inThread(rawExchange, self.path, payload)
        lines = got.split(b"\r\n")
        self.assertEqual(lines[0], b"-CROSSSLOT Keys in request don't hash to the same server behind rmux")
        self.assertEqual(lines[1], lines[0])
        self.assertTrue(lines[2].startswith(b"-ERR FUNCTION STATS cannot run through rmux"), lines[2])
        self.assertTrue(lines[3].startswith(b"-ERR FLUSHDB is disabled"), lines[3])
        self.assertEqual(lines[4], lines[0])
        self.assertEqual(lines[5:], [b"+OK", b"$1", b"1", b"+OK", b""])

    @inlineCallbacks
    def test_sameServerMultiKeyForwarded(self):
        """
        A multi-key command whose keys all live on one server is forwarded.
        """
        ring = RmuxRing(4)
        keys = [b"s%d" % i for i in range(100)]
        first = keys[0]
        mate = next(k for k in keys[1:] if ring.backendOf(k) == ring.backendOf(first))
        client = self.client()

        def run():
            client.sadd(first, "x", "y")
            client.sadd(mate, "y", "z")
            return client.sinter(first, mate), client.rename(first, mate)

        inter, renamed = yield self.inThread(run)
        self.assertEqual(inter, {b"y"})
        self.assertTrue(renamed)


class HealthTests(MultiplexTestCase):
    flags = {"failover": "true"}

    @inlineCallbacks
    def test_failoverAndHome(self):
        """
        A killed server's keys go to the backup Go rmux's walk picks, and
        come home once it is back.
        """
        ring = RmuxRing(4)
        key = b"user:1000"
        home = ring.backendOf(key)
        backup = ring.failoverOf(key, lambda i: i != home)
        self.assertNotEqual(home, backup)
        client = self.client()
        self.redis[home].stop()
        yield self.waitForState(home, "down")
        self.assertTrue((yield self.inThread(client.set, key, "during")))
        self.assertEqual((yield self.inThread(self.where, key)), [backup])
        self.redis[home].start()
        yield self.waitForState(home, "up")
        self.assertTrue((yield self.inThread(client.set, key, "after")))
        self.assertEqual((yield self.inThread(self.direct(home).get, key)), b"after")
        self.assertEqual((yield self.inThread(client.get, key)), b"after")


class NoFailoverTests(MultiplexTestCase):
    @inlineCallbacks
    def test_downServerNamedClientStays(self):
        ring = RmuxRing(4)
        key = b"foo"
        home = ring.backendOf(key)
        client = self.client()
        self.redis[home].stop()
        yield self.waitForState(home, "down")
        try:
            yield self.inThread(client.get, key)
        except redis.ResponseError as e:
            self.assertIn("rmux: backend %s is down" % (self.redis[home].path,), str(e))
        else:
            self.fail("no error for a key on a down server")
        other = next(b"k%d" % i for i in range(100) if ring.backendOf(b"k%d" % i) != home)
        self.assertTrue((yield self.inThread(client.set, other, "fine")))


class HashTagTests(MultiplexTestCase):
    flags = {"hashTag": "{}"}

    @inlineCallbacks
    def test_tagsKeepKeysTogether(self):
        client = self.client()

        def run():
            keys = ["{user:42}.%s" % f for f in ("name", "mail", "cart", "seen")]
            for key in keys:
                client.set(key, "x")
            client.sadd("{user:42}.a", "1", "2")
            client.sadd("{user:42}.b", "2")
            return [self.where(k) for k in keys], client.sinter("{user:42}.a", "{user:42}.b")

        places, inter = yield self.inThread(run)
        self.assertEqual(places, [[RmuxRing(4).backendOf(b"user:42")]] * 4)
        self.assertEqual(inter, {b"2"})


class KetamaTests(MultiplexTestCase):
    flags = {"distribution": "ketama"}

    @inlineCallbacks
    def test_keysLandWhereKetamaSays(self):
        client = self.client()
        keys = [b"kt:%d" % i for i in range(100)]

        def run():
            for key in keys:
                client.set(key, 1)
            return [self.where(k) for k in keys]

        places = yield self.inThread(run)
        ring = KetamaRing([(twemproxyServerName(s.path), 1) for s in self.redis])
        self.assertEqual(places, [[ring.backendOf(k)] for k in keys])


class RouteTests(MultiplexTestCase):
    servers = 3

    def setUp(self):
        d = MultiplexTestCase.setUp(self)

        def replace(_):
            config = fromJSON(
                json.dumps(
                    [
                        {
                            "socket": self.path + "2",
                            "unixConnections": [self.redis[0].path, self.redis[1].path],
                            "routes": [
                                {"prefix": "session:", "unixConnections": [self.redis[2].path]}
                            ],
                        }
                    ]
                )
            )
            self.path = self.path + "2"
            return self.startListener(config.listeners[0])

        return d.addCallback(replace)

    @inlineCallbacks
    def test_prefixRoutes(self):
        client = self.client()

        def run():
            for i in range(30):
                client.set("session:%d" % i, i)
                client.set("other:%d" % i, i)
            return (
                [self.where("session:%d" % i) for i in range(30)],
                [self.where("other:%d" % i) for i in range(30)],
            )

        sessions, others = yield self.inThread(run)
        self.assertEqual(sessions, [[2]] * 30)
        self.assertTrue(all(len(p) == 1 and p[0] in (0, 1) for p in others))
        self.assertEqual({p[0] for p in others}, {0, 1})
