"""
Makes C{twistd rmux} exist.

Plugin discovery imports every module in C{twisted/plugins} whenever any
program looks for plugins, so this one imports nothing of rmux until the
rmux plugin is actually used.  This directory must never get an
C{__init__.py}: that would hide Twisted's own plugins.

Twisted finds this module through its plugin cache, C{dropin.cache} in
the same directory, which it rebuilds when it sees a plugin module newer
than the cache, and saves when it may write there; see
L{rmux.cli.refreshPluginCache} for what happens after C{pip install}.  The
C{rmux} command does not go through plugins at all.
"""

from zope.interface import implementer

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin


@implementer(IServiceMaker, IPlugin)
class RmuxServiceMaker:
    """
    The rmux proxy as a twistd plugin: C{twistd -n rmux --socket=...}.
    """

    tapname = "rmux"
    description = (
        "Redis connection pooler and key-hashing proxy (Go rmux compatible): "
        "clients connect to a local socket, rmux keeps pooled connections to "
        "each Redis backend and hashes each key to its server."
    )

    @property
    def options(self):
        """
        L{rmux.tap.TwistdOptions}, imported only when twistd asks for it.
        """
        from rmux.tap import TwistdOptions

        return TwistdOptions

    def makeService(self, options):
        """
        Build the service; see L{rmux.tap.makeService}.
        """
        from rmux.tap import makeService

        return makeService(options)


serviceMaker = RmuxServiceMaker()
