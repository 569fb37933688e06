# -*- test-case-name: tests.test_config -*-
"""
The small checks every part of rmux's configuration shares, and
L{ConfigError}, the one exception they all raise.

Each check takes the label of the thing it checks, so that the same check
reads C{--poolSize: ...} on the command line and C{listener 2: poolSize:
...} for a file.
"""

from __future__ import annotations

import re

from rmux import settings

MAX_SOCKET_MODE = 0o777
_MAX_ID = 2**32 - 2
"""
The largest user or group id: C{uid_t} is 32 bits, and C{2**32 - 1} is
C{(uid_t) -1}, which C{chown} takes as "leave unchanged".
"""
WILDCARD_HOSTS = frozenset(["", "0.0.0.0", "::"])


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


def isInt(value: object) -> bool:
    # bool is an int in Python, but true is not a pool size.
    return isinstance(value, int) and not isinstance(value, bool)


def checkInt(
    value: object, label: str, low: int, high: int | None, what: str, shown: object = None
) -> int:
    """
    @param shown: What to quote as the bad value, if not C{value} itself
        (the string from the command line rather than the C{int} made of it).
    """
    if not isInt(value) or value < low or (high is not None and value > high):
        raise ConfigError(f"{label}: must be {what}, got {value if shown is None else shown!r}")
    return value  # type: ignore[return-value]


def checkBool(value: object, label: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{label}: must be true or false, got {value!r}")
    return value


def checkOptionalStr(value: object, label: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{label}: must be a string, got {value!r}")
    return value


def checkPassword(value: object, label: str) -> str:
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


def parseSize(value: object, label: str, what: str) -> int:
    """
    Read a size in bytes as Redis's config does: an integer, or a string of
    digits with an optional unit, in any case: C{kb}, C{mb}, C{gb} count in
    1024s, C{k}, C{m}, C{g} in 1000s, and C{b} is bytes (C{"64mb"} is
    67108864, C{"64m"} 64000000).  There is no sign and no fraction, and no
    space between the number and the unit.

    Only the syntax is checked here; the range is the field's.

    @param what: What the field must be, for the error.
    """
    if isInt(value):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        match = re.fullmatch(r"([0-9]+)([a-z]*)", value.strip().lower())
        if match and match.group(2) in _SIZE_UNITS:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise ConfigError(f"{label}: must be {what}, got {value!r}")


def checkSocketOwner(value: object, label: str) -> str:
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


def isIPv6(host: str) -> bool:
    return ":" in host


def joinHostPort(host: str, port: int) -> str:
    if isIPv6(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"




def checkName(value: object, label: str) -> str:
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




def parseSocketMode(value: object, label: str) -> int:
    """
    Read a unix socket mode written as octal (C{"0660"}, C{"660"},
    C{"0o660"}) or given as an C{int} (C{0o660}).
    """
    shown = None
    if isInt(value):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", value.strip().lower()):
        text = value.strip().lower()
        mode = int(text[2:] if text.startswith("0o") else text, 8)
        shown = value
    else:
        raise ConfigError(f"{label}: must be an octal mode such as '0660', got {value!r}")
    return checkInt(mode, label, 0, MAX_SOCKET_MODE, "a mode from 0 to 0777", shown)


# -- flags


def checkSetting(value: object, setting: settings.Setting, label: str | None = None) -> int:
    """
    Check an effective integer value (a validated object's) against its
    setting's bounds.
    """
    return checkInt(
        value, label or setting.name, setting.low, setting.high, setting.modelRule()
    )
