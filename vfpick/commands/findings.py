"""What `vfpick check`'s two halves share: the finding record and its statuses, the outside
``Paths``, and the small readers both use. vfpick/commands/check.py (the host) and
vfpick/commands/checkhook.py (the libvirt side) both import it, so neither imports the other's
helpers (check imports checkhook to run its findings; checkhook imports only this)."""

import os
from collections import namedtuple

from vfpick import safeio

OK, WARN, FAIL = "ok", "warn", "fail"
QEMU_D_MIN = (6, 5, 0)  # libvirt runs hooks/qemu.d/* since 6.5.0

Finding = namedtuple("Finding", "check status message fix")
Finding.__doc__ = """One line of the report. fix: what to do, or "" for ok."""

Paths = namedtuple(
    "Paths", "hooks_dir run_dir proc_root modules_dir version_commands systemd_root",
    defaults=("/etc/libvirt/hooks", "/run", "/proc", None,
              (("libvirtd", "--version"), ("virtqemud", "--version")), "/"))
Paths.__doc__ = """Where the host keeps things. modules_dir None: /lib/modules/`uname -r`.
version_commands: argv lists whose output ends with the daemon's libvirt version.
systemd_root: the root whose etc/systemd and lib/systemd tell which daemon is installed."""


def read_text(path, limit=1 << 16):
    """The start of a small text file (sysfs, /proc, the hook), or None when unreadable."""
    try:
        return safeio.read_text(path, limit, errors="replace")[:limit]
    except OSError:
        return None


def list_dir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def iso_time(epoch):
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
