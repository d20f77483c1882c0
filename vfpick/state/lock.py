"""Bounded flock waits, and who holds a lock (for the one line that names them).

On the hook path of vfpick's own domains (through the store): standard library only, nothing
the store does not already load.
"""

import fcntl
import os
import time

from vfpick import numbers


def flock_bounded(fd, how, timeout):
    """True once the flock is taken, False after *timeout* seconds.

    Polls with LOCK_NB: a blocking flock can only be interrupted by a signal, and signal
    handlers belong to the main thread (the watcher is not) and to the caller."""
    deadline = None
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        now = time.monotonic()
        if deadline is None:
            deadline = now + timeout
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)


def holders(fd):
    """PIDs holding an flock on *fd*'s file, from /proc/locks (empty when it cannot tell)."""
    st = os.fstat(fd)
    inode = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    try:
        from vfpick import safeio

        for line in safeio.read_text("/proc/locks", 1 << 24, "ascii", "replace").splitlines():
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; waiters carry a "->".
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:
                pid = numbers.whole(fields[4], 1)
                if pid is not None:
                    pids.append(pid)
    except (OSError, ValueError):
        return []
    return sorted(set(pids))


def describe(pids):
    if not pids:
        return "held by another process (its pid is not visible here)"
    out = []
    for pid in pids:
        try:
            from vfpick import safeio

            raw = safeio.read_file("/proc/%d/cmdline" % pid, 200)[:200]
            cmd = b" ".join(raw.split(b"\0")).decode("utf-8", "replace").strip()
        except OSError:
            cmd = ""
        out.append("pid %d%s" % (pid, " (%s)" % cmd[:80] if cmd else ""))
    return "held by " + ", ".join(out)
