# -*- test-case-name: tests.test_stats -*-
"""
rmux's counters, and the one snapshot every report is made from.

The hot path only adds to plain integer attributes (L{ListenerStats},
L{PoolStats}) and, once per write batch, to a L{LatencyHistogram}.
Everything derived (clients connected now, requests queued, health state)
is read when a snapshot is taken.  L{listenerSnapshot} turns one listener's
counters into plain data (dicts, lists, numbers and strings) that INFO,
the twemproxy stats port, Prometheus and statsd all format, and that a
worker process can send to its parent; L{combine} adds up the snapshots of
several workers.
"""

from bisect import bisect_left

from rmux.transport import unsentBytes

__all__ = [
    "LATENCY_BOUNDS",
    "LatencyHistogram",
    "ListenerStats",
    "PoolStats",
    "REQUEST_CLASSES",
    "listenerSnapshot",
    "combine",
]

LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
)
"""
Upper bounds (seconds) of the latency buckets, as Prometheus writes them
(C{le}); one more bucket holds everything slower.
"""

REQUEST_CLASSES = ("forward", "local", "stateful", "blocking", "pubsub", "refused", "invalid")
"""
How rmux handled a request: sent to a backend, answered by rmux itself,
a transaction or WATCH, a blocking command, pub/sub, refused by policy,
or rejected before any of these (unknown command, wrong arity, NOAUTH).
"""


class LatencyHistogram:
    """
    Counts of observed latencies per bucket of L{LATENCY_BOUNDS}.
    """

    __slots__ = ("counts", "sum", "count")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds, times=1):
        """
        Record C{times} requests that each took C{seconds}.
        """
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += times
        self.sum += seconds * times
        self.count += times

    def snapshot(self):
        return {"counts": list(self.counts), "sum": self.sum, "count": self.count}


class ListenerStats:
    """
    Counters for one listener.

    @ivar requestsByClass: requests counted by L{REQUEST_CLASSES}.
    """

    __slots__ = (
        "connectionsReceived",
        "commands",
        "responses",
        "bytesIn",
        "bytesOut",
        "refused",
        "protocolErrors",
        "authFailures",
        "rejectedConnections",
        "outputLimitDrops",
        "clientEOF",
        "clientErrors",
        "localTimeouts",
        "fragments",
        "requestsByClass",
    )

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)
        self.requestsByClass = dict.fromkeys(REQUEST_CLASSES, 0)


class PoolStats:
    """
    Counters for one backend's pool, summed over its connections.

    Requests are counted when written, replies when read.  Latency is
    measured per write batch: from the moment a batch is handed to the
    socket until the last reply of that batch has arrived, recorded once
    for each request of the batch.  For a client waiting on one request
    that is its round trip; for a pipeline it errs on the slow side.
    """

    __slots__ = (
        "connects",
        "connectFailures",
        "errors",
        "timeouts",
        "eof",
        "requests",
        "requestBytes",
        "responses",
        "responseBytes",
        "errorReplies",
        "failedRequests",
        "latency",
    )

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)
        self.latency = LatencyHistogram()


def _size(payload):
    # A payload is bytes, or a list of pieces (a big value not copied).
    return len(payload) if type(payload) is bytes else sum(map(len, payload))


def _unwritten(connection):
    """
    The bytes of requests given to C{connection} that the server has not
    taken yet: held behind a state switch, gathered for this loop turn's
    write, or in the transport's buffer.
    """
    size = sum(_size(entry[0]) for entry in connection.held or ())
    size += sum(map(len, connection._out or ()))
    return size + (unsentBytes(connection.transport) or 0)


def _backendSnapshot(pool, check, state):
    st = pool.stats
    connections = list(pool.connections)
    outQueue = sum(len(c.waiting) for c in connections)
    # Requests not yet written: waiting for a connection, or held behind
    # a SELECT/HELLO/AUTH on one (each entry may carry several requests).
    inQueue = sum(entry[4] for entry in pool.waitingForConnection) + sum(
        c.load - len(c.waiting) for c in connections
    )
    # Dedicated connections kept open for the next client are not in use.
    pinnedInUse = pool.pinned - len(pool.idlePinned)
    return {
        "address": str(pool.address),
        "name": pool.address.name or str(pool.address),
        "state": state,
        "ejections": check.ejections if check is not None else 0,
        "ejectedAt": check.ejectedAt if check is not None else 0.0,
        "connections": len(connections),
        "connectionsInUse": sum(1 for c in connections if c.waiting) + pinnedInUse,
        "pinned": pinnedInUse,
        "inQueue": inQueue,
        "inQueueBytes": sum(_size(entry[0]) for entry in pool.waitingForConnection)
        + sum(_unwritten(c) for c in connections),
        "outQueue": outQueue,
        "connects": st.connects,
        "connectFailures": st.connectFailures,
        "errors": st.errors,
        "timeouts": st.timeouts,
        "eof": st.eof,
        "requests": st.requests,
        "requestBytes": st.requestBytes,
        "responses": st.responses,
        "responseBytes": st.responseBytes,
        "errorReplies": st.errorReplies,
        "failedRequests": st.failedRequests,
        "latency": st.latency.snapshot(),
    }


def _byClass(stats):
    """
    Requests by class: forwarded ones, the bulk, are not counted one by one
    on the hot path but are what the other classes leave of the total.
    """
    byClass = dict(stats.requestsByClass)
    byClass["forward"] = stats.commands - sum(
        count for name, count in byClass.items() if name != "forward"
    )
    return byClass


def listenerSnapshot(factory, pools, health=None, workerId=None):
    """
    One listener's counters as plain data.

    @param factory: its L{rmux.proxy.ProxyFactory}.
    @param pools: its L{rmux.pool.BackendPool}s, in configuration order.
    @param health: its L{rmux.health.HealthMonitor}, or L{None}.
    """
    s = factory.stats
    checks = health.checks if health is not None else {}
    listener = factory.listener
    backends = []
    for pool in pools:
        check = checks.get(pool)
        backends.append(_backendSnapshot(pool, check, check.state if check else "unknown"))
    return {
        "listener": listener.name if listener is not None else "",
        "workers": [workerId if workerId is not None else 0],
        "uptime": factory.reactor.seconds() - factory.startedAt,
        "clients": {
            "current": len(factory.clients),
            "total": s.connectionsReceived,
            "rejected": s.rejectedConnections,
            "eof": s.clientEOF,
            "errors": s.clientErrors,
        },
        "requests": s.commands,
        "requestsByClass": _byClass(s),
        "responses": s.responses,
        "bytesIn": s.bytesIn,
        "bytesOut": s.bytesOut,
        "errors": {
            "protocol": s.protocolErrors,
            "auth": s.authFailures,
            "refused": s.refused,
            "outputLimit": s.outputLimitDrops,
        },
        "timeouts": s.localTimeouts,
        "fragments": s.fragments,
        "backends": backends,
    }


def _add(total, more):
    """
    Add C{more} into C{total}, both snapshots of the same shape: numbers
    are summed, lists of numbers element by element, and backends matched
    by address; text is kept.
    """
    for key, value in more.items():
        if key not in total:
            total[key] = value
        elif key == "workers":
            total[key] = total[key] + value
        elif key == "backends":
            byAddress = {b["address"]: b for b in total[key]}
            for backend in value:
                mine = byAddress.get(backend["address"])
                if mine is None:
                    total[key].append(backend)
                else:
                    _add(mine, backend)
        elif key == "state":
            # A backend is as up as the most hopeful worker has seen it.
            order = ("up", "unknown", "down")
            total[key] = min(total[key], value, key=order.index)
        elif key in ("uptime", "ejectedAt"):
            total[key] = max(total[key], value)
        elif isinstance(value, dict):
            _add(total[key], value)
        elif isinstance(value, list):
            total[key] = [a + b for a, b in zip(total[key], value)]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total[key] + value


def combine(snapshots):
    """
    Add up snapshots of the same listener taken in different workers.

    @param snapshots: L{listenerSnapshot} results; they are not changed.
    @return: one snapshot whose C{workers} lists every worker.
    """
    import copy

    snapshots = list(snapshots)
    total = copy.deepcopy(snapshots[0])
    for more in snapshots[1:]:
        _add(total, copy.deepcopy(more))
    return total
