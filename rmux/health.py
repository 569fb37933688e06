# -*- test-case-name: tests.test_health -*-
"""
The health monitor: a L{LoopingCall} that PINGs every backend on a
connection of its own and marks it up or down with hysteresis.

Checks of different backends are independent and asynchronous, so a hung
server delays nobody else's check; a check still waiting for its reply when
the next round comes is not sent twice.  The monitor also learns what the
proxy must know about its servers (db count, version) on every transition to
up, so SELECT can be validated locally.
"""

import hiredis
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

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

    def __init__(self, reactor, address, timeout, fall, rise, onChange=None):
        self.address = address
        self.fall = fall
        self.rise = rise
        self.onChange = onChange
        self.pool = BackendPool(
            reactor, address, size=1,
            connectTimeout=timeout, readTimeout=timeout, writeTimeout=timeout,
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

    def check(self):
        if self.inFlight:
            return
        self.inFlight = True
        self.pool.send(_PING, self)

    def fill(self, reply):
        self.inFlight = False
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

    def stop(self):
        return self.pool.stop()


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
        self, reactor, pools, interval=0.1, timeout=0.5, fall=3, rise=2, startupWait=1.0
    ):
        self.reactor = reactor
        self.checks = {}
        for pool in pools:
            if pool not in self.checks:
                self.checks[pool] = BackendHealth(
                    reactor, pool.address, timeout, fall, rise, self._changed
                )
        self.interval = interval
        self.startupWait = startupWait
        self.starting = False
        self.onChange = []
        self._startWaiters = []
        self._startTimer = None
        self._loop = LoopingCall(self.checkAll)
        self._loop.clock = reactor

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
        return DeferredList([check.stop() for check in self.checks.values()])

    def checkAll(self):
        for check in self.checks.values():
            check.check()

    def _changed(self, check, previous, state):
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
        verdict yet counts as up once the startup wait is over.
        """
        return self.checks[pool].state != DOWN

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
