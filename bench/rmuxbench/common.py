"""
What every part of the benchmark shares: the names of the reference and
measured targets, timeouts, the error type, and small helpers, among them a
minimal Redis client for the benchmark's own bookkeeping.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

if TYPE_CHECKING:
    from rmuxbench.lab import ManagedProcess

REPO = Path(__file__).resolve().parents[2]  # bench/rmuxbench/common.py

# The reference every ratio is computed against, and the target under test.
BASELINE = "redis-tcp"
RMUX = "rmux-unix"

# How long a start-up may take, and a single redis-benchmark run, by default.
START_TIMEOUT = 20.0
RUN_TIMEOUT = 180.0


class BenchError(Exception):
    """
    A problem that stops the benchmark, with a message meant for the user
    (which process failed, and the end of its log).
    """


def freePort() -> int:
    """
    A loopback TCP port nobody listens on right now.  (Another program could
    take it before we do; start-up then fails with a clear message.)
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitFor(what: str, check: Callable[[], bool], timeout: float,
            process: Optional["ManagedProcess"] = None) -> None:
    """
    Poll C{check} until it returns true; fail with a message naming C{what}
    (and the end of the process's log) if it does not within C{timeout}
    seconds or if the process exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise BenchError(
                "%s: %s exited with status %s while starting\n%s"
                % (what, process.name, process.popen.returncode, process.logTail())
            )
        try:
            if check():
                return
        except (OSError, BenchError):
            pass
        time.sleep(0.05)
    tail = "\n" + process.logTail() if process is not None else ""
    raise BenchError("%s: not ready after %.0f s%s" % (what, timeout, tail))


def median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def log(text: str):
    """
    Progress goes to stderr, so that stdout carries only the report.
    """
    print(text, file=sys.stderr, flush=True)


class RespClient:
    """
    A minimal blocking Redis client for the benchmark's own bookkeeping
    (INFO, FLUSHALL, readiness probes).  It keeps one connection open, so
    that asking a server how many connections it accepted does not itself
    add one.
    """

    def __init__(self, address, timeout: float = 5.0):
        self.address = address  # a unix socket path, or (host, port)
        self.timeout = timeout
        self.sock = None
        self.reader = None

    def _connect(self):
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self.sock, self.reader = sock, sock.makefile("rb")

    def close(self):
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
        self.sock = self.reader = None

    def call(self, *args):
        """
        Send one command and return its reply: str for simple strings, bytes
        for bulk strings, int, list, or L{BenchError} raised for an error.
        """
        if self.sock is None:
            self._connect()
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            self.sock.sendall(b"".join(parts))
            return self._reply()
        except OSError:
            self.close()
            raise

    def _reply(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise BenchError(body.decode(errors="replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = self.reader.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise BenchError("unexpected reply %r" % (line,))

    def info(self, section: str) -> Dict[str, str]:
        text = self.call("INFO", section).decode(errors="replace")
        fields = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key] = value
        return fields
