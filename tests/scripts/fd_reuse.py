"""A server that, after answering one request over a socket, makes that descriptor number name
a file holding a secret without a close() the tracer sees, reads and writes the file through
that number, then answers a second request on a new connection.

usage: fd_reuse.py MODE PORT SECRET_FILE
MODE: dup2 | dup3 | close_range | exec | pid_reuse
"""

import ctypes
import fcntl
import os
import socket
import sys
import time

SYS_CLOSE_RANGE = 436  # x86_64
# The connection's descriptor number: high, so that nothing the interpreter opens and closes
# on its own (at start-up after exec, say) lands on it.
NUMBER = 100
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def listen(port):
    """The listening socket, kept for both requests: the second client waits in its backlog."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    return s


def answer(fd):
    """Read one request head with read(2) and answer it with write(2)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.write(fd, RESPONSE)


def use_secret(fd, secret):
    """Read the secret through descriptor `fd`, then write it back through it."""
    os.lseek(fd, 0, os.SEEK_SET)
    got = os.read(fd, 4096)
    assert got.startswith(b"GET /SECRET"), got
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, got)


def open_at(number, path):
    """Open `path` until it gets descriptor `number` (the lowest free one), without dup2."""
    held = []
    try:
        for _ in range(number + 1):
            fd = os.open(path, os.O_RDWR)
            if fd == number:
                return fd
            held.append(fd)
        raise SystemExit(f"could not get descriptor {number}")
    finally:
        for fd in held:
            os.close(fd)


def accept_high(lsock):
    """Accept a connection and move it to descriptor NUMBER before any byte is moved."""
    conn, _ = lsock.accept()
    raw = conn.detach()
    fd = fcntl.fcntl(raw, fcntl.F_DUPFD_CLOEXEC, NUMBER)
    assert fd == NUMBER, fd
    os.close(raw)
    return fd


def serve_second(lsock):
    conn, _ = lsock.accept()
    answer(conn.fileno())
    conn.close()


def main():
    mode, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "after_exec":
        # The image after exec: the socket's number was closed by close-on-exec.
        number, listening = int(sys.argv[4]), int(sys.argv[5])
        fd = open_at(number, secret)
        use_secret(fd, secret)
        os.close(fd)
        serve_second(socket.socket(fileno=listening))
        return
    if mode == "pid_reuse":
        pid_reuse(port, secret)
        return
    lsock = listen(port)
    print("ready", flush=True)
    fd = accept_high(lsock)
    answer(fd)
    if mode in ("dup2", "dup3"):
        other = os.open(secret, os.O_RDWR)
        # os.dup2 with inheritable=False is dup3(O_CLOEXEC).
        os.dup2(other, fd, inheritable=(mode == "dup2"))
        os.close(other)
    elif mode == "close_range":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(SYS_CLOSE_RANGE, fd, fd, 0) != 0:
            raise SystemExit(f"close_range: errno {ctypes.get_errno()}")
        assert open_at(fd, secret) == fd
    elif mode == "exec":
        # The listening socket goes on in the new image; the connection does not.
        lsock.set_inheritable(True)
        os.execv(
            sys.executable,
            [
                sys.executable,
                __file__,
                "after_exec",
                str(port),
                secret,
                str(fd),
                str(lsock.fileno()),
            ],
        )
    else:
        raise SystemExit(f"unknown mode {mode}")
    use_secret(fd, secret)
    os.close(fd)
    serve_second(lsock)


def pid_reuse(port, secret):
    """A child answers over descriptor NUMBER and exits without closing it; a later child gets
    the same pid (ns_last_pid) and reads the secret through its own descriptor NUMBER."""
    lsock = listen(port)
    print("ready", flush=True)
    fd = accept_high(lsock)
    child = os.fork()
    if child == 0:
        answer(fd)
        os._exit(0)
    os.waitpid(child, 0)
    os.close(fd)
    # Other processes fork too: one may take the pid first, or win the race after the write.
    # Wait for such a process to exit and try again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(f"/proc/{child}"):
            time.sleep(0.01)
            continue
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(child - 1))
        second = os.fork()
        if second == 0:
            if os.getpid() != child:
                os._exit(3)
            use_secret(open_at(NUMBER, secret), secret)
            os._exit(0)
        _, status = os.waitpid(second, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            print(f"reused pid {child}", flush=True)
            serve_second(lsock)
            return
        if code != 3:
            raise SystemExit(f"the second child failed ({code})")
        print(f"pid {child} taken by {taker(child)}", file=sys.stderr, flush=True)
    raise SystemExit(f"pid {child} was never free again: {taker(child)}")


def taker(pid):
    """What holds `pid` now (a process or another process's thread), for the error message."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        return f"{fields['Name'].strip()} (tgid {fields['Tgid'].strip()})"
    except OSError:
        return "a process that has exited"


if __name__ == "__main__":
    main()
