# -*- test-case-name: tests.test_logs -*-
"""
How rmux's log events reach the operator.

rmux logs through L{twisted.logger}: structured events with a format and
fields, in namespaces under C{rmux} (a class's C{log = Logger()} is named
after its module and class, such as C{rmux.pool.BackendPool}).  Where the
events end up (a file, stdout, syslog) is decided by whoever runs rmux:
twistd, C{twist}, the C{rmux} command, or an embedding program.  This
module adds what rmux's flags ask for, in front of whatever that is:

  - a level filter: debug events are dropped unless C{--debug};
  - a L{RepeatLimiter}: during an outage the same warning can come
    thousands of times a second, and the first few say all there is to
    say, so each kind of event is shown at most L{REPEAT_BURST} times per
    L{REPEAT_INTERVAL} seconds, then one line counts the rest;
  - with C{--useSyslog}, a L{SyslogObserver}: a second copy of every event
    that passes, one line each, at the syslog priority of its level.

twistd (and C{twist}) begin logging only after the plugin's
C{makeService} has returned, with observers of their own choosing
(C{--logfile}, C{--syslog}, C{--logger}).  L{configureLogging}, called
from C{makeService} or a C{.tac} file, therefore does not add an observer
but arranges that the observers logging I{begins with} sit behind rmux's
filters: see L{configureLogging}.
"""

from __future__ import annotations

import syslog as _syslog
from typing import Callable, Iterable

from zope.interface import implementer

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogBeginner,
    LogLevel,
    LogPublisher,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)

__all__ = [
    "REPEAT_BURST",
    "REPEAT_INTERVAL",
    "LIMITED_LEVEL",
    "UNLIMITED_NAMESPACES",
    "NEVER_SUPPRESS",
    "SYSLOG_PREFIX",
    "SYSLOG_FACILITY",
    "SYSLOG_PRIORITIES",
    "RepeatLimiter",
    "SyslogObserver",
    "isLimited",
    "levelFilter",
    "filteringObserver",
    "configureLogging",
]

REPEAT_BURST = 5
"""
How many events of one kind (same namespace, same format) are shown per
L{REPEAT_INTERVAL}; the rest are counted, and the count is logged when the
interval ends.
"""

REPEAT_INTERVAL = 10.0
"""
The length, in seconds, of the interval that L{REPEAT_BURST} applies to.
It starts with the first event of its kind, so a steady flood of one
warning shows as L{REPEAT_BURST} lines and one summary every
L{REPEAT_INTERVAL} seconds.
"""

LIMITED_LEVEL = LogLevel.info
"""
The lowest level that is rate-limited.  Info is included because some
info events are per client ("closing client 42: it stopped reading its
replies") and come in floods as readily as warnings; debug events are
only shown with C{--debug}, where every one is wanted.
"""

UNLIMITED_NAMESPACES = ("rmux.health", "rmux.workers")
"""
Namespaces whose events are never suppressed.  The health monitor logs
backend state changes, one line per change and per backend, and losing
one would leave the log saying a backend is down when it is up.  The
worker supervisor relays its workers' lines (already limited in each
worker, where they can be told apart) and its own restarts are paced by a
back-off.
"""

NEVER_SUPPRESS = "rmux_neverSuppress"
"""
An event key: an event with a true value for it is never suppressed, for
events elsewhere that are state changes too (C{log.warn(...,
rmux_neverSuppress=True)}).
"""

_LIMITED_ROOT = "rmux"

_MAX_TRACKED = 1000
"""
How many kinds of event the limiter remembers before it forgets the
finished ones.  Formats are normally constant strings, a few dozen in
all; the bound matters only if something logs with a format built at run
time.
"""

SYSLOG_PREFIX = "rmux"
"""The identity syslog shows on rmux's lines (C{rmux[1234]: ...})."""

SYSLOG_FACILITY = _syslog.LOG_DAEMON
"""rmux is a daemon, and logs as one."""

SYSLOG_PRIORITIES = {
    LogLevel.debug: _syslog.LOG_DEBUG,
    LogLevel.info: _syslog.LOG_INFO,
    LogLevel.warn: _syslog.LOG_WARNING,
    LogLevel.error: _syslog.LOG_ERR,
    LogLevel.critical: _syslog.LOG_CRIT,
}
"""The syslog priority of each L{LogLevel}."""


def isLimited(event: dict) -> bool:
    """
    Whether L{RepeatLimiter} may suppress C{event}: rmux's own events at
    L{LIMITED_LEVEL} or above, except state changes (L{UNLIMITED_NAMESPACES},
    L{NEVER_SUPPRESS}).

    Other libraries' events are left alone: Twisted's, and lines written to
    stdout or stderr, which twistd logs one event per line, all with the
    same format, so that a limit would cut a traceback short.
    """
    namespace = event.get("log_namespace") or ""
    if namespace != _LIMITED_ROOT and not namespace.startswith(_LIMITED_ROOT + "."):
        return False
    level = event.get("log_level")
    if level is None or level < LIMITED_LEVEL or event.get(NEVER_SUPPRESS):
        return False
    return not any(
        namespace == unlimited or namespace.startswith(unlimited + ".")
        for unlimited in UNLIMITED_NAMESPACES
    )


class _Window:
    """
    What L{RepeatLimiter} knows about one kind of event in the current
    interval.

    @ivar ends: When the interval ends, in the reactor's seconds.
    @ivar shown: How many events were passed on.
    @ivar suppressed: How many were not.
    @ivar last: The last suppressed event, which the summary quotes.
    @ivar summary: The delayed call that logs the summary, once something
        has been suppressed.
    """

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.shown = 0
        self.suppressed = 0
        self.last: dict | None = None
        self.summary = None


@implementer(ILogObserver)
class RepeatLimiter:
    """
    Passes events on to an observer, but at most L{burst} of one kind per
    L{interval}; when an interval in which some were suppressed ends, it
    passes on one event that counts them and quotes the last.

    Two events are of one kind when they have the same namespace and the
    same format: "backend {address} {why}; closing that connection" is one
    kind, whatever the address.  Distinct kinds never limit each other.
    The summary has the namespace and level of the events it stands for,
    so it is filed with them.

    Time is the reactor's, so that tests can use a
    L{twisted.internet.task.Clock}.  Like Twisted's own observers, it
    expects events from the reactor thread.

    @ivar burst: Events of one kind shown per interval.
    @ivar interval: The interval, in seconds.
    """

    def __init__(
        self,
        observer: ILogObserver,
        reactor,
        burst: int = REPEAT_BURST,
        interval: float = REPEAT_INTERVAL,
        limited: Callable[[dict], bool] = isLimited,
    ) -> None:
        """
        @param observer: Where events that are not suppressed go.
        @param reactor: An L{IReactorTime}.
        @param burst: See L{REPEAT_BURST}.
        @param interval: See L{REPEAT_INTERVAL}.
        @param limited: Which events may be suppressed; see L{isLimited}.
        """
        self._observer = observer
        self._reactor = reactor
        self.burst = burst
        self.interval = interval
        self._limited = limited
        self._windows: dict[tuple, _Window] = {}

    def __call__(self, event: dict) -> None:
        if not self._limited(event):
            self._observer(event)
            return
        key = (event.get("log_namespace"), event.get("log_format"))
        now = self._reactor.seconds()
        window = self._windows.get(key)
        if window is None or (window.ends <= now and window.summary is None):
            if window is None and len(self._windows) >= _MAX_TRACKED:
                self._forgetFinished(now)
            window = self._windows[key] = _Window(now + self.interval)
        if window.shown < self.burst:
            window.shown += 1
            self._observer(event)
            return
        window.suppressed += 1
        window.last = event
        if window.summary is None:
            window.summary = self._reactor.callLater(
                max(0.0, window.ends - now), self._summarize, key
            )

    def flush(self) -> None:
        """
        Log every pending summary now, rather than when its interval ends:
        for shutdown, so that the last counts are not lost.
        """
        for key, window in list(self._windows.items()):
            if window.summary is not None:
                window.summary.cancel()
                self._summarize(key)

    def _forgetFinished(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if window.ends <= now and window.summary is None:
                del self._windows[key]

    def _summarize(self, key: tuple) -> None:
        window = self._windows.pop(key)
        last = window.last
        assert last is not None
        summary = {
            "log_namespace": last.get("log_namespace"),
            "log_level": last.get("log_level"),
            "log_format": (
                "{suppressed} similar message{plural} suppressed in the last "
                "{interval:g} s; the last: {lastMessage}"
            ),
            "log_time": self._reactor.seconds(),
            "log_source": None,
            "suppressed": window.suppressed,
            "plural": "" if window.suppressed == 1 else "s",
            "interval": self.interval,
            "lastMessage": formatEvent(last),
        }
        if "log_system" in last:
            summary["log_system"] = last["log_system"]
        self._observer(summary)


def levelFilter(observer: ILogObserver, debug: bool = False) -> ILogObserver:
    """
    C{observer} behind a filter that drops debug events unless C{debug}.

    Unlike L{twisted.logger.LogLevelFilterPredicate}, an event without a
    level or namespace is passed on: the filter is for debug chatter, not
    for judging events.
    """
    minimum = LogLevel.debug if debug else LogLevel.info

    def atLeastMinimum(event: dict) -> PredicateResult:
        level = event.get("log_level")
        if level is not None and level < minimum:
            return PredicateResult.no
        return PredicateResult.maybe

    return FilteringLogObserver(observer, [atLeastMinimum])


def filteringObserver(observer: ILogObserver, reactor, debug: bool = False) -> ILogObserver:
    """
    C{observer} behind rmux's level filter and L{RepeatLimiter}.

    This is the building block for programs that start logging themselves;
    an rmux worker process uses it for its own output, and L{configureLogging}
    for twistd's.

    @param observer: Where the events go.
    @param reactor: An L{IReactorTime} for the limiter.
    @param debug: Pass debug events on too (C{--debug}).
    """
    return levelFilter(RepeatLimiter(observer, reactor), debug)


@implementer(ILogObserver)
class SyslogObserver:
    """
    Sends events to syslog, one line each, at the priority of their level
    (L{SYSLOG_PRIORITIES}).

    Unlike L{twisted.python.syslog.SyslogObserver}, which sends everything
    at one priority and a multi-line event as several lines, each event is
    a single line: a failure adds its exception's type and message, while
    its traceback stays in twistd's log, where there is room for it.
    """

    def __init__(
        self,
        prefix: str = SYSLOG_PREFIX,
        facility: int = SYSLOG_FACILITY,
        openlog: Callable[..., None] = _syslog.openlog,
        syslog: Callable[[int, str], None] = _syslog.syslog,
    ) -> None:
        """
        Open the log: syslog keeps one identity per process, so this is done
        once, here.

        @param prefix: The identity on each line, L{SYSLOG_PREFIX}.
        @param facility: L{SYSLOG_FACILITY}.
        @param openlog: L{syslog.openlog}, or a stand-in: tests pass their
            own, as Twisted's tests of its syslog observer do.
        @param syslog: L{syslog.syslog}, or a stand-in.
        """
        openlog(prefix, _syslog.LOG_PID, facility)
        self._syslog = syslog

    def __call__(self, event: dict) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}: {failure.type.__name__}: {failure.getErrorMessage()}"
        line = " ".join(part.strip() for part in text.splitlines() if part.strip())
        if not line:
            return
        priority = SYSLOG_PRIORITIES.get(event.get("log_level"), _syslog.LOG_INFO)
        self._syslog(priority, line)


class _BeginBehind:
    """
    A replacement for a L{LogBeginner}'s C{beginLoggingTo}: the observers
    logging begins with are placed behind rmux's filters, and the beginner
    begins logging to those filters instead.  Everything else the beginner
    does when logging begins (replaying the events buffered until then,
    redirecting stdio and warnings) is left to it.
    """

    def __init__(self, begin, fanOut: LogPublisher, front: ILogObserver) -> None:
        self.original = begin
        self._fanOut = fanOut
        self._front = front

    def __call__(
        self,
        observers: Iterable[ILogObserver],
        discardBuffer: bool = False,
        redirectStandardIO: bool = True,
    ) -> None:
        for observer in observers:
            self._fanOut.addObserver(observer)
        self.original(
            [self._front], discardBuffer=discardBuffer, redirectStandardIO=redirectStandardIO
        )


def configureLogging(
    config,
    reactor,
    observers: Iterable[ILogObserver] | None = None,
    beginner: LogBeginner = globalLogBeginner,
    syslogObserver: ILogObserver | None = None,
    redirectStandardIO: bool = True,
) -> ILogObserver:
    """
    Put rmux's level filter and L{RepeatLimiter}, and with
    C{config.useSyslog} a L{SyslogObserver}, between rmux's events and the
    observers that log them.

    Without C{observers}, for twistd, C{twist} and C{.tac} files: call this
    before logging begins, as C{makeService} and a C{.tac} file run.  The
    observers that logging will begin with (twistd's, chosen by its
    C{--logfile}, C{--syslog} or C{--logger}) are placed behind the
    filters when it begins: C{beginner.beginLoggingTo} is replaced, on this
    one beginner, by a function that does that and then calls the
    original.  Calling this again replaces the previous arrangement.

    With C{observers}, for embedding programs: logging begins now, to
    those observers behind the filters.  A program that has begun logging
    already can use L{filteringObserver} on its own observer instead.

    @param config: An L{rmux.config.RmuxConfig}; its C{debug} and
        C{useSyslog} are used.
    @param reactor: An L{IReactorTime}: the limiter's clock.  If it is
        also an L{IReactorCore}, pending suppression counts are logged at
        shutdown.
    @param observers: The observers to begin logging to now, or L{None}.
    @param beginner: The L{LogBeginner}; the global one unless given.
    @param syslogObserver: The observer C{useSyslog} adds, instead of a
        new L{SyslogObserver}.
    @param redirectStandardIO: With C{observers}: whether stdout and stderr
        become log events, as L{LogBeginner.beginLoggingTo} does.
    @return: The front of rmux's filters, the observer that logging begins
        (or began) with.
    """
    fanOut = LogPublisher()
    limiter = RepeatLimiter(fanOut, reactor)
    front = levelFilter(limiter, config.debug)
    if config.useSyslog:
        fanOut.addObserver(syslogObserver if syslogObserver is not None else SyslogObserver())
    addTrigger = getattr(reactor, "addSystemEventTrigger", None)
    if addTrigger is not None:
        addTrigger("after", "shutdown", limiter.flush)
    installed = vars(beginner).get("beginLoggingTo")
    if isinstance(installed, _BeginBehind):
        beginner.beginLoggingTo = installed.original
    begin = beginner.beginLoggingTo
    if observers is None:
        beginner.beginLoggingTo = _BeginBehind(begin, fanOut, front)
    else:
        for observer in observers:
            fanOut.addObserver(observer)
        begin([front], redirectStandardIO=redirectStandardIO)
    return front
