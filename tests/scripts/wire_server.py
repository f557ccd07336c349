"""An HTTP/1.1 server that keeps the exact bytes of each connection: answers every request
(Content-Length or chunked bodies) with 200 "ok" and, when the client closes, appends the
connection's bytes (hex) as one JSON line to LOG. Prints "listening" once bound.
usage: wire_server.py ADDRESS PORT LOG"""
import json
import socket
import sys
import threading

address, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def request_end(buf, start):
    """End offset of the request starting at `start`, or None if incomplete."""
    head_end = buf.find(b"\r\n\r\n", start)
    if head_end < 0:
        return None
    head = buf[start:head_end].decode("latin-1").lower()
    pos = head_end + 4
    if "transfer-encoding: chunked" in head:
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(buf[pos:line_end].split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if pos > len(buf):
                return None
            if size == 0:
                return pos
    length = 0
    for line in head.split("\r\n")[1:]:
        if line.startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return pos + length if pos + length <= len(buf) else None


def handle(conn):
    buf = b""
    done = 0
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            buf += data
            while True:
                end = request_end(buf, done)
                if end is None:
                    break
                done = end
                conn.sendall(OK)
    with lock, open(log, "a") as f:
        f.write(json.dumps({"bytes": buf.hex()}) + "\n")


s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, port))
s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
