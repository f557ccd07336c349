"""An h2c server that splits its header blocks into CONTINUATION frames, as a server may.
It answers a stream by the method of its request (the first field of the block, as curl
sends it):
- GET: a `203` head split mid-field over HEADERS and two CONTINUATION frames, sent in
  two writes (the block is cut between them), then 10 bytes of DATA that end the stream;
- any other: a `200` gRPC-like head, 60 KiB of DATA in four frames, then trailers with
  `grpc-status: 5` split over HEADERS and two CONTINUATION frames, all in one write, so the
  trailers sit 60 KiB past the start of the write.
usage: h2_split_server.py PORT"""
import socket
import struct
import sys
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 4, 6, 7, 9
END_STREAM, ACK, END_HEADERS = 1, 1, 4


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    """A literal field without indexing, with a new name (RFC 7541 6.2.2), no Huffman."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def split_head(stream):
    # `:status: 203` is a literal with the indexed name `:status` (static index 8).
    block = b"\x08\x03203" + literal(b"x-split", b"a" * 40) + literal(b"x-more", b"b" * 30)
    first = frame(HEADERS, 0, stream, block[:3])
    middle = frame(CONTINUATION, 0, stream, block[3:30])
    last = frame(CONTINUATION, END_HEADERS, stream, block[30:])
    return [first + middle, last + frame(DATA, END_STREAM, stream, b"0123456789")]


def big_then_split_trailers(stream):
    head = b"\x88" + literal(b"content-type", b"application/grpc")
    trailers = literal(b"grpc-status", b"5") + literal(b"grpc-message", b"no such thing")
    out = frame(HEADERS, END_HEADERS, stream, head)
    for _ in range(4):
        out += frame(DATA, 0, stream, b"d" * (15 * 1024))
    out += frame(HEADERS, END_STREAM, stream, trailers[:5])
    out += frame(CONTINUATION, 0, stream, trailers[5:20])
    out += frame(CONTINUATION, END_HEADERS, stream, trailers[20:])
    return [out]


def serve(conn):
    buf = b""
    methods = {}
    try:
        while len(buf) < len(PREFACE):
            more = conn.recv(65536)
            if not more:
                return
            buf += more
        if not buf.startswith(PREFACE):
            return
        buf = buf[len(PREFACE):]
        conn.sendall(frame(SETTINGS, 0, 0, b""))
        while True:
            while len(buf) >= 9:
                size = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + size:
                    break
                kind, flags = buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload = buf[9 : 9 + size]
                buf = buf[9 + size :]
                if kind == SETTINGS and not flags & ACK:
                    conn.sendall(frame(SETTINGS, ACK, 0, b""))
                elif kind == PING and not flags & ACK:
                    conn.sendall(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    return
                if kind == HEADERS:
                    methods.setdefault(stream, payload[:1])
                if kind in (HEADERS, DATA) and flags & END_STREAM:
                    get = methods.pop(stream, None) == b"\x82"
                    writes = split_head(stream) if get else big_then_split_trailers(stream)
                    for w in writes:
                        conn.sendall(w)
            more = conn.recv(65536)
            if not more:
                return
            buf += more
    except OSError:
        pass
    finally:
        conn.close()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(16)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
