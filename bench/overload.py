"""
rmux under overload, beside direct Redis: errors, backends wrongly marked
down, a well-behaved client's latency, and rmux's peak memory.

Loads (the overload issue's):
  - pipelined: 200 clients, each sending rounds of 1,000 pipelined GETs of
    1 KB values and reading them, 200,000 GETs in all (redis-benchmark
    -c 200 -P 1000 -t get);
  - flood: 2,000 clients each write 1,000 pipelined GETs of 1 KB values and
    do not read for --hold seconds, then read everything;
  - slowloris: 8 clients each declare a 500 MB SET value and drip 100 MB of
    it, slowly; reported: what rmux held, and what the clients were told;
  - big: one client SETs a 400 MB value and GETs it back (peak RSS against
    the value's size).
Alongside each load, one well-behaved client does a GET every 10 ms.

Run with nothing else running:
  .venv/bin/python bench/overload.py [--loads pipelined,flood,slowloris]
Only loopback sockets; every process started is stopped by its PID.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import selectors

import hiredis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUE = b"v" * 1024
KEYS = 1000


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(path, timeout=None, patience=30.0):
    """
    A connection to C{path}, retried while the server's listen backlog is
    full (it accepts slower than 2,000 clients connect).
    """
    deadline = time.monotonic() + patience
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def ask(path, *args):
    with connect(path, 10) as s:
        s.sendall(command(*args))
        reader = hiredis.Reader()
        while True:
            reader.feed(s.recv(1 << 20))
            reply = reader.gets()
            if reply is not False:
                return reply


class Lab:
    """
    Three redis-servers and an rmux in front of them, in a temporary
    directory; L{close} stops each by its PID.
    """

    def __init__(self, servers=3, rmuxArgs=()):
        self.directory = tempfile.mkdtemp(prefix="rmux-overload-")
        self.processes = []
        self.ports = [freePort() for _ in range(servers)]
        self.direct = os.path.join(self.directory, "direct.sock")
        for i, port in enumerate(self.ports):
            extra = ["--unixsocket", self.direct] if i == 0 else []
            self.start([
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.directory, "--maxclients", "10000",
                "--logfile", os.path.join(self.directory, "redis-%d.log" % port),
            ] + extra)
        self.socket = os.path.join(self.directory, "rmux.sock")
        self.log = os.path.join(self.directory, "rmux.log")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = dict(os.environ, PYTHONPATH=REPO)
        self.rmux = self.start(
            [twistd, "-n", "--pidfile=", "--logfile=" + self.log, "rmux",
             "--socket=" + self.socket,
             "--tcpConnections=" + " ".join("127.0.0.1:%d" % p for p in self.ports)]
            + list(rmuxArgs), env=env,
        )
        self.waitFor(self.direct)
        self.waitFor(self.socket)

    def start(self, argv, env=None):
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, env=env,
        )
        self.processes.append(process)
        return process

    def waitFor(self, path, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ask(path, "PING") == b"PONG":
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("nothing answers on %s" % (path,))

    def logEvents(self):
        with open(self.log, errors="replace") as f:
            text = f.read()
        return {
            "backend_down": text.count(" is down"),
            "backend_timeouts": text.count("did not reply") + text.count("did not accept")
            + text.count("did not complete"),
            "connect_failures": text.count("cannot connect"),
        }

    def close(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class Memory:
    """
    The peak RSS of one process over a stretch of time (VmHWM, reset first).
    """

    def __init__(self, pid):
        self.pid = pid

    def reset(self):
        try:
            with open("/proc/%d/clear_refs" % self.pid, "w") as f:
                f.write("5")
        except OSError:
            pass

    def peakMB(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
        return None


class WellBehaved(threading.Thread):
    """
    One client doing a GET every 10 ms, timing each.
    """

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.latencies = []
        self.errors = []
        self.done = threading.Event()

    def run(self):
        s = connect(self.path, 30)
        reader = hiredis.Reader()
        request = command("GET", "key:1")
        while not self.done.is_set():
            started = time.monotonic()
            try:
                s.sendall(request)
                reply = False
                while reply is False:
                    reader.feed(s.recv(65536))
                    reply = reader.gets()
            except OSError as e:
                self.errors.append(str(e))
                return
            self.latencies.append(time.monotonic() - started)
            if isinstance(reply, hiredis.ReplyError):
                self.errors.append(str(reply))
            time.sleep(0.01)
        s.close()

    def summary(self):
        values = sorted(self.latencies)
        if not values:
            return {"requests": 0, "errors": self.errors[:3]}

        def at(q):
            return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

        return {"requests": len(values), "p50_ms": at(0.5), "p99_ms": at(0.99),
                "max_ms": round(values[-1] * 1000, 2), "errors": len(self.errors),
                "first_errors": self.errors[:3]}


def readAll(clients, expected, timeout):
    """
    Read C{expected} replies from each client; count the good and the
    error replies, and the clients that were closed.
    """
    selector = selectors.DefaultSelector()
    state = {}
    for s in clients:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
        state[s] = [hiredis.Reader(), 0]
    ok = errors = closed = 0
    firstErrors = []
    deadline = time.monotonic() + timeout
    while state and time.monotonic() < deadline:
        for key, _ in selector.select(1.0):
            s = key.fileobj
            reader, count = state[s]
            try:
                data = s.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed += 1
                selector.unregister(s)
                del state[s]
                continue
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is False:
                    break
                count += 1
                if isinstance(reply, hiredis.ReplyError):
                    errors += 1
                    if len(firstErrors) < 3:
                        firstErrors.append(str(reply))
                else:
                    ok += 1
            state[s][1] = count
            if count >= expected:
                selector.unregister(s)
                del state[s]
    selector.close()
    return {"ok": ok, "errors": errors, "closed_clients": closed,
            "unfinished_clients": len(state), "first_errors": firstErrors}


def pipelined(path, clients=200, pipeline=1000, total=200000, timeout=300):
    rounds = max(1, total // (clients * pipeline))
    batch = b"".join(command("GET", "key:%d" % (i % KEYS)) for i in range(pipeline))
    result = {"ok": 0, "errors": 0, "closed_clients": 0, "first_errors": []}
    sockets = [connect(path, 30) for _ in range(clients)]
    started = time.monotonic()
    for _ in range(rounds):
        for s in sockets:
            s.setblocking(True)
            s.sendall(batch)
        part = readAll(sockets, pipeline, timeout)
        for key in ("ok", "errors", "closed_clients"):
            result[key] += part[key]
        result["first_errors"] = (result["first_errors"] + part["first_errors"])[:3]
    result["seconds"] = round(time.monotonic() - started, 2)
    for s in sockets:
        s.close()
    return result


def flood(path, clients=2000, pipeline=1000, hold=20.0, timeout=300):
    batch = b"".join(command("GET", "key:%d" % (i % KEYS)) for i in range(pipeline))
    sockets = []
    for _ in range(clients):
        s = connect(path, 30)
        s.sendall(batch)
        sockets.append(s)
    time.sleep(hold)
    started = time.monotonic()
    result = readAll(sockets, pipeline, timeout)
    result["read_seconds"] = round(time.monotonic() - started, 2)
    for s in sockets:
        s.close()
    return result


def slowloris(path, clients=8, declared=500 << 20, sent=100 << 20, seconds=20.0):
    """
    Each client declares a C{declared}-byte value and sends C{sent} bytes of
    it over C{seconds}; what did rmux tell them?
    """
    sockets = [connect(path, 5) for _ in range(clients)]
    header = b"*3\r\n$3\r\nSET\r\n$9\r\nslowloris\r\n$%d\r\n" % declared
    for s in sockets:
        s.sendall(header)
    chunk = b"x" * (1 << 20)
    steps = sent // len(chunk)
    closed = set()
    told = []
    for step in range(steps):
        for s in sockets:
            if s in closed:
                continue
            try:
                s.sendall(chunk)
            except OSError:
                closed.add(s)
        time.sleep(seconds / steps)
    for s in sockets:
        s.settimeout(0.5)
        try:
            data = s.recv(4096)
            if data:
                told.append(data.split(b"\r\n")[0].decode(errors="replace"))
            else:
                closed.add(s)
        except socket.timeout:
            pass
        except OSError:
            closed.add(s)
        s.close()
    return {"clients_closed": len(closed), "told": sorted(set(told))}


def bigValue(path, size=400 << 20):
    """
    SET a C{size}-byte value and GET it back, from one client.
    """
    value = b"b" * size
    told = []
    started = time.monotonic()
    with connect(path, 120) as s:
        s.sendall(command("SET", "bigvalue", value))
        reader = hiredis.Reader()
        reply = False
        while reply is False:
            reader.feed(s.recv(65536))
            reply = reader.gets()
        told.append(repr(reply)[:80])
        s.sendall(command("GET", "bigvalue"))
        got = bytearray()
        header = b""
        while b"\r\n" not in header:
            header += s.recv(64)
        line, rest = header.split(b"\r\n", 1)
        got += rest
        want = int(line[1:]) + 2 if line[:1] == b"$" else 0
        while len(got) < want:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        told.append(line.decode(errors="replace")[:80])
        same = bytes(got[:-2]) == value
        s.sendall(command("DEL", "bigvalue"))
        s.recv(64)
    return {"value_mb": size >> 20, "told": told, "same": same,
            "seconds": round(time.monotonic() - started, 2)}


LOADS = {"pipelined": pipelined, "flood": flood, "slowloris": slowloris, "big": bigValue}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--loads", default="pipelined,flood,slowloris,big")
    parser.add_argument("--targets", default="rmux,direct")
    parser.add_argument("--hold", type=float, default=20.0, help="flood: seconds unread")
    parser.add_argument("--quick", action="store_true", help="a tenth of each load")
    parser.add_argument("--out", help="write the results as JSON here too")
    parser.add_argument("rmuxArgs", nargs="*", help="more rmux options, after --")
    options = parser.parse_args(argv)
    lab = Lab(rmuxArgs=options.rmuxArgs)
    results = {}
    try:
        for target in options.targets.split(","):
            path = lab.socket if target == "rmux" else lab.direct
            pid = lab.rmux.pid if target == "rmux" else lab.processes[0].pid
            memory = Memory(pid)
            pipe = b"".join(command("SET", "key:%d" % i, VALUE) for i in range(KEYS))
            with connect(path, 30) as s:
                s.sendall(pipe)
                reader, count = hiredis.Reader(), 0
                while count < KEYS:
                    reader.feed(s.recv(65536))
                    while reader.gets() is not False:
                        count += 1
            for load in options.loads.split(","):
                kwargs = {}
                if options.quick:
                    kwargs = {"pipelined": {"total": 20000, "clients": 20},
                              "flood": {"clients": 200, "hold": 2.0},
                              "slowloris": {"sent": 10 << 20, "seconds": 2.0},
                              "big": {"size": 40 << 20}}[load]
                elif load == "flood":
                    kwargs = {"hold": options.hold}
                before = lab.logEvents()
                memory.reset()
                watcher = WellBehaved(path)
                watcher.start()
                outcome = LOADS[load](path, **kwargs)
                watcher.done.set()
                watcher.join(30)
                after = lab.logEvents()
                outcome["well_behaved"] = watcher.summary()
                outcome["peak_rss_mb"] = memory.peakMB()
                if target == "rmux":
                    outcome["log"] = {k: after[k] - before[k] for k in after}
                results["%s %s" % (target, load)] = outcome
                print("%-16s %s" % (target + " " + load, json.dumps(outcome)), flush=True)
    finally:
        lab.close()
    if options.out:
        with open(options.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
