# -*- test-case-name: tests.test_session -*-
"""
A client's own connections: the connection state Redis keeps per
connection that a shared, pooled connection cannot hold.

  - C{CLIENT TRACKING} (client-side caching): the server remembers which
    keys a connection read and sends it invalidations;
  - C{CLIENT NO-EVICT}, C{CLIENT NO-TOUCH}, C{READONLY}/C{READWRITE}:
    flags of the connection;
  - C{MONITOR}: the connection becomes a feed of every command the server
    runs.

While a client has any of it, every request it sends goes on a connection
of its own to the server the request is placed on (L{OwnConnections.send},
which the session uses in place of the shared pool): one per server,
checked out of the server's pool of dedicated connections on first use,
and set up with the client's state first (L{OwnConnections.setup}), so a
client whose keys live on several servers has the same state on each.
When the state ends (C{CLIENT TRACKING OFF}, C{RESET}, the client leaves)
the connections are reset and given back.

C{CLIENT TRACKING ... REDIRECT id} names an rmux client; on each server it
becomes the id of rmux's own subscriber connection there (see
L{rmux.pubsub}), which delivers the invalidations to every rmux client
subscribed to C{__redis__:invalidate} on it.
"""

from zope.interface import implementer

from rmux import resp
from rmux.interfaces import IReplyWaiter
from rmux.pool import PoolExhausted
from rmux.replies import IgnoredReply
from rmux.resp import encodeCommand, errorReply

__all__ = ["OwnConnections"]

RESET = b"+RESET\r\n"


class _OwnConnection:
    """
    One server's connection of the client's own, usable at once: requests
    wait here until it is checked out and set up.
    """

    def __init__(self, owner, pool):
        self.owner = owner
        self.pool = pool
        self.connection = None
        self.queued = []
        self.failure = None
        pool.checkout().addCallbacks(self._ready, self._failed)

    def _ready(self, connection):
        owner = self.owner
        if owner.closed:
            self.pool.checkin(connection, clean=False)
            return
        self.connection = connection
        connection.onPush = owner.pushReceived
        for args in owner.setup(self.pool):
            self._send(connection, encodeCommand(args), IgnoredReply())
        queued, self.queued = self.queued, []
        for payload, waiter, count in queued:
            self._send(connection, payload, waiter, count)

    def _failed(self, reason):
        if reason.check(PoolExhausted):
            message = str(reason.value)
        else:
            message = "rmux: cannot connect to backend %s: %s" % (
                self.pool.address, reason.getErrorMessage())
        self.failure = errorReply(message)
        self.owner.lost(self.pool)
        queued, self.queued = self.queued, []
        for payload, waiter, count in queued:
            for _ in range(count):
                waiter.fill(self.failure)

    def _send(self, connection, payload, waiter, count=1):
        session = self.owner.session
        db = session.db if self.pool.fixedDb is None else self.pool.fixedDb
        connection.send(payload, waiter, db, session.protocolVersion, count)

    def send(self, payload, waiter, count=1):
        if self.connection is not None:
            self._send(self.connection, payload, waiter, count)
        elif self.failure is not None:
            for _ in range(count):
                waiter.fill(self.failure)
        else:
            self.queued.append((payload, waiter, count))

    def give(self, clean):
        """
        Give the connection back: reset on the server first when C{clean},
        else closed.
        """
        connection = self.connection
        if connection is None or connection.broken:
            return
        connection.onPush = None
        if not clean or connection.relay is not None:
            self.pool.checkin(connection, clean=False)
            return
        self._send(connection, encodeCommand([b"RESET"]), _Reset(connection))


@implementer(IReplyWaiter)
class _Reset:
    """
    The waiter for the RESET that cleans a client's own connection: the
    server is back at db 0 and RESP2, and the connection goes back.
    """

    __slots__ = ("connection", "data")

    def __init__(self, connection):
        self.connection = connection
        self.data = None

    def fill(self, reply):
        self.data = reply
        connection = self.connection
        if reply == RESET:
            connection.db = 0
            connection.protocolVersion = 2
        connection.pool.checkin(connection, clean=reply == RESET)


@implementer(IReplyWaiter)
class _StateChange:
    """
    One state command sent on every own connection: its reply is the
    first error, or the first reply if every server accepted it, and only
    then is the state recorded.
    """

    data = None

    def __init__(self, owner, slot, record, parts):
        self.owner = owner
        self.slot = slot
        self.record = record
        self.replies = []
        self.parts = parts

    def fill(self, reply):
        self.replies.append(reply)
        if len(self.replies) < self.parts:
            return
        errors = [r for r in self.replies if resp.isError(r)]
        if not errors:
            self.record()
        self.slot.fill(errors[0] if errors else self.replies[0])
        owner = self.owner
        owner.settle()
        client = owner.session.client
        if client is not None:
            client.release()


class OwnConnections:
    """
    The state a client keeps on connections of its own, and those
    connections (see the module docstring).

    @ivar tracking: the arguments of the C{CLIENT TRACKING ON} in force
        (after the subcommand), or L{None}.
    @ivar redirect: the rmux client id tracking redirects to, 0 for none.
    @ivar flags: the C{CLIENT NO-EVICT ON}, C{CLIENT NO-TOUCH ON} and
        C{READONLY} in force, by name.
    @ivar monitoring: whether the client is MONITORing.
    @ivar caching: a C{CLIENT CACHING YES|NO} for the connection the
        client's next command goes on, or L{None}.
    """

    def __init__(self, session, hub=None):
        """
        @param session: the client's L{rmux.session.Session}.
        @param hub: the listener's L{rmux.pubsub.SubscriptionHub}, for
            tracking redirects.
        """
        self.session = session
        self.hub = hub
        self.connections = {}
        self.tracking = None
        self.redirect = 0
        self.flags = {}
        self.monitoring = False
        self.caching = None
        self.closed = False

    @property
    def active(self):
        """
        Whether any state needs the client's own connections.
        """
        return self.tracking is not None or bool(self.flags) or self.monitoring

    def setup(self, pool):
        """
        The commands that give a new connection to C{pool} the client's
        state.
        """
        commands = [list(args) for args in self.flags.values()]
        if self.tracking is not None:
            commands.append(self.trackingCommand(pool, self.tracking))
        return commands

    def trackingCommand(self, pool, arguments):
        """
        C{CLIENT TRACKING ON ...} for C{pool}'s server: a REDIRECT to an
        rmux client becomes one to rmux's subscriber connection there.
        """
        command = [b"CLIENT", b"TRACKING"] + list(arguments)
        upper = [a.upper() for a in command]
        if b"REDIRECT" in upper and self.hub is not None:
            index = upper.index(b"REDIRECT") + 1
            serverId = self.hub.knownServerId(pool)
            if serverId is not None and index < len(command):
                command[index] = b"%d" % (serverId,)
        return command

    def own(self, pool):
        connection = self.connections.get(pool)
        if connection is None:
            connection = self.connections[pool] = _OwnConnection(self, pool)
        return connection

    def send(self, pool, payload, waiter, count=1):
        """
        Send on the client's own connection to C{pool}'s server, after a
        pending C{CLIENT CACHING}: it is about the next command, wherever
        that goes.
        """
        own = self.own(pool)
        if self.caching is not None:
            own.send(encodeCommand(self.caching), IgnoredReply())
            self.caching = None
        own.send(payload, waiter, count)

    def change(self, command, pools, record):
        """
        Run a state command on the client's own connections to C{pools}
        (checked out now if need be), holding the client's later commands
        until every server has answered; C{record()} runs if all said OK.

        @param command: C{command(pool)} is the command for C{pool}'s
            server.
        """
        client = self.session.client
        client.hold()
        change = _StateChange(self, client.newSlot(), record, len(pools))
        for pool in pools:
            self.own(pool).send(encodeCommand(command(pool)), change)

    # MONITOR

    def monitor(self, pools):
        """
        MONITOR on every one of C{pools}: once each has said OK, the client
        gets one OK, then the feed of all of them.
        """
        self.monitoring = True

        def started():
            for pool in pools:
                connection = self.connections[pool].connection
                if connection is not None:
                    connection.relay = self.relayed

        self.change(lambda pool: [b"MONITOR"], pools, started)

    def relayed(self, reply):
        client = self.session.client
        if client is not None:
            client.reply(reply)

    def monitored(self, args, pool):
        """
        A command of a monitoring client, written on its connection to
        C{pool}: its reply comes back with the feed, as from Redis.
        """
        own = self.connections.get(pool)
        if own is None or own.connection is None:
            own = next(iter(self.connections.values()))
        own.connection.relayWrite(encodeCommand(args))

    def settle(self):
        """
        Give the connections back if no state needs them any more (a
        MONITOR that failed leaves none).
        """
        if self.monitoring and not any(
                c.connection is not None and c.connection.relay is not None
                for c in self.connections.values()):
            self.monitoring = False
        if not self.active:
            self.release(clean=True)
            self.session.own = None

    def release(self, clean):
        connections, self.connections = self.connections, {}
        for connection in connections.values():
            connection.give(clean)

    def lost(self, pool):
        self.connections.pop(pool, None)

    def pushReceived(self, push):
        client = self.session.client
        if client is not None:
            client.reply(push)

    def close(self):
        """
        The client has gone: give everything back.
        """
        self.closed = True
        self.tracking = self.caching = None
        self.flags.clear()
        # A connection that is, or is becoming, a MONITOR feed is closed:
        # feed lines may come before a RESET's reply.
        clean, self.monitoring = not self.monitoring, False
        self.release(clean=clean)
        self.session.own = None
