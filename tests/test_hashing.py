"""
Tests for L{rmux.hashing}: Go rmux's placement, checked against the test
vectors and slot tables of the behaviour specification (rmux-spec.md §8.3);
twemproxy's ketama and key hashes, checked against published vectors, an
independent re-implementation, and placements observed through a real
nutcracker; hash tags, prefix routes and the distribution factory.
"""

import hashlib
import struct
from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from twisted.trial.unittest import SynchronousTestCase

from rmux.hashing import (
    KEY_HASHES,
    KetamaRing,
    PrefixRoutes,
    RmuxRing,
    crc32,
    crc32a,
    fnv1_32,
    fnv1_64,
    fnv1a_32,
    fnv1a_64,
    hashTagged,
    ketamaPointCount,
    makeRing,
    md5,
    murmur,
    rmuxHash,
    slotTable,
    twemproxyServerName,
)


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



# Reference implementations, written independently of rmux.hashing (64-bit
# arithmetic, hashlib directly, a linear scan instead of a binary search),
# so that a shared mistake is unlikely.

def _signedChar(byte):
    """
    A key byte as twemproxy's C code sees it on x86-64: a signed C{char}
    widened to 64 bits.
    """
    return (byte - 0x100 if byte >= 0x80 else byte) & 0xFFFFFFFFFFFFFFFF


def referenceFnv1a64(key):
    h = 0xCBF29CE484222325
    for byte in key:
        h = ((h ^ _signedChar(byte)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 0xFFFFFFFF


def referenceContinuum(names):
    """
    Equal-weight ketama: 40 MD5 digests per server, four points each.
    """
    points = []
    for index, name in enumerate(names):
        for group in range(40):
            digest = hashlib.md5(("%s-%d" % (name, group)).encode()).digest()
            for word in range(4):
                value = int.from_bytes(digest[word * 4:word * 4 + 4], "little")
                points.append((value, index))
    points.sort(key=lambda point: point[0])
    return points


def referenceLookup(points, keyHash):
    for value, index in points:
        if value >= keyHash:
            return index
    return points[0][1]


def referenceHashTag(key):
    """
    Redis Cluster's rule, written as the Redis documentation states it.
    """
    if b"{" not in key:
        return key
    after = key.split(b"{", 1)[1]
    if b"}" not in after:
        return key
    inside = after.split(b"}", 1)[0]
    return inside if inside else key


def parseServerLine(line):
    """
    Split a twemproxy C{servers:} entry, C{"address:weight [name]"}, into the
    address, the weight and the node name (or L{None}).
    """
    spec, _, name = line.partition(" ")
    address, _, weight = spec.rpartition(":")
    return address, int(weight), name or None


def ringFromLines(lines, hashName):
    servers = []
    for line in lines:
        address, weight, name = parseServerLine(line)
        servers.append((twemproxyServerName(address, name), weight))
    return KetamaRing(servers, hashName)



class KeyHashTests(SynchronousTestCase):
    """
    twemproxy's key hashes.
    """

    def test_fnvPublishedVectors(self):
        """
        For ASCII keys, twemproxy's FNVs are the published FNV results (for
        the 64-bit ones, their low 32 bits): FNV-1a 64 of C{"a"} is
        0xaf63dc4c8601ec8c, of C{"foobar"} 0x85944171f73967e8, and so on.
        """
        vectors = [
            (fnv1a_64, b"", 0x84222325),
            (fnv1a_64, b"a", 0x8601EC8C),
            (fnv1a_64, b"foobar", 0xF73967E8),
            (fnv1_64, b"a", 0x8601B7BE),
            (fnv1_64, b"foobar", 0xA4DDA9C2),
            (fnv1a_32, b"a", 0xE40C292C),
            (fnv1a_32, b"foobar", 0xBF9CF968),
            (fnv1_32, b"a", 0x050C5D7E),
            (fnv1_32, b"foobar", 0x31F0B262),
        ]
        for function, key, expected in vectors:
            self.assertEqual(function(key), expected, (function.__name__, key))

    def test_fnvSignedChars(self):
        """
        Bytes of 0x80 and more enter twemproxy's FNVs sign-extended, so
        C{fnv1a_64} is not the low half of the textbook FNV-1a 64 for them.
        """
        keys = [b"\x80", b"\xff\xfe\xfd", "clé".encode(), b"a\x7f\x80b"]
        for key in keys:
            self.assertEqual(fnv1a_64(key), referenceFnv1a64(key), key)
            textbook = 0xCBF29CE484222325
            for byte in key:
                textbook = ((textbook ^ byte) * 0x100000001B3) % 2**64
            self.assertNotEqual(fnv1a_64(key), textbook & 0xFFFFFFFF, key)

    @given(st.binary(max_size=40))
    def test_fnv1a64MatchesReference(self, key):
        self.assertEqual(fnv1a_64(key), referenceFnv1a64(key))

    @given(st.binary(max_size=40))
    def test_md5(self, key):
        """
        twemproxy's C{md5} key hash is the digest's first word, little-endian.
        """
        digest = hashlib.md5(key).digest()
        self.assertEqual(md5(key), struct.unpack("<I", digest[:4])[0])

    def test_crc32(self):
        """
        C{crc32a} is the standard CRC-32 (check value 0xCBF43926);
        C{crc32} is libmemcached's 15 bits of it.
        """
        self.assertEqual(crc32a(b"123456789"), 0xCBF43926)
        self.assertEqual(crc32(b"123456789"), (0xCBF43926 >> 16) & 0x7FFF)

    @given(st.binary(max_size=40))
    def test_rangeIs32Bits(self, key):
        for name, function in KEY_HASHES.items():
            self.assertTrue(0 <= function(key) < 2**32, name)

    def test_murmurTails(self):
        """
        MurmurHash2 takes whole words, then a 1 to 3 byte tail; every tail
        length gives a distinct, stable answer.
        """
        values = [murmur(b"abcdefg"[:n]) for n in range(8)]
        self.assertEqual(len(set(values)), 8)



class KetamaPointTests(SynchronousTestCase):
    """
    The continuum.
    """

    def test_pointCountEqualWeights(self):
        """
        Equal weights give 160 points each, except where single-precision
        rounding takes 4 away, as it does for 25 servers (checked against
        nutcracker, below).
        """
        for n in range(1, 25):
            self.assertEqual(ketamaPointCount(1, n, n), 160, n)
        self.assertEqual(ketamaPointCount(1, 25, 25), 156)
        self.assertEqual(len(KetamaRing([("s%d" % i, 1) for i in range(25)]).points), 25 * 156)

    def test_pointCountWeights(self):
        self.assertEqual(
            [ketamaPointCount(w, 10, 4) for w in (1, 2, 3, 4)], [64, 128, 192, 256]
        )
        self.assertEqual(ketamaPointCount(1, 3, 2), 104)

    def test_continuumMatchesReference(self):
        """
        Points, owners and lookups agree with a re-implementation that uses
        hashlib and a linear scan.
        """
        keys = [b"key:%d" % i for i in range(300)] + [b"\xff", b"user:1000"]
        for n in range(2, 7):
            names = ["10.0.0.%d:6379" % (i + 1) for i in range(n)]
            ring = KetamaRing([(name, 1) for name in names], "md5")
            reference = referenceContinuum(names)
            self.assertEqual(ring.points, tuple(value for value, index in reference))
            self.assertEqual(ring.owners, tuple(index for value, index in reference))
            for key in keys:
                keyHash = int.from_bytes(hashlib.md5(key).digest()[:4], "little")
                self.assertEqual(
                    ring.backendOf(key), referenceLookup(reference, keyHash), (n, key)
                )

    def test_wraps(self):
        """
        A hash past the last point belongs to the first point's server; one
        exactly on a point belongs to that point's server.
        """
        ring = KetamaRing([("a", 1), ("b", 1), ("c", 1)])
        ring.keyHash = lambda key: int(key)
        last = ring.points[-1]
        self.assertEqual(ring.backendOf(b"%d" % (last + 1,)), ring.owners[0])
        self.assertEqual(ring.backendOf(b"%d" % (last,)), ring.owners[-1])
        self.assertEqual(ring.backendOf(b"%d" % (ring.points[7],)), ring.owners[7])
        self.assertEqual(ring.backendOf(b"%d" % (ring.points[7] + 1,)), ring.owners[8])

    def test_emptyKeyHashesToZero(self):
        """
        twemproxy gives an empty key hash 0, not the key hash of nothing, so
        it belongs to the first point's server.
        """
        ring = KetamaRing([("server%d" % i, 1) for i in range(1, 5)])
        self.assertEqual(ring.hashOf(b""), 0)
        self.assertEqual(ring.backendOf(b""), ring.owners[0])
        self.assertNotEqual(ring.owners[0], ring.owners[bisect_left(ring.points, fnv1a_64(b""))])

    def test_oneServer(self):
        ring = KetamaRing([("only", 7)])
        self.assertEqual(ring.backends, 1)
        self.assertEqual(ring.backendOf(b"anything"), 0)
        self.assertEqual(ring.failoverOf(b"anything", lambda i: False), None)

    def test_bytesAndStrNames(self):
        self.assertEqual(
            KetamaRing([("a", 1), ("b", 2)]).points, KetamaRing([(b"a", 1), (b"b", 2)]).points
        )

    def test_badServers(self):
        self.assertRaises(ValueError, KetamaRing, [])
        self.assertRaises(ValueError, KetamaRing, [("a", 0)])
        self.assertRaises(ValueError, KetamaRing, [("a", -1)])
        self.assertRaises(ValueError, KetamaRing, [("a", 1.5)])
        self.assertRaises(ValueError, KetamaRing, [("a", True)])
        self.assertRaises(ValueError, KetamaRing, [("a", 1)], "sha1")

    def test_nameTooLong(self):
        """
        twemproxy cannot hash a point string over 85 bytes (it reads past its
        buffer), so such names are refused rather than placed differently.
        """
        KetamaRing([("x" * 82, 1)])
        error = self.assertRaises(ValueError, KetamaRing, [("x" * 83, 1)])
        self.assertIn("too long", str(error))

    def test_serverNames(self):
        """
        twemproxy hashes the node name if given, else host:port as written,
        else (port 11211) the host alone; a unix path keeps its colon.
        """
        self.assertEqual(twemproxyServerName("127.0.0.1:6379"), "127.0.0.1:6379")
        self.assertEqual(twemproxyServerName("cache-1:6380", "server1"), "server1")
        self.assertEqual(twemproxyServerName("10.0.0.1:11211"), "10.0.0.1")
        self.assertEqual(twemproxyServerName("/var/run/redis.sock"), "/var/run/redis.sock:")
        self.assertRaises(ValueError, twemproxyServerName, "nohost")

    def test_publishedIssue32(self):
        """
        twemproxy issue 32: with servers 127.0.0.1:11212 and :11213 and
        fnv1a_64, keys a, b, c and d all went to 11212 (nutcracker 0.5.0
        still does that).
        """
        ring = KetamaRing([("127.0.0.1:11212", 1), ("127.0.0.1:11213", 1)])
        self.assertEqual([ring.backendOf(key) for key in (b"a", b"b", b"c", b"d")], [0, 0, 0, 0])

    def test_publishedIssue175(self):
        """
        twemproxy issue 175: with the libmemcached C{crc32} (15 bits, so every
        key hashes below 32768) ketama sends every key to one server.
        """
        ring = KetamaRing([("server%d" % i, 1) for i in range(1, 5)], "crc32")
        self.assertEqual(len({ring.backendOf(b"key-%d" % i) for i in range(2000)}), 1)

    def test_publishedIssue195(self):
        """
        twemproxy issue 195: two named servers, fnv1a_64; keys starting with
        letters all went to one server, keys starting with 1 to the other.
        Which one is which was confirmed with nutcracker 0.5.0 (letters to
        server2).
        """
        ring = KetamaRing([("server1", 1), ("server2", 1)])
        self.assertEqual([ring.backendOf(k) for k in (b"aaa", b"bbb", b"ccc")], [1, 1, 1])
        self.assertEqual([ring.backendOf(k) for k in (b"1aa", b"111", b"123")], [0, 0, 0])



# Placements observed through a real twemproxy: Debian bookworm's nutcracker
# 0.5.0+dfsg-2 (amd64) in front of throw-away redis-server 7.0.15 instances
# (unix sockets in /tmp/kx, TCP on 127.0.0.1:26390-26393, and
# 127.0.0.{1,2,3}:11211), one pool per entry below with `distribution:
# ketama`, the `hash:` and `hash_tag:` shown and these `servers:` lines.
# Each key was SET through nutcracker, then looked up with KEYS on every
# redis-server; the index is the server that held it.  (The empty key and
# the 300-byte key were sent too.)  The test needs no nutcracker.
#
# Each entry: label, hash, hash_tag, servers lines, index of a server that
# was down (or None), [(key, index of the server that held it)].
_UNIX25 = ["/tmp/kx/r%d.sock:1" % i for i in range(4)] + [
    "/tmp/kx/x%d.sock:1" % i for i in range(21)
]

NUTCRACKER_POOLS = [
    ("tcp", "fnv1a_64", None, [
        "127.0.0.1:26390:1",
        "127.0.0.1:26391:1",
        "127.0.0.1:26392:1",
        "127.0.0.1:26393:1",
    ], None, [
        (b'a', 1), (b'foo', 3), (b'bar', 1), (b'user:1000', 2), (b'k0', 0),
        (b'k1', 0), (b'key:0', 1), (b'key:1', 1), (b'key:17', 0),
        (b'key:42', 0), (b'key:99', 0), (b'key:123', 3), (b'key:150', 3),
        (b'key:199', 3), (b'cl\xc3\xa9', 2),
        (b'\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e', 1), (b'\x80', 0),
        (b'\xff\xfe\xfd', 0), (b'\x7f\x80\x81abc', 1), (b'bin\x00ary', 2),
        (b'\x800', 3), (b'\x822', 3), (b'\x844', 3), (b'\xc3\xa91', 2),
        (b'\xc3\xa93', 2), (b'\xc3\xa95', 2), (b"x" * 300, 1), (b'', 2),
    ]),
    ("unix", "fnv1a_64", None, [
        "/tmp/kx/r0.sock:1",
        "/tmp/kx/r1.sock:1",
        "/tmp/kx/r2.sock:1",
        "/tmp/kx/r3.sock:1",
    ], None, [
        (b'a', 1), (b'foo', 2), (b'bar', 0), (b'user:1000', 1), (b'key:0', 3),
        (b'key:42', 2), (b'cl\xc3\xa9', 0), (b'', 3),
    ]),
    ("port 11211", "fnv1a_64", None, [
        "127.0.0.1:11211:1",
        "127.0.0.2:11211:1",
        "127.0.0.3:11211:1",
    ], None, [
        (b'a', 0), (b'foo', 1), (b'bar', 0), (b'user:1000', 0), (b'key:0', 1),
        (b'key:42', 1), (b'key:123', 0), (b'', 2),
    ]),
    ("names, hash tag", "fnv1a_64", b'{}', [
        "127.0.0.1:26390:1 server1",
        "127.0.0.1:26391:1 server2",
        "127.0.0.1:26392:1 server3",
        "127.0.0.1:26393:1 server4",
    ], None, [
        (b'foo', 0), (b'user:1000', 0), (b'{user1}:a', 2), (b'{user1}:b', 2),
        (b'x{}{user1}', 2), (b'{}', 2), (b'a{b', 1), (b'z}{q}', 2),
        (b'x{}{u0}', 3), (b'u0{}{x}', 1), (b'x{}{u1}', 3), (b'u1{}{x}', 0),
        (b'{}{u4}', 1), (b'', 2),
    ]),
    ("md5, weights", "md5", None, [
        "127.0.0.1:26390:1 server1",
        "127.0.0.1:26391:2 server2",
        "127.0.0.1:26392:3 server3",
        "127.0.0.1:26393:4 server4",
    ], None, [
        (b'a', 2), (b'foo', 1), (b'bar', 3), (b'user:1000', 1), (b'k0', 3),
        (b'k1', 3), (b'key:0', 2), (b'key:1', 3), (b'key:17', 2),
        (b'key:42', 2), (b'\xff\xfe\xfd', 3), (b'', 2),
    ]),
    ("names, weights", "fnv1a_64", None, [
        "127.0.0.1:26390:1 server1",
        "127.0.0.1:26391:1 server2",
        "127.0.0.1:26392:1 server3",
        "127.0.0.1:26393:5 server4",
    ], None, [
        (b'a', 3), (b'foo', 3), (b'bar', 3), (b'user:1000', 0), (b'k0', 3),
        (b'k1', 3), (b'key:0', 3), (b'key:1', 3), (b'key:17', 1),
        (b'key:42', 1), (b'\xff\xfe\xfd', 3), (b'', 3),
    ]),
    ("murmur", "murmur", None, [
        "127.0.0.1:26390:1",
        "127.0.0.1:26391:1",
        "127.0.0.1:26392:1",
        "127.0.0.1:26393:1",
    ], None, [
        (b'a', 1), (b'foo', 3), (b'user:1000', 3), (b'key:0', 0),
        (b'key:42', 3), (b'key:123', 1), (b'cl\xc3\xa9', 0),
        (b'\xff\xfe\xfd', 1), (b'\x800', 0), (b'\x822', 2), (b'\xc3\xa91', 3),
        (b'\xc3\xa93', 2),
    ]),
    ("crc32a", "crc32a", None, [
        "127.0.0.1:26390:1",
        "127.0.0.1:26391:1",
        "127.0.0.1:26392:1",
        "127.0.0.1:26393:1",
    ], None, [
        (b'a', 0), (b'foo', 0), (b'user:1000', 2), (b'key:0', 3),
        (b'key:42', 1), (b'key:123', 2), (b'cl\xc3\xa9', 0),
        (b'\xff\xfe\xfd', 1), (b'\x800', 3), (b'\x822', 1), (b'\xc3\xa91', 3),
        (b'\xc3\xa93', 3),
    ]),
    ("crc32", "crc32", None, [
        "127.0.0.1:26390:1",
        "127.0.0.1:26391:1",
        "127.0.0.1:26392:1",
        "127.0.0.1:26393:1",
    ], None, [
        (b'a', 2), (b'foo', 2), (b'user:1000', 2), (b'key:0', 2),
        (b'key:42', 2), (b'key:123', 2), (b'cl\xc3\xa9', 2),
        (b'\xff\xfe\xfd', 2), (b'\x800', 2), (b'\x822', 2), (b'\xc3\xa91', 2),
        (b'\xc3\xa93', 2),
    ]),
    ("fnv1_64", "fnv1_64", None, [
        "127.0.0.1:26390:1",
        "127.0.0.1:26391:1",
        "127.0.0.1:26392:1",
        "127.0.0.1:26393:1",
    ], None, [
        (b'a', 1), (b'foo', 0), (b'user:1000', 2), (b'key:0', 0),
        (b'key:42', 3), (b'key:123', 0), (b'cl\xc3\xa9', 2),
        (b'\xff\xfe\xfd', 0), (b'\x800', 1), (b'\x822', 1), (b'\xc3\xa91', 1),
        (b'\xc3\xa93', 1),
    ]),
    ("fnv1a_32", "fnv1a_32", None, [
        "127.0.0.1:26390:1",
        "127.0.0.1:26391:1",
        "127.0.0.1:26392:1",
        "127.0.0.1:26393:1",
    ], None, [
        (b'a', 3), (b'foo', 1), (b'user:1000', 2), (b'key:0', 0),
        (b'key:42', 2), (b'key:123', 3), (b'cl\xc3\xa9', 1),
        (b'\xff\xfe\xfd', 2), (b'\x800', 1), (b'\x822', 0), (b'\xc3\xa91', 1),
        (b'\xc3\xa93', 2),
    ]),
    ("fnv1_32", "fnv1_32", None, [
        "127.0.0.1:26390:1",
        "127.0.0.1:26391:1",
        "127.0.0.1:26392:1",
        "127.0.0.1:26393:1",
    ], None, [
        (b'a', 0), (b'foo', 3), (b'user:1000', 3), (b'key:0', 0),
        (b'key:42', 1), (b'key:123', 2), (b'cl\xc3\xa9', 0),
        (b'\xff\xfe\xfd', 0), (b'\x800', 3), (b'\x822', 0), (b'\xc3\xa91', 2),
        (b'\xc3\xa93', 2),
    ]),
    # 25 servers: 156 points each, not 160 (float rounding).
    ("25 servers", "fnv1a_64", None, _UNIX25, None, [
        (b'p25:970', 12), (b'p25:975', 12), (b'p25:979', 12),
        (b'p25:2080', 11), (b'p25:2081', 11), (b'p25:2090', 11),
        (b'p25:4780', 17), (b'a', 1), (b'foo', 11), (b'', 8),
    ]),
    # auto_eject_hosts, server 2 never listening and ejected: equal weights,
    # so failoverOf agrees with twemproxy's rebuilt continuum.
    ("ejected", "fnv1a_64", None, [
        "/tmp/kx/r0.sock:1",
        "/tmp/kx/r1.sock:1",
        "/tmp/kx/dead.sock:1",
        "/tmp/kx/r2.sock:1",
    ], 2, [
        (b'\x80', 3), (b'bin\x00ary', 1), (b'x{}{user1}', 0), (b'p25:4780', 1),
        (b'x{}{u0}', 3), (b'u1{}{x}', 1), (b'key:0', 3), (b'key:8', 3),
        (b'a', 1), (b'foo', 3),
    ]),
]



class NutcrackerVectorTests(SynchronousTestCase):
    """
    L{KetamaRing} places keys where nutcracker 0.5.0 did.
    """

    def test_vectors(self):
        count = 0
        for label, hashName, tag, lines, down, vectors in NUTCRACKER_POOLS:
            ring = ringFromLines(lines, hashName)
            for key, expected in vectors:
                hashed = hashTagged(key, tag)
                if down is None:
                    got = ring.backendOf(hashed)
                else:
                    got = ring.failoverOf(hashed, lambda i: i != down)
                self.assertEqual(got, expected, (label, key))
                count += 1
        self.assertGreater(count, 150)

    def test_unequalWeightsEjection(self):
        """
        twemproxy's C{auto_eject_hosts} rebuilds the continuum from the live
        servers, re-sharing the points by weight; with unequal weights that
        can place a key elsewhere than L{KetamaRing.failoverOf}'s walk.
        Observed with weights 1, 2, 3, 4 and server 2 down: nutcracker put
        C{b"\\xff\\xfe\\xfd"} on server 0, a ring over the live servers agrees,
        the walk says server 3.  Keys whose home is up do not move.
        """
        lines = [
            "/tmp/kx/r0.sock:1", "/tmp/kx/r1.sock:2",
            "/tmp/kx/dead.sock:3", "/tmp/kx/r2.sock:4",
        ]
        observed = [(b"\xff\xfe\xfd", 0)] + [(b"key:%d" % i, 3) for i in range(6)]
        ring = ringFromLines(lines, "fnv1a_64")
        live = ringFromLines([line for line in lines if "dead" not in line], "fnv1a_64")
        liveToAll = [0, 1, 3]
        for key, expected in observed:
            self.assertEqual(liveToAll[live.backendOf(key)], expected, key)
        self.assertEqual(ring.failoverOf(b"\xff\xfe\xfd", lambda i: i != 2), 3)
        for i in range(6):
            self.assertEqual(ring.failoverOf(b"key:%d" % i, lambda i: i != 2), 3)



_RINGS = {}


def ringFor(distribution, n):
    """
    A cached ring of C{n} servers, so property tests don't rebuild them.
    """
    if (distribution, n) not in _RINGS:
        servers = [("10.0.0.%d:6379" % (i + 1), 1) for i in range(n)]
        _RINGS[distribution, n] = makeRing(distribution, servers)
    return _RINGS[distribution, n]


_distributions = st.sampled_from(["rmux", "ketama"])
_sizes = st.integers(min_value=2, max_value=8)


class DistributionPropertyTests(SynchronousTestCase):
    """
    Both distributions, 2 to 8 servers.
    """

    @given(_distributions, _sizes, st.binary(max_size=32))
    def test_backendInRange(self, distribution, n, key):
        ring = ringFor(distribution, n)
        self.assertEqual(ring.backends, n)
        self.assertIn(ring.backendOf(key), range(n))

    @given(_distributions, _sizes, st.binary(max_size=32))
    def test_allUpIsBackendOf(self, distribution, n, key):
        ring = ringFor(distribution, n)
        self.assertEqual(ring.failoverOf(key, lambda i: True), ring.backendOf(key))

    @given(_distributions, _sizes, st.binary(max_size=32), st.sets(st.integers(0, 7)))
    def test_failoverAvoidsDown(self, distribution, n, key, down):
        ring = ringFor(distribution, n)
        asked = []

        def isUp(index):
            asked.append(index)
            return index not in down

        chosen = ring.failoverOf(key, isUp)
        if set(range(n)) <= down:
            self.assertIsNone(chosen)
        else:
            self.assertIn(chosen, range(n))
            self.assertNotIn(chosen, down)
            if ring.backendOf(key) not in down:
                self.assertEqual(chosen, ring.backendOf(key))
        if distribution == "ketama":
            self.assertEqual(len(asked), len(set(asked)))

    def test_sameDownSameBackup(self):
        """
        Two proxies with the same servers down pick the same backup.
        """
        servers = [("10.0.0.%d:6379" % (i + 1), 1) for i in range(5)]
        one, two = KetamaRing(servers), KetamaRing(servers)
        for i in range(200):
            key = b"session:%d" % i
            self.assertEqual(
                one.failoverOf(key, lambda i: i not in (1, 3)),
                two.failoverOf(key, lambda i: i not in (1, 3)),
            )



_MOVE_KEYS = [b"key:%d" % i for i in range(10000)]


def _moved(before, after):
    return [key for key in _MOVE_KEYS if before.backendOf(key) != after.backendOf(key)]


class KeyMovementTests(SynchronousTestCase):
    """
    What adding a server costs.  Measured on C{key:0} to C{key:9999}; the
    exact counts are pinned so the README's numbers stay true.
    """

    names = ["127.0.0.1:%d" % (6379 + i) for i in range(6)]

    def test_ketamaFourToFive(self):
        """
        ketama moves about 1/5 of the keys (21.80% with fnv1a_64), all of them
        to the new server.
        """
        before = KetamaRing([(name, 1) for name in self.names[:4]])
        after = KetamaRing([(name, 1) for name in self.names[:5]])
        moved = _moved(before, after)
        self.assertTrue(0.12 < len(moved) / len(_MOVE_KEYS) < 0.30)
        self.assertEqual(len(moved), 2180)
        self.assertEqual({after.backendOf(key) for key in moved}, {4})

    def test_ketamaFourToFiveMd5(self):
        before = KetamaRing([(name, 1) for name in self.names[:4]], "md5")
        after = KetamaRing([(name, 1) for name in self.names[:5]], "md5")
        self.assertEqual(len(_moved(before, after)), 1586)

    def test_rmuxFourToFive(self):
        """
        rmux's table for 4 and for 5 servers is built from the same prime,
        5: going from 4 to 5 only hands the new server the slots that the
        prime's fifth residue had given to others, 18.08% of the keys.
        """
        moved = _moved(RmuxRing(4), RmuxRing(5))
        self.assertEqual(len(moved), 1808)
        self.assertEqual({RmuxRing(5).backendOf(key) for key in moved}, {4})

    def test_rmuxFiveToSix(self):
        """
        When the prime changes (5 to 6 servers: 5 to 7) rmux's table is a
        different table and most keys move: 84.58%.
        """
        moved = _moved(RmuxRing(5), RmuxRing(6))
        self.assertGreater(len(moved) / len(_MOVE_KEYS), 0.5)
        self.assertEqual(len(moved), 8458)

    def test_ketamaFiveToSix(self):
        before = KetamaRing([(name, 1) for name in self.names[:5]])
        after = KetamaRing([(name, 1) for name in self.names[:6]])
        self.assertEqual(len(_moved(before, after)), 1850)



class WeightTests(SynchronousTestCase):
    """
    Weights skew the share of keys proportionally.
    """

    def test_keyShares(self):
        """
        With weights 1, 2, 3, 4 (and md5, which scatters sequential keys;
        twemproxy's fnv1a_64 keeps keys that differ only in their last bytes
        close together, so 10,000 sequential keys are a lumpy sample for it),
        each server gets its weight's share of the keys within 20%.
        """
        weights = (1, 2, 3, 4)
        ring = KetamaRing([("server%d" % (i + 1), w) for i, w in enumerate(weights)], "md5")
        counts = [0] * 4
        for key in _MOVE_KEYS:
            counts[ring.backendOf(key)] += 1
        for weight, count in zip(weights, counts):
            expected = len(_MOVE_KEYS) * weight / sum(weights)
            self.assertTrue(0.8 < count / expected < 1.2, (weight, count, expected))

    def test_pointShares(self):
        """
        Points are handed out in proportion to the weights.
        """
        for weights in [(1, 2, 3, 4), (1, 1, 1, 5), (3, 1), (2, 1, 1)]:
            ring = KetamaRing([("10.0.0.%d:6379" % (i + 1), w) for i, w in enumerate(weights)])
            counts = [ring.owners.count(i) for i in range(len(weights))]
            unit = 160 * len(weights) / sum(weights)
            self.assertEqual(counts, [weight * unit for weight in weights])

    def test_arcShares(self):
        """
        The continuum's arcs, which any key hash samples, follow the weights,
        within ketama's own scatter: a server with 80 points can be 27% over
        its share (weights 1, 1, 1, 5 here), so the bound is 30%.
        """
        for weights in [(1, 2, 3, 4), (1, 1, 1, 5), (3, 1), (2, 1, 1)]:
            ring = KetamaRing([("10.0.0.%d:6379" % (i + 1), w) for i, w in enumerate(weights)])
            arcs = [0] * len(weights)
            previous = ring.points[-1] - 2**32
            for value, owner in zip(ring.points, ring.owners):
                arcs[owner] += value - previous
                previous = value
            self.assertEqual(sum(arcs), 2**32)
            for weight, arc in zip(weights, arcs):
                share = arc / 2**32
                ratio = share / (weight / sum(weights))
                self.assertTrue(0.7 < ratio < 1.3, (weights, weight, share))



class HashTagTests(SynchronousTestCase):
    def test_examples(self):
        tag = b"{}"
        self.assertEqual(hashTagged(b"user:{1000}:profile", tag), b"1000")
        self.assertEqual(hashTagged(b"{1000}", tag), b"1000")
        self.assertEqual(hashTagged(b"plain", tag), b"plain")
        self.assertEqual(hashTagged(b"a{b", tag), b"a{b")
        self.assertEqual(hashTagged(b"a}b{c}", tag), b"c")
        self.assertEqual(hashTagged(b"{a}{b}", tag), b"a")
        self.assertEqual(hashTagged(b"{{a}}", tag), b"{a")
        self.assertEqual(hashTagged(b"", tag), b"")

    def test_emptyTagHashesWholeKey(self):
        """
        An empty first tag means the whole key, in Redis Cluster and in
        twemproxy alike: a later non-empty tag is not looked for.
        """
        self.assertEqual(hashTagged(b"a{}{b}", b"{}"), b"a{}{b}")
        self.assertEqual(hashTagged(b"{}", b"{}"), b"{}")

    def test_off(self):
        self.assertEqual(hashTagged(b"user:{1000}", None), b"user:{1000}")

    def test_otherTags(self):
        self.assertEqual(hashTagged(b"user:$1000$:x", b"$$"), b"1000")
        self.assertEqual(hashTagged(b"a$$b$", b"$$"), b"a$$b$")
        self.assertEqual(hashTagged(b"k:<7>", b"<>"), b"7")

    def test_badTag(self):
        self.assertRaises(ValueError, hashTagged, b"key", b"{")
        self.assertRaises(ValueError, hashTagged, b"key", b"{}}")

    @given(st.binary(max_size=24) | st.text("ab{}", max_size=12).map(str.encode))
    def test_redisClusterRule(self, key):
        self.assertEqual(hashTagged(key, b"{}"), referenceHashTag(key))



class PrefixRoutesTests(SynchronousTestCase):
    def test_longestWins(self):
        routes = PrefixRoutes([(b"a", 1), (b"ab:", 2), (b"ab:c", 3), (b"session:", 4)], 0)
        self.assertEqual(routes.match(b"ab:cd"), 3)
        self.assertEqual(routes.match(b"ab:x"), 2)
        self.assertEqual(routes.match(b"abc"), 1)
        self.assertEqual(routes.match(b"session:9"), 4)
        self.assertEqual(routes.match(b"user:1"), 0)
        self.assertEqual(routes.match(b""), 0)

    def test_noCatchAll(self):
        routes = PrefixRoutes([(b"a:", "A")])
        self.assertIsNone(routes.match(b"b:1"))
        self.assertEqual(routes.match(b"a:1"), "A")

    def test_orderDoesNotMatter(self):
        one = PrefixRoutes([(b"ab", 2), (b"a", 1)], 0)
        two = PrefixRoutes([(b"a", 1), (b"ab", 2)], 0)
        for key in (b"a", b"ab", b"abc", b"b"):
            self.assertEqual(one.match(key), two.match(key))

    def test_emptyPrefixMatchesAll(self):
        routes = PrefixRoutes([(b"", "any"), (b"x", "x")], "never")
        self.assertEqual(routes.match(b"y"), "any")
        self.assertEqual(routes.match(b"xy"), "x")

    def test_errors(self):
        self.assertRaises(ValueError, PrefixRoutes, [(b"a", 1), (b"a", 2)])
        self.assertRaises(TypeError, PrefixRoutes, [("a", 1)])

    @given(
        st.lists(
            st.tuples(st.binary(min_size=1, max_size=4), st.integers()),
            max_size=8,
            unique_by=lambda route: route[0],
        ),
        st.binary(max_size=8),
    )
    def test_againstBruteForce(self, routes, key):
        matching = [(len(prefix), value) for prefix, value in routes if key.startswith(prefix)]
        expected = max(matching)[1] if matching else "default"
        self.assertEqual(PrefixRoutes(routes, "default").match(key), expected)



class MakeRingTests(SynchronousTestCase):
    servers = [("a:1", 1), ("b:1", 1), ("c:1", 1)]

    def test_rmux(self):
        ring = makeRing("rmux", self.servers)
        self.assertIsInstance(ring, RmuxRing)
        self.assertEqual(ring.backends, 3)
        self.assertEqual(ring.table, slotTable(3))

    def test_ketama(self):
        ring = makeRing("ketama", self.servers, "md5")
        self.assertIsInstance(ring, KetamaRing)
        self.assertEqual(ring.hashName, "md5")
        self.assertEqual(makeRing("ketama", self.servers).hashName, "fnv1a_64")

    def test_unknownDistribution(self):
        error = self.assertRaises(ValueError, makeRing, "modula", self.servers)
        self.assertIn("'modula'", str(error))
        self.assertIn("rmux, ketama", str(error))

    def test_unknownHash(self):
        error = self.assertRaises(ValueError, makeRing, "ketama", self.servers, "sha1")
        self.assertIn("'sha1'", str(error))
        self.assertIn("fnv1a_64", str(error))
        self.assertRaises(ValueError, makeRing, "rmux", self.servers, "fnv1a64")
