#!/usr/bin/env python3
"""
rmux's benchmark: redis-benchmark against direct Redis, rmux and (when
installed) twemproxy, side by side, on one machine.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--cases a,b,...]
                                  [--out bench/results]

Everything it needs runs in a temporary directory that it removes at the end:
redis-server(s) without persistence (unix socket and a loopback TCP port
each), rmux under twistd on a unix socket, and nutcracker (twemproxy) on TCP
and, when it supports it, a unix socket.  Every process it started is
stopped on exit, on Ctrl-C and on errors.

Why it measures the way it does: the machines this runs on are small and
noisy (two cores shared by redis-server, the proxy and redis-benchmark
itself, plus whatever else runs), so a single run of one target says little.
Every case runs every target once per round, in an order that rotates from
round to round, for several rounds; the report gives medians, and each
target's ratio to direct Redis over TCP is the median of the per-round
ratios, so that the two numbers of a ratio were measured a few seconds apart.

The report (Markdown and JSON in --out, the Markdown also on stdout) holds
for each case and test the median requests/s, the spread, the ratio to direct
TCP and the p50/p99 latency; the project's goals as pass/fail; rmux's peak
RSS and CPU use per case, its RSS with 1000 idle clients connected; how many
connections the backend accepted from each target during case a; and facts
about the machine.  bench/README.md explains how to read it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List

from rmuxbench.cases import CASES, Case
from rmuxbench.common import RUN_TIMEOUT, BenchError, log
from rmuxbench.lab import Lab
from rmuxbench.report import machineFacts, rmuxCommit, rmuxSourceDigest, writeReport
from rmuxbench.results import evaluateGoals
from rmuxbench.runner import runCase
from rmuxbench.watch import RssSampler

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def raiseFileLimit(wanted: int = 65536) -> None:
    """
    Case e opens 1000 clients, and every process we start inherits our
    limit: raise the soft limit on open files as far as the hard one allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def parseOptions(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark rmux against direct Redis and twemproxy, side by side.")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one round, a tenth of the requests")
    parser.add_argument("--rounds", type=int,
                        help="measured rounds per case (default 5; 1 with --quick)")
    parser.add_argument("--cases", default="a,b,c,d,e,f,g,h,i",
                        help="comma-separated case letters or names (default all: a-i)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="where the report goes (default bench/results)")
    parser.add_argument("--pool-size", type=int, default=20, help="rmux --poolSize (default 20)")
    parser.add_argument("--rmux-backend", choices=("tcp", "unix"), default="tcp",
                        help="how rmux reaches redis-server (default tcp, like twemproxy)")
    parser.add_argument("--rmux-arg", action="append", default=[],
                        help="an extra rmux option, repeatable: "
                             "--rmux-arg=--healthInterval=1000")
    parser.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT,
                        help="seconds one redis-benchmark run may take (default %.0f)"
                             % RUN_TIMEOUT)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="an unrecorded warm-up round first (default: on, off with --quick)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run rmux from this source tree (an earlier release in a "
                             "git worktree, its C accelerator built in place) as the target "
                             "rmux-baseline, side by side with this one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    options = parser.parse_args(argv)
    if options.rounds is None:
        options.rounds = 1 if options.quick else 5
    if options.warmup is None:
        options.warmup = not options.quick
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    wanted = [c.strip().lower() for c in options.cases.split(",") if c.strip()]
    known = {c.key: c for c in CASES}
    known.update({c.name: c for c in CASES})
    unknown = [w for w in wanted if w not in known]
    if unknown:
        parser.error("unknown case(s) %s; known: %s" % (
            ", ".join(unknown), ", ".join("%s (%s)" % (c.key, c.name) for c in CASES)))
    options.selected = [c for c in CASES if c in {known[w] for w in wanted}]
    return options


def checkTools():
    """
    Fail early, and say what to install, without redis-server or
    redis-benchmark (twemproxy is optional).
    """
    missing = [t for t in ("redis-server", "redis-benchmark") if not shutil.which(t)]
    if missing:
        raise BenchError("%s not found: apt-get install redis-server redis-tools"
                         % ", ".join(missing))


def phpredisFound() -> bool:
    """
    Whether the php command line and its phpredis extension are here.
    """
    if not shutil.which("php"):
        return False
    check = subprocess.run(["php", "-r", 'exit(class_exists("Redis") ? 0 : 1);'],
                           capture_output=True, timeout=30)
    return check.returncode == 0


@contextmanager
def terminationAsInterrupt():
    """
    SIGINT, SIGTERM and SIGHUP end the benchmark through the cleanup that
    stops every process.  SIGINT too, explicitly: a shell starts background
    jobs with SIGINT ignored, and Python then never raises
    KeyboardInterrupt.
    """
    def interrupt(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def startDeployments(lab: Lab, cases: List[Case], failures: List[str]) -> None:
    """
    Start every server and proxy the selected cases need before the first
    case runs, so that all rmux processes load the same code (others may be
    editing it while the benchmark runs).
    """
    for kind in dict.fromkeys(case.deployment for case in cases):
        log("starting the %s deployment" % kind)
        try:
            lab.deployment(kind)
        except BenchError as e:
            failures.append("the %s deployment did not start: %s" % (kind, e))
            log("bench: " + failures[-1])


def main(argv=None) -> int:
    options = parseOptions(argv)
    started = time.monotonic()
    base = "/tmp" if os.path.isdir("/tmp") else None  # short unix socket paths
    directory = Path(tempfile.mkdtemp(prefix="rmux-bench-", dir=base))
    lab = sampler = None
    failures: List[str] = []
    report = {"options": {k: v for k, v in vars(options).items() if k != "selected"},
              "cases": {}, "notes": []}
    try:
        with terminationAsInterrupt():
            checkTools()
            raiseFileLimit()
            report["machine"] = machineFacts()
            lab = Lab(directory, options)
            sampler = RssSampler()
            if not lab.twemproxy:
                lab.notes.append("nutcracker not on PATH: no twemproxy targets")
            if any(case.tool == "php" for case in options.selected) and not phpredisFound():
                options.selected = [case for case in options.selected if case.tool != "php"]
                lab.notes.append("case i skipped: no php with phpredis "
                                 "(apt-get install php-cli php-redis)")
            startDeployments(lab, options.selected, failures)
            for case in options.selected:
                log("case %s: %s" % (case.key, case.title))
                try:
                    report["cases"][case.key] = runCase(lab, sampler, case, options)
                except BenchError as e:
                    failures.append("case %s not run: %s" % (case.key, e))
                    log("bench: " + failures[-1])
    except BenchError as e:
        log("bench: %s" % e)
        return 2
    except KeyboardInterrupt:
        log("bench: interrupted; stopping everything")
        return 130
    finally:
        if sampler is not None:
            sampler.stop()
        if lab is not None:
            lab.close()
        if options.keep:
            log("bench: logs kept in %s" % directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    report["notes"] = lab.notes + failures
    if rmuxSourceDigest() != report["machine"]["rmuxSource"]:
        report["notes"].append(
            "rmux's source changed during the run (%s at the start, %s now); the proxies "
            "ran the code as it was when they started" % (
                report["machine"]["rmuxCommit"], rmuxCommit()))
    report["machine"]["loadAfter"] = "%.2f" % os.getloadavg()[0]
    report["seconds"] = time.monotonic() - started
    report["goals"] = evaluateGoals(report["cases"], options.pool_size)
    path = writeReport(report, Path(options.out))
    log("bench: report in %s (and latest.md/latest.json), %.0f s" % (path, report["seconds"]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
