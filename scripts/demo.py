"""
The rmux demo: start local redis-servers in a temporary directory and rmux
in front of them on a unix socket, in the foreground.  Ctrl-C (or SIGTERM)
stops rmux and every server, and removes the directory.

Run it through C{scripts/demo}, which installs what it needs first.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForPing(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16) == b"+PONG\r\n":
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server on port %d did not start" % (port,))


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--servers", type=int, default=4, help="how many redis-servers (default 4)")
    parser.add_argument("--socket", default="/tmp/rmux.sock", help="where rmux listens")
    parser.add_argument(
        "rmuxOptions", nargs="*", help="more rmux options, after --, e.g. -- --failover"
    )
    options = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="rmux-demo-")
    processes = []

    def stopAll(*_):
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(directory, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        ports = [freePort() for _ in range(options.servers)]
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", directory,
                        "--logfile", os.path.join(directory, "redis-%d.log" % port),
                    ],
                    stdin=subprocess.DEVNULL,
                )
            )
        for port in ports:
            waitForPing(port)
        backends = " ".join("127.0.0.1:%d" % port for port in ports)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        command = [
            twistd, "-n", "--pidfile=", "rmux",
            "--socket=" + options.socket, "--tcpConnections=" + backends,
        ] + options.rmuxOptions
        print("redis-servers: %s (data in %s)" % (backends, directory))
        print("rmux: %s" % (" ".join(command),))
        print()
        print("Connect with:  redis-cli -s %s" % (options.socket,))
        print("Stop with:     Ctrl-C")
        print(flush=True)
        rmuxProcess = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        processes.append(rmuxProcess)
        rmuxProcess.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stopAll()


if __name__ == "__main__":
    main()
