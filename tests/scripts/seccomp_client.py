"""An HTTPS client (Python's ssl module: SSL_read_ex/SSL_write_ex of the shared libssl) under a
seccomp filter written as filters were before Linux 6.11: any system call numbered from 335 to
423 (unassigned on x86_64 until 6.11 made 335 `uretprobe`) kills the process; the rest are
allowed. COUNT requests on one keep-alive connection; prints each status.
usage: seccomp_client.py PORT COUNT"""
import ctypes
import struct
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])


def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


LD_NR = 0x20  # BPF_LD | BPF_W | BPF_ABS, seccomp_data.nr
JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
RET = 0x06  # BPF_RET | BPF_K
KILL_PROCESS, ALLOW = 0x80000000, 0x7FFF0000
program = b"".join(
    [
        insn(LD_NR, 0, 0, 0),
        insn(JGE, 0, 2, 335),  # below 335: allow
        insn(JGE, 1, 0, 424),  # 424 and up: allow; 335..423: kill
        insn(RET, 0, 0, KILL_PROCESS),
        insn(RET, 0, 0, ALLOW),
    ]
)
buf = ctypes.create_string_buffer(program)
fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buf))
fprog_buf = ctypes.create_string_buffer(fprog)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_NO_NEW_PRIVS) failed")
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buf), 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_SECCOMP) failed: errno {ctypes.get_errno()}")

import http.client  # noqa: E402
import ssl  # noqa: E402

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
for i in range(count):
    conn.request("GET", f"/filtered/{i}")
    response = conn.getresponse()
    response.read()
    print(response.status, flush=True)
conn.close()
