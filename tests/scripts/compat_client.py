"""An HTTP client that makes 32-bit system calls (`int $0x80`) on its traced connection, with
the registers a 64-bit call would read its arguments from set to the connection's descriptor
and a buffer that reads like a request:
- 32-bit `getpid` (20, 64-bit `writev`'s number), the buffer as its one iovec: returns a pid,
  so a program taking it for `writev` would copy the buffer as sent;
- 32-bit `read` (3, 64-bit `close`'s number) of descriptor -1: fails, and closes nothing.
Then one request on the connection, a second after a 32-bit read; prints each status.
usage: compat_client.py PORT"""
import ctypes
import http.client
import mmap
import sys

port = int(sys.argv[1])

# getpid32(rdi, rsi, rdx): mov eax, 20; int 0x80; ret
GETPID32 = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])
# read32_bad(rdi, rsi, rdx): push rbx; mov eax, 3; mov ebx, -1; int 0x80; pop rbx; ret
READ32_BAD = bytes([0x53, 0xB8, 3, 0, 0, 0, 0xBB, 0xFF, 0xFF, 0xFF, 0xFF, 0xCD, 0x80, 0x5B, 0xC3])

code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
code.write(GETPID32.ljust(64, b"\xcc") + READ32_BAD)
base = ctypes.addressof(ctypes.c_char.from_buffer(code))
signature = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_long)
getpid32 = signature(base)
read32_bad = signature(base + 64)

phantom = ctypes.create_string_buffer(b"GET /PHANTOM-32BIT HTTP/1.1\r\nHost: phantom\r\n\r\n")


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


iov = Iovec(ctypes.addressof(phantom), len(phantom.value))

conn = http.client.HTTPConnection("127.0.0.1", port)
conn.connect()
fd = conn.sock.fileno()
pid = getpid32(fd, ctypes.addressof(iov), 1)
if pid != __import__("os").getpid():
    sys.exit(f"the 32-bit getpid returned {pid}")
for path in ["/after-32bit-getpid", "/after-32bit-read"]:
    if path == "/after-32bit-read" and read32_bad(fd, ctypes.addressof(iov), 1) != -9:
        sys.exit("the 32-bit read of descriptor -1 did not fail with EBADF")
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    print(response.status, flush=True)
conn.close()
