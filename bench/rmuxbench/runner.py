"""
Running redis-benchmark against the targets, case by case, and the
measurements around each run.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from rmuxbench.cases import Case
from rmuxbench.common import BenchError, RespClient, log
from rmuxbench.lab import Deployment, Lab, Target
from rmuxbench.results import summarize
from rmuxbench.watch import RssSampler, cpuSeconds, procStatus, treeRssKb


def testName(label: str) -> Optional[str]:
    """
    redis-benchmark's CSV label to a test name: "LRANGE_100 (first 100
    elements)" -> "LRANGE_100"; None for the LPUSH it runs only to fill the
    list LRANGE reads.
    """
    if "needed to benchmark" in label:
        return None
    return label.split(" ", 1)[0].upper()


def parseCsv(text: str) -> Dict[str, Dict[str, Optional[float]]]:
    """
    The tests of redis-benchmark --csv output, each with rps, p50 and p99
    (ms).  Redis 7 prints a header and latency columns; older versions print
    "test","rps" rows only, and the latencies are then None.
    """
    tests = {}
    header = ["test", "rps"]
    for line in text.splitlines():
        if not line.startswith('"'):
            continue
        cells = [c.strip('"') for c in line.strip().split('","')]
        if cells[0] == "test":
            header = cells
            continue
        row = dict(zip(header, cells))
        name = testName(row.get("test", ""))
        if name is None:
            continue

        def number(key):
            try:
                return float(row[key])
            except (KeyError, ValueError):
                return None

        tests[name] = {
            "rps": number("rps"),
            "p50": number("p50_latency_ms"),
            "p99": number("p99_latency_ms"),
        }
    return tests


#: What redis-benchmark prints that is not an error: its CSV, its warnings,
#: and with --cluster the masters it found.
_NOT_ERRORS = ('"', "WARNING", "Cluster has ", "Master ")


def errorLines(text: str) -> List[str]:
    """
    What redis-benchmark said besides its CSV and its warnings (a proxy
    refusing CONFIG GET, keep-alive off): connection failures and errors
    from the server, after which Redis 7's redis-benchmark exits.
    """
    lines = []
    for line in text.replace("\r", "\n").splitlines():
        line = line.strip()
        if line and not line.startswith(_NOT_ERRORS):
            lines.append(line)
    return lines


def mergeTests(parts: List[Dict[str, dict]]) -> Dict[str, dict]:
    """
    Tests of redis-benchmarks that ran at once, one per server: the
    throughputs add up, the latencies are the worst of them.
    """
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for name in parts[0]:
        rows = [p[name] for p in parts if name in p]
        if len(rows) != len(parts):
            continue  # one of them did not finish this test

        def worst(key):
            values = [r[key] for r in rows if r[key] is not None]
            return max(values) if values else None

        merged[name] = {
            "rps": sum(r["rps"] or 0 for r in rows),
            "p50": worst("p50"),
            "p99": worst("p99"),
        }
    return merged


def split(total: int, parts: int) -> List[int]:
    """
    C{total} divided into C{parts} whole shares that add up to it.
    """
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Run:
    """
    One run: one test of one case against one target (possibly several
    redis-benchmark processes at once).
    """

    target: str
    test: str
    round: int  # -1 for the warm-up
    tests: Dict[str, dict]
    errors: List[str]
    seconds: float
    backendConnections: int = 0
    proxyCpuSeconds: Optional[float] = None
    proxyPeakRssMb: Optional[float] = None
    proxyAlive: bool = True


def runBenchmark(lab: Lab, target: Target,
                 commandsFor: Callable[[List[str], int, int], List[List[str]]],
                 requests: int, clients: int, timeout: float) -> tuple:
    """
    Run the benchmark against a target: its processes for each endpoint
    (one redis-benchmark, or a PHP worker per client), all at once, with
    the requests and clients split among the endpoints.  Returns the
    merged tests, the error lines, and the wall-clock time.
    """
    endpoints = target.endpoints
    shares = zip(endpoints, split(requests, len(endpoints)), split(clients, len(endpoints)))
    jobs, errors = [], []
    started = time.monotonic()
    try:
        for endpoint, n, c in shares:
            for argv in commandsFor(endpoint, n, c):
                jobs.append(lab.processes.start("bench-%d" % len(jobs), argv))
        deadline = started + timeout
        for job in jobs:
            try:
                job.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                errors.append("redis-benchmark still running after %.0f s: killed" % timeout)
                job.popen.kill()
                job.popen.wait()
    finally:
        for job in jobs:
            lab.processes.stop(job)
    seconds = time.monotonic() - started
    parts = []
    for job in jobs:
        text = job.log.read_text(errors="replace")
        parts.append(parseCsv(text))
        errors += errorLines(text)
        if job.popen.returncode not in (0, -signal.SIGKILL):
            errors.append("redis-benchmark exited with status %d" % job.popen.returncode)
    return mergeTests(parts), errors, seconds


def runOnce(lab: Lab, sampler: RssSampler, deployment: Deployment, target: Target,
            case: Case, test: str, requests: int, round_: int, timeout: float) -> Run:
    """
    One run, and the bookkeeping around it: the connections the backends
    accepted meanwhile, the proxy's CPU time and peak memory, whether the
    proxy survived.
    """
    pid = target.process.pid if target.process else None
    before = [s.connectionsReceived() for s in deployment.servers]
    cpuBefore = cpuSeconds(pid) if pid else None
    started = time.monotonic()
    if pid:
        sampler.sampleNow(pid)
    tests, errors, seconds = runBenchmark(
        lab, target, lambda endpoint, n, c: case.commands(endpoint, n, c, test),
        requests, case.clients, timeout)
    if pid:
        sampler.sampleNow(pid)
    cpuAfter = cpuSeconds(pid) if pid else None
    after = [s.connectionsReceived() for s in deployment.servers]
    run = Run(target.name, test, round_, tests, errors, seconds,
              backendConnections=sum(after) - sum(before))
    if cpuBefore is not None and cpuAfter is not None:
        run.proxyCpuSeconds = cpuAfter - cpuBefore
    if pid:
        peak = sampler.peakKb(pid, started, time.monotonic())
        run.proxyPeakRssMb = peak / 1024 if peak is not None else None
    if target.process is not None and not target.process.alive():
        run.proxyAlive = False
        target.dead = "%s exited with status %s during case %s\n%s" % (
            target.process.name, target.process.popen.returncode, case.key,
            target.process.logTail())
        run.errors.append(target.dead)
    elif any("still running after" in e for e in errors):
        target.dead = "a run did not finish within %.0f s in case %s" % (timeout, case.key)
    return run


def connectPatiently(address, deadline: float) -> tuple:
    """
    Connect to a proxy, retrying while its listen queue is full (a unix
    socket refuses at once with EAGAIN instead of queueing the connect as
    TCP does).  Returns the socket and how many retries it took.
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    retries = 0
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(address)
            return sock, retries
        except (BlockingIOError, ConnectionRefusedError, socket.timeout) as e:
            sock.close()
            retries += 1
            if time.monotonic() > deadline:
                raise BenchError("cannot connect to %s: %s" % (address, e))
            time.sleep(0.002)
        except OSError:
            sock.close()
            raise


def endpointAddress(endpoint: List[str]):
    """
    redis-benchmark's address arguments as a socket address.
    """
    if endpoint[0] == "-s":
        return endpoint[1]
    return (endpoint[1], int(endpoint[3]))


def measureIdleClients(target: Target, clients: int, timeout: float = 60.0) -> dict:
    """
    The proxy's resident memory with C{clients} idle clients connected.

    The clients are ours rather than redis-benchmark -I's, which gives up
    at the first refused connect: each connects (patiently, see
    L{connectPatiently}) and sends a GET, so the proxy has set every one of
    them up before the memory is read.  (GET, not PING: twemproxy 0.5
    does not answer PING.)
    """
    address = endpointAddress(target.endpoints[0])
    pid = target.process.pid
    deadline = time.monotonic() + timeout
    socks, retries = [], 0
    try:
        for _ in range(clients):
            sock, tries = connectPatiently(address, deadline)
            socks.append(sock)
            retries += tries
        for sock in socks:
            sock.sendall(b"*2\r\n$3\r\nGET\r\n$10\r\nbench:idle\r\n")
        for sock in socks:
            reply = sock.recv(64)
            if reply != b"$-1\r\n":
                raise BenchError("a client got %r to its GET" % (reply,))
        time.sleep(0.5)  # let the per-client state settle
        return {
            "clients": clients,
            "rssMb": (treeRssKb(pid) or 0) / 1024,
            "connectRetries": retries,
            "alive": target.process.alive(),
        }
    except (BenchError, OSError) as e:
        return {"clients": clients, "error": "%s after %d clients" % (e, len(socks)),
                "connectRetries": retries, "alive": target.process.alive()}
    finally:
        for sock in socks:
            sock.close()


def listenBacklog(endpoint: List[str]) -> Optional[int]:
    """
    The listen queue length of the socket a target listens on, from ss (the
    Send-Q of a listening socket): a short one refuses bursts of connects.
    """
    if not shutil.which("ss"):
        return None
    if endpoint[0] == "-s":
        argv, wanted = ["ss", "-xlnH"], endpoint[1]
    else:
        argv, wanted = ["ss", "-tlnH"], "%s:%s" % (endpoint[1], endpoint[3])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        cells = line.split()
        if wanted in cells:
            # u_str LISTEN Recv-Q Send-Q path ... / LISTEN Recv-Q Send-Q local ...
            index = 3 if endpoint[0] == "-s" else 2
            try:
                return int(cells[index])
            except (IndexError, ValueError):
                return None
    return None


def rmuxCounters(target: Target) -> dict:
    """
    rmux's own view of its backends (connects, errors, timeouts, summed over
    backends): where a misbehaving pool shows first.
    """
    client = RespClient(endpointAddress(target.endpoints[0]), timeout=2.0)
    try:
        info = client.info("backends")
    except (OSError, BenchError) as e:
        return {"error": str(e)}
    finally:
        client.close()
    counters = {}
    for key, value in info.items():
        if key.startswith("backend"):
            for pair in value.split(","):
                name, _, number = pair.partition("=")
                if number.isdigit():
                    counters[name] = counters.get(name, 0) + int(number)
    return counters


def counterDelta(before: dict, after: dict) -> dict:
    """
    How rmux's counters moved during a case; "connections" is a gauge (the
    pool's open connections) and is given as it is at the end.
    """
    delta = {k: after[k] - before.get(k, 0) for k in after
             if isinstance(after.get(k), int) and isinstance(before.get(k), int)}
    if "connections" in after:
        delta["connections"] = after["connections"]
    return delta


def runCase(lab: Lab, sampler: RssSampler, case: Case, options) -> dict:
    """
    Every test against every target of the case's deployment, once per
    round (after an unrecorded warm-up round with fewer requests), the
    targets in an order that rotates every round; the proxies' memory and
    CPU are watched throughout.  The data are flushed once, at the start:
    GET then reads what the SET runs wrote, as in one redis-benchmark run.
    """
    deployment = lab.deployment(case.deployment)
    targets = deployment.targets
    requests = case.quickRequests if options.quick else case.requests
    proxies = [t.process.pid for t in targets if t.process is not None]
    for pid in proxies:
        sampler.watch(pid)
    for server in deployment.servers:
        server.admin.call("FLUSHALL")
    rmux = next(t for t in targets if t.kind == "rmux")
    countersBefore = rmuxCounters(rmux)
    runs: List[Run] = []
    started = time.monotonic()
    startRss = {pid: sampler.sampleNow(pid) for pid in proxies}
    rounds = ([-1] if options.warmup else []) + list(range(options.rounds))
    for round_ in rounds:
        order = targets[round_ % len(targets):] + targets[:round_ % len(targets)]
        n = max(case.clients, requests // 4) if round_ < 0 else requests
        for test in case.tests:
            for target in order:
                if target.dead:
                    continue
                run = runOnce(lab, sampler, deployment, target, case, test, n, round_,
                              options.run_timeout)
                runs.append(run)
                log("  %s %s %-10s %-15s %s" % (
                    case.key, "warm-up" if round_ < 0 else "round %d" % (round_ + 1),
                    test, target.name, describeRun(run)))
    result = {
        "key": case.key, "name": case.name, "title": case.title,
        "argv": case.argv(requests, case.clients), "requests": requests,
        "seconds": time.monotonic() - started,
        "runs": [run.__dict__ for run in runs],
        "skipped": {t.name: t.dead for t in targets if t.dead},
        "listenBacklog": {t.name: listenBacklog(t.endpoints[0])
                          for t in targets if len(t.endpoints) == 1},
    }
    if case.key == "e":
        result["idle"] = idleClients(targets, case.clients)
    result["rmuxCounters"] = counterDelta(countersBefore, rmuxCounters(rmux))
    result["resources"] = caseResources(targets, runs, sampler, started, startRss)
    result["summary"] = summarize(runs, [t.name for t in targets])
    return result


def idleClients(targets: List[Target], clients: int) -> dict:
    """
    L{measureIdleClients} for each live proxy process (once per process:
    twemproxy's two listeners share one).
    """
    results, measured = {}, []
    for target in targets:
        process = target.process
        if process is not None and process.alive() and process not in measured:
            measured.append(process)
            results[target.name] = measureIdleClients(target, clients)
    return results


def describeRun(run: Run) -> str:
    rates = " ".join("%s=%.0f" % (name, t["rps"] or 0) for name, t in run.tests.items())
    text = "%.1fs %s" % (run.seconds, rates)
    if run.errors:
        text += "  ERRORS: " + " | ".join(run.errors[:3])
    return text


def caseResources(targets: List[Target], runs: List[Run], sampler: RssSampler,
                  started: float, startRss: Dict[int, Optional[int]]) -> dict:
    """
    Per target: the backend connections it caused.  Per proxy also: its RSS
    when the case started, the peak during the whole case and during its
    own runs, VmHWM (the peak since it started), and its CPU use during its
    own runs as a share of one core (a single-threaded proxy at 100% is
    CPU-bound).
    """
    def mb(kb):
        return kb / 1024 if kb is not None else None

    resources = {}
    for target in targets:
        mine = [r for r in runs if r.target == target.name]
        entry = {"backendConnections": sum(r.backendConnections for r in mine)}
        if target.process is not None:
            pid = target.process.pid
            timed = [r for r in mine if r.proxyCpuSeconds is not None]
            wall = sum(r.seconds for r in timed)
            ownPeaks = [r.proxyPeakRssMb for r in mine if r.proxyPeakRssMb is not None]
            entry.update({
                "startRssMb": mb(startRss.get(pid)),
                "peakRssMb": mb(sampler.peakKb(pid, started, time.monotonic())),
                "ownRunsPeakRssMb": max(ownPeaks) if ownPeaks else None,
                "hwmMb": mb(procStatus(pid, "VmHWM")),
                "cpuShare": sum(r.proxyCpuSeconds for r in timed) / wall if wall else None,
            })
        resources[target.name] = entry
    return resources
