"""
Tests for L{rmux.health}, driven by a L{MemoryReactorClock}: the checks'
schedule, hysteresis and the startup wait, with no real time passing.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from rmux.config import BackendAddress
from rmux.health import DOWN, UNKNOWN, UP, BackendHealth, HealthMonitor
from rmux.pool import BackendPool

PONG = b"+PONG\r\n"
FAILED = b"-ERR rmux: backend x did not reply within 500 ms\r\n"


def makeHealth(fall=3, rise=2):
    reactor = MemoryReactorClock()
    changes = []
    address = BackendAddress(kind="unix", path="/nonexistent/redis.sock")
    health = BackendHealth(
        reactor, address, 0.5, fall, rise,
        lambda check, previous, state: changes.append((previous, state)),
    )
    return health, changes


class HysteresisTests(SynchronousTestCase):
    def test_firstVerdictIsImmediate(self):
        health, changes = makeHealth()
        health.fill(PONG)
        self.assertEqual(health.state, UP)
        health2, changes2 = makeHealth()
        health2.fill(FAILED)
        self.assertEqual(health2.state, DOWN)

    def test_downAfterConsecutiveFailures(self):
        """
        One or two failed checks move no key; the third in a row does.
        """
        health, changes = makeHealth(fall=3)
        health.fill(PONG)
        health.fill(FAILED)
        health.fill(FAILED)
        health.fill(PONG)
        health.fill(FAILED)
        health.fill(FAILED)
        self.assertEqual(health.state, UP)
        health.fill(FAILED)
        self.assertEqual(health.state, DOWN)
        self.assertEqual(changes, [(UNKNOWN, UP), (UP, DOWN)])

    def test_upAfterConsecutiveSuccesses(self):
        health, changes = makeHealth(rise=2)
        health.fill(FAILED)
        health.fill(PONG)
        health.fill(FAILED)
        health.fill(PONG)
        self.assertEqual(health.state, DOWN)
        health.fill(PONG)
        self.assertEqual(health.state, UP)
        self.assertEqual(changes, [(UNKNOWN, DOWN), (DOWN, UP)])

    def test_anythingButPongFails(self):
        for reply in (b"-LOADING Redis is loading\r\n", b"-NOAUTH x\r\n", b"$4\r\nPONG\r\n"):
            health, changes = makeHealth(fall=1)
            health.fill(PONG)
            health.fill(reply)
            self.assertEqual(health.state, DOWN, reply)


def unixPools(reactor, count):
    """
    Pools for C{count} unix-socket servers that no test connects to.
    """
    return [
        BackendPool(reactor, BackendAddress(kind="unix", path="/r%d.sock" % i))
        for i in range(count)
    ]


class MonitorTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pools = unixPools(self.reactor, 3)
        self.monitor = HealthMonitor(
            self.reactor, self.pools, interval=0.1, timeout=0.5, startupWait=1.0
        )

    def test_checksRunConcurrently(self):
        """
        Every backend's check starts at once; a check still waiting for its
        reply (a hung server) is not sent again, and delays nobody else.
        """
        self.monitor.start()
        self.assertEqual(len(self.reactor.unixClients), 3)
        checks = [self.monitor.checks[pool] for pool in self.pools]
        self.assertTrue(all(c.inFlight for c in checks))
        checks[1].fill(PONG)
        checks[2].fill(PONG)
        self.reactor.advance(0.1)
        self.assertTrue(checks[1].inFlight and checks[2].inFlight)
        self.assertEqual(len(self.reactor.unixClients), 3)

    def test_startupWaitEndsWithVerdicts(self):
        self.monitor.start()
        waiter = self.monitor.whenStarted()
        fired = []
        waiter.addCallback(fired.append)
        for pool in self.pools[:2]:
            self.monitor.checks[pool].fill(PONG)
        self.assertEqual(fired, [])
        self.monitor.checks[self.pools[2]].fill(FAILED)
        self.assertEqual(fired, [None])
        self.assertFalse(self.monitor.starting)
        self.assertIsNone(self.monitor.whenStarted())
        self.assertFalse(self.monitor.isUp(self.pools[2]))

    def test_startupWaitIsBounded(self):
        """
        A server that never answers holds requests at most startupWait,
        then counts as up until a verdict says otherwise.
        """
        self.monitor = HealthMonitor(
            self.reactor, self.pools, interval=0.1, timeout=5.0, startupWait=1.0
        )
        self.monitor.start()
        fired = []
        self.monitor.whenStarted().addCallback(fired.append)
        self.reactor.advance(0.99)
        self.assertEqual(fired, [])
        self.reactor.advance(0.01)
        self.assertEqual(fired, [None])
        self.assertTrue(self.monitor.isUp(self.pools[0]))

    def test_stop(self):
        self.monitor.start()
        self.monitor.stop()
        self.assertFalse(self.monitor.starting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ReconfigureTests(SynchronousTestCase):
    """
    What a live reload asks of the monitor: new settings, new servers to
    check, servers to forget.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pools = unixPools(self.reactor, 3)
        self.monitor = HealthMonitor(
            self.reactor, self.pools[:2], interval=0.1, timeout=0.5, fall=3, rise=2,
            startupWait=1.0,
        )
        self.monitor.start()
        for pool in self.pools[:2]:
            self.monitor.checks[pool].fill(PONG)

    def test_watchWaitsForTheFirstVerdict(self):
        """
        A new server is checked at once, and the reload waits for its
        verdict, not for the next round.
        """
        fired = []
        self.monitor.watch(self.pools).addCallback(fired.append)
        check = self.monitor.checks[self.pools[2]]
        self.assertTrue(check.inFlight)
        self.assertEqual(fired, [])
        check.fill(FAILED)
        self.assertEqual(fired, [None])
        self.assertFalse(self.monitor.isUp(self.pools[2]))
        self.assertTrue(self.monitor.isUp(self.pools[0]))

    def test_watchIsBounded(self):
        self.monitor.configure(0.1, 5.0, 3, 2, 1.0)
        fired = []
        self.monitor.watch([self.pools[2]]).addCallback(fired.append)
        self.reactor.advance(0.99)
        self.assertEqual(fired, [])
        self.reactor.advance(0.01)
        self.assertEqual(fired, [None])

    def test_watchNothingNew(self):
        self.assertIsNone(self.successResultOf(self.monitor.watch(self.pools[:2])))

    def test_unwatch(self):
        """
        A removed server's check stops and closes its connection; a reload
        waiting for its verdict does not wait on.
        """
        fired = []
        self.monitor.watch([self.pools[2]]).addCallback(fired.append)
        check = self.monitor.checks[self.pools[2]]
        self.monitor.unwatch([self.pools[2]])
        self.assertEqual(fired, [None])
        self.assertNotIn(self.pools[2], self.monitor.checks)
        self.assertTrue(check.pool.stopped)

    def test_configureKeepsStates(self):
        """
        New fall, rise and timeout apply to the servers already checked,
        whose states stay; a new interval restarts the schedule.
        """
        first = self.monitor.checks[self.pools[0]]
        self.monitor.configure(interval=1.0, timeout=2.0, fall=1, rise=5, startupWait=3.0)
        self.assertEqual(first.state, UP)
        self.assertEqual((first.fall, first.rise), (1, 5))
        self.assertEqual(first.pool.connectTimeout, 2.0)
        self.assertEqual(self.monitor.startupWait, 3.0)
        first.fill(PONG)
        self.reactor.advance(0.5)
        self.assertFalse(first.inFlight)
        self.reactor.advance(0.5)
        self.assertTrue(first.inFlight)
        first.fill(FAILED)
        self.assertEqual(first.state, DOWN)
        self.monitor.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
