#!/usr/bin/env python3
"""Exercises every memcached command against HOST PORT and prints each
answer, one per line: run against a real memcached and against shmnet's
cache, the two outputs must be identical. Classic commands go through
pymemcache (a real client library); meta commands, noreply, pipelining
and bad input through a raw socket. Only what must differ between two
servers is normalised: the version string, pid, uptime and time."""

import socket
import sys
import time

from pymemcache.client.base import Client

HOST, PORT = sys.argv[1], int(sys.argv[2])
out = []


def show(label, value):
    out.append(f"{label}: {value!r}")


def raw(data, end=b"MN\r\n"):
    """Sends `data` then `mn`, returns what came back before `MN`."""
    with socket.create_connection((HOST, PORT), timeout=10) as s:
        s.sendall(data + b"mn\r\n")
        got = b""
        while not got.endswith(end):
            chunk = s.recv(1 << 20)
            if not chunk:
                return got + b"<closed>"
            got += chunk
        return got[: -len(end)]


def closed_after(data):
    """Sends `data`; returns what came back until the server closed."""
    with socket.create_connection((HOST, PORT), timeout=10) as s:
        s.sendall(data)
        got = b""
        while True:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                return got + b"<reset>"
            if not chunk:
                return got + b"<closed>"
            got += chunk


c = Client((HOST, PORT), default_noreply=False)
c.flush_all()

# Storage and retrieval through the client library.
show("set", c.set("k1", b"v1", expire=0))
show("set flags", c.set("k2", b"v2"))
show("get", c.get("k1"))
show("get miss", c.get("nope"))
show("get_many", sorted(c.get_many(["k1", "k2", "nope"]).items()))
value, cas = c.gets("k1")
show("gets", value)
show("cas ok", c.cas("k1", b"v1b", cas))
show("cas stale", c.cas("k1", b"v1c", cas))
show("cas missing", c.cas("nokey", b"x", 1))
show("add exists", c.add("k1", b"x"))
show("add new", c.add("k3", b"v3"))
show("replace", c.replace("k3", b"v3b"))
show("replace missing", c.replace("k4", b"x"))
show("append", c.append("k3", b"++"))
show("prepend", c.prepend("k3", b"--"))
show("append missing", c.append("k4", b"x"))
show("after append/prepend", c.get("k3"))
show("set n", c.set("n", b"10"))
show("incr", c.incr("n", 5))
show("decr", c.decr("n", 100))
show("incr missing", c.incr("nn", 1))
show("decr padded", (c.set("m", b"100"), c.decr("m", 1), c.get("m")))
show("incr wraps", (c.set("w", b"18446744073709551615"), c.incr("w", 2)))
show("touch", c.touch("k1", 100))
show("touch missing", c.touch("nope", 100))
show("delete", c.delete("k2"))
show("delete missing", c.delete("k2"))
show("get after delete", c.get("k2"))
show("version", c.version() != b"")

# The classic text protocol, raw.
show("set/get raw", raw(b"set r 5 0 3\r\nabc\r\nget r\r\ngets r\r\n").replace(b"\r\n", b"|").split(b" ")[:6])
show("multiget", raw(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nget a x b\r\n"))
show("noreply", raw(b"set q 0 0 1 noreply\r\nq\r\nadd q 0 0 1 noreply\r\nx\r\nincr q 1 noreply\r\n"
                    b"delete q noreply\r\nget q\r\n"))
show("gat", raw(b"set g 0 0 2\r\ngg\r\ngat 100 g nope\r\ngats 0 g\r\n").split(b"\r\n")[:4])
show("gat bad exptime", raw(b"gat abc g\r\n"))
show("touch noreply", raw(b"touch g 10 noreply\r\ntouch g abc\r\n"))
show("key 250", raw(b"set " + b"k" * 250 + b" 0 0 1\r\nx\r\nget " + b"k" * 250 + b"\r\n")[:40])
show("key 251", raw(b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n"))
show("get key 251", raw(b"get a " + b"k" * 251 + b"\r\n"))
show("bad data chunk", raw(b"set d 0 0 2\r\nabcd\r\nget d\r\n"))
show("negative length", raw(b"set d 0 0 -1\r\n"))
show("bad flags", raw(b"set d x 0 1\r\n"))
show("wrong token count", raw(b"set d 0 0\r\nget\r\nincr\r\n"))
show("too large", raw(b"set big 0 0 1048576\r\n" + b"x" * 1048576 + b"\r\nget big\r\n"))
show("largest", raw(b"set big 0 0 1048500\r\n" + b"x" * 1048500 + b"\r\n"))
show("too large replaces", raw(b"set big 0 0 2000000 noreply\r\n" + b"x" * 2000000 + b"\r\nget big\r\n"))
show("incr non-numeric", raw(b"set t 0 0 3\r\nabc\r\nincr t 1\r\nincr t x\r\ndecr t -1\r\n"))
show("delete hold", raw(b"delete a 0\r\ndelete b 5\r\ndelete b 0 noreply\r\ndelete b x y\r\n"))
show("unknown", raw(b"bogus\r\nx\r\n\r\nmz k\r\nstats nonsense\r\n"))
show("expired", raw(b"set e 0 -1 1\r\nx\r\nget e\r\n"))
show("absolute past", raw(b"set e 0 1000000000 1\r\nx\r\nget e\r\n"))
show("verbosity", raw(b"verbosity 1\r\nverbosity\r\nverbosity 1 noreply\r\nverbosity x\r\n"))
show("flush_all", raw(b"flush_all\r\nflush_all 0\r\nflush_all noreply\r\nflush_all x\r\n"))
show("quit", closed_after(b"get a\r\nquit\r\nget a\r\n"))
show("line too long", closed_after(b"x" * 4000))
show("HTTP", closed_after(b"GET / HTTP/1.1\r\n"))

# Meta commands.
show("ms", raw(b"ms m1 2 T0 F5\r\nhi\r\nms m2 2 c k Oo1\r\nhi\r\nms m3 2 q\r\nhi\r\n"))
show("mg", raw(b"mg m1 v s f t k Oop\r\nmg m1\r\nmg nope v\r\nmg nope v q k Ox\r\nmg m1 v q\r\n"))
show("mg hit then fetched", raw(b"ms h 1\r\nx\r\nmg h h l\r\nmg h h\r\n"))
show("mg ttl", raw(b"ms tt 1 T100\r\nx\r\nmg tt t\r\nmg tt T50 t\r\nmg tt t\r\n"))
show("mg vivify", raw(b"mg viv N30 v t\r\nmg viv v\r\n"))
show("mg recache", raw(b"ms rc 1 T10\r\nx\r\nmg rc R30 v\r\nmg rc R30 v\r\n"))
show("ms modes", raw(b"ms mm 1 ME\r\na\r\nms mm 1 ME\r\nb\r\nms mm 1 MA\r\nc\r\nms mm 1 MP\r\nd\r\n"
                      b"ms nn 1 MR\r\nx\r\nms mm 1 MX\r\nx\r\nmg mm v\r\n"))
show("ms cas", raw(b"ms cc 1 C999\r\nx\r\nms cc 1\r\nx\r\nms cc 1 C1\r\ny\r\nmg cc v\r\n"))
show("ms errors", raw(b"ms k\r\nms k x\r\nms k 1 Z\r\nx\r\nms k 1 v v\r\nx\r\nms k 1 MAB\r\nx\r\n"
                      b"ms k 2\r\nabcd\r\n"))
show("ms too large", raw(b"ms big 1048576 T0\r\n" + b"x" * 1048576 + b"\r\nmg big\r\n"))
show("md", raw(b"ms d1 1\r\nx\r\nmd d1 q\r\nmd d1\r\nmd d1 k Oz\r\nms d2 1\r\nx\r\nmd d2 C1\r\n"
                b"md d2 I T30\r\nmg d2 v c\r\nmg d2 v\r\nmd d2 !\r\n"))
show("ma", raw(b"ma a1\r\nma a1 N0 J10 v\r\nma a1 v\r\nma a1 MD D3 v\r\nma a1 q D5\r\nma a1 v\r\n"
                b"ma a1 M- D100 v\r\nms a2 1\r\nx\r\nma a2\r\nma a1 MZ\r\nma a1 C1 v\r\nma a1 k Oab\r\n"))
show("base64 keys", raw(b"ms Zm9v 3 b k\r\nbar\r\nmg foo v\r\nmg Zm9v b v k\r\nmg Zm9 b\r\n"))
show("meta errors", raw(b"mg\r\nmg " + b"k" * 251 + b" v\r\nmg k O" + b"x" * 40 + b"\r\n"
                        b"mg k v v\r\nmg k " + b" ".join([b"O1"] * 20) + b"\r\n"))
# Two `mn`s, two `MN`s: wait for both (the first may come in a packet of
# its own, and `raw` would stop at it).
show("mn", raw(b"mn\r\n", end=b"MN\r\nMN\r\n"))

# Expiry and delayed flush on the servers' clocks.
raw(b"set exp1 0 1 1\r\nx\r\nset fl 0 0 1\r\nx\r\nflush_all 2\r\n")
show("before expiry/flush", raw(b"get fl\r\n"))
time.sleep(3.5)
show("after expiry", raw(b"get exp1\r\n"))
show("after delayed flush", raw(b"get fl\r\nset fl2 0 0 1\r\ny\r\nget fl2\r\n"))

# Statistics that both servers count the same way.
c.flush_all()
stats = {k.decode(): v for k, v in c.stats().items()}
for name in ["cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses",
             "get_expired", "delete_hits", "delete_misses", "incr_hits", "incr_misses",
             "decr_hits", "decr_misses", "cas_hits", "cas_misses", "cas_badval",
             "touch_hits", "touch_misses", "store_too_large", "total_items", "evictions",
             "limit_maxbytes"]:
    show("stat " + name, stats.get(name))
show("stats has", sorted(k for k in ["pid", "uptime", "time", "version", "curr_connections",
                                     "total_connections", "bytes", "curr_items"] if k in stats))
show("stats settings", [l.split(b" ")[1] for l in raw(b"stats settings\r\n").split(b"\r\n")
                        if l.split(b" ")[1:2] in ([b"maxbytes"], [b"item_size_max"], [b"tcpport"])])
show("stats reset", raw(b"stats reset\r\n"))
show("stats detail", raw(b"stats detail on\r\nstats detail off\r\nstats detail\r\n"))
print("\n".join(out))
