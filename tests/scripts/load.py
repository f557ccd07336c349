"""Steady HTTP load for the soak test: RATE requests per second for SECONDS, half on one
keep-alive connection and half on new connections. usage: load.py PORT RATE SECONDS"""
import http.client
import sys
import time

port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
keep = http.client.HTTPConnection("127.0.0.1", port)
start = time.time()
sent = 0
while time.time() - start < seconds:
    conn = keep if sent % 2 == 0 else http.client.HTTPConnection("127.0.0.1", port)
    try:
        conn.request("GET", f"/soak/{sent % 100}")
        conn.getresponse().read()
    except OSError:
        keep = http.client.HTTPConnection("127.0.0.1", port)
    if conn is not keep:
        conn.close()
    sent += 1
    delay = start + sent / rate - time.time()
    if delay > 0:
        time.sleep(delay)
print(sent)
