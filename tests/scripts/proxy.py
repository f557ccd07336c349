"""A Python service that calls another: GET /chain asks DOWNSTREAM_PORT for /chain, then answers.
Thread per request (ThreadingHTTPServer). usage: proxy.py PORT DOWNSTREAM_PORT"""
import http.client
import http.server
import sys

DOWNSTREAM = int(sys.argv[2])


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM)
        conn.request("GET", "/chain")
        body = b"python>" + conn.getresponse().read()
        conn.close()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Proxy).serve_forever()
