# -*- test-case-name: tests.test_proxy -*-
"""
The commands a client's connection to rmux answers or runs itself, rather
than forwarding them: they describe or set up the client's own connection
(PING, SELECT, AUTH, HELLO, CLIENT SETNAME...), which is not any one
pooled server connection, or they change its transaction state (MULTI,
WATCH...), which its L{rmux.session.Session} keeps.

Each is a small handler C{handler(client, args, spec)}, found by the
command's name in L{HANDLERS}; the client is an L{rmux.proxy.ClientProtocol}.
A new local command is one function here and one line in L{HANDLERS}
(and the C{local} policy in L{rmux.commands}).  The replies are Redis 7's,
byte for byte, errors included.
"""

from rmux import commands as C
from rmux import resp
from rmux.auth import NOPASSWORD, WRONGPASS
from rmux.info import InfoGatherer, asksServers
from rmux.resp import errorReply
from rmux.router import PlacementError
from rmux.session import SESSION_COMMANDS
from rmux.transport import unsentBytes

__all__ = ["HANDLERS", "describe", "decimal", "echoToMonitors", "quoted"]

HELLO_NOAUTH = (
    b"-NOAUTH HELLO must be called with the client already authenticated, "
    b"otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
    b"authenticate the client and select the RESP protocol version at the "
    b"same time\r\n"
)
BADNAME = resp.error(b"ERR Client names cannot contain spaces, newlines or special characters.")
RESET = b"+RESET\r\n"


def isValidName(value):
    """
    Whether C{value} may be a client name: Redis refuses spaces, newlines
    and anything outside '!'..'~'.
    """
    return all(33 <= byte <= 126 for byte in value)


def decimal(value):
    """
    Parse a Redis integer argument strictly (as C{string2ll} does).

    @return: the C{int}, or L{None} if C{value} is not one.
    """
    if not value or len(value) > 20:
        return None
    head = value[1:] if value[:1] == b"-" else value
    if not head.isdigit() or (len(head) > 1 and head[:1] == b"0"):
        return None
    number = int(value)
    if not -(2**63) <= number < 2**63:
        return None
    return number


# The connection

def ping(client, args, spec):
    if len(args) > 2:
        client.reply(C.wrongArityError("ping"))
    elif client.subscribedResp2:
        # Redis answers a subscribed RESP2 client in the push layout.
        client.reply(b"*2\r\n$4\r\npong\r\n" + resp.bulkString(args[1] if len(args) == 2 else b""))
    elif len(args) == 2:
        client.reply(resp.bulkString(args[1]))
    else:
        client.reply(resp.PONG)


def echo(client, args, spec):
    client.reply(resp.bulkString(args[1]))


def quit(client, args, spec):
    client.reply(resp.OK)
    client.closeAfterReplies()


def select(client, args, spec):
    db = decimal(args[1])
    if db is None:
        client.reply(resp.error(b"ERR value is not an integer or out of range"))
        return
    databases = client.factory.databases()
    if db < 0 or (databases is not None and db >= databases) or db >= 2**31:
        client.reply(resp.error(b"ERR DB index is out of range"))
        return
    client.session.db = db
    client.reply(resp.OK)


def info(client, args, spec):
    """
    INFO: the live servers' INFO, merged, then rmux's sections (see
    L{rmux.info}).
    """
    sections = [a.decode("latin-1").lower() for a in args[1:]]
    factory = client.factory
    pools = factory.livePools() if asksServers(sections) else []
    gatherer = InfoGatherer(
        client.newSlot(), factory, sections, client.protocolVersion, len(pools))
    payload = resp.encodeRequest(args)
    for index, pool in enumerate(pools):
        client.session.send(pool, payload, gatherer.part(index))


def reset(client, args, spec):
    """
    RESET: leave every transaction, subscription and setting, as a new
    connection would be.
    """
    client.session.reset()
    client.leavePubSub()
    client.name = None
    client.authenticated = not client.factory.auth.required
    client.replies.setMode("on")
    client.reply(RESET)


# Authentication

def auth(client, args, spec):
    if len(args) == 2:
        username, password = None, args[1]
    else:
        username, password = args[1], args[2]
    if username is None and not client.factory.auth.acceptsSingleArgument:
        client.reply(NOPASSWORD)
        return
    reply = authenticate(client, username, password)
    if reply is not None:
        client.reply(reply)


def authenticate(client, username, password):
    """
    Check credentials in constant time.  A failure's reply is delayed more
    for each consecutive failure on this connection, and the client's later
    commands wait for it, so a pipeline of guesses is as slow as guessing
    one by one.

    @return: C{+OK}, or L{None} when a delayed WRONGPASS is queued.
    """
    factory = client.factory
    auth = factory.auth
    if auth.check(username, password):
        client.authenticated = True
        client.authFailures = 0
        client.user = (username or b"default").decode("utf-8", "replace")
        client.denied = factory.userDenied.get(client.user, factory.denied)
        client.parser.authenticated()
        return resp.OK
    client.authFailures += 1
    factory.stats.authFailures += 1
    delay = auth.failureDelay(client.authFailures)
    if not delay:
        return WRONGPASS
    slot = client.newSlot()
    client.hold()

    def answer():
        slot.fill(WRONGPASS)
        client.release()

    client.clock.callLater(delay, answer)
    return None


def hello(client, args, spec):
    version = client.protocolVersion
    position = 1
    if len(args) > 1:
        version = decimal(args[1])
        if version is None:
            client.reply(resp.error(b"ERR Protocol version is not an integer or out of range"))
            return
        if version not in (2, 3):
            client.reply(resp.error(b"NOPROTO unsupported protocol version"))
            return
        position = 2
    name = credentials = None
    while position < len(args):
        option = args[position].lower()
        remaining = len(args) - position - 1
        if option == b"auth" and remaining >= 2:
            credentials = (args[position + 1], args[position + 2])
            position += 3
        elif option == b"setname" and remaining >= 1:
            name = args[position + 1]
            if not isValidName(name):
                client.reply(BADNAME)
                return
            position += 2
        else:
            client.reply(errorReply(
                "Syntax error in HELLO option '%s'" % (args[position].decode("latin-1"),)))
            return
    if credentials is not None:
        reply = authenticate(client, *credentials)
        if reply is None:
            return
        if reply != resp.OK:
            client.reply(reply)
            return
    elif not client.authenticated:
        client.reply(HELLO_NOAUTH)
        return
    if name is not None:
        client.name = name or None
    client.session.protocolVersion = version
    client.reply(helloReply(client, version))


def helloReply(client, version):
    """
    HELLO's map: the server's facts, as one Redis server would give them.
    """
    facts = client.factory.backendFacts()
    bulk = resp.bulkString
    pairs = [
        (bulk(b"server"), bulk(b"redis")),
        (bulk(b"version"), bulk(facts["version"].encode())),
        (bulk(b"proto"), resp.integer(version)),
        (bulk(b"id"), resp.integer(client.id)),
        (bulk(b"mode"), bulk(b"standalone")),
        (bulk(b"role"), bulk(b"master")),
        (bulk(b"modules"), resp.arrayReply([])),
    ]
    return resp.mapReply(pairs, version)


# CLIENT

def clientSetname(client, args, spec):
    name = args[2]
    if not isValidName(name):
        client.reply(BADNAME)
        return
    client.name = name or None
    client.reply(resp.OK)


def clientGetname(client, args, spec):
    if client.name is None:
        client.reply(resp.nullReply(client.protocolVersion))
    else:
        client.reply(resp.bulkString(client.name))


def clientId(client, args, spec):
    client.reply(resp.integer(client.id))


def clientSetinfo(client, args, spec):
    attribute = args[2].lower()
    value = args[3]
    if attribute not in (b"lib-name", b"lib-ver"):
        client.reply(errorReply("Unrecognized option '%s'" % (args[2].decode("latin-1"),)))
        return
    if not isValidName(value):
        client.reply(errorReply(
            "%s cannot contain spaces, newlines or special characters." % (attribute.decode(),)))
        return
    if attribute == b"lib-name":
        client.libName = value
    else:
        client.libVersion = value
    client.reply(resp.OK)


def clientInfo(client, args, spec):
    client.reply(resp.verbatimString(describe(client).encode() + b"\n", client.protocolVersion))


_TYPES = {b"normal": False, b"pubsub": True, b"master": None, b"replica": None,
          b"slave": None}


def clientList(client, args, spec):
    """
    CLIENT LIST [TYPE type] [ID id ...]: rmux's clients, in Redis's layout.
    """
    clients = sorted((c for c in client.factory.clients if not c.killed), key=lambda c: c.id)
    if len(args) > 2:
        option = args[2].lower()
        if option == b"type" and len(args) == 4:
            kind = args[3].lower()
            if kind not in _TYPES:
                client.reply(errorReply("Unknown client type '%s'" % (args[3].decode("latin-1"),)))
                return
            clients = [c for c in clients if _isPubSub(c) is _TYPES[kind]]
        elif option == b"id" and len(args) > 3:
            ids = [decimal(a) for a in args[3:]]
            if any(i is None or i <= 0 for i in ids):
                client.reply(errorReply("Invalid client ID"))
                return
            clients = [c for c in clients if c.id in ids]
        else:
            client.reply(resp.error(b"ERR syntax error"))
            return
    lines = "".join(describe(c) + "\n" for c in clients)
    client.reply(resp.verbatimString(lines.encode(), client.protocolVersion))


def _isPubSub(client):
    hub = client.factory.hub
    return bool(client.usedPubSub and hub is not None and hub.isSubscribed(client))


def _addressText(address):
    host = getattr(address, "host", None)
    if host is not None:
        return "%s:%d" % (host, address.port)
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return "%s:0" % (name,) if name else ""


def _flags(client, pubsub):
    session = client.session
    flags = ""
    if session.multi is not None:
        flags += "x"
    if session.blockedOn is not None:
        flags += "b"
    if pubsub:
        flags += "P"
    if session.tracking is not None:
        flags += "t"
    if session.noEvict:
        flags += "e"
    if getattr(client.transport.getHost(), "host", None) is None:
        flags += "U"
    return flags or "N"


def describe(client):
    """
    A client in the C{key=value} layout of Redis's CLIENT LIST.
    """
    now = client.clock.seconds()

    def text(value):
        return "" if value is None else value.decode("latin-1")

    transport = client.transport
    hub = client.factory.hub
    session = client.session
    pubsub = _isPubSub(client)
    counts = (0, 0, 0)
    if hub is not None and client.usedPubSub:
        counts = hub.counts(client)
    unsent = unsentBytes(transport) or 0
    fileno = getattr(transport, "fileno", None)
    fields = [
        ("id", client.id),
        ("addr", _addressText(transport.getPeer())),
        ("laddr", _addressText(transport.getHost())),
        ("fd", fileno() if callable(fileno) else -1),
        ("name", text(client.name)),
        ("age", int(now - client.createdAt)),
        ("idle", int(now - client.lastActivity)),
        ("flags", _flags(client, pubsub)),
        ("db", session.db),
        ("sub", counts[0]),
        ("psub", counts[1]),
        ("ssub", counts[2]),
        ("multi", len(session.multi) if session.multi is not None else -1),
        ("qbuf", client.parser.buffered),
        ("qbuf-free", 0),
        ("argv-mem", 0),
        ("multi-mem", 0),
        ("obl", 0),
        ("oll", len(client.replies)),
        ("omem", unsent),
        ("tot-mem", unsent + client.parser.buffered),
        ("events", "rw" if unsent else "r"),
        ("cmd", client.lastCommand if isinstance(client.lastCommand, str) else "NULL"),
        ("user", client.user),
        ("redir", session.redirect if session.tracking is not None else -1),
        ("resp", session.protocolVersion),
        ("lib-name", text(client.libName)),
        ("lib-ver", text(client.libVersion)),
    ]
    return " ".join("%s=%s" % pair for pair in fields)


def clientReply(client, args, spec):
    """
    CLIENT REPLY ON|OFF|SKIP, kept by rmux: the commands still run and
    their replies come back from the servers, and rmux drops them.
    """
    mode = args[2].lower()
    if mode not in (b"on", b"off", b"skip"):
        client.reply(resp.error(b"ERR syntax error"))
        return
    client.replies.setMode(mode.decode())
    if mode == b"on":
        client.reply(resp.OK)


def clientKill(client, args, spec):
    """
    CLIENT KILL, over rmux's clients: C{addr} alone (the old form), or
    filters (ID, TYPE, USER, ADDR, LADDR, SKIPME, MAXAGE) and a count.
    """
    factory = client.factory
    if len(args) == 3:
        address = args[2].decode("latin-1")
        victims = [c for c in factory.clients
                   if not c.killed and _addressText(c.transport.getPeer()) == address]
        if not victims:
            client.reply(errorReply("No such client"))
            return
        _kill(client, victims)
        client.reply(resp.OK)
        return
    if len(args) % 2:
        client.reply(resp.error(b"ERR syntax error"))
        return
    tests, skipMe = [], True
    for position in range(2, len(args), 2):
        option, value = args[position].lower(), args[position + 1]
        test = _killFilter(client, option, value)
        if isinstance(test, bytes):
            client.reply(test)
            return
        if option == b"skipme":
            skipMe = test
        else:
            tests.append(test)
    victims = [c for c in factory.clients if not c.killed and (c is not client or not skipMe)
               and all(test(c) for test in tests)]
    _kill(client, victims)
    client.reply(resp.integer(len(victims)))


def _killFilter(client, option, value):
    """
    One CLIENT KILL filter: a predicate (SKIPME: a boolean), or an error.
    """
    text = value.decode("latin-1")
    if option == b"id":
        number = decimal(value)
        if number is None:
            return resp.error(b"ERR value is not an integer or out of range")
        if number <= 0:
            return errorReply("client-id should be greater than 0")
        return lambda c: c.id == number
    if option == b"type":
        kind = value.lower()
        if kind not in _TYPES:
            return errorReply("Unknown client type '%s'" % (text,))
        return lambda c: _isPubSub(c) is _TYPES[kind]
    if option == b"user":
        if text != "default" and text not in client.factory.auth.users:
            return errorReply("No such user '%s'" % (text,))
        return lambda c: c.user == text
    if option == b"addr":
        return lambda c: _addressText(c.transport.getPeer()) == text
    if option == b"laddr":
        return lambda c: _addressText(c.transport.getHost()) == text
    if option == b"skipme" and value.lower() in (b"yes", b"no"):
        return value.lower() == b"yes"
    if option == b"maxage":
        seconds = decimal(value)
        if seconds is None:
            return resp.error(b"ERR syntax error")
        now = client.clock.seconds()
        return lambda c: now - c.createdAt >= seconds
    return resp.error(b"ERR syntax error")


def _kill(client, victims):
    """
    Close C{victims}: the caller after its reply, the others at once.
    """
    for victim in victims:
        victim.killed = True
        if victim is client:
            victim.closeAfterReplies()
        else:
            victim.transport.abortConnection()


def clientUnblock(client, args, spec):
    """
    CLIENT UNBLOCK id [TIMEOUT|ERROR]: the id is an rmux client's; its
    blocking command is unblocked on the server it blocks on.
    """
    target = decimal(args[2])
    if target is None:
        client.reply(resp.error(b"ERR value is not an integer or out of range"))
        return
    if len(args) == 4 and args[3].lower() not in (b"timeout", b"error"):
        client.reply(errorReply("CLIENT UNBLOCK reason should be TIMEOUT or ERROR"))
        return
    if len(args) > 4:
        client.reply(resp.error(b"ERR syntax error"))
        return
    blocked = [c for c in client.factory.clients
               if c.id == target and c.session.blockedOn is not None]
    connection = blocked[0].session.blockedOn if blocked else None
    if connection is None or connection.serverId is None:
        client.reply(resp.integer(0))
        return
    command = [b"CLIENT", b"UNBLOCK", b"%d" % (connection.serverId,)] + list(args[3:])
    client.session.send(connection.pool, resp.encodeRequest(command), client.newSlot())


def aclWhoami(client, args, spec):
    client.reply(resp.bulkString(client.user.encode("utf-8")))


# State kept on the client's own connections (rmux.ownconnections)

def _statePools(client, own):
    """
    The servers a state command goes to: those the client already has
    its own connection to, or one to answer it.
    """
    if own.connections:
        return list(own.connections)
    return [client.router.anyPool()]


def _changeState(client, args, record, command=None):
    """
    Run a state command on the client's own connections, recording the
    state with C{record(own)} once every server accepted it.
    """
    own = client.session.ownConnections()
    try:
        pools = _statePools(client, own)
    except PlacementError as e:
        own.settle()
        client.reply(e.reply)
        return
    own.change(command or (lambda pool: args), pools, lambda: record(own))


def clientTracking(client, args, spec):
    """
    CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN]
    [OPTOUT] [NOLOOP], on the client's own connections; a REDIRECT names an
    rmux client.
    """
    mode = args[2].lower()
    session = client.session
    if mode == b"off":
        if session.tracking is None:
            client.reply(resp.OK)
            return
        own = session.own
        _changeState(client, args, lambda own: setattr(own, "tracking", None),
                     lambda pool: own.trackingCommand(pool, args[2:]))
        return
    if mode != b"on":
        session.forward(args, spec)
        return
    upper = [a.upper() for a in args]
    redirect = 0
    if b"REDIRECT" in upper:
        index = upper.index(b"REDIRECT") + 1
        redirect = decimal(args[index]) if index < len(args) else None
        if redirect is None or not any(c.id == redirect for c in client.factory.clients):
            client.reply(errorReply("The client ID you want redirect to does not exist"))
            return

    def record(own):
        own.tracking = list(args[2:])
        own.redirect = redirect

    own = session.ownConnections()
    try:
        # BCAST is told of keys written anywhere: every server tracks.
        pools = ((b"BCAST" in upper and client.factory.livePools())
                 or _statePools(client, own))
    except PlacementError as e:
        own.settle()
        client.reply(e.reply)
        return
    if not redirect or client.factory.hub is None:
        own.change(lambda pool: own.trackingCommand(pool, args[2:]), pools,
                   lambda: record(own))
        return
    # The redirect goes to rmux's subscriber connection on each server:
    # connect those first, holding the client's later commands.
    client.hold()

    def connected(ids):
        own.change(lambda pool: own.trackingCommand(pool, args[2:]), pools, lambda: record(own))
        client.release()

    client.factory.hub.serverIds(pools).addCallback(connected)


def clientGetredir(client, args, spec):
    session = client.session
    if session.tracking is None:
        client.reply(resp.integer(-1))
    else:
        client.reply(resp.integer(session.redirect))


def clientCaching(client, args, spec):
    """
    CLIENT CACHING YES|NO: checked here as Redis checks it, and sent ahead
    of the client's next command, on the connection that command takes.
    """
    session = client.session
    if session.tracking is None:
        client.session.forward(args, spec)
        return
    options = [a.upper() for a in session.tracking]
    answer = args[2].lower()
    if answer == b"yes" and b"OPTIN" not in options:
        client.reply(errorReply(
            "CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode."))
    elif answer == b"no" and b"OPTOUT" not in options:
        client.reply(errorReply(
            "CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode."))
    elif answer not in (b"yes", b"no"):
        client.reply(resp.error(b"ERR syntax error"))
    else:
        session.own.caching = list(args)
        client.reply(resp.OK)


def _flag(name, on, off=None):
    """
    The handler of a connection flag: C{on} (and C{off}) as the commands
    that turn it on (and off), such as CLIENT NO-EVICT ON|OFF.
    """

    def handler(client, args, spec):
        if off is None:
            turnOn = [a.lower() for a in args[:len(on)]] == [a.lower() for a in on]
            turnOff = not turnOn and len(args) == len(on) and args[-1].lower() == b"off"
        else:
            turnOn = args[0].lower() == on[0].lower()
            turnOff = not turnOn
        session = client.session
        if not (turnOn or turnOff) or (turnOff and (session.own is None
                                                      or name not in session.own.flags)):
            # A syntax error, or nothing to turn off: the server answers.
            session.forward(args, spec)
            return
        if turnOn:
            _changeState(client, args, lambda own: own.flags.__setitem__(name, list(on)))
        else:
            _changeState(client, args, lambda own: own.flags.pop(name, None))

    return handler


def monitor(client, args, spec):
    """
    MONITOR: rmux watches every live server for the client.
    """
    pools = client.factory.livePools()
    if not pools:
        client.reply(errorReply("rmux: every backend is down"))
        return
    client.session.ownConnections().monitor(pools)
    client.factory.monitors.add(client)


def monitored(client, args, spec):
    """
    A command from a client that is MONITORing: the servers answer it in
    the feed, as Redis answers a monitoring connection.
    """
    name = spec.name if spec is not None else ""
    if name in ("quit", "reset"):
        HANDLERS[name](client, args, spec)
        return
    try:
        pool = (client.router.poolForCommand(args, spec) if spec is not None else None) \
            or client.router.anyPool()
    except PlacementError as e:
        client.reply(e.reply)
        return
    client.session.own.monitored(args, pool)



# MONITOR lines for the commands rmux answers itself

#: The commands answered here without a server seeing them, which Redis's
#: MONITOR would show (it hides admin commands).
_UNSEEN = frozenset([
    "ping", "echo", "select", "quit", "reset", "auth", "hello", "client|setname",
    "client|getname", "client|id", "client|setinfo", "client|info", "client|reply",
    "client|getredir", "acl|whoami",
])
_ESCAPES = {0x5C: b"\\\\", 0x22: b'\\"', 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t",
            0x07: b"\\a", 0x08: b"\\b"}
_REPR = [_ESCAPES.get(byte, bytes([byte]) if 32 <= byte < 127 else b"\\x%02x" % byte)
         for byte in range(256)]


def quoted(value):
    """
    C{value} as Redis's C{sdscatrepr} writes it in a MONITOR line.
    """
    return b'"' + b"".join([_REPR[byte] for byte in value]) + b'"'


def _redacted(args, name):
    """
    C{args} with AUTH's secrets hidden, as Redis hides them from MONITOR.
    """
    if name == "auth":
        return args[:1] + [b"(redacted)"] * (len(args) - 1)
    if name == "hello":
        upper = [a.upper() for a in args]
        if b"AUTH" in upper:
            at = upper.index(b"AUTH")
            return args[:at + 1] + [b"(redacted)"] * len(args[at + 1:at + 3]) + args[at + 3:]
    return args


def echoToMonitors(client, args, spec):
    """
    Show a command rmux answered itself, which no server saw, to the
    clients MONITORing through this listener, in Redis's format: the
    monitor of a proxy that answers PING should still see the PING.
    """
    name = spec.name
    if name not in _UNSEEN:
        return
    address = client.transport.getPeer()
    if getattr(address, "host", None) is None:
        where = b"unix:" + _addressText(client.transport.getHost())[:-2].encode()
    else:
        where = _addressText(address).encode()
    now = client.clock.seconds()
    line = b"+%d.%06d [%d %s] %s\r\n" % (
        int(now), int(now * 1e6) % 1000000, client.session.db, where,
        b" ".join([quoted(arg) for arg in _redacted(args, name)]))
    monitors = client.factory.monitors
    for watcher in list(monitors):
        own = watcher.session.own
        if watcher.disconnected or own is None or not own.monitoring:
            monitors.discard(watcher)
        elif watcher is not client:
            watcher.reply(line)


# Server-wide commands that would lock rmux out of its own servers

_LOCKOUT = (
    "rmux: {what} would lock rmux out of its servers (it logs in as {user!r}); "
    "change the password on the servers and in rmux's backend addresses"
)


def _backendUser(client):
    """
    The user rmux logs in to its servers as.
    """
    for pool in client.router.pools:
        if pool.address.username is not None:
            return pool.address.username
    return "default"


def configSet(client, args, spec):
    """
    CONFIG SET, forwarded, but not of C{requirepass}: rmux's own
    connections would lose their way in.
    """
    if any(name.lower() == b"requirepass" for name in args[2::2]):
        client.reply(errorReply(_LOCKOUT.format(
            what="CONFIG SET requirepass", user=_backendUser(client))))
        return
    client.session.forward(args, spec)


def aclSetuser(client, args, spec):
    """
    ACL SETUSER, forwarded, but not if it disables, resets or adds a
    password to the user rmux logs in as.
    """
    user = _backendUser(client)
    if args[2].decode("utf-8", "replace") == user and any(
            rule.lower() in (b"off", b"reset", b"resetpass") or rule[:1] in (b">", b"#")
            for rule in args[3:]):
        client.reply(errorReply(_LOCKOUT.format(what="this ACL SETUSER", user=user)))
        return
    client.session.forward(args, spec)



def _onSession(method):
    """
    The handler that runs a transaction command on the client's session.
    """

    def handler(client, args, spec):
        method(client.session, args, spec)

    return handler


#: Every command a client's connection runs itself, by full name.
HANDLERS = {
    "ping": ping,
    "echo": echo,
    "quit": quit,
    "select": select,
    "info": info,
    "reset": reset,
    "auth": auth,
    "hello": hello,
    "client|setname": clientSetname,
    "client|getname": clientGetname,
    "client|id": clientId,
    "client|setinfo": clientSetinfo,
    "client|info": clientInfo,
    "client|list": clientList,
    "client|reply": clientReply,
    "client|kill": clientKill,
    "client|unblock": clientUnblock,
    "acl|whoami": aclWhoami,
    "client|tracking": clientTracking,
    "client|getredir": clientGetredir,
    "client|caching": clientCaching,
    "client|no-evict": _flag(b"no-evict", [b"CLIENT", b"NO-EVICT", b"ON"]),
    "client|no-touch": _flag(b"no-touch", [b"CLIENT", b"NO-TOUCH", b"ON"]),
    "readonly": _flag(b"readonly", [b"READONLY"], [b"READWRITE"]),
    "readwrite": _flag(b"readonly", [b"READONLY"], [b"READWRITE"]),
    "monitor": monitor,
    "config|set": configSet,
    "acl|setuser": aclSetuser,
}
HANDLERS.update((name, _onSession(method)) for name, method in SESSION_COMMANDS.items())
