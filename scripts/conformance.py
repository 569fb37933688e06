#!/usr/bin/env python3
"""
rmux's conformance harness: redis-py's own test suite, unpatched, run
directly against a redis-server, then through rmux with one backend and
with three, side by side.

    .venv/bin/python scripts/conformance.py [--runs direct,one,three]
                                            [--require PERCENT] [--keep]

It takes the suite from redis-py's source distribution (pip download
--no-binary :all: redis==5.2.1 ships tests/) into .conformance/, with a
virtualenv of its own holding that very redis-py and pytest; starts fresh
redis-servers on free loopback ports for each run, and rmux (this checkout)
under twistd on a loopback TCP port (redis-py's test fixtures connect over
TCP); and records every test's outcome with scripts/conformance_plugin.py.

It prints: how many tests pass directly (N); through rmux with one
backend, how many of those pass (M, and M/N); with three backends, how
many of the N' direct passes that redis-py expects a sharded deployment to
pass (those not marked onlynoncluster) pass, and how many of the rest; and
every test lost.  It fails (exit 1) when a share is below --require, or
when a lost test is not listed, with its reason, in the README's
"Differences from Redis" section.  Every process it starts is stopped by
its PID, and its temporary directory removed.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, ".conformance")
REDIS_PY = "5.2.1"
PYTEST = "pytest==9.2.0"
SUITE = [
    "tests/test_commands.py", "tests/test_pipeline.py", "tests/test_pubsub.py",
    "tests/test_scripting.py", "tests/test_lock.py", "tests/test_connection_pool.py",
    "tests/test_function.py", "tests/test_monitor.py",
]
MARKS = "not onlycluster and not redismod"
README_SECTION = "## Differences from Redis"
#: A run takes about two minutes; one that hangs must not eat CI's time.
RUN_TIMEOUT = 600


def log(message):
    print("conformance: " + message, file=sys.stderr, flush=True)


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, **kwargs)


def prepare():
    """
    The suite's directory, and the python of a virtualenv with its
    redis-py and pytest; made once in .conformance/.
    """
    source = os.path.join(WORK, "redis-%s" % REDIS_PY)
    python = os.path.join(WORK, "venv", "bin", "python")
    if not os.path.isdir(os.path.join(source, "tests")):
        os.makedirs(WORK, exist_ok=True)
        log("downloading redis-py %s's source distribution" % REDIS_PY)
        run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-deps", "--no-binary", ":all:", "-d", WORK, "redis==%s" % REDIS_PY])
        with tarfile.open(os.path.join(WORK, "redis-%s.tar.gz" % REDIS_PY)) as archive:
            archive.extractall(WORK, filter="data")
    if not os.path.exists(python):
        log("making its virtualenv")
        run([sys.executable, "-m", "venv", os.path.join(WORK, "venv")])
        run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             PYTEST, "packaging", source])
    return source, python


class Processes:
    """
    The servers and proxies of one run, stopped by their PIDs.
    """

    def __init__(self, directory):
        self.directory = directory
        self.started = []

    def start(self, name, argv, env=None):
        logFile = open(os.path.join(self.directory, name + ".log"), "wb")
        process = subprocess.Popen(argv, stdout=logFile, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        self.started.append((name, process))
        return process

    def stopAll(self):
        for name, process in reversed(self.started):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for name, process in reversed(self.started):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self.started = []


def ping(port, timeout=15.0, process=None):
    """
    Wait until something on C{port} answers a GET (a proxy whose backend
    is ready answers it; one starting up does not).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("exited while starting (see its log)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"*2\r\n$3\r\nGET\r\n$18\r\nrmux:conformance:x\r\n")
                if s.recv(100).startswith(b"$-1"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("nothing answered on port %d" % port)


def startRedis(processes, name):
    port = freePort()
    directory = os.path.join(processes.directory, name)
    os.makedirs(directory)
    process = processes.start(name, [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", directory, "--enable-debug-command", "yes",
    ])
    ping(port, process=process)
    return port


def startRmux(processes, backends, flags):
    port = freePort()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = processes.start("rmux", [
        twistd, "-n", "--pidfile=", "rmux", "--host=127.0.0.1", "--port=%d" % port,
        "--tcpConnections=" + " ".join("127.0.0.1:%d" % p for p in backends),
    ] + flags, env=env)
    ping(port, process=process)
    return port


#: Each run: how many redis-servers, whether rmux is in front, its flags.
RUNS = {
    "direct": (1, False, []),
    "one": (1, True, []),
    # As a sharded deployment runs: redis-py's fixtures empty the db after
    # each test, so FLUSHDB must reach every server; keys that must meet
    # name a {tag}, as with Redis Cluster; and its pipelines are MULTI/EXEC.
    "three": (3, True, ["--allowFlush", "--hashTag={}", "--crossServerTransactions"]),
}


def runSuite(name, source, python, directory):
    """
    One run of the suite; returns the plugin's record of it.
    """
    servers, proxied, flags = RUNS[name]
    processes = Processes(directory)
    out = os.path.join(directory, name + ".json")
    try:
        ports = [startRedis(processes, "%s-redis-%d" % (name, i)) for i in range(servers)]
        port = startRmux(processes, ports, flags) if proxied else ports[0]
        log("%s: running redis-py's suite against port %d" % (name, port))
        env = dict(os.environ, RMUX_CONFORMANCE_OUT=out,
                   PYTHONPATH=os.path.join(ROOT, "scripts"))
        started = time.monotonic()
        try:
            subprocess.run(
                [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                 "conformance_plugin", "-W", "ignore", "-m", MARKS,
                 "--redis-url=redis://127.0.0.1:%d/0" % port] + SUITE,
                cwd=source, env=env, stdout=open(os.path.join(directory, name + ".pytest"), "wb"),
                stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            # The plugin records as it goes: the tests not reached are lost.
            log("%s: stopped after %d s; the tests not run count as lost"
                % (name, RUN_TIMEOUT))
        log("%s: done in %.0f s" % (name, time.monotonic() - started))
    finally:
        processes.stopAll()
    if not os.path.exists(out) or not _load(out)["outcomes"]:
        # The suite did not start (its session set-up failed): every test
        # is lost, and pytest's last words say why.
        with open(os.path.join(directory, name + ".pytest"), "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace")
        log("%s: the suite did not run:\n%s" % (name, tail))
        return {"outcomes": {}, "single": [], "error": tail}
    return _load(out)


def _load(path):
    with open(path) as f:
        return json.load(f)


def passed(record):
    return {nodeid for nodeid, outcome in record["outcomes"].items() if outcome == "passed"}


def listedInReadme():
    """
    The tests the README's "Differences from Redis" section names.
    """
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    if README_SECTION not in text:
        return set()
    section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    return {word.strip("`,.;:()") for word in section.split() if "::" in word}


def report(records, require):
    """
    Print the comparison; return the problems that fail the harness.
    """
    problems = []
    direct = passed(records["direct"])
    single = set(records["direct"]["single"])
    print("redis-py %s's suite (%s), -m %r" % (REDIS_PY, ", ".join(SUITE), MARKS))
    print("direct against redis-server: %d pass" % len(direct))
    lost = {}
    if "one" in records:
        mine = passed(records["one"])
        share = 100.0 * len(mine & direct) / len(direct)
        print("through rmux, one backend: %d of those %d pass (%.1f%%)"
              % (len(mine & direct), len(direct), share))
        lost["one"] = sorted(direct - mine)
        if share < require:
            problems.append("one backend: %.1f%% is below %g%%" % (share, require))
    if "three" in records:
        mine = passed(records["three"])
        sharded = direct - single
        share = 100.0 * len(mine & sharded) / len(sharded)
        print("through rmux, three backends: %d of the %d that redis-py expects a sharded "
              "deployment to pass (%.1f%%); %d of the %d marked onlynoncluster"
              % (len(mine & sharded), len(sharded), share, len(mine & direct & single),
                 len(direct & single)))
        lost["three"] = sorted(sharded - mine)
        if share < require:
            problems.append("three backends: %.1f%% is below %g%%" % (share, require))
    listed = listedInReadme()
    for name, tests in lost.items():
        print("\nlost through rmux (%s backend%s):" % (name, "" if name == "one" else "s"))
        for test in tests:
            print("  " + test)
            if test not in listed:
                problems.append("%s is lost (%s) but not listed in the README's %r"
                                % (test, name, README_SECTION.strip("# ")))
    return problems


def _stopped(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so every process started is stopped.
    raise KeyboardInterrupt("SIGTERM")


def main(argv=None):
    signal.signal(signal.SIGTERM, _stopped)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="direct,one,three",
                        help="which runs (default direct,one,three)")
    parser.add_argument("--require", type=float, default=98.0,
                        help="the least share of direct passes rmux must pass (default 98)")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    options = parser.parse_args(argv)
    runs = [r.strip() for r in options.runs.split(",") if r.strip()]
    if "direct" not in runs:
        runs.insert(0, "direct")
    source, python = prepare()
    directory = tempfile.mkdtemp(prefix="rmux-conformance-")
    try:
        records = {name: runSuite(name, source, python, directory) for name in runs}
    finally:
        if options.keep:
            log("logs kept in " + directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    with open(os.path.join(WORK, "latest.json"), "w") as f:
        json.dump(records, f)
    problems = report(records, options.require)
    for problem in problems:
        print("conformance: FAIL: " + problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
