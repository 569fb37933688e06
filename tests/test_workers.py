"""
Tests for L{rmux.workers}: the restart policy and the parent's bookkeeping
on a fake reactor, then real worker processes sharing a real socket in
front of a real redis-server.
"""

import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import redis
from twisted.internet import error, reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux.config import fromFlags
from rmux.application import makeService
from rmux.service import RmuxService
from rmux.startup import StartFailure
from rmux.stats import listenerSnapshot
from rmux.workers.child import InheritedPortEndpoint, WorkerService
from rmux.workers.ipc import FIRST_LISTENER_FD, Frames, frame
from rmux.workers.parent import ParentService, RestartPolicy, combineReports, workerCount
from tests.redisserver import freePort, startRedis
from tests.test_integration import ThreadedClients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configFor(backend="/nonexistent/redis.sock", **flags):
    values = {"socket": "/nonexistent/rmux.sock", "unixConnections": backend}
    values.update(flags)
    return fromFlags(values)


# The restart policy



def listeningSocket(testCase, prefix):
    """
    A listening, non-blocking unix socket in a fresh temp directory, as the
    parent hands its workers; removed with the directory after the test.

    @return: the directory, the socket's path and the socket.
    """
    directory = tempfile.mkdtemp(prefix=prefix)
    testCase.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "rmux.sock")
    listening = socket.socket(socket.AF_UNIX)
    testCase.addCleanup(listening.close)
    listening.bind(path)
    listening.listen(50)
    listening.setblocking(False)
    return directory, path, listening

class RestartPolicyTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.policy = RestartPolicy(self.clock, minDelay=0.5, maxDelay=4.0, healthyAfter=10)

    def test_firstRestartIsSoon(self):
        """
        A worker that dies is started again after the minimum delay, not at
        once: one death is not a crash loop.
        """
        self.policy.started()
        self.clock.advance(2)
        self.assertEqual(self.policy.nextDelay(), 0.5)

    def test_crashLoopBacksOff(self):
        """
        Each death soon after a start doubles the delay, up to the maximum,
        so a crash loop settles at one restart per C{maxDelay}.
        """
        delays = []
        for _ in range(6):
            self.policy.started()
            self.clock.advance(0.1)
            delay = self.policy.nextDelay()
            delays.append(delay)
            self.clock.advance(delay)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0])

    def test_healthyRunResets(self):
        """
        A worker that served for C{healthyAfter} seconds before dying gets
        the minimum delay again.
        """
        for _ in range(4):
            self.policy.started()
            self.policy.nextDelay()
        self.policy.started()
        self.clock.advance(10)
        self.assertEqual(self.policy.nextDelay(), 0.5)
        self.policy.started()
        self.assertEqual(self.policy.nextDelay(), 1.0)


# The parent, on a fake reactor


class FakePort:
    def __init__(self, fileno, address, backlog):
        self._fileno = fileno
        self.address = address
        self.backlog = backlog
        self.reading = True
        self.listening = True

    def fileno(self):
        return self._fileno

    def stopReading(self):
        self.reading = False

    def stopListening(self):
        self.listening = False


class FakeProcess:
    """
    A spawned process that records the signals it is sent and ends when
    the test says so.
    """

    def __init__(self, protocol, pid, executable, args, env, childFDs):
        self.protocol = protocol
        self.pid = pid
        self.executable = executable
        self.args = args
        self.env = env
        self.childFDs = childFDs
        self.signals = []
        self.written = b""
        self.ended = False

    def write(self, data):
        self.written += data

    def signalProcess(self, name):
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def end(self, exitCode=None, signal=None):
        self.ended = True
        if exitCode == 0:
            reason = error.ProcessDone(0)
        else:
            reason = error.ProcessTerminated(exitCode, signal)
        self.protocol.processEnded(Failure(reason))


class FakeReactor(Clock):
    """
    Just enough of a reactor for L{ParentService}: time, listening and
    spawning, all pretend.
    """

    def __init__(self):
        Clock.__init__(self)
        self.ports = []
        self.processes = []
        self._pids = iter(range(1000, 2000))

    def listenUNIX(self, path, factory, backlog=50, mode=0o666, wantPID=0):
        port = FakePort(20 + len(self.ports), ("unix", path, mode, wantPID), backlog)
        self.ports.append(port)
        return port

    def listenTCP(self, port, factory, backlog=50, interface=""):
        result = FakePort(20 + len(self.ports), ("tcp", interface, port), backlog)
        self.ports.append(result)
        return result

    def spawnProcess(self, protocol, executable, args=(), env={}, path=None,
                     uid=None, gid=None, usePTY=0, childFDs=None):
        process = FakeProcess(protocol, next(self._pids), executable, args, env, childFDs)
        self.processes.append(process)
        protocol.makeConnection(process)
        return process


class ParentServiceTests(SynchronousTestCase):
    def setUp(self):
        # SIGHUP is this process's: see HangupTests for the handler.
        self.patch(ParentService, "reloadOnHangup", False)
        self.reactor = FakeReactor()
        self.events = []
        self.config = configFor(maxProcesses="2")
        self.service = ParentService(self.config, self.reactor)
        self.service.log = Logger(observer=self.events.append)
        self.service.startService()

    def messages(self):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]

    def test_makeService(self):
        """
        C{makeService} runs workers only when C{maxProcesses} asks for more
        than one process; the largest value of any listener wins.
        """
        self.assertIsInstance(makeService(self.config, self.reactor), ParentService)
        for value in ("0", "1"):
            self.assertIsInstance(
                makeService(configFor(maxProcesses=value), self.reactor), RmuxService
            )
        self.assertEqual(workerCount(self.config), 2)

    def test_bindsOnceAndDoesNotAccept(self):
        """
        The parent binds each listener's socket as a single rmux would (with
        its mode, and the lock that refuses to steal a live socket) and
        does not accept on it; binding in C{privilegedStartService} is not
        repeated by C{startService}.
        """
        (port,) = self.reactor.ports
        self.assertEqual(port.address, ("unix", "/nonexistent/rmux.sock", 0o666, True))
        self.assertFalse(port.reading)
        service = ParentService(configFor(maxProcesses="3", socketMode="0600"), self.reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(self.reactor.ports[1].address[2], 0o600)
        self.assertEqual(len(service.workers), 3)

    def test_spawnsWorkers(self):
        """
        Each worker gets its number on its command line, the listening
        socket from fd 3 on, pipes for stdin, stdout and stderr, the rmux
        being run on its C{PYTHONPATH}, and on stdin its configuration and
        the backlog the parent listened with (a single rmux's), which a
        worker must not shrink when it adopts the socket.
        """
        (port,) = self.reactor.ports
        processes = self.reactor.processes
        self.assertEqual(len(processes), 2)
        self.assertEqual(sorted(self.service.workers), [1, 2])
        for number, process in enumerate(processes, 1):
            self.assertEqual(process.executable, sys.executable)
            self.assertEqual(
                process.args,
                [sys.executable, "-m", "rmux.workers.child", "--worker", str(number)],
            )
            self.assertEqual(
                process.childFDs, {0: "w", 1: "r", 2: "r", FIRST_LISTENER_FD: 20}
            )
            self.assertEqual(process.env["PYTHONPATH"].split(os.pathsep)[0], ROOT)
            (length,) = struct.unpack("!I", process.written[:4])
            payload = pickle.loads(process.written[4:])
            self.assertEqual(len(process.written), 4 + length)
            self.assertEqual(
                payload,
                {
                    "config": self.config,
                    "fds": [FIRST_LISTENER_FD],
                    "backlogs": [port.backlog],
                },
            )

    def test_notifiesSystemd(self):
        """
        The parent, not its workers, tells systemd: READY=1 once the
        sockets are bound and the workers started, RELOADING=1 and READY=1
        around a reload, STOPPING=1 when it stops.
        """
        import socket
        import tempfile

        directory = tempfile.mkdtemp(prefix="rmux-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(listener.close)
        listener.bind(path)
        listener.setblocking(False)
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET=path))
        service = ParentService(configFor(maxProcesses="2"), self.reactor)
        service.startService()
        self.assertNotIn("NOTIFY_SOCKET", self.reactor.processes[-1].env)
        service.reload(configFor(maxProcesses="2", poolSize="3"))
        service.stopService()
        received = []
        while True:
            try:
                received.append(listener.recv(64))
            except BlockingIOError:
                break
        self.assertEqual(received, [b"READY=1", b"RELOADING=1", b"READY=1", b"STOPPING=1"])

    def test_restartAfterDelay(self):
        """
        A worker that dies is started again after the restart delay, with
        one log line saying which worker, how it ended and when it comes
        back.
        """
        first = self.reactor.processes[0]
        self.reactor.advance(60)
        first.end(signal=9)
        self.assertNotIn(1, self.service.workers)
        self.assertEqual(
            self.messages()[-1],
            "worker 1 (pid 1000) was killed by signal 9; restarting it in 0.5 s",
        )
        self.reactor.advance(0.4)
        self.assertEqual(len(self.reactor.processes), 2)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.processes), 3)
        self.assertIs(self.service.workers[1].transport, self.reactor.processes[2])
        self.assertEqual(self.reactor.processes[2].args[-1], "1")
        self.assertEqual(len(self.events), 2)

    def test_crashLoopIsRateLimited(self):
        """
        A worker that keeps dying at startup is restarted less and less
        often, up to L{ParentService.maxRestartDelay}.
        """
        reactor = FakeReactor()
        events = []
        service = ParentService(self.config, reactor, count=1)
        service.maxRestartDelay = 2.0
        service.log = Logger(observer=events.append)
        service.startService()
        for _ in range(5):
            reactor.processes[-1].end(exitCode=1)
            reactor.advance(events[-1]["delay"])
        self.assertEqual(len(reactor.processes), 6)
        delays = [e["delay"] for e in events if "delay" in e]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 2.0, 2.0])
        self.assertEqual(
            [e["how"] for e in events if "how" in e], ["exited with status 1"] * 5
        )

    def test_stopTerminatesThenKills(self):
        """
        C{stopService} sends SIGTERM to every worker, SIGKILL to one still
        running after the listeners' C{shutdownTimeout} and
        L{ParentService.killGrace}, closes the listening sockets, and
        fires only when every worker has ended.
        """
        polite, stubborn = self.reactor.processes
        stopped = []
        self.service.stopService().addCallback(stopped.append)
        self.assertEqual((polite.signals, stubborn.signals), (["TERM"], ["TERM"]))
        self.assertFalse(self.reactor.ports[0].listening)
        polite.end(exitCode=0)
        self.reactor.advance(5 + 5 - 0.1)
        self.assertEqual(stubborn.signals, ["TERM"])
        self.assertEqual(stopped, [])
        self.reactor.advance(0.1)
        self.assertEqual(stubborn.signals, ["TERM", "KILL"])
        stubborn.end(signal=9)
        self.assertEqual(stopped, [None])
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertIn("worker 2 (pid 1001) did not stop in time: killed", self.messages())

    def test_killTime(self):
        """
        An explicit L{ParentService.killTime} overrides the one that
        follows C{shutdownTimeout}.
        """
        self.service.killTime = 1.0
        self.service.stopService()
        self.reactor.advance(1.0)
        self.assertEqual(
            [p.signals for p in self.reactor.processes], [["TERM", "KILL"]] * 2
        )

    def test_noRestartAfterStop(self):
        """
        A restart that was waiting when the service stops never happens.
        """
        self.reactor.processes[0].end(exitCode=1)
        stopped = []
        self.service.stopService().addCallback(stopped.append)
        self.reactor.processes[1].end(exitCode=0)
        self.assertEqual(stopped, [None])
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_outputRelayed(self):
        """
        Workers' output reaches the parent's log line by line, with the
        worker's number: stdout as info, stderr as a warning; a line split
        over reads is joined, one never ended is logged when the worker
        ends, and an endless one is cut.
        """
        protocol = self.service.workers[2]
        protocol.maxLineLength = 10
        del self.events[:]
        protocol.childDataReceived(1, b"serving on\n/tmp/")
        protocol.childDataReceived(1, b"x\r\n")
        protocol.childDataReceived(2, b"Traceback")
        protocol.childDataReceived(2, b"0123456789abc")
        self.reactor.processes[1].end(exitCode=1)
        lines = [(e["log_level"].name, e.get("workerId"), e.get("line")) for e in self.events]
        self.assertEqual(
            lines[:5],
            [
                ("info", 2, "serving on"),
                ("info", 2, "/tmp/x"),
                ("warn", 2, "Traceback0"),
                ("warn", 2, "123456789a"),
                ("warn", 2, "bc"),
            ],
        )
        self.assertEqual(self.messages()[0], "worker 2: serving on")

    def messagesTo(self, process):
        """
        The messages a worker got on its stdin.
        """
        return [pickle.loads(m) for m in Frames().feed(process.written)]

    def test_reloadReachesEveryWorker(self):
        """
        A reload is checked once, here, then sent to every worker on its
        stdin after what it got at start; a worker started later gets the
        configuration in force.
        """
        new = configFor(maxProcesses="2", poolSize="3")
        self.assertTrue(self.successResultOf(self.service.reload(new)))
        self.assertIs(self.service.config, new)
        for process in self.reactor.processes:
            first, second = self.messagesTo(process)
            self.assertEqual(first["config"], self.config)
            self.assertEqual(second, {"config": new})
        self.assertEqual(
            self.messages()[-1],
            "rmux: reloaded the new configuration for 2 workers: "
            "listener /nonexistent/rmux.sock: poolSize 20->3",
        )
        self.reactor.processes[0].end(exitCode=1)
        self.reactor.advance(0.5)
        (payload,) = self.messagesTo(self.reactor.processes[2])
        self.assertEqual(payload["config"], new)

    def test_reloadRefusedSendsNothing(self):
        before = [p.written for p in self.reactor.processes]
        self.assertFalse(
            self.successResultOf(self.service.reload(configFor(maxProcesses="3")))
        )
        self.assertIs(self.service.config, self.config)
        self.assertEqual([p.written for p in self.reactor.processes], before)
        self.assertEqual(self.events[-1]["log_level"].name, "error")
        self.assertIn("maxProcesses changed from 2 to 3", self.messages()[-1])

    def startReporting(self):
        reactor = FakeReactor()
        service = ParentService(self.config, reactor)
        service.log = Logger(observer=self.events.append)
        service.wantReports = True
        service.startService()
        return reactor, service

    def test_reportChannel(self):
        """
        With reports wanted, each worker gets a pipe for them after the
        listeners' descriptors, and is told where it is and how often to
        report: every second, or every statsInterval if shorter.
        """
        reactor, service = self.startReporting()
        for process in reactor.processes:
            self.assertEqual(process.childFDs[FIRST_LISTENER_FD + 1], "r")
            (payload,) = self.messagesTo(process)
            self.assertEqual(
                (payload["reportFd"], payload["reportInterval"]),
                (FIRST_LISTENER_FD + 1, 1.0),
            )
        fast = ParentService(configFor(maxProcesses="2", statsInterval="250"), reactor)
        fast.wantReports = True
        fast.startService()
        (payload,) = self.messagesTo(reactor.processes[-1])
        self.assertEqual(payload["reportInterval"], 0.25)

    def test_reportsKeptPerWorker(self):
        """
        The parent keeps each worker's latest report, read however the pipe
        cuts it, combines them per listener, and forgets a worker's report
        when it ends.
        """
        reactor, service = self.startReporting()
        fd = FIRST_LISTENER_FD + 1
        reports = {1: [snapshot(1, clients=2)], 2: [snapshot(2, clients=3)]}
        for workerId, report in reports.items():
            data = frame(json.dumps(report).encode())
            protocol = service.workers[workerId]
            protocol.childDataReceived(fd, data[:3])
            protocol.childDataReceived(fd, data[3:])
        self.assertEqual(service.reports, reports)
        (combined,) = service.snapshots()
        self.assertEqual(combined["workers"], [1, 2])
        self.assertEqual(combined["clients"]["current"], 5)
        reactor.processes[0].end(exitCode=1)
        self.assertEqual(list(service.reports), [2])
        self.assertEqual(service.snapshots()[0]["workers"], [2])
        # Nothing of it reached the log.
        self.assertEqual([e for e in self.events if "line" in e], [])


class FakeFactory:
    """
    What L{listenerSnapshot} reads of a L{rmux.proxy.ProxyFactory}.
    """

    def __init__(self, clients, listener):
        from rmux.stats import ListenerStats

        self.stats = ListenerStats()
        self.stats.connectionsReceived = clients
        self.clients = [object()] * clients
        self.listener = listener
        self.reactor = Clock()
        self.startedAt = 0.0


def snapshot(workerId, clients, listener=None):
    listener = listener or configFor().listeners[0]
    return listenerSnapshot(FakeFactory(clients, listener), [], None, workerId)


class ReportTests(SynchronousTestCase):
    def test_combine(self):
        """
        Each listener's snapshot is the sum of the workers' latest reports
        for it; a listener nobody reported on yet has zeros and no worker.
        """
        listeners = (
            configFor(socket="/a.sock").listeners[0],
            configFor(socket="/b.sock").listeners[0],
        )
        reports = {
            2: [snapshot(2, 4, listeners[0])],
            1: [snapshot(1, 1, listeners[0])],
        }
        first, nobody = combineReports(reports, listeners, Clock())
        self.assertEqual(first["workers"], [1, 2])
        self.assertEqual((first["clients"]["current"], first["clients"]["total"]), (5, 5))
        self.assertEqual(nobody["workers"], [])
        self.assertEqual(nobody["listener"], "/b.sock")
        self.assertEqual(nobody["clients"]["current"], 0)

    def test_frames(self):
        frames = Frames()
        data = frame(b"one") + frame(b"") + frame(b"three")
        self.assertEqual(frames.feed(data[:5]), [])
        self.assertEqual(frames.feed(data[5:]), [b"one", b"", b"three"])
        self.assertRaises(ValueError, Frames().feed, b"\xff\xff\xff\xff")


class HangupTests(SynchronousTestCase):
    def test_installedWhileRunning(self):
        """
        The parent handles SIGHUP from its start to its stop, then puts
        back the handler that was there.
        """
        import signal as signals

        previous = signals.getsignal(signals.SIGHUP)
        reactor = FakeReactor()
        service = ParentService(configFor(maxProcesses="2"), reactor)
        service.startService()
        self.addCleanup(service.hangup.uninstall)
        self.assertEqual(signals.getsignal(signals.SIGHUP), service.hangup._received)
        service.stopService()
        self.assertEqual(signals.getsignal(signals.SIGHUP), previous)


# Real processes


class WorkerServiceTests(TestCase):
    """
    L{WorkerService} in this process, on a socket bound here as the parent
    would: what each worker runs.
    """

    @inlineCallbacks
    def test_servesInheritedSocket(self):
        """
        A worker serves on the socket it is given, knows its number (for
        INFO, on the factory), and leaves the socket file in place when it
        stops, since the parent owns it.
        """
        server = startRedis(self)
        directory, path, listening = listeningSocket(self, "rmux-worker-")
        config = configFor(server.path, socket=path)
        service = WorkerService(config, reactor, 3, [os.dup(listening.fileno())])
        service.startService()
        stopping = []
        self.addCleanup(lambda: stopping or service.stopService())
        (listener,) = service.listeners
        self.assertEqual((listener.workerId, listener.factory.workerId), (3, 3))

        def use():
            client = redis.Redis(unix_socket_path=path, socket_timeout=5)
            try:
                client.set("worker", "3")
                return client.get("worker")
            finally:
                client.close()

        clients = ThreadedClients(self, 2)
        self.assertEqual((yield clients.run(use)), b"3")
        stopping.append(True)
        yield service.stopService()
        self.assertTrue(os.path.exists(path))


class BindingTests(TestCase):
    """
    The parent's socket is a single rmux's: a stale one is replaced, a live
    one is not stolen, and it is gone with its lock after a stop.  (Binding
    only: no workers are started.)
    """

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="rmux-bind-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.path = os.path.join(directory, "rmux.sock")

    def bind(self, **flags):
        service = ParentService(configFor(socket=self.path, **flags), reactor, 2)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        return service

    @inlineCallbacks
    def test_staleSocketReplaced(self):
        """
        A socket file and lock left by a dead rmux are replaced.
        """
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        os.symlink(str(dead.pid), self.path + ".lock")
        service = self.bind(socketMode="0660")
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o660)
        self.assertEqual(os.readlink(self.path + ".lock"), str(os.getpid()))
        yield service.stopService()
        self.assertFalse(os.path.lexists(self.path))
        self.assertFalse(os.path.lexists(self.path + ".lock"))

    def test_liveSocketNotStolen(self):
        """
        A second rmux does not take over the socket of a running one, and
        starts no workers.
        """
        self.bind()
        second = ParentService(configFor(socket=self.path), reactor, 2)
        failure = self.assertRaises(StartFailure, second.startService)
        self.assertIsInstance(failure.__cause__, error.CannotListenError)
        self.assertEqual(second.workers, {})
        self.assertFalse(second.running)


class SharedAcceptTests(TestCase):
    """
    A worker's port takes only a few new clients per wake-up, so that a
    burst of clients is shared among the workers.
    """

    def check(self, family, address):
        listening = socket.socket(family)
        self.addCleanup(listening.close)
        listening.bind(address)
        listening.listen(50)
        listening.setblocking(False)
        address = listening.getsockname()
        clients = []
        for _ in range(5):
            client = socket.socket(family)
            self.addCleanup(client.close)
            client.connect(address)
            clients.append(client)
        accepted = []
        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = lambda addr: accepted.append(addr) or Protocol()
        endpoint = InheritedPortEndpoint(reactor, os.dup(listening.fileno()))
        port = self.successResultOf(endpoint.listen(factory))
        port.stopReading()
        self.addCleanup(port.stopListening)
        port.maxAccepts = 2
        port.doRead()
        self.assertEqual(len(accepted), 2)
        port.doRead()
        self.assertEqual(len(accepted), 4)
        return port

    def test_unix(self):
        directory = tempfile.mkdtemp(prefix="rmux-accept-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.check(socket.AF_UNIX, os.path.join(directory, "rmux.sock"))

    def test_tcp(self):
        port = self.check(socket.AF_INET, ("127.0.0.1", 0))
        self.assertEqual(port.getHost().host, "127.0.0.1")


def info(path, timeout=5):
    """
    The pid of the worker that answers a fresh connection, after a write
    through it.
    """
    client = redis.Redis(unix_socket_path=path, socket_timeout=timeout)
    try:
        server = client.info("rmux")
        pid = server["rmux_process_id"]
        # INFO also says which worker answered.
        if server["rmux_worker"] not in (1, 2):
            raise AssertionError("INFO rmux_worker:%r" % (server["rmux_worker"],))
        client.set("written-by:%d" % pid, pid)
        return pid
    finally:
        client.close()


class ParentProcessTests(TestCase):
    """
    L{ParentService} in this process (as twistd runs it), real worker
    processes, a real redis-server.
    """

    timeout = 30

    def setUp(self):
        self.server = startRedis(self)
        self.directory = tempfile.mkdtemp(prefix="rmux-workers-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "rmux.sock")
        self.clients = ThreadedClients(self, 20)
        self.direct = redis.Redis(unix_socket_path=self.server.path)
        self.addCleanup(self.direct.close)

    def startParent(self, wantReports=False, **flags):
        values = {"socket": self.path, "maxProcesses": "2", "poolSize": "4"}
        values.update(flags)
        service = makeService(configFor(self.server.path, **values), reactor)
        self.assertIsInstance(service, ParentService)
        service.minRestartDelay = 0.2
        service.wantReports = service.wantReports or wantReports
        pids = set()
        # Whatever happens, no worker outlives the test.
        self.addCleanup(self.killAll, pids)
        self.addCleanup(lambda: service.running and service.stopService())
        service.startService()
        service.seen = pids
        self.remember(service)
        return service

    def remember(self, service):
        service.seen.update(w.pid for w in service.workers.values())

    @staticmethod
    def killAll(pids):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def pids(self, service):
        return {w.pid for w in service.workers.values()}

    @inlineCallbacks
    def answeringPids(self, path, expected, deadline=15.0):
        """
        Connect in bursts of concurrent clients until the workers that
        answered are C{expected} (or time runs out).
        """
        seen = set()
        end = time.monotonic() + deadline
        while not expected <= seen and time.monotonic() < end:
            results = yield DeferredList(
                [self.clients.run(info, path) for _ in range(10)], fireOnOneErrback=True
            )
            seen.update(pid for ok, pid in results)
        return seen

    @inlineCallbacks
    def test_workersShareTheSocket(self):
        """
        Two workers both take clients from the one socket the parent bound
        (with the configured mode), and what clients write lands in Redis.
        """
        service = self.startParent(socketMode="0600")
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        workers = self.pids(service)
        self.assertEqual(len(workers), 2)
        self.assertNotIn(os.getpid(), workers)
        seen = yield self.answeringPids(self.path, workers)
        self.assertEqual(seen, workers)

        def write(n):
            client = redis.Redis(unix_socket_path=self.path, socket_timeout=5)
            try:
                for i in range(20):
                    client.set("k:%d:%d" % (n, i), n * i)
                return client.info("rmux")["rmux_process_id"]
            finally:
                client.close()

        results = yield DeferredList(
            [self.clients.run(write, n) for n in range(40)], fireOnOneErrback=True
        )
        self.assertTrue({pid for ok, pid in results} <= workers)
        keys = yield self.clients.run(self.direct.keys, "k:*")
        self.assertEqual(len(keys), 40 * 20)
        self.assertEqual((yield self.clients.run(self.direct.get, "k:39:19")), b"741")
        for pid in workers:
            self.assertEqual(
                (yield self.clients.run(self.direct.get, "written-by:%d" % pid)),
                b"%d" % pid,
            )

    @inlineCallbacks
    def test_killedWorkerIsRestarted(self):
        """
        A worker killed with SIGKILL is replaced; meanwhile and afterwards
        clients are served, and the socket file stays.
        """
        service = self.startParent()
        yield self.answeringPids(self.path, self.pids(service))
        victim = service.workers[1].pid
        survivor = service.workers[2].pid
        os.kill(victim, signal.SIGKILL)
        while service.workers.get(1) is not None and service.workers[1].pid == victim:
            yield deferLater(reactor, 0.01, lambda: None)
        # Until the replacement is up, the other worker serves everyone.
        results = yield DeferredList(
            [self.clients.run(info, self.path) for _ in range(10)], fireOnOneErrback=True
        )
        self.assertTrue(os.path.exists(self.path))
        self.assertTrue({pid for ok, pid in results} <= {survivor} | self.pids(service))
        while 1 not in service.workers:
            yield deferLater(reactor, 0.05, lambda: None)
        self.remember(service)
        replacement = service.workers[1].pid
        self.assertNotEqual(replacement, victim)
        seen = yield self.answeringPids(self.path, {replacement, survivor})
        self.assertEqual(seen, {replacement, survivor})
        self.assertEqual(self.pids(service), {replacement, survivor})

    @inlineCallbacks
    def test_stopEndsEveryWorker(self):
        """
        Stopping the parent stops every worker and removes the socket file
        and its lock; the Deferred fires only once they have all exited.
        """
        service = self.startParent()
        workers = self.pids(service)
        yield self.answeringPids(self.path, workers)
        yield service.stopService()
        self.assertEqual(service.workers, {})
        for pid in workers:
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(os.path.lexists(self.path + ".lock"))

    @inlineCallbacks
    def connectUntilEveryWorker(self, service):
        """
        Connect (INFO) in bursts until every worker has answered.

        @return: how many connections were made.
        """
        workers = self.pids(service)
        seen = set()
        made = 0
        while seen != workers:
            self.assertLess(made, 500, "not every worker answered")
            results = yield DeferredList(
                [self.clients.run(info, self.path) for _ in range(10)], fireOnOneErrback=True
            )
            made += 10
            seen.update(pid for ok, pid in results)
        return made

    @inlineCallbacks
    def waitForReports(self, service, connections):
        end = time.monotonic() + 10
        while service.snapshots()[0]["clients"]["total"] != connections:
            self.assertLess(time.monotonic(), end, service.snapshots()[0]["clients"])
            yield deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def test_workersReportStats(self):
        """
        Each worker reports its counters to the parent, which adds up the
        latest report of each: the parent holds no client, and knows their
        number only from the reports.
        """
        service = self.startParent(wantReports=True)
        made = yield self.connectUntilEveryWorker(service)
        yield self.waitForReports(service, made)
        (combined,) = service.snapshots()
        self.assertEqual(sorted(combined["workers"]), [1, 2])
        self.assertEqual(sorted(service.reports), [1, 2])
        self.assertEqual(combined["listener"], self.path)
        self.assertEqual(combined["backends"][0]["address"], self.server.path)
        self.assertEqual(
            combined["clients"]["total"],
            sum(report[0]["clients"]["total"] for report in service.reports.values()),
        )

    @inlineCallbacks
    def test_metricsAddUpWorkers(self):
        """
        With a metrics port, the parent serves the workers' counters added
        up; INFO in a worker still counts that worker's clients only.
        """
        port = freePort()
        service = self.startParent(metricsPort=str(port))
        self.assertIsNotNone(service.metrics)
        self.assertTrue(service.wantReports)
        made = yield self.connectUntilEveryWorker(service)
        yield self.waitForReports(service, made)

        def scrape():
            from urllib.request import urlopen

            with urlopen("http://127.0.0.1:%d/metrics" % (port,), timeout=5) as page:
                return page.read().decode("utf-8")

        text = yield self.clients.run(scrape)
        self.assertIn(
            'rmux_client_connections_total{listener="%s"} %d.0' % (self.path, made), text
        )

        def ownCount():
            client = redis.Redis(unix_socket_path=self.path, socket_timeout=5)
            try:
                return client.info("rmux")["rmux_total_connections_received"]
            finally:
                client.close()

        # Both workers took clients, so neither has seen all of them; the
        # worker answering counts this INFO connection too, all workers
        # together would say made + 1.
        self.assertLess((yield self.clients.run(ownCount)), made + 1)

    @inlineCallbacks
    def test_tcp(self):
        """
        Workers share a TCP socket too.
        """
        port = freePort()
        service = self.startParent(host="127.0.0.1", port=str(port), socket=None)
        self.assertEqual(service.ports[0].getHost().port, port)

        def tcpInfo():
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
            try:
                client.set("tcp", "yes")
                return client.info("rmux")["rmux_process_id"]
            finally:
                client.close()

        workers = self.pids(service)
        seen = set()
        end = time.monotonic() + 15
        while seen != workers and time.monotonic() < end:
            results = yield DeferredList(
                [self.clients.run(tcpInfo) for _ in range(10)], fireOnOneErrback=True
            )
            seen.update(pid for ok, pid in results)
        self.assertEqual(seen, workers)


class OrphanTests(TestCase):
    """
    A worker whose parent has gone stops by itself.
    """

    def test_exitsWhenStdinCloses(self):
        directory, path, listening = listeningSocket(self, "rmux-orphan-")
        config = configFor(os.path.join(directory, "redis.sock"), socket=path)
        payload = pickle.dumps({"config": config, "fds": [FIRST_LISTENER_FD]})
        read, write = os.pipe()
        os.dup2(listening.fileno(), 100)
        self.addCleanup(os.close, 100)
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = subprocess.Popen(
            [sys.executable, "-c",
             "import os, sys; os.dup2(100, 3); os.close(100); "
             "from rmux.workers.child import main; sys.exit(main(['--worker', '1']))"],
            stdin=read, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=[100], env=env,
        )
        os.close(read)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        os.write(write, struct.pack("!I", len(payload)) + payload)
        serving = b"worker 1 (pid %d) serving" % (process.pid,)
        lines = []
        while not lines or serving not in lines[-1] and lines[-1]:
            lines.append(process.stdout.readline())
        self.assertIn(serving, lines[-1])
        os.close(write)
        self.assertEqual(process.wait(10), 0)
        self.assertIn(b"the parent process has gone", process.stdout.read())
        process.stdout.close()
        # It left the socket file to its owner.
        self.assertTrue(os.path.exists(path))
