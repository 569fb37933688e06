# -*- test-case-name: tests.test_proxy -*-
"""
Turns a parsed command into a backend request.

With one backend every command goes to its pool.  With several, a command is
sent to the server its key hashes to (Go rmux's placement); commands whose
keys span servers are refused until they can be split.
"""

from rmux.hashing import RmuxRing
from rmux.pool import errorReply
from rmux.resp import encodeCommand


class Router:
    """
    @ivar pools: the L{rmux.pool.BackendPool}s, in configuration order
        (which is hashing order).
    """

    def __init__(self, pools, health=None, failover=False):
        self.pools = pools
        self.health = health
        self.failover = failover
        self.ring = RmuxRing(len(pools)) if len(pools) > 1 else None

    def route(self, args, spec, slot, db, protocolVersion):
        """
        Send one command; C{slot.fill} gets its reply.
        """
        if self.ring is None:
            pool = self.pools[0]
        else:
            pool = self.poolFor(args, spec)
            if isinstance(pool, bytes):
                slot.fill(pool)
                return
        self.send(pool, encodeCommand(args), slot, db, protocolVersion)

    @staticmethod
    def send(pool, payload, slot, db, protocolVersion):
        """
        Send on C{pool}, keeping the client's requests to one server on one
        connection while any of them is unanswered.
        """
        affinity = slot.client.affinity
        previous = affinity.get(pool)
        after = None
        if previous is not None and previous[0].data is None:
            after = previous[1]
        affinity[pool] = (slot, pool.send(payload, slot, db, protocolVersion, after))

    def poolFor(self, args, spec):
        """
        The pool that must run C{args}, or an error reply.
        """
        keys = [args[i] for i in spec.keyIndexes(args)]
        if not keys:
            return self.pools[0]
        ring = self.ring
        owners = {ring.backendOf(key) for key in keys}
        if len(owners) > 1:
            return errorReply(
                "rmux: the keys of this %s command live on different servers"
                % (spec.name.upper(),)
            )
        index = owners.pop()
        health = self.health
        if health is not None and not health.isUp(self.pools[index]):
            if not self.failover:
                return errorReply(
                    "rmux: backend %s is down" % (self.pools[index].address,)
                )
            index = ring.failoverOf(
                keys[0], lambda i: health.isUp(self.pools[i])
            )
            if index is None:
                return errorReply("rmux: every backend is down")
        return self.pools[index]
