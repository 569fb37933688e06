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

from twisted.internet.defer import Deferred
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

    __slots__ = (
        "client", "transport", "stats", "slots", "pausedBytes", "mode", "held",
        "softSince",
    )

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
        #: Bytes of replies that arrived but wait here, not yet written:
        #: behind an earlier reply still due, or gathered for a pipeline.
        self.held = 0
        #: Since when a pub/sub client has been over its soft output
        #: limit, or L{None}.
        self.softSince = None

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
            if slots:
                self.hold(len(slot.data))
            return
        # A written slot keeps no reply: the connection affinity may hold
        # the slot until the client's next request, and a reply may be big.
        out = [slot.data]
        slot.data = WRITTEN
        slots.popleft()
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            out.append(slot.data)
            self.held -= len(slot.data)
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

    def hold(self, size):
        """
        C{size} more bytes of replies wait here; they count toward the
        client's output limit like those its transport holds.
        """
        self.held += size
        client = self.client
        if client is not None and (client.paused or self.held > client.factory.softestOutputLimit):
            self.checkOutputLimit()

    def write(self, data):
        """
        Write part of the reply at the head now (a long pipeline's replies
        as they come, instead of all of them at its end).
        """
        self.stats.bytesOut += len(data)
        coalescer.write(self.transport, data)
        if self.client.paused:
            self.pausedBytes += len(data)
            self.checkOutputLimit()

    def checkOutputLimit(self):
        """
        Drop a client whose replies not yet sent (held here, or in its
        transport) exceed its output limit, before it eats the host's
        memory: Redis's client-output-buffer-limit, with its classes (a
        subscribed client has a hard and a soft limit of its own).
        """
        client = self.client
        factory = client.factory
        transport = self.transport
        buffered = unsentBytes(transport)
        if buffered is None:
            # A transport that does not say: what was written since it
            # paused the client is unsent, at the least.
            buffered = self.pausedBytes
        buffered += self.held
        hub = factory.hub
        if client.usedPubSub and hub is not None and hub.isSubscribed(client):
            # Redis's pubsub client class.
            hard, soft, seconds = factory.pubsubOutputLimits
        else:
            hard, soft, seconds = factory.clientOutputLimit, 0, 0
        if soft and buffered > soft:
            now = factory.reactor.seconds()
            if self.softSince is None:
                self.softSince = now
            elif now - self.softSince >= seconds:
                hard = soft
        else:
            self.softSince = None
        if hard and buffered > hard:
            log.warn(
                "closing client {id}: {buffered} bytes of replies unread, over "
                "its output limit of {limit}",
                id=client.id, buffered=buffered, limit=hard,
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

    __slots__ = ("slot", "replies", "count", "stats", "size", "counted")

    #: Gathered replies past this size are not held until the pipeline's
    #: end: written at once if the pipeline is at the head of its queue,
    #: else counted toward the client's output limit.
    gatherLimit = 64 * 1024

    def __init__(self, slot, count, stats):
        self.slot = slot
        self.replies = []
        self.count = count
        self.stats = stats
        #: Bytes gathered, and how many of them the queue counts as held.
        self.size = self.counted = 0

    @property
    def data(self):
        # The session's affinity asks whether the waiter has been answered.
        return self.slot.data

    def fill(self, reply):
        replies = self.replies
        replies.append(reply)
        self.count -= 1
        if not self.count:
            # The queue counts one response per slot.
            self.stats.responses += len(replies) - 1
            self.replies = None
            data = b"".join(replies)
            self.slot.queue.held -= self.counted
            self.slot.fill(data)
            return
        self.size += len(reply)
        if self.size > self.gatherLimit:
            self._overflow()

    def _overflow(self):
        slot = self.slot
        queue = slot.queue
        if queue.client is None:
            # The client has gone: keep nothing for it.
            self.replies = []
            self.size = self.counted = 0
            return
        if queue.slots and queue.slots[0] is slot:
            queue.held -= self.counted
            self.stats.responses += len(self.replies)
            data = b"".join(self.replies)
            self.replies = []
            self.size = self.counted = 0
            queue.write(data)
        else:
            queue.hold(self.size - self.counted)
            self.counted = self.size


@implementer(IReplyWaiter)
class DeferredReply:
    """
    The waiter of one of rmux's own requests whose reply code waits for:
    C{deferred} fires with it (a cluster's slot map, a test's probe).
    """

    __slots__ = ("deferred", "data")

    def __init__(self):
        self.deferred = Deferred()
        self.data = None

    def fill(self, reply):
        self.data = reply
        self.deferred.callback(reply)


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
