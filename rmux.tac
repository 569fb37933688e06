# -*- python -*-
"""
rmux built in code: run it with C{twistd -ny rmux.tac}.

This is also the pattern for embedding rmux in an existing Twisted
application: build a config, then attach L{rmux.application.makeService}'s
service to your own service tree.  Edit the addresses below to suit.
"""

from twisted.application.service import Application
from twisted.internet import reactor

from rmux.config import ListenerConfig, RmuxConfig, BackendAddress
from rmux.logs import configureLogging
from rmux.application import makeService

listener = ListenerConfig(
    socket="/tmp/rmux.sock",
    backends=(BackendAddress.fromString("localhost:6379"),),
    poolSize=8,
    remoteReadTimeout=1000,
)

config = RmuxConfig(listeners=(listener,))
# Before twistd begins logging: --debug filtering and the repeat limiter.
configureLogging(config, reactor)

application = Application("rmux")
makeService(config, reactor).setServiceParent(application)
