"""
rmux in front of real TLS-only redis-servers (C{rediss://}), with
certificates the tests make with C{openssl}.
"""

import os
import shutil
import subprocess
import tempfile

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rmux.config import BackendAddress, ConfigError, fromFlags
from rmux.tls import BackendTLS
from tests.redisserver import freePort, startRedis
from tests.test_integration import ThreadedClients, startRmux

OPENSSL = shutil.which("openssl")


class Certificates:
    """
    A CA and certificates it signed, in a temporary directory.
    """

    def __init__(self, testCase, caName="rmux test CA"):
        self.directory = tempfile.mkdtemp(prefix="rmux-tls-")
        testCase.addCleanup(shutil.rmtree, self.directory, True)
        self.ca = self.path("ca.pem")
        self.caKey = self.path("ca.key")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", self.caKey,
                      "-out", self.ca, "-days", "2", "-subj", "/CN=" + caName)

    def path(self, name):
        return os.path.join(self.directory, name)

    def _openssl(self, *arguments):
        subprocess.run([OPENSSL] + list(arguments), check=True, capture_output=True)

    def issue(self, name, altNames="DNS:localhost,IP:127.0.0.1"):
        """
        A certificate and key for C{altNames}, signed by this CA.

        @return: the paths of the certificate and of its key.
        """
        key, request, certificate = (self.path(name + suffix)
                                     for suffix in (".key", ".csr", ".pem"))
        extensions = self.path(name + ".ext")
        with open(extensions, "w") as f:
            f.write("subjectAltName=%s\n" % (altNames,))
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                      "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=" + name)
        self._openssl("x509", "-req", "-in", request, "-CA", self.ca, "-CAkey", self.caKey,
                      "-CAcreateserial", "-out", certificate, "-days", "2",
                      "-extfile", extensions)
        return certificate, key


def startTLSRedis(testCase, certificates, authClients=False):
    """
    A redis-server that serves TCP only over TLS, on a free port.
    """
    certificate, key = certificates.issue("redis")
    port = freePort()
    server = startRedis(testCase, args=[
        "--tls-port", str(port), "--tls-cert-file", certificate, "--tls-key-file", key,
        "--tls-ca-cert-file", certificates.ca,
        "--tls-auth-clients", "yes" if authClients else "no",
    ])
    server.tlsPort = port
    return server


def redisPy(path):
    import redis

    return redis.Redis(unix_socket_path=path, socket_timeout=10)


class TLSBackendTests(TestCase):
    if OPENSSL is None:
        skip = "openssl is not installed"

    def setUp(self):
        self.certificates = Certificates(self)
        self.threads = ThreadedClients(self, size=2)

    def rmuxFor(self, server, **flags):
        values = {"tcpConnections": "rediss://127.0.0.1:%d" % (server.tlsPort,),
                  "unixConnections": None}
        values.update(flags)
        values = {k: v for k, v in values.items() if v is not None}
        return startRmux(self, [], **values)

    @inlineCallbacks
    def test_verified(self):
        """
        A plain client of rmux's socket reaches a TLS-only server, verified
        against the CA given.
        """
        server = startTLSRedis(self, self.certificates)
        rmux = self.rmuxFor(server, tlsCaCertFile=self.certificates.ca)
        client = redisPy(rmux.path)
        self.addCleanup(client.close)

        def exchange():
            client.set("tls:key", b"x" * 100000)
            return client.get("tls:key")

        value = yield self.threads.run(exchange)
        self.assertEqual(value, b"x" * 100000)

    @inlineCallbacks
    def assertRefused(self, rmux, why):
        client = redisPy(rmux.path)
        self.addCleanup(client.close)
        import redis

        error = yield self.threads.run(
            lambda: self.assertRaises(redis.ResponseError, client.get, "k")
        )
        self.assertIn("backend 127.0.0.1:", str(error))
        self.assertIn(why, str(error))

    def test_unknownCA(self):
        """
        A server whose certificate does not chain to the CA given is not
        used: clients get an error saying why.
        """
        server = startTLSRedis(self, self.certificates)
        other = Certificates(self, "another CA")
        return self.assertRefused(
            self.rmuxFor(server, tlsCaCertFile=other.ca), "certificate verify failed"
        )

    def test_wrongName(self):
        server = startTLSRedis(self, self.certificates)
        return self.assertRefused(
            self.rmuxFor(server, tlsCaCertFile=self.certificates.ca,
                         tlsServerName="redis.example"),
            "redis.example",
        )

    @inlineCallbacks
    def test_skipVerify(self):
        """
        With verification off, a certificate from an unknown CA is taken.
        """
        server = startTLSRedis(self, self.certificates)
        other = Certificates(self, "another CA")
        rmux = self.rmuxFor(server, tlsCaCertFile=other.ca, tlsSkipVerify="true")
        client = redisPy(rmux.path)
        self.addCleanup(client.close)
        pong = yield self.threads.run(client.ping)
        self.assertTrue(pong)

    @inlineCallbacks
    def test_mutualTLS(self):
        """
        A server that asks for a client certificate gets rmux's.
        """
        server = startTLSRedis(self, self.certificates, authClients=True)
        certificate, key = self.certificates.issue("rmux")
        rmux = self.rmuxFor(server, tlsCaCertFile=self.certificates.ca,
                            tlsClientCertFile=certificate, tlsClientKeyFile=key)
        client = redisPy(rmux.path)
        self.addCleanup(client.close)
        pong = yield self.threads.run(client.ping)
        self.assertTrue(pong)

    def test_mutualTLSWithoutCertificate(self):
        server = startTLSRedis(self, self.certificates, authClients=True)
        return self.assertRefused(
            self.rmuxFor(server, tlsCaCertFile=self.certificates.ca), "TLS failed"
        )


class TLSConfigTests(SynchronousTestCase):
    def test_rediss(self):
        address = BackendAddress.fromString("rediss://:pw@cache.example:6380/2")
        self.assertEqual(
            (address.tls, address.host, address.port, address.db, str(address)),
            (True, "cache.example", 6380, 2, "cache.example:6380"),
        )
        self.assertFalse(BackendAddress.fromString("redis://cache.example").tls)

    def test_missingFiles(self):
        """
        A TLS file that cannot be read is refused at start, named.
        """
        missing = self.mktemp()
        for flag in ("tlsCaCertFile",):
            with self.assertRaises(ConfigError) as caught:
                fromFlags({"tcpConnections": "rediss://127.0.0.1:6380", flag: missing})
            self.assertEqual(
                str(caught.exception),
                "--%s: cannot read %s: No such file or directory" % (flag, missing),
            )
        with self.assertRaises(ConfigError) as caught:
            fromFlags({"tcpConnections": "rediss://127.0.0.1:6380",
                       "tlsClientCertFile": missing})
        self.assertIn("tlsClientCertFile and tlsClientKeyFile go together",
                      str(caught.exception))

    def test_notACertificate(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("hello\n")
        with self.assertRaises(ConfigError) as caught:
            BackendTLS(caFile=path)
        self.assertEqual(str(caught.exception), "tlsCaCertFile: %s holds no PEM certificate"
                         % (path,))


REDIS_CLI = shutil.which("redis-cli")


class TLSListenerTests(TestCase):
    """
    Clients connecting to rmux over TLS (C{--tlsPort}), with redis-cli.
    """

    if OPENSSL is None or REDIS_CLI is None:
        skip = "openssl or redis-cli is not installed"

    def setUp(self):
        self.certificates = Certificates(self)
        self.server = startRedis(self)
        self.threads = ThreadedClients(self, size=2)

    def rmux(self, **flags):
        certificate, key = self.certificates.issue("rmux")
        self.port = freePort()
        return startRmux(self, [self.server], host="127.0.0.1", tlsPort=str(self.port),
                         tlsCertFile=certificate, tlsKeyFile=key, **flags)

    def cli(self, *arguments, certificate=None):
        command = [REDIS_CLI, "--tls", "--cacert", self.certificates.ca,
                   "-h", "127.0.0.1", "-p", str(self.port)]
        if certificate is not None:
            command += ["--cert", certificate[0], "--key", certificate[1]]
        return self.threads.run(
            subprocess.run, command + list(arguments), capture_output=True, text=True,
            timeout=20,
        )

    @inlineCallbacks
    def test_redisCli(self):
        """
        redis-cli over TLS is served, and what it sets is what a client of
        the unix socket reads.
        """
        rmux = self.rmux()
        result = yield self.cli("SET", "over:tls", "yes")
        self.assertEqual(result.stdout.strip(), "OK", result.stderr)
        client = redisPy(rmux.path)
        self.addCleanup(client.close)
        value = yield self.threads.run(client.get, "over:tls")
        self.assertEqual(value, b"yes")

    @inlineCallbacks
    def test_bigValue(self):
        """
        A 2 MB value goes through the TLS listener both ways, byte for
        byte (rmux's in-place receiving of big values is not used there).
        """
        import redis

        self.rmux()
        client = redis.Redis(host="127.0.0.1", port=self.port, ssl=True,
                             ssl_ca_certs=self.certificates.ca, socket_timeout=10)
        self.addCleanup(client.close)
        value = os.urandom(2 << 20)

        def exchange():
            client.set("big", value)
            return client.get("big")

        got = yield self.threads.run(exchange)
        self.assertEqual(got, value)

    @inlineCallbacks
    def test_plainClientGetsNothing(self):
        """
        A plain-text client of the TLS port is not served.
        """
        import socket

        self.rmux()

        def plain():
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"PING\r\n")
                try:
                    return s.recv(100)
                except OSError:
                    return b""

        answer = yield self.threads.run(plain)
        self.assertNotIn(b"PONG", answer)

    @inlineCallbacks
    def test_authClients(self):
        """
        With tlsAuthClients, a client without a certificate of the CA is
        refused, one with it is served.
        """
        self.rmux(tlsAuthClients="true", tlsCaCertFile=self.certificates.ca)
        refused = yield self.cli("PING")
        self.assertNotEqual(refused.stdout.strip(), "PONG")
        served = yield self.cli("PING", certificate=self.certificates.issue("client"))
        self.assertEqual(served.stdout.strip(), "PONG", served.stderr)

    def test_needsCertificateAndKey(self):
        with self.assertRaises(ConfigError) as caught:
            fromFlags({"tcpConnections": "127.0.0.1:6379", "tlsPort": "6380"})
        self.assertEqual(str(caught.exception), "--tlsPort: needs tlsCertFile and tlsKeyFile")
