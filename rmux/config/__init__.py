# -*- test-case-name: tests.test_config -*-
"""
rmux's configuration: its command-line flags and its JSON config file, turned
into validated, immutable objects.

Operators who run Go rmux today must be able to bring their flags and their
JSON files over unchanged, so the field names, the units (integer
milliseconds) and the "0 means not set" rule are rmux's.  Where Go rmux
silently does something useless (listening on a random port, ignoring a
misspelt field, creating an empty backend from a double space) this module
refuses with a L{ConfigError} that names the place, the field and the
problem, because a proxy that starts with the wrong backends is worse than
one that does not start.

Nothing here touches the reactor or the network: the service is built from
the objects defined here by L{rmux.service}.

Beyond Go rmux's fields, a listener has (see L{ListenerConfig} for each):

  - key placement: C{distribution} (C{"rmux"}, Go rmux's slot table, or
    C{"ketama"}, twemproxy's consistent hashing), C{hash} (ketama's key
    hash), C{hashTag} (such as C{"{}"}), and per backend a C{weight} and a
    C{name} for ketama, written in twemproxy's C{host:port:weight name}
    syntax or as a JSON object;
  - C{routes} (JSON only): Envoy-style prefix routes, each a
    L{RouteConfig} with its own backends, the listener's own backends
    taking the keys no prefix matches;
  - health checks: C{healthInterval}, C{healthTimeout}, C{healthFailures},
    C{healthSuccesses} and C{startupWait};
  - C{allowFlush}, which lets FLUSHDB/FLUSHALL reach every server;
  - client authentication, checked by rmux itself (L{rmux.auth}):
    C{requirepass}, Redis's name for the C{default} user's password, and
    (JSON only) C{users}, ACL-style C{{"name": ..., "password": ...}}
    objects;
  - dedicated connections for transactions and blocking commands:
    C{maxPinned} per backend server and C{pinnedWait};
  - limits on clients, with Redis's defaults: C{maxClients} (Redis's
    C{maxclients}), C{clientOutputLimit} (the unsent replies a client may
    have), and the request parser's C{maxBulkLength} (Redis's
    C{proto-max-bulk-len}), C{maxArguments} and C{maxInlineLength};
  - C{socketOwner}, the owner of the unix socket file;
  - C{shutdownTimeout}, how long a SIGTERM lets clients collect the
    replies they are owed.

Sizes in bytes (C{clientOutputLimit}, C{maxBulkLength},
C{maxInlineLength}) may be written with a unit in a flag or a JSON string,
as in C{redis.conf}: C{"64mb"}, C{"1gb"} (see L{_parseSize}).

Passwords, the clients' and the backends', never appear in a C{repr()}, a
L{ConfigError} or C{--help}.  A backend's credentials go in its URL
(C{redis://user:password@host/db}) or, in the JSON file, in the
C{username}, C{password} and C{db} fields of a backend object.

Every setting is defined once, in L{rmux.settings}: its default, what 0
means, its range and its help.  The modules of this package, from the
outside in:

  - L{rmux.config.flags} (L{fromFlags}) and L{rmux.config.jsonfile}
    (L{fromJSON}, L{loadConfigFile}) read rmux's spellings: strings, C{0}
    for "use the default", C{remoteTimeout} as a fallback for the three
    individual remote timeouts, two backend lists;
  - L{rmux.config.build} turns one listener's values, from either, into
    a L{ListenerConfig};
  - L{rmux.config.model}: L{RmuxConfig}, L{ListenerConfig},
    L{RouteConfig} and L{UserConfig} hold the I{effective} values (a pool
    size of 20, not 0) and validate themselves when constructed, so a
    configuration built in code (a C{.tac} file) is checked exactly like
    one read from a file;
  - L{rmux.config.addresses}: L{BackendAddress}, and the redaction that
    keeps passwords out of errors;
  - L{rmux.config.checks}: the small checks they share, and L{ConfigError},
    the one exception all of them raise.
"""


from rmux import settings
from rmux.config.addresses import DEFAULT_REDIS_PORT, BackendAddress
from rmux.config.checks import ConfigError
from rmux.config.flags import DEFAULT_TCP_CONNECTIONS, FLAG_NAMES, fromFlags, parseFlagBoolean
from rmux.config.jsonfile import fromJSON, loadConfigFile
from rmux.config.model import (
    DISTRIBUTIONS, HASHES, ListenerConfig, RmuxConfig, RouteConfig, UserConfig,
)

__all__ = [
    "ConfigError",
    "BackendAddress",
    "ListenerConfig",
    "RouteConfig",
    "UserConfig",
    "RmuxConfig",
    "fromFlags",
    "fromJSON",
    "loadConfigFile",
    "parseFlagBoolean",
    "FLAG_NAMES",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_TCP_CONNECTIONS",
    "DISTRIBUTIONS",
    "HASHES",
]

# The defaults under the names rmux has always exported; each is its
# setting's, from rmux.settings.
DEFAULT_POOL_SIZE = settings.default("poolSize")
DEFAULT_REMOTE_TIMEOUT = settings.default("remoteTimeout")
DEFAULT_HEALTH_INTERVAL = settings.default("healthInterval")
DEFAULT_HEALTH_FAILURES = settings.default("healthFailures")
DEFAULT_HEALTH_SUCCESSES = settings.default("healthSuccesses")
DEFAULT_STARTUP_WAIT = settings.default("startupWait")
DEFAULT_MAX_PINNED = settings.default("maxPinned")
DEFAULT_PINNED_WAIT = settings.default("pinnedWait")
DEFAULT_MAX_CLIENTS = settings.default("maxClients")
DEFAULT_CLIENT_OUTPUT_LIMIT = settings.default("clientOutputLimit")
DEFAULT_MAX_BULK_LENGTH = settings.default("maxBulkLength")
DEFAULT_MAX_ARGUMENTS = settings.default("maxArguments")
DEFAULT_MAX_INLINE_LENGTH = settings.default("maxInlineLength")
DEFAULT_SHUTDOWN_TIMEOUT = settings.default("shutdownTimeout")
DEFAULT_STATS_HOST = settings.default("statsHost")
DEFAULT_STATS_INTERVAL = settings.default("statsInterval")
