# -*- test-case-name: tests.test_commands -*-
"""
The Redis command table: what each command is, where its keys are, and what
rmux does with it.

The Go rmux decided which commands to forward with a hand-written tree over
the letters of the command name (see C{rmux-spec.md} section 5), so every
command Redis added later was let through or refused more or less by
accident.  Here the facts come from a real server instead:
C{tools/gen_commands.py} stores Redis's own C{COMMAND}/C{COMMAND DOCS} output
in C{rmux/commands.json}, and this module puts rmux's decisions on top of it,
from rules over Redis's flags and ACL categories plus explicit tables, so
that every command has a deliberate classification.

Each L{CommandSpec} carries two decisions:

  - its I{policy}, what rmux does with the command at all:
      - L{LOCAL}: rmux answers it itself (PING, SELECT, AUTH, ...).
      - L{REFUSED}: it must only run directly on a Redis server (CONFIG,
        SHUTDOWN, ...); rmux replies with C{-ERR} and the spec's C{reason}.
      - L{STATEFUL}: it changes the state of the connection it runs on
        (MULTI, WATCH, CLIENT TRACKING, ...), so it must never reach a
        shared, pooled connection.
      - L{BLOCKING}: it may hold its connection for a long time (BLPOP,
        WAIT, ...).  XREAD/XREADGROUP are BLOCKING too, but block only with
        a BLOCK option: L{CommandSpec.isBlocking} and
        L{CommandSpec.policyFor} (L{FORWARD} without BLOCK) tell.
      - L{PUBSUB}: it puts the connection into subscriber mode.
      - L{FORWARD}: everything else, sent over a pooled connection.

  - its I{routing}, which servers it goes to when several are configured:
      - L{KEYED}: route by key; all of its keys must live on one server.  A
        command whose keys are optional (EVAL/FCALL with C{numkeys} 0)
        carries no key in that call and may go to any one server.
      - L{SPLIT}: split by key over the servers and merge the replies
        (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH); key C{i} carries
        C{args[i:i + keyStep]}.
      - L{KEYLESS_ANY}: no key; any one server will do.
      - L{KEYLESS_ALL}: no key; send to every server and merge the replies
        as the spec's C{merge} hint says (L{MERGE_SUM}, ...).
      - L{KEYLESS_REFUSED}: no key, and no sensible meaning across several
        servers; refused with C{reason} when several are configured.

This module does no I/O.  It is on the per-request path, so looking a
command up is one dictionary hit in the common case, and the key of a
single-key command is found by a precomputed index.
"""

import json
from importlib import resources

from rmux.auth import NOAUTH
from rmux.resp import errorReply

__all__ = [
    "LOCAL", "REFUSED", "STATEFUL", "BLOCKING", "PUBSUB", "FORWARD",
    "POLICIES",
    "KEYED", "SPLIT", "KEYLESS_ANY", "KEYLESS_ALL", "KEYLESS_REFUSED",
    "CURSOR", "ROUTINGS",
    "MERGE_SUM", "MERGE_MIN", "MERGE_CONCAT", "MERGE_UNION",
    "MERGE_PAIRS_SUM", "MERGE_AND", "MERGE_ALL_OK", "MERGE_ONE_OK",
    "MERGE_SAME", "MERGE_ANY_NON_NIL", "MERGE_IN_ORDER", "MERGE_MAX", "MERGES",
    "OPTION_ALLOW_FLUSH",
    "KeySpec", "CommandSpec", "CommandTable",
    "unknownCommandError", "wrongArityError", "unknownSubcommandError",
    "refusalError", "rejection", "deniedNames", "errorReply",
]


# Policies: what rmux does with a command.
LOCAL = "local"
REFUSED = "refused"
STATEFUL = "stateful"
BLOCKING = "blocking"
PUBSUB = "pubsub"
FORWARD = "forward"
POLICIES = frozenset([LOCAL, REFUSED, STATEFUL, BLOCKING, PUBSUB, FORWARD])

# Routings: which servers a command goes to when there are several.
KEYED = "keyed"
SPLIT = "split"
KEYLESS_ANY = "keyless-any"
KEYLESS_ALL = "keyless-all"
KEYLESS_REFUSED = "keyless-refused"
CURSOR = "cursor"                 # SCAN: each server in turn, by its cursor
ROUTINGS = frozenset([KEYED, SPLIT, KEYLESS_ANY, KEYLESS_ALL,
                      KEYLESS_REFUSED, CURSOR])

# Merge hints for KEYLESS_ALL and SPLIT commands: how to combine the
# servers' replies into the one reply the client expects.
MERGE_SUM = "sum"                # integers: add them up
MERGE_MIN = "min"                # integers: the smallest
MERGE_CONCAT = "concat"          # arrays: one after another
MERGE_UNION = "union"            # arrays: concatenated without duplicates
MERGE_PAIRS_SUM = "pairs-sum"    # [name, count, ...]: add counts by name
MERGE_AND = "and"                # arrays of 0/1: element-wise logical and
MERGE_ALL_OK = "all-ok"          # every server must succeed; reply +OK
MERGE_ONE_OK = "one-ok"          # success if any server succeeded
MERGE_SAME = "same"              # every server must give the same reply
MERGE_ANY_NON_NIL = "any-non-nil"  # any non-nil reply; nil only if all are
MERGE_IN_ORDER = "in-order"      # SPLIT: one reply element per key, in order
MERGE_MAX = "max"                # integers: the largest
MERGES = frozenset([MERGE_SUM, MERGE_MIN, MERGE_CONCAT, MERGE_UNION,
                    MERGE_PAIRS_SUM, MERGE_AND, MERGE_ALL_OK, MERGE_ONE_OK,
                    MERGE_SAME, MERGE_ANY_NON_NIL, MERGE_IN_ORDER, MERGE_MAX])

# The configuration switch that must be on before FLUSHDB/FLUSHALL are
# forwarded: one mistyped command would otherwise empty every server.
OPTION_ALLOW_FLUSH = "allowFlush"


# ---------------------------------------------------------------------------
# Decisions.  Every Redis 7.0 command falls under one of these tables or one
# of the rules in _decidePolicy/_decideRouting; tests.test_commands checks
# that the rules never have to guess for a dangerous or keyless command.
# ---------------------------------------------------------------------------

_SERVER_ONLY = "%s must be run directly on a Redis server, not through rmux"
_CLUSTER_ONLY = ("%s is a Redis Cluster command; rmux does not talk to a "
                 "cluster")

# name -> (policy, reason).  A subcommand without an entry of its own takes
# its container's entry (the "family"); a reason of None gets a default text
# made from the command's name.  Names missing from the generated table
# (newer Redis) are harmless: they apply if a newer table or extend() adds
# them.
_POLICY_TABLE = {
    # Answered by rmux itself: they describe or set up the client's session
    # with rmux, which is not any one pooled server connection.
    "ping": (LOCAL, None),
    "echo": (LOCAL, None),
    "quit": (LOCAL, None),
    "select": (LOCAL, None),       # the db is tracked per client, set lazily
    "info": (LOCAL, None),
    "hello": (LOCAL, None),        # rmux speaks RESP2 to its servers
    "auth": (LOCAL, None),         # clients authenticate to rmux
    "client|setname": (LOCAL, None),
    "client|getname": (LOCAL, None),
    "client|id": (LOCAL, None),
    "client|setinfo": (LOCAL, None),   # Redis 7.2
    "client|info": (LOCAL, None),
    "client|list": (LOCAL, None),  # rmux's own clients, not its pool
    "client|help": (FORWARD, None),   # Redis's own text

    # Connection state: never on a shared connection.  rmux keeps it per
    # client (CLIENT REPLY, the transaction), or gives the client a
    # connection of its own for as long as it lasts (see rmux.session).
    "multi": (STATEFUL, None),
    "exec": (STATEFUL, None),
    "discard": (STATEFUL, None),
    "watch": (STATEFUL, None),
    "unwatch": (STATEFUL, None),
    "reset": (STATEFUL, None),     # rmux resets the client, and its pin
    "monitor": (STATEFUL, None),   # turns the connection into a feed
    "client|reply": (STATEFUL, None),     # rmux drops the replies itself
    "client|tracking": (STATEFUL, None),
    "client|caching": (STATEFUL, None),   # applies to the next command
    "client|no-evict": (STATEFUL, None),
    "client|no-touch": (STATEFUL, None),  # Redis 7.2
    "readonly": (STATEFUL, None),         # cluster replicas' reads
    "readwrite": (STATEFUL, None),
    # Reads of that state: rmux knows the redirect (an rmux client's id);
    # TRACKINGINFO runs where the tracking is, on the client's own
    # connection, or on a pooled one that truthfully says "off".
    "client|getredir": (LOCAL, None),
    "client|trackinginfo": (FORWARD, None),
    # The clients are rmux's: rmux kills and unblocks its own.
    "client|kill": (LOCAL, None),
    "client|unblock": (LOCAL, None),
    "acl|whoami": (LOCAL, None),   # the user the client logged in to rmux as
    # Forwarded, unless they would lock rmux out of its servers.
    "config|set": (LOCAL, None),
    "acl|setuser": (LOCAL, None),
    # Pausing pauses the server's connections, rmux's among them: what
    # pausing Redis's clients means.
    "client|pause": (FORWARD, None),
    "client|unpause": (FORWARD, None),

    # Blocking: flagged "blocking" by Redis, except these.
    "wait": (BLOCKING, None),
    "waitaof": (BLOCKING, None),   # Redis 7.2
    # XREAD/XREADGROUP are flagged "blocking" but only block with BLOCK:
    # their policy stays BLOCKING, so that code reading only .policy errs
    # on the safe side, and policyFor()/isBlocking() look at the options.
    "xread": (BLOCKING, None),
    "xreadgroup": (BLOCKING, None),

    # Subscriber mode.
    "subscribe": (PUBSUB, None),
    "psubscribe": (PUBSUB, None),
    "ssubscribe": (PUBSUB, None),
    "unsubscribe": (PUBSUB, None),
    "punsubscribe": (PUBSUB, None),
    "sunsubscribe": (PUBSUB, None),
    "publish": (FORWARD, None),
    "spublish": (FORWARD, None),
    "pubsub": (FORWARD, None),

    # @connection, but only describes the server's command table.
    "command": (FORWARD, None),

    # What only makes sense on a connection of the server's own: the
    # replication stream, and the script debugger.
    "sync": (REFUSED, "SYNC turns the connection into a replication stream; "
                      "replicate from the Redis server itself"),
    "psync": (REFUSED, "PSYNC turns the connection into a replication stream; "
                       "replicate from the Redis server itself"),
    "replconf": (REFUSED, "REPLCONF belongs to the replication protocol; "
                          "replicate from the Redis server itself"),
    "script|debug": (REFUSED, "SCRIPT DEBUG turns the connection into a debugger; "
                              "debug scripts directly on a Redis server"),

    # Everything else Redis has is forwarded, server-wide commands
    # included (CONFIG, SLOWLOG, DEBUG...): with one backend rmux is that
    # server; with several, _KEYLESS_TABLE says how each spreads.
    "keys": (FORWARD, None),       # slow, but answerable: merged
    "flushdb": (FORWARD, None),    # only with OPTION_ALLOW_FLUSH
    "flushall": (FORWARD, None),   # only with OPTION_ALLOW_FLUSH
    "role": (FORWARD, None),       # client libraries ask on connect
    "asking": (FORWARD, None),     # a cluster's; one server says so itself
    # MOVE moves a key between dbs of the server that holds it; rmux keeps
    # keys on the same server in every db and selects the client's db on
    # the pooled connection first, so it is an ordinary keyed write.
    "move": (FORWARD, None),
}

# SPLIT commands and the merge of their per-server replies.
_SPLIT_TABLE = {
    "mget": MERGE_IN_ORDER,
    "mset": MERGE_ALL_OK,
    "del": MERGE_SUM,
    "unlink": MERGE_SUM,
    "exists": MERGE_SUM,
    "touch": MERGE_SUM,
}

# Every keyless command that rmux does not refuse outright, with where it
# goes when several servers are configured and why.  (routing, merge, why);
# for KEYLESS_REFUSED the why is the error text sent to the client.
_KEYLESS_TABLE = {
    # Answered locally; if a deployment forwards them, any server will do.
    "ping": (KEYLESS_ANY, None, "answered by rmux"),
    "echo": (KEYLESS_ANY, None, "answered by rmux"),
    "quit": (KEYLESS_ANY, None, "answered by rmux"),
    "select": (KEYLESS_ANY, None, "answered by rmux"),
    "info": (KEYLESS_ANY, None,
             "answered by rmux; forwarded as-is only with one server"),
    "hello": (KEYLESS_ANY, None, "answered by rmux"),
    "auth": (KEYLESS_ANY, None, "answered by rmux"),
    "client|setname": (KEYLESS_ANY, None, "answered by rmux"),
    "client|getname": (KEYLESS_ANY, None, "answered by rmux"),
    "client|id": (KEYLESS_ANY, None, "answered by rmux"),
    "client|setinfo": (KEYLESS_ANY, None, "answered by rmux"),
    "client|info": (KEYLESS_ANY, None, "answered by rmux"),
    "client|list": (KEYLESS_ANY, None, "answered by rmux"),
    "client|help": (KEYLESS_ANY, None, "static text"),

    # Same answer from every server.
    "time": (KEYLESS_ANY, None, "clocks agree well enough"),
    "lolwut": (KEYLESS_ANY, None, "harmless art"),
    "role": (KEYLESS_ANY, None,
             "clients only check that they talk to a master"),
    "command": (KEYLESS_ANY, None, "same table on every server"),
    "command|count": (KEYLESS_ANY, None, "same table on every server"),
    "command|docs": (KEYLESS_ANY, None, "same table on every server"),
    "command|getkeys": (KEYLESS_ANY, None,
                        "its arguments name keys but only describe them"),
    "command|getkeysandflags": (KEYLESS_ANY, None,
                                "its arguments name keys but only describe "
                                "them"),
    "command|help": (KEYLESS_ANY, None, "static text"),
    "command|info": (KEYLESS_ANY, None, "same table on every server"),
    "command|list": (KEYLESS_ANY, None, "same table on every server"),
    "acl|cat": (KEYLESS_ANY, None, "static list"),
    "acl|genpass": (KEYLESS_ANY, None, "random bytes from any server"),
    "acl|help": (KEYLESS_ANY, None, "static text"),
    "client|getredir": (KEYLESS_ANY, None, "answered by rmux"),
    "client|trackinginfo": (KEYLESS_ANY, None,
                            "describes the connection it runs on"),
    "memory|help": (KEYLESS_ANY, None, "static text"),
    "object|help": (KEYLESS_ANY, None, "static text"),
    "pubsub|help": (KEYLESS_ANY, None, "static text"),
    "script|help": (KEYLESS_ANY, None, "static text"),
    "function|help": (KEYLESS_ANY, None, "static text"),
    "xgroup|help": (KEYLESS_ANY, None, "static text"),
    "xinfo|help": (KEYLESS_ANY, None, "static text"),
    "function|dump": (KEYLESS_ANY, None,
                      "rmux loads functions on every server alike"),
    "function|list": (KEYLESS_ANY, None,
                      "rmux loads functions on every server alike"),

    # Connection state: the commands run on the client's own connection,
    # opened to whichever server its first keyed command picks.
    "multi": (KEYLESS_ANY, None, "runs on the client's pinned connection"),
    "exec": (KEYLESS_ANY, None, "runs on the client's pinned connection"),
    "discard": (KEYLESS_ANY, None, "runs on the client's pinned connection"),
    "unwatch": (KEYLESS_ANY, None, "runs on the client's pinned connection"),
    "reset": (KEYLESS_ANY, None, "runs on the client's pinned connection"),
    "client|reply": (KEYLESS_ANY, None,
                     "runs on the client's pinned connection"),
    "client|tracking": (KEYLESS_ANY, None,
                        "runs on the client's pinned connection"),
    "client|caching": (KEYLESS_ANY, None,
                       "runs on the client's pinned connection"),
    "client|no-evict": (KEYLESS_ANY, None,
                        "runs on the client's pinned connection"),
    "client|no-touch": (KEYLESS_ANY, None,
                        "runs on the client's pinned connection"),
    "readonly": (KEYLESS_ANY, None, "runs on the client's pinned connections"),
    "readwrite": (KEYLESS_ANY, None, "runs on the client's pinned connections"),
    "monitor": (KEYLESS_ALL, MERGE_ALL_OK, "rmux watches every server"),
    "client|kill": (KEYLESS_ANY, None, "answered by rmux"),
    "client|unblock": (KEYLESS_ANY, None, "answered by rmux"),
    "acl|whoami": (KEYLESS_ANY, None, "answered by rmux"),
    "client|pause": (KEYLESS_ALL, MERGE_ALL_OK, "pause every server"),
    "client|unpause": (KEYLESS_ALL, MERGE_ALL_OK, "unpause every server"),

    # Server-wide commands.  rmux expects its servers to share one
    # configuration, users and modules: reading them asks any one server,
    # changing them changes every server (OK only if every one said OK).
    # Diagnostics are gathered from every server.
    "config|get": (KEYLESS_ANY, None, "the servers share one configuration"),
    "config|set": (KEYLESS_ALL, MERGE_ALL_OK, "set on every server"),
    "config|resetstat": (KEYLESS_ALL, MERGE_ALL_OK, "reset on every server"),
    "config|rewrite": (KEYLESS_ALL, MERGE_ALL_OK, "rewrite on every server"),
    "config|help": (KEYLESS_ANY, None, "static text"),
    "slowlog|get": (KEYLESS_ALL, MERGE_CONCAT, "the entries of every server"),
    "slowlog|len": (KEYLESS_ALL, MERGE_SUM, "the entries of every server"),
    "slowlog|reset": (KEYLESS_ALL, MERGE_ALL_OK, "reset on every server"),
    "slowlog|help": (KEYLESS_ANY, None, "static text"),
    "latency|latest": (KEYLESS_ALL, MERGE_CONCAT, "the events of every server"),
    "latency|history": (KEYLESS_ALL, MERGE_CONCAT, "the events of every server"),
    "latency|reset": (KEYLESS_ALL, MERGE_SUM, "reset on every server"),
    "latency|doctor": (KEYLESS_ANY, None, "one server's report"),
    "latency|graph": (KEYLESS_ANY, None, "one server's graph"),
    "latency|histogram": (KEYLESS_ANY, None, "one server's histograms"),
    "latency|help": (KEYLESS_ANY, None, "static text"),
    "memory|stats": (KEYLESS_ANY, None, "one server's statistics"),
    "memory|doctor": (KEYLESS_ANY, None, "one server's report"),
    "memory|malloc-stats": (KEYLESS_ANY, None, "one server's allocator"),
    "memory|purge": (KEYLESS_ALL, MERGE_ALL_OK, "purge every server"),
    "lastsave": (KEYLESS_ALL, MERGE_MIN, "the oldest save: what is surely on disk"),
    "save": (KEYLESS_ALL, MERGE_ALL_OK, "save every server"),
    "bgsave": (KEYLESS_ALL, MERGE_ALL_OK, "save every server"),
    "bgrewriteaof": (KEYLESS_ALL, MERGE_ALL_OK, "rewrite every server's log"),
    "acl|setuser": (KEYLESS_ALL, MERGE_ALL_OK, "the same users everywhere"),
    "acl|deluser": (KEYLESS_ALL, MERGE_MIN, "the same users everywhere"),
    "acl|save": (KEYLESS_ALL, MERGE_ALL_OK, "the same users everywhere"),
    "acl|load": (KEYLESS_ALL, MERGE_ALL_OK, "the same users everywhere"),
    "acl|getuser": (KEYLESS_ANY, None, "the same users everywhere"),
    "acl|list": (KEYLESS_ANY, None, "the same users everywhere"),
    "acl|users": (KEYLESS_ANY, None, "the same users everywhere"),
    "acl|dryrun": (KEYLESS_ANY, None, "the same users everywhere"),
    "acl|log": (KEYLESS_ALL, MERGE_CONCAT, "the entries of every server"),
    "swapdb": (KEYLESS_ALL, MERGE_ALL_OK, "swap on every server: keys stay placed"),
    "debug": (KEYLESS_ANY, None, "one server (DEBUG OBJECT goes to its key's)"),
    "module|list": (KEYLESS_ANY, None, "the same modules everywhere"),
    "module|load": (KEYLESS_ALL, MERGE_ALL_OK, "the same modules everywhere"),
    "module|loadex": (KEYLESS_ALL, MERGE_ALL_OK, "the same modules everywhere"),
    "module|unload": (KEYLESS_ALL, MERGE_ALL_OK, "the same modules everywhere"),
    "module|help": (KEYLESS_ANY, None, "static text"),
    "pfselftest": (KEYLESS_ANY, None, "one server's self-test"),
    "shutdown": (KEYLESS_REFUSED, None,
                 "SHUTDOWN through rmux with several servers would stop one of "
                 "them, or all; run it directly on the server"),
    "replicaof": (KEYLESS_REFUSED, None,
                  "REPLICAOF changes one server's role; run it directly on it"),
    "slaveof": (KEYLESS_REFUSED, None,
                "SLAVEOF changes one server's role; run it directly on it"),
    "failover": (KEYLESS_REFUSED, None,
                 "FAILOVER changes one server's role; run it directly on it"),
    "cluster": (KEYLESS_REFUSED, None, _CLUSTER_ONLY % ("CLUSTER",)),
    "asking": (KEYLESS_REFUSED, None, _CLUSTER_ONLY % ("ASKING",)),

    # Pub/Sub: PUBLISH is placed by its channel, like a key, so that every
    # rmux host publishes a channel on the same server (the router reads
    # the channel); pattern subscriptions will have to cover every server.
    "subscribe": (KEYLESS_ANY, None, "publishes reach every server"),
    "psubscribe": (KEYLESS_ANY, None, "publishes reach every server"),
    "ssubscribe": (KEYLESS_ANY, None, "publishes reach every server"),
    "unsubscribe": (KEYLESS_ANY, None, "on the subscriber's own connection"),
    "punsubscribe": (KEYLESS_ANY, None,
                     "on the subscriber's own connection"),
    "sunsubscribe": (KEYLESS_ANY, None,
                     "on the subscriber's own connection"),
    "publish": (KEYED, None, "placed by its channel"),
    "spublish": (KEYED, None, "placed by its channel"),
    "pubsub|channels": (KEYLESS_ALL, MERGE_UNION, "channels of all servers"),
    "pubsub|shardchannels": (KEYLESS_ALL, MERGE_UNION,
                             "channels of all servers"),
    "pubsub|numsub": (KEYLESS_ALL, MERGE_PAIRS_SUM,
                      "subscribers of all servers, per channel"),
    "pubsub|shardnumsub": (KEYLESS_ALL, MERGE_PAIRS_SUM,
                           "subscribers of all servers, per channel"),
    # rmux subscribes each pattern on every server: the largest count.
    "pubsub|numpat": (KEYLESS_ALL, MERGE_MAX, "patterns of all servers"),

    # The keyspace as a whole.
    "dbsize": (KEYLESS_ALL, MERGE_SUM, "keys of all servers"),
    "keys": (KEYLESS_ALL, MERGE_CONCAT, "keys of all servers"),
    "randomkey": (KEYLESS_ALL, MERGE_ANY_NON_NIL,
                  "from a non-empty server at random; nil only when all are empty"),
    "flushdb": (KEYLESS_ALL, MERGE_ALL_OK,
                "empties every server; needs OPTION_ALLOW_FLUSH"),
    "flushall": (KEYLESS_ALL, MERGE_ALL_OK,
                 "empties every server; needs OPTION_ALLOW_FLUSH"),
    "scan": (CURSOR, None, "each server in turn; the cursor says which"),

    # Scripts and functions: loaded everywhere so EVALSHA/FCALL work on
    # whichever server their keys pick.
    "script|load": (KEYLESS_ALL, MERGE_SAME, "the same SHA1 everywhere"),
    "script|exists": (KEYLESS_ALL, MERGE_AND,
                      "a script exists only if every server has it"),
    "script|flush": (KEYLESS_ALL, MERGE_ALL_OK, "forget scripts everywhere"),
    "script|kill": (KEYLESS_ALL, MERGE_ONE_OK,
                    "the busy script runs on one unknown server"),
    "function|load": (KEYLESS_ALL, MERGE_SAME,
                      "the same library name everywhere"),
    "function|delete": (KEYLESS_ALL, MERGE_ALL_OK, "delete everywhere"),
    "function|flush": (KEYLESS_ALL, MERGE_ALL_OK, "delete everywhere"),
    "function|restore": (KEYLESS_ALL, MERGE_ALL_OK, "restore everywhere"),
    "function|kill": (KEYLESS_ALL, MERGE_ONE_OK,
                      "the busy function runs on one unknown server"),
    "function|stats": (KEYLESS_REFUSED, None,
                       "FUNCTION STATS describes one Redis server; with "
                       "several servers behind rmux, run it directly on "
                       "each server"),

    # WAIT counts replicas that acknowledged the writes of the connection
    # it runs on; the client's writes may have gone to every server.  It
    # only means something on the connection(s) that carried those writes:
    # on a fresh dedicated connection it returns at once.
    "wait": (KEYLESS_ALL, MERGE_MIN, "the weakest server's guarantee"),
    "waitaof": (KEYLESS_ALL, MERGE_MIN, "the weakest server's guarantee"),
}

# Families whose every subcommand routes as the container's entry says.
_FAMILY_ROUTING = frozenset(["cluster"])

# Keys that COMMAND's key specs cannot describe; found the way Redis's own
# getkeys procedures find them.  Filled in below the finder functions.
_KEY_FINDERS = {}

# Commands forwarded only when a configuration switch allows it.
_REQUIRES_OPTION = {
    "flushdb": OPTION_ALLOW_FLUSH,
    "flushall": OPTION_ALLOW_FLUSH,
}

# Commands whose blocking depends on their arguments.
_BLOCKING_OPTION = frozenset(["xread", "xreadgroup"])


def _displayName(name):
    """
    The name of a command as users type it in messages: C{client|kill}
    becomes C{CLIENT KILL}.
    """
    return name.replace("|", " ").upper()


def _decidePolicy(name, container, flags, categories):
    """
    Decide what rmux does with a command.

    @param name: full lowercase name (C{client|kill}).
    @param container: the container's name for a subcommand, else L{None}.
    @param flags: Redis command flags.
    @param categories: Redis ACL categories (C{@admin}, ...).
    @return: C{(policy, reason)}; the reason, the error text rmux sends,
        is set for REFUSED only.
    """
    entry = _POLICY_TABLE.get(name)
    display = name
    if entry is None and container is not None:
        entry = _POLICY_TABLE.get(container)
        if entry is not None:
            display = container     # "CONFIG must be run ...", any sub
    if entry is not None:
        policy, reason = entry
    elif "blocking" in flags:
        policy, reason = BLOCKING, None
    elif "@transaction" in categories:
        policy, reason = STATEFUL, None
    elif "pubsub" in flags:
        policy, reason = PUBSUB, None
    elif "@connection" in categories:
        # A connection command rmux has not been taught about may well
        # change the connection it runs on.
        policy, reason = STATEFUL, None
    else:
        policy, reason = FORWARD, None
    if policy == REFUSED and reason is None:
        reason = _SERVER_ONLY % (_displayName(display),)
    return policy, reason


def _decideRouting(name, hasKeys, policy, reason, tips, isContainer):
    """
    Decide where a command goes when several servers are configured.

    @param name: full lowercase name.
    @param hasKeys: whether the command can carry key arguments.
    @param policy: its policy, from L{_decidePolicy}.
    @param reason: the policy's refusal text.
    @param tips: Redis command tips (C{request_policy:all_shards}, ...),
        used for commands no table knows.
    @param isContainer: whether this is a container such as C{CLIENT};
        bare containers are arity errors, except C{COMMAND}.
    @return: C{(routing, merge, reason)}.
    """
    if name in _SPLIT_TABLE:
        return SPLIT, _SPLIT_TABLE[name], None
    if hasKeys:
        return KEYED, None, None
    entry = _KEYLESS_TABLE.get(name)
    if entry is None and "|" in name and name.split("|", 1)[0] in _FAMILY_ROUTING:
        entry = _KEYLESS_TABLE[name.split("|", 1)[0]]
    if entry is not None:
        routing, merge, why = entry
        return routing, merge, why if routing == KEYLESS_REFUSED else None
    if policy == REFUSED:
        return KEYLESS_REFUSED, None, reason
    if isContainer:
        return KEYLESS_ANY, None, None
    # Not decided by hand (a module or newer command): follow Redis's tips.
    tips = set(tips)
    if tips & {"request_policy:all_shards", "request_policy:all_nodes"}:
        for tip, merge in (("response_policy:agg_sum", MERGE_SUM),
                           ("response_policy:agg_min", MERGE_MIN),
                           ("response_policy:agg_logical_and", MERGE_AND),
                           ("response_policy:all_succeeded", MERGE_ALL_OK),
                           ("response_policy:one_succeeded", MERGE_ONE_OK)):
            if tip in tips:
                return KEYLESS_ALL, merge, None
        if not any(t.startswith("response_policy:") for t in tips):
            if "nondeterministic_output_order" in tips:
                return KEYLESS_ALL, MERGE_CONCAT, None
        return KEYLESS_REFUSED, None, (
            "%s cannot be answered across several Redis servers"
            % (_displayName(name),))
    return KEYLESS_ANY, None, None


# ---------------------------------------------------------------------------
# Key positions.
# ---------------------------------------------------------------------------

def _isCount(value):
    """
    Parse a non-negative decimal count the way a key spec reads C{numkeys}.

    @return: the count, or L{None} if C{value} is not one.
    """
    if value.isdigit():
        return int(value)
    return None


class KeySpec:
    """
    One Redis 7 key spec: where to begin looking in the arguments
    (C{begin_search}) and how to pick the keys from there (C{find_keys}).

    The evaluation follows Redis's C{getKeysUsingKeySpecs} (db.c), except
    that a spec whose keys run past the end of the arguments yields the keys
    that are there instead of nothing (arity and syntax are the server's to
    judge, routing only needs the keys), and that a C{keynum} spec with a
    step above 1 takes C{numkeys} keys, not C{numkeys} arguments.

    @ivar flags: Redis key spec flags (C{RO}, C{access}, C{not_key}, ...).
    @ivar begin: C{("index", pos)}, C{("keyword", KEYWORD, startfrom)} or
        C{("unknown",)}.
    @ivar find: C{("range", lastkey, keystep, limit)},
        C{("keynum", keynumidx, firstkey, keystep)} or C{("unknown",)}.
    @ivar isKey: C{False} for specs Redis marks C{not_key} (the shard
        channel of SPUBLISH): those are not keys to route on.
    @ivar isUsable: whether L{indexes} can evaluate it; specs of type
        C{unknown} need a command-specific finder.
    """

    __slots__ = ("flags", "begin", "find", "isKey", "isUsable", "_keyword")

    def __init__(self, begin, find, flags=()):
        """
        @param begin: the C{begin} list of a C{commands.json} key spec.
        @param find: the C{find} list of a C{commands.json} key spec.
        @param flags: its flags.
        """
        self.begin = tuple(begin)
        self.find = tuple(find)
        self.flags = frozenset(flags)
        self.isKey = "not_key" not in self.flags
        self.isUsable = (self.begin[0] in ("index", "keyword")
                         and self.find[0] in ("range", "keynum"))
        if self.begin[0] == "keyword":
            self._keyword = self.begin[1].upper().encode("ascii")
        else:
            self._keyword = None

    @classmethod
    def fromJSON(cls, data):
        """
        Build a key spec from its C{commands.json} form.
        """
        return cls(data["begin"], data["find"], data.get("flags", ()))

    @classmethod
    def fromRange(cls, firstKey, lastKey, step):
        """
        Build a key spec from the legacy (first, last, step) triple.

        @param lastKey: as in C{COMMAND}: an absolute index, or negative
            to count from the end of the arguments.
        """
        if lastKey >= 0:
            lastKey -= firstKey
        return cls(("index", firstKey), ("range", lastKey, step or 1, 0))

    def toJSON(self):
        """
        The C{commands.json} form of this key spec.
        """
        return {"begin": list(self.begin), "find": list(self.find),
                "flags": sorted(self.flags)}

    def __repr__(self):
        return "KeySpec(%r, %r, %r)" % (list(self.begin), list(self.find),
                                        sorted(self.flags))

    def __eq__(self, other):
        if not isinstance(other, KeySpec):
            return NotImplemented
        return (self.begin, self.find, self.flags) == (
            other.begin, other.find, other.flags)

    def __hash__(self):
        return hash((self.begin, self.find, self.flags))

    def indexes(self, args):
        """
        The indexes of the keys this spec finds in C{args}.

        @param args: the command, C{args[0]} being its name, all C{bytes}.
        @return: a list of indexes into C{args}, possibly empty.
        """
        argc = len(args)
        begin = self.begin
        if begin[0] == "index":
            first = begin[1]
        elif begin[0] == "keyword":
            first = 0
            keyword = self._keyword
            startfrom = begin[2]
            if startfrom > 0:
                candidates = range(startfrom, argc - 1)
            else:
                candidates = range(argc + startfrom, 1, -1)
            size = len(keyword)
            for i in candidates:
                if i < 1 or i >= argc:
                    break
                arg = args[i]
                if len(arg) == size and arg.upper() == keyword:
                    first = i + 1
                    break
            if not first:
                return []
        else:
            return []
        if first >= argc:
            return []
        find = self.find
        if find[0] == "range":
            lastkey, step, limit = find[1], find[2], find[3]
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                last = first + ((argc - first) // limit + lastkey)
        elif find[0] == "keynum":
            keynumidx, firstkey, step = find[1], find[2], find[3]
            if keynumidx >= argc - first:
                return []
            numkeys = _isCount(args[first + keynumidx])
            if numkeys is None:
                return []
            first += firstkey
            # Redis 7.0 computes first + numkeys - 1 whatever the step,
            # which only works for step 1 (all Redis commands); for a
            # module's "numpairs key value ..." the step must count.
            last = first + (numkeys - 1) * (step or 1)
        else:
            return []
        if last >= argc:
            last = argc - 1
        if last < first:
            return []
        return list(range(first, last + 1, step or 1))


def _sortKeys(spec, args):
    """
    SORT key ... [STORE destination]: the sorted key and the last STORE
    destination, parsed as Redis's C{sortGetKeys} does.  BY and GET
    patterns name keys too, but only by pattern; they are not keys to
    route on.
    """
    argc = len(args)
    if argc < 2:
        return []
    store = None
    i = 2
    while i < argc:
        arg = args[i].lower()
        if arg == b"limit":
            i += 2
        elif arg in (b"get", b"by"):
            i += 1
        elif arg == b"store" and i + 1 < argc:
            store = i + 1
        i += 1
    return [1] if store is None else [1, store]


def _sortROKeys(spec, args):
    """
    SORT_RO key ...: only the sorted key; it cannot STORE.
    """
    return [1] if len(args) > 1 else []


_MIGRATE_SKIP = {b"copy": 0, b"replace": 0, b"auth": 1, b"auth2": 2}


def _migrateKeys(spec, args):
    """
    MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw]
    [AUTH2 user pw] [KEYS key ...]: the single key, or with an empty key
    argument the keys after KEYS, as Redis's C{migrateGetKeys} finds them.
    """
    argc = len(args)
    first, num = 3, 1
    i = 6
    while i < argc:
        arg = args[i].lower()
        if arg == b"keys":
            if args[3]:
                num = 0      # a syntax error MIGRATE itself will report
            else:
                first = i + 1
                num = argc - first
            break
        i += _MIGRATE_SKIP.get(arg, 0) + 1
    return [k for k in range(first, first + num) if k < argc]


def _xreadScan(args):
    """
    Walk the options of XREAD/XREADGROUP up to STREAMS, as Redis's
    C{xreadGetKeys} does.  Parsing beats searching for the word: a group,
    consumer or stream may itself be called "STREAMS" or "BLOCK".

    @return: C{(streamsIndex, blocks)}; C{streamsIndex} is L{None} if
        there is no STREAMS option.
    """
    argc = len(args)
    blocks = False
    i = 1
    while i < argc:
        arg = args[i].lower()
        if arg == b"block":
            blocks = True
            i += 2
        elif arg == b"count":
            i += 2
        elif arg == b"group":
            i += 3
        elif arg == b"noack":
            i += 1
        elif arg == b"streams":
            return i, blocks
        else:
            break
    return None, blocks


def _xreadKeys(spec, args):
    """
    XREAD/XREADGROUP ... STREAMS key [key ...] id [id ...]: the first half
    of the arguments after STREAMS.
    """
    streams, _ = _xreadScan(args)
    if streams is None:
        return []
    count = (len(args) - streams - 1) // 2
    return list(range(streams + 1, streams + 1 + count))


_KEY_FINDERS.update({
    "sort": _sortKeys,
    "sort_ro": _sortROKeys,
    "migrate": _migrateKeys,
    "xread": _xreadKeys,
    "xreadgroup": _xreadKeys,
})


def _keysFromSpecs(spec, args):
    """
    Evaluate every routable key spec of a command, in order.
    """
    result = []
    for keySpec in spec._routingSpecs:
        result.extend(keySpec.indexes(args))
    return result


def _noKeys(spec, args):
    """
    The key finder of a command without keys.
    """
    return []


# ---------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------

class CommandSpec:
    """
    Everything rmux knows about one Redis command or subcommand.

    @ivar name: lowercase name; C{container|sub} for subcommands
        (C{client|setname}), as Redis names them in errors and ACLs.
    @ivar container: the container's name for a subcommand, else L{None}.
    @ivar arity: Redis's arity: the exact argument count including the
        name, or if negative the minimum count.
    @ivar flags: Redis command flags (C{write}, C{readonly}, C{admin}, ...).
    @ivar categories: Redis ACL categories (C{@read}, C{@dangerous}, ...).
    @ivar keySpecs: the key specs, a tuple of L{KeySpec}.
    @ivar keyFirst: the legacy first key index (0: no keys).
    @ivar keyLast: the legacy last key index (negative: from the end).
    @ivar keyStep: the legacy key step; for SPLIT commands, the number of
        arguments that travel with each key (2 for MSET).
    @ivar tips: Redis command tips.
    @ivar group: the documentation group (C{string}, C{server}, ...).
    @ivar since: the Redis version that introduced the command.
    @ivar policy: one of L{POLICIES}.
    @ivar routing: one of L{ROUTINGS}.
    @ivar merge: one of L{MERGES} for KEYLESS_ALL and SPLIT commands, else
        L{None}.
    @ivar reason: the error text rmux sends when it refuses the command:
        set for the REFUSED policy and for KEYLESS_REFUSED routing (used
        only when several servers are configured), else L{None}.
    @ivar requiresOption: the name of a configuration switch that must be
        on for the command to be forwarded (FLUSHDB, FLUSHALL), or L{None}.
    @ivar subcommands: for a container, a C{dict} of subcommand name
        (C{setname}) to L{CommandSpec}; else L{None}.
    """

    __slots__ = (
        "name", "container", "arity", "flags", "categories", "keySpecs",
        "keyFirst", "keyLast", "keyStep", "tips", "group", "since",
        "policy", "routing", "merge", "reason", "requiresOption",
        "subcommands",
        "_routingSpecs", "_fixedKey", "_findKeys", "_blockingOption",
        "_subLookup",
    )

    def __init__(self, name, arity, flags=(), categories=(), keySpecs=(),
                 keyFirst=0, keyLast=0, keyStep=0, tips=(), group="",
                 since="", policy=None, routing=None, merge=None, reason=None,
                 requiresOption=None, isContainer=False):
        """
        Describe a command.  Omitted policy and routing are decided by
        rmux's rules and tables, which is what you want for anything Redis
        describes; pass them to override.

        @param keySpecs: L{KeySpec}s; if empty but C{keyFirst} is set, one
            is made from C{keyFirst}/C{keyLast}/C{keyStep}.
        @param isContainer: whether this is a container of subcommands
            (C{CLIENT}); its own policy then only applies to calls
            without a subcommand.
        @raise ValueError: an unknown policy, routing or merge, or a merge
            missing for (or given without) KEYLESS_ALL or SPLIT routing.
        """
        self.name = name = name.lower()
        self.container = name.split("|", 1)[0] if "|" in name else None
        self.arity = int(arity)
        self.flags = frozenset(flags)
        self.categories = frozenset(categories)
        self.keyFirst = int(keyFirst)
        self.keyLast = int(keyLast)
        self.keyStep = int(keyStep)
        if not keySpecs and self.keyFirst > 0:
            keySpecs = (KeySpec.fromRange(self.keyFirst, self.keyLast,
                                          self.keyStep),)
        self.keySpecs = tuple(keySpecs)
        self.tips = frozenset(tips)
        self.group = group
        self.since = since
        self.subcommands = None
        self._subLookup = None

        self._routingSpecs = tuple(k for k in self.keySpecs
                                   if k.isKey and k.isUsable)
        finder = _KEY_FINDERS.get(name)
        if finder is None:
            finder = _keysFromSpecs if self._routingSpecs else _noKeys
        self._findKeys = finder
        self._fixedKey = None
        if finder is _keysFromSpecs and len(self._routingSpecs) == 1:
            only = self._routingSpecs[0]
            if (only.begin[0] == "index" and only.find[0] == "range"
                    and only.find[1] == 0):
                self._fixedKey = only.begin[1]
        self._blockingOption = name in _BLOCKING_OPTION

        if policy is None:
            policy, policyReason = _decidePolicy(
                name, self.container, self.flags, self.categories)
        elif policy not in POLICIES:
            raise ValueError("unknown policy %r for %s" % (policy, name))
        else:
            policyReason = _SERVER_ONLY % (_displayName(name),)
        decidedRouting, decidedMerge, routingReason = _decideRouting(
            name, finder is not _noKeys, policy, policyReason, self.tips,
            isContainer)
        if routing is None:
            routing = decidedRouting
            if merge is None:
                merge = decidedMerge
        elif routing not in ROUTINGS:
            raise ValueError("unknown routing %r for %s" % (routing, name))
        else:
            routingReason = (
                "%s cannot be answered across several Redis servers"
                % (_displayName(name),))
        if merge is not None and merge not in MERGES:
            raise ValueError("unknown merge %r for %s" % (merge, name))
        if (merge is None) != (routing not in (KEYLESS_ALL, SPLIT)):
            raise ValueError("%s: a merge goes with routing %s or %s, and "
                             "only with them" % (name, KEYLESS_ALL, SPLIT))
        if reason is None:
            if policy == REFUSED:
                reason = policyReason
            elif routing == KEYLESS_REFUSED:
                reason = routingReason
        self.policy = policy
        self.routing = routing
        self.merge = merge
        self.reason = reason
        self.requiresOption = requiresOption or _REQUIRES_OPTION.get(name)

    @property
    def fixedKey(self):
        """
        The index of the command's only key when it is always the same
        argument (1 for GET or SET), else L{None}.
        """
        return self._fixedKey

    @classmethod
    def fromJSON(cls, entry):
        """
        Build a spec from one C{commands.json} row, or from an entry of the
        same shape in rmux's configuration.

        Required: C{name} and C{arity}.  Optional: C{flags},
        C{categories}, C{keySpecs} (as in C{commands.json}), or instead the
        legacy C{firstKey}/C{lastKey}/C{step}; C{tips}, C{group},
        C{since}; and rmux's own C{policy}, C{routing}, C{merge},
        C{reason}, C{requiresOption} to override its rules.

        @raise ValueError: a required field is missing or a value is
            unknown.
        """
        try:
            name = entry["name"]
            arity = entry["arity"]
        except KeyError as e:
            raise ValueError("command entry %r lacks %s" % (entry, e))
        return cls(
            name, arity,
            flags=entry.get("flags", ()),
            categories=entry.get("categories", ()),
            keySpecs=[KeySpec.fromJSON(k) for k in entry.get("keySpecs", ())],
            keyFirst=entry.get("firstKey", 0),
            keyLast=entry.get("lastKey", 0),
            keyStep=entry.get("step", 0),
            tips=entry.get("tips", ()),
            group=entry.get("group", ""),
            since=entry.get("since", ""),
            policy=entry.get("policy"),
            routing=entry.get("routing"),
            merge=entry.get("merge"),
            reason=entry.get("reason"),
            requiresOption=entry.get("requiresOption"),
            isContainer=bool(entry.get("subcommands")),
        )

    def __repr__(self):
        return "<CommandSpec %s arity=%d policy=%s routing=%s>" % (
            self.name, self.arity, self.policy, self.routing)

    @property
    def displayName(self):
        """
        The name as users write it: C{CLIENT SETNAME}.
        """
        return _displayName(self.name)

    @property
    def hasKeys(self):
        """
        Whether this command can carry keys at all.
        """
        return self._findKeys is not _noKeys

    def checkArity(self, argc):
        """
        Check an argument count against Redis's arity.

        @param argc: the number of arguments including the command name
            (and, for a subcommand, the subcommand name).
        @return: C{True} if Redis would accept that many.
        """
        arity = self.arity
        if arity >= 0:
            return argc == arity
        return argc >= -arity

    def keyIndexes(self, args):
        """
        The indexes of every key argument, in the order Redis lists them
        (C{COMMAND GETKEYS}).  Short or malformed arguments give whatever
        keys are there; they never raise.

        @param args: the command, C{args[0]} being its name, all C{bytes}.
        @return: a list of indexes into C{args}.
        """
        fixed = self._fixedKey
        if fixed is not None:
            return [fixed] if len(args) > fixed else []
        return self._findKeys(self, args)

    def keys(self, args):
        """
        The key arguments themselves.

        @return: a list of C{bytes}.
        """
        return [args[i] for i in self.keyIndexes(args)]

    def firstKey(self, args):
        """
        The first key of a command: what a single-key command is routed by.

        @return: C{bytes}, or L{None} if there is no key in C{args}.
        """
        fixed = self._fixedKey
        if fixed is not None:
            return args[fixed] if len(args) > fixed else None
        indexes = self._findKeys(self, args)
        return args[indexes[0]] if indexes else None

    def isBlocking(self, args):
        """
        Whether this call may block its connection: always for BLOCKING
        commands, except XREAD/XREADGROUP without a BLOCK option.
        """
        if self._blockingOption:
            return _xreadScan(args)[1]
        return self.policy == BLOCKING

    def policyFor(self, args):
        """
        The policy for this particular call: L{policy}, except that
        XREAD/XREADGROUP without a BLOCK option are L{FORWARD}.
        """
        if self._blockingOption and not _xreadScan(args)[1]:
            return FORWARD
        return self.policy

    def _addSubcommand(self, spec):
        """
        Make C{spec} a subcommand of this container.
        """
        if self.subcommands is None:
            self.subcommands = {}
            self._subLookup = {}
        sub = spec.name.split("|", 1)[1]
        old = self.subcommands.get(sub)
        if old is not None:
            for key in [k for k, v in self._subLookup.items() if v is old]:
                del self._subLookup[key]
        self.subcommands[sub] = spec
        raw = sub.encode("utf-8")
        self._subLookup[raw] = spec
        self._subLookup[raw.upper()] = spec


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------

#: Commands of Redis releases newer than the one C{commands.json} was
#: generated from that clients send on their own: redis-py sends CLIENT
#: SETINFO on every connect.
NEWER_COMMANDS = [
    {"name": "client|setinfo", "arity": 4, "flags": ["noscript", "loading", "stale"]},
    {"name": "client|no-touch", "arity": 3, "flags": ["noscript", "loading", "stale"]},
    {"name": "waitaof", "arity": 4, "flags": ["noscript"]},
]


class CommandTable:
    """
    All known commands, looked up by their arguments.

    L{default} is built once from the C{commands.json} shipped with rmux
    and shared; build a table of your own with L{load} before calling
    L{extend} on it, unless the additions are meant for the whole process.

    @ivar redisVersion: the Redis version the table was generated from.
    """

    _default = None

    def __init__(self, specs=(), redisVersion=None):
        """
        @param specs: L{CommandSpec}s, containers before their subcommands
            or not: order does not matter.
        @param redisVersion: where the table came from, for information.
        """
        self.redisVersion = redisVersion
        self._byName = {}
        self._lookup = {}
        self.add(specs)

    @classmethod
    def fromJSON(cls, data):
        """
        Build a table from the parsed contents of a C{commands.json}.
        """
        return cls([CommandSpec.fromJSON(row) for row in data["commands"]],
                   data.get("redisVersion"))

    @classmethod
    def load(cls):
        """
        Build a fresh table from the C{commands.json} shipped with rmux.
        """
        text = resources.files("rmux").joinpath("commands.json").read_text(
            encoding="utf-8")
        table = cls.fromJSON(json.loads(text))
        table.extend(NEWER_COMMANDS)
        return table

    @classmethod
    def default(cls):
        """
        The shared table built from C{commands.json}, loaded on first use.
        """
        table = cls._default
        if table is None:
            table = cls._default = cls.load()
        return table

    def add(self, specs):
        """
        Add or replace commands.

        @param specs: L{CommandSpec}s.  A subcommand whose container is
            missing gets a bare container (arity -2) made for it.
        """
        specs = list(specs)
        for spec in specs:
            if spec.container is None:
                old = self._byName.get(spec.name)
                if old is not None and old.subcommands:
                    for sub in old.subcommands.values():
                        spec._addSubcommand(sub)
                self._byName[spec.name] = spec
                raw = spec.name.encode("utf-8")
                self._lookup[raw] = spec
                self._lookup[raw.upper()] = spec
        for spec in specs:
            if spec.container is not None:
                parent = self._byName.get(spec.container)
                if parent is None:
                    parent = CommandSpec(spec.container, -2)
                    self.add([parent])
                parent._addSubcommand(spec)
                self._byName[spec.name] = spec

    def extend(self, entries):
        """
        Add module commands, or commands of a newer Redis, described in
        rmux's configuration.  An entry for a known name replaces it.

        @param entries: C{dict}s as accepted by L{CommandSpec.fromJSON},
            e.g. C{{"name": "json.get", "arity": -2, "firstKey": 1,
            "lastKey": 1, "step": 1, "flags": ["readonly"]}}.
        @raise ValueError: an entry is malformed; nothing is added then.
        """
        self.add([CommandSpec.fromJSON(entry) for entry in entries])

    def lookup(self, args):
        """
        Find the spec for a command.

        @param args: the command, C{args[0]} being its name in any case,
            all C{bytes}.
        @return: the L{CommandSpec}: a subcommand's own when C{args[0]} is
            a container and C{args[1]} is given, the container's when it is
            not.  L{None} for an unknown command or subcommand; see
            L{unknownError}.
        """
        name = args[0]
        spec = self._lookup.get(name)
        if spec is None:
            spec = self._lookup.get(name.lower())
            if spec is None:
                return None
        subs = spec._subLookup
        if subs is None or len(args) < 2:
            return spec
        sub = args[1]
        found = subs.get(sub)
        if found is None:
            found = subs.get(sub.lower())
        return found

    def unknownError(self, args):
        """
        The error Redis gives for a command L{lookup} does not know.

        @return: an unknown-subcommand error when C{args[0]} is a known
            container, else an unknown-command error; C{bytes} on the wire.
        """
        if len(args) >= 2:
            spec = self._lookup.get(args[0]) or self._lookup.get(
                args[0].lower())
            if spec is not None and spec.subcommands is not None:
                return unknownSubcommandError(args[0], args[1])
        return unknownCommandError(args)

    def hasSubcommands(self, name):
        """
        Whether C{name} is a known container of subcommands (C{CLIENT}).

        @param name: a command name, C{bytes} or C{str}, in any case.
        """
        if isinstance(name, bytes):
            spec = self._lookup.get(name) or self._lookup.get(name.lower())
        else:
            spec = self._byName.get(name.lower())
        return spec is not None and spec.subcommands is not None

    def get(self, name):
        """
        Find a spec by its full name, C{get} or C{client|setname}.

        @return: the L{CommandSpec} or L{None}.
        """
        return self._byName.get(name.lower())

    def __contains__(self, name):
        return name.lower() in self._byName

    def __iter__(self):
        """
        Every command and subcommand, sorted by name.
        """
        return iter([self._byName[n] for n in sorted(self._byName)])

    def __len__(self):
        return len(self._byName)


# ---------------------------------------------------------------------------
# Error replies, with Redis 7.0's exact wording.
# ---------------------------------------------------------------------------

def _cString(value):
    """
    What C's C{%s} prints of an argument: up to its first NUL byte.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    nul = value.find(b"\x00")
    return value if nul < 0 else value[:nul]


#: What a client may send before it has authenticated.
_WITHOUT_AUTH = frozenset(["auth", "hello", "quit"])


def rejection(table, args, spec, authenticated, denied=frozenset()):
    """
    Why a command is rejected before anything is done with it: unknown,
    the wrong number of arguments, not authenticated yet, or denied to the
    client (see L{deniedNames}), in Redis's order and words.

    @param spec: what C{table.lookup(args)} found.
    @return: the error reply, or L{None}.
    """
    if spec is None:
        return table.unknownError(args)
    if not spec.checkArity(len(args)):
        return wrongArityError(spec.name)
    if not authenticated and spec.name not in _WITHOUT_AUTH:
        return NOAUTH
    if spec.name in denied:
        return b"-NOPERM this user has no permissions to run the '%s' command\r\n" % (
            spec.name.encode(),)
    return None


def deniedNames(table, text):
    """
    The full names of the commands C{text} denies: names (a container
    denies every subcommand) and C{@categories}, separated by spaces.
    """
    names = set()
    for token in (text or "").split():
        token = token.lower()
        if token.startswith("@"):
            names.update(spec.name for spec in table if token in spec.categories)
            continue
        names.add(token)
        spec = table.get(token)
        if spec is not None and spec.subcommands:
            names.update(sub.name for sub in spec.subcommands.values())
    return frozenset(names)


def refusalError(spec):
    """
    The error for a command rmux will not run: refused by policy, or a
    kind of command it cannot run on a shared connection.

    @param spec: the command's L{CommandSpec}.
    """
    name = spec.displayName
    policy = spec.policy
    if policy == REFUSED:
        return errorReply(spec.reason or "%s is not allowed through rmux" % (name,))
    if policy == PUBSUB:
        return errorReply(
            "%s is not supported by rmux yet: subscriptions would tie up a "
            "shared backend connection" % (name,))
    if policy == BLOCKING:
        return errorReply(
            "%s is not supported by rmux yet: blocking commands would stall "
            "a shared backend connection" % (name,))
    return errorReply(
        "%s is not supported by rmux yet: it changes the state of the "
        "connection, which rmux shares between clients" % (name,))


def unknownCommandError(args):
    """
    Redis's reply to a command it does not know, e.g.
    C{-ERR unknown command 'foo', with args beginning with: 'a' 'b' }.

    Like Redis: the name is cut to 128 bytes, arguments are quoted one after
    another until the list reaches 128 bytes (the last one cut to fit), and
    each stops at a NUL byte.

    @param args: the command as received, all C{bytes}.
    @return: the reply, C{bytes}.
    """
    listed = b""
    for arg in args[1:]:
        if len(listed) >= 128:
            break
        listed += b"'" + _cString(arg)[:128 - len(listed)] + b"' "
    return errorReply(b"unknown command '" + _cString(args[0])[:128]
                      + b"', with args beginning with: " + listed)


def wrongArityError(name):
    """
    Redis's reply to a known command with the wrong number of arguments,
    e.g. C{-ERR wrong number of arguments for 'get' command}.

    @param name: the spec's full name (C{CommandSpec.name}): lowercase,
        C{client|setname} for subcommands, as Redis names them.
    """
    if isinstance(name, str):
        name = name.encode("utf-8")
    return errorReply(b"wrong number of arguments for '" + name
                      + b"' command")


def unknownSubcommandError(container, sub):
    """
    Redis's reply to an unknown subcommand of a container, e.g.
    C{-ERR unknown subcommand 'foo'. Try CLIENT HELP.}

    @param container: the container as the client typed it.
    @param sub: the subcommand as the client typed it.
    """
    if isinstance(container, str):
        container = container.encode("utf-8")
    return errorReply(b"unknown subcommand '" + _cString(sub)[:128]
                      + b"'. Try " + container.upper() + b" HELP.")
