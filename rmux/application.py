# -*- test-case-name: tests.test_workers -*-
"""
The rmux application: what C{twistd rmux}, C{rmux.tac} and programs that
embed rmux run.

Here, above L{rmux.service} and L{rmux.workers}, is where rmux decides
between serving in this process and serving from worker processes, so
that neither of those modules needs the other.
"""

from rmux.service import RmuxService
from rmux.workers.parent import ParentService, workerCount

__all__ = ["makeService"]


def makeService(config, reactor=None):
    """
    Build the rmux service for C{config}.

    This is the public way to embed rmux in a Twisted program::

        from rmux.application import makeService
        from rmux.config import fromFlags

        config = fromFlags({"socket": "/tmp/rmux.sock",
                            "tcpConnections": "127.0.0.1:6379"})
        makeService(config).setServiceParent(application)

    @param config: an L{rmux.config.RmuxConfig}.
    @param reactor: the reactor to run on; the global one if L{None}.
    @return: an L{IService}: an L{RmuxService}, or with C{maxProcesses}
        above 1 a L{ParentService} whose worker processes each run the
        listeners.
    """
    if reactor is None:
        from twisted.internet import reactor
    if workerCount(config) > 1:
        return ParentService(config, reactor)
    return RmuxService(config, reactor)
