#!/usr/bin/env python3
"""A broken Redis for the specs: a relay on 127.0.0.1:PORT (argv[1]) to a
real redis-server on 127.0.0.1:UPSTREAM (argv[3]) that passes everything
on both ways, but once per run (the first connection it fits) appends
garbage of one kind (argv[2]) to the same send as a real reply, so that
the client reads both at once.

On the command connection (the client sent EVALSHA, EVAL or SCRIPT),
after the reply to the Nth EVALSHA or EVAL on it (argv[4], default 1; a
lone candidate's second is its first renewal, so the garbage finds it
leader):

  unasked      +OK, a reply to no command
  hugearray    *299999999, an array of 299999999 elements (and no element)
  hugebulk     $999999999, then 17 MB of 'x' until the client hangs up
  protocol     !junk, a reply type byte that does not exist
  longline     +, then 100 KB of 'x' and no line end

and one that is slow, not garbage (for one request in flight at a time):

  slownoscript the Nth EVALSHA is not passed on: after 0.7 s the relay
               answers it NOSCRIPT itself, and the reply to the EVAL that
               follows comes 0.5 s late (1.2 s in all, each under 1 s)

On the pub/sub connection (the client sent SUBSCRIBE), after the first
subscribe confirmation:

  shortpush    *1 message, a push of one element
  otherchannel a message on channel 'other', which nobody subscribed to

It says what it sees on stdout, a line each, for the specs to read:
"injected MODE on connection N (commands|pubsub)", "connection N
subscribed" (a subscribe confirmation), "connection N (KIND) closed by
the client" (or "the server": whichever hung up first).
"""
import collections
import socket
import sys
import threading
import time

from loopback_server import serve_forever

PORT = int(sys.argv[1])
MODE = sys.argv[2]
UPSTREAM = int(sys.argv[3])
NTH = int(sys.argv[4]) if len(sys.argv) > 4 else 1

GARBAGE = {
    "unasked": b"+OK\r\n",
    "hugearray": b"*299999999\r\n",
    "hugebulk": b"$999999999\r\n",
    "protocol": b"!junk\r\n",
    "longline": b"+" + b"x" * 100 * 1024,
    "shortpush": b"*1\r\n$7\r\nmessage\r\n",
    "otherchannel": b"*3\r\n$7\r\nmessage\r\n$5\r\nother\r\n$1\r\nx\r\n",
}
PUBSUB_MODES = ("shortpush", "otherchannel")
HUGE_BULK = 17 * 1024 * 1024
NOSCRIPT = b"-NOSCRIPT No matching script. Please use EVAL.\r\n"

lock = threading.Lock()
injected = False


def say(line):
    with lock:
        print(line, flush=True)


def claim():
    """True the first time only: the garbage comes once per run."""
    global injected
    with lock:
        if injected:
            return False
        injected = True
        return True


class Incomplete(Exception):
    """The buffer ends inside a value: more bytes are needed."""


def parse(buf, pos):
    """One RESP2 value of buf at pos, and where it ends. Bulk strings are
    bytes, arrays lists, nil None; simple strings, errors and integers
    the bytes of their line."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        raise Incomplete
    kind, line, end = buf[pos:pos + 1], buf[pos + 1:eol], eol + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, end
        if len(buf) < end + n + 2:
            raise Incomplete
        return buf[end:end + n], end + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, end
        items = []
        for _ in range(n):
            item, end = parse(buf, end)
            items.append(item)
        return items, end
    if kind in (b"+", b"-", b":"):
        return line, end
    raise ValueError("not RESP: %r" % buf[pos:pos + 20])


class Relay:
    count = 0

    def __init__(self, client):
        Relay.count += 1
        self.n = Relay.count
        self.client = client
        self.up = socket.create_connection(("127.0.0.1", UPSTREAM))
        self.kind = None  # "commands" or "pubsub", from what the client sends
        self.asked = collections.deque()  # first words of commands not answered yet
        self.scripts = 0  # EVALSHA and EVAL replies so far
        self.evalshas = 0  # EVALSHA commands so far
        self.late = 0.0  # slownoscript: how late the next EVAL's reply goes
        self.ended = False

    def end(self, by):
        """Hangs up both sides, once; `by` is who hung up first."""
        with lock:
            if self.ended:
                return
            self.ended = True
        say("connection %d (%s) closed by the %s" % (self.n, self.kind, by))
        for s in (self.client, self.up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def receive(self, sock, side):
        """The next bytes from sock, or None once that side hung up (both
        are then hung up)."""
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.end(side)
            return None
        return data

    def from_client(self):
        buf = b""
        while True:
            data = self.receive(self.client, "client")
            if data is None:
                return
            buf += data
            pos = 0
            # each command is noted before its last byte goes on, so
            # before its reply can come back
            while True:
                try:
                    command, pos_next = parse(buf, pos)
                except Incomplete:
                    break
                word = command[0].upper()
                if word == b"SUBSCRIBE":
                    self.kind = "pubsub"
                elif word in (b"EVALSHA", b"EVAL", b"SCRIPT") and self.kind is None:
                    self.kind = "commands"
                self.evalshas += word == b"EVALSHA"
                if MODE == "slownoscript" and word == b"EVALSHA" and self.evalshas == NTH and claim():
                    say("injected %s on connection %d (%s)" % (MODE, self.n, self.kind))
                    time.sleep(0.7)
                    self.late = 0.5
                    sent = self.send_client(NOSCRIPT)
                else:
                    self.asked.append(word)
                    sent = self.send_up(buf[pos:pos_next])
                if not sent:
                    return
                pos = pos_next
            buf = buf[pos:]

    def send_up(self, data):
        try:
            self.up.sendall(data)
            return True
        except OSError:
            self.end("server")
            return False

    def send_client(self, data):
        try:
            self.client.sendall(data)
            return True
        except OSError:
            self.end("client")
            return False

    def fits(self, reply):
        """True if the garbage goes after this reply (complete, in order)."""
        if self.kind == "pubsub":
            if isinstance(reply, list) and reply and reply[0] == b"subscribe":
                say("connection %d subscribed" % self.n)
                return MODE in PUBSUB_MODES and claim()
            return False
        word = self.asked.popleft() if self.asked else None
        if word == b"EVAL" and self.late:
            time.sleep(self.late)
            self.late = 0.0
        if word not in (b"EVALSHA", b"EVAL"):
            return False
        self.scripts += 1
        return MODE in GARBAGE and MODE not in PUBSUB_MODES and self.scripts == NTH and claim()

    def from_server(self):
        buf = b""
        while True:
            data = self.receive(self.up, "server")
            if data is None:
                return
            buf += data
            # only whole replies go on, so the garbage lands between
            # replies, not inside one
            pos, garbage = 0, b""
            while True:
                try:
                    reply, pos = parse(buf, pos)
                except Incomplete:
                    break
                if self.fits(reply):
                    garbage = GARBAGE[MODE]
                    say("injected %s on connection %d (%s)" % (MODE, self.n, self.kind))
            try:
                self.client.sendall(buf[:pos] + garbage)
                if garbage and MODE == "hugebulk":
                    chunk = b"x" * 65536
                    for _ in range(HUGE_BULK // len(chunk)):
                        self.client.sendall(chunk)
            except OSError:
                return self.end("client")
            buf = buf[pos:]


def serve(client):
    try:
        relay = Relay(client)
    except OSError:
        client.close()
        return
    threading.Thread(target=relay.from_client, daemon=True).start()
    relay.from_server()


serve_forever(PORT, serve)
