# -*- test-case-name: tests.test_session -*-
"""
One client's state on the backend side, as a small state machine.

A client of rmux shares its backend connections with every other client,
so what Redis keeps per connection rmux keeps per client, in a L{Session}:

  - the db and the RESP version its requests must run in; the pool applies
    them lazily on whichever connection carries the next request;
  - its I{affinity}: the connection that carries its requests still in
    flight to each server, so that a GET never overtakes its own SET;
  - the state that cannot live on a shared connection at all, held on a
    connection of its own (I{dedicated}, checked out of the server's pool):

      - I{watching}: after WATCH, until EXEC, DISCARD, UNWATCH or RESET;
      - I{in a transaction}: after MULTI, commands are queued here, and
        EXEC sends them, framed by MULTI and EXEC, to the one server all
        their keys live on;
      - I{blocked}: a blocking command (BLPOP, XREAD BLOCK, WAIT...) runs
        with its own timeout, the client's later commands held meanwhile.

The session talks only to interfaces: its client (L{IClient}), the router
(L{IRouter}), pools and connections (L{IBackendPool},
L{IBackendConnection}), and replies go to L{IReplyWaiter}s; so it is
tested with fakes and a L{Clock}, without a Redis server.
"""

import hashlib

from zope.interface import implementer

from rmux import resp
from rmux.interfaces import IReplyWaiter, IRequestSender
from rmux.ownconnections import OwnConnections
from rmux.pubsub import RECOUNTED
from rmux.transaction import Transaction
from rmux.pool import PoolExhausted
from rmux.replies import IgnoredReply
from rmux.resp import encodeCommand, errorReply
from rmux.router import PlacementError

__all__ = ["Session", "ScriptCache", "SESSION_COMMANDS", "blockingReadTimeout"]


#: Commands that carry a script body rmux remembers for EVALSHA's sake.
SCRIPT_SOURCES = frozenset(["script|load", "eval", "eval_ro"])
SHA_COMMANDS = frozenset(["evalsha", "evalsha_ro"])

#: Sent before a command a cluster's C{-ASK} sent to another node.
_ASKING = [b"ASKING"]

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


class ScriptCache:
    """
    Script bodies seen going through (SCRIPT LOAD, EVAL), by their SHA1 as
    Redis names them, so that an EVALSHA that meets NOSCRIPT can load the
    script and try once more; the oldest are forgotten beyond L{maximum}.
    """

    maximum = 10000

    def __init__(self):
        self.bodies = {}

    def remember(self, body):
        sha = hashlib.sha1(body).hexdigest().encode()
        bodies = self.bodies
        if sha not in bodies:
            if len(bodies) >= self.maximum:
                del bodies[next(iter(bodies))]
            bodies[sha] = body

    def get(self, sha):
        """
        @param sha: the SHA1 as a client sent it, in either case.
        @return: the body, or L{None}.
        """
        return self.bodies.get(sha.lower())


class _Pin:
    """
    A client's dedicated connection while it WATCHes keys.
    """

    __slots__ = ("pool", "connection")

    def __init__(self, pool, connection):
        self.pool = pool
        self.connection = connection


@implementer(IReplyWaiter)
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
        self.connection.pool.checkin(self.connection, clean=reply == resp.OK)


@implementer(IReplyWaiter)
class _Blocked:
    """
    Waiter for a blocking command on a dedicated connection.
    """

    __slots__ = ("session", "client", "slot", "connection", "giveBack", "data", "command",
                 "redirects")

    def __init__(self, session, slot, connection, giveBack, command, redirects):
        self.session = session
        self.client = session.client
        self.slot = slot
        self.connection = connection
        self.giveBack = giveBack
        self.data = None
        #: C{(args, spec)}, to place it again after a cluster's MOVED.
        self.command = command
        self.redirects = redirects

    def fill(self, reply):
        self.data = reply
        session = self.session
        session.blockedOn = None
        connection = self.connection
        connection.readTimeout = connection.pool.readTimeout
        if self.giveBack:
            connection.pool.checkin(connection)
            # A node refuses a slot it no longer serves (or a key it has
            # migrated) before blocking: the command goes where it says.
            redirect = None
            if session.client is not None:
                redirect = session.router.blockingRedirect(reply, self.redirects)
            if redirect is not None:
                args, spec = self.command
                session.blocking(args, spec, self.slot, self.redirects + 1, redirect)
                return
        self.slot.fill(reply)
        self.client.release()


@implementer(IReplyWaiter)
class _NoScriptRetry:
    """
    Waiter for EVALSHA: if the server does not know the script but rmux saw
    its body go through (SCRIPT LOAD or EVAL), load it there and try once
    more (the server restarted, or the script was loaded on another one).
    """

    __slots__ = ("session", "slot", "args", "spec", "data", "retried")

    def __init__(self, session, slot, args, spec):
        self.session = session
        self.slot = slot
        self.args = args
        self.spec = spec
        self.data = None
        self.retried = False

    def fill(self, reply):
        session = self.session
        if not self.retried and reply.startswith(b"-NOSCRIPT"):
            body = session.scripts.get(self.args[1])
            if body is not None and session.client is not None:
                self.retried = True
                load = [b"SCRIPT", b"LOAD", body]
                session.forwardInternal(load, self.args, self.spec, IgnoredReply())
                session.forwardInternal(self.args, self.args, self.spec, self)
                return
        self.data = reply
        self.slot.fill(reply)


@implementer(IRequestSender)
class Session:
    """
    One client's state on the backend side; see the module docstring.

    @ivar db: the db the client has SELECTed.
    @ivar protocolVersion: 2, or 3 after C{HELLO 3}.
    @ivar affinity: pool -> C{(waiter, connection)} of the client's latest
        request to that server.
    @ivar pin: the dedicated connection held while WATCHing, or L{None}.
    @ivar multi: the L{rmux.transaction.Transaction} since MULTI, or
        L{None} outside one.
    @ivar blockedOn: the connection a blocking command runs on, or L{None}.
    @ivar client: the client served, L{None} once it has gone.
    """

    blockedOn = None

    def __init__(self, client, router, scripts, hub=None):
        """
        @param client: the L{rmux.interfaces.IClient} served.
        @param router: the listener's L{rmux.interfaces.IRouter}.
        @param scripts: the listener's L{ScriptCache}.
        @param hub: the listener's L{rmux.pubsub.SubscriptionHub}, if any.
        """
        self.client = client
        self.router = router
        self.scripts = scripts
        self.hub = hub
        self.affinity = {}
        self.db = 0
        self.protocolVersion = 2
        self.pin = self.multi = self.own = None

    @property
    def isPlain(self):
        """
        Whether no dedicated connection or transaction is involved: the
        client's requests may go straight to the shared connections.
        """
        return self.pin is None and self.multi is None and self.own is None

    def ownConnections(self):
        """
        The client's own connections (see L{rmux.ownconnections}), made on
        first use.
        """
        if self.own is None:
            self.own = OwnConnections(self, self.hub)
        return self.own

    @property
    def tracking(self):
        return self.own.tracking if self.own is not None else None

    @property
    def redirect(self):
        return self.own.redirect if self.own is not None else -1

    @property
    def noEvict(self):
        return self.own is not None and b"no-evict" in self.own.flags

    # Sending, with per-client connection affinity

    def send(self, pool, payload, waiter, count=1):
        """
        Send on C{pool}, keeping this client's requests to one server on one
        connection while any of them is unanswered: Redis runs each
        connection in order but interleaves connections, so a GET sent on
        another connection could overtake its own SET.
        """
        if self.own is not None:
            self.own.send(pool, payload, waiter, count)
            return
        affinity = self.affinity
        previous = affinity.get(pool)
        after = None
        if previous is not None and previous[0].data is None:
            after = previous[1]
        connection = pool.send(payload, waiter, self.db, self.protocolVersion, after, count)
        affinity[pool] = (waiter, connection)

    def forward(self, args, spec, payload=None):
        """
        Send a command to the server that holds its keys: on the dedicated
        connection if the client is pinned to that server, else through
        the router.
        """
        slot = self.client.newSlot()
        name = spec.name
        if name in SCRIPT_SOURCES:
            self.scripts.remember(args[2] if name == "script|load" else args[1])
        elif name == "script|flush":
            # The client wants its scripts gone: a later EVALSHA of one
            # must meet NOSCRIPT, not be loaded again by rmux.
            self.scripts.bodies.clear()
        elif name in SHA_COMMANDS:
            slot = _NoScriptRetry(self, slot, args, spec)
        elif name in RECOUNTED and self.hub is not None:
            slot = self.hub.recount(name, args, slot)
        pin = self.pin
        if pin is not None:
            try:
                pool = self.router.poolForCommand(args, spec)
            except PlacementError:
                pool = False
            if pool is None or pool is pin.pool:
                self.sendDedicated(pin.connection, args, slot)
                return
        self.router.route(args, spec, slot, self, payload)

    def forwardInternal(self, args, placeBy, spec, waiter):
        """
        Send C{args} to the server C{placeBy} (a command of C{spec}) goes
        to, for rmux's own purposes (EVALSHA's retry).
        """
        pin = self.pin
        try:
            pool = self._targetPool(placeBy, spec)
        except PlacementError as e:
            waiter.fill(e.reply)
            return
        if pin is not None and pool is pin.pool:
            self.sendDedicated(pin.connection, args, waiter)
        else:
            self.send(pool, resp.encodeRequest(args), waiter)

    def sendDedicated(self, connection, args, waiter):
        pool = connection.pool
        db = self.db if pool.fixedDb is None else pool.fixedDb
        connection.send(encodeCommand(args), waiter, db, self.protocolVersion)

    def _targetPool(self, args, spec):
        pool = self.router.poolForCommand(args, spec)
        if pool is None:
            pool = self.router.anyPool()
        return pool

    def _checkout(self, pool, slot, then):
        """
        Take a dedicated connection of C{pool} for this client, holding its
        later commands meanwhile; C{then(connection)} runs once it is ours.
        """
        client = self.client
        client.hold()

        def got(connection):
            if client.disconnected:
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
            client.release()

        pool.checkout().addCallbacks(got, failed)

    # Blocking commands

    def blocking(self, args, spec, slot=None, redirects=0, redirect=None):
        """
        Run a blocking command on a dedicated connection, with its own
        timeout instead of the remote read timeout; the client's later
        commands wait for it, as they would on Redis.

        @param slot: the command's place in the reply queue, when it is
            sent again after a cluster's redirection (C{redirects} times).
        @param redirect: C{(pool, asking)}, where that redirection said.
        """
        pin = self.pin
        asking = False
        try:
            if redirect is None:
                pool = self._targetPool(args, spec)
            else:
                pool, asking = redirect
        except PlacementError as e:
            if slot is None:
                self.client.reply(e.reply)
            else:
                slot.fill(e.reply)
                self.client.release()
            return
        if slot is None:
            slot = self.client.newSlot()

        def run(connection):
            connection.readTimeout = blockingReadTimeout(args, spec.name, pool.readTimeout)
            self.blockedOn = connection
            connection.blocking = True
            if asking:
                self.sendDedicated(connection, _ASKING, IgnoredReply())
            self.sendDedicated(connection, args, _Blocked(
                self, slot, connection, pin is None, (args, spec), redirects))

        if pin is not None and pin.pool is pool:
            self.client.hold()
            run(pin.connection)
        else:
            self._checkout(pool, slot, run)

    # Transactions

    def watch(self, args, spec):
        try:
            pool = self._targetPool(args, spec)
        except PlacementError as e:
            self.client.reply(e.reply)
            return
        pin = self.pin
        slot = self.client.newSlot()
        if pin is not None:
            if pool is not pin.pool:
                slot.fill(errorReply(
                    "rmux: WATCH keys must live on the server of the keys already watched"))
                return
            self.sendDedicated(pin.connection, args, slot)
            return

        def run(connection):
            self.pin = _Pin(pool, connection)
            self.sendDedicated(connection, args, slot)
            self.client.release()

        self._checkout(pool, slot, run)

    def unwatch(self, args, spec):
        if self.pin is None:
            self.client.reply(resp.OK)
            return
        self._unpin(self.client.newSlot())

    def startTransaction(self, args, spec):
        if self.multi is not None:
            self.client.reply(resp.error(b"ERR MULTI calls can not be nested"))
            return
        self.multi = Transaction(self)
        self.client.reply(resp.OK)

    def discard(self, args, spec):
        if self.multi is None:
            self.client.reply(resp.error(b"ERR DISCARD without MULTI"))
            return
        self.multi = None
        self._dropPin()
        self.client.reply(resp.OK)

    def queue(self, args, spec):
        """
        Queue a command of the transaction (see L{rmux.transaction}).
        """
        self.multi.queue(args, spec)

    def commandFailed(self):
        """
        A command was refused before it could be queued: inside a
        transaction, EXEC must then fail.
        """
        if self.multi is not None:
            self.multi.failed = True

    def execute(self, args, spec):
        """
        EXEC: run the queued transaction (see L{rmux.transaction}).
        """
        if self.multi is None:
            self.client.reply(resp.error(b"ERR EXEC without MULTI"))
            return
        transaction, self.multi = self.multi, None
        transaction.execute(args)

    def reset(self):
        """
        RESET's share: leave any transaction and dedicated connection, and
        go back to db 0 and RESP2.
        """
        self.multi = None
        self._dropPin()
        if self.own is not None:
            self.own.close()
        self.db = 0
        self.protocolVersion = 2

    def _dropPin(self):
        if self.pin is not None:
            self._unpin(None)

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

    # The end

    def forgetPool(self, pool):
        """
        C{pool} is out of service: nothing will be sent to it again.
        """
        self.affinity.pop(pool, None)

    def close(self):
        """
        The client has gone: give back what it held, and forget the client
        (so that nothing here keeps it alive, and it is freed at once).
        """
        self.affinity.clear()
        if self.blockedOn is not None:
            # It may stay blocked forever: nobody else may have it.
            self.blockedOn.abort()
        self._dropPin()
        if self.own is not None:
            self.own.close()
        self.client = None


#: The transaction commands a session runs, by name, for the dispatcher.
SESSION_COMMANDS = {
    "multi": Session.startTransaction,
    "exec": Session.execute,
    "discard": Session.discard,
    "watch": Session.watch,
    "unwatch": Session.unwatch,
}
