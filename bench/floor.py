"""
The floor of a pure-Python proxy for one Redis server: one epoll loop that
accepts, reads a client's requests, pipelines them to one persistent Redis
connection, cuts the replies apart with rmux's C scanner and writes each to
its client, and closes a client on EOF.  No Twisted, no features (no
errors, no backpressure, no AUTH, one request per command assumed): what
CPython itself costs per connection and per command, to compare with rmux
and twemproxy on the same machine (see README, Performance).

    python bench/floor.py /tmp/floor.sock /path/to/redis.sock &
    redis-benchmark -s /tmp/floor.sock -k 0 -t get -n 40000 -c 50

Stop it with SIGTERM (or SIGINT).
"""

import collections
import os
import select
import signal
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rmux._speedups import frameReplies  # noqa: E402 (after the path)


def commandsIn(data):
    """
    How many requests C{data} holds, for canonical RESP arrays sent whole.
    """
    return data.count(b"\r\n*") + 1


def serve(listenPath, redisPath):
    if os.path.exists(listenPath):
        os.unlink(listenPath)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(listenPath)
    listening.listen(4096)
    listening.setblocking(False)
    backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend.connect(redisPath)
    backend.setblocking(False)
    poller = select.epoll()
    listenFd, backendFd = listening.fileno(), backend.fileno()
    poller.register(listenFd, select.EPOLLIN)
    poller.register(backendFd, select.EPOLLIN)
    clients = {}
    waiting = collections.deque()
    pending = []
    unframed = b""
    stopping = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stopping.append(True))

    def received(client, data):
        waiting.extend([client] * commandsIn(data))
        pending.append(data)

    while not stopping:
        # A timeout, so that a stop signal is seen (poll() is retried
        # after a signal whose handler returns).
        for fd, _ in poller.poll(0.5):
            if fd == listenFd:
                while True:
                    try:
                        accepted, _ = listening._accept()
                    except BlockingIOError:
                        break
                    client = socket.socket(fileno=accepted)
                    client.setblocking(False)
                    clients[accepted] = client
                    poller.register(accepted, select.EPOLLIN)
                    try:
                        data = client.recv(65536)
                    except BlockingIOError:
                        continue
                    if data:
                        received(client, data)
            elif fd == backendFd:
                unframed += backend.recv(262144)
                replies = []
                unframed = unframed[frameReplies(unframed, 0, replies):]
                for reply in replies:
                    try:
                        waiting.popleft().send(reply)
                    except OSError:
                        pass
            else:
                client = clients[fd]
                try:
                    data = client.recv(65536)
                except OSError:
                    data = b""
                if data:
                    received(client, data)
                else:
                    poller.unregister(fd)
                    del clients[fd]
                    client.close()
        if pending:
            backend.sendall(b"".join(pending))
            pending = []
    listening.close()
    os.unlink(listenPath)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
