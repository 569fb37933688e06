"""
Real redis-server processes for the integration tests.

Each server listens on a unix socket in its own temporary directory (and,
when asked, on a free loopback TCP port), runs without persistence, and is
stopped by the test's cleanup.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REDIS_SERVER = shutil.which("redis-server")


def freePort():
    """
    A TCP port on 127.0.0.1 that nobody listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """
    One redis-server process.

    @ivar path: its unix socket.
    @ivar port: its TCP port on 127.0.0.1, or 0 if it has none.
    """

    def __init__(self, tcp=False, args=()):
        if REDIS_SERVER is None:
            raise RuntimeError(
                "redis-server is not installed: apt-get install -y redis-server"
            )
        self.directory = tempfile.mkdtemp(prefix="rmux-redis-")
        self.path = os.path.join(self.directory, "redis.sock")
        self.port = freePort() if tcp else 0
        self.args = list(args)
        self.process = None

    def start(self, timeout=10.0):
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.path,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--logfile", os.path.join(self.directory, "redis.log"),
        ] + self.args
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: see %s" % (self.directory,))
            try:
                # With requirepass, NOAUTH also says it is serving.
                if self.command(b"PING\r\n")[:6] in (b"+PONG\r", b"-NOAUT"):
                    return self
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("redis-server did not start within %s s" % (timeout,))

    def command(self, raw, timeout=2.0):
        """
        Send raw bytes on a fresh connection and return the first chunk of
        the answer; enough for small replies in test set-up.
        """
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.path)
            s.sendall(raw)
            return s.recv(65536)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGCONT)
            except OSError:
                pass
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def pause(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)


def startRedis(testCase, **kwargs):
    """
    Start a redis-server for C{testCase}, stopped by its cleanup.
    """
    server = RedisServer(**kwargs)
    testCase.addCleanup(server.cleanup)
    return server.start()


def startServers(testCase, count, **kwargs):
    """
    Start C{count} redis-servers for C{testCase}, stopped by its cleanup.
    """
    return [startRedis(testCase, **kwargs) for _ in range(count)]
