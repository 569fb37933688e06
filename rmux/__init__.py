"""
rmux: a Redis connection pooler and key-hashing multiplexer built on Twisted.

Clients connect to rmux on a local unix socket (or loopback TCP); rmux keeps a
few persistent, pipelined connections to each Redis server and forwards each
command to the server its key hashes to.
"""

__version__ = "0.1.0"
