"""
Tests for L{rmux.resp}.

Expected bytes and error texts were taken from a real redis-server 7.0.15
(inline quoting, protocol errors) or from the RESP2/RESP3 specifications.
Every L{RequestParser} test runs four times: with the C accelerator
(C{rmux._speedups}), with it receiving every split bulk string in place,
with hiredis instead, and with the pure-Python parser alone; they must
agree to the byte.
"""

import socket

from hypothesis import HealthCheck, given, settings, strategies as st

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rmux import resp
from rmux.resp import (
    ProtocolError, ReplyFramer, RequestParser, bulkString, encodeCommand,
    encodeCommandParts, encodeRequest, isError, isPush, splitArgs,
)

try:
    from rmux._speedups import recvBody
except ImportError:
    recvBody = None


class PureRequestParser(RequestParser):
    """
    The parser without hiredis or the C accelerator.
    """
    useHiredis = False
    useSpeedups = False



class HiredisRequestParser(RequestParser):
    """
    The parser with hiredis, as it runs where the C accelerator could not
    be built.
    """
    useSpeedups = False



class SpeedupsRequestParser(RequestParser):
    """
    The parser with the C accelerator, and without hiredis.
    """
    useHiredis = False
    useSpeedups = True


class SinkRequestParser(SpeedupsRequestParser):
    """
    The parser with the C accelerator, receiving in place every bulk string
    that is not whole in one feed, however short (rmux only does so from
    128 KB on): the tests and properties reach that path with small data.
    """
    sinkMinimum = 1


#: The parsers every property is checked with: each fast path available,
#: and the pure-Python parser.
ALL_PARSERS = [PureRequestParser] + (
    [HiredisRequestParser] if resp.hiredis is not None else []) + (
    [SpeedupsRequestParser, SinkRequestParser] if resp._scanRequests is not None else [])


class ChunkedReplyFramer(ReplyFramer):
    """
    The framer without the accelerator: big replies are joined from chunks.
    """
    useSpeedups = False


class SinkReplyFramer(ReplyFramer):
    """
    The framer receiving in place every top-level bulk string that is not
    whole in one feed, however short.
    """
    sinkMinimum = 1


class PureReplyFramer(ReplyFramer):
    """
    The framer without the accelerator's scan: every reply is cut out by
    the pure-Python framer.
    """
    useFastFrame = False


#: The framers every property is checked with.
ALL_FRAMERS = [ReplyFramer, ChunkedReplyFramer, PureReplyFramer] + (
    [SinkReplyFramer] if resp._newBody is not None else [])



def feedAll(parser, chunks):
    """
    Feed C{chunks} one by one.

    @return: all commands returned.
    """
    commands = []
    for chunk in chunks:
        commands.extend(parser.feed(chunk))
    return commands



def byteByByte(data):
    return [data[i:i + 1] for i in range(len(data))]



def splitAt(data, points):
    points = sorted(set(p for p in points if 0 < p < len(data)))
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]



class ProtocolErrorTests(SynchronousTestCase):
    """
    L{ProtocolError} carries Redis's text.
    """

    def test_message(self):
        e = ProtocolError("Protocol error: invalid bulk length")
        self.assertEqual(str(e), "Protocol error: invalid bulk length")
        self.assertEqual(e.message, "Protocol error: invalid bulk length")


    def test_asReply(self):
        """
        The reply is Redis's, offending byte included verbatim.
        """
        e = ProtocolError("Protocol error: expected '$', got '\xff'")
        self.assertEqual(e.asReply(),
                         b"-ERR Protocol error: expected '$', got '\xff'\r\n")



class SplitArgsTests(SynchronousTestCase):
    """
    L{splitArgs} splits like Redis's C{sdssplitargs}; every row of the table
    below was checked against redis-server 7.0.15 with
    C{EVAL "return ARGV" 0 ...}.
    """

    table = [
        (b"", []),
        (b"   \t ", []),
        (b"SET a b", [b"SET", b"a", b"b"]),
        (b"  SET \t a    b  ", [b"SET", b"a", b"b"]),
        (b"get Key", [b"get", b"Key"]),
        (b'ECHO "a\\x41\\x4g\\n\\z"', [b"ECHO", b"aAx4g\nz"]),
        (b'ECHO "\\xZZ"', [b"ECHO", b"xZZ"]),
        (b'ECHO "\\xfF\\x00"', [b"ECHO", b"\xff\x00"]),
        (b'ECHO "\\r\\t\\b\\a\\\\\\"q"', [b"ECHO", b"\r\t\x08\x07\\\"q"]),
        (b"ECHO 'a\\'b\\\"'", [b"ECHO", b"a'b\\\""]),
        (b"ECHO 'a\\nb'", [b"ECHO", b"a\\nb"]),
        (b"ECHO 'a\"b' \"c'd\"", [b"ECHO", b'a"b', b"c'd"]),
        (b'ECHO ""', [b"ECHO", b""]),
        (b"ECHO ''", [b"ECHO", b""]),
        (b'ECHO a"b c"', [b"ECHO", b"ab c"]),
        (b'ECHO "a"\tb', [b"ECHO", b"a", b"b"]),
        (b'ECHO "a"\x0b', [b"ECHO", b"a"]),
        (b"ECHO a\x0bb", [b"ECHO", b"a\x0bb"]),
        (b"\x0bECHO\x0cx", [b"ECHO\x0cx"]),
        (b"ECHO a\rb", [b"ECHO", b"a", b"b"]),
        (b"ECHO a\x00b", [b"ECHO", b"a\x00b"]),
        (b'ECHO "a"b', None),
        (b"ECHO 'a'b", None),
        (b'ECHO "abc', None),
        (b"ECHO 'abc", None),
        (b'ECHO "x\\"', None),
        (b"ECHO 'x\\'", None),
    ]

    def test_table(self):
        for line, expected in self.table:
            self.assertEqual(splitArgs(line), expected, line)


    def test_nulIsOrdinary(self):
        """
        Unlike Redis, which works on C strings, a NUL is a plain character,
        inside quotes too.
        """
        self.assertEqual(splitArgs(b'"a\x00b" c'), [b"a\x00b", b"c"])



class RequestParserTestsMixin(object):
    """
    Tests for L{RequestParser}, run once per C{parserClass}.
    """

    parserClass = None

    def parser(self, **kwargs):
        return self.parserClass(**kwargs)


    def assertParses(self, data, commands, **kwargs):
        """
        C{data} gives C{commands}, fed whole, byte by byte, and split in two
        at every point, with nothing left buffered.
        """
        parser = self.parser(**kwargs)
        self.assertEqual(parser.feed(data), commands)
        self.assertIsNone(parser.error)
        self.assertEqual(parser.buffered, 0)
        parser = self.parser(**kwargs)
        self.assertEqual(feedAll(parser, byteByByte(data)), commands)
        self.assertEqual(parser.buffered, 0)
        points = range(1, len(data))
        if len(data) > 1000:
            points = list(range(1, 300)) + list(range(len(data) - 300,
                                                      len(data)))
        for i in points:
            parser = self.parser(**kwargs)
            self.assertEqual(feedAll(parser, [data[:i], data[i:]]), commands)
            self.assertIsNone(parser.error)


    def assertFails(self, data, message, commands=(), **kwargs):
        """
        C{data} gives C{commands}, then the protocol error C{message}, fed
        whole or byte by byte; the parser is dead afterwards.
        """
        for chunks in [[data], byteByByte(data)]:
            parser = self.parser(**kwargs)
            self.assertEqual(feedAll(parser, chunks), list(commands))
            self.assertIsInstance(parser.error, ProtocolError)
            self.assertEqual(parser.error.message, message)
            self.assertEqual(parser.feed(b"*1\r\n$4\r\nPING\r\nPING\r\n"), [])
            self.assertEqual(parser.buffered, 0)


    def test_array(self):
        self.assertParses(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n", [[b"GET", b"a"]])


    def test_nameNotFolded(self):
        self.assertParses(b"*1\r\n$4\r\npInG\r\n", [[b"pInG"]])


    def test_binaryArguments(self):
        """
        Bulk strings may hold anything, CRLF and NUL included.
        """
        self.assertParses(
            b"*3\r\n$3\r\nSET\r\n$2\r\n\r\n\r\n$5\r\n\x00*1\r\n\r\n",
            [[b"SET", b"\r\n", b"\x00*1\r\n"]])


    def test_emptyArgument(self):
        self.assertParses(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
                          [[b"ECHO", b""]])


    def test_pipeline(self):
        data = encodeCommand([b"SET", b"k", b"v"]) * 3
        self.assertParses(data, [[b"SET", b"k", b"v"]] * 3)


    def test_emptyArraysSkipped(self):
        """
        C{*0} and C{*-1} are skipped silently, as Redis does.
        """
        self.assertParses(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n*0\r\n",
                          [[b"PING"]])


    def test_inline(self):
        self.assertParses(b"SET a b\r\nGET a\n", [[b"SET", b"a", b"b"],
                                                  [b"GET", b"a"]])


    def test_inlineCR(self):
        """
        One CR before the LF is stripped; that matters inside quotes.
        """
        self.assertParses(b'ECHO "a\r"\r\n', [[b"ECHO", b"a\r"]])
        self.assertParses(b"PING\r\r\n", [[b"PING"]])


    def test_inlineBlankLines(self):
        self.assertParses(b"\r\n\n   \r\n\t\nPING\r\n\n", [[b"PING"]])


    def test_inlineQuotes(self):
        self.assertParses(b"SET 'a b' \"c\\x00\\n\"\r\n",
                          [[b"SET", b"a b", b"c\x00\n"]])


    def test_inlineUnbalancedQuotes(self):
        self.assertFails(b'PING\r\nECHO "a\r\nPING\r\n',
                         "Protocol error: unbalanced quotes in request",
                         [[b"PING"]])
        self.assertFails(b"ECHO 'a'b\n",
                         "Protocol error: unbalanced quotes in request")


    def test_mixed(self):
        """
        Arrays and inline commands mix freely, in either order.
        """
        data = (b"PING\r\n" + encodeCommand([b"GET", b"a"])
                + b"SET a 'b c'\n" + encodeCommand([b"GET", b"b"])
                + encodeCommand([b"GET", b"c"]) + b"\r\n"
                + b"QUIT\r\n")
        self.assertParses(data, [[b"PING"], [b"GET", b"a"],
                                 [b"SET", b"a", b"b c"], [b"GET", b"b"],
                                 [b"GET", b"c"], [b"QUIT"]])


    def test_buffered(self):
        """
        L{RequestParser.buffered} counts the bytes of the incomplete command,
        and is 0 at a command boundary.
        """
        parser = self.parser()
        self.assertEqual(parser.buffered, 0)
        self.assertEqual(parser.feed(b"*2\r\n$3\r\nGET\r\n"), [])
        self.assertEqual(parser.buffered, 13)
        self.assertEqual(parser.feed(b"$1\r"), [])
        self.assertEqual(parser.buffered, 16)
        self.assertEqual(parser.feed(b"\na\r\nPI"), [[b"GET", b"a"]])
        self.assertEqual(parser.buffered, 2)
        self.assertEqual(parser.feed(b"NG\r\n"), [[b"PING"]])
        self.assertEqual(parser.buffered, 0)


    def test_bufferedBody(self):
        parser = self.parser()
        self.assertEqual(parser.feed(b"*2\r\n$3\r\nSET\r\n$10\r\nabc"), [])
        self.assertEqual(parser.buffered, 21)
        self.assertEqual(parser.feed(b"defghij\r"), [])
        self.assertEqual(parser.buffered, 29)
        self.assertEqual(parser.feed(b"\n"), [[b"SET", b"abcdefghij"]])
        self.assertEqual(parser.buffered, 0)
        # A body completed by a later feed, with arguments still to come.
        self.assertEqual(parser.feed(b"*3\r\n$3\r\nSET\r\n$10\r\nabc"), [])
        self.assertEqual(parser.feed(b"defghij\r\n$1\r\n"), [])
        self.assertEqual(parser.buffered, 34)
        self.assertEqual(parser.feed(b"x\r\n"),
                         [[b"SET", b"abcdefghij", b"x"]])
        self.assertEqual(parser.buffered, 0)


    def test_invalidMultibulkLength(self):
        for header in [b"*x", b"*", b"*01", b"*+1", b"* 1", b"*1 ", b"*-0",
                       b"*-01", b"*1.0", b"*99999999999999999999999",
                       b"*2147483648"]:
            self.assertFails(b"PING\r\n" + header + b"\r\n$4\r\nPING\r\n",
                             "Protocol error: invalid multibulk length",
                             [[b"PING"]])


    def test_negativeMultibulkLength(self):
        """
        A negative count is an empty command, skipped, as in Redis.
        """
        self.assertParses(b"*-5\r\nPING\r\n*-1\r\n*0\r\n" + encodeCommand([b"GET", b"a"]),
                          [[b"PING"], [b"GET", b"a"]])

    def test_headerCRWithoutLF(self):
        """
        Redis takes the CR as the end of a header line and skips the byte
        after it unchecked; so does rmux.
        """
        self.assertParses(b"*1\rX$4\r\nPING\r\n", [[b"PING"]])
        self.assertParses(b"*1\r\n$4\rXPING\r\n", [[b"PING"]])


    def test_expectedDollar(self):
        """
        An element that is not a bulk string is refused as soon as its first
        byte arrives; CR and LF are shown as spaces, as Redis does.
        """
        for element, shown in [(b"+PING\r\n", "+"), (b":1\r\n", ":"),
                               (b"*1\r\n$1\r\na\r\n", "*"), (b"\r\n", " "),
                               (b"\n", " "), (b"x", "x"), (b"\xff", "\xff")]:
            self.assertFails(b"*1\r\n" + element,
                             "Protocol error: expected '$', got '%s'"
                             % (shown,))
        parser = self.parser()
        parser.feed(b"*2\r\n$1\r\na\r\n")
        parser.feed(b"-")
        self.assertEqual(parser.error.message,
                         "Protocol error: expected '$', got '-'")


    def test_invalidBulkLength(self):
        for header in [b"$-1", b"$-2", b"$x", b"$", b"$04", b"$+4", b"$ 4",
                       b"$4.0", b"$536870913", b"$99999999999999999999999"]:
            self.assertFails(b"*1\r\n" + header + b"\r\nPING\r\n",
                             "Protocol error: invalid bulk length")


    def test_missingCRLFAfterBulk(self):
        """
        Redis skips the two bytes after a bulk string unchecked; so does
        rmux, so that it reads the same commands from the same bytes.
        """
        self.assertParses(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPINGxx",
                          [[b"PING"], [b"PING"]])
        self.assertParses(b"*1\r\n$4\r\nPING\rx", [[b"PING"]])
        self.assertParses(b"*1\r\n$1\r\nxyz", [[b"x"]])


    def test_tooBigInline(self):
        self.assertFails(b"PING\r\n" + b"a" * 65537,
                         "Protocol error: too big inline request",
                         [[b"PING"]])
        self.assertParses(b"ECHO " + b"a" * (65536 - 7) + b"\r\n",
                          [[b"ECHO", b"a" * (65536 - 7)]])
        # The limit is on the line, however it arrives.
        self.assertFails(b"ECHO " + b"a" * 65536 + b"\r\n",
                         "Protocol error: too big inline request")


    def test_tooBigCountStrings(self):
        self.assertFails(b"*" + b"1" * 65536,
                         "Protocol error: too big mbulk count string")
        self.assertFails(b"*1\r\n$" + b"1" * 65536,
                         "Protocol error: too big bulk count string")


    def test_limitsConfigurable(self):
        kw = dict(maxBulkLength=5, maxArguments=2, maxInlineLength=30)
        self.assertParses(b"*2\r\n$5\r\nhello\r\n$1\r\nx\r\n",
                          [[b"hello", b"x"]], **kw)
        self.assertFails(b"*1\r\n$6\r\n",
                         "Protocol error: invalid bulk length", **kw)
        self.assertFails(b"*3\r\n", "Protocol error: invalid multibulk length",
                         **kw)
        self.assertFails(encodeCommand([b"a"]) + encodeCommand([b"a"] * 3),
                         "Protocol error: invalid multibulk length", [[b"a"]],
                         **kw)
        self.assertFails(encodeCommand([b"a"]) + encodeCommand([b"abcdef"]),
                         "Protocol error: invalid bulk length", [[b"a"]],
                         **kw)
        # Complete commands in one chunk, as hiredis gets them.
        self.assertFails(encodeCommand([b"a"]) + encodeCommand([b"a"] * 3),
                         "Protocol error: invalid multibulk length", [[b"a"]],
                         maxArguments=2)
        self.assertFails(encodeCommand([b"a"]) + encodeCommand([b"abcdef"]),
                         "Protocol error: invalid bulk length", [[b"a"]],
                         maxBulkLength=5)
        self.assertFails(b"x" * 31, "Protocol error: too big inline request",
                         **kw)
        self.assertFails(b"*" + b"0" * 30,
                         "Protocol error: too big mbulk count string", **kw)
        self.assertFails(b"*1\r\n$" + b"0" * 30,
                         "Protocol error: too big bulk count string", **kw)


    def test_limitsAsClassAttributes(self):
        parserClass = type("Small", (self.parserClass,),
                           {"maxBulkLength": 3, "maxArguments": 1})
        parser = parserClass()
        self.assertEqual(parser.feed(b"*1\r\n$3\r\nabc\r\n"), [[b"abc"]])
        self.assertEqual(parser.feed(b"*2\r\n"), [])
        self.assertEqual(parser.error.message,
                         "Protocol error: invalid multibulk length")


    def test_limitAtHeader(self):
        """
        A bulk length over the limit is refused when its header arrives,
        before any of the body.
        """
        parser = self.parser()
        self.assertEqual(parser.feed(b"*1\r\n$99999999999\r\n"), [])
        self.assertEqual(parser.error.message,
                         "Protocol error: invalid bulk length")
        parser = self.parser(maxBulkLength=1000)
        self.assertEqual(parser.feed(b"*2\r\n$3\r\nSET\r\n$1001\r\n"), [])
        self.assertEqual(parser.error.message,
                         "Protocol error: invalid bulk length")


    def test_largeCountNotAllocated(self):
        """
        A large but legal count is parsed (and waited for), not refused.
        """
        parser = self.parser()
        self.assertEqual(parser.feed(b"*1048576\r\n$1\r\na\r\n"), [])
        self.assertIsNone(parser.error)
        self.assertEqual(parser.buffered, 17)


    def test_nonBulkElementsAfterValidCommands(self):
        """
        hiredis accepts these; the strict parser decides, after the commands
        that came first.
        """
        ping = encodeCommand([b"PING"])
        for bad, message in [
                (b"*1\r\n:1\r\n", "expected '$', got ':'"),
                (b"*1\r\n_\r\n", "expected '$', got '_'"),
                (b"*1\r\n|1\r\n+a\r\n+b\r\n$1\r\nx\r\n",
                 "expected '$', got '|'"),
                (b"*1\r\n%1\r\n+a\r\n+b\r\n", "expected '$', got '%'"),
                (b"*2\r\n$1\r\nx\r\n*1\r\n$1\r\ny\r\n",
                 "expected '$', got '*'")]:
            self.assertFails(ping * 3 + bad, "Protocol error: " + message,
                             [[b"PING"]] * 3)


    def test_inlineAfterArrays(self):
        ping = encodeCommand([b"PING"])
        self.assertParses(ping * 2 + b"GET a\r\n" + ping,
                          [[b"PING"], [b"PING"], [b"GET", b"a"], [b"PING"]])
        # Top-level things that hiredis would take as replies are inline
        # commands to Redis.
        self.assertParses(ping + b"+PING\r\n$3\r\nGET\r\n:1\r\n",
                          [[b"PING"], [b"+PING"], [b"$3"], [b"GET"], [b":1"]])


    def test_deadAfterError(self):
        parser = self.parser()
        self.assertEqual(parser.feed(b"PING\r\n*x\r\nPING\r\n"), [[b"PING"]])
        error = parser.error
        self.assertEqual(parser.feed(b"PING\r\n"), [])
        self.assertIs(parser.error, error)


    def test_bytearrayInput(self):
        parser = self.parser()
        self.assertEqual(parser.feed(bytearray(b"*1\r\n$4\r\nPING\r\n")),
                         [[b"PING"]])
        self.assertIs(type(parser.feed(memoryview(b"GET a\r\n"))[0][0]),
                      bytes)


    def test_big(self):
        """
        A 64 MB argument arriving in 64 KB chunks.
        """
        size = 64 * 1024 * 1024
        value = b"v" * size
        data = encodeCommand([b"SET", b"key", value]) + b"PING\r\n"
        del value
        chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        del data
        parser = self.parser()
        commands = []
        for chunk in chunks[:-1]:
            commands.extend(parser.feed(chunk))
        self.assertEqual(commands, [])
        self.assertEqual(parser.buffered, 65536 * (len(chunks) - 1))
        commands = parser.feed(chunks[-1])
        self.assertEqual(len(commands), 2)
        self.assertEqual(commands[0][:2], [b"SET", b"key"])
        self.assertEqual(len(commands[0][2]), size)
        self.assertEqual(commands[0][2].count(b"v"), size)
        self.assertEqual(commands[1], [b"PING"])
        self.assertEqual(parser.buffered, 0)


    def test_bodyCRLFSplit(self):
        """
        The CRLF after a body may arrive in pieces.
        """
        for chunks in [[b"*1\r\n$3\r\nabc", b"\r", b"\n"],
                       [b"*1\r\n$3\r\nab", b"c\r", b"\n"],
                       [b"*1\r\n$3\r\na", b"b", b"c", b"\r\n"]]:
            self.assertEqual(feedAll(self.parser(), chunks), [[b"abc"]])
        # Whatever the two bytes are, as in Redis.
        parser = self.parser()
        self.assertEqual(feedAll(parser, [b"*1\r\n$3\r\nabc\r", b"x"]), [[b"abc"]])
        self.assertIsNone(parser.error)



class FastPathTestsMixin(object):
    """
    Tests for what a fast path (hiredis or the C accelerator) adds to
    L{RequestParser}, run once per C{parserClass}.
    """

    def test_wholeFeed(self):
        """
        L{RequestParser.wholeFeed} says whether the feed's bytes were
        exactly its commands, canonically encoded.
        """
        parser = self.parserClass()
        data = encodeCommand([b"GET", b"a"]) + encodeCommand([b"SET", b"a", b"b"])
        parser.feed(data)
        self.assertTrue(parser.wholeFeed)
        for other in [b"PING\r\n", data[:-1], b"*0\r\n" + data, data + b"*0\r\n",
                      b"*1\r\n$03\r\nGET\r\n", b""]:
            parser = self.parserClass()
            parser.feed(other)
            self.assertFalse(parser.wholeFeed, other)
        parser = self.parserClass()
        parser.feed(data[:5])
        parser.feed(data[5:])
        self.assertFalse(parser.wholeFeed)
        self.assertFalse(PureRequestParser().feed(data) and PureRequestParser().wholeFeed)



class HiredisRequestParserTests(FastPathTestsMixin, RequestParserTestsMixin,
                                 SynchronousTestCase):
    parserClass = HiredisRequestParser

    if resp.hiredis is None:  # pragma: no cover
        skip = "hiredis is not installed"

    def recordFeeds(self):
        """
        Record what the parsers created from now on feed to hiredis.
        """
        fed = []
        original = resp.hiredis.Reader

        class Reader(original):
            def feed(self, data, offset=0, length=-1):
                if length < 0:
                    length = len(data) - offset
                fed.append(data[offset:offset + length])
                return original.feed(self, data, offset, length)

        self.patch(resp.hiredis, "Reader", Reader)
        return fed


    def test_hiredisUsed(self):
        """
        Arrays at a command boundary go to hiredis, in one piece.
        """
        fed = self.recordFeeds()
        data = encodeCommand([b"GET", b"a"]) * 10
        self.assertEqual(HiredisRequestParser().feed(b"PING\r\n" + data),
                         [[b"PING"]] + [[b"GET", b"a"]] * 10)
        self.assertEqual(fed, [data])


    def test_readerReuse(self):
        """
        A hiredis reader is kept while it stops at command boundaries, and
        dropped when it holds part of a command (the pure parser finishes
        that one).
        """
        parser = HiredisRequestParser()
        parser.feed(encodeCommand([b"PING"]))
        reader = parser._hiredis._reader
        self.assertIsNotNone(reader)
        parser.feed(encodeCommand([b"PING"]) * 2)
        self.assertIs(parser._hiredis._reader, reader)
        parser.feed(encodeCommand([b"PING"]) + b"*1\r\n$4\r\nPI")
        self.assertIsNone(parser._hiredis._reader)
        parser.feed(b"NG\r\n" + encodeCommand([b"PING"]))
        self.assertIsNotNone(parser._hiredis._reader)
        reader = parser._hiredis._reader
        parser.feed(encodeCommand([b"PING"]) + b"*0\r\n*-1\r\n"
                    + encodeCommand([b"PING"]))
        self.assertIs(parser._hiredis._reader, reader)
        self.assertEqual(parser.feed(encodeCommand([b"PING"]) + b"+PING\r\n"),
                         [[b"PING"], [b"+PING"]])
        self.assertIsNone(parser._hiredis._reader)


    def test_bigCountsAvoidHiredis(self):
        """
        hiredis allocates a list of the announced size when it reads an
        array header, so a large count, nested or not, never reaches it.
        """
        fed = self.recordFeeds()
        parser = HiredisRequestParser()
        self.assertEqual(parser.feed(b"*1\r\n$1\r\na\r\n*2\r\n$1\r\na\r\n"
                                     b"*4000000000\r\n"), [[b"a"]])
        self.assertEqual(parser.error.message,
                         "Protocol error: expected '$', got '*'")
        self.assertEqual(parser.feed(b"*1\r\n$1\r\na\r\n"), [])
        for header in [b"*10000\r\n", b"~10000\r\n", b">10000\r\n",
                       b"|10000\r\n"]:
            parser = HiredisRequestParser()
            parser.feed(b"*1\r\n$1\r\na\r\n*1\r\n" + header)
        self.assertEqual(fed, [])


    def test_windows(self):
        """
        hiredis is given at most a window of a long feed: a long pipeline
        is parsed window after window, each ending at a command boundary,
        and a big value is left to the pure parser after the commands
        before it.
        """
        fed = self.recordFeeds()
        small = [[b"SET", b"key:%06d" % (i,), b"v" * 20] for i in range(2000)]
        data = b"".join(encodeCommand(c) for c in small)
        self.assertGreater(len(data), 3 * resp._FAST_WINDOW)
        parser = HiredisRequestParser()
        self.assertEqual(parser.feed(data), small)
        self.assertFalse(parser.wholeFeed)
        self.assertGreater(len(fed), 3)
        self.assertTrue(all(len(piece) <= resp._FAST_WINDOW for piece in fed))
        self.assertTrue(all(piece.startswith(b"*3\r\n$3\r\nSET\r\n") for piece in fed))

        del fed[:]
        big = [b"SET", b"big", b"x" * (4 * resp._FAST_WINDOW)]
        data = encodeCommand(small[0]) + encodeCommand(big) + encodeCommand(small[1])
        self.assertEqual(HiredisRequestParser().feed(data), [small[0], big, small[1]])
        self.assertTrue(all(len(piece) <= resp._FAST_WINDOW for piece in fed))



class SpeedupsRequestParserTests(FastPathTestsMixin, RequestParserTestsMixin,
                                  SynchronousTestCase):
    parserClass = SpeedupsRequestParser

    if resp._scanRequests is None:
        skip = "rmux._speedups was not built (scripts/bootstrap builds it)"

    def scan(self, data, pos=0, maxArguments=100, maxBulkLength=100):
        """
        Run the C scan on C{data}.

        @return: the commands it took, and where it stopped.
        """
        out = []
        used = resp._scanRequests(data, pos, out, maxArguments, maxBulkLength)
        return out, used


    def test_scanTakesCanonicalArrays(self):
        """
        Canonical arrays of bulk strings are taken, up to the end of the
        data or the first thing that is not one.
        """
        a = encodeCommand([b"SET", b"k", b""])
        b = encodeCommand([b"GET", b"k" * 99])
        self.assertEqual(self.scan(a + b), ([[b"SET", b"k", b""], [b"GET", b"k" * 99]],
                                            len(a + b)))
        self.assertEqual(self.scan(a + b"PING\r\n" + b), ([[b"SET", b"k", b""]], len(a)))
        self.assertEqual(self.scan(b"PING\r\n" + a + b, 6), ([[b"SET", b"k", b""],
                                                               [b"GET", b"k" * 99]], 6 + len(a + b)))


    def test_scanLeavesTheRest(self):
        """
        Whatever the pure-Python parser must judge stops the scan at the
        start of its command: non-canonical numbers, other element types,
        empty or null arrays, a missing CRLF, the limits, and anything
        incomplete.
        """
        good = encodeCommand([b"PING"])
        for other in [b"*01\r\n$4\r\nPING\r\n", b"*1\r\n$04\r\nPING\r\n",
                      b"*+1\r\n$4\r\nPING\r\n", b"*1\r\n$+4\r\nPING\r\n",
                      b"*1\r\n+PING\r\n", b"*1\r\n*1\r\n$4\r\nPING\r\n",
                      b"*0\r\n", b"*-1\r\n", b"*1\r\n$4\r\nPINGxx",
                      b"*1\n$4\r\nPING\r\n", b"*1\r\n$4\nPING\r\n",
                      b"*1\r\n$-1\r\n", b"*1\r\n$4\r\nPING\r",
                      b"*1\r\n$101\r\n" + b"x" * 101 + b"\r\n",
                      b"*101\r\n" + b"$1\r\nx\r\n" * 101,
                      b"*1\r\n$1234567890123456789\r\n",
                      good[:-1], good[:3]]:
            self.assertEqual(self.scan(good + other), ([[b"PING"]], len(good)), other)
        self.assertEqual(self.scan(b"x" + good), ([], 0))


    def test_scanAllocatesNothingAhead(self):
        """
        An announced count or length is not allocated before its bytes are
        here: a stranger's C{*1000000000} costs nothing.
        """
        self.assertEqual(self.scan(b"*1000000000\r\n$1\r\nx\r\n",
                                   maxArguments=1 << 40), ([], 0))
        self.assertEqual(self.scan(b"*1\r\n$500000000\r\nxx",
                                   maxBulkLength=1 << 40), ([], 0))


    def test_scanChecksItsArguments(self):
        """
        Only bytes and a list are taken; the position must be in the data.
        """
        self.assertRaises(TypeError, resp._scanRequests, bytearray(b"*1\r\n"), 0, [], 1, 1)
        self.assertRaises(TypeError, resp._scanRequests, b"*1\r\n", 0, (), 1, 1)
        self.assertRaises(TypeError, resp._scanRequests, b"*1\r\n", 0, [])
        self.assertRaises(ValueError, resp._scanRequests, b"*1\r\n", 6, [], 1, 1)
        self.assertRaises(ValueError, resp._scanRequests, b"*1\r\n", -1, [], 1, 1)


    def test_defaultParser(self):
        """
        Where the accelerator was built, L{RequestParser} uses it.
        """
        self.assertIs(RequestParser()._scan, resp._scanRequests)
        self.assertIsNone(HiredisRequestParser()._scan)



class PureRequestParserTests(RequestParserTestsMixin, SynchronousTestCase):
    parserClass = PureRequestParser



class SinkRequestParserTests(RequestParserTestsMixin, SynchronousTestCase):
    parserClass = SinkRequestParser

    if resp._newBody is None:
        skip = "the C accelerator was not built"



def receiveInto(owner, data):
    """
    Send C{data} through a socket pair and receive it into C{owner.sink},
    as rmux's transports do, calling C{owner.bodyReceived} each time.

    @return: what the last C{bodyReceived} returned, and what was left of
        C{data} once the sink was full.
    """
    sender, receiver = socket.socketpair()
    sending = sendInThread(sender, data)
    try:
        result = None
        while owner.sink is not None:
            sink = owner.sink
            size = recvBody(sink.body, sink.filled, receiver.fileno())
            if not size:
                raise AssertionError("the sink wanted more than was sent")
            result = owner.bodyReceived(size)
        rest = b""
        while True:
            more = receiver.recv(65536)
            if not more:
                return result, rest
            rest += more
    finally:
        receiver.close()
        sending.join()



def sendInThread(sender, data):
    """
    Send C{data} on C{sender}, then close it, in a thread: more than a
    socket pair holds.
    """
    import threading

    def send():
        try:
            sender.sendall(data)
        except OSError:
            pass
        finally:
            sender.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread



class BodySinkTests(SynchronousTestCase):
    """
    A big bulk string is received in place, into the bytes object it
    becomes, by L{RequestParser} and L{ReplyFramer} with the accelerator.
    """

    if resp._newBody is None:
        skip = "the C accelerator was not built"

    value = bytes(range(256)) * 1024 + b"tail"

    def test_requestArgument(self):
        """
        A big argument's header and first bytes are fed; the parser offers
        a sink for the rest, which arrives there; the CRLF after it, split,
        and the next command are fed again.
        """
        data = encodeCommand([b"SET", b"k", self.value])
        parser = RequestParser()
        cut = 70000
        self.assertEqual(parser.feed(data[:cut]), [])
        sink = parser.sink
        self.assertEqual(len(sink.body), len(self.value))
        self.assertEqual(parser.buffered, cut)
        result, rest = receiveInto(parser, data[cut:])
        self.assertIsNone(result)
        self.assertEqual(rest, b"\r\n")
        self.assertEqual(parser.buffered, len(data) - 2)
        self.assertEqual(parser.feed(b"\r"), [])
        commands = parser.feed(b"\n" + encodeCommand([b"PING"]))
        self.assertEqual(commands, [[b"SET", b"k", self.value], [b"PING"]])
        self.assertIs(type(commands[0][2]), bytes)
        self.assertIsNone(parser.sink)
        self.assertEqual(parser.buffered, 0)

    def test_requestArgumentNotLast(self):
        """
        An argument received in place may be followed by more arguments.
        """
        data = encodeCommand([b"MSET", b"a", self.value, b"b", b"c"])
        parser = RequestParser()
        self.assertEqual(parser.feed(data[:100]), [])
        self.assertIsNotNone(parser.sink)
        rest = data[100:]
        taken = len(self.value) - parser.sink.filled
        result, left = receiveInto(parser, rest[:taken])
        self.assertEqual(left, b"")
        self.assertEqual(parser.feed(rest[taken:]),
                         [[b"MSET", b"a", self.value, b"b", b"c"]])

    def test_requestArgumentBadEnd(self):
        """
        An argument received in place must be followed by CRLF, as any.
        """
        data = encodeCommand([b"SET", b"k", self.value])
        parser = RequestParser()
        parser.feed(data[:1000])
        receiveInto(parser, data[1000:-2])
        # Whatever the two bytes after it are, as in Redis.
        self.assertEqual(parser.feed(b"\rX"), [[b"SET", b"k", self.value]])
        self.assertIsNone(parser.error)
        self.assertIsNone(parser.sink)

    def test_endCheckedWhenWhole(self):
        """
        As in the pure-Python parser, the two bytes after an argument
        received in place are taken once both are here.
        """
        data = encodeCommand([b"SET", b"k", self.value])[:-2]
        outcomes = []
        for parser in (PureRequestParser(), SinkRequestParser()):
            parser.feed(data[:1000])
            parser.feed(data[1000:])
            self.assertEqual(parser.feed(b"\n"), [])
            outcomes.append((parser.error, parser.buffered))
            commands = parser.feed(b"\n")
            outcomes.append((commands, parser.buffered))
        self.assertEqual(outcomes[:2], outcomes[2:])
        self.assertEqual(outcomes[0], (None, len(data) + 1))
        self.assertEqual(outcomes[1], ([[b"SET", b"k", self.value]], 0))

    def test_headerSplitBeforeTheBody(self):
        """
        A big argument whose length header was split across feeds, with
        the first bytes of the argument in the feed that completes it.
        """
        data = encodeCommand([b"SET", b"k", self.value]) + encodeCommand([b"PING"])
        cut = data.index(b"$%d" % (len(self.value),)) + 3
        for sinkMinimum in (1, RequestParser.sinkMinimum):
            parser = SinkRequestParser()
            parser.sinkMinimum = sinkMinimum
            self.assertEqual(parser.feed(data[:cut]), [])
            self.assertEqual(parser.feed(data[cut:cut + 5000]), [])
            self.assertIsNotNone(parser.sink)
            self.assertEqual(parser.feed(data[cut + 5000:]),
                             [[b"SET", b"k", self.value], [b"PING"]])

    def test_whenNoSink(self):
        """
        No sink for a small argument, for one whole in the feed that
        announced it, for one above L{RequestParser.sinkMaximum}, or
        without the accelerator.
        """
        big = encodeCommand([b"SET", b"k", self.value])
        for parser, data in [
            (RequestParser(), encodeCommand([b"SET", b"k", b"v" * 1000])[:500]),
            (RequestParser(), big[:-1]),
            (RequestParser(), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\nxx"
             % (RequestParser.sinkMaximum + 1,)),
            (PureRequestParser(), big[:1000]),
            (HiredisRequestParser(), big[:1000]),
        ]:
            self.assertEqual(parser.feed(data), [])
            self.assertIsNone(parser.sink, data[:40])

    def test_reply(self):
        """
        A big bulk reply is received in place, header and CRLF included,
        and returned whole once complete.
        """
        reply = bulkString(self.value)
        framer = ReplyFramer()
        self.assertEqual(framer.feed(b"+OK\r\n" + reply[:5000]), [b"+OK\r\n"])
        self.assertEqual(len(framer.sink.body), len(reply))
        self.assertEqual(framer.buffered, 5000)
        result, rest = receiveInto(framer, reply[5000:] + b":1\r\n")
        self.assertEqual(result, [reply])
        self.assertEqual(rest, b":1\r\n")
        self.assertEqual(framer.feed(rest), [b":1\r\n"])
        self.assertEqual(framer.buffered, 0)

    def test_replyBadEnd(self):
        """
        A bulk reply received in place must end with CRLF; after that the
        framer raises on every feed.
        """
        reply = bulkString(self.value)
        framer = ReplyFramer()
        framer.feed(reply[:1000])
        sender, receiver = socket.socketpair()
        self.addCleanup(receiver.close)
        self.addCleanup(sendInThread(sender, reply[1000:-1] + b"X").join)
        with self.assertRaises(ProtocolError):
            while framer.sink is not None:
                sink = framer.sink
                framer.bodyReceived(
                    recvBody(sink.body, sink.filled, receiver.fileno()))
        self.assertIsNone(framer.sink)
        self.assertRaises(ProtocolError, framer.feed, b"+OK\r\n")

    def test_replyFedWhileSinking(self):
        """
        Bytes fed to a framer that offers a sink go into it, and what
        follows the reply is framed as usual.
        """
        reply = bulkString(self.value)
        framer = ReplyFramer()
        framer.feed(reply[:1000])
        self.assertIsNotNone(framer.sink)
        self.assertEqual(framer.feed(reply[1000:-1]), [])
        self.assertEqual(framer.feed(reply[-1:] + b"+OK\r\n"), [reply, b"+OK\r\n"])
        chunked = ChunkedReplyFramer()
        chunked.feed(reply[:1000])
        self.assertIsNone(chunked.sink)

    def test_bigArgumentSunkOnceItComes(self):
        """
        An argument above L{RequestParser.sinkMaximum} reserves nothing at
        its header: it is held in chunks until that many of its bytes have
        come, then received in place; the command is the same.
        """
        class Parser(SpeedupsRequestParser):
            sinkMaximum = 100000

        data = encodeCommand([b"SET", b"k", self.value]) + encodeCommand([b"PING"])
        parser = Parser()
        sinks = []
        commands = []
        for start in range(0, len(data), 20000):
            commands += parser.feed(data[start:start + 20000])
            sinks.append(parser.sink is not None)
        self.assertEqual(commands, [[b"SET", b"k", self.value], [b"PING"]])
        # 100,000 bytes of the value had come with the sixth feed.
        self.assertEqual(sinks[:5], [False] * 5)
        self.assertTrue(all(sinks[5:-1]), sinks)
        self.assertEqual(parser.buffered, 0)

    def test_bigReplySunkOnceItComes(self):
        """
        The same for a reply above L{ReplyFramer.sinkMaximum}: chunks first,
        then in place, the reply whole at the end.
        """
        class Framer(ReplyFramer):
            sinkMaximum = 100000

        reply = bulkString(self.value)
        framer = Framer()
        replies = []
        sinks = []
        for start in range(0, len(reply), 20000):
            replies += framer.feed(reply[start:start + 20000])
            sinks.append(framer.sink is not None)
        self.assertEqual(replies, [reply])
        self.assertEqual(sinks[:4], [False] * 4)
        self.assertTrue(all(sinks[5:-1]), sinks)
        chunked = ChunkedReplyFramer()
        self.assertEqual(
            [r for start in range(0, len(reply), 20000)
             for r in chunked.feed(reply[start:start + 20000])], [reply])

    def test_helpersCheckTheirArguments(self):
        """
        The accelerator's helpers take only a bytes body and offsets in it.
        """
        body = resp._newBody(4)
        self.assertRaises(ValueError, resp._newBody, -1)
        self.assertRaises(TypeError, resp._fillBody, bytearray(4), 0, b"ab", 0)
        self.assertRaises(TypeError, resp._fillBody, body, 0, bytearray(b"ab"), 0)
        self.assertRaises(ValueError, resp._fillBody, body, 5, b"ab", 0)
        self.assertRaises(ValueError, resp._fillBody, body, 0, b"ab", 3)
        self.assertRaises(TypeError, resp._fillBody, body, 0, b"ab")
        self.assertEqual(resp._fillBody(body, 2, b"xyz", 0), 2)
        self.assertEqual(body[2:], b"xy")
        self.assertRaises(ValueError, recvBody, body, 4, 0)
        self.assertRaises(ValueError, recvBody, body, 0, -1)
        self.assertRaises(OSError, recvBody, body, 0, 1 << 20)



# Hypothesis strategies for requests.

_args = st.lists(st.binary(max_size=130), min_size=1, max_size=6)


@st.composite
def _encodedCommands(draw):
    """
    A command and one way of sending it: a RESP array, an inline line with
    every argument quoted, or an inline line of plain words.
    """
    args = draw(_args)
    how = draw(st.sampled_from(["array", "array", "quoted", "plain"]))
    if how == "array":
        return args, encodeCommand(args)
    if how == "quoted":
        words = []
        for arg in args:
            if draw(st.booleans()):
                words.append(b'"' + b"".join(b"\\x%02x" % c for c in arg)
                             + b'"')
            elif not arg.endswith(b"\\") and b"\n" not in arg:
                # In single quotes only \' is an escape.  (No quotes save a
                # LF: the line ends there.)
                words.append(b"'" + arg.replace(b"'", b"\\'") + b"'")
            else:
                words.append(b'"' + b"".join(b"\\x%02x" % c for c in arg)
                             + b'"')
        ending = draw(st.sampled_from([b"\r\n", b"\n"]))
        return args, b" ".join(words) + ending
    words = [draw(st.binary(min_size=1, max_size=20).filter(
        lambda w: not set(w) & set(b" \t\r\n\x0b\x0c\"'")))
        for _ in args]
    if words[0].startswith(b"*"):
        words[0] = b"x" + words[0]
    return words, b" ".join(words) + b"\r\n"


_noise = st.sampled_from([b"*0\r\n", b"*-1\r\n", b"\r\n", b"\n", b"  \r\n"])


@st.composite
def _requestStreams(draw):
    commands = []
    data = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 5)) == 0:
            data.append(draw(_noise))
        args, encoded = draw(_encodedCommands())
        commands.append(args)
        data.append(encoded)
    return commands, b"".join(data)


_respish = st.lists(
    st.one_of(st.sampled_from([b"*", b"$", b"\r\n", b"\r", b"\n", b"1",
                               b"2", b"-1", b"0", b"'", b'"', b"\\", b" ",
                               b"+", b":", b"a"]),
              st.binary(max_size=4)),
    max_size=40).map(b"".join)

_limits = st.sampled_from([{}, dict(maxBulkLength=4, maxArguments=3,
                                    maxInlineLength=24)])


def _outcome(parser, chunks):
    commands = feedAll(parser, chunks)
    return (commands, parser.error and parser.error.message, parser.buffered)



class RequestParserPropertyTests(SynchronousTestCase):
    """
    Properties of L{RequestParser}, with each fast path and without.
    """

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_requestStreams(), st.lists(st.integers(1, 3000), max_size=8))
    def test_validStreams(self, stream, points):
        """
        A valid stream parses to its commands however it is split.
        """
        commands, data = stream
        for parserClass in ALL_PARSERS:
            for chunks in [[data], splitAt(data, points)]:
                parser = parserClass()
                self.assertEqual(feedAll(parser, chunks), commands)
                self.assertIsNone(parser.error)
                self.assertEqual(parser.buffered, 0)


    @settings(max_examples=600, deadline=None)
    @given(_respish, st.lists(st.integers(1, 60), max_size=6), _limits)
    def test_anyBytes(self, data, points, limits):
        """
        Any bytes parse, or stop at a protocol error, the same way however
        they are split and whether hiredis is used or not; nothing else is
        raised.
        """
        expected = _outcome(PureRequestParser(**limits), [data])
        for commands in expected[0]:
            self.assertTrue(commands)
            for arg in commands:
                self.assertIs(type(arg), bytes)
        if expected[1] is not None:
            self.assertTrue(expected[1].startswith("Protocol error: "))
        for parserClass in ALL_PARSERS:
            for chunks in [[data], splitAt(data, points), byteByByte(data)]:
                self.assertEqual(_outcome(parserClass(**limits), chunks),
                                 expected)



class EncoderTests(SynchronousTestCase):
    """
    The encoders produce what Redis sends.
    """

    def test_encodeCommand(self):
        self.assertEqual(encodeCommand([b"GET", b"a"]),
                         b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
        self.assertEqual(encodeCommand([b"SET", b"k", b""]),
                         b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n")
        self.assertEqual(encodeCommand([b"x" * 2000])[:9], b"*1\r\n$2000")


    def test_encodeRequest(self):
        """
        L{encodeRequest} gives L{encodeCommand}'s bytes for small commands,
        and for big ones pieces that join to the same bytes, with the big
        value itself not copied.
        """
        small = [b"SET", b"k", b"v" * 100]
        self.assertEqual(encodeRequest(small), encodeCommand(small))
        value = b"x" * 100000
        big = [b"SET", b"k", value]
        pieces = encodeRequest(big)
        self.assertIsInstance(pieces, list)
        self.assertEqual(b"".join(pieces), encodeCommand(big))
        self.assertTrue(any(piece is value for piece in pieces))

    def test_encodeCommandParts(self):
        big = b"b" * 100000
        args = [b"SET", b"k" * 1500, big, b"v"]
        parts = encodeCommandParts(args)
        self.assertEqual(b"".join(parts), encodeCommand(args))
        self.assertIn(big, parts)
        self.assertIs([p for p in parts if p == big][0], big)
        self.assertEqual(encodeCommandParts([b"PING"]),
                         [b"*1\r\n$4\r\nPING\r\n"])


    def test_constants(self):
        self.assertEqual(resp.OK, b"+OK\r\n")
        self.assertEqual(resp.PONG, b"+PONG\r\n")


    def test_simple(self):
        self.assertEqual(resp.simpleString(b"OK"), b"+OK\r\n")
        self.assertEqual(resp.error(b"ERR unknown command 'FOO'"),
                         b"-ERR unknown command 'FOO'\r\n")
        self.assertEqual(resp.error(b"ERR a\r\nb"), b"-ERR a  b\r\n")
        self.assertEqual(resp.integer(0), b":0\r\n")
        self.assertEqual(resp.integer(-12), b":-12\r\n")
        self.assertEqual(resp.bulkString(b"bar"), b"$3\r\nbar\r\n")
        self.assertEqual(resp.bulkString(b""), b"$0\r\n\r\n")


    def test_null(self):
        self.assertEqual(resp.nullReply(), b"$-1\r\n")
        self.assertEqual(resp.nullReply(2), b"$-1\r\n")
        self.assertEqual(resp.nullReply(3), b"_\r\n")


    def test_aggregates(self):
        items = [resp.bulkString(b"a"), resp.integer(1)]
        self.assertEqual(resp.arrayReply(items), b"*2\r\n$1\r\na\r\n:1\r\n")
        self.assertEqual(resp.arrayReply([]), b"*0\r\n")
        self.assertEqual(resp.setReply(items, 3), b"~2\r\n$1\r\na\r\n:1\r\n")
        self.assertEqual(resp.setReply(items, 2), b"*2\r\n$1\r\na\r\n:1\r\n")


    def test_map(self):
        """
        HELLO's reply, as Redis 7 sends it in RESP3 and RESP2.
        """
        pairs = [(resp.bulkString(b"server"), resp.bulkString(b"redis")),
                 (resp.bulkString(b"proto"), resp.integer(3))]
        self.assertEqual(resp.mapReply(pairs, 3),
                         b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n"
                         b"$5\r\nproto\r\n:3\r\n")
        self.assertEqual(resp.mapReply(pairs, 2),
                         b"*4\r\n$6\r\nserver\r\n$5\r\nredis\r\n"
                         b"$5\r\nproto\r\n:3\r\n")


    def test_verbatim(self):
        """
        Redis 7 answers INFO with a verbatim string in RESP3, a bulk string
        in RESP2.
        """
        self.assertEqual(resp.verbatimString(b"# Server\r\n", 3),
                         b"=14\r\ntxt:# Server\r\n\r\n")
        self.assertEqual(resp.verbatimString(b"# Server\r\n", 2),
                         b"$10\r\n# Server\r\n\r\n")
        self.assertEqual(resp.verbatimString(b"*x*", 3, b"mkd"),
                         b"=7\r\nmkd:*x*\r\n")



# Replies for the framer: (bytes, isPush, isError), one top-level reply each.
REPLIES = [
    (b"+OK\r\n", False, False),
    (b"-ERR unknown command 'x'\r\n", False, True),
    (b"-WRONGTYPE Operation\r\n", False, True),
    (b":0\r\n", False, False),
    (b":-1234\r\n", False, False),
    (b"$3\r\nbar\r\n", False, False),
    (b"$0\r\n\r\n", False, False),
    (b"$-1\r\n", False, False),
    (b"$4\r\n\r\n\r\n\r\n", False, False),
    (b"$150\r\n" + b"x" * 150 + b"\r\n", False, False),
    (b"*-1\r\n", False, False),
    (b"*0\r\n", False, False),
    (b"*2\r\n$1\r\na\r\n$-1\r\n", False, False),
    (b"*3\r\n:1\r\n*2\r\n+a\r\n$150\r\n" + b"y" * 150
     + b"\r\n*0\r\n", False, False),
    (b"*4\r\n$150\r\n" + b"l" * 150 + b"\r\n$-1\r\n$100\r\n" + b"m" * 100
     + b"\r\n$0\r\n\r\n", False, False),
    (b"_\r\n", False, False),
    (b",3.14\r\n", False, False),
    (b",-inf\r\n", False, False),
    (b"#t\r\n", False, False),
    (b"(3492890328409238509324850943850943825024385\r\n", False, False),
    (b"!21\r\nSYNTAX invalid syntax\r\n", False, True),
    (b"=15\r\ntxt:Some string\r\n", False, False),
    (b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", False, False),
    (b"~3\r\n+a\r\n+b\r\n:1\r\n", False, False),
    (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", True, False),
    (b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n"
     b",0.05\r\n*2\r\n:2039123\r\n:9543892\r\n", False, False),
    (b"|1\r\n+ttl\r\n:3\r\n>2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n",
     True, False),
    (b"|1\r\n+a\r\n+b\r\n-ERR x\r\n", False, True),
    (b"|0\r\n+OK\r\n", False, False),
    (b"*3\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n:3\r\n", False, False),
    (b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n", False, False),
    (b"*?\r\n:1\r\n:2\r\n:3\r\n.\r\n", False, False),
    (b"~?\r\n+a\r\n*?\r\n.\r\n.\r\n", False, False),
    (b"%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n", False, False),
    (b"*2\r\n$?\r\n;1\r\na\r\n;0\r\n:1\r\n", False, False),
]



class ReplyFramerTests(SynchronousTestCase):
    """
    Tests for L{ReplyFramer}.
    """

    def assertFrames(self, data, replies):
        """
        C{data} frames to C{replies}, whole, byte by byte, and split in two
        at every point.
        """
        framer = ReplyFramer()
        self.assertEqual(framer.feed(data), replies)
        self.assertEqual(framer.buffered, 0)
        framer = ReplyFramer()
        out = []
        for i, chunk in enumerate(byteByByte(data)):
            out.extend(framer.feed(chunk))
            self.assertEqual(framer.buffered,
                             i + 1 - sum(len(r) for r in out))
        self.assertEqual(out, replies)
        for i in range(1, len(data)):
            framer = ReplyFramer()
            self.assertEqual(framer.feed(data[:i]) + framer.feed(data[i:]),
                             replies)


    def test_eachType(self):
        for reply, _, _ in REPLIES:
            self.assertFrames(reply, [reply])


    def test_stream(self):
        """
        All the replies in one stream, split anywhere.
        """
        replies = [r for r, _, _ in REPLIES]
        self.assertFrames(b"".join(replies), replies)


    def test_isPushAndIsError(self):
        for reply, push, error in REPLIES:
            self.assertEqual(isPush(reply), push, reply)
            self.assertEqual(isError(reply), error, reply)


    def test_wholeChunkNotCopied(self):
        """
        A chunk that is exactly one reply is returned as it is.
        """
        for data in [b"+OK\r\n", b"$3\r\nbar\r\n", b"*1\r\n:1\r\n",
                     b"$200\r\n" + b"z" * 200 + b"\r\n"]:
            self.assertIs(ReplyFramer().feed(data)[0], data)


    def test_common(self):
        """
        Many small replies, and an LRANGE-like array, in one chunk.
        """
        small = [b"+OK\r\n", b"$3\r\nbar\r\n", b":7\r\n", b"$-1\r\n"] * 250
        lrange = b"*100\r\n" + b"".join(b"$%d\r\n%s\r\n" % (i, b"v" * i)
                                        for i in range(100))
        replies = small + [lrange] + small
        self.assertEqual(ReplyFramer().feed(b"".join(replies)), replies)


    def test_lineOddities(self):
        """
        Simple strings and bulk bodies are cut at CRLF only.
        """
        self.assertFrames(b"+a\nb\rc\r\n$3\r\n\r\n\n\r\n",
                          [b"+a\nb\rc\r\n", b"$3\r\n\r\n\n\r\n"])


    def test_incomplete(self):
        framer = ReplyFramer()
        self.assertEqual(framer.feed(b"*2\r\n$3\r\nfoo\r\n$3\r\nba"), [])
        self.assertEqual(framer.buffered, 19)
        self.assertEqual(framer.feed(b"r\r\n+O"),
                         [b"*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n"])
        self.assertEqual(framer.buffered, 2)
        self.assertEqual(framer.feed(b"K\r\n"), [b"+OK\r\n"])
        self.assertEqual(framer.buffered, 0)


    def test_bigBulk(self):
        """
        A 64 MB bulk reply arriving in 64 KB chunks, followed by more.
        """
        size = 64 * 1024 * 1024
        data = b"$%d\r\n" % size + b"r" * size + b"\r\n+OK\r\n"
        chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        del data
        framer = ReplyFramer()
        for chunk in chunks[:-1]:
            self.assertEqual(framer.feed(chunk), [])
        self.assertEqual(framer.buffered, 65536 * (len(chunks) - 1))
        replies = framer.feed(chunks[-1])
        self.assertEqual(len(replies), 2)
        self.assertEqual(len(replies[0]), size + 13)
        self.assertEqual(replies[0][:12], b"$67108864\r\nr")
        self.assertTrue(replies[0].endswith(b"rr\r\n"))
        self.assertEqual(replies[1], b"+OK\r\n")


    def test_bigArray(self):
        """
        A 200,000-element array in 64 KB chunks.
        """
        elements = [b"$5\r\nhello\r\n", b":12\r\n",
                    b"$150\r\n" + b"w" * 150 + b"\r\n", b"*2\r\n+a\r\n_\r\n"]
        data = (b"*200000\r\n" + b"".join(elements) * 50000 + b":1\r\n")
        chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        framer = ReplyFramer()
        replies = []
        for chunk in chunks:
            replies.extend(framer.feed(chunk))
        self.assertEqual(replies, [data[:-4], b":1\r\n"])


    def test_bulkCRLFChecked(self):
        """
        The two bytes after a bulk string must be CRLF, even when what
        follows them would frame.
        """
        for data in [b"$3\r\nabcXY+OK\r\n", b"*2\r\n$3\r\nabcXY:1\r\n",
                     b"*2\r\n:1\r\n$3\r\nabcXY:1\r\n",
                     b"$150\r\n" + b"x" * 150 + b"XY+OK\r\n",
                     b"*3\r\n$150\r\n" + b"x" * 150 + b"XY:1\r\n:2\r\n"]:
            self.assertRaises(ProtocolError, ReplyFramer().feed, data)


    def test_bigBulkCRLFChecked(self):
        framer = ReplyFramer()
        framer.feed(b"$100000\r\n" + b"x" * 99999)
        self.assertRaises(ProtocolError, framer.feed, b"xxx")


    def test_protocolErrors(self):
        for data in [b"?\r\n", b"x", b"*1\r\n?", b"$x\r\n", b"$-2\r\n",
                     b"*-2\r\n", b">-1\r\n", b"$3\r\nabcd\r\n",
                     b"*1\r\n$3\r\nabcd\r\n", b".\r\n", b";3\r\nabc\r\n",
                     b"*1\r\n.\r\n", b"$?\r\n+a\r\n", b"*?\r\n.x\r\n",
                     b"!-1\r\n", b"%-1\r\n"]:
            framer = ReplyFramer()
            self.assertRaises(ProtocolError, framer.feed, data)
            # The stream cannot be trusted any more.
            self.assertRaises(ProtocolError, framer.feed, b"+OK\r\n")


    def test_errorWithoutNewline(self):
        """
        A bad type byte is noticed at once, even without a LF after it.
        """
        framer = ReplyFramer()
        self.assertEqual(framer.feed(b"*2\r\n:1\r\n"), [])
        self.assertRaises(ProtocolError, framer.feed, b"x")



# Hypothesis strategies for replies.

_line = st.binary(max_size=12).filter(lambda b: b"\r" not in b
                                      and b"\n" not in b)
_blob = st.binary(max_size=140)

_scalars = st.one_of(
    _line.map(lambda b: b"+" + b + b"\r\n"),
    _line.map(lambda b: b"-ERR " + b + b"\r\n"),
    st.integers(-2 ** 63, 2 ** 63).map(lambda i: b":%d\r\n" % i),
    _blob.map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.sampled_from([b"$-1\r\n", b"*-1\r\n", b"_\r\n", b"#t\r\n", b"#f\r\n",
                     b",1.5\r\n", b",inf\r\n", b"(12345678901234567890\r\n"]),
    _blob.map(lambda b: b"!%d\r\n%s\r\n" % (len(b), b)),
    _blob.map(lambda b: b"=%d\r\ntxt:%s\r\n" % (len(b) + 4, b)),
    st.lists(st.binary(min_size=1, max_size=20), max_size=3).map(
        lambda cs: b"$?\r\n" + b"".join(b";%d\r\n%s\r\n" % (len(c), c)
                                         for c in cs) + b";0\r\n"),
)


def _aggregates(children):
    return st.one_of(
        st.lists(children, max_size=5).map(
            lambda xs: b"*%d\r\n" % len(xs) + b"".join(xs)),
        st.lists(children, max_size=5).map(
            lambda xs: b"~%d\r\n" % len(xs) + b"".join(xs)),
        st.lists(st.tuples(children, children), max_size=3).map(
            lambda ps: b"%%%d\r\n" % len(ps)
            + b"".join(k + v for k, v in ps)),
        st.lists(children, max_size=4).map(
            lambda xs: b"*?\r\n" + b"".join(xs) + b".\r\n"),
        st.tuples(st.lists(st.tuples(children, children), max_size=2),
                  children).map(
            lambda a: b"|%d\r\n" % len(a[0])
            + b"".join(k + v for k, v in a[0]) + a[1]),
    )


_values = st.recursive(_scalars, _aggregates, max_leaves=12)
_topLevel = st.one_of(
    _values,
    st.lists(_values, max_size=3).map(
        lambda xs: b">%d\r\n" % len(xs) + b"".join(xs)))



class ReplyFramerPropertyTests(SynchronousTestCase):
    """
    Properties of L{ReplyFramer}.
    """

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_topLevel, min_size=1, max_size=6),
           st.lists(st.integers(1, 4000), max_size=8))
    def test_validStreams(self, replies, points):
        """
        A stream of valid replies frames to exactly those replies, however
        it is split.
        """
        data = b"".join(replies)
        for framerClass in ALL_FRAMERS:
            for chunks in [[data], splitAt(data, points)]:
                framer = framerClass()
                out = []
                for chunk in chunks:
                    out.extend(framer.feed(chunk))
                self.assertEqual(out, replies)
                self.assertEqual(framer.buffered, 0)


    @settings(max_examples=600, deadline=None)
    @given(_respish, st.lists(st.integers(1, 60), max_size=6))
    def test_anyBytes(self, data, points):
        """
        Any bytes either frame into replies that are a prefix of the stream
        (the same however it is split), or raise L{ProtocolError}.
        """
        try:
            whole = ReplyFramer().feed(data)
        except ProtocolError:
            whole = None
        else:
            self.assertTrue(data.startswith(b"".join(whole)))
        try:
            pure = PureReplyFramer().feed(data)
        except ProtocolError:
            pure = None
        self.assertEqual(pure, whole)
        for framerClass in ALL_FRAMERS:
            for chunks in [splitAt(data, points), byteByByte(data)]:
                framer = framerClass()
                out = []
                try:
                    for chunk in chunks:
                        out.extend(framer.feed(chunk))
                except ProtocolError:
                    self.assertIsNone(whole)
                else:
                    self.assertEqual(out, whole)


class FrameRepliesTests(SynchronousTestCase):
    """
    The accelerator's reply scan, C{rmux._speedups.frameReplies}, and what
    it leaves to the pure-Python framer.
    """

    def setUp(self):
        if resp._frameReplies is None:
            raise SkipTest("rmux._speedups (or its frameReplies) is not built")

    def frame(self, data, pos=0):
        out = []
        stop = resp._frameReplies(data, pos, out)
        return out, stop

    def test_common(self):
        """
        Lines, bulk strings, nulls and nested aggregates of every RESP3
        kind but attributes are cut out whole, from C{pos}.
        """
        replies = [b"+OK\r\n", b"-ERR x\r\n", b":-5\r\n", b"$3\r\nabc\r\n", b"$0\r\n\r\n",
                   b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"_\r\n", b",1.5\r\n", b"#t\r\n",
                   b"(12\r\n", b"!3\r\nerr\r\n", b"=7\r\ntxt:abc\r\n",
                   b"*2\r\n$1\r\na\r\n*1\r\n%1\r\n+k\r\n~2\r\n:1\r\n:2\r\n",
                   b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"]
        data = b"xx" + b"".join(replies)
        self.assertEqual(self.frame(data, 2), (replies, len(data)))

    def test_wholeIsItself(self):
        data = b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        out, stop = self.frame(data)
        self.assertIs(out[0], data)

    def test_stopsAtWhatItLeaves(self):
        """
        It stops at the start of a reply that is incomplete, or that it
        leaves to the pure-Python framer, which then frames it (or raises)
        as it always did.
        """
        first = b"+OK\r\n"
        for rest in [b"*2\r\n$1\r\na\r\n", b"$5\r\nab", b"|1\r\n+a\r\n+b\r\n+c\r\n",
                     b"$?\r\n;1\r\na\r\n;0\r\n", b"*?\r\n:1\r\n.\r\n", b"$03\r\nabc\r\n",
                     b"*+1\r\n:1\r\n", b"$1\r\nabc\r\n", b"@oops\r\n",
                     b"*1\r\n" * 65 + b":1\r\n"]:
            data = first + rest
            self.assertEqual(self.frame(data), ([first], len(first)), rest)
            try:
                expected = PureReplyFramer().feed(data)
            except ProtocolError as e:
                error = self.assertRaises(ProtocolError, ReplyFramer().feed, data)
                self.assertEqual(str(error), str(e))
            else:
                self.assertEqual(ReplyFramer().feed(data), expected)

    def test_arguments(self):
        self.assertRaises(TypeError, resp._frameReplies, bytearray(b"+OK\r\n"), 0, [])
        self.assertRaises(ValueError, resp._frameReplies, b"+OK\r\n", 6, [])
        self.assertEqual(self.frame(b"+OK\r\n", 5), ([], 5))


class UnauthenticatedLimitTests(SynchronousTestCase):
    """
    Before AUTH, Redis's small request limits apply, with its own texts.
    """

    def test_tooManyArguments(self):
        parser = RequestParser()
        parser.restrictUntilAuthenticated()
        self.assertEqual(parser.feed(b"*10\r\n" + b"$1\r\na\r\n" * 10), [[b"a"] * 10])
        self.assertEqual(parser.feed(b"*11\r\n"), [])
        self.assertEqual(str(parser.error), "Protocol error: unauthenticated multibulk length")

    def test_tooLong(self):
        parser = RequestParser()
        parser.restrictUntilAuthenticated()
        parser.feed(b"*2\r\n$3\r\nSET\r\n$16385\r\n")
        self.assertEqual(str(parser.error), "Protocol error: unauthenticated bulk length")

    def test_oneAtATime(self):
        """
        While restricted, each feed returns one command and leaves the
        rest in C{unparsed}, so limits lifted by that command apply to the
        next one in the same packet, as in Redis.
        """
        parser = RequestParser()
        parser.restrictUntilAuthenticated()
        big = b"*11\r\n" + b"$1\r\na\r\n" * 11
        self.assertEqual(parser.feed(b"AUTH pw\r\n*1\r\n$4\r\nPING\r\n" + big),
                         [[b"AUTH", b"pw"]])
        rest = parser.unparsed
        self.assertEqual(rest, b"*1\r\n$4\r\nPING\r\n" + big)
        self.assertEqual(parser.feed(rest), [[b"PING"]])
        parser.authenticated()
        self.assertEqual(parser.feed(parser.unparsed), [[b"a"] * 11])
        self.assertIsNone(parser.error)

    def test_oneAtATimeAcrossFeeds(self):
        """
        A command split over feeds completes from the held bytes, and the
        bytes after it are left unparsed.
        """
        parser = RequestParser()
        parser.restrictUntilAuthenticated()
        self.assertEqual(parser.feed(b"*2\r\n$4\r\nAUTH\r\n$2\r\np"), [])
        self.assertEqual(parser.feed(b"w\r\n*11\r\n"), [[b"AUTH", b"pw"]])
        self.assertEqual(parser.unparsed, b"*11\r\n")
        self.assertEqual(parser.feed(parser.unparsed), [])
        self.assertEqual(str(parser.error), "Protocol error: unauthenticated multibulk length")

    def test_lifted(self):
        parser = RequestParser()
        parser.restrictUntilAuthenticated()
        parser.authenticated()
        value = b"x" * 20000
        self.assertEqual(
            parser.feed(b"*2\r\n$3\r\nSET\r\n$20000\r\n" + value + b"\r\n"), [[b"SET", value]]
        )
