"""
Tests for L{rmux.hashing}: Go rmux's placement, checked against the test
vectors and slot tables of the behaviour specification (rmux-spec.md §8.3).
"""

from twisted.trial.unittest import SynchronousTestCase

from rmux.hashing import RmuxRing, rmuxHash, slotTable


class RmuxHashTests(SynchronousTestCase):
    def test_vectors(self):
        """
        Multiply-by-33 from 0 gives the spec's hash values.
        """
        vectors = {
            b"a": 97, b"b": 98, b"foo": 114852, b"bar": 110037,
            b"k0": 3579, b"k1": 3580, b"user:1000": 3410859194, b"": 0,
        }
        for key, expected in vectors.items():
            self.assertEqual(rmuxHash(key), expected, key)

    def test_wrapsAt32Bits(self):
        self.assertLess(rmuxHash(b"x" * 1000), 2**32)


class SlotTableTests(SynchronousTestCase):
    tables = {
        2: "01",
        3: "01202101",
        4: "01233022130311200321012330221303",
        5: "01234024130314204321012340241303",
        6: "0123455024413503325140415223053114200543210123455024413503325140",
    }

    def test_tables(self):
        for n, expected in self.tables.items():
            self.assertEqual("".join(map(str, slotTable(n))), expected, n)

    def test_sizesArePowersOfTwo(self):
        for n in range(1, 102):
            size = len(slotTable(n))
            self.assertEqual(size & (size - 1), 0)
            self.assertEqual(set(slotTable(n)), set(range(n)) if n > 1 else {0})

    def test_tooMany(self):
        self.assertRaises(ValueError, slotTable, 102)
        self.assertRaises(ValueError, slotTable, 0)


class RingTests(SynchronousTestCase):
    vectors = [
        # key, N=2, 3, 4, 5, 8
        (b"a", 1, 1, 1, 1, 4),
        (b"b", 0, 2, 2, 2, 2),
        (b"foo", 0, 2, 3, 4, 1),
        (b"bar", 1, 1, 1, 1, 1),
        (b"k0", 1, 0, 2, 4, 4),
        (b"k1", 0, 2, 1, 1, 6),
        (b"user:1000", 0, 2, 2, 2, 7),
        (b"", 0, 0, 0, 0, 0),
    ]

    def test_placement(self):
        for key, *expected in self.vectors:
            for n, backend in zip((2, 3, 4, 5, 8), expected):
                self.assertEqual(RmuxRing(n).backendOf(key), backend, (key, n))

    def test_failoverWalksSlots(self):
        """
        With its backend down, a key goes to the owner of the next slot that
        is up: for N=4, 'foo' sits in slot 4 (backend 3), slot 5 is backend 0.
        """
        ring = RmuxRing(4)
        self.assertEqual(ring.slotOf(b"foo"), 114852 & 31)
        self.assertEqual(ring.failoverOf(b"foo", lambda i: True), 3)
        slot = ring.slotOf(b"foo")
        expected = next(
            ring.table[(slot + s) % 32] for s in range(32) if ring.table[(slot + s) % 32] != 3
        )
        self.assertEqual(ring.failoverOf(b"foo", lambda i: i != 3), expected)

    def test_allDown(self):
        self.assertIsNone(RmuxRing(3).failoverOf(b"a", lambda i: False))
