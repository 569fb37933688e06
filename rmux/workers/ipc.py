# -*- test-case-name: tests.test_workers -*-
"""
What crosses the pipes between rmux's parent process and its workers.

Every message is a 4-byte length, then its bytes (L{frame}, L{Frames}).
The parent's messages to a worker (its configuration, and later ones) are
pickles of a C{dict}: an exact copy of an L{rmux.config.RmuxConfig}, with
no second serialisation to keep in step with it.  A worker's stats reports
to the parent are JSON: a list of snapshots, one per listener (see
L{rmux.stats.listenerSnapshot}).
"""

import json
import os
import pickle
import struct

__all__ = [
    "FIRST_LISTENER_FD", "frame", "Frames", "message", "readMessage", "report",
    "reportInterval",
]

FIRST_LISTENER_FD = 3
"""
The worker's file descriptor for the first listener's socket; the next
listener's is one more, and so on, in the configuration's order.
"""

_LENGTH = struct.Struct("!I")


def frame(data):
    """
    One message of a pipe between the parent and a worker: its length, then
    its bytes.
    """
    return _LENGTH.pack(len(data)) + data


class Frames:
    """
    Cuts a byte stream into the messages L{frame} made.

    @cvar maxLength: the longest message accepted; a longer length can only
        be a stream out of step, and is an error.
    """

    maxLength = 256 << 20

    def __init__(self):
        self._buffer = b""

    def feed(self, data):
        """
        @return: the messages C{data} completes, in order.
        @raise ValueError: for a length beyond L{maxLength}.
        """
        buffer = self._buffer + data
        messages = []
        while len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            if length > self.maxLength:
                raise ValueError("a message of %d bytes: out of step" % (length,))
            end = _LENGTH.size + length
            if len(buffer) < end:
                break
            messages.append(buffer[_LENGTH.size:end])
            buffer = buffer[end:]
        self._buffer = buffer
        return messages




def reportInterval(config):
    """
    How often, in seconds, workers report their counters to the parent:
    every C{statsInterval}, and at least every second, so that the parent's
    stats and metrics ports are never more than a second behind.
    """
    return min(1.0, config.statsInterval / 1000.0)




def readMessage(fd):
    """
    Read the parent's first message, length-prefixed and pickled, from
    C{fd} without reading past it, so that the rest of the pipe (later
    messages, and the lifeline) is left to the worker's channel.
    """

    def read(n):
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise SystemExit("rmux worker: no configuration from the parent")
            data += chunk
        return data

    (length,) = _LENGTH.unpack(read(_LENGTH.size))
    return pickle.loads(read(length))



def message(content):
    """
    A message from the parent: C{content}, a picklable C{dict}, framed.
    """
    return frame(pickle.dumps(content))


def report(snapshots):
    """
    A worker's stats report: its listeners' snapshots, framed.
    """
    return frame(json.dumps(snapshots).encode("utf-8"))
