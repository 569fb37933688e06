"""
phpredis, the client rmux's users run (one connection per web request),
through rmux in front of three real redis-servers: a PHP script per test,
run by the php command line, reports what it saw as JSON.
"""

import json
import shutil
import subprocess

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest

from tests.test_transparency import TransparencyTestCase, keysOnEveryServer

PHP = shutil.which("php")

PRELUDE = """<?php
$r = new Redis();
$r->connect($argv[1]);
"""


def runPHP(path, body, timeout=30):
    """
    Run C{body} as a PHP script with C{$r} connected to C{path}; return
    what it printed, read as JSON.
    """
    if PHP is None:
        raise SkipTest("php is not installed (scripts/bootstrap --tests installs php-cli, "
                       "php-redis)")
    probe = subprocess.run([PHP, "-r", "exit(class_exists('Redis') ? 0 : 1);"])
    if probe.returncode:
        raise SkipTest("phpredis is not installed (php-redis)")
    done = subprocess.run([PHP, "--", path], input=(PRELUDE + body).encode(),
                          capture_output=True, timeout=timeout)
    if done.returncode:
        raise AssertionError("php failed: %r" % (done.stdout + done.stderr,))
    return json.loads(done.stdout)


class PhpRedisTests(TransparencyTestCase):
    @inlineCallbacks
    def test_connectPerRequest(self):
        """
        A request's worth of commands on a fresh connection each, as PHP-FPM
        runs them: strings, a split MGET, a pipeline, INFO and CONFIG GET.
        """
        got = yield self.inThread(runPHP, self.path, """
            $out = [];
            for ($i = 0; $i < 20; $i++) {
                $c = new Redis();
                $c->connect($argv[1]);
                $c->set("req:$i", "v$i");
                $out[] = $c->get("req:$i");
                $c->close();
            }
            $pipe = $r->multi(Redis::PIPELINE);
            $pipe->incr("counter");
            $pipe->mget(["req:0", "req:7", "nope"]);
            $replies = $pipe->exec();
            $info = $r->info();
            echo json_encode([
                "gets" => $out,
                "pipeline" => $replies,
                "dbsize" => $r->dbSize(),
                "version" => $info["redis_version"],
                "keys" => $info["db0"],
                "policy" => $r->config("GET", "maxmemory-policy"),
                "ping" => $r->ping(),
            ]);
        """)
        self.assertEqual(got["gets"], ["v%d" % i for i in range(20)])
        self.assertEqual(got["pipeline"], [1, ["v0", "v7", False]])
        self.assertEqual(got["dbsize"], 21)
        server = yield self.inThread(self.direct(0).info, "server")
        self.assertEqual(got["version"], server["redis_version"])
        self.assertEqual(got["keys"], "keys=21,expires=0,avg_ttl=0")
        self.assertEqual(got["policy"], {"maxmemory-policy": "noeviction"})
        self.assertTrue(got["ping"])

    @inlineCallbacks
    def test_scanIterator(self):
        """
        phpredis's SCAN loop (its cursor a PHP integer) visits every key of
        every server once.
        """
        keys, spread = keysOnEveryServer(250)
        self.assertTrue(all(spread))
        yield self.inThread(self.client().mset, {k: "v" for k in keys})
        got = yield self.inThread(runPHP, self.path, """
            $r->setOption(Redis::OPT_SCAN, Redis::SCAN_RETRY);
            $seen = [];
            $it = NULL;
            while ($batch = $r->scan($it, "t:*", 20)) {
                foreach ($batch as $key) { $seen[] = $key; }
            }
            $r->set("after", "scan");
            echo json_encode(["seen" => $seen, "after" => $r->get("after"),
                              "dbsize" => $r->dbSize()]);
        """)
        self.assertEqual(len(got["seen"]), 250)
        self.assertEqual(sorted(got["seen"]), sorted(keys))
        # Every later reply on the connection is the right one.
        self.assertEqual(got["after"], "scan")
        self.assertEqual(got["dbsize"], 251)

    @inlineCallbacks
    def test_transaction(self):
        """
        phpredis's MULTI on one server (a hash tag) runs atomically, and a
        WATCHed key changed by another client makes EXEC fail, as in Redis.
        """
        got = yield self.inThread(runPHP, self.path, """
            $tx = $r->multi();
            $tx->set("{cart}:a", 1);
            $tx->incr("{cart}:a");
            $together = $tx->exec();
            $r->watch("{cart}:a");
            $other = new Redis();
            $other->connect($argv[1]);
            $other->set("{cart}:a", 10);
            $tx = $r->multi();
            $tx->incr("{cart}:a");
            $watched = $tx->exec();
            echo json_encode(["together" => $together, "watched" => $watched,
                              "after" => $r->get("{cart}:a")]);
        """)
        self.assertEqual(got["together"], [True, 2])
        self.assertFalse(got["watched"])
        self.assertEqual(got["after"], "10")


class PhpRedisCrossServerTests(TransparencyTestCase):
    flags = {"crossServerTransactions": "true"}

    @inlineCallbacks
    def test_transactionOverServers(self):
        """
        With crossServerTransactions, phpredis's MULTI over keys on every
        server runs, its replies in order.
        """
        keys, _ = keysOnEveryServer(3)
        got = yield self.inThread(runPHP, self.path, """
            $tx = $r->multi();
            foreach (["%s", "%s", "%s"] as $key) { $tx->incr($key); $tx->get($key); }
            echo json_encode($tx->exec());
        """ % tuple(keys))
        self.assertEqual(got, [1, "1"] * 3)
