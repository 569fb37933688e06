# -*- test-case-name: tests.test_config -*-
"""
The validated configuration: L{ListenerConfig} (one listener, with its
L{RouteConfig}s and L{UserConfig}s) and L{RmuxConfig} (the whole process).

They hold the I{effective} values (a pool size of 20, not rmux's "0 means
default") and validate themselves when constructed, so a configuration
built in code (a C{.tac} file) is checked exactly like one read from a
file.  Their defaults and the ranges they check come from
L{rmux.settings}.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from rmux import settings
from rmux.auth import Authenticator
from rmux.config.addresses import BackendAddress, splitHostPort
from rmux.config.checks import (
    MAX_SOCKET_MODE, WILDCARD_HOSTS, ConfigError, checkBool, checkInt, checkName,
    checkOptionalStr, checkPassword, checkSetting, checkSocketOwner, isInt, joinHostPort,
)

_default = settings.default

DISTRIBUTIONS = ("rmux", "ketama")
"""
The key placements a pool can use: Go rmux's slot table (the default), and
twemproxy's ketama consistent hashing.
"""

HASHES = ("fnv1a_64", "md5")
"""
The key hashes ketama can use, by twemproxy's names; the first is the
default.  rmux's own placement always uses its own hash.
"""

#: The integer fields of a listener whose range its setting gives.
_RANGED = tuple(
    s for s in settings.listenerFields() if s.kind in settings.INTEGER_KINDS
)
#: Its boolean fields.
_BOOLEANS = tuple(s.name for s in settings.listenerFields() if s.kind == settings.BOOLEAN)


def _orderBackends(backends: Iterable[BackendAddress | str]) -> tuple[BackendAddress, ...]:
    """
    All TCP backends first, each group in the order given: rmux builds its
    list from C{tcpConnections} then C{unixConnections}, and the index of a
    backend in that list decides which keys hash to it.
    """
    if isinstance(backends, (str, bytes)):
        raise ConfigError(f"backends: expected a sequence of addresses, got {backends!r}")
    addresses = []
    for index, backend in enumerate(backends):
        if isinstance(backend, str):
            backend = BackendAddress.fromString(backend)
        elif not isinstance(backend, BackendAddress):
            raise ConfigError(f"backends[{index}]: expected a BackendAddress, got {backend!r}")
        addresses.append(backend)
    return tuple(a for a in addresses if a.kind == "tcp") + tuple(
        a for a in addresses if a.kind == "unix"
    )


def checkDistribution(value: object, label: str) -> str:
    if not isinstance(value, str) or value not in DISTRIBUTIONS:
        raise ConfigError(f"{label}: must be 'rmux' or 'ketama', got {value!r}")
    return value


READ_FROM = ("master", "preferReplica", "replica")


def checkReadFrom(value: object, label: str) -> str:
    if not isinstance(value, str) or value not in READ_FROM:
        raise ConfigError(
            f"{label}: must be 'master', 'preferReplica' or 'replica', got {value!r}")
    return value


def checkHash(value: object, label: str) -> str:
    if not isinstance(value, str) or value not in HASHES:
        raise ConfigError(f"{label}: must be 'fnv1a_64' or 'md5', got {value!r}")
    return value


def checkHashTag(value: object, label: str) -> bytes | None:
    """
    Normalize a hash tag to two bytes, or C{None} for none (C{None} or an
    empty string).
    """
    if value is None or value in ("", b""):
        return None
    if isinstance(value, str) and value.isascii():
        tag = value.encode("ascii")
    elif isinstance(value, bytes):
        tag = value
    else:
        tag = b""
    if len(tag) != 2 or not all(0x21 <= byte <= 0x7E for byte in tag):
        raise ConfigError(
            f"{label}: must be two printable ASCII characters such as '{{}}', got {value!r}"
        )
    return tag


_MAX_RMUX_BACKENDS = 101
"""rmux's slot table is built from a list of primes that ends at 101."""

_MAX_KETAMA_NAME = 80
"""
twemproxy hashes C{"<name>-<n>"} for a server's point groups in an 86-byte
buffer; a name of at most 80 bytes leaves room for any realistic C{n}.
"""


def _checkPool(backends: tuple[BackendAddress, ...], distribution: str) -> None:
    """
    Check what a pool's placement makes of its backends: weights are
    ketama's alone, a name names one entry, ketama places an entry by its
    name or else its address so those must differ and fit twemproxy's
    buffer, and rmux's slot table has room for 101 backends.

    Errors name the entry as C{backends[i]}, which the parsers translate
    into the list and index the operator wrote.
    """
    if distribution == "rmux" and len(backends) > _MAX_RMUX_BACKENDS:
        raise ConfigError(
            f"rmux's placement handles at most {_MAX_RMUX_BACKENDS} backends "
            f"per pool, got {len(backends)}; use the ketama distribution"
        )
    names: dict[str, BackendAddress] = {}
    identities: dict[str, BackendAddress] = {}
    for index, backend in enumerate(backends):
        label = f"backends[{index}]"
        if backend.weight != 1 and distribution != "ketama":
            raise ConfigError(
                f"{label}: weight {backend.weight} is only used by the ketama "
                "distribution; with rmux's placement list a server twice instead"
            )
        if backend.name is not None:
            if backend.name in names:
                raise ConfigError(
                    f"{label}: name {backend.name!r} is already used by "
                    f"{names[backend.name]} in this pool"
                )
            names[backend.name] = backend
        if distribution == "ketama":
            identity = backend.name or str(backend)
            if identity in identities:
                raise ConfigError(
                    f"{label}: ketama places each entry by its name, or its address "
                    f"when unnamed, and {identity!r} already places an earlier entry; "
                    "give the entries distinct names (or list the server once, with a weight)"
                )
            if len(identity.encode("utf-8")) > _MAX_KETAMA_NAME:
                raise ConfigError(
                    f"{label}: ketama places an entry by its name, or its address when "
                    f"unnamed, and {identity!r} is longer than twemproxy allows "
                    f"({_MAX_KETAMA_NAME} bytes); give it a shorter name"
                )
            identities[identity] = backend


def _showPrefix(prefix: bytes) -> str:
    try:
        return repr(prefix.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(prefix)


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    """
    A prefix route (Envoy's C{prefix_routes}): keys that start with
    L{prefix} go to this route's own backends, placed by its own
    distribution.  When several prefixes match a key, the longest wins;
    keys no route matches go to the listener's own backends.

    Built in code, a route has exactly the values given (the defaults are a
    listener's); L{fromJSON} fills the fields a route object leaves out
    from its listener's.

    @ivar prefix: The key prefix, non-empty L{bytes} (a C{str} is encoded
        as UTF-8).  There is no empty prefix: the listener's own backends
        are the catch-all.
    @ivar backends: The route's backends, TCP ones first, as for a listener.
    @ivar distribution: C{"rmux"} or C{"ketama"}; see L{ListenerConfig}.
    @ivar hash: ketama's key hash; see L{ListenerConfig}.
    @ivar hashTag: Two bytes such as C{b"{}"}, or C{None}; see
        L{ListenerConfig}.
    @ivar failover: Whether a key whose backend is down goes to another
        backend of this route.
    @ivar cluster: Whether L{backends} are the seed nodes of a Redis
        Cluster, which then places the route's keys by hash slot (its own
        C{{hash tags}}); such a route takes no placement fields.
    """

    prefix: bytes
    backends: tuple[BackendAddress, ...]
    distribution: str = _default("distribution")
    hash: str = _default("hash")
    hashTag: bytes | None = None
    failover: bool = False
    cluster: bool = False

    def __post_init__(self) -> None:
        prefix = self.prefix
        if isinstance(prefix, str):
            prefix = prefix.encode("utf-8")
            object.__setattr__(self, "prefix", prefix)
        if not isinstance(prefix, bytes):
            raise ConfigError(f"prefix: must be a string, got {prefix!r}")
        if not prefix:
            raise ConfigError(
                "prefix: must not be empty; keys no route matches go to the "
                "listener's own backends"
            )
        _placementFields(self)
        checkBool(self.failover, "failover")
        checkBool(self.cluster, "cluster")
        if self.cluster:
            _checkClusterRoute(self)


def _checkClusterRoute(route: RouteConfig) -> None:
    """
    A cluster route's seeds are TCP nodes, and the cluster alone places
    its keys.
    """
    for index, seed in enumerate(route.backends):
        if seed.kind != "tcp":
            raise ConfigError(f"backends[{index}]: a cluster node is reached over TCP")
    placed = [name for name, value in (
        ("hashTag", route.hashTag), ("failover", route.failover),
        ("distribution", route.distribution != _default("distribution")),
    ) if value]
    if placed:
        raise ConfigError(notWithCluster(placed))


def notWithCluster(fields: list[str]) -> str:
    """
    The error for placement C{fields} given to a cluster route.
    """
    return (f"{', '.join(fields)}: not with cluster: a cluster places keys itself "
            "(by hash slot, with {hash tags})")


def _placementFields(config: ListenerConfig | RouteConfig) -> None:
    """
    Validate and normalize the fields a listener and a route share.
    """
    object.__setattr__(config, "backends", _orderBackends(config.backends))
    if not config.backends:
        raise ConfigError("at least one backend is required")
    checkDistribution(config.distribution, "distribution")
    checkHash(config.hash, "hash")
    object.__setattr__(config, "hashTag", checkHashTag(config.hashTag, "hashTag"))
    _checkPool(config.backends, config.distribution)


@dataclass(frozen=True, kw_only=True)
class UserConfig:
    """
    An ACL-style user a client of a listener can log in as, with C{AUTH
    name password} (or C{HELLO 3 AUTH name password}), as Redis 6's users.
    rmux gives users no per-command rules: a user is a name and a password,
    so that an application's credentials can be told apart and changed
    one at a time.

    C{repr()} shows the name and hides the password.

    @ivar name: The user name: non-empty, without spaces or control
        characters (Redis's C{AUTH} takes it as one argument).  The name
        C{"default"} is the user of C{requirepass} and of the
        one-argument C{AUTH password}.
    @ivar password: The password, a non-empty string, sent by the client
        as UTF-8.
    @ivar denyCommands: Commands this user may not run besides the
        listener's C{denyCommands}, in the same form, or L{None}.
    """

    name: str
    password: str = field(repr=False)
    denyCommands: str | None = None

    def __post_init__(self) -> None:
        checkName(self.name, "name")
        checkPassword(self.password, "password")
        if self.denyCommands is not None:
            checkDenied(self.denyCommands, "denyCommands", ())

    def __repr__(self) -> str:
        return f"UserConfig(name={self.name!r}, password=<hidden>)"


def _checkUsers(users: object, requirepass: str | None) -> tuple[UserConfig, ...]:
    """
    Normalize a listener's users to a tuple of L{UserConfig}: from such a
    sequence, or from a mapping of names to passwords (handier in a
    C{.tac} file).  Names must be distinct, and C{"default"} may not be
    given both as a user and as C{requirepass}.

    Errors name a user by its index; they quote names but never passwords,
    not even a value of the wrong type (it may be a password in the wrong
    place).
    """
    if isinstance(users, Mapping):
        result = []
        for index, (name, password) in enumerate(users.items()):
            try:
                result.append(UserConfig(name=name, password=password))
            except ConfigError as e:
                raise ConfigError(f"users[{index}]: {e}") from None
    elif isinstance(users, (list, tuple)):
        result = list(users)
        for index, user in enumerate(result):
            if not isinstance(user, UserConfig):
                raise ConfigError(
                    f"users[{index}]: expected a UserConfig, got {type(user).__name__}"
                )
    else:
        raise ConfigError(
            "users: expected a sequence of UserConfig or a mapping of names to "
            f"passwords, got {type(users).__name__}"
        )
    seen: dict[str, int] = {}
    for index, user in enumerate(result):
        if user.name in seen:
            raise ConfigError(
                f"users[{index}]: name {user.name!r} is already used by users[{seen[user.name]}]"
            )
        seen[user.name] = index
        if user.name == "default" and requirepass is not None:
            raise ConfigError(
                f"users[{index}]: 'default' is the user requirepass sets the password of; "
                "give that password once, as requirepass or as this user"
            )
    return tuple(result)


@dataclass(frozen=True, kw_only=True)
class ListenerConfig:
    """
    One rmux instance: where clients connect, and the backends (each with
    its own pool) their commands go to.  Go rmux calls this an "instance";
    one process can run several, one per element of the JSON config.

    All values are the effective ones, validated on construction: a pool
    size of 20, not rmux's "0 means default", and timeouts in integer
    milliseconds.  Fields are keyword-only and all have defaults except
    C{backends}, so fields added later (auth, ...) do not break existing
    callers.

    @ivar host: TCP interface to listen on; C{""} means all interfaces.
        Ignored when C{socket} is set.
    @ivar port: TCP port to listen on (0 picks a free one, useful in tests).
        Ignored when C{socket} is set.
    @ivar socket: Unix socket path to listen on, or C{None} for TCP.
    @ivar socketMode: Permission bits of the unix socket file.  Go rmux
        always makes it 0666 so that any local user (PHP-FPM, cron) can
        connect; we keep that default and let it be tightened.
    @ivar backends: The backend addresses, TCP ones first, then unix ones;
        this order defines the key hashing.  Strings are parsed with
        L{BackendAddress.fromString}.  With L{routes}, these take the keys
        no route matches, so they are required even then.
    @ivar poolSize: Connections per backend.
    @ivar failover: When multiplexing, send a key whose backend is down to
        the next live one instead of failing the command.
    @ivar maxProcesses: Go rmux sets GOMAXPROCS from it; 0 = not set.
    @ivar localReadTimeout: Client read timeout in ms, 0 = none.  Go rmux
        parses but never applies its local timeouts.
    @ivar localWriteTimeout: Client write timeout in ms, 0 = none.
    @ivar idleTimeout: Close a client idle this long, in ms, 0 = never.
    @ivar remoteConnectTimeout: Backend connect timeout in ms.
    @ivar remoteReadTimeout: Backend read timeout in ms.
    @ivar remoteWriteTimeout: Backend write timeout in ms.
    @ivar distribution: How keys are placed on L{backends}: C{"rmux"} (Go
        rmux's slot table, the default, so keys stay where Go rmux put
        them) or C{"ketama"} (twemproxy's consistent hashing, using each
        backend's L{BackendAddress.weight} and L{BackendAddress.name}).
        A weight other than 1 needs C{"ketama"}.
    @ivar hash: The key hash of C{"ketama"}: C{"fnv1a_64"} (twemproxy's
        default) or C{"md5"}.  rmux's placement has its own hash; the file
        and flag parsers refuse a C{hash} that no ketama pool uses.
    @ivar hashTag: Two bytes such as C{b"{}"} (a two-character C{str} is
        accepted): when a key holds the opening one and later the closing
        one, only the bytes between them are hashed, so C{user:{42}:name}
        and C{cart:{42}} land on one server.  C{None} (or C{""}) for none.
        Applies to either distribution.
    @ivar routes: L{RouteConfig}s, each sending keys with its prefix to its
        own backends; no two with the same prefix.  JSON only.
    @ivar healthInterval: Milliseconds between two health checks (a PING)
        of a backend; Go rmux checks every 100 ms.
    @ivar healthTimeout: Milliseconds a health check may take before it
        counts as failed.  C{None} when constructing means
        L{remoteConnectTimeout}; the stored value is always the effective
        one (so C{dataclasses.replace} of the connect timeout keeps it).
    @ivar healthFailures: Consecutive failed checks that take a backend
        down (Go rmux: 1).
    @ivar healthSuccesses: Consecutive good checks that bring a down
        backend back (Go rmux: 1).
    @ivar startupWait: How long, in ms, a request for a backend that has
        not had its first health check yet waits for it; 0 = fail at once,
        as Go rmux, whose backends start down, does.
    @ivar commands: Extra entries for the command table: module commands or
        commands of a Redis newer than rmux's table, in the shape of
        C{rmux/commands.json} rows (C{name}, C{arity}, and C{firstKey},
        C{lastKey}, C{step} or C{keySpecs}; optionally C{flags} and rmux's
        C{policy}/C{routing}).  JSON only.
    @ivar allowFlush: When multiplexing, send FLUSHDB and FLUSHALL to every
        server instead of refusing them.  Without multiplexing they always
        go to the one backend, as in Go rmux.
    @ivar requirepass: The password of Redis's C{default} user, which the
        one-argument C{AUTH password} logs in as, or C{None}.  Redis's
        name, so that an operator's Redis habits carry over.  Clients
        authenticate to rmux with it, not to the backends, which have
        their own credentials (L{BackendAddress.password}).  Never shown
        by C{repr()} or in an error.
    @ivar users: L{UserConfig}s, ACL-style users for C{AUTH name password}
        (a mapping of names to passwords is accepted too).  With
        C{requirepass} or any user, clients must authenticate before
        anything but AUTH, HELLO and QUIT; a listener with users and no
        C{requirepass} has its C{default} user disabled (see
        L{rmux.auth}).  JSON only: a password on the command line is seen
        by every local user through C{ps}.
    @ivar maxPinned: Per backend server, how many connections rmux may
        dedicate each to one client at a time: a client that runs a
        transaction (after WATCH or MULTI) or a blocking command (BLPOP,
        ...) holds one until it is done.  The cap keeps a crowd of such
        clients from using up the server's C{maxclients}.
    @ivar pinnedWait: How long, in ms, a client waits for a dedicated
        connection when C{maxPinned} are in use, before it gets an error;
        0 = fail at once.
    @ivar maxClients: How many clients may be connected at once, as
        Redis's C{maxclients}: one more gets C{-ERR max number of clients
        reached} and is closed.
    @ivar clientOutputLimit: How many bytes of replies not yet sent a
        client may have; one that exceeds it is disconnected (and the
        service logs it).  0 = unlimited.
    @ivar pubsubOutputLimit: The same for a subscribed client (Redis's
        pubsub class: 32 MB).
    @ivar pubsubOutputSoftLimit: A subscribed client may hold more than
        this for L{pubsubOutputSoftTime} ms at most (Redis: 8 MB for 60 s).
    @ivar pubsubOutputSoftTime: See L{pubsubOutputSoftLimit}.
    @ivar clientQueryBufferLimit: The most one client's incomplete request
        may hold, in bytes (Redis's C{client-query-buffer-limit}); 0 =
        unlimited.
    @ivar queryBuffersLimit: The most all clients' incomplete requests may
        hold in one process; past it, the client holding the most is
        closed, unless it is the only one; 0 = unlimited.
    @ivar socketOwner: The owner of the unix socket file, C{"user"},
        C{"user:group"} or C{":group"}, each a name or a numeric id, or
        C{None} to leave the file to rmux's own user and group.  Only with
        L{socket}.  Only the syntax is checked here; the service checks
        that the user and group exist when it starts.
    @ivar maxBulkLength: The longest bulk string (argument) a client may
        send, in bytes: Redis's C{proto-max-bulk-len}.
    @ivar maxArguments: The most arguments one command may have.
    @ivar maxInlineLength: The longest inline command a client may send,
        in bytes, which is also the longest C{*}/C{$} header line (Redis's
        C{PROTO_INLINE_MAX_SIZE}).  A value below 21 refuses some valid
        headers and slows the parser down.
    @ivar shutdownTimeout: On SIGTERM, how long, in ms, clients may still
        collect the replies they are owed before rmux closes them; 0 =
        close them at once.
    """

    host: str = _default("host")
    port: int = _default("port")
    socket: str | None = None
    socketMode: int = _default("socketMode")
    backends: tuple[BackendAddress, ...]
    topology: str = "servers"
    sentinels: tuple[BackendAddress, ...] = ()
    readFrom: str = _default("readFrom")
    clusterRefreshInterval: int = _default("clusterRefreshInterval")
    clusterRetryTime: int = _default("clusterRetryTime")
    poolSize: int = _default("poolSize")
    failover: bool = _default("failover")
    maxProcesses: int = _default("maxProcesses")
    localReadTimeout: int = _default("localReadTimeout")
    localWriteTimeout: int = _default("localWriteTimeout")
    idleTimeout: int = _default("idleTimeout")
    remoteConnectTimeout: int = _default("remoteConnectTimeout")
    remoteReadTimeout: int = _default("remoteReadTimeout")
    remoteWriteTimeout: int = _default("remoteWriteTimeout")
    tlsPort: int = _default("tlsPort")
    tlsCertFile: str | None = None
    tlsKeyFile: str | None = None
    tlsAuthClients: bool = _default("tlsAuthClients")
    tlsCaCertFile: str | None = None
    tlsClientCertFile: str | None = None
    tlsClientKeyFile: str | None = None
    tlsServerName: str | None = None
    tlsSkipVerify: bool = _default("tlsSkipVerify")
    distribution: str = _default("distribution")
    hash: str = _default("hash")
    hashTag: bytes | None = None
    routes: tuple[RouteConfig, ...] = ()
    healthInterval: int = _default("healthInterval")
    healthTimeout: int | None = None
    healthFailures: int = _default("healthFailures")
    healthSuccesses: int = _default("healthSuccesses")
    startupWait: int = _default("startupWait")
    allowFlush: bool = _default("allowFlush")
    crossServerTransactions: bool = _default("crossServerTransactions")
    commands: tuple[Mapping[str, Any], ...] = ()
    requirepass: str | None = field(default=None, repr=False)
    users: tuple[UserConfig, ...] = ()
    maxPinned: int = _default("maxPinned")
    pinnedWait: int = _default("pinnedWait")
    denyCommands: str = _default("denyCommands")
    maxClients: int = _default("maxClients")
    clientOutputLimit: int = _default("clientOutputLimit")
    pubsubOutputLimit: int = _default("pubsubOutputLimit")
    pubsubOutputSoftLimit: int = _default("pubsubOutputSoftLimit")
    pubsubOutputSoftTime: int = _default("pubsubOutputSoftTime")
    clientQueryBufferLimit: int = _default("clientQueryBufferLimit")
    queryBuffersLimit: int = _default("queryBuffersLimit")
    socketOwner: str | None = None
    maxBulkLength: int = _default("maxBulkLength")
    maxArguments: int = _default("maxArguments")
    maxInlineLength: int = _default("maxInlineLength")
    shutdownTimeout: int = _default("shutdownTimeout")

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise ConfigError(f"host: must be a string, got {self.host!r}")
        if self.socket is not None:
            if not isinstance(self.socket, str) or not self.socket or "\0" in self.socket:
                raise ConfigError(f"socket: must be a non-empty path, got {self.socket!r}")
        checkInt(self.socketMode, "socketMode", 0, MAX_SOCKET_MODE, "a mode from 0 to 0777")
        checkReadFrom(self.readFrom, "readFrom")
        _placementFields(self)
        object.__setattr__(self, "routes", _checkRoutes(self.routes, self.backends))
        if self.healthTimeout is None:
            object.__setattr__(self, "healthTimeout", self.remoteConnectTimeout)
        for setting in _RANGED:
            checkSetting(getattr(self, setting.name), setting)
        for name in _BOOLEANS:
            checkBool(getattr(self, name), name)
        object.__setattr__(self, "commands", _checkCommands(self.commands))
        _checkTLSFiles(self)
        if self.requirepass is not None:
            checkPassword(self.requirepass, "requirepass")
        object.__setattr__(self, "users", _checkUsers(self.users, self.requirepass))
        checkDenied(self.denyCommands, "denyCommands", self.commands)
        if self.socketOwner is not None:
            if self.socket is None:
                raise ConfigError(ownerWithoutSocket("socketOwner", "socket"))
            checkSocketOwner(self.socketOwner, "socketOwner")

    def __repr__(self) -> str:
        """
        The dataclass's C{repr}, but saying C{requirepass=<hidden>} when
        there is one, as L{BackendAddress} does for its password, so that
        whether authentication is on still shows.
        """
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "requirepass":
                if value is not None:
                    parts.append("requirepass=<hidden>")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"ListenerConfig({', '.join(parts)})"

    def authenticator(self) -> Authenticator:
        """
        The L{Authenticator} that checks this listener's clients: built
        from L{requirepass} and L{users}, and not required when neither
        is set.  A new one each call; the listener's service keeps one.
        """
        return Authenticator(self.requirepass, [(u.name, u.password) for u in self.users])

    @property
    def multiplexing(self) -> bool:
        """
        Whether keys are placed over several backends.  Like rmux we count
        configured entries, so listing one server twice turns it on.  A
        listener with L{routes} is always multiplexing, even if every pool
        has one backend: keys are being placed by prefix, so commands that
        cannot follow one key (multi-key, key-less) are handled as when
        hashing.
        """
        return len(self.backends) > 1 or bool(self.routes)

    @property
    def allBackends(self) -> tuple[BackendAddress, ...]:
        """
        Every configured backend entry: L{backends}, then each route's, in
        route order.  Entries are kept as configured, duplicates included
        (rmux counts configured entries, e.g. for INFO's
        C{total_endpoints}); a service that wants one pool per server must
        de-duplicate itself.
        """
        return self.backends + tuple(b for route in self.routes for b in route.backends)

    @property
    def name(self) -> str:
        """
        The listening address, for logs: the socket path or C{host:port}
        (C{*:port} for all interfaces).
        """
        if self.socket is not None:
            return self.socket
        return joinHostPort(self.host or "*", self.port)


def ownerWithoutSocket(owner: str, socket: str) -> str:
    """
    The error for a C{socketOwner} without a C{socket}, with the names of
    the two fields as the operator writes them.
    """
    return f"{owner}: only used with {socket} (it is the owner of the unix socket file)"


def _checkRoutes(routes: object, backends: tuple[BackendAddress, ...]) -> tuple[RouteConfig, ...]:
    """
    Check a listener's routes as a whole: distinct prefixes, and a name that
    means one server throughout the listener (its own pool and every
    route's).
    """
    if isinstance(routes, (str, bytes, RouteConfig)) or not isinstance(routes, (list, tuple)):
        raise ConfigError(f"routes: expected a sequence of RouteConfig, got {routes!r}")
    routes = tuple(routes)
    prefixes: dict[bytes, int] = {}
    named = {b.name: b for b in backends if b.name is not None}
    for index, route in enumerate(routes):
        if not isinstance(route, RouteConfig):
            raise ConfigError(f"routes[{index}]: expected a RouteConfig, got {route!r}")
        if route.prefix in prefixes:
            raise ConfigError(
                f"routes[{index}]: prefix {_showPrefix(route.prefix)} is already "
                f"routed by routes[{prefixes[route.prefix]}]"
            )
        prefixes[route.prefix] = index
        for backendIndex, backend in enumerate(route.backends):
            if backend.name is None:
                continue
            other = named.setdefault(backend.name, backend)
            if _server(other) != _server(backend):
                raise ConfigError(
                    f"routes[{index}]: backends[{backendIndex}]: name {backend.name!r} "
                    f"already names {other}; a name must mean one server throughout "
                    "a listener"
                )
    return routes


def _server(address: BackendAddress) -> tuple[object, ...]:
    """
    What makes two entries the same server, whatever their weight.
    """
    return (address.kind, address.host, address.port, address.path, address.db)


def _checkTLSFiles(listener: ListenerConfig) -> None:
    """
    The TLS files a listener names exist and are readable now: a bad path
    is refused at start, naming the file, not at the first connection.
    (L{rmux.tls} reads what they hold.)
    """
    files = ("tlsCertFile", "tlsKeyFile", "tlsCaCertFile", "tlsClientCertFile",
             "tlsClientKeyFile")
    for name in files + ("tlsServerName",):
        checkOptionalStr(getattr(listener, name), name)
    if (listener.tlsClientCertFile is None) != (listener.tlsClientKeyFile is None):
        raise ConfigError("tlsClientCertFile and tlsClientKeyFile go together")
    if listener.tlsPort and (listener.tlsCertFile is None or listener.tlsKeyFile is None):
        raise ConfigError("tlsPort: needs tlsCertFile and tlsKeyFile")
    if listener.tlsAuthClients and listener.tlsCaCertFile is None:
        raise ConfigError("tlsAuthClients: needs tlsCaCertFile, the CAs of the clients' "
                          "certificates")
    if listener.tlsPort and listener.maxProcesses > 1:
        raise ConfigError("tlsPort: not served with worker processes (maxProcesses) yet")
    for name in files:
        path = getattr(listener, name)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ConfigError(f"{name}: cannot read {path}: {e.strerror}") from None


@dataclass(frozen=True, kw_only=True)
class RmuxConfig:
    """
    Everything one rmux process runs: its listeners and the process-wide
    flags.

    @ivar listeners: One or more L{ListenerConfig}, no two on the same
        socket or port.
    @ivar debug: Log at debug level.
    @ivar useSyslog: Go rmux's flag to also log to syslog, on by default
        there.  We default it to C{False}: twistd already has its own
        logging, including C{twistd --syslog}, and a second channel would
        duplicate every line.
    @ivar graphite: statsd endpoint C{host:port} (UDP), or C{None}.
    @ivar timing: Also send timing metrics to statsd.
    @ivar cpuProfile: File to write a CPU profile to, or C{None}.
    @ivar statsPort: TCP port serving twemproxy's stats JSON, 0 for none.
    @ivar metricsPort: TCP port serving Prometheus C{/metrics}, 0 for none.
    @ivar statsHost: The interface both listen on; loopback by default,
        since the numbers describe the host's traffic.
    @ivar statsInterval: How often (ms) statsd gets the counters, and
        worker processes report theirs to the parent.
    @ivar configPath: The C{--config} file the listeners came from, which
        SIGHUP re-reads; C{None} when they came from flags.
    """

    listeners: tuple[ListenerConfig, ...]
    debug: bool = False
    useSyslog: bool = False
    graphite: str | None = None
    timing: bool = False
    cpuProfile: str | None = None
    statsPort: int = 0
    metricsPort: int = 0
    statsHost: str = _default("statsHost")
    statsInterval: int = _default("statsInterval")
    configPath: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.listeners, ListenerConfig) or not isinstance(
            self.listeners, (list, tuple)
        ):
            raise ConfigError(f"listeners: expected a sequence, got {self.listeners!r}")
        listeners = tuple(self.listeners)
        object.__setattr__(self, "listeners", listeners)
        if not listeners:
            raise ConfigError("at least one listener is required")
        for index, listener in enumerate(listeners, 1):
            if not isinstance(listener, ListenerConfig):
                raise ConfigError(f"listener {index}: expected a ListenerConfig, got {listener!r}")
        _checkDistinctListeners(listeners)
        for name in ("debug", "useSyslog", "timing"):
            checkBool(getattr(self, name), name)
        if self.graphite is not None:
            object.__setattr__(self, "graphite", checkGraphite(self.graphite, "graphite"))
        cpuProfile = checkOptionalStr(self.cpuProfile, "cpuProfile")
        if cpuProfile == "":
            raise ConfigError("cpuProfile: must be a file name or None, got ''")
        for name in ("statsPort", "metricsPort"):
            value = getattr(self, name)
            if not isInt(value) or not 0 <= value <= 65535:
                raise ConfigError(f"{name}: must be a TCP port (0 for none), got {value!r}")
        if self.statsPort and self.statsPort == self.metricsPort:
            raise ConfigError(f"metricsPort: {self.metricsPort} is already the statsPort")
        if not isinstance(self.statsHost, str) or not self.statsHost.strip():
            raise ConfigError(f"statsHost: must be an interface address, got {self.statsHost!r}")
        if not isInt(self.statsInterval) or self.statsInterval <= 0:
            raise ConfigError(
                f"statsInterval: must be a positive number of ms, got {self.statsInterval!r}"
            )
        checkOptionalStr(self.configPath, "configPath")


def checkGraphite(value: object, label: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{label}: must be a string host:port, got {value!r}")
    try:
        host, port = splitHostPort(value.strip(), None)
    except ConfigError as e:
        raise ConfigError(f"{label}: {value!r}: {e}") from None
    return joinHostPort(host, port)


def _checkDistinctListeners(listeners: tuple[ListenerConfig, ...]) -> None:
    """
    Refuse two listeners on one address (the second bind would fail at
    startup, after the first one already runs) and a listener that is one
    of its own backends (every command would loop through rmux forever).
    """
    seen: list[tuple[int, ListenerConfig]] = []
    for index, listener in enumerate(listeners, 1):
        for otherIndex, other in seen:
            if _sameAddress(listener, other):
                raise ConfigError(
                    f"listener {index}: listens on {listener.name}, "
                    f"as listener {otherIndex} already does"
                )
        seen.append((index, listener))
        for backend in listener.allBackends:
            if listener.socket is not None:
                loops = backend.kind == "unix" and _samePath(backend.path, listener.socket)
            else:
                loops = (
                    backend.kind == "tcp"
                    and backend.port == listener.port
                    and backend.host == listener.host
                )
            if loops:
                raise ConfigError(
                    f"listener {index}: {listener.name} is also one of its own "
                    f"backends; commands would loop through rmux"
                )


def _samePath(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.normpath(a) == os.path.normpath(b)


def _sameAddress(a: ListenerConfig, b: ListenerConfig) -> bool:
    if a.socket is not None or b.socket is not None:
        return _samePath(a.socket, b.socket)
    if a.port != b.port or a.port == 0:
        return False
    return a.host == b.host or a.host in WILDCARD_HOSTS or b.host in WILDCARD_HOSTS




def checkDenied(value: object, label: str, commands: Iterable[Mapping[str, Any]]) -> str:
    """
    Check a list of denied commands: names and C{@categories} the command
    table (with a listener's extra C{commands}) knows.
    """
    from rmux.commands import CommandTable

    if not isinstance(value, str):
        raise ConfigError(f"{label}: must be a string of command names, got {value!r}")
    table = CommandTable.default()
    categories = {c for spec in table for c in spec.categories}
    extra = {entry["name"].lower() for entry in commands}
    for token in value.split():
        name = token.lower()
        if name.startswith("@"):
            if name not in categories:
                raise ConfigError(f"{label}: unknown category {token!r}")
        elif name not in table and name not in extra:
            raise ConfigError(f"{label}: unknown command {token!r}")
    return value


def _checkCommands(entries: object) -> tuple[Mapping[str, Any], ...]:
    """
    Check extra command-table entries by building them the way the table
    will, so that a bad entry stops rmux at start, not at first use.
    """
    from rmux.commands import CommandSpec

    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"commands: expected an array of objects, got {entries!r}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"commands[{index}]: expected an object, got {entry!r}")
        try:
            CommandSpec.fromJSON(dict(entry))
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"commands[{index}]: {e}") from None
    return tuple(dict(entry) for entry in entries)


