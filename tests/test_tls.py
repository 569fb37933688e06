"""
rmux in front of real TLS-only redis-servers (C{rediss://}), with
certificates the tests make with C{openssl}.
"""

import os
import shutil
import subprocess
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.protocols import portforward
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

    def issue(self, name, altNames="DNS:localhost,IP:127.0.0.1", days=2):
        """
        A certificate and key for C{altNames}, signed by this CA, valid
        from now for C{days} (expired a day ago for C{-1}).

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
                      "-CAcreateserial", "-out", certificate, "-days", str(days),
                      "-extfile", extensions)
        return certificate, key


def startTLSRedis(testCase, certificates, authClients=False, days=2):
    """
    A redis-server that serves TCP only over TLS, on a free port.
    """
    certificate, key = certificates.issue("redis", days=days)
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
    def test_pubSub(self):
        """
        Subscriptions reach a TLS-only server over TLS too: a message
        published through rmux arrives.
        """
        server = startTLSRedis(self, self.certificates)
        rmux = self.rmuxFor(server, tlsCaCertFile=self.certificates.ca)
        client = redisPy(rmux.path)
        self.addCleanup(client.close)

        def exchange():
            pubsub = client.pubsub()
            try:
                pubsub.subscribe("tls:news")
                confirmed = pubsub.get_message(timeout=5)
                count = client.publish("tls:news", "hello")
                return confirmed, count, pubsub.get_message(timeout=5)
            finally:
                pubsub.close()

        confirmed, count, message = yield self.threads.run(exchange)
        self.assertEqual(confirmed["type"], "subscribe")
        self.assertEqual(count, 1)
        self.assertEqual((message["channel"], message["data"]), (b"tls:news", b"hello"))

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
            self.rmuxFor(server, tlsCaCertFile=other.ca),
            "TLS verification failed: certificate verify failed"
        )

    def test_expired(self):
        """
        A server whose certificate has expired is not used, and clients
        are told so.
        """
        server = startTLSRedis(self, self.certificates, days=-1)
        return self.assertRefused(
            self.rmuxFor(server, tlsCaCertFile=self.certificates.ca),
            "TLS verification failed: certificate verify failed",
        )

    def test_wrongName(self):
        server = startTLSRedis(self, self.certificates)
        return self.assertRefused(
            self.rmuxFor(server, tlsCaCertFile=self.certificates.ca,
                         tlsServerName="redis.example"),
            "TLS verification failed: VerificationError",
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

    @inlineCallbacks
    def test_clientCertificateRotation(self):
        """
        A new client certificate, written over the old files, is shown to
        the servers from the next connection on once the files are re-read
        (SIGHUP); until then the old one is.
        """
        server = startTLSRedis(self, self.certificates, authClients=True)
        untrusted = Certificates(self, "another CA").issue("rmux")
        certificate, key = self.certificates.path("client.pem"), self.certificates.path("client.key")
        _install(untrusted, (certificate, key))
        rmux = self.rmuxFor(server, tlsCaCertFile=self.certificates.ca,
                            tlsClientCertFile=certificate, tlsClientKeyFile=key)
        yield self.assertRefused(rmux, "TLS failed")
        _install(self.certificates.issue("rmux"), (certificate, key))
        self.assertTrue(rmux.rereadCertificates())
        client = redisPy(rmux.path)
        self.addCleanup(client.close)
        pong = yield self.threads.run(_eventually, client.ping)
        self.assertTrue(pong)

    @inlineCallbacks
    def test_droppedMidStream(self):
        """
        A backend connection cut in the middle of a reply (the TCP
        connection under TLS lost, no TLS close) fails only the requests
        it carried, with an error; the next request is served whole on a
        new connection.
        """
        server = startTLSRedis(self, self.certificates)
        relay = _CuttingRelay(server.tlsPort)
        port = reactor.listenTCP(0, relay, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(relay.cutAll)
        rmux = startRmux(self, [], unixConnections=None, tlsCaCertFile=self.certificates.ca,
                         tcpConnections="rediss://127.0.0.1:%d" % (port.getHost().port,))
        client = redisPy(rmux.path)
        self.addCleanup(client.close)
        value = os.urandom(4 << 20)
        yield self.threads.run(client.set, "big", value)
        relay.cutAfter = 256 << 10
        import redis

        error = yield self.threads.run(
            lambda: self.assertRaises(redis.ResponseError, client.get, "big"))
        self.assertIn("127.0.0.1:%d" % (port.getHost().port,), str(error))
        self.assertEqual(relay.cuts, 1)
        relay.cutAfter = None
        got = yield self.threads.run(client.get, "big")
        self.assertEqual(got, value)

    def test_mutualTLSWithoutCertificate(self):
        server = startTLSRedis(self, self.certificates, authClients=True)
        return self.assertRefused(
            self.rmuxFor(server, tlsCaCertFile=self.certificates.ca), "TLS failed"
        )


def _install(pair, paths):
    """
    Write a certificate and its key over the files at C{paths}, as an
    operator rotating them would.
    """
    for source, target in zip(pair, paths):
        shutil.copyfile(source, target)


def _eventually(call, tries=50):
    """
    C{call()}, tried again (for up to 5 s) while it fails: a pool that
    could not connect waits before it tries again.
    """
    import redis

    for attempt in range(tries):
        try:
            return call()
        except redis.ResponseError:
            if attempt == tries - 1:
                raise
            time.sleep(0.1)


class _CuttingRelay(portforward.ProxyFactory):
    """
    A TCP relay to a server that, once told (C{cutAfter}), aborts the
    connection when that many more bytes have come from the server:
    TLS lost mid-stream, as when a load balancer drops a connection.
    """

    def __init__(self, port):
        portforward.ProxyFactory.__init__(self, "127.0.0.1", port)
        self.cutAfter = None
        self.cuts = 0
        self.relays = []

    def buildProtocol(self, addr):
        protocol = _CuttingServer()
        protocol.factory = self
        self.relays.append(protocol)
        return protocol

    def cutAll(self):
        for relay in self.relays:
            if relay.transport is not None:
                relay.transport.abortConnection()


class _CuttingClient(portforward.ProxyClient):
    def dataReceived(self, data):
        factory = self.peer.factory
        if factory.cutAfter is not None:
            factory.cutAfter -= len(data)
            if factory.cutAfter <= 0:
                factory.cutAfter = None
                factory.cuts += 1
                self.peer.transport.abortConnection()
                self.transport.abortConnection()
                return
        portforward.ProxyClient.dataReceived(self, data)


class _CuttingClientFactory(portforward.ProxyClientFactory):
    protocol = _CuttingClient


class _CuttingServer(portforward.ProxyServer):
    clientProtocolFactory = _CuttingClientFactory


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
        self.certificate, self.key = self.certificates.issue("rmux")
        self.port = freePort()
        return startRmux(self, [self.server], host="127.0.0.1", tlsPort=str(self.port),
                         tlsCertFile=self.certificate, tlsKeyFile=self.key, **flags)

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

    def servedName(self):
        """
        The common name of the certificate rmux's TLS port shows a new
        connection.
        """
        import socket
        import ssl

        context = ssl.create_default_context(cafile=self.certificates.ca)

        def connect():
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                with context.wrap_socket(s, server_hostname="localhost") as tls:
                    subject = dict(pair[0] for pair in tls.getpeercert()["subject"])
                    return subject["commonName"]

        return self.threads.run(connect)

    @inlineCallbacks
    def test_rotation(self):
        """
        Re-reading the files (SIGHUP) serves new connections the new
        certificate without closing the port; a file that cannot be used
        changes nothing and says which.
        """
        rmux = self.rmux()
        name = yield self.servedName()
        self.assertEqual(name, "rmux")
        _install(self.certificates.issue("rmux-rotated"), (self.certificate, self.key))
        self.assertTrue(rmux.rereadCertificates())
        name = yield self.servedName()
        self.assertEqual(name, "rmux-rotated")
        with open(self.key, "w") as f:
            f.write("not a key\n")
        with self.assertRaises(ConfigError) as caught:
            rmux.rereadCertificates()
        self.assertIn("tlsKeyFile: %s: not a valid key" % (self.key,), str(caught.exception))
        name = yield self.servedName()
        self.assertEqual(name, "rmux-rotated")

    @inlineCallbacks
    def test_hangupRereads(self):
        """
        A reload (what SIGHUP runs) re-reads the TLS files even when the
        listeners come from command-line options, and logs what it did or
        why the running certificates stay.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        from rmux.service import Listeners

        rmux = self.rmux()
        listeners = Listeners(fromFlags({"tcpConnections": "127.0.0.1:6379"}), reactor)
        listeners.listeners.append(rmux)
        lines = []

        def observe(event):
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        _install(self.certificates.issue("rmux-rotated"), (self.certificate, self.key))
        yield listeners.reload()
        self.assertIn("rmux: TLS certificates re-read for %s" % (rmux.listener.name,), lines)
        name = yield self.servedName()
        self.assertEqual(name, "rmux-rotated")
        with open(self.certificate, "w") as f:
            f.write("")
        yield listeners.reload()
        self.assertIn(
            "rmux: TLS certificates not re-read for %s, the running ones stay: "
            "tlsCertFile: %s holds no PEM certificate" % (rmux.listener.name, self.certificate),
            lines,
        )

    def test_needsCertificateAndKey(self):
        with self.assertRaises(ConfigError) as caught:
            fromFlags({"tcpConnections": "127.0.0.1:6379", "tlsPort": "6380"})
        self.assertEqual(str(caught.exception), "--tlsPort: needs tlsCertFile and tlsKeyFile")
