"""Requests whose bytes a test checks on the server side: each case on its own connection,
sent in the pieces given (one send each). Waits for a line on stdin, then prints one JSON
line per case: its name, the bytes sent (hex) and where each request starts.
usage: wire_client.py ADDRESS PORT"""
import json
import socket
import sys
import time

address, port = sys.argv[1], int(sys.argv[2])
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: wire\r\n" + extra + b"\r\n"


big_head = b"POST /case/large HTTP/1.1\r\nHost: wire\r\nContent-Length: 5000\r\n\r\n"
later_head = b"POST /case/body_later HTTP/1.1\r\nHost: wire\r\nContent-Length: 3000\r\n\r\n"
split = get(b"/case/split_head")
chunked = (b"POST /case/chunked HTTP/1.1\r\nHost: wire\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")
own = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
fillers = b"".join(b"X-Filler-%02d: v\r\n" % i for i in range(40))

# name: (pieces, one per send; the requests in them)
CASES = {
    "small": ([get(b"/case/small")], [get(b"/case/small")]),
    "large": ([big_head + b"x" * 5000], [big_head + b"x" * 5000]),
    "body_later": (
        [later_head, b"y" * 1000, b"y" * 1000, b"y" * 1000, get(b"/case/body_later/2")],
        [later_head + b"y" * 3000, get(b"/case/body_later/2")],
    ),
    "split_head": (
        [split[:12], split[12:], get(b"/case/split_head/2")],
        [split, get(b"/case/split_head/2")],
    ),
    "pipelined": (
        [get(b"/case/pipelined") + get(b"/case/pipelined/2")],
        [get(b"/case/pipelined"), get(b"/case/pipelined/2")],
    ),
    "has_traceparent": ([get(b"/case/has_traceparent", own)], [get(b"/case/has_traceparent", own)]),
    "late_traceparent": (
        [get(b"/case/late_traceparent", fillers + own)],
        [get(b"/case/late_traceparent", fillers + own)],
    ),
    "chunked": ([chunked, get(b"/case/chunked/2")], [chunked, get(b"/case/chunked/2")]),
}

sys.stdin.readline()
for name, (pieces, requests) in CASES.items():
    sent = b"".join(pieces)
    assert sent == b"".join(requests), name
    starts, at = [], 0
    for r in requests:
        starts.append(at)
        at += len(r)
    s = socket.create_connection((address, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = b""
    for piece in pieces:
        s.sendall(piece)
        time.sleep(0.02)
    while got.count(OK) < len(requests):
        data = s.recv(65536)
        if not data:
            break
        got += data
    s.close()
    print(json.dumps({"case": name, "sent": sent.hex(), "starts": starts}), flush=True)
