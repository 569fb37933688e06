# -*- test-case-name: tests.test_config -*-
"""
Backend addresses: C{host:port}, socket paths, C{redis://} and C{unix://}
URLs with credentials and a db, and twemproxy's C{host:port:weight name},
parsed into L{BackendAddress}es; and the redaction that keeps the
passwords in them out of every error and log line.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from rmux.config.checks import (
    ConfigError, checkInt, checkName, checkOptionalStr, joinHostPort,
)

DEFAULT_REDIS_PORT = 6379
"""The port a backend address without one gets: Redis's own."""


def secretSpan(text: str, halves: bool = False) -> tuple[int, int] | None:
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


def redact(text: str, halves: bool = False) -> str:
    """
    Hide the password (see L{secretSpan}) in a backend address so that the
    text can be quoted in an error message or a log line.
    """
    span = secretSpan(text, halves)
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
    tls: bool = False

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
            checkInt(self.port, "port", 1, 65535, "an integer from 1 to 65535")
            if self.path is not None:
                raise ConfigError("path: a TCP backend has no socket path")
        elif self.kind == "unix":
            if not isinstance(self.path, str) or not self.path or "\0" in self.path:
                raise ConfigError(f"path: must be a non-empty socket path, got {self.path!r}")
            if self.host is not None or self.port is not None:
                raise ConfigError("host: a unix backend has no host or port")
        else:
            raise ConfigError(f"kind: must be 'tcp' or 'unix', got {self.kind!r}")
        if self.tls is not False and (self.tls is not True or self.kind != "tcp"):
            raise ConfigError("tls: only a TCP backend (rediss://) is reached over TLS")
        checkOptionalStr(self.username, "username")
        if self.password is not None and not isinstance(self.password, str):
            raise ConfigError("password: must be a string")
        if self.username is not None and self.password is None:
            raise ConfigError(
                "username: a user name needs a password "
                "(for a password alone write redis://:password@host)"
            )
        if self.db is not None:
            checkInt(self.db, "db", 0, None, "a non-negative integer")
        checkInt(self.weight, "weight", 1, None, "a positive integer")
        if self.name is not None:
            checkName(self.name, "name")

    def __str__(self) -> str:
        if self.kind == "unix":
            return self.path  # type: ignore[return-value]
        return joinHostPort(self.host, self.port)  # type: ignore[arg-type]

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
        if self.tls:
            parts.append("tls=True")
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

        @param halves: See L{secretSpan}.
        """
        if not isinstance(text, str):
            raise ConfigError(f"expected a string, got {text!r}")
        try:
            address = cls._parse(text.strip(), kind, extras)
        except (ConfigError, ValueError) as e:
            # ValueError: urlsplit's, e.g. for an unbalanced "[".
            detail = str(e)
            if secretSpan(text, halves) is not None:
                detail = _scrub(detail)
            raise ConfigError(f"{redact(text, halves)!r}: {detail}") from None
        if kind is not None and address.kind != kind:
            other = {"tcp": "tcpConnections", "unix": "unixConnections"}[address.kind]
            raise ConfigError(
                f"{redact(text, halves)!r} is a {address.kind} address; list it in {other}"
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
            if "@" in text and secretSpan(text) is not None:
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
            return cls._parseURL(text, "tcp", extras, name, tls=True)
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
        host, port = splitHostPort(text, DEFAULT_REDIS_PORT)
        return cls(kind="tcp", host=host, port=port, weight=weight, name=name)

    @classmethod
    def _parseURL(
        cls, text: str, kind: str, extras: bool = True, name: str | None = None,
        tls: bool = False,
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
        host, port = splitHostPort(hostport, DEFAULT_REDIS_PORT)
        dbPath = parts.path.lstrip("/")
        if dbPath:
            if db is not None:
                raise ConfigError("the database is given both in the path and as ?db=")
            common["db"] = _parseDB(dbPath)
        return cls(kind="tcp", host=host, port=port, tls=tls, **common)


def _checkCredentialsEncoded(text: str) -> None:
    """
    Refuse a URL whose C{user:password} (everything between C{://} and the
    last C{@}, as L{redact} hides it) holds a character that ends the
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
    or more than two colons is left for L{splitHostPort} to refuse as an
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




def _parseDB(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise ConfigError(f"the database must be a non-negative integer, got {text!r}")
    return int(text)


def splitHostPort(text: str, defaultPort: int | None) -> tuple[str, int]:
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


