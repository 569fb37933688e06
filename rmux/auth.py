# -*- test-case-name: tests.test_auth -*-
"""
Client authentication: who may use a listener, checked by rmux itself.

A backend's password is not the client's business: rmux authenticates to
its backends with the credentials in each L{rmux.config.BackendAddress},
and its clients authenticate to rmux with the passwords of their listener.
That way a PHP application holds one password for the sidecar however many
servers (each with its own credentials) sit behind it, and a wrong
password costs a local check, not a backend round trip.

The model is Redis's, so that client libraries need no change:

  - C{requirepass} is the password of Redis's C{default} user, which the
    one-argument C{AUTH password} logs in as;
  - C{users} are ACL-style users (C{AUTH username password}), each with
    one password and, here, no per-command rules;
  - with neither, the C{default} user has Redis's C{nopass}: no
    authentication is required, C{AUTH default <anything>} succeeds and
    the one-argument form is an error (L{NOPASSWORD}).

One deliberate difference: Redis keeps the C{default} user C{nopass}
until it is given a password, so adding ACL users alone leaves the server
open.  Here configuring any user requires authentication, and a listener
with users but no C{requirepass} has its C{default} user disabled (as
Redis's C{user default off resetpass}): C{AUTH x} and C{AUTH default x}
get L{WRONGPASS}, as they do from Redis configured that way.

What the caller (the client protocol) does with L{Authenticator.check}
mirrors Redis 7:

  - before a successful AUTH, any command but AUTH, HELLO and QUIT gets
    L{NOAUTH} when L{Authenticator.required};
  - a failed AUTH does not log the connection out: a client that was
    authenticated stays authenticated as its user;
  - C{AUTH} with no argument is answered C{-ERR wrong number of
    arguments for 'auth' command} and with more than two C{-ERR syntax
    error}, without asking this module.

Nothing here touches the reactor: the delay in L{Authenticator.failureDelay}
is a number of seconds for the caller to wait, with C{callLater}, before it
sends the failure.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, Mapping, Union

__all__ = [
    "Authenticator",
    "NoPasswordConfigured",
    "NOAUTH",
    "WRONGPASS",
    "NOPASSWORD",
    "DEFAULT_USER",
    "FIRST_FAILURE_DELAY",
    "MAX_FAILURE_DELAY",
]

NOAUTH = b"-NOAUTH Authentication required.\r\n"
"""
Redis's reply to a command from a client that has not authenticated, when
authentication is required.
"""

WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
"""
Redis's reply to a failed AUTH, whatever was wrong (unknown user, wrong
password, disabled user): one text for all, so that a client cannot tell
which user names exist.
"""

NOPASSWORD = (
    b"-ERR AUTH <password> called without any password configured for the "
    b"default user. Are you sure your configuration is correct?\r\n"
)
"""
Redis's reply to the one-argument C{AUTH password} when the C{default} user
has no password; see L{NoPasswordConfigured}.
"""

DEFAULT_USER = b"default"
"""The user Redis's one-argument AUTH, and C{requirepass}, are about."""

FIRST_FAILURE_DELAY = 0.05
"""Seconds before the reply to the second consecutive failed AUTH."""

MAX_FAILURE_DELAY = 2.0
"""The most, in seconds, any failed AUTH's reply is held back."""

_Text = Union[str, bytes]


class NoPasswordConfigured(Exception):
    """
    The one-argument C{AUTH password} was used while the C{default} user
    has no password (nothing is configured).  Redis answers this with an
    error rather than C{+OK} or C{WRONGPASS}, to tell the operator that the
    client expects a password the server does not have; the caller should
    send L{NOPASSWORD}.

    @ivar reply: L{NOPASSWORD}, for convenience.
    """

    reply = NOPASSWORD


def _bytes(value: _Text, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    # Name the type only: the value may be a password.
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def _digest(password: bytes) -> bytes:
    """
    A fixed-length stand-in for C{password}.  Comparing digests rather than
    the passwords themselves means the comparison takes the same time
    whatever the length of either side, so timing tells an attacker
    neither how much of a guess was right nor how long the password is.
    """
    return hashlib.sha256(password).digest()


class Authenticator:
    """
    The passwords of one listener, and the decision on each C{AUTH}.

    Passwords are kept only as SHA-256 digests, so neither this object's
    C{repr} nor a debugger's view of it shows them.  (The digest is not
    meant to protect a weak password from someone who can read the
    process's memory: the configuration holds it anyway.)

    @ivar required: Whether clients must authenticate before any other
        command: C{True} as soon as C{requirepass} or any user is
        configured.
    """

    def __init__(
        self,
        requirepass: _Text | None = None,
        users: Mapping[_Text, _Text] | Iterable[tuple[_Text, _Text]] = (),
    ) -> None:
        """
        @param requirepass: The password of the C{default} user, or C{None}.
        @param users: User name to password (a mapping or C{(name,
            password)} pairs).  A user named C{default} is the same as
            C{requirepass}, so the two may not both be given.  C{str}
            values are encoded as UTF-8, the way a client sends them.

        @raise ValueError: For an empty name or password, a user given
            twice, or C{default} given both ways.  Messages never contain
            a password.
        @raise TypeError: For a name or password that is not C{str} or
            C{bytes}.
        """
        pairs = users.items() if isinstance(users, Mapping) else users
        self._digests: dict[bytes, bytes] = {}
        for name, password in pairs:
            nameBytes = _bytes(name, "a user name")
            if not nameBytes:
                raise ValueError("a user name must not be empty")
            if nameBytes in self._digests:
                raise ValueError(f"user {nameBytes!r} is given more than once")
            self._digests[nameBytes] = self._passwordDigest(
                password, f"the password of user {nameBytes!r}"
            )
        if requirepass is not None:
            if DEFAULT_USER in self._digests:
                raise ValueError(
                    "requirepass is the password of the user named 'default'; "
                    "give it once, not both as requirepass and as that user"
                )
            self._digests[DEFAULT_USER] = self._passwordDigest(requirepass, "requirepass")
        self.required = bool(self._digests)

    @staticmethod
    def _passwordDigest(password: _Text, what: str) -> bytes:
        passwordBytes = _bytes(password, what)
        if not passwordBytes:
            raise ValueError(f"{what} must not be empty")
        return _digest(passwordBytes)

    @property
    def acceptsSingleArgument(self) -> bool:
        """
        Whether the one-argument C{AUTH password} is a real attempt (which
        may succeed or fail), rather than the error L{NOPASSWORD}.  It is
        an error exactly when nothing is configured, as in Redis, where it
        is an error while the C{default} user is C{nopass}.
        """
        return self.required

    @property
    def users(self) -> tuple[str, ...]:
        """
        The names of the users that can log in, sorted, C{"default"}
        included when it has a password.  Empty when nothing is configured
        (then only the password-less C{default} exists).
        """
        return tuple(sorted(name.decode("utf-8", "backslashreplace") for name in self._digests))

    def check(self, username: _Text | None, password: _Text) -> bool:
        """
        Decide one C{AUTH}.

        Every path that looks at a password compares two SHA-256 digests
        with L{hmac.compare_digest}, an unknown user against a digest no
        password has, so the time taken does not depend on the password,
        its length, or whether the user exists.

        @param username: The user name of C{AUTH username password}, or
            C{None} for the one-argument C{AUTH password}, which means the
            C{default} user.
        @param password: The password the client sent.

        @return: C{True} if the client is now that user.  With nothing
            configured, C{AUTH default <anything>} is C{True} (Redis's
            C{nopass}) and any other user C{False}.

        @raise NoPasswordConfigured: For the one-argument form when
            nothing is configured (see L{acceptsSingleArgument}).
        """
        if username is None:
            if not self.acceptsSingleArgument:
                raise NoPasswordConfigured()
            name = DEFAULT_USER
        else:
            name = _bytes(username, "the user name")
        candidate = _digest(_bytes(password, "the password"))
        if not self.required:
            return name == DEFAULT_USER
        expected = self._digests.get(name)
        matches = hmac.compare_digest(candidate, expected if expected is not None else _NO_DIGEST)
        return matches and expected is not None

    @staticmethod
    def failureDelay(failures: int) -> float:
        """
        How long to hold back the reply to a failed AUTH, so that guessing
        passwords on one connection is slow while a typo is not.

        The schedule, for the C{n}-th failure in a row on one connection
        (a success resets the count): no delay for the first, then
        L{FIRST_FAILURE_DELAY} (0.05 s), doubling with each further failure
        (0.1, 0.2, 0.4, 0.8, 1.6 s) up to L{MAX_FAILURE_DELAY} (2 s) from
        the eighth on.  A guesser on one connection is thus held to one
        try per 2 s after about 5 s of trying.  Replies are ordered, so the
        caller holding back this reply holds back all later ones too,
        including pipelined guesses.

        This does not limit guessing over many connections at once; a
        sidecar listening on a unix socket or loopback should be guarded
        by who can connect to it (C{socketMode}) first.

        @param failures: The number of consecutive failures on the
            connection, this one included (C{1} for the first).

        @return: Seconds to wait before sending L{WRONGPASS}.
        """
        if failures <= 1:
            return 0.0
        # Bound the exponent: 2.0 ** 10000 overflows, and the cap is
        # reached long before.
        exponent = min(failures - 2, 64)
        return min(MAX_FAILURE_DELAY, FIRST_FAILURE_DELAY * 2.0**exponent)

    def __repr__(self) -> str:
        if not self.required:
            return "<Authenticator: not required (default user nopass)>"
        return f"<Authenticator: required, users={list(self.users)!r}>"


_NO_DIGEST = bytes(32)
"""
What an unknown user's password is compared with, so that the comparison
happens (and takes its usual time) for unknown users too.  The result is
discarded, so it does not matter that some password might hash to it.
"""
