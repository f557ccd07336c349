"""Open COUNT keep-alive connections to 127.0.0.1:PORT, send one request on each, read the
answers, print "held" and keep them open until stdin closes. usage: hold.py PORT COUNT"""
import resource
import selectors
import socket
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
socks = []
for i in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /held/%d HTTP/1.1\r\nHost: bench\r\n\r\n" % i)
    socks.append(s)
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
answered = 0
while answered < count:
    events = sel.select(timeout=10)
    if not events:
        break
    for key, _ in events:
        if key.fileobj.recv(65536):
            answered += 1
            sel.unregister(key.fileobj)
print("held", answered, flush=True)
sys.stdin.read()
