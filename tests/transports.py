"""
Test doubles of Twisted's stream transports.
"""

from twisted.internet.testing import StringTransport


class BufferedTransport(StringTransport):
    """
    A string transport with the write buffer of Twisted's stream
    transports (L{rmux.transport.TWISTED_INTERNALS}), which a test sets to
    say what it holds.
    """

    dataBuffer = b""
    offset = 0
    _tempDataLen = 0
    _tempDataBuffer = ()

    def _maybePauseProducer(self):
        pass
