# -*- test-case-name: tests.test_metrics -*-
"""
rmux's numbers for monitoring systems: twemproxy's stats JSON, Prometheus'
C{/metrics} and statsd, all formatted from the snapshots INFO uses.

The contract
============

Everything here reads a I{snapshot source}: a callable without arguments
that returns a list of listener snapshots in L{rmux.stats.listenerSnapshot}'s
format, one per listener, each already added up across worker processes
with L{rmux.stats.combine}.  In a single process that is::

    lambda: [listener.factory.snapshot() for listener in rmuxService.listeners]

and in the parent of C{--maxProcesses} workers, the latest reports of its
workers combined listener by listener.  The source is called only when
somebody reads: once per connection to the stats port, once per scrape,
once per statsd push.  It must be cheap and must not block, since it runs
in the reactor thread; nothing here touches the proxy's hot path.

L{MetricsService}C{(config, reactor, snapshots)} runs what an
L{rmux.config.RmuxConfig} asks for:

  - C{statsPort}: twemproxy's stats port on C{statsHost}; every connection
    gets one JSON object (L{twemproxyStats}) and is closed, as with
    nutcracker, so collectd, nagios, ganglia and telegraf plugins written for
    twemproxy read rmux unchanged;
  - C{metricsPort}: Prometheus' text format at C{/metrics} on C{statsHost}
    (L{MetricsSite});
  - C{graphite}: statsd lines over UDP every C{statsInterval} ms
    (L{StatsdService}), C{timing} adding each backend's mean latency.

L{metricsWanted} says whether a config asks for any of them.  Add the
service beside the listeners (in the process that can see every
listener's numbers); a stats or metrics port that cannot be bound makes its
C{startService} raise, as a listener's does.
"""

import json
import math
import re
import socket

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.application.service import MultiService, Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Site

import rmux
from rmux.startup import ListeningService
from rmux.stats import LATENCY_BOUNDS, REQUEST_CLASSES

__all__ = [
    "MetricsService",
    "metricsWanted",
    "percentile",
    "twemproxyStats",
    "TwemproxyStatsFactory",
    "SnapshotCollector",
    "MetricsSite",
    "statsdName",
    "StatsdReport",
    "statsdDatagrams",
    "StatsdProtocol",
    "StatsdService",
]


def percentile(latency, q):
    """
    Estimate a quantile of a latency histogram.

    The buckets only say how many requests fell between two bounds, so the
    estimate is the upper bound of the bucket that holds the quantile: the
    true value is at most that.

    @param latency: a histogram snapshot, C{{"counts": [...], "sum": ...,
        "count": ...}}, with one count per bound of
        L{rmux.stats.LATENCY_BOUNDS} and one for everything slower.
    @param q: the quantile, from 0 to 1 (0.99 for p99).
    @return: seconds; L{math.inf} if the quantile is slower than the last
        bound, L{None} if the histogram is empty.
    """
    if not 0 <= q <= 1:
        raise ValueError("a quantile is between 0 and 1, not %r" % (q,))
    counts = latency["counts"]
    total = sum(counts)
    if not total:
        return None
    # The tolerance keeps 0.07 * 100 (7.000000000000001) at rank 7.
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for bound, count in zip(LATENCY_BOUNDS + (math.inf,), counts):
        seen += count
        if seen >= rank:
            return bound
    return math.inf


def metricsWanted(config):
    """
    Whether C{config} (an L{rmux.config.RmuxConfig}) asks for a stats port,
    a metrics port or statsd, that is, whether a L{MetricsService} would do
    anything.
    """
    return bool(config.statsPort or config.metricsPort or config.graphite)


# twemproxy's stats port


def _twemproxyServer(backend):
    """
    One backend in twemproxy's per-server layout (nc_stats.h's
    STATS_SERVER_CODEC, in its order).
    """
    return {
        "server_eof": int(backend["eof"]),
        # twemproxy counts a failed connect as a server error too.
        "server_err": int(backend["errors"] + backend["connectFailures"]),
        "server_timedout": int(backend["timeouts"]),
        "server_connections": int(backend["connections"]),
        # Microseconds since the epoch, as nc_usec_now() gives; 0 if never.
        "server_ejected_at": int(backend["ejectedAt"] * 1000000),
        "requests": int(backend["requests"]),
        "request_bytes": int(backend["requestBytes"]),
        "responses": int(backend["responses"]),
        "response_bytes": int(backend["responseBytes"]),
        "in_queue": int(backend["inQueue"]),
        # Requests not yet taken by the server, in bytes (snapshots from
        # before this count have none).
        "in_queue_bytes": int(backend.get("inQueueBytes", 0)),
        "out_queue": int(backend["outQueue"]),
        # rmux does not keep the sizes of requests awaiting their reply.
        "out_queue_bytes": 0,
    }


def _twemproxyPool(snapshot):
    """
    One listener as a twemproxy pool (nc_stats.h's STATS_POOL_CODEC, in its
    order), then its servers.
    """
    clients = snapshot["clients"]
    backends = snapshot["backends"]
    pool = {
        "client_eof": int(clients["eof"]),
        "client_err": int(clients["errors"]),
        "client_connections": int(clients["current"]),
        "server_ejects": int(sum(b["ejections"] for b in backends)),
        # Requests answered with an error because the connection carrying
        # them failed, as twemproxy counts requests it could not forward.
        "forward_error": int(sum(b["failedRequests"] for b in backends)),
        # The requests multi-key and all-server commands were split into.
        "fragments": int(snapshot.get("fragments", 0)),
    }
    topology = snapshot.get("topology")
    slots = {}
    if topology:
        # A cluster's or Sentinel group's counters, as pool figures
        # (cluster_moved, sentinel_switches, ...), and each node's slots.
        for event, count in topology["counters"].items():
            pool["%s_%s" % (topology["kind"], event)] = int(count)
        slots = {node: int(what[len("slots="):]) for node, what in topology["nodes"].items()
                 if what.startswith("slots=")}
    for backend in backends:
        server = pool[backend["name"]] = _twemproxyServer(backend)
        if backend["name"] in slots:
            server["slots"] = slots[backend["name"]]
    return pool


def twemproxyStats(snapshots, now, source):
    """
    The object nutcracker's stats port writes, for rmux's listeners.

    Each listener is a pool, named by its socket path or C{host:port}, and
    each of its backends a server, named as in the config (its address
    unless it has a name).  Like twemproxy's, C{total_connections} and
    C{curr_connections} count both sides: clients accepted and backend
    connections opened, and those open now (twemproxy also counts its
    listening sockets; rmux does not).

    @param snapshots: listener snapshots, as a snapshot source returns them.
    @param now: the time, in seconds since the epoch.
    @param source: the host's name.
    @return: a L{dict} in twemproxy's key order; every number an L{int}.
    """
    stats = {
        "service": "rmux",
        "source": source,
        "version": rmux.__version__,
        "uptime": int(max((s["uptime"] for s in snapshots), default=0)),
        "timestamp": int(now),
        "total_connections": int(
            sum(
                s["clients"]["total"] + sum(b["connects"] for b in s["backends"])
                for s in snapshots
            )
        ),
        "curr_connections": int(
            sum(
                s["clients"]["current"] + sum(b["connections"] for b in s["backends"])
                for s in snapshots
            )
        ),
    }
    for snapshot in snapshots:
        stats[snapshot["listener"]] = _twemproxyPool(snapshot)
    return stats


class _StatsReply(Protocol):
    """
    Writes the stats and hangs up, whatever the client sends: that is the
    whole of twemproxy's stats protocol.
    """

    def connectionMade(self):
        self.transport.write(self.factory.render())
        self.transport.loseConnection()


class TwemproxyStatsFactory(Factory):
    """
    Serves twemproxy's stats port.

    @ivar source: the host name reported as C{source}, as nutcracker's
        C{-s}/hostname default.
    """

    protocol = _StatsReply
    noisy = False
    log = Logger()

    def __init__(self, reactor, snapshots, source=None):
        self.reactor = reactor
        self.snapshots = snapshots
        self.source = source if source is not None else socket.gethostname()

    def render(self):
        """
        The JSON object as bytes, newline-terminated as nutcracker's; empty
        if the snapshots could not be had, so that the reader sees a closed
        connection rather than a wrong number.
        """
        try:
            stats = twemproxyStats(self.snapshots(), self.reactor.seconds(), self.source)
        except Exception:
            self.log.failure("Cannot read rmux's stats for the stats port")
            return b""
        return json.dumps(stats).encode("utf-8") + b"\n"


# Prometheus


class SnapshotCollector:
    """
    A prometheus-client collector that formats the snapshot source at
    scrape time, so the proxy never updates a prometheus-client object as
    it works.

    Counters are C{_total}; every listener's metrics have a C{listener}
    label, every backend's also a C{backend} label (its name, or its
    address).
    """

    _LISTENER_COUNTERS = (
        ("rmux_client_connections", "Client connections accepted.",
         lambda s: s["clients"]["total"]),
        ("rmux_client_connections_rejected",
         "Client connections closed at once because maxClients were connected.",
         lambda s: s["clients"]["rejected"]),
        ("rmux_client_eof", "Client connections the client closed.",
         lambda s: s["clients"]["eof"]),
        ("rmux_client_errors", "Client connections lost to a network error.",
         lambda s: s["clients"]["errors"]),
        ("rmux_responses", "Replies written to clients.", lambda s: s["responses"]),
        ("rmux_timeouts",
         "Clients closed by the local read or write timeout or the idle timeout.",
         lambda s: s["timeouts"]),
        ("rmux_received_bytes", "Bytes read from clients.", lambda s: s["bytesIn"]),
        ("rmux_sent_bytes", "Bytes written to clients.", lambda s: s["bytesOut"]),
    )

    _ERROR_KINDS = (
        ("protocol", "protocol"),
        ("auth", "auth"),
        ("refused", "refused"),
        ("output_limit", "outputLimit"),
    )

    _BACKEND_COUNTERS = (
        ("rmux_backend_requests", "Requests written to the backend.", "requests"),
        ("rmux_backend_responses", "Replies read from the backend.", "responses"),
        ("rmux_backend_sent_bytes", "Bytes written to the backend.", "requestBytes"),
        ("rmux_backend_received_bytes", "Bytes read from the backend.", "responseBytes"),
        ("rmux_backend_error_replies", "Error replies the backend sent.", "errorReplies"),
        ("rmux_backend_failed_requests",
         "Requests answered with an error because their connection failed.",
         "failedRequests"),
        ("rmux_backend_errors",
         "Backend connections closed by a failure (a timeout, a broken reply).",
         "errors"),
        ("rmux_backend_timeouts", "Backend read or write timeouts.", "timeouts"),
        ("rmux_backend_eof", "Backend connections the server closed.", "eof"),
        ("rmux_backend_connects", "Backend connections opened.", "connects"),
        ("rmux_backend_connect_failures", "Backend connections that could not be opened.",
         "connectFailures"),
        ("rmux_backend_ejections", "Times the health checks took the backend down.",
         "ejections"),
    )

    _BACKEND_GAUGES = (
        ("rmux_backend_connections", "Open connections to the backend.", "connections"),
        ("rmux_backend_connections_in_use",
         "Connections with a reply due, or dedicated to one client.",
         "connectionsInUse"),
        ("rmux_backend_pinned_connections",
         "Connections dedicated to one client now (transactions, blocking commands); "
         "idle ones kept for the next are not counted.",
         "pinned"),
        ("rmux_backend_in_queue",
         "Requests not yet written: waiting for a connection or held on one.",
         "inQueue"),
        ("rmux_backend_in_queue_bytes",
         "Bytes of requests the server has not taken yet.", "inQueueBytes"),
        ("rmux_backend_out_queue", "Requests written and awaiting their reply.", "outQueue"),
    )

    def __init__(self, snapshots):
        self.snapshots = snapshots

    def collect(self):
        snapshots = self.snapshots()
        listenerLabel = ["listener"]
        backendLabels = ["listener", "backend"]
        families = []

        connected = GaugeMetricFamily(
            "rmux_clients_connected", "Clients connected now.", labels=listenerLabel
        )
        for s in snapshots:
            connected.add_metric([s["listener"]], s["clients"]["current"])
        families.append(connected)

        for name, documentation, value in self._LISTENER_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=listenerLabel)
            for s in snapshots:
                family.add_metric([s["listener"]], value(s))
            families.append(family)

        requests = CounterMetricFamily(
            "rmux_requests",
            "Requests by how rmux handled them: forward (to a backend), local, "
            "stateful, blocking, pubsub, refused, invalid.",
            labels=["listener", "class"],
        )
        for s in snapshots:
            for requestClass in REQUEST_CLASSES:
                requests.add_metric(
                    [s["listener"], requestClass], s["requestsByClass"].get(requestClass, 0)
                )
        families.append(requests)

        errors = CounterMetricFamily(
            "rmux_errors",
            "Client-side errors by kind: protocol (unparsable request), auth "
            "(failed AUTH), refused (a command rmux does not run), output_limit "
            "(client dropped for unread replies).",
            labels=["listener", "kind"],
        )
        for s in snapshots:
            for kind, key in self._ERROR_KINDS:
                errors.add_metric([s["listener"], kind], s["errors"][key])
        families.append(errors)

        topology = CounterMetricFamily(
            "rmux_topology_events",
            "What a cluster or Sentinel placement did: redirections followed "
            "(moved, ask), commands sent again (retries), failovers followed "
            "(switches), and reads of the map (map_reads, rounds) and their "
            "failures.",
            labels=["listener", "topology", "event"],
        )
        for s in snapshots:
            t = s.get("topology")
            if t is not None:
                for event, count in t["counters"].items():
                    topology.add_metric([s["listener"], t["kind"], event], count)
        families.append(topology)

        backends = [(s["listener"], b) for s in snapshots for b in s["backends"]]
        for name, documentation, key in self._BACKEND_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=backendLabels)
            for listener, b in backends:
                family.add_metric([listener, b["name"]], b[key])
            families.append(family)
        for name, documentation, key in self._BACKEND_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=backendLabels)
            for listener, b in backends:
                family.add_metric([listener, b["name"]], b[key])
            families.append(family)

        up = GaugeMetricFamily(
            "rmux_backend_up",
            "1 if the health checks find the backend up; 0 while it is down or "
            "before their first verdict.",
            labels=backendLabels,
        )
        for listener, b in backends:
            up.add_metric([listener, b["name"]], 1 if b["state"] == "up" else 0)
        families.append(up)

        latency = HistogramMetricFamily(
            "rmux_backend_latency_seconds",
            "Time from writing a batch of requests to the backend until its last "
            "reply, counted once per request of the batch.",
            labels=backendLabels,
        )
        for listener, b in backends:
            histogram = b["latency"]
            buckets = []
            cumulative = 0
            for bound, count in zip(LATENCY_BOUNDS + (math.inf,), histogram["counts"]):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([listener, b["name"]], buckets, histogram["sum"])
        families.append(latency)
        return families


class _MetricsPage(Resource):
    """
    C{/metrics}: the registry in the format the scraper asks for (text, or
    OpenMetrics).
    """

    log = Logger()

    def __init__(self, registry):
        Resource.__init__(self)
        self.registry = registry

    def render_GET(self, request):
        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        try:
            body = encoder(self.registry)
        except Exception:
            self.log.failure("Cannot read rmux's stats for /metrics")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"rmux could not read its stats; its log says why.\n"
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return body


class _Health(Resource):
    """
    C{/health}: rmux is up (a liveness probe): always 200 while it runs.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b'{"status": "up"}\n'


class _Ready(Resource):
    """
    C{/ready} (a readiness probe): 200 when every listener can serve (its
    servers up, or one of them with failover; a cluster's map known; each
    Sentinel master found), else 503; the body says which.
    """

    isLeaf = True

    def __init__(self, snapshots):
        Resource.__init__(self)
        self.snapshots = snapshots

    def render_GET(self, request):
        listeners = []
        for s in self.snapshots():
            backends = s["backends"]
            listeners.append({
                "listener": s["listener"],
                "ready": bool(s.get("ready")),
                "backendsUp": sum(1 for b in backends if b["state"] == "up"),
                "backends": len(backends),
            })
        ready = bool(listeners) and all(entry["ready"] for entry in listeners)
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"ready": ready, "listeners": listeners}).encode() + b"\n"


class _Index(Resource):
    """
    C{/}: a pointer to C{/metrics} for whoever opens the port in a browser;
    any other path is not found.
    """

    def getChild(self, path, request):
        if path == b"":
            return self
        return NoResource()

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            b"<html><head><title>rmux</title></head><body>"
            b'<h1>rmux</h1><p><a href="/metrics">Metrics</a></p></body></html>\n'
        )


class MetricsSite(Site):
    """
    The Prometheus endpoint: C{/metrics} from a private registry holding
    only a L{SnapshotCollector}, so whatever else registers with
    prometheus-client's global registry in this process does not leak in.

    @ivar registry: that L{CollectorRegistry}.
    """

    noisy = False

    def __init__(self, snapshots):
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(snapshots))
        root = _Index()
        root.putChild(b"metrics", _MetricsPage(self.registry))
        root.putChild(b"health", _Health())
        root.putChild(b"ready", _Ready(snapshots))
        Site.__init__(self, root)

    def log(self, request):
        """
        Log nothing per request: a scrape every few seconds would drown
        rmux's own log.
        """


# statsd


def statsdName(text):
    """
    C{text} as one part of a statsd name: every run of characters other
    than letters, digits, C{_} and C{-} (statsd's separators C{.}, C{:} and
    C{|}, a socket path's C{/}) becomes one C{_}.
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "_"


class StatsdReport:
    """
    Turns successive snapshots into statsd lines.

    Counters are sent as their increase since the previous report (the
    first report counts from zero, which is where rmux's counters start),
    gauges as they are.  A counter that went down was reset (a worker
    restarted) and counts from zero again.  Counters that did not move are
    left out: statsd takes an absent counter as zero.

    Names are C{<prefix>.<listener>.<metric>} and
    C{<prefix>.<listener>.backend.<backend>.<metric>}, each part through
    L{statsdName}.

    @ivar timing: whether to add each backend's mean latency over the
        interval as a timer, C{...backend.<backend>.latency:<ms>|ms}.
    """

    _LISTENER_COUNTERS = (
        ("connections", lambda s: s["clients"]["total"]),
        ("connections_rejected", lambda s: s["clients"]["rejected"]),
        ("client_eof", lambda s: s["clients"]["eof"]),
        ("client_errors", lambda s: s["clients"]["errors"]),
        ("requests", lambda s: s["requests"]),
        ("responses", lambda s: s["responses"]),
        ("bytes_in", lambda s: s["bytesIn"]),
        ("bytes_out", lambda s: s["bytesOut"]),
        ("timeouts", lambda s: s["timeouts"]),
        ("errors.protocol", lambda s: s["errors"]["protocol"]),
        ("errors.auth", lambda s: s["errors"]["auth"]),
        ("errors.refused", lambda s: s["errors"]["refused"]),
        ("errors.output_limit", lambda s: s["errors"]["outputLimit"]),
    )

    _BACKEND_COUNTERS = (
        ("requests", "requests"),
        ("responses", "responses"),
        ("request_bytes", "requestBytes"),
        ("response_bytes", "responseBytes"),
        ("error_replies", "errorReplies"),
        ("failed_requests", "failedRequests"),
        ("errors", "errors"),
        ("timeouts", "timeouts"),
        ("eof", "eof"),
        ("connects", "connects"),
        ("connect_failures", "connectFailures"),
        ("ejections", "ejections"),
    )

    _BACKEND_GAUGES = (
        ("connections", "connections"),
        ("connections_in_use", "connectionsInUse"),
        ("in_queue", "inQueue"),
        ("out_queue", "outQueue"),
    )

    def __init__(self, timing=False, prefix="rmux"):
        self.timing = timing
        self.prefix = prefix
        self._counted = {}
        self._latency = {}

    def lines(self, snapshots):
        """
        The statsd lines for C{snapshots}, as L{str}s; remembers the counters
        for the next report.
        """
        lines = []
        for s in snapshots:
            base = "%s.%s" % (self.prefix, statsdName(s["listener"]))
            lines.append("%s.clients:%d|g" % (base, s["clients"]["current"]))
            for name, value in self._LISTENER_COUNTERS:
                self._count(lines, "%s.%s" % (base, name), value(s))
            for requestClass, count in sorted(s["requestsByClass"].items()):
                self._count(lines, "%s.requests_by_class.%s" % (base, requestClass), count)
            for b in s["backends"]:
                backend = "%s.backend.%s" % (base, statsdName(b["name"]))
                for name, key in self._BACKEND_COUNTERS:
                    self._count(lines, "%s.%s" % (backend, name), b[key])
                for name, key in self._BACKEND_GAUGES:
                    lines.append("%s.%s:%d|g" % (backend, name, b[key]))
                lines.append("%s.up:%d|g" % (backend, 1 if b["state"] == "up" else 0))
                if self.timing:
                    self._meanLatency(lines, backend + ".latency", b["latency"])
        return lines

    def _count(self, lines, name, value):
        previous = self._counted.get(name, 0)
        self._counted[name] = value
        delta = value - previous if value >= previous else value
        if delta:
            lines.append("%s:%d|c" % (name, delta))

    def _meanLatency(self, lines, name, histogram):
        previousSum, previousCount = self._latency.get(name, (0.0, 0))
        total, count = histogram["sum"], histogram["count"]
        self._latency[name] = (total, count)
        if count < previousCount:
            previousSum, previousCount = 0.0, 0
        if count > previousCount:
            mean = (total - previousSum) / (count - previousCount)
            lines.append("%s:%.3f|ms" % (name, mean * 1000))


def statsdDatagrams(lines, limit=1400):
    """
    Pack statsd lines into as few datagrams as fit, newline-separated, each
    at most C{limit} bytes so that none is fragmented on an ordinary
    network (a line longer than that goes alone).

    @return: a L{list} of L{bytes}.
    """
    datagrams = []
    batch = []
    size = 0
    for line in lines:
        data = line.encode("utf-8")
        if batch and size + 1 + len(data) > limit:
            datagrams.append(b"\n".join(batch))
            batch = []
        size = size + 1 + len(data) if batch else len(data)
        batch.append(data)
    if batch:
        datagrams.append(b"\n".join(batch))
    return datagrams


class StatsdProtocol(DatagramProtocol):
    """
    Sends datagrams on a connected UDP port.

    A statsd that is away or unreachable must not disturb the proxy: send
    errors are logged once per kind of error and otherwise ignored.
    """

    noisy = False
    log = Logger()

    def __init__(self):
        self._reported = set()

    def send(self, datagrams):
        for datagram in datagrams:
            try:
                self.transport.write(datagram)
            except Exception as e:
                self.failed("cannot send: %s" % (e,))

    def connectionRefused(self):
        self.failed("connection refused (is statsd listening?)")

    def failed(self, why):
        """
        Log C{why}, the first time it happens.
        """
        if why not in self._reported:
            self._reported.add(why)
            self.log.warn(
                "statsd: {why}; rmux carries on and will not repeat this message",
                why=why,
            )


def _splitHostPort(address):
    """
    C{host:port} or C{[v6]:port}, as L{rmux.config} normalises C{graphite},
    as C{(host, port)}.
    """
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class StatsdService(Service):
    """
    Pushes statsd lines every C{interval} seconds.

    The host name is resolved once (an address literal is used as it is);
    if it cannot be, the next push tries again.  Counters are not taken
    while nothing can be sent, so their increase is sent by the first push
    that can.

    @ivar protocol: the L{StatsdProtocol}.
    @ivar report: the L{StatsdReport}.
    """

    log = Logger()

    def __init__(self, reactor, snapshots, address, interval, timing=False):
        self.reactor = reactor
        self.snapshots = snapshots
        self.host, self.port = _splitHostPort(address)
        self.interval = interval
        self.report = StatsdReport(timing)
        self.protocol = StatsdProtocol()
        self._listening = None
        self._connecting = None
        self._loop = None

    def startService(self):
        Service.startService(self)
        self._connect()
        self._loop = LoopingCall(self.push)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stopService(self):
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        listening, self._listening = self._listening, None
        if listening is not None:
            return maybeDeferred(listening.stopListening)
        return None

    def _connect(self):
        if self._connecting is not None or self._listening is not None:
            return
        if isIPAddress(self.host) or isIPv6Address(self.host):
            resolving = succeed(self.host)
        else:
            resolving = self.reactor.resolve(self.host)
        self._connecting = resolving
        resolving.addCallback(self._resolved)
        resolving.addErrback(
            lambda reason: self.protocol.failed(
                "cannot reach %s port %d: %s"
                % (self.host, self.port, reason.getErrorMessage())
            )
        )
        resolving.addBoth(self._connectDone)

    def _resolved(self, ip):
        if not self.running:
            return
        interface = "::" if isIPv6Address(ip) else ""
        listening = self.reactor.listenUDP(0, self.protocol, interface=interface)
        try:
            listening.connect(ip, self.port)
        except Exception:
            listening.stopListening()
            raise
        self._listening = listening

    def _connectDone(self, ignored):
        self._connecting = None

    def push(self):
        """
        Send what changed since the last push; never raises, since an
        exception would stop the L{LoopingCall} for good.
        """
        if self._listening is None:
            self._connect()
            if self._listening is None:
                return
        try:
            lines = self.report.lines(self.snapshots())
        except Exception:
            self.log.failure("Cannot read rmux's stats for statsd")
            return
        self.protocol.send(statsdDatagrams(lines))


# The service


def _serverEndpoint(reactor, host, port):
    host = host.strip().strip("[]")
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host)


def _listening(reactor, host, port, factory, option):
    # A port that cannot be bound stops the start with its reason, rather
    # than leave rmux running without the numbers it was asked for.
    return ListeningService(_serverEndpoint(reactor, host, port), factory,
                            "--%s=%d (on %s)" % (option, port, host))


class MetricsService(MultiService):
    """
    The stats port, the metrics port and statsd, each if C{config} asks for
    it.

    @ivar statsPortService: the twemproxy stats port's service, or L{None}.
    @ivar metricsPortService: the Prometheus port's service, or L{None}.
    @ivar statsdService: the L{StatsdService}, or L{None}.
    """

    def __init__(self, config, reactor, snapshots):
        """
        @param config: an L{rmux.config.RmuxConfig}.
        @param snapshots: the snapshot source (see the module docstring).
        """
        MultiService.__init__(self)
        self.statsPortService = self.metricsPortService = self.statsdService = None
        if config.statsPort:
            self.statsPortService = _listening(
                reactor, config.statsHost, config.statsPort,
                TwemproxyStatsFactory(reactor, snapshots), "statsPort",
            )
            self.statsPortService.setName("stats")
            self.statsPortService.setServiceParent(self)
        if config.metricsPort:
            self.metricsPortService = _listening(
                reactor, config.statsHost, config.metricsPort, MetricsSite(snapshots),
                "metricsPort",
            )
            self.metricsPortService.setName("metrics")
            self.metricsPortService.setServiceParent(self)
        if config.graphite:
            self.statsdService = StatsdService(
                reactor, snapshots, config.graphite,
                config.statsInterval / 1000.0, config.timing,
            )
            self.statsdService.setName("statsd")
            self.statsdService.setServiceParent(self)
