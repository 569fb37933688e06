<?php
// One PHP worker of bench/ case i: a web request's Redis use, as a PHP
// application has it with phpredis and no persistent connections: connect,
// five commands, close; -n times.  Prints redis-benchmark's --csv layout,
// one row, PHPREDIS, whose "rps" is requests (connections) per second.
//
//   php lamp.php -s /path/to.sock -n 2000
//   php lamp.php -h 127.0.0.1 -p 6379 -n 2000

$options = getopt("s:h:p:n:");
$count = isset($options["n"]) ? (int)$options["n"] : 1000;
$latencies = [];
$errors = 0;
$started = microtime(true);
for ($i = 0; $i < $count; $i++) {
    $begin = microtime(true);
    try {
        $redis = new Redis();
        if (isset($options["s"])) {
            $redis->connect($options["s"]);
        } else {
            $redis->connect($options["h"], (int)$options["p"]);
        }
        $key = "bench:php:" . ($i % 50);
        $redis->set($key, "value");
        $redis->get($key);
        $redis->incr("bench:php:counter");
        $redis->lPush("bench:php:list", "x");
        $redis->lPop("bench:php:list");
        $redis->close();
    } catch (Exception $e) {
        $errors++;
        fwrite(STDERR, "error: " . $e->getMessage() . "\n");
    }
    $latencies[] = (microtime(true) - $begin) * 1000.0;
}
$elapsed = microtime(true) - $started;
sort($latencies);
$at = function ($q) use ($latencies) {
    return $latencies[min(count($latencies) - 1, (int)floor($q * count($latencies)))];
};
echo "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n";
printf("\"PHPREDIS\",\"%.2f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\",\"%.3f\"\n",
    ($count - $errors) / $elapsed, array_sum($latencies) / max(1, count($latencies)),
    $latencies[0], $at(0.5), $at(0.95), $at(0.99), end($latencies));
exit($errors ? 1 : 0);
