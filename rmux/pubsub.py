# -*- test-case-name: tests.test_pubsub -*-
"""
Pub/sub through rmux: backend subscriptions shared by all clients.

A client that subscribes through rmux does not get a Redis connection of its
own.  Each listener has one L{SubscriptionHub}, which keeps one subscriber
connection per backend server (a L{BackendSubscriber}) and one backend
subscription per channel, pattern or shard channel, however many clients
want it; every message the backend sends is fanned out to the clients that
subscribed.

Where a subscription lives:

  - a channel (C{SUBSCRIBE}) and a shard channel (C{SSUBSCRIBE}) on the
    server the channel is placed on, the placement rmux uses for keys and
    for routing C{PUBLISH}/C{SPUBLISH}, so a subscriber gets what is
    published through any rmux host;
  - a pattern (C{PSUBSCRIBE}) on every server, since a matching channel may
    be placed on any of them.

What a client sees is what Redis 7 would send it, byte for byte:

  - one confirmation per channel, C{*3 subscribe <channel> :<count>} (a
    C{>3} push for RESP3 clients), where the count is the client's own:
    channels plus patterns, shard channels counted apart as Redis 7 does.
    A confirmation is only sent once the backend subscription is active,
    so whatever is published after a client saw its confirmation reaches
    it.
  - messages as the backend sent them: subscriber connections speak RESP2,
    and a RESP3 client gets the same bytes with the leading C{*} turned
    into C{>}, which is exactly what Redis sends a RESP3 subscriber.

A client's pub/sub commands run one after the other, as on a real server: a
command that has to wait for a backend holds back that client's later
pub/sub commands (not other clients'), so the counts in its replies are
exact even when a subscription fails.

When a server is unreachable:

  - a subscriber connection that drops is re-established after a short,
    growing delay (L{SubscriptionHub.retryDelay} doubling up to
    L{SubscriptionHub.maxRetryDelay}, with jitter), and every channel and
    pattern still wanted is subscribed again; clients stay subscribed and
    get what is published after that.  Messages published while the
    connection was down are lost, as for any Redis subscriber that
    reconnects.
  - a new subscription waits while a connection to its server is being
    made (bounded by the connect timeout, and by
    L{SubscriptionHub.subscribeTimeout} for the backend's confirmation) and
    fails at once, with C{-ERR rmux: cannot subscribe on backend <address>:
    <reason>}, while the hub is backing off after a failed connection
    attempt.  A pattern only fails if it fails on every server; on the
    others it stays wanted and is subscribed when they come back.

A backend subscription nobody wants any more is unsubscribed on the backend
at once.  A subscriber connection with nothing left stays open: it costs one
idle connection per server and spares a reconnect at the next subscription.
"""

import random
from collections import deque

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from rmux.resp import ProtocolError, ReplyFramer, encodeCommand, errorReply
from rmux.router import PlacementError
from rmux.transport import connectQuietly


__all__ = [
    "CHANNELS", "PATTERNS", "SHARD_CHANNELS",
    "SubscriptionHub", "BackendSubscriber", "SubscriberProtocol",
    "confirmation", "connectToBackend",
]



class _Kind(object):
    """
    One of the three kinds of subscription, with the words Redis uses for it.

    @ivar subscribe: the command and confirmation verb, e.g. C{b"psubscribe"}.
    @ivar unsubscribe: likewise, e.g. C{b"punsubscribe"}.
    @ivar message: the first element of its messages, e.g. C{b"pmessage"}.
    @ivar shard: whether it is counted apart from the others (Redis 7 counts
        shard channels on their own).
    @ivar everywhere: whether it is subscribed on every server rather than
        on the one its name is placed on.
    """

    def __init__(self, subscribe, unsubscribe, message, shard=False,
                 everywhere=False):
        self.subscribe = subscribe
        self.unsubscribe = unsubscribe
        self.message = message
        self.shard = shard
        self.everywhere = everywhere


    def __repr__(self):
        return "<%s>" % (self.subscribe.decode("ascii"),)



CHANNELS = _Kind(b"subscribe", b"unsubscribe", b"message")
PATTERNS = _Kind(b"psubscribe", b"punsubscribe", b"pmessage",
                 everywhere=True)
SHARD_CHANNELS = _Kind(b"ssubscribe", b"sunsubscribe", b"smessage",
                       shard=True)

# The client commands: lowercase name -> (kind, whether it subscribes).
_COMMANDS = {
    "subscribe": (CHANNELS, True),
    "unsubscribe": (CHANNELS, False),
    "psubscribe": (PATTERNS, True),
    "punsubscribe": (PATTERNS, False),
    "ssubscribe": (SHARD_CHANNELS, True),
    "sunsubscribe": (SHARD_CHANNELS, False),
}

# What a subscriber connection receives: first element -> (kind, whether it
# is a message; else whether it confirms a subscribe).
_RECEIVED = {}
for _kind in (CHANNELS, PATTERNS, SHARD_CHANNELS):
    _RECEIVED[_kind.message] = (_kind, True, None)
    _RECEIVED[_kind.subscribe] = (_kind, False, True)
    _RECEIVED[_kind.unsubscribe] = (_kind, False, False)
del _kind



def confirmation(verb, name, count, protocolVersion=2):
    """
    Encode a subscription confirmation as Redis 7 sends it.

    @param verb: C{b"subscribe"}, C{b"unsubscribe"}, C{b"psubscribe"}, ...
    @param name: the channel or pattern, or L{None} for the reply to an
        argument-less unsubscribe from nothing (a null: C{$-1}, or C{_} in
        RESP3).
    @param count: the client's subscription count after this one.
    @param protocolVersion: the client's RESP version: RESP3 clients get a
        push (C{>3}), RESP2 clients an array (C{*3}).

    @rtype: C{bytes}
    """
    if protocolVersion == 3:
        head = b">3\r\n$%d\r\n%b\r\n" % (len(verb), verb)
        if name is None:
            return head + b"_\r\n:%d\r\n" % (count,)
    else:
        head = b"*3\r\n$%d\r\n%b\r\n" % (len(verb), verb)
        if name is None:
            return head + b"$-1\r\n:%d\r\n" % (count,)
    return head + b"$%d\r\n%b\r\n:%d\r\n" % (len(name), name, count)



def connectToBackend(reactor, pool, protocol, timeout=None):
    """
    Connect C{protocol} to the server of C{pool}, directly (over TLS for a
    C{rediss://} server, as its pool connects): the default way a
    L{SubscriptionHub} opens its subscriber connections.

    @param reactor: the reactor to connect with.
    @param pool: a pool whose C{address} is an
        L{rmux.config.BackendAddress}.
    @param protocol: the protocol instance to connect.
    @param timeout: the connect timeout in seconds; by default the pool's
        C{connectTimeout}, or 30 seconds if it has none.

    @return: a L{Deferred} that fires with C{protocol} once connected.
    """
    address = pool.address
    if timeout is None:
        timeout = getattr(pool, "connectTimeout", None) or 30
    if getattr(address, "tls", False):
        return pool.tlsSettings().connect(reactor, address, protocol, timeout=timeout)
    if address.kind == "unix":
        endpoint = UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    elif isIPv6Address(address.host):
        endpoint = TCP6ClientEndpoint(reactor, address.host, address.port,
                                      timeout=timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, address.host, address.port,
                                      timeout=timeout)
    return connectQuietly(endpoint, protocol)



def connectAuthenticated(reactor, pool, protocol):
    """
    Like L{connectToBackend}, but when the pool's address carries
    credentials, send AUTH first and hand the connection over only once the
    server has accepted them, so the subscriber never sees AUTH's reply;
    and learn the connection's id on the server (L{learnServerId}).
    """
    d = connectToBackend(reactor, pool, protocol)
    address = pool.address
    password = getattr(address, "password", None)

    def authenticate(protocol):
        command = [b"AUTH"]
        if address.username is not None:
            command.append(address.username.encode("utf-8"))
        command.append(password.encode("utf-8"))
        return _exchange(protocol, command).addCallback(accepted, protocol)

    def accepted(reply, protocol):
        if reply == b"+OK\r\n":
            return protocol
        protocol.transport.abortConnection()
        raise ConnectionError("backend %s refused rmux's credentials" % (address,))

    if password is not None:
        d.addCallback(authenticate)
    return d.addCallback(learnServerId)


#: The channel of client-side caching's invalidations (tracking with
#: REDIRECT, in RESP2): every server sends on it, so it is subscribed on
#: every server, as patterns are.
INVALIDATIONS = b"__redis__:invalidate"


def learnServerId(protocol):
    """
    Ask the server the subscriber connection's id (CLIENT ID), before it
    subscribes to anything: a client tracking keys may redirect its
    invalidations to it.
    """

    def learned(reply):
        if reply[:1] == b":":
            protocol.serverId = int(reply[1:-2])
        return protocol

    return _exchange(protocol, [b"CLIENT", b"ID"]).addCallback(learned)


def _exchange(protocol, command):
    """
    Send C{command} on a connection that is not yet handed to its
    protocol's own reading, and fire with the first reply.
    """
    answered = Deferred()
    framer = ReplyFramer()

    def firstReply(data):
        replies = framer.feed(data)
        if not replies:
            return
        del protocol.dataReceived  # the class's own method again
        answered.callback(replies[0])

    protocol.dataReceived = firstReply
    protocol.transport.write(encodeCommand(command))
    return answered



def _bulkAt(reply, pos):
    """
    Read the bulk string at C{pos} in a reply.

    @return: its value and the position after it.
    @raise ValueError: if there is no bulk string there.
    """
    end = reply.index(b"\r\n", pos)
    if reply[pos] != 36:
        raise ValueError("not a bulk string")
    length = int(reply[pos + 1:end])
    start = end + 2
    if length < 0:
        raise ValueError("null")
    return reply[start:start + length], start + length + 2



class SubscriberProtocol(Protocol):
    """
    One RESP2 subscriber connection to a backend server.

    @ivar serverId: its id on the server, once known.

    It only writes C{(P|S)(UN)SUBSCRIBE} commands, one channel each, so that
    every command has exactly one answer: a confirmation naming the channel,
    or an error.  The commands in flight are kept in order, and each answer
    (anything that is not a message) is matched with the oldest of them.
    Messages are passed on whole, as the bytes the backend sent.

    @ivar subscriber: the L{BackendSubscriber} this connection serves.
    @ivar inFlight: C{(kind, name, subscribing)} of each command written and
        not yet answered, oldest first.
    @ivar closed: a L{Deferred} that fires when the connection is lost.
    """

    serverId = None

    def __init__(self, subscriber):
        self.subscriber = subscriber
        self.framer = ReplyFramer()
        self.inFlight = deque()
        self.broken = False
        self.lost = False
        self.closed = Deferred()


    def connectionMade(self):
        # A subscriber connection may sit idle for hours: let TCP notice a
        # peer that vanished without closing.
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)


    def send(self, commands):
        """
        Write commands, all at once.

        @param commands: C{(kind, name, subscribing)} for each.
        """
        payload = []
        for kind, name, subscribing in commands:
            verb = kind.subscribe if subscribing else kind.unsubscribe
            payload.append(encodeCommand([verb, name]))
            self.inFlight.append((kind, name, subscribing))
        self.transport.write(b"".join(payload))


    def dataReceived(self, data):
        try:
            replies = self.framer.feed(data)
        except ProtocolError as e:
            self.fail("sent a malformed reply (%s)" % (e,))
            return
        for reply in replies:
            if self.broken:
                return
            self.replyReceived(reply)


    def replyReceived(self, reply):
        """
        Handle one complete reply: a message, a confirmation or an error.
        """
        if reply[0] == 45:
            self._answered(None, None, reply)
            return
        try:
            if reply[0] != 42:
                raise ValueError("not an array")
            verb, pos = _bulkAt(reply, reply.index(b"\r\n") + 2)
            kind, isMessage, subscribing = _RECEIVED[verb]
            name, pos = _bulkAt(reply, pos)
        except (ValueError, IndexError, KeyError):
            self.fail("sent an unexpected reply %r" % (reply[:80],))
            return
        if isMessage:
            self.subscriber.messageReceived(kind, name, reply)
        elif (kind is SHARD_CHANNELS and not subscribing
              and (not self.inFlight or self.inFlight[0] != (kind, name, False))):
            # Nobody asked: a cluster node drops the shard channels of a
            # slot it no longer serves.
            self.subscriber.droppedByServer(kind, name)
        else:
            self._answered(kind, name, None, subscribing)


    def _answered(self, kind, name, error, subscribing=None):
        """
        Match a confirmation (or an error) with the oldest command in
        flight.
        """
        if not self.inFlight:
            self.fail("sent a reply nobody asked for: %r"
                      % ((error or name)[:80],))
            return
        expected = self.inFlight.popleft()
        if error is None and (kind, name, subscribing) != expected:
            self.fail("confirmed %s %r instead of %s %r"
                      % (kind, name, expected[0], expected[1]))
            return
        expectedKind, expectedName, _ = expected
        self.subscriber.answered(expectedKind, expectedName, error)


    def fail(self, why):
        """
        Drop a connection whose stream can no longer be trusted; the
        subscriber reconnects and subscribes again.
        """
        if self.broken:
            return
        self.broken = True
        self.subscriber.log.warn(
            "rmux: subscriber connection to backend {address} {why}; "
            "reconnecting", address=self.subscriber.address, why=why)
        if self.transport is not None:
            self.transport.abortConnection()


    def connectionLost(self, reason):
        self.lost = True
        self.subscriber.connectionLost(self, reason)
        self.closed.callback(None)



class _Waiter(object):
    """
    A subscription waiting for its backend confirmation, with its timer.
    """

    __slots__ = ("deferred", "timer")

    def __init__(self):
        self.deferred = Deferred()
        self.timer = None


    def fire(self, result):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.deferred.callback(result)



class BackendSubscriber(object):
    """
    The subscriptions rmux holds on one backend server, over one subscriber
    connection, and the clients that wanted each.

    Subscriptions are identified by their key, C{(kind, name)}.  Three sets
    of keys describe the backend: L{wanted} (what clients want),
    L{sent} (what the connection has last asked to be subscribed to) and
    L{active} (what the backend has confirmed, with no later command for it
    still in flight).  L{_sync} makes the backend follow L{wanted}.

    @ivar wanted: key -> C{set} of clients.
    @ivar protocol: the connected L{SubscriberProtocol}, or L{None}.
    @ivar down: why the last connection attempt failed, or L{None} if it
        did not.
    """

    log = Logger()

    def __init__(self, hub, pool):
        self.hub = hub
        self.pool = pool
        self.address = pool.address
        self.reactor = hub.reactor
        self.wanted = {}
        self.sent = set()
        self.active = set()
        self.inFlight = {}
        self.waiters = {}
        self.protocol = None
        self.attempt = None
        self.retryCall = None
        self.down = None
        self.delay = hub.retryDelay
        self.stopped = False
        self.connectWaiters = []


    def __repr__(self):
        return "<BackendSubscriber %s %d wanted>" % (self.address,
                                                     len(self.wanted))


    # What clients want

    def want(self, key, client):
        """
        Add C{client} to the clients of a subscription, subscribing on the
        backend if it is new.

        @return: a L{Deferred} that fires with L{None} once the backend
            subscription is active, or with an error reply (C{bytes}) if it
            cannot be made.  The client is still among the subscription's
            clients then: the caller decides whether to L{unwant} it.
        """
        clients = self.wanted.get(key)
        if clients is None:
            clients = self.wanted[key] = set()
        clients.add(client)
        if key in self.active:
            return succeed(None)
        if self.protocol is not None:
            self._sync(key)
        elif self.stopped:
            return succeed(errorReply("rmux: shutting down"))
        elif self.down is not None and self.retryCall is not None:
            return succeed(self._downError())
        elif self.attempt is None and self.retryCall is None:
            self._connect()
            if self.protocol is None and self.attempt is None:
                # The attempt failed at once.
                return succeed(self._downError())
        if key in self.active:
            return succeed(None)
        return self._wait(key)


    def unwant(self, key, client):
        """
        Remove C{client} from the clients of a subscription, unsubscribing
        on the backend if nobody is left.
        """
        clients = self.wanted.get(key)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self.wanted[key]
            # Whoever still waits for it has gone: free the timers.
            self._fire(key, errorReply("rmux: unsubscribed"))
            self._sync(key)


    def _sync(self, key):
        """
        Subscribe or unsubscribe C{key} on the backend so that it matches
        L{wanted}.
        """
        if self.protocol is None:
            return
        subscribing = key in self.wanted
        if subscribing == (key in self.sent):
            return
        if subscribing:
            self.sent.add(key)
        else:
            self.sent.discard(key)
        self.active.discard(key)
        self.inFlight[key] = self.inFlight.get(key, 0) + 1
        self.protocol.send([(key[0], key[1], subscribing)])


    def _wait(self, key):
        waiter = _Waiter()
        self.waiters.setdefault(key, []).append(waiter)
        waiter.timer = self.reactor.callLater(
            self.hub.subscribeTimeout, self._timedOut, key, waiter)
        return waiter.deferred


    def _timedOut(self, key, waiter):
        waiter.timer = None
        waiters = self.waiters.get(key, ())
        if waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self.waiters[key]
        waiter.fire(errorReply(
            "rmux: backend %s did not confirm the subscription within %d ms"
            % (self.address, round(self.hub.subscribeTimeout * 1000))))


    def _fire(self, key, result):
        for waiter in self.waiters.pop(key, ()):
            waiter.fire(result)


    def _fireAll(self, result):
        waiters, self.waiters = self.waiters, {}
        for key in waiters:
            for waiter in waiters[key]:
                waiter.fire(result)


    def _downError(self):
        return errorReply("rmux: cannot subscribe on backend %s: %s"
                          % (self.address, self.down))


    # What the backend says

    def answered(self, kind, name, error):
        """
        The backend answered a (un)subscribe command: with a confirmation
        if C{error} is L{None}, else with that error reply.
        """
        key = (kind, name)
        count = self.inFlight.pop(key, 1) - 1
        if count > 0:
            # A later command for the same key decides.
            self.inFlight[key] = count
            return
        if key not in self.sent:
            return
        if error is None:
            self.active.add(key)
            self.delay = self.hub.retryDelay
            self._fire(key, None)
        else:
            self.log.warn(
                "rmux: backend {address} refused {verb} {name!r}: {error}",
                address=self.address, verb=kind.subscribe, name=name,
                error=error.strip())
            self.sent.discard(key)
            self._fire(key, error)


    def droppedByServer(self, kind, name):
        """
        The server ended a subscription nobody asked to end (a cluster
        node whose slot moved away ends its shard channels): it is no longer
        on this server, and its clients, who are not told, wait for the hub
        to place it again (see L{SubscriptionHub.placementStale}).
        """
        key = (kind, name)
        self.sent.discard(key)
        self.active.discard(key)
        if key in self.wanted:
            self.log.info(
                "rmux: backend {address} dropped shard channel {name!r} (its slot "
                "moved); it is subscribed again where the slot now is",
                address=self.address, name=name)
            self.hub.placementStale()


    def messageReceived(self, kind, name, reply):
        """
        Fan a message out to the clients of its subscription: RESP2
        clients get the backend's bytes, RESP3 clients the same as a push.
        """
        clients = self.wanted.get((kind, name))
        if not clients:
            return
        push = None
        for client in tuple(clients):
            if client.protocolVersion == 3:
                if push is None:
                    push = b">" + reply[1:]
                client.reply(push)
            else:
                client.reply(reply)


    # The connection

    def whenConnected(self):
        """
        Connect if need be, without subscribing to anything.

        @return: a L{Deferred} firing with the connection's id on the
            server, or L{None} if it cannot be had now.
        """
        if self.protocol is not None:
            return succeed(self.protocol.serverId)
        d = Deferred()
        self.connectWaiters.append(d)
        if self.attempt is None and self.retryCall is None and not self.stopped:
            self._connect()
        elif self.down is not None and self.attempt is None:
            self._fireConnectWaiters(None)
        return d

    def _fireConnectWaiters(self, serverId):
        waiters, self.connectWaiters = self.connectWaiters, []
        for d in waiters:
            d.callback(serverId)

    def _connect(self):
        protocol = SubscriberProtocol(self)
        self.attempt = d = self.hub.openConnection(self.pool, protocol)
        d.addCallbacks(self._connected, self._connectFailed,
                       callbackArgs=(protocol,))


    def _connected(self, result, protocol):
        self.attempt = None
        if protocol.lost:
            self._connectFailed(None)
            return
        if self.stopped:
            protocol.transport.loseConnection()
            return
        if self.down is not None:
            self.log.info("rmux: subscriber connection to backend {address} "
                          "is back", address=self.address)
        self.protocol = protocol
        self.down = None
        self._fireConnectWaiters(protocol.serverId)
        commands = []
        for key in self.wanted:
            self.sent.add(key)
            self.inFlight[key] = 1
            commands.append((key[0], key[1], True))
        if commands:
            protocol.send(commands)


    def _connectFailed(self, reason):
        self.attempt = None
        if self.stopped:
            return
        why = ("connection lost during set-up" if reason is None
               else reason.getErrorMessage())
        if self.down is None:
            self.log.warn("rmux: cannot open a subscriber connection to "
                          "backend {address}: {why}",
                          address=self.address, why=why)
        self.down = why
        # Back off before failing the waiters, so that what they do next
        # (a client's queued SUBSCRIBE) fails fast instead of reconnecting.
        self._scheduleRetry()
        self._fireAll(self._downError())
        self._fireConnectWaiters(None)


    def connectionLost(self, protocol, reason):
        """
        The subscriber connection was lost: forget what the backend had,
        and reconnect if anything is still wanted.  Subscriptions waiting
        for a confirmation keep waiting, for the new connection.
        """
        if protocol is not self.protocol:
            return
        self.protocol = None
        self.sent.clear()
        self.active.clear()
        self.inFlight.clear()
        if self.stopped:
            return
        if self.wanted:
            self.log.warn("rmux: lost the subscriber connection to backend "
                          "{address}: {why}; resubscribing",
                          address=self.address,
                          why=reason.getErrorMessage())
        self._scheduleRetry()


    def _scheduleRetry(self):
        if (self.stopped or self.retryCall is not None
                or self.attempt is not None or not self.wanted):
            return
        delay = self.delay
        self.delay = min(delay * self.hub.retryFactor, self.hub.maxRetryDelay)
        jitter = self.hub.retryJitter
        if jitter:
            delay *= 1 + random.uniform(-jitter, jitter)
        self.retryCall = self.reactor.callLater(delay, self._retry)


    def _retry(self):
        self.retryCall = None
        if (self.wanted and self.protocol is None and self.attempt is None
                and not self.stopped):
            self._connect()


    def stop(self):
        """
        Close the connection for good and fail whatever is waiting.

        @return: a L{Deferred} that fires when the connection is closed.
        """
        self.stopped = True
        if self.retryCall is not None:
            self.retryCall.cancel()
            self.retryCall = None
        if self.attempt is not None:
            self.attempt.cancel()
        self._fireAll(errorReply("rmux: shutting down"))
        self._fireConnectWaiters(None)
        protocol = self.protocol
        if protocol is None:
            return succeed(None)
        protocol.transport.loseConnection()
        return protocol.closed



class _ClientSubscriptions(object):
    """
    What one client is subscribed to, and its pub/sub commands still to
    run.

    @ivar keys: C{(kind, name)} -> the L{BackendSubscriber}s it is
        subscribed on, in subscription order.  Keys of a subscribe that is
        still waiting for its backend are in it too.
    @ivar counts: the counts the client has been told: channels and
        patterns, and shard channels.
    @ivar busy: whether a command is waiting for a backend.
    @ivar queue: the commands that arrived meanwhile, each C{(kind,
        subscribing, names, slot)}.
    """

    __slots__ = ("keys", "counts", "busy", "queue", "gone")

    def __init__(self):
        self.keys = {}
        self.counts = [0, 0]
        self.busy = False
        self.queue = deque()
        self.gone = False


    def idle(self):
        return not (self.keys or self.busy or self.queue)



class SubscriptionHub(object):
    """
    The pub/sub of one listener: client subscriptions on one side, shared
    backend subscriptions on the other.

    @cvar subscribeTimeout: how long a subscription waits for its backend
        (to connect and confirm) before the client gets an error.
    @cvar retryDelay: the delay before reconnecting a subscriber connection
        that dropped; it doubles (L{retryFactor}) after each failed attempt
        up to L{maxRetryDelay}, and is reset by the first confirmation on a
        new connection.
    @cvar retryJitter: the relative random spread of each delay, so that
        many rmux hosts do not reconnect in step.
    """

    log = Logger()
    subscribeTimeout = 2.0
    retryDelay = 0.1
    retryFactor = 2.0
    maxRetryDelay = 5.0
    retryJitter = 0.2

    def __init__(self, reactor, placeChannel, allPools, openConnection=None):
        """
        @param reactor: provides C{callLater} and, for the default
            C{openConnection}, the connecting interfaces.
        @param placeChannel: C{placeChannel(channel)} returns the pool of
            the server a channel (or shard channel) lives on, or raises
            L{rmux.router.PlacementError} if it cannot be placed right now.
        @param allPools: C{allPools()} returns the pools of every server,
            on each of which the invalidations channel is subscribed, and
            patterns unless L{patternPools} says otherwise.
        @param openConnection: C{openConnection(pool, protocol)} connects
            the given protocol instance to the pool's server and returns a
            L{Deferred} that fires once it is ready for C{SUBSCRIBE} (after
            authenticating, say, having consumed its own replies).  By
            default, L{connectToBackend} with C{reactor}.
        """
        self.reactor = reactor
        self.placeChannel = placeChannel
        self.allPools = allPools
        #: C{patternPools()} returns where patterns are subscribed: one
        #: server of each group that PUBLISH reaches as one (a cluster
        #: propagates it to every node: a pattern on each would get each
        #: message once per node).
        self.patternPools = allPools
        #: C{patternPoolOf(pool)} returns the pool of L{patternPools} that
        #: sees what is published on C{pool}: itself, or a cluster's node.
        self.patternPoolOf = lambda pool: pool
        #: L{None} when channels can be placed now, else a L{Deferred}
        #: that fires when they may be (see L{rmux.service.ListenerService}).
        self.whenPlaced = lambda: None
        #: Asks the router to read the placement again (a cluster's map),
        #: which calls L{placementChanged} if it changed; or L{None}.
        self.refreshPlacement = None
        if openConnection is None:
            def openConnection(pool, protocol):
                return connectToBackend(reactor, pool, protocol)
        self.openConnection = openConnection
        self.backends = {}
        self._clients = {}


    def backendFor(self, pool):
        """
        @return: the L{BackendSubscriber} of C{pool}'s server.
        """
        backend = self.backends.get(pool)
        if backend is None:
            backend = self.backends[pool] = BackendSubscriber(self, pool)
        return backend


    # What the proxy asks

    def subscriptionCount(self, client):
        """
        @return: the number of channels and patterns C{client} is
            subscribed to, as Redis counts them in its confirmations.
        """
        state = self._clients.get(client)
        return state.counts[0] if state is not None else 0


    def shardSubscriptionCount(self, client):
        """
        @return: the number of shard channels C{client} is subscribed to.
        """
        state = self._clients.get(client)
        return state.counts[1] if state is not None else 0


    def counts(self, client):
        """
        @return: C{(channels, patterns, shard channels)} C{client} is
            subscribed to, as CLIENT LIST shows them.
        """
        state = self._clients.get(client)
        if state is None:
            return 0, 0, 0
        patterns = sum(1 for kind, name in state.keys if kind.everywhere)
        return state.counts[0] - patterns, patterns, state.counts[1]

    def recount(self, name, args, waiter):
        """
        The waiter that corrects the subscriber counts in the reply of
        C{name} (one of L{RECOUNTED}) for rmux's clients, then fills
        C{waiter}.  Other rmux hosts' subscribers still count as one
        subscription each: theirs is the same shared connection.
        """
        return _Recount(self, waiter, name, args)

    def knownServerId(self, pool):
        """
        The id on C{pool}'s server of rmux's subscriber connection there,
        if it is connected, else L{None}.
        """
        backend = self.backends.get(pool)
        protocol = backend.protocol if backend is not None else None
        return protocol.serverId if protocol is not None else None

    def serverIds(self, pools):
        """
        The ids, on each of C{pools}' servers, of rmux's subscriber
        connection there (connected now if need be).

        @return: a L{Deferred} firing with a C{dict} of pool to id (or
            L{None} where there is no connection).
        """
        pools = list(pools)
        d = DeferredList([self.backendFor(pool).whenConnected() for pool in pools])
        return d.addCallback(lambda results: {
            pool: value if ok else None for pool, (ok, value) in zip(pools, results)})

    def isSubscribed(self, client):
        """
        @return: whether C{client} is in subscriber mode: subscribed to
            anything (shard channels included), or about to be, since a
            subscribe still waiting for its backend counts.
        """
        state = self._clients.get(client)
        if state is None:
            return False
        return bool(state.keys) or any(
            subscribing for kind, subscribing, names, slot in state.queue)


    def isBusy(self, client):
        """
        @return: whether a command of C{client}'s still waits for a backend:
            the proxy holds the client's later commands meanwhile, so that
            they see the subscriptions as Redis would, until the hub calls
            C{client.subscriptionsSettled()}.
        """
        state = self._clients.get(client)
        return state is not None and state.busy


    def command(self, client, name, args):
        """
        Run one of C{subscribe}, C{psubscribe}, C{ssubscribe},
        C{unsubscribe}, C{punsubscribe}, C{sunsubscribe} for C{client}.

        Its replies go to C{client.reply} when they are ready at once, else
        to a C{client.newSlot()} taken now, which keeps them in their place
        among the client's replies.

        @param name: the command name, lowercase C{str}.
        @param args: the whole command, name included, as C{bytes}.
        """
        kind, subscribing = _COMMANDS[name]
        names = args[1:]
        if subscribing and not names:
            client.reply(errorReply(
                "wrong number of arguments for '%s' command" % (name,)))
            return
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _ClientSubscriptions()
        if state.busy:
            state.queue.append((kind, subscribing, names, client.newSlot()))
            return
        self._run(client, state, kind, subscribing, names, None)
        self._runQueued(client, state)


    def clientGone(self, client):
        """
        Forget C{client}: unsubscribe on the backends whatever nobody else
        wants.
        """
        state = self._clients.pop(client, None)
        if state is None:
            return
        state.gone = True
        state.queue.clear()
        for key, backends in state.keys.items():
            for backend in backends:
                backend.unwant(key, client)
        state.keys = {}


    def placementStale(self):
        """
        A server says a subscription is no longer its own: have the
        placement read again, so that L{placementChanged} moves it.
        """
        if self.refreshPlacement is not None:
            self.refreshPlacement()


    def placementChanged(self):
        """
        Move the channel and shard channel subscriptions whose channel is
        now placed on another server (after a failover, or when a server is
        back), so that subscribers keep getting what C{PUBLISH}, routed by
        the same placement, sends; and subscribe patterns on the servers a
        reload added, off those it removed.  Call it when the placement
        changes.

        Clients see nothing of it.  A channel that cannot be placed now
        stays where it is; a move the new server cannot make yet is made
        when it can, as after a reconnect.
        """
        placed = {}
        everywhere = None
        for client, state in list(self._clients.items()):
            for key, backends in list(state.keys.items()):
                kind, name = key
                if kind.everywhere:
                    # A pattern follows the set of servers (a reload may
                    # add or remove some).
                    if everywhere is None:
                        everywhere = tuple(self.backendFor(pool) for pool in self.patternPools())
                    if not everywhere or set(backends) == set(everywhere):
                        continue
                    state.keys[key] = everywhere
                    for backend in everywhere:
                        if backend not in backends:
                            backend.want(key, client)
                    for old in backends:
                        if old not in everywhere:
                            old.unwant(key, client)
                    continue
                if name not in placed:
                    try:
                        placed[name] = self.backendFor(self.placeChannel(name))
                    except PlacementError:
                        placed[name] = None
                backend = placed[name]
                if backend is None or backends == (backend,):
                    continue
                state.keys[key] = (backend,)
                backend.want(key, client)
                for old in backends:
                    old.unwant(key, client)


    def stop(self):
        """
        Close every subscriber connection and stop reconnecting.

        @return: a L{Deferred} that fires when they are all closed.
        """
        return DeferredList([backend.stop()
                             for backend in list(self.backends.values())])


    # Running commands

    def _runQueued(self, client, state):
        while not state.busy and state.queue and not state.gone:
            kind, subscribing, names, slot = state.queue.popleft()
            self._run(client, state, kind, subscribing, names, slot)
        if state.idle() and not state.gone:
            del self._clients[client]


    def _deliver(self, client, data, slot):
        if slot is None:
            client.reply(data)
        else:
            slot.fill(data)


    def _run(self, client, state, kind, subscribing, names, slot):
        if not subscribing:
            self._deliver(client, self._unsubscribe(client, state, kind,
                                                    names), slot)
            return
        outcomes = {}
        pendingKeys = []
        pending = []
        for name in names:
            key = (kind, name)
            if key in state.keys or key in outcomes:
                continue
            outcome = self._subscribe(client, state, key)
            outcomes[key] = outcome
            if isinstance(outcome, Deferred):
                pendingKeys.append(key)
                pending.append(outcome)
        if not pending:
            self._deliver(client, self._subscribed(
                client, state, kind, names, outcomes), slot)
            return
        state.busy = True
        if slot is None:
            slot = client.newSlot()
        d = DeferredList(pending)
        d.addCallback(self._settled, client, state, kind, names, outcomes,
                      pendingKeys, slot)


    def _settled(self, results, client, state, kind, names, outcomes,
                 pendingKeys, slot):
        if state.gone:
            return
        for key, (succeeded, outcome) in zip(pendingKeys, results):
            if not succeeded:
                self.log.failure("rmux: subscribing failed", outcome)
                outcome = errorReply("rmux: internal error while subscribing")
            outcomes[key] = outcome
        state.busy = False
        slot.fill(self._subscribed(client, state, kind, names, outcomes))
        self._runQueued(client, state)
        if not state.busy:
            settled = getattr(client, "subscriptionsSettled", None)
            if settled is not None:
                settled()


    def _subscribe(self, client, state, key, waited=False):
        """
        Start subscribing C{client} to a key it does not have.

        @return: L{None} if done, an error reply (C{bytes}) if it failed,
            or a L{Deferred} that fires with one of these.
        """
        kind, name = key
        waiting = None if waited else self.whenPlaced()
        if waiting is not None:
            # A cluster's or Sentinel group's first map is still being
            # read: subscribe once that is over, as other commands wait.
            return waiting.addCallback(lambda _: self._subscribe(client, state, key, True))
        if kind.everywhere or name == INVALIDATIONS:
            pools = self.patternPools() if kind.everywhere else self.allPools()
            if not pools:
                return errorReply("rmux: no backend to subscribe on")
        else:
            try:
                pools = [self.placeChannel(name)]
            except PlacementError as e:
                return e.reply
        backends = tuple(self.backendFor(pool) for pool in pools)
        state.keys[key] = backends
        results = [backend.want(key, client) for backend in backends]
        if len(results) == 1:
            d = results[0]
        else:
            d = DeferredList(results)
            d.addCallback(_anySucceeded)
        # Unwrap what is already known, so that a subscription that needs
        # no backend round trip is answered at once.
        if d.called:
            return d.result
        return d


    def _subscribed(self, client, state, kind, names, outcomes):
        """
        Build the replies of a subscribe command whose outcomes are all
        known, in order, and forget the keys that failed.

        @param outcomes: C{(kind, name)} -> L{None} or an error reply, for
            each key the command subscribed to anew.
        """
        index = 1 if kind.shard else 0
        count = state.counts[index]
        verb = kind.subscribe
        protocolVersion = client.protocolVersion
        replies = []
        done = set()
        for name in names:
            key = (kind, name)
            outcome = outcomes.get(key)
            if outcome is not None:
                if key not in done:
                    done.add(key)
                    for backend in state.keys.pop(key, ()):
                        backend.unwant(key, client)
                replies.append(outcome)
                continue
            if key in outcomes and key not in done:
                done.add(key)
                count += 1
            replies.append(confirmation(verb, name, count, protocolVersion))
        state.counts[index] = count
        return b"".join(replies)


    def _unsubscribe(self, client, state, kind, names):
        """
        Unsubscribe C{client}; nothing to wait for, since messages are only
        fanned out to the clients that still want them.

        @return: the replies.
        """
        index = 1 if kind.shard else 0
        count = state.counts[index]
        verb = kind.unsubscribe
        protocolVersion = client.protocolVersion
        if not names:
            names = [name for (k, name) in state.keys if k is kind]
            if not names:
                return confirmation(verb, None, count, protocolVersion)
        replies = []
        for name in names:
            key = (kind, name)
            backends = state.keys.pop(key, None)
            if backends is not None:
                count -= 1
                for backend in backends:
                    backend.unwant(key, client)
            replies.append(confirmation(verb, name, count, protocolVersion))
        state.counts[index] = count
        return b"".join(replies)



def _anySucceeded(results):
    """
    Combine the outcomes of a pattern on every server: it is subscribed if
    it is on at least one, and stays wanted on the others, which subscribe
    it when they come back.

    @return: L{None}, or the first error if it failed everywhere.
    """
    errors = [outcome for success, outcome in results if outcome is not None]
    if len(errors) < len(results):
        return None
    return errors[0]


# What PUBLISH and PUBSUB NUMSUB count

def stringMatch(pattern, string):
    """
    Whether C{string} matches the glob C{pattern} as Redis's
    C{stringmatchlen} decides for PSUBSCRIBE: C{*}, C{?}, C{[...]} with
    ranges and C{^}, and C{\\} escaping the next byte.
    """
    p = s = 0
    plen, slen = len(pattern), len(string)
    starP = starS = -1
    while s < slen:
        if p < plen:
            c = pattern[p]
            if c == 42:  # *
                starP, starS = p, s
                p += 1
                continue
            if c == 63:  # ?
                p += 1
                s += 1
                continue
            if c == 91:  # [
                end, matched = _classMatch(pattern, p + 1, string[s])
                if matched:
                    p, s = end, s + 1
                    continue
            elif c == 92 and p + 1 < plen:  # \
                if pattern[p + 1] == string[s]:
                    p, s = p + 2, s + 1
                    continue
            elif c == string[s]:
                p, s = p + 1, s + 1
                continue
        if starP < 0:
            return False
        p, starS = starP + 1, starS + 1
        s = starS
    while p < plen and pattern[p] == 42:
        p += 1
    return p == plen


def _classMatch(pattern, p, c):
    """
    Match the byte C{c} against the class starting after the C{[} at
    C{p - 1}; return where the pattern goes on and whether it matched.
    """
    plen = len(pattern)
    negate = p < plen and pattern[p] == 94
    if negate:
        p += 1
    matched = False
    while p < plen and pattern[p] != 93:
        if pattern[p] == 92 and p + 1 < plen:
            p += 1
            matched = matched or pattern[p] == c
        elif p + 2 < plen and pattern[p + 1] == 45 and pattern[p + 2] != 93:
            low, high = sorted((pattern[p], pattern[p + 2]))
            matched = matched or low <= c <= high
            p += 2
        else:
            matched = matched or pattern[p] == c
        p += 1
    if p < plen:
        p += 1  # the ]
    return p, matched != negate


def _receivers(backend, kind, channel, patterns):
    """
    For a message on C{channel} published on C{backend}'s server: how many
    of rmux's own subscriptions there receive it (what the server counts
    for rmux), and how many rmux clients' subscriptions receive it, those
    of the C{patterns} backend included (what one server would count).
    """
    mine = theirs = 0
    key = (kind, channel)
    if backend is not None:
        mine += key in backend.active
        theirs += len(backend.wanted.get(key, ()))
    if kind is CHANNELS and patterns is not None:
        for (other, pattern), clients in patterns.wanted.items():
            if other is PATTERNS and stringMatch(pattern, channel):
                if patterns is backend:
                    mine += (other, pattern) in backend.active
                theirs += len(clients)
    return mine, theirs


class _Recount(object):
    """
    The waiter for PUBLISH, SPUBLISH, PUBSUB NUMSUB or SHARDNUMSUB through
    the hub: the server counts rmux's one subscription for all its
    clients, so rmux puts its clients' own count in its place.
    """

    data = None

    def __init__(self, hub, waiter, name, args):
        self.hub = hub
        self.waiter = waiter
        self.name = name
        self.args = args

    def fill(self, reply):
        self.data = reply
        try:
            reply = self._recount(reply)
        except (ValueError, IndexError, PlacementError):
            pass
        self.waiter.fill(reply)

    def _recount(self, reply):
        hub = self.hub
        shard = self.name in ("spublish", "pubsub|shardnumsub")
        kind = SHARD_CHANNELS if shard else CHANNELS
        if self.name in ("publish", "spublish"):
            if reply[:1] != b":":
                return reply
            pool = hub.placeChannel(self.args[1])
            backends = hub.backends
            mine, theirs = _receivers(backends.get(pool), kind, self.args[1],
                                      backends.get(hub.patternPoolOf(pool)))
            return b":%d\r\n" % (int(reply[1:-2]) - mine + theirs,)
        if reply[:1] not in (b"*", b"%"):
            return reply
        header = reply.index(b"\r\n") + 2
        elements = ReplyFramer().feed(reply[header:])
        out = []
        for name, count in zip(elements[0::2], elements[1::2]):
            channel = name[name.index(b"\r\n") + 2:-2]
            backend = hub.backends.get(hub.placeChannel(channel))
            number = int(count[1:-2])
            if backend is not None:
                key = (kind, channel)
                number += len(backend.wanted.get(key, ())) - (key in backend.active)
            out += [name, b":%d\r\n" % (number,)]
        return reply[:header] + b"".join(out)


#: The commands whose counts L{SubscriptionHub.recount} corrects.
RECOUNTED = frozenset(["publish", "spublish", "pubsub|numsub", "pubsub|shardnumsub"])
