"""
Unit tests for L{rmux.session}: a client's db, affinity, transactions and
blocking commands, against fakes of the interfaces it talks to and a
L{Clock}, without a Redis server.  (The same features against real servers
are in L{tests.test_stateful}.)
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rmux.commands import CommandTable
from rmux.config import BackendAddress
from rmux.interfaces import (
    IBackendConnection, IBackendPool, IClient, IReplyWaiter, IRequestSender, IRouter,
)
from rmux.pool import BackendPool
from rmux.resp import RequestParser, encodeRequest
from rmux.router import CROSSSLOT, PlacementError
from rmux.session import ScriptCache, Session, blockingReadTimeout
from rmux.transaction import EXECABORT, QUEUED, SPREAD

TABLE = CommandTable.default()


def decode(payload):
    """
    The commands in an encoded payload (bytes or pieces).
    """
    if type(payload) is list:
        payload = b"".join(payload)
    return RequestParser().feed(payload)


@implementer(IReplyWaiter)
class Slot:
    """
    A client's place for a reply that comes later.
    """

    def __init__(self):
        self.data = None

    def fill(self, reply):
        self.data = reply


@implementer(IClient)
class FakeClient:
    """
    Records what the session answers, in order: a ready reply as bytes, a
    later one as its L{Slot}.
    """

    disconnected = False
    protocolVersion = 2

    def __init__(self):
        self.out = []
        self.holding = False
        self.releases = 0

    def reply(self, data):
        self.out.append(data)

    def newSlot(self):
        slot = Slot()
        self.out.append(slot)
        return slot

    def hold(self):
        self.holding = True

    def release(self):
        self.holding = False
        self.releases += 1

    def answers(self):
        """
        Every reply so far, None for one still due.
        """
        return [item if isinstance(item, bytes) else item.data for item in self.out]


@implementer(IBackendConnection)
class FakeConnection:
    """
    A connection that keeps what is sent on it for the test to answer.
    """

    broken = False
    aborted = False

    def __init__(self, pool):
        self.pool = pool
        self.readTimeout = pool.readTimeout
        self.sent = []

    def send(self, payload, waiter, db=0, protocolVersion=2, count=1):
        for command in decode(payload):
            self.sent.append((command, waiter, db, protocolVersion))

    def abort(self):
        self.aborted = self.broken = True

    def commands(self):
        return [command for command, waiter, db, version in self.sent]

    def answer(self, *replies):
        """
        Answer the oldest unanswered requests with C{replies}, in order.
        """
        for reply in replies:
            command, waiter, db, version = self.sent.pop(0)
            waiter.fill(reply)


@implementer(IBackendPool)
class FakePool:
    """
    A server's pool: one shared connection, and dedicated ones handed out
    when the test says (or at once).
    """

    readTimeout = 0.5
    fixedDb = None

    def __init__(self, name, immediate=True):
        self.address = BackendAddress.fromString(name)
        self.shared = FakeConnection(self)
        self.sends = []
        self.immediate = immediate
        self.checkouts = []
        self.checkedIn = []
        self.lent = []

    def send(self, payload, waiter, db=0, protocolVersion=2, after=None, count=1):
        self.sends.append((decode(payload), waiter, db, protocolVersion, after, count))
        connection = after or self.shared
        connection.send(payload, waiter, db, protocolVersion, count)
        return connection

    def checkout(self):
        if self.immediate:
            connection = FakeConnection(self)
            self.lent.append(connection)
            return succeed(connection)
        d = Deferred()
        self.checkouts.append(d)
        return d

    def checkin(self, connection, clean=True):
        self.checkedIn.append((connection, clean))


@implementer(IRouter)
class FakeRouter:
    """
    Keys starting with C{a} live on the first pool, with C{b} on the
    second; C{down...} keys cannot be placed.
    """

    single = None
    crossServerTransactions = False

    def __init__(self):
        self.pools = [FakePool("redis-a:6379"), FakePool("redis-b:6379")]
        self.routed = []

    def poolForKey(self, key):
        if key.startswith(b"down"):
            raise PlacementError.because("rmux: backend redis-c:6379 is down")
        return self.pools[0] if key.startswith(b"a") else self.pools[1]

    def poolForCommand(self, args, spec):
        keys = spec.keys(args)
        if not keys:
            return None
        pools = {self.poolForKey(key) for key in keys}
        if len(pools) > 1:
            raise PlacementError(CROSSSLOT)
        return pools.pop()

    def anyPool(self):
        return self.pools[0]

    def passThroughPool(self, commands):
        return None

    def patternPools(self):
        return self.pools

    def patternPoolOf(self, pool):
        return pool

    def whenPlaced(self):
        return None

    def topologySnapshot(self):
        return {"kind": "servers", "counters": {}, "nodes": {}}

    def ready(self):
        return True

    def blockingRedirect(self, reply, redirects):
        return None

    def passThroughSender(self, sender):
        return sender

    def route(self, args, spec, waiter, sender, payload=None):
        self.routed.append(args)
        try:
            pool = self.poolForCommand(args, spec) or self.anyPool()
        except PlacementError as e:
            waiter.fill(e.reply)
            return
        sender.send(pool, payload or encodeRequest(args), waiter)


def command(*args):
    args = [a.encode() if isinstance(a, str) else a for a in args]
    return args, TABLE.lookup(args)


class SessionTestCase(SynchronousTestCase):
    def setUp(self):
        self.client = FakeClient()
        self.router = FakeRouter()
        self.a, self.b = self.router.pools
        self.scripts = ScriptCache()
        self.session = Session(self.client, self.router, self.scripts)

    def call(self, method, *args):
        getattr(self.session, method)(*command(*args))

    def forward(self, *args):
        self.session.forward(*command(*args))


class InterfaceTests(SessionTestCase):
    def test_fakesAndSessionProvideTheirInterfaces(self):
        """
        The fakes have the real objects' shape, and the session is a
        request sender.
        """
        verifyObject(IClient, self.client)
        verifyObject(IRouter, self.router)
        verifyObject(IBackendPool, self.a)
        verifyObject(IBackendConnection, self.a.shared)
        verifyObject(IReplyWaiter, Slot())
        verifyObject(IRequestSender, self.session)


class AffinityTests(SessionTestCase):
    def test_unansweredRequestsStayOnTheirConnection(self):
        """
        While a request to a server is unanswered, the next one goes on the
        same connection; once it is answered, the pool may choose.
        """
        self.forward("SET", "a1", "x")
        self.forward("GET", "a1")
        first, second = self.a.sends
        self.assertIsNone(first[4])
        self.assertIs(second[4], self.a.shared)
        self.a.shared.answer(b"+OK\r\n", b"$1\r\nx\r\n")
        self.forward("GET", "a1")
        self.assertIsNone(self.a.sends[2][4])
        self.assertEqual(self.client.answers(), [b"+OK\r\n", b"$1\r\nx\r\n", None])

    def test_dbAndVersionTravelWithEachRequest(self):
        self.session.db = 4
        self.session.protocolVersion = 3
        self.forward("GET", "a1")
        self.assertEqual(self.a.sends[0][2:4], (4, 3))

    def test_forgetPool(self):
        self.forward("GET", "a1")
        self.forward("GET", "b1")
        self.session.forgetPool(self.a)
        self.assertEqual(list(self.session.affinity), [self.b])


class TransactionTests(SessionTestCase):
    def test_multiExecOnOneServer(self):
        """
        MULTI and the queued commands are answered at once; EXEC sends the
        whole transaction on a dedicated connection to the keys' server,
        holding the client's later commands until EXEC's reply, then gives
        the connection back.
        """
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "a1", "x")
        self.call("queue", "GET", "a2")
        self.assertTrue(self.session.multi)
        self.call("execute", "EXEC")
        (connection,) = self.a.lent
        self.assertEqual(connection.commands(), [
            [b"MULTI"], [b"SET", b"a1", b"x"], [b"GET", b"a2"], [b"EXEC"]])
        self.assertTrue(self.client.holding)
        connection.answer(b"+OK\r\n", QUEUED, QUEUED, b"*2\r\n+OK\r\n$1\r\nx\r\n")
        self.assertEqual(self.client.answers(), [
            b"+OK\r\n", QUEUED, QUEUED, b"*2\r\n+OK\r\n$1\r\nx\r\n"])
        self.assertEqual(self.a.checkedIn, [(connection, True)])
        self.assertEqual(self.client.releases, 1)
        self.assertTrue(self.session.isPlain)

    def test_keysOnTwoServersRefusedAsQueued(self):
        """
        The command that would spread a transaction over two servers is
        refused as it is queued; EXEC then aborts, as Redis does after a
        refused command.
        """
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "a1", "x")
        self.call("queue", "SET", "b1", "y")
        self.call("execute", "EXEC")
        self.assertEqual(self.client.answers(), [b"+OK\r\n", QUEUED, SPREAD, EXECABORT])
        self.assertEqual(self.a.lent + self.b.lent, [])

    def test_keysOfOneCommandOnTwoServersRefused(self):
        self.call("startTransaction", "MULTI")
        self.call("queue", "MSET", "a1", "x", "b1", "y")
        self.call("execute", "EXEC")
        self.assertEqual(self.client.answers(), [b"+OK\r\n", CROSSSLOT, EXECABORT])

    def test_crossServerTransaction(self):
        """
        With crossServerTransactions, each server runs its share as one
        MULTI/EXEC, and EXEC's reply has every reply in queueing order.
        """
        self.router.crossServerTransactions = True
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "a1", "x")
        self.call("queue", "INCR", "b1")
        self.call("queue", "GET", "a1")
        self.call("queue", "PING")
        self.call("execute", "EXEC")
        (onA,), (onB,) = self.a.lent, self.b.lent
        self.assertEqual(onA.commands(), [
            [b"MULTI"], [b"SET", b"a1", b"x"], [b"GET", b"a1"], [b"PING"], [b"EXEC"]])
        self.assertEqual(onB.commands(), [[b"MULTI"], [b"INCR", b"b1"], [b"EXEC"]])
        self.assertTrue(self.client.holding)
        onB.answer(b"+OK\r\n", QUEUED, b"*1\r\n:1\r\n")
        self.assertIsNone(self.client.answers()[-1])
        onA.answer(b"+OK\r\n", QUEUED, QUEUED, QUEUED,
                   b"*3\r\n+OK\r\n$1\r\nx\r\n+PONG\r\n")
        self.assertEqual(self.client.answers()[-1],
                         b"*4\r\n+OK\r\n:1\r\n$1\r\nx\r\n+PONG\r\n")
        self.assertFalse(self.client.holding)
        self.assertEqual(self.a.checkedIn + self.b.checkedIn, [(onA, True), (onB, True)])

    def test_crossServerTransactionError(self):
        """
        A server whose EXEC fails makes the whole EXEC reply its error (the
        other servers' shares have run: the whole is not atomic).
        """
        self.router.crossServerTransactions = True
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "a1", "x")
        self.call("queue", "SET", "b1", "y")
        self.call("execute", "EXEC")
        (onA,), (onB,) = self.a.lent, self.b.lent
        onA.answer(b"+OK\r\n", QUEUED, b"*1\r\n+OK\r\n")
        onB.answer(b"+OK\r\n", QUEUED, EXECABORT)
        self.assertEqual(self.client.answers()[-1], EXECABORT)

    def test_watchKeepsATransactionOnOneServer(self):
        self.router.crossServerTransactions = True
        self.call("watch", "WATCH", "a1")
        self.a.lent[0].answer(b"+OK\r\n")
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "b1", "y")
        self.assertEqual(self.client.answers()[-1], SPREAD)

    def test_refusedCommandAbortsExec(self):
        """
        A command refused while queueing makes EXEC fail, as in Redis.
        """
        self.call("startTransaction", "MULTI")
        self.call("queue", "SUBSCRIBE", "c")
        self.session.commandFailed()
        self.call("execute", "EXEC")
        answers = self.client.answers()
        self.assertEqual(
            answers[1], b"-ERR rmux: SUBSCRIBE cannot be queued in a transaction\r\n")
        self.assertEqual(answers[-1], EXECABORT)

    def test_keylessTransactionGoesToAnyServer(self):
        self.call("startTransaction", "MULTI")
        self.call("queue", "PING")
        self.call("execute", "EXEC")
        (connection,) = self.a.lent
        self.assertEqual(connection.commands(), [[b"MULTI"], [b"PING"], [b"EXEC"]])

    def test_errors(self):
        self.call("execute", "EXEC")
        self.call("discard", "DISCARD")
        self.call("startTransaction", "MULTI")
        self.call("startTransaction", "MULTI")
        self.call("queue", "WATCH", "a1")
        self.assertEqual(self.client.answers(), [
            b"-ERR EXEC without MULTI\r\n",
            b"-ERR DISCARD without MULTI\r\n",
            b"+OK\r\n",
            b"-ERR MULTI calls can not be nested\r\n",
            b"-ERR WATCH inside MULTI is not allowed\r\n",
        ])

    def test_discard(self):
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "a1", "x")
        self.call("discard", "DISCARD")
        self.assertIsNone(self.session.multi)
        self.assertEqual(self.client.answers()[-1], b"+OK\r\n")


class WatchTests(SessionTestCase):
    def watch(self, *keys):
        self.call("watch", "WATCH", *keys)

    def test_watchPinsThenExecUsesThePin(self):
        """
        WATCH takes a dedicated connection to its keys' server and keeps
        it; EXEC runs there, and gives it back.
        """
        self.watch("a1")
        (connection,) = self.a.lent
        self.assertFalse(self.client.holding)
        self.assertFalse(self.session.isPlain)
        self.assertEqual(connection.commands(), [[b"WATCH", b"a1"]])
        connection.answer(b"+OK\r\n")
        self.forward("GET", "a1")
        self.assertEqual(connection.commands(), [[b"GET", b"a1"]])
        connection.answer(b"$-1\r\n")
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "a1", "x")
        self.call("execute", "EXEC")
        self.assertEqual(self.a.lent, [connection])
        self.assertEqual(connection.commands(), [[b"MULTI"], [b"SET", b"a1", b"x"], [b"EXEC"]])
        connection.answer(b"+OK\r\n", QUEUED, b"*-1\r\n")
        self.assertEqual(self.client.answers(), [
            b"+OK\r\n", b"$-1\r\n", b"+OK\r\n", QUEUED, b"*-1\r\n"])
        self.assertEqual(self.a.checkedIn, [(connection, True)])
        self.assertIsNone(self.session.pin)

    def test_otherServersKeysGoThroughTheRouter(self):
        self.watch("a1")
        self.forward("GET", "b1")
        self.assertEqual(self.router.routed, [[b"GET", b"b1"]])
        self.assertEqual(self.b.sends[0][0], [[b"GET", b"b1"]])

    def test_watchOnAnotherServerRefused(self):
        self.watch("a1")
        self.watch("b1")
        self.assertEqual(
            self.client.answers()[-1],
            b"-ERR rmux: WATCH keys must live on the server of the keys already watched\r\n")

    def test_watchAcrossServersRefused(self):
        self.watch("a1", "b1")
        self.assertEqual(self.client.answers(), [CROSSSLOT])

    def test_watchOfAKeyThatCannotBePlaced(self):
        self.watch("down1")
        self.assertEqual(
            self.client.answers(), [b"-ERR rmux: backend redis-c:6379 is down\r\n"])

    def test_unwatchCleansBeforeCheckin(self):
        """
        UNWATCH goes to the pinned connection, which goes back clean only
        if the server said +OK.
        """
        self.watch("a1")
        (connection,) = self.a.lent
        connection.answer(b"+OK\r\n")
        self.call("unwatch", "UNWATCH")
        self.assertEqual(connection.commands(), [[b"UNWATCH"]])
        connection.answer(b"-ERR oops\r\n")
        self.assertEqual(self.a.checkedIn, [(connection, False)])
        self.assertEqual(self.client.answers()[-1], b"-ERR oops\r\n")

    def test_unwatchWithoutWatch(self):
        self.call("unwatch", "UNWATCH")
        self.assertEqual(self.client.answers(), [b"+OK\r\n"])

    def test_execAfterWatchOnAnotherServer(self):
        """
        A transaction whose keys are not on the watched server is refused
        as it is queued; EXEC aborts, and the pin is given back.
        """
        self.watch("a1")
        (connection,) = self.a.lent
        connection.answer(b"+OK\r\n")
        self.call("startTransaction", "MULTI")
        self.call("queue", "SET", "b1", "x")
        self.call("execute", "EXEC")
        self.assertEqual(self.client.answers()[-2:], [SPREAD, EXECABORT])
        self.assertEqual(connection.commands(), [[b"UNWATCH"]])
        self.assertIsNone(self.session.pin)

    def test_waitsForItsConnection(self):
        """
        Until the dedicated connection is there, later commands are held.
        """
        self.a.immediate = False
        self.watch("a1")
        self.assertTrue(self.client.holding)
        connection = FakeConnection(self.a)
        self.a.checkouts[0].callback(connection)
        self.assertFalse(self.client.holding)
        self.assertEqual(connection.commands(), [[b"WATCH", b"a1"]])

    def test_clientGoneBeforeItsConnectionCame(self):
        self.a.immediate = False
        self.watch("a1")
        self.client.disconnected = True
        connection = FakeConnection(self.a)
        self.a.checkouts[0].callback(connection)
        self.assertEqual(self.a.checkedIn, [(connection, True)])
        self.assertEqual(connection.commands(), [])

    def test_cannotConnect(self):
        self.a.checkout = lambda: fail(ConnectionRefusedError("refused"))
        self.watch("a1")
        self.assertEqual(
            self.client.answers(),
            [b"-ERR rmux: cannot connect to backend redis-a:6379: refused\r\n"])
        self.assertFalse(self.client.holding)

    def test_closeGivesThePinBack(self):
        self.watch("a1")
        (connection,) = self.a.lent
        connection.answer(b"+OK\r\n")
        self.session.close()
        self.assertEqual(connection.commands(), [[b"UNWATCH"]])
        connection.answer(b"+OK\r\n")
        self.assertEqual(self.a.checkedIn, [(connection, True)])

    def test_reset(self):
        self.watch("a1")
        self.a.lent[0].answer(b"+OK\r\n")
        self.call("startTransaction", "MULTI")
        self.session.db = 3
        self.session.protocolVersion = 3
        self.session.reset()
        self.assertEqual(
            (self.session.multi, self.session.pin, self.session.db,
             self.session.protocolVersion),
            (None, None, 0, 2))


class BlockingTests(SessionTestCase):
    def test_ownTimeoutThenBack(self):
        """
        A blocking command runs on a dedicated connection with its own
        timeout plus the read timeout; its reply puts the usual timeout
        back and returns the connection.
        """
        self.call("blocking", "BLPOP", "a1", "2")
        (connection,) = self.a.lent
        self.assertEqual(connection.readTimeout, 2.5)
        self.assertIs(self.session.blockedOn, connection)
        self.assertTrue(self.client.holding)
        connection.answer(b"*-1\r\n")
        self.assertEqual(connection.readTimeout, 0.5)
        self.assertIsNone(self.session.blockedOn)
        self.assertEqual(self.a.checkedIn, [(connection, True)])
        self.assertEqual(self.client.answers(), [b"*-1\r\n"])
        self.assertEqual(self.client.releases, 1)

    def test_onThePinnedConnection(self):
        """
        After WATCH, a blocking command on the watched server runs on the
        pinned connection, which it does not give back.
        """
        self.call("watch", "WATCH", "a1")
        (connection,) = self.a.lent
        connection.answer(b"+OK\r\n")
        self.call("blocking", "BLPOP", "a1", "0")
        self.assertEqual(self.a.lent, [connection])
        self.assertEqual(connection.readTimeout, 0)
        connection.answer(b"*-1\r\n")
        self.assertEqual(self.a.checkedIn, [])

    def test_closeAbortsABlockedConnection(self):
        self.call("blocking", "BRPOP", "b1", "0")
        (connection,) = self.b.lent
        self.session.close()
        self.assertTrue(connection.aborted)

    def test_placementError(self):
        self.call("blocking", "BLMOVE", "a1", "b1", "LEFT", "LEFT", "0")
        self.assertEqual(self.client.answers(), [CROSSSLOT])

    def test_readTimeouts(self):
        """
        Each blocking command's timeout is found where it keeps it.
        """
        def timeout(*args):
            args, spec = command(*args)
            return blockingReadTimeout(args, spec.name, 0.5)

        self.assertEqual(timeout("BLPOP", "a", "b", "1.5"), 2.0)
        self.assertEqual(timeout("BLMPOP", "3", "1", "a", "LEFT"), 3.5)
        self.assertEqual(timeout("WAIT", "1", "250"), 0.75)
        self.assertEqual(timeout("XREAD", "BLOCK", "1000", "STREAMS", "s", "$"), 1.5)
        self.assertEqual(timeout("BLPOP", "a", "0"), 0)
        self.assertEqual(timeout("BLPOP", "a", "soon"), 0.5)
        self.assertEqual(timeout("XREAD", "STREAMS", "s", "$"), 0.5)


class PoolExhaustionTests(SynchronousTestCase):
    """
    With the real pool's cap and wait, on a L{Clock}.
    """

    def test_waitThenError(self):
        clock = Clock()
        pool = BackendPool(clock, BackendAddress.fromString("redis-a:6379"),
                           maxPinned=1, pinnedWait=0.25)
        opened = []

        def open():
            connection = FakeConnection(pool)
            opened.append(connection)
            return succeed(connection)

        pool._open = open
        router = FakeRouter()
        router.pools[0] = pool
        first, second = FakeClient(), FakeClient()
        Session(first, router, ScriptCache()).watch(*command("WATCH", "a1"))
        Session(second, router, ScriptCache()).watch(*command("WATCH", "a2"))
        self.assertEqual(len(opened), 1)
        self.assertTrue(second.holding)
        clock.advance(0.25)
        self.assertEqual(second.answers(), [
            b"-ERR rmux: all 1 dedicated connections to backend redis-a:6379 are in use "
            b"(waited 250 ms)\r\n"])
        self.assertFalse(second.holding)


class ScriptTests(SessionTestCase):
    def test_noscriptRetriedWithTheBodySeen(self):
        """
        EVALSHA that meets NOSCRIPT loads the body rmux saw in SCRIPT LOAD
        and tries once more; the client sees only the second reply.
        """
        body = b"return 1"
        self.forward("SCRIPT", "LOAD", body)
        sha = b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        self.a.shared.answer(b"$40\r\n" + sha + b"\r\n")
        self.forward("EVALSHA", sha.upper(), "1", "a1")
        self.a.shared.answer(b"-NOSCRIPT No matching script.\r\n")
        self.assertEqual(self.a.shared.commands(), [
            [b"SCRIPT", b"LOAD", body], [b"EVALSHA", sha.upper(), b"1", b"a1"]])
        self.a.shared.answer(b"$40\r\n" + sha + b"\r\n", b":1\r\n")
        self.assertEqual(self.client.answers(), [b"$40\r\n" + sha + b"\r\n", b":1\r\n"])

    def test_noscriptOfAnUnknownBody(self):
        self.forward("EVALSHA", "abc", "0")
        self.a.shared.answer(b"-NOSCRIPT No matching script.\r\n")
        self.assertEqual(self.client.answers(), [b"-NOSCRIPT No matching script.\r\n"])

    def test_cacheForgetsTheOldest(self):
        cache = ScriptCache()
        cache.maximum = 2
        for body in (b"1", b"2", b"3"):
            cache.remember(body)
        self.assertEqual(sorted(cache.bodies.values()), [b"2", b"3"])
