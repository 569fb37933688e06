# -*- test-case-name: tests.test_proxy -*-
"""
INFO's text, in Redis's C{# Section} / C{key:value} layout, made from the
same snapshot of the counters (L{rmux.stats.listenerSnapshot}) that the
stats port, Prometheus and statsd format, so that INFO never disagrees
with them.
"""

import os
import sys

import twisted

import rmux
from rmux.stats import REQUEST_CLASSES

__all__ = ["infoText"]


def infoText(factory, sections):
    """
    INFO's text for one listener.

    @param factory: the listener's L{rmux.proxy.ProxyFactory}.
    @param sections: lowercased section names; empty, C{all},
        C{everything} or C{default} mean all of them.
    """
    wanted = set(sections)
    if not wanted or wanted & {"all", "everything", "default"}:
        wanted = {name for name, _ in _SECTIONS}
    snapshot = factory.snapshot()
    parts = []
    for name, fields in _SECTIONS:
        if name in wanted:
            body = "".join("%s:%s\r\n" % pair for pair in fields(factory, snapshot))
            parts.append("# %s\r\n%s" % (name.capitalize(), body))
    return "\r\n".join(parts)


def _server(factory, snapshot):
    listener = factory.listener
    return [
        ("redis_version", factory.backendFacts()["version"]),
        ("rmux_version", rmux.__version__),
        ("python_version", sys.version.split()[0]),
        ("twisted_version", twisted.__version__),
        ("process_id", os.getpid()),
        ("worker", factory.workerId if factory.workerId is not None else 0),
        ("listener", listener.name),
        ("multiplexing", int(listener.multiplexing)),
        ("uptime_in_seconds", int(snapshot["uptime"])),
    ]


def _clients(factory, snapshot):
    return [("connected_clients", snapshot["clients"]["current"])]


def _stats(factory, snapshot):
    clients, errors = snapshot["clients"], snapshot["errors"]
    byClass = snapshot["requestsByClass"]
    return [
        ("total_connections_received", clients["total"]),
        ("total_commands_processed", snapshot["requests"]),
        ("total_net_input_bytes", snapshot["bytesIn"]),
        ("total_net_output_bytes", snapshot["bytesOut"]),
        ("rejected_commands", errors["refused"]),
        ("rejected_connections", clients["rejected"]),
        ("client_output_limit_drops", errors["outputLimit"]),
        ("protocol_errors", errors["protocol"]),
    ] + [
        ("requests_%s" % (name,), byClass.get(name, 0)) for name in REQUEST_CLASSES
    ] + [
        ("total_responses", snapshot["responses"]),
        ("client_eof", clients["eof"]),
        ("client_errors", clients["errors"]),
        ("local_timeouts", snapshot["timeouts"]),
        ("auth_failures", errors["auth"]),
    ]


def _replication(factory, snapshot):
    return [("role", "master")]


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


def _backends(factory, snapshot):
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


_SECTIONS = (
    ("server", _server),
    ("clients", _clients),
    ("stats", _stats),
    ("replication", _replication),
    ("backends", _backends),
)
