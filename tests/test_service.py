"""
Tests for L{rmux.service}'s own pieces.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rmux.service import MemoryTrimmer, _mallocTrim


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
