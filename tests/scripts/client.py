"""HTTP/1.x clients for tracer's end-to-end tests, each shaped like something real programs do.

usage: client.py MODE HOST PORT [ARG]
Prints one status code per response, space-separated.
"""
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def read_responses(sock, n, head_only=()):
    """Read n responses (Content-Length or chunked framing) and return their statuses."""
    buf = b""
    statuses = []
    for i in range(n):
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return statuses
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        statuses.append(int(lines[0].split()[1]))
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(b":", 1) for l in lines[1:])}
        length = 0 if i in head_only else int(headers.get(b"content-length", b"0"))
        while len(buf) < length:
            buf += sock.recv(65536)
        buf = buf[length:]
    return statuses


def connect(host, port):
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    statuses = []
    if mode == "keepalive":
        # http.client on one connection: send/recv family syscalls.
        conn = http.client.HTTPConnection(host, port)
        for i in range(int(arg)):
            conn.request("GET", f"/?n={i}")
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
        conn.close()
    elif mode == "urllib":
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/{arg or ''}") as r:
                r.read()
                statuses.append(r.status)
        except urllib.error.HTTPError as e:
            statuses.append(e.code)
    elif mode == "pipeline":
        # Every request in one write, then every response.
        n = int(arg)
        sock = connect(host, port)
        sock.sendall(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode() for i in range(n)))
        statuses = read_responses(sock, n)
        sock.close()
    elif mode == "bytewise":
        # The head one byte per write.
        sock = connect(host, port)
        for b in f"GET /bytewise HTTP/1.1\r\nHost: {host}\r\nX-Slow: yes\r\n\r\n".encode():
            sock.send(bytes([b]))
            time.sleep(0.002)
        statuses = read_responses(sock, 1)
        sock.close()
    elif mode == "bigheader":
        # A head far larger than the capture window.
        sock = connect(host, port)
        filler = "a" * int(arg)
        sock.sendall(f"GET /big-head HTTP/1.1\r\nHost: {host}\r\nX-Filler: {filler}\r\n\r\n".encode())
        statuses = read_responses(sock, 1)
        sock.close()
    elif mode == "garbage":
        # TLS and binary bytes on a plaintext port, then plain requests on new connections.
        for junk in (bytes.fromhex("160301020001000100"), bytes(range(256)) * 4):
            sock = connect(host, port)
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
            sock.close()
    elif mode == "twophase":
        # One request, then wait (the agent starts), then another on the same connection.
        conn = http.client.HTTPConnection(host, port)
        conn.request("GET", "/before")
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
        print("waiting", flush=True)
        sys.stdin.readline()
        for path in ("/after1", "/after2"):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
        conn.close()
    elif mode == "iovecs":
        # sendmsg and writev with several iovecs; recvmsg and readv into several buffers.
        sock = connect(host, port)
        sock.sendmsg([b"GET /sendmsg", b" HTTP/1.1\r\nHost: ", host.encode(), b"\r\n\r\n"])
        bufs = [bytearray(7), bytearray(5), bytearray(4096)]
        n = sock.recvmsg_into(bufs)[0]
        data = b"".join(bytes(b) for b in bufs)[:n]
        statuses.append(int(data.split()[1]))
        os.writev(sock.fileno(), [b"GET /writev HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"])
        bufs = [bytearray(3), bytearray(9), bytearray(4096)]
        n = os.readv(sock.fileno(), bufs)
        data = b"".join(bytes(b) for b in bufs)[:n]
        statuses.append(int(data.split()[1]))
        sock.close()
    elif mode == "peek":
        # Peek at a response's first byte before reading it, as curl checks a connection it
        # reuses: with recv (recvfrom), then with recvmsg. The peeked byte is read again.
        sock = connect(host, port)
        sock.sendall(f"GET /status/203 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert sock.recv(1, socket.MSG_PEEK) == b"H"
        statuses += read_responses(sock, 1)
        sock.sendall(f"GET /peek-recvmsg HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert sock.recvmsg(1, 0, socket.MSG_PEEK)[0] == b"H"
        statuses += read_responses(sock, 1)
        sock.close()
    elif mode == "upgrade":
        # Switch protocols, then send bytes that look like HTTP but are not any more.
        sock = connect(host, port)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(4096)
        statuses.append(int(buf.split()[1]))
        sock.sendall(b"GET /not-http-any-more HTTP/1.1\r\n\r\n")
        sock.recv(4096)
        sock.close()
    elif mode == "garbage_stream":
        # A long-lived connection that is not HTTP: a few chunks, a pause, then many more.
        sock = connect(host, port)
        for i in range(204):
            sock.sendall(bytes([0x16, 3, 1]) + bytes(range(97)))
            time.sleep(0.5 if i == 4 else 0.002)
        sock.close()
    elif mode == "longline":
        # A request line of ARG bytes.
        sock = connect(host, port)
        sock.sendall(f"GET /{'l' * int(arg)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        statuses = read_responses(sock, 1)
        sock.close()
    elif mode == "slowloris":
        # A head that never ends: a header line every 10 ms for ARG seconds, then hang up.
        sock = connect(host, port)
        sock.sendall(b"GET /never HTTP/1.1\r\nHost: x\r\n")
        end = time.time() + float(arg)
        i = 0
        while time.time() < end:
            sock.sendall(f"X-Slow-{i}: {'v' * 50}\r\n".encode())
            i += 1
            time.sleep(0.01)
        sock.close()
    elif mode == "halfclose":
        # The request, then shut down the sending side, then read the answer.
        sock = connect(host, port)
        sock.sendall(f"GET /half HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        statuses = read_responses(sock, 1)
        sock.close()
    elif mode == "churn":
        # ARG connections opened and closed as fast as possible.
        for _ in range(int(arg)):
            socket.create_connection((host, port)).close()
    elif mode == "flood":
        # ARG pipelined requests in one write.
        n = int(arg)
        sock = connect(host, port)
        sock.sendall(b"".join(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(n)))
        statuses = read_responses(sock, n)
        sock.close()
    elif mode == "splithead":
        # The request line, a pause, then the rest of the head with a traceparent (trace ARG):
        # the server reads the head in two pieces.
        sock = connect(host, port)
        sock.sendall(b"GET /chain HTTP/1.1\r\n")
        time.sleep(0.3)
        sock.sendall(f"traceparent: 00-{arg}-00f067aa0ba902b7-01\r\nHost: {host}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        statuses = read_responses(sock, 1)
        sock.close()
    elif mode == "head":
        conn = http.client.HTTPConnection(host, port)
        conn.request("HEAD", "/")
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
        conn.request("GET", "/")
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    else:
        sys.exit(f"unknown mode {mode}")
    print(" ".join(map(str, statuses)))


if __name__ == "__main__":
    main()
