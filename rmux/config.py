# -*- test-case-name: tests.test_config -*-
"""
rmux's configuration: its command-line flags and its JSON config file, turned
into validated, immutable objects.

Operators who run Go rmux today must be able to bring their flags and their
JSON files over unchanged, so the field names, the units (integer
milliseconds) and the "0 means not set" rule are rmux's.  Where Go rmux
silently does something useless (listening on a random port, ignoring a
misspelt field, creating an empty backend from a double space) this module
refuses with a L{ConfigError} that names the place, the field and the
problem, because a proxy that starts with the wrong backends is worse than
one that does not start.

Nothing here touches the reactor or the network: the service is built from
the objects defined here by L{rmux.service}.

The three layers, from the outside in:

  - L{fromFlags}, L{fromJSON} and L{loadConfigFile} read rmux's spellings:
    strings, C{0} for "use the default", C{remoteTimeout} as a fallback for
    the three individual remote timeouts, two backend lists.
  - L{RmuxConfig}, L{ListenerConfig} and L{BackendAddress} hold the
    I{effective} values (a pool size of 20, not 0) and validate themselves
    when constructed, so a configuration built in code (a C{.tac} file) is
    checked exactly like one read from a file.
  - L{ConfigError} is the one exception all of them raise.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.python.filepath import FilePath

__all__ = [
    "ConfigError",
    "BackendAddress",
    "ListenerConfig",
    "RmuxConfig",
    "fromFlags",
    "fromJSON",
    "loadConfigFile",
    "parseFlagBoolean",
    "FLAG_NAMES",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_TCP_CONNECTIONS",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_REMOTE_TIMEOUT",
]


DEFAULT_REDIS_PORT = 6379
"""The port a backend address without one gets: Redis's own."""

DEFAULT_TCP_CONNECTIONS = "localhost:6380 localhost:6381"
"""
Go rmux's default for C{-tcpConnections}.  Unlike Go rmux we only apply it
when no backend list at all was given (see L{fromFlags}).
"""

DEFAULT_POOL_SIZE = 20
"""Go rmux's real default pool size (its README wrongly says 50)."""

DEFAULT_REMOTE_TIMEOUT = 500
"""Go rmux's built-in backend connect/read/write timeout, in milliseconds."""

_MAX_SOCKET_MODE = 0o777
_WILDCARD_HOSTS = frozenset(["", "0.0.0.0", "::"])


class ConfigError(Exception):
    """
    A configuration value is missing, of the wrong type or out of range.

    The message is meant for the operator as it is: it says where
    (C{--poolSize}, C{listener 2: tcpConnections[1]}, the file name), which
    field, and what is wrong with it, e.g.::

        listener 2: tcpConnections: expected an array of strings, got a string
        --poolSize: must be a positive integer (0 means 20), got '-3'

    It never contains a backend password.
    """

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


# ---------------------------------------------------------------------------
# Small validators shared by the objects and the parsers.  Each takes the
# label of the thing it checks so that the same check reads "--poolSize: ..."
# on the command line and "listener 2: poolSize: ..." for a file.


def _isInt(value: object) -> bool:
    # bool is an int in Python, but true is not a pool size.
    return isinstance(value, int) and not isinstance(value, bool)


def _checkInt(
    value: object, label: str, low: int, high: int | None, what: str, shown: object = None
) -> int:
    """
    @param shown: What to quote as the bad value, if not C{value} itself
        (the string from the command line rather than the C{int} made of it).
    """
    if not _isInt(value) or value < low or (high is not None and value > high):
        raise ConfigError(f"{label}: must be {what}, got {value if shown is None else shown!r}")
    return value  # type: ignore[return-value]


def _checkBool(value: object, label: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label}: must be true or false, got {value!r}")
    return value


def _checkOptionalStr(value: object, label: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{label}: must be a string, got {value!r}")
    return value


def _isIPv6(host: str) -> bool:
    return ":" in host


def _joinHostPort(host: str, port: int) -> str:
    if _isIPv6(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _redact(text: str) -> str:
    """
    Hide the password in a C{scheme://user:password@...} URL so that the
    text can be quoted in an error message or a log line.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest:
        return text
    userinfo, _, hostpart = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not colon:
        return text
    return f"{scheme}://{user}:***@{hostpart}"


# ---------------------------------------------------------------------------
# Backend addresses


@dataclass(frozen=True)
class BackendAddress:
    """
    Where one backend Redis server listens.

    rmux takes its backends as two lists of plain strings, C{host:port} for
    TCP and a path for unix sockets.  We accept those, and also redis URLs
    (C{redis://user:password@host:6379/2}, C{unix:///run/redis.sock?db=2})
    so that backend authentication and a per-backend database can be added
    without another address syntax; L{username}, L{password} and L{db} are
    C{None} when not given.

    C{str()} is the bare address (C{host:port}, C{[::1]:6379} or the socket
    path), the form used in errors and in INFO.  Neither C{str()} nor
    C{repr()} ever shows the password.

    @ivar kind: C{"tcp"} or C{"unix"}.
    @ivar host: The host name or IP address (without brackets) for C{"tcp"},
        else C{None}.
    @ivar port: The TCP port for C{"tcp"}, else C{None}.
    @ivar path: The socket path for C{"unix"}, else C{None}.
    @ivar username: The ACL user name for AUTH, or C{None}.
    @ivar password: The password for AUTH, or C{None}.
    @ivar db: The database to SELECT, or C{None} for the client's own.
    """

    kind: str
    host: str | None = None
    port: int | None = None
    path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "tcp":
            if not isinstance(self.host, str) or not self.host:
                raise ConfigError(f"host: a TCP backend needs a host, got {self.host!r}")
            if any(c.isspace() or c in "/@[]" for c in self.host):
                raise ConfigError(f"host: invalid host name {self.host!r}")
            _checkInt(self.port, "port", 1, 65535, "an integer from 1 to 65535")
            if self.path is not None:
                raise ConfigError("path: a TCP backend has no socket path")
        elif self.kind == "unix":
            if not isinstance(self.path, str) or not self.path or "\0" in self.path:
                raise ConfigError(f"path: must be a non-empty socket path, got {self.path!r}")
            if self.host is not None or self.port is not None:
                raise ConfigError("host: a unix backend has no host or port")
        else:
            raise ConfigError(f"kind: must be 'tcp' or 'unix', got {self.kind!r}")
        _checkOptionalStr(self.username, "username")
        if self.password is not None and not isinstance(self.password, str):
            raise ConfigError("password: must be a string")
        if self.username is not None and self.password is None:
            raise ConfigError(
                "username: a user name needs a password "
                "(for a password alone write redis://:password@host)"
            )
        if self.db is not None:
            _checkInt(self.db, "db", 0, None, "a non-negative integer")

    def __str__(self) -> str:
        if self.kind == "unix":
            return self.path  # type: ignore[return-value]
        return _joinHostPort(self.host, self.port)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        parts = [f"kind={self.kind!r}"]
        for name in ("host", "port", "path", "username"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value!r}")
        if self.password is not None:
            parts.append("password=<hidden>")
        if self.db is not None:
            parts.append(f"db={self.db!r}")
        return f"BackendAddress({', '.join(parts)})"

    @classmethod
    def fromString(cls, text: str, kind: str | None = None) -> BackendAddress:
        """
        Parse one backend the way an operator writes it.

        TCP: C{host:port}, C{[::1]:6379}, a bare C{host} (port 6379), or
        C{redis://[user:password@]host[:port][/db]}.  Unix: a path, or
        C{unix:///path/to.sock[?db=N]} (credentials as in C{redis://}).

        @param text: The address.
        @param kind: C{"tcp"} if C{text} came from a TCP list
            (C{tcpConnections}), C{"unix"} if from a unix list, C{None} to
            guess: a URL says what it is, otherwise anything with a C{/} is a
            socket path.  A URL of the other kind than C{kind} is an error,
            because which list a backend is in decides its hash position.

        @raise ConfigError: If C{text} is not a valid address of that kind;
            the message quotes C{text} with any password hidden.
        """
        if not isinstance(text, str):
            raise ConfigError(f"expected a string, got {text!r}")
        try:
            address = cls._parse(text.strip(), kind)
        except (ConfigError, ValueError) as e:
            # ValueError: urlsplit's, e.g. for an unbalanced "[".
            raise ConfigError(f"{_redact(text)!r}: {e}") from None
        if kind is not None and address.kind != kind:
            other = {"tcp": "tcpConnections", "unix": "unixConnections"}[address.kind]
            raise ConfigError(f"{_redact(text)!r} is a {address.kind} address; list it in {other}")
        return address

    @classmethod
    def _parse(cls, text: str, kind: str | None) -> BackendAddress:
        if not text:
            raise ConfigError("empty address")
        scheme = text.partition("://")[0].lower() if "://" in text else None
        if scheme is None and text.lower().startswith("unix:/"):
            scheme = "unix"
        if scheme == "redis":
            return cls._parseURL(text, "tcp")
        if scheme == "unix":
            return cls._parseURL(text, "unix")
        if scheme == "rediss":
            raise ConfigError("TLS (rediss://) is not supported")
        if scheme is not None:
            raise ConfigError(f"unsupported URL scheme {scheme!r} (use redis:// or unix://)")
        if kind == "unix" or (kind is None and "/" in text):
            return cls(kind="unix", path=text)
        if "/" in text:
            raise ConfigError("looks like a socket path; list it in unixConnections")
        host, port = _splitHostPort(text, DEFAULT_REDIS_PORT)
        return cls(kind="tcp", host=host, port=port)

    @classmethod
    def _parseURL(cls, text: str, kind: str) -> BackendAddress:
        parts = urlsplit(text)
        if parts.fragment:
            raise ConfigError("a backend URL cannot have a #fragment")
        userinfo, at, hostport = parts.netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        db = None
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
        for name, value in query:
            if name != "db":
                raise ConfigError(f"unknown URL parameter {name!r}")
            db = _parseDB(value)
        if kind == "unix":
            if hostport:
                raise ConfigError(
                    "a unix URL has no host; write unix:///path/to.sock (three slashes)"
                )
            path = unquote(parts.path)
            if not path:
                raise ConfigError("a unix URL needs a socket path")
            return cls(kind="unix", path=path, username=username, password=password, db=db)
        if not hostport:
            raise ConfigError("a redis URL needs a host")
        host, port = _splitHostPort(hostport, DEFAULT_REDIS_PORT)
        dbPath = parts.path.lstrip("/")
        if dbPath:
            if db is not None:
                raise ConfigError("the database is given both in the path and as ?db=")
            db = _parseDB(dbPath)
        return cls(kind="tcp", host=host, port=port, username=username, password=password, db=db)


def _parseDB(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(f"the database must be a non-negative integer, got {text!r}")
    return int(text)


def _splitHostPort(text: str, defaultPort: int | None) -> tuple[str, int]:
    """
    Split C{host:port}, C{[v6]:port}, C{host} or C{[v6]}.

    @param defaultPort: The port when none is given, or C{None} if a port is
        required.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ConfigError("missing ']' after an IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid IPv6 address {host!r}") from None
        if rest and not rest.startswith(":"):
            raise ConfigError("expected ':port' after ']'")
        portText = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ConfigError("an IPv6 address needs brackets, as in [::1]:6379")
    else:
        host, colon, portText = text.partition(":")
        if not colon:
            portText = None
    if not host:
        raise ConfigError("missing host")
    if portText is None:
        if defaultPort is None:
            raise ConfigError("missing port (expected host:port)")
        return host, defaultPort
    if not re.fullmatch(r"[0-9]+", portText) or not 1 <= int(portText) <= 65535:
        raise ConfigError(f"port must be an integer from 1 to 65535, got {portText!r}")
    return host, int(portText)


# ---------------------------------------------------------------------------
# Listener and whole-process configuration


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


@dataclass(frozen=True, kw_only=True)
class ListenerConfig:
    """
    One rmux instance: where clients connect, and the backends (each with
    its own pool) their commands go to.  Go rmux calls this an "instance";
    one process can run several, one per element of the JSON config.

    All values are the effective ones, validated on construction: a pool
    size of 20, not rmux's "0 means default", and timeouts in integer
    milliseconds.  Fields are keyword-only and all have defaults except
    C{backends}, so fields added later (hashing scheme, health-check
    interval, auth) do not break existing callers.

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
        L{BackendAddress.fromString}.
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
    """

    host: str = "localhost"
    port: int = 6379
    socket: str | None = None
    socketMode: int = 0o666
    backends: tuple[BackendAddress, ...]
    poolSize: int = DEFAULT_POOL_SIZE
    failover: bool = False
    maxProcesses: int = 0
    localReadTimeout: int = 0
    localWriteTimeout: int = 0
    idleTimeout: int = 0
    remoteConnectTimeout: int = DEFAULT_REMOTE_TIMEOUT
    remoteReadTimeout: int = DEFAULT_REMOTE_TIMEOUT
    remoteWriteTimeout: int = DEFAULT_REMOTE_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise ConfigError(f"host: must be a string, got {self.host!r}")
        _checkInt(self.port, "port", 0, 65535, "an integer from 0 to 65535")
        if self.socket is not None:
            if not isinstance(self.socket, str) or not self.socket or "\0" in self.socket:
                raise ConfigError(f"socket: must be a non-empty path, got {self.socket!r}")
        _checkInt(self.socketMode, "socketMode", 0, _MAX_SOCKET_MODE, "a mode from 0 to 0777")
        object.__setattr__(self, "backends", _orderBackends(self.backends))
        if not self.backends:
            raise ConfigError("at least one backend is required")
        _checkInt(self.poolSize, "poolSize", 1, None, "a positive integer")
        _checkBool(self.failover, "failover")
        _checkInt(self.maxProcesses, "maxProcesses", 0, None, "a non-negative integer")
        for name in ("localReadTimeout", "localWriteTimeout", "idleTimeout"):
            _checkInt(getattr(self, name), name, 0, None, "a non-negative integer (ms)")
        for name in ("remoteConnectTimeout", "remoteReadTimeout", "remoteWriteTimeout"):
            _checkInt(getattr(self, name), name, 1, None, "a positive integer (ms)")

    @property
    def multiplexing(self) -> bool:
        """
        Whether keys are hashed over several backends.  Like rmux we count
        configured entries, so listing one server twice turns it on.
        """
        return len(self.backends) > 1

    @property
    def name(self) -> str:
        """
        The listening address, for logs: the socket path or C{host:port}
        (C{*:port} for all interfaces).
        """
        if self.socket is not None:
            return self.socket
        return _joinHostPort(self.host or "*", self.port)


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
    """

    listeners: tuple[ListenerConfig, ...]
    debug: bool = False
    useSyslog: bool = False
    graphite: str | None = None
    timing: bool = False
    cpuProfile: str | None = None

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
            _checkBool(getattr(self, name), name)
        if self.graphite is not None:
            object.__setattr__(self, "graphite", _checkGraphite(self.graphite, "graphite"))
        cpuProfile = _checkOptionalStr(self.cpuProfile, "cpuProfile")
        if cpuProfile == "":
            raise ConfigError("cpuProfile: must be a file name or None, got ''")


def _checkGraphite(value: object, label: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{label}: must be a string host:port, got {value!r}")
    try:
        host, port = _splitHostPort(value.strip(), None)
    except ConfigError as e:
        raise ConfigError(f"{label}: {value!r}: {e}") from None
    return _joinHostPort(host, port)


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
        for backend in listener.backends:
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
    return a.host == b.host or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS


# ---------------------------------------------------------------------------
# From rmux's spellings to the objects above.


class _Place:
    """
    How errors name a field: C{--poolSize} for a flag,
    C{listener 2: poolSize} for an element of a JSON file.
    """

    def __init__(
        self,
        prefix: str,
        fieldFormat: str,
        given: Mapping[str, object] | None = None,
        arrays: bool = False,
    ) -> None:
        """
        @param given: The values as the operator wrote them, to quote in
            errors instead of their coerced form.
        @param arrays: Whether backend lists are arrays whose elements
            errors should number (a file), or one string (a flag).
        """
        self.prefix = prefix
        self.fieldFormat = fieldFormat
        self.given = given or {}
        self.arrays = arrays

    def field(self, name: str) -> str:
        return self.fieldFormat % (name,)

    def label(self, name: str) -> str:
        return self.prefix + self.field(name)

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.prefix + message)

    def checkInt(
        self, raw: Mapping[str, Any], name: str, low: int, high: int | None, what: str
    ) -> int:
        value = raw.get(name, 0)
        return _checkInt(value, self.label(name), low, high, what, self.given.get(name))


def _buildListener(raw: Mapping[str, Any], place: _Place) -> ListenerConfig:
    """
    Apply rmux's semantics to the type-checked values of one instance.

    @param raw: camelCase field name to value, for the fields given.
        Integers are already C{int}, lists of backends lists of C{str},
        C{socketMode} an C{int}.
    """

    def nonNegative(name: str) -> int:
        return place.checkInt(raw, name, 0, None, "a non-negative integer (ms)")

    kwargs: dict[str, Any] = {}
    if raw.get("socket"):
        kwargs["socket"] = raw["socket"]
    for name in ("host", "failover", "socketMode"):
        if name in raw:
            kwargs[name] = raw[name]
    if "port" in raw:
        kwargs["port"] = place.checkInt(raw, "port", 0, 65535, "an integer from 0 to 65535")
    poolSize = place.checkInt(
        raw, "poolSize", 0, None, f"a positive integer (0 means {DEFAULT_POOL_SIZE})"
    )
    kwargs["poolSize"] = poolSize or DEFAULT_POOL_SIZE
    kwargs["maxProcesses"] = place.checkInt(raw, "maxProcesses", 0, None, "a non-negative integer")

    # The individual timeouts win over the combined one, as in rmux, and 0
    # means "not set" at every level.
    localTimeout = nonNegative("localTimeout")
    kwargs["localReadTimeout"] = nonNegative("localReadTimeout") or localTimeout
    kwargs["localWriteTimeout"] = nonNegative("localWriteTimeout") or localTimeout
    kwargs["idleTimeout"] = nonNegative("idleTimeout")
    remoteTimeout = nonNegative("remoteTimeout") or DEFAULT_REMOTE_TIMEOUT
    for name in ("remoteConnectTimeout", "remoteReadTimeout", "remoteWriteTimeout"):
        kwargs[name] = nonNegative(name) or remoteTimeout

    backends = []
    for listName, kind in (("tcpConnections", "tcp"), ("unixConnections", "unix")):
        for index, text in enumerate(raw.get(listName, ())):
            label = place.label(listName)
            if place.arrays:
                label = f"{label}[{index}]"
            try:
                backends.append(BackendAddress.fromString(text, kind))
            except ConfigError as e:
                raise ConfigError(f"{label}: {e}") from None
    if not backends:
        raise place.error(
            "at least one backend is required "
            f"({place.field('tcpConnections')} or {place.field('unixConnections')})"
        )
    kwargs["backends"] = backends

    try:
        return ListenerConfig(**kwargs)
    except ConfigError as e:
        # Whatever the object refused still gets the place in front.
        message = str(e)
        name = message.partition(":")[0]
        if name in raw:
            message = place.field(name) + message[len(name) :]
        raise place.error(message) from None


def _parseSocketMode(value: object, label: str) -> int:
    """
    Read a unix socket mode written as octal (C{"0660"}, C{"660"},
    C{"0o660"}) or given as an C{int} (C{0o660}).
    """
    shown = None
    if _isInt(value):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", value.strip().lower()):
        text = value.strip().lower()
        mode = int(text[2:] if text.startswith("0o") else text, 8)
        shown = value
    else:
        raise ConfigError(f"{label}: must be an octal mode such as '0660', got {value!r}")
    return _checkInt(mode, label, 0, _MAX_SOCKET_MODE, "a mode from 0 to 0777", shown)


# -- flags


_POOL_FLAGS = (
    "host",
    "port",
    "socket",
    "socketMode",
    "tcpConnections",
    "unixConnections",
    "poolSize",
    "failover",
    "maxProcesses",
    "localTimeout",
    "localReadTimeout",
    "localWriteTimeout",
    "idleTimeout",
    "remoteTimeout",
    "remoteConnectTimeout",
    "remoteReadTimeout",
    "remoteWriteTimeout",
)
_GLOBAL_FLAGS = ("config", "debug", "useSyslog", "graphite", "timing", "cpuProfile")
_BOOLEAN_FLAGS = frozenset(["failover", "debug", "useSyslog", "timing"])
_INTEGER_FLAGS = frozenset(
    [
        "port",
        "poolSize",
        "maxProcesses",
        "localTimeout",
        "localReadTimeout",
        "localWriteTimeout",
        "idleTimeout",
        "remoteTimeout",
        "remoteConnectTimeout",
        "remoteReadTimeout",
        "remoteWriteTimeout",
    ]
)
FLAG_NAMES = _POOL_FLAGS + _GLOBAL_FLAGS
"""Every flag L{fromFlags} understands, in rmux's spelling."""

# Go's strconv.ParseBool, which rmux's boolean flags use.
_TRUE = frozenset(["1", "t", "T", "TRUE", "true", "True"])
_FALSE = frozenset(["0", "f", "F", "FALSE", "false", "False"])


def parseFlagBoolean(value: object, name: str) -> bool:
    """
    Coerce a boolean flag value: a C{bool}, C{0}/C{1} (as
    L{twisted.python.usage.Options} stores flags) or one of the strings Go's
    C{strconv.ParseBool} accepts.

    @raise ConfigError: For anything else.
    """
    if isinstance(value, bool):
        return value
    if value in (0, 1) and _isInt(value):
        return bool(value)
    if isinstance(value, str) and value in _TRUE:
        return True
    if isinstance(value, str) and value in _FALSE:
        return False
    raise ConfigError(f"--{name}: must be true or false, got {value!r}")


def _flagInteger(value: object, name: str) -> int:
    if _isInt(value):
        return value  # type: ignore[return-value]
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    if name == "port":
        what = "an integer from 0 to 65535"
    elif name == "poolSize":
        what = f"a positive integer (0 means {DEFAULT_POOL_SIZE})"
    elif name == "maxProcesses":
        what = "a non-negative integer"
    else:
        what = "a non-negative integer (ms)"
    raise ConfigError(f"--{name}: must be {what}, got {value!r}")


def fromFlags(values: Mapping[str, Any]) -> RmuxConfig:
    """
    Build the configuration from rmux's command-line flags.

    Semantics are rmux's: timeouts in milliseconds, 0 for "not set",
    C{remoteTimeout} for the remote timeouts not given individually, TCP
    backends before unix ones, and C{config} replacing every pool-related
    flag while the global ones (C{debug}, C{graphite}, ...) still apply.

    Two differences from Go rmux, both fixing traps:
      - the backend lists are split on any run of whitespace, so a double
        space no longer creates an empty, never-connectable backend;
      - the default C{tcpConnections} (L{DEFAULT_TCP_CONNECTIONS}) applies
        only when neither C{tcpConnections} nor C{unixConnections} is
        given; Go rmux adds it even to an explicit C{unixConnections}.

    @param values: Flag name (rmux's camelCase, see L{FLAG_NAMES}) to value.
        Values may be the strings from the command line or already
        coerced (C{int}, C{bool}); a missing key or C{None} means "not
        given", an empty string for C{socket}, C{config}, C{graphite} or
        C{cpuProfile} too.

    @raise ConfigError: Naming the flag, e.g.
        C{--poolSize: must be a positive integer (0 means 20), got '-3'}.
    """
    unknown = sorted(set(values) - set(FLAG_NAMES))
    if unknown:
        raise ConfigError(f"--{unknown[0]}: unknown option")
    given = {name: value for name, value in values.items() if value is not None}
    for name in ("socket", "config", "graphite", "cpuProfile"):
        if given.get(name) == "":
            del given[name]
    for name in (
        "socket",
        "config",
        "graphite",
        "cpuProfile",
        "host",
        "tcpConnections",
        "unixConnections",
    ):
        if name in given and not isinstance(given[name], str):
            raise ConfigError(f"--{name}: must be a string, got {given[name]!r}")

    if "config" in given:
        listeners = loadConfigFile(given["config"]).listeners
    else:
        raw: dict[str, Any] = {}
        for name in _POOL_FLAGS:
            if name not in given:
                continue
            value = given[name]
            if name in _BOOLEAN_FLAGS:
                value = parseFlagBoolean(value, name)
            elif name in _INTEGER_FLAGS:
                value = _flagInteger(value, name)
            elif name == "socketMode":
                value = _parseSocketMode(value, "--socketMode")
            elif name in ("tcpConnections", "unixConnections"):
                value = value.split()
            raw[name] = value
        if "tcpConnections" not in raw and "unixConnections" not in raw:
            raw["tcpConnections"] = DEFAULT_TCP_CONNECTIONS.split()
        listeners = (_buildListener(raw, _Place("", "--%s", given)),)

    globalValues: dict[str, Any] = {}
    for name in ("debug", "useSyslog", "timing"):
        if name in given:
            globalValues[name] = parseFlagBoolean(given[name], name)
    if "graphite" in given:
        globalValues["graphite"] = _checkGraphite(given["graphite"], "--graphite")
    if "cpuProfile" in given:
        globalValues["cpuProfile"] = given["cpuProfile"]
    try:
        return RmuxConfig(listeners=listeners, **globalValues)
    except ConfigError as e:
        # There is only one listener on the command line: no need to count.
        message = str(e)
        if "config" not in given and message.startswith("listener 1: "):
            message = message[len("listener 1: ") :]
        raise ConfigError(message) from None


# -- JSON


def _jsonType(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _expect(check: Callable[[object], bool], description: str) -> Callable[[object, str], Any]:
    def convert(value: object, label: str) -> Any:
        if not check(value):
            raise ConfigError(f"{label}: expected {description}, got {_jsonType(value)}")
        return value

    return convert


def _jsonStringList(value: object, label: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        got = _jsonType(value)
        if isinstance(value, list):
            got = "an array containing " + next(
                _jsonType(v) for v in value if not isinstance(v, str)
            )
        raise ConfigError(f"{label}: expected an array of strings, got {got}")
    return value


def _jsonSocketMode(value: object, label: str) -> int:
    if not isinstance(value, str):
        # JSON has no octal numbers: 660 would mean 0o1224, so insist on text.
        raise ConfigError(
            f'{label}: expected an octal string such as "0660", got {_jsonType(value)}'
        )
    return _parseSocketMode(value, label)


_jsonString = _expect(lambda v: isinstance(v, str), "a string")
_jsonInteger = _expect(_isInt, "an integer")
_jsonBoolean = _expect(lambda v: isinstance(v, bool), "a boolean")

_LISTENER_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "host": _jsonString,
    "port": _jsonInteger,
    "socket": _jsonString,
    "socketMode": _jsonSocketMode,
    "maxProcesses": _jsonInteger,
    "poolSize": _jsonInteger,
    "failover": _jsonBoolean,
    "tcpConnections": _jsonStringList,
    "unixConnections": _jsonStringList,
    "localTimeout": _jsonInteger,
    "localReadTimeout": _jsonInteger,
    "localWriteTimeout": _jsonInteger,
    "idleTimeout": _jsonInteger,
    "remoteTimeout": _jsonInteger,
    "remoteReadTimeout": _jsonInteger,
    "remoteWriteTimeout": _jsonInteger,
    "remoteConnectTimeout": _jsonInteger,
}
"""
The fields of one listener object in the JSON file and their type checks.
A new field is one line here plus a keyword in L{_buildListener}.
"""


class _JSONObject(dict):
    """
    A decoded JSON object that remembers which keys it saw twice: Go (and
    Python) keep the last one silently, which hides an edit gone wrong.
    """

    duplicates: list[str]


def _objectHook(pairs: list[tuple[str, Any]]) -> _JSONObject:
    obj = _JSONObject()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _listenerFromJSON(obj: object, index: int) -> ListenerConfig:
    place = _Place(f"listener {index}: ", "%s", arrays=True)
    if not isinstance(obj, dict):
        raise place.error(f"expected an object, got {_jsonType(obj)}")
    duplicates = getattr(obj, "duplicates", ())
    if duplicates:
        raise ConfigError(f"{place.label(duplicates[0])}: given more than once")
    raw: dict[str, Any] = {}
    for key, value in obj.items():
        check = _LISTENER_FIELDS.get(key)
        if check is None:
            hint = difflib.get_close_matches(key, list(_LISTENER_FIELDS), n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"{place.label(key)}: unknown field{suggestion}")
        if value is None:
            # Go leaves a field untouched on null; so do we.
            continue
        raw[key] = check(value, place.label(key))
    if not raw.get("socket") and "port" not in raw:
        raise place.error(
            "needs a socket or a port to listen on (Go rmux would pick a random port)"
        )
    return _buildListener(raw, place)


def fromJSON(text: str | bytes) -> RmuxConfig:
    """
    Build the configuration from rmux's JSON format: a top-level array with
    one object per listener, using the flags' camelCase names
    (C{tcpConnections} and C{unixConnections} as arrays of strings).

    Missing fields take the defaults: C{host} C{"localhost"} (Go rmux
    would listen on all interfaces), C{poolSize} 20, remote timeouts 500 ms.
    Unlike Go rmux, an unknown or repeated field is an error, and so is a
    listener with neither C{socket} nor C{port}.

    @raise ConfigError: Naming the listener (counted from 1) and the field,
        e.g. C{listener 2: tcpConnections: expected an array of strings, got
        a string}, or the line and column of invalid JSON.
    """
    try:
        document = json.loads(text, object_pairs_hook=_objectHook)
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except (UnicodeDecodeError, TypeError, ValueError) as e:
        raise ConfigError(f"invalid JSON: {e}") from None
    if not isinstance(document, list):
        hint = " (wrap the listener object in [ ])" if isinstance(document, dict) else ""
        raise ConfigError(
            f"expected an array of listener objects, got {_jsonType(document)}{hint}"
        )
    listeners = tuple(_listenerFromJSON(obj, index) for index, obj in enumerate(document, 1))
    return RmuxConfig(listeners=listeners)


def loadConfigFile(path: str | os.PathLike[str] | FilePath) -> RmuxConfig:
    """
    Read and parse an rmux JSON config file; see L{fromJSON}.

    @param path: A file name or a L{FilePath}.

    @raise ConfigError: If the file cannot be read or is invalid; the
        message starts with the file name.
    """
    name = os.fsdecode(os.fspath(path.path if isinstance(path, FilePath) else path))
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read config file: {e.strerror}") from None
    try:
        return fromJSON(data)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
