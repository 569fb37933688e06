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

Beyond Go rmux's fields, a listener has (see L{ListenerConfig} for each):

  - key placement: C{distribution} (C{"rmux"}, Go rmux's slot table, or
    C{"ketama"}, twemproxy's consistent hashing), C{hash} (ketama's key
    hash), C{hashTag} (such as C{"{}"}), and per backend a C{weight} and a
    C{name} for ketama, written in twemproxy's C{host:port:weight name}
    syntax or as a JSON object;
  - C{routes} (JSON only): Envoy-style prefix routes, each a
    L{RouteConfig} with its own backends, the listener's own backends
    taking the keys no prefix matches;
  - health checks: C{healthInterval}, C{healthTimeout}, C{healthFailures},
    C{healthSuccesses} and C{startupWait};
  - C{allowFlush}, which lets FLUSHDB/FLUSHALL reach every server;
  - client authentication, checked by rmux itself (L{rmux.auth}):
    C{requirepass}, Redis's name for the C{default} user's password, and
    (JSON only) C{users}, ACL-style C{{"name": ..., "password": ...}}
    objects;
  - dedicated connections for transactions and blocking commands:
    C{maxPinned} per backend server and C{pinnedWait};
  - limits on clients, with Redis's defaults: C{maxClients} (Redis's
    C{maxclients}), C{clientOutputLimit} (the unsent replies a client may
    have), and the request parser's C{maxBulkLength} (Redis's
    C{proto-max-bulk-len}), C{maxArguments} and C{maxInlineLength};
  - C{socketOwner}, the owner of the unix socket file;
  - C{shutdownTimeout}, how long a SIGTERM lets clients collect the
    replies they are owed.

Sizes in bytes (C{clientOutputLimit}, C{maxBulkLength},
C{maxInlineLength}) may be written with a unit in a flag or a JSON string,
as in C{redis.conf}: C{"64mb"}, C{"1gb"} (see L{_parseSize}).

Passwords, the clients' and the backends', never appear in a C{repr()}, a
L{ConfigError} or C{--help}.  A backend's credentials go in its URL
(C{redis://user:password@host/db}) or, in the JSON file, in the
C{username}, C{password} and C{db} fields of a backend object.

The three layers, from the outside in:

  - L{fromFlags}, L{fromJSON} and L{loadConfigFile} read rmux's spellings:
    strings, C{0} for "use the default", C{remoteTimeout} as a fallback for
    the three individual remote timeouts, two backend lists.
  - L{RmuxConfig}, L{ListenerConfig}, L{RouteConfig}, L{UserConfig} and
    L{BackendAddress} hold the I{effective} values (a pool size of 20,
    not 0) and validate themselves when constructed, so a configuration
    built in code (a C{.tac} file) is checked exactly like one read from
    a file.
  - L{ConfigError} is the one exception all of them raise.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.python.filepath import FilePath

from rmux.auth import Authenticator

__all__ = [
    "ConfigError",
    "BackendAddress",
    "ListenerConfig",
    "RouteConfig",
    "UserConfig",
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
    "DISTRIBUTIONS",
    "HASHES",
    "DEFAULT_HEALTH_INTERVAL",
    "DEFAULT_HEALTH_FAILURES",
    "DEFAULT_HEALTH_SUCCESSES",
    "DEFAULT_STARTUP_WAIT",
    "DEFAULT_MAX_PINNED",
    "DEFAULT_PINNED_WAIT",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_CLIENT_OUTPUT_LIMIT",
    "DEFAULT_MAX_BULK_LENGTH",
    "DEFAULT_MAX_ARGUMENTS",
    "DEFAULT_MAX_INLINE_LENGTH",
    "DEFAULT_SHUTDOWN_TIMEOUT",
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

DEFAULT_HEALTH_INTERVAL = 100
"""Milliseconds between two health checks of a backend, as in Go rmux."""

DEFAULT_HEALTH_FAILURES = 3
"""Consecutive failed health checks that take a backend down."""

DEFAULT_HEALTH_SUCCESSES = 2
"""Consecutive good health checks that bring a down backend back."""

DEFAULT_STARTUP_WAIT = 1000
"""
Milliseconds a request for a backend not yet checked waits for its first
verdict.
"""

DEFAULT_MAX_PINNED = 32
"""
Connections per backend server that rmux may dedicate each to one client
at a time (a transaction, a blocking command).
"""

DEFAULT_PINNED_WAIT = 1000
"""
Milliseconds a client waits for a dedicated connection when
L{DEFAULT_MAX_PINNED} (or the listener's C{maxPinned}) are in use.
"""

DEFAULT_MAX_CLIENTS = 10000
"""Clients a listener serves at once: Redis's C{maxclients} default."""

DEFAULT_CLIENT_OUTPUT_LIMIT = 256 * 1024 * 1024
"""
Bytes of replies not yet sent to a client (256 MiB) beyond which it is
disconnected.
"""

DEFAULT_MAX_BULK_LENGTH = 512 * 1024 * 1024
"""
The longest bulk string a client may send, in bytes (512 MiB): Redis's
C{proto-max-bulk-len} default.
"""

DEFAULT_MAX_ARGUMENTS = 1024 * 1024
"""The most arguments one command may have: Redis's limit."""

DEFAULT_MAX_INLINE_LENGTH = 64 * 1024
"""
The longest inline command, and C{*}/C{$} header line, in bytes (64 KiB):
Redis's C{PROTO_INLINE_MAX_SIZE}.
"""

DEFAULT_SHUTDOWN_TIMEOUT = 5000
"""
Milliseconds that clients have, after a SIGTERM, to collect the replies
they are owed before they are closed.
"""

DEFAULT_STATS_HOST = "127.0.0.1"
"""
Where the stats and metrics ports listen: loopback, since twemproxy's
collectd and nagios plugins run on the same host.
"""

DEFAULT_STATS_INTERVAL = 10000
"""Milliseconds between statsd pushes and worker reports."""

_MAX_SOCKET_MODE = 0o777
_MAX_ID = 2**32 - 2
"""
The largest user or group id: C{uid_t} is 32 bits, and C{2**32 - 1} is
C{(uid_t) -1}, which C{chown} takes as "leave unchanged".
"""
_WILDCARD_HOSTS = frozenset(["", "0.0.0.0", "::"])


class ConfigError(Exception):
    """
    A configuration value is missing, of the wrong type or out of range.

    The message is meant for the operator as it is: it says where
    (C{--poolSize}, C{listener 2: tcpConnections[1]}, the file name), which
    field, and what is wrong with it, e.g.::

        listener 2: tcpConnections: expected an array of strings, got a string
        --poolSize: must be a positive integer (0 means 20), got '-3'

    It never contains a password: neither a backend's nor a client's
    (C{requirepass}, C{users}).
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


def _checkPassword(value: object, label: str) -> str:
    """
    A client password: a non-empty string.  Unlike Redis, where
    C{requirepass ""} means "no password", an empty one is refused: an
    empty value is more often a template or environment variable that
    was not filled in than a wish to let everyone in.  Errors name the type
    of a bad value, never the value.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{label}: must be a string, got {type(value).__name__}")
    if not value:
        raise ConfigError(f"{label}: must not be empty (leave it out for no password)")
    return value


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}


def _parseSize(value: object, label: str, what: str) -> int:
    """
    Read a size in bytes as Redis's config does: an integer, or a string of
    digits with an optional unit, in any case: C{kb}, C{mb}, C{gb} count in
    1024s, C{k}, C{m}, C{g} in 1000s, and C{b} is bytes (C{"64mb"} is
    67108864, C{"64m"} 64000000).  There is no sign and no fraction, and no
    space between the number and the unit.

    Only the syntax is checked here; the range is the field's.

    @param what: What the field must be, for the error.
    """
    if _isInt(value):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        match = re.fullmatch(r"([0-9]+)([a-z]*)", value.strip().lower())
        if match and match.group(2) in _SIZE_UNITS:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise ConfigError(f"{label}: must be {what}, got {value!r}")


def _checkSocketOwner(value: object, label: str) -> str:
    """
    Check the syntax of a socket owner: C{user}, C{user:group} or
    C{:group}, each a name or a numeric id.  Whether the user and group
    exist is for the service to find out when it starts.

    A name may not start with C{-} (so that C{-1}, which C{chown} takes as
    "leave unchanged", is refused) nor contain whitespace, control
    characters or a second C{:}; a numeric id goes up to L{_MAX_ID}.
    """
    if not isinstance(value, str):
        raise ConfigError(
            f"{label}: must be a string such as 'redis', 'redis:www' or ':www', got {value!r}"
        )
    user, colon, group = value.partition(":")
    if not colon:
        parts = [user]
    elif not user:
        parts = [group]
    else:
        parts = [user, group]
    if not all(_isOwnerPart(part) for part in parts):
        raise ConfigError(
            f"{label}: must be user, user:group or :group (names or numeric ids), "
            f"got {value!r}"
        )
    for part in parts:
        if part.isdigit() and part.isascii() and int(part) > _MAX_ID:
            raise ConfigError(f"{label}: a numeric id must be at most {_MAX_ID}, got {value!r}")
    return value


def _isOwnerPart(part: str) -> bool:
    return (
        bool(part)
        and not part.startswith("-")
        and ":" not in part
        and all(c.isprintable() and not c.isspace() for c in part)
    )


def _isIPv6(host: str) -> bool:
    return ":" in host


def _joinHostPort(host: str, port: int) -> str:
    if _isIPv6(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _secretSpan(text: str, halves: bool = False) -> tuple[int, int] | None:
    """
    Where a password may be in a backend address as the operator wrote it,
    as C{(start, end)}, or C{None}.

    That is the C{secret} of C{scheme://user:secret@host} up to the
    I{last} C{@}, so that an unencoded C{@} in a password stays hidden, and
    of C{user:secret@host} written without a scheme.  It is also the
    C{secret} of C{secret@host}, which may be what is left of
    C{redis://user:pass word@host} after a flag's backend list was split on
    whitespace.

    A socket path (C{unix:///...}, or without a scheme one that starts with
    C{/}, C{./} or C{../}) may contain C{@} and C{:}; it is not a secret.

    @param halves: Whether C{text} comes from a flag's list in which some
        entry has an C{@}, so that it may be a piece of a split password:
        then the non-numeric "port" of C{redis://user:pass} or C{user:pass}
        is hidden too, and so is what comes before an C{@} even in a socket
        path (C{/ss@host} is what C{pa /ss} leaves).  Only then, because a
        mistyped port (C{r1:638O}) is far more common, and better shown.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        # "user:pa://ss@host" has no scheme but a "://" in its password.
        scheme, sep, rest = "", "", text
    start = len(scheme) + len(sep)
    if not halves and (rest.startswith("/") or (not sep and rest.startswith(("./", "../")))):
        return None
    at = rest.rfind("@")
    if at >= 0:
        colon = rest.find(":", 0, at)
        if colon >= 0:
            return start + colon + 1, start + at
        # A user name alone is not a secret; a scheme-less "secret@host"
        # may be what is left of one.
        return None if sep else (start, start + at)
    if not halves or rest.startswith("["):
        return None
    if sep:
        authority = re.split(r"[/?#\s]", rest, maxsplit=1)[0]
        port = authority.partition(":")[2]
        looksLikePort = port.isdigit()
    else:
        # twemproxy's host:port:weight is not a secret.  (An IPv6 address
        # without brackets, refused anyway, may show only in part here.)
        authority = (rest.split(None, 1) or [""])[0]
        port = authority.partition(":")[2]
        looksLikePort = re.fullmatch(r"[0-9]*(:[0-9]*)?", port) is not None
    if port and not looksLikePort:
        return start + len(authority) - len(port), start + len(authority)
    return None


def _redact(text: str, halves: bool = False) -> str:
    """
    Hide the password (see L{_secretSpan}) in a backend address so that the
    text can be quoted in an error message or a log line.
    """
    span = _secretSpan(text, halves)
    if span is None:
        return text
    return text[: span[0]] + "***" + text[span[1] :]


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
"""A C{repr}'d string in an error message."""


def _scrub(message: str) -> str:
    """
    Replace every quoted value in C{message} with C{'***'}: what a parser
    quotes from an address that holds a password may be a piece of it
    (the "port" of C{redis://user:pass}).
    """
    return _QUOTED.sub("'***'", message)


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

    For the C{"ketama"} distribution a backend also has a L{weight} and an
    optional L{name}, written as in twemproxy's C{servers:} list
    (C{host:port:weight name}); see L{fromString}.

    C{str()} is the bare address (C{host:port}, C{[::1]:6379} or the socket
    path), the form used in errors and in INFO: it shows neither the weight
    nor the name.  C{repr()} shows them when set, and neither C{str()} nor
    C{repr()} ever shows the password.

    @ivar kind: C{"tcp"} or C{"unix"}.
    @ivar host: The host name or IP address (without brackets) for C{"tcp"},
        else C{None}.
    @ivar port: The TCP port for C{"tcp"}, else C{None}.
    @ivar path: The socket path for C{"unix"}, else C{None}.
    @ivar username: The ACL user name for AUTH, or C{None}.
    @ivar password: The password for AUTH, or C{None}.
    @ivar db: The database to SELECT, or C{None} for the client's own.
    @ivar weight: The server's share of the keys relative to the others of
        its pool, a positive integer, used only by the C{"ketama"}
        distribution (a pool using rmux's placement refuses a weight other
        than 1; list a server twice there instead).
    @ivar name: The node name, or C{None}.  With ketama a server is placed
        by its name when it has one, else by its address, so a named server
        can move to another address without moving its keys.  Otherwise it
        is only a label.  Non-empty, without whitespace or control
        characters.
    """

    kind: str
    host: str | None = None
    port: int | None = None
    path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int | None = None
    weight: int = 1
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "tcp":
            if not isinstance(self.host, str) or not self.host:
                raise ConfigError(f"host: a TCP backend needs a host, got {self.host!r}")
            if "@" in self.host:
                # Not quoted: what comes before an "@" may be a password.
                raise ConfigError(
                    "host: invalid host name: it contains an @ "
                    "(credentials go in username and password)"
                )
            if any(c.isspace() or c in "/[]" for c in self.host):
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
        _checkInt(self.weight, "weight", 1, None, "a positive integer")
        if self.name is not None:
            _checkName(self.name, "name")

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
        if self.weight != 1:
            parts.append(f"weight={self.weight!r}")
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        return f"BackendAddress({', '.join(parts)})"

    @classmethod
    def fromString(cls, text: str, kind: str | None = None) -> BackendAddress:
        """
        Parse one backend the way an operator writes it.

        TCP: C{host:port}, C{[::1]:6379}, a bare C{host} (port 6379), or
        C{redis://[user:password@]host[:port][/db]}.  Unix: a path, or
        C{unix:///path/to.sock[?db=N]} (credentials as in C{redis://}).

        A weight and a name (see L{weight}, L{name}) may be added the way
        twemproxy writes its servers: C{host:port:weight} (the port is then
        required), C{[::1]:6379:2}, and a name after whitespace,
        C{host:port:weight name} (or C{host:port name}); URLs take
        C{?weight=N&name=NAME} (or the name after whitespace).  A plain
        socket path cannot carry either, because a path may itself contain
        colons and spaces: a path that ends in C{:N} or contains whitespace
        is refused, and the weight and name of a unix backend are given in
        a C{unix://} URL or, in the JSON file, an object.

        @param text: The address.
        @param kind: C{"tcp"} if C{text} came from a TCP list
            (C{tcpConnections}), C{"unix"} if from a unix list, C{None} to
            guess: a URL says what it is, otherwise anything with a C{/} is a
            socket path.  A URL of the other kind than C{kind} is an error,
            because which list a backend is in decides its hash position.

        @raise ConfigError: If C{text} is not a valid address of that kind;
            the message quotes C{text} with any password hidden.
        """
        return cls._fromText(text, kind, extras=True)

    @classmethod
    def _fromText(
        cls, text: object, kind: str | None, extras: bool, halves: bool = False
    ) -> BackendAddress:
        """
        L{fromString}, or with C{extras} false the C{address} of a JSON
        backend object, which must not carry a weight or name of its own
        (the object has fields for them) and so may be any socket path.

        @param halves: See L{_secretSpan}.
        """
        if not isinstance(text, str):
            raise ConfigError(f"expected a string, got {text!r}")
        try:
            address = cls._parse(text.strip(), kind, extras)
        except (ConfigError, ValueError) as e:
            # ValueError: urlsplit's, e.g. for an unbalanced "[".
            detail = str(e)
            if _secretSpan(text, halves) is not None:
                detail = _scrub(detail)
            raise ConfigError(f"{_redact(text, halves)!r}: {detail}") from None
        if kind is not None and address.kind != kind:
            other = {"tcp": "tcpConnections", "unix": "unixConnections"}[address.kind]
            raise ConfigError(
                f"{_redact(text, halves)!r} is a {address.kind} address; list it in {other}"
            )
        return address

    @classmethod
    def _parse(cls, text: str, kind: str | None, extras: bool) -> BackendAddress:
        if not text:
            raise ConfigError("empty address")
        scheme = text.partition("://")[0].lower() if "://" in text else None
        if scheme is None and text.lower().startswith("unix:/"):
            scheme = "unix"
        if scheme in ("redis", "unix"):
            _checkCredentialsEncoded(text)
        # Guessing the kind looks at the address alone, not at a name after it.
        guessUnix = kind is None and "/" in text.split(None, 1)[0]
        if scheme is None and (kind == "unix" or guessUnix):
            if "@" in text and _secretSpan(text) is not None:
                raise ConfigError(
                    "looks like credentials, not a socket path; a backend with a password "
                    "is written redis://user:password@host or unix://user:password@/path "
                    "(and a relative socket path with an @ as ./path)"
                )
            if extras and (re.search(r":[0-9]+$", text) or any(c.isspace() for c in text)):
                raise ConfigError(
                    "a socket path cannot carry a weight or name here (a path may contain "
                    "':' and spaces); write unix:///path?weight=N&name=NAME, or in the JSON "
                    'file an object {"address": "/path", "weight": N, "name": "NAME"}'
                )
            return cls(kind="unix", path=text)
        name = None
        if extras:
            pieces = text.split(None, 1)
            text, name = pieces[0], (pieces[1] if len(pieces) > 1 else None)
        elif any(c.isspace() for c in text):
            raise _noExtras("name")
        if scheme == "redis":
            return cls._parseURL(text, "tcp", extras, name)
        if scheme == "unix":
            return cls._parseURL(text, "unix", extras, name)
        if scheme == "rediss":
            raise ConfigError("TLS (rediss://) is not supported")
        if scheme is not None:
            raise ConfigError(f"unsupported URL scheme {scheme!r} (use redis:// or unix://)")
        if "/" in text:
            raise ConfigError("looks like a socket path; list it in unixConnections")
        weight = 1
        weightText = _splitWeight(text)
        if weightText is not None:
            if not extras:
                raise _noExtras("weight")
            text = text[: -len(weightText) - 1]
            weight = _parseWeight(weightText)
        host, port = _splitHostPort(text, DEFAULT_REDIS_PORT)
        return cls(kind="tcp", host=host, port=port, weight=weight, name=name)

    @classmethod
    def _parseURL(
        cls, text: str, kind: str, extras: bool = True, name: str | None = None
    ) -> BackendAddress:
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
        weight = 1
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
        for parameter, value in query:
            if parameter == "db":
                db = _parseDB(value)
            elif parameter in ("weight", "name") and not extras:
                raise _noExtras(parameter)
            elif parameter == "weight":
                weight = _parseWeight(value)
            elif parameter == "name":
                if name is not None:
                    raise ConfigError("the name is given both after the URL and as ?name=")
                name = value
            else:
                raise ConfigError(f"unknown URL parameter {parameter!r}")
        common: dict[str, Any] = dict(
            username=username, password=password, db=db, weight=weight, name=name
        )
        if kind == "unix":
            if hostport:
                raise ConfigError(
                    "a unix URL has no host; write unix:///path/to.sock (three slashes)"
                )
            path = unquote(parts.path)
            if not path:
                raise ConfigError("a unix URL needs a socket path")
            return cls(kind="unix", path=path, **common)
        if not hostport:
            raise ConfigError("a redis URL needs a host")
        host, port = _splitHostPort(hostport, DEFAULT_REDIS_PORT)
        dbPath = parts.path.lstrip("/")
        if dbPath:
            if db is not None:
                raise ConfigError("the database is given both in the path and as ?db=")
            common["db"] = _parseDB(dbPath)
        return cls(kind="tcp", host=host, port=port, **common)


def _checkCredentialsEncoded(text: str) -> None:
    """
    Refuse a URL whose C{user:password} (everything between C{://} and the
    last C{@}, as L{_redact} hides it) holds a character that ends the
    user information for a URL parser (C{/}, C{?}, C{#}, another C{@}) or
    an address for rmux (whitespace, before a name).  Parsed as written, a
    piece of the password would become the host, port, path, query or
    name: a later error could quote it or, worse, the address could be
    wrong without any error.
    """
    rest = text.partition("://")[2]
    if rest.startswith("/"):
        return
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo and re.search(r"[/?#@\s]", userinfo):
        raise ConfigError(
            "the user name and password (everything between :// and the last @) "
            "must be percent-encoded: %40 for @, %2F for /, %3F for ?, %23 for #, "
            "%20 for a space"
        )


def _noExtras(what: str) -> ConfigError:
    return ConfigError(
        f'an object\'s "address" cannot carry a {what}; use the object\'s "{what}" field'
    )


def _splitWeight(text: str) -> str | None:
    """
    The weight of twemproxy's C{host:port:weight} or C{[v6]:port:weight},
    or C{None} if C{text} has no third part.  Unbracketed text with C{::}
    or more than two colons is left for L{_splitHostPort} to refuse as an
    IPv6 address without brackets.
    """
    if text.startswith("["):
        rest = text.partition("]")[2]
        if rest.count(":") != 2:
            return None
    elif text.count(":") != 2 or "::" in text:
        return None
    return text.rpartition(":")[2]


def _parseWeight(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ConfigError(f"weight must be a positive integer, got {text!r}")
    return int(text)


def _checkName(value: object, label: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise ConfigError(
            f"{label}: must be a non-empty name without spaces or control characters, "
            f"got {value!r}"
        )
    return value


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


def _checkDistribution(value: object, label: str) -> str:
    if not isinstance(value, str) or value not in DISTRIBUTIONS:
        raise ConfigError(f"{label}: must be 'rmux' or 'ketama', got {value!r}")
    return value


def _checkHash(value: object, label: str) -> str:
    if not isinstance(value, str) or value not in HASHES:
        raise ConfigError(f"{label}: must be 'fnv1a_64' or 'md5', got {value!r}")
    return value


def _checkHashTag(value: object, label: str) -> bytes | None:
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
    """

    prefix: bytes
    backends: tuple[BackendAddress, ...]
    distribution: str = "rmux"
    hash: str = HASHES[0]
    hashTag: bytes | None = None
    failover: bool = False

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
        _checkBool(self.failover, "failover")


def _placementFields(config: ListenerConfig | RouteConfig) -> None:
    """
    Validate and normalize the fields a listener and a route share.
    """
    object.__setattr__(config, "backends", _orderBackends(config.backends))
    if not config.backends:
        raise ConfigError("at least one backend is required")
    _checkDistribution(config.distribution, "distribution")
    _checkHash(config.hash, "hash")
    object.__setattr__(config, "hashTag", _checkHashTag(config.hashTag, "hashTag"))
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
    """

    name: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        _checkName(self.name, "name")
        _checkPassword(self.password, "password")

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
    distribution: str = "rmux"
    hash: str = HASHES[0]
    hashTag: bytes | None = None
    routes: tuple[RouteConfig, ...] = ()
    healthInterval: int = DEFAULT_HEALTH_INTERVAL
    healthTimeout: int | None = None
    healthFailures: int = DEFAULT_HEALTH_FAILURES
    healthSuccesses: int = DEFAULT_HEALTH_SUCCESSES
    startupWait: int = DEFAULT_STARTUP_WAIT
    allowFlush: bool = False
    commands: tuple[Mapping[str, Any], ...] = ()
    requirepass: str | None = field(default=None, repr=False)
    users: tuple[UserConfig, ...] = ()
    maxPinned: int = DEFAULT_MAX_PINNED
    pinnedWait: int = DEFAULT_PINNED_WAIT
    maxClients: int = DEFAULT_MAX_CLIENTS
    clientOutputLimit: int = DEFAULT_CLIENT_OUTPUT_LIMIT
    socketOwner: str | None = None
    maxBulkLength: int = DEFAULT_MAX_BULK_LENGTH
    maxArguments: int = DEFAULT_MAX_ARGUMENTS
    maxInlineLength: int = DEFAULT_MAX_INLINE_LENGTH
    shutdownTimeout: int = DEFAULT_SHUTDOWN_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise ConfigError(f"host: must be a string, got {self.host!r}")
        _checkInt(self.port, "port", 0, 65535, "an integer from 0 to 65535")
        if self.socket is not None:
            if not isinstance(self.socket, str) or not self.socket or "\0" in self.socket:
                raise ConfigError(f"socket: must be a non-empty path, got {self.socket!r}")
        _checkInt(self.socketMode, "socketMode", 0, _MAX_SOCKET_MODE, "a mode from 0 to 0777")
        _placementFields(self)
        _checkInt(self.poolSize, "poolSize", 1, None, "a positive integer")
        _checkBool(self.failover, "failover")
        _checkInt(self.maxProcesses, "maxProcesses", 0, None, "a non-negative integer")
        for name in ("localReadTimeout", "localWriteTimeout", "idleTimeout"):
            _checkInt(getattr(self, name), name, 0, None, "a non-negative integer (ms)")
        for name in ("remoteConnectTimeout", "remoteReadTimeout", "remoteWriteTimeout"):
            _checkInt(getattr(self, name), name, 1, None, "a positive integer (ms)")
        object.__setattr__(self, "routes", _checkRoutes(self.routes, self.backends))
        if self.healthTimeout is None:
            object.__setattr__(self, "healthTimeout", self.remoteConnectTimeout)
        for name in ("healthInterval", "healthTimeout"):
            _checkInt(getattr(self, name), name, 1, None, "a positive integer (ms)")
        for name in ("healthFailures", "healthSuccesses"):
            _checkInt(getattr(self, name), name, 1, None, "a positive integer")
        _checkInt(self.startupWait, "startupWait", 0, None, "a non-negative integer (ms)")
        _checkBool(self.allowFlush, "allowFlush")
        object.__setattr__(self, "commands", _checkCommands(self.commands))
        if self.requirepass is not None:
            _checkPassword(self.requirepass, "requirepass")
        object.__setattr__(self, "users", _checkUsers(self.users, self.requirepass))
        _checkInt(self.maxPinned, "maxPinned", 1, None, "a positive integer")
        _checkInt(self.pinnedWait, "pinnedWait", 0, None, "a non-negative integer (ms)")
        _checkInt(self.maxClients, "maxClients", 1, None, "a positive integer")
        _checkInt(
            self.clientOutputLimit, "clientOutputLimit", 0, None, "a non-negative integer (bytes)"
        )
        if self.socketOwner is not None:
            if self.socket is None:
                raise ConfigError(_ownerWithoutSocket("socketOwner", "socket"))
            _checkSocketOwner(self.socketOwner, "socketOwner")
        for name in ("maxBulkLength", "maxInlineLength"):
            _checkInt(getattr(self, name), name, 1, None, "a positive integer (bytes)")
        _checkInt(self.maxArguments, "maxArguments", 1, None, "a positive integer")
        _checkInt(
            self.shutdownTimeout, "shutdownTimeout", 0, None, "a non-negative integer (ms)"
        )

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
        return _joinHostPort(self.host or "*", self.port)


def _ownerWithoutSocket(owner: str, socket: str) -> str:
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
    statsHost: str = DEFAULT_STATS_HOST
    statsInterval: int = DEFAULT_STATS_INTERVAL
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
            _checkBool(getattr(self, name), name)
        if self.graphite is not None:
            object.__setattr__(self, "graphite", _checkGraphite(self.graphite, "graphite"))
        cpuProfile = _checkOptionalStr(self.cpuProfile, "cpuProfile")
        if cpuProfile == "":
            raise ConfigError("cpuProfile: must be a file name or None, got ''")
        for name in ("statsPort", "metricsPort"):
            value = getattr(self, name)
            if not _isInt(value) or not 0 <= value <= 65535:
                raise ConfigError(f"{name}: must be a TCP port (0 for none), got {value!r}")
        if self.statsPort and self.statsPort == self.metricsPort:
            raise ConfigError(f"metricsPort: {self.metricsPort} is already the statsPort")
        if not isinstance(self.statsHost, str) or not self.statsHost.strip():
            raise ConfigError(f"statsHost: must be an interface address, got {self.statsHost!r}")
        if not _isInt(self.statsInterval) or self.statsInterval <= 0:
            raise ConfigError(
                f"statsInterval: must be a positive number of ms, got {self.statsInterval!r}"
            )
        _checkOptionalStr(self.configPath, "configPath")


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

    def integer(self, raw: Mapping[str, Any], name: str) -> int:
        """
        The integer field C{name} as rmux writes it (0 if not given),
        checked by its rule in L{_INTEGER_RULES}.
        """
        high, what = _INTEGER_RULES.get(name, _MILLISECONDS_RULE)
        return self.checkInt(raw, name, 0, high, what)


_MILLISECONDS_RULE: tuple[int | None, str] = (None, "a non-negative integer (ms)")


def _showSize(size: int) -> str:
    """
    A size as an operator would write it: C{"512mb"}, C{"64kb"}, or the
    number of bytes if no 1024-based unit divides it.
    """
    for unit in ("gb", "mb", "kb"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def _sizeRule(kind: str, zero: str) -> str:
    return f"{kind} number of bytes, such as 65536 or 64kb (0 means {zero})"


_INTEGER_RULES: dict[str, tuple[int | None, str]] = {
    "port": (65535, "an integer from 0 to 65535"),
    "poolSize": (None, f"a positive integer (0 means {DEFAULT_POOL_SIZE})"),
    "maxProcesses": (None, "a non-negative integer"),
    "healthInterval": (
        None,
        f"a positive integer (ms; 0 means {DEFAULT_HEALTH_INTERVAL})",
    ),
    "healthTimeout": (None, "a positive integer (ms; 0 means remoteConnectTimeout)"),
    "healthFailures": (None, f"a positive integer (0 means {DEFAULT_HEALTH_FAILURES})"),
    "healthSuccesses": (None, f"a positive integer (0 means {DEFAULT_HEALTH_SUCCESSES})"),
    "maxPinned": (None, f"a positive integer (0 means {DEFAULT_MAX_PINNED})"),
    "maxClients": (None, f"a positive integer (0 means {DEFAULT_MAX_CLIENTS})"),
    "clientOutputLimit": (None, _sizeRule("a non-negative", "unlimited")),
    "maxBulkLength": (None, _sizeRule("a positive", _showSize(DEFAULT_MAX_BULK_LENGTH))),
    "maxArguments": (None, f"a positive integer (0 means {DEFAULT_MAX_ARGUMENTS})"),
    "maxInlineLength": (None, _sizeRule("a positive", _showSize(DEFAULT_MAX_INLINE_LENGTH))),
}
"""
The upper bound and the description in errors of each integer field that
is not a plain millisecond count (L{_MILLISECONDS_RULE}); all accept 0,
which for most means "the default".  The sizes (L{_SIZE_FIELDS}) are
integers once read.
"""

_SIZE_FIELDS = frozenset(["clientOutputLimit", "maxBulkLength", "maxInlineLength"])
"""
The fields in bytes, which a flag or a JSON string may give with a unit
(see L{_parseSize}).
"""


def _buildListener(raw: Mapping[str, Any], place: _Place) -> ListenerConfig:
    """
    Apply rmux's semantics to the type-checked values of one instance.

    @param raw: camelCase field name to value, for the fields given.
        Integers are already C{int}, backend lists lists of C{str} (and,
        from a file, backend objects), C{socketMode} an C{int}, C{routes}
        (file only) a list of route objects, C{users} (file only) a tuple
        of L{UserConfig}.
    """
    kwargs: dict[str, Any] = {}
    if raw.get("socket"):
        kwargs["socket"] = raw["socket"]
    if "socketOwner" in raw:
        if "socket" not in kwargs:
            raise place.error(
                _ownerWithoutSocket(place.field("socketOwner"), place.field("socket"))
            )
        kwargs["socketOwner"] = raw["socketOwner"]
    for name in ("host", "failover", "socketMode", "allowFlush", "commands"):
        if name in raw:
            kwargs[name] = raw[name]
    if "port" in raw:
        kwargs["port"] = place.integer(raw, "port")
    kwargs["poolSize"] = place.integer(raw, "poolSize") or DEFAULT_POOL_SIZE
    kwargs["maxProcesses"] = place.integer(raw, "maxProcesses")

    # The individual timeouts win over the combined one, as in rmux, and 0
    # means "not set" at every level.
    localTimeout = place.integer(raw, "localTimeout")
    kwargs["localReadTimeout"] = place.integer(raw, "localReadTimeout") or localTimeout
    kwargs["localWriteTimeout"] = place.integer(raw, "localWriteTimeout") or localTimeout
    kwargs["idleTimeout"] = place.integer(raw, "idleTimeout")
    remoteTimeout = place.integer(raw, "remoteTimeout") or DEFAULT_REMOTE_TIMEOUT
    for name in ("remoteConnectTimeout", "remoteReadTimeout", "remoteWriteTimeout"):
        kwargs[name] = place.integer(raw, name) or remoteTimeout

    # Health checks: 0 means the default, except for startupWait, where it
    # means "do not wait".
    kwargs["healthInterval"] = place.integer(raw, "healthInterval") or DEFAULT_HEALTH_INTERVAL
    kwargs["healthTimeout"] = place.integer(raw, "healthTimeout") or None
    kwargs["healthFailures"] = place.integer(raw, "healthFailures") or DEFAULT_HEALTH_FAILURES
    kwargs["healthSuccesses"] = place.integer(raw, "healthSuccesses") or DEFAULT_HEALTH_SUCCESSES
    if "startupWait" in raw:
        kwargs["startupWait"] = place.integer(raw, "startupWait")

    # Client authentication and dedicated connections.  As for startupWait,
    # a pinnedWait of 0 means "do not wait".
    for name in ("requirepass", "users"):
        if name in raw:
            kwargs[name] = raw[name]
    kwargs["maxPinned"] = place.integer(raw, "maxPinned") or DEFAULT_MAX_PINNED
    if "pinnedWait" in raw:
        kwargs["pinnedWait"] = place.integer(raw, "pinnedWait")

    # Limits on clients and their requests, Redis's by default.  0 means
    # the default, except for clientOutputLimit, where it means
    # "unlimited", and shutdownTimeout, where it means "do not wait".
    kwargs["maxClients"] = place.integer(raw, "maxClients") or DEFAULT_MAX_CLIENTS
    if "clientOutputLimit" in raw:
        kwargs["clientOutputLimit"] = place.integer(raw, "clientOutputLimit")
    kwargs["maxBulkLength"] = place.integer(raw, "maxBulkLength") or DEFAULT_MAX_BULK_LENGTH
    kwargs["maxArguments"] = place.integer(raw, "maxArguments") or DEFAULT_MAX_ARGUMENTS
    kwargs["maxInlineLength"] = (
        place.integer(raw, "maxInlineLength") or DEFAULT_MAX_INLINE_LENGTH
    )
    if "shutdownTimeout" in raw:
        kwargs["shutdownTimeout"] = place.integer(raw, "shutdownTimeout")

    # Checked here, before the routes that inherit them, so that an error
    # names the listener's field rather than a route.
    placement = {
        "distribution": _checkDistribution(
            raw.get("distribution", DISTRIBUTIONS[0]), place.label("distribution")
        ),
        "hash": _checkHash(raw.get("hash", HASHES[0]), place.label("hash")),
        "hashTag": _checkHashTag(raw.get("hashTag"), place.label("hashTag")),
        "failover": kwargs.get("failover", False),
    }
    kwargs.update(placement)

    backends, labels = _backendsFromRaw(raw, place)
    if not backends:
        message = (
            "at least one backend is required "
            f"({place.field('tcpConnections')} or {place.field('unixConnections')})"
        )
        if raw.get("routes"):
            message += "; with routes, they take the keys no route matches"
        raise place.error(message)
    kwargs["backends"] = backends

    routes = []
    routeLabels = []
    hashUsed = placement["distribution"] == "ketama"
    for index, obj in enumerate(raw.get("routes", ())):
        route, backendLabels, inheritsHash = _routeFromJSON(obj, index, placement, place)
        routes.append(route)
        routeLabels.append(backendLabels)
        hashUsed = hashUsed or inheritsHash
    if "hash" in raw and not hashUsed:
        raise ConfigError(_unusedHash(place))
    if routes:
        kwargs["routes"] = routes

    try:
        return ListenerConfig(**kwargs)
    except ConfigError as e:
        # Whatever the object refused still gets the place in front.
        raise _placeError(str(e), raw, place, labels, routeLabels) from None


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


def _unusedHash(place: _Place) -> str:
    return (
        f"{place.label('hash')}: only used by the ketama distribution (set "
        f"{place.field('distribution')} to ketama, or leave {place.field('hash')} out)"
    )


def _placeError(
    message: str,
    raw: Mapping[str, Any],
    place: _Place,
    labels: list[str],
    routeLabels: list[list[str]] | None = None,
) -> ConfigError:
    """
    Put the operator's names on an error from L{ListenerConfig} or
    L{RouteConfig}: the place in front, the flag or field name for the
    field, and for C{backends[i]} the list and entry the backend came from.

    @param labels: For each backend in order, how to name it.
    @param routeLabels: The same for each route's backends.
    """
    match = re.match(r"(routes\[([0-9]+)\]: )?backends\[([0-9]+)\]", message)
    if match:
        route, routeIndex, index = match.groups()
        if route:
            label = route + (routeLabels or [])[int(routeIndex)][int(index)]
        else:
            label = labels[int(index)]
        return place.error(label + message[match.end() :])
    name = message.partition(":")[0]
    if name in raw:
        message = place.field(name) + message[len(name) :]
    return place.error(message)


def _backendsFromRaw(
    raw: Mapping[str, Any], place: _Place
) -> tuple[list[BackendAddress], list[str]]:
    """
    The backends of C{raw}'s C{tcpConnections} and C{unixConnections} (in
    that order, as L{ListenerConfig} orders them), each with the label that
    names it in errors: C{tcpConnections[2]} in a file, C{--tcpConnections:
    'r1:6380:2'} for a flag.
    """
    backends = []
    labels = []
    for listName, kind in (("tcpConnections", "tcp"), ("unixConnections", "unix")):
        elements = raw.get(listName, ())
        # A flag's list was split on whitespace, and so was a password
        # with a space in it: see _secretSpan.
        halves = not place.arrays and any("@" in str(element) for element in elements)
        for index, element in enumerate(elements):
            if place.arrays:
                label = f"{place.field(listName)}[{index}]"
            else:
                label = f"{place.field(listName)}: {_redact(str(element), halves)!r}"
            try:
                if isinstance(element, str):
                    backend = BackendAddress._fromText(element, kind, extras=True, halves=halves)
                elif isinstance(element, dict):
                    backend = _backendFromObject(element, kind)
                else:
                    raise ConfigError(
                        f"expected an address string or an object, got {_jsonType(element)}"
                    )
            except ConfigError as e:
                # A flag's label quotes the address, and so does the error.
                shown = place.field(listName) if not place.arrays else label
                raise place.error(f"{shown}: {e}") from None
            backends.append(backend)
            labels.append(label)
    return backends, labels


_BACKEND_FIELDS: dict[str, Callable[[object, str], Any]] = {}
_ROUTE_FIELDS: dict[str, Callable[[object, str], Any]] = {}


def _objectFields(
    obj: Mapping[str, Any],
    fields: Mapping[str, Callable[[object, str], Any]],
    label: Callable[[str], str],
    elsewhere: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """
    Type-check the fields of a JSON object: refuse repeated and unknown
    fields (suggesting the closest known one), and drop C{null}s, which Go
    treats as "not given".

    @param label: Turns a field name into its place in errors.
    @param elsewhere: For a field that belongs to another object, the hint
        to give instead of "did you mean".
    """
    duplicates = getattr(obj, "duplicates", ())
    if duplicates:
        raise ConfigError(f"{label(duplicates[0])}: given more than once")
    raw: dict[str, Any] = {}
    for key, value in obj.items():
        check = fields.get(key)
        if check is None:
            if elsewhere and key in elsewhere:
                hint = f" ({elsewhere[key]})"
            else:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{label(key)}: unknown field{hint}")
        if value is None:
            continue
        raw[key] = check(value, label(key))
    return raw


def _backendFromObject(obj: Mapping[str, Any], kind: str) -> BackendAddress:
    """
    A backend written as a JSON object, C{{"address": "r1:6379", "weight":
    2, "name": "cache-a"}}: the way to give a weight or name to a socket
    path, or a name to anything, without the string syntax.  It may also
    carry the credentials and database a URL would (C{"username"},
    C{"password"}, C{"db"}), which spares percent-encoding a password;
    each must then be left out of the address.
    """
    raw = _objectFields(obj, _BACKEND_FIELDS, lambda name: name)
    if "address" not in raw:
        raise ConfigError('address: required, as in {"address": "host:port", "weight": 2}')
    try:
        address = BackendAddress._fromText(raw.pop("address"), kind, extras=False)
    except ConfigError as e:
        raise ConfigError(f"address: {e}") from None
    for name in ("username", "password", "db"):
        if name in raw and getattr(address, name) is not None:
            raise ConfigError(f"{name}: also given in the address; give it in one place")
    if "username" in raw and "password" not in raw and address.password is None:
        raise ConfigError('username: a user name needs a password; add "password"')
    if raw:
        address = dataclasses.replace(address, **raw)
    return address


def _routeFromJSON(
    obj: object, index: int, listener: Mapping[str, Any], place: _Place
) -> tuple[RouteConfig, list[str], bool]:
    """
    Build one element of a listener's C{routes}.

    @param listener: The listener's validated C{distribution}, C{hash},
        C{hashTag} and C{failover}, for the fields the route leaves out.
    @return: The route, the labels of its backends (see L{_backendsFromRaw})
        and whether it uses the listener's C{hash}.
    """
    routePlace = _Place(f"{place.prefix}routes[{index}]: ", "%s", arrays=True)
    if not isinstance(obj, dict):
        raise routePlace.error(f"expected an object, got {_jsonType(obj)}")
    raw = _objectFields(
        obj,
        _ROUTE_FIELDS,
        routePlace.label,
        {name: f"{name} is set for the whole listener" for name in _LISTENER_FIELDS},
    )
    if "prefix" not in raw:
        raise routePlace.error('prefix: required, as in "prefix": "session:"')
    kwargs: dict[str, Any] = dict(listener)
    for name in ("distribution", "hash", "hashTag", "failover"):
        if name in raw:
            kwargs[name] = raw[name]
    distribution = _checkDistribution(kwargs["distribution"], routePlace.label("distribution"))
    if "hash" in raw and distribution != "ketama":
        raise ConfigError(_unusedHash(routePlace))
    backends, labels = _backendsFromRaw(raw, routePlace)
    if not backends:
        raise routePlace.error(
            "at least one backend is required (tcpConnections or unixConnections)"
        )
    try:
        route = RouteConfig(prefix=raw["prefix"], backends=backends, **kwargs)
    except ConfigError as e:
        raise _placeError(str(e), raw, routePlace, labels) from None
    return route, labels, distribution == "ketama" and "hash" not in raw


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
    "distribution",
    "hash",
    "hashTag",
    "healthInterval",
    "healthTimeout",
    "healthFailures",
    "healthSuccesses",
    "startupWait",
    "allowFlush",
    "requirepass",
    "maxPinned",
    "pinnedWait",
    "maxClients",
    "clientOutputLimit",
    "socketOwner",
    "maxBulkLength",
    "maxArguments",
    "maxInlineLength",
    "shutdownTimeout",
)
_GLOBAL_FLAGS = (
    "config",
    "debug",
    "useSyslog",
    "graphite",
    "timing",
    "cpuProfile",
    "statsPort",
    "metricsPort",
    "statsHost",
    "statsInterval",
)
_BOOLEAN_FLAGS = frozenset(["failover", "allowFlush", "debug", "useSyslog", "timing"])
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
        "healthInterval",
        "healthTimeout",
        "healthFailures",
        "healthSuccesses",
        "startupWait",
        "maxPinned",
        "pinnedWait",
        "maxClients",
        "maxArguments",
        "shutdownTimeout",
        "statsPort",
        "metricsPort",
        "statsInterval",
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
    what = _INTEGER_RULES.get(name, _MILLISECONDS_RULE)[1]
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

    The flags rmux does not have follow the same rules: C{distribution},
    C{hash} (refused unless C{distribution} is C{ketama}) and C{hashTag}
    (C{""} for none); C{healthInterval}, C{healthTimeout} (0 means
    C{remoteConnectTimeout}), C{healthFailures} and C{healthSuccesses}, 0
    meaning the default; C{startupWait}, where 0 means "do not wait"; the
    boolean C{allowFlush}; C{requirepass}, which may not be empty nor
    given with C{config} (which would replace it without a word);
    C{maxPinned}, 0 meaning the default; C{pinnedWait}, where 0 means
    "do not wait"; C{maxClients}, C{maxBulkLength}, C{maxArguments} and
    C{maxInlineLength}, 0 meaning the default; C{clientOutputLimit}, where
    0 means "unlimited"; C{shutdownTimeout}, where 0 means "do not wait";
    and C{socketOwner}, refused without C{socket}.  The sizes
    (C{clientOutputLimit}, C{maxBulkLength}, C{maxInlineLength}) may have
    a unit, as in C{redis.conf}: C{64mb} (see L{_parseSize}).  A backend's
    weight is written C{host:port:weight} (or C{?weight=N} in a URL), and
    since the lists are split on whitespace a name only as C{?name=NAME} in
    a URL; prefix routes and users need the JSON file.

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
        "distribution",
        "hash",
        "hashTag",
        "socketOwner",
    ):
        if name in given and not isinstance(given[name], str):
            raise ConfigError(f"--{name}: must be a string, got {given[name]!r}")
    if "requirepass" in given and not isinstance(given["requirepass"], str):
        # The type only: the value is a password.
        raise ConfigError(
            f"--requirepass: must be a string, got {type(given['requirepass']).__name__}"
        )

    if "config" in given and "requirepass" in given:
        # The file replaces every listener flag, silently as in Go rmux;
        # silently dropping a password would leave the listener open to an
        # operator who believes it is protected.
        raise ConfigError(
            "--requirepass: not used with --config, which replaces every listener "
            'option; set "requirepass" in the listener objects of the file'
        )
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
            elif name in _SIZE_FIELDS:
                value = _parseSize(value, f"--{name}", _INTEGER_RULES[name][1])
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
    for name in ("statsPort", "metricsPort", "statsInterval"):
        if name in given:
            globalValues[name] = _flagInteger(given[name], name)
    if "statsHost" in given:
        if not isinstance(given["statsHost"], str):
            raise ConfigError(f"--statsHost: must be a string, got {given['statsHost']!r}")
        globalValues["statsHost"] = given["statsHost"]
    if "config" in given:
        globalValues["configPath"] = os.fspath(given["config"])
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


def _jsonBackendList(value: object, label: str) -> list[str | dict[str, Any]]:
    """
    Check a backend list: an array of address strings or backend objects
    (whose elements L{_backendsFromRaw} checks, naming their index).
    """
    if not isinstance(value, list):
        raise ConfigError(f"{label}: expected an array of strings, got {_jsonType(value)}")
    return value


def _jsonObjectList(value: object, label: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ConfigError(f"{label}: expected an array of objects, got {_jsonType(value)}")
    return value


def _jsonSocketMode(value: object, label: str) -> int:
    if not isinstance(value, str):
        # JSON has no octal numbers: 660 would mean 0o1224, so insist on text.
        raise ConfigError(
            f'{label}: expected an octal string such as "0660", got {_jsonType(value)}'
        )
    return _parseSocketMode(value, label)


def _jsonUsers(value: object, label: str) -> tuple[UserConfig, ...]:
    """
    Read C{users}: an array of C{{"name": ..., "password": ...}} objects.
    Errors name the element and field and, since the element may be a
    password in the wrong place, say only the JSON type of a bad value.
    """
    if not isinstance(value, list):
        raise ConfigError(f"{label}: expected an array of objects, got {_jsonType(value)}")
    users = []
    for index, obj in enumerate(value):
        itemLabel = f"{label}[{index}]"
        if not isinstance(obj, dict):
            raise ConfigError(
                f'{itemLabel}: expected an object such as {{"name": "app", '
                f'"password": "..."}}, got {_jsonType(obj)}'
            )
        raw = _objectFields(obj, _USER_FIELDS, lambda name: f"{itemLabel}: {name}")
        for name in ("name", "password"):
            if name not in raw:
                raise ConfigError(
                    f'{itemLabel}: {name}: required, as in {{"name": "app", "password": "..."}}'
                )
        try:
            users.append(UserConfig(**raw))
        except ConfigError as e:
            raise ConfigError(f"{itemLabel}: {e}") from None
    return tuple(users)


def _jsonSize(name: str) -> Callable[[object, str], int]:
    """
    The check of the size field C{name}: an integer, or a string with a
    unit such as C{"64mb"} (see L{_parseSize}), which it converts.
    """

    def convert(value: object, label: str) -> int:
        if isinstance(value, str):
            return _parseSize(value, label, _INTEGER_RULES[name][1])
        if not _isInt(value):
            raise ConfigError(
                f'{label}: expected an integer or a string such as "64mb", got {_jsonType(value)}'
            )
        return value  # type: ignore[return-value]

    return convert


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
    "tcpConnections": _jsonBackendList,
    "unixConnections": _jsonBackendList,
    "localTimeout": _jsonInteger,
    "localReadTimeout": _jsonInteger,
    "localWriteTimeout": _jsonInteger,
    "idleTimeout": _jsonInteger,
    "remoteTimeout": _jsonInteger,
    "remoteReadTimeout": _jsonInteger,
    "remoteWriteTimeout": _jsonInteger,
    "remoteConnectTimeout": _jsonInteger,
    "distribution": _jsonString,
    "hash": _jsonString,
    "hashTag": _jsonString,
    "routes": _jsonObjectList,
    "healthInterval": _jsonInteger,
    "healthTimeout": _jsonInteger,
    "healthFailures": _jsonInteger,
    "healthSuccesses": _jsonInteger,
    "startupWait": _jsonInteger,
    "allowFlush": _jsonBoolean,
    "commands": _jsonObjectList,
    "requirepass": _jsonString,
    "users": _jsonUsers,
    "maxPinned": _jsonInteger,
    "pinnedWait": _jsonInteger,
    "maxClients": _jsonInteger,
    "clientOutputLimit": _jsonSize("clientOutputLimit"),
    "socketOwner": _jsonString,
    "maxBulkLength": _jsonSize("maxBulkLength"),
    "maxArguments": _jsonInteger,
    "maxInlineLength": _jsonSize("maxInlineLength"),
    "shutdownTimeout": _jsonInteger,
}
"""
The fields of one listener object in the JSON file and their type checks.
A new field is one line here plus a keyword in L{_buildListener}.
"""

_ROUTE_FIELDS.update(
    {
        "prefix": _jsonString,
        "tcpConnections": _jsonBackendList,
        "unixConnections": _jsonBackendList,
        "distribution": _jsonString,
        "hash": _jsonString,
        "hashTag": _jsonString,
        "failover": _jsonBoolean,
    }
)

_BACKEND_FIELDS.update(
    {
        "address": _jsonString,
        "weight": _jsonInteger,
        "name": _jsonString,
        "username": _jsonString,
        "password": _jsonString,
        "db": _jsonInteger,
    }
)

_USER_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "name": _jsonString,
    "password": _jsonString,
}


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
    # Go leaves a field untouched on null; so do we.
    raw = _objectFields(
        obj,
        _LISTENER_FIELDS,
        place.label,
        {"prefix": "prefix belongs to an element of routes"},
    )
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

    Besides rmux's fields, and with the meanings given in L{fromFlags} and
    L{ListenerConfig}, a listener object may have C{distribution},
    C{hash}, C{hashTag}, C{healthInterval}, C{healthTimeout},
    C{healthFailures}, C{healthSuccesses}, C{startupWait}, C{allowFlush},
    C{requirepass}, C{maxPinned}, C{pinnedWait}, C{maxClients},
    C{clientOutputLimit}, C{socketOwner}, C{maxBulkLength},
    C{maxArguments}, C{maxInlineLength}, C{shutdownTimeout} (the sizes as
    integers or as strings with a unit, C{"64mb"}), and three things flags
    cannot express:

      - backends with a weight and a name, either as twemproxy writes them,
        C{"10.0.0.1:6379:2 cache-a"}, or as an object,
        C{{"address": "10.0.0.1:6379", "weight": 2, "name": "cache-a"}}
        (the only way to give a plain socket path a weight or name), which
        may also carry C{"username"}, C{"password"} and C{"db"} instead of
        a URL's (so a password needs no percent-encoding);
      - C{users}, ACL-style users clients log in as with C{AUTH name
        password}, besides (or instead of) C{requirepass}::

          "users": [{"name": "app", "password": "s3cret"},
                    {"name": "cron", "password": "0ther"}]

      - C{routes}, an array of prefix routes::

          "routes": [{"prefix": "session:",
                      "tcpConnections": ["10.0.0.5:6379", "10.0.0.6:6379"],
                      "distribution": "ketama", "hash": "md5",
                      "hashTag": "{}", "failover": true}]

        Keys starting with a route's (non-empty) C{prefix} go to its
        backends, the longest matching prefix winning; other keys go to
        the listener's own backends, which are therefore still required.
        C{distribution}, C{hash}, C{hashTag} and C{failover} default to
        the listener's; C{"hashTag": ""} turns an inherited tag off.

    @raise ConfigError: Naming the listener (counted from 1) and the field,
        e.g. C{listener 2: tcpConnections: expected an array of strings, got
        a string} or C{listener 1: routes[0]: tcpConnections[1]: weight:
        must be a positive integer, got 0}, or the line and column of
        invalid JSON.
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
