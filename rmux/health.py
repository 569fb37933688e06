# -*- test-case-name: tests.test_health -*-
"""
The health monitor: a L{LoopingCall} that PINGs every backend on a
connection of its own and marks it up or down with hysteresis.

Checks of different backends are independent and asynchronous, so a hung
server delays nobody else's check; a check still waiting for its reply when
the next round comes is not sent twice.  The monitor also learns what the
proxy must know about its servers (db count, version) on every transition to
up, so SELECT can be validated locally.

A live reload changes the monitor in place (L{HealthMonitor.configure},
L{HealthMonitor.watch}, L{HealthMonitor.unwatch}): the servers that stay
keep their state, so a reload alone never moves a key.
"""

import hiredis
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from rmux import settings
from rmux.interfaces import IHealth
from rmux.pool import BackendPool
from rmux.resp import encodeCommand

UNKNOWN, UP, DOWN = "unknown", "up", "down"

_PING = encodeCommand([b"PING"])
_DATABASES = encodeCommand([b"CONFIG", b"GET", b"databases"])
_INFO_SERVER = encodeCommand([b"INFO", b"server"])


def _decode(reply):
    reader = hiredis.Reader()
    reader.feed(reply)
    return reader.gets()


class _Fact:
    """
    Waiter for one fact-finding request; hands the decoded reply back.
    """

    __slots__ = ("callback",)

    def __init__(self, callback):
        self.callback = callback

    def fill(self, reply):
        if reply[:1] not in (b"-", b"!"):
            try:
                value = _decode(reply)
            except Exception:
                return
            self.callback(value)


class BackendHealth:
    """
    The health of one backend.

    @ivar state: L{UNKNOWN} until the first verdict, then L{UP} or L{DOWN}.
    """

    log = Logger()

    def __init__(self, reactor, address, timeout, fall, rise, onChange=None, tls=None):
        self.address = address
        self.fall = fall
        self.rise = rise
        self.onChange = onChange
        self.pool = BackendPool(
            reactor, address, size=1,
            connectTimeout=timeout, readTimeout=timeout, writeTimeout=timeout, tls=tls,
        )
        self.pool.retryDelay = 0
        self.pool.connectRate = float("inf")
        self.state = UNKNOWN
        self.failures = 0
        self.successes = 0
        self.inFlight = False
        self.lastError = None
        self.databases = None
        self.version = None
        self.ejections = 0
        self.ejectedAt = 0.0
        self.clock = reactor
        self.stopped = False

    def check(self):
        if self.inFlight:
            return
        self.inFlight = True
        self.pool.send(_PING, self)

    def fill(self, reply):
        self.inFlight = False
        if self.stopped:
            # The connection closing under a check of a server taken out
            # of the configuration: no news about it.
            return
        if reply == b"+PONG\r\n":
            self.failures = 0
            self.successes += 1
            if self.state != UP and (self.state == UNKNOWN or self.successes >= self.rise):
                self._learn()
                self._become(UP, None)
        else:
            self.successes = 0
            self.failures += 1
            self.lastError = reply.decode("utf-8", "replace").strip().lstrip("-")
            if self.state != DOWN and (self.state == UNKNOWN or self.failures >= self.fall):
                self._become(DOWN, self.lastError)

    def _become(self, state, why):
        previous, self.state = self.state, state
        if state == DOWN:
            self.ejections += 1
            self.ejectedAt = self.clock.seconds()
        if state == UP:
            self.log.info("backend {address} is up", address=str(self.address))
        else:
            self.log.warn(
                "backend {address} is down: {why}", address=str(self.address), why=why
            )
        if self.onChange is not None:
            self.onChange(self, previous, state)

    def _learn(self):
        def databases(value):
            if isinstance(value, list) and len(value) == 2:
                self.databases = int(value[1])
            elif isinstance(value, dict):
                self.databases = int(next(iter(value.values())))

        def info(value):
            for line in bytes(value).decode("latin-1").splitlines():
                if line.startswith("redis_version:"):
                    self.version = line.split(":", 1)[1].strip()

        self.pool.send(_DATABASES, _Fact(databases))
        self.pool.send(_INFO_SERVER, _Fact(info))

    def configure(self, timeout, fall, rise):
        """
        Take new settings (a live reload); the state and counts are kept.
        """
        self.fall = fall
        self.rise = rise
        pool = self.pool
        pool.configure(1, timeout, timeout, timeout, pool.maxPinned, pool.pinnedWait)

    def stop(self):
        self.stopped = True
        return self.pool.stop()


class _FirstVerdicts:
    """
    Waits until some checks have their first verdict, or the monitor's
    C{startupWait} is over; see L{HealthMonitor.watch}.
    """

    def __init__(self, monitor, checks):
        self.monitor = monitor
        self.pending = set(checks)
        self.deferred = Deferred()
        self._timer = monitor.reactor.callLater(monitor.startupWait, self.finish)

    def verdict(self, check):
        self.pending.discard(check)
        if not self.pending:
            self.finish()

    def finish(self):
        if self in self.monitor._verdictWaiters:
            self.monitor._verdictWaiters.remove(self)
        if self._timer.active():
            self._timer.cancel()
        if not self.deferred.called:
            self.deferred.callback(None)


@implementer(IHealth)
class HealthMonitor:
    """
    Checks every backend of a listener every C{interval} seconds.

    A backend goes down after C{fall} consecutive failed checks and comes
    back after C{rise} consecutive good ones, so one lost PING moves no key;
    the first verdict is taken from the first check.  Until every backend
    has a verdict (at most C{startupWait} seconds after start), the router
    holds requests for it rather than guess.

    @ivar starting: whether the first verdicts are still awaited.
    """

    def __init__(
        self,
        reactor,
        pools,
        interval=settings.seconds("healthInterval"),
        timeout=settings.seconds("remoteConnectTimeout"),
        fall=settings.default("healthFailures"),
        rise=settings.default("healthSuccesses"),
        startupWait=settings.seconds("startupWait"),
    ):
        self.reactor = reactor
        self.checks = {}
        self.interval = interval
        self.timeout = timeout
        self.fall = fall
        self.rise = rise
        self.startupWait = startupWait
        self.starting = False
        self.onChange = []
        self._startWaiters = []
        self._startTimer = None
        self._verdictWaiters = []
        self._loop = self._newLoop()
        for pool in pools:
            self._add(pool)

    def _newLoop(self):
        loop = LoopingCall(self.checkAll)
        loop.clock = self.reactor
        return loop

    def _add(self, pool):
        """
        Start keeping C{pool}'s health, unless it is already kept.

        @return: the new L{BackendHealth}, or L{None}.
        """
        if pool in self.checks:
            return None
        check = self.checks[pool] = BackendHealth(
            self.reactor, pool.address, self.timeout, self.fall, self.rise, self._changed,
            getattr(pool, "tls", None),
        )
        return check

    def start(self):
        if self._loop.running:
            return
        self.starting = True
        self._startTimer = self.reactor.callLater(self.startupWait, self._started)
        self._loop.start(self.interval, now=True)

    def stop(self):
        """
        Stop checking and close the check connections.

        @return: a L{Deferred} that fires once they are closed.
        """
        if self._loop.running:
            self._loop.stop()
        self._started()
        for waiter in list(self._verdictWaiters):
            waiter.finish()
        return DeferredList([check.stop() for check in self.checks.values()])

    # Live reconfiguration

    def configure(self, interval, timeout, fall, rise, startupWait):
        """
        Take new settings while running (a live reload).  Every backend's
        state and counts are kept, so a reload alone never moves a key: a
        lower C{fall} or C{rise} takes effect at the next check.

        @param interval: seconds between two rounds of checks; a change
            restarts the schedule, the first round one new interval away.
        @param timeout: seconds a check may take.
        @param fall: consecutive failed checks that take a backend down.
        @param rise: consecutive good checks that bring it back.
        @param startupWait: the most that L{watch} waits for a new
            backend's first verdict.
        """
        self.timeout = timeout
        self.fall = fall
        self.rise = rise
        self.startupWait = startupWait
        for check in self.checks.values():
            check.configure(timeout, fall, rise)
        if interval != self.interval:
            self.interval = interval
            if self._loop.running:
                self._loop.stop()
                self._loop = self._newLoop()
                self._loop.start(interval, now=False)

    def watch(self, pools):
        """
        Start checking the pools among C{pools} that are not checked yet,
        at once, so that a reload can hold back the new placement until
        its new servers have a verdict (a server that turns out down then
        never takes a key it would fail).

        @return: a L{Deferred} that fires with L{None} when each new pool
            has its first verdict, or after C{startupWait} seconds,
            whichever is first; at once when there is nothing to wait for
            or the monitor is not running.
        """
        added = [check for check in map(self._add, pools) if check is not None]
        if not added or not self._loop.running:
            return succeed(None)
        waiter = _FirstVerdicts(self, added)
        self._verdictWaiters.append(waiter)
        for check in added:
            check.check()
        return waiter.deferred

    def unwatch(self, pools):
        """
        Stop checking C{pools}, servers taken out of the configuration.

        @return: a L{Deferred} that fires when their check connections are
            closed.
        """
        stopping = []
        for pool in pools:
            check = self.checks.pop(pool, None)
            if check is not None:
                stopping.append(check.stop())
                for waiter in list(self._verdictWaiters):
                    waiter.verdict(check)
        return DeferredList(stopping)

    def tlsChanged(self, pools):
        """
        Check C{pools} with their current TLS settings (new certificates,
        after a reload) from the next connection on.
        """
        for pool in pools:
            check = self.checks.get(pool)
            if check is not None:
                check.pool.tls = pool.tls

    def checkAll(self):
        for check in self.checks.values():
            check.check()

    def _changed(self, check, previous, state):
        if previous == UNKNOWN and self._verdictWaiters:
            for waiter in list(self._verdictWaiters):
                waiter.verdict(check)
        for listener in self.onChange:
            listener(check, previous, state)
        if previous == UNKNOWN and self.starting:
            if all(c.state != UNKNOWN for c in self.checks.values()):
                self._started()

    def _started(self):
        self.starting = False
        if self._startTimer is not None:
            if self._startTimer.active():
                self._startTimer.cancel()
            self._startTimer = None
        waiters, self._startWaiters = self._startWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenStarted(self):
        """
        @return: a L{Deferred} that fires once every backend has its first
            verdict or the startup wait is over, or L{None} if that is
            already so.
        """
        if not self.starting:
            return None
        waiter = Deferred()
        self._startWaiters.append(waiter)
        return waiter

    def isUp(self, pool):
        """
        Whether C{pool}'s server may take requests; a server that has no
        verdict yet counts as up once the startup wait is over, and so does
        one this monitor does not watch (a cluster route's node: its
        router judges it).
        """
        check = self.checks.get(pool)
        return check is None or check.state != DOWN

    def states(self):
        return {pool: check.state for pool, check in self.checks.items()}

    def databases(self):
        known = [c.databases for c in self.checks.values() if c.databases is not None]
        return min(known) if known else None

    def redisVersion(self):
        for check in self.checks.values():
            if check.version:
                return check.version
        return None
