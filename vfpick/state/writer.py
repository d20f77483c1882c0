"""Who wrote an in-flight claim, and whether that process still runs (see records.Writer).

A define/repick marks the claims it writes as pending until libvirt has answered; a
reconcile leaves a pending claim alone while its writer lives (docs/DESIGN.md, "Reconcile").
"""

import os

from vfpick import numbers, safeio
from vfpick.records import Writer

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_id():
    try:
        return safeio.read_text(_BOOT_ID, 4096, "ascii", "replace").strip()
    except OSError:
        return ""


def _start_ticks(pid):
    """Field 22 of /proc/PID/stat, or None when there is no such process."""
    try:
        data = safeio.read_file("/proc/%d/stat" % pid, 1 << 16)
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    return numbers.whole(fields[19].decode("ascii", "replace")) if len(fields) > 19 else None


def me():
    """The Writer of this process."""
    pid = os.getpid()
    return Writer(boot=_boot_id(), pid=pid, start=_start_ticks(pid) or 0)


def alive(writer):
    """Whether *writer* still runs: same boot, same pid, same start time."""
    if writer.boot != _boot_id():
        return False
    start = _start_ticks(writer.pid)
    return start is not None and start == writer.start
