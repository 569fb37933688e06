# -*- test-case-name: tests.test_tls -*-
"""
TLS toward the backends (C{rediss://}) and for clients (C{--tlsPort}), with
Twisted's TLS (pyOpenSSL and service_identity, the C{twisted[tls]} extra).

A TLS backend connection is Twisted's own L{TLSMemoryBIOProtocol} over a
plain TCP connection: rmux's faster transports (L{rmux.transport}) write to
and read from the socket directly, which TLS must not bypass, so they are
not used for it.  The connection's protocol is the same
L{rmux.pool.BackendProtocol} as for any backend.
"""

import re

from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet.endpoints import (
    HostnameEndpoint, SSL4ServerEndpoint, wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.ssl import (
    Certificate, CertificateOptions, KeyPair, PrivateCertificate, optionsForClientTLS,
    platformTrust, trustRootFromCertificates,
)
from zope.interface import implementer

from rmux.config import ConfigError
from rmux.transport import connectQuietly

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def _read(path, name):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{name}: cannot read {path}: {e.strerror}") from None


def _certificates(path, name):
    pems = _PEM_CERTIFICATE.findall(_read(path, name))
    if not pems:
        raise ConfigError(f"{name}: {path} holds no PEM certificate")
    try:
        return [Certificate.loadPEM(pem) for pem in pems]
    except Exception as e:
        raise ConfigError(f"{name}: {path}: not a valid certificate ({e})") from None


def _privateCertificate(certFile, keyFile, certName, keyName):
    """
    The certificate in C{certFile} with its key in C{keyFile}.

    @raise ConfigError: either file unreadable, or the key not the
        certificate's, named by its setting.
    """
    certificate = _certificates(certFile, certName)[0]
    try:
        key = KeyPair.load(_read(keyFile, keyName), FILETYPE_PEM)
        return PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"{keyName}: {keyFile}: not a valid key for {certFile} ({e})"
        ) from None


class BackendTLS:
    """
    How one listener's pools reach their C{rediss://} backends: the CAs
    their certificates must chain to, the certificate rmux shows them, the
    name they are checked against.
    """

    def __init__(self, caFile=None, certFile=None, keyFile=None, serverName=None,
                 skipVerify=False):
        self.serverName = serverName
        self.skipVerify = skipVerify
        self.trustRoot = (
            trustRootFromCertificates(_certificates(caFile, "tlsCaCertFile"))
            if caFile is not None else platformTrust()
        )
        self.clientCertificate = None
        if certFile is not None:
            self.clientCertificate = _privateCertificate(
                certFile, keyFile, "tlsClientCertFile", "tlsClientKeyFile"
            )

    @classmethod
    def fromListener(cls, listener):
        """
        The TLS settings of C{listener} (an L{rmux.config.ListenerConfig}).

        @raise ConfigError: a file that cannot be read or does not hold
            what it should, named.
        """
        return cls(
            listener.tlsCaCertFile, listener.tlsClientCertFile, listener.tlsClientKeyFile,
            listener.tlsServerName, listener.tlsSkipVerify,
        )

    def connectionCreator(self, host):
        """
        The client TLS options for a connection to C{host}.
        """
        if self.skipVerify:
            extra = {}
            if self.clientCertificate is not None:
                extra = {"privateKey": self.clientCertificate.privateKey.original,
                         "certificate": self.clientCertificate.original}
            return CertificateOptions(verify=False, **extra)
        return optionsForClientTLS(
            self.serverName or host, trustRoot=self.trustRoot,
            clientCertificate=self.clientCertificate,
        )

    def connect(self, reactor, address, protocol, timeout=3600):
        """
        Open a TLS connection to C{address} for C{protocol}.

        @param timeout: seconds before the TCP connect gives up (a pool
            keeps its own deadline, so by default an hour).
        @return: a cancellable L{Deferred} firing with C{protocol} once the
            TCP connection is made (the handshake follows; what is written
            meanwhile waits for it).
        """
        endpoint = wrapClientTLS(
            self.connectionCreator(address.host),
            HostnameEndpoint(reactor, address.host, address.port, timeout=timeout),
        )
        return connectQuietly(endpoint, protocol)


def _serverOptions(listener):
    """
    The TLS options of C{listener}'s C{tlsPort}, from its files.

    @raise ConfigError: a certificate or key that cannot be read or used,
        named.
    """
    own = _privateCertificate(
        listener.tlsCertFile, listener.tlsKeyFile, "tlsCertFile", "tlsKeyFile"
    )
    options = {"privateKey": own.privateKey.original, "certificate": own.original}
    if listener.tlsAuthClients:
        options.update(
            verify=True, requireCertificate=True,
            caCerts=[c.original for c in _certificates(listener.tlsCaCertFile,
                                                       "tlsCaCertFile")],
        )
    return CertificateOptions(**options)


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """
    The context of a listener's C{tlsPort}: its certificate, key and client
    CAs, which L{reread} replaces without closing the port.  Each new
    connection takes the context in force when it is accepted; those
    already made keep theirs, as with Redis's own rotation.
    """

    def __init__(self, listener):
        """
        @raise ConfigError: see L{_serverOptions}.
        """
        self.options = _serverOptions(listener)

    def getContext(self):
        return self.options.getContext()

    def reread(self, listener):
        """
        Read the files again; if one cannot be used, keep what is in force.

        @raise ConfigError: naming the file, the running context kept.
        """
        self.options = _serverOptions(listener)


def serverEndpoint(reactor, listener, backlog, tls):
    """
    The TLS listening endpoint of C{listener}'s C{tlsPort}, on its host,
    with the context of C{tls} (a L{ServerTLS}).  It is Twisted's own TLS
    port, not rmux's faster transports (see the module docstring).
    """
    return SSL4ServerEndpoint(
        reactor, listener.tlsPort, tls, backlog=backlog, interface=listener.host,
    )
