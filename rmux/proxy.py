# -*- test-case-name: tests.test_proxy -*-
"""
The client-facing side: one L{ClientProtocol} per client connection, made by
a L{ProxyFactory} per listener.

Each request gets a L{ReplySlot} in its client's reply queue the moment it is
parsed, whether it is answered locally or by a backend; replies leave strictly
in request order, so a fast reply never overtakes a slow one.
"""

import hashlib
import os
import sys
from collections import deque
from itertools import count

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

import rmux
from rmux import commands as C
from rmux import resp
from rmux.auth import NOAUTH, NOPASSWORD, WRONGPASS, Authenticator
from rmux.pool import PoolExhausted, errorReply
from rmux.resp import encodeCommand
from rmux.stats import ListenerStats, listenerSnapshot
from rmux.transport import ISinkProtocol, coalescer, unsentBytes


HELLO_NOAUTH = (
    b"-NOAUTH HELLO must be called with the client already authenticated, "
    b"otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
    b"authenticate the client and select the RESP protocol version at the "
    b"same time\r\n"
)
MAX_CLIENTS = b"-ERR max number of clients reached\r\n"
QUEUED = b"+QUEUED\r\n"
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
EXECABORT_SPREAD = (
    b"-EXECABORT Transaction discarded because its keys live on different "
    b"servers behind rmux\r\n"
)

#: What a client may send before it has authenticated.
_WITHOUT_AUTH = frozenset(["auth", "hello", "quit"])
#: What a client may send while subscribed in RESP2, as in Redis.
_WHILE_SUBSCRIBED = frozenset(
    ["subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
     "sunsubscribe", "ping", "quit", "reset"]
)
#: Commands that act on a transaction rather than being queued in it.
_TRANSACTION_CONTROL = frozenset(["exec", "discard", "multi", "quit", "reset"])
#: Stateful commands rmux implements; the others (CLIENT REPLY, TRACKING,
#: MONITOR, ...) are refused.
_STATEFUL_HANDLERS = frozenset(["multi", "exec", "discard", "watch", "unwatch", "reset"])
#: Commands that carry a script body rmux remembers for EVALSHA's sake.
_SCRIPT_SOURCES = frozenset(["script|load", "eval", "eval_ro"])
_SHA_COMMANDS = frozenset(["evalsha", "evalsha_ro"])

#: Where each blocking command keeps its timeout: (argument index, unit in
#: seconds); an index of -1 is the last argument.
_BLOCKING_TIMEOUTS = {
    "blpop": (-1, 1.0), "brpop": (-1, 1.0), "brpoplpush": (-1, 1.0),
    "blmove": (-1, 1.0), "bzpopmin": (-1, 1.0), "bzpopmax": (-1, 1.0),
    "blmpop": (1, 1.0), "bzmpop": (1, 1.0), "wait": (-1, 0.001),
    "waitaof": (-1, 0.001),
}


def blockingReadTimeout(args, name, margin):
    """
    How long rmux waits for a blocking command's reply: its own timeout plus
    the remote read timeout as a margin, or forever (0) for a timeout of 0.

    @param margin: the remote read timeout, in seconds.
    """
    if name in ("xread", "xreadgroup"):
        upper = [a.upper() for a in args]
        try:
            seconds = float(args[upper.index(b"BLOCK") + 1]) / 1000.0
        except (ValueError, IndexError):
            return margin
    else:
        index, unit = _BLOCKING_TIMEOUTS.get(name, (None, 1.0))
        if index is None:
            return 0
        try:
            seconds = float(args[index]) * unit
        except (ValueError, IndexError):
            return margin
    if seconds <= 0:
        return 0
    return seconds + margin


class _Pin:
    """
    A client's dedicated connection while it WATCHes keys.
    """

    __slots__ = ("pool", "connection")

    def __init__(self, pool, connection):
        self.pool = pool
        self.connection = connection


class _Ignore:
    """
    Waiter for replies nobody needs (MULTI's +OK, each +QUEUED).
    """

    __slots__ = ("data",)

    def __init__(self):
        self.data = None

    def fill(self, reply):
        pass


class _Executed:
    """
    Waiter for EXEC: the client's reply; then the connection goes back.
    """

    __slots__ = ("client", "slot", "connection", "data")

    def __init__(self, client, slot, connection):
        self.client = client
        self.slot = slot
        self.connection = connection
        self.data = None

    def fill(self, reply):
        self.data = reply
        self.slot.fill(reply)
        self.connection.pool.checkin(self.connection)
        self.client.release()


class _Unwatched:
    """
    Waiter for the UNWATCH that cleans a dedicated connection before it
    goes back.
    """

    __slots__ = ("slot", "connection", "data")

    def __init__(self, slot, connection):
        self.slot = slot
        self.connection = connection
        self.data = None

    def fill(self, reply):
        self.data = reply
        if self.slot is not None:
            self.slot.fill(reply)
        self.connection.pool.checkin(self.connection, clean=reply == b"+OK\r\n")


class _Blocked:
    """
    Waiter for a blocking command on a dedicated connection.
    """

    __slots__ = ("client", "slot", "connection", "giveBack", "data")

    def __init__(self, client, slot, connection, giveBack):
        self.client = client
        self.slot = slot
        self.connection = connection
        self.giveBack = giveBack
        self.data = None

    def fill(self, reply):
        self.data = reply
        client = self.client
        client.blockedOn = None
        connection = self.connection
        connection.readTimeout = connection.pool.readTimeout
        if self.giveBack:
            connection.pool.checkin(connection)
        self.slot.fill(reply)
        client.release()


class _NoScriptRetry:
    """
    Waiter for EVALSHA: if the server does not know the script but rmux saw
    its body go through (SCRIPT LOAD or EVAL), load it there and try once
    more (the server restarted, or the script was loaded on another one).
    """

    __slots__ = ("client", "slot", "args", "spec", "data", "retried")

    def __init__(self, client, slot, args, spec):
        self.client = client
        self.slot = slot
        self.args = args
        self.spec = spec
        self.data = None
        self.retried = False

    def fill(self, reply):
        if not self.retried and reply.startswith(b"-NOSCRIPT"):
            client = self.client
            body = client.factory.scripts.get(self.args[1].lower())
            if body is not None and not client.disconnected:
                self.retried = True
                load = [b"SCRIPT", b"LOAD", body]
                client.forwardInternal(load, self.args, self.spec, _Ignore())
                client.forwardInternal(self.args, self.args, self.spec, self)
                return
        self.data = reply
        self.slot.fill(reply)


class ReplySlot:
    """
    The place of one reply in a client's reply queue.

    Backends call L{fill} with the reply's bytes; the client writes it once
    every earlier slot has been filled and written.
    """

    __slots__ = ("client", "data")

    def __init__(self, client, data=None):
        self.client = client
        self.data = data

    def fill(self, data):
        self.data = data
        self.client.slotFilled(self)


class _Pipeline:
    """
    The waiter for a client's pipeline forwarded whole: gathers its
    replies, then fills the pipeline's one slot with all of them.
    """

    __slots__ = ("slot", "replies", "count")

    def __init__(self, slot, count):
        self.slot = slot
        self.replies = []
        self.count = count

    @property
    def data(self):
        # Router's affinity asks whether the waiter has been answered.
        return self.slot.data

    def fill(self, reply):
        replies = self.replies
        replies.append(reply)
        if len(replies) == self.count:
            slot = self.slot
            # The client counts one response per slot.
            slot.client.factory.stats.responses += self.count - 1
            self.replies = None
            slot.fill(b"".join(replies))


_UNKNOWN = object()

#: The data of a reply slot once written (not L{None}: it was answered).
_WRITTEN = b""


def _isValidName(value):
    # Redis refuses spaces, newlines and anything outside '!'..'~'.
    return all(33 <= byte <= 126 for byte in value)


def _decimal(value):
    """
    Parse a Redis integer argument strictly (as C{string2ll} does).

    @return: the C{int}, or L{None} if C{value} is not one.
    """
    if not value or len(value) > 20:
        return None
    head = value[1:] if value[:1] == b"-" else value
    if not head.isdigit() or (len(head) > 1 and head[:1] == b"0"):
        return None
    number = int(value)
    if not -(2**63) <= number < 2**63:
        return None
    return number


@implementer(IPushProducer, ISinkProtocol)
class ClientProtocol(Protocol):
    """
    One client of rmux.

    @ivar db: the db this client has SELECTed; applied lazily on whichever
        pooled connection carries its next request.
    @ivar protocolVersion: 2, or 3 after C{HELLO 3}.
    """

    log = Logger()

    #: The L{rmux.resp.BodySink} of a big argument being received, for the
    #: transport to receive into (see L{bodyReceived}), or L{None}.
    sink = None

    def __init__(self):
        self.queue = deque()
        self.affinity = {}
        self.held = None
        self.usedPubSub = False
        self.pin = None
        self.multi = None
        self.multiFailed = False
        self.blockedOn = None
        self.authenticated = True
        self.authFailures = 0
        self.db = 0
        self.protocolVersion = 2
        self.name = None
        self.libName = None
        self.libVersion = None
        self.closing = False
        self.closeWhenDrained = False
        self.disconnected = False
        self.lastCommand = b"NULL"
        self.lastActivity = 0.0
        self.createdAt = 0.0
        self.paused = False
        self.readingPaused = False
        self._timer = None
        self._writeTimer = None

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
        self.createdAt = self.lastActivity = self.clock.seconds()
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
        self._armTimer()

    def connectionLost(self, reason):
        if self.disconnected or self not in self.factory.clients:
            self.disconnected = True
            return
        self.disconnected = True
        self.closing = True
        self.affinity.clear()
        stats = self.factory.stats
        if reason.check(ConnectionDone):
            stats.clientEOF += 1
        else:
            stats.clientErrors += 1
        self.queue.clear()
        self.held = None
        if self.blockedOn is not None:
            # It may stay blocked forever: nobody else may have it.
            self.blockedOn.transport.abortConnection()
        if self.pin is not None:
            self._unpin(None)
        if self.factory.hub is not None:
            self.factory.hub.clientGone(self)
        for timer in (self._timer, self._writeTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._writeTimer = None
        self.factory.clientDisconnected(self)

    def dataReceived(self, data):
        if self.closing:
            return
        self.lastActivity = self.clock.seconds()
        self.factory.stats.bytesIn += len(data)
        parser = self.parser
        commands = parser.feed(data)
        self.sink = parser.sink
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
        if len(self.queue) > self.factory.maxPending:
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
        self.lastActivity = self.clock.seconds()
        self.factory.stats.bytesIn += size
        parser = self.parser
        parser.bodyReceived(size)
        self.sink = parser.sink

    def _passThrough(self, commands, data):
        """
        Forward C{data}, which is exactly C{commands}, as it is: one write
        and one place in the reply queue for the whole pipeline, and no
        encoding.  Only for the plain case: one backend, and commands that
        need nothing of rmux but forwarding, in a client with no state.

        @return: whether it did; if not, nothing was done.
        """
        pool = self.router.single
        if (
            pool is None
            or self.held is not None
            or self.multi is not None
            or self.pin is not None
            or self.usedPubSub
            or not self.authenticated
        ):
            return False
        factory = self.factory
        arities = factory.plainArities
        for args in commands:
            arity = arities.get(args[0], _UNKNOWN)
            if arity is _UNKNOWN:
                arity = factory.learnPlainArity(args[0])
            if arity is None:
                return False
            if (len(args) != arity) if arity >= 0 else (len(args) < -arity):
                return False
        count = len(commands)
        factory.stats.commands += count
        slot = ReplySlot(self)
        self.queue.append(slot)
        waiter = slot if count == 1 else _Pipeline(slot, count)
        self.router.sendPayload(pool, data, waiter, self, self.db, self.protocolVersion, count)
        return True

    # Replies, in request order

    def reply(self, data):
        """
        Queue a reply that is ready now.
        """
        if self.queue:
            self.queue.append(ReplySlot(self, data))
        elif not self.disconnected:
            # Through the coalescer, like backend replies: a reply that is
            # ready now must not overtake one still held back there.
            stats = self.factory.stats
            stats.bytesOut += len(data)
            stats.responses += 1
            coalescer.write(self.transport, data)
            if self.paused:
                self._checkOutputLimit()

    def slotFilled(self, slot):
        """
        A backend filled C{slot}: write every reply that is now at the head.
        """
        queue = self.queue
        if not queue or queue[0] is not slot:
            return
        # A written slot keeps no reply: the connection affinity may hold
        # the slot until the client's next request, and a reply may be big.
        out = [slot.data]
        slot.data = _WRITTEN
        queue.popleft()
        while queue and queue[0].data is not None:
            slot = queue.popleft()
            out.append(slot.data)
            slot.data = _WRITTEN
        if self.disconnected:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        stats = self.factory.stats
        stats.bytesOut += len(data)
        stats.responses += len(out)
        coalescer.write(self.transport, data)
        if self.paused:
            self._checkOutputLimit()
        if self.readingPaused and len(queue) <= self.factory.maxPending // 2:
            self._resumeReading()
        if self.closeWhenDrained and not queue:
            self.transport.loseConnection()

    def closeAfterReplies(self):
        """
        Stop reading, and close once every queued reply has been written.
        """
        self.closing = True
        if self.queue:
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
            # An earlier command must finish first (a blocking command, a
            # transaction, a delayed AUTH failure): Redis would not read on.
            self.held.append(args)
            return
        stats = self.factory.stats
        stats.commands += 1
        spec = self.table.lookup(args)
        if spec is None:
            stats.requestsByClass["invalid"] += 1
            self._transactionError()
            self.reply(self._unknown(args))
            return
        if not spec.checkArity(len(args)):
            stats.requestsByClass["invalid"] += 1
            self._transactionError()
            self.reply(C.wrongArityError(spec.name))
            return
        name = spec.name
        if not self.authenticated and name not in _WITHOUT_AUTH:
            stats.requestsByClass["invalid"] += 1
            self._transactionError()
            self.reply(NOAUTH)
            return
        if self.multi is not None and name not in _TRANSACTION_CONTROL:
            stats.requestsByClass["stateful"] += 1
            self._queueInTransaction(args, spec)
            return
        if self.usedPubSub and name not in _WHILE_SUBSCRIBED and self.subscribedResp2:
            stats.requestsByClass["invalid"] += 1
            self.reply(
                errorReply(
                    "Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                    "PING / QUIT / RESET are allowed in this context" % (name,)
                )
            )
            return
        policy = spec.policy
        if policy == C.FORWARD:
            self.forward(args, spec, payload)
        elif policy == C.LOCAL:
            stats.requestsByClass["local"] += 1
            self.lastCommand = name
            getattr(self, "local_" + name.replace("|", "_").replace("-", "_"))(args)
        elif policy == C.BLOCKING:
            if spec.isBlocking(args):
                stats.requestsByClass["blocking"] += 1
                self.blocking(args, spec)
            else:
                self.forward(args, spec)
        elif policy == C.STATEFUL and name in _STATEFUL_HANDLERS:
            stats.requestsByClass["stateful"] += 1
            self.lastCommand = name
            getattr(self, "stateful_" + name)(args, spec)
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
            self.reply(self.refusal(spec))

    def newSlot(self):
        """
        A place in the reply queue for a reply that will be ready later.
        """
        slot = ReplySlot(self)
        self.queue.append(slot)
        return slot

    def subscriptionsSettled(self):
        """
        The hub has finished a (un)subscribe that waited for a backend.
        """
        if self.held is not None:
            self.release()

    @property
    def subscribedResp2(self):
        hub = self.factory.hub
        return (
            self.usedPubSub
            and self.protocolVersion == 2
            and hub is not None
            and hub.isSubscribed(self)
        )

    def forward(self, args, spec, payload=None):
        """
        Send a command to the server that holds its keys: on the client's
        dedicated connection if it is pinned to that server, else through
        the router.
        """
        slot = ReplySlot(self)
        self.queue.append(slot)
        name = spec.name
        if name in _SCRIPT_SOURCES:
            self.factory.rememberScript(args[2] if name == "script|load" else args[1])
        elif name in _SHA_COMMANDS:
            slot = _NoScriptRetry(self, slot, args, spec)
        pin = self.pin
        if pin is not None:
            pool = self.router.poolForCommand(args, spec)
            if pool is None or pool is pin.pool:
                self.sendDedicated(pin.connection, args, slot)
                return
        self.router.route(args, spec, slot, self.db, self.protocolVersion, payload)

    def forwardInternal(self, args, placeBy, spec, waiter):
        """
        Send C{args} to the server C{placeBy} (a command of C{spec}) goes
        to, for rmux's own purposes (EVALSHA's retry).
        """
        pin = self.pin
        pool = self.router.poolForCommand(placeBy, spec)
        if pool is None:
            pool = self.router.anyPool()
        if isinstance(pool, bytes):
            waiter.fill(pool)
        elif pin is not None and pool is pin.pool:
            self.sendDedicated(pin.connection, args, waiter)
        else:
            self.router.send(pool, args, waiter, self, self.db, self.protocolVersion)

    def sendDedicated(self, connection, args, waiter):
        pool = connection.pool
        db = self.db if pool.fixedDb is None else pool.fixedDb
        connection.send(encodeCommand(args), waiter, db, self.protocolVersion)

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

    # Dedicated connections: transactions and blocking commands

    def _checkout(self, pool, slot, then):
        """
        Take a dedicated connection of C{pool} for this client, holding its
        later commands meanwhile; C{then(connection)} runs once it is ours.
        """
        self.hold()

        def got(connection):
            if self.disconnected:
                pool.checkin(connection)
                return
            then(connection)

        def failed(reason):
            if reason.check(PoolExhausted):
                message = str(reason.value)
            else:
                message = "rmux: cannot connect to backend %s: %s" % (
                    pool.address, reason.getErrorMessage())
            slot.fill(errorReply(message))
            self.release()

        pool.checkout().addCallbacks(got, failed)

    def _targetPool(self, args, spec):
        pool = self.router.poolForCommand(args, spec)
        if pool is None:
            pool = self.router.anyPool()
        return pool

    def blocking(self, args, spec):
        """
        Run a blocking command on a dedicated connection, with its own
        timeout instead of the remote read timeout; the client's later
        commands wait for it, as they would on Redis.
        """
        pin = self.pin
        pool = self._targetPool(args, spec)
        if isinstance(pool, bytes):
            self.reply(pool)
            return
        slot = self.newSlot()

        def run(connection):
            connection.readTimeout = blockingReadTimeout(args, spec.name, pool.readTimeout)
            self.blockedOn = connection
            self.sendDedicated(
                connection, args, _Blocked(self, slot, connection, pin is None)
            )

        if pin is not None and pin.pool is pool:
            self.hold()
            run(pin.connection)
        else:
            self._checkout(pool, slot, run)

    def stateful_watch(self, args, spec):
        pool = self._targetPool(args, spec)
        if isinstance(pool, bytes):
            self.reply(pool)
            return
        pin = self.pin
        slot = self.newSlot()
        if pin is not None:
            if pool is not pin.pool:
                slot.fill(
                    errorReply(
                        "rmux: WATCH keys must live on the server of the keys "
                        "already watched"
                    )
                )
                return
            self.sendDedicated(pin.connection, args, slot)
            return

        def run(connection):
            self.pin = _Pin(pool, connection)
            self.sendDedicated(connection, args, slot)
            self.release()

        self._checkout(pool, slot, run)

    def stateful_unwatch(self, args, spec):
        if self.pin is None:
            self.reply(resp.OK)
            return
        slot = self.newSlot()
        self._unpin(slot)

    def stateful_multi(self, args, spec):
        if self.multi is not None:
            self.reply(resp.error(b"ERR MULTI calls can not be nested"))
            return
        self.multi = []
        self.multiFailed = False
        self.reply(resp.OK)

    def stateful_discard(self, args, spec):
        if self.multi is None:
            self.reply(resp.error(b"ERR DISCARD without MULTI"))
            return
        self.multi = None
        if self.pin is not None:
            self._unpin(None)
        self.reply(resp.OK)

    def _queueInTransaction(self, args, spec):
        name = spec.name
        if name == "watch":
            self.reply(resp.error(b"ERR WATCH inside MULTI is not allowed"))
            return
        policy = spec.policy
        if policy in (C.FORWARD, C.BLOCKING) or name in ("ping", "echo"):
            self.multi.append((args, spec))
            self.reply(QUEUED)
            return
        self.multiFailed = True
        self.reply(
            errorReply(
                "rmux: %s cannot be queued in a transaction"
                % (name.upper().replace("|", " "),)
            )
        )

    def _transactionError(self):
        if self.multi is not None:
            self.multiFailed = True

    def stateful_exec(self, args, spec):
        """
        Send the queued transaction, framed by MULTI and EXEC, to the one
        server all its keys live on, on a dedicated connection.
        """
        if self.multi is None:
            self.reply(resp.error(b"ERR EXEC without MULTI"))
            return
        queued, self.multi = self.multi, None
        pin = self.pin
        if self.multiFailed:
            if pin is not None:
                self._unpin(None)
            self.reply(EXECABORT)
            return
        pool = pin.pool if pin is not None else None
        for queuedArgs, queuedSpec in queued:
            target = self.router.poolForCommand(queuedArgs, queuedSpec)
            if target is None:
                continue
            if isinstance(target, bytes) or (pool is not None and target is not pool):
                if pin is not None:
                    self._unpin(None)
                self.reply(EXECABORT_SPREAD)
                return
            pool = target
        if pool is None:
            pool = self.router.anyPool()
            if isinstance(pool, bytes):
                self.reply(pool)
                return
        slot = self.newSlot()
        commands = [[b"MULTI"]] + [a for a, s in queued] + [args]

        def run(connection):
            self.pin = None
            ignore = _Ignore()
            for command in commands[:-1]:
                self.sendDedicated(connection, command, ignore)
            self.sendDedicated(connection, commands[-1], _Executed(self, slot, connection))

        if pin is not None:
            self.hold()
            run(pin.connection)
        else:
            self._checkout(pool, slot, run)

    def stateful_reset(self, args, spec):
        """
        RESET: leave every transaction, subscription and setting, as a new
        connection would be.
        """
        self.multi = None
        if self.pin is not None:
            self._unpin(None)
        if self.factory.hub is not None:
            self.factory.hub.clientGone(self)
        self.db = 0
        self.protocolVersion = 2
        self.name = None
        self.authenticated = not self.factory.auth.required
        self.reply(b"+RESET\r\n")

    def _unpin(self, slot):
        """
        Give the pinned connection back after UNWATCH, whose reply goes to
        C{slot} (or nowhere).
        """
        pin, self.pin = self.pin, None
        connection = pin.connection
        if connection.broken:
            if slot is not None:
                slot.fill(resp.OK)
            return
        self.sendDedicated(connection, [b"UNWATCH"], _Unwatched(slot, connection))

    def _unknown(self, args):
        container = args[0].lower()
        if len(args) > 1 and self.table.hasSubcommands(container):
            return C.unknownSubcommandError(container.decode("latin-1"), args[1])
        return C.unknownCommandError(args)

    def refusal(self, spec):
        """
        The error for a command rmux will not run on a shared connection.
        """
        name = spec.name.upper().replace("|", " ")
        policy = spec.policy
        if policy == C.REFUSED:
            return errorReply(spec.reason or "%s is not allowed through rmux" % (name,))
        if policy == C.PUBSUB:
            return errorReply(
                "%s is not supported by rmux yet: subscriptions would tie up a "
                "shared backend connection" % (name,)
            )
        if policy == C.BLOCKING:
            return errorReply(
                "%s is not supported by rmux yet: blocking commands would stall "
                "a shared backend connection" % (name,)
            )
        return errorReply(
            "%s is not supported by rmux yet: it changes the state of the "
            "connection, which rmux shares between clients" % (name,)
        )

    # Commands rmux answers itself

    def local_ping(self, args):
        if len(args) > 2:
            self.reply(C.wrongArityError("ping"))
        elif self.subscribedResp2:
            # Redis answers a subscribed RESP2 client in the push layout.
            self.reply(
                b"*2\r\n$4\r\npong\r\n"
                + resp.bulkString(args[1] if len(args) == 2 else b"")
            )
        elif len(args) == 2:
            self.reply(resp.bulkString(args[1]))
        else:
            self.reply(resp.PONG)

    def local_echo(self, args):
        self.reply(resp.bulkString(args[1]))

    def local_quit(self, args):
        self.reply(resp.OK)
        self.closeAfterReplies()

    def local_select(self, args):
        db = _decimal(args[1])
        if db is None:
            self.reply(resp.error(b"ERR value is not an integer or out of range"))
            return
        databases = self.factory.databases()
        if db < 0 or (databases is not None and db >= databases) or db >= 2**31:
            self.reply(resp.error(b"ERR DB index is out of range"))
            return
        self.db = db
        self.reply(resp.OK)

    def local_info(self, args):
        sections = [a.decode("latin-1").lower() for a in args[1:]]
        text = self.factory.infoText(sections)
        self.reply(resp.verbatimString(text.encode("utf-8"), self.protocolVersion))

    def local_auth(self, args):
        if len(args) == 2:
            username, password = None, args[1]
        else:
            username, password = args[1], args[2]
        auth = self.factory.auth
        if username is None and not auth.acceptsSingleArgument:
            self.reply(NOPASSWORD)
            return
        reply = self._authenticate(username, password)
        if reply is not None:
            self.reply(reply)

    def _authenticate(self, username, password):
        """
        Check credentials in constant time.  A failure's reply is delayed
        more for each consecutive failure on this connection, and the
        client's later commands wait for it, so a pipeline of guesses is as
        slow as guessing one by one.

        @return: C{+OK}, or L{None} when a delayed WRONGPASS is queued.
        """
        auth = self.factory.auth
        if auth.check(username, password):
            self.authenticated = True
            self.authFailures = 0
            self.parser.authenticated()
            return resp.OK
        self.authFailures += 1
        self.factory.stats.authFailures += 1
        delay = auth.failureDelay(self.authFailures)
        if not delay:
            return WRONGPASS
        slot = self.newSlot()
        self.hold()

        def answer():
            slot.fill(WRONGPASS)
            self.release()

        self.clock.callLater(delay, answer)
        return None

    def local_hello(self, args):
        version = self.protocolVersion
        position = 1
        if len(args) > 1:
            version = _decimal(args[1])
            if version is None:
                self.reply(
                    resp.error(b"ERR Protocol version is not an integer or out of range")
                )
                return
            if version not in (2, 3):
                self.reply(resp.error(b"NOPROTO unsupported protocol version"))
                return
            position = 2
        name = None
        credentials = None
        while position < len(args):
            option = args[position].lower()
            remaining = len(args) - position - 1
            if option == b"auth" and remaining >= 2:
                credentials = (args[position + 1], args[position + 2])
                position += 3
            elif option == b"setname" and remaining >= 1:
                name = args[position + 1]
                if not _isValidName(name):
                    self.reply(self.BADNAME)
                    return
                position += 2
            else:
                self.reply(
                    errorReply(
                        "Syntax error in HELLO option '%s'"
                        % (args[position].decode("latin-1"),)
                    )
                )
                return
        if credentials is not None:
            reply = self._authenticate(*credentials)
            if reply is None:
                return
            if reply != resp.OK:
                self.reply(reply)
                return
        elif not self.authenticated:
            self.reply(HELLO_NOAUTH)
            return
        if name is not None:
            self.name = name or None
        self.protocolVersion = version
        facts = self.factory.backendFacts()
        bulk = resp.bulkString
        pairs = [
            (bulk(b"server"), bulk(b"redis")),
            (bulk(b"version"), bulk(facts["version"].encode())),
            (bulk(b"proto"), resp.integer(version)),
            (bulk(b"id"), resp.integer(self.id)),
            (bulk(b"mode"), bulk(b"standalone")),
            (bulk(b"role"), bulk(b"master")),
            (bulk(b"modules"), resp.arrayReply([])),
        ]
        self.reply(resp.mapReply(pairs, version))

    BADNAME = resp.error(
        b"ERR Client names cannot contain spaces, newlines or special characters."
    )

    def local_client_setname(self, args):
        name = args[2]
        if not _isValidName(name):
            self.reply(self.BADNAME)
            return
        self.name = name or None
        self.reply(resp.OK)

    def local_client_getname(self, args):
        if self.name is None:
            self.reply(resp.nullReply(self.protocolVersion))
        else:
            self.reply(resp.bulkString(self.name))

    def local_client_id(self, args):
        self.reply(resp.integer(self.id))

    def local_client_setinfo(self, args):
        attribute = args[2].lower()
        value = args[3]
        if attribute not in (b"lib-name", b"lib-ver"):
            self.reply(
                errorReply("Unrecognized option '%s'" % (args[2].decode("latin-1"),))
            )
            return
        if not _isValidName(value):
            self.reply(
                errorReply(
                    "%s cannot contain spaces, newlines or special characters."
                    % (attribute.decode(),)
                )
            )
            return
        if attribute == b"lib-name":
            self.libName = value
        else:
            self.libVersion = value
        self.reply(resp.OK)

    def local_client_info(self, args):
        self.reply(
            resp.verbatimString(self.describe().encode() + b"\n", self.protocolVersion)
        )

    def local_client_list(self, args):
        lines = "".join(c.describe() + "\n" for c in self.factory.clients)
        self.reply(resp.verbatimString(lines.encode(), self.protocolVersion))

    def describe(self):
        """
        This client in the C{key=value} layout of Redis's CLIENT LIST.
        """
        now = self.clock.seconds()

        def text(value):
            return "" if value is None else value.decode("latin-1")

        return (
            "id=%d addr=%s laddr=%s name=%s age=%d idle=%d db=%d resp=%d "
            "qbuf=%d oll=%d cmd=%s lib-name=%s lib-ver=%s"
            % (
                self.id,
                _addressText(self.transport.getPeer()),
                _addressText(self.transport.getHost()),
                text(self.name),
                now - self.createdAt,
                now - self.lastActivity,
                self.db,
                self.protocolVersion,
                self.parser.buffered,
                len(self.queue),
                self.lastCommand if isinstance(self.lastCommand, str) else "NULL",
                text(self.libName),
                text(self.libVersion),
            )
        )

    # Local timeouts and flow control

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
        quiet = self.clock.seconds() - self.lastActivity
        readTimeout, idleTimeout = factory.localReadTimeout, factory.idleTimeout
        if readTimeout and self.parser.buffered and quiet >= readTimeout:
            factory.stats.localTimeouts += 1
            self.reply(errorReply("rmux: request not completed within the local read timeout"))
            self.closeAfterReplies()
            return
        if idleTimeout and not self.queue and quiet >= idleTimeout:
            factory.stats.localTimeouts += 1
            self.transport.loseConnection()
            return
        remaining = [t - quiet for t in (readTimeout, idleTimeout) if t and t > quiet]
        self._armTimer(min(remaining) if remaining else None)

    def pauseProducing(self):
        """
        The client is not reading its replies as fast as they come: stop
        reading its requests (so it cannot make rmux buffer without bound),
        and give it the local write timeout to start again.
        """
        self.paused = True
        self._pauseReading()
        timeout = self.factory.localWriteTimeout
        if timeout and self._writeTimer is None:
            self._writeTimer = self.clock.callLater(timeout, self._writeTimedOut)

    def resumeProducing(self):
        self.paused = False
        if len(self.queue) <= self.factory.maxPending // 2:
            self._resumeReading()
        if self._writeTimer is not None:
            self._writeTimer.cancel()
            self._writeTimer = None

    def _pauseReading(self):
        if not self.readingPaused and not self.disconnected:
            self.readingPaused = True
            self.transport.pauseProducing()

    def _resumeReading(self):
        if self.readingPaused and not self.disconnected and not self.paused:
            self.readingPaused = False
            self.transport.resumeProducing()

    def _checkOutputLimit(self):
        """
        Drop a client whose unsent replies exceed the output limit, before
        it eats the host's memory (Redis's client-output-buffer-limit).
        """
        limit = self.factory.clientOutputLimit
        if not limit:
            return
        transport = self.transport
        buffered = unsentBytes(transport)
        if buffered is not None and buffered > limit:
            self.log.warn(
                "closing client {id}: {buffered} bytes of replies unread, over "
                "the client output limit of {limit}",
                id=self.id, buffered=buffered, limit=limit,
            )
            self.factory.stats.outputLimitDrops += 1
            transport.abortConnection()

    def stopProducing(self):
        pass

    def _writeTimedOut(self):
        self._writeTimer = None
        self.factory.stats.localTimeouts += 1
        self.log.info("closing client {id}: it stopped reading its replies", id=self.id)
        self.transport.abortConnection()


def _authenticatorFor(listener):
    if listener is None:
        return Authenticator()
    return listener.authenticator()


def _addressText(address):
    host = getattr(address, "host", None)
    if host is not None:
        return "%s:%d" % (host, address.port)
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return name or ""


class ProxyFactory(Factory):
    """
    Serves one listener: holds its clients, its router and its settings.

    @ivar router: an object with C{route(args, spec, slot, db,
        protocolVersion)}; see L{rmux.router.Router}.
    """

    protocol = ClientProtocol
    log = Logger()
    #: With --maxProcesses, which worker this is (1..N); None otherwise.
    workerId = None

    #: How many script bodies rmux remembers for EVALSHA's retry.
    maxScripts = 10000

    def __init__(self, reactor, router, table, listener=None, health=None, hub=None):
        self.reactor = reactor
        self.router = router
        self.table = table
        self.listener = listener
        self.health = health
        self.hub = hub
        self.scripts = {}
        self.plainArities = {}
        self.clients = set()
        self._drained = None
        self.stats = ListenerStats()
        self.startedAt = reactor.seconds()
        self._ids = count(1)
        self.configure(listener)

    def configure(self, listener):
        """
        Take the client-side settings of C{listener}: its timeouts, limits
        and credentials.  Called again on a live reload, it applies to every
        client from then on: connected clients keep their connection (and
        an authenticated client its login), new ones get the new parser
        limits.
        """
        timeouts = (getattr(self, "localReadTimeout", 0.0), getattr(self, "idleTimeout", 0.0))
        self.listener = listener
        self.auth = _authenticatorFor(listener)
        ms = lambda name: getattr(listener, name, 0) / 1000.0 if listener else 0.0
        self.localReadTimeout = ms("localReadTimeout")
        self.localWriteTimeout = ms("localWriteTimeout")
        self.idleTimeout = ms("idleTimeout")
        self.maxClients = getattr(listener, "maxClients", 10000)
        self.clientOutputLimit = getattr(listener, "clientOutputLimit", 256 << 20)
        self.shutdownTimeout = getattr(listener, "shutdownTimeout", 5000) / 1000.0
        self.parserLimits = {
            name: getattr(listener, name)
            for name in ("maxBulkLength", "maxArguments", "maxInlineLength")
            if hasattr(listener, name)
        }
        self.firstTimerDelay = self.timerDelay()
        if (self.localReadTimeout, self.idleTimeout) != timeouts:
            for client in list(self.clients):
                client.recheckTimeouts()

    def rememberScript(self, body):
        """
        Remember a script body by its SHA1, as Redis names it, so that an
        EVALSHA that meets NOSCRIPT can load it and retry.
        """
        sha = hashlib.sha1(body).hexdigest().encode()
        scripts = self.scripts
        if sha not in scripts:
            if len(scripts) >= self.maxScripts:
                del scripts[next(iter(scripts))]
            scripts[sha] = body

    def nextClientId(self):
        return next(self._ids)

    #: Replies a client may have outstanding before rmux stops reading its
    #: requests until half of them are written.
    maxPending = 10000

    #: Most command names (as clients spell them) whose pass-through
    #: verdict is remembered.
    maxPlainArities = 4096

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
            and spec.name not in _SCRIPT_SOURCES
            and spec.name not in _SHA_COMMANDS
        ):
            arity = spec.arity
        if len(self.plainArities) < self.maxPlainArities:
            self.plainArities[name] = arity
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

    def clientConnected(self, client):
        self.clients.add(client)
        self.stats.connectionsReceived += 1

    def clientDisconnected(self, client):
        self.clients.discard(client)
        if not self.clients and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

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
        return listenerSnapshot(self, self.router.pools, self.health, self.workerId)

    # INFO

    def infoText(self, sections):
        """
        INFO's text in Redis's C{# Section} / C{key:value} layout.

        @param sections: lowercased section names; empty, C{all},
            C{everything} or C{default} mean all of them.
        """
        available = [
            ("server", self._infoServer),
            ("clients", self._infoClients),
            ("stats", self._infoStats),
            ("replication", lambda snapshot: [("role", "master")]),
            ("backends", self._infoBackends),
        ]
        wanted = set(sections)
        if not wanted or wanted & {"all", "everything", "default"}:
            wanted = {name for name, _ in available}
        # The numbers come from the snapshot the stats port, Prometheus and
        # statsd format too, so that INFO never disagrees with them.
        snapshot = self.snapshot()
        parts = []
        for name, fields in available:
            if name in wanted:
                body = "".join("%s:%s\r\n" % pair for pair in fields(snapshot))
                parts.append("# %s\r\n%s" % (name.capitalize(), body))
        return "\r\n".join(parts)

    def _infoServer(self, snapshot):
        import twisted

        listener = self.listener
        return [
            ("redis_version", self.backendFacts()["version"]),
            ("rmux_version", rmux.__version__),
            ("python_version", sys.version.split()[0]),
            ("twisted_version", twisted.__version__),
            ("process_id", os.getpid()),
            ("worker", self.workerId if self.workerId is not None else 0),
            ("listener", listener.name if listener is not None else ""),
            ("multiplexing", int(bool(listener and listener.multiplexing))),
            ("uptime_in_seconds", int(snapshot["uptime"])),
        ]

    def _infoClients(self, snapshot):
        return [("connected_clients", snapshot["clients"]["current"])]

    def _infoStats(self, snapshot):
        from rmux.stats import REQUEST_CLASSES

        clients, errors = snapshot["clients"], snapshot["errors"]
        byClass = snapshot["requestsByClass"]
        return [
            ("total_connections_received", clients["total"]),
            ("total_commands_processed", snapshot["requests"]),
            ("total_net_input_bytes", snapshot["bytesIn"]),
            ("total_net_output_bytes", snapshot["bytesOut"]),
            ("rejected_commands", errors["refused"]),
            ("rejected_connections", clients["rejected"]),
            ("client_output_limit_drops", errors["outputLimit"]),
            ("protocol_errors", errors["protocol"]),
        ] + [
            ("requests_%s" % (name,), byClass.get(name, 0)) for name in REQUEST_CLASSES
        ] + [
            ("total_responses", snapshot["responses"]),
            ("client_eof", clients["eof"]),
            ("client_errors", clients["errors"]),
            ("local_timeouts", snapshot["timeouts"]),
            ("auth_failures", errors["auth"]),
        ]

    def _infoBackends(self, snapshot):
        """
        One C{backendN} line per backend, with its latency's p50 and p99 in
        microseconds as the histogram bounds them: 0 before any reply,
        C{inf} beyond the histogram's last bound.
        """
        from rmux.metrics import percentile

        def microseconds(latency, q):
            seconds = percentile(latency, q)
            if seconds is None:
                return "0"
            if seconds == float("inf"):
                return "inf"
            return "%d" % (round(seconds * 1000000),)

        backends = snapshot["backends"]
        active = sum(1 for b in backends if b["state"] == "up")
        fields = [("active_endpoints", active), ("total_endpoints", len(backends))]
        for index, b in enumerate(backends):
            fields.append(
                (
                    "backend%d" % (index,),
                    "address=%s,status=%s,connections=%d,connects=%d,"
                    "connect_failures=%d,errors=%d,timeouts=%d,requests=%d,"
                    "responses=%d,error_replies=%d,failed_requests=%d,eof=%d,"
                    "ejections=%d,in_queue=%d,out_queue=%d,"
                    "latency_p50_usec=%s,latency_p99_usec=%s"
                    % (
                        b["address"],
                        b["state"],
                        b["connections"],
                        b["connects"],
                        b["connectFailures"],
                        b["errors"],
                        b["timeouts"],
                        b["requests"],
                        b["responses"],
                        b["errorReplies"],
                        b["failedRequests"],
                        b["eof"],
                        b["ejections"],
                        b["inQueue"],
                        b["outQueue"],
                        microseconds(b["latency"], 0.5),
                        microseconds(b["latency"], 0.99),
                    ),
                )
            )
        return fields
