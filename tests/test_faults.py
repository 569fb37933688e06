"""
Backend faults with real processes, while clients are busy.

Each test runs rmux in this process on the real reactor, in front of real
redis-servers (or, for the faults a real Redis never commits, a tiny fake
server written here), with real clients in threads: redis-py, and raw
sockets that pipeline batches.  Then it breaks a backend (SIGKILL and a
restart, SIGSTOP past the read timeout, a restart under 1000-command
pipelines, garbage and half replies, a killed server among four with
failover) and checks rmux's promises:

  - every request gets its own reply or an C{-ERR rmux: ...}, never the
    reply of another request: every value and every ECHO token names the
    request it belongs to;
  - within a bound that follows from the configured timeouts;
  - the client stays connected (redis-py never reconnects: its rmux client
    id is the same at the end, and a raw socket is never closed);
  - rmux serves normally afterwards.

Transactions and blocking commands, on dedicated connections, get the same
treatment; random bytes from 200 connections (seeded, RMUX_FUZZ_SEED) must
leave rmux serving, with no client left behind.

The last classes hold the bugs these tests found (fixed since): each says
what was wrong and where.  The load summaries (counts, error kinds,
slowest request) go to the test log.
"""

import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet import reactor, threads
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.log import msg as logMessage
from twisted.trial.unittest import TestCase

from rmux.hashing import RmuxRing
from rmux.resp import encodeCommand
from tests.redisserver import startRedis, startServers
from tests.test_integration import ThreadedClients, rawExchange, socketPath, startRmux


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


#: The longest any one request (or one pipelined batch) may take in these
#: tests.  The worst legitimate wait is a connect (500 ms) followed by a
#: read timeout (300 ms); the rest is slack for two busy cores running the
#: servers, rmux and two dozen client threads.
LATENCY_BOUND = 4.0

#: Errors a request may get when its backend is in trouble.
ALLOWED_ERRORS = ("rmux: ", "LOADING ")


class ClientViolation(Exception):
    """
    A client saw something rmux promises never happens.
    """


class Recorder:
    """
    What the client threads saw: counts, error texts, the slowest request,
    and every violation.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.violations = []
        self.ok = 0
        self.errors = Counter()
        self.lost = 0
        self.maxLatency = 0.0
        self.events = []

    def violation(self, text):
        with self.lock:
            self.violations.append(text)

    def success(self, latency):
        with self.lock:
            self.ok += 1
            if latency > self.maxLatency:
                self.maxLatency = latency

    def error(self, message, latency):
        # redis-py drops the ERR prefix, hiredis keeps it.
        if message.startswith("ERR "):
            message = message[4:]
        with self.lock:
            # Group by the text, the backend's path left out.
            self.errors[re.sub(r"/\S+", "<path>", message)] += 1
            if latency > self.maxLatency:
                self.maxLatency = latency
        if not message.startswith(ALLOWED_ERRORS):
            self.violation("unexpected error text: %r" % (message,))

    def event(self, *what):
        with self.lock:
            self.events.append((time.monotonic(),) + what)

    def summary(self):
        return "ok=%d errors=%s lost=%d maxLatency=%.2fs violations=%d %s" % (
            self.ok, dict(self.errors), self.lost, self.maxLatency,
            len(self.violations), self.violations[:5],
        )


class Failed:
    """
    A request's error reply, as the workers see it.
    """

    def __init__(self, message):
        self.message = message

    def __repr__(self):
        return "Failed(%r)" % (self.message,)


def redisPyClient(path, protocol=2, db=0):
    """
    A redis-py client of rmux on one connection that never reconnects or
    retries behind our back.
    """
    return redis.Redis(
        unix_socket_path=path,
        protocol=protocol,
        db=db,
        single_connection_client=True,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=LATENCY_BOUND + 6,
    )


def redisPyWorker(path, n, stop, rec, lossless=False, protocol=2, db=0):
    """
    One redis-py client in a loop of SET, GET, ECHO, INCR and MGET over
    keys and values that name the request.

    @param lossless: whether the server keeps every acknowledged write (it
        is paused, not killed): then an acknowledged SET must be read back,
        and the INCR counter must only go up.
    """
    client = redisPyClient(path, protocol, db)
    try:
        startId = client.client_id()
        lastCount = 0
        recent = []
        i = 0
        while not stop.is_set():
            i += 1
            key = "pf:%d:%d" % (n, i)
            value = b"pv:%d:%d:%s" % (n, i, os.urandom(4).hex().encode())
            setOk = call(rec, client.set, key, value)
            if not isinstance(setOk, Failed) and setOk is not True:
                rec.violation("SET %s got %r" % (key, setOk))
            got = call(rec, client.get, key)
            allowed = [value]
            if isinstance(setOk, Failed) or not lossless:
                allowed.append(None)
            if not isinstance(got, Failed) and got not in allowed:
                rec.violation("GET %s got %r, expected %r" % (key, got, allowed))
            if got is None and not isinstance(setOk, Failed):
                with rec.lock:
                    rec.lost += 1
            token = "tok-%d-%d-%s" % (n, i, os.urandom(3).hex())
            echoed = call(rec, client.echo, token)
            if echoed != token.encode():
                rec.violation("ECHO %s got %r" % (token, echoed))
            count = call(rec, client.incr, "pc:%d" % (n,))
            if not isinstance(count, Failed):
                if not isinstance(count, int):
                    rec.violation("INCR got %r" % (count,))
                elif lossless and count <= lastCount:
                    rec.violation("INCR went from %d to %d" % (lastCount, count))
                lastCount = count
            if not isinstance(got, Failed) and got is not None:
                recent.append((key, value))
                recent = recent[-3:]
            if i % 5 == 0 and recent:
                values = call(rec, client.mget, [k for k, v in recent])
                if not isinstance(values, Failed):
                    for (k, v), g in zip(recent, values):
                        if g != v and (lossless or g is not None):
                            rec.violation("MGET %s got %r, expected %r" % (k, g, v))
        if client.client_id() != startId:
            rec.violation("redis-py client %d was reconnected" % (n,))
    except redis.RedisError as e:
        rec.violation("redis-py client %d: %s: %s" % (n, type(e).__name__, e))
    finally:
        client.close()


def call(rec, f, *args):
    """
    Run one redis-py command: its result, or L{Failed} for an error reply.
    """
    started = time.monotonic()
    try:
        result = f(*args)
    except redis.ResponseError as e:
        latency = time.monotonic() - started
        rec.error(str(e), latency)
        if latency > LATENCY_BOUND:
            rec.violation("%s%r took %.2f s" % (f.__name__, args[:1], latency))
        return Failed(str(e))
    latency = time.monotonic() - started
    rec.success(latency)
    if latency > LATENCY_BOUND:
        rec.violation("%s%r took %.2f s" % (f.__name__, args[:1], latency))
    return result


class RawClient:
    """
    A raw RESP connection to rmux that pipelines whole batches and reads
    the replies with hiredis.
    """

    def __init__(self, path, timeout=LATENCY_BOUND + 6):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = hiredis.Reader()

    def exchange(self, commands):
        """
        Send C{commands} in one write; return their replies (a
        L{hiredis.ReplyError} for an error reply).
        """
        self.sock.sendall(b"".join(encodeCommand(c) for c in commands))
        replies = []
        while len(replies) < len(commands):
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ClientViolation(
                        "rmux closed a raw client after %d of %d replies"
                        % (len(replies), len(commands))
                    )
                self.reader.feed(data)
                continue
            replies.append(reply)
        return replies

    def close(self):
        self.sock.close()


def rawBatch(n, round, size, keyOf=None):
    """
    A batch of C{size} commands: SET, GET, ECHO triples, each naming its
    request.

    @return: the commands and, for each, what it must get: C{("set",)},
        C{("get", value, setIndex)} or C{("echo", token)}.
    """
    commands = []
    expect = []
    j = 0
    while len(commands) < size:
        key = b"rk:%d:%d:%d" % (n, round, j) if keyOf is None else keyOf(n, round, j)
        value = b"rv:%d:%d:%d:%s" % (n, round, j, os.urandom(3).hex().encode())
        token = b"rt:%d:%d:%d" % (n, round, j)
        for command, check in (
            ([b"SET", key, value], ("set",)),
            ([b"GET", key], ("get", value, len(commands))),
            ([b"ECHO", token], ("echo", token)),
        ):
            if len(commands) < size:
                commands.append(command)
                expect.append(check)
        j += 1
    return commands, expect


def rawWorker(path, n, stop, rec, batch=60, lossless=False, keyOf=None, db=0):
    """
    A raw socket pipelining batches of C{batch} commands until C{stop}, in
    db C{db}.
    """
    try:
        client = RawClient(path)
    except OSError as e:
        rec.violation("raw client %d cannot connect: %s" % (n, e))
        return
    try:
        if db and client.exchange([[b"SELECT", b"%d" % (db,)]]) != [b"OK"]:
            rec.violation("raw client %d could not SELECT %d" % (n, db))
        round = 0
        while not stop.is_set():
            round += 1
            commands, expect = rawBatch(n, round, batch, keyOf)
            started = time.monotonic()
            replies = client.exchange(commands)
            latency = time.monotonic() - started
            if latency > LATENCY_BOUND:
                rec.violation("raw batch of %d took %.2f s" % (batch, latency))
            checkRaw(rec, commands, expect, replies, latency, lossless)
        # Still connected and in step.
        if client.exchange([[b"ECHO", b"end-%d" % (n,)]]) != [b"end-%d" % (n,)]:
            rec.violation("raw client %d out of step at the end" % (n,))
    except (OSError, ClientViolation) as e:
        rec.violation("raw client %d: %s: %s" % (n, type(e).__name__, e))
    finally:
        client.close()


def checkRaw(rec, commands, expect, replies, latency, lossless):
    for command, check, reply in zip(commands, expect, replies):
        if isinstance(reply, hiredis.ReplyError):
            rec.error(str(reply), latency)
            if check[0] == "echo":
                rec.violation("ECHO %r got an error: %s" % (command[1], reply))
            continue
        rec.success(latency)
        if check[0] == "set":
            if reply != b"OK":
                rec.violation("%r got %r" % (command[:2], reply))
        elif check[0] == "get":
            setReply = replies[check[2]]
            allowed = [check[1]]
            if isinstance(setReply, hiredis.ReplyError) or not lossless:
                allowed.append(None)
            if reply not in allowed:
                rec.violation("%r got %r, expected %r" % (command, reply, allowed))
            if reply is None and not isinstance(setReply, hiredis.ReplyError):
                with rec.lock:
                    rec.lost += 1
        elif reply != check[1]:
            rec.violation("%r got %r" % (command, reply))


def statefulWorker(path, n, stop, rec, lossless=False):
    """
    A raw socket pipelining, each round, a watched transaction and a
    blocking pop, each followed by forwarded commands that check it:

        WATCH k; MULTI; SET k v; INCR c; EXEC; GET k; LPUSH l v;
        BLPOP l 0.2; GET k

    Only forwarded commands follow EXEC and BLPOP in the pipeline, so what
    is checked here is the dedicated connections under faults.
    """
    try:
        client = RawClient(path)
    except OSError as e:
        rec.violation("stateful client %d cannot connect: %s" % (n, e))
        return
    lastCount = 0
    try:
        round = 0
        while not stop.is_set():
            round += 1
            k = b"sk:%d:%d" % (n, round)
            l = b"sl:%d:%d" % (n, round)
            v = b"sv:%d:%d:%s" % (n, round, os.urandom(3).hex().encode())
            c = b"sc:%d" % (n,)
            commands = [
                [b"WATCH", k], [b"MULTI"], [b"SET", k, v], [b"INCR", c], [b"EXEC"],
                [b"GET", k], [b"LPUSH", l, v], [b"BLPOP", l, b"0.2"], [b"GET", k],
            ]
            started = time.monotonic()
            replies = client.exchange(commands)
            latency = time.monotonic() - started
            # BLPOP may wait its own 0.2 s on top of the usual bound.
            if latency > LATENCY_BOUND + 0.2:
                rec.violation("stateful round took %.2f s" % (latency,))

            def failed(reply):
                if isinstance(reply, hiredis.ReplyError):
                    rec.error(str(reply), latency)
                    return True
                rec.success(latency)
                return False

            watch, multi, queued1, queued2, execed, get1, pushed, popped, get2 = replies
            if not failed(watch) and watch != b"OK":
                rec.violation("WATCH got %r" % (watch,))
            if multi != b"OK" or queued1 != b"QUEUED" or queued2 != b"QUEUED":
                rec.violation("MULTI/SET/INCR got %r" % (replies[1:4],))
            execOk = False
            if not failed(execed):
                if not (
                    isinstance(execed, list) and len(execed) == 2
                    and execed[0] == b"OK" and isinstance(execed[1], int)
                ):
                    rec.violation("EXEC got %r" % (execed,))
                else:
                    execOk = True
                    if lossless and execed[1] <= lastCount:
                        rec.violation("INCR in EXEC went %d -> %d" % (lastCount, execed[1]))
                    lastCount = execed[1]
            for got in (get1, get2):
                if failed(got):
                    continue
                allowed = [v]
                if not execOk or not lossless:
                    allowed.append(None)
                if got not in allowed:
                    rec.violation("GET %r after EXEC %r got %r" % (k, execed, got))
            pushOk = not failed(pushed)
            if pushOk and pushed != 1:
                rec.violation("LPUSH %r got %r" % (l, pushed))
            if not failed(popped):
                allowed = [[l, v]]
                if not pushOk or not lossless:
                    allowed.append(None)
                if popped not in allowed:
                    rec.violation("BLPOP %r got %r" % (l, popped))
        if client.exchange([[b"ECHO", b"end-%d" % (n,)]]) != [b"end-%d" % (n,)]:
            rec.violation("stateful client %d out of step at the end" % (n,))
    except (OSError, ClientViolation) as e:
        rec.violation("stateful client %d: %s: %s" % (n, type(e).__name__, e))
    finally:
        client.close()


class Load:
    """
    Client threads running until L{stop}.
    """

    def __init__(self, testCase, clients):
        self.stop = threading.Event()
        self.rec = Recorder()
        self.clients = clients
        self.done = []
        testCase.addCleanup(self.stop.set)

    def add(self, worker, *args, **kwargs):
        self.done.append(self.clients.run(worker, *args, stop=self.stop, rec=self.rec, **kwargs))

    @inlineCallbacks
    def finish(self):
        self.stop.set()
        results = yield DeferredList(self.done, consumeErrors=True)
        for ok, value in results:
            if not ok:
                self.rec.violation("worker crashed: %s" % (value.getTraceback(),))
        return self.rec


class FaultTestCase(TestCase):
    timeout = 60

    def setUp(self):
        self.clients = ThreadedClients(self, size=30)

    def inThread(self, f, *args, **kwargs):
        return self.clients.run(f, *args, **kwargs)

    def assertClean(self, rec, expectErrors=True):
        logMessage("load: " + rec.summary())
        self.assertEqual(rec.violations, [], rec.summary())
        self.assertGreater(rec.ok, 100, rec.summary())
        if expectErrors:
            # The fault was seen, or the test proved nothing.
            self.assertTrue(rec.errors, rec.summary())

    @inlineCallbacks
    def assertServing(self, path, n=50, lossless=True, stateful=True):
        """
        After the fault: fresh clients get every reply right and no error.
        """
        rec = Recorder()
        stop = threading.Event()
        loops = []

        def bounded(worker, *args, **kwargs):
            # Run a few rounds, then stop.
            timer = threading.Timer(0.3, stop.set)
            timer.start()
            try:
                worker(*args, **kwargs)
            finally:
                timer.cancel()

        for i in range(3):
            loops.append(self.inThread(bounded, redisPyWorker, path, 1000 + i, stop, rec, lossless))
            loops.append(self.inThread(bounded, rawWorker, path, 1000 + i, stop, rec, n, lossless))
            if stateful:
                loops.append(self.inThread(bounded, statefulWorker, path, 1000 + i, stop, rec, lossless))
        yield DeferredList(loops)
        self.assertEqual(rec.violations, [], rec.summary())
        self.assertEqual(rec.errors, Counter(), rec.summary())
        self.assertGreater(rec.ok, 0)


class RealBackendFaultTests(FaultTestCase):
    """
    One real redis-server behind rmux, broken while clients are busy.
    """

    def setUp(self):
        FaultTestCase.setUp(self)
        self.server = startRedis(self)
        self.rmux = startRmux(
            self, [self.server], poolSize="4", remoteReadTimeout="300"
        )

    def startLoad(self, redisPy=6, raw=3, batch=60, lossless=False):
        load = Load(self, self.clients)
        # Several dbs and both protocols, so that pooled connections switch
        # (SELECT, HELLO) while the backend fails.
        for n in range(redisPy):
            load.add(redisPyWorker, self.rmux.path, n, lossless=lossless,
                     protocol=2 + n % 2, db=n % 3)
        for n in range(raw):
            load.add(rawWorker, self.rmux.path, n, batch=batch, lossless=lossless, db=n % 3)
        return load

    @inlineCallbacks
    def restart(self, kill=True):
        """
        Kill (SIGKILL) or stop (SIGTERM) the server, and start it again on
        the same socket.
        """
        if kill:
            self.server.process.kill()
            self.server.process.wait()
        else:
            yield threads.deferToThread(self.server.stop)
        yield sleep(0.4)
        yield threads.deferToThread(self.server.start)

    @inlineCallbacks
    def test_killAndRestart(self):
        """
        SIGKILL the backend under load, restart it on the same socket: the
        requests in flight get errors naming it, nobody gets another
        request's reply, every client stays connected, and rmux serves
        normally afterwards.
        """
        load = self.startLoad()
        yield sleep(0.7)
        yield self.restart(kill=True)
        yield sleep(1.0)
        rec = yield load.finish()
        self.assertClean(rec)
        yield self.assertServing(self.rmux.path)

    @inlineCallbacks
    def test_pausedPastReadTimeout(self):
        """
        SIGSTOP the backend for over three read timeouts (300 ms), then
        SIGCONT it: the waiting requests fail after about 300 ms, their late
        replies reach nobody, and no acknowledged write is lost.
        """
        load = self.startLoad(lossless=True)
        yield sleep(0.7)
        self.server.pause()
        try:
            yield sleep(1.0)
        finally:
            self.server.resume()
        yield sleep(1.0)
        rec = yield load.finish()
        self.assertClean(rec)
        self.assertIn("rmux: backend <path> did not reply within 300 ms", rec.errors, rec.summary())
        self.assertEqual(rec.lost, 0, rec.summary())
        yield self.assertServing(self.rmux.path)

    @inlineCallbacks
    def test_restartUnderThousandCommandPipelines(self):
        """
        The backend restarts (SIGTERM, then start) while raw clients
        pipeline 1000-command batches: every batch gets 1000 replies, each
        its own or an error.
        """
        load = self.startLoad(redisPy=2, raw=4, batch=1000)
        yield sleep(0.8)
        yield self.restart(kill=False)
        yield sleep(0.8)
        yield self.restart(kill=True)
        yield sleep(1.0)
        rec = yield load.finish()
        self.assertClean(rec)
        yield self.assertServing(self.rmux.path, n=1000)


    @inlineCallbacks
    def test_transactionsAndBlockingUnderFaults(self):
        """
        Watched transactions and blocking pops, on dedicated connections,
        while the backend is killed and restarted, then paused past the
        read timeout: EXEC gets the transaction's replies or an error,
        BLPOP its own value, nil or an error, and no dedicated connection
        is left stuck (the check afterwards needs them).
        """
        load = Load(self, self.clients)
        for n in range(4):
            load.add(statefulWorker, self.rmux.path, n)
        for n in range(3):
            load.add(redisPyWorker, self.rmux.path, n)
        yield sleep(0.6)
        yield self.restart(kill=True)
        yield sleep(0.8)
        self.server.pause()
        try:
            yield sleep(0.8)
        finally:
            self.server.resume()
        yield sleep(0.8)
        rec = yield load.finish()
        self.assertClean(rec)
        yield self.assertServing(self.rmux.path)


# ---------------------------------------------------------------------------
# A fake server for what a real Redis never does.
# ---------------------------------------------------------------------------


class FakeRedis(Protocol):
    """
    Just enough of Redis for rmux's pool and health checks (PING, SELECT,
    CONFIG GET databases, INFO, SET, GET), that can be told to break in the
    middle of a GET reply.
    """

    def connectionLost(self, reason):
        trickle = getattr(self, "trickle", None)
        if trickle is not None and trickle.running:
            trickle.stop()

    def connectionMade(self):
        self.reader = hiredis.Reader()
        self.dead = False
        self.factory.connections += 1

    def dataReceived(self, data):
        if self.dead:
            return
        self.reader.feed(data)
        out = []
        while True:
            command = self.reader.gets()
            if command is False:
                break
            name = command[0].upper()
            if name == b"GET":
                value = self.factory.data.get(command[1])
                fault = self.factory.nextFault()
                if fault is not None:
                    self.breakWith(fault, out, value or b"x" * 40)
                    return
                out.append(b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
            elif name == b"SET":
                self.factory.data[command[1]] = command[2]
                out.append(b"+OK\r\n")
            elif name == b"MGET":
                out.append(b"*%d\r\n" % (len(command) - 1,))
                for key in command[1:]:
                    value = self.factory.data.get(key)
                    out.append(b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
            elif name in (b"INCR", b"INCRBY"):
                value = int(self.factory.data.get(command[1], b"0"))
                value += int(command[2]) if name == b"INCRBY" else 1
                self.factory.data[command[1]] = b"%d" % (value,)
                out.append(b":%d\r\n" % (value,))
            elif name == b"PING":
                out.append(b"+PONG\r\n")
            elif name == b"SELECT":
                out.append(b"+OK\r\n")
            elif name == b"CONFIG":
                out.append(b"*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n")
            elif name == b"INFO":
                text = b"# Server\r\nredis_version:7.0.0\r\n"
                out.append(b"$%d\r\n%s\r\n" % (len(text), text))
            else:
                out.append(b"-ERR fake server knows no %s\r\n" % (name,))
        if out:
            self.transport.write(b"".join(out))

    def breakWith(self, fault, out, value):
        """
        Send the replies before the faulty one now, and the fault a moment
        later, so that rmux has certainly read the good replies first.
        """
        self.dead = True
        self.factory.faults.append(fault)
        if out:
            self.transport.write(b"".join(out))
        half = value[: len(value) // 2]
        header = b"$%d\r\n" % (len(value),)
        if fault == "garbage":
            data = b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff\xfe garbage"
        elif fault == "garbageAfterReply":
            data = header + value + b"\r\n" + b"\x07\x08not resp at all\r\n"
        elif fault == "badBulkEnd":
            data = header + value + b"XY$3\r\nabc\r\n"
        else:
            data = header + half

        if fault == "trickle":
            # A status line that never ends: a few bytes every 50 ms.
            from twisted.internet.task import LoopingCall

            self.transport.write(b"+")
            self.trickle = LoopingCall(self.transport.write, b"a" * 64)
            self.trickle.start(0.05)
            self.factory.trickles.append(self.trickle)
            return

        def send():
            if fault == "abortMidBulk":
                # Straight to the socket: abortConnection drops what the
                # transport still buffers.
                self.transport.socket.send(data)
                self.transport.abortConnection()
                return
            self.transport.write(data)
            if fault == "closeMidBulk":
                # The half reply arrives alone, then the close.
                reactor.callLater(0.02, self.transport.loseConnection)
            # Otherwise the connection stays open: rmux must close it.

        reactor.callLater(0.02, send)


class FakeRedisFactory(Factory):
    protocol = FakeRedis

    def __init__(self, faults=(), every=0):
        self.data = {}
        self.connections = 0
        self.faults = []
        self.plan = list(faults)
        self.every = every
        self.gets = 0
        self.trickles = []

    def nextFault(self):
        """
        The fault for this GET, if any: the planned ones cycle, one every
        C{every} GETs.
        """
        self.gets += 1
        if not self.every or not self.plan or self.gets % self.every:
            return None
        return self.plan[(self.gets // self.every) % len(self.plan)]


FAULTS = ("garbage", "garbageAfterReply", "badBulkEnd", "closeMidBulk", "abortMidBulk")


class FakeBackendTestCase(FaultTestCase):
    """
    rmux in front of a fake server that misbehaves on purpose (a real Redis
    never does), with a 300 ms remote read timeout.
    """

    def setUp(self):
        FaultTestCase.setUp(self)
        directory = tempfile.mkdtemp(prefix="rmux-fake-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.fake = FakeRedisFactory()
        self.fakePath = os.path.join(directory, "fake.sock")
        port = reactor.listenUNIX(self.fakePath, self.fake)
        self.addCleanup(port.stopListening)

        class Server:
            path = self.fakePath

        self.rmux = startRmux(self, [Server], poolSize="4", remoteReadTimeout="300")
        return sleep(0.1)



class FakeBackendFaultTests(FakeBackendTestCase):
    """
    A backend that sends bytes that are not RESP, or closes in the middle
    of a bulk reply.
    """

    @inlineCallbacks
    def test_eachFaultAfterGoodReplies(self):
        """
        For each kind of fault: a pipeline of 60 GETs whose 20th reply is
        broken gets the first 19 values right, errors (never a wrong value)
        for the rest of what was in flight on that connection, and the
        values again once rmux has a new connection.
        """
        for fault in FAULTS:
            self.fake.plan, self.fake.every, self.fake.gets = [fault], 0, 0
            keys = [b"%s:%d" % (fault.encode(), i) for i in range(60)]
            for key in keys:
                self.fake.data[key] = b"value-of-" + key
            client = yield self.inThread(RawClient, self.rmux.path)
            self.addCleanup(client.close)
            self.fake.every = 20
            commands = []
            for key in keys:
                commands.append([b"GET", key])
                commands.append([b"ECHO", b"echo-" + key])
            replies = yield self.inThread(client.exchange, commands)
            self.fake.every = 0
            errors = 0
            for i, key in enumerate(keys):
                value, echoed = replies[2 * i], replies[2 * i + 1]
                self.assertEqual(echoed, b"echo-" + key)
                if isinstance(value, hiredis.ReplyError):
                    self.assertTrue(str(value).startswith("ERR rmux: "), (fault, value))
                    self.assertIn(self.fakePath, str(value))
                    errors += 1
                else:
                    self.assertEqual(value, b"value-of-" + key, fault)
            self.assertEqual(replies[:38:2], [b"value-of-" + k for k in keys[:19]], fault)
            self.assertIsInstance(replies[38], hiredis.ReplyError, fault)
            self.assertGreater(errors, 0, fault)
            # The same client carries on, with correct values.
            again = yield self.inThread(client.exchange, [[b"GET", k] for k in keys])
            self.assertEqual(again, [b"value-of-" + k for k in keys], fault)
        self.assertEqual(self.fake.faults, list(FAULTS))

    @inlineCallbacks
    def test_faultsUnderLoad(self):
        """
        Every 97th GET breaks, cycling through the faults, while redis-py
        and raw clients run: nobody ever gets another request's reply and
        every client stays connected.
        """
        self.fake.plan, self.fake.every = list(FAULTS), 97
        load = Load(self, self.clients)
        for n in range(5):
            load.add(redisPyWorker, self.rmux.path, n, lossless=True)
        for n in range(3):
            load.add(rawWorker, self.rmux.path, n, batch=90, lossless=True)
        yield sleep(2.0)
        rec = yield load.finish()
        self.fake.every = 0
        self.assertClean(rec)
        self.assertGreaterEqual(len(self.fake.faults), len(FAULTS), self.fake.faults)
        yield self.assertServing(self.rmux.path, stateful=False)


# ---------------------------------------------------------------------------
# Four servers, one killed, with failover.
# ---------------------------------------------------------------------------


class FailoverFaultTests(FaultTestCase):
    servers = 4
    victim = 1

    def setUp(self):
        FaultTestCase.setUp(self)
        self.redis = startServers(self, self.servers)
        self.rmux = startRmux(
            self, self.redis, failover="true", healthInterval="20",
            healthFailures="2", healthSuccesses="2", remoteReadTimeout="300",
        )
        self.ring = RmuxRing(self.servers)
        # For each server, keys that live there: keyFor(server, n, i).
        return sleep(0.15)

    def keyOn(self, server, prefix):
        i = 0
        while True:
            key = b"%s:%d" % (prefix, i)
            if self.ring.backendOf(key) == server:
                return key
            i += 1

    def mixedWorker(self, n, stop, rec, log):
        """
        Each round: SET, GET and HSET/HGET one fresh key on every server,
        MGET the ones of the servers that stay up, INCR a counter on each;
        every command's result is logged with its time and servers.
        """
        client = redisPyClient(self.rmux.path, protocol=2 + n % 2)
        counters = [self.keyOn(s, b"cnt:%d:%d" % (n, s)) for s in range(self.servers)]
        counts = [0] * self.servers
        try:
            startId = client.client_id()
            round = 0
            while not stop.is_set():
                round += 1
                keys = [self.keyOn(s, b"mx:%d:%d:%d" % (n, round, s)) for s in range(self.servers)]
                hashes = [self.keyOn(s, b"hx:%d:%d:%d" % (n, round, s)) for s in range(self.servers)]
                values = [b"val:" + k for k in keys]

                def run(servers, f, *args):
                    started = time.monotonic()
                    result = call(rec, f, *args)
                    log.append((started, frozenset(servers), f.__name__, args[:1], result))
                    return result

                for s, (k, v) in enumerate(zip(keys, values)):
                    setOk = run([s], client.set, k, v)
                    got = run([s], client.get, k)
                    if not isinstance(got, Failed) and got != v:
                        # On the victim a value can be missing when its key
                        # moved between the SET and the GET.
                        if not (s == self.victim and got is None):
                            rec.violation("GET %r got %r (SET: %r)" % (k, got, setOk))
                    field = run([s], client.hset, hashes[s], b"f", v)
                    if not isinstance(field, Failed) and field != 1:
                        rec.violation("HSET %r got %r" % (k, field))
                    hv = run([s], client.hget, hashes[s], b"f")
                    if not isinstance(hv, Failed) and hv != v and not (s == self.victim and hv is None):
                        rec.violation("HGET %r got %r" % (k, hv))
                    count = run([s], client.incr, counters[s])
                    if not isinstance(count, Failed):
                        if s != self.victim and count != counts[s] + 1:
                            rec.violation("INCR on server %d went %d -> %r" % (s, counts[s], count))
                        counts[s] = count if isinstance(count, int) else counts[s]
                up = [s for s in range(self.servers) if s != self.victim]
                got = run(up, client.mget, [keys[s] for s in up])
                if not isinstance(got, Failed) and got != [values[s] for s in up]:
                    rec.violation("MGET got %r" % (got,))
                got = run(range(self.servers), client.mget, keys)
                if not isinstance(got, Failed):
                    for s, (g, v) in enumerate(zip(got, values)):
                        if g != v and not (s == self.victim and g is None):
                            rec.violation("MGET %r got %r" % (keys[s], g))
                echoed = run([], client.echo, b"e:%d:%d" % (n, round))
                if echoed != b"e:%d:%d" % (n, round):
                    rec.violation("ECHO got %r" % (echoed,))
            if client.client_id() != startId:
                rec.violation("client %d was reconnected" % (n,))
        except redis.RedisError as e:
            rec.violation("client %d: %s: %s" % (n, type(e).__name__, e))
        finally:
            client.close()

    @inlineCallbacks
    def waitForState(self, index, state, timeout=5.0):
        pool = self.rmux.pools[index]
        deadline = time.monotonic() + timeout
        while self.rmux.health.states()[pool] != state:
            if time.monotonic() > deadline:
                self.fail("backend %d never became %s" % (index, state))
            yield sleep(0.01)
        return time.monotonic()

    @inlineCallbacks
    def oneOfFour(self, fault, repair):
        """
        Break the victim with C{fault} under mixed load, wait until it is
        marked down, C{repair} it, wait until it is up: no request for the
        other three servers ever fails; the victim's keys fail only until
        it is marked down, then go to their backup, and come home when it
        is back.
        """
        log = []
        load = Load(self, self.clients)
        for n in range(6):
            load.add(self.mixedWorker, n, log=log)
        for n in range(2):
            load.add(
                rawWorker, self.rmux.path, n, batch=99,
                keyOf=lambda n, round, j: b"raw:%d:%d:%d" % (n, round, j),
            )
        yield sleep(0.7)
        brokenAt = time.monotonic()
        fault()
        try:
            downAt = yield self.waitForState(self.victim, "down")
            yield sleep(1.0)
        finally:
            yield repair()
        upAt = yield self.waitForState(self.victim, "up")
        yield sleep(0.5)
        rec = yield load.finish()

        logMessage("load: " + rec.summary())
        self.assertEqual(rec.violations, [], rec.summary())
        others = [e for e in log if self.victim not in e[1]]
        failed = [e for e in others if isinstance(e[4], Failed)]
        self.assertEqual(failed, [], "requests for servers that stayed up failed")
        self.assertGreater(len(others), 100)
        victims = [e for e in log if self.victim in e[1]]
        # Some failed while it went down (or the test proved nothing) ...
        self.assertTrue(
            [e for e in victims if isinstance(e[4], Failed) and e[0] >= brokenAt - 0.05],
            rec.summary(),
        )
        # ... but none sent once it was down for a moment, nor once back.
        late = [
            e for e in victims
            if isinstance(e[4], Failed) and (downAt + 0.1 < e[0] < upAt - 0.1 or e[0] > upAt + 0.1)
        ]
        self.assertEqual(late, [], "the victim's keys did not fail over")
        self.assertTrue([e for e in victims if downAt + 0.1 < e[0] < upAt - 0.1])

    @inlineCallbacks
    def test_pauseOneOfFour(self):
        """
        SIGSTOP one of four servers (its health checks and requests time
        out), then SIGCONT it.
        """
        victim = self.redis[self.victim]
        yield self.oneOfFour(victim.pause, lambda: victim.resume())

    @inlineCallbacks
    def test_killOneOfFour(self):
        """
        SIGKILL one of four servers, then start it again.
        """
        victim = self.redis[self.victim]

        def kill():
            victim.process.kill()
            victim.process.wait()

        yield self.oneOfFour(kill, lambda: threads.deferToThread(victim.start))
        # And its keys went to the backup Go rmux's walk picks.
        key = self.keyOn(self.victim, b"placed")
        kill()
        yield self.waitForState(self.victim, "down")
        client = yield self.inThread(redisPyClient, self.rmux.path)
        self.addCleanup(client.close)
        self.assertTrue((yield self.inThread(client.set, key, b"moved")))
        backup = self.ring.failoverOf(key, lambda i: i != self.victim)
        direct = redis.Redis(unix_socket_path=self.redis[backup].path)
        self.addCleanup(direct.close)
        self.assertEqual((yield self.inThread(direct.get, key)), b"moved")


# ---------------------------------------------------------------------------
# Random bytes.
# ---------------------------------------------------------------------------


FUZZ_SEED = int(os.environ.get("RMUX_FUZZ_SEED", "20240607"))

_COMMANDS = [
    [b"PING"], [b"ECHO", b"tok"], [b"SET", b"fz", b"v"], [b"GET", b"fz"],
    [b"INCR", b"fzc"], [b"MGET", b"fz", b"fzc"], [b"DEL", b"fz"],
    [b"MULTI"], [b"EXEC"], [b"DISCARD"], [b"WATCH", b"fz"], [b"UNWATCH"],
    [b"SUBSCRIBE", b"fzch"], [b"PSUBSCRIBE", b"fz*"], [b"UNSUBSCRIBE"],
    [b"SSUBSCRIBE", b"fzs"], [b"PUBLISH", b"fzch", b"m"],
    [b"BLPOP", b"fzl", b"0.05"], [b"BLPOP", b"fzl", b"0"], [b"BRPOP", b"fzl", b"x"],
    [b"XREAD", b"BLOCK", b"0", b"STREAMS", b"fzs", b"$"], [b"WAIT", b"0", b"10"],
    [b"HELLO", b"3"], [b"HELLO", b"2"], [b"HELLO", b"9"], [b"SELECT", b"3"],
    [b"SELECT", b"99"], [b"CLIENT", b"SETNAME", b"fz"], [b"CLIENT", b"LIST"],
    [b"CLIENT", b"INFO"], [b"CLIENT", b"PAUSE", b"10000"], [b"CLIENT", b"REPLY", b"OFF"],
    [b"AUTH", b"nope"], [b"INFO"], [b"EVAL", b"return 1", b"0"],
    [b"SCRIPT", b"LOAD", b"return 2"], [b"EVALSHA", b"0" * 40, b"0"],
    [b"RESET"], [b"MONITOR"], [b"DEBUG", b"SLEEP", b"5"], [b"CONFIG", b"SET", b"port", b"1"],
    [b"SHUTDOWN", b"NOSAVE"], [b"QUIT"], [b"GET"], [b"NOSUCHCOMMAND", b"x"],
    [b"SET", b"fz", b"x" * 3000],
]

_WEIRD = [
    b"*0\r\n", b"*-1\r\n", b"*1\r\n$-1\r\n", b"*2\r\n$3\r\nGET\r\n:5\r\n",
    b"*1\r\n*1\r\n$4\r\nPING\r\n", b"$4\r\nPING\r\n", b"*3000000000\r\n",
    b"*1\r\n$99999999999\r\n", b"*1\r\n$5\r\nPING\r\n", b"*1\r\n$4\r\nPINGXX",
    b"*a\r\n", b"*1\r\n$-7\r\n", b"*2\r\n$3\r\nGET\r\n$1048576\r\n",
    b'SET "a b\r\n', b"SET 'x\\\r\n", b"\r\n\r\n\n", b"*1\n$4\nPING\n",
    b"*\r\n", b"$\r\n", b"*1\r\n$\r\n", b"+OK\r\n", b"-ERR\r\n", b":1\r\n",
    b"%1\r\n", b"~1\r\n", b">1\r\n", b"\x00" * 10, b"GET " + b"k" * 70000 + b"\r\n",
    b"*1048577\r\n", b"*1\r\n$536870913\r\n",
]


def fuzzPayload(rng):
    """
    A few KB: pure garbage, valid commands followed by garbage, commands
    cut short, mutated commands, or odd RESP and inline lines.
    """
    kind = rng.randrange(6)
    size = rng.randrange(200, 5000)

    def commands(count):
        out = b""
        for _ in range(count):
            if rng.random() < 0.3:
                out += b" ".join(rng.choice(_COMMANDS)) + b"\r\n"
            else:
                out += encodeCommand(rng.choice(_COMMANDS))
        return out

    if kind == 0:
        return kind, rng.randbytes(size)
    if kind == 1:
        return kind, commands(rng.randrange(1, 10)) + rng.randbytes(size)
    if kind == 2:
        data = commands(rng.randrange(1, 10))
        return kind, data[: rng.randrange(1, len(data) + 1)]
    if kind == 3:
        data = bytearray(commands(rng.randrange(5, 30)))
        for _ in range(rng.randrange(1, 10)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return kind, bytes(data)
    if kind == 4:
        return kind, commands(rng.randrange(0, 3)) + rng.choice(_WEIRD) + rng.randbytes(rng.randrange(0, size))
    pieces = [rng.choice([b"GET", b"SET", b'"', b"'", b"\\x4", b" ", b"\r\n", b"\n", b"x" * 50, b"\t"])
              for _ in range(rng.randrange(10, 200))]
    return kind, b"".join(pieces)


def fuzzOne(path, payload, readTimeout=0.3, longest=3.0):
    """
    Send C{payload}, read until rmux closes or falls silent, or for
    C{longest} seconds (a MONITOR in the payload makes a feed that never
    falls silent).

    @return: C{"closed"}, C{"reset"}, C{"silent"} or C{"streaming"}, and
        the byte count read.
    """
    deadline = time.monotonic() + longest
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(readTimeout)
        s.connect(path)
        received = 0
        try:
            s.sendall(payload)
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    return "closed", received
                received += len(chunk)
            return "streaming", received
        except socket.timeout:
            return "silent", received
        except OSError:
            return "reset", received


class FuzzTests(FaultTestCase):
    def setUp(self):
        FaultTestCase.setUp(self)
        self.server = startRedis(self)
        # Everything reaches the server, as it would reach Redis: the
        # commands that would pause, stop or reconfigure the server the rest
        # of the test uses are denied, as an operator denies them.
        self.rmux = startRmux(self, [self.server], poolSize="4",
                              denyCommands="shutdown client|pause config|set debug")

    @inlineCallbacks
    def test_randomBytes(self):
        """
        200 connections send random bytes (seeded: RMUX_FUZZ_SEED); rmux
        closes them or waits, and afterwards answers a normal client
        correctly, with no client left over and its dedicated connections
        free.
        """
        rng = random.Random(FUZZ_SEED)
        payloads = [fuzzPayload(rng) for _ in range(200)]
        results = yield DeferredList(
            [self.inThread(fuzzOne, self.rmux.path, p) for kind, p in payloads],
            consumeErrors=True,
        )
        outcomes = Counter()
        for (kind, payload), (ok, value) in zip(payloads, results):
            if not ok:
                self.fail("seed %d: %s" % (FUZZ_SEED, value.getTraceback()))
            outcomes[(kind, value[0])] += 1
        logMessage("fuzz outcomes (kind, how): %r" % (sorted(outcomes.items()),))
        # rmux noticed the garbage: most connections were closed by it.
        closed = sum(v for (kind, how), v in outcomes.items() if how in ("closed", "reset"))
        self.assertGreater(closed, 50, outcomes)

        # Its clients go away with the connections.
        deadline = time.monotonic() + 5
        while len(self.rmux.factory.clients) and time.monotonic() < deadline:
            yield sleep(0.05)
        self.assertEqual(len(self.rmux.factory.clients), 0, "seed %d" % (FUZZ_SEED,))

        client = yield self.inThread(redisPyClient, self.rmux.path)
        self.addCleanup(client.close)
        info = yield self.inThread(client.info, "rmux")
        self.assertEqual(info["rmux_connected_clients"], 1, "seed %d" % (FUZZ_SEED,))

        def normal():
            results = []
            for i in range(20):
                results.append(client.set("after:%d" % i, "v%d" % i))
                results.append(client.get("after:%d" % i))
                results.append(client.echo("e%d" % i))
            pipe = client.pipeline(transaction=True)
            pipe.set("tx", "1")
            pipe.incr("tx")
            results.append(pipe.execute())
            results.append(client.blpop(["empty-list"], timeout=0.1))
            return results

        results = yield self.inThread(normal)
        expected = []
        for i in range(20):
            expected += [True, b"v%d" % i, b"e%d" % i]
        expected += [[True, 2], None]
        self.assertEqual(results, expected, "seed %d" % (FUZZ_SEED,))
        yield self.assertServing(self.rmux.path)
        # The backend was never shut down or paused by a fuzz client.
        self.assertIsNone(self.server.process.poll())


# ---------------------------------------------------------------------------
# Bugs found while writing the tests above, each with its reproduction.
# They were todo tests until fixed (1f5e843 and 042f260); now they guard
# against the bugs coming back.
# ---------------------------------------------------------------------------


class HeldReplyOrderTests(FaultTestCase):
    """
    Commands that arrive while a blocking command or a transaction holds
    the client are handled when its reply comes in; a reply they get at
    once must still leave after the held command's.

    Found as: replies answered at once (ECHO, PING, QUIT, errors, ...) for
    commands held behind BLPOP or EXEC overtook that command's reply, because
    ClientProtocol.release() ran inside the backend batch of
    rmux.transport.coalescer: slotFilled() deferred the EXEC/BLPOP reply to
    coalescer.end(), but reply() wrote with writeNow() at once.
    """

    def setUp(self):
        FaultTestCase.setUp(self)
        self.server = startRedis(self)
        self.rmux = startRmux(self, [self.server])

    def exchange(self, payload):
        return self.inThread(rawExchange, self.rmux.path, payload)

    @inlineCallbacks
    def test_afterBlockingCommand(self):
        got = yield self.exchange(b"BLPOP nolist 0.05\r\nECHO tok\r\nQUIT\r\n")
        self.assertEqual(got, b"*-1\r\n$3\r\ntok\r\n+OK\r\n")

    @inlineCallbacks
    def test_afterExec(self):
        got = yield self.exchange(b"MULTI\r\nSET a 1\r\nEXEC\r\nECHO tok\r\nQUIT\r\n")
        self.assertEqual(got, b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n$3\r\ntok\r\n+OK\r\n")

    @inlineCallbacks
    def test_redisPyPipeline(self):
        """
        What a redis-py user sees: BLPOP gets ECHO's reply, ECHO gets nil.
        """

        def run():
            client = redis.Redis(unix_socket_path=self.rmux.path)
            try:
                pipe = client.pipeline(transaction=False)
                pipe.blpop(["nolist"], 0.05)
                pipe.echo("x")
                return pipe.execute()
            finally:
                client.close()

        self.assertEqual((yield self.inThread(run)), [None, b"x"])


def stopWithin(service, seconds):
    """
    Stop C{service}; fires with whether it stopped within C{seconds}.
    """
    from twisted.internet.defer import Deferred

    result = Deferred()
    timer = reactor.callLater(seconds, lambda: result.called or result.callback(False))

    def stopped(_):
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(True)

    service.stopService().addBoth(stopped)
    return result


class RejectedConnectionTests(FaultTestCase):
    """
    A server that accepts a connection and closes it at once, as Redis does
    past its maxclients, must not break the pool for good.

    Found as: a backend connection that got data or was closed before
    ClientCreator's Deferred fired (callLater(0) after connectionMade)
    raised AttributeError in BackendProtocol.dataReceived/connectionLost
    (pool and clock were still None); it was then added to the pool anyway,
    broken and with no waiters, so BackendPool.send preferred it and every
    request failed with 'lost connection' forever, even once Redis had room;
    its closed Deferred never fired, so stopService hung.  Redis's own
    maxclients rejection hits that window within a second.
    """

    @inlineCallbacks
    def test_maxclientsThenRoom(self):
        server = startRedis(self, args=["--maxclients", "1"])
        # The one client Redis allows: ours, to raise the limit later.
        admin = yield self.inThread(socket.socket, socket.AF_UNIX)
        self.addCleanup(admin.close)
        yield self.inThread(admin.connect, server.path)
        yield self.inThread(admin.sendall, b"PING\r\n")
        self.assertEqual((yield self.inThread(admin.recv, 100)), b"+PONG\r\n")

        from rmux.config import fromFlags
        from rmux.service import ListenerService

        path = socketPath(self)
        service = ListenerService(
            fromFlags({"socket": path, "unixConnections": server.path, "poolSize": "4"}).listeners[0],
            reactor,
        )
        service.startService()
        stopped = []
        self.addCleanup(lambda: stopped or stopWithin(service, 3))
        pool = service.pools[0]

        def hammer(seconds):
            # Every request makes rmux try a new connection, which Redis
            # accepts and closes: until one is caught in the window.
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    if any(c.broken for c in list(pool.connections)):
                        return True
                    s.sendall(b"GET x\r\n")
                    s.recv(1000)
            return False

        caught = yield self.inThread(hammer, 3.0)
        logMessage("a rejected connection was caught in the window: %r" % (caught,))
        yield self.inThread(admin.sendall, b"CONFIG SET maxclients 1000\r\n")
        self.assertEqual((yield self.inThread(admin.recv, 100)), b"+OK\r\n")
        # The health checks were refused too; once they see the server
        # answer, the pool may connect at once (no backoff left).
        deadline = time.monotonic() + 5
        while service.health.states()[pool] != "up" and time.monotonic() < deadline:
            yield sleep(0.02)
        yield sleep(0.05)

        def use():
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
                return [
                    rawExchangeOn(s, b"SET x %d\r\nGET x\r\n" % (i,), 2) for i in range(50)
                ]

        replies = yield self.inThread(use)
        finished = yield stopWithin(service, 3)
        stopped.append(finished)
        # Errors rmux logged (as failures of this test, not just logged).
        logged = [f.getErrorMessage() for f in self.flushLoggedErrors()]
        self.assertEqual(replies, [[b"OK", b"%d" % (i,)] for i in range(50)])
        self.assertTrue(finished, "stopService did not finish within 3 s")
        self.assertEqual(logged, [])


def rawExchangeOn(sock, payload, count):
    """
    Send C{payload} on C{sock} and return C{count} replies (hiredis).
    """
    reader = hiredis.Reader()
    sock.sendall(payload)
    replies = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is False:
            data = sock.recv(65536)
            if not data:
                raise ClientViolation("closed")
            reader.feed(data)
            continue
        replies.append(reply)
    return [str(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]


class TricklingBackendTests(FakeBackendTestCase):
    """
    A backend that keeps sending bytes but never finishes its reply.

    Found as: remoteReadTimeout counted from the last byte received
    (BackendProtocol.lastProgress was set on every dataReceived), so a
    backend that trickled a reply that never ends held the request forever,
    and ReplyFramer buffered the unterminated line without a bound.
    """

    @inlineCallbacks
    def test_neverEndingReply(self):
        self.fake.plan, self.fake.every = ["trickle"], 1
        started = time.monotonic()
        try:
            got = yield self.inThread(rawExchange, self.rmux.path, b"GET k\r\n", timeout=3.0, until=1)
        except socket.timeout:
            got = None
        elapsed = time.monotonic() - started
        self.assertIsNotNone(got, "no reply within 3 s (read timeout: 300 ms)")
        self.assertTrue(got.startswith(b"-ERR rmux: backend "), got)
        self.assertLess(elapsed, 2.0)
