"""A gRPC client (grpcio, h2c) for grpc_server.py that keeps one connection busy: Say and Chat
calls one after another from a thread. It prints "busy" once calls have filled the header
tables, then waits for a line on stdin (the agent is up), goes on for a second, stops the
loop, and calls Sum twice, a method the connection has not carried before. It prints the
status code names of the two Sum calls.
usage: grpc_busy.py PORT"""
import sys
import threading
import time

import grpc

port = int(sys.argv[1])
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
say = channel.unary_unary("/demo.Echo/Say")
chat = channel.stream_stream("/demo.Echo/Chat")
stop = threading.Event()
calls = [0]


def loop():
    while not stop.is_set():
        say(b"you")
        list(chat(iter([b"1", b"2"])))
        calls[0] += 2
        time.sleep(0.005)


worker = threading.Thread(target=loop)
worker.start()
while calls[0] < 20:
    time.sleep(0.01)
print("busy", flush=True)
sys.stdin.readline()
time.sleep(1)
stop.set()
worker.join()
codes = []
for _ in range(2):
    try:
        channel.stream_unary("/demo.Echo/Sum")(iter([b"a", b"b"]))
        codes.append("OK")
    except grpc.RpcError as e:
        codes.append(e.code().name)
channel.close()
print(" ".join(codes), flush=True)
