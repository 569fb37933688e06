# -*- test-case-name: tests.test_transport -*-
"""
Faster paths through Twisted's stream transports for rmux's sockets.

Profiling rmux under load showed more time in the transports than in rmux:

  - Twisted's UNIX transports read with C{recvmsg} (through a Python
    wrapper) so they can receive file descriptors, which rmux never does; a
    plain C{recv} does the same job for less.
  - C{transport.write} never sends at once: it registers the socket for
    writability and sends on a later loop turn, so every reply costs two
    extra C{epoll_ctl} calls.  L{writeNow} sends at once when nothing is
    queued, and falls back to the transport's own buffering otherwise.
  - C{transport.writeSequence} joins its pieces into one string before
    sending them, a copy of every big value forwarded.
    L{writeSequenceNow} hands them to one gathering C{sendmsg} instead, and
    what the socket does not take is sent from the pieces as they are (see
    L{_GatheringWrite}).
  - Received in chunks, a big value is copied again when they are joined.
    While its protocol has a C{sink} (an L{rmux.resp.BodySink}), rmux's
    transports receive straight into it (see L{_Read}).

Everything else (buffering, producers, closing, errors) stays Twisted's.

These paths use the attributes of Twisted's write buffer
(L{TWISTED_INTERNALS}), which are not public API.  L{knowsWriteBuffer}
checks a transport for them once per class; where one is missing (a
Twisted release that renamed it), rmux logs it once, loudly, and takes
Twisted's public paths instead: plain C{write}s, and an output limit
counted from what rmux wrote while the client was not reading (see
L{rmux.replies.ReplyQueue.checkOutputLimit}), never skipped.
"""

import _socket
import shutil
import socket
from errno import EWOULDBLOCK

from twisted.internet import main, tcp, unix
from twisted.internet.address import IPv6Address
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import execute
from twisted.internet.endpoints import UNIXServerEndpoint as _UNIXServerEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import (
    IHalfCloseableProtocol, IStreamServerEndpoint, ITCPTransport,
)
from twisted.internet.protocol import ClientCreator, Factory
from twisted.logger import Logger
from zope.interface import implementer

from rmux.poller import IN as _IN, ConnectionPoller, PolledConnection


try:
    from rmux._speedups import recvBody
except ImportError:
    recvBody = None

log = Logger()

TWISTED_INTERNALS = (
    "dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen", "_maybePauseProducer",
)
"""
The attributes of Twisted's C{FileDescriptor} write buffer rmux relies on:
the string being sent and where in it, the pieces queued behind it and
their size, and the call that pauses the producer when they are too many.
"""

_writeBufferKnown = {}


def knowsWriteBuffer(transport):
    """
    Whether C{transport} has every attribute of L{TWISTED_INTERNALS}, as
    Twisted's stream transports do; checked once per transport class.  A
    Twisted transport without them is reported once, as critical.
    """
    kind = type(transport)
    known = _writeBufferKnown.get(kind)
    if known is None:
        # Its own attributes (or its class's), not ones a wrapper hands on
        # from the transport under it (a TLS connection, through
        # ProtocolWrapper.__getattr__): writing to that one's socket would
        # bypass the encryption.
        own = vars(transport)
        missing = [name for name in TWISTED_INTERNALS
                   if name not in own and not hasattr(kind, name)]
        known = _writeBufferKnown[kind] = not missing
        if missing and isinstance(transport, FileDescriptor):
            import twisted

            log.critical(
                "rmux: Twisted {version}'s {kind} lacks {missing}: rmux writes through "
                "Twisted's public write() instead, and counts a client's output limit "
                "from what it wrote while the client was not reading; rmux supports "
                "the Twisted releases its setup.py names",
                version=twisted.__version__, kind=kind.__name__, missing=", ".join(missing),
            )
    return known


class _Read:
    """
    A transport that reads with one plain C{recv} (Twisted's UNIX
    transports use C{recvmsg}, through a Python wrapper, to receive file
    descriptors, which rmux never does), handing the data to its protocol
    itself.

    While its protocol (an L{ISinkProtocol}) has a C{sink}, it receives a
    big value straight into the bytes object it will be instead, and tells
    the protocol with C{bodyReceived(size)}; it never receives more than
    the value's own bytes then.
    """

    def doRead(self):
        protocol = self.protocol
        sink = getattr(protocol, "sink", None)
        try:
            if sink is None:
                data = self.socket.recv(self.bufferSize)
            else:
                size = recvBody(sink.body, sink.filled, self.socket.fileno())
        except OSError as error:
            if error.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if sink is None:
            if not data:
                return main.CONNECTION_DONE
            protocol.dataReceived(data)
        elif size:
            protocol.bodyReceived(size)
        else:
            return main.CONNECTION_DONE
        return None


class _GatheringWrite:
    """
    A transport that does not join everything queued into one string.

    When less than C{SEND_LIMIT} bytes are left of the string being sent,
    Twisted joins it with every piece queued behind it: with megabyte
    values queued, a copy of each.  Here the next C{SEND_LIMIT} bytes are
    taken instead: a big piece becomes the string being sent as it is, or
    (behind other bytes) only its first C{SEND_LIMIT} bytes are copied.
    """

    def doWrite(self):
        if (knowsWriteBuffer(self) and self._tempDataLen >= self.SEND_LIMIT
                and len(self.dataBuffer) - self.offset < self.SEND_LIMIT):
            self._takeQueued()
        return super().doWrite()

    def _takeQueued(self):
        """
        Make the next C{SEND_LIMIT} queued bytes the string being sent, so
        that Twisted's C{doWrite} sends from it without joining anything.
        """
        pieces = self._tempDataBuffer
        limit = self.SEND_LIMIT
        remaining = len(self.dataBuffer) - self.offset
        if not remaining and len(pieces[0]) >= limit:
            first = pieces.pop(0)
            self._tempDataLen -= len(first)
            self.dataBuffer = first
            self.offset = 0
            return
        head = [memoryview(self.dataBuffer)[self.offset:]] if remaining else []
        size = remaining
        taken = 0
        for piece in pieces:
            if size + len(piece) > limit:
                break
            head.append(piece)
            size += len(piece)
            taken += 1
        if size < limit:
            # Split the piece that crosses the limit, without copying the
            # part left queued.
            view = memoryview(pieces[taken])
            head.append(view[:limit - size])
            pieces[taken] = view[limit - size:]
            size = limit
        del pieces[:taken]
        self._tempDataLen -= size - remaining
        self.dataBuffer = b"".join(head)
        self.offset = 0



_halfCloseable = {}


class _AcceptedConnection(PolledConnection):
    """
    An accepted connection that waits for its events through the
    reactor's L{rmux.poller.ConnectionPoller}, made with only what it
    needs: Twisted's C{tcp.Server} also formats its log prefix and its
    C{repr} for every client, which here are made when asked for.
    """

    #: Twisted's UNIX transport queues file descriptors to send here; rmux
    #: never sends any (and writes as its TCP transport does).
    _sendmsgQueue = ()
    writeSomeData = tcp.Connection.writeSomeData
    #: Whether the peer's address is a path (UNIX), kept as Twisted does.
    peerIsPath = False

    def __init__(self, sock, protocol, client, server, sessionno, reactor):
        self.reactor = reactor
        self._tempDataBuffer = []
        self._tempDataLen = 0
        sock.setblocking(False)
        self.socket = sock
        self.fileno = sock.fileno
        self.protocol = protocol
        self.server = server
        if self.peerIsPath:
            client = (client, None)
        elif len(client) != 2:
            self._addressType = IPv6Address
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.connected = 1
        poller = self.poller = server.poller
        self.pollFd = sock.fileno()
        if poller is None:
            FileDescriptor.startReading(self)
        else:
            poller.watch(self, _IN)
        accepted = server._accepted
        if accepted is not None:
            accepted.append(self)

    def registerProducer(self, producer, streaming):
        # Without the check of Twisted's TLS mixin on the way: rmux never
        # starts TLS on an accepted connection (its TLS port wraps the
        # protocol instead).
        FileDescriptor.registerProducer(self, producer, streaming)

    def readConnectionLost(self, reason):
        # Twisted adapts the protocol to IHalfCloseableProtocol on every
        # close; whether its class provides it is asked once.
        kind = type(self.protocol)
        halfCloseable = _halfCloseable.get(kind)
        if halfCloseable is None:
            halfCloseable = _halfCloseable[kind] = IHalfCloseableProtocol.implementedBy(kind)
        if halfCloseable:
            super().readConnectionLost(reason)
        else:
            self.connectionLost(reason)

    def connectionLost(self, reason):
        """
        What Twisted's C{tcp.Connection.connectionLost} does, in one call:
        closed once, the socket closed (reset when aborted), the producer
        stopped, the protocol told.
        """
        sock = getattr(self, "socket", None)
        if sock is None:
            return
        if self.poller is not None:
            self.poller.forgetClosing(self)
        else:
            FileDescriptor.stopReading(self)
            FileDescriptor.stopWriting(self)
        self.disconnected = 1
        self.connected = 0
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.stopProducing()
        orderly = not issubclass(reason.type, ConnectionAborted)
        if orderly and not self._shouldShutdown:
            # The C socket's close: the standard library's wrapper (two
            # calls) only adds makefile()'s bookkeeping, unused here.
            _socket.socket.close(sock)
        else:
            self._closeSocket(orderly)
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        protocol.connectionLost(reason)

    @property
    def logstr(self):
        protocol = getattr(self, "protocol", None)
        prefix = self._getLogPrefix(protocol) if protocol is not None else "-"
        return f"{prefix},{self.sessionno},{self.hostname}"

    def __repr__(self):
        return "<%s #%s on %s>" % (
            type(getattr(self, "protocol", None)).__name__, self.sessionno,
            getattr(self.server, "_realPortNumber", None),
        )


class UNIXServer(_AcceptedConnection, _Read, _GatheringWrite, unix.Server):
    """
    An accepted UNIX connection that reads with C{recv}, in larger chunks
    than Twisted's 64 KB, so large values take fewer reads.

    Not much larger: C{recv(n)} allocates C{n} bytes first, and from
    glibc's 128 KiB mmap threshold on, that is an C{mmap}, C{mremap} and
    C{munmap} per read (16 us instead of 2.5 us here), for every client's
    every request.

    @cvar backlogSendBuffer: the socket send buffer (C{SO_SNDBUF}) asked
        for once a write does not fit in the default one (about 200 KB; a
        megabyte reply then took five sends, each waiting for the client
        to read).  The kernel caps it at C{net.core.wmem_max}.  Only
        clients that are sent big replies get it, and what it holds would
        otherwise wait in rmux's memory.
    """

    bufferSize = 127 * 1024
    backlogSendBuffer = 2 * 1024 * 1024
    sendBufferRaised = False

    peerIsPath = True

    #: Close without C{shutdown} first: that is only needed when another
    #: process shares the socket, which an accepted client's never is, and
    #: it costs a system call per client, most of them short-lived.
    _shouldShutdown = False


class _ListeningSocket(socket.socket):
    """
    A listening UNIX socket whose C{accept} skips what the standard
    library's spends on every client (reading C{family} back as an enum,
    checking the default timeout): with one connection per request, that
    is per request.
    """

    __slots__ = ()

    def accept(self):
        fd, address = self._accept()
        # The C socket: the standard library's class adds only makefile()'s
        # bookkeeping and enum-typed attributes, at a Python call each.
        return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd), address


class _ReadAtAccept:
    """
    A listening port that reads every connection it accepts at once,
    rather than on the reactor's next turn.

    A client that connects to send a command or two (a PHP request) has
    usually sent them by the time rmux accepts: reading now takes the
    command on its way to Redis in this turn, and saves the reactor the
    wake-up and dispatch that would report the data (measured in bench/
    case a).  A client that has sent nothing yet costs one C{recv} that
    finds nothing.
    """

    _accepted = None
    #: The L{ConnectionPoller} its connections wait through (L{None}: the
    #: reactor), found at the first accept.
    poller = _UNKNOWN = object()

    def doRead(self):
        if self.poller is self._UNKNOWN:
            self.poller = ConnectionPoller.forReactor(self.reactor)
        # Each connection made adds itself (see _AcceptedConnection).
        self._accepted = accepted = []
        try:
            return super().doRead()
        finally:
            self._accepted = None
            for transport in accepted:
                _readNow(transport)


def _readNow(transport):
    """
    What the reactor does when C{transport} is readable, done now.
    """
    if not transport.connected or transport.disconnecting:
        return
    try:
        why = transport.doRead()
    except Exception:
        log.failure("reading a new connection")
        why = main.CONNECTION_LOST
    if why:
        transport.disconnectNow(why, True)


class UNIXPort(_ReadAtAccept, unix.Port):
    """
    A UNIX listening port whose connections read with C{recv}.
    """

    transport = UNIXServer
    _lastPeer = _lastAddress = None

    def _buildAddr(self, name):
        # A UNIX client's address is nearly always the same (unnamed), and
        # nothing changes an address: one object serves them all.
        if name != self._lastPeer or self._lastAddress is None:
            self._lastAddress = unix.Port._buildAddr(self, name)
            self._lastPeer = name
        return self._lastAddress

    def createInternetSocket(self):
        listening = _ListeningSocket(self.addressFamily, self.socketType)
        listening.setblocking(False)
        return listening


class UNIXClient(_Read, _GatheringWrite, unix.Client):
    """
    An outgoing UNIX connection that reads with C{recv}, in chunks of
    L{UNIXServer.bufferSize}.
    """

    bufferSize = UNIXServer.bufferSize
    backlogSendBuffer = UNIXServer.backlogSendBuffer
    sendBufferRaised = False



class TCPClient(_Read, _GatheringWrite, tcp.Client):
    """
    An outgoing TCP connection that does not join queued big values, and
    reads in chunks of L{UNIXServer.bufferSize} rather than 64 KB: half the
    reads for a big reply.
    """

    bufferSize = UNIXServer.bufferSize



class TCPServer(_AcceptedConnection, _Read, _GatheringWrite, tcp.Server):
    """
    An accepted TCP connection that reads in chunks of
    L{UNIXServer.bufferSize}, receives big values in place and does not
    join queued big ones, as rmux's UNIX connections do; without Nagle's
    delay (see L{setNoDelay}).
    """

    bufferSize = UNIXServer.bufferSize

    def __init__(self, *args, **kwargs):
        _AcceptedConnection.__init__(self, *args, **kwargs)
        setNoDelay(self)


def setNoDelay(transport):
    """
    Turn off Nagle's algorithm on C{transport}'s TCP connection (under TLS
    too), if it has one: rmux writes whole batches of requests or replies,
    and a batch held back until the previous one is acknowledged (by its
    reply) costs a round trip, which with one connection per server serves
    every client a round trip late.
    """
    while transport is not None and not ITCPTransport.providedBy(transport):
        transport = getattr(transport, "transport", None)
    # Older Twisted's UNIX connections claim ITCPTransport too.
    sock = getattr(transport, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        transport.setTcpNoDelay(True)



class TCPPort(_ReadAtAccept, tcp.Port):
    """
    A TCP listening port whose connections are L{TCPServer}s.
    """

    transport = TCPServer



class TCPConnector(tcp.Connector):
    def _makeTransport(self):
        return TCPClient(self.host, self.port, self.bindAddress, self, self.reactor)


class UNIXConnector(unix.Connector):
    def _makeTransport(self):
        return UNIXClient(self.address, self, self.reactor, self.checkPID)


@implementer(IStreamServerEndpoint)
class TCPServerEndpoint:
    """
    Like Twisted's C{TCP4ServerEndpoint} and C{TCP6ServerEndpoint} (the
    interface's address says which), listening with L{TCPPort} on a real
    POSIX reactor, and as usual on any other, such as a test reactor.
    """

    def __init__(self, reactor, port, backlog=50, interface=""):
        self._reactor = reactor
        self._port = port
        self._backlog = backlog
        self._interface = interface

    def listen(self, protocolFactory):
        reactor = self._reactor
        if not isinstance(reactor, PosixReactorBase):
            return execute(reactor.listenTCP, self._port, protocolFactory,
                           backlog=self._backlog, interface=self._interface)

        def start():
            port = TCPPort(self._port, protocolFactory, self._backlog,
                           self._interface, reactor)
            port.startListening()
            return port

        return execute(start)



class UNIXServerEndpoint(_UNIXServerEndpoint):
    """
    Twisted's UNIX server endpoint, listening with L{UNIXPort} on a real
    POSIX reactor (and as usual on any other, such as a test reactor), and
    giving the socket file an owner when asked.
    """

    def __init__(self, reactor, address, backlog=50, mode=0o666, wantPID=0, owner=None):
        """
        @param owner: C{"user"}, C{"user:group"} or C{":group"} (names or
            numeric ids), or L{None} to leave the socket file as created.
        """
        _UNIXServerEndpoint.__init__(self, reactor, address, backlog, mode, wantPID)
        self._owner = owner

    def listen(self, protocolFactory):
        if not isinstance(self._reactor, PosixReactorBase):
            return _UNIXServerEndpoint.listen(self, protocolFactory)

        def start():
            port = UNIXPort(
                self._address, protocolFactory, self._backlog, self._mode,
                self._reactor, self._wantPID,
            )
            port.startListening()
            if self._owner:
                try:
                    setOwner(self._address, self._owner)
                except BaseException:
                    port.stopListening()
                    raise
            return port

        return execute(start)


def setOwner(path, owner):
    """
    Give C{path} the owner C{owner} (C{"user"}, C{"user:group"},
    C{":group"}; names or numeric ids).

    @raise ValueError: an unknown user or group, with a message naming it.
    """
    user, _, group = owner.partition(":")

    def parse(value):
        if not value:
            return None
        return int(value) if value.isdigit() else value

    try:
        shutil.chown(path, parse(user), parse(group))
    except LookupError as e:
        raise ValueError("socketOwner %r: %s" % (owner, e)) from None


class FastClientCreator(ClientCreator):
    """
    L{ClientCreator} whose connections do not join queued big values, and
    whose UNIX connections read with C{recv}.
    """

    def connectTCP(self, host, port, timeout=30, bindAddress=None):
        reactor = self.reactor
        if not isinstance(reactor, PosixReactorBase):
            return ClientCreator.connectTCP(self, host, port, timeout, bindAddress)

        def connect(host, port, factory, timeout, bindAddress):
            connector = TCPConnector(host, port, factory, timeout, bindAddress, reactor)
            connector.connect()
            return connector

        return self._connect(connect, host, port, timeout=timeout, bindAddress=bindAddress)

    def connectUNIX(self, address, timeout=30, checkPID=False):
        reactor = self.reactor
        if not isinstance(reactor, PosixReactorBase):
            return ClientCreator.connectUNIX(self, address, timeout, checkPID)

        def connect(address, factory, timeout, checkPID):
            connector = UNIXConnector(address, factory, timeout, reactor, checkPID)
            connector.connect()
            return connector

        return self._connect(connect, address, timeout=timeout, checkPID=checkPID)


class _OneProtocol(Factory):
    """
    Twisted's C{connectProtocol} factory, without its log line at every
    connection's start and end (health checks, TLS backends, pub/sub).
    """

    noisy = False

    def __init__(self, protocol):
        self.protocol = protocol

    def buildProtocol(self, addr):
        return self.protocol


def connectQuietly(endpoint, protocol):
    """
    Connect C{protocol} through C{endpoint}, as C{connectProtocol} does,
    without logging the factory's start and stop.
    """
    return endpoint.connect(_OneProtocol(protocol))


class WriteCoalescer:
    """
    Holds back writes made while a batch of backend replies is handed out,
    and sends each transport's share in one write when the batch ends: a
    client that pipelined 16 requests gets its 16 replies in one C{send},
    not 16.

    Outside a batch, L{write} is L{writeNow}.
    """

    def __init__(self):
        self.depth = 0
        self.pending = {}

    def write(self, transport, data):
        if not self.depth:
            writeNow(transport, data)
            return
        chunks = self.pending.get(transport)
        if chunks is None:
            self.pending[transport] = [data]
        else:
            chunks.append(data)

    def begin(self):
        self.depth += 1

    def end(self):
        self.depth -= 1
        if self.depth or not self.pending:
            return
        pending, self.pending = self.pending, {}
        for transport, chunks in pending.items():
            writeNow(transport, chunks[0] if len(chunks) == 1 else b"".join(chunks))


#: The process's coalescer (one process is one event loop).
coalescer = WriteCoalescer()


def unsentBytes(transport):
    """
    How many bytes C{transport} holds that the peer has not taken, or
    L{None} for a transport that does not say (see L{knowsWriteBuffer}).
    """
    if not knowsWriteBuffer(transport):
        return None
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def _idleSocket(transport):
    """
    @return: the socket of C{transport} if bytes written now may go straight
        to it (nothing queued, connected, not closing), else L{None}.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or not (_writeBufferKnown.get(type(transport)) or knowsWriteBuffer(transport))
        or transport._tempDataBuffer
        or transport.offset != len(transport.dataBuffer)
        or not transport.connected
        or transport.disconnecting
    ):
        return None
    return sock


def _keepUnsent(transport, data, sent):
    """
    Make C{data}, of which the socket took C{sent} bytes, the transport's
    send buffer as it is: Twisted sends from a view of it, where C{write}
    would copy it now and join it again later (a megabyte GET, twice).

    The first time on a transport with a C{backlogSendBuffer}, the socket's
    send buffer is raised to it, and the rest offered again.
    """
    size = getattr(transport, "backlogSendBuffer", 0)
    if size and not transport.sendBufferRaised:
        transport.sendBufferRaised = True
        sock = transport.socket
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            sent += sock.send(memoryview(data)[sent:])
        except OSError:
            pass
        if sent >= len(data):
            return
    transport.dataBuffer = data
    transport.offset = sent
    transport._maybePauseProducer()
    transport.startWriting()


def writeNow(transport, data):
    """
    Write C{data}, sending it at once when the transport has nothing queued.

    What the socket does not take now is left to the transport, which sends
    it when the socket is writable; a socket error is left for Twisted to
    find on that write.

    @param transport: a Twisted stream transport (or any L{ITransport}).
    @param data: the bytes to write.
    """
    sock = _idleSocket(transport)
    if sock is None:
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except OSError:
        sent = 0
    if sent >= len(data):
        return
    if sent:
        _keepUnsent(transport, data, sent)
    else:
        transport.write(data)


#: The most pieces one C{sendmsg} takes (Linux's C{IOV_MAX}).
_IOV_MAX = 1024


def writeSequenceNow(transport, pieces):
    """
    Write C{pieces} in order, like C{transport.writeSequence}, but send them
    at once with one gathering C{sendmsg} when the transport has nothing
    queued: a megabyte value is not copied into a joined string first.

    What the socket does not take is left to the transport, as in
    L{writeNow}: the piece it stopped in becomes the send buffer as it is,
    the pieces after it are queued behind.

    @param pieces: a C{list} of C{bytes}.
    """
    sock = _idleSocket(transport)
    if sock is None:
        transport.writeSequence(pieces)
        return
    try:
        sent = sock.sendmsg(pieces[:_IOV_MAX])
    except OSError:
        sent = 0
    done = 0
    for piece in pieces:
        if sent < len(piece):
            break
        sent -= len(piece)
        done += 1
    if done == len(pieces):
        return
    if not sent:
        transport.writeSequence(pieces[done:])
        return
    _keepUnsent(transport, pieces[done], sent)
    if done + 1 < len(pieces):
        transport.writeSequence(pieces[done + 1:])
