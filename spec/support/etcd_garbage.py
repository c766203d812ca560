#!/usr/bin/env python3
"""A broken etcd for the specs: answers every request on 127.0.0.1:PORT
with garbage of one kind (argv[2]), so the etcd backend's error paths run
against real bytes on a real socket.

  badjson    200 with a truncated JSON body
  types      200 with JSON of the wrong shape (revision an array, ID an object)
  http500    500 with an HTML page
  hangup     closes the connection after half a status line
"""
import socket
import sys
import threading

PORT = int(sys.argv[1])
MODE = sys.argv[2]

BODIES = {
    "badjson": (200, b'{"header":{"revision":"7"},"ID":"12'),
    "types": (200, b'{"header":{"revision":[1]},"ID":{"x":1},"TTL":true,"result":"no",'
                   b'"succeeded":"maybe","responses":7,"kvs":{"key":1}}'),
    "http500": (500, b"<html><body>Internal Server Error</body></html>"),
}


def serve(conn):
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
            status, body = BODIES[MODE]
            head = ("HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                    "Content-Length: %d\r\n\r\n" % (status, len(body))).encode()
            conn.sendall(head + body)
            # the request body, if any, is ignored: close to keep it simple
            return
    except OSError:
        pass
    finally:
        conn.close()


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
