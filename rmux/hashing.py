# -*- test-case-name: tests.test_hashing -*-
"""
Key placement compatible with Go rmux, so a fleet can switch proxies
without moving a key.

Go rmux hashes with multiply-by-33 starting from 0 (32-bit wrap-around),
masks the hash into a slot table built from the smallest prime >= the number
of backends, and, with failover on, walks to the next slot whose backend is
up.  Everything here is pure: the router asks, these functions answer.
"""

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
