# -*- test-case-name: tests.test_poller -*-
"""
Accepted client connections watched by an epoll set of rmux's own, which
the reactor watches as one reader.

A client that connects per request (a PHP worker) costs rmux three events:
the accept, its request, its close.  Through the reactor each event of each
connection goes through Twisted's per-event logging context
(C{callWithLogger}, two context pushes), and each connection is added to
and taken from the reactor's own bookkeeping; profiled, that was a tenth of
rmux's time per connection.  Here the reactor sees one reader, the
L{ConnectionPoller}, readable while any of its connections has an event;
the poller hands each event straight to the connection's C{doRead} or
C{doWrite}, as the reactor would, and closes a connection as the reactor
would.  Everything else (buffering, producers, C{loseConnection}) is still
Twisted's C{FileDescriptor}.

Where C{select.epoll} is missing, connections use the reactor as usual.
"""

import select
import sys
from weakref import WeakKeyDictionary

from twisted.internet import error, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

_epoll = getattr(select, "epoll", None)
IN = _IN = getattr(select, "EPOLLIN", 1)
_OUT = getattr(select, "EPOLLOUT", 4)
_GONE = getattr(select, "EPOLLHUP", 16) | getattr(select, "EPOLLERR", 8)

#: The reasons the reactor closes a connection for, made once (as the
#: reactor does): a closed connection builds no Failure.
_FAILURES = {
    error.ConnectionDone: Failure(error.ConnectionDone()),
    error.ConnectionLost: Failure(error.ConnectionLost()),
}

_pollers = WeakKeyDictionary()


@implementer(IReadDescriptor)
class ConnectionPoller:
    """
    An epoll set of client connections, registered with the reactor as
    one reader while it watches any.

    A connection is a L{PolledConnection}; it says what it waits for with
    L{watch}.
    """

    #: The most events handled per reactor turn; the rest wait for the
    #: next turn, so that timers and backend replies are not held back.
    batchSize = 512

    def __init__(self, reactor):
        self.reactor = reactor
        self._epoll = _epoll()
        self.fileno = self._epoll.fileno
        self._watched = {}

    @classmethod
    def forReactor(cls, reactor):
        """
        The poller of C{reactor}, made on first use; L{None} without epoll.
        """
        if _epoll is None:
            return None
        poller = _pollers.get(reactor)
        if poller is None:
            poller = _pollers[reactor] = cls(reactor)
        return poller

    def logPrefix(self):
        return "rmux"

    def __len__(self):
        return len(self._watched)

    def watch(self, connection, events):
        """
        Make C{connection} wait for C{events} (C{EPOLLIN}, C{EPOLLOUT},
        both, or 0 for none).
        """
        old = connection.pollEvents
        if events == old:
            return
        connection.pollEvents = events
        fd = connection.pollFd
        if not old:
            self._epoll.register(fd, events)
            if not self._watched:
                self.reactor.addReader(self)
            self._watched[fd] = connection
        elif events:
            self._epoll.modify(fd, events)
        else:
            self._epoll.unregister(fd)
            self._forget(fd)

    def forgetClosing(self, connection):
        """
        Stop watching C{connection} without telling epoll, because its
        socket is about to be closed, which leaves the set by itself (an
        accepted socket's descriptor is never duplicated).
        """
        if connection.pollEvents:
            connection.pollEvents = 0
            self._forget(connection.pollFd)

    def _forget(self, fd):
        del self._watched[fd]
        if not self._watched:
            self.reactor.removeReader(self)

    def doRead(self):
        watched = self._watched
        for fd, events in self._epoll.poll(0, self.batchSize):
            connection = watched.get(fd)
            if connection is not None:
                self._dispatch(connection, events)

    def _dispatch(self, connection, events):
        """
        What the reactor does with C{events} of C{connection}.
        """
        why = None
        isRead = False
        try:
            if events & _GONE and not events & _IN:
                if connection.pollEvents & _IN:
                    why, isRead = main.CONNECTION_DONE, True
                else:
                    why = main.CONNECTION_LOST
            else:
                if events & _IN:
                    why = connection.doRead()
                    isRead = True
                if not why and events & _OUT:
                    why = connection.doWrite()
                    isRead = False
        except BaseException:
            why = sys.exc_info()[1]
            log.failure("rmux: a client connection's event", Failure())
        if why:
            self.disconnect(connection, why, isRead)

    def disconnect(self, connection, why, isRead):
        """
        Close C{connection} for C{why}, the value its C{doRead} (if
        C{isRead}) or C{doWrite} returned, as the reactor does.
        """
        reason = _FAILURES.get(why.__class__)
        if reason is None:
            reason = Failure(why)
        if isRead and reason is _FAILURES[error.ConnectionDone]:
            connection.readConnectionLost(reason)
        else:
            connection.connectionLost(reason)

    def connectionLost(self, reason):
        """
        The reactor dropped this reader (it is stopping): its connections
        are lost too, as they would have been if the reactor held them.
        """
        for connection in list(self._watched.values()):
            connection.connectionLost(reason)


class PolledConnection:
    """
    A mixin for a Twisted stream transport (a C{tcp.Connection}) that waits
    for its events through the reactor's L{ConnectionPoller}.

    @ivar pollFd: its socket's descriptor.
    @ivar pollEvents: what it waits for now.
    """

    pollEvents = 0
    poller = None

    def startReading(self):
        if self.poller is None:
            return FileDescriptor.startReading(self)
        self.poller.watch(self, self.pollEvents | _IN)

    def stopReading(self):
        if self.poller is None:
            return FileDescriptor.stopReading(self)
        self.poller.watch(self, self.pollEvents & ~_IN)

    def startWriting(self):
        if self.poller is None:
            return FileDescriptor.startWriting(self)
        self.poller.watch(self, self.pollEvents | _OUT)

    def stopWriting(self):
        if self.poller is None:
            return FileDescriptor.stopWriting(self)
        self.poller.watch(self, self.pollEvents & ~_OUT)

    def disconnectNow(self, why, isRead):
        """
        Close for C{why}, as the reactor would have on the event that
        returned it.
        """
        if self.poller is None:
            self.reactor._disconnectSelectable(self, why, isRead)
        else:
            self.poller.disconnect(self, why, isRead)
