"""One keep-alive connection driven step by step from stdin, so a test can look at the kernel's
state between steps. Each step's line on stdin runs it; its name is printed when it is done.

usage: lost_client.py PORT
steps: connect | plain (one request in one send) | split (a head in two sends) | close
"""
import socket
import sys
import time

port = int(sys.argv[1])
sock = None


def answer():
    got = b""
    while b"\r\n\r\nok" not in got:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the server closed the connection")
        got += data


for line in sys.stdin:
    step = line.strip()
    if step == "connect":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    elif step == "plain":
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: lost\r\n\r\n")
        answer()
    elif step == "split":
        sock.sendall(b"GET /split HTTP/1.1\r\n")
        time.sleep(0.02)
        sock.sendall(b"Host: lost\r\n\r\n")
        answer()
    elif step == "close":
        sock.close()
        print(step, flush=True)
        break
    else:
        raise SystemExit(f"unknown step {step}")
    print(step, flush=True)
