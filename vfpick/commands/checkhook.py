"""`vfpick check`, the libvirt side: the hook installed as install-hook baked it, the daemon
that runs it started after it (or it never consults it), no other qemu hook in the way, and a
libvirt that runs qemu.d hooks. The host side and the report are vfpick/commands/check.py.
"""

import os
import shlex
import stat
import subprocess

from vfpick import numbers
from vfpick.commands.findings import FAIL, OK, QEMU_D_MIN, WARN, Finding, Paths, iso_time, list_dir, read_text


def _baked(text, key):
    """The value install-hook baked for *key* (``python``, ``package``, ``config``)."""
    from vfpick.commands import installhook

    return installhook.baked(text, key)


def _restart(paths):
    from vfpick.host import libvirtdaemon

    return libvirtdaemon.restart_command(paths.systemd_root, paths.run_dir, paths.proc_root)


def check_hook(paths, config_path):
    """(findings, hook mtime or None)."""
    from vfpick.commands import installhook

    hook = os.path.join(paths.hooks_dir, "qemu.d", "vfpick")
    # Every path in a command we suggest is shell-quoted: pasting it must not run a file name.
    install = "vfpick install-hook --config %s%s" % (
        shlex.quote(os.path.abspath(config_path)),
        "" if paths.hooks_dir == Paths().hooks_dir else " --hooks-dir %s" % shlex.quote(paths.hooks_dir))
    text = read_text(hook)
    if text is None:
        return [Finding("hook", FAIL, "no hook at %s: libvirt does not consult vfpick" % hook,
                        "%s, then %s" % (install, _restart(paths)))], None
    if installhook.MARKER not in text:
        return [Finding("hook", FAIL, "%s was not installed by vfpick" % hook,
                        "move it away, then " + install)], None
    out = []
    mode = os.stat(hook).st_mode
    if not mode & stat.S_IXUSR:
        out.append(Finding("hook", FAIL, "%s is not executable: libvirt skips it" % hook,
                           install + " (or chmod 755 %s)" % shlex.quote(hook)))
    python, package, baked = (_baked(text, k) for k in ("python", "package", "config"))
    if not python or not os.access(python, os.X_OK):
        out.append(Finding("hook", FAIL, "the hook's interpreter %s is gone" % python,
                           install + " (from the vfpick you run now)"))
    if not package or not os.path.isfile(os.path.join(package, "vfpick", "hook.py")):
        out.append(Finding("hook", FAIL, "the hook's package dir %s has no vfpick (removed or "
                           "moved?)" % package, install))
    if baked != os.path.abspath(config_path):
        out.append(Finding("hook-config", FAIL, "the hook uses config %s, not %s" % (baked, config_path),
                           install))
    if not out:
        out.append(Finding("hook", OK, "%s installed, config %s" % (hook, baked), ""))
        out.extend(_stale_known(text, baked, install))
    return out, os.stat(hook).st_mtime


def _stale_known(text, config_path, install):
    """A warning when the config changed since install-hook read it: the hook then parses it
    for every VM start, even a GPU VM's (still right, only slower)."""
    from vfpick.commands import installhook
    from vfpick.hook import config_stamp

    known = installhook.baked_known(text)
    try:
        if known is None or config_stamp(os.stat(config_path)) == tuple(known[1]):
            return []
    except (OSError, IndexError, TypeError):
        return []
    return [Finding("hook-config", WARN, "%s changed since install-hook read it: the hook parses "
                    "it on every VM start, also of VMs that are not vfpick's" % config_path,
                    install + " (again)")]


def process_start(proc_root, pid):
    """Start time of *pid* (seconds since the epoch), from /proc/PID/stat and /proc/stat btime."""
    found = _process_start(proc_root, pid)
    return found and found[0]


def _process_start(proc_root, pid):
    """(start time, resolution in seconds) of *pid*, or None. The start is ticks since boot
    (CLOCK_BOOTTIME) plus the boot time: this kernel's own clocks give that to the tick; a
    /proc/stat btime (another proc root) only to the whole second it truncates to."""
    import time

    text = read_text(os.path.join(proc_root, str(pid), "stat"))
    tick = 1 / os.sysconf("SC_CLK_TCK")
    if os.path.realpath(proc_root) == "/proc":
        boot, resolution = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME), tick
    else:
        boot = [line.split()[1] for line in (read_text(os.path.join(proc_root, "stat")) or "").splitlines()
                if line.startswith("btime ")]
        boot, resolution = (numbers.whole(boot[0]) if boot else None), 1.0
    if not text or boot is None:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    ticks = numbers.whole(fields[19]) if len(fields) > 19 else None  # field 22: starttime
    return None if ticks is None else (boot + ticks * tick, resolution)


def _other_hooks(paths, before):
    """Other qemu hooks libvirt would have found at a daemon start at *before*."""
    found = []
    main = os.path.join(paths.hooks_dir, "qemu")
    candidates = [main] + [os.path.join(paths.hooks_dir, "qemu.d", n)
                           for n in list_dir(os.path.join(paths.hooks_dir, "qemu.d")) if n != "vfpick"]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IXUSR and st.st_mtime < before:
            found.append(path)
    return found


def check_daemon(paths, hook_mtime):
    from vfpick.host import libvirtdaemon

    found = libvirtdaemon.in_use(paths.run_dir, paths.proc_root)
    if found is None:
        return Finding("daemon", WARN, "no libvirtd or virtqemud: neither runs, and no socket in %s"
                       % os.path.join(paths.run_dir, "libvirt"),
                       "systemctl start %s"
                       % libvirtdaemon.service(paths.systemd_root, paths.run_dir, paths.proc_root))
    if found.pid is None:
        return Finding("daemon", OK, "%s is not running; its socket %s is there: socket activation "
                       "starts it on demand, and it reads the hooks then"
                       % (found.name, found.socket), "")
    finding = _started_vs_hook(paths, found.name, found.pid, hook_mtime)
    if found.socket:
        finding = finding._replace(message="%s; qemu:///system reaches it at %s"
                                   % (finding.message, found.socket))
    return finding


def _started_vs_hook(paths, name, pid, hook_mtime):
    found = _process_start(paths.proc_root, pid)
    started, resolution = found or (None, None)
    if hook_mtime is None or started is None:
        return Finding("daemon", OK if started else WARN, "%s running (pid %d)" % (name, pid),
                       "" if started else "cannot read its start time in %s" % paths.proc_root)
    # The true start lies in [started, started + resolution): only outside that window is the
    # order known, so what is printed (whole seconds of both) never contradicts the verdict.
    if started >= hook_mtime:
        return Finding("daemon", OK, "%s (pid %d) started %s, after the hook was installed (%s)"
                       % (name, pid, iso_time(started), iso_time(hook_mtime)), "")
    if started + resolution > hook_mtime:
        return Finding("daemon", WARN, "%s (pid %d) started %s, within %g s of the hook's "
                       "install (%s): %s cannot tell which came first"
                       % (name, pid, iso_time(started), resolution, iso_time(hook_mtime),
                          "/proc/stat's whole-second boot time" if resolution >= 1 else
                          "the clock tick"), "systemctl restart %s to be sure" % name)
    others = _other_hooks(paths, started)
    if others:
        return Finding("daemon", WARN, "%s (pid %d) started %s, before the hook was installed (%s); "
                       "it runs qemu.d/vfpick only because it found other qemu hooks at start (%s)"
                       % (name, pid, iso_time(started), iso_time(hook_mtime), ", ".join(others)),
                       "systemctl restart %s to be sure" % name)
    return Finding("daemon", FAIL, "%s (pid %d) started %s, before the hook was installed (%s), "
                   "with no qemu hook at all: it ignores the hook, vfpick guards nothing"
                   % (name, pid, iso_time(started), iso_time(hook_mtime)), "systemctl restart %s" % name)


def _version(text):
    for word in reversed((text or "").split()):
        parts = word.split(".")
        numbers_ = [numbers.whole(p, 0, 1 << 20) for p in parts]
        if len(parts) >= 2 and None not in numbers_:
            return tuple(numbers_[:3]) + (0,) * (3 - len(numbers_[:3]))
    return None


def libvirt_version(paths):
    """(version tuple, where it came from) or (None, None)."""
    for argv in paths.version_commands:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        found = _version(proc.stdout) if proc.returncode == 0 else None
        if found:
            return found, " ".join(argv)
    from vfpick.domain import virt

    found = virt.client_version()  # the client library: the daemon is usually the same package
    return (found, "libvirt-python getVersion()") if found else (None, None)


def check_libvirt_version(paths):
    version, source = libvirt_version(paths)
    if version is None:
        return Finding("libvirt", WARN, "libvirt version unknown (no libvirtd/virtqemud --version, "
                       "no libvirt-python)", "install libvirt-daemon-system")
    text = ".".join(map(str, version))
    if version < QEMU_D_MIN:
        return Finding("libvirt", FAIL, "libvirt %s (%s) predates 6.5: it runs only hooks/qemu, "
                       "never qemu.d/vfpick" % (text, source),
                       "upgrade libvirt, or call qemu.d/vfpick from your hooks/qemu script")
    return Finding("libvirt", OK, "libvirt %s (%s) runs qemu.d hooks" % (text, source), "")
