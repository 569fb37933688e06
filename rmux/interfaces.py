# -*- test-case-name: tests.test_interfaces -*-
"""
The contracts between rmux's pieces.

A request crosses four of them on its way to Redis and back: the client's
L{IRequestSender} (its session) asks the L{IRouter} where the command goes,
the router hands it to an L{IBackendPool}, and the reply comes back to an
L{IReplyWaiter}.  Dedicated connections (L{IBackendConnection}) carry a
client's transaction or blocking command, and L{IHealth} tells the router
which servers may take requests.  L{IClient} is what the per-client state
machines (the session, the pub/sub hub, the local commands) ask of the
client connection they serve.

Each implementation declares its interface with C{@implementer}, and
C{tests.test_interfaces} checks every one with C{verifyObject}, so a fake
in a test and the real object keep one shape.
"""

from zope.interface import Attribute, Interface

__all__ = [
    "IReplyWaiter",
    "IRequestSender",
    "IRouter",
    "IBackendPool",
    "IBackendConnection",
    "IHealth",
    "IClient",
    "ISinkProtocol",
]


class IReplyWaiter(Interface):
    """
    Whoever a reply is due to: a client's place in its reply queue, one
    server's share of a fanned-out command, rmux's own bookkeeping.
    """

    data = Attribute(
        "The reply once it has come, as bytes, or None while it is due. "
        "The session's connection affinity asks it to know whether the "
        "client still has a request in flight on a connection."
    )

    def fill(reply):
        """
        The reply, exactly as the server sent it (or an C{-ERR} from rmux
        when the server cannot give one).
        """


class IRequestSender(Interface):
    """
    One client's side of sending: the state its requests must run in, and
    the connection that carries its requests still in flight to a server.
    """

    db = Attribute("The db the client's requests run in.")
    protocolVersion = Attribute("The RESP version its replies must be in (2 or 3).")

    def send(pool, payload, waiter, count=1):
        """
        Send C{payload} (C{count} encoded requests) to C{pool}'s server on
        behalf of this client, on the connection that carries its earlier
        unanswered requests to that server if any, so a GET never
        overtakes its own SET.
        """


class IRouter(Interface):
    """
    Where a command goes: which server holds its keys, or how it is split
    or fanned out over several.
    """

    pools = Attribute("Every distinct L{IBackendPool} of the listener, in configuration order.")
    single = Attribute("The pool when the listener has exactly one server, else None.")

    def route(args, spec, waiter, sender, payload=None):
        """
        Send one command, split or fanned out as its spec says;
        C{waiter.fill} gets its one reply.  A command that cannot be placed
        gets the error as its reply.

        @param sender: the client's L{IRequestSender}.
        @param payload: C{args} as the client encoded them, if canonical.
        """

    def poolForKey(key):
        """
        The pool that must serve C{key} now.

        @raise rmux.router.PlacementError: its server is down and failover
            cannot help, or no route takes it.
        """

    def poolForCommand(args, spec):
        """
        The one server that must run C{args} whole: in a transaction, or as
        a blocking command on a dedicated connection.

        @return: a pool, or None when any server will do (no keys).
        @raise rmux.router.PlacementError: the keys span servers, a server
            is down, or the command cannot run on one server.
        """

    def anyPool():
        """
        A live server of the catch-all group.

        @raise rmux.router.PlacementError: every server is down.
        """

    def ready():
        """
        Whether the listener can serve now: its servers up (one is enough
        with failover), a cluster's map known, every Sentinel master found.
        """

    def whenPlaced():
        """
        L{None} when every map the placement needs is known (a cluster's
        slot map, a Sentinel group's masters), else a L{Deferred} that
        fires when the reading in progress is over, whatever it found.
        """

    def patternPools():
        """
        Where a pattern subscription must be to see every PUBLISH once: each
        independent server, and one node of a cluster (which propagates a
        PUBLISH to all its nodes).
        """

    def patternPoolOf(pool):
        """
        The pool of L{patternPools} whose pattern subscriptions see what
        is published on C{pool}.
        """

    def topologySnapshot():
        """
        What the placement is made of, for INFO and /metrics: a dict with
        its C{kind} (C{servers}, C{cluster}, C{sentinel}), its
        C{counters} and the C{nodes} it learned (name to a short text).
        """

    def passThroughPool(commands):
        """
        The one pool that a client's batch of plain commands, each with its
        only key as its first argument, may go to as received (one write,
        no encoding), or None when the batch must take the general path.
        """

    def passThroughSender(sender):
        """
        The sender a passed-through batch goes out with: C{sender}, or one
        that lets the router send it again (a cluster's redirections).
        """

    def blockingRedirect(reply, redirects):
        """
        A command on a dedicated connection (a blocking one) got C{reply},
        having followed C{redirects} redirections already: if it is a
        cluster's C{-MOVED} or C{-ASK} the command may still follow, say
        where it goes (a C{MOVED} also takes the slot's new owner into the
        placement).

        @return: L{None}, or C{(pool, asking)}: send it on a dedicated
            connection to C{pool}, after C{ASKING} if C{asking}.
        """


class IBackendPool(Interface):
    """
    The connections to one Redis server: shared pipelined ones, and
    dedicated ones lent to one client at a time.
    """

    address = Attribute("The server's L{rmux.config.BackendAddress}.")
    readTimeout = Attribute("Seconds a request may wait for its reply, for ordinary commands.")
    fixedDb = Attribute("The db of a C{redis://host/db} address, or None.")

    def send(payload, waiter, db=0, protocolVersion=2, after=None, count=1):
        """
        Send on a shared connection (on C{after} if it still carries the
        client's earlier requests).

        @return: the L{IBackendConnection} it went on, or None.
        """

    def checkout():
        """
        Take a connection for one client alone.

        @return: a Deferred firing with an L{IBackendConnection}, or
            failing with L{rmux.pool.PoolExhausted} or the connect error.
        """

    def checkin(connection, clean=True):
        """
        Give back a connection from L{checkout}; one not C{clean} (still
        watching or blocked) is closed instead.
        """


class IBackendConnection(Interface):
    """
    One connection to a Redis server, as a dedicated connection's user sees
    it.
    """

    pool = Attribute("The L{IBackendPool} it belongs to.")
    broken = Attribute("Whether it has failed or closed.")
    readTimeout = Attribute(
        "Seconds its oldest request may go without progress; a blocking "
        "command sets its own, and the pool puts the usual one back."
    )

    def send(payload, waiter, db=0, protocolVersion=2, count=1):
        """
        Write encoded requests; C{waiter.fill} gets each reply.
        """

    def abort():
        """
        Close it at once: a client blocked on it has gone.
        """


class IHealth(Interface):
    """
    What the health checks know of a listener's servers.
    """

    starting = Attribute("Whether the first verdicts are still awaited.")
    onChange = Attribute(
        "Callables called with (check, previous, state) when a server goes up or down."
    )

    def isUp(pool):
        """
        Whether C{pool}'s server may take requests.
        """

    def whenStarted():
        """
        A Deferred that fires once every server has its first verdict, or
        None if that is already so.
        """

    def databases():
        """
        The number of dbs every server has, if known, else None.
        """

    def redisVersion():
        """
        The servers' Redis version, if known, else None.
        """


class IClient(Interface):
    """
    A client connection, as its session, the pub/sub hub and the local
    commands use it.
    """

    disconnected = Attribute("Whether the client has gone.")
    protocolVersion = Attribute("The client's RESP version, 2 or 3.")

    def reply(data):
        """
        Queue a reply that is ready now, behind every reply still due.
        """

    def newSlot():
        """
        A place in the reply queue for a reply that comes later.

        @return: an L{IReplyWaiter}.
        """

    def hold():
        """
        Keep the client's later commands until L{release}: one in progress
        must finish first, as on Redis.
        """

    def release():
        """
        Carry on with the commands kept since L{hold}.
        """


class ISinkProtocol(Interface):
    """
    A protocol into which rmux's transports may receive a big value in
    place (see L{rmux.resp.BodySink}), instead of handing it over in
    chunks.
    """

    sink = Attribute(
        "The rmux.resp.BodySink to receive into now, or None: then bytes "
        "arrive through dataReceived as usual."
    )

    def bodyReceived(size):
        """
        C{size} bytes were received into C{sink}, after those it held.
        """
