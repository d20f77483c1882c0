"""Which libvirt daemon runs the qemu driver here: the monolithic libvirtd or the modular virtqemud.

vfpick's hook is run by that daemon, and only if the hook was there when it started, so
`check` compares the two and `install-hook` names the daemon to restart. Read-only: sockets
under ``run_dir``, processes under ``proc_root``, unit enablement under ``root``; every path a
parameter, so tests drive it from files in a temporary tree.
"""

import os
from collections import namedtuple

from vfpick import numbers, safeio

LIBVIRTD, VIRTQEMUD = "libvirtd", "virtqemud"
NAMES = (LIBVIRTD, VIRTQEMUD)
# The sockets qemu:///system clients reach, in the order libvirt's client tries them
# (src/remote/remote_sockets.c, mode auto): virtqemud's own socket when it exists, else
# libvirt-sock (libvirtd's; on a modular host virtproxyd's, which forwards to virtqemud).
SOCKETS = ((VIRTQEMUD, "libvirt/virtqemud-sock"), (LIBVIRTD, "libvirt/libvirt-sock"))
# Where systemd keeps units and their enablement links, relative to the root.
UNIT_DIRS = ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system")
WANTS_DIRS = ("etc/systemd/system/multi-user.target.wants", "etc/systemd/system/sockets.target.wants")

Daemon = namedtuple("Daemon", "name pid socket")
Daemon.__doc__ = """The daemon qemu:///system reaches. pid: None when it is not running (socket
activation starts it on the next client, and it reads the hooks then). socket: the path that
told, or None when only a process told."""


def _read(path):
    try:  # a FIFO at a pid file must not hang check or install-hook
        return safeio.read_text(path, 4096, "utf-8", "replace")[:4096]
    except OSError:
        return None


def _comm(proc_root, pid):
    return (_read(os.path.join(proc_root, str(pid), "comm")) or "").strip()


def processes(run_dir="/run", proc_root="/proc"):
    """{name: pid} of the running libvirtd and virtqemud: pid file (checked against the
    process's comm, so a stale file names nothing), else a scan of proc_root."""
    found = {}
    for name in NAMES:
        pid = numbers.whole((_read(os.path.join(run_dir, name + ".pid")) or "").strip(), 1)
        if pid is not None and _comm(proc_root, pid) == name:
            found[name] = pid
    if len(found) < len(NAMES):
        try:
            pids = sorted(p for p in (numbers.whole(e, 1) for e in os.listdir(proc_root))
                          if p is not None)
        except OSError:
            pids = []
        for pid in pids:
            comm = _comm(proc_root, pid)
            if comm in NAMES and comm not in found:
                found[comm] = pid
    return found


def in_use(run_dir="/run", proc_root="/proc"):
    """The Daemon clients of qemu:///system reach (libvirt's own socket rule, then the
    processes), or None when neither a socket nor a process is there."""
    running = processes(run_dir, proc_root)
    for name, rel in SOCKETS:
        path = os.path.join(run_dir, rel)
        if os.path.exists(path):
            return Daemon(name, running.get(name), path)
    for name in (VIRTQEMUD, LIBVIRTD):
        if name in running:
            return Daemon(name, running[name], None)
    return None


def _masked(root, name):
    """`systemctl mask`: a link to /dev/null in etc/systemd/system (or /run/systemd/system)."""
    for d in ("etc/systemd/system", "run/systemd/system"):
        try:
            if os.readlink(os.path.join(root, d, name)) == "/dev/null":
                return True
        except OSError:
            pass
    return False


def _unit(root, name):
    """Installed and not masked."""
    return not _masked(root, name) and any(os.path.exists(os.path.join(root, d, name))
                                           for d in UNIT_DIRS)


def _enabled(root, name):
    """Enabled and not masked: a masked unit's .wants link left behind starts nothing."""
    return not _masked(root, name) and any(os.path.lexists(os.path.join(root, d, name))
                                           for d in WANTS_DIRS)


def service(root="/", run_dir=None, proc_root=None):
    """The daemon to restart so that it reads the hooks: the one in use, else the one whose
    systemd units are enabled, else the one installed; libvirtd when nothing tells (Debian 12
    and 13 ship only libvirtd). run_dir, proc_root: default root/run, root/proc."""
    found = in_use(run_dir or os.path.join(root, "run"), proc_root or os.path.join(root, "proc"))
    if found:
        return found.name
    for check in (_enabled, _unit):
        modular = any(check(root, VIRTQEMUD + s) for s in (".service", ".socket"))
        legacy = any(check(root, LIBVIRTD + s) for s in (".service", ".socket"))
        if modular != legacy:
            return VIRTQEMUD if modular else LIBVIRTD
    return LIBVIRTD


def restart_command(root="/", run_dir=None, proc_root=None):
    return "systemctl restart %s" % service(root, run_dir, proc_root)
