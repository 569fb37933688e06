"""
The benchmark cases and the project issue's goals for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

LAMP_TESTS = ("set", "get", "incr", "lpush", "lpop", "sadd", "spop", "lrange_100", "mset")

PHP_LAMP = Path(__file__).resolve().parents[1] / "php" / "lamp.php"


@dataclass(frozen=True)
class Case:
    """
    One benchmark case: redis-benchmark's arguments, its tests, and which
    deployment it runs against.

    Each test is a redis-benchmark invocation of its own: Redis 7's
    redis-benchmark exits at the first error, which would otherwise lose
    every later test of the run, and alternating targets test by test keeps
    the runs that are compared close together in time.

    C{requests} is sized so that one test takes a second or two for the
    slowest target on a two-core machine; C{quickRequests} is for a smoke
    run that only shows that everything works.
    """

    key: str
    name: str
    title: str
    args: tuple
    tests: tuple
    clients: int
    requests: int
    quickRequests: int
    # "single": one redis-server; "multi": four; "cluster": a Redis Cluster
    # of three masters.
    deployment: str = "single"
    # "redis-benchmark", or "php": bench/php/lamp.php in C{clients} PHP
    # processes at once (phpredis, a connection per request).
    tool: str = "redis-benchmark"

    def argv(self, requests: int, clients: int, test: Optional[str] = None) -> List[str]:
        tests = test or ",".join(self.tests)
        return ["-n", str(requests), "-c", str(clients)] + list(self.args) + ["-t", tests]

    def commands(self, endpoint: List[str], requests: int, clients: int,
                 test: Optional[str] = None) -> List[List[str]]:
        """
        The processes to run at once against C{endpoint} (redis-benchmark's
        address arguments): one redis-benchmark, or one PHP worker per
        client, the requests split among them.
        """
        if self.tool == "php":
            shares = [requests // clients + (1 if i < requests % clients else 0)
                      for i in range(clients)]
            return [["php", str(PHP_LAMP)] + endpoint + ["-n", str(share)]
                    for share in shares if share]
        return [["redis-benchmark"] + endpoint + self.argv(requests, clients, test) + ["--csv"]]


CASES = [
    Case(
        "a", "lamp",
        "LAMP: a new connection per request (-k 0), 50 clients",
        ("-r", "50", "-k", "0"), LAMP_TESTS,
        clients=50, requests=5000, quickRequests=1000,
    ),
    Case(
        "b", "persistent",
        "Persistent clients (-k 1), 50 clients",
        ("-r", "50", "-k", "1"), LAMP_TESTS,
        clients=50, requests=20000, quickRequests=2000,
    ),
    Case(
        "c", "pipelined",
        "Pipelined: 16 requests per round trip (-P 16), 50 clients",
        ("-r", "50", "-k", "1", "-P", "16"), ("set", "get"),
        clients=50, requests=100000, quickRequests=10000,
    ),
    Case(
        "d", "large",
        "Large values: 1 MB (-d 1000000), 10 clients",
        ("-r", "50", "-k", "1", "-d", "1000000"), ("set", "get"),
        clients=10, requests=200, quickRequests=40,
    ),
    Case(
        "e", "many",
        "Many clients: 1000 persistent clients",
        ("-r", "50", "-k", "1"), ("set", "get"),
        clients=1000, requests=30000, quickRequests=5000,
    ),
    Case(
        "f", "multiplexed",
        "Multiplexed: 4 redis-servers (direct: 4 redis-benchmarks at once, "
        "one per server, clients split among them)",
        ("-r", "50", "-k", "1"), ("set", "get"),
        clients=50, requests=40000, quickRequests=4000,
        deployment="multi",
    ),
    Case(
        "g", "cluster",
        "Redis Cluster, 3 masters: persistent clients (-k 1), 50 clients "
        "(direct: redis-benchmark --cluster)",
        ("-r", "50", "-k", "1"), ("set", "get"),
        clients=50, requests=40000, quickRequests=4000,
        deployment="cluster",
    ),
    Case(
        "h", "cluster-lamp",
        "Redis Cluster, 3 masters: a new connection per request (-k 0), 50 clients "
        "(direct: redis-benchmark --cluster)",
        ("-r", "50", "-k", "0"), ("set", "get"),
        clients=50, requests=5000, quickRequests=1000,
        deployment="cluster",
    ),
]

CASES.append(Case(
    "i", "phpredis",
    "PHP: phpredis, a new connection per web request and 5 commands (SET, GET, "
    "INCR, LPUSH, LPOP), 8 PHP processes; req/s are web requests",
    (), ("phpredis",),
    clients=8, requests=8000, quickRequests=800, tool="php",
))


@dataclass(frozen=True)
class RatioGoal:
    """
    A goal from the project issue: rmux's throughput in case C{case}, test
    C{test}, at least C{ratio} times C{against}'s (direct Redis over TCP,
    or twemproxy on its unix socket), medians of the same run.
    """

    case: str
    test: str
    ratio: float
    against: str = "redis-tcp"


RATIO_GOALS = [
    RatioGoal("a", "SET", 1.5), RatioGoal("a", "GET", 1.5),
    RatioGoal("b", "SET", 0.5), RatioGoal("b", "GET", 0.5),
    RatioGoal("b", "LRANGE_100", 0.35),
    RatioGoal("c", "SET", 0.5), RatioGoal("c", "GET", 0.5),
    RatioGoal("d", "SET", 0.7), RatioGoal("d", "GET", 0.7),
    RatioGoal("g", "SET", 0.8), RatioGoal("g", "GET", 0.8),
    RatioGoal("h", "SET", 1.5), RatioGoal("h", "GET", 1.5),
    RatioGoal("a", "SET", 0.8, "twemproxy-unix"), RatioGoal("a", "GET", 0.8, "twemproxy-unix"),
    RatioGoal("i", "PHPREDIS", 0.9, "twemproxy-unix"),
]

P99_GOAL_MS = 50.0  # case e
RSS_GOAL_MB = 100.0  # case e, with 1000 clients
