# -*- test-case-name: tests.test_session -*-
"""
MULTI/EXEC through rmux: the commands queued since MULTI, where they will
run, and EXEC.

Each queued command is placed when it is queued, so that a transaction
that cannot run is refused then, command by command, as Redis refuses a
bad command inside MULTI, and EXEC answers EXECABORT: a client never
queues a whole transaction to learn only at EXEC that it went nowhere.

A transaction runs on a dedicated connection (the client's WATCH
connection, if it WATCHes), framed by MULTI and EXEC, on the one server
its keys live on.  With several servers and the listener's
C{crossServerTransactions} on, a transaction whose keys span servers runs
as one MULTI/EXEC per server, at once, and EXEC's reply puts their replies
back in the order the commands were queued: each server's share is atomic,
the whole is not (and WATCH still needs one server).
"""

from collections import OrderedDict

from zope.interface import implementer

from rmux import commands as C
from rmux import resp
from rmux.interfaces import IReplyWaiter
from rmux.pool import PoolExhausted
from rmux.replies import IgnoredReply
from rmux.resp import ReplyFramer, errorReply
from rmux.router import PlacementError

__all__ = ["Transaction", "QUEUED", "EXECABORT", "SPREAD"]

QUEUED = b"+QUEUED\r\n"
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
SPREAD = errorReply(
    "rmux: this transaction's keys live on different servers; rmux runs such a "
    "transaction only with crossServerTransactions on, and never after WATCH")


class Transaction:
    """
    The commands a client queued since MULTI.

    @ivar commands: C{(args, pool)} pairs in order; the pool is L{None}
        for a command any server may run.
    @ivar pool: the server of the transaction so far, or L{None}.
    @ivar spread: whether its keys span servers.
    @ivar failed: whether a command was refused: EXEC must abort.
    """

    def __init__(self, session):
        self.session = session
        self.commands = []
        pin = session.pin
        self.pool = pin.pool if pin is not None else None
        self.spread = False
        self.failed = False

    def __len__(self):
        return len(self.commands)

    def queue(self, args, spec):
        """
        Queue a command of the transaction, or refuse it (which makes EXEC
        fail, as in Redis).
        """
        client = self.session.client
        name = spec.name
        if name == "watch":
            client.reply(resp.error(b"ERR WATCH inside MULTI is not allowed"))
            return
        if spec.policy not in (C.FORWARD, C.BLOCKING) and name not in ("ping", "echo", "info"):
            self.refuse(errorReply(
                "rmux: %s cannot be queued in a transaction" % (spec.displayName,)))
            return
        router = self.session.router
        try:
            target = router.poolForCommand(args, spec)
        except PlacementError as e:
            self.refuse(e.reply)
            return
        if target is not None and self.pool is not None and target is not self.pool:
            if not router.crossServerTransactions or self.session.pin is not None:
                self.refuse(SPREAD)
                return
            self.spread = True
        if target is not None and self.pool is None:
            self.pool = target
        self.commands.append((args, target))
        client.reply(QUEUED)

    def refuse(self, reply):
        self.failed = True
        self.session.client.reply(reply)

    def execute(self, args):
        """
        EXEC: run the transaction on its server, or with
        C{crossServerTransactions} on each of its servers.
        """
        session = self.session
        client = session.client
        if self.failed:
            session._dropPin()
            client.reply(EXECABORT)
            return
        if self.spread:
            _CrossServerExec(session, client.newSlot(), self.commands).start()
            return
        pool = self.pool
        if pool is None:
            try:
                pool = session.router.anyPool()
            except PlacementError as e:
                client.reply(e.reply)
                return
        slot = client.newSlot()
        commands = [[b"MULTI"]] + [a for a, target in self.commands] + [args]

        def run(connection):
            session.pin = None
            ignore = IgnoredReply()
            for command in commands[:-1]:
                session.sendDedicated(connection, command, ignore)
            session.sendDedicated(connection, commands[-1], _Executed(client, slot, connection))

        pin = session.pin
        if pin is not None:
            client.hold()
            run(pin.connection)
        else:
            session._checkout(pool, slot, run)


@implementer(IReplyWaiter)
class _Executed:
    """
    Waiter for EXEC: the client's reply; then the connection goes back.
    """

    __slots__ = ("client", "slot", "connection", "data")

    def __init__(self, client, slot, connection):
        self.client = client
        self.slot = slot
        self.connection = connection
        self.data = None

    def fill(self, reply):
        self.data = reply
        self.slot.fill(reply)
        self.connection.pool.checkin(self.connection)
        self.client.release()


class _CrossServerExec:
    """
    A transaction run as one MULTI/EXEC per server, on a dedicated
    connection each, and its replies put back in queueing order.
    """

    def __init__(self, session, slot, commands):
        self.session = session
        self.client = session.client
        self.slot = slot
        self.commands = commands
        self.groups = OrderedDict()
        anyPool = next(target for args, target in commands if target is not None)
        for args, target in commands:
            self.groups.setdefault(target or anyPool, []).append(args)
        self.order = [target or anyPool for args, target in commands]
        self.replies = {}

    def start(self):
        self.client.hold()
        for pool in self.groups:
            pool.checkout().addCallbacks(self._run, self._failed, (pool,), None, (pool,))

    def _run(self, connection, pool):
        if self.client.disconnected:
            pool.checkin(connection)
            return
        session = self.session
        ignore = IgnoredReply()
        session.sendDedicated(connection, [b"MULTI"], ignore)
        for args in self.groups[pool]:
            session.sendDedicated(connection, args, ignore)
        session.sendDedicated(connection, [b"EXEC"], _ServerExec(self, pool, connection))

    def _failed(self, reason, pool):
        if reason.check(PoolExhausted):
            message = str(reason.value)
        else:
            message = "rmux: cannot connect to backend %s: %s" % (
                pool.address, reason.getErrorMessage())
        self.executed(pool, errorReply(message))

    def executed(self, pool, reply):
        self.replies[pool] = reply
        if len(self.replies) < len(self.groups):
            return
        self.slot.fill(self._merged())
        self.client.release()

    def _merged(self):
        """
        One EXEC reply: the first server's error or nil if any, else every
        reply in the order its command was queued.
        """
        elements = {}
        for pool in self.groups:
            reply = self.replies[pool]
            if reply[:1] not in (b"*", b">") or reply[:3] == b"*-1":
                return reply
            elements[pool] = iter(ReplyFramer().feed(reply[reply.index(b"\r\n") + 2:]))
        merged = [next(elements[pool]) for pool in self.order]
        return b"*%d\r\n" % (len(merged),) + b"".join(merged)


@implementer(IReplyWaiter)
class _ServerExec:
    """
    Waiter for one server's EXEC of a cross-server transaction.
    """

    __slots__ = ("crossExec", "pool", "connection", "data")

    def __init__(self, crossExec, pool, connection):
        self.crossExec = crossExec
        self.pool = pool
        self.connection = connection
        self.data = None

    def fill(self, reply):
        self.data = reply
        self.connection.pool.checkin(self.connection)
        self.crossExec.executed(self.pool, reply)
