"""An HTTPS client that loads OpenSSL late: it starts without the ssl module (libssl is not
mapped), says "waiting", and only after a line on stdin imports ssl, waits PAUSE seconds, and
makes COUNT requests on one keep-alive connection. Prints each status.
usage: late_ssl_client.py PORT PAUSE COUNT"""
import sys

port, pause, count = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print("waiting", flush=True)
sys.stdin.readline()

import http.client  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402

time.sleep(pause)
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
for i in range(count):
    conn.request("GET", f"/late/{i}")
    response = conn.getresponse()
    response.read()
    print(response.status, flush=True)
conn.close()
