# -*- test-case-name: tests.test_reload -*-
"""
Live reload: what SIGHUP does.

A reload re-reads the C{--config} file and applies what it can to the
running listeners without dropping a client or a request: backends
added, removed and re-weighted (in prefix routes too), placement, health
checks, timeouts, limits and credentials.  This module holds the pieces
that do not depend on the services:

  - L{nextConfig} reads and checks the new configuration, and
    L{checkReloadable} refuses, as a whole, one that changes what a running
    rmux cannot (where a listener listens, how many processes serve,
    the command table);
  - L{describeChanges} says in one line what a reload changes, without a
    password;
  - L{PoolRetirement} takes a removed backend's pool out of service once
    the replies it owes are delivered;
  - L{HangupHandler} turns SIGHUP into a call on the reactor thread.

L{rmux.service} applies a configuration to the listeners of one process;
L{rmux.workers} hands it from the parent to every worker process.
"""

import dataclasses
import signal

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rmux import settings
from rmux.config import ConfigError, ListenerConfig, loadConfigFile
from rmux.pool import BackendProtocol

__all__ = [
    "NothingToReload",
    "ReloadRefused",
    "RESTART_FIELDS",
    "nextConfig",
    "checkReloadable",
    "describeChanges",
    "describeSource",
    "serverKey",
    "PoolRetirement",
    "HangupHandler",
]


class NothingToReload(Exception):
    """
    The listeners came from command-line options, not from a file.
    """


class ReloadRefused(Exception):
    """
    The new configuration cannot be applied: it is invalid, or changes
    something only a restart can.  The message says which and why, and
    holds no secret.
    """


RESTART_FIELDS = tuple(s.name for s in settings.listenerFields() if not s.reloadable)
"""
Listener fields a reload cannot change: where and how a listener listens
(the socket is bound once, by the parent when there are workers), how
many processes serve, and the command table every listener shares.
"""

_GLOBAL_FIELDS = tuple(s.name for s in settings.globalFields())
"""
Process-wide settings: they come from command-line options, which a
reload does not re-read, and the services built from them (the stats and
metrics ports) are not rebuilt.
"""

_SECRET_FIELDS = frozenset(s.name for s in settings.SETTINGS if s.secret)

_PLACEMENT_FIELDS = frozenset(["backends", "routes"])


def serverKey(address):
    """
    What makes two backend entries one server, and so one pool: the
    address, the user and the database, but not the weight or the name,
    which only place keys.

    @param address: an L{rmux.config.BackendAddress}.
    """
    return (address.kind, address.host, address.port, address.path,
            address.username, address.db, address.tls)


def nextConfig(current, newConfig=None):
    """
    The configuration a reload would apply.

    @param current: the running L{rmux.config.RmuxConfig}.
    @param newConfig: the one to apply, or L{None} to re-read
        C{current.configPath}; the file holds listeners only, so the
        process-wide settings (from command-line options) are kept.
    @raise NothingToReload: with neither a new configuration nor a file.
    @raise ReloadRefused: the file cannot be read or is invalid (the
        message is L{ConfigError}'s, which names the file and the field and
        never shows a password), or the new configuration changes what
        only a restart can (see L{checkReloadable}).
    """
    if newConfig is None:
        if current.configPath is None:
            raise NothingToReload(
                "the listeners come from command-line options, not from a "
                "--config file"
            )
        try:
            loaded = loadConfigFile(current.configPath)
        except ConfigError as e:
            raise ReloadRefused(str(e)) from None
        newConfig = dataclasses.replace(current, listeners=loaded.listeners)
    checkReloadable(current, newConfig)
    return newConfig


def _showMode(mode):
    return "0%o" % (mode,)


def checkReloadable(old, new):
    """
    Refuse a new configuration that changes what a running rmux cannot.

    @param old: the running L{rmux.config.RmuxConfig}.
    @param new: the one to apply.
    @raise ReloadRefused: naming the first such field, and saying that
        changing it needs a restart.
    """
    restart = "; restart rmux to change it"
    if len(old.listeners) != len(new.listeners):
        raise ReloadRefused(
            "the number of listeners changed from %d to %d%s"
            % (len(old.listeners), len(new.listeners), restart)
        )
    for index, (a, b) in enumerate(zip(old.listeners, new.listeners), 1):
        for name in RESTART_FIELDS:
            if name in ("host", "port") and a.socket is not None and b.socket is not None:
                # Not listened on: a unix socket listener has no TCP address.
                continue
            before, after = getattr(a, name), getattr(b, name)
            if before == after:
                continue
            if name == "commands":
                shown = ""
            elif name == "socketMode":
                shown = " from %s to %s" % (_showMode(before), _showMode(after))
            else:
                shown = " from %s to %s" % (_show(before), _show(after))
            raise ReloadRefused(
                "listener %d (%s): %s changed%s%s" % (index, a.name, name, shown, restart)
            )
    for name in _GLOBAL_FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            raise ReloadRefused(
                "%s changed from %s to %s%s" % (name, _show(before), _show(after), restart)
            )


def _show(value):
    """
    A setting's value as an operator writes it.
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return repr(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _servers(addresses):
    """
    The distinct servers of C{addresses}, by L{serverKey}, in order.
    """
    servers = {}
    for address in addresses:
        servers.setdefault(serverKey(address), address)
    return servers


def _weights(addresses):
    weights = {}
    for address in addresses:
        key = serverKey(address)
        weights[key] = weights.get(key, 0) + address.weight
    return weights


def _groups(listener):
    """
    Each placement group of a listener: C{(label, backends, ring settings)}
    for the catch-all and for each route, by prefix.
    """
    groups = {None: listener}
    for route in listener.routes:
        groups[route.prefix] = route
    return groups


def _placementOf(group):
    return (
        [(serverKey(a), a.weight, a.name) for a in group.backends],
        group.distribution,
        group.hash,
        group.hashTag,
        group.failover,
    )


def _describeListener(a, b):
    """
    What changes from listener C{a} to listener C{b}, as short phrases.
    """
    changes = []
    before, after = _servers(a.allBackends), _servers(b.allBackends)
    added = [str(address) for key, address in after.items() if key not in before]
    removed = [str(address) for key, address in before.items() if key not in after]
    if added:
        changes.append("added backend%s %s" % ("s" if len(added) > 1 else "", ", ".join(added)))
    if removed:
        changes.append(
            "removed backend%s %s" % ("s" if len(removed) > 1 else "", ", ".join(removed))
        )
    credentials = [
        str(address) for key, address in after.items()
        if key in before and before[key].password != address.password
    ]
    if credentials:
        changes.append("new credentials for %s" % (", ".join(credentials),))
    oldGroups, newGroups = _groups(a), _groups(b)
    for prefix, group in newGroups.items():
        where = "" if prefix is None else " in route %s" % (_show(prefix),)
        old = oldGroups.get(prefix)
        if old is None:
            changes.append("added route %s" % (_show(prefix),))
            continue
        oldWeights, newWeights = _weights(old.backends), _weights(group.backends)
        weights = [
            "%s %d->%d" % (after[key], oldWeights[key], weight)
            for key, weight in newWeights.items()
            if key in oldWeights and oldWeights[key] != weight
        ]
        if weights:
            changes.append("re-weighted %s%s" % (", ".join(weights), where))
        for name in ("distribution", "hash", "hashTag", "failover"):
            if getattr(old, name) != getattr(group, name):
                changes.append("%s %s->%s%s" % (
                    name, _show(getattr(old, name)), _show(getattr(group, name)), where))
        if not weights and _placementOf(old)[0] != _placementOf(group)[0] and not (
            added or removed
        ):
            changes.append("backend order or names changed%s" % (where,))
    for prefix in oldGroups:
        if prefix not in newGroups:
            changes.append("removed route %s" % (_show(prefix),))
    for field in dataclasses.fields(ListenerConfig):
        name = field.name
        if name in RESTART_FIELDS or name in _PLACEMENT_FIELDS:
            continue
        if name in ("distribution", "hash", "hashTag", "failover"):
            continue
        old, new = getattr(a, name), getattr(b, name)
        if old == new:
            continue
        if name in _SECRET_FIELDS:
            changes.append("%s changed" % (name,))
        else:
            changes.append("%s %s->%s" % (name, _show(old), _show(new)))
    return changes


def describeSource(current, newConfig):
    """
    How a reload's log line names what it applies: the file it re-read, or
    a configuration handed to it.

    @param current: the running L{rmux.config.RmuxConfig}.
    @param newConfig: what was handed to the reload, or L{None}.
    """
    if newConfig is None and current.configPath is not None:
        return current.configPath
    return "the new configuration"


def describeChanges(old, new):
    """
    What applying C{new} over C{old} changes, in one line for the log:
    C{"listener /tmp/rmux.sock: added backend 10.0.0.3:6379; poolSize
    20->8"}.  Passwords (of backends, C{requirepass}, users) are never
    shown: only that they changed.

    @param old: the running L{rmux.config.RmuxConfig}.
    @param new: the one being applied, with as many listeners.
    """
    parts = []
    for a, b in zip(old.listeners, new.listeners):
        changes = _describeListener(a, b)
        if changes:
            parts.append("listener %s: %s" % (a.name, "; ".join(changes)))
    return " | ".join(parts) if parts else "nothing changed"


class PoolRetirement:
    """
    Takes the pool of a backend removed by a reload out of service without
    cutting off a reply it owes.

    The new placement sends the pool no request, but it may still owe
    replies: requests in flight on its connections, requests waiting for a
    connection being opened, clients' transactions and blocking commands
    on its dedicated connections.  Every L{pollInterval} seconds, each
    connection that no client holds is retired (it closes itself once its
    last reply is delivered; see L{BackendProtocol.retire}); once no
    connection or connect attempt is left, or at the deadline, the pool is
    stopped.  Only a dedicated connection still busy at the deadline (a
    long blocking command, an open transaction) is cut off then, and its
    client gets C{-ERR rmux: lost connection to backend ...}.

    The deadline is the listener's C{shutdownTimeout}, the time clients get
    to collect their replies at shutdown, but never shorter than a request
    on a shared connection may take before it fails with the backend's own
    timeout error.

    @ivar finished: whether the pool has been stopped.
    """

    log = Logger()
    pollInterval = 0.05

    def __init__(self, clock, pool, shutdownTimeout, forgetPool=None):
        """
        @param clock: an L{IReactorTime}.
        @param pool: the L{rmux.pool.BackendPool} to retire.
        @param shutdownTimeout: the listener's C{shutdownTimeout}, seconds.
        @param forgetPool: called with the pool at the end, so that clients
            drop their affinity to it (see L{rmux.session.Session.send}):
            nothing will be sent to it again.
        """
        self.clock = clock
        self.pool = pool
        self.forgetPool = forgetPool
        longestReply = (
            pool.readTimeout * BackendProtocol.replyTimeoutFactor + pool.connectTimeout
        )
        self.deadline = clock.seconds() + max(shutdownTimeout, longestReply)
        self.finished = False
        self._stopped = None
        self._waiting = []
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock

    def start(self):
        """
        Start retiring.

        @return: a L{Deferred} that fires with L{None} once the pool is
            stopped and its connections closed.
        """
        self._loop.start(self.pollInterval, now=True)
        return self.whenDone()

    def whenDone(self):
        """
        @return: a L{Deferred} that fires with L{None} once the pool is
            stopped and its connections closed.
        """
        d = Deferred()
        if self._stopped is not None and self._stopped.called:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    def _poll(self):
        pool = self.pool
        idlePinned = set(pool.idlePinned)
        for connection in list(pool.open):
            if connection.dedicated and connection not in idlePinned:
                # A client's transaction or blocking command: it comes back
                # (checkin) when that is over.
                continue
            if not connection.retiring:
                connection.retire()
        drained = not (pool.open or pool.attempts or pool.waitingForConnection)
        if drained or self.clock.seconds() >= self.deadline:
            self.finish()

    def finish(self):
        """
        Stop the pool now, closing what is left.

        @return: see L{whenDone}.
        """
        if self._loop.running:
            self._loop.stop()
        if not self.finished:
            self.finished = True
            if self.forgetPool is not None:
                self.forgetPool(self.pool)
            self._stopped = self.pool.stop()
            self._stopped.addBoth(self._closed)
        return self.whenDone()

    def _closed(self, result):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


class HangupHandler:
    """
    Calls C{reload} when the process gets SIGHUP, on the reactor thread.

    Python runs a signal handler between two bytecodes of the main thread,
    wherever the reactor is; the handler only asks the reactor, through
    C{callFromThread} (which also wakes it), to call C{reload} at its next
    turn.  L{uninstall} puts back whatever handler was there before.
    """

    log = Logger()

    def __init__(self, reactor, reload):
        """
        @param reactor: an L{IReactorThreads}.
        @param reload: called with no argument; may return a L{Deferred}.
        """
        self.reactor = reactor
        self.reload = reload
        self.installed = False
        self._previous = None

    def install(self):
        """
        Handle SIGHUP from now on.  Outside the main thread (an embedding
        program running the reactor in a thread of its own) there is no
        signal handling to take part in: nothing is installed, and the
        reload stays available as a method.
        """
        if self.installed:
            return
        try:
            self._previous = signal.signal(signal.SIGHUP, self._received)
        except ValueError:
            self.log.info(
                "rmux: not in the main thread: SIGHUP will not reload the configuration"
            )
            return
        self.installed = True

    def uninstall(self):
        """
        Put the previous SIGHUP handler back.
        """
        if not self.installed:
            return
        self.installed = False
        previous = self._previous
        signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)

    def _received(self, signum, frame):
        self.reactor.callFromThread(self._reload)

    def _reload(self):
        maybeDeferred(self.reload).addErrback(
            lambda failure: self.log.failure("rmux: reload failed", failure)
        )
