# -*- test-case-name: tests.test_proxy -*-
"""
The client-facing side: one L{ClientProtocol} per client connection, made by
a L{ProxyFactory} per listener.

Each request gets a L{ReplySlot} in its client's reply queue the moment it is
parsed, whether it is answered locally or by a backend; replies leave strictly
in request order, so a fast reply never overtakes a slow one.
"""

import os
import sys
from collections import deque
from itertools import count

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

import rmux
from rmux import commands as C
from rmux import resp
from rmux.pool import errorReply


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


@implementer(IPushProducer)
class ClientProtocol(Protocol):
    """
    One client of rmux.

    @ivar db: the db this client has SELECTed; applied lazily on whichever
        pooled connection carries its next request.
    @ivar protocolVersion: 2, or 3 after C{HELLO 3}.
    """

    log = Logger()

    def __init__(self):
        self.queue = deque()
        self.affinity = {}
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
        self._timer = None
        self._writeTimer = None

    # Connection life

    def connectionMade(self):
        factory = self.factory
        self.id = factory.nextClientId()
        self.parser = factory.makeParser()
        self.table = factory.table
        self.router = factory.router
        self.clock = factory.reactor
        self.createdAt = self.lastActivity = self.clock.seconds()
        factory.clientConnected(self)
        self.transport.registerProducer(self, True)
        self._armTimer()

    def connectionLost(self, reason):
        self.disconnected = True
        self.closing = True
        self.queue.clear()
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
        handle = self.handleCommand
        for args in parser.feed(data):
            handle(args)
            if self.closing:
                return
        if parser.error is not None:
            self.factory.stats.protocolErrors += 1
            self.reply(resp.error(b"ERR " + str(parser.error).encode()))
            self.closeAfterReplies()

    # Replies, in request order

    def reply(self, data):
        """
        Queue a reply that is ready now.
        """
        if self.queue:
            self.queue.append(ReplySlot(self, data))
        elif not self.disconnected:
            self.factory.stats.bytesOut += len(data)
            self.transport.write(data)

    def slotFilled(self, slot):
        """
        A backend filled C{slot}: write every reply that is now at the head.
        """
        queue = self.queue
        if not queue or queue[0] is not slot:
            return
        out = [queue.popleft().data]
        while queue and queue[0].data is not None:
            out.append(queue.popleft().data)
        if self.disconnected:
            return
        if len(out) == 1:
            data = out[0]
            self.factory.stats.bytesOut += len(data)
            self.transport.write(data)
        else:
            self.factory.stats.bytesOut += sum(map(len, out))
            self.transport.writeSequence(out)
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

    def handleCommand(self, args):
        """
        Answer one parsed request locally, refuse it, or forward it.
        """
        self.factory.stats.commands += 1
        spec = self.table.lookup(args)
        if spec is None:
            self.reply(self._unknown(args))
            return
        if not spec.checkArity(len(args)):
            self.reply(C.wrongArityError(spec.name))
            return
        policy = spec.policy
        if policy == C.FORWARD:
            slot = ReplySlot(self)
            self.queue.append(slot)
            self.router.route(args, spec, slot, self.db, self.protocolVersion)
        elif policy == C.LOCAL:
            self.lastCommand = spec.name
            handler = getattr(self, "local_" + spec.name.replace("|", "_"), None)
            if handler is None:
                self.reply(errorReply("rmux cannot answer '%s' yet" % (spec.name,)))
            else:
                handler(args)
        elif policy == C.BLOCKING and not spec.isBlocking(args):
            slot = ReplySlot(self)
            self.queue.append(slot)
            self.router.route(args, spec, slot, self.db, self.protocolVersion)
        else:
            self.factory.stats.refused += 1
            self.reply(self.refusal(spec))

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
            self.reply(
                resp.error(
                    b"ERR AUTH <password> called without any password configured "
                    b"for the default user. Are you sure your configuration is correct?"
                )
            )
        elif self._authenticate(args[1], args[2]):
            self.reply(resp.OK)
        else:
            self.reply(self.WRONGPASS)

    WRONGPASS = resp.error(b"WRONGPASS invalid username-password pair or user is disabled.")

    def _authenticate(self, username, password):
        # No users are configured yet: like Redis's default user with
        # 'nopass', any password is accepted for 'default' only.
        return username == b"default"

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
        while position < len(args):
            option = args[position].lower()
            remaining = len(args) - position - 1
            if option == b"auth" and remaining >= 2:
                if not self._authenticate(args[position + 1], args[position + 2]):
                    self.reply(self.WRONGPASS)
                    return
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
        factory = self.factory
        if delay is None:
            delay = factory.timerDelay()
        if delay:
            self._timer = self.clock.callLater(delay, self._checkTimeouts)

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
            self.reply(errorReply("rmux: request not completed within the local read timeout"))
            self.closeAfterReplies()
            return
        if idleTimeout and not self.queue and quiet >= idleTimeout:
            self.transport.loseConnection()
            return
        remaining = [t - quiet for t in (readTimeout, idleTimeout) if t and t > quiet]
        self._armTimer(min(remaining) if remaining else None)

    def pauseProducing(self):
        """
        The client stopped reading: it has the local write timeout to start
        again.
        """
        self.paused = True
        timeout = self.factory.localWriteTimeout
        if timeout and self._writeTimer is None:
            self._writeTimer = self.clock.callLater(timeout, self._writeTimedOut)

    def resumeProducing(self):
        self.paused = False
        if self._writeTimer is not None:
            self._writeTimer.cancel()
            self._writeTimer = None

    def stopProducing(self):
        pass

    def _writeTimedOut(self):
        self._writeTimer = None
        self.log.info("closing client {id}: it stopped reading its replies", id=self.id)
        self.transport.abortConnection()


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

    def __init__(self, reactor, router, table, listener=None, health=None):
        self.reactor = reactor
        self.router = router
        self.table = table
        self.listener = listener
        self.health = health
        self.clients = set()
        self._drained = None
        self.stats = ListenerStats()
        self.startedAt = reactor.seconds()
        self._ids = count(1)
        ms = lambda name: getattr(listener, name, 0) / 1000.0 if listener else 0.0
        self.localReadTimeout = ms("localReadTimeout")
        self.localWriteTimeout = ms("localWriteTimeout")
        self.idleTimeout = ms("idleTimeout")

    def nextClientId(self):
        return next(self._ids)

    def makeParser(self):
        return resp.RequestParser()

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

    def disconnectAll(self, timeout=5.0):
        """
        Close every client once the replies it is owed have been written,
        and abort those still waiting after C{timeout} seconds.

        @return: a L{Deferred} that fires when no client is left.
        """
        if not self.clients:
            return succeed(None)
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
            ("replication", lambda: [("role", "master")]),
            ("backends", self._infoBackends),
        ]
        wanted = set(sections)
        if not wanted or wanted & {"all", "everything", "default"}:
            wanted = {name for name, _ in available}
        parts = []
        for name, fields in available:
            if name in wanted:
                body = "".join("%s:%s\r\n" % pair for pair in fields())
                parts.append("# %s\r\n%s" % (name.capitalize(), body))
        return "\r\n".join(parts)

    def _infoServer(self):
        import twisted

        listener = self.listener
        return [
            ("redis_version", self.backendFacts()["version"]),
            ("rmux_version", rmux.__version__),
            ("python_version", sys.version.split()[0]),
            ("twisted_version", twisted.__version__),
            ("process_id", os.getpid()),
            ("listener", listener.name if listener is not None else ""),
            ("multiplexing", int(bool(listener and listener.multiplexing))),
            ("uptime_in_seconds", int(self.reactor.seconds() - self.startedAt)),
        ]

    def _infoClients(self):
        return [("connected_clients", len(self.clients))]

    def _infoStats(self):
        s = self.stats
        return [
            ("total_connections_received", s.connectionsReceived),
            ("total_commands_processed", s.commands),
            ("total_net_input_bytes", s.bytesIn),
            ("total_net_output_bytes", s.bytesOut),
            ("rejected_commands", s.refused),
            ("protocol_errors", s.protocolErrors),
        ]

    def _infoBackends(self):
        pools = self.router.pools
        states = self.health.states() if self.health is not None else {}
        active = sum(1 for p in pools if states.get(p) == "up")
        fields = [("active_endpoints", active), ("total_endpoints", len(pools))]
        for index, pool in enumerate(pools):
            st = pool.stats
            fields.append(
                (
                    "backend%d" % (index,),
                    "address=%s,status=%s,connections=%d,connects=%d,"
                    "connect_failures=%d,errors=%d,timeouts=%d"
                    % (
                        pool.address,
                        states.get(pool, "unknown"),
                        len(pool.connections),
                        st.connects,
                        st.connectFailures,
                        st.errors,
                        st.timeouts,
                    ),
                )
            )
        return fields


class ListenerStats:
    """
    Counters for one listener, shown by INFO.
    """

    __slots__ = (
        "connectionsReceived",
        "commands",
        "bytesIn",
        "bytesOut",
        "refused",
        "protocolErrors",
    )

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)
