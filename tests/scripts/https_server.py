"""Python's http.server over TLS (the ssl module, OpenSSL): GET /big answers 5 MB, GET /chain
with a DOWNSTREAM_PORT first asks that HTTPS service for /chain, anything else a short page;
POST answers the size of the body it read.
usage: https_server.py PORT CERT KEY [DOWNSTREAM_PORT]"""
import http.client
import http.server
import ssl
import sys

BIG = b"x" * (5 * 1024 * 1024)
DOWNSTREAM = int(sys.argv[4]) if len(sys.argv) > 4 else None


def downstream():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", DOWNSTREAM, context=context)
    conn.request("GET", "/chain")
    body = conn.getresponse().read()
    conn.close()
    return body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/big":
            body = BIG
        elif self.path == "/chain" and DOWNSTREAM:
            body = b"python>" + downstream()
        else:
            body = b"<p>hello over tls</p>\n"
        self.answer(body)

    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            left -= len(self.rfile.read(min(left, 65536)))
        self.answer(self.headers.get("Content-Length", "0").encode())

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
