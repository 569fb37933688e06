#!/usr/bin/env python3
"""
Regenerate C{rmux/commands.json} from a real Redis server.

rmux does not guess what a command does from its name (the Go rmux's letter
filter did, and got most new commands wrong).  It reads the server's own
description: C{COMMAND} gives arity, flags, ACL categories, tips and key
specs for every command and subcommand, and C{COMMAND DOCS} gives the group
and the version each one appeared in.  This script stores that, normalised
and sorted, as data that C{rmux.commands} loads; the rmux policy decisions
(local, refused, fan-out, ...) are made in code on top of it.

By default it starts a throw-away C{redis-server} on a unix socket in a
temporary directory (no TCP port, no persistence) and stops it at the end::

    .venv/bin/python tools/gen_commands.py

or it reads a server that is already running::

    .venv/bin/python tools/gen_commands.py --socket /path/to/redis.sock

The output has one command per line so that a diff after a Redis upgrade
shows exactly which commands changed.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import hiredis


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(os.path.dirname(HERE), "rmux", "commands.json")


class RedisError(Exception):
    """
    The server answered a command with an error reply.
    """


class MiniClient:
    """
    Just enough of a Redis client to ask a few questions over a unix socket.

    redis-py would work too, but its response callbacks reshape C{COMMAND}
    replies differently between versions and protocols; the raw reply parsed
    by hiredis is exactly what the server sent.
    """

    def __init__(self, path, timeout=10.0):
        """
        @param path: the server's unix socket.
        @param timeout: seconds to wait for any one reply.
        """
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._reader = hiredis.Reader(replyError=RedisError)

    def call(self, *args):
        """
        Send one command and return its parsed reply.

        @param args: the command and its arguments, as C{str} or C{bytes}.
        @raise RedisError: the server replied with an error.
        """
        parts = [b"*%d\r\n" % (len(args),)]
        for arg in args:
            if isinstance(arg, str):
                arg = arg.encode("utf-8")
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        self._sock.sendall(b"".join(parts))
        while True:
            reply = self._reader.gets()
            if reply is not False:
                if isinstance(reply, RedisError):
                    raise reply
                return reply
            data = self._sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self._reader.feed(data)

    def close(self):
        self._sock.close()


def startServer(directory, executable="redis-server"):
    """
    Start a private, disposable redis-server listening only on a unix socket.

    @param directory: where its socket, log and working files go.
    @return: C{(process, socketPath)}.
    """
    path = os.path.join(directory, "r.sock")
    process = subprocess.Popen(
        [executable, "--port", "0", "--unixsocket", path, "--save", "",
         "--appendonly", "no", "--dir", directory,
         "--logfile", os.path.join(directory, "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("redis-server exited with %r"
                               % (process.returncode,))
        if os.path.exists(path):
            try:
                client = MiniClient(path, timeout=1)
                try:
                    client.call("PING")
                    return process, path
                finally:
                    client.close()
            except (OSError, RedisError):
                pass
        time.sleep(0.02)
    process.kill()
    process.wait()
    raise RuntimeError("redis-server did not start within 10 seconds")


def _text(value):
    """
    Decode a bulk or simple string reply; leave other values alone.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _asMap(value):
    """
    Turn a RESP3 map (a C{dict}) or a RESP2 flat key/value list into a
    C{dict} with C{str} keys.
    """
    if isinstance(value, dict):
        items = value.items()
    else:
        items = zip(value[0::2], value[1::2])
    return {_text(k): v for k, v in items}


def _flagList(value):
    """
    A RESP2 array or RESP3 set of flag names, as a sorted list of C{str}.
    """
    return sorted(_text(f) for f in value)


def normaliseKeySpec(raw):
    """
    Turn one Redis 7 key spec into rmux's compact, stable form.

    The C{begin} and C{find} parts become short lists whose first element is
    the type, in the order the fields appear in the Redis documentation::

        begin: ["index", pos] | ["keyword", KEYWORD, startfrom] | ["unknown"]
        find:  ["range", lastkey, keystep, limit]
             | ["keynum", keynumidx, firstkey, keystep] | ["unknown"]

    The free-text C{notes} are dropped: they are documentation, not data.

    @param raw: the key spec as the server returned it (map or flat list).
    @return: a C{dict} with C{flags}, C{begin} and C{find}.
    """
    spec = _asMap(raw)
    begin = _asMap(spec["begin_search"])
    beginType = _text(begin["type"])
    beginSpec = _asMap(begin["spec"]) if begin.get("spec") else {}
    if beginType == "index":
        beginOut = ["index", int(beginSpec["index"])]
    elif beginType == "keyword":
        beginOut = ["keyword", _text(beginSpec["keyword"]),
                    int(beginSpec["startfrom"])]
    else:
        beginOut = [beginType]
    find = _asMap(spec["find_keys"])
    findType = _text(find["type"])
    findSpec = _asMap(find["spec"]) if find.get("spec") else {}
    if findType == "range":
        findOut = ["range", int(findSpec["lastkey"]), int(findSpec["keystep"]),
                   int(findSpec["limit"])]
    elif findType == "keynum":
        findOut = ["keynum", int(findSpec["keynumidx"]),
                   int(findSpec["firstkey"]), int(findSpec["keystep"])]
    else:
        findOut = [findType]
    return {"begin": beginOut, "find": findOut,
            "flags": _flagList(spec.get("flags", []))}


def normaliseCommand(raw, docs):
    """
    Turn one C{COMMAND} reply entry (and its subcommands) into table rows.

    @param raw: C{[name, arity, flags, first, last, step, acl, tips,
        keyspecs, subcommands]}, as Redis 7 returns it.
    @param docs: a C{dict} of command name to its C{COMMAND DOCS} map.
    @return: a list of rows, the command's own first.
    """
    (name, arity, flags, first, last, step, categories, tips, keySpecs,
     subcommands) = raw[:10]
    name = _text(name).lower()
    doc = docs.get(name, {})
    row = {
        "name": name,
        "arity": int(arity),
        "flags": _flagList(flags),
        "firstKey": int(first),
        "lastKey": int(last),
        "step": int(step),
        "categories": _flagList(categories),
        "keySpecs": [normaliseKeySpec(k) for k in keySpecs],
        "tips": sorted(_text(t) for t in tips),
        "group": _text(doc.get("group", "")),
        "since": _text(doc.get("since", "")),
    }
    docFlags = _flagList(doc.get("doc_flags", []))
    if docFlags:
        row["docFlags"] = docFlags
    rows = [row]
    if subcommands:
        subDocs = _asMap(doc.get("subcommands", {}))
        subDocs = {k.lower(): _asMap(v) for k, v in subDocs.items()}
        for sub in subcommands:
            rows.extend(normaliseCommand(sub, subDocs))
        row["subcommands"] = sorted(r["name"] for r in rows[1:])
    return rows


def readTable(client):
    """
    Ask a server for its command table.

    @param client: a connected L{MiniClient}.
    @return: a C{dict} ready to be written as C{commands.json}.
    """
    info = client.call("INFO", "server").decode("utf-8")
    version = "unknown"
    for line in info.splitlines():
        if line.startswith("redis_version:"):
            version = line.split(":", 1)[1].strip()
    docs = {_text(k).lower(): _asMap(v)
            for k, v in _asMap(client.call("COMMAND", "DOCS")).items()}
    rows = []
    for raw in client.call("COMMAND"):
        rows.extend(normaliseCommand(raw, docs))
    rows.sort(key=lambda r: r["name"])
    return {"redisVersion": version, "commands": rows}


def render(table):
    """
    Serialise the table: a small header, then one command per line.

    @return: the file's text.
    """
    lines = [
        "{",
        '"comment": "Generated by tools/gen_commands.py from a real '
        'redis-server; do not edit by hand, rerun the script.",',
        '"redisVersion": %s,' % (json.dumps(table["redisVersion"]),),
        '"commands": [',
    ]
    # Rows keep the order normaliseCommand builds them in (name first), so
    # the file reads naturally; that order is fixed, so the output is stable.
    rows = [json.dumps(row) for row in table["commands"]]
    lines.append(",\n".join(rows))
    lines.append("]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", help="use the redis-server already "
                        "listening on this unix socket")
    parser.add_argument("--redis-server", default="redis-server",
                        help="executable to start (default: %(default)s)")
    parser.add_argument("--protocol", type=int, choices=(2, 3), default=2,
                        help="RESP version to talk (default: %(default)s); "
                        "the output is the same either way")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help="where to write (default: %(default)s)")
    options = parser.parse_args(argv)

    directory = process = None
    path = options.socket
    try:
        if path is None:
            directory = tempfile.mkdtemp(prefix="rmux-gen-")
            process, path = startServer(directory, options.redis_server)
        client = MiniClient(path)
        try:
            if options.protocol == 3:
                client.call("HELLO", "3")
            table = readTable(client)
        finally:
            client.close()
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    text = render(table)
    json.loads(text)  # refuse to write something we cannot read back
    with open(options.output, "w", encoding="utf-8") as f:
        f.write(text)
    sys.stdout.write("wrote %d commands from Redis %s to %s\n" % (
        len(table["commands"]), table["redisVersion"], options.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
