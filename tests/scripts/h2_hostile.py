"""Hostile HTTP/2 for a traced h2c server: on separate connections, each after the client
preface, frames an agent must survive without a crash or a made-up span. Prints the number of
connections it made.
usage: h2_hostile.py PORT"""
import os
import socket
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


HEADERS, CONTINUATION, SETTINGS, DATA = 1, 9, 4, 0
END_STREAM, END_HEADERS = 1, 4
settings = frame(SETTINGS, 0, 0, b"")
attacks = [
    # Indexes past any table, index 0, a table size update far past the limit.
    frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\x0f\x80\x3f\xe1\xff\xff\xff\x0f"),
    # A Huffman string that is not valid Huffman, and a string longer than the block.
    frame(HEADERS, END_HEADERS | END_STREAM, 3, b"\x82\x44\x85\xff\xff\xff\xff\xff\x41\x7f\x10ab"),
    # A frame claiming 16 MiB, then the connection ends.
    b"\xff\xff\xff\x01\x04\x00\x00\x00\x05" + b"x" * 100,
    # CONTINUATION with no HEADERS before it.
    frame(CONTINUATION, END_HEADERS, 7, b"\x82\x86\x84"),
    # A header block grown past 256 KiB over CONTINUATION frames.
    frame(HEADERS, 0, 9, b"\x82")
    + b"".join(frame(CONTINUATION, 0, 9, b"\x00" * 8192) for _ in range(40)),
    # Frames on the wrong streams, and random bytes.
    frame(HEADERS, END_HEADERS, 0, b"\x82") + frame(DATA, 0, 0, b"zz") + os.urandom(4096),
    # Padding longer than the frame.
    frame(HEADERS, END_HEADERS | 0x8, 11, b"\xff\x82"),
]
port = int(sys.argv[1])
n = 0
for attack in attacks:
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(PREFACE + settings + attack)
        s.settimeout(0.5)
        try:
            s.recv(65536)
        except OSError:
            pass
    except OSError:
        pass
    s.close()
    n += 1
print(n, flush=True)
