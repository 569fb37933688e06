# -*- test-case-name: tests.test_flow -*-
"""
Flow control on the client side: when rmux reads a client's requests.

Two rules keep rmux's own queueing bounded, so that it slows its clients
down instead of eating the backends' timeouts and the host's memory:

  - A client that does not read its replies is not read either (the
    transport pauses its producer, L{FlowControl.pauseProducing}), and one
    with too many replies outstanding waits until half are written.
  - A heavy read (more than L{FlowControl.heavyRead} bytes: a long
    pipeline, or a big value) takes one of the few places of the
    listener's L{Admission}, and the client is not read again until every
    reply it is owed has been written.  Past those places, the read waits,
    unparsed, for its turn.  A light read (an ordinary request, a short
    pipeline) never waits: however many clients pipeline thousands of
    requests, a well-behaved client's request is queued on a backend
    connection behind a few heavy reads at most, not behind all of them.
"""

from collections import deque

from twisted.logger import Logger

from rmux.resp import errorReply

log = Logger()


class Admission:
    """
    The heavy reads a listener works on at once.

    @ivar limit: how many clients may have a heavy read in progress.
    @ivar holdLimit: seconds after which a heavy read still waiting for a
        reply (a blocking command among its requests) gives its place up,
        and its client is read again.
    """

    def __init__(self, clock, limit=2, holdLimit=0.1):
        self.clock = clock
        self.limit = limit
        self.holdLimit = holdLimit
        self.holders = {}
        self.waiting = deque()
        self._admitting = False
        self._timer = None

    def enter(self, client):
        """
        Take a place for C{client}'s heavy read, or queue it.

        @return: whether it has a place now; if not, C{client.admitted()}
            is called once it has.
        """
        if len(self.holders) < self.limit and not self.waiting:
            self._hold(client)
            return True
        self.waiting.append(client)
        return False

    def _hold(self, client):
        self.holders[client] = self.clock.seconds()
        if self._timer is None:
            self._timer = self.clock.callLater(self.holdLimit, self._expire)

    def _expire(self):
        """
        Take their places back from heavy reads held too long.
        """
        self._timer = None
        now = self.clock.seconds()
        expired = [c for c, since in self.holders.items() if now - since >= self.holdLimit]
        for client in expired:
            del self.holders[client]
            client.heavyExpired()
        self._admitWaiting()
        self.stop()
        if self.holders:
            oldest = min(self.holders.values())
            self._timer = self.clock.callLater(
                max(0.0, oldest + self.holdLimit - now), self._expire
            )

    def leave(self, client):
        """
        C{client}'s heavy read is done: give its place to the next one
        waiting.
        """
        self.holders.pop(client, None)
        self._admitWaiting()
        if not self.holders:
            self.stop()

    def _admitWaiting(self):
        if self._admitting:
            return
        self._admitting = True
        try:
            while self.waiting and len(self.holders) < self.limit:
                waiter = self.waiting.popleft()
                if waiter.disconnected:
                    continue
                self._hold(waiter)
                waiter.admitted()
        finally:
            self._admitting = False

    def forget(self, client):
        """
        C{client} has gone.
        """
        if client in self.waiting:
            self.waiting.remove(client)
        if client in self.holders:
            self.leave(client)

    def stop(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class FlowControl:
    """
    The part of L{rmux.proxy.ClientProtocol} that decides when it reads
    (see the module docstring); it is the transport's push producer.

    @ivar heavy: whether a heavy read of this client is in progress.
    @ivar stashed: a heavy read waiting for its place, unparsed.
    """

    #: Reads larger than this are heavy.
    heavyRead = 4096
    heavy = False
    stashed = None
    #: Bytes held of this client's incomplete request, and since when.
    partial = 0
    partialSince = None

    # What rmux holds of requests not yet complete

    def measureRequest(self, now, completed):
        """
        Count what the parser holds of an incomplete request, toward the
        client's query buffer limit and the listener's total (Redis's
        client-query-buffer-limit, and maxmemory-clients's closing of the
        client that holds the most).

        @param completed: whether this read completed a command (so an
            incomplete request left now started in it).
        """
        buffered = self.parser.buffered
        factory = self.factory
        factory.partialBytes += buffered - self.partial
        self.partial = buffered
        if not buffered:
            self.partialSince = None
            return
        if completed or self.partialSince is None:
            self.partialSince = now
        limit = factory.clientQueryBufferLimit
        if limit and buffered > limit:
            self.dropRequest(
                "rmux: request over the query buffer limit (clientQueryBufferLimit, "
                "%d bytes)" % (limit,)
            )
        elif factory.queryBuffersLimit and factory.partialBytes > factory.queryBuffersLimit:
            factory.dropBiggestRequest()

    def dropRequest(self, why):
        """
        Give up on the client's incomplete request: free what it holds,
        tell the client why, and close it.
        """
        log.warn("closing client {id}: {why}", id=self.id, why=why)
        self.forgetRequest()
        self.parser = self.factory.makeParser()
        self.sink = None
        self.reply(errorReply(why))
        self.closeAfterReplies()

    def forgetRequest(self):
        self.factory.partialBytes -= self.partial
        self.partial = 0
        self.partialSince = None

    def readHeavy(self, data):
        """
        Handle C{data}, a heavy read, once it has a place in the listener's
        L{Admission}: now, or from L{admitted}, kept unparsed meanwhile.
        """
        if self.factory.admission.enter(self):
            self._handleHeavy(data)
        else:
            self.stashed = data
            self._pauseReading()

    def admitted(self):
        """
        The stashed heavy read has its place.
        """
        data, self.stashed = self.stashed, None
        if self.closing:
            self.factory.admission.leave(self)
            return
        self._handleHeavy(data)

    def _handleHeavy(self, data):
        """
        Dispatch a heavy read's commands, and read again only once every
        reply the client is owed has been written.
        """
        self.heavy = True
        self.handleRead(data)
        if self.replies:
            self._pauseReading()
        else:
            self._heavyDone()

    def forgetReads(self):
        """
        The client, which held a heavy read or waited to, has gone: give
        up its place, or its turn.
        """
        self.stashed = None
        self.factory.admission.forget(self)

    def _heavyDone(self):
        self.heavy = False
        self.factory.admission.leave(self)
        self._resumeReading()

    def heavyExpired(self):
        """
        The heavy read held its place too long: read the client again (a
        client must not go unread while it waits on a blocking command, or
        rmux would not see it leave).
        """
        self.heavy = False
        self._resumeReading()

    def repliesWritten(self, remaining):
        """
        The reply queue wrote what was at its head, C{remaining} replies
        are still due: read again, or close, if that waited for it.
        """
        if self.heavy and not remaining:
            self._heavyDone()
        elif self.readingPaused and remaining <= self.factory.maxPending // 2:
            self._resumeReading()
        if self.closeWhenDrained and not remaining:
            self.transport.loseConnection()

    # IPushProducer

    def pauseProducing(self):
        """
        The client is not reading its replies as fast as they come: stop
        reading its requests (so it cannot make rmux buffer without bound),
        and give it the local write timeout to start again.
        """
        self.paused = True
        self._pauseReading()
        timeout = self.factory.localWriteTimeout
        if timeout and self._writeTimer is None:
            self._writeTimer = self.clock.callLater(timeout, self._writeTimedOut)

    def resumeProducing(self):
        self.paused = False
        self.replies.pausedBytes = 0
        if len(self.replies) <= self.factory.maxPending // 2:
            self._resumeReading()
        if self._writeTimer is not None:
            self._writeTimer.cancel()
            self._writeTimer = None

    def stopProducing(self):
        pass

    def _pauseReading(self):
        if not self.readingPaused and not self.disconnected:
            self.readingPaused = True
            self.transport.pauseProducing()

    def _resumeReading(self):
        if (
            self.readingPaused and not self.disconnected and not self.paused
            and not self.heavy and self.stashed is None
        ):
            self.readingPaused = False
            self.transport.resumeProducing()

    def _writeTimedOut(self):
        self._writeTimer = None
        self.factory.stats.localTimeouts += 1
        log.info("closing client {id}: it stopped reading its replies", id=self.id)
        self.transport.abortConnection()
