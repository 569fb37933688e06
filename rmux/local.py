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
from rmux.info import infoText
from rmux.resp import errorReply
from rmux.session import SESSION_COMMANDS

__all__ = ["HANDLERS", "describe", "decimal"]

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
    sections = [a.decode("latin-1").lower() for a in args[1:]]
    text = infoText(client.factory, sections)
    client.reply(resp.verbatimString(text.encode("utf-8"), client.protocolVersion))


def reset(client, args, spec):
    """
    RESET: leave every transaction, subscription and setting, as a new
    connection would be.
    """
    client.session.reset()
    client.leavePubSub()
    client.name = None
    client.authenticated = not client.factory.auth.required
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


def clientList(client, args, spec):
    lines = "".join(describe(c) + "\n" for c in client.factory.clients)
    client.reply(resp.verbatimString(lines.encode(), client.protocolVersion))


def _addressText(address):
    host = getattr(address, "host", None)
    if host is not None:
        return "%s:%d" % (host, address.port)
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return name or ""


def describe(client):
    """
    A client in the C{key=value} layout of Redis's CLIENT LIST.
    """
    now = client.clock.seconds()

    def text(value):
        return "" if value is None else value.decode("latin-1")

    transport = client.transport
    return (
        "id=%d addr=%s laddr=%s name=%s age=%d idle=%d db=%d resp=%d "
        "qbuf=%d oll=%d cmd=%s lib-name=%s lib-ver=%s"
        % (
            client.id,
            _addressText(transport.getPeer()),
            _addressText(transport.getHost()),
            text(client.name),
            now - client.createdAt,
            now - client.lastActivity,
            client.session.db,
            client.protocolVersion,
            client.parser.buffered,
            len(client.replies),
            client.lastCommand if isinstance(client.lastCommand, str) else "NULL",
            text(client.libName),
            text(client.libVersion),
        )
    )


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
}
HANDLERS.update((name, _onSession(method)) for name, method in SESSION_COMMANDS.items())
