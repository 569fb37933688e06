"""
Real redis-server processes for the integration tests.

Each server listens on a unix socket in its own temporary directory (and,
when asked, on a free loopback TCP port), runs without persistence, and is
stopped by the test's cleanup.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from random import Random

REDIS_SERVER = shutil.which("redis-server")


def _ephemeralStart():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Ports handed out by this process: a port is only bound when its server
#: starts, and a cluster picks a dozen before starting any.
_handedOut = set()


def freePort():
    """
    A TCP port on 127.0.0.1 that nobody listens on right now, not handed out
    before by this process, and below the kernel's range for outgoing
    connections: a port taken from that range (bind to port 0) may be taken
    again by any client connecting before the server binds it.
    """
    top = _ephemeralStart()
    bottom = max(1024, top - 20000)
    random = Random()
    for _ in range(1000):
        port = random.randrange(bottom, top)
        if port in _handedOut:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handedOut.add(port)
        return port
    raise RuntimeError("no free port in %d-%d" % (bottom, top))


class RedisServer:
    """
    One redis-server process.

    @ivar path: its unix socket.
    @ivar port: its TCP port on 127.0.0.1, or 0 if it has none.
    """

    def __init__(self, tcp=False, args=()):
        if REDIS_SERVER is None:
            raise RuntimeError(
                "redis-server is not installed: apt-get install -y redis-server"
            )
        self.directory = tempfile.mkdtemp(prefix="rmux-redis-")
        self.path = os.path.join(self.directory, "redis.sock")
        self.port = freePort() if tcp else 0
        self.args = list(args)
        self.process = None

    #: What comes before the options: a sentinel's configuration file.
    leading = ()

    def start(self, timeout=10.0):
        command = [
            REDIS_SERVER, *self.leading,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", self.path,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--logfile", os.path.join(self.directory, "redis.log"),
        ] + self.args
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: see %s" % (self.directory,))
            try:
                # With requirepass, NOAUTH also says it is serving.
                if self.command(b"PING\r\n")[:6] in (b"+PONG\r", b"-NOAUT"):
                    return self
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("redis-server did not start within %s s" % (timeout,))

    def command(self, raw, timeout=2.0):
        """
        Send raw bytes on a fresh connection and return the first chunk of
        the answer; enough for small replies in test set-up.
        """
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.path)
            s.sendall(raw)
            return s.recv(65536)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGCONT)
            except OSError:
                pass
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def pause(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.process.pid, signal.SIGCONT)


def _startedFor(testCase, thing):
    """
    Start C{thing} (servers, a cluster, a Sentinel group), stopped by
    C{testCase}'s cleanup even if the start fails part way.
    """
    testCase.addCleanup(thing.cleanup)
    return thing.start()


def startRedis(testCase, **kwargs):
    """
    Start a redis-server for C{testCase}, stopped by its cleanup.
    """
    return _startedFor(testCase, RedisServer(**kwargs))


def startServers(testCase, count, **kwargs):
    """
    Start C{count} redis-servers for C{testCase}, stopped by its cleanup.
    """
    return [startRedis(testCase, **kwargs) for _ in range(count)]


REDIS_CLI = shutil.which("redis-cli")


class RedisCluster:
    """
    A Redis Cluster of C{masters} masters (and C{replicas} replicas of
    each) on free loopback ports, joined with C{redis-cli --cluster create}.

    @ivar servers: the L{RedisServer}s, masters first as C{create} orders
        them.
    """

    def __init__(self, masters=3, replicas=0, nodeTimeout=2000):
        self.servers = []
        for _ in range(masters * (1 + replicas)):
            server = RedisServer(tcp=True, args=["--cluster-enabled", "yes",
                                                 "--cluster-node-timeout", str(nodeTimeout)])
            # The cluster bus's port would be port + 10000 by default,
            # beyond 65535 for a high free port.
            server.args += ["--cluster-config-file",
                            os.path.join(server.directory, "nodes.conf"),
                            "--cluster-port", str(freePort())]
            self.servers.append(server)
        self.replicas = replicas

    def addresses(self):
        return ["127.0.0.1:%d" % (server.port,) for server in self.servers]

    def start(self, timeout=20.0):
        for server in self.servers:
            server.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create"] + self.addresses()
            + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )
        self.waitUntilOk(timeout)
        return self

    def waitUntilOk(self, timeout=20.0, without=None):
        """
        Wait until every running node says the cluster is ok and agrees on
        who serves each slot (none of them C{without}, a server stopped).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [s for s in self.servers if s.process is not None]
            states = [s.command(b"CLUSTER INFO\r\n") for s in running]
            maps = {s.command(b"CLUSTER SLOTS\r\n") for s in running}
            gone = without is not None and any(
                b":%d\r\n" % (without.port,) in slots for slots in maps)
            # A replica that never synced would not be promoted: its data
            # counts as too old.
            replication = [s.command(b"INFO replication\r\n") for s in running]
            synced = all(b"role:master" in r or b"master_link_status:up" in r
                         for r in replication)
            if (all(b"cluster_state:ok" in s for s in states) and len(maps) == 1
                    and not gone and synced):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ok within %s s" % (timeout,))

    def cleanup(self):
        for server in self.servers:
            server.cleanup()


def startCluster(testCase, **kwargs):
    """
    Start a L{RedisCluster} for C{testCase}, stopped by its cleanup.
    """
    return _startedFor(testCase, RedisCluster(**kwargs))


class RedisSentinel(RedisServer):
    """
    One sentinel (C{redis-server --sentinel}) watching each master of
    C{watched}, C{(name, server)} pairs, with quorum 1.
    """

    def __init__(self, watched, downAfter=1000, failoverTimeout=10000):
        RedisServer.__init__(self, tcp=True)
        self.config = os.path.join(self.directory, "sentinel.conf")
        with open(self.config, "w") as f:
            for name, master in watched:
                f.write(
                    "sentinel monitor %s 127.0.0.1 %d 1\n"
                    "sentinel down-after-milliseconds %s %d\n"
                    "sentinel failover-timeout %s %d\n"
                    # A TLS-only master (tests.test_tls) on its TLS port.
                    % (name, getattr(master, "tlsPort", None) or master.port, name,
                       downAfter, name, failoverTimeout)
                )
        # A sentinel reads it first, and rewrites it.
        self.leading = (self.config, "--sentinel")


class SentinelGroup:
    """
    A master with C{replicas} replicas, and C{sentinels} sentinels watching
    it as C{name} (quorum 1), on free loopback ports.
    """

    def __init__(self, name="mymaster", replicas=1, sentinels=2):
        self.name = name
        # A replica's first sync starts at once, not after Redis's 5 s
        # wait for more replicas.
        self.master = RedisServer(tcp=True, args=["--repl-diskless-sync-delay", "0"])
        self.replicas = [RedisServer(tcp=True) for _ in range(replicas)]
        self.sentinels = [RedisSentinel([(name, self.master)]) for _ in range(sentinels)]

    def addresses(self):
        return ["127.0.0.1:%d" % (sentinel.port,) for sentinel in self.sentinels]

    def start(self, timeout=20.0):
        self.master.start()
        for replica in self.replicas:
            replica.args = ["--replicaof", "127.0.0.1", str(self.master.port)]
            replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.waitUntilWatched(timeout)
        return self

    def servers(self):
        return [self.master] + self.replicas

    def masterPort(self):
        """
        The master's port, as the first running sentinel says.
        """
        for sentinel in self.sentinels:
            if sentinel.process is not None:
                reply = sentinel.command(
                    b"SENTINEL GET-MASTER-ADDR-BY-NAME %s\r\n" % (self.name.encode(),))
                return int(reply.split(b"\r\n")[4])
        raise RuntimeError("no sentinel runs")

    def waitUntilWatched(self, timeout=20.0):
        """
        Wait until every replica is in sync with the master, and every
        sentinel knows each of them and the other sentinels, so that a
        failover can pick one and they agree on its result.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.masterPort()
            others = [s for s in self.servers() if s.port != port]
            synced = all(b"master_link_status:up" in s.command(b"INFO replication\r\n")
                         for s in others)
            known = all(
                all(b"%d" % (s.port,) in sentinel.command(
                    b"SENTINEL REPLICAS %s\r\n" % (self.name.encode(),))
                    for s in others)
                for sentinel in self.sentinels if sentinel.process is not None)
            running = [s for s in self.sentinels if s.process is not None]
            # Sentinels that do not know each other disagree after a
            # failover, and one may turn the new master back into a replica.
            acquainted = all(
                all(b"%d" % (other.port,) in sentinel.command(
                    b"SENTINEL SENTINELS %s\r\n" % (self.name.encode(),))
                    for other in running if other is not sentinel)
                for sentinel in running)
            if synced and known and acquainted:
                return
            time.sleep(0.1)
        raise RuntimeError("the sentinels did not see every replica within %s s" % (timeout,))

    def failover(self, via=0):
        """
        Ask a sentinel (the C{via}th) for a failover (C{SENTINEL FAILOVER}),
        and return its answer.
        """
        return self.sentinels[via].command(b"SENTINEL FAILOVER %s\r\n" % (self.name.encode(),))

    def cleanup(self):
        for server in self.sentinels + self.servers():
            server.cleanup()


def startSentinels(testCase, **kwargs):
    """
    Start a L{SentinelGroup} for C{testCase}, stopped by its cleanup.
    """
    return _startedFor(testCase, SentinelGroup(**kwargs))
