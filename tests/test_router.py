"""
Unit tests for the reply merging of L{rmux.router}: byte-level checks of
each merge rule on replies as Redis sends them.  (Routing itself is tested
against real servers in L{tests.test_multiplex}.)
"""

from twisted.trial.unittest import SynchronousTestCase

from rmux import commands as C
from rmux.hashing import RmuxRing
from rmux.router import FanOut, PoolGroup, Router, merge


class Part:
    def __init__(self, data, positions=()):
        self.data = data
        self.positions = positions


def parts(*replies):
    return [Part(r) for r in replies]


class MergeTests(SynchronousTestCase):
    def test_sum(self):
        self.assertEqual(merge(C.MERGE_SUM, parts(b":2\r\n", b":0\r\n", b":40\r\n")), b":42\r\n")

    def test_errorWins(self):
        self.assertEqual(
            merge(C.MERGE_SUM, parts(b":2\r\n", b"-ERR boom\r\n")), b"-ERR boom\r\n"
        )

    def test_inOrder(self):
        """
        MGET's per-server replies are put back in key order, elements
        byte-exact (a RESP3 null stays a RESP3 null).
        """
        merged = merge(
            C.MERGE_IN_ORDER,
            [
                Part(b"*2\r\n$1\r\na\r\n_\r\n", (0, 2)),
                Part(b"*1\r\n$3\r\nbbb\r\n", (1,)),
            ],
            3,
        )
        self.assertEqual(merged, b"*3\r\n$1\r\na\r\n$3\r\nbbb\r\n_\r\n")

    def test_concatAndUnion(self):
        a = b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n"
        b = b"*1\r\n$1\r\ny\r\n"
        self.assertEqual(
            merge(C.MERGE_CONCAT, parts(a, b)), b"*3\r\n$1\r\nx\r\n$1\r\ny\r\n$1\r\ny\r\n"
        )
        self.assertEqual(merge(C.MERGE_UNION, parts(a, b)), a)
        self.assertEqual(merge(C.MERGE_CONCAT, parts(b"*0\r\n", b"*0\r\n")), b"*0\r\n")

    def test_and(self):
        self.assertEqual(
            merge(C.MERGE_AND, parts(b"*2\r\n:1\r\n:1\r\n", b"*2\r\n:1\r\n:0\r\n")),
            b"*2\r\n:1\r\n:0\r\n",
        )

    def test_pairsSum(self):
        self.assertEqual(
            merge(
                C.MERGE_PAIRS_SUM,
                parts(
                    b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:0\r\n",
                    b"*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:5\r\n",
                ),
            ),
            b"*4\r\n$1\r\na\r\n:3\r\n$1\r\nb\r\n:5\r\n",
        )

    def test_sameAndOneOk(self):
        sha = b"$40\r\n" + b"e" * 40 + b"\r\n"
        self.assertEqual(merge(C.MERGE_SAME, parts(sha, sha)), sha)
        self.assertTrue(merge(C.MERGE_SAME, parts(sha, b"$1\r\nx\r\n")).startswith(b"-ERR"))
        self.assertEqual(
            merge(C.MERGE_ONE_OK, parts(b"-NOTBUSY No scripts\r\n", b"+OK\r\n")), b"+OK\r\n"
        )
        self.assertEqual(
            merge(C.MERGE_ONE_OK, parts(b"-NOTBUSY a\r\n", b"-NOTBUSY b\r\n")),
            b"-NOTBUSY a\r\n",
        )

    def test_anyNonNil(self):
        self.assertEqual(
            merge(C.MERGE_ANY_NON_NIL, parts(b"$-1\r\n", b"$1\r\nk\r\n")), b"$1\r\nk\r\n"
        )
        self.assertEqual(merge(C.MERGE_ANY_NON_NIL, parts(b"_\r\n", b"_\r\n")), b"_\r\n")

    def test_min(self):
        self.assertEqual(merge(C.MERGE_MIN, parts(b":3\r\n", b":1\r\n")), b":1\r\n")


class FanOutTests(SynchronousTestCase):
    def test_fillsSlotWhenLastPartArrives(self):
        class Slot:
            data = None

            def fill(self, data):
                self.data = data

        slot = Slot()
        fanOut = FanOut(slot, C.MERGE_SUM, 2)
        first, second = fanOut.part(0), fanOut.part(1)
        second.fill(b":1\r\n")
        self.assertIsNone(slot.data)
        first.fill(b":2\r\n")
        self.assertEqual(slot.data, b":3\r\n")


class AdoptTests(SynchronousTestCase):
    def test_heldReferencesSeeTheNewPlacement(self):
        """
        What holds the router, or one of its bound methods (every client,
        the pub/sub hub), places keys the new way once it has adopted a
        new router.
        """
        a, b = object(), object()
        router = Router(PoolGroup([a]))
        placeChannel = router.poolForKey
        allPools = lambda: router.pools
        self.assertIs(placeChannel(b"k1"), a)
        ring = RmuxRing(2)
        router.adopt(Router(PoolGroup([a, b], ring), allowFlush=True))
        keys = [b"k%d" % i for i in range(20)]
        self.assertEqual(
            [placeChannel(key) for key in keys],
            [(a, b)[ring.backendOf(key)] for key in keys],
        )
        self.assertEqual(allPools(), [a, b])
        self.assertIsNone(router.single)
        self.assertTrue(router.allowFlush)


class _Starting:
    """
    A health monitor with no first verdicts yet.
    """

    starting = True

    def isUp(self, pool):
        return True


class PassThroughPoolTests(SynchronousTestCase):
    """
    Where a batch of plain single-key commands may go whole.
    """

    def setUp(self):
        self.pools = [object(), object()]
        self.ring = RmuxRing(2)
        self.router = Router(PoolGroup(self.pools, self.ring))
        keys = [b"k%d" % i for i in range(20)]
        self.byPool = [[key for key in keys if self.ring.backendOf(key) == index]
                       for index in range(2)]

    def test_oneServer(self):
        """
        Commands whose keys are all on one server go there.
        """
        first, second = self.byPool[0][:2]
        commands = [[b"SET", first, b"1"], [b"GET", second]]
        self.assertIs(self.router.passThroughPool(commands), self.pools[0])

    def test_spanning(self):
        """
        Keys on several servers: the general path, which splits them.
        """
        commands = [[b"GET", self.byPool[0][0]], [b"GET", self.byPool[1][0]]]
        self.assertIsNone(self.router.passThroughPool(commands))

    def test_notPlacedYet(self):
        """
        Before the health monitor's first verdicts, or for a key no route
        takes, the general path waits or gives the error.
        """
        self.router.health = _Starting()
        self.assertIsNone(self.router.passThroughPool([[b"GET", b"k1"]]))
        routed = Router(PoolGroup(self.pools, self.ring), routes=[(b"user:", PoolGroup([1]))])
        routed.routes.catchAll = None
        self.assertIsNone(routed.passThroughPool([[b"GET", b"k1"]]))
