"""
Tests for L{rmux.logs}: the level filter, the repeat limiter, syslog, and
how L{configureLogging} puts them in front of the observers logging
begins with.
"""

from __future__ import annotations

import io
import syslog
import types

from twisted.internet.task import Clock
from twisted.logger import LogBeginner, Logger, LogLevel, LogPublisher, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rmux import logs
from rmux.config import BackendAddress, ListenerConfig, RmuxConfig

POOL = "rmux.pool.BackendPool"
DID_NOT_REPLY = "backend {address} {why}; closing that connection"


def rmuxConfig(**flags) -> RmuxConfig:
    listener = ListenerConfig(
        socket="/tmp/rmux-test.sock", backends=(BackendAddress.fromString("localhost:6379"),)
    )
    return RmuxConfig(listeners=(listener,), **flags)


def texts(events) -> list[str]:
    return [formatEvent(event) for event in events]


class LevelFilterTests(SynchronousTestCase):
    """
    Tests for L{logs.levelFilter}.
    """

    def emitAll(self, debug):
        seen = []
        log = Logger(namespace="rmux.test", observer=logs.levelFilter(seen.append, debug))
        for level in LogLevel.iterconstants():
            log.emit(level, "at {name}", name=level.name)
        return texts(seen)

    def test_debugDroppedByDefault(self):
        self.assertEqual(
            self.emitAll(debug=False), ["at info", "at warn", "at error", "at critical"]
        )

    def test_debugShownWithDebug(self):
        self.assertEqual(
            self.emitAll(debug=True), ["at debug", "at info", "at warn", "at error", "at critical"]
        )

    def test_eventsWithoutLevelPass(self):
        """
        An event with no level or namespace is not judged, only debug
        chatter is dropped.
        """
        seen = []
        logs.levelFilter(seen.append)({"log_format": "bare"})
        self.assertEqual(texts(seen), ["bare"])


class RepeatLimiterTests(SynchronousTestCase):
    """
    Tests for L{logs.RepeatLimiter}.
    """

    def setUp(self):
        self.clock = Clock()
        self.seen = []
        self.limiter = logs.RepeatLimiter(self.seen.append, self.clock)

    def logger(self, namespace=POOL):
        return Logger(namespace=namespace, observer=self.limiter)

    def noReply(self, count, address="10.0.0.1:6379", log=None):
        log = log or self.logger()
        for _ in range(count):
            log.warn(DID_NOT_REPLY, address=address, why="did not reply within 500 ms")

    def test_constants(self):
        """
        The documented defaults: 5 of a kind per 10 s, info and above.
        """
        self.assertEqual((logs.REPEAT_BURST, logs.REPEAT_INTERVAL), (5, 10.0))
        self.assertEqual((self.limiter.burst, self.limiter.interval), (5, 10.0))
        self.assertIs(logs.LIMITED_LEVEL, LogLevel.info)

    def test_burstThenSummary(self):
        """
        The first L{REPEAT_BURST} events of a kind are shown; the rest are
        counted, and when the interval ends one event says how many, with
        the namespace and level of the events it stands for and the text of
        the last.
        """
        self.noReply(5)
        self.noReply(6, address="10.0.0.2:6379")
        self.assertEqual(len(self.seen), 5)
        self.clock.advance(9.9)
        self.assertEqual(len(self.seen), 5)
        self.clock.advance(0.1)
        self.assertEqual(len(self.seen), 6)
        summary = self.seen[-1]
        self.assertEqual(
            formatEvent(summary),
            "6 similar messages suppressed in the last 10 s; the last: backend "
            "10.0.0.2:6379 did not reply within 500 ms; closing that connection",
        )
        self.assertEqual(summary["log_namespace"], POOL)
        self.assertIs(summary["log_level"], LogLevel.warn)
        self.assertEqual(summary["log_time"], 10.0)
        self.assertEqual(summary["suppressed"], 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneSuppressed(self):
        self.noReply(6)
        self.clock.advance(10)
        self.assertTrue(
            formatEvent(self.seen[-1]).startswith("1 similar message suppressed in the last 10 s;")
        )

    def test_nextInterval(self):
        """
        After an interval ends, the kind starts afresh: a steady flood shows
        as a burst and a summary per interval.
        """
        for second in range(30):
            self.noReply(10)
            self.clock.advance(1)
        summaries = [e for e in self.seen if "suppressed" in e]
        self.assertEqual(len(self.seen), 3 * (5 + 1))
        self.assertEqual([e["suppressed"] for e in summaries], [95, 95, 95])

    def test_noSummaryWithoutSuppression(self):
        """
        An interval in which nothing was suppressed ends silently, and
        leaves no timer behind.
        """
        self.noReply(5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.noReply(5)
        self.assertEqual(len(self.seen), 10)

    def test_kindsAreIndependent(self):
        """
        Events with another format, or the same format in another
        namespace, are limited separately.
        """
        self.noReply(20)
        self.noReply(3, log=self.logger("rmux.proxy.Proxy"))
        other = self.logger()
        for client in range(3):
            other.info("closing client {id}: it stopped reading its replies", id=client)
        self.assertEqual(len(self.seen), 5 + 3 + 3)
        self.clock.advance(10)
        self.assertEqual(
            [e["suppressed"] for e in self.seen if "suppressed" in e], [15]
        )

    def test_neverLimited(self):
        """
        State changes (the health monitor's lines, events marked with
        L{NEVER_SUPPRESS}), relayed worker lines, other libraries' events,
        stdout, and debug events pass however often they come.
        """
        for namespace in ("rmux.health.BackendHealth", "rmux.workers.ParentService"):
            log = self.logger(namespace)
            for n in range(10):
                log.warn("backend {address} is down: {why}", address=n, why="refused")
        log = self.logger()
        for n in range(10):
            log.warn("backend {address} is back", address=n, rmux_neverSuppress=True)
            log.debug("debug {n}", n=n)
        for namespace in ("twisted.internet.defer", "stdout", "rmuxish"):
            log = self.logger(namespace)
            for n in range(10):
                log.error("{n}", n=n)
        self.assertEqual(len(self.seen), 2 * 10 + 2 * 10 + 3 * 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush(self):
        """
        L{RepeatLimiter.flush} logs the pending summaries at once, for
        shutdown.
        """
        self.noReply(8)
        self.noReply(7, log=self.logger("rmux.proxy.Proxy"))
        self.limiter.flush()
        self.assertEqual([e["suppressed"] for e in self.seen if "suppressed" in e], [3, 2])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(len(self.seen), 12)

    def test_forgetsFinishedKinds(self):
        """
        Formats built at run time cannot make the limiter grow without
        bound: finished intervals are forgotten once many kinds are known.
        """
        self.patch(logs, "_MAX_TRACKED", 10)
        log = self.logger()
        for n in range(10):
            log.warn(f"format {n}")
        self.noReply(6)
        self.clock.advance(10)
        log.warn("one more")
        self.assertEqual(len(self.limiter._windows), 1)

    def test_keepsLogSystem(self):
        """
        A summary keeps the legacy C{log_system} of the events it counts.
        """
        for _ in range(6):
            self.limiter(
                {
                    "log_namespace": POOL,
                    "log_level": LogLevel.warn,
                    "log_format": "x",
                    "log_system": "BackendProtocol,client",
                }
            )
        self.limiter.flush()
        self.assertEqual(self.seen[-1]["log_system"], "BackendProtocol,client")


class FakeSyslog:
    """
    Stands in for the C{syslog} module's C{openlog} and C{syslog}.
    """

    def __init__(self):
        self.opened = []
        self.lines = []

    def openlog(self, prefix, options, facility):
        self.opened.append((prefix, options, facility))

    def syslog(self, priority, message):
        self.lines.append((priority, message))


class SyslogObserverTests(SynchronousTestCase):
    """
    Tests for L{logs.SyslogObserver}.
    """

    def setUp(self):
        self.fake = FakeSyslog()
        self.observer = logs.SyslogObserver(openlog=self.fake.openlog, syslog=self.fake.syslog)
        self.log = Logger(namespace="rmux.test", observer=self.observer)

    def test_opens(self):
        """
        The log is opened once, as C{rmux} with its pid, facility daemon.
        """
        self.assertEqual(self.fake.opened, [("rmux", syslog.LOG_PID, syslog.LOG_DAEMON)])

    def test_priorities(self):
        for level in LogLevel.iterconstants():
            self.log.emit(level, "{name} event", name=level.name)
        self.assertEqual(
            self.fake.lines,
            [
                (syslog.LOG_DEBUG, "debug event"),
                (syslog.LOG_INFO, "info event"),
                (syslog.LOG_WARNING, "warn event"),
                (syslog.LOG_ERR, "error event"),
                (syslog.LOG_CRIT, "critical event"),
            ],
        )

    def test_oneLine(self):
        """
        Each event is one line: a failure adds its exception, not its
        traceback, and line breaks become spaces.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("could not start worker {workerId}", Failure(), workerId=3)
        self.log.warn("worker 1: first\n  second\n")
        self.assertEqual(
            self.fake.lines,
            [
                (
                    syslog.LOG_CRIT,
                    "could not start worker 3: ZeroDivisionError: division by zero",
                ),
                (syslog.LOG_WARNING, "worker 1: first second"),
            ],
        )

    def test_emptyIgnored(self):
        self.observer({"log_level": LogLevel.info, "log_format": ""})
        self.assertEqual(self.fake.lines, [])


def makeBeginner() -> tuple[LogBeginner, LogPublisher, types.SimpleNamespace]:
    """
    A L{LogBeginner} of our own, with its own publisher, stdio and warnings,
    like the global one before twistd begins logging.
    """
    publisher = LogPublisher()
    stdio = types.SimpleNamespace(stdout=io.StringIO(), stderr=io.StringIO())
    warnings = types.SimpleNamespace(showwarning=lambda *a, **k: None)
    return LogBeginner(publisher, io.StringIO(), stdio, warnings), publisher, stdio


class ConfigureLoggingTests(SynchronousTestCase):
    """
    Tests for L{logs.configureLogging}.
    """

    def setUp(self):
        self.clock = Clock()
        self.beginner, self.publisher, self.stdio = makeBeginner()
        self.log = Logger(namespace=POOL, observer=self.publisher)

    def chatter(self):
        self.log.debug("connection {n} opened", n=1)
        for _ in range(7):
            self.log.warn(DID_NOT_REPLY, address="r1:6379", why="did not reply")

    def test_beforeLoggingBegins(self):
        """
        As twistd uses it: configured before logging begins, the observers
        logging then begins with get events through rmux's filters,
        including those buffered until then.
        """
        logs.configureLogging(rmuxConfig(), self.clock, beginner=self.beginner)
        self.chatter()
        seen = []
        self.beginner.beginLoggingTo([seen.append])
        self.chatter()
        self.assertEqual(len(seen), 5)
        self.clock.advance(10)
        self.assertEqual(seen[-1]["suppressed"], 9)

    def test_debug(self):
        logs.configureLogging(rmuxConfig(debug=True), self.clock, beginner=self.beginner)
        seen = []
        self.beginner.beginLoggingTo([seen.append])
        self.chatter()
        self.assertEqual(texts(seen)[0], "connection 1 opened")
        self.assertEqual(len(seen), 6)

    def test_beginnerStillBegins(self):
        """
        Everything else the beginner does when logging begins still happens:
        stdout becomes log events (through the filters).
        """
        logs.configureLogging(rmuxConfig(), self.clock, beginner=self.beginner)
        seen = []
        self.beginner.beginLoggingTo([seen.append], redirectStandardIO=True)
        self.stdio.stdout.write("hello\n")
        self.assertEqual(texts(seen), ["hello"])

    def test_useSyslog(self):
        """
        With C{useSyslog}, events that pass the filters also go to syslog.
        """
        fake = FakeSyslog()
        observer = logs.SyslogObserver(openlog=fake.openlog, syslog=fake.syslog)
        logs.configureLogging(
            rmuxConfig(useSyslog=True), self.clock, beginner=self.beginner, syslogObserver=observer
        )
        seen = []
        self.beginner.beginLoggingTo([seen.append])
        self.chatter()
        self.clock.advance(10)
        self.assertEqual(len(fake.lines), 6)
        self.assertEqual(fake.lines[0][0], syslog.LOG_WARNING)
        self.assertIn("2 similar messages suppressed", fake.lines[-1][1])
        self.assertEqual(len(seen), 6)

    def test_withoutSyslog(self):
        """
        Without C{useSyslog}, syslog is not even opened.
        """
        opened = []
        self.patch(logs._syslog, "openlog", lambda *a: opened.append(a))
        logs.configureLogging(rmuxConfig(), self.clock, beginner=self.beginner)
        self.assertEqual(opened, [])

    def test_observersGiven(self):
        """
        For an embedding program: with C{observers}, logging begins at once,
        to them, behind the filters.
        """
        seen = []
        front = logs.configureLogging(
            rmuxConfig(), self.clock, observers=[seen.append], beginner=self.beginner,
            redirectStandardIO=False,
        )
        self.chatter()
        self.assertEqual(len(seen), 5)
        front({"log_level": LogLevel.debug, "log_format": "dropped", "log_namespace": "x"})
        self.assertEqual(len(seen), 5)
        self.assertIsInstance(self.stdio.stdout, io.StringIO)

    def test_again(self):
        """
        Configuring again replaces the previous arrangement rather than
        filtering twice.
        """
        logs.configureLogging(rmuxConfig(), self.clock, beginner=self.beginner)
        logs.configureLogging(rmuxConfig(debug=True), self.clock, beginner=self.beginner)
        seen = []
        self.beginner.beginLoggingTo([seen.append])
        self.chatter()
        self.clock.advance(10)
        self.assertEqual([e.get("suppressed") for e in seen], [None] * 6 + [2])

    def test_flushAtShutdown(self):
        """
        With a reactor that has system events, pending summaries are logged
        after shutdown rather than lost.
        """
        triggers = []
        reactor = types.SimpleNamespace(
            seconds=self.clock.seconds,
            callLater=self.clock.callLater,
            addSystemEventTrigger=lambda *args: triggers.append(args),
        )
        logs.configureLogging(rmuxConfig(), reactor, beginner=self.beginner)
        seen = []
        self.beginner.beginLoggingTo([seen.append])
        self.chatter()
        [(phase, event, flush)] = triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        flush()
        self.assertEqual(seen[-1]["suppressed"], 2)


class FilteringObserverTests(SynchronousTestCase):
    """
    Tests for L{logs.filteringObserver}, the building block for programs
    that begin logging themselves.
    """

    def test_filtersAndLimits(self):
        clock = Clock()
        seen = []
        log = Logger(namespace=POOL, observer=logs.filteringObserver(seen.append, clock))
        log.debug("hidden")
        for _ in range(6):
            log.warn("again")
        clock.advance(10)
        self.assertEqual(texts(seen)[:5], ["again"] * 5)
        self.assertEqual(seen[5]["suppressed"], 1)
        self.assertEqual(len(seen), 6)
