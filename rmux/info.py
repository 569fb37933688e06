# -*- test-case-name: tests.test_info -*-
"""
INFO through rmux: the servers' own INFO, added up when there are several,
with rmux's sections after it.

A client asking INFO of rmux wants what it would ask of Redis: the
server's version, memory, keyspace, clients, so that redis-py's test
fixtures, C{redis-cli --stat} and dashboards keep working.  So INFO goes
to every live server, and their texts are merged section by section as
one server holding all the data would report them (L{mergeInfo}): counts
and sizes are summed, keyspace lines added up per db, command statistics
added up per command, the server's identity taken from the first.  Then
come rmux's own sections, made from the same snapshot of its counters as
the stats port, Prometheus and statsd (L{rmux.stats.listenerSnapshot}):

  - C{# Rmux}: rmux's version, process, listener and its own counters,
    every name prefixed C{rmux_} so that a client that reads INFO into one
    flat dictionary (redis-py does) still sees the server's
    C{connected_clients};
  - C{# Backends}: one line per backend server with its state and its
    pool's counters.
  - C{# Topology}: where the placement comes from (the configured
    servers, a Redis Cluster, a Sentinel group), with the nodes rmux
    learned and its counts of redirections, failovers and map reads.

C{INFO rmux}, C{INFO backends} or C{INFO topology} asks rmux alone.
"""

import os
import sys

import twisted
from zope.interface import implementer

import rmux
from rmux.interfaces import IReplyWaiter
from rmux.resp import isError, verbatimString
from rmux.stats import REQUEST_CLASSES

__all__ = ["RMUX_SECTIONS", "rmuxSections", "parseInfo", "mergeInfo", "formatInfo",
           "InfoGatherer", "asksServers", "asksRmux"]

#: The sections rmux answers itself.
RMUX_SECTIONS = ("rmux", "backends", "topology")
_EVERYTHING = frozenset(["all", "everything", "default"])


def asksServers(sections):
    """
    Whether INFO with C{sections} (lowercased) asks for any section of the
    servers'.
    """
    return not sections or any(s not in RMUX_SECTIONS for s in sections)


def asksRmux(sections):
    """
    Whether INFO with C{sections} asks for rmux's own sections.
    """
    return not sections or bool(set(sections) & (_EVERYTHING | set(RMUX_SECTIONS)))


# rmux's own sections

def rmuxSections(factory, sections):
    """
    rmux's own sections of INFO, as C{(name, fields)} pairs.

    @param factory: the listener's L{rmux.proxy.ProxyFactory}.
    @param sections: lowercased section names; empty, C{all},
        C{everything} or C{default} mean both.
    """
    wanted = set(sections)
    if not wanted or wanted & _EVERYTHING:
        wanted = set(RMUX_SECTIONS)
    snapshot = factory.snapshot()
    result = []
    if "rmux" in wanted:
        result.append(("Rmux", _rmux(factory, snapshot)))
    if "backends" in wanted:
        result.append(("Backends", _backends(snapshot)))
    if "topology" in wanted and "topology" in snapshot:
        result.append(("Topology", _topology(snapshot["topology"])))
    return result


def _topology(topology):
    """
    Where the placement comes from: C{servers} (the configuration), or a
    cluster's or a Sentinel group's nodes, with its counters.
    """
    kind = topology["kind"]
    fields = [("topology", kind)]
    fields += [("%s_%s" % (kind, name), value)
               for name, value in topology["counters"].items()]
    for index, (node, text) in enumerate(sorted(topology["nodes"].items())):
        fields.append(("node%d" % (index,), "name=%s,%s" % (node, text)))
    return fields


def _rmux(factory, snapshot):
    listener = factory.listener
    clients, errors = snapshot["clients"], snapshot["errors"]
    byClass = snapshot["requestsByClass"]
    fields = [
        ("rmux_version", rmux.__version__),
        ("python_version", sys.version.split()[0]),
        ("twisted_version", twisted.__version__),
        ("process_id", os.getpid()),
        ("worker", factory.workerId if factory.workerId is not None else 0),
        ("listener", listener.name),
        ("multiplexing", int(listener.multiplexing)),
        ("uptime_in_seconds", int(snapshot["uptime"])),
        ("connected_clients", clients["current"]),
        ("total_connections_received", clients["total"]),
        ("total_commands_processed", snapshot["requests"]),
        ("total_net_input_bytes", snapshot["bytesIn"]),
        ("total_net_output_bytes", snapshot["bytesOut"]),
        ("rejected_commands", errors["refused"]),
        ("rejected_connections", clients["rejected"]),
        ("client_output_limit_drops", errors["outputLimit"]),
        ("protocol_errors", errors["protocol"]),
    ]
    fields += [("requests_%s" % (name,), byClass.get(name, 0)) for name in REQUEST_CLASSES]
    fields += [
        ("total_responses", snapshot["responses"]),
        ("client_eof", clients["eof"]),
        ("client_errors", clients["errors"]),
        ("local_timeouts", snapshot["timeouts"]),
        ("auth_failures", errors["auth"]),
    ]
    return [(k if k.startswith("rmux_") else "rmux_" + k, v) for k, v in fields]


def _microseconds(latency, q):
    """
    A latency percentile in microseconds as the histogram bounds it: 0
    before any reply, C{inf} beyond the histogram's last bound.
    """
    from rmux.metrics import percentile

    seconds = percentile(latency, q)
    if seconds is None:
        return "0"
    if seconds == float("inf"):
        return "inf"
    return "%d" % (round(seconds * 1000000),)


_BACKEND_FIELDS = (
    ("connections", "connections"), ("connects", "connects"),
    ("connect_failures", "connectFailures"), ("errors", "errors"),
    ("timeouts", "timeouts"), ("requests", "requests"), ("responses", "responses"),
    ("error_replies", "errorReplies"), ("failed_requests", "failedRequests"),
    ("eof", "eof"), ("ejections", "ejections"), ("in_queue", "inQueue"),
    ("out_queue", "outQueue"),
)


def _backends(snapshot):
    """
    One C{backendN} line per backend, with its latency's p50 and p99.
    """
    backends = snapshot["backends"]
    active = sum(1 for b in backends if b["state"] == "up")
    fields = [("active_endpoints", active), ("total_endpoints", len(backends))]
    for index, b in enumerate(backends):
        values = ["address=%s" % (b["address"],), "status=%s" % (b["state"],)]
        values += ["%s=%d" % (label, b[key]) for label, key in _BACKEND_FIELDS]
        values.append("latency_p50_usec=%s" % (_microseconds(b["latency"], 0.5),))
        values.append("latency_p99_usec=%s" % (_microseconds(b["latency"], 0.99),))
        fields.append(("backend%d" % (index,), ",".join(values)))
    return fields


# The servers' INFO

def parseInfo(text):
    """
    INFO's text as C{(section, [(key, value), ...])} pairs, in order; values
    are kept as the strings Redis wrote.
    """
    sections = []
    fields = None
    for line in text.split("\r\n"):
        if line.startswith("# "):
            fields = []
            sections.append((line[2:], fields))
        elif line and fields is not None and ":" in line:
            key, _, value = line.partition(":")
            fields.append((key, value))
    return sections


def formatInfo(sections):
    """
    C{(section, fields)} pairs as INFO's text.
    """
    parts = []
    for name, fields in sections:
        body = "".join("%s:%s\r\n" % pair for pair in fields)
        parts.append("# %s\r\n%s" % (name, body))
    return "\r\n".join(parts)


#: Numbers taken from the first server: identities, clocks, settings.
_FIRST = frozenset([
    "process_id", "tcp_port", "server_time_usec", "hz", "configured_hz", "lru_clock",
    "arch_bits", "master_repl_offset", "second_repl_offset", "repl_backlog_active",
    "repl_backlog_size", "repl_backlog_first_byte_offset", "repl_backlog_histlen",
    "atomicvar_api", "gcc_version", "io_threads_active", "redis_git_dirty",
    "maxmemory", "maxclients",
])
#: Numbers where the oldest (smallest) is the truth of the whole.
_MIN = frozenset(["uptime_in_seconds", "uptime_in_days", "rdb_last_save_time"])


def _isMax(key):
    # Flags and in-progress markers: on if any server's is.
    return (key.endswith("_in_progress") or key.startswith("client_recent_max_")
            or key in ("loading", "async_loading", "aof_enabled", "cluster_enabled"))


def _number(value):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return None


def _human(size):
    """
    A byte count as Redis's INFO writes it (C{bytesToHuman}): C{"1.50M"}.
    """
    for unit, factor in (("P", 1024 ** 5), ("T", 1024 ** 4), ("G", 1024 ** 3),
                         ("M", 1024 ** 2), ("K", 1024)):
        if size >= factor:
            return "%.2f%s" % (size / factor, unit)
    return "%dB" % (size,)


def _showNumber(value):
    if isinstance(value, float):
        return "%.2f" % (value,)
    return str(value)


def _mergeValues(key, values):
    """
    One field, from every server's value of it.
    """
    if len(set(values)) == 1:
        return values[0]
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers) or key in _FIRST:
        return values[0]
    if key in _MIN:
        return _showNumber(min(numbers))
    if _isMax(key):
        return _showNumber(max(numbers))
    if key.endswith(("_ratio", "_perc", "_percent", "_per_sec")) and "instantaneous" not in key:
        return _showNumber(sum(numbers) / len(numbers))
    return _showNumber(sum(numbers))


def _mergeSubfields(values, combine):
    """
    Merge C{k=v,k=v} values (keyspace, commandstats, errorstats...).
    """
    totals = {}
    order = []
    for value in values:
        for item in value.split(","):
            name, _, number = item.partition("=")
            if name not in totals:
                order.append(name)
                totals[name] = []
            totals[name].append(number)
    merged = combine(order, totals)
    return ",".join("%s=%s" % (name, merged[name]) for name in order)


def _sumAll(order, totals):
    return {name: _mergeValues(name, values) for name, values in totals.items()}


def _keyspace(order, totals):
    merged = _sumAll(order, totals)
    expires = [int(v) for v in totals.get("expires", [])]
    ttls = [int(v) for v in totals.get("avg_ttl", [])]
    if ttls and len(ttls) == len(expires):
        weight = sum(expires)
        merged["avg_ttl"] = str(
            sum(t * e for t, e in zip(ttls, expires)) // weight if weight else 0)
    return merged


def _commandstats(order, totals):
    merged = _sumAll(order, totals)
    if "calls" in merged and "usec" in merged:
        calls = int(merged["calls"])
        merged["usec_per_call"] = "%.2f" % (int(merged["usec"]) / calls if calls else 0.0)
    return merged


def _maxAll(order, totals):
    return {name: _showNumber(max(_number(v) or 0 for v in values))
            for name, values in totals.items()}


_SUBFIELD_SECTIONS = {
    "Keyspace": _keyspace,
    "Commandstats": _commandstats,
    "Errorstats": _sumAll,
    "Latencystats": _maxAll,
}


def mergeInfo(texts):
    """
    The INFO of several servers as one server holding all their data would
    report it.

    @param texts: each server's INFO text, in configuration order.
    @return: C{(section, fields)} pairs; a section or field only some
        servers have is kept (keyspace lines of dbs only one server uses).
    """
    parsed = [parseInfo(text) for text in texts]
    if len(parsed) == 1:
        return parsed[0]
    sections = []
    seen = {}
    for server in parsed:
        for name, fields in server:
            if name not in seen:
                seen[name] = {}
                sections.append((name, seen[name]))
            for key, value in fields:
                seen[name].setdefault(key, []).append(value)
    result = []
    for name, fields in sections:
        subfields = _SUBFIELD_SECTIONS.get(name)
        merged = []
        for key, values in fields.items():
            if subfields is not None and "=" in values[0]:
                merged.append((key, _mergeSubfields(values, subfields)))
            elif key.endswith("_human"):
                merged.append((key, values[0]))
            else:
                merged.append((key, _mergeValues(key, values)))
        humans = dict(merged)
        merged = [(key, _human(int(humans[key[:-6]])) if key.endswith("_human")
                   and _number(humans.get(key[:-6], "x")) is not None else value)
                  for key, value in merged]
        if name == "Replication":
            roles = set(fields.get("role", []))
            merged = [(k, "master" if k == "role" and roles == {"master"} else v)
                      for k, v in merged]
        result.append((name, merged))
    return result


def _text(reply):
    """
    The text of a bulk or verbatim string reply.
    """
    header = reply.index(b"\r\n")
    body = reply[header + 2:-2]
    if reply[:1] == b"=":
        body = body[4:]
    return body.decode("utf-8", "replace")


class InfoGatherer:
    """
    INFO's answer: each server's reply to the INFO it was sent, then the
    merged text, with rmux's sections, in the client's slot.
    """

    def __init__(self, slot, factory, sections, protocolVersion, servers):
        """
        @param slot: the client's L{IReplyWaiter}.
        @param factory: the listener's L{rmux.proxy.ProxyFactory}.
        @param sections: the sections asked for, lowercased.
        @param protocolVersion: the client's RESP version.
        @param servers: how many servers were asked.
        """
        self.slot = slot
        self.factory = factory
        self.sections = sections
        self.protocolVersion = protocolVersion
        self.replies = [None] * servers
        self.remaining = servers
        if not servers:
            self.finish()

    def part(self, index):
        return _InfoPart(self, index)

    def filled(self, index, reply):
        self.replies[index] = reply
        self.remaining -= 1
        if not self.remaining:
            self.finish()

    def finish(self):
        for reply in self.replies:
            if isError(reply):
                self.slot.fill(reply)
                return
        sections = mergeInfo([_text(reply) for reply in self.replies])
        if asksRmux(self.sections):
            sections = sections + rmuxSections(self.factory, self.sections)
        text = formatInfo(sections).encode("utf-8")
        self.slot.fill(verbatimString(text, self.protocolVersion))


@implementer(IReplyWaiter)
class _InfoPart:
    __slots__ = ("gatherer", "index", "data")

    def __init__(self, gatherer, index):
        self.gatherer = gatherer
        self.index = index
        self.data = None

    def fill(self, reply):
        self.data = reply
        self.gatherer.filled(self.index, reply)
