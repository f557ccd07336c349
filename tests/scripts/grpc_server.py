"""A gRPC server (grpcio, h2c) with a generic service `demo.Echo` on raw bytes (no generated
code): Say (unary), Fail (UNAVAILABLE, "down"), Slow (sleeps 2 s), Big (answers 60 KiB, which
grpcio writes as one sendmsg: head, DATA frames, then the trailers), Count (server streaming:
as many messages as the request's first byte), Sum (client streaming: the number of
messages), Chat (bidirectional: each message echoed).
usage: grpc_server.py PORT"""
import sys
import time
from concurrent import futures

import grpc


def say(request, context):
    return b"hello " + request


def fail(request, context):
    context.abort(grpc.StatusCode.UNAVAILABLE, "down")


def slow(request, context):
    time.sleep(2)
    return b"late"


def big(request, context):
    return b"b" * (60 * 1024)


def count(request, context):
    for i in range(request[0] if request else 0):
        yield bytes([i])


def total(requests, context):
    return bytes([sum(1 for _ in requests)])


def chat(requests, context):
    for r in requests:
        yield r


handlers = {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Big": grpc.unary_unary_rpc_method_handler(big),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Sum": grpc.stream_unary_rpc_method_handler(total),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
server.start()
server.wait_for_termination()
