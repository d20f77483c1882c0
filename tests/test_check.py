"""`vfpick check`: the preflight, against simulated hosts and fake /proc, hooks and module trees.

Every outside path is a check.Paths field, so each finding is driven from data in tmp_path;
one test runs against the real libvirtd harness (daemon started before/after the hook).
"""

import json
import os
import stat
import sys
import time

import pytest

from clitools import vfpick
from vfpick.commands import check, installhook
from vfpick.host import simhost

BOOT = 1_700_000_000
TCK = os.sysconf("SC_CLK_TCK")


class FakeHost:
    """A simulated host plus fake /proc, /run, hooks and modules dirs."""

    def __init__(self, host, tmp_path):
        self.host = host
        self.proc = tmp_path / "proc"
        self.run = tmp_path / "run"
        self.hooks = tmp_path / "hooks"
        self.modules = tmp_path / "modules"
        self.root = tmp_path / "root"  # systemd units: none, unless a test writes them
        for d in (self.proc, self.run, self.hooks, self.modules, self.root):
            d.mkdir(exist_ok=True)
        (self.proc / "stat").write_text("cpu  1 2 3\nbtime %d\n" % BOOT)
        self.version = "libvirtd (libvirt) 9.0.0"

    def paths(self):
        return check.Paths(hooks_dir=str(self.hooks), run_dir=str(self.run),
                           proc_root=str(self.proc), modules_dir=str(self.modules),
                           version_commands=((sys.executable, "-c", "print(%r)" % self.version),),
                           systemd_root=str(self.root))

    def process(self, pid, comm, started=None, argv=None):
        d = self.proc / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        ticks = int(((started or BOOT + 100) - BOOT) * TCK)
        (d / "stat").write_text("%d (%s) S %s %d 0 0\n" % (pid, comm, " ".join(["0"] * 18), ticks))
        (d / "cmdline").write_text("\0".join(argv or [comm]) + "\0")

    def daemon(self, started, name="libvirtd", pid=4242, pidfile=True):
        self.process(pid, name, started)
        if pidfile:
            (self.run / (name + ".pid")).write_text("%d\n" % pid)

    def socket(self, name):
        """A socket file where libvirt's clients look (run/libvirt/NAME)."""
        (self.run / "libvirt").mkdir(exist_ok=True)
        os.mknod(str(self.run / "libvirt" / name), stat.S_IFSOCK | 0o666)

    def install_hook(self, mtime=None):
        path = installhook.install(str(self.hooks), self.host.config_path)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def findings(self):
        return check.run(self.host.config_path, self.paths())


@pytest.fixture
def fake(make_host, tmp_path):
    def make(spec="two-dual-port", **config):
        host = make_host(spec)
        host.write_config(**config)
        return FakeHost(host, tmp_path)
    return make


def by_check(findings, name):
    return [f for f in findings if f.check == name]


def one(findings, name):
    found = by_check(findings, name)
    assert len(found) == 1, findings
    return found[0]


def test_simulated_host_reports_iommu_off_and_exits_1(fake):
    f = fake()
    findings = f.findings()
    iommu = one(findings, "iommu")
    assert iommu.status == "fail" and "IOMMU off" in iommu.message and "intel_iommu=on" in iommu.fix
    assert check.exit_code(findings) == 1
    for finding in findings:  # one line each, with a fix wherever it is not ok
        assert "\n" not in finding.message + finding.fix
        assert finding.status in ("ok", "warn", "fail")
        assert finding.status == "ok" or finding.fix


@pytest.mark.parametrize("mode, status, words", [
    ("on", "ok", "group of its own"),
    ("shared", "warn", "share their IOMMU group"),
])
def test_iommu_groups_and_acs(make_host, tmp_path, mode, status, words):
    spec = dict(simhost.load_spec("two-dual-port"), iommu=mode)
    host = make_host(spec)
    host.write_config()
    findings = FakeHost(host, tmp_path).findings()
    assert one(findings, "iommu").status == "ok"
    groups = one(findings, "iommu-groups")
    assert groups.status == status and words in groups.message


def test_vf_without_iommu_group_fails(make_host, tmp_path):
    host = make_host(dict(simhost.load_spec("two-dual-port"), iommu="on"))
    host.write_config()
    os.unlink(os.path.join(host.sysfs, "bus/pci/devices/0000:3c:00.1/iommu_group"))
    groups = one(FakeHost(host, tmp_path).findings(), "iommu-groups")
    assert groups.status == "fail" and "0000:3c:00.1" in groups.message


@pytest.mark.parametrize("setup, status", [
    ("nothing", "fail"),
    ("sysfs", "ok"),
    ("builtin", "ok"),
    ("dep", "ok"),
    ("alias", "ok"),
])
def test_vfio_pci_available(fake, setup, status):
    f = fake()
    if setup == "sysfs":
        os.makedirs(os.path.join(f.host.sysfs, "bus/pci/drivers/vfio-pci"))
    elif setup == "builtin":
        (f.modules / "modules.builtin").write_text("kernel/drivers/vfio/pci/vfio-pci.ko\n")
    elif setup == "dep":
        (f.modules / "modules.dep").write_text(
            "kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n")
    elif setup == "alias":
        (f.modules / "modules.alias").write_text("alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n")
    assert one(f.findings(), "vfio-pci").status == status


def test_pool_pf_without_vfs_down_link_and_unknown_speed(fake):
    f = fake()
    sysfs = f.host.sysfs
    with open(os.path.join(sysfs, "bus/pci/devices/0000:3b:00.1/sriov_numvfs"), "w") as fh:
        fh.write("0\n")
    simhost.set_carrier(sysfs, "ens2f0", False)
    with open(os.path.join(sysfs, "class/net/ens2f1/speed"), "w") as fh:
        fh.write("-1\n")
    pfs = {f_.message.split()[1]: f_ for f_ in by_check(f.findings(), "pf")}
    assert pfs["ens1f0"].status == "ok" and "25G" in pfs["ens1f0"].message
    assert pfs["ens1f1"].status == "fail" and "sriov_numvfs" in pfs["ens1f1"].fix
    assert pfs["ens2f0"].status == "warn" and "link down" in pfs["ens2f0"].message
    assert pfs["ens2f1"].status == "warn" and "speed unknown" in pfs["ens2f1"].message


@pytest.mark.parametrize("preset, status, words", [
    ("qede-npar", "warn", "[link NAME]"),
    ("ixgbe-82599", "warn", "tell no port"),
    ("bnxt-npar", "ok", "2 link(s), by phys_port_name"),
    ("i40e-x710-npar", "ok", "by phys_port_id"),
])
def test_multi_pf_cards_without_port_identity(fake, preset, status, words):
    finding = one(fake(preset).findings(), "port-identity")
    assert finding.status == status and words in finding.message + finding.fix


def test_link_sections_settle_port_identity(fake):
    f = fake("qede-npar", extra="[link a]\npfs = ens4f0 ens4f2\n[link b]\npfs = ens4f1 ens4f3\n")
    finding = one(f.findings(), "port-identity")
    assert finding.status == "ok" and "link_section" in finding.message


def test_multi_port_function_is_called_out(fake):
    findings = fake("mlx4-cx3").findings()
    finding = one(findings, "multi-port")
    assert finding.status == "warn" and "cannot tell which port a VF uses" in finding.message


def test_switchdev_pf_reports_its_uplink(fake):
    findings = fake("mlx5-cx6-switchdev").findings()
    assert {f.status for f in by_check(findings, "switchdev")} == {"ok"}
    assert any("uplink ens3f0np0, 4 representors" in f.message for f in findings)


def test_hook_missing_foreign_or_with_another_config(fake, tmp_path):
    f = fake()
    hook = one(f.findings(), "hook")
    assert hook.status == "fail" and "install-hook" in hook.fix and str(f.hooks) in hook.fix
    path = f.install_hook()
    assert one(f.findings(), "hook").status == "ok"
    other = tmp_path / "other.ini"
    other.write_text(open(f.host.config_path).read())
    installhook.install(str(f.hooks), str(other))
    finding = one(f.findings(), "hook-config")
    assert finding.status == "fail" and str(other) in finding.message
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\nexit 0\n")
    assert "not installed by vfpick" in one(f.findings(), "hook").message


def test_hook_whose_package_or_interpreter_vanished(fake):
    f = fake()
    path = f.install_hook()
    text = open(path).read()
    with open(path, "w") as fh:
        fh.write(text.replace(sys.executable, "/nonexistent/python3").replace(
            installhook.baked(text, "package"), "/gone"))
    messages = " ".join(x.message for x in by_check(f.findings(), "hook"))
    assert "interpreter /nonexistent/python3 is gone" in messages and "/gone has no vfpick" in messages


@pytest.mark.parametrize("daemon_offset, other_hook, status", [
    (+60, False, "ok"),      # daemon (re)started after install-hook
    (-60, False, "fail"),    # started before, with no hook at all: it ignores ours
    (-60, True, "warn"),     # started before, but it found another qemu hook at start
])
def test_daemon_started_before_or_after_the_hook(fake, daemon_offset, other_hook, status):
    f = fake()
    installed = BOOT + 1000
    if other_hook:
        os.makedirs(f.hooks / "qemu.d", exist_ok=True)
        other = f.hooks / "qemu.d" / "10-other"
        other.write_text("#!/bin/sh\nexit 0\n")
        other.chmod(0o755)
        os.utime(other, (BOOT, BOOT))
    f.install_hook(mtime=installed)
    f.daemon(started=installed + daemon_offset)
    finding = one(f.findings(), "daemon")
    assert finding.status == status, finding
    if status == "fail":
        assert finding.fix == "systemctl restart libvirtd"


def test_daemon_found_by_proc_scan_without_pid_file(fake):
    f = fake()
    f.install_hook(mtime=BOOT + 10)
    f.daemon(started=BOOT + 20, name="virtqemud", pid=77, pidfile=False)
    finding = one(f.findings(), "daemon")
    assert finding.status == "ok" and "virtqemud (pid 77)" in finding.message


@pytest.mark.parametrize("name, sock, offset, status", [
    ("virtqemud", "virtqemud-sock", +60, "ok"),
    ("virtqemud", "virtqemud-sock", -60, "fail"),
    ("libvirtd", "libvirt-sock", -60, "fail"),
])
def test_daemon_in_use_by_socket_and_process(fake, name, sock, offset, status):
    f = fake()
    installed = BOOT + 1000
    f.install_hook(mtime=installed)
    f.daemon(started=installed + offset, name=name, pid=77, pidfile=False)
    f.socket(sock)
    finding = one(f.findings(), "daemon")
    assert finding.status == status, finding
    assert finding.message.startswith("%s (pid 77)" % name), finding
    assert finding.message.endswith("reaches it at %s" % (f.run / "libvirt" / sock)), finding
    if status == "fail":
        assert finding.fix == "systemctl restart %s" % name


def test_modular_host_with_libvirtd_running_too_checks_virtqemud(fake):
    """libvirt's clients take virtqemud's socket first: that daemon runs the hook of their domains."""
    f = fake()
    installed = BOOT + 1000
    f.install_hook(mtime=installed)
    f.daemon(started=installed + 60, name="libvirtd", pid=42)   # after the hook, but not in use
    f.daemon(started=installed - 60, name="virtqemud", pid=77)  # before it: ignores the hook
    f.socket("libvirt-sock")
    f.socket("virtqemud-sock")
    finding = one(f.findings(), "daemon")
    assert finding.status == "fail" and finding.message.startswith("virtqemud (pid 77)"), finding
    assert finding.fix == "systemctl restart virtqemud"


@pytest.mark.parametrize("sock, name", [("libvirt-sock", "libvirtd"), ("virtqemud-sock", "virtqemud")])
def test_socket_activated_daemon_not_running_is_ok(fake, sock, name):
    f = fake()
    f.install_hook(mtime=BOOT + 1000)
    f.socket(sock)
    finding = one(f.findings(), "daemon")
    assert finding.status == "ok" and finding.message.startswith("%s is not running" % name), finding
    assert "socket activation" in finding.message


@pytest.mark.parametrize("enabled, name", [
    ("multi-user.target.wants/libvirtd.service", "libvirtd"),     # Debian 12 and 13
    ("sockets.target.wants/virtqemud.socket", "virtqemud"),       # modular hosts
])
def test_no_daemon_and_no_hook_name_the_enabled_daemon(fake, enabled, name):
    f = fake()
    link = f.root / "etc" / "systemd" / "system" / enabled
    link.parent.mkdir(parents=True)
    link.symlink_to("/lib/systemd/system/" + os.path.basename(enabled))
    findings = f.findings()
    daemon = one(findings, "daemon")
    assert daemon.status == "warn" and daemon.fix == "systemctl start %s" % name, daemon
    hook = one(findings, "hook")
    assert hook.status == "fail" and hook.fix.endswith(", then systemctl restart %s" % name), hook


def test_stale_pid_file_is_not_the_daemon(fake):
    f = fake()
    (f.run / "libvirtd.pid").write_text("999\n")
    f.process(999, "bash")
    assert one(f.findings(), "daemon").status == "warn"


@pytest.mark.parametrize("version, status", [
    ("libvirtd (libvirt) 9.0.0", "ok"), ("libvirtd (libvirt) 6.5.0", "ok"),
    ("libvirtd (libvirt) 6.0.0", "fail"), ("garbage", None)])
def test_libvirt_new_enough_for_qemu_d(fake, version, status):
    f = fake()
    f.version = version
    finding = one(f.findings(), "libvirt")
    if status is None:  # no usable --version: libvirt-python's version, or unknown
        assert finding.status in ("ok", "warn")
    else:
        assert finding.status == status


def test_watcher_running_or_not(fake):
    f = fake()
    assert one(f.findings(), "watcher").status == "warn"
    f.process(555, "python3", argv=["/usr/bin/python3", "/usr/local/bin/vfpick", "watch",
                                     "--connect", "qemu:///system"])
    assert one(f.findings(), "watcher").status == "ok"


def test_state_dir_owner_modes_and_corruption(fake):
    f = fake()
    state = f.host.state_dir
    assert "does not exist yet" in one(f.findings(), "state").message
    os.makedirs(state, mode=0o700)
    assert one(f.findings(), "state").status == "ok"
    os.chmod(state, 0o755)
    finding = one(f.findings(), "state")
    assert finding.status == "warn" and "chmod 700" in finding.fix
    os.chmod(state, 0o700)
    with open(os.path.join(state, "claims.json"), "w") as fh:
        fh.write("{not json")
    os.chmod(os.path.join(state, "claims.json"), 0o600)
    finding = one(f.findings(), "state")
    assert finding.status == "fail" and "reconcile --rebuild" in finding.fix
    os.chown(state, 4321, -1)
    finding = one(f.findings(), "state")
    assert finding.status == "fail" and "chown" in finding.fix


def test_a_pool_pf_not_on_this_host_is_a_finding_the_config_still_loads(fake):
    f = fake()
    with open(f.host.config_path, "a") as fh:
        fh.write("[pool bad]\npfs = nosuchnic ens1f0\n")
    findings = f.findings()
    assert one(findings, "config").status == "ok"
    missing = [x for x in by_check(findings, "pf") if "nosuchnic" in x.message]
    assert [x.status for x in missing] == ["fail"] and "[pool bad] pfs" in missing[0].fix


def test_broken_config_is_a_finding_and_host_checks_still_run(fake):
    f = fake()
    with open(f.host.config_path, "a") as fh:
        fh.write("[pool bad]\npfs = ens1f0\ncolour = blue\n")
    findings = f.findings()
    assert one(findings, "config").status == "fail"
    assert one(findings, "hook").status == "fail" and one(findings, "libvirt").status == "ok"


def test_cli_check_json_and_text(host, tmp_path):
    host.write_config()
    hooks = str(tmp_path / "hooks")
    proc = vfpick(host, "check", "--json", "--hooks-dir", hooks, check=1)
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert {"check", "status", "message", "fix"} == set(report["findings"][0])
    assert any(x["check"] == "iommu" and x["status"] == "fail" for x in report["findings"])
    text = vfpick(host, "check", "--hooks-dir", hooks, check=1).stdout.decode()
    assert text.splitlines()[-1].endswith("ok") and "fail  iommu" in text


def test_real_libvirtd_started_before_and_after_the_hook(libvirtd, host):
    """install-hook on the harness's real daemon: `check` sees whether libvirtd must restart."""
    import libvirtd as lv

    host.write_config()
    hooks_dir = str(lv.HOOKS_DIR)
    libvirtd.remove_all_hooks()
    libvirtd.restart()                       # a daemon that found no qemu hook at all
    time.sleep(1.5)                          # /proc/stat btime is whole seconds
    try:
        installed = vfpick(host, "install-hook", "--hooks-dir", hooks_dir, "--config",
                           host.config_path, check=0)
        # the harness runs libvirtd on /run/libvirt/libvirt-sock: that is the daemon to restart
        assert b"systemctl restart libvirtd " in installed.stdout, installed.stdout
        daemon = [x for x in json.loads(vfpick(host, "check", "--json", check=1).stdout)["findings"]
                  if x["check"] == "daemon"][0]
        assert daemon["status"] == "fail" and "ignores the hook" in daemon["message"], daemon
        assert daemon["message"].startswith("libvirtd (pid %d)" % libvirtd.libvirtd_pid), daemon
        assert daemon["message"].endswith("reaches it at /run/libvirt/libvirt-sock"), daemon
        assert daemon["fix"] == "systemctl restart libvirtd", daemon
        libvirtd.restart()
        daemon = [x for x in json.loads(vfpick(host, "check", "--json", check=1).stdout)["findings"]
                  if x["check"] == "daemon"][0]
        assert daemon["status"] == "ok" and "after the hook was installed" in daemon["message"], daemon
    finally:
        vfpick(host, "uninstall-hook", "--hooks-dir", hooks_dir)
        libvirtd.install_hook(lv.PLACEHOLDER_HOOK, "#!/bin/sh\n# %s\nexit 0\n" % lv.HOOK_MARK)
        libvirtd.restart()                   # the placeholder again: later tests need live hooks


def _real_size_modules_dep(path, vfio_at=312_153):
    """A modules.dep the size of a stock Debian 12 kernel's (~600 KiB), vfio-pci well past the
    first 300 KB, and modules named like it that are not it (mlx5-vfio-pci, vfio-pci-core)."""
    lines, size, i = [], 0, 0
    placed = False
    while size < 600_000:
        if not placed and size >= vfio_at:
            line = ("kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko "
                    "kernel/drivers/vfio/vfio.ko kernel/drivers/vfio/vfio_iommu_type1.ko\n")
            placed = True
        else:
            line = ("kernel/drivers/net/ethernet/vendor%d/driver%d.ko: kernel/net/core/dep%d.ko "
                    "kernel/lib/helper%d.ko\n" % (i % 97, i, i % 13, i % 7))
        lines.append(line)
        size += len(line)
        i += 1
    text = "".join(lines)
    path.write_text(text)
    return text.index("kernel/drivers/vfio/pci/vfio-pci.ko:")


def test_vfio_pci_found_in_a_real_size_modules_dep(fake):
    f = fake()
    offset = _real_size_modules_dep(f.modules / "modules.dep")
    assert offset > 300_000 and os.path.getsize(f.modules / "modules.dep") > 580_000
    finding = one(f.findings(), "vfio-pci")
    assert finding.status == "ok", finding


@pytest.mark.parametrize("dep, builtin", [
    # only modules whose names merely contain vfio-pci
    ("kernel/drivers/vfio/pci/mlx5/mlx5-vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko\n"
     "kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko\n", ""),
    ("", "kernel/drivers/vfio/pci/vfio-pci-core.ko\n"),
])
def test_modules_named_like_vfio_pci_are_not_it(fake, dep, builtin):
    f = fake()
    (f.modules / "modules.dep").write_text(dep)
    (f.modules / "modules.builtin").write_text(builtin)
    assert one(f.findings(), "vfio-pci").status == "fail"


def test_vfio_pci_built_in_past_the_first_64k_of_modules_builtin(fake):
    f = fake()
    filler = "".join("kernel/drivers/misc/m%05d.ko\n" % i for i in range(4000))
    (f.modules / "modules.builtin").write_text(filler + "kernel/drivers/vfio/pci/vfio-pci.ko\n")
    assert len(filler) > 1 << 16
    finding = one(f.findings(), "vfio-pci")
    assert finding.status == "ok" and "built into" in finding.message, finding


def test_vfio_pci_in_this_machines_own_modules_dep():
    mods = os.path.join("/lib/modules", os.uname().release)
    if not os.path.isfile(os.path.join(mods, "modules.dep")):
        pytest.skip("this kernel has no %s/modules.dep" % mods)
    where = check.vfio_pci_module(mods)
    text = open(os.path.join(mods, "modules.dep")).read() + (
        open(os.path.join(mods, "modules.builtin")).read()
        if os.path.exists(os.path.join(mods, "modules.builtin")) else "")
    assert (where is not None) == ("/vfio-pci.ko" in text)


@pytest.mark.parametrize("daemon_delta, hook_delta", [
    (0.5, 1.1),   # the daemon started 0.6 s before the hook, in the second before it
    (0.9, 1.05),
    (1.2, 1.1),   # after it, in the same second
    (2.3, 1.1),
])
def test_daemon_line_compares_and_shows_times_at_one_resolution(fake, daemon_delta, hook_delta):
    """/proc/stat's btime is whole seconds: the verdict and the two times printed must agree
    (never "started 20:26:16, after the hook was installed (20:26:17)")."""
    f = fake()
    installed = BOOT + 1000 + hook_delta
    f.install_hook(mtime=installed)
    f.daemon(started=BOOT + 1000 + daemon_delta)
    finding = one(f.findings(), "daemon")
    shown = [s for s in finding.message.replace("(", " ").replace(")", " ").replace(",", " ").split()
             if s.count(":") == 2]
    started, hook = shown[0], shown[1]
    if "after the hook" in finding.message:
        assert started >= hook, finding
    if "before the hook" in finding.message:
        assert started <= hook, finding
    if daemon_delta < hook_delta:
        assert finding.status != "ok", finding   # it may well have started before the hook
