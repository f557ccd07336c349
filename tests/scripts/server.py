"""HTTP/1.x servers for tracer's end-to-end tests, with the framings real servers use.

usage: server.py PORT
GET /chunked      200, chunked body "hello world" in three chunks and several writes
GET /close        200, HTTP/1.0 body delimited by closing the connection
GET /cookie       200 with a Set-Cookie header
GET /nocontent    204
GET /slow         sleeps 30 s before answering (for killing mid-request)
GET /status/NNN   NNN, empty body
anything else     200, Content-Length body "ok"
"""
import socket
import sys
import threading
import time


def handle(conn):
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            if path == "/chunked":
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in (b"hello", b" ", b"world"):
                    conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                conn.sendall(b"0\r\n\r\n")
            elif path == "/close":
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                conn.sendall(b"until the connection closes")
                return
            elif path.startswith("/cookie"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=SECRET-SETCOOKIE-7\r\n"
                             b"X-Trace-Me: visible\r\nContent-Length: 2\r\n\r\nok")
            elif path == "/nocontent":
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif path == "/slow":
                time.sleep(30)
                return
            elif path.startswith("/status/") and path[8:].isdigit():
                conn.sendall(b"HTTP/1.1 %s X\r\nContent-Length: 0\r\n\r\n" % path[8:].encode())
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def main():
    srv = socket.socket(socket.AF_INET)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(sys.argv[1])))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
