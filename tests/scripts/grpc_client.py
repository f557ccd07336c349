"""A gRPC client (grpcio, h2c) for grpc_server.py: the calls named on the command line, in
order, on one channel (one connection); prints each call's status code name.
usage: grpc_client.py PORT CALL...   CALL: say | fail | slow | big | count | sum | chat"""
import sys

import grpc

port, calls = int(sys.argv[1]), sys.argv[2:]
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
codes = []
for call in calls:
    try:
        if call == "say":
            channel.unary_unary("/demo.Echo/Say")(b"you")
        elif call == "big":
            channel.unary_unary("/demo.Echo/Big")(b"x")
        elif call == "fail":
            channel.unary_unary("/demo.Echo/Fail")(b"x")
        elif call == "slow":
            channel.unary_unary("/demo.Echo/Slow")(b"x", timeout=0.3)
        elif call == "count":
            list(channel.unary_stream("/demo.Echo/Count")(bytes([3])))
        elif call == "sum":
            channel.stream_unary("/demo.Echo/Sum")(iter([b"a", b"b", b"c", b"d"]))
        elif call == "chat":
            list(channel.stream_stream("/demo.Echo/Chat")(iter([b"1", b"2"])))
        codes.append("OK")
    except grpc.RpcError as e:
        codes.append(e.code().name)
channel.close()
print(" ".join(codes), flush=True)
