#!/usr/bin/env python3
"""A broken etcd for the specs: answers every request on 127.0.0.1:PORT
with garbage of one kind (argv[2]), so the etcd backend's error paths run
against real bytes on a real socket.

  badjson    200 with a truncated JSON body
  types      200 with JSON of the wrong shape (revision an array, ID an object)
  http500    500 with an HTML page
  hangup     closes the connection after half a status line
  hugebody   200 with a body that never ends (70 MB, then the connection
             stays open)
  manyheaders 200 with a sound lease grant after 1,000 header lines

and two that pass every unary call on to a real etcd (argv[3] is its
port) but break the /v3/watch stream:

  watchjunk  the stream answers with bytes that are not JSON
  watchcut   the stream sends half a message and closes
  watchstall the stream sends its headers, then nothing, and stays open
  watchhuge  the stream starts a message and sends 70 MB of it, no end

and one that passes everything on but shortens every lease:

  shortttl   lease grants and keep-alives answer TTL 1, whatever was asked

and one that keeps the stream sound but hands it over in pieces:

  watchbytes the real stream, one byte per TCP segment, after a first
             message (for no watch of ours) with text in UTF-8, so
             messages and characters arrive split anywhere
"""
import http.client
import re
import socket
import sys
import threading
import time

from loopback_server import serve_forever

PORT = int(sys.argv[1])
MODE = sys.argv[2]
UPSTREAM = int(sys.argv[3]) if len(sys.argv) > 3 else None

BODIES = {
    "badjson": (200, b'{"header":{"revision":"7"},"ID":"12'),
    "types": (200, b'{"header":{"revision":[1]},"ID":{"x":1},"TTL":true,"result":"no",'
                   b'"succeeded":"maybe","responses":7,"kvs":{"key":1}}'),
    "http500": (500, b"<html><body>Internal Server Error</body></html>"),
    "manyheaders": (200, b'{"header":{"revision":"7"},"ID":"12","TTL":"3"}'),
}
EXTRA_HEADERS = "".join("X-Filler-%d: x\r\n" % i for i in range(1000)) if MODE == "manyheaders" else ""


def read_request(conn):
    """The request line, headers and body (Content-Length only), or None."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return lines[0], headers, body


# Valid, for a watch id nobody has: the backend must pass over it whole.
UTF8_MESSAGE = ('{"result":{"header":{"revision":"1"},"watch_id":"424242",'
                '"compact_revision":"0","cancel_reason":"na\u00efve \u2713 \u00e9t\u00e9"}}\n')


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def watch_in_bytes(conn, raw_head):
    """Relays the watch stream to the upstream etcd as it is, and its
    answer back one byte at a time, the UTF-8 message first."""
    conn.settimeout(None)
    up = socket.create_connection(("127.0.0.1", UPSTREAM))
    up.sendall(raw_head)
    threading.Thread(target=pump, args=(conn, up), daemon=True).start()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    injected = False
    try:
        while True:
            data = up.recv(65536)
            if not data:
                break
            pending += data
            if not injected:
                # interim answers (100 Continue) pass; after the 200's head
                # comes our chunk, then the upstream's own
                while b"\r\n\r\n" in pending and not injected:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    conn.sendall(head + b"\r\n\r\n")
                    if head.startswith(b"HTTP/1.1 200"):
                        msg = UTF8_MESSAGE.encode()
                        pending = b"%x\r\n%s\r\n" % (len(msg), msg) + pending
                        injected = True
                if not injected:
                    continue
            for i in range(len(pending)):
                conn.sendall(pending[i:i + 1])
                time.sleep(0.0002)
            pending = b""
    except OSError:
        pass
    finally:
        conn.close()
        up.close()


def proxy(conn):
    conn.settimeout(10)
    try:
        req = read_request(conn)
        if not req:
            return
        line, headers, body = req
        method, path, _ = line.split(" ", 2)
        if path.startswith("/v3/watch") and MODE == "watchbytes":
            head = line + "\r\n" + "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
            return watch_in_bytes(conn, head.encode("latin-1") + body)
        if path.startswith("/v3/watch"):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            if MODE == "watchstall":
                while conn.recv(65536):
                    pass
                return
            if MODE == "watchhuge":
                start = b'{"result":{"watch_id":"1","created":true}}\n{"result":{"x":"'
                conn.sendall(b"%x\r\n%s\r\n" % (len(start), start))
                chunk = b"x" * 65536
                for _ in range(70 * 16):
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                while conn.recv(65536):
                    pass
                return
            if MODE == "watchjunk":
                junk = b'{"result":{"watch_id":"1","created":true}}\n%%%% not json at all'
            else:
                junk = b'{"result":{"header":{"revision":"5"},"watch_id":"1","ev'
            conn.sendall(b"%x\r\n%s\r\n" % (len(junk), junk))
            return
        up = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=10)
        fwd = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
        up.request(method, path, body=body, headers=fwd)
        resp = up.getresponse()
        data = resp.read()
        if MODE == "shortttl" and path.startswith("/v3/lease/"):
            data = re.sub(rb'"TTL":"\d+"', b'"TTL":"1"', data)
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (resp.status, len(data)) + data)
        up.close()
    except OSError:
        pass
    finally:
        conn.close()


def serve(conn):
    if UPSTREAM:
        return proxy(conn)
    conn.settimeout(5)
    try:
        while True:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            if MODE == "hangup":
                conn.sendall(b"HTTP/1.")
                return
            if MODE == "hugebody":
                conn.sendall(b"HTTP/1.1 200 X\r\nContent-Type: application/json\r\n\r\n{\"x\":\"")
                chunk = b"x" * 65536
                for _ in range(70 * 16):
                    conn.sendall(chunk)
                conn.recv(1)  # until the client hangs up
                return
            status, body = BODIES[MODE]
            head = ("HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%s"
                    "Content-Length: %d\r\n\r\n" % (status, EXTRA_HEADERS, len(body))).encode()
            conn.sendall(head + body)
            # the request body, if any, is ignored: close to keep it simple
            return
    except OSError:
        pass
    finally:
        conn.close()


serve_forever(PORT, serve)
