# -*- test-case-name: tests.test_config -*-
"""
rmux's command-line flags, read into an L{RmuxConfig}: every flag of Go rmux
under its camelCase name, and rmux's own, as L{rmux.settings} lists them.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from rmux import settings
from rmux.config.build import Place, buildListener
from rmux.config.checks import ConfigError, isInt, parseSize, parseSocketMode
from rmux.config.jsonfile import loadConfigFile
from rmux.config.model import RmuxConfig, checkGraphite

__all__ = ["FLAG_NAMES", "DEFAULT_TCP_CONNECTIONS", "fromFlags", "parseFlagBoolean"]

DEFAULT_TCP_CONNECTIONS = "localhost:6380 localhost:6381"
"""
Go rmux's default for C{-tcpConnections}.  Unlike Go rmux we only apply it
when no backend list at all was given (see L{fromFlags}).
"""

FLAG_NAMES = tuple(
    s.name for s in settings.flagSettings()
    if s.scope != settings.COMMAND or s.name in ("config", "requirepassFile")
)
"""Every flag L{fromFlags} understands, in rmux's spelling."""

_LISTENER_FLAGS = tuple(
    s for s in settings.flagSettings() if s.scope in (settings.LISTENER, settings.INPUT)
)
_GLOBAL_FLAGS = tuple(s for s in settings.flagSettings() if s.scope == settings.GLOBAL)
#: Flags read as paths or names, where an empty value means "not given".
_EMPTY_IS_ABSENT = ("socket", "config", "graphite", "cpuProfile", "requirepassFile")

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
    if value in (0, 1) and isInt(value):
        return bool(value)
    if isinstance(value, str) and value in _TRUE:
        return True
    if isinstance(value, str) and value in _FALSE:
        return False
    raise ConfigError(f"--{name}: must be true or false, got {value!r}")


def _flagInteger(value: object, setting: settings.Setting) -> int:
    if isInt(value):
        return value  # type: ignore[return-value]
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    raise ConfigError(f"--{setting.name}: must be {setting.rule()}, got {value!r}")


def _flagValue(value: object, setting: settings.Setting) -> object:
    """
    One flag's value as the listener builder takes it: the kinds with a
    syntax of their own (booleans, sizes with units, octal modes, backend
    lists) converted, strings checked to be strings.
    """
    name, kind = setting.name, setting.kind
    if kind == settings.BOOLEAN:
        return parseFlagBoolean(value, name)
    if kind == settings.SIZE:
        return parseSize(value, f"--{name}", setting.rule())
    if kind in settings.INTEGER_KINDS:
        return _flagInteger(value, setting)
    if kind == settings.MODE:
        return parseSocketMode(value, "--socketMode")
    if not isinstance(value, str):
        if setting.secret:
            # The type only: the value is a password.
            raise ConfigError(f"--{name}: must be a string, got {type(value).__name__}")
        raise ConfigError(f"--{name}: must be a string, got {value!r}")
    return value.split() if kind == settings.BACKENDS else value


def fromFlags(values: Mapping[str, Any]) -> RmuxConfig:
    """
    Build the configuration from rmux's command-line flags.

    Semantics are rmux's: timeouts in milliseconds, 0 for "not set" (see
    each setting in L{rmux.settings} for what 0 means), C{remoteTimeout}
    for the remote timeouts not given individually, TCP backends before
    unix ones, and C{config} replacing every listener flag while the
    process-wide ones (C{debug}, C{graphite}, ...) still apply.

    Two differences from Go rmux, both fixing traps:
      - the backend lists are split on any run of whitespace, so a double
        space no longer creates an empty, never-connectable backend;
      - the default C{tcpConnections} (L{DEFAULT_TCP_CONNECTIONS}) applies
        only when neither C{tcpConnections} nor C{unixConnections} is
        given; Go rmux adds it even to an explicit C{unixConnections}.

    C{requirepass} may not be empty nor given with C{config} (which would
    replace it without a word); C{socketOwner} is refused without
    C{socket}; C{hash} unless C{distribution} is C{ketama}.  Sizes may
    have a unit, as in C{redis.conf}: C{64mb}.  A backend's weight is
    written C{host:port:weight} (or C{?weight=N} in a URL), and since the
    lists are split on whitespace a name only as C{?name=NAME} in a URL;
    prefix routes and users need the JSON file.

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
    for name in _EMPTY_IS_ABSENT:
        if given.get(name) == "":
            del given[name]
    if "requirepassFile" in given:
        given["requirepass"] = _passwordFromFile(given, "requirepassFile", "requirepass")
    if "config" in given and not isinstance(given["config"], str):
        raise ConfigError(f"--config: must be a string, got {given['config']!r}")
    if "config" in given and "requirepass" in given:
        # The file replaces every listener flag, silently as in Go rmux;
        # silently dropping a password would leave the listener open to an
        # operator who believes it is protected.
        raise ConfigError(
            "--requirepass: not used with --config, which replaces every listener "
            'option; set "requirepass" in the listener objects of the file'
        )
    if "config" in given:
        for setting in _LISTENER_FLAGS:
            if setting.name in given and setting.kind in (settings.STRING, settings.BACKENDS):
                _flagValue(given[setting.name], setting)
        listeners = loadConfigFile(given["config"]).listeners
    else:
        raw = {s.name: _flagValue(given[s.name], s) for s in _LISTENER_FLAGS if s.name in given}
        if not _BACKEND_LISTS & set(raw):
            raw["tcpConnections"] = DEFAULT_TCP_CONNECTIONS.split()
        listeners = (buildListener(raw, Place("", "--%s", given)),)
    try:
        return RmuxConfig(listeners=listeners, **_globals(given))
    except ConfigError as e:
        # There is only one listener on the command line: no need to count.
        message = str(e)
        if "config" not in given and message.startswith("listener 1: "):
            message = message[len("listener 1: "):]
        raise ConfigError(message) from None


#: The settings that say where the backends are: without any of them, Go
#: rmux's default list.
_BACKEND_LISTS = {"tcpConnections", "unixConnections", "cluster", "sentinels", "sentinelMaster"}


def usesDefaultBackends(given: dict[str, Any]) -> bool:
    """
    Whether flags C{given} leave the backends to Go rmux's default list
    (L{DEFAULT_TCP_CONNECTIONS}), which an operator may not expect.
    """
    return given.get("config") is None and not any(given.get(name) for name in _BACKEND_LISTS)


def _passwordFromFile(given: dict[str, Any], fileFlag: str, flag: str) -> str:
    """
    The password in the file C{given[fileFlag]}: its first line, without
    its line ending.  The flag it stands for may not be given too.
    """
    path = given.pop(fileFlag)
    if flag in given:
        raise ConfigError(f"--{fileFlag}: not used with --{flag}; give the password one way")
    try:
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"--{fileFlag}: cannot read {path}: {getattr(e, 'strerror', None) or e}"
        ) from None
    if not password:
        raise ConfigError(f"--{fileFlag}: {path} holds no password")
    return password


def passwordsOnCommandLine(values: Mapping[str, Any]) -> list[str]:
    """
    The flags among C{values} (as L{fromFlags} takes them) that carry a
    password on the command line, where every local user can read it
    (C{ps}, C{/proc/PID/cmdline}).
    """
    found = []
    if values.get("requirepass"):
        found.append("--requirepass")
    for name in ("tcpConnections", "unixConnections"):
        value = values.get(name)
        if isinstance(value, str) and "@" in value and "://" in value:
            found.append(f"--{name}")
    return found


def _globals(given: Mapping[str, Any]) -> dict[str, Any]:
    """
    The process-wide settings among C{given}.
    """
    result: dict[str, Any] = {}
    for setting in _GLOBAL_FLAGS:
        name = setting.name
        if name not in given:
            continue
        value = _flagValue(given[name], setting)
        if name == "graphite":
            value = checkGraphite(value, "--graphite")
        elif not value and setting.kind in settings.INTEGER_KINDS:
            if setting.zero == settings.ZERO_DEFAULT:
                value = setting.default
        result[name] = value
    if "config" in given:
        result["configPath"] = os.fspath(given["config"])
    return result
