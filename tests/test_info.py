"""
Tests for L{rmux.info}: how several servers' INFO texts become the INFO of
one server holding all their data.
"""

from twisted.trial.unittest import SynchronousTestCase

from rmux.info import asksRmux, asksServers, formatInfo, mergeInfo, parseInfo

FIRST = (
    "# Server\r\n"
    "redis_version:7.0.15\r\n"
    "process_id:100\r\n"
    "tcp_port:7001\r\n"
    "uptime_in_seconds:500\r\n"
    "hz:10\r\n"
    "\r\n"
    "# Clients\r\n"
    "connected_clients:3\r\n"
    "blocked_clients:0\r\n"
    "client_recent_max_input_buffer:20\r\n"
    "\r\n"
    "# Memory\r\n"
    "used_memory:1048576\r\n"
    "used_memory_human:1.00M\r\n"
    "mem_fragmentation_ratio:1.50\r\n"
    "maxmemory:0\r\n"
    "\r\n"
    "# Persistence\r\n"
    "loading:0\r\n"
    "rdb_bgsave_in_progress:0\r\n"
    "\r\n"
    "# Stats\r\n"
    "instantaneous_ops_per_sec:10\r\n"
    "total_commands_processed:1000\r\n"
    "\r\n"
    "# Replication\r\n"
    "role:master\r\n"
    "\r\n"
    "# Commandstats\r\n"
    "cmdstat_get:calls=10,usec=100,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n"
    "\r\n"
    "# Keyspace\r\n"
    "db0:keys=10,expires=2,avg_ttl=1000\r\n"
)

SECOND = (
    "# Server\r\n"
    "redis_version:7.0.15\r\n"
    "process_id:200\r\n"
    "tcp_port:7002\r\n"
    "uptime_in_seconds:50\r\n"
    "hz:10\r\n"
    "\r\n"
    "# Clients\r\n"
    "connected_clients:4\r\n"
    "blocked_clients:1\r\n"
    "client_recent_max_input_buffer:8\r\n"
    "\r\n"
    "# Memory\r\n"
    "used_memory:2097152\r\n"
    "used_memory_human:2.00M\r\n"
    "mem_fragmentation_ratio:2.50\r\n"
    "maxmemory:0\r\n"
    "\r\n"
    "# Persistence\r\n"
    "loading:0\r\n"
    "rdb_bgsave_in_progress:1\r\n"
    "\r\n"
    "# Stats\r\n"
    "instantaneous_ops_per_sec:5\r\n"
    "total_commands_processed:500\r\n"
    "\r\n"
    "# Replication\r\n"
    "role:master\r\n"
    "\r\n"
    "# Commandstats\r\n"
    "cmdstat_get:calls=30,usec=500,usec_per_call=16.67,rejected_calls=1,failed_calls=0\r\n"
    "cmdstat_set:calls=5,usec=50,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n"
    "\r\n"
    "# Keyspace\r\n"
    "db0:keys=30,expires=6,avg_ttl=3000\r\n"
    "db3:keys=1,expires=0,avg_ttl=0\r\n"
)


def fields(sections):
    return {name: dict(pairs) for name, pairs in sections}


class ParseFormatTests(SynchronousTestCase):
    def test_roundTrip(self):
        """
        Formatting what was parsed gives Redis's text back, sections
        separated by an empty line.
        """
        self.assertEqual(formatInfo(parseInfo(FIRST)), FIRST)

    def test_oneServerAsIs(self):
        """
        With one server, INFO is that server's, value for value.
        """
        self.assertEqual(mergeInfo([FIRST]), parseInfo(FIRST))


class MergeTests(SynchronousTestCase):
    def setUp(self):
        self.merged = fields(mergeInfo([FIRST, SECOND]))

    def test_identityFromFirst(self):
        """
        The server's identity and settings are the first server's.
        """
        server = self.merged["Server"]
        self.assertEqual(server["process_id"], "100")
        self.assertEqual(server["tcp_port"], "7001")
        self.assertEqual(server["redis_version"], "7.0.15")
        self.assertEqual(server["hz"], "10")

    def test_uptimeIsTheYoungest(self):
        """
        The whole has been up as long as its most recently started part.
        """
        self.assertEqual(self.merged["Server"]["uptime_in_seconds"], "50")

    def test_countsAdd(self):
        self.assertEqual(self.merged["Clients"]["connected_clients"], "7")
        self.assertEqual(self.merged["Clients"]["blocked_clients"], "1")
        self.assertEqual(self.merged["Stats"]["total_commands_processed"], "1500")
        self.assertEqual(self.merged["Stats"]["instantaneous_ops_per_sec"], "15")

    def test_sizesAddAndHumanFollows(self):
        """
        Memory adds up, and the C{_human} field is written from the sum as
        Redis writes it.
        """
        memory = self.merged["Memory"]
        self.assertEqual(memory["used_memory"], "3145728")
        self.assertEqual(memory["used_memory_human"], "3.00M")
        self.assertEqual(memory["maxmemory"], "0")

    def test_ratiosAverage(self):
        self.assertEqual(self.merged["Memory"]["mem_fragmentation_ratio"], "2.00")

    def test_flagsAndMaximums(self):
        """
        An in-progress flag is on when any server's is; a recent maximum
        is the largest.
        """
        self.assertEqual(self.merged["Persistence"]["rdb_bgsave_in_progress"], "1")
        self.assertEqual(self.merged["Persistence"]["loading"], "0")
        self.assertEqual(self.merged["Clients"]["client_recent_max_input_buffer"], "20")

    def test_keyspace(self):
        """
        Keyspace lines add up per db, the average TTL weighted by each
        server's keys with an expiry; a db only one server uses is kept.
        """
        keyspace = self.merged["Keyspace"]
        self.assertEqual(keyspace["db0"], "keys=40,expires=8,avg_ttl=2500")
        self.assertEqual(keyspace["db3"], "keys=1,expires=0,avg_ttl=0")

    def test_commandstats(self):
        """
        Command statistics add up per command; the mean per call is
        recomputed from the sums.
        """
        stats = self.merged["Commandstats"]
        self.assertEqual(
            stats["cmdstat_get"],
            "calls=40,usec=600,usec_per_call=15.00,rejected_calls=1,failed_calls=0",
        )
        self.assertEqual(
            stats["cmdstat_set"],
            "calls=5,usec=50,usec_per_call=10.00,rejected_calls=0,failed_calls=0",
        )

    def test_sectionOrder(self):
        self.assertEqual(
            [name for name, _ in mergeInfo([FIRST, SECOND])],
            ["Server", "Clients", "Memory", "Persistence", "Stats", "Replication",
             "Commandstats", "Keyspace"],
        )


class SectionChoiceTests(SynchronousTestCase):
    def test_noSectionAsksBoth(self):
        self.assertTrue(asksServers([]))
        self.assertTrue(asksRmux([]))

    def test_rmuxSectionsAlone(self):
        self.assertFalse(asksServers(["rmux"]))
        self.assertTrue(asksRmux(["rmux"]))
        self.assertFalse(asksServers(["backends", "rmux"]))

    def test_serverSectionAlone(self):
        self.assertTrue(asksServers(["memory"]))
        self.assertFalse(asksRmux(["memory"]))

    def test_everything(self):
        for name in ("all", "everything", "default"):
            self.assertTrue(asksServers([name]))
            self.assertTrue(asksRmux([name]))
