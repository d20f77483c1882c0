"""vfpick against a real system libvirtd (qemu:///system, started by tests/libvirtd.py).

The hook is installed with ``vfpick install-hook`` into the real /etc/libvirt/hooks, with a
simulated SR-IOV host whose config points at libvirt's real run and config dirs (the hook reads
/run/libvirt/qemu and checks /etc/libvirt/qemu/NAME.xml); state and sysfs stay in tmp_path.
This machine has no IOMMU: a domain with a VF hostdev passes vfpick's ``prepare`` gate, then
libvirt refuses it ("host doesn't support passthrough"), which is how a start that vfpick
*allowed* looks here. Plain TCG domains really run.

A second hook, ``qemu.d/zz-vfpt-state``, sorts after ``qemu.d/vfpick``: it records argv, its
stdin (for filters: vfpick's output) and vfpick's state file as it is after vfpick's hook ran.
"""

import json
import os
import re
import subprocess
import sys
import uuid as uuidmod

import pytest
from lxml import etree

import libvirtd as lv
from clitools import hostdev_vfs, status_json, vfpick
from libvirtfixtures import HOOKS_DIR
from waiting import wait_until

PASSTHROUGH_ERROR = "host doesn't support passthrough of host PCI devices"


def start_error(env, name):
    res = env.daemon.virsh("start", name, check=False)
    assert res.returncode != 0, "virsh start %s succeeded" % name
    assert not env.daemon.is_running(name)
    return " ".join(res.stderr.split())


def vanish_vf(host, vf):
    """The VF disappears as when sriov_numvfs is lowered: its device (and with it its physfn
    link) and the PF's virtfnN link go away."""
    dev = os.path.join(host.sysfs, "bus", "pci", "devices", vf)
    pf_dir = os.path.realpath(os.path.join(dev, "physfn"))
    for entry in os.listdir(pf_dir):
        link = os.path.join(pf_dir, entry)
        if entry.startswith("virtfn") and os.readlink(link).endswith("/" + vf):
            os.unlink(link)
    os.unlink(dev)


# --------------------------------------------------------------------------- tests

def test_define_puts_two_nics_on_distinct_links_and_records_the_claims(env):
    name = env.define(nics=2)
    xml = env.daemon.dumpxml(name, inactive=True)
    vfs = hostdev_vfs(xml)
    topo = env.host.topology()
    assert len(vfs) == 2 and all(vf in topo.vfs for vf in vfs)
    assert len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 2
    assert "<interface type='network'" not in xml
    claims = env.claims(name)
    assert sorted(c["vf"] for c in claims) == sorted(vfs)
    assert {(c["uuid"], c["pool"], c["active"]) for c in claims} == {(env.uuid(name), "fast", False)}
    macs = re.findall(r"<mac address='([0-9a-f:]+)'/>", xml)
    assert sorted(c["mac"] for c in claims) == sorted(macs)
    # libvirt's own XML of a resolved domain resolves to itself: repick keeps, redefines nothing
    proc = env.cli("repick", name)
    assert ("kept domain '%s'" % name).encode() in proc.stdout, proc.stdout
    assert env.daemon.dumpxml(name, inactive=True) == xml


def test_start_activates_at_prepare_and_release_deactivates(env):
    name = env.define(nics=2)
    vfs = sorted(c["vf"] for c in env.claims(name))
    err = start_error(env, name)
    assert PASSTHROUGH_ERROR in err and "vfpick" not in err
    ops = [tuple(c["argv"][1:3]) for c in env.hook_calls(name)]
    assert ops == [("prepare", "begin"), ("stopped", "end"), ("release", "end")]
    # vfpick's hook ran first (qemu.d/vfpick < qemu.d/zz-vfpt-state) and had activated both
    assert env.state_at(name, "prepare begin") == [[(vf, True) for vf in vfs]]
    assert env.state_at(name, "release end") == [[(vf, False) for vf in vfs]]
    # still reserved for the defined domain
    assert sorted((c["vf"], c["active"]) for c in env.claims(name)) == [(vf, False) for vf in vfs]


def test_a_domain_hand_edited_onto_another_domains_vf_is_refused(env):
    owner = env.define(nics=2)
    before = open(env.state_path, "rb").read()
    root = etree.fromstring(env.daemon.dumpxml(owner, inactive=True).encode())
    thief = env.daemon.unique_name("thief")
    root.find("name").text = thief
    root.remove(root.find("uuid"))
    root.remove(root.find("metadata"))
    env.virsh_define(etree.tostring(root))
    err = start_error(env, thief)
    vf = hostdev_vfs(etree.tostring(root))[0]
    assert "vfpick: VF %s of domain '%s' is held by domain '%s'" % (vf, thief, owner) in err, err
    # the thief names the VF by hand: a repick cannot move it, so the fixes named are others
    assert "names this VF by hand" in err and "vfpick release %s" % env.uuid(owner) in err, err
    assert "<source network='fast'/>" in err
    assert PASSTHROUGH_ERROR not in err
    # the refusal changed no claim (release end of the thief found none of its own)
    assert open(env.state_path, "rb").read() == before
    assert env.claims(thief) == []


def test_plain_virsh_define_of_pool_interfaces_is_refused_until_repicked(env):
    name = env.virsh_define(lv.domain_xml(env.daemon.unique_name("raw"), devices=(
        "<interface type='network'><source network='fast'/></interface>"
        "<interface type='network'><source network='fast'/></interface>")))
    err = start_error(env, name)
    assert "vfpick: domain '%s' has unresolved pool interfaces (network 'fast')" % name in err, err
    assert "resolve it with 'vfpick repick %s'" % name in err
    assert not os.path.exists(env.state_path)
    # the command it names works, and then the start gets past vfpick
    proc = env.cli("repick", name)
    assert ("redefined domain '%s'" % name).encode() in proc.stdout
    vfs = hostdev_vfs(env.daemon.dumpxml(name, inactive=True))
    assert len(vfs) == 2 and sorted(c["vf"] for c in env.claims(name)) == sorted(vfs)
    err = start_error(env, name)
    assert PASSTHROUGH_ERROR in err and "vfpick" not in err
    assert env.state_at(name, "prepare begin")[-1] == [(vf, True) for vf in sorted(vfs)]


def test_restore_filter_output_replaces_the_saved_domain_xml(env):
    # A plain domain with an ordinary NIC runs and is saved; the saved image is then edited
    # (ABI-compatible: same MAC, model, guest address) to ask for a pool NIC. libvirt's ABI
    # check refuses any change in the number of hostdevs or a NIC model, so a restore can never
    # turn a pool NIC into a hostdev; what matters is that vfpick's XML is the one libvirt used.
    mac = "52:54:00:5e:00:01"
    name = env.virsh_define(lv.domain_xml(env.daemon.unique_name("save"), devices=(
        "<interface type='user'><mac address='%s'/><model type='e1000'/></interface>" % mac)))
    env.daemon.virsh("start", name)
    image = str(env.tmp / "saved.img")
    env.daemon.virsh("save", name, image)
    saved = env.daemon.virsh("save-image-dumpxml", image).stdout
    edited = saved.replace("<interface type='user'>",
                           "<interface type='network'>\n      <source network='fast'/>")
    assert edited != saved
    (env.tmp / "edited.xml").write_text(edited)
    env.daemon.virsh("save-image-define", image, str(env.tmp / "edited.xml"))
    res = env.daemon.virsh("restore", image, check=False)
    assert res.returncode != 0
    err = " ".join(res.stderr.split())
    # Without vfpick's filter libvirt would say "Network not found: ... 'fast'": it parsed
    # vfpick's hostdev NIC instead (a hostdev NIC has no model).
    assert "Target network card model" in err and "Network not found" not in err, err
    assert "vfpick" not in err
    restore = [c for c in env.hook_calls(name) if c["argv"][1:3] == ["restore", "begin"]]
    assert len(restore) == 1
    filtered = restore[0]["stdin"]  # the hook after vfpick's reads vfpick's output
    assert "<interface type='network'" not in filtered
    vfs = hostdev_vfs(filtered)
    assert len(vfs) == 1 and "<mac address='%s'/>" % mac in filtered
    claims = env.claims(name)
    assert [(c["vf"], c["mac"], c["uuid"], c["active"]) for c in claims] == \
        [(vfs[0], mac, env.uuid(name), False)]
    # libvirt never called prepare/release for the failed restore: the claim is stale, and
    # reconcile drops it (the domain's definition does not use that VF)
    proc = env.cli("reconcile")
    assert ("drop %s" % vfs[0]).encode() in proc.stdout, proc.stdout
    assert env.claims(name) == []


def test_reconcile_after_virsh_undefine_drops_the_claims(env):
    gone = env.define(nics=2)
    kept = env.define(nics=1)
    vfs = sorted(c["vf"] for c in env.claims(gone))
    env.daemon.virsh("undefine", gone)
    before = open(env.state_path, "rb").read()
    proc = env.cli("reconcile", "--dry-run")
    assert proc.stdout.count(b"would drop") == 2
    assert open(env.state_path, "rb").read() == before
    proc = env.cli("reconcile")
    assert sorted(re.findall(rb"^drop (\S+) \(", proc.stdout, re.M)) == [v.encode() for v in vfs]
    assert env.claims(gone) == [] and len(env.claims(kept)) == 1
    assert env.cli("reconcile").stdout == b"claims agree with libvirt\n"


def test_repick_replaces_a_vanished_vf_and_redefines(env):
    name = env.define(nics=2)
    before = hostdev_vfs(env.daemon.dumpxml(name, inactive=True))
    gone, kept = before
    vanish_vf(env.host, gone)
    err = start_error(env, name)
    assert "vfpick: VF %s of domain '%s' no longer exists" % (gone, name) in err, err
    assert "vfpick repick %s" % name in err
    proc = env.cli("repick", name)
    assert ("redefined domain '%s'" % name).encode() in proc.stdout
    after = hostdev_vfs(env.daemon.dumpxml(name, inactive=True))
    assert after[1] == kept and after[0] not in before
    topo = env.host.topology()
    assert topo.link_of[topo.vfs[after[0]].pf] != topo.link_of[topo.vfs[kept].pf]
    assert sorted(c["vf"] for c in env.claims(name)) == sorted(after)
    err = start_error(env, name)
    assert PASSTHROUGH_ERROR in err and "vfpick" not in err


def test_plain_domains_run_untouched_with_the_hook_installed(env):
    name = env.virsh_define(lv.domain_xml(env.daemon.unique_name("plain")))
    xml = env.daemon.dumpxml(name, inactive=True)
    env.daemon.virsh("start", name)
    assert env.daemon.is_running(name)
    env.daemon.virsh("destroy", name)
    ops = [tuple(c["argv"][1:3]) for c in env.hook_calls(name)]
    assert ops == [("prepare", "begin"), ("start", "begin"), ("started", "begin"),
                   ("stopped", "end"), ("release", "end")]
    assert env.daemon.dumpxml(name, inactive=True) == xml
    assert not os.path.exists(env.state_path)  # vfpick recorded nothing



def test_a_domain_larger_than_a_pipe_buffer_starts_and_stops_though_the_hook_reads_no_stdin(env):
    """The installed hook's sh part exits for start/started/stopped without reading the XML
    (installhook): libvirt's write of the rest of a >64 KiB XML then fails with EPIPE, which
    libvirt ignores; the start and the destroy go on and the daemon stays up."""
    big = "x" * (256 << 10)
    name = env.virsh_define(lv.domain_xml(env.daemon.unique_name("bigxml"), description=big))
    env.daemon.virsh("start", name)
    assert env.daemon.is_running(name)
    env.daemon.virsh("destroy", name)
    assert not env.daemon.is_running(name)
    ops = [tuple(c["argv"][1:3]) for c in env.hook_calls(name)]
    assert ops == [("prepare", "begin"), ("start", "begin"), ("started", "begin"),
                   ("stopped", "end"), ("release", "end")]
    assert env.daemon.virsh("version").returncode == 0
    assert not os.path.exists(env.state_path)

# --------------------------------------------------------------------------- reconnect, migrate

SCRUBBED = {"PATH": lv.DAEMON_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
            "LC_ALL": "C"}
VFPICK_NS = "http://vfpick.org/xmlns/libvirt/domain/1.0"


def running_with_claims(env, mac="52:54:00:5e:00:07"):
    """A running domain vfpick holds claims for. Hostdevs cannot run here (no IOMMU), so it is
    a plain domain (user-mode NIC, same MAC) with the vfpick metadata and the claims of its
    resolved twin: same name and UUID, resolved by `vfpick resolve`."""
    name, uuid = env.daemon.unique_name("held"), str(uuidmod.uuid4())
    want = lv.domain_xml(name, uuid=uuid, devices="<interface type='network'><mac address='%s'/>"
                         "<source network='fast'/></interface>" % mac)
    resolved = vfpick(env.host, "resolve", "-", input=want.encode(), check=0).stdout
    meta = etree.fromstring(resolved).find("metadata/{%s}domain" % VFPICK_NS)
    assert meta is not None, resolved
    plain = lv.domain_xml(name, uuid=uuid, metadata=etree.tostring(meta).decode(), devices=(
        "<interface type='user'><mac address='%s'/><model type='e1000'/></interface>" % mac))
    env.virsh_define(plain)
    env.daemon.virsh("start", name)
    assert env.daemon.is_running(name)
    return name, uuid, hostdev_vfs(resolved)


def reconnects(env, name, count):
    """The reconnect calls of *name*, once there are *count*: libvirtd reconnects to running
    domains in threads of their own, after it answers."""
    def calls():
        found = [c for c in env.hook_calls(name) if c["argv"][1:3] == ["reconnect", "begin"]]
        return found if len(found) >= count else None
    found = wait_until(calls, "%d reconnect call(s) of %s" % (count, name))
    assert len(found) == count, found
    return found


def test_reconnect_after_a_real_libvirtd_restart_keeps_the_guest_and_its_claims(env):
    if env.daemon.reused:
        lv.skip_or_fail("%s=reuse: the harness cannot restart that libvirtd" % lv.ENV_MODE)
    name, uuid, vfs = running_with_claims(env)
    before = sorted((c["vf"], c["uuid"], c["active"]) for c in env.claims(name))
    assert before == sorted((vf, uuid, False) for vf in vfs)

    env.daemon.restart()
    calls = reconnects(env, name, 1)
    assert env.daemon.is_running(name)  # a failing reconnect hook would have killed it
    # libvirt hands the hook the live definition, vfpick's metadata included
    live = etree.fromstring(calls[0]["stdin"].encode())
    assert live.findtext("uuid") == uuid and live.find("metadata/{%s}domain" % VFPICK_NS) is not None
    assert env.state_at(name, "reconnect begin") == [sorted((vf, False) for vf in vfs)]
    assert sorted((c["vf"], c["uuid"], c["active"]) for c in env.claims(name)) == before

    # A vfpick fault (here: a config that no longer parses) never costs a running guest its
    # life at reconnect: the hook reports and exits 0.
    with open(env.host.config_path) as f:
        good = f.read()
    with open(env.host.config_path, "a") as f:
        f.write("[pool fast]\nbogus = 1\n")
    try:
        env.daemon.restart()
        reconnects(env, name, 2)
        assert env.daemon.is_running(name)
    finally:
        with open(env.host.config_path, "w") as f:
            f.write(good)
    assert sorted((c["vf"], c["uuid"], c["active"]) for c in env.claims(name)) == before


def test_reconnect_reasserts_the_claims_of_libvirts_own_hostdev_xml(env):
    # A hostdev domain cannot run here, so libvirt never calls its reconnect: the installed
    # hook gets what libvirt would pass (the domain as libvirt writes it) the way libvirt
    # calls it, after vfpick lost track of the activation (claims inactive).
    name = env.define(nics=2)
    vfs = sorted(c["vf"] for c in env.claims(name))
    hook = os.path.join(HOOKS_DIR, "qemu.d", "vfpick")
    proc = subprocess.run([hook, name, "reconnect", "begin", "-"],
                          input=env.daemon.dumpxml(name).encode(), env=SCRUBBED,
                          capture_output=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert sorted((c["vf"], c["active"]) for c in env.claims(name)) == [(vf, True) for vf in vfs]

    # The live domain now uses a VF another domain holds (edited behind vfpick's back): the
    # reconnect warns in one line and exits 0 (a refusal would kill the guest), and the other
    # domain keeps its claim.
    other = env.define(nics=1)
    [theirs] = env.claims(other)
    live = etree.fromstring(env.daemon.dumpxml(name).encode())
    address = live.find("devices/interface[@type='hostdev']/source/address")
    dom, bus, rest = theirs["vf"].split(":")
    slot, function = rest.split(".")
    address.attrib.update({"domain": "0x" + dom, "bus": "0x" + bus, "slot": "0x" + slot,
                           "function": "0x" + function})
    proc = subprocess.run([hook, name, "reconnect", "begin", "-"], input=etree.tostring(live),
                          env=SCRUBBED, capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert (proc.returncode, proc.stdout) == (0, b""), err
    assert err.startswith("vfpick: warning: VF %s of domain '%s' is held by domain '%s'"
                          % (theirs["vf"], name, other)) and err.count("\n") == 1, err
    assert env.claims(other) == [theirs]


def _without_vf_choices(xml):
    """The domain with what a migrate filter may change taken out: hostdev sources and
    vfpick's metadata. Everything else must come through as libvirt wrote it."""
    root = etree.fromstring(xml)
    for source in root.findall("devices/interface[@type='hostdev']/source"):
        source.getparent().remove(source)
    for meta in root.findall("metadata/{%s}domain" % VFPICK_NS):
        meta.getparent().remove(meta)
    return etree.tostring(root, method="c14n")


def target_hook(make_host, tmp_path, spec="mixed-speed"):
    """Another host's simulated SR-IOV and its installed hook (config baked in)."""
    target = make_host(spec)
    target.write_config()
    hooks = str(tmp_path / "target-hooks")
    vfpick(target, "install-hook", "--hooks-dir", hooks, "--config", target.config_path, check=0)
    return target, os.path.join(hooks, "qemu.d", "vfpick")


def test_migrate_filter_on_libvirts_own_migratable_xml(env, make_host, tmp_path):
    name = env.define(nics=2)
    migratable = env.daemon.virsh("dumpxml", "--migratable", name).stdout
    assert len(hostdev_vfs(migratable)) == 2
    target, hook = target_hook(make_host, tmp_path)
    proc = subprocess.run([hook, name, "migrate", "begin", "-"], input=migratable.encode(),
                          env=SCRUBBED, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # The source host's VFs do not exist here: both NICs moved onto this host, distinct links.
    vfs = hostdev_vfs(out)
    topo = target.topology()
    assert len(vfs) == 2 and all(vf in topo.vfs for vf in vfs), vfs
    assert len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 2
    uuid = env.uuid(name)
    assert sorted((c["vf"], c["uuid"], c["domain"]) for c in status_json(target)["claims"]) == \
        sorted((vf, uuid, name) for vf in vfs)
    assert _without_vf_choices(out) == _without_vf_choices(migratable.encode())
    # libvirt takes vfpick's output as a definition (here in place of the source's).
    path = tmp_path / "migrated.xml"
    path.write_bytes(out)
    env.daemon.virsh("define", str(path))
    assert hostdev_vfs(env.daemon.dumpxml(name, inactive=True)) == vfs


def test_migrate_filter_leaves_a_running_plain_domains_live_xml_alone(env, make_host, tmp_path):
    name = env.virsh_define(lv.domain_xml(env.daemon.unique_name("plainmig"), devices=(
        "<interface type='user'><mac address='52:54:00:5e:00:09'/></interface>")))
    env.daemon.virsh("start", name)
    migratable = env.daemon.virsh("dumpxml", "--migratable", name).stdout
    # libvirt's own XML, as a migration carries it: what it added (a UUID, a console for the
    # serial port) is there
    assert "<uuid>" in migratable and "<console" in migratable, migratable
    target, hook = target_hook(make_host, tmp_path)
    proc = subprocess.run([hook, name, "migrate", "begin", "-"], input=migratable.encode(),
                          env=SCRUBBED, capture_output=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert status_json(target)["claims"] == []


# --------------------------------------------------------------------------- fail open, closed
# A vfpick fault never stops a VM that is not vfpick's; vfpick's own are refused in one line.
# vfpick's installed hook runs behind a recording wrapper (qemu.d/vfpick-tee), so what it
# exited with and wrote on stderr is seen even when the start goes on.

_TEE_HOOK = r"""#!%(python)s -IS
# %(mark)s: runs vfpick's installed hook as libvirt would, records its exit status and stderr
import json, subprocess, sys
data = sys.stdin.buffer.read()
proc = subprocess.run([%(real)r] + sys.argv[1:], input=data, capture_output=True)
with open(%(log)r, "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "rc": proc.returncode,
                        "stderr": proc.stderr.decode("utf-8", "replace")}) + "\n")
sys.stdout.buffer.write(proc.stdout)
sys.stderr.buffer.write(proc.stderr)
sys.exit(proc.returncode)
"""

DEEP_META = ("<app:x xmlns:app='urn:example:app'>" + "<app:network name='n'>" * 200
             + "</app:network>" * 200 + "</app:x>")


@pytest.fixture
def bridge():
    """A real Linux bridge for a bridge-only VM (removed afterwards)."""
    import subprocess

    name = "vfptbr%d" % (os.getpid() % 100000)
    subprocess.run(["ip", "link", "del", name], capture_output=True)
    if subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True).returncode:
        pytest.skip("cannot create a bridge here")
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


class Tee:
    def __init__(self, env, package_dir):
        from vfpick.commands import installhook

        env.cli("uninstall-hook", "--hooks-dir", HOOKS_DIR)
        self.real = str(env.tmp / "vfpick-hook")
        with open(self.real, "w") as f:
            f.write(installhook.hook_text(env.host.config_path, python=sys.executable,
                                          package_dir=package_dir))
        os.chmod(self.real, 0o755)
        self.log = str(env.tmp / "tee.jsonl")
        self.daemon = env.daemon
        env.daemon.install_hook("vfpick-tee", _TEE_HOOK % {
            "python": sys.executable, "mark": lv.HOOK_MARK, "real": self.real, "log": self.log})

    def calls(self, name):
        try:
            with open(self.log) as f:
                return [c for c in map(json.loads, f) if c["argv"][0] == name]
        except FileNotFoundError:
            return []

    def remove(self):
        self.daemon.remove_hook("vfpick-tee")


def _tree(path):
    if not os.path.exists(path):
        return None
    if not os.path.isdir(path):
        return open(path, "rb").read()
    return {n: os.lstat(os.path.join(path, n)).st_mtime_ns for n in sorted(os.listdir(path))}


def _break(env, fault, package):
    import shutil

    host = env.host
    if fault == "broken-config":
        with open(host.config_path, "a") as f:
            f.write("[pool\n")
    elif fault == "renamed-pool-pf":
        from test_failopen import rename_netdev

        rename_netdev(host, "ens1f1", "ens1f1np1")
    elif fault == "corrupt-claims":
        with open(env.state_path, "w") as f:
            f.write('{"version": 1, "claims": [')
    elif fault == "unusable-state-dir":
        shutil.rmtree(host.state_dir)
        with open(host.state_dir, "w") as f:
            f.write("not a directory")
    elif fault == "removed-package":
        shutil.rmtree(os.path.join(package, "vfpick"))
    elif fault == "half-removed-package":  # pip mid-upgrade: hook.py imports, domscan does not
        os.unlink(os.path.join(package, "vfpick", "domscan.py"))


# fault -> words of the one line refusing vfpick's own domain (None: not refused, the pool
# degrades to the PFs present and the start goes on to libvirt)
OURS_REFUSED = {"broken-config": "vfpick.ini", "corrupt-claims": "vfpick reconcile --rebuild",
                "unusable-state-dir": "Not a directory", "removed-package": "reinstall vfpick",
                "half-removed-package": "reinstall vfpick",
                "renamed-pool-pf": None}


@pytest.mark.parametrize("fault", sorted(OURS_REFUSED))
def test_a_vfpick_fault_never_stops_a_vm_that_is_not_vfpicks(env, bridge, fault):
    import shutil

    import vfpick

    package = str(env.tmp / "site")
    shutil.copytree(os.path.dirname(vfpick.__file__), os.path.join(package, "vfpick"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    mine = env.define(nics=1)  # while the config still loads
    tee = Tee(env, package)
    try:
        gpu = env.virsh_define(lv.domain_xml(env.daemon.unique_name("gpu"), devices=(
            "<hostdev mode='subsystem' type='pci' managed='yes'><source>%s</source></hostdev>"
            % "<address domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/>" % tuple(
                re.split("[:.]", lv.nonexistent_pci_address())))))
        br = env.virsh_define(lv.domain_xml(
            env.daemon.unique_name("br"), metadata=DEEP_META,
            devices="<interface type='bridge'><source bridge='%s'/><model type='virtio'/>"
                    "</interface>" % bridge))
        _break(env, fault, package)
        before = _tree(env.host.state_dir)
        env.daemon.virsh("start", br)  # the bridge-only VM really runs
        assert env.daemon.is_running(br)
        env.daemon.virsh("destroy", br)
        err = start_error(env, gpu)  # libvirt's own refusal of a device it cannot pass through
        assert "vfpick" not in err, err
        for name in (br, gpu):
            calls = tee.calls(name)
            assert [tuple(c["argv"][1:3]) for c in calls][:1] == [("prepare", "begin")], calls
            assert ("release", "end") in [tuple(c["argv"][1:3]) for c in calls]
            for c in calls:
                assert c["rc"] == 0 and "Traceback" not in c["stderr"], c
                assert c["stderr"] in ("",) or (c["stderr"].startswith("vfpick: warning: ")
                                                and c["stderr"].count("\n") == 1), c
        assert _tree(env.host.state_dir) == before  # nothing read, created or written
        err = start_error(env, mine)
        prepare = [c for c in tee.calls(mine) if c["argv"][1] == "prepare"]
        if OURS_REFUSED[fault] is None:
            assert PASSTHROUGH_ERROR in err and "vfpick" not in err, err
            assert [(c["rc"], c["stderr"]) for c in prepare] == [(0, "")]
        else:
            assert err.count("vfpick: ") == 1 and OURS_REFUSED[fault] in err, err
            assert PASSTHROUGH_ERROR not in err
            assert [c["rc"] for c in prepare] == [1] and "Traceback" not in prepare[0]["stderr"]
    finally:
        tee.remove()
