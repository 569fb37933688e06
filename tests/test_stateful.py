"""
Stateful Redis features through rmux, against real servers: transactions
(MULTI/EXEC, WATCH), blocking commands on dedicated connections, and
EVALSHA's NOSCRIPT retry; with one backend and with several.
"""

import os
import time

import redis
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from rmux.config import fromFlags
from rmux.hashing import RmuxRing
from rmux.service import ListenerService
from tests.redisserver import startServers
from tests.test_integration import ThreadedClients, rawExchange, socketPath, startListener


class StatefulTestCase(TestCase):
    timeout = 60
    servers = 1
    flags = {}

    def setUp(self):
        self.redis = startServers(self, self.servers)
        self.clients = ThreadedClients(self)
        self.path = socketPath(self)
        values = {
            "socket": self.path,
            "unixConnections": " ".join(s.path for s in self.redis),
            "remoteReadTimeout": "300",
        }
        values.update(self.flags)
        self.service = startListener(self, fromFlags(values).listeners[0])
        return deferLater(reactor, 0.05, lambda: None)

    def client(self, **kwargs):
        client = redis.Redis(unix_socket_path=self.path, **kwargs)
        self.addCleanup(client.close)
        return client

    def direct(self, index=0):
        client = redis.Redis(unix_socket_path=self.redis[index].path)
        self.addCleanup(client.close)
        return client

    def inThread(self, f, *args, **kwargs):
        return self.clients.run(f, *args, **kwargs)


class TransactionTests(StatefulTestCase):
    @inlineCallbacks
    def test_pipelineTransaction(self):
        client = self.client()

        def run():
            pipe = client.pipeline(transaction=True)
            pipe.set("a", 1).incr("a").get("a").ping()
            return pipe.execute()

        self.assertEqual((yield self.inThread(run)), [True, 2, b"2", True])

    @inlineCallbacks
    def test_watchDetectsConcurrentWrite(self):
        """
        WATCH pins the client to a connection of its own, so a write by
        another client between WATCH and EXEC aborts the transaction.
        """
        client, other = self.client(), self.client()

        def run():
            client.set("balance", 10)
            outcomes = []
            for interfere in (False, True):
                with client.pipeline() as pipe:
                    pipe.watch("balance")
                    value = int(pipe.get("balance"))
                    if interfere:
                        other.set("balance", 999)
                    pipe.multi()
                    pipe.set("balance", value + 1)
                    try:
                        outcomes.append(pipe.execute())
                    except redis.WatchError:
                        outcomes.append("aborted")
            return outcomes, client.get("balance")

        outcomes, balance = yield self.inThread(run)
        self.assertEqual(outcomes, [[True], "aborted"])
        self.assertEqual(balance, b"999")

    @inlineCallbacks
    def test_protocolLevel(self):
        """
        Redis's own answers for misuse: nested MULTI, EXEC/DISCARD without
        MULTI, WATCH inside MULTI, a queued error aborting EXEC.
        """
        payload = (
            b"EXEC\r\nDISCARD\r\nMULTI\r\nMULTI\r\nWATCH k\r\nSET k 1\r\nDISCARD\r\n"
            b"GET k\r\nMULTI\r\nSET k 1\r\nNOSUCH\r\nEXEC\r\nGET k\r\nQUIT\r\n"
        )
        got = yield self.inThread(rawExchange, self.path, payload)
        self.assertEqual(
            got,
            b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n+OK\r\n"
            b"-ERR MULTI calls can not be nested\r\n"
            b"-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n+OK\r\n$-1\r\n"
            b"+OK\r\n+QUEUED\r\n"
            b"-ERR unknown command 'NOSUCH', with args beginning with: \r\n"
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
            b"$-1\r\n+OK\r\n",
        )

    @inlineCallbacks
    def test_pinnedCapIsBounded(self):
        """
        With the dedicated connections of a server all taken, a client waits
        at most pinnedWait, then gets an error; it stays connected.
        """
        self.service.pools[0].maxPinned = 1
        self.service.pools[0].pinnedWait = 0.2
        first, second = self.client(), self.client()

        def run():
            first.execute_command("WATCH", "x")
            started = time.monotonic()
            try:
                second.execute_command("WATCH", "y")
            except redis.ResponseError as e:
                error = str(e)
            waited = time.monotonic() - started
            first.execute_command("UNWATCH")
            return error, waited, second.execute_command("WATCH", "y")

        error, waited, ok = yield self.inThread(run)
        self.assertIn("dedicated connections", error)
        self.assertGreaterEqual(waited, 0.2)
        self.assertIs(ok, True)

    @inlineCallbacks
    def test_disconnectGivesConnectionBack(self):
        pool = self.service.pools[0]
        pool.maxPinned = 1
        client = self.client()
        yield self.inThread(client.execute_command, "WATCH", "x")
        self.assertEqual(pool.pinned, 1)
        yield self.inThread(client.close)
        for _ in range(50):
            if pool.idlePinned:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(len(pool.idlePinned), 1)
        again = self.client()
        self.assertIs((yield self.inThread(again.execute_command, "WATCH", "x")), True)


class BlockingTests(StatefulTestCase):
    @inlineCallbacks
    def test_blpopWokenByAnotherClient(self):
        waiter, pusher = self.client(), self.client()
        d = self.inThread(waiter.blpop, ["queue"], 5)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual((yield self.inThread(pusher.rpush, "queue", "job")), 1)
        self.assertEqual((yield d), (b"queue", b"job"))

    @inlineCallbacks
    def test_ownTimeoutNotTheReadTimeout(self):
        """
        BLPOP with a 1 s timeout outlives the 300 ms remote read timeout and
        returns nil after its own timeout, while other clients carry on.
        """
        blocked, busy = self.client(), self.client()

        def work():
            done = 0
            deadline = time.monotonic() + 0.8
            while time.monotonic() < deadline:
                busy.set("k", done)
                done += 1
            return done

        started = time.monotonic()
        pop = self.inThread(blocked.blpop, ["empty"], 1)
        done = yield self.inThread(work)
        self.assertIsNone((yield pop))
        self.assertGreaterEqual(time.monotonic() - started, 1.0)
        self.assertGreater(done, 100)

    @inlineCallbacks
    def test_laterCommandsWait(self):
        """
        Commands pipelined after a blocking one run after it, as on Redis:
        the LPUSH does not wake the BLPOP sent before it.
        """
        got = yield self.inThread(
            rawExchange, self.path, b"BLPOP l 0.3\r\nLPUSH l x\r\nQUIT\r\n"
        )
        self.assertEqual(got, b"*-1\r\n:1\r\n+OK\r\n")

    @inlineCallbacks
    def test_xreadBlock(self):
        reader, writer = self.client(), self.client()
        d = self.inThread(reader.xread, {"s": "$"}, block=2000)
        yield deferLater(reactor, 0.2, lambda: None)
        yield self.inThread(writer.xadd, "s", {"f": "v"}, id="5-1")
        self.assertEqual((yield d), [[b"s", [(b"5-1", {b"f": b"v"})]]])


class ScriptTests(StatefulTestCase):
    @inlineCallbacks
    def test_evalshaAfterScriptLoad(self):
        client = self.client()
        sha = yield self.inThread(client.script_load, "return ARGV[1]")
        self.assertEqual((yield self.inThread(client.evalsha, sha, 0, "hi")), b"hi")

    @inlineCallbacks
    def test_noscriptRetried(self):
        """
        The server forgot the script (SCRIPT FLUSH, or a restart): rmux loads
        the body it saw and retries once.
        """
        client = self.client()
        sha = yield self.inThread(client.script_load, "return 42")
        yield self.inThread(self.direct().script_flush)
        self.assertEqual((yield self.inThread(client.evalsha, sha, 0)), 42)
        unknown = "0" * 40
        try:
            yield self.inThread(client.evalsha, unknown, 0)
        except redis.exceptions.NoScriptError:
            pass
        else:
            self.fail("an unknown script did not give NOSCRIPT")


class MultiServerTests(StatefulTestCase):
    servers = 3
    flags = {"hashTag": "{}"}

    @inlineCallbacks
    def test_transactionOnTheKeysServer(self):
        client = self.client()

        def run():
            pipe = client.pipeline(transaction=True)
            pipe.set("{u1}.a", 1).set("{u1}.b", 2).mget("{u1}.a", "{u1}.b")
            return pipe.execute()

        self.assertEqual((yield self.inThread(run)), [True, True, [b"1", b"2"]])
        home = RmuxRing(3).backendOf(b"u1")
        self.assertEqual((yield self.inThread(self.direct(home).get, "{u1}.a")), b"1")

    @inlineCallbacks
    def test_spreadKeysAbortExec(self):
        ring = RmuxRing(3)
        keys = [b"k%d" % i for i in range(20)]
        a = keys[0]
        b = next(k for k in keys if ring.backendOf(k) != ring.backendOf(a))
        got = yield self.inThread(
            rawExchange, self.path,
            b"MULTI\r\nSET " + a + b" 1\r\nSET " + b + b" 2\r\nEXEC\r\nGET " + a + b"\r\nQUIT\r\n",
        )
        # The command that would spread the transaction is refused as it is
        # queued, so EXEC aborts, as Redis does after a refused command.
        self.assertEqual(
            got,
            b"+OK\r\n+QUEUED\r\n-ERR rmux: this transaction's keys live on different "
            b"servers; rmux runs such a transaction only with crossServerTransactions on, "
            b"and never after WATCH\r\n-EXECABORT Transaction discarded because of previous "
            b"errors.\r\n$-1\r\n+OK\r\n",
        )

    @inlineCallbacks
    def test_blockingOnTheKeysServer(self):
        waiter, pusher = self.client(), self.client()
        d = self.inThread(waiter.blpop, ["{q}.jobs"], 5)
        yield deferLater(reactor, 0.2, lambda: None)
        yield self.inThread(pusher.rpush, "{q}.jobs", "x")
        self.assertEqual((yield d), (b"{q}.jobs", b"x"))

    @inlineCallbacks
    def test_evalshaRoutedByKey(self):
        client = self.client()

        def run():
            sha = client.script_load("return redis.call('GET', KEYS[1])")
            client.set("{s}.k", "v")
            return client.evalsha(sha, 1, "{s}.k")

        self.assertEqual((yield self.inThread(run)), b"v")


class PubSubTests(StatefulTestCase):
    """
    Pub/sub through two rmux instances in front of the same two servers,
    as two application hosts would run them.
    """

    servers = 2

    def setUp(self):
        d = StatefulTestCase.setUp(self)

        def second(_):
            self.path2 = self.path + "2"
            values = {
                "socket": self.path2,
                "unixConnections": " ".join(s.path for s in self.redis),
            }
            startListener(self, fromFlags(values).listeners[0])
            return deferLater(reactor, 0.05, lambda: None)

        return d.addCallback(second)

    def publisher(self):
        client = redis.Redis(unix_socket_path=self.path2)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_subscribeAcrossHosts(self):
        """
        A subscriber on one rmux receives what is published through the
        other, for plain channels and patterns, in RESP2 and RESP3.
        """
        for protocol in (2, 3):
            subscriber = self.client(protocol=protocol).pubsub()
            self.addCleanup(subscriber.close)
            publisher = self.publisher()

            def run():
                subscriber.subscribe("news", "weather")
                subscriber.psubscribe("user:*")
                for _ in range(3):
                    subscriber.get_message(timeout=1)
                counts = [publisher.publish("news", "n%d" % i) for i in range(20)]
                counts.append(publisher.publish("user:7", "hello"))
                counts.append(publisher.publish("weather", "rain"))
                messages = []
                while len(messages) < 22:
                    message = subscriber.get_message(timeout=2)
                    if message is None:
                        break
                    messages.append((message["type"], message["channel"], message["data"]))
                subscriber.unsubscribe()
                subscriber.punsubscribe()
                return counts, messages

            counts, messages = yield self.inThread(run)
            self.assertEqual(counts, [1] * 22)
            self.assertEqual(
                messages,
                [("message", b"news", b"n%d" % i) for i in range(20)]
                + [("pmessage", b"user:7", b"hello"), ("message", b"weather", b"rain")],
            )

    @inlineCallbacks
    def test_subscribedClientRules(self):
        got = yield self.inThread(
            rawExchange, self.path,
            b"SUBSCRIBE a\r\nPING\r\nGET k\r\nUNSUBSCRIBE\r\nGET k\r\nQUIT\r\n",
        )
        self.assertEqual(
            got,
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
            b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
            b"PING / QUIT / RESET are allowed in this context\r\n"
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n$-1\r\n+OK\r\n",
        )

    @inlineCallbacks
    def test_txredisapiSubscriber(self):
        """
        txredisapi's SubscriberProtocol, a Twisted subscriber, over rmux.
        """
        import txredisapi
        from twisted.internet.defer import Deferred
        from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

        received = Deferred()

        class Subscriber(txredisapi.SubscriberProtocol):
            def messageReceived(self, pattern, channel, message):
                if not received.called:
                    received.callback((channel, message))

        subscriber = yield connectProtocol(UNIXClientEndpoint(reactor, self.path), Subscriber())
        self.addCleanup(subscriber.transport.loseConnection)
        yield subscriber.subscribe("tx-channel")
        yield deferLater(reactor, 0.1, lambda: None)
        count = yield self.inThread(self.publisher().publish, "tx-channel", "payload")
        self.assertEqual(count, 1)
        self.assertEqual((yield received), ("tx-channel", "payload"))

    @inlineCallbacks
    def test_oneBackendSubscriptionShared(self):
        first, second = self.client().pubsub(), self.client().pubsub()
        self.addCleanup(first.close)
        self.addCleanup(second.close)

        def run():
            first.subscribe("shared")
            second.subscribe("shared")
            first.get_message(timeout=1)
            second.get_message(timeout=1)
            return [dict(self.direct(i).pubsub_numsub("shared"))[b"shared"] for i in range(2)]

        counts = yield self.inThread(run)
        self.assertEqual(sorted(counts), [0, 1])


class AuthTests(StatefulTestCase):
    flags = {"requirepass": "s3cret"}

    @inlineCallbacks
    def test_requirepass(self):
        """
        Before AUTH only AUTH, HELLO with AUTH and QUIT work; a wrong
        password gets Redis's WRONGPASS; then the client is in.
        """
        got = yield self.inThread(
            rawExchange, self.path,
            b"GET k\r\nHELLO 3\r\nAUTH wrong\r\nAUTH s3cret\r\nSET k v\r\nGET k\r\nQUIT\r\n",
        )
        self.assertEqual(
            got,
            b"-NOAUTH Authentication required.\r\n"
            b"-NOAUTH HELLO must be called with the client already authenticated, "
            b"otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
            b"authenticate the client and select the RESP protocol version at the "
            b"same time\r\n"
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
            b"+OK\r\n+OK\r\n$1\r\nv\r\n+OK\r\n",
        )

    @inlineCallbacks
    def test_smallRequestsBeforeAuth(self):
        """
        Before AUTH a command may have 10 arguments at most, as in Redis.
        """
        big = b"*11\r\n" + b"$1\r\na\r\n" * 11
        got = yield self.inThread(rawExchange, self.path, b"PING\r\n" + big)
        self.assertEqual(
            got,
            b"-NOAUTH Authentication required.\r\n"
            b"-ERR Protocol error: unauthenticated multibulk length\r\n",
        )

        def authThenBig():
            import socket

            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(self.path)
                s.sendall(b"AUTH s3cret\r\n")
                first = s.recv(100)
                s.sendall(big + b"QUIT\r\n")
                rest = b""
                while True:
                    chunk = s.recv(1000)
                    if not chunk:
                        return first + rest
                    rest += chunk

        got = yield self.inThread(authThenBig)
        self.assertTrue(got.startswith(b"+OK\r\n-ERR unknown command 'a'"), got)
        # In one packet too: the command after AUTH is parsed as Redis
        # would, once AUTH has run.
        got = yield self.inThread(rawExchange, self.path, b"AUTH s3cret\r\n" + big + b"QUIT\r\n")
        self.assertTrue(got.startswith(b"+OK\r\n-ERR unknown command 'a'"), got)

    @inlineCallbacks
    def test_redisPyWithPassword(self):
        for protocol in (2, 3):
            client = self.client(password="s3cret", protocol=protocol)
            self.assertTrue((yield self.inThread(client.set, "k", protocol)))
        bad = self.client(password="nope", retry=None)
        try:
            yield self.inThread(bad.ping)
        except redis.AuthenticationError:
            pass
        else:
            self.fail("a wrong password was accepted")

    @inlineCallbacks
    def test_repeatedFailuresAreSlowed(self):
        """
        Guesses pipelined on one connection are answered ever more slowly.
        """
        started = time.monotonic()
        got = yield self.inThread(
            rawExchange, self.path, b"AUTH a\r\nAUTH b\r\nAUTH c\r\nAUTH d\r\nQUIT\r\n"
        )
        elapsed = time.monotonic() - started
        self.assertEqual(got.count(b"-WRONGPASS"), 4)
        self.assertGreaterEqual(elapsed, 0.05 + 0.1 + 0.2)


class UsersTests(StatefulTestCase):
    def setUp(self):
        from rmux.config import fromJSON

        self.redis = startServers(self, 1, args=["--requirepass", "backend-pw"])
        server = self.redis[0]
        self.clients = ThreadedClients(self)
        self.path = socketPath(self)
        config = fromJSON(
            """[{"socket": "%s",
                 "unixConnections": [{"address": "%s", "password": "backend-pw"}],
                 "users": [{"name": "app", "password": "app-pw"}]}]"""
            % (self.path, server.path)
        )
        self.service = startListener(self, config.listeners[0])
        return deferLater(reactor, 0.1, lambda: None)

    def direct(self, index=0):
        client = redis.Redis(unix_socket_path=self.redis[index].path, password="backend-pw")
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_usersAndBackendPassword(self):
        """
        A client logs in as an ACL-style user of rmux; rmux logs in to a
        backend that has requirepass with its own credentials, for the
        pool, the health checks, dedicated connections and subscriptions.
        """
        client = self.client(username="app", password="app-pw")
        self.assertTrue((yield self.inThread(client.set, "k", "v")))
        self.assertEqual((yield self.inThread(self.direct().get, "k")), b"v")
        pipe = client.pipeline(transaction=True)
        pipe.incr("n").incr("n")
        self.assertEqual((yield self.inThread(pipe.execute)), [1, 2])
        self.assertEqual(
            self.service.health.states()[self.service.pools[0]], "up"
        )
        subscriber = client.pubsub()
        self.addCleanup(subscriber.close)

        def subscribe():
            subscriber.subscribe("c")
            return subscriber.get_message(timeout=2)

        message = yield self.inThread(subscribe)
        self.assertEqual(message["type"], "subscribe")
        info = yield self.inThread(client.info)
        self.assertNotIn("backend-pw", repr(info))
        self.assertNotIn("app-pw", repr(info))
        got = yield self.inThread(
            rawExchange, self.path, b"HELLO 3 AUTH app nope\r\nAUTH default backend-pw\r\nQUIT\r\n"
        )
        self.assertEqual(
            got,
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n" * 2
            + b"+OK\r\n",
        )


class ShutdownTests(StatefulTestCase):
    @inlineCallbacks
    def test_stopDrainsInFlightReplies(self):
        """
        Stopping rmux (SIGTERM under twistd) stops accepting, lets a client
        collect the reply it is owed, then closes it.
        """
        import socket

        def run():
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(self.path)
                s.sendall(b"BLPOP empty 0.5\r\n")
                time.sleep(0.2)
                reactor.callFromThread(self.service.stopService)
                got = b""
                while True:
                    chunk = s.recv(100)
                    if not chunk:
                        return got
                    got += chunk

        got = yield self.inThread(run)
        self.assertEqual(got, b"*-1\r\n")
        self.assertFalse(os.path.exists(self.path))

    @inlineCallbacks
    def test_liveSocketNotStolen(self):
        """
        A second rmux on a socket a live one holds refuses to start.
        """
        from twisted.internet.error import CannotListenError

        from rmux.startup import StartFailure

        values = {"socket": self.path, "unixConnections": self.redis[0].path}
        second = ListenerService(fromFlags(values).listeners[0], reactor)
        error = self.assertRaises(StartFailure, second.startService)
        self.assertIn("held by another running rmux", str(error))
        self.assertIn("Cannot acquire lock", str(error.__cause__))
        self.assertIsInstance(error.__cause__, CannotListenError)
        self.assertIs((yield self.inThread(self.client().ping)), True)
