# -*- test-case-name: tests.test_config -*-
"""
From rmux's spellings to a L{ListenerConfig}: the part of reading a
listener that a flag and a listener object of the JSON file share.

rmux writes integers with "0 means not set" and backends as two lists;
routes and backend objects exist only in the file, but arrive here as
values of a listener's fields like any other.  Errors name the place as
the operator wrote it (see L{Place}).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Callable, Mapping

from rmux import settings
from rmux.config.addresses import BackendAddress, redact
from rmux.config.checks import ConfigError, checkInt, isInt, parseSize, parseSocketMode
from rmux.config.model import (
    DISTRIBUTIONS, HASHES, ListenerConfig, RouteConfig, checkDistribution, checkHash,
    checkHashTag, checkReadFrom, notWithCluster, ownerWithoutSocket,
)


class Place:
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

    def integer(self, raw: Mapping[str, Any], setting: settings.Setting) -> int:
        """
        The integer field of C{setting} as rmux writes it (0 if not
        given), checked by the setting's rule.
        """
        name = setting.name
        return checkInt(
            raw.get(name, 0), self.label(name), 0, setting.high, setting.rule(),
            self.given.get(name),
        )


def buildListener(raw: Mapping[str, Any], place: Place) -> ListenerConfig:
    """
    Apply rmux's semantics to the type-checked values of one instance: what
    0 means for each integer setting (its default, another setting's value,
    or itself), TCP backends before unix ones, and routes inheriting the
    listener's placement.

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
                ownerWithoutSocket(place.field("socketOwner"), place.field("socket"))
            )
        kwargs["socketOwner"] = raw["socketOwner"]
    for name in _AS_GIVEN:
        if name in raw:
            kwargs[name] = raw[name]
    kwargs.update(_integers(raw, place))

    # Checked here, before the routes that inherit them, so that an error
    # names the listener's field rather than a route.
    placement = {
        "distribution": checkDistribution(
            raw.get("distribution", DISTRIBUTIONS[0]), place.label("distribution")
        ),
        "hash": checkHash(raw.get("hash", HASHES[0]), place.label("hash")),
        "hashTag": checkHashTag(raw.get("hashTag"), place.label("hashTag")),
        "failover": kwargs.get("failover", False),
    }
    kwargs.update(placement)

    if raw.get("cluster"):
        if raw.get("tcpConnections") or raw.get("unixConnections") or raw.get("routes"):
            raise place.error(
                f"{place.field('cluster')}: not with tcpConnections, unixConnections or "
                "routes: a cluster places keys itself"
            )
        kwargs["topology"] = "cluster"
        backends, labels = backendsFromRaw(raw, place, (("cluster", "tcp"),))
    elif raw.get("sentinels") or raw.get("sentinelMaster"):
        kwargs["topology"] = "sentinel"
        kwargs["sentinels"], backends, labels = _sentinelTopology(raw, place)
    else:
        backends, labels = backendsFromRaw(raw, place)
    if raw.get("readFrom", "master") != "master" and "topology" not in kwargs:
        raise place.error(f"{place.field('readFrom')}: only with {place.field('cluster')} "
                          f"or {place.field('sentinels')}: rmux reads from the replicas "
                          "they name")
    if "readFrom" in raw:
        kwargs["readFrom"] = checkReadFrom(raw["readFrom"], place.label("readFrom"))
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
        route, backendLabels, inheritsHash = routeFromJSON(obj, index, placement, place)
        routes.append(route)
        routeLabels.append(backendLabels)
        hashUsed = hashUsed or inheritsHash
    if "hash" in raw and not hashUsed:
        raise ConfigError(unusedHash(place))
    if routes:
        kwargs["routes"] = routes

    try:
        return ListenerConfig(**kwargs)
    except ConfigError as e:
        # Whatever the object refused still gets the place in front.
        raise placeError(str(e), raw, place, labels, routeLabels) from None


def _sentinelTopology(
    raw: Mapping[str, Any], place: Place
) -> tuple[tuple[BackendAddress, ...], list[BackendAddress], list[str]]:
    """
    A sentinel listener's sentinels, and its masters (addresses whose host
    is the master's name) with their labels.
    """
    if raw.get("tcpConnections") or raw.get("unixConnections") or raw.get("routes"):
        raise place.error(
            f"{place.field('sentinels')}: not with tcpConnections, unixConnections or "
            "routes: the sentinels say where the masters are"
        )
    for needed, other in (("sentinels", "sentinelMaster"), ("sentinelMaster", "sentinels")):
        if not raw.get(needed):
            raise place.error(f"{place.field(other)}: needs {place.field(needed)}")
    sentinels, _ = backendsFromRaw(raw, place, (("sentinels", "tcp"),))
    for address in sentinels:
        if address.db is not None:
            raise place.error(
                f"{place.field('sentinels')}: {address}: a sentinel has no db"
            )
    masters, labels = backendsFromRaw(raw, place, (("sentinelMaster", "tcp"),))
    return tuple(sentinels), masters, labels


#: Listener fields taken as given (type-checked already).
_AS_GIVEN = ("host", "failover", "socketMode", "allowFlush", "commands", "requirepass", "users",
             "tlsCaCertFile", "tlsClientCertFile", "tlsClientKeyFile", "tlsServerName",
             "tlsSkipVerify", "tlsCertFile", "tlsKeyFile", "tlsAuthClients",
             "denyCommands", "crossServerTransactions")

#: The integer settings of a listener, its own fields and the ones they
#: fall back to, in an order where a fallback comes before its users.
_INTEGERS = tuple(
    s for s in settings.SETTINGS
    if s.scope in (settings.LISTENER, settings.INPUT) and s.kind in settings.INTEGER_KINDS
)


def _integers(raw: Mapping[str, Any], place: Place) -> dict[str, int]:
    """
    The effective integer fields of a listener, from rmux's spellings: a 0
    (or no value) is the setting's default, the value of the setting it
    falls back to (C{remoteReadTimeout} to C{remoteTimeout}), or itself.
    """
    values: dict[str, int] = {}
    for setting in _INTEGERS:
        name = setting.name
        value = place.integer(raw, setting)
        if not value:
            if setting.zero == settings.ZERO_DEFAULT:
                value = setting.default
            elif setting.zero == settings.ZERO_FALLBACK:
                value = values[setting.fallback]
            elif name not in raw:
                value = setting.default
        values[name] = value
    return {
        name: value for name, value in values.items()
        if settings.BY_NAME[name].scope == settings.LISTENER
    }


def unusedHash(place: Place) -> str:
    return (
        f"{place.label('hash')}: only used by the ketama distribution (set "
        f"{place.field('distribution')} to ketama, or leave {place.field('hash')} out)"
    )


def placeError(
    message: str,
    raw: Mapping[str, Any],
    place: Place,
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


def backendsFromRaw(
    raw: Mapping[str, Any], place: Place,
    lists: tuple[tuple[str, str], ...] = (("tcpConnections", "tcp"), ("unixConnections", "unix")),
) -> tuple[list[BackendAddress], list[str]]:
    """
    The backends of C{raw}'s C{tcpConnections} and C{unixConnections} (in
    that order, as L{ListenerConfig} orders them), each with the label that
    names it in errors: C{tcpConnections[2]} in a file, C{--tcpConnections:
    'r1:6380:2'} for a flag.
    """
    backends = []
    labels = []
    for listName, kind in lists:
        elements = raw.get(listName, ())
        # A flag's list was split on whitespace, and so was a password
        # with a space in it: see secretSpan.
        halves = not place.arrays and any("@" in str(element) for element in elements)
        for index, element in enumerate(elements):
            if place.arrays:
                label = f"{place.field(listName)}[{index}]"
            else:
                label = f"{place.field(listName)}: {redact(str(element), halves)!r}"
            try:
                if isinstance(element, str):
                    backend = BackendAddress._fromText(element, kind, extras=True, halves=halves)
                elif isinstance(element, dict):
                    backend = backendFromObject(element, kind)
                else:
                    raise ConfigError(
                        f"expected an address string or an object, got {jsonType(element)}"
                    )
            except ConfigError as e:
                # A flag's label quotes the address, and so does the error.
                shown = place.field(listName) if not place.arrays else label
                raise place.error(f"{shown}: {e}") from None
            backends.append(backend)
            labels.append(label)
    return backends, labels


def objectFields(
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


def backendFromObject(obj: Mapping[str, Any], kind: str) -> BackendAddress:
    """
    A backend written as a JSON object, C{{"address": "r1:6379", "weight":
    2, "name": "cache-a"}}: the way to give a weight or name to a socket
    path, or a name to anything, without the string syntax.  It may also
    carry the credentials and database a URL would (C{"username"},
    C{"password"}, C{"db"}), which spares percent-encoding a password;
    each must then be left out of the address.
    """
    raw = objectFields(obj, _BACKEND_FIELDS, lambda name: name)
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


def routeFromJSON(
    obj: object, index: int, listener: Mapping[str, Any], place: Place
) -> tuple[RouteConfig, list[str], bool]:
    """
    Build one element of a listener's C{routes}.

    @param listener: The listener's validated C{distribution}, C{hash},
        C{hashTag} and C{failover}, for the fields the route leaves out.
    @return: The route, the labels of its backends (see L{backendsFromRaw})
        and whether it uses the listener's C{hash}.
    """
    routePlace = Place(f"{place.prefix}routes[{index}]: ", "%s", arrays=True)
    if not isinstance(obj, dict):
        raise routePlace.error(f"expected an object, got {jsonType(obj)}")
    raw = objectFields(
        obj,
        _ROUTE_FIELDS,
        routePlace.label,
        {s.name: f"{s.name} is set for the whole listener" for s in settings.jsonSettings()},
    )
    if "prefix" not in raw:
        raise routePlace.error('prefix: required, as in "prefix": "session:"')
    if "cluster" in raw:
        return _clusterRoute(raw, routePlace)
    kwargs: dict[str, Any] = dict(listener)
    for name in ("distribution", "hash", "hashTag", "failover"):
        if name in raw:
            kwargs[name] = raw[name]
    distribution = checkDistribution(kwargs["distribution"], routePlace.label("distribution"))
    if "hash" in raw and distribution != "ketama":
        raise ConfigError(unusedHash(routePlace))
    backends, labels = backendsFromRaw(raw, routePlace)
    if not backends:
        raise routePlace.error(
            "at least one backend is required (tcpConnections or unixConnections)"
        )
    try:
        route = RouteConfig(prefix=raw["prefix"], backends=backends, **kwargs)
    except ConfigError as e:
        raise placeError(str(e), raw, routePlace, labels) from None
    return route, labels, distribution == "ketama" and "hash" not in raw


def _clusterRoute(raw: Mapping[str, Any], place: Place) -> tuple[RouteConfig, list[str], bool]:
    """
    A route whose keys a Redis Cluster places: its C{cluster} seeds, and
    none of the listener's placement (which it does not inherit).
    """
    others = [name for name in raw if name not in ("prefix", "cluster")]
    if others:
        raise place.error(notWithCluster(others))
    seeds, labels = backendsFromRaw(raw, place, (("cluster", "tcp"),))
    if not seeds:
        raise place.error('cluster: at least one seed node, as in "cluster": ["10.0.0.1:6379"]')
    try:
        route = RouteConfig(prefix=raw["prefix"], backends=seeds, cluster=True)
    except ConfigError as e:
        raise placeError(str(e), raw, place, labels) from None
    return route, labels, False




def jsonType(value: object) -> str:
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


def expect(check: Callable[[object], bool], description: str) -> Callable[[object, str], Any]:
    def convert(value: object, label: str) -> Any:
        if not check(value):
            raise ConfigError(f"{label}: expected {description}, got {jsonType(value)}")
        return value

    return convert


def jsonBackendList(value: object, label: str) -> list[str | dict[str, Any]]:
    """
    Check a backend list: an array of address strings or backend objects
    (whose elements L{backendsFromRaw} checks, naming their index).
    """
    if not isinstance(value, list):
        raise ConfigError(f"{label}: expected an array of strings, got {jsonType(value)}")
    return value


def jsonObjectList(value: object, label: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ConfigError(f"{label}: expected an array of objects, got {jsonType(value)}")
    return value


def jsonSocketMode(value: object, label: str) -> int:
    if not isinstance(value, str):
        # JSON has no octal numbers: 660 would mean 0o1224, so insist on text.
        raise ConfigError(
            f'{label}: expected an octal string such as "0660", got {jsonType(value)}'
        )
    return parseSocketMode(value, label)


def jsonSize(name: str) -> Callable[[object, str], int]:
    """
    The check of the size field C{name}: an integer, or a string with a
    unit such as C{"64mb"} (see L{parseSize}), which it converts.
    """

    def convert(value: object, label: str) -> int:
        if isinstance(value, str):
            return parseSize(value, label, settings.BY_NAME[name].rule())
        if not isInt(value):
            raise ConfigError(
                f'{label}: expected an integer or a string such as "64mb", got {jsonType(value)}'
            )
        return value  # type: ignore[return-value]

    return convert


jsonString = expect(lambda v: isinstance(v, str), "a string")
jsonInteger = expect(isInt, "an integer")
jsonBoolean = expect(lambda v: isinstance(v, bool), "a boolean")



_ROUTE_FIELDS: dict[str, Callable[[object, str], Any]] = {}
_BACKEND_FIELDS: dict[str, Callable[[object, str], Any]] = {}
_ROUTE_FIELDS.update(
    {
        "prefix": jsonString,
        "cluster": jsonBackendList,
        "tcpConnections": jsonBackendList,
        "unixConnections": jsonBackendList,
        "distribution": jsonString,
        "hash": jsonString,
        "hashTag": jsonString,
        "failover": jsonBoolean,
    }
)

_BACKEND_FIELDS.update(
    {
        "address": jsonString,
        "weight": jsonInteger,
        "name": jsonString,
        "username": jsonString,
        "password": jsonString,
        "db": jsonInteger,
    }
)

