# -*- test-case-name: tests.test_proxy -*-
"""
The client-facing side: one L{ClientProtocol} per client connection, made by
a L{ProxyFactory} per listener.

The protocol owns the connection's life, feeds its parser, decides what
each command is (forwarded, answered here, refused) and keeps the client's
timers and flow control.  What it decides is done elsewhere: replies are
ordered by its L{rmux.replies.ReplyQueue}, forwarded commands and
transactions go through its L{rmux.session.Session}, local commands are
L{rmux.local}'s handlers, subscriptions the listener's
L{rmux.pubsub.SubscriptionHub}'s.
"""

from collections import deque
from itertools import count

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from rmux import commands as C
from rmux import resp
from rmux.flow import Admission, FlowControl
from rmux.interfaces import IClient, ISinkProtocol
from rmux.local import HANDLERS, echoToMonitors, monitored
from rmux.replies import PipelineWaiter, ReplyQueue
from rmux.resp import errorReply
from rmux.pubsub import RECOUNTED
from rmux.session import SCRIPT_SOURCES, SHA_COMMANDS, ScriptCache, Session
from rmux.stats import ListenerStats, listenerSnapshot

MAX_CLIENTS = b"-ERR max number of clients reached\r\n"

#: What a client may send while subscribed in RESP2, as in Redis.
_WHILE_SUBSCRIBED = frozenset(
    ["subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
     "sunsubscribe", "ping", "quit", "reset"]
)
#: Commands that act on a transaction rather than being queued in it.
_TRANSACTION_CONTROL = frozenset(["exec", "discard", "multi", "quit", "reset"])

_UNKNOWN = object()


@implementer(IPushProducer, ISinkProtocol, IClient)
class ClientProtocol(FlowControl, Protocol):
    """
    One client of rmux.

    State that most clients never use is set on first use: the class
    attributes below are what a client that never needs it has.

    @ivar session: its L{rmux.session.Session}: db, RESP version, affinity,
        transaction.
    @ivar replies: its L{rmux.replies.ReplyQueue}.
    @ivar held: the commands that arrived while an earlier one must finish
        first (a blocking command, a transaction, a delayed AUTH failure),
        or L{None}.
    """

    log = Logger()

    #: The L{rmux.resp.BodySink} of a big argument being received, for the
    #: transport to receive into (see L{bodyReceived}), or L{None}.
    sink = None
    killed = False
    user = "default"
    authFailures = 0
    name = None
    libName = None
    libVersion = None
    disconnected = False
    lastCommand = b"NULL"
    waitedForPlacement = False
    _timer = None
    _writeTimer = None

    # Connection life

    def logPrefix(self):
        # Twisted builds each connection's log prefix from this; without it
        # that costs a reflect.qual() per accepted connection.
        return "rmux-client"

    def connectionMade(self):
        factory = self.factory
        self.id = factory.nextClientId()
        self.parser = factory.makeParser()
        self.table = factory.table
        self.router = factory.router
        self.clock = factory.reactor
        self.session = Session(self, factory.router, factory.scripts, factory.hub)
        self.replies = ReplyQueue(self, self.transport, factory.stats)
        self.createdAt = self.lastActivity = self.clock.seconds()
        # Read on every request: instance attributes are found faster.
        self.held = None
        self.closing = self.paused = self.readingPaused = self.usedPubSub = False
        self.closeWhenDrained = self.disconnected = False
        self.denied = factory.denied
        self.authenticated = not factory.auth.required
        if not self.authenticated:
            self.parser.restrictUntilAuthenticated()
        if len(factory.clients) >= factory.maxClients:
            # As Redis does: say why, then close; the client is not counted.
            factory.stats.rejectedConnections += 1
            self.closing = True
            self.transport.write(MAX_CLIENTS)
            self.transport.loseConnection()
            return
        factory.clientConnected(self)
        self.transport.registerProducer(self, True)
        if factory.firstTimerDelay:
            self._armTimer()

    def connectionLost(self, reason):
        if self.disconnected or self not in self.factory.clients:
            self.disconnected = True
            return
        self.disconnected = True
        self.closing = True
        stats = self.factory.stats
        if issubclass(reason.type, ConnectionDone):
            stats.clientEOF += 1
        else:
            stats.clientErrors += 1
        self.replies.clear()
        self.held = None
        # Most clients never held a heavy read, a partial request or a
        # subscription: no call for what they never had.
        if self.heavy or self.stashed is not None:
            self.forgetReads()
        if self.partial:
            self.forgetRequest()
        self.session.close()
        if self.usedPubSub:
            self.leavePubSub()
        for timer in (self._timer, self._writeTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._writeTimer = None
        self.factory.clientDisconnected(self)

    def dataReceived(self, data):
        if self.closing:
            return
        if len(data) > self.heavyRead:
            self.readHeavy(data)
            return
        self.handleRead(data)

    def handleRead(self, data):
        now = self.lastActivity = self.clock.seconds()
        self.factory.stats.bytesIn += len(data)
        parser = self.parser
        commands = parser.feed(data)
        self.sink = parser.sink
        if self.partial or parser.buffered:
            self.measureRequest(now, commands)
            if self.closing:
                return
        if parser.wholeFeed and self._passThrough(commands, data):
            pass
        elif parser.wholeFeed and len(commands) == 1:
            # One command, canonically encoded: forwarded as received.
            self.handleCommand(commands[0], data)
            if self.closing:
                return
        else:
            handle = self.handleCommand
            for args in commands:
                handle(args)
                if self.closing:
                    return
            while parser.unparsed:
                # Not authenticated: one command at a time (see
                # RequestParser.unparsed).
                rest, parser.unparsed = parser.unparsed, b""
                for args in parser.feed(rest):
                    handle(args)
                    if self.closing:
                        return
        if len(self.replies.slots) > self.factory.maxPending:
            self._pauseReading()
        if parser.error is not None:
            self.factory.stats.protocolErrors += 1
            self.reply(parser.error.asReply())
            self.closeAfterReplies()

    def bodyReceived(self, size):
        """
        The transport received C{size} bytes of a big argument straight
        into L{sink}.
        """
        if self.closing:
            self.sink = None
            return
        now = self.lastActivity = self.clock.seconds()
        self.factory.stats.bytesIn += size
        parser = self.parser
        parser.bodyReceived(size)
        self.sink = parser.sink
        self.measureRequest(now, False)

    def _passThrough(self, commands, data):
        """
        Forward C{data}, which is exactly C{commands}, as it is: one write
        and one place in the reply queue for the whole pipeline, and no
        encoding.  Only for the plain case: one backend, and commands that
        need nothing of rmux but forwarding, in a client with no state.

        @return: whether it did; if not, nothing was done.
        """
        session = self.session
        factory = self.factory
        if (
            self.held is not None
            or self.usedPubSub
            or not self.authenticated
            or session.pin is not None
            or session.multi is not None
            or session.own is not None
            or self.replies.mode is not None
            or self.denied is not factory.denied
        ):
            return False
        arities = factory.plainArities
        for args in commands:
            arity = arities.get(args[0], _UNKNOWN)
            if arity is _UNKNOWN:
                arity = factory.learnPlainArity(args[0])
            if arity is None:
                return False
            if (len(args) != arity) if arity >= 0 else (len(args) < -arity):
                return False
        router = self.router
        pool = router.single
        sender = session
        if pool is None:
            keyed = factory.plainKeyed
            for args in commands:
                if not keyed.get(args[0]):
                    return False
            pool = router.passThroughPool(commands)
            if pool is None:
                return False
            sender = router.passThroughSender(session)
        count = len(commands)
        stats = factory.stats
        stats.commands += count
        slot = self.replies.newSlot()
        waiter = slot if count == 1 else PipelineWaiter(slot, count, stats)
        sender.send(pool, data, waiter, count)
        return True

    # Replies (IClient)

    def reply(self, data):
        self.replies.reply(data)

    def newSlot(self):
        return self.replies.newSlot()

    @property
    def protocolVersion(self):
        return self.session.protocolVersion

    def closeAfterReplies(self):
        # Stop reading, and close once every queued reply has been written.
        self.closing = True
        if self.replies:
            self.closeWhenDrained = True
        elif not self.disconnected:
            self.transport.loseConnection()

    # Commands

    def handleCommand(self, args, payload=None):
        """
        Answer one parsed request locally, refuse it, or forward it.

        @param payload: C{args} as the client encoded them, if canonical.
        """
        if self.held is not None:
            # An earlier command must finish first: Redis would not read on.
            self.held.append(args)
            return
        spec = self.table.lookup(args)
        if (spec is not None and (spec.policy != C.FORWARD or self.session.multi is not None)
                and self._awaitPlacement(args)):
            return
        stats = self.factory.stats
        stats.commands += 1
        reply = C.rejection(self.table, args, spec, self.authenticated, self.denied)
        if reply is not None:
            stats.requestsByClass["invalid"] += 1
            self.session.commandFailed()
            self.reply(reply)
            return
        name = spec.name
        session = self.session
        if session.own is not None and session.own.monitoring:
            monitored(self, args, spec)
            return
        if session.multi is not None and name not in _TRANSACTION_CONTROL:
            stats.requestsByClass["stateful"] += 1
            session.queue(args, spec)
            return
        if self.usedPubSub and name not in _WHILE_SUBSCRIBED and self.subscribedResp2:
            stats.requestsByClass["invalid"] += 1
            self.reply(errorReply(
                "Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                "PING / QUIT / RESET are allowed in this context" % (name,)))
            return
        policy = spec.policy
        if policy == C.FORWARD:
            session.forward(args, spec, payload)
        elif policy == C.BLOCKING:
            if spec.isBlocking(args):
                stats.requestsByClass["blocking"] += 1
                session.blocking(args, spec)
            else:
                session.forward(args, spec)
        elif (policy == C.LOCAL or policy == C.STATEFUL) and name in HANDLERS:
            stats.requestsByClass["local" if policy == C.LOCAL else "stateful"] += 1
            self.lastCommand = name
            HANDLERS[name](self, args, spec)
            if self.factory.monitors:
                echoToMonitors(self, args, spec)
        elif policy == C.PUBSUB and self.factory.hub is not None:
            stats.requestsByClass["pubsub"] += 1
            self.lastCommand = name
            self.usedPubSub = True
            hub = self.factory.hub
            hub.command(self, name, args)
            if hub.isBusy(self):
                self.hold()
        else:
            stats.refused += 1
            stats.requestsByClass["refused"] += 1
            self.reply(C.refusalError(spec))

    # Pub/sub

    @property
    def subscribedResp2(self):
        hub = self.factory.hub
        return (
            self.usedPubSub
            and self.session.protocolVersion == 2
            and hub is not None
            and hub.isSubscribed(self)
        )

    def subscriptionsSettled(self):
        # The hub has finished a (un)subscribe that waited for a backend.
        if self.held is not None:
            self.release()

    def leavePubSub(self):
        # RESET, or the client has gone.
        if self.usedPubSub and self.factory.hub is not None:
            self.factory.hub.clientGone(self)

    def _awaitPlacement(self, args):
        """
        Hold this client, C{args} first, while its router reads a first map
        (a cluster's, a Sentinel group's): unlike a forwarded command, which
        waits in the router, these must know their server at once.  A
        client waits once; after that read its commands get the router's
        answer, map or error.
        """
        pending = None if self.waitedForPlacement else self.router.whenPlaced()
        if pending is None:
            return False
        self.waitedForPlacement = True
        self.held = deque([args])
        pending.addCallback(lambda _: self.release())
        return True

    # Holding later commands while one must finish first

    def hold(self):
        if self.held is None:
            self.held = deque()

    def release(self):
        """
        Carry on with the commands that arrived while one was in progress.
        """
        held, self.held = self.held, None
        while held and not self.closing:
            self.handleCommand(held.popleft())
            if self.held is not None:
                # Held again: keep the rest, in order, behind the new hold.
                self.held.extend(held)
                return

    # Local timeouts

    def _armTimer(self, delay=None):
        if delay is None:
            delay = self.factory.firstTimerDelay
        if delay:
            self._timer = self.clock.callLater(delay, self._checkTimeouts)

    def recheckTimeouts(self):
        """
        Hold this client to the factory's current local timeouts now: its
        timer was armed for the settings it connected under (none at all
        when they were off).  One already idle for longer than a new idle
        timeout is closed, as Redis does when its C{timeout} is lowered.
        """
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = None
        self._checkTimeouts()

    def _checkTimeouts(self):
        """
        Enforce the local read and idle timeouts.  One timer per client,
        re-armed for the nearest deadline instead of being reset on every
        read.
        """
        self._timer = None
        if self.disconnected or self.closing:
            return
        factory = self.factory
        now = self.clock.seconds()
        quiet = now - self.lastActivity
        readTimeout, idleTimeout = factory.localReadTimeout, factory.idleTimeout
        # A request must be complete within the read timeout of its first byte.
        started = self.partialSince
        reading = now - started if started is not None else 0.0
        if readTimeout and started is not None and reading >= readTimeout:
            factory.stats.localTimeouts += 1
            self.dropRequest("rmux: request not completed within the local read timeout")
            return
        if idleTimeout and not self.replies and quiet >= idleTimeout:
            factory.stats.localTimeouts += 1
            self.transport.loseConnection()
            return
        remaining = [t - spent for t, spent in ((readTimeout, reading), (idleTimeout, quiet))
                     if t and t > spent]
        self._armTimer(min(remaining) if remaining else None)


class ProxyFactory(Factory):
    """
    Serves one listener: holds its clients, its router and its settings.

    @ivar router: the listener's L{rmux.interfaces.IRouter}.
    @ivar scripts: the script bodies seen, for EVALSHA's retry.
    """

    #: Twisted's "Starting factory <...>" lines say nothing an operator
    #: needs; rmux logs its own ready line.
    noisy = False
    protocol = ClientProtocol
    log = Logger()
    #: With --maxProcesses, which worker this is (1..N); None otherwise.
    workerId = None

    #: Replies a client may have outstanding before rmux stops reading its
    #: requests until half of them are written.
    maxPending = 10000

    #: Most command names (as clients spell them) whose pass-through
    #: verdict is remembered.
    maxPlainArities = 4096

    def logPrefix(self):
        # The listening port's "... starting on ADDRESS" line.
        return "rmux"

    def __init__(self, reactor, router, table, listener, health=None, hub=None, stats=None):
        """
        @param listener: the L{rmux.config.ListenerConfig} served.
        @param stats: the listener's L{rmux.stats.ListenerStats}, shared
            with its router; new ones if L{None}.
        """
        self.reactor = reactor
        self.router = router
        self.table = table
        self.health = health
        self.hub = hub
        self.scripts = ScriptCache()
        self.admission = Admission(reactor)
        #: Bytes held of incomplete requests, over every client.
        self.partialBytes = 0
        self.clients = set()
        #: Clients that sent MONITOR (see rmux.local.echoToMonitors).
        self.monitors = set()
        self._drained = None
        self.stats = stats if stats is not None else ListenerStats()
        self.startedAt = reactor.seconds()
        self._ids = count(1)
        self.localReadTimeout = self.idleTimeout = 0.0
        self.configure(listener)

    def configure(self, listener):
        """
        Take the client-side settings of C{listener}: its timeouts, limits
        and credentials.  Called again on a live reload, it applies to every
        client from then on: connected clients keep their connection (and
        an authenticated client its login), new ones get the new parser
        limits.
        """
        timeouts = (self.localReadTimeout, self.idleTimeout)
        self.listener = listener
        self.auth = listener.authenticator()
        self.localReadTimeout = listener.localReadTimeout / 1000.0
        self.localWriteTimeout = listener.localWriteTimeout / 1000.0
        self.idleTimeout = listener.idleTimeout / 1000.0
        self.maxClients = listener.maxClients
        self.clientOutputLimit = listener.clientOutputLimit
        self.clientQueryBufferLimit = listener.clientQueryBufferLimit
        self.queryBuffersLimit = listener.queryBuffersLimit
        self.pubsubOutputLimits = (
            listener.pubsubOutputLimit, listener.pubsubOutputSoftLimit,
            listener.pubsubOutputSoftTime / 1000.0,
        )
        #: Held replies past this are checked against the output limits
        #: even while the client reads.
        self.softestOutputLimit = min(
            [limit for limit in (self.clientOutputLimit, listener.pubsubOutputLimit,
                                 listener.pubsubOutputSoftLimit) if limit]
            or [float("inf")]
        )
        self.shutdownTimeout = listener.shutdownTimeout / 1000.0
        self.plainArities = {}
        #: Of those, whether the command's only key is its first argument:
        #: with several servers, that decides where it goes.
        self.plainKeyed = {}
        self.denied = C.deniedNames(self.table, listener.denyCommands)
        self.userDenied = {
            user.name: self.denied | C.deniedNames(self.table, user.denyCommands)
            for user in listener.users if user.denyCommands
        }
        self.parserLimits = {
            "maxBulkLength": listener.maxBulkLength,
            "maxArguments": listener.maxArguments,
            "maxInlineLength": listener.maxInlineLength,
        }
        self.firstTimerDelay = self.timerDelay()
        if (self.localReadTimeout, self.idleTimeout) != timeouts:
            for client in list(self.clients):
                client.recheckTimeouts()

    def nextClientId(self):
        return next(self._ids)

    def learnPlainArity(self, name):
        """
        Whether a command called C{name} (as the client spelled it) can be
        passed through whole (see L{ClientProtocol._passThrough}): its
        arity if so, else L{None}.  Remembered per spelling, so that a
        pipeline costs one dictionary lookup a command.
        """
        spec = self.table.lookup([name])
        arity = None
        if (
            spec is not None
            and spec._subLookup is None
            and spec.policy == C.FORWARD
            and spec.name not in SCRIPT_SOURCES
            and spec.name not in SHA_COMMANDS
            and spec.name not in RECOUNTED
            and spec.name not in self.denied
        ):
            arity = spec.arity
        if len(self.plainArities) < self.maxPlainArities:
            self.plainArities[name] = arity
            self.plainKeyed[name] = (
                arity is not None and spec.routing == C.KEYED and spec.fixedKey == 1)
        return arity

    def makeParser(self):
        return resp.RequestParser(**self.parserLimits)

    def timerDelay(self):
        """
        When a fresh client's timeouts are first checked: after the shorter
        of the read and idle timeouts, or never (L{None}).
        """
        delays = [t for t in (self.localReadTimeout, self.idleTimeout) if t]
        return min(delays) if delays else None

    def dropBiggestRequest(self):
        """
        Incomplete requests hold more than C{queryBuffersLimit}: close the
        client that holds the most, unless it is the only one holding any.
        """
        holding = [client for client in self.clients if client.partial]
        if len(holding) > 1:
            max(holding, key=lambda client: client.partial).dropRequest(
                "rmux: incomplete requests hold more than queryBuffersLimit (%d bytes) "
                "over all clients; closing the client holding the most"
                % (self.queryBuffersLimit,)
            )

    def clientConnected(self, client):
        self.clients.add(client)
        self.stats.connectionsReceived += 1

    def clientDisconnected(self, client):
        self.clients.discard(client)
        self.monitors.discard(client)
        if not self.clients and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def forgetPool(self, pool):
        """
        C{pool} is out of service (a reload removed its server): no client
        will send to it again.
        """
        for client in self.clients:
            client.session.forgetPool(pool)

    def disconnectAll(self, timeout=None):
        """
        Close every client once the replies it is owed have been written,
        and abort those still waiting after C{timeout} seconds.

        @return: a L{Deferred} that fires when no client is left.
        """
        if not self.clients:
            return succeed(None)
        if timeout is None:
            timeout = self.shutdownTimeout
        self._drained = Deferred()
        for client in list(self.clients):
            client.closeAfterReplies()

        def abortStragglers():
            for client in list(self.clients):
                client.transport.abortConnection()

        timer = self.reactor.callLater(timeout, abortStragglers)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return self._drained.addBoth(done)

    # Facts learned from the backends

    def livePools(self):
        """
        Every server of the listener that may take requests now.
        """
        health = self.health
        return [pool for pool in self.router.pools if health is None or health.isUp(pool)]

    def databases(self):
        """
        The number of dbs every backend has, if known.
        """
        if self.health is None:
            return None
        return self.health.databases()

    def backendFacts(self):
        version = None
        if self.health is not None:
            version = self.health.redisVersion()
        return {"version": version or "7.0.0"}

    def snapshot(self):
        """
        This listener's counters as plain data; see L{rmux.stats}.
        """
        snapshot = listenerSnapshot(self, self.router.pools, self.health, self.workerId)
        snapshot["topology"] = self.router.topologySnapshot()
        snapshot["ready"] = self.router.ready()
        return snapshot
