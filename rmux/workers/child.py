# -*- test-case-name: tests.test_workers -*-
"""
What runs in an rmux worker process (C{python -m rmux.workers.child}): the
ordinary listeners, on sockets inherited from the parent, a channel that
takes new configurations from the parent and notices when it has gone,
stats reports back to it, and log lines it relays.  See L{rmux.workers}.
"""

import argparse
import os
import pickle
import socket
import signal
import sys

from zope.interface import implementer

from twisted.application.internet import TimerService
from twisted.internet import error, fdesc, tcp
from twisted.internet.defer import execute
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    Logger,
    eventAsText,
    globalLogBeginner,
)

from rmux.commands import CommandTable
from rmux.logs import filteringObserver
from rmux.service import ListenerService, Listeners, MemoryTrimmer
from rmux.transport import TCPPort, UNIXPort
from rmux.workers import ipc

__all__ = [
    "WorkerService", "InheritedListenerService", "InheritedPortEndpoint", "StatsReporter",
    "runWorker", "main",
]


class _SharedAccepts:
    """
    A listening port that accepts at most L{maxAccepts} clients per
    wake-up.

    Every worker waits on the same socket and the kernel wakes them all
    when clients arrive.  Twisted's port goes on accepting for as long as
    clients keep coming, up to 100 at a time, so a burst of new clients
    (an application server starting, a benchmark's 50 connections) would
    all go to whichever worker woke first, and stay there: measured, 50
    to 0.  With a cap the others, and the least busy above all, take
    their share (about 30 to 20).  A cap of 1 shares as well but costs
    half as much CPU again per connection when clients reconnect for
    every request (C{redis-benchmark -k 0}), since every accept then
    needs a turn of the event loop of its own.

    @cvar maxAccepts: the cap.
    """

    maxAccepts = 16

    def doRead(self):
        self.numberAccepts = min(self.numberAccepts, self.maxAccepts)
        return super().doRead()


class _InheritedTCPPort(_SharedAccepts, TCPPort):
    """
    A TCP port on a socket inherited from the parent.
    """


class _InheritedUNIXPort(_SharedAccepts, UNIXPort):
    """
    A unix port on a socket inherited from the parent, with the same
    connections as the single-process listener's (L{rmux.transport}).

    The socket file belongs to the parent, which removes it when rmux
    stops; a worker that stops (restarted, or killed by an operator) must
    leave it, or no new client could reach the workers still running.
    """

    def connectionLost(self, reason):
        # unix.Port.connectionLost would unlink the socket file; skip to
        # its base class.  An adopted port holds no lock to release.
        tcp.Port.connectionLost(self, reason)


@implementer(IStreamServerEndpoint)
class InheritedPortEndpoint:
    """
    A server endpoint that adopts a listening socket given to this process
    as a file descriptor.

    This is what L{IReactorSocket.adoptStreamPort} does, with ports of our
    own: they share new clients with the other workers (L{_SharedAccepts}),
    and a unix socket's file is left in place when the port stops (see
    L{_InheritedUNIXPort}).

    The address family is the socket's own, so the worker need not know
    what kind of address the parent bound.
    """

    def __init__(self, reactor, fileno, backlog=50):
        """
        @param reactor: an L{IReactorSocket}.
        @param fileno: the listening socket's file descriptor, closed once
            adopted (the port works on its own duplicate).
        @param backlog: the parent's backlog for the socket: a port may
            call C{listen()} again when it adopts a socket (Twisted's unix
            port does), and must not shrink it.
        """
        self.reactor = reactor
        self.fileno = fileno
        self.backlog = backlog
        self._used = False

    def listen(self, protocolFactory):
        if self._used:
            return execute(self._alreadyListened)
        self._used = True
        return execute(self._adopt, protocolFactory)

    @staticmethod
    def _alreadyListened():
        raise error.AlreadyListened()

    def _adopt(self, factory):
        probe = socket.socket(fileno=self.fileno)
        family = probe.family
        probe.detach()
        fdesc.setNonBlocking(self.fileno)
        if family == socket.AF_UNIX:
            port = _InheritedUNIXPort._fromListeningDescriptor(
                self.reactor, self.fileno, factory
            )
        elif family in (socket.AF_INET, socket.AF_INET6):
            port = _InheritedTCPPort._fromListeningDescriptor(
                self.reactor, self.fileno, family, factory
            )
        else:
            raise error.UnsupportedAddressFamily(family)
        port.backlog = self.backlog
        port.startListening()
        os.close(self.fileno)
        return port


class InheritedListenerService(ListenerService):
    """
    A L{ListenerService} in a worker process: its own pools and health
    monitor, serving on a socket the parent bound.

    @ivar workerId: the number of this worker, from 1; also set on the
        factory (C{factory.workerId}) for INFO.  Single-process rmux has no
        number there (L{None}).
    """

    def __init__(self, listener, reactor, fileno, workerId, table=None, backlog=50):
        """
        @param listener: an L{rmux.config.ListenerConfig}.
        @param reactor: the reactor.
        @param fileno: the listening socket's file descriptor.
        @param workerId: the number of this worker.
        @param table: the L{CommandTable}, shared by the listeners.
        @param backlog: the socket's backlog (see L{InheritedPortEndpoint}).
        """
        self.fileno = fileno
        self.backlog = backlog
        self.workerId = workerId
        ListenerService.__init__(self, listener, reactor, table)
        self.factory.workerId = workerId
        # A worker that cannot serve its socket should die where the
        # parent sees it and restarts it, not idle on with an error logged.
        self.endpointService._raiseSynchronously = True

    def endpoint(self):
        return InheritedPortEndpoint(self.reactor, self.fileno, self.backlog)


class WorkerService(Listeners):
    """
    Everything one worker process runs: every listener of the
    configuration, on the sockets it inherited (the L{RmuxService} of a
    worker).  It reloads (L{Listeners.reload}) the configurations the
    parent sends, never on a signal of its own.

    @ivar listeners: the L{InheritedListenerService}s, in the
        configuration's order.
    """

    def __init__(self, config, reactor, workerId, filenos, backlogs=None):
        """
        @param config: an L{rmux.config.RmuxConfig}.
        @param reactor: the reactor.
        @param workerId: the number of this worker.
        @param filenos: the listening sockets' file descriptors, one per
            listener, in the same order.
        @param backlogs: their backlogs, in the same order; 50 each, as
            Twisted's, if L{None}.
        """
        Listeners.__init__(self, config, reactor)
        self.workerId = workerId
        self.reloadSource = "the parent's configuration"
        MemoryTrimmer(reactor).setServiceParent(self)
        table = CommandTable.default()
        if backlogs is None:
            backlogs = [50] * len(filenos)
        for listener, fileno, backlog in zip(
            config.listeners, filenos, backlogs, strict=True
        ):
            service = InheritedListenerService(
                listener, reactor, fileno, workerId, table, backlog
            )
            service.setServiceParent(self)
            self.listeners.append(service)


class StatsReporter(TimerService):
    """
    Sends the worker's stats to the parent every C{interval} seconds: the
    listeners' snapshots (L{rmux.stats.listenerSnapshot}) as one
    length-prefixed JSON list, on a pipe the parent reads.
    """

    def __init__(self, reactor, writer, snapshots, interval):
        """
        @param reactor: an L{IReactorTime}.
        @param writer: the pipe's transport (its C{write} buffers, so a
            busy parent never blocks the worker).
        @param snapshots: returns the listeners' snapshots.
        @param interval: seconds between two reports.
        """
        TimerService.__init__(self, interval, self.report)
        self.clock = reactor
        self.writer = writer
        self.snapshots = snapshots

    def report(self):
        self.writer.write(ipc.report(self.snapshots()))


class _ParentChannel:
    """
    The worker's stdin, which the parent holds open: messages from the
    parent (new configurations) come in on it, and end of file means the
    parent has gone, so the worker stops rather than serve on as an orphan
    nobody will stop.
    """

    log = Logger()

    def __init__(self, reactor, service):
        """
        @param service: the L{WorkerService} new configurations go to.
        """
        self.reactor = reactor
        self.service = service
        self.stopping = False
        self._frames = ipc.Frames()
        reactor.addSystemEventTrigger("before", "shutdown", self._stopping)

    def _stopping(self):
        # The reactor closes stdin too as it shuts down; that is not news.
        self.stopping = True

    def childDataReceived(self, name, data):
        for message in self._frames.feed(data):
            self.messageReceived(pickle.loads(message))

    def messageReceived(self, message):
        config = message.get("config")
        if config is not None:
            self.service.reload(config).addErrback(
                lambda failure: self.log.failure("rmux: reload failed", failure)
            )

    def childConnectionLost(self, name, reason):
        if self.stopping:
            return
        self.log.info("the parent process has gone: stopping")
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass


_LOUD = frozenset([LogLevel.warn, LogLevel.error, LogLevel.critical])


def _logTo(stdout, stderr):
    """
    A log observer for a worker: each event as text without a time stamp
    (the parent's log adds its own), warnings and errors to C{stderr} so
    that the parent can keep their level, the rest to C{stdout}.
    """
    quiet = FileLogObserver(stdout, lambda event: _asLine(event))
    loud = FileLogObserver(stderr, lambda event: _asLine(event))

    def observe(event):
        (loud if event.get("log_level") in _LOUD else quiet)(event)

    return observe


def _asLine(event):
    return eventAsText(event, includeTimestamp=False, includeSystem=False) + "\n"


def runWorker(
    reactor, workerId, config, filenos, backlogs=None, stdin=0,
    reportFd=None, reportInterval=1.0,
):
    """
    Run one worker until it is told to stop (SIGTERM, SIGINT) or its
    parent goes away.

    @param reactor: the reactor, not yet running.
    @param workerId: the number of this worker.
    @param config: the L{rmux.config.RmuxConfig}.
    @param filenos: see L{WorkerService}.
    @param backlogs: see L{WorkerService}.
    @param stdin: the file descriptor of the channel from the parent.
    @param reportFd: the file descriptor to send stats reports on, or
        L{None} for none.
    @param reportInterval: seconds between two reports.
    @return: the process's exit status.
    """
    from twisted.internet.process import ProcessReader, ProcessWriter

    # The worker's own level filter and repeat limiter: the parent relays
    # its lines as they come.
    globalLogBeginner.beginLoggingTo(
        [filteringObserver(_logTo(sys.stdout, sys.stderr), reactor, config.debug)],
        redirectStandardIO=False,
    )
    log = Logger(namespace="rmux.workers")
    channel = None
    try:
        service = WorkerService(config, reactor, workerId, filenos, backlogs)
        channel = _ParentChannel(reactor, service)
        if reportFd is not None:
            writer = ProcessWriter(reactor, channel, "reports", reportFd)
            StatsReporter(
                reactor, writer, service.snapshots, reportInterval
            ).setServiceParent(service)
        service.startService()
    except BaseException:
        log.failure("worker {workerId} could not start", workerId=workerId)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    ProcessReader(reactor, channel, "parent", stdin)
    # Ctrl-C at a terminal signals the parent and its workers alike; the
    # parent stops the workers (SIGTERM) itself, and workers that stopped
    # on their own first would only be logged as dead and rescheduled.
    # A hang-up of the terminal or an operator's "kill -HUP" of the whole
    # group likewise: the parent reloads, and sends the workers the result.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info(
        "worker {workerId} (pid {pid}) serving", workerId=workerId, pid=os.getpid()
    )
    reactor.run()
    return 0


def main(argv=None):
    """
    The entry point of a worker process, C{python -m rmux.workers.child --worker
    N}, started by L{rmux.workers.parent.ParentService} with the listening sockets from file
    descriptor L{ipc.FIRST_LISTENER_FD} on and its configuration on stdin.  Not
    for running by hand.
    """
    parser = argparse.ArgumentParser(
        prog="python -m rmux.workers.child",
        description="An rmux worker process; started by rmux with --maxProcesses.",
    )
    parser.add_argument("--worker", type=int, required=True, help="this worker's number")
    args = parser.parse_args(argv)
    payload = ipc.readMessage(0)
    from twisted.internet import reactor

    return runWorker(
        reactor, args.worker, payload["config"], payload["fds"], payload.get("backlogs"),
        reportFd=payload.get("reportFd"),
        reportInterval=payload.get("reportInterval", 1.0),
    )


if __name__ == "__main__":
    sys.exit(main())
