# -*- test-case-name: tests.test_resp -*-
"""
RESP, the Redis serialization protocol, as rmux needs it.

Three jobs live here, none of them doing any I/O:

  - L{RequestParser} turns a client's byte stream into commands (lists of
    C{bytes}).  RESP arrays go through the C accelerator C{rmux._speedups}
    when it was built, else through C{hiredis}, when they can; inline
    (telnet style) commands are split by hand with Redis's own quoting
    rules.  Error texts are Redis's, so a client sees what Redis would say.
  - L{ReplyFramer} cuts a backend's byte stream into complete top-level
    replies without decoding them: the bytes a client receives are the bytes
    Redis sent.
  - The encoders build the few replies rmux answers itself, and re-encode
    commands for forwarding.

This is the proxy's hottest code.  Loops alias what they touch into locals
and avoid per-item function calls; that is deliberate, not an accident of
style.
"""

import re

from rmux import settings

try:
    import hiredis
except ImportError:  # pragma: no cover
    hiredis = None

try:
    from rmux._speedups import scanRequests as _scanRequests
    from rmux._speedups import fillBody as _fillBody, newBody as _newBody
except ImportError:
    _scanRequests = _fillBody = _newBody = None

try:
    from rmux._speedups import frameReplies as _frameReplies
except ImportError:
    # Missing, or an accelerator built from an older rmux.
    _frameReplies = None


__all__ = [
    "ProtocolError", "RequestParser", "ReplyFramer", "BodySink", "splitArgs",
    "scanReplies", "isPush", "isError",
    "encodeCommand", "encodeCommandParts", "encodeRequest",
    "simpleString", "error", "errorReply", "integer", "bulkString", "nullReply",
    "arrayReply", "mapReply", "setReply", "verbatimString",
    "OK", "PONG",
]


OK = b"+OK\r\n"
PONG = b"+PONG\r\n"

_CRLF = b"\r\n"
_NULL_BULK = b"$-1\r\n"
_NULL3 = b"_\r\n"

# Bulk string headers for short lengths, the common case when encoding.
_BULK_HEADERS = [b"$%d\r\n" % _i for _i in range(1024)]



class ProtocolError(Exception):
    """
    The bytes received are not valid RESP.

    @ivar message: Redis's text for the problem, without the C{-ERR } prefix,
        e.g. C{"Protocol error: invalid bulk length"}.  It is a C{str} in
        which each character stands for one byte (latin-1), because Redis
        quotes the offending byte verbatim.
    """

    def __init__(self, message):
        Exception.__init__(self, message)
        self.message = message


    def __str__(self):
        return self.message


    def asReply(self):
        """
        @return: the error reply Redis sends for this problem, e.g.
            C{b"-ERR Protocol error: invalid bulk length\\r\\n"}.
        @rtype: C{bytes}
        """
        return b"-ERR " + self.message.encode("latin-1") + _CRLF



def _quoteByte(c):
    """
    Show one offending byte the way Redis's error replies do: verbatim, with
    CR and LF turned into spaces so the reply stays one line.
    """
    if c == 13 or c == 10:
        return " "
    return chr(c)



# ---------------------------------------------------------------------------
# Inline commands

# C isspace(): what sdssplitargs skips between arguments and accepts after
# a closing quote.
_ISSPACE = frozenset(b" \t\n\x0b\x0c\r")
# What ends an unquoted argument.  \v and \f are not in it: Redis keeps them
# inside an argument and only skips them between arguments.
_ENDS_ARG = frozenset(b" \t\n\r")
_ESCAPES = {
    ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7,
}
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")



def splitArgs(line):
    """
    Split one inline command line into arguments, as Redis's
    C{sdssplitargs} does.

    Arguments are separated by whitespace.  C{"..."} understands C{\\xHH},
    C{\\n}, C{\\r}, C{\\t}, C{\\b}, C{\\a} and C{\\c} for any other C{c};
    C{'...'} only understands C{\\'}.  A closing quote must be followed by
    whitespace or the end of the line.  Unlike Redis (which works on C
    strings), a NUL byte is an ordinary character.

    @param line: the line, without its line ending.
    @type line: C{bytes}

    @return: the arguments (possibly none), or L{None} if the quotes are
        unbalanced.
    @rtype: C{list} of C{bytes} or L{None}
    """
    if (34 not in line and 39 not in line
            and 11 not in line and 12 not in line):
        # No quotes and no \v or \f: bytes.split() is exactly sdssplitargs.
        return line.split()
    return _splitQuoted(line)



def _splitQuoted(line):
    """
    The character-by-character half of L{splitArgs}, a transcription of
    C{sdssplitargs}.
    """
    isspace = _ISSPACE
    endsArg = _ENDS_ARG
    hexdigits = _HEXDIGITS
    escapes = _ESCAPES
    n = len(line)
    i = 0
    args = []
    while True:
        while i < n and line[i] in isspace:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        append = current.append
        inDouble = inSingle = False
        while True:
            if i >= n:
                if inDouble or inSingle:
                    return None
                break
            c = line[i]
            if inDouble:
                if (c == 92 and i + 3 < n and line[i + 1] == 120
                        and line[i + 2] in hexdigits
                        and line[i + 3] in hexdigits):
                    append(int(line[i + 2:i + 4], 16))
                    i += 4
                elif c == 92 and i + 1 < n:
                    c = line[i + 1]
                    append(escapes.get(c, c))
                    i += 2
                elif c == 34:
                    i += 1
                    if i < n and line[i] not in isspace:
                        return None
                    break
                else:
                    append(c)
                    i += 1
            elif inSingle:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    append(39)
                    i += 2
                elif c == 39:
                    i += 1
                    if i < n and line[i] not in isspace:
                        return None
                    break
                else:
                    append(c)
                    i += 1
            elif c in endsArg:
                i += 1
                break
            elif c == 34:
                inDouble = True
                i += 1
            elif c == 39:
                inSingle = True
                i += 1
            else:
                append(c)
                i += 1
        args.append(bytes(current))



# ---------------------------------------------------------------------------
# Requests

# What the parser is waiting for when it holds an incomplete command.
_NOTHING, _LINE, _HEADER, _BODY, _SINK, _BODY_END = range(6)

#: Bulk strings of this size are received in place (see L{BodySink}).  Not
#: above the largest: the bytes object is allocated when the header
#: arrives, and a stranger's header must not reserve much.
_SINK_MIN = 128 * 1024
_SINK_MAX = 16 * 1024 * 1024


class BodySink(object):
    """
    A big bulk string being received in place: the bytes object it will be,
    allocated when its header arrived, and how much of it is filled.

    Received in chunks, a megabyte value would be copied once more when
    they are joined.  Here every byte is copied once, by L{RequestParser}
    or L{ReplyFramer} from what they are fed, or by the transport straight
    from the socket (see L{rmux.transport}), which then reports the bytes
    with the parser's or framer's C{bodyReceived}.

    Writing into a bytes object is only safe because nobody else holds it
    before it is complete; only C{rmux._speedups} does it.

    @ivar body: the C{bytes} being filled.
    @ivar filled: how many of its bytes are filled.
    """

    __slots__ = ("body", "filled")

    def __init__(self, body, filled):
        self.body = body
        self.filled = filled


def _startSink(size, data, start):
    """
    A L{BodySink} of C{size} bytes, filled from C{data[start:]}, or L{None}
    if the memory is not there (the caller then keeps chunks, as without
    the accelerator).
    """
    try:
        body = _newBody(size)
    except MemoryError:
        return None
    return BodySink(body, _fillBody(body, 0, data, start))


def _sinkFromChunks(size, chunks):
    """
    A L{BodySink} of C{size} bytes, filled with C{chunks} (the start of the
    value, received before), or L{None} if the memory is not there.
    """
    try:
        body = _newBody(size)
    except MemoryError:
        return None
    filled = 0
    for chunk in chunks:
        filled += _fillBody(body, filled, chunk, 0)
    return BodySink(body, filled)

# hiredis allocates a list of the announced size as soon as it reads an
# aggregate header, before any element arrives.  Large counts (and nested
# ones are as good as top-level ones to hiredis) therefore go to the pure
# parser, which checks them against the limits first.
_BIG_ARRAY = re.compile(rb"\*[1-9][0-9]{4}").search
_BIG_OTHER = re.compile(rb"[~>|][1-9][0-9]{4}").search

#: The most bytes hiredis is given at once (see L{RequestParser._parseFast}).
_FAST_WINDOW = 16 * 1024



class _HiredisScan(object):
    """
    The fast path without the C accelerator: RESP arrays parsed by
    C{hiredis}, which is laxer than Redis (it takes any element type and
    does not check the CRLF after a bulk string) and cannot say how many
    bytes it used, so its commands are only accepted if re-encoding them
    gives back exactly the bytes received.
    """

    __slots__ = ("_reader",)

    def __init__(self):
        self._reader = None

    def __call__(self, data, pos, out, maxArgs, maxBulk):
        """
        Parse the RESP arrays starting at C{data[pos]}.

        @return: C{(used, again, whole)}: the position up to which commands
            were accepted (appended to C{out}), whether the fast path may
            be used again in this feed, and whether C{data} was exactly
            the commands accepted.
        """
        n = len(data)
        # hiredis sees at most a window of the bytes: a big value is left to
        # the pure-Python parser, which keeps it without scanning or copying
        # it again, and the checks below stay cheap.
        end = min(n, pos + _FAST_WINDOW)
        if (end - pos > maxBulk or _BIG_ARRAY(data, pos, end) is not None
                or ((data.find(b"~", pos, end) >= 0 or data.find(b">", pos, end) >= 0
                     or data.find(b"|", pos, end) >= 0)
                    and _BIG_OTHER(data, pos, end) is not None)):
            return pos, False, False
        reader = self._reader
        if reader is None:
            reader = self._reader = hiredis.Reader()
        reader.feed(data, pos, end - pos)
        commands = []
        clean = True
        try:
            command = reader.gets()
            while command is not False:
                commands.append(command)
                command = reader.gets()
        except Exception:
            # hiredis refused something; what it returned before stays good.
            clean = False

        # Accept the commands only if they are exactly the bytes received.
        parts = []
        append = parts.append
        headers = _BULK_HEADERS
        crlf = _CRLF
        try:
            for command in commands:
                size = len(command)
                if not size or size > maxArgs:
                    raise TypeError()
                append(b"*%d\r\n" % size)
                for arg in command:
                    size = len(arg)
                    append(headers[size] if size < 1024
                           else b"$%d\r\n" % size)
                    append(arg)
                    append(crlf)
            encoded = b"".join(parts)
            if not data.startswith(encoded, pos):
                raise TypeError()
        except TypeError:
            # Something in there is not a plain array of bulk strings:
            # accept what comes before it, one command at a time.
            used = pos
            for command in commands:
                if command is None:
                    encoded = b"*-1\r\n"
                elif type(command) is list and len(command) <= maxArgs:
                    try:
                        encoded = encodeCommand(command)
                    except TypeError:
                        break
                else:
                    break
                if not data.startswith(encoded, used):
                    break
                used += len(encoded)
                if command:
                    out.append(command)
            else:
                if clean and used == n:
                    # Only *0 or *-1 were in the way.
                    return n, True, False
            self._reader = None
            return used, False, False
        out.extend(commands)
        used = pos + len(encoded)
        if clean and used == n:
            return n, True, not pos and bool(commands)
        # hiredis holds part of a command (or an error); forget it.
        self._reader = None
        if clean and end < n and used > pos:
            # The window ended inside a command: carry on after the last
            # complete one.
            return used, True, False
        return used, False, False




class _HeldBytes(object):
    """
    The part of L{RequestParser} that finishes what an earlier feed left
    incomplete: a line or header cut short, a bulk argument whose body is
    still arriving (kept in chunks, or received in place through a
    L{BodySink}), the CRLF after it.
    """

    __slots__ = ()

    def _stash(self, buf, pos, wait):
        """
        Keep C{buf[pos:]}, which starts an incomplete line or bulk body,
        until more arrives.
        """
        self._chunks = [buf[pos:] if pos else buf]
        self._pending = len(buf) - pos
        self._wait = wait

    def _sinkFromChunks(self, length):
        """
        The client has sent L{sinkMaximum} bytes of a bigger argument: a
        stranger's header reserves nothing, but this much shows the value
        is coming.  Receive the rest in place (L{BodySink}), so that the
        value is not held twice when the chunks are joined at its end; the
        bytes object's pages are only taken as they are filled.
        """
        sink = _sinkFromChunks(length, self._chunks)
        if sink is not None:
            self._chunks = None
            self.sink = sink
            self._pending = sink.filled
            self._wait = _SINK

    def _resume(self, data, out):
        """
        Continue the incomplete line or bulk body held from earlier feeds.

        Only the bytes of C{data} that complete it are copied; a big bulk
        argument is joined once, when its last byte arrives.

        @return: where parsing continues in C{data}, or -1 if all of
            C{data} was used (or an error occurred).
        """
        wait = self._wait
        if wait == _SINK:
            sink = self.sink
            used = _fillBody(sink.body, sink.filled, data, 0)
            self.bodyReceived(used)
            if used == len(data):
                return -1
            return self._bodyEnd(data, used, out)
        if wait == _BODY_END:
            return self._bodyEnd(data, 0, out)
        chunks = self._chunks
        if wait == _BODY:
            pre = self._pending
            total = pre + len(data)
            length = self._bulkLen
            need = length + 2
            if total < need:
                chunks.append(data)
                self._pending = total
                if (self._scan is not None and length > self.sinkMaximum
                        and self.sinkMaximum <= total < length):
                    self._sinkFromChunks(length)
                return -1
            used = need - pre
            # Like Redis, the two bytes after the body are taken for CRLF
            # whatever they are.
            if pre > length:
                # The body and one byte after it are here already.
                chunks[-1] = chunks[-1][:-1]
            elif pre < length:
                chunks.append(data[:length - pre])
            body = b"".join(chunks)
            self._chunks = None
            self._pending = 0
            self._wait = _NOTHING
            argv = self._argv
            argv.append(body)
            self._bulkLen = -1
            self._argc -= 1
            if self._argc:
                self._held += need
            else:
                out.append(argv)
                self._argv = None
                self._held = 0
            return used

        # Waiting for the end of a line: a LF for an inline command, a CR
        # and one more byte for a header.
        if self._wait == _LINE:
            end = data.find(b"\n")
            length = self._pending + (len(data) if end < 0 else end)
            if end >= 0:
                end += 1
            elif length > self._maxInline:
                self._fail("too big inline request")
                return -1
        elif chunks[-1][-1] == 13:
            end = 1
        else:
            end = data.find(b"\r")
            length = self._pending + (len(data) if end < 0 else end)
            end = -1 if end < 0 or end + 1 == len(data) else end + 2
            if end < 0 and length > self._maxInline:
                self._fail("too big mbulk count string" if self._argv is None
                           else "too big bulk count string")
                return -1
        if end < 0:
            chunks.append(data)
            self._pending += len(data)
            return -1
        chunks.append(data[:end])
        line = b"".join(chunks)
        self._chunks = None
        self._pending = 0
        self._wait = _NOTHING
        self._parseSlow(line, 0, out, False)
        if self.error is not None:
            return -1
        return end

    def bodyReceived(self, size):
        """
        C{size} more bytes of the big argument are in L{sink}: received
        into it by the caller.  (No command can complete here: the CRLF
        after the argument is still to come, through L{feed}.)
        """
        sink = self.sink
        sink.filled += size
        if sink.filled < len(sink.body):
            self._pending = sink.filled
            return
        self.sink = None
        self._argv.append(sink.body)
        self._held += sink.filled
        self._pending = 0
        self._bulkLen = -1
        self._argc -= 1
        self._wait = _BODY_END

    def _bodyEnd(self, data, pos, out):
        """
        Check the CRLF after an argument received in place, from
        C{data[pos]}: like the pure-Python parser, once both bytes are
        here (the first may have come in an earlier feed, kept in
        C{_chunks}).

        @return: as L{_resume}.
        """
        seen = self._chunks[0] if self._pending else b""
        tail = seen + data[pos:pos + 2 - len(seen)]
        if len(tail) < 2:
            self._chunks = [tail]
            self._pending = 1
            return -1
        self._chunks = None
        self._pending = 0
        self._wait = _NOTHING
        if self._argc:
            self._held += 2
        else:
            out.append(self._argv)
            self._argv = None
            self._held = 0
        end = pos + 2 - len(seen)
        return -1 if end == len(data) else end


class RequestParser(_HeldBytes):
    """
    Turns a client's byte stream into commands.

    Feed it whatever the transport delivers, split anywhere; it returns the
    commands completed so far, each a non-empty C{list} of C{bytes} with the
    command name as sent (not case-folded).  Clients may mix RESP arrays and
    inline commands freely.

    After a protocol error the parser is dead: L{error} holds the
    L{ProtocolError}, and later feeds return nothing.  The caller should
    answer with the error and close, as Redis does.

    Limits are class attributes, as with L{twisted.protocols.basic}'s
    C{MAX_LENGTH}; override them in a subclass or pass them to C{__init__}.
    They are checked as soon as a header arrives, never after buffering what
    it announces.

    RESP arrays are parsed by C{rmux._speedups.scanRequests} (else
    L{_HiredisScan}) while the stream is at a command boundary: it takes
    canonical arrays of bulk strings within the limits, in one pass, and
    leaves anything else to the pure-Python parser, which has the last
    word, including on error texts.

    @cvar maxBulkLength: the longest bulk string argument accepted (Redis's
        C{proto-max-bulk-len}).
    @cvar maxArguments: the most arguments one command may have.
    @cvar maxInlineLength: the longest inline command line, and the longest
        C{*}/C{$} header line (Redis's C{PROTO_INLINE_MAX_SIZE}).
    @cvar useSpeedups: whether to use the C accelerator for RESP arrays.
    @cvar useHiredis: whether to use hiredis for RESP arrays, when the C
        accelerator is not used.

    @ivar error: the L{ProtocolError} that killed this parser, or L{None}.
    @ivar wholeFeed: whether the last L{feed}'s bytes were exactly the
        commands it returned, all complete and canonically encoded (RESP
        arrays of bulk strings): then those bytes may be forwarded as they
        are, instead of being encoded again.
    @ivar sink: the L{BodySink} of a big argument being received, or
        L{None}.  While there is one, the caller may receive into it and
        call L{bodyReceived}, instead of calling L{feed}.
    @ivar unparsed: while restricted (L{restrictUntilAuthenticated}),
        L{feed} returns one command at a time and leaves the bytes after
        it here: the caller runs that command, then feeds these.
    """

    maxBulkLength = settings.default("maxBulkLength")
    maxArguments = settings.default("maxArguments")
    maxInlineLength = settings.default("maxInlineLength")
    useHiredis = hiredis is not None
    useSpeedups = _scanRequests is not None
    #: Arguments of these sizes are received in place, with the
    #: accelerator (see L{BodySink}).
    sinkMinimum = _SINK_MIN
    sinkMaximum = _SINK_MAX

    __slots__ = (
        "error", "_maxBulk", "_maxArgs", "_maxInline", "_fast", "_scan", "_hiredis",
        "_tooManyArgs", "_tooLong", "_saved", "unparsed",
        "_argv", "_argc", "_bulkLen", "_held", "_chunks", "_pending",
        "_wait", "wholeFeed", "sink",
    )

    def __init__(self, maxBulkLength=None, maxArguments=None,
                 maxInlineLength=None):
        """
        @param maxBulkLength: overrides L{maxBulkLength} for this parser.
        @param maxArguments: overrides L{maxArguments} for this parser.
        @param maxInlineLength: overrides L{maxInlineLength} for this parser.
        """
        self.error = None
        self.wholeFeed = False
        self._maxBulk = (self.maxBulkLength if maxBulkLength is None
                         else maxBulkLength)
        self._maxArgs = (self.maxArguments if maxArguments is None
                         else maxArguments)
        self._maxInline = (self.maxInlineLength if maxInlineLength is None
                           else maxInlineLength)
        self._tooManyArgs = "invalid multibulk length"
        self._tooLong = "invalid bulk length"
        self._saved = None
        self.unparsed = b""
        # A canonical header line is at most 21 bytes long; below that the
        # inline limit could reject what the fast path accepts.
        self._scan = _scanRequests if self.useSpeedups else None
        self.sink = None
        self._fast = bool((self._scan is not None or self.useHiredis)
                          and self._maxInline >= 21)
        self._hiredis = None
        # The command being read: arguments so far, how many are still to
        # come, and the length of the one being read (-1: its header is next).
        self._argv = None
        self._argc = 0
        self._bulkLen = -1
        # Bytes of the current command already parsed into _argv.
        self._held = 0
        # Bytes received but not yet parsed, and what they are waiting for.
        self._chunks = None
        self._pending = 0
        self._wait = _NOTHING

    @property
    def buffered(self):
        """
        The number of bytes held of an incomplete command: 0 at a command
        boundary.
        """
        return self._held + self._pending

    def restrictUntilAuthenticated(self, maxArguments=10, maxBulkLength=16384):
        """
        Apply Redis's limits for a client that has not authenticated yet,
        with Redis's texts (C{unauthenticated multibulk length}, ...), so a
        stranger cannot make rmux buffer large requests.  L{authenticated}
        lifts them.
        """
        self._saved = (self._maxArgs, self._maxBulk)
        self._maxArgs = min(self._maxArgs, maxArguments)
        self._maxBulk = min(self._maxBulk, maxBulkLength)
        self._tooManyArgs = "unauthenticated multibulk length"
        self._tooLong = "unauthenticated bulk length"

    def authenticated(self):
        """
        Lift the limits of L{restrictUntilAuthenticated}.
        """
        if self._saved is not None:
            self._maxArgs, self._maxBulk = self._saved
            self._saved = None
            self._tooManyArgs = "invalid multibulk length"
            self._tooLong = "invalid bulk length"

    def feed(self, data):
        """
        Parse more of the stream.

        @param data: the bytes just received.
        @type data: C{bytes}

        @return: the commands completed by C{data}, in order.  If C{data}
            holds a protocol error, the commands before it, with L{error}
            set.
        @rtype: C{list} of C{list} of C{bytes}
        """
        self.wholeFeed = False
        if self.error is not None or not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        out = []
        if self._saved is not None:
            return self._feedOne(data, out)
        pos = 0
        fast = self._fast
        if fast and not self._wait and self._argv is None and data[0] == 42:
            pos, fast = self._parseFast(data, 0, out)
            if pos == len(data):
                # wholeFeed is set by _parseFast when hiredis's commands
                # were exactly these bytes.
                return out
            self.wholeFeed = False
        elif self._wait:
            pos = self._resume(data, out)
            if pos < 0:
                return out
        n = len(data)
        while pos < n:
            if fast and self._argv is None and data[pos] == 42:
                pos, fast = self._parseFast(data, pos, out)
            else:
                pos = self._parseSlow(data, pos, out, fast)
        return out

    def _feedOne(self, data, out):
        """
        Parse one command of C{data}, and keep the rest in L{unparsed}, for
        a client that has not authenticated: as Redis does, a command after
        its AUTH is parsed with the limits AUTH lifted, even in the same
        packet.
        """
        pos = 0
        if self._wait:
            pos = self._resume(data, out)
            if pos < 0:
                return out
        if not out and pos < len(data):
            pos = self._parseSlow(data, pos, out, False, True)
        self.unparsed = data[pos:]
        return out

    def _fail(self, message):
        """
        Die of a protocol error.

        @return: a position beyond any buffer, to end the caller's loop.
        """
        self.error = ProtocolError("Protocol error: " + message)
        self._argv = self._chunks = self._hiredis = self.sink = None
        self._held = self._pending = 0
        self._wait = _NOTHING
        return 1 << 62

    def _parseFast(self, data, pos, out):
        """
        Parse the RESP arrays starting at C{data[pos]} with the C
        accelerator, or else hiredis.

        @return: a tuple of the position up to which commands were
            accepted, and whether the fast path may be used again in this
            feed: not if it stopped at an array it left to the pure-Python
            parser, which would hand it straight back.
        """
        scan = self._scan
        if scan is not None:
            used = scan(data, pos, out, self._maxArgs, self._maxBulk)
            if used == len(data):
                self.wholeFeed = not pos
                return used, True
            return used, data[used] != 42
        hiredisScan = self._hiredis
        if hiredisScan is None:
            hiredisScan = self._hiredis = _HiredisScan()
        used, again, whole = hiredisScan(data, pos, out, self._maxArgs, self._maxBulk)
        if whole:
            self.wholeFeed = True
        return used, again

    def _parseSlow(self, buf, pos, out, fast, single=False):
        """
        The pure-Python parser: parse C{buf} from C{pos} and keep whatever
        incomplete command remains.  A hot loop, deliberately unrolled into
        one long function: state lives in locals, not in calls per
        argument.

        @param fast: whether to stop at the next command boundary followed
            by a RESP array, so that hiredis can take it.
        @param single: whether to stop after one command.

        @return: where parsing stopped: C{len(buf)} or more if it used
            everything (or died), else the start of a RESP array for
            hiredis.
        """
        n = len(buf)
        find = buf.find
        maxInline = self._maxInline
        argv = self._argv
        argc = self._argc
        bulkLen = self._bulkLen
        start = pos
        while pos < n:
            if argv is None:
                if single and out:
                    return pos
                start = pos
                if buf[pos] != 42:
                    # An inline command.
                    end = find(b"\n", pos)
                    if end < 0:
                        if n - pos > maxInline:
                            return self._fail("too big inline request")
                        self._stash(buf, pos, _LINE)
                        return n
                    if end - pos > maxInline:
                        return self._fail("too big inline request")
                    # Redis strips a CR before the LF; no need: outside
                    # quotes it separates arguments, inside them the line is
                    # unbalanced anyway.
                    args = splitArgs(buf[pos:end])
                    if args is None:
                        return self._fail("unbalanced quotes in request")
                    pos = end + 1
                    if args:
                        out.append(args)
                    continue
                if fast:
                    return pos
                # Like Redis, find the CR, then look at the byte after it.
                end = find(b"\r", pos)
                if end < 0 or end + 1 == n:
                    if (n if end < 0 else end) - pos > maxInline:
                        return self._fail("too big mbulk count string")
                    self._stash(buf, pos, _HEADER)
                    return n
                if end - pos > maxInline:
                    return self._fail("too big mbulk count string")
                # Like Redis: the byte after the CR is not looked at, and a
                # negative count is an empty command.
                count = buf[pos + 1:end]
                if count.isdigit() and (count[0] != 48 or len(count) == 1):
                    count = int(count)
                    if count > self._maxArgs:
                        return self._fail(self._tooManyArgs)
                elif count[:1] == b"-" and count[1:].isdigit() and count[1] != 48:
                    count = 0
                else:
                    return self._fail("invalid multibulk length")
                pos = end + 2
                if not count:
                    continue
                argv = self._argv = []
                argc = count
                bulkLen = -1

            # Arguments of a RESP array.
            while True:
                if bulkLen < 0:
                    if pos >= n:
                        break
                    if buf[pos] != 36:
                        return self._fail("expected '$', got '%s'"
                                          % (_quoteByte(buf[pos]),))
                    end = find(b"\r", pos)
                    if end < 0 or end + 1 == n:
                        if (n if end < 0 else end) - pos > maxInline:
                            return self._fail("too big bulk count string")
                        self._argc = argc
                        self._bulkLen = -1
                        self._held += pos - start
                        self._stash(buf, pos, _HEADER)
                        return n
                    if end - pos > maxInline:
                        return self._fail("too big bulk count string")
                    size = buf[pos + 1:end]
                    if size.isdigit() and (size[0] != 48 or len(size) == 1):
                        bulkLen = int(size)
                        if bulkLen > self._maxBulk:
                            return self._fail(self._tooLong)
                    else:
                        return self._fail("invalid bulk length")
                    pos = end + 2
                end = pos + bulkLen
                if end + 2 > n:
                    self._argc = argc
                    self._bulkLen = bulkLen
                    self._held += pos - start
                    # Only with some of the body here: a header completed
                    # by _resume is parsed from its own line, and the body
                    # follows in the caller's buffer.
                    if (self._scan is not None and pos < n < end
                            and self.sinkMinimum <= bulkLen <= self.sinkMaximum):
                        sink = self.sink = _startSink(bulkLen, buf, pos)
                        if sink is not None:
                            self._pending = sink.filled
                            self._wait = _SINK
                            return n
                    if pos < n:
                        self._stash(buf, pos, _BODY)
                    return n
                argv.append(buf[pos:end])
                pos = end + 2
                bulkLen = -1
                argc -= 1
                if not argc:
                    break
            if argc:
                # The buffer ended between two arguments.
                self._argc = argc
                self._bulkLen = -1
                self._held += pos - start
                return n
            out.append(argv)
            argv = self._argv = None
            self._held = 0
        return pos



# ---------------------------------------------------------------------------
# Replies

# What each type byte starts.
_INVALID, _LINE_ITEM, _BLOB, _AGGREGATE, _CHUNK, _END = range(6)
_KINDS = [_INVALID] * 256
for _c in b"+-:_,#(":
    _KINDS[_c] = _LINE_ITEM
for _c in b"$=!":
    _KINDS[_c] = _BLOB
for _c in b"*%~>|":
    _KINDS[_c] = _AGGREGATE
_KINDS[ord(";")] = _CHUNK
_KINDS[ord(".")] = _END
_KINDS = tuple(_KINDS)
_NO_CRLF = "Protocol error: expected CRLF after bulk string"
# The stack entry of a streamed string: not a count, and not 0 (a streamed
# aggregate) either.
_STREAMED_STRING = 0.5

# Python pays per item, the regular expression engine per byte, so short
# replies are cut out by regular expressions: a bulk string of known length
# is a digit trie, "$1\r\n.{1}\r\n|$10\r\n.{10}\r\n|...", for every length
# up to _SHORT_BULK.  Longer ones are rare and big, and go through the loop
# in scanReplies.
_SHORT_BULK = 99



def _lengthTrie(digits, maximum):
    """
    A pattern matching the canonical decimal lengths starting with
    C{digits} (without them), each followed by CRLF and that many bytes.
    """
    length = int(digits)
    branches = [b"\r\n.{%d}" % (length,) if length else b"\r\n"]
    if length:
        for d in b"0123456789":
            more = digits + bytes([d])
            if int(more) <= maximum:
                branches.append(bytes([d]) + _lengthTrie(more, maximum))
    if len(branches) == 1:
        return branches[0]
    return b"(?:" + b"|".join(branches) + b")"



def _shortItemPattern(maximum):
    """
    The pattern of one complete reply that is not an aggregate: a line
    (simple string, error, integer, null, double, boolean, big number), a
    null bulk string, or a bulk string of at most C{maximum} bytes.
    """
    lengths = b"|".join(bytes([d]) + _lengthTrie(bytes([d]), maximum)
                        for d in b"0123456789")
    return (rb"(?:[+\-:_,#(][^\r\n]*\r\n|\$(?:-1\r\n|(?:" + lengths
            + rb")\r\n))")


_ITEM = _shortItemPattern(_SHORT_BULK)
_matchItem = re.compile(_ITEM, re.S).match
_findItems = re.compile(_ITEM, re.S).findall
# A run of top-level short replies, and blocks of aggregate elements.
_matchRun = re.compile(rb"(?:" + _ITEM + rb")++", re.S).match
_match4 = re.compile(rb"(?:" + _ITEM + rb"){4}", re.S).match
_match16 = re.compile(rb"(?:" + _ITEM + rb"){16}", re.S).match
_match64 = re.compile(rb"(?:" + _ITEM + rb"){64}", re.S).match



def scanReplies(buf, pos, stack, limit=0):
    """
    Find where complete top-level replies end in C{buf}.

    This is the framer's inner loop, kept as one function of plain values so
    that a C accelerator could replace it; it is a hot loop, deliberately
    unrolled into one long function (a call per reply element would cost
    more than the scan).  It never copies the bytes it scans.  The scan is resumable: called again on a longer C{buf} with the
    returned position and the same C{stack}, it carries on where it stopped
    instead of starting the incomplete reply over.

    C{stack} holds one entry per open aggregate, innermost last: a positive
    count of elements still to come; a negative count of attribute elements
    still to come (an attribute is not an element of its parent: it belongs
    to the value after it, for which it pushes a 1 below its own entry); 0
    for a streamed aggregate, which ends with C{.}; or C{_STREAMED_STRING}
    for a streamed string, which holds C{;n} chunks up to C{;0}.

    @param buf: the bytes received.
    @type buf: C{bytes} or C{bytearray}
    @param pos: where to start: a reply boundary, or where the last call
        stopped.
    @param stack: the open aggregates, as described above; updated in place.
    @type stack: C{list}
    @param limit: stop after this many replies; 0 for no limit.

    @return: a tuple C{(ends, pos, need)}: the offsets just past each
        complete top-level reply; where the scan stopped (the start of an
        incomplete item, or the end of the last reply found); and the
        length C{buf} must reach before scanning again is worthwhile, or -1
        if what is missing is the end of a line, so that only a LF is
        news.
    @rtype: C{tuple} of (C{list} of C{int}, C{int}, C{int})

    @raise ProtocolError: if the bytes are not RESP.
    """
    ends = []
    n = len(buf)
    find = buf.find
    push = stack.append
    pop = stack.pop
    kinds = _KINDS
    matchItem = _matchItem
    start = pos
    try:
        while pos < n:
            if stack:
                # Inside an aggregate: take short elements by the block,
                # leaving the last one to the loop, which closes aggregates.
                count = stack[-1] - 1
                if count > 0:
                    match = matchItem(buf, pos)
                    if match is not None:
                        pos = match.end()
                        left = count - 1
                        while left >= 64:
                            match = _match64(buf, pos)
                            if match is None:
                                break
                            pos = match.end()
                            left -= 64
                        while left >= 16:
                            match = _match16(buf, pos)
                            if match is None:
                                break
                            pos = match.end()
                            left -= 16
                        while left >= 4:
                            match = _match4(buf, pos)
                            if match is None:
                                break
                            pos = match.end()
                            left -= 4
                        while left:
                            match = matchItem(buf, pos)
                            if match is None:
                                break
                            pos = match.end()
                            left -= 1
                        stack[-1] -= count - left
                        if pos >= n:
                            break
                    elif buf[pos] == 36:
                        # Long bulk strings: the same, by hand.
                        left = count
                        while left:
                            end = find(b"\r\n", pos + 1)
                            if end < 0:
                                break
                            try:
                                length = int(buf[pos + 1:end])
                            except ValueError:
                                break
                            end += length + 4
                            if length < 0 or end > n:
                                break
                            if buf[end - 2] != 13 or buf[end - 1] != 10:
                                raise ProtocolError(_NO_CRLF)
                            pos = end
                            left -= 1
                            if pos == n or buf[pos] != 36:
                                break
                        stack[-1] -= count - left
                        if pos >= n:
                            break

            start = pos
            t = buf[pos]
            kind = kinds[t]
            if kind == _BLOB:
                end = find(b"\r\n", pos + 1)
                if end < 0:
                    return ends, start, -1
                try:
                    length = int(buf[pos + 1:end])
                except ValueError:
                    if t == 36 and buf[pos + 1:end] == b"?":
                        # A streamed string: ;n chunks up to ;0.
                        push(_STREAMED_STRING)
                        pos = end + 2
                        continue
                    raise
                if length >= 0:
                    pos = end + length + 4
                    if pos > n:
                        return ends, start, pos
                    if buf[pos - 2] != 13 or buf[pos - 1] != 10:
                        raise ProtocolError(_NO_CRLF)
                elif length == -1 and t == 36:
                    pos = end + 2
                else:
                    raise ValueError()
            elif kind == _LINE_ITEM:
                end = find(b"\r\n", pos + 1)
                if end < 0:
                    return ends, start, -1
                pos = end + 2
            elif kind == _AGGREGATE:
                end = find(b"\r\n", pos + 1)
                if end < 0:
                    return ends, start, -1
                try:
                    count = int(buf[pos + 1:end])
                except ValueError:
                    if buf[pos + 1:end] == b"?" and t != 62 and t != 124:
                        # A streamed aggregate, up to a ".".
                        push(0)
                        pos = end + 2
                        continue
                    raise
                pos = end + 2
                if count > 0:
                    if t == 37:
                        push(count * 2)
                    elif t == 124:
                        push(1)
                        push(-2 * count)
                    else:
                        push(count)
                    continue
                elif count == 0:
                    if t == 124:
                        push(1)
                        continue
                elif count != -1 or t != 42:
                    raise ValueError()
            elif kind == _CHUNK:
                # ; a chunk of a streamed string.
                end = find(b"\r\n", pos + 1)
                if end < 0:
                    return ends, start, -1
                length = int(buf[pos + 1:end])
                if not stack or stack[-1] != _STREAMED_STRING or length < 0:
                    raise ProtocolError(
                        "Protocol error: unexpected streamed string chunk")
                if length:
                    pos = end + length + 4
                    if pos > n:
                        return ends, start, pos
                    if buf[pos - 2] != 13 or buf[pos - 1] != 10:
                        raise ProtocolError(_NO_CRLF)
                    continue
                pop()
                pos = end + 2
            elif kind == _END:
                # . the end of a streamed aggregate.
                if n - pos < 3:
                    return ends, start, pos + 3
                if (buf[pos + 1] != 13 or buf[pos + 2] != 10
                        or not stack or stack[-1] != 0):
                    raise ProtocolError(
                        "Protocol error: unexpected end of streamed aggregate")
                pop()
                pos += 3
            else:
                raise ProtocolError(
                    "Protocol error: unexpected type byte '%s'"
                    % (_quoteByte(t),))

            # One item is complete: count it in its aggregate, and close the
            # aggregates it completes.
            while stack:
                count = stack[-1]
                if count > 1:
                    stack[-1] = count - 1
                    break
                if count == 1:
                    pop()
                    continue
                if count < -1:
                    stack[-1] = count + 1
                elif count == -1:
                    pop()
                elif count:
                    raise ProtocolError(
                        "Protocol error: streamed string interrupted")
                break
            else:
                ends.append(pos)
                if len(ends) == limit:
                    break
    except ValueError:
        raise ProtocolError("Protocol error: invalid length in %r"
                            % (bytes(buf[start:start + 24]),))
    # Stopped between two items: any byte may be news, even a bad one.
    return ends, pos, pos + 1



def _valueStart(reply):
    """
    @return: the offset of the value in C{reply}, past any attributes.
    """
    pos = 0
    while reply[pos] == 124:
        end = reply.find(_CRLF, pos)
        count = int(reply[pos + 1:end])
        pos = end + 2
        if count:
            # Scan the attribute's 2n items as if they were replies.
            pos = scanReplies(reply, pos, [2 * count], 1)[0][0]
    return pos



def isPush(reply):
    """
    @param reply: one complete reply from L{ReplyFramer}.
    @return: whether it is a RESP3 push (out-of-band data such as a pub/sub
        message), possibly carrying attributes.
    """
    t = reply[0]
    if t == 62:
        return True
    if t == 124:
        return reply[_valueStart(reply)] == 62
    return False



def isError(reply):
    """
    @param reply: one complete reply from L{ReplyFramer}.
    @return: whether it is an error (C{-} or RESP3 C{!}), possibly carrying
        attributes.
    """
    t = reply[0]
    if t == 45 or t == 33:
        return True
    if t == 124:
        return reply[_valueStart(reply)] in (45, 33)
    return False



class ReplyFramer(object):
    """
    Cuts a backend's byte stream into complete top-level replies, byte for
    byte as received.

    Feed it whatever the transport delivers; it returns each complete reply
    as the exact C{bytes} that came over the wire, never decoded and
    re-encoded.  An attribute (C{|}) is returned together with the reply it
    belongs to; a push (C{>}) is a reply of its own (see L{isPush}).

    When nothing is held, replies are sliced straight out of the received
    bytes (a chunk that is exactly one reply is returned as is), runs of
    short replies by a regular expression.  The work stays linear in the
    size of a reply however it is split:

      - an incomplete bulk string at the top level (a big C{GET}) is kept
        as the list of chunks received, only counted, and joined once; or,
        from L{sinkMinimum} bytes on and with the accelerator, received in
        place into a L{BodySink} (see L{sink});
      - any other incomplete reply is kept in one growing C{bytearray}, and
        its scan resumes where it stopped (see L{scanReplies}).

    The stream cannot be trusted after a L{ProtocolError}: the caller should
    drop the connection.  Later feeds raise the same error.

    @cvar useSpeedups: whether big bulk strings may be received in place:
        those of L{sinkMinimum} to L{sinkMaximum} bytes.
    @cvar useFastFrame: whether complete replies are cut out by the C
        accelerator's C{frameReplies} first.
    @ivar sink: the L{BodySink} of a big reply being received, or L{None}.
        While there is one, the caller may receive into it and call
        L{bodyReceived}, instead of calling L{feed}.
    """

    useSpeedups = _newBody is not None
    useFastFrame = _frameReplies is not None
    sinkMinimum = _SINK_MIN
    sinkMaximum = _SINK_MAX

    __slots__ = ("_buf", "_chunks", "_held", "_pos", "_need", "_stack",
                 "_error", "sink")

    def __init__(self):
        # An incomplete aggregate (or line): its bytes, the scan's position
        # in them, its open aggregates, and the length it must reach before
        # a rescan is worthwhile (-1: until a line ends).
        self._buf = None
        self._pos = 0
        self._need = -1
        self._stack = None
        # An incomplete top-level bulk string: the chunks received, and
        # their total length.  Its complete length is in _need.
        self._chunks = None
        self._held = 0
        self._error = None
        self.sink = None


    @property
    def buffered(self):
        """
        The number of bytes held of an incomplete reply.
        """
        if self._buf is not None:
            return len(self._buf)
        if self.sink is not None:
            return self.sink.filled
        return self._held


    def feed(self, data):
        """
        Frame more of the stream.

        @param data: the bytes just received.
        @type data: C{bytes}

        @return: the replies completed by C{data}, in order, each the exact
            bytes of one top-level reply.
        @rtype: C{list} of C{bytes}

        @raise ProtocolError: if the stream is not RESP.  Replies that
            C{data} completed before the bad bytes are not returned: the
            connection is lost anyway.
        """
        if self._error is not None:
            raise self._error
        if not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        try:
            if self.sink is not None:
                sink = self.sink
                used = _fillBody(sink.body, sink.filled, data, 0)
                replies = self.bodyReceived(used)
                if used < len(data):
                    replies += self._frame(data, used)
                return replies
            if self._chunks is not None:
                return self._continueBulk(data)
            if self._buf is not None:
                return self._continue(data)
            return self._frame(data, 0)
        except ProtocolError as e:
            self._failed(e)
            raise


    def _failed(self, error):
        self._error = error
        self._buf = self._chunks = self.sink = None
        self._held = 0


    def bodyReceived(self, size):
        """
        C{size} more bytes of the big reply are in L{sink}: received into it
        by the caller.

        @return: the reply, if it is now complete, in a list, as L{feed}.
        @raise ProtocolError: it did not end with CRLF.
        """
        sink = self.sink
        sink.filled += size
        body = sink.body
        if sink.filled < len(body):
            return []
        self.sink = None
        if not body.endswith(_CRLF):
            self._failed(ProtocolError(_NO_CRLF))
            raise self._error
        return [body]


    def _frame(self, data, pos):
        """
        Slice the replies out of C{data} from C{pos}, a reply boundary, and
        keep the incomplete one it ends with, if any.
        """
        n = len(data)
        replies = []
        if self.useFastFrame:
            # The C scan takes the common replies, and leaves the rest
            # (incomplete, or unusual) to the loop below.
            pos = _frameReplies(data, pos, replies)
            if pos == n:
                return replies
        while True:
            match = _matchRun(data, pos)
            if match is not None:
                end = match.end()
                if not pos and end == n:
                    replies = _findItems(data)
                    if len(replies) == 1:
                        return [data]
                    return replies
                replies += _findItems(data, pos, end)
                if end == n:
                    return replies
                pos = end
            stack = []
            ends, stop, need = scanReplies(data, pos, stack, 1)
            if not ends:
                self._keep(data, pos, stop, need, stack)
                return replies
            end = ends[0]
            if not pos and end == n:
                return [data]
            replies.append(data[pos:end])
            if end == n:
                return replies
            pos = end


    def _keep(self, data, begin, pos, need, stack):
        """
        Hold C{data[begin:]}, an incomplete reply scanned up to C{pos}.
        """
        if need >= 0 and not stack:
            # A bulk string at the top level.
            if (self.useSpeedups and need > len(data)
                    and self.sinkMinimum <= need - begin <= self.sinkMaximum):
                self.sink = _startSink(need - begin, data, begin)
                if self.sink is not None:
                    return
            self._chunks = [data[begin:] if begin else data]
            self._held = len(data) - begin
            self._need = need - begin
            return
        with memoryview(data) as view:
            self._buf = bytearray(view[begin:])
        self._pos = pos - begin
        self._need = need - begin if need >= 0 else -1
        self._stack = stack


    def _sinkFromChunks(self, need):
        """
        A reply bigger than L{sinkMaximum} is that far in: receive the rest
        in place, so that it is not held twice when its chunks are joined
        (as L{RequestParser._sinkFromChunks}).
        """
        sink = _sinkFromChunks(need, self._chunks)
        if sink is not None:
            self._chunks = None
            self._held = 0
            self.sink = sink

    def _continueBulk(self, data):
        """
        Add C{data} to the incomplete top-level bulk string, and frame what
        follows it straight from C{data}.
        """
        held = self._held + len(data)
        need = self._need
        chunks = self._chunks
        if held < need:
            chunks.append(data)
            self._held = held
            if self.useSpeedups and held >= self.sinkMaximum and need > self.sinkMaximum:
                self._sinkFromChunks(need)
            return []
        used = len(data) - (held - need)
        chunks.append(data[:used] if used < len(data) else data)
        self._chunks = None
        self._held = 0
        reply = b"".join(chunks)
        if not reply.endswith(_CRLF):
            raise ProtocolError(_NO_CRLF)
        if used == len(data):
            return [reply]
        replies = self._frame(data, used)
        replies.insert(0, reply)
        return replies


    def _continue(self, data):
        """
        Add C{data} to the incomplete reply, and frame what follows it
        straight from C{data}.
        """
        buf = self._buf
        held = len(buf)
        buf += data
        n = len(buf)
        need = self._need
        if need < 0:
            if 10 not in data:
                return []
        elif n < need:
            return []
        ends, pos, need = scanReplies(buf, self._pos, self._stack, 1)
        if not ends:
            self._pos = pos
            self._need = need
            return []
        first = ends[0]
        self._buf = None
        if first == n:
            return [bytes(buf)]
        with memoryview(buf) as view:
            reply = view[:first].tobytes()
        replies = self._frame(data, first - held)
        replies.insert(0, reply)
        return replies



# ---------------------------------------------------------------------------
# Encoders

def encodeCommand(args):
    """
    Encode a command as a RESP array of bulk strings, the form in which
    requests are forwarded (inline commands included).

    @param args: the command name and its arguments.
    @type args: C{list} of C{bytes}
    @rtype: C{bytes}
    """
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    headers = _BULK_HEADERS
    for arg in args:
        size = len(arg)
        append(headers[size] if size < 1024 else b"$%d\r\n" % size)
        append(arg)
        append(_CRLF)
    return b"".join(parts)



def encodeCommandParts(args, copyLimit=65536):
    """
    Encode a command like L{encodeCommand}, without copying big arguments.

    @param args: the command name and its arguments.
    @type args: C{list} of C{bytes}
    @param copyLimit: arguments at least this long are returned as they
        are, between the encoded pieces, instead of being copied into them.

    @return: pieces whose concatenation is C{encodeCommand(args)}, for
        C{transport.writeSequence}.
    @rtype: C{list} of C{bytes}
    """
    pieces = []
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    headers = _BULK_HEADERS
    for arg in args:
        size = len(arg)
        if size < 1024:
            append(headers[size])
        else:
            append(b"$%d\r\n" % size)
            if size >= copyLimit:
                pieces.append(b"".join(parts))
                pieces.append(arg)
                parts = [_CRLF]
                append = parts.append
                continue
        append(arg)
        append(_CRLF)
    pieces.append(b"".join(parts))
    return pieces



def encodeRequest(args, copyLimit=65536):
    """
    Encode a command for forwarding: as L{encodeCommand}, or when it
    carries big values, as L{encodeCommandParts}'s pieces, so that a
    megabyte C{SET} is not copied once more just to put a header before it.

    @return: C{bytes}, or a C{list} of C{bytes} to be written in order.
    """
    if sum(map(len, args)) >= copyLimit:
        return encodeCommandParts(args, copyLimit)
    return encodeCommand(args)



def _oneLine(text):
    """
    Keep a simple string or error on one line, as Redis does.
    """
    if 13 in text or 10 in text:
        return text.replace(b"\r", b" ").replace(b"\n", b" ")
    return text



def simpleString(text):
    """
    @param text: e.g. C{b"OK"}.
    @return: a simple string reply, C{+text\\r\\n}.
    """
    return b"+" + _oneLine(text) + _CRLF



def error(message):
    """
    @param message: the error text including its prefix word, e.g.
        C{b"ERR unknown command"} or C{b"WRONGTYPE ..."}.
    @return: an error reply, C{-message\\r\\n}.
    """
    return b"-" + _oneLine(message) + _CRLF



def errorReply(message):
    """
    An C{-ERR} reply, as rmux and Redis write their own errors.

    @param message: the text after C{ERR}, C{str} or C{bytes}; a CR or LF
        in it (often from user input) becomes a space, so the reply stays
        one line.
    @return: C{-ERR message\\r\\n}.
    """
    if isinstance(message, str):
        message = message.encode("utf-8", "replace")
    return b"-ERR " + _oneLine(message) + _CRLF



def integer(number):
    """
    @return: an integer reply, C{:number\\r\\n}.
    """
    return b":%d\r\n" % (number,)



def bulkString(value):
    """
    @param value: the string.
    @type value: C{bytes}
    @return: a bulk string reply, C{$len\\r\\nvalue\\r\\n}.
    """
    return b"$%d\r\n%b\r\n" % (len(value), value)



def nullReply(protocol=2):
    """
    @param protocol: the client's RESP version, 2 or 3.
    @return: the null reply: C{$-1} for RESP2, C{_} for RESP3.
    """
    return _NULL3 if protocol == 3 else _NULL_BULK



def arrayReply(encodedItems):
    """
    @param encodedItems: the elements, each already encoded.
    @return: an array reply of them.
    """
    return b"*%d\r\n" % len(encodedItems) + b"".join(encodedItems)



def mapReply(encodedPairs, protocol=2):
    """
    @param encodedPairs: the entries, each a C{(key, value)} pair of
        already encoded replies.
    @param protocol: the client's RESP version, 2 or 3.
    @return: a RESP3 map, or for RESP2 the flat array of keys and values
        Redis sends instead.
    """
    flat = [item for pair in encodedPairs for item in pair]
    if protocol == 3:
        return b"%%%d\r\n" % (len(flat) // 2) + b"".join(flat)
    return b"*%d\r\n" % len(flat) + b"".join(flat)



def setReply(encodedItems, protocol=2):
    """
    @param encodedItems: the members, each already encoded.
    @param protocol: the client's RESP version, 2 or 3.
    @return: a RESP3 set, or for RESP2 an array.
    """
    if protocol == 3:
        return b"~%d\r\n" % len(encodedItems) + b"".join(encodedItems)
    return b"*%d\r\n" % len(encodedItems) + b"".join(encodedItems)



def verbatimString(text, protocol=2, fmt=b"txt"):
    """
    A verbatim string, which Redis 7 uses for INFO and CLIENT INFO.

    @param text: the string.
    @param protocol: the client's RESP version, 2 or 3.
    @param fmt: the three-byte format, C{b"txt"} or C{b"mkd"}.
    @return: a RESP3 verbatim string, or for RESP2 a bulk string.
    """
    if protocol == 3:
        return b"=%d\r\n%b:%b\r\n" % (len(text) + 4, fmt, text)
    return b"$%d\r\n%b\r\n" % (len(text), text)
