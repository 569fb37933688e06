# -*- test-case-name: tests.test_startup -*-
"""
Starting and announcing: what an operator sees when rmux starts, fails to
start, is ready, reloads and stops.

  - L{ListeningService} listens on one of rmux's addresses (a listener's
    socket or port, its TLS port, the stats and metrics ports) and turns a
    failure into a L{StartFailure} naming the option and the cause.
  - L{StartGuard}, above everything C{twistd rmux} runs, ends a failed
    start with one log line and exit status 1, after closing whatever was
    already listening, so no socket or lock file is left behind.
  - L{notify} speaks systemd's notification protocol (C{READY=1},
    C{RELOADING=1}, C{STOPPING=1}) when C{NOTIFY_SOCKET} is set.
"""

import errno
import os
import socket

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["StartFailure", "ListeningService", "StartGuard", "notify", "closeNow"]


class StartFailure(Exception):
    """
    rmux cannot start; the message is the one line an operator reads.
    """


def describeListenError(label, error):
    """
    One line for why listening on C{label} failed.

    @param label: the option and its value, e.g. C{--statsPort=22222}.
    @param error: the exception.
    """
    cause = error
    if isinstance(error, CannotListenError):
        cause = error.socketError
        if isinstance(cause, str) and "lock" in cause.lower():
            return ("%s: the socket is held by another running rmux (or another program "
                    "holds its lock file)" % (label,))
    if isinstance(cause, OSError):
        if cause.errno == errno.EADDRINUSE:
            return "%s: address already in use" % (label,)
        reason = cause.strerror or str(cause)
        # A lock file's symlink error names the link second.
        where = cause.filename2 or cause.filename
        if isinstance(where, bytes):
            where = where.decode("utf-8", "replace")
        return "%s: %s%s" % (label, reason, ": %s" % (where,) if where else "")
    return "%s: %s" % (label, cause)


class ListeningService(StreamServerEndpointService):
    """
    A L{StreamServerEndpointService} that listens at once, in
    C{privilegedStartService} (before privileges are shed), and raises a
    L{StartFailure} naming C{label} when it cannot.

    @ivar label: the option and value it listens for, for messages.
    """

    def __init__(self, endpoint, factory, label):
        StreamServerEndpointService.__init__(self, endpoint, factory)
        self.label = label
        self._raiseSynchronously = True

    def privilegedStartService(self):
        try:
            StreamServerEndpointService.privilegedStartService(self)
        except Exception as e:
            raise StartFailure(describeListenError(self.label, e)) from e


def closeNow(port):
    """
    Close a listening port at once, not on the reactor's next turn (which
    a process ending its start never reaches): a UNIX socket's file and
    lock file are removed.
    """
    if not getattr(port, "connected", False):
        return
    port.stopReading()
    port.connectionLost(Failure(ConnectionDone()))


def _tree(service):
    """
    C{service} and every service below it.
    """
    yield service
    collection = IServiceCollection(service, None)
    if collection is not None:
        for child in collection:
            yield from _tree(child)


class StartGuard(MultiService):
    """
    The top of what C{twistd rmux} runs: a start that fails (an address in
    use, a socket held by another rmux, a directory that does not exist)
    ends with one line naming the option and the cause, exit status 1, and
    nothing rmux created left behind.
    """

    log = Logger()

    def privilegedStartService(self):
        self._attempt(MultiService.privilegedStartService)

    def startService(self):
        self._attempt(MultiService.startService)

    def _attempt(self, step):
        try:
            step(self)
        except StartFailure as e:
            self.undo()
            self.log.error("rmux: cannot start: {why}", why=str(e))
            raise SystemExit(1)

    def undo(self):
        """
        Close everything that listens already, at once: the ports of
        L{StreamServerEndpointService}s, and those of services with a
        C{closeListening} method (the worker processes' parent).
        """
        for service in _tree(self):
            if isinstance(service, StreamServerEndpointService):
                waiting = getattr(service, "_waitingForPort", None)
                if waiting is not None:
                    waiting.addCallback(closeNow)
                    service._waitingForPort = None
            closing = getattr(service, "closeListening", None)
            if closing is not None:
                closing()


def notify(state, environ=None):
    """
    Tell systemd C{state} (C{READY=1}, C{RELOADING=1}, C{STOPPING=1}, ...)
    on C{NOTIFY_SOCKET}, if it is set: one datagram, as C{sd_notify} sends
    (an address starting with C{@} is in the abstract namespace).

    @return: whether a datagram was sent.
    """
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode("utf-8"), address)
        except OSError:
            return False
    return True
