"""
What an operator sees when rmux starts, fails to start, is ready, reloads
and stops (L{rmux.startup}): the C{rmux} command run as a process, as an
operator or systemd runs it, against real redis-servers.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.python.lockfile import FilesystemLock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from rmux.application import makeService
from rmux.config import fromFlags
from rmux.startup import describeListenError, notify
from tests.redisserver import freePort, startRedis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = [sys.executable, "-c", "import sys; from rmux.cli import main; sys.exit(main())"]


class DescribeTests(SynchronousTestCase):
    def test_addressInUse(self):
        error = CannotListenError("127.0.0.1", 22222, OSError(errno.EADDRINUSE, "in use"))
        self.assertEqual(describeListenError("--statsPort=22222", error),
                         "--statsPort=22222: address already in use")

    def test_lockHeld(self):
        error = CannotListenError(None, b"/run/rmux.sock", "Cannot acquire lock")
        self.assertIn("held by another running rmux",
                      describeListenError("--socket=/run/rmux.sock", error))

    def test_lockFileNamed(self):
        """
        A lock file that cannot be made is named (the link, not the pid it
        would hold).
        """
        error = FileNotFoundError(errno.ENOENT, "No such file or directory", "4242",
                                  None, "/nope/rmux.sock.lock")
        self.assertEqual(describeListenError("--socket=/nope/rmux.sock", error),
                         "--socket=/nope/rmux.sock: No such file or directory: "
                         "/nope/rmux.sock.lock")

    def test_notifyWithoutSocket(self):
        self.assertFalse(notify("READY=1", environ={}))

    def test_notifyAbstract(self):
        """
        An address starting with C{@} is in the abstract namespace.
        """
        name = "rmux-test-%d" % (os.getpid(),)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind("\0" + name)
            self.assertTrue(notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name}))
            self.assertEqual(listener.recv(64), b"READY=1")


class RmuxProcess:
    """
    The C{rmux} command in a process of its own, logging to a file.
    """

    def __init__(self, testCase, *arguments, env=None):
        self.directory = tempfile.mkdtemp(prefix="rmux-startup-")
        testCase.addCleanup(shutil.rmtree, self.directory, True)
        self.log = os.path.join(self.directory, "rmux.log")
        environ = dict(os.environ, PYTHONPATH=ROOT)
        environ.pop("NOTIFY_SOCKET", None)
        environ.update(env or {})
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                COMMAND + list(arguments), cwd=self.directory, env=environ,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        testCase.addCleanup(self.stop)

    def wait(self, timeout=20):
        return self.process.wait(timeout)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def lines(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()


def _errorLines(lines):
    return [line for line in lines if "#error]" in line or "#critical]" in line
            or "Traceback" in line]


class StartFailureTests(TestCase):
    """
    Each way a start can fail ends in one line naming the option and the
    cause, exit status 1, and nothing rmux created left behind.
    """

    timeout = 60

    def setUp(self):
        self.server = startRedis(self)
        self.directory = tempfile.mkdtemp(prefix="rmux-sockets-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "rmux.sock")

    def startRmux(self, *arguments):
        rmux = RmuxProcess(self, "--unixConnections=" + self.server.path, *arguments)
        return rmux, rmux.wait()

    def assertOneLine(self, rmux, status, expected):
        lines = rmux.lines()
        self.assertEqual(status, 1, "\n".join(lines))
        self.assertEqual(_errorLines(lines), [l for l in lines if "rmux: cannot start:" in l])
        (line,) = [l for l in lines if "rmux: cannot start:" in l]
        self.assertTrue(line.endswith("rmux: cannot start: " + expected), line)

    def test_portInUse(self):
        """
        A stats port another program holds: the listener's socket, bound
        first, is gone again, and so is its lock.
        """
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            rmux, status = self.startRmux("--socket=" + self.path, "--statsPort=%d" % (port,))
        self.assertOneLine(rmux, status,
                           "--statsPort=%d (on 127.0.0.1): address already in use" % (port,))
        self.assertEqual(os.listdir(self.directory), [])

    def test_listenerPortInUse(self):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            rmux, status = self.startRmux("--host=127.0.0.1", "--port=%d" % (port,))
        self.assertOneLine(rmux, status,
                           "--port=%d (on 127.0.0.1): address already in use" % (port,))

    def test_lockHeld(self):
        """
        A socket whose lock a live process holds (as a running rmux does)
        is not taken, and its files stay.
        """
        lock = FilesystemLock(self.path + ".lock")
        self.assertTrue(lock.lock())
        self.addCleanup(lock.unlock)
        open(self.path, "w").close()
        rmux, status = self.startRmux("--socket=" + self.path)
        self.assertOneLine(
            rmux, status, "--socket=%s: the socket is held by another running rmux "
            "(or another program holds its lock file)" % (self.path,))
        self.assertEqual(sorted(os.listdir(self.directory)), ["rmux.sock", "rmux.sock.lock"])

    def test_noDirectory(self):
        path = os.path.join(self.directory, "missing", "rmux.sock")
        rmux, status = self.startRmux("--socket=" + path)
        self.assertOneLine(rmux, status, "--socket=%s: No such file or directory: %s.lock"
                           % (path, path))

    def test_unreadableCertificate(self):
        rmux, status = self.startRmux("--socket=" + self.path, "--tlsPort=%d" % (freePort(),),
                                "--tlsCertFile=/nonexistent.pem", "--tlsKeyFile=/nonexistent.key")
        self.assertEqual(status, 1)
        self.assertEqual(rmux.lines(), [
            "rmux: --tlsCertFile: cannot read /nonexistent.pem: No such file or directory",
            "rmux: see rmux --help",
        ])


class ReadinessTests(TestCase):
    """
    The ready line and systemd's notifications, from a real process.
    """

    timeout = 60

    @inlineCallbacks
    def test_readyThenStopping(self):
        """
        READY=1 comes once rmux answers PING, with one ready line; a backend
        going down and up is one line each; SIGHUP sends RELOADING=1 then
        READY=1; SIGTERM sends STOPPING=1.  None of Twisted's factory lines
        are logged.
        """
        server = startRedis(self)
        other = startRedis(self)
        directory = tempfile.mkdtemp(prefix="rmux-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        notifyPath = os.path.join(directory, "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(listener.close)
        listener.bind(notifyPath)
        listener.settimeout(15)
        path = os.path.join(directory, "rmux.sock")
        rmux = RmuxProcess(
            self, "--socket=" + path, "--failover",
            "--unixConnections=%s %s" % (server.path, other.path),
            env={"NOTIFY_SOCKET": notifyPath})

        def exchange():
            ready = listener.recv(64)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
                client.sendall(b"PING\r\n")
                pong = client.recv(64)
            other.stop()
            waitForLine(rmux, "is down")
            other.start()
            waitForLine(rmux, "is up", count=3)
            os.kill(rmux.process.pid, signal.SIGHUP)
            reloading, readyAgain = listener.recv(64), listener.recv(64)
            rmux.process.terminate()
            stopping = listener.recv(64)
            rmux.wait()
            return ready, pong, reloading, readyAgain, stopping

        received = yield threads.deferToThread(exchange)
        self.assertEqual(received, (b"READY=1", b"+PONG\r\n", b"RELOADING=1", b"READY=1",
                                    b"STOPPING=1"))
        lines = rmux.lines()
        ready = [line for line in lines if "rmux: ready:" in line]
        self.assertEqual(len(ready), 1, lines)
        self.assertTrue(ready[0].endswith("rmux: ready: %s (2 of 2 backends up)" % (path,)))
        self.assertEqual(len([line for line in lines if "is down" in line]), 1, lines)
        self.assertEqual(len([line for line in lines if other.path + " is up" in line]), 2)
        self.assertEqual([line for line in lines if "ing factory" in line], [])
        self.assertIn("[-] rmux starting on %r" % (path,), "\n".join(lines))


def waitForLine(rmux, text, count=1, timeout=15):
    deadline = time.monotonic() + timeout
    while sum(1 for line in rmux.lines() if text in line) < count:
        if time.monotonic() > deadline:
            raise AssertionError("no %r in:\n%s" % (text, "\n".join(rmux.lines())))
        time.sleep(0.05)


class ProbeTests(TestCase):
    """
    C{/health} and C{/ready} on the metrics port, for load balancers and
    Kubernetes probes.
    """

    timeout = 60

    @inlineCallbacks
    def get(self, port, path):
        response = yield Agent(reactor).request(
            b"GET", b"http://127.0.0.1:%d%s" % (port, path))
        body = yield readBody(response)
        return response.code, json.loads(body)

    @inlineCallbacks
    def waitFor(self, port, code, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            status, body = yield self.get(port, b"/ready")
            if status == code or time.monotonic() > deadline:
                return status, body
            yield threads.deferToThread(time.sleep, 0.05)

    @inlineCallbacks
    def test_healthAndReady(self):
        """
        C{/health} is 200 while rmux runs; C{/ready} is 200 once every
        backend is up, 503 as soon as the health checks find one down
        (without failover), and 200 again when it is back.
        """
        server = startRedis(self)
        directory = tempfile.mkdtemp(prefix="rmux-probes-")
        self.addCleanup(shutil.rmtree, directory, True)
        port = freePort()
        config = fromFlags({
            "socket": os.path.join(directory, "rmux.sock"),
            "unixConnections": server.path, "metricsPort": str(port),
        })
        service = makeService(config, reactor)
        service.reloadOnHangup = False
        service.startService()
        self.addCleanup(service.stopService)
        status, body = yield self.get(port, b"/health")
        self.assertEqual((status, body), (200, {"status": "up"}))
        status, body = yield self.waitFor(port, 200)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["listeners"][0]["backendsUp"], 1)
        server.stop()
        stopped = time.monotonic()
        status, body = yield self.waitFor(port, 503)
        self.assertEqual((status, body["ready"]), (503, False))
        # healthFailures (3) checks, healthInterval (100 ms) apart.
        self.assertLess(time.monotonic() - stopped, 1.0)
        self.assertEqual(body["listeners"][0]["backendsUp"], 0)
        server.start()
        status, body = yield self.waitFor(port, 200)
        self.assertEqual((status, body["ready"]), (200, True))
