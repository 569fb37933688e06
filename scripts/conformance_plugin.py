"""
A pytest plugin for scripts/conformance.py: records each test's outcome,
and which tests redis-py marks as needing a single server (onlynoncluster),
in the JSON file named by the RMUX_CONFORMANCE_OUT environment variable.
It changes nothing in the tests it watches.
"""

import json
import os

_outcomes = {}
_single = []


def pytest_collection_modifyitems(session, config, items):
    _single.extend(item.nodeid for item in items if item.get_closest_marker("onlynoncluster"))


def pytest_runtest_logreport(report):
    previous = _outcomes.get(report.nodeid)
    if report.failed:
        outcome = "failed"
    elif report.skipped:
        outcome = "skipped"
    elif report.when == "call":
        outcome = "passed"
    else:
        return
    if previous in ("failed", "skipped") and outcome == "passed":
        return
    if previous == "failed":
        return
    _outcomes[report.nodeid] = outcome


def pytest_runtest_logfinish(nodeid, location):
    # Written after every test, so a run stopped midway still counts.
    _write()


def pytest_sessionfinish(session, exitstatus):
    _write()


def _write():
    path = os.environ.get("RMUX_CONFORMANCE_OUT")
    if path:
        with open(path + ".new", "w") as f:
            json.dump({"outcomes": _outcomes, "single": sorted(set(_single))}, f)
        os.replace(path + ".new", path)
