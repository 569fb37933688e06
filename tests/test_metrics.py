"""
Tests for L{rmux.metrics}: the formats with snapshots of real counters
(L{rmux.stats} over real pools and a real L{ProxyFactory}, on a L{Clock}),
then the stats port, C{/metrics}, statsd and INFO end to end, with a real
redis-server, real clients and real sockets.
"""

import json
import math
import socket
import urllib.error
import urllib.request

import redis
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.error import CannotListenError, DNSLookupError
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

import rmux
from rmux.commands import CommandTable
from rmux.config import BackendAddress, ListenerConfig, RmuxConfig
from rmux.health import HealthMonitor
from rmux.metrics import (
    MetricsService,
    MetricsSite,
    StatsdReport,
    StatsdService,
    TwemproxyStatsFactory,
    metricsWanted,
    percentile,
    statsdDatagrams,
    statsdName,
    twemproxyStats,
)
from rmux.pool import BackendPool
from rmux.proxy import ProxyFactory
from rmux.router import PoolGroup, Router
from rmux.startup import StartFailure
from rmux.stats import LATENCY_BOUNDS
from tests.redisserver import freePort, startRedis
from tests.test_integration import ThreadedClients, startRmux

EPOCH = 1700000000.0

TWEMPROXY_POOL_KEYS = [
    "client_eof", "client_err", "client_connections", "server_ejects",
    "forward_error", "fragments",
]
TWEMPROXY_SERVER_KEYS = [
    "server_eof", "server_err", "server_timedout", "server_connections",
    "server_ejected_at", "requests", "request_bytes", "responses",
    "response_bytes", "in_queue", "in_queue_bytes", "out_queue",
    "out_queue_bytes",
]


def _router(pools):
    return Router(PoolGroup(pools))


class Listener:
    """
    One listener's real counters on a L{Clock}: a L{ProxyFactory}, a
    L{BackendPool} per backend and a L{HealthMonitor}, none of them started,
    for tests to set numbers on and snapshot.
    """

    def __init__(self, socketPath="/tmp/rmux-metrics.sock",
                 backends=("10.0.0.1:6379:1 cache-a", "10.0.0.2:6380")):
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.config = ListenerConfig(
            socket=socketPath,
            backends=tuple(BackendAddress.fromString(b) for b in backends),
        )
        self.pools = [BackendPool(self.clock, a) for a in self.config.backends]
        self.health = HealthMonitor(self.clock, self.pools)
        self.factory = ProxyFactory(
            self.clock, _router(self.pools), CommandTable.default(), self.config,
            self.health,
        )

    def check(self, index):
        return self.health.checks[self.pools[index]]

    def snapshot(self):
        return self.factory.snapshot()

    def busy(self):
        """
        Give every counter a distinct value.
        """
        s = self.factory.stats
        s.connectionsReceived = 40
        s.commands = 100
        s.requestsByClass["local"] = 7
        s.requestsByClass["refused"] = 3
        s.responses = 99
        s.bytesIn = 5000
        s.bytesOut = 6000
        s.refused = 3
        s.protocolErrors = 2
        s.authFailures = 1
        s.rejectedConnections = 4
        s.outputLimitDrops = 5
        s.clientEOF = 30
        s.clientErrors = 6
        s.localTimeouts = 8
        first, second = self.pools[0].stats, self.pools[1].stats
        first.connects, first.connectFailures, first.errors = 3, 2, 1
        first.timeouts, first.eof = 1, 4
        first.requests, first.requestBytes = 60, 3000
        first.responses, first.responseBytes = 58, 4000
        first.errorReplies, first.failedRequests = 5, 2
        first.latency.observe(0.0003, 50)
        first.latency.observe(0.02, 8)
        second.requests, second.responses = 30, 30
        second.failedRequests = 1
        self.check(0).state = "up"
        self.check(1).state = "down"
        self.check(1).ejections = 2
        self.check(1).ejectedAt = EPOCH - 0.5


def samples(text):
    """
    The samples of a Prometheus text page as C{{(name, labels): value}},
    labels as a sorted tuple of pairs.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


class PercentileTests(SynchronousTestCase):
    def histogram(self, *bucketCounts):
        counts = [0] * (len(LATENCY_BOUNDS) + 1)
        for index, count in bucketCounts:
            counts[index] = count
        return {"counts": counts, "sum": 0.0, "count": sum(counts)}

    def test_emptyHistogramHasNoEstimate(self):
        self.assertIsNone(percentile(self.histogram(), 0.5))

    def test_upperBoundOfTheBucketHoldingTheRank(self):
        latency = self.histogram((0, 50), (3, 40), (6, 10))
        self.assertEqual(percentile(latency, 0.5), LATENCY_BOUNDS[0])
        self.assertEqual(percentile(latency, 0.51), LATENCY_BOUNDS[3])
        self.assertEqual(percentile(latency, 0.9), LATENCY_BOUNDS[3])
        self.assertEqual(percentile(latency, 0.91), LATENCY_BOUNDS[6])
        self.assertEqual(percentile(latency, 0.99), LATENCY_BOUNDS[6])
        self.assertEqual(percentile(latency, 1), LATENCY_BOUNDS[6])
        self.assertEqual(percentile(latency, 0), LATENCY_BOUNDS[0])

    def test_floatingPointRankIsNotRoundedUp(self):
        """
        0.07 * 100 is 7.000000000000001 in floating point; the 7th of 100
        requests is still the p7.
        """
        latency = self.histogram((0, 7), (1, 93))
        self.assertEqual(percentile(latency, 0.07), LATENCY_BOUNDS[0])

    def test_slowerThanTheLastBound(self):
        latency = self.histogram((0, 1), (len(LATENCY_BOUNDS), 99))
        self.assertEqual(percentile(latency, 0.99), math.inf)

    def test_observedLatencies(self):
        """
        Against L{rmux.stats.LatencyHistogram}'s own bucketing.
        """
        listener = Listener()
        listener.busy()
        latency = listener.snapshot()["backends"][0]["latency"]
        self.assertEqual(percentile(latency, 0.5), 0.0005)
        self.assertEqual(percentile(latency, 0.99), 0.025)

    def test_quantileOutOfRange(self):
        latency = self.histogram((0, 1))
        self.assertRaises(ValueError, percentile, latency, 1.5)
        self.assertRaises(ValueError, percentile, latency, -0.1)


class MetricsWantedTests(SynchronousTestCase):
    def config(self, **values):
        return RmuxConfig(listeners=(Listener().config,), **values)

    def test_nothingConfigured(self):
        self.assertFalse(metricsWanted(self.config()))

    def test_anyOfTheThree(self):
        self.assertTrue(metricsWanted(self.config(statsPort=22222)))
        self.assertTrue(metricsWanted(self.config(metricsPort=9121)))
        self.assertTrue(metricsWanted(self.config(graphite="127.0.0.1:8125")))

    def test_childrenOnlyForWhatIsConfigured(self):
        service = MetricsService(self.config(metricsPort=9121), Clock(), list)
        self.assertIsNone(service.statsPortService)
        self.assertIsNone(service.statsdService)
        self.assertEqual(list(service), [service.metricsPortService])
        service = MetricsService(
            self.config(statsPort=22222, graphite="127.0.0.1:8125", statsInterval=250),
            Clock(), list,
        )
        self.assertEqual(
            {child.name for child in service}, {"stats", "statsd"}
        )
        self.assertEqual(service.statsdService.interval, 0.25)
        self.assertEqual(list(MetricsService(self.config(), Clock(), list)), [])


class TwemproxyStatsTests(SynchronousTestCase):
    def test_layout(self):
        """
        Top-level keys, then one pool per listener and one server per
        backend, in nutcracker's order, every number an int.
        """
        listener = Listener()
        listener.busy()
        listener.clock.advance(12.7)
        stats = twemproxyStats([listener.snapshot()], listener.clock.seconds(), "app-1")
        self.assertEqual(
            list(stats),
            ["service", "source", "version", "uptime", "timestamp",
             "total_connections", "curr_connections", "/tmp/rmux-metrics.sock"],
        )
        self.assertEqual(stats["service"], "rmux")
        self.assertEqual(stats["source"], "app-1")
        self.assertEqual(stats["version"], rmux.__version__)
        self.assertEqual(stats["uptime"], 12)
        self.assertEqual(stats["timestamp"], int(EPOCH) + 12)
        pool = stats["/tmp/rmux-metrics.sock"]
        self.assertEqual(list(pool), TWEMPROXY_POOL_KEYS + ["cache-a", "10.0.0.2:6380"])
        for server in ("cache-a", "10.0.0.2:6380"):
            self.assertEqual(list(pool[server]), TWEMPROXY_SERVER_KEYS)

        def numbers(obj):
            for key, value in obj.items():
                if isinstance(value, dict):
                    yield from numbers(value)
                elif key not in ("service", "source", "version"):
                    yield key, value

        for key, value in numbers(stats):
            self.assertIs(type(value), int, key)
        self.assertEqual(json.loads(json.dumps(stats)), stats)

    def test_mapping(self):
        listener = Listener()
        listener.busy()
        stats = twemproxyStats([listener.snapshot()], EPOCH, "h")
        pool = stats["/tmp/rmux-metrics.sock"]
        self.assertEqual(
            [pool[key] for key in TWEMPROXY_POOL_KEYS],
            # eof, errors, connected now, ejections, failed requests, none split
            [30, 6, 0, 2, 3, 0],
        )
        self.assertEqual(
            pool["cache-a"],
            {
                "server_eof": 4, "server_err": 3, "server_timedout": 1,
                "server_connections": 0, "server_ejected_at": 0,
                "requests": 60, "request_bytes": 3000, "responses": 58,
                "response_bytes": 4000, "in_queue": 0, "in_queue_bytes": 0,
                "out_queue": 0, "out_queue_bytes": 0,
            },
        )
        self.assertEqual(
            pool["10.0.0.2:6380"]["server_ejected_at"], int(EPOCH) * 1000000 - 500000
        )
        self.assertEqual(stats["total_connections"], 40 + 3)
        self.assertEqual(stats["curr_connections"], 0)

    def test_topology(self):
        """
        A cluster's counters are pool figures named after the topology and
        the event, and each node says how many slots it serves.
        """
        listener = Listener()
        snapshot = listener.snapshot()
        node = snapshot["backends"][1]["name"]
        snapshot["topology"] = {"kind": "cluster", "counters": {"moved": 3, "map_reads": 7},
                                "nodes": {node: "slots=16384"}}
        pool = twemproxyStats([snapshot], EPOCH, "h")["/tmp/rmux-metrics.sock"]
        self.assertEqual((pool["cluster_moved"], pool["cluster_map_reads"]), (3, 7))
        self.assertEqual(pool[node]["slots"], 16384)
        self.assertNotIn("slots", pool["cache-a"])
        snapshot["topology"] = {"kind": "sentinel", "counters": {"switches": 2},
                                "nodes": {"cache": "master=10.0.0.2:6380"}}
        pool = twemproxyStats([snapshot], EPOCH, "h")["/tmp/rmux-metrics.sock"]
        self.assertEqual(pool["sentinel_switches"], 2)

    def test_queuesAndConnectionsAcrossListeners(self):
        """
        Queues map to twemproxy's in and out queues; the top-level
        connection counts add up every listener's clients and backend
        connections.
        """
        first, second = Listener(), Listener("/tmp/other.sock", ("10.0.0.3:6379",))
        first.busy()
        second.factory.stats.connectionsReceived = 5
        snapshots = [first.snapshot(), second.snapshot()]
        snapshots[0]["clients"]["current"] = 3
        snapshots[0]["backends"][0].update(connections=2, inQueue=4, outQueue=9)
        snapshots[1]["backends"][0].update(connections=1, connects=1)
        stats = twemproxyStats(snapshots, EPOCH, "h")
        self.assertEqual(stats["total_connections"], 43 + 5 + 1)
        self.assertEqual(stats["curr_connections"], 3 + 2 + 1)
        server = stats["/tmp/rmux-metrics.sock"]["cache-a"]
        self.assertEqual(
            (server["server_connections"], server["in_queue"], server["out_queue"]),
            (2, 4, 9),
        )
        self.assertEqual(stats["/tmp/other.sock"]["10.0.0.3:6379"]["server_connections"], 1)

    def test_oneObjectPerConnectionThenClose(self):
        listener = Listener()
        listener.busy()
        factory = TwemproxyStatsFactory(listener.clock, lambda: [listener.snapshot()], "h")
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        written = transport.value()
        self.assertTrue(written.endswith(b"}\n"))
        self.assertEqual(json.loads(written)["/tmp/rmux-metrics.sock"]["client_eof"], 30)

    def test_failingSourceClosesWithoutAnswer(self):
        def broken():
            raise RuntimeError("no snapshot")

        factory = TwemproxyStatsFactory(Clock(), broken, "h")
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class PrometheusTests(SynchronousTestCase):
    def scrape(self, snapshots):
        return samples(generate_latest(MetricsSite(snapshots).registry).decode())

    def test_listenerMetrics(self):
        listener = Listener()
        listener.busy()
        found = self.scrape(lambda: [listener.snapshot()])
        where = (("listener", "/tmp/rmux-metrics.sock"),)
        expected = {
            "rmux_clients_connected": 0,
            "rmux_client_connections_total": 40,
            "rmux_client_connections_rejected_total": 4,
            "rmux_client_eof_total": 30,
            "rmux_client_errors_total": 6,
            "rmux_responses_total": 99,
            "rmux_timeouts_total": 8,
            "rmux_received_bytes_total": 5000,
            "rmux_sent_bytes_total": 6000,
        }
        for name, value in expected.items():
            self.assertEqual(found[name, where], value, name)
        byClass = {
            labels[0][1]: value
            for (name, labels), value in found.items()
            if name == "rmux_requests_total"
        }
        self.assertEqual(
            byClass,
            {"forward": 90, "local": 7, "stateful": 0, "blocking": 0, "pubsub": 0,
             "refused": 3, "invalid": 0},
        )
        byKind = {
            labels[0][1]: value
            for (name, labels), value in found.items()
            if name == "rmux_errors_total"
        }
        self.assertEqual(byKind, {"protocol": 2, "auth": 1, "refused": 3, "output_limit": 5})

    def test_topologyEvents(self):
        """
        A cluster's or Sentinel group's counters are one family, labelled
        with the topology and the event; configured servers have none.
        """
        listener = Listener()
        plain = listener.snapshot()
        cluster = listener.snapshot()
        cluster["listener"] = "/tmp/cluster.sock"
        cluster["topology"] = {"kind": "cluster", "counters": {"moved": 3, "ask": 1},
                               "nodes": {"127.0.0.1:7000": "slots=16384"}}
        found = self.scrape(lambda: [plain, cluster])
        events = {
            dict(labels)["event"]: (dict(labels)["topology"], value)
            for (name, labels), value in found.items()
            if name == "rmux_topology_events_total"
        }
        self.assertEqual(events, {"moved": ("cluster", 3), "ask": ("cluster", 1)})

    def test_backendMetrics(self):
        listener = Listener()
        listener.busy()
        found = self.scrape(lambda: [listener.snapshot()])

        def labels(backend, **more):
            pairs = dict(listener="/tmp/rmux-metrics.sock", backend=backend, **more)
            return tuple(sorted(pairs.items()))

        a, b = labels("cache-a"), labels("10.0.0.2:6380")
        expected = {
            "rmux_backend_requests_total": (60, 30),
            "rmux_backend_responses_total": (58, 30),
            "rmux_backend_sent_bytes_total": (3000, 0),
            "rmux_backend_received_bytes_total": (4000, 0),
            "rmux_backend_error_replies_total": (5, 0),
            "rmux_backend_failed_requests_total": (2, 1),
            "rmux_backend_errors_total": (1, 0),
            "rmux_backend_timeouts_total": (1, 0),
            "rmux_backend_eof_total": (4, 0),
            "rmux_backend_connects_total": (3, 0),
            "rmux_backend_connect_failures_total": (2, 0),
            "rmux_backend_ejections_total": (0, 2),
            "rmux_backend_up": (1, 0),
            "rmux_backend_connections": (0, 0),
            "rmux_backend_connections_in_use": (0, 0),
            "rmux_backend_pinned_connections": (0, 0),
            "rmux_backend_in_queue": (0, 0),
            "rmux_backend_out_queue": (0, 0),
        }
        for name, (first, second) in expected.items():
            self.assertEqual((found[name, a], found[name, b]), (first, second), name)

    def test_latencyHistogram(self):
        """
        Cumulative buckets over L{LATENCY_BOUNDS} and C{+Inf}, the sum and
        the count.
        """
        listener = Listener()
        listener.busy()
        listener.pools[0].stats.latency.observe(9.0)
        found = self.scrape(lambda: [listener.snapshot()])
        where = {"listener": "/tmp/rmux-metrics.sock", "backend": "cache-a"}

        def bucket(le):
            key = tuple(sorted(dict(where, le=le).items()))
            return found["rmux_backend_latency_seconds_bucket", key]

        self.assertEqual(bucket("0.0001"), 0)
        self.assertEqual(bucket("0.00025"), 0)
        self.assertEqual(bucket("0.0005"), 50)
        self.assertEqual(bucket("0.01"), 50)
        self.assertEqual(bucket("0.025"), 58)
        self.assertEqual(bucket("5.0"), 58)
        self.assertEqual(bucket("+Inf"), 59)
        plain = tuple(sorted(where.items()))
        self.assertEqual(found["rmux_backend_latency_seconds_count", plain], 59)
        self.assertAlmostEqual(
            found["rmux_backend_latency_seconds_sum", plain], 50 * 0.0003 + 8 * 0.02 + 9.0
        )
        buckets = [
            key for (name, key) in found if name == "rmux_backend_latency_seconds_bucket"
        ]
        self.assertEqual(len(buckets), 2 * (len(LATENCY_BOUNDS) + 1))

    def test_readAtScrapeTime(self):
        listener = Listener()
        site = MetricsSite(lambda: [listener.snapshot()])
        where = (("listener", "/tmp/rmux-metrics.sock"),)
        first = samples(generate_latest(site.registry).decode())
        listener.factory.stats.bytesIn = 123
        second = samples(generate_latest(site.registry).decode())
        self.assertEqual(first["rmux_received_bytes_total", where], 0)
        self.assertEqual(second["rmux_received_bytes_total", where], 123)


class StatsdReportTests(SynchronousTestCase):
    def test_names(self):
        self.assertEqual(statsdName("/tmp/rmux.sock"), "tmp_rmux_sock")
        self.assertEqual(statsdName("127.0.0.1:6379"), "127_0_0_1_6379")
        self.assertEqual(statsdName("[::1]:6379"), "1_6379")
        self.assertEqual(statsdName("cache-a"), "cache-a")
        self.assertEqual(statsdName("a|b c"), "a_b_c")

    def test_countersAreDeltasGaugesAreValues(self):
        listener = Listener()
        listener.busy()
        report = StatsdReport()
        first = report.lines([listener.snapshot()])
        base = "rmux.tmp_rmux-metrics_sock"
        for line in (
            base + ".clients:0|g",
            base + ".connections:40|c",
            base + ".requests:100|c",
            base + ".requests_by_class.forward:90|c",
            base + ".errors.output_limit:5|c",
            base + ".backend.cache-a.requests:60|c",
            base + ".backend.cache-a.up:1|g",
            base + ".backend.10_0_0_2_6380.ejections:2|c",
            base + ".backend.10_0_0_2_6380.up:0|g",
            base + ".backend.cache-a.in_queue:0|g",
        ):
            self.assertIn(line, first)
        self.assertFalse([line for line in first if line.endswith("|ms")])

        listener.factory.stats.commands += 5
        listener.factory.stats.connectionsReceived += 1
        listener.pools[0].stats.requests += 5
        second = report.lines([listener.snapshot()])
        counters = sorted(line for line in second if line.endswith("|c"))
        self.assertEqual(
            counters,
            sorted([
                base + ".connections:1|c",
                base + ".requests:5|c",
                base + ".requests_by_class.forward:5|c",
                base + ".backend.cache-a.requests:5|c",
            ]),
        )
        self.assertIn(base + ".clients:0|g", second)
        self.assertIn(base + ".backend.cache-a.up:1|g", second)

    def test_counterThatWentDownWasReset(self):
        listener = Listener()
        listener.busy()
        report = StatsdReport()
        report.lines([listener.snapshot()])
        listener.pools[0].stats.requests = 7
        lines = report.lines([listener.snapshot()])
        self.assertIn("rmux.tmp_rmux-metrics_sock.backend.cache-a.requests:7|c", lines)

    def test_meanLatencyOfTheInterval(self):
        listener = Listener()
        report = StatsdReport(timing=True)
        latency = listener.pools[0].stats.latency
        latency.observe(0.002, 3)
        latency.observe(0.004, 1)
        name = "rmux.tmp_rmux-metrics_sock.backend.cache-a.latency"
        self.assertIn(name + ":2.500|ms", report.lines([listener.snapshot()]))
        self.assertFalse(
            [line for line in report.lines([listener.snapshot()]) if line.endswith("|ms")]
        )
        latency.observe(0.010, 2)
        self.assertIn(name + ":10.000|ms", report.lines([listener.snapshot()]))


class StatsdDatagramTests(SynchronousTestCase):
    def test_batching(self):
        lines = ["rmux.l.metric%03d:%d|c" % (i, i) for i in range(300)]
        datagrams = statsdDatagrams(lines)
        self.assertGreater(len(datagrams), 1)
        for datagram in datagrams:
            self.assertLessEqual(len(datagram), 1400)
        self.assertEqual(b"\n".join(datagrams).decode().split("\n"), lines)
        # Full: the next line would not have fit.
        for datagram, following in zip(datagrams, datagrams[1:]):
            self.assertGreater(len(datagram) + 1 + len(following.split(b"\n")[0]), 1400)

    def test_exactFitAndOversizedLines(self):
        self.assertEqual(
            statsdDatagrams(["a" * 10, "b" * 9], limit=20), [b"a" * 10 + b"\n" + b"b" * 9]
        )
        self.assertEqual(
            statsdDatagrams(["a" * 10, "b" * 10], limit=20), [b"a" * 10, b"b" * 10]
        )
        self.assertEqual(
            statsdDatagrams(["x", "y" * 30, "z"], limit=20), [b"x", b"y" * 30, b"z"]
        )
        self.assertEqual(statsdDatagrams([]), [])


class FakeUDPPort:
    """
    A connected UDP port that keeps what is written, or raises C{error}.
    """

    def __init__(self, protocol, interface):
        self.protocol = protocol
        self.interface = interface
        self.connectedTo = None
        self.written = []
        self.error = None
        self.listening = True

    def connect(self, host, port):
        self.connectedTo = (host, port)

    def write(self, datagram):
        if self.error is not None:
            raise self.error
        self.written.append(datagram)

    def stopListening(self):
        self.listening = False


class FakeUDPReactor(Clock):
    """
    A L{Clock} that also resolves names (to what the test says) and
    "listens" on UDP with L{FakeUDPPort}s.
    """

    def __init__(self):
        Clock.__init__(self)
        self.ports = []
        self.resolutions = []

    def resolve(self, name):
        return self.resolutions.pop(0)

    def listenUDP(self, port, protocol, interface=""):
        udp = FakeUDPPort(protocol, interface)
        protocol.makeConnection(udp)
        self.ports.append(udp)
        return udp


class StatsdServiceTests(SynchronousTestCase):
    def setUp(self):
        self.listener = Listener()
        self.listener.busy()
        self.reactor = FakeUDPReactor()
        self.events = []

    def service(self, address="statsd.example:8125", snapshots=None, timing=False):
        service = StatsdService(
            self.reactor, snapshots or (lambda: [self.listener.snapshot()]), address,
            10.0, timing,
        )
        service.protocol.log = Logger(observer=self.events.append)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def sentLines(self, port):
        return b"\n".join(port.written).decode().split("\n") if port.written else []

    def test_pushEveryInterval(self):
        self.reactor.resolutions.append(succeed("192.0.2.7"))
        self.service()
        [port] = self.reactor.ports
        self.assertEqual((port.connectedTo, port.interface), (("192.0.2.7", 8125), ""))
        self.reactor.advance(9.9)
        self.assertEqual(port.written, [])
        self.reactor.advance(0.1)
        lines = self.sentLines(port)
        self.assertIn("rmux.tmp_rmux-metrics_sock.requests:100|c", lines)
        self.listener.factory.stats.commands += 1
        del port.written[:]
        self.reactor.advance(10)
        self.assertIn("rmux.tmp_rmux-metrics_sock.requests:1|c", self.sentLines(port))

    def test_addressLiteralsAreNotResolved(self):
        self.service("[::1]:8125")
        [port] = self.reactor.ports
        self.assertEqual((port.connectedTo, port.interface), (("::1", 8125), "::"))

    def test_unresolvableKeepsCountingUntilItCanSend(self):
        """
        While the name cannot be resolved nothing is sent and the failure
        is logged once; the first push that can send carries every count.
        """
        self.reactor.resolutions.extend(
            [fail(DNSLookupError("statsd.example")), fail(DNSLookupError("statsd.example")),
             succeed("192.0.2.7")]
        )
        self.service()
        self.reactor.advance(10)
        self.assertEqual(self.reactor.ports, [])
        self.assertEqual(len(self.events), 1)
        self.listener.factory.stats.commands += 1
        self.reactor.advance(10)
        [port] = self.reactor.ports
        self.assertIn("rmux.tmp_rmux-metrics_sock.requests:101|c", self.sentLines(port))
        self.assertEqual(len(self.events), 1)

    def test_sendErrorsAreLoggedOnceAndIgnored(self):
        self.reactor.resolutions.append(succeed("192.0.2.7"))
        service = self.service()
        [port] = self.reactor.ports
        port.error = OSError(11, "Resource temporarily unavailable")
        self.reactor.advance(10)
        self.reactor.advance(10)
        service.protocol.connectionRefused()
        service.protocol.connectionRefused()
        self.assertEqual(len(self.events), 2)
        port.error = None
        self.listener.factory.stats.commands += 1
        self.reactor.advance(10)
        self.assertIn("rmux.tmp_rmux-metrics_sock.requests:1|c", self.sentLines(port))

    def test_failingSourceDoesNotStopTheLoop(self):
        self.reactor.resolutions.append(succeed("192.0.2.7"))
        calls = []

        def snapshots():
            calls.append(None)
            if len(calls) == 1:
                raise RuntimeError("no snapshot")
            return [self.listener.snapshot()]

        self.service(snapshots=snapshots)
        [port] = self.reactor.ports
        self.reactor.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.reactor.advance(10)
        self.assertIn("rmux.tmp_rmux-metrics_sock.requests:100|c", self.sentLines(port))

    def test_stop(self):
        self.reactor.resolutions.append(succeed("192.0.2.7"))
        service = self.service()
        [port] = self.reactor.ports
        service.stopService()
        self.assertFalse(port.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class _ClockWithRealUDP(Clock):
    """
    Time from a L{Clock}, so a test decides when statsd is pushed; names
    and UDP from the real reactor.
    """

    def resolve(self, name):
        return reactor.resolve(name)

    def listenUDP(self, port, protocol, interface=""):
        return reactor.listenUDP(port, protocol, interface=interface)


class _Receiver(DatagramProtocol):
    def __init__(self):
        self.lines = []

    def datagramReceived(self, datagram, address):
        self.lines.extend(datagram.decode().split("\n"))


def fetch(url, accept=None):
    """
    GET C{url}: its status, content type and body.
    """
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read()


def readUntilClosed(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def twoPorts():
    first = freePort()
    second = freePort()
    while second == first:
        second = freePort()
    return first, second


class ServingTests(TestCase):
    """
    The stats and metrics ports on real sockets, without Redis.
    """

    def setUp(self):
        self.listener = Listener()
        self.listener.busy()
        self.clients = ThreadedClients(self, 2)
        self.statsPort, self.metricsPort = twoPorts()
        self.snapshots = lambda: [self.listener.snapshot()]
        config = RmuxConfig(
            listeners=(self.listener.config,),
            statsPort=self.statsPort,
            metricsPort=self.metricsPort,
        )
        self.service = MetricsService(config, reactor, lambda: self.snapshots())
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.metricsPort, path)

    @inlineCallbacks
    def test_paths(self):
        status, contentType, body = yield self.clients.run(fetch, self.url("/metrics"))
        self.assertEqual(status, 200)
        self.assertTrue(contentType.startswith("text/plain"), contentType)
        found = samples(body.decode())
        self.assertEqual(
            found["rmux_client_connections_total", (("listener", "/tmp/rmux-metrics.sock"),)], 40
        )
        status, contentType, body = yield self.clients.run(fetch, self.url("/"))
        self.assertEqual(status, 200)
        self.assertIn(b'href="/metrics"', body)
        for path in ("/nothing", "/metrics/more", "/metrics/"):
            status, _, _ = yield self.clients.run(fetch, self.url(path))
            self.assertEqual(status, 404, path)

    @inlineCallbacks
    def test_openMetricsWhenAsked(self):
        status, contentType, body = yield self.clients.run(
            fetch, self.url("/metrics"), "application/openmetrics-text; version=1.0.0"
        )
        self.assertEqual(status, 200)
        self.assertTrue(contentType.startswith("application/openmetrics-text"), contentType)
        self.assertTrue(body.endswith(b"# EOF\n"))

    @inlineCallbacks
    def test_failingSourceIs500(self):
        def broken():
            raise RuntimeError("no snapshot")

        self.snapshots = broken
        status, _, body = yield self.clients.run(fetch, self.url("/metrics"))
        self.assertEqual(status, 500)
        self.assertIn(b"could not read its stats", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_statsPort(self):
        answer = yield self.clients.run(readUntilClosed, self.statsPort)
        stats = json.loads(answer)
        self.assertEqual(stats["source"], socket.gethostname())
        self.assertEqual(stats["/tmp/rmux-metrics.sock"]["cache-a"]["requests"], 60)

    def test_portInUse(self):
        """
        A port that cannot be bound fails the start, with its reason.
        """
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        config = RmuxConfig(
            listeners=(self.listener.config,), statsPort=taken.getHost().port
        )
        service = MetricsService(config, reactor, self.snapshots)
        error = self.assertRaises(StartFailure, service.startService)
        self.assertEqual(str(error), "--statsPort=%d (on 127.0.0.1): address already in use"
                         % (taken.getHost().port,))
        self.assertIsInstance(error.__cause__, CannotListenError)


class EndToEndTests(TestCase):
    """
    Real traffic through a real rmux in front of a real redis-server, read
    back through every format.
    """

    timeout = 30

    def setUp(self):
        self.server = startRedis(self)
        self.rmux = startRmux(self, [self.server], poolSize="2")
        self.clients = ThreadedClients(self, 2)
        self.statsPort, self.metricsPort = twoPorts()
        self.snapshots = lambda: [self.rmux.factory.snapshot()]
        config = RmuxConfig(
            listeners=(self.rmux.listener,),
            statsPort=self.statsPort,
            metricsPort=self.metricsPort,
        )
        service = MetricsService(config, reactor, self.snapshots)
        service.startService()
        self.addCleanup(service.stopService)
        self.client = redis.Redis(unix_socket_path=self.rmux.path)
        self.addCleanup(self.clients.run, self.client.close)

    def traffic(self, sets, gets):
        """
        C{sets} SETs then C{gets} GETs, one at a time, from redis-py.
        """

        def run():
            for i in range(sets):
                self.client.set("k%d" % (i,), "v%d" % (i,))
            for i in range(gets):
                assert self.client.get("k%d" % (i,)) == b"v%d" % (i,)

        return self.clients.run(run)

    @inlineCallbacks
    def test_prometheus(self):
        yield self.traffic(10, 5)
        _, _, body = yield self.clients.run(
            fetch, "http://127.0.0.1:%d/metrics" % (self.metricsPort,)
        )
        found = samples(body.decode())
        listener = (("listener", self.rmux.path),)
        backend = tuple(sorted([("listener", self.rmux.path), ("backend", self.server.path)]))
        self.assertEqual(
            found["rmux_requests_total", tuple(sorted(listener + (("class", "forward"),)))], 15
        )
        self.assertEqual(found["rmux_client_connections_total", listener], 1)
        # A new backend connection may first switch its db or protocol
        # (SELECT, HELLO): that is a request too.
        connects = found["rmux_backend_connects_total", backend]
        requests = found["rmux_backend_requests_total", backend]
        self.assertGreaterEqual(connects, 1)
        self.assertTrue(15 <= requests <= 15 + connects, (requests, connects))
        self.assertEqual(found["rmux_backend_responses_total", backend], requests)
        self.assertEqual(found["rmux_backend_up", backend], 1)
        self.assertGreater(found["rmux_backend_sent_bytes_total", backend], 15 * 20)
        self.assertEqual(found["rmux_backend_latency_seconds_count", backend], requests)
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (name, labels), value in found.items()
            if name == "rmux_backend_latency_seconds_bucket"
        )
        self.assertEqual(buckets[-1], (math.inf, requests))
        counts = [value for _, value in buckets]
        self.assertEqual(counts, sorted(counts))
        self.assertGreater(found["rmux_backend_latency_seconds_sum", backend], 0)

    @inlineCallbacks
    def test_statsPort(self):
        yield self.traffic(7, 3)
        stats = json.loads((yield self.clients.run(readUntilClosed, self.statsPort)))
        pool = stats[self.rmux.path]
        server = pool[self.server.path]
        self.assertEqual(server["server_connections"], 1)
        # Perhaps a SELECT or HELLO first on the new connection.
        self.assertIn(server["requests"], (10, 11))
        self.assertEqual(server["responses"], server["requests"])
        self.assertGreater(server["response_bytes"], 0)
        self.assertEqual(pool["client_connections"], 1)
        self.assertEqual(stats["curr_connections"], 2)
        self.assertEqual(list(pool), TWEMPROXY_POOL_KEYS + [self.server.path])

    @inlineCallbacks
    def test_info(self):
        yield self.traffic(4, 4)
        info = yield self.clients.run(self.client.info)
        self.assertEqual(info["rmux_requests_forward"], 8)
        self.assertEqual(
            info["rmux_total_commands_processed"],
            sum(info["rmux_requests_" + name] for name in
                ("forward", "local", "stateful", "blocking", "pubsub", "refused", "invalid")),
        )
        # Every request has its reply, but INFO's own is being written.
        self.assertEqual(info["rmux_total_responses"], info["rmux_total_commands_processed"] - 1)
        for name in ("client_eof", "client_errors", "local_timeouts", "auth_failures"):
            self.assertEqual(info["rmux_" + name], 0, name)
        backend = info["backend0"]
        self.assertEqual(backend["address"], self.server.path)
        self.assertEqual(backend["status"], "up")
        # The 8 requests, and INFO itself, which the server answered too.
        self.assertIn(backend["requests"], (9, 10))
        # INFO's own reply is counted once it has been handed out.
        self.assertIn(backend["responses"], (backend["requests"] - 1, backend["requests"]))
        self.assertEqual((backend["in_queue"], backend["out_queue"]), (0, 0))
        self.assertIn(backend["latency_p50_usec"], [round(b * 1e6) for b in LATENCY_BOUNDS])
        self.assertGreaterEqual(backend["latency_p99_usec"], backend["latency_p50_usec"])

    @inlineCallbacks
    def test_statsd(self):
        """
        Pushes on the interval over real UDP, resolving C{localhost}:
        counters as what changed since the previous push, gauges always.
        """
        receiver = _Receiver()
        udp = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        clock = _ClockWithRealUDP()
        statsd = StatsdService(
            clock, self.snapshots, "localhost:%d" % (udp.getHost().port,), 10.0, True
        )
        statsd.startService()
        self.addCleanup(statsd.stopService)
        while statsd.protocol.transport is None:
            yield deferLater(reactor, 0.01, lambda: None)
        base = "rmux.%s" % (statsdName(self.rmux.path),)
        backend = "%s.backend.%s" % (base, statsdName(self.server.path))

        @inlineCallbacks
        def push():
            del receiver.lines[:]
            clock.advance(10)
            for _ in range(500):
                if backend + ".up:1|g" in receiver.lines:
                    break
                yield deferLater(reactor, 0.01, lambda: None)
            return list(receiver.lines)

        yield self.traffic(10, 5)
        lines = yield push()
        self.assertIn(base + ".requests_by_class.forward:15|c", lines)
        self.assertIn(base + ".connections:1|c", lines)
        self.assertTrue(
            {backend + ".requests:15|c", backend + ".requests:16|c"} & set(lines), lines
        )
        self.assertIn(backend + ".connections:1|g", lines)
        [timer] = [line for line in lines if line.startswith(backend + ".latency:")]
        self.assertTrue(timer.endswith("|ms"))
        self.assertGreater(float(timer.split(":")[1].split("|")[0]), 0)

        yield self.traffic(5, 0)
        lines = yield push()
        self.assertIn(base + ".requests_by_class.forward:5|c", lines)
        self.assertIn(backend + ".requests:5|c", lines)
        self.assertNotIn(base + ".connections:1|c", lines)

        lines = yield push()
        self.assertEqual([line for line in lines if line.endswith("|c")], [])
        self.assertEqual([line for line in lines if line.endswith("|ms")], [])
        self.assertIn(base + ".clients:1|g", lines)
