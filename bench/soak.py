#!/usr/bin/env python3
"""
rmux soak: many short- and long-lived clients against rmux for a bounded
time, a backend restart in the middle, and a check of every acknowledged
write at the end.

    .venv/bin/python bench/soak.py [--seconds 60] [--clients 1000] [--seed N]
                                   [--ops N] [--rounds N] [--persistence aof|none]
                                   [--no-restart] [--rmux-arg=--flag=value] [--keep]

It starts, in a temporary directory that it removes at the end:

  - one redis-server on a unix socket, by default with
    ``--appendonly yes --appendfsync always`` so that a write Redis
    acknowledged survives a SIGKILL (``--persistence none``: no
    persistence, and a write acknowledged before the restart may be gone);
  - rmux under twistd as a subprocess
    (``twistd -n --pidfile= rmux --socket=... --unixConnections=...``).

Then ``--clients`` client slots (1000 by default) run in one thread on a
``selectors`` loop over raw non-blocking sockets, hiredis parsing the
replies: one thread keeps 1000 clients busy and leaves the other core to
rmux and Redis (threads with redis-py would not).  Each slot holds one connection at a time and replaces it when it
ends: 40% of connections make 1-3 requests (PHP-FPM style), 50% make 20-200,
10% make 500-2000; 5% of them close abruptly with requests in flight.  Each
connection pipelines batches of 1-10 requests: SET, GET, DEL, MGET and INCR
over keys only its slot writes, ECHO and PING; after an error reply it waits
20-50 ms, as a real client would, rather than hammer a server that is down.  Every value and token names
its key or request, so a reply delivered to the wrong request is seen.

Half-way through, the backend is killed (SIGKILL) and started again on the
same socket.

What is checked (each failure is a violation, and the exit status is 1):

  - every reply is the one its request asked for (an ECHO its own token, a
    GET a value of its own key, an INCR a larger count than the last one),
    or an ``-ERR rmux: ...`` (or Redis's ``-LOADING``) error;
  - read-your-writes: a GET right after an acknowledged SET of the same
    key, on the same connection, with no doubt about the key, sees that
    SET's value;
  - no request waits longer than ``--request-deadline`` (5 s) for its
    reply, and rmux never closes a client that did not ask for it;
  - at the end, read straight from Redis, every key holds the value of
    its last acknowledged write, or one of the writes whose outcome is
    unknown (an error reply, or a connection closed before the reply came:
    such a key is not written again, so the doubt stays bounded).  Without
    persistence, a key whose last acknowledged write came before the
    restart may be missing instead.  INCR counters are at least their last
    acknowledged value and at most that plus the INCRs whose outcome is
    unknown;
  - rmux's INFO shows no client left over once the clients are gone;
  - rmux's RSS comes back near where it started: after the run it must be
    within ``--rss-slack`` (default 32 MB) of the RSS before it.  CPython
    and glibc keep freed memory, so it does not drop back by itself (in
    the measurements so far, ``malloc_trim(0)`` inside rmux gave 12-18 MB
    back after 1000-client rounds and left a level that stayed flat from
    round to round); ``--rounds N`` runs the same load N times against one
    rmux and prints the RSS after each, so that a leak (growth every round,
    without end) can be told from memory the allocator keeps.

The summary (counts, error kinds, recovery after the restart, RSS before,
at peak and after, rmux's INFO) goes to stdout.  Every process started is
stopped at the end, on errors, and on Ctrl-C / SIGTERM; children are also
set to die with this script (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import hiredis

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

OK_ERRORS = ("ERR rmux: ", "LOADING ")


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def _dieWithParent():
    """
    preexec_fn: the child gets SIGKILL if this script dies, so even a
    SIGKILLed soak leaves nothing behind.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """
    Every child process, stopped by L{stopAll}.
    """

    def __init__(self):
        self.children = []

    def start(self, command, log, env=None, cwd=None):
        with open(log, "ab") as out:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, preexec_fn=_dieWithParent, start_new_session=True,
            )
        self.children.append(process)
        return process

    def stop(self, process, timeout=10.0):
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass

    def stopAll(self):
        for process in reversed(self.children):
            self.stop(process)


def ping(path, timeout=1.0):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b"PING\r\n")
            return s.recv(100)
    except OSError:
        return b""


class Redis:
    def __init__(self, processes, directory, persistence):
        self.processes = processes
        self.directory = directory
        self.path = os.path.join(directory, "redis.sock")
        self.persistence = persistence
        self.process = None

    def start(self, timeout=30.0):
        command = [
            shutil.which("redis-server") or "redis-server",
            "--port", "0",
            "--unixsocket", self.path,
            "--unixsocketperm", "700",
            "--save", "",
            "--dir", self.directory,
            "--maxclients", "10000",
        ]
        if self.persistence == "aof":
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        self.process = self.processes.start(command, os.path.join(self.directory, "redis.log"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit("redis-server exited; see %s/redis.log" % (self.directory,))
            if ping(self.path).startswith(b"+PONG"):
                return
            time.sleep(0.02)
        raise SystemExit("redis-server did not answer within %d s" % (timeout,))

    def kill(self):
        self.process.kill()
        self.process.wait()


def startRmux(processes, directory, backend, extra):
    path = os.path.join(directory, "rmux.sock")
    log = os.path.join(directory, "rmux.log")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [
        str(VENV_BIN / "twistd"), "-n", "--pidfile=", "--logfile", log,
        "rmux", "--socket=" + path, "--unixConnections=" + backend,
    ] + list(extra)
    process = processes.start(command, os.path.join(directory, "twistd.out"), env=env, cwd=directory)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("rmux exited at start:\n" + tail(log))
        if ping(path).startswith(b"+PONG"):
            return process, path, log
        time.sleep(0.05)
    raise SystemExit("rmux did not answer within 30 s:\n" + tail(log))


def tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def rss(pid):
    """
    VmRSS of C{pid} in bytes, or 0.
    """
    try:
        with open("/proc/%d/status" % (pid,)) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def info(path):
    """
    rmux's INFO as a dict (a fresh connection: it counts itself).
    """
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"INFO\r\n")
        reader = hiredis.Reader()
        while True:
            reader.feed(s.recv(65536))
            reply = reader.gets()
            if reply is not False:
                break
    fields = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key] = value
    return fields


# ---------------------------------------------------------------------------
# What the clients know about their keys
# ---------------------------------------------------------------------------


class Key:
    """
    One key, written by one client slot only.

    @ivar acked: the value of the last acknowledged write (None: deleted or
        never written).
    @ivar maybe: values of writes whose outcome is unknown.
    @ivar sentSeq: the number of writes sent; C{ackedSeq}: the number of
        the last acknowledged one.
    """

    __slots__ = ("name", "acked", "ackedEpoch", "maybe", "sentSeq", "ackedSeq",
                 "lastSent", "retired", "written")

    def __init__(self, name):
        self.name = name
        self.acked = None
        self.ackedEpoch = 0
        self.maybe = set()
        self.sentSeq = 0
        self.ackedSeq = 0
        self.lastSent = None
        self.retired = False
        self.written = False

    def belongs(self, value):
        return value is None or (isinstance(value, bytes) and value.startswith(self.name + b"="))


class Slot:
    """
    One client: its keys, its counter, and its current connection.
    """

    def __init__(self, index, keys=6, prefix=b"soak"):
        self.index = index
        self.prefix = prefix
        self.generation = 0
        self.keys = [self.newKey(k) for k in range(keys)]
        self.counter = b"%s:%d:counter" % (prefix, index)
        self.counterAcked = 0
        self.counterUnknown = 0
        self.conn = None
        self.seq = 0

    def newKey(self, k):
        self.generation += 1
        return Key(b"%s:%d:%d:g%d" % (self.prefix, self.index, k, self.generation))

    def retire(self, key, retired):
        """
        Stop writing C{key} (its outcome is in doubt): a fresh key takes its
        place, and the old one is checked at the end.
        """
        if key.retired:
            return
        key.retired = True
        retired.append(key)
        for i, k in enumerate(self.keys):
            if k is key:
                self.keys[i] = self.newKey(i)


class Conn:
    __slots__ = ("slot", "sock", "reader", "pending", "out", "left", "abrupt",
                 "registered", "opened", "hadError")

    def __init__(self, slot, sock, left, abrupt, now):
        self.slot = slot
        self.sock = sock
        self.reader = hiredis.Reader()
        self.pending = collections.deque()
        self.out = b""
        self.left = left
        self.abrupt = abrupt
        self.registered = 0
        self.opened = now
        self.hadError = False


def encode(*args):
    out = [b"*%d\r\n" % (len(args),)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# ---------------------------------------------------------------------------
# The client loop
# ---------------------------------------------------------------------------


class Soak:
    def __init__(self, path, slots, seed, deadline, opsLimit, requestDeadline, persistence,
                 prefix=b"soak"):
        self.path = path
        self.rng = random.Random(seed)
        self.slots = [Slot(i, prefix=prefix) for i in range(slots)]
        self.deadline = deadline
        self.opsLimit = opsLimit
        self.requestDeadline = requestDeadline
        self.persistence = persistence
        self.selector = selectors.DefaultSelector()
        self.retired = []
        self.violations = []
        self.errors = collections.Counter()
        self.stats = collections.Counter()
        self.epoch = 0
        self.restartedAt = None
        self.firstOkAfterRestart = None
        self.stopping = False
        self.sent = 0
        # Slots that need a connection or their next batch, and slots
        # waiting to reconnect: (time, slot).
        self.ready = collections.deque(self.slots)
        self.delayed = []

    # -- violations and counts

    def violation(self, text):
        self.stats["violations"] += 1
        if len(self.violations) < 200:
            self.violations.append(text)

    def error(self, message):
        text = message if isinstance(message, str) else str(message)
        if not text.startswith(OK_ERRORS):
            self.violation("unexpected error reply: %r" % (text,))
        self.errors[re.sub(r"/\S+", "<path>", text)[:120]] += 1

    # -- connections

    def connect(self, slot, now):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.path)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.stats["connect retries"] += 1
            if code not in (errno.EAGAIN, errno.ECONNREFUSED):
                self.violation("connect to rmux failed: %s" % (os.strerror(code),))
            self.delayed.append((now + 0.01 + self.rng.random() * 0.05, slot))
            return
        r = self.rng.random()
        if r < 0.4:
            left = self.rng.randint(1, 3)
        elif r < 0.9:
            left = self.rng.randint(20, 200)
        else:
            left = self.rng.randint(500, 2000)
        conn = Conn(slot, sock, left, self.rng.random() < 0.05, now)
        slot.conn = conn
        self.stats["connections"] += 1
        self.selector.register(sock, selectors.EVENT_READ, conn)
        conn.registered = selectors.EVENT_READ
        self.sendBatch(conn, now)

    def close(self, conn, abrupt):
        slot = conn.slot
        self.selector.unregister(conn.sock)
        conn.sock.close()
        slot.conn = None
        if not self.stopping:
            self.ready.append(slot)
        if abrupt and conn.pending:
            self.stats["abrupt closes"] += 1
            for request in conn.pending:
                self.unknownOutcome(slot, request)
        conn.pending.clear()

    def unknownOutcome(self, slot, request):
        kind = request[0]
        if kind in ("set", "del"):
            key, value = request[1], request[2]
            key.maybe.add(value)
            slot.retire(key, self.retired)
        elif kind == "incr":
            slot.counterUnknown += 1

    # -- requests

    def sendBatch(self, conn, now):
        slot = conn.slot
        rng = self.rng
        size = min(conn.left, rng.randint(1, 10))
        out = []
        for _ in range(size):
            slot.seq += 1
            r = rng.random()
            key = rng.choice(slot.keys)
            if r < 0.30:
                key.sentSeq += 1
                value = key.name + b"=%d" % (key.sentSeq,)
                key.lastSent = value
                key.written = True
                out.append(encode(b"SET", key.name, value))
                conn.pending.append(("set", key, value, key.sentSeq, now))
            elif r < 0.55:
                out.append(encode(b"GET", key.name))
                conn.pending.append(("get", key, key.lastSent, key.sentSeq, now))
            elif r < 0.60:
                key.sentSeq += 1
                key.lastSent = None
                key.written = True
                out.append(encode(b"DEL", key.name))
                conn.pending.append(("del", key, None, key.sentSeq, now))
            elif r < 0.70:
                keys = rng.sample(slot.keys, 3)
                out.append(encode(b"MGET", *[k.name for k in keys]))
                conn.pending.append(("mget", keys, [(k.lastSent, k.sentSeq) for k in keys], None, now))
            elif r < 0.80:
                out.append(encode(b"INCR", slot.counter))
                conn.pending.append(("incr", None, None, None, now))
            elif r < 0.95:
                token = b"tok:%d:%d" % (slot.index, slot.seq)
                out.append(encode(b"ECHO", token))
                conn.pending.append(("echo", None, token, None, now))
            else:
                out.append(b"PING\r\n")
                conn.pending.append(("ping", None, None, None, now))
        conn.left -= size
        self.sent += size
        conn.out += b"".join(out)
        self.flush(conn)
        if conn.left == 0 and conn.abrupt:
            # Gone with its requests in flight.
            self.close(conn, abrupt=True)

    def flush(self, conn):
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self.violation("rmux dropped a client while it was sending: %s" % (e,))
                self.close(conn, abrupt=True)
                return
            conn.out = conn.out[sent:]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if want != conn.registered:
            self.selector.modify(conn.sock, want, conn)
            conn.registered = want

    def readable(self, conn, now):
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as e:
            data = b""
            reason = str(e)
        else:
            reason = "EOF"
        if not data:
            self.violation(
                "rmux closed a client (%s) with %d requests pending" % (reason, len(conn.pending))
            )
            self.close(conn, abrupt=True)
            return
        conn.reader.feed(data)
        while True:
            reply = conn.reader.gets()
            if reply is False:
                break
            if not conn.pending:
                self.violation("a reply nobody asked for: %r" % (reply,))
                continue
            request = conn.pending.popleft()
            if isinstance(reply, hiredis.ReplyError):
                conn.hadError = True
            try:
                self.check(conn.slot, request, reply, now)
            except Exception as e:
                # A reply of a shape nobody asked for.
                self.violation("%s got %r (%s)" % (request[0], reply, e))
        if not conn.pending:
            if conn.left == 0:
                self.close(conn, abrupt=False)
            elif self.stopping:
                pass
            elif conn.hadError:
                # As a real client would, wait a moment after an error
                # rather than hammer a backend that is down.
                conn.hadError = False
                self.delayed.append((now + 0.02 + self.rng.random() * 0.03, conn.slot))
            else:
                self.ready.append(conn.slot)

    def check(self, slot, request, reply, now):
        kind, key, expected, seq, sentAt = request
        if now - sentAt > self.requestDeadline:
            self.violation("%s waited %.1f s for its reply" % (kind, now - sentAt))
        if isinstance(reply, hiredis.ReplyError):
            self.stats["errors"] += 1
            self.error(str(reply))
            self.unknownOutcome(slot, request)
            return
        self.stats["ok"] += 1
        if self.restartedAt is not None and self.firstOkAfterRestart is None and kind != "echo" and kind != "ping":
            self.firstOkAfterRestart = time.monotonic()
        if kind == "set":
            if reply != b"OK":
                self.violation("SET %r got %r" % (key.name, reply))
                return
            self.ack(key, expected, seq)
        elif kind == "del":
            if reply not in (0, 1):
                self.violation("DEL %r got %r" % (key.name, reply))
                return
            self.ack(key, None, seq)
        elif kind == "get":
            self.checkRead(key, reply, expected, seq)
        elif kind == "mget":
            if not isinstance(reply, list) or len(reply) != len(key):
                self.violation("MGET got %r" % (reply,))
                return
            for k, value, (lastSent, sentSeq) in zip(key, reply, expected):
                self.checkRead(k, value, lastSent, sentSeq)
        elif kind == "incr":
            if not isinstance(reply, int) or reply <= slot.counterAcked:
                if self.persistence == "aof" or not isinstance(reply, int):
                    self.violation("INCR %r got %r after %d" % (slot.counter, reply, slot.counterAcked))
            elif slot.counterUnknown == 0 and reply != slot.counterAcked + 1 and self.persistence == "aof":
                self.violation("INCR %r went %d -> %d" % (slot.counter, slot.counterAcked, reply))
            if isinstance(reply, int):
                slot.counterAcked = reply
        elif kind == "echo":
            if reply != expected:
                self.violation("ECHO %r got %r" % (expected, reply))
        elif kind == "ping":
            if reply != b"PONG":
                self.violation("PING got %r" % (reply,))

    def ack(self, key, value, seq):
        if seq > key.ackedSeq:
            key.acked = value
            key.ackedSeq = seq
            key.ackedEpoch = self.epoch

    def checkRead(self, key, value, lastSent, sentSeq):
        if not key.belongs(value):
            self.violation("read of %r got %r: another key's value" % (key.name, value))
            return
        if isinstance(value, bytes) and int(value.rsplit(b"=", 1)[1]) > sentSeq:
            self.violation("read of %r got %r, written after the read was sent" % (key.name, value))
            return
        # Read-your-writes: the last write before this read was acknowledged
        # and nothing about the key is in doubt.
        if key.ackedSeq == sentSeq and not key.maybe and not key.retired:
            if value != lastSent:
                if self.persistence == "none" and value is None and key.ackedEpoch != self.epoch:
                    return
                self.violation("read of %r got %r, expected %r" % (key.name, value, lastSent))

    # -- the loop

    def run(self):
        selector = self.selector
        lastSweep = 0.0
        while True:
            now = time.monotonic()
            finishing = now >= self.deadline or (self.opsLimit and self.sent >= self.opsLimit)
            if finishing and not self.stopping:
                self.stopping = True
                self.stopAt = now + max(10.0, self.requestDeadline * 2)
                for slot in self.slots:
                    if slot.conn is not None:
                        slot.conn.left = 0
                        if not slot.conn.pending:
                            self.close(slot.conn, abrupt=False)
            if self.stopping:
                if all(slot.conn is None for slot in self.slots):
                    return
                if now > self.stopAt:
                    for slot in self.slots:
                        if slot.conn is not None:
                            self.violation(
                                "%d requests had no reply at the end" % (len(slot.conn.pending),)
                            )
                            self.close(slot.conn, abrupt=True)
                    return
            else:
                if self.delayed:
                    due = [d for d in self.delayed if d[0] <= now]
                    if due:
                        self.delayed = [d for d in self.delayed if d[0] > now]
                        self.ready.extend(slot for when, slot in due)
                ready = self.ready
                for _ in range(len(ready)):
                    slot = ready.popleft()
                    conn = slot.conn
                    if conn is None:
                        self.connect(slot, now)
                    elif not conn.pending and conn.left > 0:
                        self.sendBatch(conn, now)
            timeout = 0 if self.ready else 0.02
            for selectorKey, events in selector.select(timeout=timeout):
                conn = selectorKey.data
                if conn.slot.conn is not conn:
                    continue
                if events & selectors.EVENT_WRITE:
                    self.flush(conn)
                if events & selectors.EVENT_READ and conn.slot.conn is conn:
                    self.readable(conn, time.monotonic())
            if now - lastSweep > 1.0:
                lastSweep = now
                self.sweep(now)

    def sweep(self, now):
        """
        Requests that wait too long are violations (reported once each).
        """
        for slot in self.slots:
            conn = slot.conn
            if conn is not None and conn.pending:
                request = conn.pending[0]
                age = now - request[4]
                if age > self.requestDeadline:
                    self.violation("a %s has waited %.1f s for its reply" % (request[0], age))
                    # Reported once: not again here, nor when it comes.
                    conn.pending[0] = request[:4] + (now + 3600,)

    # -- the final check

    def verify(self, redisPath):
        """
        Read every key and counter straight from Redis and compare.
        """
        keys = self.retired + [k for slot in self.slots for k in slot.keys if k.written]
        counters = [slot for slot in self.slots if slot.counterAcked or slot.counterUnknown]
        checked = 0
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(redisPath)
            reader = hiredis.Reader()

            def fetch(names):
                s.sendall(b"".join(encode(b"GET", n) for n in names))
                replies = []
                while len(replies) < len(names):
                    reply = reader.gets()
                    if reply is False:
                        reader.feed(s.recv(1 << 20))
                        continue
                    replies.append(reply)
                return replies

            for start in range(0, len(keys), 500):
                batch = keys[start:start + 500]
                for key, value in zip(batch, fetch([k.name for k in batch])):
                    checked += 1
                    allowed = {key.acked} | key.maybe
                    if value in allowed:
                        continue
                    if (
                        self.persistence == "none" and value is None
                        and key.ackedEpoch != self.epoch
                    ):
                        continue
                    self.violation(
                        "after the run %r holds %r; last acknowledged %r, unknown %r"
                        % (key.name, value, key.acked, sorted(key.maybe))
                    )
            for start in range(0, len(counters), 500):
                batch = counters[start:start + 500]
                for slot, value in zip(batch, fetch([sl.counter for sl in batch])):
                    checked += 1
                    n = int(value or 0)
                    low, high = slot.counterAcked, slot.counterAcked + slot.counterUnknown
                    if self.persistence == "none":
                        low = 0
                    if not low <= n <= high:
                        self.violation(
                            "after the run %r is %d; acknowledged %d, unknown %d"
                            % (slot.counter, n, slot.counterAcked, slot.counterUnknown)
                        )
        return checked


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """
    Samples rmux's RSS every C{interval} s, and its client count (INFO,
    less the asking connection) every second.
    """

    def __init__(self, pid, path, interval=0.2):
        threading.Thread.__init__(self, daemon=True)
        self.pid = pid
        self.path = path
        self.interval = interval
        self.peak = 0
        self.peakClients = 0
        self.done = threading.Event()

    def run(self):
        lastInfo = 0.0
        while not self.done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            now = time.monotonic()
            if now - lastInfo >= 1.0:
                lastInfo = now
                try:
                    clients = int(info(self.path).get("connected_clients", 0)) - 1
                except (OSError, ValueError):
                    clients = 0
                self.peakClients = max(self.peakClients, clients)
            self.done.wait(self.interval)


def mb(n):
    return "%.1f MB" % (n / 1048576.0,)


def runRound(soak, redis, restartAt, restart, started):
    """
    Run the client loop in a thread of its own until it is done; meanwhile,
    at C{restartAt} (if not None), kill and restart the backend.  Processes
    are started and stopped from this thread only (PR_SET_PDEATHSIG is per
    thread).
    """
    failure = []

    def clients():
        try:
            soak.run()
        except BaseException as e:
            failure.append(e)
            raise

    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        if restartAt is not None and not restart and time.monotonic() >= restartAt and not soak.stopping:
            restart["killedAt"] = time.monotonic() - started
            redis.kill()
            time.sleep(1.0)
            redis.start()
            restart["upAt"] = time.monotonic() - started
            # Writes acknowledged from now on must survive; without
            # persistence, earlier ones may be gone.
            soak.epoch += 1
            soak.restartedAt = time.monotonic()
    if failure:
        raise SystemExit("the client loop failed: %r" % (failure[0],))


def waitForNoClients(path, seconds=10.0):
    """
    How many clients rmux still counts (besides the one asking), once that
    is 0 or C{seconds} have passed.
    """
    deadline = time.monotonic() + seconds
    while True:
        leftover = int(info(path).get("connected_clients", -1)) - 1
        if leftover == 0 or time.monotonic() > deadline:
            return leftover
        time.sleep(0.2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long the clients run, in all (60)")
    parser.add_argument("--clients", type=int, default=1000, help="client slots (1000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--ops", type=int, default=0,
                        help="stop a round after this many requests (0: no limit)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="split the run into this many rounds against the same rmux, "
                             "its RSS taken after each: growth from round to round is a "
                             "leak, a flat level is the allocator keeping memory (1)")
    parser.add_argument("--persistence", choices=("aof", "none"), default="aof")
    parser.add_argument("--request-deadline", type=float, default=5.0,
                        help="longest wait for one reply, s (5)")
    parser.add_argument("--rss-slack", type=float, default=32.0,
                        help="MB rmux's RSS may stay above its start after the run (32)")
    parser.add_argument("--no-restart", action="store_true", help="leave the backend alone")
    parser.add_argument("--rmux-arg", action="append", default=[],
                        help="an extra rmux option, repeatable")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    def interrupt(signum, frame):
        raise KeyboardInterrupt("signal %d" % (signum,))

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)

    directory = tempfile.mkdtemp(prefix="rmux-soak-")
    processes = Processes()
    sampler = None
    soaks = []
    status = 1
    try:
        redis = Redis(processes, directory, args.persistence)
        redis.start()
        rmuxProcess, rmuxPath, rmuxLog = startRmux(processes, directory, redis.path, args.rmux_arg)
        time.sleep(1.0)
        rssBefore = rss(rmuxProcess.pid)
        sampler = RssSampler(rmuxProcess.pid, rmuxPath)
        sampler.start()
        print("soak: seed %d, %d clients, %.0f s in %d round(s), persistence %s, dir %s"
              % (seed, args.clients, args.seconds, args.rounds, args.persistence, directory),
              file=sys.stderr)

        started = time.monotonic()
        restart = {}
        restartAt = None if args.no_restart else started + args.seconds / 2
        roundSeconds = args.seconds / args.rounds
        after = []
        peaks = []
        for round in range(args.rounds):
            roundStart = time.monotonic()
            soak = Soak(
                rmuxPath, args.clients, seed + round, roundStart + roundSeconds, args.ops,
                args.request_deadline, args.persistence, prefix=b"soak%d" % (round,),
            )
            soaks.append(soak)
            sampler.peak = 0
            runRound(soak, redis, restartAt, restart, started)
            peaks.append(sampler.peak)
            # Every client is gone: rmux must say so.
            leftover = waitForNoClients(rmuxPath)
            if leftover != 0:
                soak.violation("rmux still counts %s clients after they all left" % (leftover,))
            time.sleep(3.0)
            after.append(rss(rmuxProcess.pid))
            print("soak: round %d: %d requests, %d violations, rmux RSS peak %s, after %s"
                  % (round + 1, soak.sent, soak.stats["violations"], mb(peaks[-1]), mb(after[-1])),
                  file=sys.stderr)
        elapsed = time.monotonic() - started
        sampler.done.set()
        sampler.join()
        peak = max(peaks)
        rssAfter = after[-1]
        last = soaks[-1]
        if rmuxProcess.poll() is not None:
            last.violation("rmux exited during the run:\n" + tail(rmuxLog))
        if redis.process.poll() is not None:
            last.violation("redis-server exited during the run")
        checked = sum(soak.verify(redis.path) for soak in soaks)
        fields = info(rmuxPath)
        rssLimit = rssBefore + args.rss_slack * 1048576
        if rssAfter > rssLimit:
            last.violation(
                "rmux's RSS stayed at %s after the run (before %s, peak %s, limit %s)"
                % (mb(rssAfter), mb(rssBefore), mb(peak), mb(rssLimit))
            )

        stats = collections.Counter()
        errors = collections.Counter()
        violations = []
        for soak in soaks:
            stats.update(soak.stats)
            errors.update(soak.errors)
            violations += soak.violations
        sent = sum(soak.sent for soak in soaks)
        print("rmux soak summary")
        print("  seed %d, %d client slots, %.1f s, %d round(s), persistence %s"
              % (seed, args.clients, elapsed, args.rounds, args.persistence))
        print("  requests: %d sent, %d ok, %d errors (%.0f/s)"
              % (sent, stats["ok"], stats["errors"], (stats["ok"] + stats["errors"]) / elapsed))
        print("  connections: %d opened (at most %d at once, from rmux's INFO), %d closed "
              "abruptly with requests in flight, %d connect retries"
              % (stats["connections"], sampler.peakClients, stats["abrupt closes"],
                 stats["connect retries"]))
        for kind, count in errors.most_common():
            print("  error %7d x %s" % (count, kind))
        if restart:
            soak = next(s for s in soaks if s.restartedAt is not None)
            recovery = (
                "%.2f s after it was up" % (soak.firstOkAfterRestart - soak.restartedAt)
                if soak.firstOkAfterRestart else "never"
            )
            print("  backend: killed (SIGKILL) at %.1f s, up again at %.1f s; first good reply %s"
                  % (restart["killedAt"], restart["upAt"], recovery))
        print("  keys checked in Redis at the end: %d (%d retired after an unknown outcome)"
              % (checked, sum(len(soak.retired) for soak in soaks)))
        print("  rmux RSS: before %s, peak %s, after %s (limit %s)"
              % (mb(rssBefore), mb(peak), mb(rssAfter), mb(rssLimit)))
        if args.rounds > 1:
            print("  rmux RSS after each round: " + ", ".join(mb(a) for a in after))
        print("  rmux INFO: total_connections_received=%s total_commands_processed=%s %s"
              % (fields.get("total_connections_received"), fields.get("total_commands_processed"),
                 fields.get("backend0")))
        print("  violations: %d" % (stats["violations"],))
        for text in violations[:20]:
            print("    - " + text)
        status = 1 if stats["violations"] else 0
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        status = 130
        for soak in soaks:
            soak.deadline = 0
    finally:
        if sampler is not None:
            sampler.done.set()
        processes.stopAll()
        if args.keep:
            print("soak: kept %s" % (directory,), file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
