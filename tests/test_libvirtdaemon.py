"""Which libvirt daemon is in use (vfpick/host/libvirtdaemon.py), from a fake root in tmp_path: sockets under
run/libvirt, /proc-like comm files, pid files, systemd unit files and enablement links."""

import os
import stat

import pytest

from vfpick.host import libvirtdaemon
from vfpick.commands import installhook

# Where Debian 12 and 13's libvirt-daemon(-system) put them (mmdebstrap root, `systemctl --root
# is-enabled`): libvirtd.service and its sockets enabled, no virtqemud unit at all.
DEBIAN = {"units": ["lib/systemd/system/libvirtd.service", "lib/systemd/system/libvirtd.socket"],
          "enabled": ["multi-user.target.wants/libvirtd.service",
                      "sockets.target.wants/libvirtd.socket"]}
# A modular host (Fedora/RHEL 9 and upstream's default): virtqemud and its sockets enabled,
# libvirtd installed beside it but disabled.
MODULAR = {"units": ["usr/lib/systemd/system/libvirtd.service",
                     "usr/lib/systemd/system/virtqemud.service",
                     "usr/lib/systemd/system/virtqemud.socket"],
           "enabled": ["multi-user.target.wants/virtqemud.service",
                       "sockets.target.wants/virtqemud.socket"]}


class Root:
    def __init__(self, base):
        self.base = base
        for d in ("run/libvirt", "proc", "etc/systemd/system"):
            os.makedirs(os.path.join(base, d), exist_ok=True)

    def path(self, rel):
        return os.path.join(self.base, rel)

    def socket(self, name):
        os.mknod(self.path("run/libvirt/" + name), stat.S_IFSOCK | 0o666)

    def process(self, pid, comm, pidfile=False):
        os.makedirs(self.path("proc/%d" % pid))
        with open(self.path("proc/%d/comm" % pid), "w") as f:
            f.write(comm + "\n")
        if pidfile:
            with open(self.path("run/%s.pid" % comm), "w") as f:
                f.write("%d\n" % pid)

    def systemd(self, layout):
        for rel in layout["units"]:
            os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
            open(self.path(rel), "w").close()
        for rel in layout["enabled"]:
            link = self.path("etc/systemd/system/" + rel)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/lib/systemd/system/" + os.path.basename(rel), link)
        for name in layout.get("masked", ()):
            os.symlink("/dev/null", self.path("etc/systemd/system/" + name))

    def in_use(self):
        return libvirtdaemon.in_use(self.path("run"), self.path("proc"))


@pytest.fixture
def root(tmp_path):
    return Root(str(tmp_path / "root"))


@pytest.mark.parametrize("sockets, procs, expected", [
    # libvirt's client takes virtqemud's own socket first, else libvirt-sock (libvirtd's)
    (["virtqemud-sock"], [(77, "virtqemud", False)], ("virtqemud", 77, "virtqemud-sock")),
    (["libvirt-sock"], [(42, "libvirtd", True)], ("libvirtd", 42, "libvirt-sock")),
    (["libvirt-sock", "virtqemud-sock"], [(42, "libvirtd", True), (77, "virtqemud", False)],
     ("virtqemud", 77, "virtqemud-sock")),
    # socket-activated and idle (Debian's libvirtd runs with --timeout 120): no process
    (["libvirt-sock"], [], ("libvirtd", None, "libvirt-sock")),
    (["virtqemud-sock"], [(42, "libvirtd", False)], ("virtqemud", None, "virtqemud-sock")),
    # no socket where libvirt's clients look: the process alone tells
    ([], [(77, "virtqemud", False)], ("virtqemud", 77, None)),
    ([], [(42, "libvirtd", True)], ("libvirtd", 42, None)),
    ([], [(5, "bash", False)], None),
    ([], [], None),
])
def test_in_use_by_socket_then_process(root, sockets, procs, expected):
    for name in sockets:
        root.socket(name)
    for pid, comm, pidfile in procs:
        root.process(pid, comm, pidfile)
    found = root.in_use()
    if expected is None:
        assert found is None
    else:
        name, pid, sock = expected
        assert found == libvirtdaemon.Daemon(name, pid, sock and root.path("run/libvirt/" + sock))


def test_stale_pid_file_names_no_daemon_but_the_scan_finds_the_real_one(root):
    with open(root.path("run/libvirtd.pid"), "w") as f:
        f.write("999\n")
    root.process(999, "bash")
    assert libvirtdaemon.processes(root.path("run"), root.path("proc")) == {}
    root.process(1234, "libvirtd")
    assert libvirtdaemon.processes(root.path("run"), root.path("proc")) == {"libvirtd": 1234}


@pytest.mark.parametrize("layout, sockets, procs, expected", [
    (DEBIAN, [], [], "libvirtd"),
    (MODULAR, [], [], "virtqemud"),
    # what runs beats what is enabled
    (DEBIAN, ["virtqemud-sock"], [(77, "virtqemud")], "virtqemud"),
    (MODULAR, [], [(42, "libvirtd")], "libvirtd"),
    # installed only (nothing enabled): the one installed
    ({"units": ["usr/lib/systemd/system/virtqemud.service"], "enabled": []}, [], [], "virtqemud"),
    # both enabled, both installed: nothing tells, libvirtd (what Debian ships)
    ({"units": MODULAR["units"], "enabled": DEBIAN["enabled"] + MODULAR["enabled"]}, [], [],
     "libvirtd"),
    ({"units": [], "enabled": []}, [], [], "libvirtd"),
    # nothing enabled, both installed, libvirtd masked (a modular host's advice): virtqemud
    ({"units": MODULAR["units"], "enabled": [], "masked": ["libvirtd.service"]}, [], [],
     "virtqemud"),
])
def test_service_to_restart(root, layout, sockets, procs, expected):
    root.systemd(layout)
    for name in sockets:
        root.socket(name)
    for pid, comm in procs:
        root.process(pid, comm)
    assert libvirtdaemon.service(root.base) == expected
    assert libvirtdaemon.restart_command(root.base) == "systemctl restart " + expected


@pytest.mark.parametrize("layout, command", [(DEBIAN, "systemctl restart libvirtd"),
                                             (MODULAR, "systemctl restart virtqemud")])
def test_install_hook_hint_names_the_daemon(root, layout, command):
    root.systemd(layout)
    hint = installhook.restart_hint(root.base)
    assert command in hint and "\n" not in hint
    other = {"systemctl restart libvirtd": "virtqemud", "systemctl restart virtqemud": "libvirtd"}
    assert other[command] not in hint
