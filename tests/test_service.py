"""
Tests for L{rmux.service}'s own pieces.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rmux.config import fromFlags
from rmux.service import MemoryTrimmer, RmuxService, _mallocTrim, metricsService


class MemoryTrimmerTests(SynchronousTestCase):
    def test_trimsEveryInterval(self):
        """
        Freed memory is handed back on a timer (glibc's malloc_trim), so
        RSS comes down after a burst.
        """
        clock = Clock()
        trimmer = MemoryTrimmer(clock, interval=30.0)
        calls = []
        trimmer.call = (calls.append, (0,), {})
        trimmer.startService()
        self.addCleanup(trimmer.stopService)
        clock.advance(30)
        clock.advance(30)
        self.assertEqual(calls, [0, 0, 0])

    def test_glibc(self):
        trim = _mallocTrim()
        self.assertIsNotNone(trim, "this Debian machine runs glibc")
        self.assertIn(trim(0), (0, 1))


class MetricsWiringTests(SynchronousTestCase):
    def config(self, **flags):
        values = {"socket": "/nonexistent/rmux.sock", "unixConnections": "/nonexistent/r.sock"}
        values.update(flags)
        return fromFlags(values)

    def test_metricsWhenAsked(self):
        """
        A stats or metrics port or statsd adds a L{MetricsService} beside
        the listeners, reading this process's listeners' snapshots.
        """
        from rmux.metrics import MetricsService

        service = RmuxService(self.config(metricsPort="19999"), Clock())
        self.assertIsInstance(service.metrics, MetricsService)
        self.assertIs(service.metrics.parent, service)
        (snapshot,) = service.snapshots()
        self.assertEqual(snapshot["listener"], "/nonexistent/rmux.sock")
        self.assertEqual(snapshot["workers"], [0])

    def test_noMetrics(self):
        self.assertIsNone(RmuxService(self.config(), Clock()).metrics)
        self.assertIsNone(metricsService(self.config(), Clock(), list))
