# -*- test-case-name: tests.test_hashing -*-
"""
Key placement.

Two distributions are offered, so that a fleet can switch proxies without
moving a key:

  - L{RmuxRing} is Go rmux's: it hashes with multiply-by-33 starting from 0
    (32-bit wrap-around), masks the hash into a slot table built from the
    smallest prime >= the number of backends, and, with failover on, walks
    to the next slot whose backend is up.
  - L{KetamaRing} is twemproxy's (nutcracker's) C{distribution: ketama}, with
    its key hashes (L{KEY_HASHES}; C{fnv1a_64} by default), so a pool moved
    over from twemproxy keeps its placement.

L{hashTagged} narrows a key to its hash tag, L{PrefixRoutes} picks a pool
group by key prefix, and L{makeRing} builds a distribution by name.

Everything here is pure: the router asks, these functions answer.  Rings are
built once, from configuration, and never change; health is asked for, not
stored.
"""

import hashlib
import math
import struct
import zlib
from bisect import bisect_left

__all__ = [
    "MAX_BACKENDS", "rmuxHash", "slotTable", "RmuxRing",
    "KEY_HASHES", "fnv1a_64", "fnv1_64", "fnv1a_32", "fnv1_32", "md5",
    "crc32", "crc32a", "murmur",
    "KetamaRing", "ketamaPointCount", "twemproxyServerName",
    "hashTagged", "PrefixRoutes", "DISTRIBUTIONS", "makeRing",
]


_PRIMES = (
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67,
    71, 73, 79, 83, 89, 97, 101,
)

MAX_BACKENDS = _PRIMES[-1]


def rmuxHash(key):
    """
    Go rmux's hash: C{h = h * 33 + byte}, from 0, modulo 2**32.

    @type key: L{bytes}
    @rtype: L{int}
    """
    h = 0
    for byte in key:
        h = (h * 33 + byte) & 0xFFFFFFFF
    return h


def slotTable(backends):
    """
    Build Go rmux's slot table for C{backends} servers.

    @param backends: how many backends, 1 to 101.
    @return: a tuple whose length is a power of two; entry C{i} is the index
        of the backend that owns slot C{i}.
    @raise ValueError: for more backends than the prime list covers.
    """
    if not 1 <= backends <= MAX_BACKENDS:
        raise ValueError("rmux hashing supports 1 to %d backends" % (MAX_BACKENDS,))
    p = next(prime for prime in _PRIMES if prime >= backends)
    used = p * (p - 1)
    size = 2
    while size < used:
        size *= 2
    table = []
    last = 0
    for m in range(1, p):
        for v in range(p):
            target = (m * v) % p
            if target < backends:
                last = target
            table.append(last)
    for i in range(size - used):
        table.append(table[i])
    return tuple(table)


class RmuxRing:
    """
    Go rmux's placement for a fixed, ordered list of backends.
    """

    def __init__(self, backends):
        self.backends = backends
        self.table = slotTable(backends)
        self.mask = len(self.table) - 1

    def slotOf(self, key):
        return rmuxHash(key) & self.mask

    def backendOf(self, key):
        """
        The index of the backend that owns C{key}, health aside.
        """
        return self.table[rmuxHash(key) & self.mask]

    def failoverOf(self, key, isUp):
        """
        The backend C{key} goes to when its own may be down: the owner of the
        first slot, from the key's own on (wrapping), whose backend is up.

        @param isUp: a callable from backend index to L{bool}.
        @return: a backend index, or L{None} if every backend is down.
        """
        table = self.table
        slot = rmuxHash(key) & self.mask
        for step in range(len(table)):
            index = table[(slot + step) & self.mask]
            if isUp(index):
                return index
        return None



# twemproxy's key hashes (src/hashkit/ in twitter/twemproxy).
#
# twemproxy reads key bytes through a plain C "char", which is signed on
# x86-64 (the platform its packages are built for and the one our vectors
# come from), and widens it to 32 bits: a byte of 0x80 or more enters the
# FNV hashes as 0xFFFFFF80 and up.  _WIDE maps each byte to that value.
_WIDE = tuple(byte | 0xFFFFFF00 if byte & 0x80 else byte for byte in range(256))

_MASK32 = 0xFFFFFFFF
_FNV32_INIT = 0x811C9DC5
_FNV32_PRIME = 0x01000193
# twemproxy's "64-bit" FNVs keep only the low 32 bits of the 64-bit offset
# basis and prime (fnv1a_64 even declares its state as 32 bits), so they are
# 32-bit FNVs with other constants.
_FNV64_INIT_LOW = 0xCBF29CE484222325 & _MASK32
_FNV64_PRIME_LOW = 0x100000001B3 & _MASK32


def fnv1a_64(key):
    """
    twemproxy's C{fnv1a_64}, its default key hash.

    Despite the name this is a 32-bit hash: xor the byte in, then multiply,
    with the low halves of the 64-bit FNV constants.  For ASCII keys that
    equals the low 32 bits of the real FNV-1a 64; bytes of 0x80 and more
    enter sign-extended (a C C{char}), which the real one does not do.
    twemproxy kept this for libmemcached compatibility (a fix, twemproxy
    pull request 313, was declined), so it must not be "fixed" here either,
    or keys would move.

    @type key: L{bytes}
    @rtype: L{int}
    """
    h = _FNV64_INIT_LOW
    if key.isascii():
        for byte in key:
            h = ((h ^ byte) * _FNV64_PRIME_LOW) & _MASK32
    else:
        wide = _WIDE
        for byte in key:
            h = ((h ^ wide[byte]) * _FNV64_PRIME_LOW) & _MASK32
    return h


def fnv1_64(key):
    """
    twemproxy's C{fnv1_64}: multiply, then xor, on 64 bits, keeping the low
    32.  The low 32 bits of the product depend only on the low 32 bits of
    its factors, so 32-bit arithmetic gives the same answer.
    """
    h = _FNV64_INIT_LOW
    wide = _WIDE
    for byte in key:
        h = ((h * _FNV64_PRIME_LOW) & _MASK32) ^ wide[byte]
    return h


def fnv1a_32(key):
    """
    twemproxy's C{fnv1a_32}: standard FNV-1a 32 for ASCII keys (other bytes
    are widened as signed chars).
    """
    h = _FNV32_INIT
    wide = _WIDE
    for byte in key:
        h = ((h ^ wide[byte]) * _FNV32_PRIME) & _MASK32
    return h


def fnv1_32(key):
    """
    twemproxy's C{fnv1_32}: standard FNV-1 32 for ASCII keys (other bytes
    are widened as signed chars).
    """
    h = _FNV32_INIT
    wide = _WIDE
    for byte in key:
        h = ((h * _FNV32_PRIME) & _MASK32) ^ wide[byte]
    return h


def _md5(data):
    # Not a security use; saying so keeps FIPS-mode OpenSSL from refusing.
    return hashlib.md5(data, usedforsecurity=False).digest()


def md5(key):
    """
    twemproxy's C{md5} key hash: the first four bytes of the MD5 digest, read
    little-endian.
    """
    return int.from_bytes(_md5(key)[:4], "little")


def crc32a(key):
    """
    twemproxy's C{crc32a}: the standard CRC-32 (as zlib's).
    """
    return zlib.crc32(key)


def crc32(key):
    """
    twemproxy's C{crc32}, libmemcached's: bits 16 to 30 of the standard CRC-32,
    so only 32768 distinct values.
    """
    return (zlib.crc32(key) >> 16) & 0x7FFF


_MURMUR_M = 0x5BD1E995


def murmur(key):
    """
    twemproxy's C{murmur}: MurmurHash2 (32-bit, little-endian words) seeded
    with C{0xdeadbeef * len(key)}.
    """
    length = len(key)
    m = _MURMUR_M
    h = ((0xDEADBEEF * length) ^ length) & _MASK32
    whole = length - length % 4
    for (k,) in struct.iter_unpack("<I", key[:whole]):
        k = (k * m) & _MASK32
        k ^= k >> 24
        k = (k * m) & _MASK32
        h = ((h * m) & _MASK32) ^ k
    rest = length - whole
    if rest:
        if rest == 3:
            h ^= key[whole + 2] << 16
        if rest >= 2:
            h ^= key[whole + 1] << 8
        h = ((h ^ key[whole]) * m) & _MASK32
    h ^= h >> 13
    h = (h * m) & _MASK32
    h ^= h >> 15
    return h


KEY_HASHES = {
    "fnv1a_64": fnv1a_64,
    "fnv1_64": fnv1_64,
    "fnv1a_32": fnv1a_32,
    "fnv1_32": fnv1_32,
    "md5": md5,
    "crc32": crc32,
    "crc32a": crc32a,
    "murmur": murmur,
}
"""
twemproxy's key hashes that rmux reproduces, by their twemproxy C{hash:}
names.  (twemproxy also has crc16, hsieh, jenkins and one_at_a_time.)
"""



# twemproxy's ketama (src/hashkit/nc_ketama.c).
_POINTS_PER_SERVER = 160
_POINTS_PER_HASH = 4
# twemproxy formats each point's string into an 86-byte buffer and then
# hashes as many bytes as the untruncated string would have had, reading
# past its buffer for longer strings: no placement can be promised there.
_MAX_POINT_STRING = 85


def _float32(number):
    """
    Round C{number} to the nearest IEEE single, as a C C{float} would hold it.
    """
    return struct.unpack("f", struct.pack("f", number))[0]


def ketamaPointCount(weight, totalWeight, servers):
    """
    How many points twemproxy gives a server on the continuum.

    It is 160 times the server's share of the weight times the number of
    servers, rounded down to a multiple of 4, but computed the way
    twemproxy computes it, in single-precision C C{float}s, whose rounding
    shows: with 25 servers of equal weight each gets 156 points, not 160.
    Every step is rounded to single precision here in the same order.

    @param weight: the server's weight.
    @param totalWeight: the sum of the weights of all servers on the ring.
    @param servers: how many servers are on the ring.
    @rtype: L{int}
    """
    share = _float32(_float32(weight) / _float32(totalWeight))
    points = _float32(share * _POINTS_PER_SERVER)
    points = _float32(points / _POINTS_PER_HASH)
    points = _float32(points * _float32(servers))
    # The tiny addend is a C double: the sum is rounded back to a float.
    points = _float32(points + 0.0000000001)
    return int(math.floor(points)) * _POINTS_PER_HASH


def twemproxyServerName(address, name=None):
    """
    The string twemproxy's ketama hashes for a server, given how the server
    is written in twemproxy's C{servers:} list.

    twemproxy hashes the node name when the line has one
    (C{"127.0.0.1:6379:1 server1"}), else the address as written, with the
    port but without the weight (C{"127.0.0.1:6379"}), except that port 11211
    is left out for libmemcached's sake (C{"127.0.0.1"}), and a unix socket
    path keeps the colon that preceded its weight (C{"/tmp/r.sock:"}).

    @param address: C{"host:port"} or a unix socket path starting with
        C{/}, exactly as in the twemproxy configuration (no weight; a host
        name is hashed as written, never resolved).
    @param name: the node name, if the server line has one.
    @rtype: L{str}
    """
    if name:
        return name
    if address.startswith("/"):
        return address + ":"
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected host:port or /path, got %r" % (address,))
    if int(port) == 11211:
        return host
    return address


class KetamaRing:
    """
    twemproxy's ketama consistent hashing over a fixed, ordered list of
    servers.

    Each server gets points on a 32-bit circle (the continuum), about 160 per
    server scaled by its share of the total weight: for point group C{i},
    MD5 of C{"<name>-<i>"} yields four points, its four little-endian 32-bit
    words.  A key belongs to the server of the first point at or after the
    key's hash, wrapping to the first point.  Because a server's points
    depend only on its name and its share, adding a server moves only the
    keys that land on the new server's points, about 1/N of them.

    @ivar backends: how many servers.
    @ivar names: the server names, as bytes, in order.
    @ivar weights: the server weights, in order.
    @ivar hashName: the key hash's name in L{KEY_HASHES}.
    @ivar points: the continuum's point values, sorted.
    @ivar owners: C{owners[i]} is the index of the server that owns
        C{points[i]}.
    """

    def __init__(self, servers, hashName="fnv1a_64"):
        """
        @param servers: a sequence of C{(name, weight)} in hashing order;
            C{name} (L{str} or L{bytes}) is what twemproxy hashes for the
            server (see L{twemproxyServerName}), C{weight} a positive L{int}.
        @param hashName: a key hash from L{KEY_HASHES}.
        @raise ValueError: for no servers, a weight that is not a positive
            integer, a name too long for twemproxy, or an unknown hash.
        """
        if hashName not in KEY_HASHES:
            raise ValueError(
                "unknown hash %r; expected one of: %s"
                % (hashName, ", ".join(sorted(KEY_HASHES)))
            )
        servers = list(servers)
        if not servers:
            raise ValueError("ketama needs at least one server")
        names = []
        weights = []
        for name, weight in servers:
            if isinstance(name, str):
                name = name.encode("utf-8")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(
                    "server %r: weight must be a positive integer, got %r"
                    % (name, weight)
                )
            names.append(name)
            weights.append(weight)
        self.backends = len(names)
        self.names = tuple(names)
        self.weights = tuple(weights)
        self.hashName = hashName
        self.keyHash = KEY_HASHES[hashName]

        totalWeight = sum(weights)
        continuum = []
        for index, (name, weight) in enumerate(zip(names, weights)):
            count = ketamaPointCount(weight, totalWeight, self.backends)
            for group in range(count // _POINTS_PER_HASH):
                text = b"%s-%d" % (name, group)
                if len(text) > _MAX_POINT_STRING:
                    raise ValueError(
                        "server name %r is too long for twemproxy's ketama "
                        "(at most %d bytes with its point suffix)"
                        % (name, _MAX_POINT_STRING)
                    )
                for value in struct.unpack("<4I", _md5(text)):
                    continuum.append((value, index))
        # twemproxy sorts with qsort on the value alone.  Python's sort is
        # stable, so points of equal value stay in server order, as with the
        # merge sort behind glibc 2.36's qsort (Debian bookworm); another
        # libc may order such ties differently.  Ties are rare: about one
        # pool of four servers in 20,000 has one.
        continuum.sort(key=lambda point: point[0])
        self.points = tuple(value for value, index in continuum)
        self.owners = tuple(index for value, index in continuum)

    def hashOf(self, key):
        """
        The key's position on the continuum: its key hash, except that
        twemproxy gives an empty key, and every key in a one-server pool,
        hash 0.
        """
        if not key or self.backends == 1:
            return 0
        return self.keyHash(key)

    def pointOf(self, key):
        """
        The index in L{points} of the key's point: the first point at or
        after the key's hash, wrapping to 0 past the last.
        """
        position = bisect_left(self.points, self.hashOf(key))
        if position == len(self.points):
            return 0
        return position

    def backendOf(self, key):
        """
        The index of the server that owns C{key}, health aside.
        """
        return self.owners[self.pointOf(key)]

    def failoverOf(self, key, isUp):
        """
        The server C{key} goes to when its own may be down: the owner of the
        first point, from the key's own on (wrapping), whose server is up.

        Every proxy that sees the same servers down picks the same backup,
        and a key goes home as soon as its server is back.  With equal
        weights this is also where twemproxy's C{auto_eject_hosts} sends the
        key, since rebuilding its continuum without the ejected servers
        leaves the other servers' points where they were (the point counts
        stay 160, bar float rounding at some server counts such as 25).
        With unequal weights twemproxy's rebuild re-shares the points and
        can differ.

        @param isUp: a callable from server index to L{bool}; it is asked at
            most once per server.
        @return: a server index, or L{None} if every server is down.
        """
        owners = self.owners
        start = self.pointOf(key)
        index = owners[start]
        if isUp(index):
            return index
        down = {index}
        count = len(owners)
        backends = self.backends
        for step in range(1, count):
            index = owners[(start + step) % count]
            if index in down:
                continue
            if isUp(index):
                return index
            down.add(index)
            if len(down) == backends:
                return None
        return None



def hashTagged(key, tag):
    """
    The part of C{key} that is hashed, given a hash tag.

    With a two-byte C{tag} such as C{b"{}"}, that is the bytes between the
    first opening byte and the first closing byte after it, when there are
    any; otherwise the whole key.  This is Redis Cluster's rule, and
    twemproxy's C{hash_tag} rule too (src/nc_server.c, C{server_pool_idx}):
    both hash the whole key when the first tag is empty (C{b"a{}{b}"} hashes
    as C{b"a{}{b}"}, not C{b"b"}), or when no closing byte follows.

    Called once per key, so it does no more than two C{bytes.find}.

    @param key: the key, L{bytes}.
    @param tag: a two-byte L{bytes} (its bytes may be equal, e.g. C{b"$$"}),
        or L{None} for no hash tags.
    @raise ValueError: if C{tag} is not two bytes long.
    @rtype: L{bytes}
    """
    if tag is None:
        return key
    opening, closing = tag
    start = key.find(opening)
    if start < 0:
        return key
    end = key.find(closing, start + 1)
    if end <= start + 1:
        return key
    return key[start + 1:end]



class PrefixRoutes:
    """
    Routes keys by their longest matching prefix, as Envoy's C{prefix_routes}
    do.

    Routes are kept in one dict keyed by prefix, and the distinct prefix
    lengths in descending order: a lookup slices the key at each length,
    longest first, until a slice is a known prefix.  For a handful of
    prefixes that is a few slices and dict probes per key.

    @ivar catchAll: the value for keys no prefix matches.
    """

    def __init__(self, routes, catchAll=None):
        """
        @param routes: C{(prefix, value)} pairs, C{prefix} being L{bytes}.
        @param catchAll: the value for keys no prefix matches.
        @raise ValueError: for a prefix given twice.
        @raise TypeError: for a prefix that is not L{bytes}.
        """
        table = {}
        for prefix, value in routes:
            if not isinstance(prefix, bytes):
                raise TypeError("route prefix must be bytes, got %r" % (prefix,))
            if prefix in table:
                raise ValueError("route prefix %r is given twice" % (prefix,))
            table[prefix] = value
        self._routes = table
        self._lengths = tuple(sorted({len(prefix) for prefix in table}, reverse=True))
        self.catchAll = catchAll

    def match(self, key):
        """
        The value of the longest prefix of C{key} that has a route, or the
        catch-all (L{None} if there is none).
        """
        routes = self._routes
        size = len(key)
        for length in self._lengths:
            if length <= size:
                value = routes.get(key[:length], _MISSING)
                if value is not _MISSING:
                    return value
        return self.catchAll


_MISSING = object()



DISTRIBUTIONS = ("rmux", "ketama")


def makeRing(distribution, servers, hashName="fnv1a_64"):
    """
    Build the distribution named in the configuration.

    @param distribution: C{"rmux"} (Go rmux's slot table; the default) or
        C{"ketama"} (twemproxy's).
    @param servers: C{(name, weight)} pairs in hashing order (see
        L{KetamaRing}); C{"rmux"} uses only their number.
    @param hashName: the key hash for C{"ketama"}, from L{KEY_HASHES}.  It is
        checked for every distribution, so a typo is caught, but C{"rmux"}
        always uses its own hash.
    @raise ValueError: for an unknown distribution or hash name, or servers
        the distribution cannot place.
    """
    if hashName not in KEY_HASHES:
        raise ValueError(
            "unknown hash %r; expected one of: %s"
            % (hashName, ", ".join(sorted(KEY_HASHES)))
        )
    if distribution == "rmux":
        return RmuxRing(len(servers))
    if distribution == "ketama":
        return KetamaRing(servers, hashName)
    raise ValueError(
        "unknown distribution %r; expected one of: %s"
        % (distribution, ", ".join(DISTRIBUTIONS))
    )
