"""An HTTPS client on one keep-alive connection (Python's http.client over ssl, certificate not
checked): GET /, a pause, then each further path. Prints each status.
usage: https_client.py PORT PAUSE_SECONDS PATH..."""
import http.client
import ssl
import sys
import time

port, pause, paths = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
for i, path in enumerate(["/"] + paths):
    if i == 1:
        time.sleep(pause)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    print(response.status, flush=True)
conn.close()
