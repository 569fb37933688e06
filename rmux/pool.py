# -*- test-case-name: tests.test_pool -*-
"""
Pipelined connections to one Redis server, and the pool that owns them
(connections are made with L{ClientCreator}; see L{FastClientCreator}).

Requests from many clients share a few persistent connections: each request
is written as soon as it arrives, and each connection keeps a FIFO of the
waiters whose replies are due, so the n-th reply cut out of the stream belongs
to the n-th waiter.  Nothing here knows about clients; a waiter is any object
with a C{fill(replyBytes)} method.

A connection carries state that must match the request: the selected db and
the RESP protocol version.  When they differ, the connection sends C{SELECT}
or C{HELLO} first and holds every later request until that reply has come
back, so a request never runs in the wrong db even if the switch fails.
"""

import random
from collections import deque
from itertools import repeat

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionAborted, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rmux.resp import ProtocolError, ReplyFramer, encodeCommand, errorReply
from rmux.stats import PoolStats
from rmux import settings
from rmux.interfaces import IBackendConnection, IBackendPool, ISinkProtocol
from rmux.transport import (
    FastClientCreator, coalescer, setNoDelay, unsentBytes, writeNow,
    writeSequenceNow,
)


class _ServerId:
    """
    The waiter for a connection's C{CLIENT ID}.
    """

    __slots__ = ("connection", "data")

    def __init__(self, connection):
        self.connection = connection
        self.data = None

    def fill(self, reply):
        self.data = reply
        if reply[:1] == b":":
            self.connection.serverId = int(reply[1:-2])


class _StateSwitch:
    """
    The waiter for an internal C{SELECT}/C{HELLO} sent before a request.

    Its reply is not a client's: on success the connection releases the
    requests it held; on failure they all get the error instead of running
    in the wrong state.
    """

    __slots__ = ("connection", "what")

    def __init__(self, connection, what):
        self.connection = connection
        self.what = what

    def fill(self, reply):
        self.connection._switchDone(self.what, reply)


class _ConnectDeadline:
    """
    The connect timeout of one attempt: like the read and write deadlines
    (see L{_Deadlines}), it is only judged one reactor turn after it
    passes, so that a connection already made but not yet reported by a
    busy loop is not given up on.  A connect it cancels fails with
    L{TimeoutError}, as Twisted's own timeout would.
    """

    def __init__(self, clock, attempt, timeout, protocol):
        self.clock = clock
        self.attempt = attempt
        self.protocol = protocol
        self.timedOut = False
        self.call = clock.callLater(timeout, self.expired, False)
        attempt.addBoth(self.settled)

    def expired(self, confirmed):
        if not confirmed:
            self.call = self.clock.callLater(0, self.expired, True)
            return
        if self.protocol.connected:
            # Made in that turn; the attempt fires in the next one.
            return
        self.timedOut = True
        self.attempt.cancel()

    def settled(self, result):
        if self.call.active():
            self.call.cancel()
        if self.timedOut and isinstance(result, Failure) and result.check(CancelledError):
            return Failure(TimeoutError())
        return result


class _Deadlines:
    """
    The part of L{BackendProtocol} that decides when a server is given up
    on: a read timeout measured from the last bytes the server sent (and a
    longer limit for completing one reply), and a write timeout measured
    from the last bytes it took of rmux's writes.

    A deadline that passes makes the server a suspect, not a culprit: the
    verdict waits one more turn of the reactor, and anything the server
    sent in that turn clears it.  When rmux's own loop is what was slow (a
    turn busy with thousands of clients' requests), the server's reply is
    already in the socket, and that turn reads it; timers run before the
    reactor polls, so without the extra turn rmux would blame a healthy
    server for its own queueing.
    """

    _readSuspicion = None
    _writeSuspect = False

    def _checkRead(self):
        """
        Give up when the server has sent nothing for the read timeout, or
        has not completed the oldest reply within C{replyTimeoutFactor}
        read timeouts, and the turn after that brought nothing either.
        """
        self._readTimer = None
        suspicion, self._readSuspicion = self._readSuspicion, None
        if not self.waiting or not self.readTimeout:
            # Nothing owed, or a blocking command that may wait forever.
            return
        now = self.clock.seconds()
        idle = now - self.lastProgress
        replyLimit = self.readTimeout * self.replyTimeoutFactor
        age = now - self.headSince
        if idle >= self.readTimeout or age >= replyLimit:
            if suspicion is None:
                self._readSuspicion = (self.lastProgress, self.headSince)
                self._readTimer = self.clock.callLater(0, self._checkRead)
                return
            if idle >= self.readTimeout and self.lastProgress == suspicion[0]:
                self.fail(
                    "did not reply within %d ms" % (round(self.readTimeout * 1000),),
                    timedOut=True,
                )
                return
            if age >= replyLimit and self.headSince == suspicion[1]:
                self.fail(
                    "did not complete a reply within %d ms" % (round(replyLimit * 1000),),
                    timedOut=True,
                )
                return
        self._readTimer = self.clock.callLater(
            max(0.0, min(self.readTimeout - idle, replyLimit - age)), self._checkRead
        )

    def _taken(self):
        """
        How many of the bytes written so far the server has taken, or
        L{None} if the transport does not say.
        """
        unsent = unsentBytes(self.transport)
        return None if unsent is None else self.bytesWritten - unsent

    def recheckRead(self):
        """
        Hold this connection to its current read timeout now: a timer armed
        before a change keeps its old delay, so a lowered timeout would
        otherwise wait out the old one.
        """
        timer = self._readTimer
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        self._readTimer = None
        self._checkRead()

    def _writeTimedOut(self):
        """
        The server has not drained rmux's writes within the write timeout:
        give up, unless it did take some of them meanwhile (a big backlog
        of large values draining slowly is not a hung server).
        """
        self._writeTimer = None
        suspect, self._writeSuspect = self._writeSuspect, False
        taken = self._taken()
        if taken is not None and taken > self._takenAtCheck:
            self._takenAtCheck = taken
            self._writeTimer = self.clock.callLater(self.writeTimeout, self._writeTimedOut)
            return
        if not suspect:
            self._writeSuspect = True
            self._writeTimer = self.clock.callLater(0, self._writeTimedOut)
            return
        self.fail(
            "did not accept a write within %d ms" % (round(self.writeTimeout * 1000),),
            timedOut=True,
        )


@implementer(IPushProducer, ISinkProtocol, IBackendConnection)
class BackendProtocol(_Deadlines, Protocol):
    """
    One pipelined connection to a Redis server.

    @ivar waiting: waiters whose replies are due, in the order their
        requests were written.
    @ivar db: the db this connection will be in once everything already
        written has run.
    @ivar protocolVersion: likewise, the RESP version (2 or 3).
    @ivar backedUp: whether the transport holds more unsent bytes than it
        likes (it paused us as its producer): the server is not reading
        as fast as we write, and what we add waits behind it.
    """

    pool = None
    backedUp = False
    #: The L{rmux.resp.BodySink} of a big reply being received, for the
    #: transport to receive into (see L{bodyReceived}), or L{None}.
    sink = None
    clock = None
    readTimeout = settings.seconds("remoteReadTimeout")
    writeTimeout = settings.seconds("remoteWriteTimeout")
    dedicated = False
    #: Whether the batch being written holds a blocking command (set by
    #: L{rmux.session}; the flush takes it back).
    blocking = False
    failure = None
    retiring = False
    _takenAtCheck = None
    #: Bytes handed to the transport so far.
    bytesWritten = 0
    #: A dedicated connection's id on its server (CLIENT ID), once known.
    serverId = None
    #: Called with each RESP3 push (client tracking's invalidations) on a
    #: client's own connection; on others, pushes are dropped.
    onPush = None
    #: On a MONITOR connection, called with every reply read: the client
    #: gets the whole stream, and no waiter is involved.
    relay = None

    #: A reply must be complete within this many read timeouts, however
    #: steadily its bytes trickle in (a backend that sends a reply that
    #: never ends would otherwise hold its requests forever).
    replyTimeoutFactor = 5

    def __init__(self, pool=None):
        """
        @param pool: the L{BackendPool} this connection belongs to; set at
            once, so that a server that writes or closes before the connect
            is reported (Redis past C{maxclients}) finds it.
        """
        if pool is not None:
            self.pool = pool
            self.clock = pool.reactor
            self.readTimeout = pool.readTimeout
            self.writeTimeout = pool.writeTimeout
            self.stats = pool.stats
        else:
            self.stats = PoolStats()
        self.sent = 0
        self.replied = 0
        self.batches = deque()
        self.framer = ReplyFramer()
        self.waiting = deque()
        self.headSince = 0.0
        self.held = None
        self.db = 0
        self.protocolVersion = 2
        self.broken = False
        self.lastProgress = 0.0
        self._readTimer = None
        self._writeTimer = None
        self._out = None
        self._flushCall = None
        self.closed = Deferred()

    # Twisted Protocol

    def logPrefix(self):
        return "rmux-backend"

    def connectionMade(self):
        setNoDelay(self.transport)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data):
        self._deliver(self.framer.feed, data, len(data))

    def bodyReceived(self, size):
        """
        The transport received C{size} bytes of a big reply straight into
        L{sink}.
        """
        self._deliver(self.framer.bodyReceived, size, size)

    def _deliver(self, frame, received, size):
        """
        Frame what C{size} bytes brought (C{frame(received)}: the framer's
        C{feed} or C{bodyReceived}), and hand out the replies completed.
        """
        framer = self.framer
        try:
            replies = frame(received)
        except ProtocolError as e:
            self.fail("sent a malformed reply (%s)" % (e,))
            return
        self.sink = framer.sink
        now = self.lastProgress = self.clock.seconds()
        if self.relay is not None:
            for reply in replies:
                self.relay(reply)
            return
        waiting = self.waiting
        answered = errors = 0
        coalescer.begin()
        try:
            for reply in replies:
                first = reply[:1]
                if first == b">":
                    # An out-of-band push (RESP3): only a client's own
                    # connection (client tracking) has somebody for it.
                    if self.onPush is not None:
                        self.onPush(reply)
                    continue
                if not waiting:
                    if self.relay is not None:
                        # MONITOR's OK came in this very read: the rest is
                        # the feed.
                        self.relay(reply)
                        continue
                    self.fail("sent a reply nobody asked for: %s" % (_firstLine(reply),))
                    return
                if first == b"-":
                    errors += 1
                answered += 1
                waiting.popleft().fill(reply)
                self.headSince = now
        finally:
            coalescer.end()
            self._counted(size, answered, errors, now)
        if self.retiring and not self.load:
            self.transport.loseConnection()

    def retire(self):
        """
        Close once every reply this connection owes has arrived; the pool
        no longer gives it requests.
        """
        self.retiring = True
        if not self.load and self.transport is not None:
            self.transport.loseConnection()

    def _counted(self, size, answered, errors, now):
        """
        Count what one read brought, and the latency of every write batch
        whose last reply it completed.
        """
        stats = self.stats
        stats.responseBytes += size
        if not answered:
            return
        stats.responses += answered
        stats.errorReplies += errors
        replied = self.replied = self.replied + answered
        batches = self.batches
        while batches and batches[0][0] <= replied:
            end, count, sentAt = batches.popleft()
            if sentAt is not None:
                stats.latency.observe(now - sentAt, count)

    def connectionLost(self, reason):
        if not self.broken and not reason.check(ConnectionAborted):
            transport = self.transport
            if not (transport is not None and transport.disconnecting):
                # Neither rmux nor a failure closed it: the server did.
                self.stats.eof += 1
        self.broken = True
        self._cancelTimers()
        why = "lost connection to backend %s" % (self.pool.address,)
        tlsFailure = _tlsFailure(reason)
        if tlsFailure is not None:
            why = "backend %s: %s" % (self.pool.address, tlsFailure)
            if self.pool is not None:
                self.pool.lastError = tlsFailure
                self.pool.log.warn("{why}", why=why)
        self._failAll(errorReply("rmux: " + why))
        if self.pool is not None:
            self.pool.connectionGone(self)
        self.closed.callback(None)

    # IPushProducer: the transport tells us when the backend stops reading.

    def pauseProducing(self):
        self.backedUp = True
        if self._writeTimer is None and self.writeTimeout:
            self._takenAtCheck = self._taken()
            self._writeTimer = self.clock.callLater(
                self.writeTimeout, self._writeTimedOut
            )

    def resumeProducing(self):
        self.backedUp = False
        self._writeSuspect = False
        if self._writeTimer is not None:
            self._writeTimer.cancel()
            self._writeTimer = None

    def stopProducing(self):
        pass

    # Sending

    @property
    def load(self):
        """
        How many replies this connection still owes, including held requests.
        """
        return len(self.waiting) + (sum(entry[4] for entry in self.held) if self.held else 0)

    def send(self, payload, waiter, db=0, protocolVersion=2, count=1):
        """
        Write encoded requests; C{waiter.fill} gets each reply.

        @param payload: the request, RESP-encoded, or C{count} of them.
        @param db: the db the request must run in.
        @param protocolVersion: the RESP version its reply must be in.
        @param count: how many requests C{payload} holds: C{waiter.fill} is
            called once for each of their replies, in order.
        """
        if self.broken:
            _failEach(
                waiter, count,
                errorReply("rmux: lost connection to backend %s" % (self.pool.address,)),
            )
            return
        if self.held is not None:
            self.held.append((payload, waiter, db, protocolVersion, count))
            return
        if db != self.db or protocolVersion != self.protocolVersion:
            self.held = deque([(payload, waiter, db, protocolVersion, count)])
            self._switch(db, protocolVersion)
            return
        self._write(payload, waiter, count)

    def _write(self, payload, waiter, count=1):
        if not self.waiting:
            self.lastProgress = self.headSince = self.clock.seconds()
            if self._readTimer is None and self.readTimeout:
                self._readTimer = self.clock.callLater(
                    self.readTimeout, self._checkRead
                )
        if count == 1:
            self.waiting.append(waiter)
        else:
            self.waiting.extend(repeat(waiter, count))
        out = self._out
        if out is None:
            # The first write this loop turn: every request written before
            # the turn ends goes out in one send.
            out = self._out = []
            self._flushCall = self.clock.callLater(0, self.flush)
        if type(payload) is list:
            out.extend(payload)
        else:
            out.append(payload)

    #: Batches larger than this are handed to the transport in pieces
    #: rather than joined into one string first.
    joinLimit = 256 * 1024

    def flush(self):
        """
        Send what this loop turn wrote.
        """
        out, self._out = self._out, None
        self._flushCall = None
        if not out or self.broken:
            return
        end = self.replied + len(self.waiting)
        stats = self.stats
        stats.requests += end - self.sent
        now = self.clock.seconds()
        if self.sent == self.replied:
            # The oldest request due is in this batch: the server has it
            # from now, however long it waited here for this turn to end.
            self.lastProgress = self.headSince = now
        # A blocking command's wait is not the server's latency.
        self.batches.append((end, end - self.sent, None if self.blocking else now))
        self.blocking = False
        self.sent = end
        single = len(out) == 1
        size = len(out[0]) if single else sum(map(len, out))
        stats.requestBytes += size
        self.bytesWritten += size
        if single:
            writeNow(self.transport, out[0])
        elif size > self.joinLimit:
            writeSequenceNow(self.transport, out)
        else:
            writeNow(self.transport, b"".join(out))

    def _switch(self, db, protocolVersion):
        if protocolVersion != self.protocolVersion:
            self.protocolVersion = protocolVersion
            command = [b"HELLO", b"%d" % (protocolVersion,)]
            self._write(encodeCommand(command), _StateSwitch(self, "HELLO"))
        else:
            self.db = db
            command = [b"SELECT", b"%d" % (db,)]
            self._write(encodeCommand(command), _StateSwitch(self, "SELECT"))

    def authenticate(self, username, password):
        """
        Send AUTH before anything else, holding every request until the
        server has accepted it.
        """
        command = [b"AUTH"]
        if username is not None:
            command.append(username.encode("utf-8"))
        command.append(password.encode("utf-8"))
        if self.held is None:
            self.held = deque()
        self._write(encodeCommand(command), _StateSwitch(self, "AUTH"))

    def readOnly(self):
        """
        Send READONLY before anything else: a cluster replica then serves
        reads of its master's slots on this connection (a master ignores
        it).
        """
        if self.held is None:
            self.held = deque()
        self._write(encodeCommand([b"READONLY"]), _StateSwitch(self, "READONLY"))

    def _switchDone(self, what, reply):
        if reply[:1] in (b"-", b"!") or (what != "HELLO" and reply != b"+OK\r\n"):
            # The state is now unknown: fail what was held and retire the
            # connection rather than guess.  AUTH's own error text is not
            # passed on, so nothing about the credentials leaks.
            if what == "AUTH":
                reply = errorReply(
                    "rmux: backend %s refused rmux's credentials" % (self.pool.address,)
                )
            elif reply[:1] != b"-":
                reply = errorReply("rmux: backend %s refused %s" % (self.pool.address, what))
            held, self.held = self.held, None
            for payload, waiter, db, protocolVersion, count in held or ():
                _failEach(waiter, count, reply)
            self.fail("refused an internal %s" % (what,))
            return
        held, self.held = self.held, None
        while held:
            entry = held.popleft()
            payload, waiter, db, protocolVersion, count = entry
            if db != self.db or protocolVersion != self.protocolVersion:
                held.appendleft(entry)
                self.held = held
                self._switch(db, protocolVersion)
                return
            self._write(payload, waiter, count)

    # Failure

    def relayWrite(self, payload):
        """
        Write a request on a relaying (MONITOR) connection: its reply comes
        through L{relay}, with everything else the server sends.
        """
        self.bytesWritten += len(payload)
        writeNow(self.transport, payload)

    def learnServerId(self):
        """
        Ask the server this connection's id (CLIENT ID), for CLIENT UNBLOCK
        and tracking redirects that name it.
        """
        self.send(encodeCommand([b"CLIENT", b"ID"]), _ServerId(self), self.db,
                  self.protocolVersion)

    def abort(self):
        """
        Close at once: the client blocked on this dedicated connection has
        gone, and it may stay blocked forever.
        """
        self.transport.abortConnection()

    def fail(self, why, timedOut=False):
        """
        Give up on this connection: every request it owes a reply gets an
        error naming the backend, and it is closed and never reused, since
        late replies would land on the wrong requests.
        """
        if self.broken:
            return
        self.broken = True
        self.failure = why
        self.sink = None
        self._cancelTimers()
        if self.pool is not None:
            self.pool.connectionFailed(self, why, timedOut)
        self._failAll(errorReply("rmux: backend %s %s" % (self.pool.address, why)))
        if self.transport is not None:
            self.transport.abortConnection()

    def _failAll(self, reply):
        waiting, self.waiting = self.waiting, deque()
        held, self.held = self.held, None
        self.batches.clear()
        self.stats.failedRequests += len(waiting) + sum(entry[4] for entry in held or ())
        for waiter in waiting:
            waiter.fill(reply)
        for payload, waiter, db, protocolVersion, count in held or ():
            _failEach(waiter, count, reply)

    def _cancelTimers(self):
        self._out = None
        for name in ("_readTimer", "_writeTimer", "_flushCall"):
            timer = getattr(self, name)
            if timer is not None:
                if timer.active():
                    timer.cancel()
                setattr(self, name, None)


@implementer(IBackendPool)
class BackendPool:
    """
    Up to C{size} pipelined connections to one Redis server, opened lazily
    with L{ClientCreator}.

    A request goes to the first open connection that is already in the db
    and protocol it needs, has fewer than C{growthThreshold} replies
    outstanding and is not backed up (big values still in its send
    buffer); when none is, a new connection is opened (up to C{size}) and
    meanwhile the least-loaded one takes it.  Load thus concentrates on
    few connections, which batches more requests into each write and read
    (for rmux and for Redis), and db switches stay rare.  While no
    connection is open yet, requests wait for the connect, which is
    bounded by the connect timeout.

    @ivar address: the L{rmux.config.BackendAddress} of the server.
    """

    log = Logger()
    #: Replies, not requests sent: at 16, one client's 16-command pipeline
    #: made a connection busy, and 50 pipelining clients used 20
    #: connections with one send and one read per pipeline; at 256 they
    #: share a few, and each send and read carries many pipelines.
    #: Redis serves its connections in turn anyway, so more of them buy
    #: no throughput; what they isolate is a big value in transit, which
    #: L{BackendProtocol.backedUp} catches.
    growthThreshold = 256
    #: Once every connection is busy and the pool is full, this many
    #: requests are spread in turn before the connections are looked at
    #: again (looking costs a pass over all of them per request).
    saturatedTurns = 64
    _saturated = 0
    _turn = 0
    protocolClass = BackendProtocol

    #: After a failed connect, no new attempt for this long (seconds),
    #: doubling with each further failure up to L{maxRetryDelay}, spread by
    #: +/- L{retryJitter} so that many rmux hosts do not reconnect in step.
    #: Requests meanwhile fail at once with the last error.
    retryDelay = 0.1
    maxRetryDelay = 5.0
    retryJitter = 0.2
    #: At most this many new connections a second to one server (a token
    #: bucket holding up to the pool size), so a restart is no storm.
    connectRate = 50.0
    #: Whether each connection starts with READONLY (a cluster node that
    #: rmux may read from as a replica).
    readsFromReplica = False

    def __init__(
        self,
        reactor,
        address,
        size=settings.default("poolSize"),
        connectTimeout=settings.seconds("remoteConnectTimeout"),
        readTimeout=settings.seconds("remoteReadTimeout"),
        writeTimeout=settings.seconds("remoteWriteTimeout"),
        maxPinned=settings.default("maxPinned"),
        pinnedWait=settings.seconds("pinnedWait"),
        tls=None,
    ):
        """
        @param tls: for a C{rediss://} address, the L{rmux.tls.BackendTLS}
            its connections use (by default, verified against the system's
            CAs).
        """
        self.reactor = reactor
        self.address = address
        self.tls = tls
        self.size = size
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.writeTimeout = writeTimeout
        self.fixedDb = getattr(address, "db", None)
        self.maxPinned = maxPinned
        self.pinnedWait = pinnedWait
        self.pinned = 0
        self.idlePinned = []
        self.pinnedWaiters = deque()
        self.connections = []
        self.open = set()
        self.attempts = set()
        self.connecting = 0
        self.waitingForConnection = deque()
        self.lastError = None
        self.failures = 0
        self.nextAttemptAt = None
        self.tokens = float(size)
        self.tokensAt = reactor.seconds()
        self.random = random.Random()
        self.stopped = False
        self.stats = PoolStats()

    def __repr__(self):
        return "<BackendPool %s %d/%d>" % (self.address, len(self.connections), self.size)

    def send(self, payload, waiter, db=0, protocolVersion=2, after=None, count=1):
        """
        Send one request to this server; C{waiter.fill} gets its reply or an
        C{-ERR} naming the server.  (Or C{count} requests in one
        C{payload}, C{waiter.fill} getting each reply.)

        @param after: the L{BackendProtocol} that carries the same client's
            earlier requests that are still unanswered, if any.  Redis runs
            each connection's requests in order but interleaves connections
            freely, so a client's requests must stay on one connection while
            any is in flight, or a GET could overtake its own SET.
        @return: the connection the request went on, or L{None} if it is
            waiting for one (or failed).
        """
        if self.fixedDb is not None:
            db = self.fixedDb
        if after is not None and not after.broken:
            after.send(payload, waiter, db, protocolVersion, count)
            return after
        threshold = self.growthThreshold
        connections = self.connections
        if self._saturated:
            # Every connection was busy and there can be no more: take
            # turns, and look for a quiet one again now and then.
            self._saturated -= 1
            connection = self._nextInTurn(db, protocolVersion)
            if connection is not None:
                connection.send(payload, waiter, db, protocolVersion, count)
                return connection
        # The first connection in the right state that is not busy: load
        # concentrates on few connections, so more requests share each
        # write and read, and a new connection opens only under pressure.
        for connection in connections:
            if (
                connection.db == db
                and connection.protocolVersion == protocolVersion
                and connection.held is None
                and len(connection.waiting) < threshold
                and not connection.backedUp
            ):
                connection.send(payload, waiter, db, protocolVersion, count)
                return connection
        if len(connections) + self.connecting < self.size:
            self._connect()
        elif connections:
            self._saturated = self.saturatedTurns
        best = None
        bestLoad = None
        for connection in self.connections:
            load = connection.load
            if connection.db != db or connection.protocolVersion != protocolVersion:
                load += threshold
            if best is None or load < bestLoad:
                best, bestLoad = connection, load
        if best is not None:
            best.send(payload, waiter, db, protocolVersion, count)
        elif self.connecting:
            self.waitingForConnection.append((payload, waiter, db, protocolVersion, count))
        else:
            _failEach(waiter, count, self._cannotConnect())
        return best

    def configure(
        self, size, connectTimeout, readTimeout, writeTimeout, maxPinned, pinnedWait
    ):
        """
        Take new settings while serving (a live reload).  Open connections
        get the new timeouts; past a smaller C{size}, the surplus ones
        stop taking requests and close once they have delivered what they
        owe, so no request is lost.
        """
        self.size = size
        self.connectTimeout = connectTimeout
        self.readTimeout = readTimeout
        self.writeTimeout = writeTimeout
        self.maxPinned = maxPinned
        self.pinnedWait = pinnedWait
        self.tokens = min(self.tokens, float(size))
        for connection in self.connections:
            connection.readTimeout = readTimeout
            connection.writeTimeout = writeTimeout
            connection.recheckRead()
        surplus = self.connections[size:]
        del self.connections[size:]
        for connection in surplus:
            connection.retire()
        for protocol in self.idlePinned:
            protocol.readTimeout = readTimeout
            protocol.writeTimeout = writeTimeout
        self._servePinnedWaiters()

    def _nextInTurn(self, db, protocolVersion):
        """
        The next connection, in turn, that is in the right state, or
        L{None}.
        """
        connections = self.connections
        count = len(connections)
        for _ in range(count):
            self._turn = turn = (self._turn + 1) % count
            connection = connections[turn]
            if (
                connection.db == db
                and connection.protocolVersion == protocolVersion
                and connection.held is None
            ):
                return connection
        return None

    def _cannotConnect(self):
        return errorReply(
            "rmux: cannot connect to backend %s: %s"
            % (self.address, self.lastError or "too many connection attempts")
        )

    def _connect(self):
        if self.stopped or self.connecting:
            return
        now = self.reactor.seconds()
        if self.nextAttemptAt is not None and now < self.nextAttemptAt:
            return
        self.tokens = min(
            float(self.size), self.tokens + (now - self.tokensAt) * self.connectRate
        )
        self.tokensAt = now
        if self.tokens < 1:
            return
        self.tokens -= 1
        self.connecting += 1
        self._open().addCallbacks(self._connected, self._connectFailed)

    def tlsSettings(self):
        """
        The L{rmux.tls.BackendTLS} this pool's C{rediss://} server is
        reached with: the listener's, or the system's CAs.
        """
        if self.tls is None:
            from rmux.tls import BackendTLS

            self.tls = BackendTLS()
        return self.tls

    def _open(self):
        """
        Open one connection with L{ClientCreator}, cancellable by L{stop}.

        @return: a L{Deferred} firing with the ready L{BackendProtocol}:
            authenticated first when the address has credentials.
        """
        protocol = self.protocolClass(pool=self)
        creator = FastClientCreator(self.reactor, lambda: protocol)
        address = self.address
        if getattr(address, "tls", False):
            d = self.tlsSettings().connect(self.reactor, address, protocol)
        elif address.kind == "unix":
            d = creator.connectUNIX(address.path, timeout=None)
        else:
            d = creator.connectTCP(address.host, address.port, timeout=None)
        if self.connectTimeout:
            _ConnectDeadline(self.reactor, d, self.connectTimeout, protocol)
        self.attempts.add(d)
        d.addBoth(self._attemptDone, d)
        d.addCallback(self._opened)
        return d

    def _opened(self, protocol):
        self.stats.connects += 1
        if protocol.broken:
            # It wrote or closed before the connect was reported: Redis
            # refusing a client (maxclients), or a server going away.
            raise ConnectionError(protocol.failure or "the server closed the connection")
        self.open.add(protocol)
        protocol.closed.addCallback(lambda _: self.open.discard(protocol))
        password = getattr(self.address, "password", None)
        if password is not None:
            protocol.authenticate(self.address.username, password)
        if self.readsFromReplica:
            protocol.readOnly()
        return protocol

    def _attemptDone(self, result, attempt):
        self.attempts.discard(attempt)
        return result

    def _connected(self, protocol):
        self.connecting -= 1
        if self.stopped:
            protocol.transport.loseConnection()
            return
        self.connectionReady(protocol)

    def _connectFailed(self, reason):
        self.connecting -= 1
        self.stats.connectFailures += 1
        self.lastError = reason.getErrorMessage()
        self.failures += 1
        delay = min(self.retryDelay * 2 ** (self.failures - 1), self.maxRetryDelay)
        delay *= 1 + self.random.uniform(-self.retryJitter, self.retryJitter)
        self.nextAttemptAt = self.reactor.seconds() + delay
        if not self.connecting and not self.connections:
            waiting, self.waitingForConnection = self.waitingForConnection, deque()
            reply = self._cannotConnect()
            for payload, waiter, db, protocolVersion, count in waiting:
                _failEach(waiter, count, reply)

    def connectionReady(self, protocol):
        """
        A connection is open: use it, and hand it whatever waited for it.
        """
        if protocol in self.connections:
            return
        self.lastError = None
        self.failures = 0
        self.nextAttemptAt = None
        self.connections.append(protocol)
        waiting, self.waitingForConnection = self.waitingForConnection, deque()
        for payload, waiter, db, protocolVersion, count in waiting:
            protocol.send(payload, waiter, db, protocolVersion, count)

    def serverIsBack(self):
        """
        The health monitor saw the server answer again: try at once rather
        than wait out the backoff.
        """
        self.failures = 0
        self.nextAttemptAt = None
        self.lastError = None

    def connectionFailed(self, protocol, why, timedOut):
        if timedOut:
            self.stats.timeouts += 1
        self.stats.errors += 1
        self.log.warn(
            "backend {address} {why}; closing that connection",
            address=str(self.address),
            why=why,
        )
        self.connectionGone(protocol)

    def connectionGone(self, protocol):
        if protocol in self.connections:
            self.connections.remove(protocol)
        if protocol.dedicated:
            protocol.dedicated = False
            self.pinned -= 1
            if protocol in self.idlePinned:
                self.idlePinned.remove(protocol)
            self._servePinnedWaiters()

    # Dedicated connections

    def checkout(self):
        """
        Take a connection of this server for one client alone: a transaction
        after WATCH or MULTI, or a blocking command, must not share it.

        At most C{maxPinned} exist at once; past that a client waits up to
        C{pinnedWait} seconds.

        @return: a L{Deferred} firing with a L{BackendProtocol}, or failing
            with L{PoolExhausted} or the connect error.
        """
        while self.idlePinned:
            protocol = self.idlePinned.pop()
            if not protocol.broken:
                return succeed(protocol)
        if self.pinned < self.maxPinned:
            self.pinned += 1
            d = self._open()

            def mark(protocol):
                protocol.dedicated = True
                protocol.learnServerId()
                return protocol

            def failed(reason):
                self.pinned -= 1
                self._servePinnedWaiters()
                return reason

            return d.addCallbacks(mark, failed)
        waiter = Deferred()
        timer = self.reactor.callLater(self.pinnedWait, self._pinnedTimedOut, waiter)
        self.pinnedWaiters.append((waiter, timer))
        return waiter

    def _pinnedTimedOut(self, waiter):
        for entry in self.pinnedWaiters:
            if entry[0] is waiter:
                self.pinnedWaiters.remove(entry)
                break
        waiter.errback(PoolExhausted(self.address, self.maxPinned, self.pinnedWait))

    def checkin(self, protocol, clean=True):
        """
        Give back a connection from L{checkout}.

        @param clean: whether the connection is in no client-specific state
            (no WATCH, no blocked command); otherwise it is closed.
        """
        if protocol.broken or not protocol.dedicated:
            return
        if not clean or protocol.load or self.stopped or protocol.relay is not None:
            protocol.transport.abortConnection()
            return
        protocol.readTimeout = self.readTimeout
        protocol.onPush = None
        if self.pinnedWaiters:
            waiter, timer = self.pinnedWaiters.popleft()
            timer.cancel()
            waiter.callback(protocol)
        else:
            self.idlePinned.append(protocol)

    def _servePinnedWaiters(self):
        while self.pinnedWaiters and self.pinned < self.maxPinned:
            waiter, timer = self.pinnedWaiters.popleft()
            timer.cancel()
            self.checkout().chainDeferred(waiter)

    def stop(self):
        """
        Close every connection and cancel connects in progress.

        @return: a L{Deferred} that fires once every connection is closed.
        """
        self.stopped = True
        for attempt in list(self.attempts):
            attempt.cancel()
        waiters, self.pinnedWaiters = self.pinnedWaiters, deque()
        for waiter, timer in waiters:
            timer.cancel()
            waiter.errback(PoolExhausted(self.address, self.maxPinned, 0))
        closing = []
        for connection in list(self.open):
            closing.append(connection.closed)
            connection.transport.loseConnection()
        if not closing:
            return succeed(None)
        # A TLS connection closes cleanly only with the server's help (its
        # close_notify, or a handshake to finish first): not forever.
        abort = self.reactor.callLater(self.closeGrace, self._abortOpen)
        done = DeferredList(closing)
        done.addBoth(lambda result: abort.cancel() if abort.active() else None)
        return done

    #: Seconds L{stop} waits for connections to close before aborting them.
    closeGrace = 2.0

    def _abortOpen(self):
        for connection in list(self.open):
            connection.transport.abortConnection()


def _failEach(waiter, count, reply):
    """
    Give each of C{count} requests that were never sent the same error.
    """
    for _ in range(count):
        waiter.fill(reply)


def _tlsFailure(reason):
    """
    Why a TLS connection failed, in OpenSSL's or service_identity's words,
    or L{None} if C{reason} is not a TLS failure.  (OpenSSL's handshake
    error does not say why it refused a certificate; Twisted's client
    options, which also check the host name, do not expose it.)
    """
    kind = reason.type
    module = getattr(kind, "__module__", "") or ""
    if not (module.startswith("OpenSSL") or module.startswith("service_identity")):
        return None
    error = reason.value
    if module.startswith("service_identity"):
        return "TLS verification failed: %s" % (error,)
    if error.args and isinstance(error.args[0], list):
        texts = [entry[-1] for entry in error.args[0] if entry and entry[-1]]
        if "certificate verify failed" in texts:
            return "TLS verification failed: certificate verify failed"
        if texts:
            return "TLS failed: " + "; ".join(texts)
    return "TLS failed: %s: %s" % (kind.__name__, error)


def _firstLine(reply):
    return reply[:80].split(b"\r\n", 1)[0].decode("utf-8", "replace")


class PoolExhausted(Exception):
    """
    Every dedicated connection of a server stayed in use for the whole wait.
    """

    def __init__(self, address, cap, wait):
        Exception.__init__(
            self,
            "rmux: all %d dedicated connections to backend %s are in use "
            "(waited %d ms)" % (cap, address, round(wait * 1000)),
        )
