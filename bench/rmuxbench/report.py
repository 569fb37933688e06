"""
The report: facts about the machine, and the Markdown and JSON files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import List, Optional

from rmuxbench.common import REPO, RMUX
from rmuxbench.results import fmt


def goalCell(caseKey: str, target: str, test: str, goals: List[dict]) -> str:
    """
    The pass/fail cell on rmux's row of a test that has a ratio goal.
    """
    if target != RMUX:
        return ""
    cells = []
    for g in goals:
        if g["case"] == caseKey and g.get("test") == test:
            against = g.get("against", "redis-tcp")
            cells.append("≥ %gx%s: %s" % (
                g["ratio"], "" if against == "redis-tcp" else " " + against,
                "PASS" if g["pass"] else "FAIL"))
    return "; ".join(cells)


def resourcesTable(report: dict) -> List[str]:
    """
    rmux's memory, CPU and backend connections, case by case.
    """
    lines = ["## rmux per case", "",
             "| case | RSS MB at start | peak RSS MB in its runs | CPU (share of a core) "
             "| backend connections accepted | pool connects / errors / timeouts "
             "| runs with errors |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for case in report["cases"].values():
        r = case["resources"].get(RMUX, {})
        c = case.get("rmuxCounters", {})
        lines.append("| %s. %s | %s | %s | %s | %s | %s / %s / %s | %s |" % (
            case["key"], case["name"], fmt(r.get("startRssMb"), "%.1f"),
            fmt(r.get("ownRunsPeakRssMb"), "%.1f"),
            fmt(r["cpuShare"] * 100 if r.get("cpuShare") is not None else None, "%.0f%%"),
            r.get("backendConnections", "–"), c.get("connects", "–"), c.get("errors", "–"),
            c.get("timeouts", "–"), case["summary"].get(RMUX, {}).get("errorRuns", "–")))
    if "a" in report["cases"]:
        a = report["cases"]["a"]["resources"]
        lines += ["", "Connections the backend accepted during case a (all rounds and the "
                  "warm-up): " + ", ".join("%s %d" % (t, r["backendConnections"])
                                           for t, r in a.items()) + "."]
    return lines


def caseTable(case: dict, goals: List[dict]) -> List[str]:
    """
    One case: a row per test and target.
    """
    lines = ["### %s. %s" % (case["key"], case["title"]), "",
             "`redis-benchmark %s`, %s" % (" ".join(case["argv"]),
                                           "%.0f s in all" % case["seconds"]), "",
             "| test | target | req/s (median) | spread | × redis-tcp | p50 ms | p99 ms | goal |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    summary = case["summary"]
    names = []
    for target in summary.values():
        names += [n for n in target["tests"] if n not in names]
    for name in names:
        for target, data in summary.items():
            t = data["tests"].get(name)
            if t is None:
                lines.append("| %s | %s | no result | | | | | %s |" % (
                    name, target, goalCell(case["key"], target, name, goals)))
                continue
            spread = ("±%.0f%%" % (50 * (t["rpsMax"] - t["rpsMin"]) / t["rps"])
                      if t["rps"] and t["rounds"] > 1 else "")
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name, target, fmt(t["rps"]), spread, fmt(t["ratio"], "%.2f"),
                fmt(t["p50"], "%.2f"), fmt(t["p99"], "%.2f"),
                goalCell(case["key"], target, name, goals)))
    lines.append("")
    lines += caseNotes(case)
    return lines


def caseNotes(case: dict) -> List[str]:
    """
    Under a case's table: errors, skipped targets, proxy resources, and the
    backend connections each target caused.
    """
    notes = []
    for target, data in case["summary"].items():
        if data["errorRuns"]:
            notes.append("- **%s: %d of its runs had errors**, first: `%s`" % (
                target, data["errorRuns"], " | ".join(data["firstErrors"])[:400]))
    for target, why in case["skipped"].items():
        notes.append("- %s: remaining runs skipped: %s" % (target, why.splitlines()[0]))
    for target, r in case["resources"].items():
        parts = ["%d backend connections accepted" % r["backendConnections"]]
        if "peakRssMb" in r:
            parts.append("RSS %s MB at the start, peak %s MB during the case, %s MB during "
                         "its own runs (VmHWM %s MB)" % (
                             fmt(r["startRssMb"], "%.1f"), fmt(r["peakRssMb"], "%.1f"),
                             fmt(r["ownRunsPeakRssMb"], "%.1f"), fmt(r["hwmMb"], "%.1f")))
            if r["cpuShare"] is not None:
                parts.append("CPU %.0f%% of a core during its runs" % (100 * r["cpuShare"]))
        notes.append("- %s: %s" % (target, ", ".join(parts)))
    counters = case.get("rmuxCounters", {})
    if counters:
        notes.append("- rmux's backend counters during the case: %s; pool connections "
                     "open at the end: %s" % (
                         ", ".join("%s %+d" % (k, v) for k, v in counters.items()
                                   if k != "connections"),
                         counters.get("connections", "?")))
    for target, idle in case.get("idle", {}).items():
        retries = ("; %d connects refused (listen queue full) and retried"
                   % idle["connectRetries"] if idle.get("connectRetries") else "")
        if "rssMb" in idle:
            notes.append("- %s with %d idle clients connected: RSS %.1f MB%s" % (
                target, idle["clients"], idle["rssMb"], retries))
        else:
            notes.append("- %s idle-client measurement failed: %s%s" % (
                target, idle.get("error", "?").splitlines()[0], retries))
    backlogs = {t: b for t, b in case.get("listenBacklog", {}).items() if b is not None}
    if backlogs:
        notes.append("- listen queue (backlog) lengths: %s" % ", ".join(
            "%s %d" % item for item in backlogs.items()))
    return notes + [""]


def renderMarkdown(report: dict) -> str:
    lines = ["# rmux benchmark", ""]
    m = report["machine"]
    lines += [
        "%s; %s cores (%s); Python %s, Twisted %s, %s, %s; rmux %s; load %s before, %s after; "
        "%d rounds%s; full run %.0f s." % (
            m["date"], m["cores"], m["cpu"], m["python"], m["twisted"], m["redis"],
            m["twemproxy"] or "no twemproxy", m["rmuxCommit"], m["loadBefore"],
            m.get("loadAfter", "?"), report["options"]["rounds"],
            " (quick)" if report["options"]["quick"] else "", report["seconds"]),
        "",
    ]
    for note in report["notes"]:
        first, _, rest = note.partition("\n")
        lines.append("- note: %s" % first)
        if rest.strip():
            lines += ["", "  ```", rest.rstrip(), "  ```"]
    if report["notes"]:
        lines.append("")
    lines += ["## Goals", ""]
    if report["goals"]:
        lines += ["| case | goal | measured | result |", "|---|---|---|---|"]
    else:
        lines.append("The project issue sets no goals for the cases that ran.")
    for g in report["goals"]:
        lines.append("| %s | %s | %s | %s |" % (
            g["case"], g["goal"], g["measured"], "PASS" if g["pass"] else "FAIL"))
    lines += [""] + resourcesTable(report) + ["", "## Cases", ""]
    for case in report["cases"].values():
        lines += caseTable(case, report["goals"])
    return "\n".join(lines)


def commandVersion(argv: List[str]) -> Optional[str]:
    """
    The first line a program prints for its version (nutcracker prints it
    on stderr).
    """
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def twemproxyVersion() -> Optional[str]:
    if not shutil.which("nutcracker"):
        return None
    text = commandVersion(["nutcracker", "--version"]) or ""
    match = re.search(r"nutcracker-(\S+)", text)
    return "twemproxy " + match.group(1) if match else text or None


def rmuxCommit() -> Optional[str]:
    """
    The commit rmux was measured at, with "+changes" when rmux/ differs from
    it (others edit the working tree).  Read-only: no index refresh.
    """
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, env=env)
        diff = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "rmux"],
                              capture_output=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if diff.returncode == 1 else "")


def rmuxSourceDigest() -> str:
    """
    A digest of rmux's source files, to tell whether they changed while the
    benchmark ran (a commit, or an edit in the working tree).
    """
    digest = hashlib.sha1()
    for path in sorted((REPO / "rmux").rglob("*")):
        if path.suffix in (".py", ".json") and path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machineFacts() -> dict:
    """
    What the numbers depend on: CPU, cores, versions, load, rmux's commit.
    """
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import twisted
        twistedVersion = twisted.__version__
    except ImportError:
        twistedVersion = "?"
    redis = commandVersion(["redis-server", "--version"]) or "?"
    match = re.search(r"v=(\S+)", redis)
    commit = rmuxCommit()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": os.cpu_count(),
        "usableCores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twistedVersion,
        "redis": "Redis " + (match.group(1) if match else redis),
        "redisBenchmark": commandVersion(["redis-benchmark", "--version"]),
        "twemproxy": twemproxyVersion(),
        "rmuxCommit": commit or "?",
        "rmuxSource": rmuxSourceDigest(),
        "loadBefore": "%.2f" % os.getloadavg()[0],
    }


def writeReport(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    markdown = renderMarkdown(report)
    (out / ("bench-%s.md" % stamp)).write_text(markdown + "\n")
    (out / ("bench-%s.json" % stamp)).write_text(json.dumps(report, indent=2) + "\n")
    (out / "latest.md").write_text(markdown + "\n")
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown)
    return out / ("bench-%s.md" % stamp)
