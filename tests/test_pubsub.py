"""
Tests for L{rmux.pubsub}: first the hub against fake backends driven by
hand and a L{Clock} (sharing, ordering, failures, reconnecting, backoff),
then against real redis-servers, comparing what a client gets through the
hub with what the server sends its own subscribers, byte for byte.
"""

from collections import deque

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux.config import BackendAddress
from rmux.pool import BackendPool
from rmux.router import PlacementError
from rmux.pubsub import SubscriptionHub, confirmation
from rmux.resp import ReplyFramer, RequestParser, encodeCommand
from tests.redisserver import startRedis


# ---------------------------------------------------------------------------
# A client, as the hub sees it


class FakeSlot:
    def __init__(self, client, data=None):
        self.client = client
        self.data = data

    def fill(self, data):
        assert self.data is None, "slot filled twice"
        self.data = data
        self.client.flush()


class FakeClient:
    """
    The part of the proxy's C{ClientProtocol} the hub uses: an ordered
    reply queue.  What it would write is in L{output}, cut into replies in
    L{replies}.
    """

    def __init__(self, protocolVersion=2):
        self.protocolVersion = protocolVersion
        self.queue = deque()
        self.output = bytearray()
        self.replies = []
        self.framer = ReplyFramer()
        self.waits = []

    def newSlot(self):
        slot = FakeSlot(self)
        self.queue.append(slot)
        return slot

    def reply(self, data):
        if self.queue:
            self.queue.append(FakeSlot(self, data))
        else:
            self.write(data)

    def flush(self):
        while self.queue and self.queue[0].data is not None:
            self.write(self.queue.popleft().data)

    def write(self, data):
        self.output += data
        self.replies += self.framer.feed(data)
        for wait in self.waits[:]:
            count, d = wait
            if len(self.replies) >= count:
                self.waits.remove(wait)
                d.callback(self.replies)

    def take(self):
        """
        @return: what was written since the last call.
        """
        data = bytes(self.output)
        del self.output[:]
        return data

    def waitForReplies(self, count):
        """
        @return: a L{Deferred} that fires once C{count} replies in all have
            been written.
        """
        d = Deferred()
        self.waits.append((count, d))
        self.write(b"")
        return d


# ---------------------------------------------------------------------------
# Fake backends for the unit tests


class FakePool:
    def __init__(self, address):
        self.address = address

    def __repr__(self):
        return "<FakePool %s>" % (self.address,)


class FakeBackend:
    """
    The server end of one subscriber connection, driven by hand.
    """

    def __init__(self, protocol, transport):
        self.protocol = protocol
        self.transport = transport
        self.parser = RequestParser()

    def take(self):
        """
        @return: the commands written since the last call, as tuples.
        """
        data = self.transport.value()
        self.transport.clear()
        return [tuple(command) for command in self.parser.feed(data)]

    def send(self, *replies):
        self.protocol.dataReceived(b"".join(replies))

    def confirm(self, commands):
        """
        Confirm C{commands} as Redis would (the count is not used).
        """
        self.send(*[confirmation(verb.lower(), name, 1)
                    for verb, name in commands])

    def drop(self):
        self.transport.loseConnection()


class Attempt:
    def __init__(self, pool, protocol):
        self.pool = pool
        self.protocol = protocol
        self.deferred = Deferred()

    def accept(self):
        transport = StringTransportWithDisconnection()
        transport.protocol = self.protocol
        self.protocol.makeConnection(transport)
        self.deferred.callback(self.protocol)
        return FakeBackend(self.protocol, transport)

    def refuse(self):
        self.deferred.errback(Failure(ConnectionRefusedError()))


class Connector:
    """
    An C{openConnection} whose attempts the test accepts or refuses.
    """

    def __init__(self):
        self.attempts = []

    def __call__(self, pool, protocol):
        attempt = Attempt(pool, protocol)
        self.attempts.append(attempt)
        return attempt.deferred

    def accept(self):
        [attempt] = self.attempts
        del self.attempts[:]
        return attempt.accept()

    def refuse(self):
        [attempt] = self.attempts
        del self.attempts[:]
        attempt.refuse()


def message(channel, data):
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel), channel, len(data), data)


def pmessage(pattern, channel, data):
    return b"*4\r\n$8\r\npmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(pattern), pattern, len(channel), channel, len(data), data)


def smessage(channel, data):
    return b"*3\r\n$8\r\nsmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel), channel, len(data), data)


def push(reply):
    return b">" + reply[1:]


class HubTestsMixin:
    """
    A hub over fake servers C{a} and C{b}: channels starting with C{b} are
    placed on C{b}, C{bad} cannot be placed, everything else is on C{a}.
    """

    def setUp(self):
        self.clock = Clock()
        self.pools = [FakePool("redis-a:6379"), FakePool("redis-b:6379")]
        self.connectors = {pool: Connector() for pool in self.pools}
        self.hub = SubscriptionHub(
            self.clock, self.place, lambda: list(self.pools),
            lambda pool, protocol: self.connectors[pool](pool, protocol))
        self.hub.retryJitter = 0

    def place(self, channel):
        if channel == b"bad":
            raise PlacementError.because("rmux: backend redis-b:6379 is down")
        return self.pools[1] if channel.startswith(b"b") else self.pools[0]

    def connector(self, index=0):
        return self.connectors[self.pools[index]]

    def do(self, client, *args):
        self.hub.command(client, args[0].decode("ascii").lower(), list(args))

    def subscribed(self, client, *channels, **kw):
        """
        Subscribe C{client} to channels on C{a}, connecting and confirming.
        """
        self.do(client, b"SUBSCRIBE", *channels)
        backend = self.connector().accept()
        backend.confirm(backend.take())
        return backend

    def assertNoTimers(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConfirmationTests(HubTestsMixin, SynchronousTestCase):
    def test_confirmationWaitsForBackend(self):
        """
        A client's confirmation is only sent once the backend has
        confirmed: until then its place in the reply queue is held.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"news")
        self.assertEqual(client.take(), b"")
        self.assertEqual(len(client.queue), 1)
        backend = self.connector().accept()
        self.assertEqual(backend.take(), [(b"subscribe", b"news")])
        self.assertEqual(client.take(), b"")
        backend.confirm([(b"subscribe", b"news")])
        self.assertEqual(
            client.take(), b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")
        self.assertNoTimers()

    def test_waitsForPlacement(self):
        """
        While a cluster's first map is being read (C{whenPlaced} gives a
        L{Deferred}), a SUBSCRIBE waits for it, in its place, then goes
        where the map says; after the wait it does not wait again.
        """
        read = Deferred()
        self.hub.whenPlaced = lambda: read
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"news")
        self.assertEqual(self.connector().attempts, [])
        self.assertEqual(len(client.queue), 1)
        self.hub.whenPlaced = lambda: Deferred()
        read.callback(None)
        backend = self.connector().accept()
        backend.confirm(backend.take())
        self.assertEqual(
            client.take(), b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")

    def test_resp3ConfirmationIsPush(self):
        client = FakeClient(3)
        self.subscribed(client, b"news")
        self.assertEqual(
            client.take(), b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")

    def test_wholeCommandAnsweredTogether(self):
        """
        The confirmations of one command leave in order, counted one by
        one; a channel subscribed twice keeps its count.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x", b"y", b"x")
        backend = self.connector().accept()
        commands = backend.take()
        self.assertEqual(commands, [(b"subscribe", b"x"), (b"subscribe", b"y")])
        backend.confirm(commands[:1])
        self.assertEqual(client.take(), b"")
        backend.confirm(commands[1:])
        self.assertEqual(client.take(), b"".join([
            confirmation(b"subscribe", b"x", 1),
            confirmation(b"subscribe", b"y", 2),
            confirmation(b"subscribe", b"x", 2),
        ]))
        self.assertEqual(self.hub.subscriptionCount(client), 2)

    def test_laterCommandsWait(self):
        """
        A client's pub/sub commands run in order: an UNSUBSCRIBE sent while
        its SUBSCRIBE waits is answered after it, with exact counts.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x")
        self.do(client, b"UNSUBSCRIBE", b"x")
        self.do(client, b"PSUBSCRIBE", b"p*")
        self.assertTrue(self.hub.isSubscribed(client))
        backend = self.connector().accept()
        self.assertEqual(backend.take(), [(b"subscribe", b"x")])
        backend.confirm([(b"subscribe", b"x")])
        # The unsubscribe ran, then the pattern went to both servers.
        self.assertEqual(backend.take(),
                         [(b"unsubscribe", b"x"), (b"psubscribe", b"p*")])
        other = self.connector(1).accept()
        other.confirm(other.take())
        # What is ready leaves; the pattern waits for both servers.
        self.assertEqual(client.take(), b"".join([
            confirmation(b"subscribe", b"x", 1),
            confirmation(b"unsubscribe", b"x", 0),
        ]))
        backend.confirm([(b"unsubscribe", b"x"), (b"psubscribe", b"p*")])
        self.assertEqual(client.take(), confirmation(b"psubscribe", b"p*", 1))

    def test_wrongNumberOfArguments(self):
        client = FakeClient()
        self.do(client, b"SSUBSCRIBE")
        self.assertEqual(
            client.take(),
            b"-ERR wrong number of arguments for 'ssubscribe' command\r\n")
        self.assertFalse(self.hub.isSubscribed(client))

    def test_unsubscribeFromNothing(self):
        """
        An argument-less unsubscribe with nothing to unsubscribe from gets
        one reply with a null name and the current count.
        """
        client, client3 = FakeClient(), FakeClient(3)
        for c in (client, client3):
            self.do(c, b"UNSUBSCRIBE")
            self.do(c, b"PUNSUBSCRIBE")
            self.do(c, b"SUNSUBSCRIBE")
        self.assertEqual(client.take(), (
            b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
            b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n"
            b"*3\r\n$12\r\nsunsubscribe\r\n$-1\r\n:0\r\n"))
        self.assertEqual(client3.take(), (
            b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"
            b">3\r\n$12\r\npunsubscribe\r\n_\r\n:0\r\n"
            b">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n"))
        self.assertEqual(self.connector().attempts, [])
        self.assertEqual(self.hub._clients, {})

    def test_shardChannelsCountedApart(self):
        client = FakeClient()
        self.subscribed(client, b"x")
        self.do(client, b"SSUBSCRIBE", b"s")
        backend = self.hub.backends[self.pools[0]]
        fake = FakeBackend(backend.protocol, backend.protocol.transport)
        fake.confirm(fake.take())
        self.do(client, b"UNSUBSCRIBE", b"nothing")
        self.assertEqual(client.take(), b"".join([
            confirmation(b"subscribe", b"x", 1),
            confirmation(b"ssubscribe", b"s", 1),
            confirmation(b"unsubscribe", b"nothing", 1),
        ]))
        self.assertEqual(self.hub.subscriptionCount(client), 1)
        self.assertEqual(self.hub.shardSubscriptionCount(client), 1)
        self.do(client, b"UNSUBSCRIBE")
        self.assertTrue(self.hub.isSubscribed(client))
        self.do(client, b"SUNSUBSCRIBE")
        self.assertFalse(self.hub.isSubscribed(client))

    def test_placementError(self):
        """
        A channel that cannot be placed gets the placement's error in its
        place; the others are confirmed, counted without it.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x", b"bad", b"y")
        backend = self.connector().accept()
        backend.confirm(backend.take())
        self.assertEqual(client.take(), b"".join([
            confirmation(b"subscribe", b"x", 1),
            b"-ERR rmux: backend redis-b:6379 is down\r\n",
            confirmation(b"subscribe", b"y", 2),
        ]))
        self.assertEqual(self.hub.subscriptionCount(client), 2)


class SharingTests(HubTestsMixin, SynchronousTestCase):
    def test_oneBackendSubscription(self):
        """
        Clients share one backend subscription; a second client is
        confirmed at once, and each message reaches each client once, as
        the backend's bytes (a push for RESP3).
        """
        first, second = FakeClient(), FakeClient(3)
        backend = self.subscribed(first, b"news")
        self.do(second, b"SUBSCRIBE", b"news", b"news")
        self.assertEqual(backend.take(), [])
        self.assertEqual(second.take(), b"".join([
            push(confirmation(b"subscribe", b"news", 1)),
            push(confirmation(b"subscribe", b"news", 1)),
        ]))
        first.take()
        backend.send(message(b"news", b"one"), message(b"other", b"x"),
                     message(b"news", b"two\r\n"))
        self.assertEqual(first.take(),
                         message(b"news", b"one") + message(b"news", b"two\r\n"))
        self.assertEqual(second.take(), push(message(b"news", b"one"))
                         + push(message(b"news", b"two\r\n")))

    def test_messageSplitAnywhere(self):
        client = FakeClient()
        backend = self.subscribed(client, b"news")
        client.take()
        data = message(b"news", b"a" * 100) + message(b"news", b"b")
        for i in range(len(data)):
            backend.send(data[i:i + 1])
        self.assertEqual(client.take(), data)

    def test_unsubscribeReleasesBackend(self):
        first, second = FakeClient(), FakeClient()
        backend = self.subscribed(first, b"news")
        self.do(second, b"SUBSCRIBE", b"news")
        self.do(first, b"UNSUBSCRIBE", b"news")
        self.assertEqual(backend.take(), [])
        self.do(second, b"UNSUBSCRIBE")
        self.assertEqual(backend.take(), [(b"unsubscribe", b"news")])
        first.take()
        second.take()
        backend.send(message(b"news", b"late"))
        self.assertEqual(first.take() + second.take(), b"")
        backend.confirm([(b"unsubscribe", b"news")])
        self.assertEqual(self.hub._clients, {})
        # The connection stays open for the next subscription.
        self.do(first, b"SUBSCRIBE", b"news")
        self.assertEqual(backend.take(), [(b"subscribe", b"news")])
        self.assertEqual(self.connector().attempts, [])

    def test_resubscribedBeforeUnsubscribeConfirmed(self):
        """
        A channel subscribed again while its unsubscribe is in flight is
        only confirmed after the new backend subscription is.
        """
        first, second = FakeClient(), FakeClient()
        backend = self.subscribed(first, b"news")
        self.do(first, b"UNSUBSCRIBE", b"news")
        self.do(second, b"SUBSCRIBE", b"news")
        commands = backend.take()
        self.assertEqual(commands,
                         [(b"unsubscribe", b"news"), (b"subscribe", b"news")])
        backend.confirm(commands[:1])
        self.assertEqual(second.take(), b"")
        backend.confirm(commands[1:])
        self.assertEqual(second.take(), confirmation(b"subscribe", b"news", 1))

    def test_clientGone(self):
        """
        A client that goes releases what it had, even while it waits; the
        others keep theirs.
        """
        first, second = FakeClient(), FakeClient()
        backend = self.subscribed(first, b"news", b"sport")
        self.do(second, b"SUBSCRIBE", b"news", b"weather")
        self.assertEqual(backend.take(), [(b"subscribe", b"weather")])
        self.hub.clientGone(second)
        self.assertEqual(backend.take(), [(b"unsubscribe", b"weather")])
        self.assertNoTimers()
        backend.confirm([(b"subscribe", b"weather"),
                         (b"unsubscribe", b"weather")])
        self.assertEqual(second.take(), b"")
        self.hub.clientGone(first)
        self.assertEqual(sorted(backend.take()),
                         [(b"unsubscribe", b"news"), (b"unsubscribe", b"sport")])
        self.assertEqual(self.hub._clients, {})
        self.assertEqual(self.hub.backends[self.pools[0]].wanted, {})


class PlacementChangeTests(HubTestsMixin, SynchronousTestCase):
    def test_moved(self):
        """
        When a channel's placement changes, its subscription moves to the
        new server; the client sees nothing but the messages.
        """
        client = FakeClient()
        a = self.subscribed(client, b"x", b"y")
        client.take()
        self.place = lambda channel: (self.pools[1] if channel == b"x"
                                      else self.pools[0])
        self.hub.placeChannel = self.place
        self.hub.placementChanged()
        self.assertEqual(a.take(), [(b"unsubscribe", b"x")])
        b = self.connector(1).accept()
        self.assertEqual(b.take(), [(b"subscribe", b"x")])
        b.confirm([(b"subscribe", b"x")])
        a.confirm([(b"unsubscribe", b"x")])
        b.send(message(b"x", b"moved"))
        self.assertEqual(client.take(), message(b"x", b"moved"))
        self.assertEqual(self.hub.subscriptionCount(client), 2)
        self.do(client, b"UNSUBSCRIBE", b"x")
        self.assertEqual(b.take(), [(b"unsubscribe", b"x")])
        self.assertNoTimers()


    def test_droppedByTheServer(self):
        """
        A shard channel the server ends on its own (a cluster node whose
        slot moved away) is not the answer to anything in flight: the hub
        asks for the placement to be read again, the client sees nothing,
        the connection stays, and the move follows the new placement.
        """
        reads = []
        self.hub.refreshPlacement = lambda: reads.append(1)
        client = FakeClient()
        self.do(client, b"SSUBSCRIBE", b"s")
        a = self.connector().accept()
        a.confirm(a.take())
        client.take()
        self.do(client, b"SSUBSCRIBE", b"t")
        self.assertEqual(a.take(), [(b"ssubscribe", b"t")])
        a.send(confirmation(b"sunsubscribe", b"s", 1))
        self.assertEqual(reads, [1])
        a.confirm([(b"ssubscribe", b"t")])
        self.assertEqual(client.take(), confirmation(b"ssubscribe", b"t", 2))
        self.assertFalse(a.transport.disconnecting)
        self.hub.placeChannel = lambda channel: (
            self.pools[1] if channel == b"s" else self.pools[0])
        self.hub.placementChanged()
        # Nothing to end on the old server: it ended it itself.
        self.assertEqual(a.take(), [])
        b = self.connector(1).accept()
        self.assertEqual(b.take(), [(b"ssubscribe", b"s")])
        b.confirm([(b"ssubscribe", b"s")])
        b.send(smessage(b"s", b"moved"))
        self.assertEqual(client.take(), smessage(b"s", b"moved"))
        self.assertEqual(self.hub.shardSubscriptionCount(client), 2)


class PatternTests(HubTestsMixin, SynchronousTestCase):
    def test_everyServer(self):
        """
        A pattern is subscribed on every server and confirmed once all
        have confirmed; its messages come from any of them.
        """
        client = FakeClient()
        self.do(client, b"PSUBSCRIBE", b"n*")
        a = self.connector(0).accept()
        b = self.connector(1).accept()
        self.assertEqual(a.take(), [(b"psubscribe", b"n*")])
        self.assertEqual(b.take(), [(b"psubscribe", b"n*")])
        a.confirm([(b"psubscribe", b"n*")])
        self.assertEqual(client.take(), b"")
        b.confirm([(b"psubscribe", b"n*")])
        self.assertEqual(client.take(), confirmation(b"psubscribe", b"n*", 1))
        a.send(pmessage(b"n*", b"na", b"1"))
        b.send(pmessage(b"n*", b"nb", b"2"))
        self.assertEqual(client.take(), pmessage(b"n*", b"na", b"1")
                         + pmessage(b"n*", b"nb", b"2"))
        self.do(client, b"PUNSUBSCRIBE")
        self.assertEqual(a.take(), [(b"punsubscribe", b"n*")])
        self.assertEqual(b.take(), [(b"punsubscribe", b"n*")])

    def test_channelAndPattern(self):
        """
        A client subscribed to a channel and to a pattern matching it gets
        both messages, as from Redis.
        """
        client = FakeClient()
        a = self.subscribed(client, b"news")
        self.do(client, b"PSUBSCRIBE", b"n*")
        a.confirm(a.take())
        b = self.connector(1).accept()
        b.confirm(b.take())
        client.take()
        a.send(message(b"news", b"x"), pmessage(b"n*", b"news", b"x"))
        self.assertEqual(client.take(), message(b"news", b"x")
                         + pmessage(b"n*", b"news", b"x"))

    def test_partlyDown(self):
        """
        A pattern is confirmed if one server has it; the one that is down
        subscribes it when it comes back.
        """
        client = FakeClient()
        self.do(client, b"PSUBSCRIBE", b"n*")
        self.connector(1).refuse()
        a = self.connector(0).accept()
        a.confirm(a.take())
        self.assertEqual(client.take(), confirmation(b"psubscribe", b"n*", 1))
        self.clock.advance(self.hub.retryDelay)
        b = self.connector(1).accept()
        self.assertEqual(b.take(), [(b"psubscribe", b"n*")])
        b.confirm([(b"psubscribe", b"n*")])
        b.send(pmessage(b"n*", b"nb", b"2"))
        self.assertEqual(client.take(), pmessage(b"n*", b"nb", b"2"))

    def test_allDown(self):
        client = FakeClient()
        self.do(client, b"PSUBSCRIBE", b"n*")
        self.connector(0).refuse()
        self.connector(1).refuse()
        reply = client.take()
        self.assertTrue(reply.startswith(
            b"-ERR rmux: cannot subscribe on backend redis-a:6379: "), reply)
        self.assertFalse(self.hub.isSubscribed(client))
        # Nothing is wanted any more: no retries.
        self.clock.advance(10)
        self.assertEqual(self.connector(0).attempts, [])


class FailureTests(HubTestsMixin, SynchronousTestCase):
    def test_connectionRefused(self):
        """
        A subscription whose server refuses the connection fails with an
        error naming the server; nothing is retried for nobody.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x", b"y")
        self.do(client, b"SUBSCRIBE", b"z")
        self.connector().refuse()
        # The queued SUBSCRIBE did not try again straight away.
        self.assertEqual(self.connector().attempts, [])
        self.assertEqual(client.take(), 3 * (
            b"-ERR rmux: cannot subscribe on backend redis-a:6379: "
            b"Connection was refused by other side.\r\n"))
        self.assertFalse(self.hub.isSubscribed(client))
        # The retry finds nothing wanted any more.
        self.clock.advance(self.hub.retryDelay)
        self.assertEqual(self.connector().attempts, [])
        self.assertNoTimers()
        # The next subscription tries again at once.
        self.do(client, b"SUBSCRIBE", b"x")
        backend = self.connector().accept()
        backend.confirm(backend.take())
        self.assertEqual(client.take(), confirmation(b"subscribe", b"x", 1))

    def test_reconnectAndBackoff(self):
        """
        A dropped connection is re-established after a delay that doubles
        with each failed attempt; meanwhile new subscriptions fail at once,
        established ones stay, and are all subscribed again on one write.
        """
        client = FakeClient(3)
        backend = self.subscribed(client, b"x", b"y")
        self.do(client, b"SSUBSCRIBE", b"s")
        self.do(client, b"PSUBSCRIBE", b"p*")
        backend.confirm(backend.take())
        other = self.connector(1).accept()
        other.confirm(other.take())
        backend.confirm(backend.take())
        self.assertEqual(client.take().count(b">3\r\n"), 4)
        self.assertNoTimers()

        backend.drop()
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()],
                         [0.1])
        delays = []
        for i in range(7):
            call, = self.clock.getDelayedCalls()
            delays.append(round(call.getTime() - self.clock.seconds(), 3))
            self.clock.advance(delays[-1])
            self.connector().refuse()
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])

        # New subscriptions fail at once while backing off; a pattern still
        # succeeds on the other server.
        self.do(client, b"SUBSCRIBE", b"z")
        self.assertEqual(client.take(), (
            b"-ERR rmux: cannot subscribe on backend redis-a:6379: "
            b"Connection was refused by other side.\r\n"))
        self.do(client, b"PSUBSCRIBE", b"q*")
        other.confirm(other.take())
        self.assertEqual(client.take(),
                         push(confirmation(b"psubscribe", b"q*", 4)))
        self.assertEqual(self.hub.subscriptionCount(client), 4)

        self.clock.advance(5.0)
        backend = self.connector().accept()
        self.assertEqual(len(backend.transport.value().split(b"*2\r\n")), 6)
        commands = backend.take()
        self.assertEqual(sorted(commands), [
            (b"psubscribe", b"p*"), (b"psubscribe", b"q*"),
            (b"ssubscribe", b"s"), (b"subscribe", b"x"), (b"subscribe", b"y"),
        ])
        backend.confirm(commands)
        backend.send(message(b"x", b"after"), smessage(b"s", b"shard"))
        self.assertEqual(client.take(), push(message(b"x", b"after"))
                         + push(smessage(b"s", b"shard")))
        self.assertNoTimers()
        # The first confirmation reset the backoff.
        backend.drop()
        self.assertEqual([round(c.getTime() - self.clock.seconds(), 3)
                          for c in self.clock.getDelayedCalls()], [0.1])

    def test_waitingSubscriptionSurvivesDrop(self):
        """
        A subscription waiting for its confirmation when the connection
        drops is made on the next connection, within the timeout.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x")
        backend = self.connector().accept()
        backend.drop()
        self.clock.advance(0.1)
        backend = self.connector().accept()
        self.assertEqual(backend.take(), [(b"subscribe", b"x")])
        self.assertEqual(client.take(), b"")
        backend.confirm([(b"subscribe", b"x")])
        self.assertEqual(client.take(), confirmation(b"subscribe", b"x", 1))

    def test_newSubscriptionWaitsForReconnect(self):
        """
        Right after a drop (before any attempt failed) a new subscription
        waits for the reconnect instead of failing.
        """
        first, second = FakeClient(), FakeClient()
        backend = self.subscribed(first, b"x")
        backend.drop()
        self.do(second, b"SUBSCRIBE", b"x")
        self.assertEqual(second.take(), b"")
        self.clock.advance(0.1)
        backend = self.connector().accept()
        backend.confirm(backend.take())
        self.assertEqual(second.take(), confirmation(b"subscribe", b"x", 1))

    def test_timeout(self):
        """
        A backend that does not confirm within C{subscribeTimeout} makes
        the subscription fail, and what nobody wants is unsubscribed.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x")
        backend = self.connector().accept()
        backend.take()
        self.clock.advance(self.hub.subscribeTimeout)
        self.assertEqual(client.take(), (
            b"-ERR rmux: backend redis-a:6379 did not confirm the "
            b"subscription within 2000 ms\r\n"))
        self.assertEqual(backend.take(), [(b"unsubscribe", b"x")])
        self.assertFalse(self.hub.isSubscribed(client))
        backend.confirm([(b"subscribe", b"x"), (b"unsubscribe", b"x")])
        self.assertEqual(client.take(), b"")

    def test_backendError(self):
        """
        An error from the backend (a password it wants, say) is what the
        client gets for that channel.
        """
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x")
        backend = self.connector().accept()
        backend.send(b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(client.take(), b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(self.hub.subscriptionCount(client), 0)

    def test_unexpectedReplyDropsConnection(self):
        """
        A confirmation nobody asked for means the stream cannot be trusted:
        the connection is dropped and made again.
        """
        client = FakeClient()
        backend = self.subscribed(client, b"x")
        backend.confirm([(b"subscribe", b"y")])
        self.assertFalse(backend.transport.connected)
        self.clock.advance(0.1)
        backend = self.connector().accept()
        self.assertEqual(backend.take(), [(b"subscribe", b"x")])

    def test_stop(self):
        client = FakeClient()
        backend = self.subscribed(client, b"x")
        self.do(client, b"SUBSCRIBE", b"y")
        d = self.hub.stop()
        self.assertEqual(self.successResultOf(d), [(True, None)])
        self.assertEqual(client.take(), b"".join([
            confirmation(b"subscribe", b"x", 1),
            b"-ERR rmux: shutting down\r\n",
        ]))
        self.assertFalse(backend.transport.connected)
        self.assertNoTimers()


# ---------------------------------------------------------------------------
# Against real redis-servers


class RawClient(Protocol):
    """
    A client of the real server, to compare with: it keeps what it gets.
    """

    def __init__(self):
        self.client = FakeClient()
        self.closed = Deferred()

    def dataReceived(self, data):
        self.client.write(data)

    def connectionLost(self, reason):
        self.closed.callback(None)

    def send(self, *commands):
        self.transport.write(b"".join(encodeCommand(list(c)) for c in commands))


def redisCommand(server, *args):
    """
    Run one command on C{server} directly and return its RESP2 reply.
    """
    return server.command(encodeCommand(list(args)))


class RealServerTests(TestCase):
    timeout = 20

    def startServers(self, count=1):
        self.servers = [startRedis(self) for _ in range(count)]
        self.pools = [
            BackendPool(reactor, BackendAddress("unix", path=server.path))
            for server in self.servers
        ]
        self.hub = SubscriptionHub(reactor, self.place, lambda: self.pools)
        self.hub.retryDelay = 0.02
        self.addCleanup(self.hub.stop)

    def place(self, channel):
        """
        Channels starting with C{two} live on the second server, C{bad}
        nowhere, the others on the first.
        """
        if channel == b"bad":
            raise PlacementError.because("rmux: backend %s is down"
                                         % (self.pools[-1].address,))
        return self.pools[-1] if channel.startswith(b"two") else self.pools[0]

    def do(self, client, *args):
        self.hub.command(client, args[0].decode("ascii").lower(), list(args))

    @inlineCallbacks
    def rawClient(self, server, protocolVersion=2):
        raw = RawClient()
        yield connectProtocol(UNIXClientEndpoint(reactor, server.path), raw)
        self.addCleanup(lambda: raw.closed)
        self.addCleanup(raw.transport.loseConnection)
        if protocolVersion == 3:
            raw.send([b"HELLO", b"3"])
            yield raw.client.waitForReplies(1)
            raw.client.replies = []
            raw.client.take()
        return raw

    @inlineCallbacks
    def eventually(self, check, timeout=5.0):
        """
        Wait until C{check()} is true, polling the servers.
        """
        deadline = reactor.seconds() + timeout
        while not check():
            if reactor.seconds() > deadline:
                self.fail("timed out waiting for %r" % (check,))
            yield deferLater(reactor, 0.005, lambda: None)

    def numsub(self, server, channel, which=b"NUMSUB"):
        reply = redisCommand(server, b"PUBSUB", which, channel)
        return int(reply.rsplit(b":", 1)[1])

    def numpat(self, server):
        return int(redisCommand(server, b"PUBSUB", b"NUMPAT")[1:])


class WireTests(RealServerTests):
    """
    Through the hub a client gets the bytes the server itself sends its
    subscribers: confirmations, counts, nulls, messages.
    """

    phase1 = [
        (b"SUBSCRIBE", b"a", b"b", b"a"),
        (b"PSUBSCRIBE", b"p*"),
        (b"SSUBSCRIBE", b"s1", b"s2"),
        (b"SUBSCRIBE", b"c"),
        (b"UNSUBSCRIBE", b"zz"),
        (b"SUNSUBSCRIBE", b"zz"),
        (b"PUNSUBSCRIBE", b"zz"),
    ]
    publish = [
        (b"PUBLISH", b"a", b"hello"),
        (b"PUBLISH", b"pq", b"hi"),
        (b"SPUBLISH", b"s1", b"shard"),
        (b"PUBLISH", b"c", b"bin\r\n\x00\xff" * 100),
    ]
    # Unsubscribing from all of several is done by name here: Redis lists
    # them in its hash table's order, rmux in subscription order.
    phase2 = [
        (b"UNSUBSCRIBE", b"a"),
        (b"PUNSUBSCRIBE",),
        (b"SUNSUBSCRIBE", b"s1"),
        (b"SUNSUBSCRIBE",),
        (b"UNSUBSCRIBE", b"c", b"b"),
        (b"UNSUBSCRIBE",),
        (b"PUNSUBSCRIBE",),
        (b"SUNSUBSCRIBE",),
        (b"PSUBSCRIBE", b"q"),
        (b"UNSUBSCRIBE",),
        (b"SSUBSCRIBE", b"t"),
        (b"UNSUBSCRIBE",),
        (b"PUNSUBSCRIBE",),
        (b"SUNSUBSCRIBE",),
    ]

    @inlineCallbacks
    def compare(self, protocolVersion):
        self.startServers()
        server = self.servers[0]
        raw = yield self.rawClient(server, protocolVersion)
        client = FakeClient(protocolVersion)

        raw.send(*self.phase1)
        for command in self.phase1:
            self.do(client, *command)
        yield raw.client.waitForReplies(10)
        yield client.waitForReplies(10)
        self.assertEqual(client.take(), raw.client.take())

        publisher = yield self.rawClient(server)
        publisher.send(*self.publish)
        yield raw.client.waitForReplies(14)
        yield client.waitForReplies(14)
        expected = raw.client.take()
        self.assertEqual(client.take(), expected)

        raw.send(*self.phase2)
        for command in self.phase2:
            self.do(client, *command)
        yield raw.client.waitForReplies(29)
        yield client.waitForReplies(29)
        self.assertEqual(client.take(), raw.client.take())
        self.assertFalse(self.hub.isSubscribed(client))
        return expected

    @inlineCallbacks
    def test_resp2(self):
        messages = yield self.compare(2)
        self.assertTrue(messages.startswith(
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n"
            b"*4\r\n$8\r\npmessage\r\n"), messages)

    @inlineCallbacks
    def test_resp3(self):
        messages = yield self.compare(3)
        self.assertTrue(messages.startswith(
            b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n"
            b">4\r\n$8\r\npmessage\r\n"), messages)

    @inlineCallbacks
    def test_placementError(self):
        self.startServers()
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"ok", b"bad", b"ok2")
        yield client.waitForReplies(3)
        self.assertEqual(client.take(), b"".join([
            confirmation(b"subscribe", b"ok", 1),
            b"-ERR rmux: backend %s is down\r\n" % (
                self.servers[0].path.encode(),),
            confirmation(b"subscribe", b"ok2", 2),
        ]))


class ServerSharingTests(RealServerTests):
    @inlineCallbacks
    def test_oneBackendSubscription(self):
        """
        Two clients, one subscription on the server; released when the
        last one goes.
        """
        self.startServers()
        server = self.servers[0]
        first, second = FakeClient(), FakeClient(3)
        for client in (first, second):
            self.do(client, b"SUBSCRIBE", b"news")
            self.do(client, b"PSUBSCRIBE", b"n*")
            self.do(client, b"SSUBSCRIBE", b"shard")
            yield client.waitForReplies(3)
        self.assertEqual(self.numsub(server, b"news"), 1)
        self.assertEqual(self.numpat(server), 1)
        self.assertEqual(self.numsub(server, b"shard", b"SHARDNUMSUB"), 1)
        # All on one subscriber connection.
        clients = redisCommand(server, b"CLIENT", b"LIST", b"TYPE", b"pubsub")
        self.assertEqual(clients.count(b"cmd="), 1, clients)

        self.hub.clientGone(first)
        self.do(second, b"UNSUBSCRIBE", b"news")
        self.assertEqual(self.hub.subscriptionCount(second), 1)
        yield self.eventually(lambda: self.numsub(server, b"news") == 0)
        self.assertEqual(self.numpat(server), 1)
        self.hub.clientGone(second)
        yield self.eventually(lambda: self.numpat(server) == 0)
        yield self.eventually(
            lambda: self.numsub(server, b"shard", b"SHARDNUMSUB") == 0)
        # The subscriber connection stays open: it and the one asking.
        clients = redisCommand(server, b"CLIENT", b"LIST")
        self.assertEqual(clients.count(b"cmd="), 2, clients)

    @inlineCallbacks
    def test_fanOutInOrder(self):
        """
        A thousand messages reach two clients in order, byte for byte.
        """
        self.startServers()
        clients = [FakeClient(), FakeClient(3)]
        for client in clients:
            self.do(client, b"SUBSCRIBE", b"feed")
            yield client.waitForReplies(1)
            client.take()
        import redis
        publisher = redis.Redis(unix_socket_path=self.servers[0].path)
        self.addCleanup(publisher.close)

        def publishAll():
            pipe = publisher.pipeline(transaction=False)
            for i in range(1000):
                pipe.publish("feed", b"message %d" % (i,))
            return pipe.execute()

        receivers = yield deferToThread(publishAll)
        self.assertEqual(receivers, [1] * 1000)
        expected = b"".join(message(b"feed", b"message %d" % (i,))
                            for i in range(1000))
        for client in clients:
            yield client.waitForReplies(1001)
        self.assertEqual(clients[0].take(), expected)
        self.assertEqual(clients[1].take(),
                         expected.replace(b"*3\r\n$7\r\nmessage", b">3\r\n$7\r\nmessage"))


class PlacementTests(RealServerTests):
    @inlineCallbacks
    def test_patternsOnEveryServer(self):
        """
        A pattern is subscribed on both servers, channels only where they
        are placed; messages from both reach the client.
        """
        self.startServers(2)
        one, two = self.servers
        client = FakeClient()
        self.do(client, b"PSUBSCRIBE", b"ev.*")
        self.do(client, b"SUBSCRIBE", b"ev.one", b"two.ev")
        yield client.waitForReplies(3)
        self.assertEqual(client.take(), b"".join([
            confirmation(b"psubscribe", b"ev.*", 1),
            confirmation(b"subscribe", b"ev.one", 2),
            confirmation(b"subscribe", b"two.ev", 3),
        ]))
        self.assertEqual([self.numpat(one), self.numpat(two)], [1, 1])
        self.assertEqual([self.numsub(one, b"ev.one"),
                          self.numsub(two, b"ev.one")], [1, 0])
        self.assertEqual([self.numsub(one, b"two.ev"),
                          self.numsub(two, b"two.ev")], [0, 1])
        redisCommand(one, b"PUBLISH", b"ev.one", b"1")
        yield client.waitForReplies(5)
        redisCommand(two, b"PUBLISH", b"ev.two", b"2")
        yield client.waitForReplies(6)
        self.assertEqual(client.take(), b"".join([
            message(b"ev.one", b"1"),
            pmessage(b"ev.*", b"ev.one", b"1"),
            pmessage(b"ev.*", b"ev.two", b"2"),
        ]))

    @inlineCallbacks
    def test_shardChannels(self):
        self.startServers(2)
        one, two = self.servers
        client = FakeClient(3)
        self.do(client, b"SSUBSCRIBE", b"two.s", b"s")
        yield client.waitForReplies(2)
        client.take()
        self.assertEqual(self.numsub(two, b"two.s", b"SHARDNUMSUB"), 1)
        self.assertEqual(self.numsub(one, b"s", b"SHARDNUMSUB"), 1)
        self.assertEqual(redisCommand(two, b"SPUBLISH", b"two.s", b"x"),
                         b":1\r\n")
        yield client.waitForReplies(3)
        self.assertEqual(client.take(), push(smessage(b"two.s", b"x")))


class RestartTests(RealServerTests):
    @inlineCallbacks
    def test_resubscribedAfterRestart(self):
        """
        When a server restarts, what clients are subscribed to is
        subscribed again and messages flow; while it is down, a new
        subscription fails naming it.
        """
        self.startServers()
        server = self.servers[0]
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x")
        self.do(client, b"PSUBSCRIBE", b"x*")
        yield client.waitForReplies(2)
        client.take()
        backend = self.hub.backends[self.pools[0]]

        server.stop()
        yield self.eventually(lambda: backend.down is not None)
        other = FakeClient()
        self.do(other, b"SUBSCRIBE", b"y")
        reply = other.take()
        self.assertTrue(reply.startswith(
            b"-ERR rmux: cannot subscribe on backend %s: "
            % (server.path.encode(),)), reply)

        server.start()
        yield self.eventually(lambda: self.numsub(server, b"x") == 1
                              and self.numpat(server) == 1)
        self.assertEqual(self.hub.subscriptionCount(client), 2)
        redisCommand(server, b"PUBLISH", b"x", b"back")
        yield client.waitForReplies(4)
        self.assertEqual(client.take(), message(b"x", b"back")
                         + pmessage(b"x*", b"x", b"back"))

    @inlineCallbacks
    def test_serverDown(self):
        self.startServers()
        server = self.servers[0]
        server.stop()
        client = FakeClient()
        self.do(client, b"SUBSCRIBE", b"x")
        yield client.waitForReplies(1)
        reply = client.take()
        self.assertTrue(reply.startswith(
            b"-ERR rmux: cannot subscribe on backend %s: "
            % (server.path.encode(),)), reply)
        self.assertFalse(self.hub.isSubscribed(client))
