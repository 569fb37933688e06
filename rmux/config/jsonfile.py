# -*- test-case-name: tests.test_config -*-
"""
rmux's JSON config file: an array of listener objects with the flags'
camelCase names, read into an L{RmuxConfig}.  Which fields a listener
object may hold, and their types, come from L{rmux.settings}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from twisted.python.filepath import FilePath

from rmux import settings
from rmux.config.build import (
    Place, buildListener, jsonBackendList, jsonBoolean, jsonInteger, jsonObjectList,
    jsonSize, jsonSocketMode, jsonString, jsonType, objectFields,
)
from rmux.config.checks import ConfigError
from rmux.config.model import ListenerConfig, RmuxConfig, UserConfig

__all__ = ["fromJSON", "loadConfigFile"]


def _jsonUsers(value: object, label: str) -> tuple[UserConfig, ...]:
    """
    Read C{users}: an array of C{{"name": ..., "password": ...}} objects.
    Errors name the element and field and, since the element may be a
    password in the wrong place, say only the JSON type of a bad value.
    """
    if not isinstance(value, list):
        raise ConfigError(f"{label}: expected an array of objects, got {jsonType(value)}")
    users = []
    for index, obj in enumerate(value):
        itemLabel = f"{label}[{index}]"
        if not isinstance(obj, dict):
            raise ConfigError(
                f'{itemLabel}: expected an object such as {{"name": "app", '
                f'"password": "..."}}, got {jsonType(obj)}'
            )
        raw = objectFields(obj, _USER_FIELDS, lambda name: f"{itemLabel}: {name}")
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


_USER_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "name": jsonString,
    "password": jsonString,
    "denyCommands": jsonString,
}




def _fieldCheck(setting: settings.Setting) -> Callable[[object, str], Any]:
    """
    The type check of a listener object's field.
    """
    kind = setting.kind
    if kind == settings.SIZE:
        return jsonSize(setting.name)
    return {
        settings.STRING: jsonString,
        settings.BOOLEAN: jsonBoolean,
        settings.MODE: jsonSocketMode,
        settings.BACKENDS: jsonBackendList,
        settings.OBJECTS: jsonObjectList,
        settings.USERS: _jsonUsers,
    }.get(kind, jsonInteger)


_LISTENER_FIELDS = {s.name: _fieldCheck(s) for s in settings.jsonSettings()}
"""The fields of one listener object in the JSON file and their type checks."""


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
    place = Place(f"listener {index}: ", "%s", arrays=True)
    if not isinstance(obj, dict):
        raise place.error(f"expected an object, got {jsonType(obj)}")
    # Go leaves a field untouched on null; so do we.
    raw = objectFields(
        obj,
        _LISTENER_FIELDS,
        place.label,
        {"prefix": "prefix belongs to an element of routes"},
    )
    if not raw.get("socket") and "port" not in raw:
        raise place.error(
            "needs a socket or a port to listen on (Go rmux would pick a random port)"
        )
    return buildListener(raw, place)


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
            f"expected an array of listener objects, got {jsonType(document)}{hint}"
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
