"""
From runs to results: medians and paired ratios per target and test, and
the project issue's goals evaluated against them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

from rmuxbench.cases import P99_GOAL_MS, RATIO_GOALS, RSS_GOAL_MB
from rmuxbench.common import BASELINE, RMUX, median

if TYPE_CHECKING:
    from rmuxbench.runner import Run


def summarize(runs: List[Run], targets: List[str]) -> dict:
    """
    Per target and test: median, min and max requests/s over the measured
    rounds, the median p50 and p99, and the median of the per-round ratios
    to direct TCP.  Runs that hit an error still count for the tests they
    finished.
    """
    measured = [r for r in runs if r.round >= 0]
    baseline: Dict[int, Dict[str, dict]] = {}
    for r in measured:
        if r.target == BASELINE:
            baseline.setdefault(r.round, {}).update(r.tests)
    summary = {}
    for target in targets:
        mine = [r for r in measured if r.target == target]
        failed = [r for r in runs if r.target == target and r.errors]
        names = []
        for r in mine:
            names += [n for n in r.tests if n not in names]
        tests = {}
        for name in names:
            rows = [r.tests[name] for r in mine if name in r.tests]
            rates = [row["rps"] for row in rows if row["rps"]]
            ratios = [
                r.tests[name]["rps"] / baseline[r.round][name]["rps"]
                for r in mine
                if name in r.tests and r.tests[name]["rps"]
                and baseline.get(r.round, {}).get(name, {}).get("rps")
            ]
            tests[name] = {
                "rps": median(rates),
                "rpsMin": min(rates) if rates else None,
                "rpsMax": max(rates) if rates else None,
                "ratio": median(ratios),
                "p50": median([row["p50"] for row in rows if row["p50"] is not None]),
                "p99": median([row["p99"] for row in rows if row["p99"] is not None]),
                "p99Max": max([row["p99"] for row in rows if row["p99"] is not None], default=None),
                "rounds": len(rates),
            }
        summary[target] = {
            "tests": tests,
            # Errors count in the warm-up round too.
            "errors": sum(len(r.errors) for r in failed),
            "errorRuns": len(failed),
            "firstErrors": failed[0].errors[:5] if failed else [],
        }
    return summary


def evaluateGoals(cases: Dict[str, dict], poolSize: int) -> List[dict]:
    """
    The project issue's goals for the cases that ran, each with what was
    measured and whether it passes (a goal without a number fails).
    """
    goals = []

    def add(case, goal, measured, ok, **extra):
        goals.append({"case": case, "goal": goal, "measured": measured, "pass": bool(ok), **extra})

    for g in RATIO_GOALS:
        if g.case not in cases:
            continue
        summary = cases[g.case]["summary"]
        ratio = summary.get(RMUX, {}).get("tests", {}).get(g.test, {}).get("ratio")
        against = "direct TCP"
        if g.against != BASELINE:
            mine = summary.get(RMUX, {}).get("tests", {}).get(g.test, {}).get("rps")
            theirs = summary.get(g.against, {}).get("tests", {}).get(g.test, {}).get("rps")
            ratio = mine / theirs if mine and theirs else None
            against = g.against
        add(g.case, "%s >= %gx %s" % (g.test, g.ratio, against),
            "%.2fx" % ratio if ratio is not None else "no result",
            ratio is not None and ratio >= g.ratio, test=g.test, ratio=g.ratio,
            against=g.against)

    if "a" in cases:
        a = cases["a"]
        allowed = poolSize + 1  # the pool, plus the health check's connection
        got = a["resources"].get(RMUX, {}).get("backendConnections")
        add("a", "backend connections <= poolSize + 1 (%d)" % allowed,
            "%s" % got, got is not None and got <= allowed)

    if "e" in cases:
        e = cases["e"]
        rmux = e["summary"].get(RMUX, {})
        alive = not any(r["target"] == RMUX and not r["proxyAlive"] for r in e["runs"]) \
            and RMUX not in e["skipped"]
        failed = rmux.get("errorRuns", 0)
        total = sum(1 for r in e["runs"] if r["target"] == RMUX)
        add("e", "no errors, rmux alive", "%d of %d runs with errors, rmux %s" % (
            failed, total, "alive" if alive else "DEAD"), failed == 0 and alive)
        p99s = [rmux.get("tests", {}).get(t, {}).get("p99") for t in ("SET", "GET")]
        known = [p for p in p99s if p is not None]
        add("e", "p99 < %g ms (SET, GET)" % P99_GOAL_MS,
            " / ".join("%.1f ms" % p if p is not None else "no result" for p in p99s),
            len(known) == 2 and max(known) < P99_GOAL_MS)
        active = e["resources"].get(RMUX, {}).get("ownRunsPeakRssMb")
        idle = e.get("idle", {}).get(RMUX, {}).get("rssMb")
        known = [mb for mb in (active, idle) if mb is not None]
        add("e", "RSS < %g MB with 1000 clients" % RSS_GOAL_MB,
            "%s peak during its runs, %s with 1000 idle clients" % (
                fmt(active, "%.1f MB"), fmt(idle, "%.1f MB")),
            idle is not None and max(known) < RSS_GOAL_MB)
    return goals


def fmt(value, pattern="%.0f", missing="–"):
    return pattern % value if value is not None else missing
