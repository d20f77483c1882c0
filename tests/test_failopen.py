"""Fail open for what is not vfpick's, closed for what is (issue 9, items 1 and 2).

Every vfpick fault (config, state, XML size, package) against domains that are not vfpick's (a
GPU passthrough VM, with and without <uuid>; a bridge-only VM with deep foreign metadata; a VF
of a PF in no pool) and against a vfpick domain. The hook runs in-process here for the table
(hook.run with real files); test_hook.py and test_e2e_libvirt.py run it as libvirt does.
"""

import io
import os
import subprocess
import sys

import pytest

from clitools import assert_user_error, claims_file, domain, vfpick
from test_hook import resolved, run_hook
from test_lock_timeout import Holder, write_timeout
from vfpick import hook
from vfpick.commands import installhook

GPU = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' "
       "bus='0x65' slot='0x00' function='0x0'/></source></hostdev>\n")
BRIDGE = "<interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface>\n"
# Another application's metadata, deep, and naming a "network": the byte triage cannot skip it.
DEEP = ("<metadata><app:x xmlns:app='urn:example:app'>" + "<app:network>" * 5000
        + "</app:network>" * 5000 + "</app:x></metadata>\n")
HUGE = "<metadata><app:x xmlns:app='urn:example:app'>%s</app:x></metadata>\n" % ("n" * (5 << 20))
SUBOP = {"prepare": "begin", "release": "end", "reconnect": "begin", "migrate": "begin",
         "restore": "begin", "start": "begin", "stopped": "end"}


def vf_of(host, netdev):
    topo = host.topology()
    pf = next(a for a, p in topo.pfs.items() if p.netdev == netdev)
    return topo.pfs[pf].vfs[-1]


def hand_vf(vf):
    dom, bus, rest = vf.split(":")
    slot, fn = rest.split(".")
    return ("<interface type='hostdev' managed='yes'><mac address='52:54:00:99:00:01'/><source>"
            "<address type='pci' domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/></source>"
            "</interface>\n" % (dom, bus, slot, fn))


def foreign(kind, host):
    """(name, XML) of a domain that is not vfpick's."""
    uuid = "6c8d5e4f-0000-4000-8000-0000000000%02d" % len(kind)
    if kind == "gpu":
        return "gpu", domain("gpu", nics=0, uuid=uuid, extra_devices=GPU)
    if kind == "gpu-no-uuid":
        return "gpu2", domain("gpu2", nics=0, extra_devices=GPU)
    if kind == "gpu-huge":
        return "gpu3", domain("gpu3", nics=0, uuid=uuid, extra_devices=GPU, head=HUGE)
    if kind == "bridge-deep":
        return "br", domain("br", nics=0, uuid=uuid, extra_devices=BRIDGE, head=DEEP)
    if kind == "vf-of-no-pool":  # the pool is ens1f0/ens1f1 (see the config below)
        return "sriov", domain("sriov", nics=0, uuid=uuid, extra_devices=hand_vf(vf_of(host, "ens2f0")))
    raise ValueError(kind)


def rename_netdev(host, old, new):
    """As a kernel upgrade does (ens2f1 -> ens2f1np1): the PF stays, its netdev name changes."""
    link = os.path.join(host.sysfs, "class", "net", old)
    target, real = os.readlink(link), os.path.realpath(link)
    os.rename(real, os.path.join(os.path.dirname(real), new))
    os.unlink(link)
    os.symlink(os.path.join(os.path.dirname(target), new), os.path.join(host.sysfs, "class", "net", new))


# fault(host) -> the config path the hook is given. The config is written before the fault.
def _missing_config(host):
    return host.config_path + ".gone"


def _garbage_config(host):
    with open(host.config_path, "a") as f:
        f.write("[pool broken\nthis is not ini\n")
    return host.config_path


def _renamed_pf(host):
    rename_netdev(host, "ens1f1", "ens1f1np1")
    return host.config_path


def _corrupt_state(host):
    os.makedirs(host.state_dir, exist_ok=True)
    with open(os.path.join(host.state_dir, "claims.json"), "w") as f:
        f.write('{"version": 1, "claims": [')
    return host.config_path


def _state_dir_is_a_file(host):
    if os.path.isdir(host.state_dir):
        import shutil

        shutil.rmtree(host.state_dir)
    with open(host.state_dir, "w") as f:
        f.write("not a directory")
    return host.config_path


def _lock_uncreatable(host):
    lock = os.path.join(host.state_dir, "claims.lock")
    if os.path.exists(lock):
        os.unlink(lock)
    os.makedirs(lock)  # opening it O_RDWR: EISDIR
    return host.config_path


def _state_dir_foreign_owner(host):
    os.makedirs(host.state_dir, exist_ok=True)
    os.chown(host.state_dir, 65534, 65534)
    return host.config_path


_MOUNTS = []


def _read_only_state_dir(host):
    """The state dir on a read-only filesystem, with its files (a tmpfs remounted ro)."""
    os.makedirs(host.state_dir, exist_ok=True)
    files = {n: open(os.path.join(host.state_dir, n), "rb").read()
             for n in os.listdir(host.state_dir)
             if os.path.isfile(os.path.join(host.state_dir, n))}
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                       host.state_dir], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    _MOUNTS.append(host.state_dir)
    for name, data in files.items():
        with open(os.path.join(host.state_dir, name), "wb") as f:
            f.write(data)
    subprocess.run(["mount", "-o", "remount,ro", host.state_dir], check=True)
    return host.config_path


@pytest.fixture(autouse=True)
def _unmount():
    yield
    while _MOUNTS:
        subprocess.run(["umount", _MOUNTS.pop()], check=True)


FAULTS = {"no-fault": lambda host: host.config_path, "missing-config": _missing_config,
          "read-only-state-dir": _read_only_state_dir,
          "garbage-config": _garbage_config, "renamed-pool-pf": _renamed_pf,
          "corrupt-claims": _corrupt_state, "state-dir-is-a-file": _state_dir_is_a_file,
          "lock-uncreatable": _lock_uncreatable, "state-dir-foreign-owner": _state_dir_foreign_owner}
# What the one refusal line of a vfpick domain names (the fault and where to fix it).
OURS_WORDS = {"missing-config": ["cannot read config", ".gone"], "garbage-config": ["vfpick.ini"],
              "corrupt-claims": ["corrupt", "vfpick reconcile --rebuild"],
              "state-dir-is-a-file": ["state directory", "Not a directory"],
              "lock-uncreatable": ["claims.lock"], "read-only-state-dir": ["Read-only file system"],
              "state-dir-foreign-owner": ["owned by uid 65534"]}


def tree(path):
    """Everything under *path* (names, bytes, modes), to prove nothing was read-created."""
    if not os.path.exists(path):
        return None
    if not os.path.isdir(path):
        return open(path, "rb").read()
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            out[os.path.relpath(full, path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def call(name, op, xml, config_path):
    out, err = io.BytesIO(), io.StringIO()
    rc = hook.run([name, op, SUBOP[op], "-"], stdin=io.BytesIO(xml), stdout=out, stderr=err,
                  config_path=config_path)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("kind", ["gpu", "gpu-no-uuid", "gpu-huge", "bridge-deep", "vf-of-no-pool"])
def test_a_domain_that_is_not_vfpicks_is_never_refused_and_touches_nothing(host, kind, fault):
    host.write_config(pools={"fast": "pfs = ens1f0 ens1f1\n"})
    name, xml = foreign(kind, host)
    config_path = FAULTS[fault](host)
    before = tree(host.state_dir)
    for op in ("prepare", "start", "stopped", "release", "reconnect", "migrate", "restore"):
        rc, out, err = call(name, op, xml, config_path)
        assert (rc, out) == (0, b""), (op, err)
        assert err == "" or (err.startswith("vfpick: warning: ") and err.count("\n") == 1), err
        assert tree(host.state_dir) == before, op  # nothing read-created: no dir, lock, cache


@pytest.mark.parametrize("fault", sorted(OURS_WORDS))
def test_a_vfpick_domain_is_refused_in_one_line_naming_the_fault(host, fault):
    host.write_config()
    xml = resolved(host, "mine", nics=1)
    config_path = FAULTS[fault](host)
    before = tree(host.state_dir)
    proc = run_hook(host, "mine", "prepare", "begin", xml, env={"VFPICK_CONFIG": config_path})
    assert_user_error(proc, *OURS_WORDS[fault])
    for op in ("release", "reconnect"):  # libvirt ignores (or must not fail) these: report, exit 0
        rc, out, err = call("mine", op, xml, config_path)
        assert rc == 0 and err.startswith("vfpick: ") and err.count("\n") == 1, (op, err)
    assert tree(host.state_dir) == before


def test_a_vfpick_domain_too_large_to_scan_is_refused_a_foreign_one_passes(host):
    host.write_config()
    xml = resolved(host, "big", nics=1)
    big = xml.replace(b"<devices>", b"<description>" + b"x" * (5 << 20) + b"</description><devices>", 1)
    assert_user_error(run_hook(host, "big", "prepare", "begin", big), "big", "vfpick metadata",
                      "larger than")
    # A pool interface is found by its bytes too when the scanner cannot read the XML.
    raw = domain("raw", uuid="6c8d5e4f-0000-4000-8000-000000000077", head=HUGE)
    assert_user_error(run_hook(host, "raw", "prepare", "begin", raw), "pool 'fast'", "larger than")


def test_deep_foreign_metadata_on_a_vfpick_domain_is_read_not_refused(host):
    host.write_config()
    xml = resolved(host, "deepmine", nics=1)
    deep = xml.replace(b"</metadata>", DEEP[len("<metadata>"):-len("</metadata>\n")].encode()
                       + b"</metadata>", 1)
    assert deep != xml
    rc, _, err = call("deepmine", "prepare", deep, host.config_path)
    assert rc == 0, err
    assert b'"active": true' in claims_file(host)


def test_no_claims_file_release_of_a_vfpick_domain_creates_nothing(host):
    host.write_config()
    xml = resolved(host, "gone", nics=1)
    vfpick(host, "release", "gone", check=0)
    os.unlink(os.path.join(host.state_dir, "claims.json"))
    before = tree(host.state_dir)
    assert call("gone", "release", xml, host.config_path)[0] == 0
    assert tree(host.state_dir) == before


def test_the_hook_never_touches_a_held_lock_for_a_domain_that_is_not_vfpicks(host):
    config_path = write_timeout(host, "0.2", pools={"fast": "pfs = ens1f0 ens1f1\n"})
    held = Holder(host.state_dir)
    try:
        for kind in ("gpu", "bridge-deep", "vf-of-no-pool"):
            name, xml = foreign(kind, host)
            for op in ("prepare", "release", "reconnect"):
                assert call(name, op, xml, config_path) == (0, b"", ""), (kind, op)
        # while a vfpick domain does wait for it, and gives up naming the holder
        xml = domain("mine", uuid="6c8d5e4f-0000-4000-8000-000000000078")
        xml = vfpick(host, "resolve", "-", input=xml, env={"VFPICK_CONFIG": config_path})
        assert_user_error(xml, "claims.lock", "pid %d" % held.proc.pid)
    finally:
        held.release()


def test_a_hand_written_hostdev_on_a_held_vf_names_the_holder_and_a_fix_that_works(host):
    host.write_config()
    owner = resolved(host, "owner", nics=1)
    from lxml import etree

    root = etree.fromstring(owner)
    iface = root.find("devices/interface")
    thief = domain("thief", nics=0, uuid="6c8d5e4f-0000-4000-8000-000000000079",
                   extra_devices=etree.tostring(iface).decode())
    uuid = root.find("uuid").text
    err = assert_user_error(run_hook(host, "thief", "prepare", "begin", thief),
                            "is held by domain 'owner' (%s)" % uuid, "names this VF by hand",
                            "<source network='fast'/>", "vfpick release %s" % uuid)
    assert "pick another with" not in err


# --- the installed hook when its package or interpreter is gone ------------------------------

def _install(tmp_path, host, python=None, package_dir=None):
    path = tmp_path / "qemu.d-vfpick"
    path.write_text(installhook.hook_text(host.config_path, python=python, package_dir=package_dir))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def copied_package(tmp_path):
    """A copy of the package for the hook to bake, which the test may then remove."""
    import shutil

    import vfpick

    pkg = tmp_path / "site"
    shutil.copytree(os.path.dirname(vfpick.__file__), str(pkg / "vfpick"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


@pytest.mark.parametrize("gone", ["package", "package-broken", "interpreter"])
def test_the_installed_hook_fails_open_when_its_package_or_interpreter_is_gone(
        host, tmp_path, copied_package, gone):
    host.write_config()
    mine = resolved(host, "mine", nics=1)
    python = "/nonexistent/venv/bin/python3" if gone == "interpreter" else sys.executable
    installed = _install(tmp_path, host, python=python, package_dir=str(copied_package))
    if gone == "package":
        subprocess.run(["rm", "-rf", str(copied_package / "vfpick")], check=True)
    elif gone == "package-broken":
        (copied_package / "vfpick" / "hook.py").write_text("def run(:\n")
    for name, xml in (foreign("gpu", host), foreign("bridge-deep", host), ("mine", mine)):
        for op in ("prepare", "start", "started", "stopped", "release", "migrate"):
            proc = run_hook(host, name, op, SUBOP.get(op, "begin"), xml, env={}, hook_path=installed)
            err = proc.stderr.decode()
            assert "Traceback" not in err and proc.stdout == b"", err
            if name == "mine" and op in ("prepare", "migrate"):
                assert_user_error(proc, "refusing domain 'mine', which has vfpick metadata",
                                  "reinstall vfpick")
                continue
            assert proc.returncode == 0, (name, op, err)
            if op in ("prepare", "migrate"):
                assert err.startswith("vfpick: warning: ") and err.count("\n") == 1, err
                assert ("/nonexistent/venv/bin/python3" if gone == "interpreter"
                        else str(copied_package)) in err
            else:
                assert err == "", (op, err)


@pytest.mark.parametrize("gone", ["domscan.py", "config.py", "errors.py", "state"])
def test_the_installed_hook_fails_open_when_part_of_its_package_is_gone(
        host, tmp_path, copied_package, gone):
    """pip upgrading or uninstalling under a running host: hook.py imports, a module it needs
    later does not. Only vfpick's own domain may be refused, in one line; never a traceback."""
    import shutil

    host.write_config(pools={"fast": "pfs = ens1f0 ens1f1\n"})  # ens2f0's VFs: no pool's
    mine = resolved(host, "mine", nics=1)
    installed = _install(tmp_path, host, python=sys.executable, package_dir=str(copied_package))
    part = copied_package / "vfpick" / gone
    shutil.rmtree(str(part)) if part.is_dir() else part.unlink()
    for name, xml in (foreign("gpu", host), foreign("bridge-deep", host),
                      foreign("vf-of-no-pool", host), ("mine", mine)):
        for op in ("prepare", "start", "stopped", "release", "reconnect", "migrate", "restore"):
            proc = run_hook(host, name, op, SUBOP[op], xml, env={}, hook_path=installed)
            err = proc.stderr.decode()
            assert "Traceback" not in err and proc.stdout == b"" and err.count("\n") <= 1, err
            if name == "mine" and op in ("prepare", "migrate", "restore"):
                assert_user_error(proc, "refusing domain 'mine', which ", "reinstall vfpick",
                                  str(copied_package))
                continue
            assert proc.returncode == 0, (name, op, err)
            if name != "mine":
                assert err == "" or (err.startswith("vfpick: warning: ")
                                     and str(copied_package) in err), (name, op, err)


# --- a pool PF renamed or removed degrades the pool (issue 9, item 3) -------------------------

def test_a_renamed_pool_pf_degrades_resolve_status_and_the_hook_keep_working(host):
    host.write_config()
    xml = resolved(host, "before", nics=2)  # resolved while all four PFs were there
    rename_netdev(host, "ens2f1", "ens2f1np1")
    proc = vfpick(host, "resolve", "-", input=domain("after", nics=2))
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("vfpick: warning: pool 'fast': PF ens2f1 "), err
    assert "not on this host" in err and "3 PFs present" in err
    from clitools import hostdev_vfs

    topo = host.topology()
    assert all(topo.vfs[vf].pf != "0000:af:00.1" for vf in hostdev_vfs(proc.stdout))
    status = vfpick(host, "status", check=0).stdout.decode()
    assert "MISSING PF ens2f1" in status, status
    import json

    pools = json.loads(vfpick(host, "status", "--json", check=0).stdout)["pools"]
    assert [(p["name"], p["missing"]) for p in pools] == [("fast", ["ens2f1"])]
    # the domains resolved before keep starting, whatever PF their VFs are on
    assert run_hook(host, "before", "prepare", "begin", xml).returncode == 0


def test_a_pool_with_none_of_its_pfs_refuses_in_one_line_the_others_work(host):
    host.write_config(pools={"gone": "pfs = ens1f0 ens1f1\n", "fast": "pfs = ens2f0 ens2f1\n"})
    rename_netdev(host, "ens1f0", "ens1f0np0")
    rename_netdev(host, "ens1f1", "ens1f1np1")
    assert_user_error(vfpick(host, "resolve", "-", input=domain("vm", pool="gone")),
                      "pool 'gone' has none of its PFs on this host", "ens1f0, ens1f1",
                      "[pool gone] pfs in %s" % host.config_path)
    assert claims_file(host) is None
    proc = vfpick(host, "resolve", "-", input=domain("vm", pool="fast"))
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr


def test_the_installed_hook_starts_no_interpreter_for_ops_vfpick_does_not_act_on(host, tmp_path):
    """libvirt runs the hook synchronously on every start and destroy (start begin, started
    begin, stopped end): those cost a shell, not a Python start. The baked interpreter is a
    wrapper that records each call before it runs the real one."""
    host.write_config()
    mine = resolved(host, "mine", nics=1)
    calls = tmp_path / "python-calls"
    wrapper = tmp_path / "python3"
    wrapper.write_text("#!/bin/sh\necho \"$@\" >> %s\nexec %s \"$@\"\n" % (calls, sys.executable))
    wrapper.chmod(0o755)
    installed = _install(tmp_path, host, python=str(wrapper))
    for op, subop in (("start", "begin"), ("started", "begin"), ("stopped", "end"),
                      ("attach", "begin"), ("shutdown", "end")):
        proc = run_hook(host, "mine", op, subop, mine + b" " * (1 << 20), env={},
                        hook_path=installed)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), (op, proc)
        assert not calls.exists(), (op, calls.read_text())
    for op, subop in hook.WANTED:
        run_hook(host, "mine", op, subop, mine, env={}, hook_path=installed)
    assert [line.split()[3:5] for line in calls.read_text().splitlines()] == [
        list(pair) for pair in hook.WANTED]


def test_the_installed_hook_leaves_stdin_unread_for_ops_vfpick_does_not_act_on(host, tmp_path):
    """start begin, started begin and stopped end fork nothing (no `cat` to drain the XML):
    the hook returns while libvirt's end of the pipe is still open and unwritten, which a
    drain would wait on for ever. libvirt ignores the EPIPE of a child that closed its stdin
    (test_e2e_libvirt: a domain larger than a pipe's buffer starts and stops)."""
    host.write_config()
    installed = _install(tmp_path, host)
    for op, subop in (("start", "begin"), ("started", "begin"), ("stopped", "end")):
        read_end, write_end = os.pipe()
        proc = subprocess.Popen([installed, "mine", op, subop, "-"], stdin=read_end,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={})
        os.close(read_end)
        try:
            # bounded: a hook that drains stdin never returns while write_end stays open
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.close(write_end)  # ends the drain (and its child's hold on the pipes)
            proc.kill()
            proc.communicate()
            pytest.fail("%s %s waited for its stdin" % (op, subop))
        os.close(write_end)
        assert (proc.returncode, out, err) == (0, b"", b""), (op, subop)
