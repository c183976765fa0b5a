"""Runs `insideoutctl top` on a pseudo-terminal, ends it with Ctrl-C (INT) or SIGTERM
(TERM) once it shows its workers, and checks what it wrote after that: the cursor shown
again and the alternate screen left. Prints RESTORED or BROKEN; exit 0 when restored.

usage: top_terminal.py INSIDEOUTCTL RUNTIME_DIR INT|TERM
"""
import os
import pty
import select
import signal
import sys
import time

ctl, runtime_dir, how = sys.argv[1], sys.argv[2], sys.argv[3]
pid, fd = pty.fork()
if pid == 0:
    os.execv(ctl, [ctl, "--runtime-dir", runtime_dir, "top", "--interval-ms", "100"])


def read_some(timeout):
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side is closed
        return b""


out = b""
deadline = time.time() + 15
while b"io-w0" not in out and time.time() < deadline:
    chunk = read_some(0.2)
    if chunk == b"":
        break
    out += chunk or b""
if b"io-w0" not in out:
    print("NOT STARTED", repr(out[-300:]))
    sys.exit(2)
mark = len(out)
if how == "INT":
    os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
else:
    os.kill(pid, signal.SIGTERM)
while True:
    chunk = read_some(5)
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
tail = out[mark:]
restored = b"\x1b[?25h" in tail and b"\x1b[?1049l" in tail
ended = "signal %d" % os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exit %d" % os.WEXITSTATUS(status)
print("RESTORED" if restored else "BROKEN", ended, repr(tail[-120:]))
sys.exit(0 if restored else 1)
