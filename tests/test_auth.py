"""
Tests for L{rmux.auth}: the passwords of a listener and the decision on
each AUTH, checked against Redis's own behaviour.
"""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rmux import auth
from rmux.auth import (
    MAX_FAILURE_DELAY,
    NOAUTH,
    NOPASSWORD,
    WRONGPASS,
    Authenticator,
    NoPasswordConfigured,
)

from tests.redisserver import REDIS_SERVER, startRedis


def reply(authenticator: Authenticator, *arguments: bytes) -> bytes:
    """
    What Redis would answer to C{AUTH *arguments}, going by
    C{authenticator}: the decision the client protocol turns into bytes.
    """
    username, password = (None, arguments[0]) if len(arguments) == 1 else arguments
    try:
        accepted = authenticator.check(username, password)
    except NoPasswordConfigured as e:
        return e.reply
    return b"+OK\r\n" if accepted else WRONGPASS


class ConstantsTests(SynchronousTestCase):
    """
    The replies are Redis 7's, byte for byte (see also L{RedisConformanceTests}).
    """

    def test_texts(self):
        self.assertEqual(NOAUTH, b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(
            WRONGPASS, b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        )
        self.assertEqual(
            NOPASSWORD,
            b"-ERR AUTH <password> called without any password configured for the "
            b"default user. Are you sure your configuration is correct?\r\n",
        )
        self.assertIs(NoPasswordConfigured.reply, NOPASSWORD)


class NothingConfiguredTests(SynchronousTestCase):
    """
    Without passwords the C{default} user is Redis's C{nopass}.
    """

    def setUp(self):
        self.auth = Authenticator()

    def test_notRequired(self):
        self.assertFalse(self.auth.required)
        self.assertFalse(self.auth.acceptsSingleArgument)
        self.assertEqual(self.auth.users, ())

    def test_defaultWithAnything(self):
        for password in ("", "x", b"\xff", "anything at all"):
            self.assertTrue(self.auth.check("default", password))
            self.assertTrue(self.auth.check(b"default", password))

    def test_singleArgumentIsAnError(self):
        self.assertRaises(NoPasswordConfigured, self.auth.check, None, "x")
        self.assertEqual(reply(self.auth, b"x"), NOPASSWORD)

    def test_otherUsers(self):
        self.assertFalse(self.auth.check("app", "x"))
        self.assertFalse(self.auth.check("Default", "x"))

    def test_emptyArguments(self):
        """
        An empty mapping or C{requirepass=None} is nothing configured.
        """
        self.assertFalse(Authenticator(None, {}).required)
        self.assertFalse(Authenticator(users=[]).required)


class RequirepassTests(SynchronousTestCase):
    """
    C{requirepass} is the C{default} user's password.
    """

    def setUp(self):
        self.auth = Authenticator(requirepass="s3cret")

    def test_required(self):
        self.assertTrue(self.auth.required)
        self.assertTrue(self.auth.acceptsSingleArgument)
        self.assertEqual(self.auth.users, ("default",))

    def test_singleArgument(self):
        self.assertTrue(self.auth.check(None, "s3cret"))
        self.assertTrue(self.auth.check(None, b"s3cret"))
        self.assertFalse(self.auth.check(None, "s3cret "))
        self.assertFalse(self.auth.check(None, "s3cre"))
        self.assertFalse(self.auth.check(None, ""))

    def test_defaultUser(self):
        self.assertTrue(self.auth.check("default", "s3cret"))
        self.assertTrue(self.auth.check(b"default", b"s3cret"))
        self.assertFalse(self.auth.check("default", "S3CRET"))

    def test_unknownUser(self):
        self.assertFalse(self.auth.check("app", "s3cret"))
        self.assertFalse(self.auth.check("", "s3cret"))

    def test_unicode(self):
        """
        A C{str} password is what a client sends as UTF-8.
        """
        auth = Authenticator(requirepass="p\u00e4ss")
        self.assertTrue(auth.check(None, "p\u00e4ss".encode("utf-8")))
        self.assertTrue(auth.check(None, "p\u00e4ss"))
        self.assertFalse(auth.check(None, "p\u00e4ss".encode("latin-1")))

    def test_bytesPassword(self):
        auth = Authenticator(requirepass=b"\x00\xff")
        self.assertTrue(auth.check(None, b"\x00\xff"))
        self.assertFalse(auth.check(None, b"\x00"))

    @settings(max_examples=100, deadline=None)
    @given(secret=st.binary(min_size=1, max_size=40), guess=st.binary(max_size=40))
    def test_onlyThePassword(self, secret, guess):
        auth = Authenticator(requirepass=secret)
        self.assertTrue(auth.check(None, secret))
        self.assertEqual(auth.check(None, guess), guess == secret)
        self.assertEqual(auth.check("default", guess), guess == secret)


class UsersTests(SynchronousTestCase):
    """
    ACL-style users, with and without C{requirepass}.
    """

    def test_users(self):
        auth = Authenticator(users={"app": "a-pw", "cron": "c-pw"})
        self.assertTrue(auth.required)
        self.assertEqual(auth.users, ("app", "cron"))
        self.assertTrue(auth.check("app", "a-pw"))
        self.assertTrue(auth.check(b"cron", b"c-pw"))
        self.assertFalse(auth.check("app", "c-pw"))
        self.assertFalse(auth.check("APP", "a-pw"))

    def test_defaultDisabledWithoutRequirepass(self):
        """
        Users alone require authentication, and the C{default} user is
        disabled (Redis's C{user default off resetpass}): both AUTH forms
        fail for it, rather than the one-argument form being an error.
        """
        auth = Authenticator(users={"app": "a-pw"})
        self.assertTrue(auth.acceptsSingleArgument)
        self.assertFalse(auth.check(None, "a-pw"))
        self.assertFalse(auth.check("default", "a-pw"))
        self.assertFalse(auth.check("default", ""))
        self.assertEqual(reply(auth, b"a-pw"), WRONGPASS)

    def test_withRequirepass(self):
        auth = Authenticator(requirepass="d-pw", users=[("app", "a-pw")])
        self.assertEqual(auth.users, ("app", "default"))
        self.assertTrue(auth.check(None, "d-pw"))
        self.assertTrue(auth.check("app", "a-pw"))
        self.assertFalse(auth.check("app", "d-pw"))
        self.assertFalse(auth.check(None, "a-pw"))

    def test_defaultAsAUser(self):
        """
        A user named C{default} is C{requirepass} by another name.
        """
        auth = Authenticator(users={"default": "d-pw"})
        self.assertTrue(auth.check(None, "d-pw"))
        self.assertTrue(auth.check("default", "d-pw"))
        self.assertEqual(
            [auth.check(None, "x"), auth.check("default", "x")],
            [Authenticator(requirepass="d-pw").check(None, "x")] * 2,
        )

    def test_bytesNames(self):
        auth = Authenticator(users={b"app": b"a-pw"})
        self.assertTrue(auth.check("app", "a-pw"))
        self.assertEqual(auth.users, ("app",))


class ConstructionErrorsTests(SynchronousTestCase):
    """
    Bad input is refused, and no message shows a password.
    """

    def assertRefused(self, exception, fragment, *args, **kwargs):
        error = self.assertRaises(exception, Authenticator, *args, **kwargs)
        self.assertIn(fragment, str(error))
        self.assertNotIn("hunter2", str(error))
        return error

    def test_defaultTwice(self):
        self.assertRefused(
            ValueError,
            "requirepass is the password of the user named 'default'",
            requirepass="hunter2",
            users={"default": "hunter2"},
        )

    def test_userTwice(self):
        self.assertRefused(
            ValueError, "user b'app' is given more than once", users=[("app", "a"), (b"app", "b")]
        )

    def test_empty(self):
        self.assertRefused(ValueError, "requirepass must not be empty", requirepass="")
        self.assertRefused(ValueError, "a user name must not be empty", users={"": "hunter2"})
        self.assertRefused(
            ValueError, "the password of user b'app' must not be empty", users={"app": b""}
        )

    def test_types(self):
        self.assertRefused(TypeError, "requirepass must be str or bytes, not int", requirepass=7)
        self.assertRefused(
            TypeError,
            "the password of user b'app' must be str or bytes, not list",
            users={"app": ["hunter2"]},
        )
        self.assertRefused(
            TypeError, "a user name must be str or bytes, not NoneType", users={None: "hunter2"}
        )
        error = self.assertRaises(TypeError, Authenticator(requirepass="x").check, None, 1234)
        self.assertEqual(str(error), "the password must be str or bytes, not int")


class RedactionTests(SynchronousTestCase):
    """
    Neither C{repr} nor the object's state shows a password.
    """

    def test_repr(self):
        auth = Authenticator(requirepass="hunter2", users={"app": "s3cret"})
        self.assertEqual(repr(auth), "<Authenticator: required, users=['app', 'default']>")
        self.assertEqual(
            repr(Authenticator()), "<Authenticator: not required (default user nopass)>"
        )

    def test_noPlainPasswordsKept(self):
        auth = Authenticator(requirepass="hunter2", users={"app": "s3cret"})
        state = repr(vars(auth))
        for secret in ("hunter2", "s3cret", "hunter2".encode().hex()):
            self.assertNotIn(secret, state)


class _RecordingHMAC:
    """
    Stands in for the L{hmac} module in L{rmux.auth}, recording what
    L{compare_digest} compares.
    """

    def __init__(self):
        self.calls = []

    def compare_digest(self, a, b):
        self.calls.append((a, b))
        return a == b


class ConstantTimeTests(SynchronousTestCase):
    """
    Every decision about a configured password is one
    L{hmac.compare_digest} of two 32-byte digests, whatever was sent.
    """

    def test_fixedLengthComparison(self):
        recorder = _RecordingHMAC()
        self.patch(auth, "hmac", recorder)
        authenticator = Authenticator(requirepass="hunter2", users={"app": "s3cret"})
        attempts = [
            (None, "hunter2"),
            (None, "h"),
            (None, "hunter2" * 100),
            ("default", ""),
            ("app", "s3cret"),
            ("app", "s3cret!"),
            ("nobody", "hunter2"),
            ("nobody", "x" * 1000),
        ]
        results = [authenticator.check(*attempt) for attempt in attempts]
        self.assertEqual(results, [True, False, False, False, True, False, False, False])
        self.assertEqual(len(recorder.calls), len(attempts))
        for a, b in recorder.calls:
            self.assertEqual((len(a), len(b)), (32, 32))

    def test_unknownUserNeverMatches(self):
        """
        The stand-in digest an unknown user is compared with never lets
        anyone in, even a password that hashed to it.
        """
        recorder = _RecordingHMAC()
        recorder.compare_digest = lambda a, b: True
        self.patch(auth, "hmac", recorder)
        self.assertFalse(Authenticator(requirepass="x").check("nobody", "x"))


class FailureDelayTests(SynchronousTestCase):
    """
    Tests for L{Authenticator.failureDelay}.
    """

    def test_schedule(self):
        delays = [Authenticator.failureDelay(n) for n in range(0, 11)]
        self.assertEqual(delays, [0.0, 0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])

    def test_firstFailureFree(self):
        """
        A typo costs nothing: the first failure is answered at once.
        """
        self.assertEqual(Authenticator(requirepass="x").failureDelay(1), 0.0)

    def test_capped(self):
        for failures in (100, 10**6, 10**20):
            self.assertEqual(Authenticator.failureDelay(failures), MAX_FAILURE_DELAY)

    def test_bruteForceCost(self):
        """
        A thousand guesses on one connection take over half an hour.
        """
        total = sum(Authenticator.failureDelay(n) for n in range(1, 1001))
        self.assertGreater(total, 1800)


class RedisConformanceTests(SynchronousTestCase):
    """
    L{Authenticator}'s decisions, turned into replies, are the ones a real
    redis-server gives for the same configuration.
    """

    def setUp(self):
        if REDIS_SERVER is None:
            raise SkipTest("redis-server is not installed")
        # Started without a password (its start-up check is a PING), then
        # configured over a connection that stays logged in as "admin".
        self.server = startRedis(self)
        self.admin = self.connect()
        self.addCleanup(self.admin.close)
        self.send(self.admin, b"ACL", b"SETUSER", b"admin", b"on", b">admin-pw", b"~*", b"+@all")
        self.assertEqual(self.send(self.admin, b"AUTH", b"admin", b"admin-pw"), b"+OK\r\n")

    def connect(self):
        connection = socket.socket(socket.AF_UNIX)
        connection.settimeout(5)
        connection.connect(self.server.path)
        return connection

    def send(self, connection, *arguments):
        request = b"*%d\r\n" % (len(arguments),) + b"".join(
            b"$%d\r\n%s\r\n" % (len(argument), argument) for argument in arguments
        )
        connection.sendall(request)
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer

    def configure(self, *commands):
        for command in commands:
            self.assertEqual(self.send(self.admin, *command), b"+OK\r\n", command)

    def assertSameAsRedis(self, authenticator):
        attempts = [
            (b"x",),
            (b"d-pw",),
            (b"a-pw",),
            (b"default", b"x"),
            (b"default", b"d-pw"),
            (b"app", b"a-pw"),
            (b"app", b"d-pw"),
            (b"nobody", b"x"),
        ]
        for attempt in attempts:
            with self.connect() as client:
                unauthenticated = self.send(client, b"GET", b"k")
                self.assertEqual(
                    unauthenticated == NOAUTH, authenticator.required, (attempt, unauthenticated)
                )
                self.assertEqual(
                    reply(authenticator, *attempt),
                    self.send(client, b"AUTH", *attempt),
                    attempt,
                )

    def test_nothingConfigured(self):
        self.assertSameAsRedis(Authenticator())

    def test_requirepass(self):
        self.configure((b"CONFIG", b"SET", b"requirepass", b"d-pw"))
        self.assertSameAsRedis(Authenticator(requirepass="d-pw"))

    def test_requirepassAndUsers(self):
        self.configure(
            (b"CONFIG", b"SET", b"requirepass", b"d-pw"),
            (b"ACL", b"SETUSER", b"app", b"on", b">a-pw", b"~*", b"+@all"),
        )
        self.assertSameAsRedis(Authenticator(requirepass="d-pw", users={"app": "a-pw"}))

    def test_usersOnly(self):
        """
        Users without C{requirepass} behave as Redis with the C{default}
        user switched off.
        """
        self.configure(
            (b"ACL", b"SETUSER", b"app", b"on", b">a-pw", b"~*", b"+@all"),
            (b"ACL", b"SETUSER", b"default", b"off", b"resetpass"),
        )
        self.assertSameAsRedis(Authenticator(users={"app": "a-pw"}))

    def test_failedAuthKeepsUser(self):
        """
        Redis does not log a connection out on a failed AUTH; the module
        docstring tells the caller to do the same.
        """
        self.configure((b"CONFIG", b"SET", b"requirepass", b"d-pw"))
        with self.connect() as client:
            self.assertEqual(self.send(client, b"AUTH", b"d-pw"), b"+OK\r\n")
            self.assertEqual(self.send(client, b"AUTH", b"wrong"), WRONGPASS)
            self.assertEqual(self.send(client, b"GET", b"k"), b"$-1\r\n")
