"""
Tests for live reload (L{rmux.reload}, L{rmux.service.Listeners.reload},
L{rmux.workers.parent.ParentService.reload}): what a reload accepts and refuses and
how it says so, then real redis-server processes behind a real rmux in this
process, real clients in threads, real worker processes, and a real twistd
that gets a real SIGHUP.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux.config import BackendAddress, ListenerConfig, RmuxConfig, RouteConfig, fromFlags
from rmux.hashing import RmuxRing, makeRing, twemproxyServerName
from rmux.reload import (
    NothingToReload,
    PoolRetirement,
    ReloadRefused,
    checkReloadable,
    describeChanges,
    nextConfig,
)
from rmux.application import makeService
from rmux.service import RmuxService
from rmux.workers.parent import ParentService
from tests.redisserver import startRedis, startServers
from tests.test_integration import ThreadedClients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def listenerConfig(*backends, **fields):
    fields.setdefault("socket", "/nonexistent/rmux.sock")
    return ListenerConfig(
        backends=tuple(BackendAddress.fromString(b) for b in backends), **fields
    )


def rmuxConfig(*listeners, **fields):
    return RmuxConfig(listeners=listeners, **fields)


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def waitFor(condition, timeout=10.0, what="the condition"):
    """
    Poll C{condition} on the reactor until it is true.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % (what,))
        yield sleep(0.01)


# What a reload accepts, refuses and says


class CheckReloadableTests(SynchronousTestCase):
    def test_sameAddressesAccepted(self):
        """
        Everything but where listeners listen may change.
        """
        old = rmuxConfig(listenerConfig("a:1"))
        new = rmuxConfig(
            listenerConfig("a:1", "b:2", poolSize=3, requirepass="x", failover=True)
        )
        checkReloadable(old, new)

    def assertRefused(self, old, new, *words):
        with self.assertRaises(ReloadRefused) as caught:
            checkReloadable(old, new)
        message = str(caught.exception)
        for word in words + ("restart",):
            self.assertIn(word, message)
        return message

    def test_listenerFields(self):
        """
        A listener's socket, TCP address, socket mode and owner, worker
        count and command table cannot change: the message names the
        listener and the field, and says a restart is needed.
        """
        old = rmuxConfig(listenerConfig("a:1"))
        self.assertEqual(
            self.assertRefused(old, rmuxConfig(listenerConfig("a:1", socket="/other.sock")),
                               "socket"),
            "listener 1 (/nonexistent/rmux.sock): socket changed from "
            "'/nonexistent/rmux.sock' to '/other.sock'; restart rmux to change it",
        )
        self.assertRefused(
            old, rmuxConfig(listenerConfig("a:1", socketMode=0o600)), "socketMode", "0600"
        )
        self.assertRefused(
            old, rmuxConfig(listenerConfig("a:1", maxProcesses=2)), "maxProcesses"
        )
        self.assertRefused(
            old,
            rmuxConfig(listenerConfig("a:1", commands=[{
                "name": "json.get", "arity": -2, "firstKey": 1, "lastKey": 1,
                "step": 1, "flags": ["readonly"],
            }])),
            "commands",
        )
        tcp = rmuxConfig(listenerConfig("a:1", socket=None, host="127.0.0.1", port=7000))
        self.assertRefused(
            tcp,
            rmuxConfig(listenerConfig("a:1", socket=None, host="127.0.0.1", port=7001)),
            "port", "7000", "7001",
        )

    def test_listenerCount(self):
        old = rmuxConfig(listenerConfig("a:1"))
        new = rmuxConfig(
            listenerConfig("a:1"), listenerConfig("a:1", socket="/second.sock")
        )
        self.assertRefused(old, new, "number of listeners", "1", "2")

    def test_processWideSettings(self):
        """
        The stats and metrics ports come from the command line, which a
        reload does not re-read; given a new configuration in code, they
        still cannot change.
        """
        old = rmuxConfig(listenerConfig("a:1"))
        self.assertRefused(old, rmuxConfig(listenerConfig("a:1"), statsPort=22222),
                           "statsPort")


class NextConfigTests(SynchronousTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="rmux-next-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "rmux.json")

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def test_rereadKeepsProcessSettings(self):
        """
        The file holds listeners only: the settings that came from the
        command line (and where the file is) stay.
        """
        self.write('[{"socket": "/s.sock", "tcpConnections": ["a:1"]}]')
        current = fromFlags({"config": self.path, "statsPort": "9999"})
        self.write('[{"socket": "/s.sock", "tcpConnections": ["a:1", "b:2"]}]')
        new = nextConfig(current)
        self.assertEqual(len(new.listeners[0].backends), 2)
        self.assertEqual((new.statsPort, new.configPath), (9999, self.path))

    def test_nothingToReload(self):
        with self.assertRaises(NothingToReload):
            nextConfig(rmuxConfig(listenerConfig("a:1")))

    def test_badFile(self):
        """
        An invalid or unreadable file is refused with L{ConfigError}'s
        message, which names the file and never shows a password.
        """
        self.write('[{"socket": "/s.sock", "tcpConnections": ["a:1"]}]')
        current = fromFlags({"config": self.path})
        self.write('[{"socket": "/s.sock", "tcpConnections": ["redis://:hunter2@a:x"]}]')
        with self.assertRaises(ReloadRefused) as caught:
            nextConfig(current)
        self.assertIn(self.path, str(caught.exception))
        self.assertNotIn("hunter2", str(caught.exception))
        os.remove(self.path)
        with self.assertRaises(ReloadRefused) as caught:
            nextConfig(current)
        self.assertIn("cannot read config file", str(caught.exception))


class DescribeChangesTests(SynchronousTestCase):
    def test_nothing(self):
        config = rmuxConfig(listenerConfig("a:1"))
        self.assertEqual(describeChanges(config, config), "nothing changed")

    def test_backendsAndSettings(self):
        old = rmuxConfig(listenerConfig("10.0.0.1:6379", "10.0.0.2:6379", poolSize=20))
        new = rmuxConfig(
            listenerConfig("10.0.0.1:6379", "10.0.0.3:6379", poolSize=8, remoteReadTimeout=100)
        )
        self.assertEqual(
            describeChanges(old, new),
            "listener /nonexistent/rmux.sock: added backend 10.0.0.3:6379; "
            "removed backend 10.0.0.2:6379; poolSize 20->8; remoteReadTimeout 500->100",
        )

    def test_weightsAndRoutes(self):
        old = rmuxConfig(listenerConfig("a:1:1", "b:1:1", distribution="ketama"))
        new = listenerConfig(
            "a:1:1", "b:1:3", distribution="ketama",
            routes=[RouteConfig(prefix="s:", backends=(BackendAddress.fromString("a:1"),))],
        )
        self.assertEqual(
            describeChanges(old, rmuxConfig(new)),
            "listener /nonexistent/rmux.sock: re-weighted b:1 1->3; added route 's:'",
        )

    def test_secretsNeverShown(self):
        """
        A changed password (of clients, users, backends) is said to have
        changed, never shown.
        """
        old = rmuxConfig(listenerConfig("redis://:old-secret@a:1", requirepass="old-pass"))
        new = rmuxConfig(
            listenerConfig(
                "redis://:new-secret@a:1", requirepass="new-pass",
                users={"app": "user-pass"},
            )
        )
        text = describeChanges(old, new)
        self.assertEqual(
            text,
            "listener /nonexistent/rmux.sock: new credentials for a:1; "
            "requirepass changed; users changed",
        )
        for secret in ("old-secret", "new-secret", "old-pass", "new-pass", "user-pass"):
            self.assertNotIn(secret, text)


class FakeConnection:
    def __init__(self, pool, load=0, dedicated=False):
        self.pool = pool
        self.load = load
        self.dedicated = dedicated
        self.retiring = False

    def retire(self):
        self.retiring = True
        if not self.load:
            self.pool.open.discard(self)

    def replied(self):
        self.load -= 1
        if self.retiring and not self.load:
            self.pool.open.discard(self)


class FakePool:
    """
    What L{PoolRetirement} reads of a L{rmux.pool.BackendPool}.
    """

    readTimeout = 0.5
    connectTimeout = 0.5

    def __init__(self):
        self.open = set()
        self.idlePinned = []
        self.attempts = set()
        self.waitingForConnection = []
        self.stopped = False

    def connection(self, **kwargs):
        connection = FakeConnection(self, **kwargs)
        self.open.add(connection)
        return connection

    def stop(self):
        self.stopped = True
        self.open.clear()
        return succeed(None)


class PoolRetirementTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.pool = FakePool()
        self.done = []

    def retire(self, shutdownTimeout=5.0, clients=()):
        def forgetPool(pool):
            for client in clients:
                client.affinity.pop(pool, None)

        retirement = PoolRetirement(self.clock, self.pool, shutdownTimeout, forgetPool)
        retirement.start().addCallback(self.done.append)
        return retirement

    def test_stopsOnceRepliesAreDelivered(self):
        """
        Shared connections close as their last reply arrives; the pool
        stops when none is left, and clients forget their affinity to it.
        """
        busy = self.pool.connection(load=2)
        idle = self.pool.connection()

        class Client:
            affinity = {self.pool: "earlier request", "other pool": "kept"}

        self.retire(clients=[Client])
        self.assertTrue(busy.retiring and idle.retiring)
        self.assertEqual(self.pool.open, {busy})
        busy.replied()
        self.clock.advance(PoolRetirement.pollInterval)
        self.assertFalse(self.pool.stopped)
        busy.replied()
        self.clock.advance(PoolRetirement.pollInterval)
        self.assertTrue(self.pool.stopped)
        self.assertEqual(self.done, [None])
        self.assertEqual(Client.affinity, {"other pool": "kept"})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clientsKeepDedicatedConnections(self):
        """
        A dedicated connection a client holds is left alone until it comes
        back, then retired; one still held at the deadline is closed with
        the pool.  The deadline is shutdownTimeout, but never shorter than
        a request may take (5 read timeouts and a connect).
        """
        held = self.pool.connection(load=1, dedicated=True)
        self.retire(shutdownTimeout=1.0)
        self.assertFalse(held.retiring)
        self.clock.advance(2.95)
        self.assertFalse(self.pool.stopped)
        self.clock.advance(0.05)
        self.assertTrue(self.pool.stopped)
        self.assertFalse(held.retiring)
        self.assertEqual(self.done, [None])

        self.pool = FakePool()
        self.done = []
        back = self.pool.connection(dedicated=True)
        self.retire()
        self.assertFalse(back.retiring)
        self.pool.idlePinned.append(back)
        self.clock.advance(PoolRetirement.pollInterval)
        self.assertTrue(back.retiring)
        self.clock.advance(PoolRetirement.pollInterval)
        self.assertEqual(self.done, [None])

    def test_waitsForConnectsInProgress(self):
        """
        Requests waiting for a connection being opened go out on it when it
        opens; that connection is retired in turn.
        """
        self.pool.attempts.add("connecting")
        self.pool.waitingForConnection.append("request")
        self.retire()
        self.clock.advance(1)
        self.assertFalse(self.pool.stopped)
        self.pool.attempts.clear()
        self.pool.waitingForConnection.clear()
        late = self.pool.connection(load=1)
        self.clock.advance(PoolRetirement.pollInterval)
        self.assertTrue(late.retiring)
        self.assertFalse(self.pool.stopped)
        late.replied()
        self.clock.advance(PoolRetirement.pollInterval)
        self.assertTrue(self.pool.stopped)

    def test_finishEarly(self):
        """
        Stopping the listener stops a retiring pool at once.
        """
        self.pool.connection(load=1)
        retirement = self.retire()
        finished = []
        retirement.finish().addCallback(finished.append)
        self.assertEqual((finished, self.done), ([None], [None]))
        self.assertTrue(self.pool.stopped)
        retirement.finish().addCallback(finished.append)
        self.assertEqual(finished, [None, None])


# Reloading a running rmux


class ReloadTestCase(TestCase):
    """
    An rmux service in this process on the real reactor, with its
    listener read from a JSON file that the tests rewrite.
    """

    timeout = 30

    def setUp(self):
        self.clients = ThreadedClients(self, 4)
        self.directory = tempfile.mkdtemp(prefix="rmux-reload-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "rmux.sock")
        self.configPath = os.path.join(self.directory, "rmux.json")
        self.events = []

    def writeConfig(self, **fields):
        listener = {"socket": self.path}
        listener.update(fields)
        with open(self.configPath, "w") as f:
            json.dump([listener], f)

    def start(self, hangup=False, **fields):
        self.writeConfig(**fields)
        service = RmuxService(fromFlags({"config": self.configPath}), reactor)
        service.log = Logger(observer=self.events.append)
        service.reloadOnHangup = hangup
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        (self.listener,) = service.listeners
        return service

    def messages(self):
        """
        What the service logged, but its ready line, which comes whenever
        the backends' first health verdicts do.
        """
        return [message for message in map(formatEvent, self.events)
                if not message.startswith("rmux: ready:")]

    @inlineCallbacks
    def client(self, **kwargs):
        """
        A redis-py client on one connection of its own (which it opens at
        once, so in a thread).
        """
        client = yield self.inThread(
            redis.Redis, unix_socket_path=self.path, single_connection_client=True,
            socket_timeout=10, **kwargs
        )
        self.addCleanup(client.close)
        return client

    def direct(self, server):
        client = redis.Redis(unix_socket_path=server.path, socket_timeout=10)
        self.addCleanup(client.close)
        return client

    def inThread(self, f, *args, **kwargs):
        return self.clients.run(f, *args, **kwargs)

    @inlineCallbacks
    def keysOn(self, server, pattern):
        keys = yield self.inThread(self.direct(server).keys, pattern)
        return {key.decode() for key in keys}


class ReloadTests(ReloadTestCase):
    @inlineCallbacks
    def test_addBackend(self):
        """
        A backend added by a reload takes its share of the keys as Go rmux's
        placement for two servers says, with a health check of its own; the
        server that stays keeps its pool and connections, and the client
        connected before the reload stays connected.
        """
        a, b = startServers(self, 2)
        service = self.start(unixConnections=[a.path])
        client = yield self.client()
        self.assertTrue((yield self.inThread(client.set, "before", "1")))
        (poolA,) = self.listener.pools
        connections = list(poolA.connections)
        self.writeConfig(unixConnections=[a.path, b.path], poolSize=3)
        self.assertTrue((yield service.reload()))
        self.assertIs(self.listener.pools[0], poolA)
        self.assertEqual(poolA.connections, connections)
        self.assertEqual((poolA.size, self.listener.pools[1].size), (3, 3))
        poolB = self.listener.pools[1]
        self.assertEqual(str(poolB.address), b.path)
        # The reload waited for the new server's first verdict.
        self.assertEqual(self.listener.health.checks[poolB].state, "up")

        keys = ["key:%d" % i for i in range(200)]

        def write():
            for key in keys:
                client.set(key, key)

        yield self.inThread(write)
        ring = RmuxRing(2)
        home = {0: set(), 1: set()}
        for key in keys:
            home[ring.backendOf(key.encode())].add(key)
        self.assertTrue(home[0] and home[1])
        self.assertEqual((yield self.keysOn(a, "key:*")), home[0])
        self.assertEqual((yield self.keysOn(b, "key:*")), home[1])
        self.assertEqual(self.listener.factory.stats.connectionsReceived, 1)
        self.assertEqual(
            self.messages()[-1],
            "rmux: reloaded %s: listener %s: added backend %s; poolSize 20->3"
            % (self.configPath, self.path, b.path),
        )

    @inlineCallbacks
    def test_removeBackendWithRequestsInFlight(self):
        """
        A backend removed while a client's 1000-command pipeline has
        hundreds of requests in flight on it still delivers every reply, in
        order, to the client, which stays connected; then its pool closes,
        its health check stops, and later commands go to the server that
        stays.
        """
        a, b = startServers(self, 2)
        service = self.start(
            unixConnections=[a.path, b.path], remoteTimeout=5000,
            healthTimeout=5000, healthFailures=1000,
        )
        # Every key is on both servers with the same value, so a GET is
        # right wherever it is placed.
        for server in (a, b):
            pipe = self.direct(server).pipeline(transaction=False)
            for i in range(500):
                pipe.set("k:%d" % i, "v:%d" % i)
            yield self.inThread(pipe.execute)
        client = yield self.client()
        yield self.inThread(client.ping)
        poolA, poolB = self.listener.pools

        b.pause()
        self.addCleanup(b.resume)

        def pipeline():
            pipe = client.pipeline(transaction=False)
            for i in range(500):
                pipe.get("k:%d" % i)
                pipe.set("new:%d" % i, i)
            return pipe.execute()

        replies = self.inThread(pipeline)

        def owed():
            return sum(connection.load for connection in poolB.connections)

        yield waitFor(lambda: owed() > 0, what="requests in flight on the paused server")
        # Let rmux read the rest of the pipeline.
        yield sleep(0.2)
        inFlight = owed()
        self.assertGreater(inFlight, 300)
        self.writeConfig(unixConnections=[a.path], remoteTimeout=5000)
        self.assertTrue((yield service.reload()))
        self.assertEqual(self.listener.pools, [poolA])
        self.assertEqual(self.listener.router.pools, [poolA])
        self.assertNotIn(poolB, self.listener.health.checks)
        self.assertEqual(len(self.listener.retiring), 1)
        self.assertEqual(owed(), inFlight)
        b.resume()

        replies = yield replies
        self.assertEqual(len(replies), 1000)
        for i in range(500):
            self.assertEqual(replies[2 * i], b"v:%d" % i)
            self.assertIs(replies[2 * i + 1], True)
        self.assertTrue((yield self.inThread(client.ping)))
        # redis-py's pipeline has a connection of its own; neither closed.
        factory = self.listener.factory
        self.assertEqual(factory.stats.connectionsReceived, 2)
        self.assertEqual(len(factory.clients), 2)
        self.assertEqual((factory.stats.clientEOF, factory.stats.clientErrors), (0, 0))
        self.assertEqual(poolB.stats.failedRequests, 0)

        yield waitFor(lambda: not self.listener.retiring, what="the removed pool to close")
        self.assertTrue(poolB.stopped)
        self.assertEqual(poolB.open, set())

        def writeMore():
            for i in range(50):
                client.set("after:%d" % i, i)

        yield self.inThread(writeMore)
        self.assertEqual(len((yield self.keysOn(a, "after:*"))), 50)
        self.assertEqual((yield self.keysOn(b, "after:*")), set())
        self.assertIn("removed backend %s" % (b.path,), self.messages()[-1])

    @inlineCallbacks
    def test_removedBackendCutsOffBlockedClientAtDeadline(self):
        """
        A client blocked on a removed server (a dedicated connection) keeps
        it until the listener's shutdownTimeout (or the longest a request
        may take, if longer); then it gets a clear error naming the server,
        and stays connected.
        """
        a, b = startServers(self, 2)
        service = self.start(
            unixConnections=[a.path, b.path], shutdownTimeout=200, remoteTimeout=100
        )
        ring = RmuxRing(2)
        key = next("list:%d" % i for i in range(100) if ring.backendOf(b"list:%d" % i) == 1)
        client = yield self.client()
        yield self.inThread(client.ping)
        poolB = self.listener.pools[1]
        blocked = self.inThread(client.blpop, key, 0)
        yield waitFor(lambda: poolB.pinned == 1, what="BLPOP's dedicated connection")
        self.writeConfig(unixConnections=[a.path], shutdownTimeout=200, remoteTimeout=100)
        started = time.monotonic()
        yield service.reload()
        with self.assertRaises(redis.ResponseError) as caught:
            yield blocked
        waited = time.monotonic() - started
        self.assertIn("rmux: lost connection to backend %s" % (b.path,), str(caught.exception))
        # Deadline: max(shutdownTimeout, 5 read timeouts + the connect timeout).
        self.assertGreater(waited, 0.5)
        self.assertLess(waited, 5)
        self.assertTrue((yield self.inThread(client.ping)))
        self.assertTrue(poolB.stopped)

    @inlineCallbacks
    def test_reweight(self):
        """
        New ketama weights place keys by the new continuum, on the same
        pools.
        """
        a, b = startServers(self, 2)

        def backends(weightB):
            return [
                {"address": a.path, "weight": 1, "name": "a"},
                {"address": b.path, "weight": weightB, "name": "b"},
            ]

        service = self.start(unixConnections=backends(1), distribution="ketama")
        pools = list(self.listener.pools)
        self.writeConfig(unixConnections=backends(4), distribution="ketama")
        self.assertTrue((yield service.reload()))
        self.assertEqual(self.listener.pools, pools)
        old = makeRing("ketama", [("a", 1), ("b", 1)])
        new = makeRing("ketama", [
            (twemproxyServerName(a.path, "a"), 1), (twemproxyServerName(b.path, "b"), 4)
        ])
        keys = ["w:%d" % i for i in range(300)]
        moved = [k for k in keys if old.backendOf(k.encode()) != new.backendOf(k.encode())]
        self.assertGreater(len(moved), 30)
        client = yield self.client()

        def write():
            for key in keys:
                client.set(key, 1)

        yield self.inThread(write)
        onB = {k for k in keys if new.backendOf(k.encode()) == 1}
        self.assertEqual((yield self.keysOn(b, "w:*")), onB)
        self.assertEqual((yield self.keysOn(a, "w:*")), set(keys) - onB)
        self.assertIn("re-weighted %s 1->4" % (b.path,), self.messages()[-1])

    @inlineCallbacks
    def test_routeGetsBackend(self):
        """
        A backend added to a prefix route takes its share of that route's
        keys, and only of those.
        """
        a, b = startServers(self, 2)
        service = self.start(
            unixConnections=[a.path],
            routes=[{"prefix": "s:", "unixConnections": [a.path]}],
        )
        self.writeConfig(
            unixConnections=[a.path],
            routes=[{"prefix": "s:", "unixConnections": [a.path, b.path]}],
        )
        self.assertTrue((yield service.reload()))
        client = yield self.client()

        def write():
            for i in range(100):
                client.set("s:%d" % i, 1)
                client.set("o:%d" % i, 1)

        yield self.inThread(write)
        ring = RmuxRing(2)
        onB = {"s:%d" % i for i in range(100) if ring.backendOf(b"s:%d" % i) == 1}
        self.assertTrue(onB)
        self.assertEqual((yield self.keysOn(b, "*")), onB)
        self.assertEqual(len((yield self.keysOn(a, "o:*"))), 100)

    @inlineCallbacks
    def test_remoteTimeoutForConnectedClient(self):
        """
        A shorter remote read timeout applies at once to a client that was
        already connected, on the connections the pool already had.
        """
        a = startRedis(self)
        slow = dict(remoteTimeout=2000, healthTimeout=5000, healthFailures=1000)
        service = self.start(unixConnections=[a.path], **slow)
        client = yield self.client()
        yield self.inThread(client.set, "x", "1")
        a.pause()
        reactor.callLater(0.4, a.resume)
        self.assertEqual((yield self.inThread(client.get, "x")), b"1")

        self.writeConfig(unixConnections=[a.path], remoteReadTimeout=100,
                         remoteConnectTimeout=2000, remoteWriteTimeout=2000,
                         healthTimeout=5000, healthFailures=1000)
        self.assertTrue((yield service.reload()))
        a.pause()
        reactor.callLater(0.4, a.resume)
        with self.assertRaises(redis.ResponseError) as caught:
            yield self.inThread(client.get, "x")
        self.assertIn("did not reply within 100 ms", str(caught.exception))
        yield sleep(0.4)
        self.assertEqual((yield self.inThread(client.get, "x")), b"1")
        self.assertEqual(self.listener.factory.stats.connectionsReceived, 1)

    @inlineCallbacks
    def test_idleTimeoutForConnectedClient(self):
        """
        An idle timeout turned on by a reload closes a client that was
        connected before, as Redis does when its C{timeout} is set.
        """
        a = startRedis(self)
        service = self.start(unixConnections=[a.path])
        raw = socket.socket(socket.AF_UNIX)
        self.addCleanup(raw.close)
        raw.settimeout(5)
        raw.connect(self.path)
        raw.sendall(b"PING\r\n")
        self.assertEqual((yield self.inThread(raw.recv, 100)), b"+PONG\r\n")
        yield sleep(0.3)
        self.assertEqual(len(self.listener.factory.clients), 1)
        self.writeConfig(unixConnections=[a.path], idleTimeout=200)
        self.assertTrue((yield service.reload()))
        self.assertEqual((yield self.inThread(raw.recv, 100)), b"")
        self.assertIn("idleTimeout 0->200", self.messages()[-1])

    @inlineCallbacks
    def test_requirepass(self):
        """
        A password set by a reload is required of new clients; a client
        already in keeps its session.  The log says it changed, never what
        it is.
        """
        a = startRedis(self)
        service = self.start(unixConnections=[a.path])
        before = yield self.client()
        yield self.inThread(before.ping)
        self.writeConfig(unixConnections=[a.path], requirepass="s3cret-pass")
        self.assertTrue((yield service.reload()))
        self.assertTrue((yield self.inThread(before.set, "kept", "1")))
        with self.assertRaises(redis.AuthenticationError):
            yield self.inThread((yield self.client()).get, "kept")
        self.assertEqual((yield self.inThread((yield self.client(password="s3cret-pass")).get, "kept")), b"1")
        self.assertIn("requirepass changed", self.messages()[-1])
        self.assertNotIn("s3cret-pass", "".join(self.messages()))

    @inlineCallbacks
    def test_subscriptionMovesOffRemovedBackend(self):
        """
        A channel subscribed on a server a reload removes moves to the
        channel's new server: the subscriber gets what is published after.
        """
        a, b = startServers(self, 2)
        service = self.start(unixConnections=[a.path, b.path])
        ring = RmuxRing(2)
        channel = next("c%d" % i for i in range(100) if ring.backendOf(b"c%d" % i) == 1)
        subscriber = redis.Redis(unix_socket_path=self.path, socket_timeout=5).pubsub()
        self.addCleanup(subscriber.close)
        yield self.inThread(subscriber.subscribe, channel)
        confirmation = yield self.inThread(subscriber.get_message, timeout=5)
        self.assertEqual(confirmation["type"], "subscribe")
        poolB = self.listener.pools[1]
        self.assertIn(poolB, self.listener.hub.backends)
        self.writeConfig(unixConnections=[a.path])
        self.assertTrue((yield service.reload()))
        publisher = yield self.client()
        deadline = time.monotonic() + 5
        while (yield self.inThread(publisher.publish, channel, "hello")) != 1:
            self.assertLess(time.monotonic(), deadline)
            yield sleep(0.02)
        message = yield self.inThread(subscriber.get_message, timeout=5)
        self.assertEqual((message["type"], message["data"]), ("message", b"hello"))
        self.assertNotIn(poolB, self.listener.hub.backends)

    @inlineCallbacks
    def test_patternFollowsServers(self):
        """
        A pattern is subscribed on every server: on one a reload adds, and
        no longer on one it removes.
        """
        a, b = startServers(self, 2)
        service = self.start(unixConnections=[a.path])
        subscriber = redis.Redis(unix_socket_path=self.path, socket_timeout=5).pubsub()
        self.addCleanup(subscriber.close)
        yield self.inThread(subscriber.psubscribe, "news.*")
        confirmation = yield self.inThread(subscriber.get_message, timeout=5)
        self.assertEqual(confirmation["type"], "psubscribe")
        self.writeConfig(unixConnections=[a.path, b.path])
        self.assertTrue((yield service.reload()))
        poolA, poolB = self.listener.pools
        deadline = time.monotonic() + 5
        # Published straight on the new server: only a subscription there
        # can deliver it.
        while (yield self.inThread(self.direct(b).publish, "news.b", "first")) != 1:
            self.assertLess(time.monotonic(), deadline)
            yield sleep(0.02)
        message = yield self.inThread(subscriber.get_message, timeout=5)
        self.assertEqual((message["channel"], message["data"]), (b"news.b", b"first"))
        self.writeConfig(unixConnections=[b.path])
        self.assertTrue((yield service.reload()))
        deadline = time.monotonic() + 5
        while (yield self.inThread(self.direct(a).publish, "news.a", "gone")) != 0:
            self.assertLess(time.monotonic(), deadline)
            yield sleep(0.02)
        self.assertEqual((yield self.inThread(self.direct(b).publish, "news.b", "still")), 1)
        message = yield self.inThread(subscriber.get_message, timeout=5)
        self.assertEqual((message["channel"], message["data"]), (b"news.b", b"still"))

    @inlineCallbacks
    def test_badFileRefused(self):
        """
        A file that is not valid JSON is refused with one line saying why,
        and the running configuration keeps serving.
        """
        a = startRedis(self)
        service = self.start(unixConnections=[a.path])
        config = service.config
        with open(self.configPath, "w") as f:
            f.write('[{"socket": ')
        self.assertFalse((yield service.reload()))
        self.assertIs(service.config, config)
        self.assertEqual(
            self.messages(),
            [
                "rmux: reload refused, the running configuration stays: %s: invalid "
                "JSON: Expecting value (line 1, column 13)" % (self.configPath,)
            ],
        )
        self.assertEqual([e["log_level"].name for e in self.events], ["error"])
        client = yield self.client()
        self.assertTrue((yield self.inThread(client.set, "still", "serving")))
        self.assertEqual((yield self.keysOn(a, "still")), {"still"})

    @inlineCallbacks
    def test_listenerAddressChangeRefused(self):
        """
        A new socket path is refused as a whole, other changes in the same
        file included: the socket stays, and so does the old pool size.
        """
        a = startRedis(self)
        service = self.start(unixConnections=[a.path], poolSize=3)
        other = os.path.join(self.directory, "other.sock")
        with open(self.configPath, "w") as f:
            json.dump([{"socket": other, "unixConnections": [a.path], "poolSize": 5}], f)
        self.assertFalse((yield service.reload()))
        (message,) = self.messages()
        self.assertEqual(
            message,
            "rmux: reload refused, the running configuration stays: listener 1 (%s): "
            "socket changed from '%s' to '%s'; restart rmux to change it"
            % (self.path, self.path, other),
        )
        self.assertEqual(self.listener.pools[0].size, 3)
        self.assertFalse(os.path.exists(other))
        self.assertTrue((yield self.inThread((yield self.client()).ping)))

    @inlineCallbacks
    def test_flagsOnlyHaveNothingToReload(self):
        a = startRedis(self)
        service = RmuxService(
            fromFlags({"socket": self.path, "unixConnections": a.path}), reactor
        )
        service.log = Logger(observer=self.events.append)
        self.assertFalse((yield service.reload()))
        self.assertEqual(
            self.messages(),
            ["rmux: nothing to reload: the listeners come from command-line options, "
             "not from a --config file"],
        )

    @inlineCallbacks
    def test_sighup(self):
        """
        SIGHUP to this process reloads the file, on the reactor thread;
        stopping the service puts the previous handler back.
        """
        a, b = startServers(self, 2)
        previous = signal.getsignal(signal.SIGHUP)
        service = self.start(hangup=True, unixConnections=[a.path])
        self.assertIsNot(signal.getsignal(signal.SIGHUP), previous)
        self.writeConfig(unixConnections=[a.path, b.path])
        os.kill(os.getpid(), signal.SIGHUP)
        yield waitFor(lambda: len(self.listener.pools) == 2, what="the reload")
        self.assertIn("added backend %s" % (b.path,), self.messages()[-1])
        yield service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    @inlineCallbacks
    def test_embedderReload(self):
        """
        A program embedding rmux hands a new configuration to
        C{reload} directly.
        """
        a, b = startServers(self, 2)
        service = self.start(unixConnections=[a.path])
        new = RmuxConfig(listeners=[
            ListenerConfig(
                socket=self.path, backends=(BackendAddress.fromString(b.path),)
            )
        ])
        self.assertTrue((yield service.reload(new)))
        self.assertIs(service.config, new)
        yield self.inThread((yield self.client()).set, "embedded", "1")
        self.assertEqual((yield self.keysOn(b, "embedded")), {"embedded"})


# Several processes


def info(path):
    """
    INFO from a fresh connection: which worker answered, and how many
    backends it has.
    """
    client = redis.Redis(unix_socket_path=path, socket_timeout=5)
    try:
        values = client.info()
        return values["rmux_worker"], values["total_endpoints"]
    finally:
        client.close()


class WorkerReloadTests(ReloadTestCase):
    timeout = 60

    def startParent(self, **fields):
        fields.setdefault("maxProcesses", 2)
        self.writeConfig(**fields)
        service = makeService(fromFlags({"config": self.configPath}), reactor)
        self.assertIsInstance(service, ParentService)
        service.log = Logger(observer=self.events.append)
        service.minRestartDelay = 0.1
        pids = set()

        def killAll():
            for pid in pids | {w.pid for w in service.workers.values()}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

        self.addCleanup(killAll)
        self.addCleanup(lambda: service.running and service.stopService())
        service.startService()
        pids.update(w.pid for w in service.workers.values())
        return service

    @inlineCallbacks
    def seenByEveryWorker(self, expected, workers=(1, 2), deadline=15.0):
        """
        Ask INFO on fresh connections until every worker has answered with
        C{expected} backends.
        """
        seen = set()
        end = time.monotonic() + deadline
        while not set(workers) <= seen:
            self.assertLess(time.monotonic(), end, "workers seen with %d backends: %r"
                            % (expected, seen))
            worker, endpoints = yield self.inThread(info, self.path)
            if endpoints == expected:
                seen.add(worker)
        return seen

    @inlineCallbacks
    def test_reloadReachesEveryWorker(self):
        """
        The parent reads the file once and every worker applies it; a worker
        started after the reload (a replacement) runs it too.
        """
        a, b = startServers(self, 2)
        service = self.startParent(unixConnections=[a.path])
        yield self.seenByEveryWorker(1)
        self.writeConfig(unixConnections=[a.path, b.path], maxProcesses=2)
        self.assertTrue((yield service.reload()))
        self.assertIn(
            "rmux: reloaded %s for 2 workers: listener %s: added backend %s"
            % (self.configPath, self.path, b.path),
            self.messages(),
        )
        yield self.seenByEveryWorker(2)
        victim = service.workers[1].pid
        os.kill(victim, signal.SIGKILL)
        yield waitFor(
            lambda: 1 in service.workers and service.workers[1].pid != victim,
            what="the replacement worker",
        )
        # The replacement can only be told apart by its pid; INFO from it
        # must show the reloaded backends.
        replacement = service.workers[1].pid

        def fromReplacement():
            end = time.monotonic() + 15
            while time.monotonic() < end:
                client = redis.Redis(unix_socket_path=self.path, socket_timeout=5)
                try:
                    values = client.info()
                finally:
                    client.close()
                if values["rmux_process_id"] == replacement:
                    return values["total_endpoints"]
            raise AssertionError("the replacement worker never answered")

        self.assertEqual((yield self.inThread(fromReplacement)), 2)

    @inlineCallbacks
    def test_refusedInTheParent(self):
        """
        A bad file is refused once, by the parent; workers get nothing.
        """
        a = startRedis(self)
        service = self.startParent(unixConnections=[a.path])
        written = {w.workerId: w.transport for w in service.workers.values()}
        self.writeConfig(unixConnections=[a.path], maxProcesses=3)
        self.assertFalse((yield service.reload()))
        self.assertIn(
            "rmux: reload refused, the running configuration stays: listener 1 (%s): "
            "maxProcesses changed from 2 to 3; restart rmux to change it" % (self.path,),
            self.messages(),
        )
        self.assertEqual(len(service.workers), 2)
        self.assertEqual({w.workerId: w.transport for w in service.workers.values()}, written)
        yield self.seenByEveryWorker(1)


class TwistdHangupTests(TestCase):
    """
    The real thing: C{twistd rmux --config} with two workers, and
    C{kill -HUP}.
    """

    timeout = 60

    @inlineCallbacks
    def test_sighupReloadsEveryWorker(self):
        a, b = startServers(self, 2)
        directory = tempfile.mkdtemp(prefix="rmux-hup-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "rmux.sock")
        configPath = os.path.join(directory, "rmux.json")
        logPath = os.path.join(directory, "rmux.log")

        def write(backends):
            with open(configPath, "w") as f:
                json.dump([{"socket": path, "unixConnections": backends,
                            "maxProcesses": 2}], f)

        write([a.path])
        process = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
                "--logfile", logPath, "rmux", "--config=" + configPath,
            ],
            cwd=directory, env=dict(os.environ, PYTHONPATH=ROOT),
        )

        def stop():
            if process.poll() is None:
                process.terminate()
                process.wait(15)

        self.addCleanup(stop)
        clients = ThreadedClients(self, 2)

        def everyWorkerHas(expected):
            seen = set()
            end = time.monotonic() + 20
            while seen != {1, 2}:
                if time.monotonic() > end or process.poll() is not None:
                    with open(logPath) as log:
                        raise AssertionError(log.read())
                try:
                    worker, endpoints = info(path)
                except (OSError, redis.ConnectionError):
                    time.sleep(0.05)
                    continue
                if endpoints == expected:
                    seen.add(worker)

        yield clients.run(everyWorkerHas, 1)
        write([b.path])
        process.send_signal(signal.SIGHUP)

        def reloadedTwice():
            end = time.monotonic() + 20
            while time.monotonic() < end:
                with open(logPath) as log:
                    if log.read().count("rmux: reloaded the parent's configuration") == 2:
                        return
                time.sleep(0.05)
            with open(logPath) as log:
                raise AssertionError(log.read())

        yield clients.run(reloadedTwice)

        def writeThroughEach():
            # Every worker now sends keys to the new server only.
            for i in range(40):
                client = redis.Redis(unix_socket_path=path, socket_timeout=5)
                try:
                    client.set("hup:%d" % i, i)
                finally:
                    client.close()

        yield clients.run(writeThroughEach)
        onA = yield clients.run(redis.Redis(unix_socket_path=a.path).keys, "hup:*")
        onB = yield clients.run(redis.Redis(unix_socket_path=b.path).keys, "hup:*")
        self.assertEqual((len(onA), len(onB)), (0, 40))
        process.terminate()
        yield clients.run(process.wait, 15)
        with open(logPath) as log:
            text = log.read()
        self.assertIn(
            "rmux: reloaded %s for 2 workers: listener %s: added backend %s; "
            "removed backend %s" % (configPath, path, b.path, a.path),
            text,
        )
        self.assertEqual(text.count("rmux: reloaded the parent's configuration"), 2)
