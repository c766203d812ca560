"""What the specs' broken servers share: accept on 127.0.0.1:port and
serve each connection on a thread of its own, for ever."""
import socket
import threading


def serve_forever(port, serve):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
