"""
rmux in front of a TLS-only redis-server, beside direct TLS clients:
the cases "lamp-tls" (a new connection per request, redis-benchmark -k 0)
and "keep-alive-tls" (persistent clients).

Run with nothing else running:
  .venv/bin/python bench/tls.py [--rounds 3]
It makes a CA and a server certificate with openssl in a temporary
directory, starts redis-server (TLS port only) and rmux (unix socket,
rediss:// backend), and stops both by their PIDs.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*arguments):
    subprocess.run(["openssl"] + list(arguments), check=True, capture_output=True)


def makeCertificates(directory):
    ca, caKey = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", caKey, "-out", ca, "-days", "2", "-subj", "/CN=bench CA")
    key, request, certificate, extensions = (
        os.path.join(directory, name) for name in ("redis.key", "redis.csr", "redis.pem",
                                                    "redis.ext"))
    with open(extensions, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", request, "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", caKey, "-CAcreateserial",
            "-out", certificate, "-days", "2", "-extfile", extensions)
    return ca, certificate, key


def benchmark(arguments, requests):
    out = subprocess.run(
        ["redis-benchmark", "-q", "-n", str(requests), "-c", "50", "-t", "get"] + arguments,
        capture_output=True, text=True, timeout=600,
    ).stdout
    found = re.findall(r"GET: ([0-9.]+) requests per second", out.replace("\r", "\n"))
    return float(found[-1]) if found else None


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="rmux-bench-tls-")
    processes = []
    try:
        ca, certificate, key = makeCertificates(directory)
        port = freePort()
        processes.append(subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-cert-file",
             certificate, "--tls-key-file", key, "--tls-ca-cert-file", ca,
             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
             "--dir", directory, "--logfile", os.path.join(directory, "redis.log")],
            stdin=subprocess.DEVNULL))
        sock = os.path.join(directory, "rmux.sock")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        processes.append(subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile=" + os.path.join(directory, "rmux.log"),
             "rmux", "--socket=" + sock, "--tcpConnections=rediss://127.0.0.1:%d" % port,
             "--tlsCaCertFile=" + ca],
            env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        direct = ["--tls", "--cacert", ca, "-h", "127.0.0.1", "-p", str(port)]
        through = ["-s", sock]
        results = {name: [] for name in ("lamp direct", "lamp rmux", "keep direct",
                                         "keep rmux")}
        for round in range(options.rounds):
            results["lamp direct"].append(benchmark(direct + ["-k", "0"], 2000))
            results["lamp rmux"].append(benchmark(through + ["-k", "0"], 20000))
            results["keep direct"].append(benchmark(direct + ["-k", "1"], 50000))
            results["keep rmux"].append(benchmark(through + ["-k", "1"], 50000))
            print("round %d: %r" % (round + 1, {k: v[-1] for k, v in results.items()}),
                  flush=True)
        medians = {name: median(values) for name, values in results.items()}
        clients = subprocess.run(
            ["redis-cli"] + direct + ["info", "clients"], capture_output=True, text=True,
        ).stdout
        print("medians (GET/s): %r" % (medians,))
        if medians["lamp direct"] and medians["keep direct"]:
            print("lamp-tls: rmux %.1fx direct TLS (goal >= 10x); keep-alive-tls: %.2fx "
                  "(goal >= 0.6x)" % (medians["lamp rmux"] / medians["lamp direct"],
                                      medians["keep rmux"] / medians["keep direct"]))
        print("server's clients after the run (rmux's and this redis-cli): %s"
              % (re.findall(r"connected_clients:(\d+)", clients),))
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
