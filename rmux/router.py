# -*- test-case-name: tests.test_router,tests.test_multiplex -*-
"""
Turns a parsed command into backend requests, and their replies into one.

With one backend every command goes to its pool.  With several, each key is
placed by its listener's routes (longest prefix), hash tag, distribution and
health: a command whose keys all live on one server goes there; MGET, MSET,
DEL, UNLINK, EXISTS and TOUCH are split per server and merged; keyless
commands go to any one server, to every server (merged), or are refused, as
the command table says.
"""

from rmux import commands as C
from rmux.hashing import PrefixRoutes, hashTagged
from rmux.pool import errorReply
from rmux.resp import ReplyFramer, encodeRequest

#: Commands whose first argument is a channel, placed like a key so that
#: every rmux host publishes a channel on the same server.
_CHANNEL_COMMANDS = frozenset(["publish", "spublish"])

CROSSSLOT = (
    b"-CROSSSLOT Keys in request don't hash to the same server behind rmux\r\n"
)


class PoolGroup:
    """
    The servers one route places keys over.

    @ivar pools: one L{rmux.pool.BackendPool} per configured backend, in
        hashing order (a pool may appear twice if its server is listed
        twice, as Go rmux allows).
    @ivar ring: the distribution (L{rmux.hashing.RmuxRing} or
        L{rmux.hashing.KetamaRing}), or L{None} with a single backend.
    """

    def __init__(self, pools, ring=None, hashTag=None, failover=False):
        self.pools = pools
        self.ring = ring if len(pools) > 1 else None
        self.hashTag = hashTag
        self.failover = failover


class Router:
    """
    Routes one listener's commands.

    @ivar pools: every distinct pool of the listener, for INFO and health.
    """

    def __init__(self, default, routes=(), health=None, allowFlush=False):
        """
        @param default: the catch-all L{PoolGroup}.
        @param routes: C{(prefix, group)} pairs: keys starting with
            C{prefix} (bytes; the longest match wins) go to that
            L{PoolGroup} instead.
        @param health: the L{rmux.health.HealthMonitor}, or L{None}.
        """
        self.default = default
        self.routes = PrefixRoutes(list(routes), default) if routes else None
        self.health = health
        self.allowFlush = allowFlush
        groups = [default] + [group for prefix, group in routes]
        seen = []
        for group in groups:
            for pool in group.pools:
                if pool not in seen:
                    seen.append(pool)
        self.pools = seen
        self.single = default.pools[0] if len(seen) == 1 else None

    def adopt(self, other):
        """
        Take C{other}'s placement (groups, routes, pools, settings), all in
        one step: a live reload builds a whole new L{Router}, then this one,
        which every client and the pub/sub hub hold on to, becomes it.
        Nothing runs between the assignments, so no request sees half of
        the new placement; requests already sent stay where they went.

        Every attribute is copied, so that one added to L{Router} later
        cannot be forgotten here.
        """
        vars(self).update(vars(other))

    # Sending, with per-client connection affinity

    @staticmethod
    def send(pool, args, waiter, client, db, protocolVersion):
        """
        Send on C{pool}, keeping one client's requests to one server on one
        connection while any of them is unanswered: Redis runs each
        connection in order but interleaves connections, so a GET sent on
        another connection could overtake its own SET.
        """
        Router.sendPayload(pool, encodeRequest(args), waiter, client, db, protocolVersion)

    @staticmethod
    def sendPayload(pool, payload, waiter, client, db, protocolVersion, count=1):
        """
        Like L{send}, for C{count} requests already encoded in C{payload}
        (a client's pipeline passed through whole).
        """
        affinity = client.affinity
        previous = affinity.get(pool)
        after = None
        if previous is not None and previous[0].data is None:
            after = previous[1]
        connection = pool.send(payload, waiter, db, protocolVersion, after, count)
        affinity[pool] = (waiter, connection)

    def route(self, args, spec, slot, db, protocolVersion, payload=None):
        """
        Send one command; C{slot.fill} gets its reply.

        @param payload: C{args} as the client encoded them, when that is
            canonical: sent as they are to the one server the command goes
            to, instead of encoding C{args} again.
        """
        client = slot.client
        if self.single is not None:
            if payload is None:
                payload = encodeRequest(args)
            self.sendPayload(self.single, payload, slot, client, db, protocolVersion)
            return
        if self.health is not None and self.health.starting:
            pending = self.health.whenStarted()
            if pending is not None:
                pending.addCallback(
                    lambda _: self.route(args, spec, slot, db, protocolVersion, payload)
                )
                return
        routing = spec.routing
        if routing == C.SPLIT:
            indexes = spec.keyIndexes(args)
            if len(indexes) > 1:
                self._split(args, spec, slot, indexes, db, protocolVersion)
                return
        if routing in (C.KEYED, C.SPLIT) or spec.name in _CHANNEL_COMMANDS or (
            routing == C.KEYLESS_ANY
        ):
            pool = None
            if routing != C.KEYLESS_ANY:
                pool = self.poolForCommand(args, spec)
            if pool is None:
                pool = self._anyPool()
            if isinstance(pool, bytes):
                slot.fill(pool)
            else:
                if payload is None:
                    payload = encodeRequest(args)
                self.sendPayload(pool, payload, slot, client, db, protocolVersion)
        elif routing == C.KEYLESS_ALL:
            if spec.requiresOption == C.OPTION_ALLOW_FLUSH and not self.allowFlush:
                slot.fill(
                    errorReply(
                        "%s is disabled in rmux: it would empty every server; "
                        "enable it with allowFlush" % (spec.name.upper(),)
                    )
                )
                return
            self._all(args, spec, slot, db, protocolVersion)
        else:
            slot.fill(
                errorReply(
                    "%s cannot run through rmux with several servers: %s"
                    % (spec.name.upper().replace("|", " "), spec.reason or "unsupported")
                )
            )

    # Placement

    def poolForKey(self, key):
        """
        The pool that must serve C{key} now.

        @return: a pool, or an error reply (C{bytes}) when the key's server
            is down and failover cannot help.
        """
        group = self.default
        if self.routes is not None:
            group = self.routes.match(key)
            if group is None:
                return errorReply("rmux: no route for this key")
        ring = group.ring
        if ring is None:
            return group.pools[0]
        hashed = key if group.hashTag is None else hashTagged(key, group.hashTag)
        index = ring.backendOf(hashed)
        pools = group.pools
        health = self.health
        if health is None or health.isUp(pools[index]):
            return pools[index]
        if not group.failover:
            return errorReply("rmux: backend %s is down" % (pools[index].address,))
        index = ring.failoverOf(hashed, lambda i: health.isUp(pools[i]))
        if index is None:
            return errorReply("rmux: every backend is down")
        return pools[index]

    def poolForCommand(self, args, spec):
        """
        The one server that must run C{args} when it cannot be split: in a
        transaction, or as a blocking command on a dedicated connection.

        @return: a pool; L{None} when any server will do (no keys); or an
            error reply (C{bytes}).
        """
        if self.single is not None:
            return self.single
        if spec.name in _CHANNEL_COMMANDS:
            keys = [args[1]]
        elif spec.routing in (C.KEYED, C.SPLIT):
            keys = [args[i] for i in spec.keyIndexes(args)]
        elif spec.routing == C.KEYLESS_ANY:
            return None
        else:
            return errorReply(
                "%s cannot run on a single server's connection through rmux "
                "with several servers" % (spec.name.upper().replace("|", " "),)
            )
        return self._poolForKeys(keys)

    def _poolForKeys(self, keys):
        if not keys:
            return None
        pool = self.poolForKey(keys[0])
        for key in keys[1:]:
            if isinstance(pool, bytes):
                break
            other = self.poolForKey(key)
            if other is not pool:
                pool = other if isinstance(other, bytes) else CROSSSLOT
        return pool

    def anyPool(self):
        """
        A live server of the catch-all group, or an error reply.
        """
        return self._anyPool()

    def _anyPool(self):
        health = self.health
        for pool in self.default.pools:
            if health is None or health.isUp(pool):
                return pool
        return errorReply("rmux: every backend is down")

    def _split(self, args, spec, slot, indexes, db, protocolVersion):
        """
        Split a multi-key command per server, keeping each key's arguments
        (MSET's value) with it.
        """
        units = {}
        order = []
        bounds = indexes[1:] + [len(args)]
        for position, (start, end) in enumerate(zip(indexes, bounds)):
            pool = self.poolForKey(args[start])
            if isinstance(pool, bytes):
                slot.fill(pool)
                return
            if pool not in units:
                units[pool] = []
                order.append(pool)
            units[pool].append((position, args[start:end]))
        if len(order) == 1:
            self.send(order[0], args, slot, slot.client, db, protocolVersion)
            return
        head = args[: indexes[0]]
        fanOut = FanOut(slot, spec.merge, len(order), len(indexes))
        _countFragments(slot, len(order))
        for part, pool in enumerate(order):
            pieces = units[pool]
            partArgs = list(head)
            for position, unit in pieces:
                partArgs.extend(unit)
            waiter = fanOut.part(part, [position for position, unit in pieces])
            self.send(pool, partArgs, waiter, slot.client, db, protocolVersion)

    def _all(self, args, spec, slot, db, protocolVersion):
        pools = self.pools
        if len(pools) == 1:
            self.send(pools[0], args, slot, slot.client, db, protocolVersion)
            return
        fanOut = FanOut(slot, spec.merge, len(pools))
        _countFragments(slot, len(pools))
        for part, pool in enumerate(pools):
            self.send(pool, args, fanOut.part(part), slot.client, db, protocolVersion)


class _Part:
    """
    The waiter for one server's share of a fanned-out command.
    """

    __slots__ = ("fanOut", "index", "positions", "data")

    def __init__(self, fanOut, index, positions):
        self.fanOut = fanOut
        self.index = index
        self.positions = positions
        self.data = None

    def fill(self, reply):
        self.data = reply
        self.fanOut.partFilled()


def _countFragments(slot, count):
    """
    Count the requests one client request was split into (twemproxy's
    C{fragments}).
    """
    stats = getattr(getattr(slot.client, "factory", None), "stats", None)
    if stats is not None:
        stats.fragments += count


class FanOut:
    """
    One client reply made from several servers' replies, merged when the
    last arrives.
    """

    def __init__(self, slot, merge, parts, width=0):
        self.slot = slot
        self.merge = merge
        self.parts = []
        self.remaining = parts
        self.width = width

    def part(self, index, positions=()):
        waiter = _Part(self, index, positions)
        self.parts.append(waiter)
        return waiter

    def partFilled(self):
        self.remaining -= 1
        if self.remaining == 0:
            self.slot.fill(merge(self.merge, self.parts, self.width))


def _elements(reply):
    """
    The raw elements of an array (or set/map) reply.
    """
    header = reply.index(b"\r\n") + 2
    if reply[1:header - 2] in (b"-1", b"?"):
        return []
    return ReplyFramer().feed(reply[header:])


def _isError(reply):
    return reply[:1] in (b"-", b"!")


def _isNil(reply):
    return reply in (b"$-1\r\n", b"*-1\r\n", b"_\r\n")


def merge(kind, parts, width=0):
    """
    Merge the replies of C{parts} (L{_Part}s, in sending order) into the
    reply one server holding all the data would have given.

    Any error wins, except where one success is enough (C{one-ok},
    C{any-non-nil}).

    @return: the merged reply, as bytes.
    """
    replies = [part.data for part in parts]
    if kind == C.MERGE_ONE_OK:
        for reply in replies:
            if not _isError(reply):
                return reply
        return replies[0]
    if kind == C.MERGE_ANY_NON_NIL:
        errors = [r for r in replies if _isError(r)]
        for reply in replies:
            if not _isError(reply) and not _isNil(reply):
                return reply
        return errors[0] if errors else replies[0]
    for reply in replies:
        if _isError(reply):
            return reply
    if kind == C.MERGE_SUM:
        return b":%d\r\n" % sum(int(r[1:-2]) for r in replies)
    if kind == C.MERGE_MIN:
        return b":%d\r\n" % min(int(r[1:-2]) for r in replies)
    if kind == C.MERGE_ALL_OK:
        return replies[0]
    if kind == C.MERGE_SAME:
        if all(r == replies[0] for r in replies):
            return replies[0]
        return errorReply("rmux: the servers gave different replies")
    if kind == C.MERGE_IN_ORDER:
        elements = [None] * width
        for part in parts:
            for position, element in zip(part.positions, _elements(part.data)):
                elements[position] = element
        return b"*%d\r\n" % width + b"".join(elements)
    if kind == C.MERGE_CONCAT or kind == C.MERGE_UNION:
        elements = []
        for reply in replies:
            elements.extend(_elements(reply))
        if kind == C.MERGE_UNION:
            elements = list(dict.fromkeys(elements))
        return replies[0][:1] + b"%d\r\n" % len(elements) + b"".join(elements)
    if kind == C.MERGE_AND:
        columns = zip(*[_elements(r) for r in replies])
        elements = [b":0\r\n" if b":0\r\n" in column else b":1\r\n" for column in columns]
        return b"*%d\r\n" % len(elements) + b"".join(elements)
    if kind == C.MERGE_PAIRS_SUM:
        first = _elements(replies[0])
        counts = [0] * (len(first) // 2)
        for reply in replies:
            elements = _elements(reply)
            for i in range(len(counts)):
                counts[i] += int(elements[2 * i + 1][1:-2])
        out = []
        for i, count in enumerate(counts):
            out.append(first[2 * i])
            out.append(b":%d\r\n" % count)
        return b"*%d\r\n" % len(out) + b"".join(out)
    return errorReply("rmux: cannot merge replies (%s)" % (kind,))
