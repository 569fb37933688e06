"""
The processes the benchmark runs: redis-servers, rmux, twemproxy, and the
redis-benchmark clients, all of them tracked so that they are stopped
however the benchmark ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from rmuxbench.common import (
    REPO, RMUX, START_TIMEOUT, BenchError, RespClient, freePort, waitFor,
)


@dataclass
class ManagedProcess:
    """
    A process we started, with the file its output goes to.
    """

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def logTail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


class Processes:
    """
    Every process the benchmark starts, so that all of them are stopped
    however the benchmark ends.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.running: List[ManagedProcess] = []

    def start(self, name: str, argv: List[str], env=None) -> ManagedProcess:
        log = self.directory / ("%s.log" % name)
        with open(log, "wb") as out:
            try:
                popen = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=env, cwd=self.directory,
                )
            except OSError as e:
                raise BenchError("cannot start %s (%s): %s" % (name, argv[0], e))
        process = ManagedProcess(name, popen, log)
        self.running.append(process)
        return process

    def stop(self, process: ManagedProcess, grace: float = 10.0) -> bool:
        """
        SIGTERM, then SIGKILL if it has not exited after C{grace} seconds.
        Returns False if it had to be killed.
        """
        if process.alive():
            process.popen.terminate()
        clean = True
        try:
            process.popen.wait(grace)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
            clean = False
        if process in self.running:
            self.running.remove(process)
        return clean

    def stopAll(self) -> List[str]:
        """
        Stop everything: clients first, then the proxies (while their
        servers still run, so a proxy's shutdown is not disturbed by its
        backends going away), then the servers.  Returns the names of the
        processes that ignored SIGTERM and had to be killed.
        """
        servers = [p for p in self.running if p.name.startswith("redis-")]
        others = [p for p in reversed(self.running) if p not in servers]
        killed = []
        for group in (others, servers):
            for process in group:
                if process.alive():
                    process.popen.terminate()
            killed += [process.name for process in group if not self.stop(process)]
        return killed


@dataclass
class RedisServer:
    name: str
    port: int
    path: str
    process: ManagedProcess
    admin: RespClient

    def connectionsReceived(self) -> int:
        return int(self.admin.info("stats")["total_connections_received"])


@dataclass
class Target:
    """
    Something redis-benchmark runs against.

    C{endpoints} holds redis-benchmark's address arguments, one list per
    redis-benchmark process to run at once (four for the direct multiplexed
    case, one otherwise).  C{process} is the proxy, if any: its liveness,
    memory and CPU time are watched.
    """

    name: str
    kind: str  # "redis", "rmux" or "twemproxy"
    endpoints: List[List[str]]
    process: Optional[ManagedProcess] = None
    dead: Optional[str] = None  # why the remaining runs are skipped


@dataclass
class Deployment:
    """
    The redis-server(s) of a case and every target in front of them.
    """

    servers: List[RedisServer]
    targets: List[Target]


class Lab:
    """
    Starts and owns the servers and proxies: one redis-server for cases a-e,
    four (the first one shared) for case f, each with rmux and twemproxy in
    front.
    """

    def __init__(self, directory: Path, options):
        self.directory = directory
        self.options = options
        self.processes = Processes(directory)
        self.servers: List[RedisServer] = []
        self.twemproxy = shutil.which("nutcracker")
        self.twemproxyUnix: Optional[bool] = None
        self.notes: List[str] = []
        self.deployments: Dict[str, Deployment] = {}
        self.failed: Dict[str, str] = {}

    # redis-server ----------------------------------------------------------

    def startServer(self, name: Optional[str] = None, extra: List[str] = ()) -> RedisServer:
        """
        A redis-server: without a C{name}, the next of the servers that
        cases a-f share.
        """
        shared = name is None
        if shared:
            name = "redis-%d" % len(self.servers)
        port = freePort()
        path = str(self.directory / ("%s.sock" % name))
        process = self.processes.start(name, [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--unixsocket", path, "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--maxclients", "10000",
        ] + list(extra))
        admin = RespClient(path)
        waitFor(name, lambda: admin.call("PING") == "PONG", START_TIMEOUT, process)
        server = RedisServer(name, port, path, process, admin)
        if shared:
            self.servers.append(server)
        return server

    def startCluster(self, masters: int = 3) -> List[RedisServer]:
        """
        A Redis Cluster of C{masters} masters on free loopback ports (each
        with its bus on a free port too), joined with redis-cli.
        """
        nodes = []
        for index in range(masters):
            name = "redis-cluster-%d" % index
            nodes.append(self.startServer(name, [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / ("%s.nodes" % name)),
                "--cluster-port", str(freePort()),
            ]))
        create = subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + ["127.0.0.1:%d" % node.port for node in nodes] + ["--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            raise BenchError("redis-cli --cluster create failed:\n%s" % (
                create.stdout[-2000:] + create.stderr[-2000:]))

        def ok():
            return all(b"cluster_state:ok" in node.admin.call("CLUSTER", "INFO")
                       for node in nodes)

        waitFor("the cluster", ok, START_TIMEOUT, nodes[0].process)
        return nodes

    def ensureServers(self, count: int) -> List[RedisServer]:
        while len(self.servers) < count:
            self.startServer()
        return self.servers[:count]

    # rmux ------------------------------------------------------------------

    def rmuxArgv(self, socketPath: str, servers: List[RedisServer],
                 cluster: bool = False) -> List[str]:
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            twistd = REPO / ".venv" / "bin" / "twistd"
        if not twistd.exists():
            raise BenchError("twistd not found beside %s nor in .venv/bin" % sys.executable)
        if cluster:
            backends = ["--cluster=127.0.0.1:%d" % servers[0].port]
        elif self.options.rmux_backend == "unix":
            backends = ["--unixConnections=" + " ".join(s.path for s in servers)]
        else:
            backends = ["--tcpConnections=" + " ".join(
                "127.0.0.1:%d" % s.port for s in servers)]
        argv = [
            str(twistd), "-n", "--pidfile=", "rmux", "--socket=" + socketPath,
            "--remoteTimeout=2000", "--poolSize=%d" % self.options.pool_size,
        ] + backends
        if len(servers) > 1 and not cluster:
            # Twemproxy's placement, so that both proxies spread the keys alike.
            argv += ["--distribution=ketama", "--hash=fnv1a_64"]
        return argv + self.options.rmux_arg

    def startRmux(self, name: str, servers: List[RedisServer], source: Path = REPO,
                  targetName: str = RMUX, kind: str = "rmux", cluster: bool = False) -> Target:
        """
        Start rmux from the source tree C{source}: this checkout, or with
        C{--baseline} another one (an earlier release in a git worktree),
        measured side by side as one more target.
        """
        socketPath = str(self.directory / ("%s.sock" % name))
        if not list((source / "rmux").glob("_speedups*.so")):
            note = ("%s runs without its C accelerator (no rmux/_speedups*.so in %s): "
                    "on hiredis and pure Python; build it there with `python setup.py "
                    "build_ext --inplace` to compare like with like" % (name, source))
            if note not in self.notes:
                self.notes.append(note)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(source)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        process = self.processes.start(name, self.rmuxArgv(socketPath, servers, cluster), env)

        def backendsUp():
            client = RespClient(socketPath, timeout=1.0)
            try:
                backends = client.info("backends")
            finally:
                client.close()
            states = [v for k, v in backends.items() if k.startswith("backend")]
            if cluster:
                # No health checks: the cluster's own map says who serves.
                return len(states) == len(servers)
            return len(states) == len(servers) and all("status=up" in s for s in states)

        waitFor(name + " (rmux)", backendsUp, START_TIMEOUT, process)
        return Target(targetName, kind, [["-s", socketPath]], process)

    # twemproxy -------------------------------------------------------------

    def twemproxyConfig(self, servers, tcpPort, unixPath) -> str:
        """
        nutcracker's YAML: one pool listening on TCP and, if wanted, one on
        a unix socket, both in front of the same servers, with one
        connection per server as rmux's pool is the thing compared.
        """
        def pool(name, listen):
            lines = [
                "%s:" % name,
                "  listen: %s" % listen,
                "  redis: true",
                "  hash: fnv1a_64",
                "  distribution: ketama",
                "  timeout: 2000",
                "  server_connections: 1",
                "  auto_eject_hosts: false",
                "  servers:",
            ]
            lines += ["   - 127.0.0.1:%d:1" % s.port for s in servers]
            return "\n".join(lines) + "\n"

        text = pool("bench_tcp", "127.0.0.1:%d" % tcpPort)
        if unixPath:
            text += pool("bench_unix", "%s 0666" % unixPath)
        return text

    def writeTwemproxyConfig(self, name, servers, tcpPort, unixPath) -> Path:
        """
        Write the config and have nutcracker check it; if a unix listener is
        refused (an older twemproxy), fall back to TCP only.
        """
        config = self.directory / ("%s.yml" % name)
        wantUnix = self.twemproxyUnix is not False
        config.write_text(self.twemproxyConfig(servers, tcpPort, unixPath if wantUnix else None))
        try:
            check = subprocess.run(
                [self.twemproxy, "-t", "-c", str(config)],
                capture_output=True, text=True, timeout=30,
            )
        except subprocess.TimeoutExpired:
            raise BenchError("nutcracker -t did not finish checking its config in 30 s")
        if check.returncode != 0 and wantUnix:
            self.twemproxyUnix = False
            self.notes.append("twemproxy refused a unix-socket listener; TCP only")
            return self.writeTwemproxyConfig(name, servers, tcpPort, unixPath)
        if check.returncode != 0:
            raise BenchError("nutcracker rejects its config:\n%s" % (check.stderr or check.stdout))
        self.twemproxyUnix = wantUnix
        return config

    def startTwemproxy(self, name: str, servers: List[RedisServer]) -> List[Target]:
        tcpPort = freePort()
        unixPath = str(self.directory / ("%s.sock" % name))
        config = self.writeTwemproxyConfig(name, servers, tcpPort, unixPath)
        process = self.processes.start(name, [
            self.twemproxy, "-c", str(config), "-s", str(freePort()),
            "-a", "127.0.0.1", "-v", "4",
        ])
        targets = [Target("twemproxy-tcp", "twemproxy",
                          [["-h", "127.0.0.1", "-p", str(tcpPort)]], process)]
        addresses = [("127.0.0.1", tcpPort)]
        if self.twemproxyUnix:
            targets.append(Target("twemproxy-unix", "twemproxy", [["-s", unixPath]], process))
            addresses.append(unixPath)
        try:
            for address in addresses:
                # A GET, as twemproxy 0.5 does not answer PING itself; it also
                # opens a server connection before the measurements start.
                probe = RespClient(address, timeout=1.0)
                try:
                    waitFor("%s on %s" % (name, address),
                            lambda: probe.call("GET", "bench:probe") is None,
                            START_TIMEOUT, process)
                finally:
                    probe.close()
        except BenchError:
            self.processes.stop(process)
            raise
        return targets

    # deployments -----------------------------------------------------------

    def deployment(self, kind: str) -> Deployment:
        """
        Start (once) the servers and targets of a deployment: "single" for
        one redis-server, "multi" for four.
        """
        if kind in self.failed:
            raise BenchError("the %s deployment did not start (see above)" % kind)
        try:
            return self._deployment(kind)
        except BenchError as e:
            self.failed[kind] = str(e)
            raise

    def _deployment(self, kind: str) -> Deployment:
        if kind == "cluster" and kind not in self.deployments:
            self.deployments[kind] = self._clusterDeployment()
        if kind not in self.deployments:
            count = 1 if kind == "single" else 4
            servers = self.ensureServers(count)
            targets = self.directTargets(servers)
            targets.append(self.startRmux("rmux-%s" % kind, servers))
            if self.options.baseline:
                targets.append(self.startRmux(
                    "rmux-baseline-%s" % kind, servers, Path(self.options.baseline),
                    "rmux-baseline", "rmux-baseline"))
            if self.twemproxy:
                try:
                    targets += self.startTwemproxy("twemproxy-%s" % kind, servers)
                except BenchError as e:
                    self.notes.append("twemproxy (%s) left out: %s" % (kind, e))
            self.deployments[kind] = Deployment(servers, targets)
        return self.deployments[kind]

    def _clusterDeployment(self) -> Deployment:
        """
        Three masters; direct is redis-benchmark's own cluster client (it
        reads the slot map and talks TCP to each master), rmux runs with
        --cluster.  twemproxy has no cluster support.
        """
        nodes = self.startCluster()
        targets = [Target("redis-tcp", "redis",
                          [["--cluster", "-h", "127.0.0.1", "-p", str(nodes[0].port)]])]
        targets.append(self.startRmux("rmux-cluster", nodes, cluster=True))
        if self.options.baseline:
            targets.append(self.startRmux(
                "rmux-baseline-cluster", nodes, Path(self.options.baseline),
                "rmux-baseline", "rmux-baseline", cluster=True))
        return Deployment(nodes, targets)

    def directTargets(self, servers) -> List[Target]:
        return [
            Target("redis-tcp", "redis",
                   [["-h", "127.0.0.1", "-p", str(s.port)] for s in servers]),
            Target("redis-unix", "redis", [["-s", s.path] for s in servers]),
        ]

    def close(self):
        for server in self.servers:
            server.admin.close()
        for name in self.processes.stopAll():
            self.notes.append("%s did not exit within 10 s of SIGTERM and was killed" % name)
