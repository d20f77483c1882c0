"""Real-libvirtd test harness: a system libvirtd + virtlogd owned by the test session.

Used by end-to-end tests that need libvirt's real behaviour: qemu hooks in
``/etc/libvirt/hooks``, ``virsh define/start/save/restore``, ``/run/libvirt/qemu``.
See docs/libvirt-testing.md for what was observed with it and how to use it.

In tests/conftest.py::

    from libvirtd import libvirtd_fixture, hook_recorder_fixture
    libvirtd = libvirtd_fixture()            # session-scoped fixture "libvirtd"
    hook_recorder = hook_recorder_fixture()  # function-scoped factory "hook_recorder"

Then in a test::

    def test_x(libvirtd, hook_recorder):
        rec = hook_recorder()                       # qemu.d/50-rec-N, live at once
        name = libvirtd.define(domain_xml(libvirtd.unique_name("x")))
        libvirtd.virsh("start", name)
        assert rec.ops(name) == [("prepare", "begin"), ("start", "begin"), ("started", "begin")]

Only the standard library is used here (plus pytest inside the fixture factories),
so the module can be imported without the vfpick package or libvirt-python.

Policy when a libvirtd/virtqemud is already running and was not started by this
harness: skip (``pytest.skip``) with a message saying how to stop it, unless
``VFPICK_TEST_LIBVIRTD=reuse`` is set, in which case it is used as is (hooks
added later are only seen if the daemon found a hook when it started, and
``restart()`` skips).  ``VFPICK_TEST_LIBVIRTD=skip`` skips every real-libvirtd
test.  ``VFPICK_REQUIRE_LIBVIRTD=1`` (set by .ci/run) turns each of those skips into a
failure: a CI run cannot go green without the real libvirtd tests.  A daemon left behind by a crashed earlier session of this harness (see
MARKER) is recognised and stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid as uuidmod
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

URI = "qemu:///system"
HOOKS_DIR = Path("/etc/libvirt/hooks")
RUN_DIR = Path("/run/libvirt/qemu")            # live <domstatus> XML of running domains
CONFIG_DIR = Path("/etc/libvirt/qemu")         # persistent definitions
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")
PIDFILES = {"libvirtd": Path("/run/libvirtd.pid"), "virtlogd": Path("/run/virtlogd.pid")}
SOCKETS = {
    "libvirtd": [LIBVIRT_SOCK, Path("/run/libvirt/libvirt-sock-ro"),
                 Path("/run/libvirt/libvirt-admin-sock")],
    "virtlogd": [VIRTLOGD_SOCK, Path("/run/libvirt/virtlogd-admin-sock")],
}
# Records the daemons this harness started, so a crashed session's leftovers are recognised.
MARKER = Path("/run/vfpick-test-libvirtd.json")
# Names of domains made through unique_name(); leftovers with this prefix are removed at start.
NAME_PREFIX = "vfpt-"
PLACEHOLDER_HOOK = "00-vfpick-test-placeholder"
# Every hook file the harness writes contains this; such files are fair game at start/close.
HOOK_MARK = "vfpick-test-harness-hook"
# systemd-like environment for the daemons (the hooks inherit PATH from it).
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_MODE = "VFPICK_TEST_LIBVIRTD"     # "" (own daemon) | "reuse" | "skip"
REQUIRE_ENV = "VFPICK_REQUIRE_LIBVIRTD"  # "1": no usable libvirtd is a failure, not a skip

_BINARIES = ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64")


class HarnessError(RuntimeError):
    """The harness could not do what it was asked (daemon did not start, ...)."""


class Unavailable(Exception):
    """Real-libvirtd tests cannot run here; str(exc) is the skip reason."""


# --------------------------------------------------------------------------- helpers

def _which(name: str) -> Optional[str]:
    return shutil.which(name, path=DAEMON_PATH)


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") == "1"


def skip_or_fail(reason: str) -> None:
    """pytest.skip(reason), or pytest.fail when the real libvirtd is required."""
    try:
        import pytest
    except ImportError:  # pragma: no cover - the harness used outside pytest
        raise HarnessError(reason)

    if required():
        pytest.fail("%s=1 and the real-libvirtd test cannot run: %s" % (REQUIRE_ENV, reason),
                    pytrace=False)
    pytest.skip(reason)


def unavailable_reason() -> Optional[str]:
    """Why real-libvirtd tests cannot run on this machine, or None if they can."""
    mode = os.environ.get(ENV_MODE, "")
    if mode == "skip":
        return "%s=skip" % ENV_MODE
    if not sys.platform.startswith("linux"):
        return "real libvirtd tests need Linux"
    if os.geteuid() != 0:
        return "real libvirtd tests need root (system libvirtd, /etc/libvirt/hooks)"
    missing = [b for b in _BINARIES if not _which(b)]
    if missing:
        return ("libvirt/qemu not installed (missing %s); run scripts/setup"
                % ", ".join(missing))
    drv = [p for p in ("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so",
                       "/usr/lib64/libvirt/connection-driver/libvirt_driver_qemu.so",
                       "/usr/lib/libvirt/connection-driver/libvirt_driver_qemu.so")
           if os.path.exists(p)]
    if not drv:
        return "libvirt's qemu driver is not installed (libvirt-daemon-driver-qemu); run scripts/setup"
    import grp
    import pwd
    try:
        pwd.getpwnam("libvirt-qemu")
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        return "user/group libvirt-qemu missing (the qemu driver fails without them); run scripts/setup"
    return None


def _proc_starttime(pid: int) -> Optional[str]:
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    # field 22 (starttime), after the ")" closing comm
    return data.rsplit(")", 1)[1].split()[19]


def _proc_comm(pid: int) -> Optional[str]:
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def find_processes(*names: str) -> List[Tuple[int, str]]:
    """(pid, comm) of live processes whose comm is one of names (zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        comm = _proc_comm(pid)
        if comm in names:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.append((pid, comm))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    comm = _proc_comm(pid)
    if comm is None:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float, popen=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                return True
        elif not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def _terminate(pid: int, popen=None, timeout: float = 30.0) -> None:
    """SIGTERM, wait up to timeout, then SIGKILL and wait."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if _wait_gone(pid, timeout, popen):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not _wait_gone(pid, 10.0, popen):
        raise HarnessError("pid %d survives SIGKILL" % pid)


def kvm_probe_warning() -> Optional[str]:
    """libvirt re-probes QEMU capabilities (~4 s per emulator binary, on daemon start and
    on calls such as `virsh version`) when /dev/kvm exists but the qemu user cannot
    open it: the cached capabilities say KVM, the runtime check says no, the cache is
    thrown away every time.  scripts/setup fixes it as udev would (root:kvm 0660)."""
    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return None
    import grp
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        kvm_gid = None
    if st.st_mode & stat.S_IROTH and st.st_mode & stat.S_IWOTH:
        return None
    if kvm_gid is not None and st.st_gid == kvm_gid and st.st_mode & 0o060 == 0o060:
        return None
    return ("/dev/kvm is not accessible to libvirt-qemu (mode %o gid %d): libvirt will re-probe "
            "QEMU capabilities on every start (~10 s); run scripts/setup or "
            "`chgrp kvm /dev/kvm && chmod 0660 /dev/kvm`" % (stat.S_IMODE(st.st_mode), st.st_gid))


# --------------------------------------------------------------------------- domain XML

def domain_xml(name: str, *, uuid: Optional[str] = None, description: str = "vfpick test domain",
               memory_mib: int = 64, devices: str = "", metadata: str = "",
               hostdev_pci: Optional[str] = None, mac: str = "52:54:00:aa:00:01") -> str:
    """A minimal TCG domain that libvirt can start here: no disk, no graphics, serial to
    null, 64 MiB.  hostdev_pci ("0000:3b:02.1") adds an <interface type='hostdev'>.
    devices/metadata are raw XML snippets inserted into <devices>/<metadata>."""
    if hostdev_pci:
        dom, rest = hostdev_pci.split(":", 1)
        bus, rest = rest.split(":", 1)
        slot, fn = rest.split(".", 1)
        devices += (
            "\n    <interface type='hostdev' managed='yes'>"
            "\n      <mac address='%s'/>"
            "\n      <source><address type='pci' domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/></source>"
            "\n    </interface>" % (mac, dom, bus, slot, fn))
    uuid_el = "\n  <uuid>%s</uuid>" % uuid if uuid else ""
    meta_el = "\n  <metadata>%s</metadata>" % metadata if metadata else ""
    return """<domain type='qemu'>
  <name>%s</name>%s
  <description>%s</description>%s
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='null'/>
    <memballoon model='none'/>%s
  </devices>
</domain>
""" % (name, uuid_el, description, meta_el, memory_mib, devices)


def nonexistent_pci_address() -> str:
    """A PCI address that does not exist on this host (for 'start must fail' tests)."""
    for bus in range(0xfe, 0x00, -1):
        addr = "0000:%02x:1f.7" % bus
        if not os.path.exists("/sys/bus/pci/devices/" + addr):
            return addr
    raise HarnessError("no free PCI address?")


# --------------------------------------------------------------------------- the reaper
#
# libvirt daemonizes qemu: its parent becomes the nearest "child subreaper", else PID 1.
# Where PID 1 is not a real init (containers, this sandbox), zombies are reaped late
# (~1.5 s here), and libvirt's qemuProcessKill polls kill(pid, 0) until the zombie is gone:
# every `virsh destroy`/shutdown took ~1.8 s instead of ~0.05 s.  So the daemons are
# spawned by a tiny subreaper process that reaps every orphan at once.

_REAPER = r'''
import ctypes, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:          # PR_SET_CHILD_SUBREAPER
    print("error prctl errno %d" % ctypes.get_errno(), flush=True)
    sys.exit(1)
def reap(*_):
    while True:
        try:
            pid, _st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
signal.signal(signal.SIGCHLD, reap)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
for line in sys.stdin:                        # EOF (harness gone) ends the reaper
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0); os.dup2(fd, 1); os.dup2(fd, 2)
            os.chdir(req["cwd"])
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvpe(req["argv"][0], req["argv"], req["env"])
        finally:
            os._exit(127)
    print(pid, flush=True)
'''


class _Spawned:
    """A process started by the reaper (Popen-like: pid, poll(), returncode)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None and not _alive(self.pid):
            self.returncode = -1      # exit status went to the reaper; unknown here
        return self.returncode


class Reaper:
    """Subreaper process that spawns the daemons and reaps orphaned qemu at once."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if line != "ready":
            self.close()
            raise HarnessError("reaper did not start: %r" % line)

    def spawn(self, argv: Sequence[str], env: Dict[str, str], cwd: str, log: Path) -> _Spawned:
        self.proc.stdin.write(json.dumps({"argv": list(argv), "env": env, "cwd": cwd,  # type: ignore[union-attr]
                                          "log": str(log)}) + "\n")
        self.proc.stdin.flush()  # type: ignore[union-attr]
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line.isdigit():
            raise HarnessError("reaper could not spawn %s: %r" % (argv[0], line))
        return _Spawned(int(line))

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the daemon

class LibvirtDaemon:
    """A system libvirtd (qemu:///system) plus virtlogd, started and stopped by the tests.

    d = LibvirtDaemon(workdir); d.start(); ...; d.close()   (close = cleanup + stop)

    Hooks: libvirt looks for hooks once, at daemon start.  With placeholder_hook=True
    (default) a no-op ``qemu.d/00-vfpick-test-placeholder`` is installed before the
    daemon starts, so hooks installed later (main ``hooks/qemu`` or ``qemu.d/*``) are
    called without a restart.  With placeholder_hook=False, install hooks and then
    ``restart()``.
    """

    def __init__(self, workdir: Union[str, Path], *, uri: str = URI,
                 hooks_dir: Union[str, Path] = HOOKS_DIR, placeholder_hook: bool = True,
                 env: Optional[Dict[str, str]] = None, start_timeout: float = 120.0,
                 log_level: int = 3, reuse: Optional[bool] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.hooks_dir = Path(hooks_dir)
        self.qemu_d = self.hooks_dir / "qemu.d"
        self.main_hook = self.hooks_dir / "qemu"
        self.placeholder_hook = placeholder_hook
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.reuse = (os.environ.get(ENV_MODE) == "reuse") if reuse is None else reuse
        self.log_path = self.workdir / "libvirtd.log"
        self.virtlogd_log_path = self.workdir / "virtlogd.log"
        self._libvirtd = None    # Popen or _Spawned
        self._virtlogd = None
        self._reaper: Optional[Reaper] = None
        self.use_reaper = True
        self.libvirtd_pid: Optional[int] = None
        self.virtlogd_pid: Optional[int] = None
        self.owns_libvirtd = False
        self.owns_virtlogd = False
        self.reused = False
        self._installed_hooks: List[Path] = []
        self._created_dirs: List[Path] = []
        self._domains: List[str] = []
        self._preexisting: Optional[set] = None
        self.hooks_live = False          # did the running daemon find a hook at its start?
        self.start_seconds: Optional[float] = None   # last start: spawn -> `virsh version` answers
        self.stop_seconds: Optional[float] = None    # last stop: SIGTERM -> process gone
        self._counter = 0

    # ---- environment for the daemons
    def _env(self, log_path: Path) -> Dict[str, str]:
        env = {"PATH": DAEMON_PATH,
               "LIBVIRT_LOG_OUTPUTS": "%d:file:%s" % (self.log_level, log_path)}
        env.update(self.extra_env)
        return env

    # ---- marker of what we started (for crash recovery)
    def _write_marker(self) -> None:
        data = {}
        for key, pid in (("libvirtd", self.libvirtd_pid if self.owns_libvirtd else None),
                         ("virtlogd", self.virtlogd_pid if self.owns_virtlogd else None)):
            if pid:
                data[key] = {"pid": pid, "start": _proc_starttime(pid)}
        if data:
            MARKER.write_text(json.dumps(data))
        else:
            try:
                MARKER.unlink()
            except FileNotFoundError:
                pass

    @staticmethod
    def _marker_pids() -> Dict[str, int]:
        try:
            data = json.loads(MARKER.read_text())
        except (OSError, ValueError):
            return {}
        out = {}
        for key, rec in data.items():
            try:
                pid = int(rec["pid"])
            except (KeyError, TypeError, ValueError):
                continue
            if _proc_starttime(pid) == rec.get("start") and _proc_comm(pid) == key:
                out[key] = pid
        return out

    # ---- start / stop
    def start(self) -> "LibvirtDaemon":
        reason = unavailable_reason()
        if reason:
            raise Unavailable(reason)
        if self.running:
            return self
        warning = kvm_probe_warning()
        if warning:
            warnings.warn(warning)
        stale = self._marker_pids()
        for pid, comm in find_processes("libvirtd", "virtqemud"):
            if stale.get(comm) == pid:
                # left behind by a crashed session of this harness: ours to stop
                _terminate(pid)
                self._clean_runtime("libvirtd")
                continue
            if self.reuse and comm == "libvirtd":
                self.libvirtd_pid = pid
                self.reused = True
                continue
            raise Unavailable(
                "a %s not started by the test harness is running (pid %d); the libvirtd "
                "tests start their own system daemon (hooks are read at daemon start). "
                "Stop it (e.g. `systemctl stop libvirtd virtqemud`, or kill %d), or set "
                "%s=reuse to use it as is, or %s=skip" % (comm, pid, pid, ENV_MODE, ENV_MODE))
        if not self.reused:
            self.remove_leftover_hooks()
        if self.placeholder_hook and not self.reused:
            self.install_hook(PLACEHOLDER_HOOK, "#!/bin/sh\n# %s\nexit 0\n" % HOOK_MARK)
        self._start_virtlogd(stale.get("virtlogd"))
        if self.reused:
            self.hooks_live = self._hooks_present()   # a guess: we cannot know what it found
            self._wait_ready(None)
        else:
            self._start_libvirtd()
        self._write_marker()
        if self._preexisting is None:
            self._remove_leftover_domains()
            self._preexisting = set(self.list_domains())
        return self

    def _start_virtlogd(self, stale_pid: Optional[int]) -> None:
        if self.virtlogd_pid and _alive(self.virtlogd_pid):
            return
        running = find_processes("virtlogd")
        if running:
            pid = running[0][0]
            self.virtlogd_pid = pid
            # a leftover of ours is adopted (stopped at close); a foreign one is reused
            self.owns_virtlogd = stale_pid == pid
        else:
            self._clean_runtime("virtlogd")
            self._virtlogd = self._spawn("virtlogd", self.virtlogd_log_path)
            self.virtlogd_pid = self._virtlogd.pid
            self.owns_virtlogd = True
        deadline = time.monotonic() + 30
        while not VIRTLOGD_SOCK.exists():
            if self._virtlogd is not None and self._virtlogd.poll() is not None:
                raise HarnessError("virtlogd exited with %s; see %s"
                                   % (self._virtlogd.returncode, self.virtlogd_log_path))
            if time.monotonic() > deadline:
                raise HarnessError("virtlogd socket %s did not appear" % VIRTLOGD_SOCK)
            time.sleep(0.01)

    def _spawn(self, prog: str, log: Path):
        env = self._env(log)
        if self.use_reaper and self._reaper is None:
            try:
                self._reaper = Reaper()
            except Exception as exc:  # noqa: BLE001 - no ctypes/prctl: fall back to plain children
                warnings.warn("no subreaper (%s): domain stops will be slow where PID 1 "
                              "reaps late" % exc)
                self.use_reaper = False
        if self._reaper is not None:
            return self._reaper.spawn([prog], env, "/", log)
        with open(log, "ab") as logf:
            return subprocess.Popen([prog], env=env, cwd="/", stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def _hooks_present(self) -> bool:
        def runnable(p: Path) -> bool:
            return p.is_file() and os.access(p, os.X_OK)
        if runnable(self.main_hook):
            return True
        return self.qemu_d.is_dir() and any(runnable(p) for p in self.qemu_d.iterdir())

    def _start_libvirtd(self) -> None:
        self._clean_runtime("libvirtd")
        self.hooks_live = self._hooks_present()
        t0 = time.monotonic()
        self._libvirtd = self._spawn("libvirtd", self.log_path)
        self.libvirtd_pid = self._libvirtd.pid
        self.owns_libvirtd = True
        self._write_marker()
        self._wait_ready(self._libvirtd)
        self.start_seconds = time.monotonic() - t0

    def _wait_ready(self, popen) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while True:
            if popen is not None and popen.poll() is not None:
                raise HarnessError("libvirtd exited with %s before answering; log %s:\n%s"
                                   % (popen.returncode, self.log_path, self.log_tail()))
            if LIBVIRT_SOCK.exists():
                try:
                    res = subprocess.run(["virsh", "-c", self.uri, "version"],
                                         capture_output=True, text=True, timeout=60,
                                         env=self._client_env())
                    if res.returncode == 0:
                        return
                    last = res.stderr.strip()
                except subprocess.TimeoutExpired:
                    last = "virsh version timed out"
            if time.monotonic() > deadline:
                raise HarnessError("libvirtd did not answer `virsh -c %s version` within %.0f s "
                                   "(%s); log %s:\n%s" % (self.uri, self.start_timeout, last,
                                                          self.log_path, self.log_tail()))
            time.sleep(0.02)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @staticmethod
    def _clean_runtime(which: str) -> None:
        """Remove pid file and sockets of a daemon that is not running (after SIGKILL)."""
        for p in [PIDFILES[which]] + SOCKETS[which]:
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    @property
    def running(self) -> bool:
        return bool(self.libvirtd_pid) and _alive(self.libvirtd_pid)

    def stop_libvirtd(self) -> None:
        """Stop our libvirtd (running domains keep running: qemu is not its child)."""
        if self.reused:
            raise HarnessError("cannot stop a reused libvirtd")
        if self.libvirtd_pid is None:
            return
        t0 = time.monotonic()
        _terminate(self.libvirtd_pid, self._libvirtd)
        self.stop_seconds = time.monotonic() - t0
        self._libvirtd = None
        self.libvirtd_pid = None
        self.owns_libvirtd = False
        self.hooks_live = False
        self._clean_runtime("libvirtd")
        self._write_marker()

    def stop_virtlogd(self) -> None:
        if not self.owns_virtlogd or self.virtlogd_pid is None:
            return
        _terminate(self.virtlogd_pid, self._virtlogd)
        self._virtlogd = None
        self.virtlogd_pid = None
        self.owns_virtlogd = False
        self._clean_runtime("virtlogd")
        self._write_marker()

    def start_virtlogd(self) -> None:
        self._start_virtlogd(None)
        self._write_marker()

    def restart(self) -> None:
        """Stop and start libvirtd (virtlogd keeps running): it re-reads the hooks dir."""
        if self.reused:
            skip_or_fail("%s=reuse: the harness cannot restart a libvirtd it did not start"
                         % ENV_MODE)
        self.stop_libvirtd()
        self._start_libvirtd()
        self._write_marker()

    def close(self) -> None:
        """Teardown: destroy/undefine domains made here, remove hooks, stop our daemons."""
        errors = []
        if self.running:
            try:
                self.cleanup_domains(all_new=True)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append("domains: %s" % exc)
        self.remove_all_hooks()
        for d in reversed(self._created_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        self._created_dirs = []
        if not self.reused:
            try:
                self.stop_libvirtd()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                errors.append("libvirtd: %s" % exc)
        try:
            self.stop_virtlogd()
        except Exception as exc:  # noqa: BLE001 - keep tearing down
            errors.append("virtlogd: %s" % exc)
        self._write_marker()
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
        if errors:
            raise HarnessError("teardown: " + "; ".join(errors))

    def __enter__(self) -> "LibvirtDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- virsh
    def _client_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.pop("LIBVIRT_DEFAULT_URI", None)
        env["LC_ALL"] = "C"
        return env

    def virsh(self, *args: str, check: bool = True, input: Optional[str] = None,
              timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run `virsh -c URI ARGS...`; text stdout/stderr.  check=True raises HarnessError
        with virsh's stderr when it fails."""
        cmd = ["virsh", "-c", self.uri] + [str(a) for a in args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                             env=self._client_env())
        if check and res.returncode != 0:
            raise HarnessError("%s failed (%d): %s" % (" ".join(cmd), res.returncode,
                                                       res.stderr.strip()))
        return res

    # ---- hooks
    def _ensure_dir(self, d: Path) -> None:
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            p.mkdir(mode=0o755)
            self._created_dirs.append(p)

    def install_hook(self, name: str, text: str, *, main: bool = False,
                     mode: int = 0o755) -> Path:
        """Write an executable hook: qemu.d/NAME, or the main hooks/qemu when main=True.
        Refuses to overwrite a file it did not install.  Removed by remove_hook/close."""
        path = self.main_hook if main else self.qemu_d / name
        if path.exists() and path not in self._installed_hooks and not self._ours(path):
            raise HarnessError("%s exists and was not installed by the test harness" % path)
        self._ensure_dir(path.parent)
        # also make qemu.d exist so main-hook-only tests behave like a real host
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if path not in self._installed_hooks:
            self._installed_hooks.append(path)
        return path

    @staticmethod
    def _ours(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return HOOK_MARK.encode() in f.read(4096)
        except OSError:
            return False

    def remove_leftover_hooks(self) -> List[Path]:
        """Remove hook files a crashed earlier session of the harness left behind."""
        gone = []
        cands = [self.main_hook] + (sorted(self.qemu_d.iterdir()) if self.qemu_d.is_dir() else [])
        for p in cands:
            if p.is_file() and p not in self._installed_hooks and self._ours(p):
                p.unlink()
                gone.append(p)
        return gone

    def remove_hook(self, path: Union[str, Path]) -> None:
        p = Path(path)
        if not p.is_absolute():
            p = self.qemu_d / p
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        if p in self._installed_hooks:
            self._installed_hooks.remove(p)

    def remove_all_hooks(self, keep_placeholder: bool = False) -> None:
        for p in list(self._installed_hooks):
            if keep_placeholder and p.name == PLACEHOLDER_HOOK:
                continue
            self.remove_hook(p)

    # ---- domains
    def unique_name(self, base: str = "dom") -> str:
        self._counter += 1
        return "%s%s-%d-%s" % (NAME_PREFIX, base, self._counter, uuidmod.uuid4().hex[:6])

    def list_domains(self) -> List[str]:
        out = self.virsh("list", "--all", "--name").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def is_running(self, name: str) -> bool:
        res = self.virsh("domstate", name, check=False)
        return res.returncode == 0 and res.stdout.strip() == "running"

    def define(self, xml: str) -> str:
        """virsh define from a string; returns the name; the domain is removed at cleanup."""
        path = self.workdir / ("define-%d.xml" % (self._counter + 1))
        self._counter += 1
        path.write_text(xml)
        res = self.virsh("define", str(path))
        name = res.stdout.split("'")[1] if "'" in res.stdout else None
        if not name:
            raise HarnessError("cannot parse virsh define output: %r" % res.stdout)
        self.track(name)
        return name

    def create(self, xml: str) -> str:
        """virsh create (transient domain) from a string; returns the name."""
        path = self.workdir / ("create-%d.xml" % (self._counter + 1))
        self._counter += 1
        path.write_text(xml)
        res = self.virsh("create", str(path))
        name = res.stdout.split("'")[1]
        self.track(name)
        return name

    def track(self, name: str) -> None:
        if name not in self._domains:
            self._domains.append(name)

    def remove_domain(self, name: str) -> None:
        """Destroy (if running) and undefine (if persistent, with its managed save)."""
        self.virsh("destroy", name, check=False)
        self.virsh("undefine", name, "--managed-save", "--snapshots-metadata", check=False)
        if name in self._domains:
            self._domains.remove(name)

    def cleanup_domains(self, all_new: bool = False) -> None:
        """Remove the domains tracked by define/create/track; with all_new, also any domain
        that appeared since the harness started."""
        names = list(self._domains)
        if all_new and self._preexisting is not None:
            names += [n for n in self.list_domains()
                      if n not in self._preexisting and n not in names]
        for n in names:
            self.remove_domain(n)

    def _remove_leftover_domains(self) -> None:
        for n in self.list_domains():
            if n.startswith(NAME_PREFIX):
                self.remove_domain(n)

    def dumpxml(self, name: str, inactive: bool = False) -> str:
        args = ["dumpxml", name] + (["--inactive"] if inactive else [])
        return self.virsh(*args).stdout

    @staticmethod
    def live_xml_path(name: str) -> Path:
        return RUN_DIR / (name + ".xml")


# --------------------------------------------------------------------------- recording hook

_RECORDER = r'''#!%(python)s -IS
# %(mark)s: records each hook call, optionally refuses / filters.
import fcntl, json, os, sys, time
LOG = %(log)r
RULES = %(rules)r
LABEL = %(label)r

def main():
    data = sys.stdin.read()
    args = sys.argv[1:]
    name, op, sub = (args + ["", "", ""])[:3]
    try:
        with open(RULES) as f:
            rules = json.load(f)
    except (OSError, ValueError):
        rules = []
    rule = {}
    for r in rules:
        if r.get("op") == "%%s %%s" %% (op, sub) and r.get("domain") in (None, name):
            rule.update(r)      # matching rules merge, later ones win
    out = None
    if "stdout" in rule:
        out = rule["stdout"]
    elif "replace" in rule:
        out = data
        for old, new in rule["replace"]:
            out = out.replace(old, new)
    rec = {"hook": LABEL, "path": sys.argv[0], "argv": args, "name": name, "op": op,
           "subop": sub, "stdin": data, "env": dict(os.environ), "cwd": os.getcwd(),
           "uid": os.getuid(), "time": time.time(), "pid": os.getpid(),
           "run_xml": os.path.exists("/run/libvirt/qemu/%%s.xml" %% name),
           "config_xml": os.path.exists("/etc/libvirt/qemu/%%s.xml" %% name),
           "stdout": out, "exit": rule.get("exit", 0)}
    if rule.get("sleep"):
        time.sleep(rule["sleep"])
    with open(LOG, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(rec) + "\n")
    if out:
        sys.stdout.write(out)
    if rule.get("stderr"):
        sys.stderr.write(rule["stderr"])
    return rule.get("exit", 0)

sys.exit(main())
'''


class HookCall:
    """One recorded hook invocation."""

    def __init__(self, rec: dict):
        self.rec = rec
        self.hook: str = rec["hook"]
        self.argv: List[str] = rec["argv"]
        self.name: str = rec["name"]
        self.op: str = rec["op"]
        self.subop: str = rec["subop"]
        self.stdin: str = rec["stdin"]
        self.env: Dict[str, str] = rec["env"]
        self.run_xml: bool = rec["run_xml"]
        self.config_xml: bool = rec["config_xml"]
        self.time: float = rec["time"]

    @property
    def opsub(self) -> Tuple[str, str]:
        return (self.op, self.subop)

    def __repr__(self) -> str:
        return "HookCall(%s %s)" % (self.hook, " ".join(self.argv))


class HookRecorder:
    """A hook that appends every call (argv, stdin XML, env, /run + /etc XML presence) as a
    JSON line, and can refuse (exit code + stderr) or print XML (filter ops) by rule."""

    def __init__(self, daemon: LibvirtDaemon, name: str = "50-recorder", *, main: bool = False,
                 python: Optional[str] = None):
        self.daemon = daemon
        self.main = main
        self.label = "qemu" if main else "qemu.d/" + name
        safe = self.label.replace("/", "_")
        self.dir = daemon.workdir / ("hook-" + safe + "-" + uuidmod.uuid4().hex[:6])
        self.dir.mkdir(parents=True)
        self.log = self.dir / "calls.jsonl"
        self.rules_path = self.dir / "rules.json"
        self.log.touch()
        self._rules: List[dict] = []
        self._save_rules()
        text = _RECORDER % {"python": python or sys.executable, "log": str(self.log),
                            "rules": str(self.rules_path), "label": self.label,
                            "mark": HOOK_MARK}
        self.path = daemon.install_hook(name, text, main=main)

    # ---- rules (re-read by the hook on every call)
    def _save_rules(self) -> None:
        tmp = self.rules_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._rules))
        os.replace(tmp, self.rules_path)

    def refuse(self, op: str = "prepare begin", *, exit: int = 1, stderr: str = "refused\n",
               domain: Optional[str] = None, stdout: Optional[str] = None) -> None:
        rule = {"op": op, "exit": exit, "stderr": stderr, "domain": domain}
        if stdout is not None:
            rule["stdout"] = stdout
        self._rules.append(rule)
        self._save_rules()

    def rewrite(self, op: str, replacements: Sequence[Tuple[str, str]], *,
                domain: Optional[str] = None) -> None:
        """Print stdin with the replacements applied (for filter ops: restore/migrate)."""
        self._rules.append({"op": op, "replace": [list(r) for r in replacements],
                            "domain": domain})
        self._save_rules()

    def print_stdout(self, op: str, text: str, *, domain: Optional[str] = None) -> None:
        self._rules.append({"op": op, "stdout": text, "domain": domain})
        self._save_rules()

    def delay(self, op: str, seconds: float, *, domain: Optional[str] = None) -> None:
        """Sleep this long in the hook (before recording the call)."""
        self._rules.append({"op": op, "sleep": seconds, "domain": domain})
        self._save_rules()

    def clear_rules(self) -> None:
        self._rules = []
        self._save_rules()

    # ---- reading
    def calls(self, name: Optional[str] = None) -> List[HookCall]:
        out = []
        with open(self.log) as f:
            for line in f:
                if line.strip():
                    c = HookCall(json.loads(line))
                    if name is None or c.name == name:
                        out.append(c)
        return out

    def ops(self, name: Optional[str] = None) -> List[Tuple[str, str]]:
        return [c.opsub for c in self.calls(name)]

    def clear(self) -> None:
        with open(self.log, "w"):
            pass

    def remove(self) -> None:
        self.daemon.remove_hook(self.path)


def read_calls(*recorders: HookRecorder, name: Optional[str] = None) -> List[HookCall]:
    """Calls of several recorders merged in time order (each hook runs to completion
    before libvirt starts the next one, so time order is call order)."""
    calls = [c for r in recorders for c in r.calls(name)]
    return sorted(calls, key=lambda c: c.time)


# --------------------------------------------------------------------------- pytest glue

_shared: Dict[str, object] = {"daemon": None, "refs": 0, "lock": None}

# One system libvirtd per machine: a second pytest session (another checkout, a CI run beside a
# developer's) would take the first one's daemon for a crashed leftover and stop it. Sessions
# take this lock before they start a daemon and keep it until theirs is stopped.
SESSION_LOCK = Path("/run/vfpick-test-libvirtd.lock")
SESSION_LOCK_TIMEOUT = float(os.environ.get("VFPICK_TEST_LIBVIRTD_WAIT", "2700"))


def _take_session_lock(timeout: float = SESSION_LOCK_TIMEOUT) -> int:
    import fcntl

    fd = os.open(str(SESSION_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise HarnessError("another test session (pid %s) has held %s for over %d s"
                                   % (holder, SESSION_LOCK, timeout))
            if not told:
                sys.stderr.write("waiting for another test session's libvirtd (%s)\n" % SESSION_LOCK)
                told = True
            time.sleep(0.5)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd


def _drop_session_lock() -> None:
    fd = _shared["lock"]
    _shared["lock"] = None
    if fd is not None:
        os.close(fd)  # type: ignore[arg-type]


def acquire_shared_daemon(workdir: Union[str, Path]) -> LibvirtDaemon:
    """The process-wide daemon (started on first use).  Raises Unavailable."""
    d = _shared["daemon"]
    if d is None:
        if unavailable_reason() is None and _shared["lock"] is None:
            _shared["lock"] = _take_session_lock()
        d = LibvirtDaemon(workdir)
        try:
            d.start()
        except BaseException:
            d.close()
            _drop_session_lock()
            raise
        _shared["daemon"] = d
    _shared["refs"] = int(_shared["refs"]) + 1
    return d  # type: ignore[return-value]


def release_shared_daemon() -> None:
    _shared["refs"] = int(_shared["refs"]) - 1
    if _shared["refs"] <= 0 and _shared["daemon"] is not None:
        d = _shared["daemon"]
        _shared["daemon"] = None
        _shared["refs"] = 0
        try:
            d.close()  # type: ignore[union-attr]
        finally:
            _drop_session_lock()


def libvirtd_fixture(name: str = "libvirtd", scope: str = "session"):
    """A pytest fixture (default: session-scoped, named "libvirtd") yielding the shared
    LibvirtDaemon; skips the test when libvirt cannot run here (fails it when required()).  Several modules (or
    conftest + a test module) may define it: they share one daemon."""
    import pytest

    @pytest.fixture(scope=scope, name=name)
    def _libvirtd(tmp_path_factory):
        try:
            d = acquire_shared_daemon(tmp_path_factory.mktemp("libvirtd"))
        except Unavailable as exc:
            skip_or_fail(str(exc))
        try:
            yield d
        finally:
            release_shared_daemon()

    return _libvirtd


def hook_recorder_fixture(name: str = "hook_recorder", daemon_fixture: str = "libvirtd"):
    """A function-scoped pytest fixture yielding a factory:
    ``hook_recorder(name="50-rec", main=False) -> HookRecorder``.  Every recorder it made
    and every domain the test defined through the daemon are removed after the test."""
    import pytest

    @pytest.fixture(name=name)
    def _hook_recorder(request):
        daemon: LibvirtDaemon = request.getfixturevalue(daemon_fixture)
        made: List[HookRecorder] = []
        counter = [0]

        def make(hook_name: Optional[str] = None, *, main: bool = False) -> HookRecorder:
            counter[0] += 1
            rec = HookRecorder(daemon, hook_name or "50-rec-%d" % counter[0], main=main)
            made.append(rec)
            return rec

        try:
            yield make
        finally:
            # domains first, so their stop/release still reach the hooks under test
            try:
                daemon.cleanup_domains()
            finally:
                for rec in made:
                    rec.remove()

    return _hook_recorder
