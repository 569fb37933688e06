# -*- test-case-name: tests.test_proxy -*-
"""
A client's replies, in request order, and the waiters that fill them.

Each request gets a L{ReplySlot} in its client's L{ReplyQueue} the moment it
is parsed, whether it is answered locally or by a backend; replies leave
strictly in request order, so a fast reply never overtakes a slow one.
Replies ready together leave in one write (through the process's
L{rmux.transport.coalescer} while a backend's batch is handed out).
"""

from collections import deque

from twisted.logger import Logger
from zope.interface import implementer

from rmux.interfaces import IReplyWaiter
from rmux.transport import coalescer, unsentBytes

__all__ = ["ReplySlot", "ReplyQueue", "PipelineWaiter", "IgnoredReply", "WRITTEN"]

log = Logger()

#: The data of a reply slot once written (not L{None}: it was answered).
WRITTEN = b""


@implementer(IReplyWaiter)
class ReplySlot:
    """
    The place of one reply in a client's reply queue.

    Backends call L{fill} with the reply's bytes; the queue writes it once
    every earlier slot has been filled and written.
    """

    __slots__ = ("queue", "data")

    def __init__(self, queue, data=None):
        self.queue = queue
        self.data = data

    def fill(self, data):
        self.data = data
        self.queue.filled(self)


class ReplyQueue:
    """
    The replies one client is owed, oldest first.

    The queue writes to the client's transport and counts what it writes;
    the client (a L{rmux.proxy.ClientProtocol}) keeps the flow control:
    it is told when the queue has shrunk, so that it can read again, check
    its output limit or close once everything is written.
    """

    __slots__ = ("client", "transport", "stats", "slots", "pausedBytes", "mode")

    def __init__(self, client, transport, stats):
        """
        @param client: the L{rmux.proxy.ClientProtocol} the replies go to.
        @param transport: its transport.
        @param stats: its listener's L{rmux.stats.ListenerStats}.
        """
        self.client = client
        self.transport = transport
        self.stats = stats
        self.slots = deque()
        #: Bytes written since the client stopped reading (the transport
        #: paused it), all of them still unsent.
        self.pausedBytes = 0
        #: CLIENT REPLY's: None (replies go out), "off" or "skip" (the
        #: next command's reply is dropped).
        self.mode = None

    def __len__(self):
        return len(self.slots)

    def newSlot(self):
        """
        A place for a reply that will be ready later.
        """
        slot = ReplySlot(self) if self.mode is None else self._muted()
        self.slots.append(slot)
        return slot

    def setMode(self, mode):
        """
        CLIENT REPLY ON, OFF or SKIP: from the next command on, its reply
        goes out, none do, or the next one does not.
        """
        if mode == "on":
            self.mode = None
        elif mode == "off" or self.mode != "off":
            self.mode = mode

    def _muted(self):
        """
        The slot of a reply CLIENT REPLY drops: it still keeps its place.
        """
        if self.mode == "skip":
            self.mode = None
        return _MutedSlot(self)

    def reply(self, data):
        """
        Queue a reply that is ready now.
        """
        if self.mode is not None:
            self._muted()
            return
        if self.slots:
            self.slots.append(ReplySlot(self, data))
            return
        client = self.client
        if client is not None:
            # Through the coalescer, like backend replies: a reply that is
            # ready now must not overtake one still held back there.
            stats = self.stats
            stats.bytesOut += len(data)
            stats.responses += 1
            coalescer.write(self.transport, data)
            if client.paused:
                self.pausedBytes += len(data)
                self.checkOutputLimit()

    def filled(self, slot):
        """
        A backend filled C{slot}: write every reply that is now at the head.
        """
        slots = self.slots
        if not slots or slots[0] is not slot:
            return
        # A written slot keeps no reply: the connection affinity may hold
        # the slot until the client's next request, and a reply may be big.
        out = [slot.data]
        slot.data = WRITTEN
        slots.popleft()
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            out.append(slot.data)
            slot.data = WRITTEN
        client = self.client
        if client is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if not data:
            return
        stats = self.stats
        stats.bytesOut += len(data)
        stats.responses += len(out)
        coalescer.write(self.transport, data)
        if client.paused:
            self.pausedBytes += len(data)
            self.checkOutputLimit()
        if client.readingPaused or client.closeWhenDrained:
            client.repliesWritten(len(slots))

    def checkOutputLimit(self):
        """
        Drop a client whose unsent replies exceed its listener's output
        limit, before it eats the host's memory (Redis's
        client-output-buffer-limit).
        """
        client = self.client
        limit = client.factory.clientOutputLimit
        if not limit:
            return
        transport = self.transport
        buffered = unsentBytes(transport)
        if buffered is None:
            # A transport that does not say: what was written since it
            # paused the client is unsent, at the least.
            buffered = self.pausedBytes
        if buffered > limit:
            log.warn(
                "closing client {id}: {buffered} bytes of replies unread, over "
                "the client output limit of {limit}",
                id=client.id, buffered=buffered, limit=limit,
            )
            self.stats.outputLimitDrops += 1
            transport.abortConnection()

    def clear(self):
        """
        Forget every reply still due, and the client: it has gone (and
        nothing here keeps it alive, so it is freed at once).
        """
        self.slots.clear()
        self.client = None


class _MutedSlot(ReplySlot):
    """
    A reply slot whose reply is dropped (CLIENT REPLY OFF or SKIP).
    """

    __slots__ = ()

    def fill(self, data):
        self.data = b""
        self.queue.filled(self)


@implementer(IReplyWaiter)
class PipelineWaiter:
    """
    The waiter for a client's pipeline forwarded whole: gathers its
    replies, then fills the pipeline's one slot with all of them.
    """

    __slots__ = ("slot", "replies", "count", "stats")

    def __init__(self, slot, count, stats):
        self.slot = slot
        self.replies = []
        self.count = count
        self.stats = stats

    @property
    def data(self):
        # The session's affinity asks whether the waiter has been answered.
        return self.slot.data

    def fill(self, reply):
        replies = self.replies
        replies.append(reply)
        if len(replies) == self.count:
            # The queue counts one response per slot.
            self.stats.responses += self.count - 1
            self.replies = None
            self.slot.fill(b"".join(replies))


@implementer(IReplyWaiter)
class IgnoredReply:
    """
    The waiter for replies nobody needs (MULTI's +OK, each +QUEUED, the
    SCRIPT LOAD before an EVALSHA is tried again).
    """

    __slots__ = ("data",)

    def __init__(self):
        self.data = None

    def fill(self, reply):
        pass
