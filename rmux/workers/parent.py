# -*- test-case-name: tests.test_workers -*-
"""
The parent of rmux's worker processes: it binds every listener's socket,
starts the workers on them, restarts those that die, hands them new
configurations on SIGHUP, and adds up their stats reports.  It serves no
client itself.  See L{rmux.workers} for the whole design.
"""

import json
import os
import sys

from twisted.application.service import MultiService
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger

import rmux
from rmux.reload import (
    HangupHandler,
    NothingToReload,
    ReloadRefused,
    describeChanges,
    describeSource,
    nextConfig,
)
from rmux.service import ListenerService, listenerLabel, metricsService
from rmux.startup import StartFailure, closeNow, describeListenError, notify
from rmux.stats import ListenerStats, combine, listenerSnapshot
from rmux.workers import ipc

__all__ = ["workerCount", "RestartPolicy", "ParentService", "WorkerProtocol", "combineReports"]


class _Unreported:
    """
    Stands for the L{rmux.proxy.ProxyFactory} of a listener no worker has
    reported on yet (they are starting): no client, every counter zero.
    """

    clients = ()

    def __init__(self, listener, clock):
        self.listener = listener
        self.reactor = clock
        self.startedAt = clock.seconds()
        self.stats = ListenerStats()


def _noReport(listener, clock):
    """
    The snapshot of a listener no worker has reported on yet.
    """
    snapshot = listenerSnapshot(_Unreported(listener, clock), [])
    snapshot["workers"] = []
    return snapshot


def combineReports(reports, listeners, clock):
    """
    The listeners' snapshots, each added up over the workers' latest
    reports.

    @param reports: each worker's latest report by its number: a list of
        snapshots, one per listener, in the configuration's order.
    @param listeners: the L{rmux.config.ListenerConfig}s.
    @param clock: an L{IReactorTime}, for a listener nobody reported on.
    @return: one snapshot per listener, in order (see L{rmux.stats.combine}).
    """
    combined = []
    for index, listener in enumerate(listeners):
        mine = [
            report[index]
            for workerId, report in sorted(reports.items())
            if index < len(report)
        ]
        combined.append(combine(mine) if mine else _noReport(listener, clock))
    return combined




def workerCount(config):
    """
    How many worker processes C{config} asks for.

    C{maxProcesses} is per listener in the file's layout, but (like Go
    rmux's GOMAXPROCS, which it sets) it is a property of the whole
    process: every worker serves every listener.  The largest value wins,
    where Go rmux takes the last one, so that the order of the listeners
    in the file does not matter.

    @param config: an L{rmux.config.RmuxConfig}.
    @return: the number of workers; 0 or 1 mean rmux runs in one process.
    """
    return max(listener.maxProcesses for listener in config.listeners)


class RestartPolicy:
    """
    When to start a worker again after it died.

    A worker that had been serving for a while (L{healthyAfter} seconds)
    and dies is restarted after L{minDelay}: a short pause, so that a
    worker killed by the OOM killer or by an operator comes back at once
    but a burst of deaths does not become a burst of forks.  A worker that
    dies sooner than that is probably crashing at startup (a backend
    password file gone, a broken install), and each such death doubles the
    delay, up to L{maxDelay}; so a crash loop settles at one restart per
    L{maxDelay} per worker instead of spinning on the CPU and filling the
    log.  One healthy run resets the delay.

    This is L{twisted.runner.procmon.ProcessMonitor}'s back-off, except
    that even a healthy worker waits L{minDelay}.

    @ivar clock: the L{IReactorTime} to measure lifetimes with.
    """

    def __init__(self, clock, minDelay=0.5, maxDelay=30.0, healthyAfter=10.0):
        """
        @param clock: an L{IReactorTime}.
        @param minDelay: seconds before the first restart.
        @param maxDelay: the longest delay the back-off reaches, in
            seconds.
        @param healthyAfter: how many seconds a worker must have lived for
            its death not to count as a crash loop.
        """
        self.clock = clock
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self.healthyAfter = healthyAfter
        self._delay = minDelay
        self._startedAt = clock.seconds()

    def started(self):
        """
        The worker is being started (again) now.
        """
        self._startedAt = self.clock.seconds()

    def nextDelay(self):
        """
        The worker just died.

        @return: how many seconds to wait before starting it again.
        """
        if self.clock.seconds() - self._startedAt >= self.healthyAfter:
            self._delay = self.minDelay
        delay = self._delay
        self._delay = min(delay * 2, self.maxDelay)
        return delay


class _NoClients(Factory):
    """
    The factory of the parent's own ports, which never accept: should one
    ever be handed a connection, it is closed, since only workers serve.
    """

    noisy = False

    def logPrefix(self):
        return "rmux (for its worker processes)"

    def buildProtocol(self, addr):
        return None


def listenShared(reactor, listener):
    """
    Create, bind and listen on C{listener}'s socket, for worker processes
    to accept on, but do not accept on it here.

    The socket comes from the very endpoint a single-process rmux would
    listen on: that of a L{ListenerService} built (never started) for the
    purpose.  So everything about it is decided in one place, and is as a
    single rmux has it: the unix socket's mode and owner, the lock beside it
    that replaces a stale socket file and refuses to steal a live one, the
    backlog, the TCP options.

    @param reactor: the reactor.
    @param listener: an L{rmux.config.ListenerConfig}.
    @return: the listening port, not reading; its C{stopListening} closes
        the socket and removes the unix socket file and its lock.
    @raise twisted.internet.error.CannotListenError: as a single rmux
        would.
    """
    endpoint = ListenerService(listener, reactor).endpointService.endpoint
    ports, failures = [], []
    endpoint.listen(_NoClients()).addCallbacks(ports.append, failures.append)
    if failures:
        failures[0].raiseException()
    if not ports:
        raise RuntimeError("%r did not listen at once" % (endpoint,))
    (port,) = ports
    # The reactor has not run since listen(), so no client was accepted.
    port.stopReading()
    return port


class WorkerProtocol(ProcessProtocol):
    """
    The parent's end of one worker process: hands it its configuration
    (and later ones), relays its output line by line, passes its stats
    reports on, and tells the L{ParentService} when it has ended.

    @ivar workerId: the worker's number, from 1.
    @ivar pid: the process id, or L{None} before the process exists.
    @ivar maxLineLength: longer output is relayed in pieces this long, so
        a worker that writes without newlines cannot grow the parent.
    """

    maxLineLength = 65536
    pid = None

    def __init__(self, parent, workerId, payload, reportFd=None):
        """
        @param parent: the L{ParentService}.
        @param workerId: the worker's number.
        @param payload: the bytes to write to the worker's stdin first.
        @param reportFd: the worker's file descriptor for stats reports, or
            L{None} if it sends none.
        """
        self.parent = parent
        self.workerId = workerId
        self.payload = payload
        self.reportFd = reportFd
        self._reports = ipc.Frames()
        self._reportsBroken = False
        self._buffers = {}
        self._ended = []
        self._killer = None
        self.exited = False

    def connectionMade(self):
        self.pid = self.transport.pid
        # stdin stays open: it is the worker's lifeline.
        self.transport.write(self.payload)

    def send(self, message):
        """
        Send the worker one message (a picklable C{dict}) on its stdin.
        """
        self.transport.write(ipc.message(message))

    def childDataReceived(self, childFD, data):
        if childFD == self.reportFd:
            self._reportReceived(data)
            return
        buffer = self._buffers.get(childFD, b"") + data
        *lines, buffer = buffer.split(b"\n")
        while len(buffer) >= self.maxLineLength:
            lines.append(buffer[: self.maxLineLength])
            buffer = buffer[self.maxLineLength :]
        self._buffers[childFD] = buffer
        for line in lines:
            self.parent.workerOutput(self.workerId, childFD, line.rstrip(b"\r"))

    def _reportReceived(self, data):
        if self._reportsBroken:
            return
        try:
            messages = self._reports.feed(data)
            reports = [json.loads(message) for message in messages]
        except ValueError as e:
            # Only a broken worker writes this: ignore the rest of what it
            # reports (its next life starts afresh).
            self._reportsBroken = True
            self.parent.log.error(
                "worker {workerId} sent an unreadable stats report: {why}",
                workerId=self.workerId,
                why=str(e),
            )
            return
        for report in reports:
            self.parent.workerReported(self, report)

    def terminate(self, clock, killTime):
        """
        Ask the worker to stop (SIGTERM: it stops accepting, lets its
        clients collect their replies and closes its backend connections),
        and kill it (SIGKILL) if it is still there after C{killTime}
        seconds.
        """
        try:
            self.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return
        self._killer = clock.callLater(killTime, self._kill)

    def _kill(self):
        self._killer = None
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        else:
            self.parent.log.warn(
                "worker {workerId} (pid {pid}) did not stop in time: killed",
                workerId=self.workerId,
                pid=self.pid,
            )

    def whenEnded(self):
        """
        @return: a L{Deferred} that fires with L{None} when the process has
            exited and its output has all been relayed.
        """
        d = Deferred()
        if self.exited:
            d.callback(None)
        else:
            self._ended.append(d)
        return d

    def processEnded(self, reason):
        for childFD, rest in sorted(self._buffers.items()):
            if rest:
                self.parent.workerOutput(self.workerId, childFD, rest)
        self._buffers.clear()
        self.exited = True
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        self._killer = None
        self.parent.workerEnded(self, reason)
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)


def _describeEnd(reason):
    """
    How a worker ended, for the log: C{"exited with status 1"},
    C{"was killed by signal 9"}.
    """
    value = reason.value
    if getattr(value, "signal", None):
        return "was killed by signal %d" % (value.signal,)
    return "exited with status %s" % (getattr(value, "exitCode", None),)


class ParentService(MultiService):
    """
    The twistd process when rmux runs in several processes: it holds the
    listening sockets and keeps L{count} worker processes serving on them.

    SIGHUP re-reads the configuration file, here once, and hands the new
    configuration to every worker (L{reload}); a worker started later, as
    a replacement, gets the one then in force.  The stats and metrics
    ports, when configured, run here, fed by the workers' reports
    (L{snapshots}).

    Binding happens in L{privilegedStartService}, so that under twistd a
    port below 1024 or a socket in a root-owned directory can be bound
    before privileges are shed, and so that "address already in use"
    stops twistd before it starts anything.  The workers are started in
    L{startService}, after privileges are shed.

    @ivar config: the L{rmux.config.RmuxConfig} every worker runs.
    @ivar count: how many workers to run.
    @ivar reports: the latest stats report of each running worker, by
        number: a list of listener snapshots.
    @ivar wantReports: whether workers report their stats; so when a
        metrics service runs here.
    @ivar ports: the listening ports, in the order of the listeners, while
        the service runs.
    @ivar workers: the running workers' L{WorkerProtocol}s by number.
    @ivar minRestartDelay: see L{RestartPolicy.minDelay}.
    @ivar maxRestartDelay: see L{RestartPolicy.maxDelay}.
    @ivar healthyAfter: see L{RestartPolicy.healthyAfter}.
    @ivar killTime: how many seconds a worker may take to stop after
        SIGTERM before it gets SIGKILL; L{None} for the longest
        C{shutdownTimeout} of the listeners (the time its clients get to
        collect the replies they are owed) plus L{killGrace}.
    @ivar killGrace: what a worker gets beyond C{shutdownTimeout} to close
        its backend connections and exit.
    @cvar reloadOnHangup: whether the service handles SIGHUP while it runs
        (see L{rmux.service.RmuxService.reloadOnHangup}).
    """

    log = Logger()
    reloadOnHangup = True

    minRestartDelay = 0.5
    maxRestartDelay = 30.0
    healthyAfter = 10.0
    killTime = None
    killGrace = 5.0

    def __init__(self, config, reactor, count=None):
        """
        @param config: an L{rmux.config.RmuxConfig}.
        @param reactor: an L{IReactorProcess}, L{IReactorTime},
            L{IReactorTCP} and L{IReactorUNIX}.
        @param count: the number of workers; L{workerCount} of C{config}
            if L{None}.
        """
        MultiService.__init__(self)
        self.config = config
        self.reactor = reactor
        self.count = workerCount(config) if count is None else count
        self.ports = []
        self.workers = {}
        self.reports = {}
        self._policies = {}
        self._restarts = {}
        self._payload = None
        self._reportFd = None
        self.metrics = metricsService(config, reactor, self.snapshots)
        if self.metrics is not None:
            self.metrics.setServiceParent(self)
        self.wantReports = self.metrics is not None
        self.hangup = HangupHandler(reactor, self.reload)

    def workerCommand(self, workerId):
        """
        The command line of one worker process; override to start workers
        some other way (a frozen application, a wrapper).

        @return: the executable and its argument list.
        """
        executable = sys.executable
        return executable, [executable, "-m", "rmux.workers.child", "--worker", str(workerId)]

    def workerEnvironment(self):
        """
        The worker's environment: ours, with the directory this rmux was
        imported from first on C{PYTHONPATH}, so that a worker runs the same
        code as its parent even when rmux is not installed (a checkout, the
        tests).
        """
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(rmux.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        env["PYTHONUNBUFFERED"] = "1"
        # The parent is the one systemd hears from.
        env.pop("NOTIFY_SOCKET", None)
        return env

    def _listen(self):
        if self.ports:
            return
        ports = []
        try:
            for listener in self.config.listeners:
                try:
                    ports.append(listenShared(self.reactor, listener))
                except Exception as e:
                    raise StartFailure(
                        describeListenError(listenerLabel(listener), e)) from e
        except BaseException:
            for port in ports:
                closeNow(port)
            raise
        self.ports = ports

    def closeListening(self):
        """
        Close the listening sockets at once (a start that failed after
        they were bound; see L{rmux.startup.StartGuard}).
        """
        ports, self.ports = self.ports, []
        for port in ports:
            closeNow(port)

    def privilegedStartService(self):
        self._listen()
        MultiService.privilegedStartService(self)

    def _makePayload(self):
        """
        What a worker reads first on its stdin: the configuration in force,
        its sockets' descriptors and backlogs, and where and how often to
        report its stats.
        """
        filenos = [ipc.FIRST_LISTENER_FD + i for i in range(len(self.ports))]
        backlogs = [getattr(port, "backlog", 50) for port in self.ports]
        message = {"config": self.config, "fds": filenos, "backlogs": backlogs}
        if self._reportFd is not None:
            message["reportFd"] = self._reportFd
            message["reportInterval"] = ipc.reportInterval(self.config)
        self._payload = ipc.message(message)

    def startService(self):
        self._listen()
        MultiService.startService(self)
        if self.wantReports:
            self._reportFd = ipc.FIRST_LISTENER_FD + len(self.ports)
        self._makePayload()
        if self.reloadOnHangup:
            self.hangup.install()
        for workerId in range(1, self.count + 1):
            self._policies[workerId] = RestartPolicy(
                self.reactor, self.minRestartDelay, self.maxRestartDelay,
                self.healthyAfter,
            )
            self._spawn(workerId)
        self.log.info(
            "rmux: ready: {count} worker processes serving {listeners}",
            count=self.count,
            listeners=", ".join(listener.name for listener in self.config.listeners),
        )
        # The sockets are bound: a client connecting now is queued until a
        # worker accepts it.
        notify("READY=1")

    def _spawn(self, workerId):
        self._restarts.pop(workerId, None)
        protocol = WorkerProtocol(self, workerId, self._payload, self._reportFd)
        childFDs = {0: "w", 1: "r", 2: "r"}
        for index, port in enumerate(self.ports):
            childFDs[ipc.FIRST_LISTENER_FD + index] = port.fileno()
        if self._reportFd is not None:
            childFDs[self._reportFd] = "r"
        executable, args = self.workerCommand(workerId)
        self._policies[workerId].started()
        try:
            self.reactor.spawnProcess(
                protocol, executable, args,
                env=self.workerEnvironment(), childFDs=childFDs,
            )
        except OSError:
            self.log.failure("could not start worker {workerId}", workerId=workerId)
            self._scheduleRestart(workerId)
            return
        self.workers[workerId] = protocol

    def _scheduleRestart(self, workerId):
        delay = self._policies[workerId].nextDelay()
        self._restarts[workerId] = self.reactor.callLater(delay, self._spawn, workerId)
        return delay

    def workerOutput(self, workerId, childFD, line):
        """
        Log one line a worker wrote: its stdout at info level, anything
        else (stderr: its warnings and errors, Python's own complaints) as
        a warning.
        """
        text = line.decode("utf-8", "replace")
        if childFD == 1:
            self.log.info("worker {workerId}: {line}", workerId=workerId, line=text)
        else:
            self.log.warn("worker {workerId}: {line}", workerId=workerId, line=text)

    def workerReported(self, protocol, report):
        """
        A worker sent its stats: keep them until its next report, or until
        it ends.

        @param protocol: the worker's L{WorkerProtocol}.
        @param report: its listeners' snapshots.
        """
        if self.workers.get(protocol.workerId) is protocol:
            self.reports[protocol.workerId] = report

    def snapshots(self):
        """
        Every listener's snapshot, added up over the workers' latest
        reports: the source of the stats and metrics ports.
        """
        return combineReports(self.reports, self.config.listeners, self.reactor)

    def reload(self, newConfig=None):
        """
        Re-read and check the configuration file (or take C{newConfig}),
        once for all workers, and send it to every running worker, which
        applies it as a single rmux would (L{Listeners.reload}) and logs
        what it did.  Workers started afterwards get it on their stdin.

        @param newConfig: an L{rmux.config.RmuxConfig}, or L{None} to
            re-read C{config.configPath}.
        @return: a L{Deferred} that fires with C{True} if the configuration
            was sent, C{False} if it was refused (the running one stays) or
            there was nothing to reload.
        """
        notify("RELOADING=1")
        try:
            return succeed(self._reload(newConfig))
        finally:
            notify("READY=1")

    def _reload(self, newConfig):
        given = newConfig
        try:
            newConfig = nextConfig(self.config, newConfig)
        except NothingToReload as e:
            self.log.info("rmux: nothing to reload: {why}", why=str(e))
            return False
        except ReloadRefused as e:
            self.log.error(
                "rmux: reload refused, the running configuration stays: {why}",
                why=str(e),
            )
            return False
        source = describeSource(self.config, given)
        changes = describeChanges(self.config, newConfig)
        self.config = newConfig
        if self._payload is not None:
            self._makePayload()
        for protocol in list(self.workers.values()):
            protocol.send({"config": newConfig})
        self.log.info(
            "rmux: reloaded {source} for {count} workers: {changes}",
            source=source,
            count=len(self.workers),
            changes=changes,
        )
        return True

    def workerEnded(self, protocol, reason):
        """
        A worker process has ended: forget its stats, and start another in
        its place after the delay of its L{RestartPolicy}, unless we are
        stopping.
        """
        workerId = protocol.workerId
        if self.workers.get(workerId) is protocol:
            del self.workers[workerId]
            self.reports.pop(workerId, None)
        if not self.running:
            return
        delay = self._scheduleRestart(workerId)
        self.log.warn(
            "worker {workerId} (pid {pid}) {how}; restarting it in {delay:.1f} s",
            workerId=workerId,
            pid=protocol.pid,
            how=_describeEnd(reason),
            delay=delay,
        )

    def stopService(self):
        """
        Stop every worker and close the listening sockets (removing the
        unix socket files).

        @return: a L{Deferred} that fires when every worker has exited and
            every socket is closed.
        """
        notify("STOPPING=1")
        self.log.info("rmux: stopping")
        self.hangup.uninstall()
        stopped = MultiService.stopService(self)
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        killTime = self.killTime
        if killTime is None:
            longest = max(
                listener.shutdownTimeout
                for listener in self.config.listeners
            )
            killTime = longest / 1000.0 + self.killGrace
        waiting = []
        for protocol in list(self.workers.values()):
            waiting.append(protocol.whenEnded())
            protocol.terminate(self.reactor, killTime)
        ports, self.ports = self.ports, []
        waiting.extend(maybeDeferred(port.stopListening) for port in ports)
        waiting.append(stopped)

        def done(results):
            for ok, result in results:
                if not ok:
                    self.log.failure("while stopping", result)

        return DeferredList(waiting, consumeErrors=True).addCallback(done)


# The worker's side.


