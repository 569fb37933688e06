# -*- test-case-name: tests.test_settings -*-
"""
Every setting of rmux, defined once.

Each L{Setting} says what a setting is: its name (the camelCase spelling of
Go rmux's flags, also the JSON field), its kind, its default, what 0
means, its bounds, its help text and C{--help} group, where it may be
given (a flag, a listener object of the JSON file), whether it is a
secret, and whether a live reload can change it.  Everything else is
derived from this table, never written again:

  - the flags and the JSON fields L{rmux.config} accepts, their type
    checks, the rules for 0, and the range checks of the validated
    objects (L{rmux.config.ListenerConfig}, L{rmux.config.RmuxConfig});
  - C{twistd rmux --help} (L{rmux.tap.Options});
  - which fields a reload refuses to change, and which it never shows
    (L{rmux.reload});
  - the options table of the README (L{markdownTable}; a test fails when
    the two disagree), which C{python -m rmux.settings} prints.

This module imports nothing of rmux: the lowest layers (the request
parser's limits) take their defaults from it too.
"""

__all__ = [
    "Setting", "SETTINGS", "BY_NAME", "GROUPS", "default", "seconds", "listenerFields",
    "globalFields", "flagSettings", "jsonSettings", "showSize", "markdownTable",
]

# Kinds of value.
INTEGER = "integer"
MILLISECONDS = "milliseconds"
SIZE = "size"
PORT = "port"
BOOLEAN = "boolean"
STRING = "string"
MODE = "mode"
BACKENDS = "backends"
OBJECTS = "objects"
USERS = "users"
INTEGER_KINDS = frozenset([INTEGER, MILLISECONDS, SIZE, PORT])

# What 0 means, for the integer kinds.
ZERO_DEFAULT = "default"    # 0 is replaced by the default
ZERO_FALLBACK = "fallback"  # 0 is replaced by another setting's value
ZERO_LITERAL = "literal"    # 0 is kept, and means what the setting says

# Where a setting lives.
LISTENER = "listener"       # a field of ListenerConfig, per listener
INPUT = "input"             # read with a listener's fields, not one of them
GLOBAL = "global"           # a field of RmuxConfig, for the whole process
COMMAND = "command"         # only for the command line itself

_UNITS = (("gb", 1024**3), ("mb", 1024**2), ("kb", 1024))


def showSize(size):
    """
    A size as an operator writes it: C{"512mb"}, C{"64kb"}, or the number
    of bytes if no 1024-based unit divides it.
    """
    for unit, factor in _UNITS:
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


class Setting:
    """
    One setting.

    @ivar name: its camelCase name, as a flag (C{--name}) and a JSON field.
    @ivar kind: the kind of value: L{INTEGER}, L{MILLISECONDS}, L{SIZE},
        L{PORT}, L{BOOLEAN}, L{STRING}, L{MODE}, L{BACKENDS}, L{OBJECTS},
        L{USERS}.
    @ivar default: the effective value when it is not given (what the
        validated object holds), or L{None}.
    @ivar zero: for the integer kinds, what a 0 as written means:
        L{ZERO_DEFAULT}, L{ZERO_FALLBACK} (to L{fallback}) or
        L{ZERO_LITERAL} (kept, and described by L{zeroMeans}).
    @ivar fallback: the setting whose value a 0 (or its absence) takes.
    @ivar zeroMeans: what a literal 0 means, in words ("unlimited").
    @ivar high: the largest value accepted, or L{None}.
    @ivar group: the C{--help} group.
    @ivar help: the help text; C{{default}} in it is the default as an
        operator writes it.
    @ivar scope: L{LISTENER}, L{INPUT}, L{GLOBAL} or L{COMMAND}.
    @ivar flag: whether it may be given on the command line.
    @ivar json: whether a listener object of the JSON file may hold it.
    @ivar secret: whether its value is never shown.
    @ivar reloadable: whether a live reload may change it.
    @ivar helpValues: returns more values for the help text, from the
        module that owns them, or L{None}.
    @ivar givenMatters: whether giving the setting, even with its default
        value, differs from leaving it out (C{hash} is refused unless the
        distribution is ketama).
    """

    def __init__(self, name, kind, default=None, help="", group="", zero=ZERO_DEFAULT,
                 fallback=None, zeroMeans=None, high=None, scope=LISTENER, flag=True,
                 json=True, secret=False, reloadable=True, helpValues=None,
                 givenMatters=False):
        self.name = name
        self.kind = kind
        self.default = default
        self.zero = zero
        self.fallback = fallback
        self.zeroMeans = zeroMeans
        self.high = high
        self.group = group
        self.help = help
        self.scope = scope
        self.flag = flag
        self.json = json
        self.secret = secret
        self.reloadable = reloadable
        self.helpValues = helpValues
        self.givenMatters = givenMatters

    def __repr__(self):
        return f"<Setting {self.name}>"

    @property
    def low(self):
        """
        The smallest effective value: 0 only where 0 means itself.
        """
        if self.kind == PORT or self.zero == ZERO_LITERAL:
            return 0
        if self.zero == ZERO_FALLBACK:
            return BY_NAME[self.fallback].low
        return 1

    def shownDefault(self):
        """
        The default as an operator writes it.
        """
        value = self.default
        if self.kind == SIZE and value is not None:
            return showSize(value)
        if self.kind == MODE:
            return f"0{value:o}"
        if isinstance(value, bytes):
            return value.decode("ascii")
        return value

    def helpText(self):
        values = self.helpValues() if self.helpValues is not None else {}
        return self.help.format(default=self.shownDefault(), **values)

    def flagDefault(self):
        """
        The default C{--help} shows and the flag parser starts from: the
        default itself where giving it changes nothing, else nothing (a
        fallback's absence matters: it takes another setting's value).
        """
        if (self.kind == BOOLEAN or self.zero == ZERO_FALLBACK or self.default is None
                or self.givenMatters):
            return 0 if self.kind in INTEGER_KINDS and self.default is not None else None
        return self.shownDefault()

    def modelRule(self):
        """
        What the validated object accepts, for its errors: C{"a positive
        integer (ms)"}.
        """
        if self.kind == PORT:
            return f"an integer from 0 to {self.high}"
        what = "a positive integer" if self.low else "a non-negative integer"
        unit = {MILLISECONDS: " (ms)", SIZE: " (bytes)"}.get(self.kind, "")
        return what + unit

    def rule(self):
        """
        What a flag or JSON field accepts, in rmux's spelling where 0 may
        mean the default, for its errors: C{"a positive integer (0 means
        20)"}.
        """
        if self.kind == PORT:
            return self.modelRule()
        if self.kind == SIZE:
            meaning = self.zeroMeans or self.shownDefault()
            positive = "a non-negative" if self.zero == ZERO_LITERAL else "a positive"
            return f"{positive} number of bytes, such as 65536 or 64kb (0 means {meaning})"
        if self.zero == ZERO_DEFAULT and self.scope != INPUT:
            meaning = self.shownDefault()
        elif self.zero == ZERO_FALLBACK and BY_NAME[self.fallback].scope != INPUT:
            meaning = self.fallback
        else:
            # Go rmux's own timeouts: 0 is "not set", at every level.
            return "a non-negative integer" + (" (ms)" if self.kind == MILLISECONDS else "")
        if self.kind == MILLISECONDS:
            return f"a positive integer (ms; 0 means {meaning})"
        return f"a positive integer (0 means {meaning})"


def _listening():
    group = "Listening"
    return [
        Setting("socket", STRING, None, group=group, reloadable=False,
                help="Unix socket to listen on instead of --host/--port."),
        Setting("socketMode", MODE, 0o666, group=group, reloadable=False,
                help="Permissions of the --socket file, in octal."),
        Setting("socketOwner", STRING, None, group=group, reloadable=False,
                help="Owner of the --socket file: user, user:group or :group (names or "
                     "numeric ids). Default: the user and group rmux runs as."),
        Setting("host", STRING, "localhost", group=group, reloadable=False,
                help="TCP interface to listen on (ignored with --socket)."),
        Setting("port", PORT, 6379, group=group, high=65535, zero=ZERO_LITERAL,
                reloadable=False,
                help="TCP port to listen on (ignored with --socket)."),
        Setting("maxProcesses", INTEGER, 0, group=group, zero=ZERO_LITERAL,
                reloadable=False,
                help="Worker processes to start, each serving every listener on the "
                     "same sockets (the parent binds them and restarts a worker that "
                     "dies); Go rmux took this number as GOMAXPROCS. 0 or 1 = serve in "
                     "this one process."),
    ]


def _backends():
    group = "Backends"
    remote = "Backend {what} timeout (ms); 0 = --remoteTimeout."
    return [
        Setting("tcpConnections", BACKENDS, None, group=group, scope=INPUT,
                help="Backend Redis servers, host:port (or redis:// URLs), separated by "
                     "spaces. Default: 'localhost:6380 localhost:6381' when neither this "
                     "nor --unixConnections is given. For ketama, host:port:weight (or "
                     "?weight=N&name=NAME in a URL) gives a server a weight."),
        Setting("unixConnections", BACKENDS, None, group=group, scope=INPUT,
                help="Backend Redis unix sockets (or unix:// URLs), separated by spaces. "
                     "They come after all TCP backends in the hashing order. A weight is "
                     "given as unix:///path?weight=N&name=NAME."),
        Setting("cluster", BACKENDS, None, group=group, scope=INPUT,
                help="Redis Cluster seed nodes, host:port (or redis:// or rediss:// URLs), "
                     "separated by spaces: rmux reads the slot map from them and sends "
                     "each command to its slot's master. Instead of --tcpConnections "
                     "and --unixConnections."),
        Setting("sentinels", BACKENDS, None, group=group, scope=INPUT,
                help="Redis Sentinel addresses, host:port (or redis:// URLs, for a "
                     "sentinel's password; rediss:// for TLS), separated by spaces: rmux "
                     "asks them where "
                     "each --sentinelMaster is and follows their failovers. Instead of "
                     "--tcpConnections and --unixConnections."),
        Setting("sentinelMaster", BACKENDS, None, group=group, scope=INPUT,
                help="The names of the masters the sentinels watch, separated by spaces: "
                     "one shard each, placed by name with --distribution. Written "
                     "redis://[user:password@]NAME[/db] (rediss:// for TLS) when the "
                     "masters need credentials, a db or TLS."),
        Setting("clusterRefreshInterval", MILLISECONDS, 5000, group=group,
                help="How often a cluster's slot map, or where the sentinels' masters "
                     "are, is read again (ms), besides after a MOVED, a failover or a "
                     "lost node."),
        Setting("readFrom", STRING, "master", group=group,
                help="With --cluster or --sentinels, where read-only commands with "
                     "their keys in one slot (one master) go: 'master', 'preferReplica' "
                     "(a replica of that master when it has one, else the master) or "
                     "'replica' (a replica, never the master). A replica may be a moment "
                     "behind its master."),
        Setting("clusterRetryTime", MILLISECONDS, 8000, group=group, zero=ZERO_LITERAL,
                zeroMeans="do not retry",
                help="How long a command that meets a cluster or Sentinel failover (its "
                     "node lost, TRYAGAIN, CLUSTERDOWN, READONLY) is sent again, where "
                     "the next map says, before the client gets the error (ms); 0 = do "
                     "not retry."),
        Setting("config", STRING, None, group=group, scope=COMMAND, json=False,
                help="JSON config file: an array of listener objects with these options' "
                     "names. Replaces every listener and backend option; --debug, "
                     "--graphite etc. still apply."),
        Setting("poolSize", INTEGER, 20, group=group,
                help="Connections per backend; 0 means {default}."),
        Setting("remoteTimeout", MILLISECONDS, 500, group=group, scope=INPUT,
                help="Backend connect, read and write timeout (ms); 0 = {default}."),
        Setting("remoteConnectTimeout", MILLISECONDS, 500, group=group,
                zero=ZERO_FALLBACK, fallback="remoteTimeout",
                help=remote.format(what="connect")),
        Setting("remoteReadTimeout", MILLISECONDS, 500, group=group,
                zero=ZERO_FALLBACK, fallback="remoteTimeout",
                help=remote.format(what="read")),
        Setting("remoteWriteTimeout", MILLISECONDS, 500, group=group,
                zero=ZERO_FALLBACK, fallback="remoteTimeout",
                help=remote.format(what="write")),
        Setting("maxPinned", INTEGER, 32, group=group,
                help="Per backend server, the most connections dedicated each to one "
                     "client at a time (transactions after WATCH/MULTI, blocking "
                     "commands); 0 = {default}."),
        Setting("pinnedWait", MILLISECONDS, 1000, group=group, zero=ZERO_LITERAL,
                zeroMeans="do not wait",
                help="How long a client waits for a dedicated connection when "
                     "--maxPinned are in use, before it gets an error (ms); 0 = fail "
                     "at once."),
    ]


def _placement():
    group = "Key placement"
    return [
        Setting("distribution", STRING, "rmux", group=group,
                help="Key placement when multiplexing: 'rmux' (Go rmux's, keeps its key "
                     "placement) or 'ketama' (twemproxy's consistent hashing, with "
                     "backend weights)."),
        Setting("hash", STRING, "fnv1a_64", group=group, givenMatters=True,
                help="Key hash for --distribution=ketama: fnv1a_64 or md5. "
                     "Default: {default}."),
        Setting("hashTag", STRING, None, group=group,
                help="Two characters, such as '{{}}': only the part of a key between "
                     "them is hashed, so related keys share a backend. Default: none."),
        Setting("failover", BOOLEAN, False, group=group,
                help="When multiplexing, send a key whose backend is down to the next "
                     "live backend instead of failing the command."),
        Setting("allowFlush", BOOLEAN, False, group=group,
                help="When multiplexing, send FLUSHDB and FLUSHALL to every backend "
                     "instead of refusing them."),
        Setting("crossServerTransactions", BOOLEAN, False, group=group,
                help="When multiplexing, run a MULTI/EXEC whose keys live on several "
                     "servers as one MULTI/EXEC per server (atomic on each, not "
                     "across them), its replies in order. Off: such a transaction is "
                     "refused as its commands are queued, and EXEC aborts."),
        Setting("routes", OBJECTS, (), group=group, flag=False,
                help="Prefix routes, each with its own backends and placement "
                     "(JSON file only)."),
        Setting("commands", OBJECTS, (), group=group, flag=False, reloadable=False,
                help="Extra command table entries for module commands or a newer "
                     "Redis (JSON file only)."),
    ]


def _tls():
    group = "TLS"
    return [
        Setting("tlsPort", PORT, 0, group=group, high=65535, zero=ZERO_LITERAL,
                zeroMeans="none", reloadable=False,
                help="TCP port (on --host) where clients connect over TLS, besides the "
                     "socket or plain port; with --tlsCertFile and --tlsKeyFile. "
                     "0 = none."),
        Setting("tlsCertFile", STRING, None, group=group, reloadable=False,
                help="The certificate (PEM) of the --tlsPort listener."),
        Setting("tlsKeyFile", STRING, None, group=group, reloadable=False,
                help="The private key (PEM) of --tlsCertFile."),
        Setting("tlsAuthClients", BOOLEAN, False, group=group, reloadable=False,
                help="Clients of --tlsPort must show a certificate that chains to "
                     "--tlsCaCertFile (Redis's tls-auth-clients; unlike Redis, off by "
                     "default)."),
        Setting("tlsCaCertFile", STRING, None, group=group,
                help="CA certificates (PEM) that rediss:// backends' certificates must "
                     "chain to. Default: the system's CAs."),
        Setting("tlsClientCertFile", STRING, None, group=group,
                help="Certificate (PEM) rmux shows rediss:// backends that ask for one "
                     "(mutual TLS); with --tlsClientKeyFile."),
        Setting("tlsClientKeyFile", STRING, None, group=group,
                help="The private key (PEM) of --tlsClientCertFile."),
        Setting("tlsServerName", STRING, None, group=group,
                help="The name rediss:// backends' certificates are checked against, and "
                     "sent as SNI. Default: each backend's host."),
        Setting("tlsSkipVerify", BOOLEAN, False, group=group,
                help="Do not verify rediss:// backends' certificates (encryption without "
                     "authentication: anyone on the path can pose as the server). For "
                     "tests only."),
    ]


def _health():
    group = "Health checks"
    return [
        Setting("healthInterval", MILLISECONDS, 100, group=group,
                help="Time between health checks of a backend (ms); 0 = {default}."),
        Setting("healthTimeout", MILLISECONDS, None, group=group, zero=ZERO_FALLBACK,
                fallback="remoteConnectTimeout",
                help="Time a health check may take (ms); 0 = --remoteConnectTimeout."),
        Setting("healthFailures", INTEGER, 3, group=group,
                help="Consecutive failed health checks that take a backend down; "
                     "0 = {default}."),
        Setting("healthSuccesses", INTEGER, 2, group=group,
                help="Consecutive good health checks that bring a backend back; "
                     "0 = {default}."),
        Setting("startupWait", MILLISECONDS, 1000, group=group, zero=ZERO_LITERAL,
                zeroMeans="do not wait",
                help="How long a request for a backend not yet health-checked waits for "
                     "its first check (ms); 0 = fail at once, as Go rmux does."),
    ]


def _clients():
    group = "Clients"
    local = "Client {what} timeout (ms); 0 = --localTimeout."
    return [
        Setting("requirepass", STRING, None, group=group, secret=True,
                help="Password clients must send with AUTH, as Redis's requirepass (the "
                     "default user's). Other local users can read a command line (ps): "
                     "prefer --requirepassFile, or \"requirepass\" in the --config file, "
                     "which also takes ACL-style users. Default: none, no AUTH needed."),
        Setting("requirepassFile", STRING, None, group=group, scope=COMMAND, json=False,
                help="A file holding the password for --requirepass (one line), so the "
                     "password is not on the command line."),
        Setting("users", USERS, (), group=group, flag=False, secret=True,
                help="ACL-style users, each a name and a password, for AUTH name "
                     "password (JSON file only)."),
        Setting("maxClients", INTEGER, 10000, group=group,
                help="Most clients connected at once, as Redis's maxclients; one more "
                     "gets '-ERR max number of clients reached' and is closed; "
                     "0 = {default}."),
        Setting("localTimeout", MILLISECONDS, 0, group=group, scope=INPUT,
                zero=ZERO_LITERAL,
                help="Client read and write timeout (ms); 0 = none."),
        Setting("localReadTimeout", MILLISECONDS, 0, group=group, zero=ZERO_FALLBACK,
                fallback="localTimeout", help=local.format(what="read")),
        Setting("localWriteTimeout", MILLISECONDS, 0, group=group, zero=ZERO_FALLBACK,
                fallback="localTimeout", help=local.format(what="write")),
        Setting("idleTimeout", MILLISECONDS, 0, group=group, zero=ZERO_LITERAL,
                help="Disconnect a client idle this long (ms); 0 = never."),
        Setting("clientOutputLimit", SIZE, 256 * 1024 * 1024, group=group,
                zero=ZERO_LITERAL, zeroMeans="unlimited",
                help="Disconnect a client whose replies not yet sent exceed this size "
                     "(bytes, or with a unit such as 64mb); 0 = unlimited."),
        Setting("pubsubOutputLimit", SIZE, 32 * 1024 * 1024, group=group,
                zero=ZERO_LITERAL, zeroMeans="unlimited",
                help="The output limit of a subscribed client, as Redis's "
                     "client-output-buffer-limit pubsub hard limit; 0 = unlimited."),
        Setting("pubsubOutputSoftLimit", SIZE, 8 * 1024 * 1024, group=group,
                zero=ZERO_LITERAL, zeroMeans="none",
                help="A subscribed client over this size of unsent replies for "
                     "--pubsubOutputSoftTime is disconnected, as Redis's pubsub soft "
                     "limit; 0 = none."),
        Setting("pubsubOutputSoftTime", MILLISECONDS, 60000, group=group,
                zero=ZERO_LITERAL,
                help="How long (ms) a subscribed client may stay over "
                     "--pubsubOutputSoftLimit; 0 = not at all."),
        Setting("clientQueryBufferLimit", SIZE, 1024 * 1024 * 1024, group=group,
                zero=ZERO_LITERAL, zeroMeans="unlimited",
                help="Close a client holding more than this of an incomplete request, "
                     "as Redis's client-query-buffer-limit; 0 = unlimited."),
        Setting("queryBuffersLimit", SIZE, 256 * 1024 * 1024, group=group,
                zero=ZERO_LITERAL, zeroMeans="unlimited",
                help="Most memory all clients' incomplete requests may hold in one rmux "
                     "process; past it the client holding the most is closed with an "
                     "error, unless it is the only one; 0 = unlimited."),
        Setting("maxBulkLength", SIZE, 512 * 1024 * 1024, group=group,
                help="Longest argument a client may send, as Redis's "
                     "proto-max-bulk-len (bytes, or with a unit); 0 = {default}."),
        Setting("maxArguments", INTEGER, 2**31 - 1, group=group,
                help="Most arguments in one command; 0 = {default}, Redis's own limit "
                     "(the bytes they take are what is limited in practice)."),
        Setting("maxInlineLength", SIZE, 64 * 1024, group=group,
                help="Longest inline command, or RESP header line, a client may send "
                     "(bytes, or with a unit); 0 = {default}."),
        Setting("shutdownTimeout", MILLISECONDS, 5000, group=group, zero=ZERO_LITERAL,
                zeroMeans="do not wait",
                help="On SIGTERM, how long clients may still collect the replies they "
                     "are owed before they are closed (ms); 0 = close them at once."),
        Setting("denyCommands", STRING, "shutdown replicaof slaveof failover", group=group,
                help="Commands clients may not run, separated by spaces: names "
                     "(client|kill, or client for every subcommand) and Redis ACL "
                     "categories (@admin, @dangerous...); a denied command gets "
                     "Redis's NOPERM error. '' denies nothing. Default: '{default}', "
                     "which stop or demote the servers every host shares."),
    ]


def _repeatLimits():
    from rmux import logs

    return {"burst": logs.REPEAT_BURST, "interval": f"{logs.REPEAT_INTERVAL:g}"}


def _process():
    stats, logging = "Stats and metrics", "Logging and profiling"
    return [
        Setting("statsPort", PORT, 0, group=stats, scope=GLOBAL, json=False, high=65535,
                zero=ZERO_LITERAL,
                help="TCP port serving twemproxy-compatible stats JSON (0 = none)."),
        Setting("metricsPort", PORT, 0, group=stats, scope=GLOBAL, json=False, high=65535,
                zero=ZERO_LITERAL,
                help="TCP port serving Prometheus metrics at /metrics (0 = none)."),
        Setting("statsHost", STRING, "127.0.0.1", group=stats, scope=GLOBAL, json=False,
                help="Interface the stats and metrics ports listen on."),
        Setting("statsInterval", MILLISECONDS, 10000, group=stats, scope=GLOBAL, json=False,
                help="How often statsd gets the counters, and workers report theirs (ms)."),
        Setting("graphite", STRING, None, group=stats, scope=GLOBAL, json=False,
                help="statsd host:port (UDP) to send metrics to."),
        Setting("timing", BOOLEAN, False, group=stats, scope=GLOBAL, json=False,
                help="Also send timing metrics to --graphite."),
        Setting("debug", BOOLEAN, False, group=logging, scope=GLOBAL, json=False,
                help="Log debug events too; without it, info and above. Either way, one "
                     "event repeated is shown at most {burst} times per {interval} s, "
                     "then counted.", helpValues=_repeatLimits),
        Setting("useSyslog", BOOLEAN, False, group=logging, scope=GLOBAL, json=False,
                help="Also send every event to syslog, one line each (ident rmux, "
                     "facility daemon, priority by level). Off by default, unlike Go "
                     "rmux, since twistd logs already; twistd's own --syslog sends its "
                     "log there instead, so use one or the other."),
        Setting("cpuProfile", STRING, None, group=logging, scope=GLOBAL, json=False,
                help="Profile rmux's CPU use (cProfile) from start to stop and write it "
                     "to this file when rmux stops; read it with python -m pstats. With "
                     "--maxProcesses, only the parent process is profiled."),
        Setting("checkConfig", BOOLEAN, False, group="This command", scope=COMMAND,
                json=False,
                help="Check the options and the --config file, print the result and exit "
                     "(0 if valid, 1 if not) instead of running."),
    ]


SETTINGS = tuple(_listening() + _backends() + _tls() + _placement() + _health() + _clients()
                 + _process())
"""Every setting, in C{--help} order."""

BY_NAME = {setting.name: setting for setting in SETTINGS}

GROUPS = tuple(dict.fromkeys(setting.group for setting in SETTINGS))
"""The C{--help} groups, in order."""


def default(name):
    """
    The default of the setting called C{name}.
    """
    return BY_NAME[name].default


def seconds(name):
    """
    The default of the millisecond setting called C{name}, in seconds, as
    the objects that run on the reactor take it.
    """
    return BY_NAME[name].default / 1000.0


def listenerFields():
    """
    The settings that are fields of a listener's configuration.
    """
    return [s for s in SETTINGS if s.scope == LISTENER]


def globalFields():
    """
    The settings that are fields of the whole process's configuration.
    """
    return [s for s in SETTINGS if s.scope == GLOBAL]


def flagSettings():
    """
    The settings given as flags, in order.
    """
    return [s for s in SETTINGS if s.flag]


def jsonSettings():
    """
    The settings a listener object of the JSON file may hold.
    """
    return [s for s in SETTINGS if s.json and s.scope in (LISTENER, INPUT)]


def _tableDefault(setting):
    if setting.kind == BOOLEAN:
        return "off"
    if setting.zero == ZERO_FALLBACK:
        return f"`--{setting.fallback}`"
    if setting.default in (None, ()):
        return "none"
    return f"`{setting.shownDefault()}`"


def markdownTable():
    """
    The README's table of options, one row per setting.
    """
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        option = f"`--{setting.name}`" if setting.flag else f"`{setting.name}` (JSON)"
        text = setting.helpText().replace("|", "\\|")
        rows.append(f"| {option} | {_tableDefault(setting)} | {text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdownTable(), end="")
