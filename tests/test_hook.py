"""The hook executable run as libvirt runs it: argv, domain XML on stdin, scrubbed env."""

import io
import os
import subprocess
import sys

import pytest
from lxml import etree

from clitools import HOOK, assert_user_error, claims_file, domain, hostdev_vfs, status_json, vfpick
from fakenetlink import FakeNetlink
from vfpick import hook

OPS = [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end"),
       ("release", "end"), ("migrate", "begin"), ("restore", "begin"), ("reconnect", "begin"),
       ("attach", "begin"), ("frobnicate", "-")]


def run_hook(host, name, op, subop, xml, env=None, hook_path=HOOK):
    scrubbed = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "USER": "root",
                "LOGNAME": "root", "LC_ALL": "C"}
    if env is None:
        scrubbed["VFPICK_CONFIG"] = host.config_path
    else:
        scrubbed.update(env)
    cmd = [hook_path, name, op, subop, "-"]
    if hook_path == HOOK:
        cmd = [sys.executable] + cmd
    return subprocess.run(cmd, input=xml, capture_output=True, env=scrubbed, timeout=60)


def resolved(host, name, nics=2):
    return vfpick(host, "resolve", "-", input=domain(name, nics=nics), check=0).stdout


def persist(host, name, xml):
    with open(os.path.join(host.config_dir, name + ".xml"), "wb") as f:
        f.write(xml)


def claims_of(host, name):
    return [c for c in status_json(host)["claims"] if c["domain"] == name]


def test_prepare_activates_release_deactivates_reconnect_reactivates(host):
    host.write_config()
    xml = resolved(host, "vm1")
    persist(host, "vm1", xml)
    assert [c["active"] for c in claims_of(host, "vm1")] == [False, False]
    assert run_hook(host, "vm1", "prepare", "begin", xml).returncode == 0
    assert [c["active"] for c in claims_of(host, "vm1")] == [True, True]
    assert run_hook(host, "vm1", "release", "end", xml).returncode == 0
    assert [c["active"] for c in claims_of(host, "vm1")] == [False, False]
    assert run_hook(host, "vm1", "reconnect", "begin", xml).returncode == 0
    assert [c["active"] for c in claims_of(host, "vm1")] == [True, True]


def test_release_drops_claims_of_a_domain_without_persistent_definition(host):
    host.write_config()
    xml = resolved(host, "transient")
    assert run_hook(host, "transient", "prepare", "begin", xml).returncode == 0
    assert run_hook(host, "transient", "release", "end", xml).returncode == 0
    assert claims_of(host, "transient") == []


def test_prepare_claims_a_free_vf_named_by_the_domain(host):
    host.write_config()
    xml = resolved(host, "vm1", nics=1)
    vfpick(host, "release", "vm1", check=0)
    assert run_hook(host, "vm1", "prepare", "begin", xml).returncode == 0
    assert [c["active"] for c in claims_of(host, "vm1")] == [True]


def test_another_domains_vf_is_refused(host):
    host.write_config()
    first = resolved(host, "owner", nics=1)
    root = etree.fromstring(first)
    root.find("name").text = "thief"
    root.find("uuid").text = "11111111-2222-3333-4444-555555555555"
    root.find("metadata").getparent().remove(root.find("metadata"))
    thief = etree.tostring(root)
    before = claims_file(host)
    proc = run_hook(host, "thief", "prepare", "begin", thief)
    assert_user_error(proc, "held by domain 'owner'")
    assert claims_file(host) == before


def test_vf_used_by_another_running_domain_is_refused(host):
    host.write_config()
    xml = resolved(host, "vm1", nics=1)
    vfpick(host, "release", "vm1", check=0)
    # Another domain runs on that VF without vfpick knowing: libvirt's status XML says so.
    root = etree.fromstring(xml)
    root.find("name").text = "other"
    root.find("uuid").text = "99999999-2222-3333-4444-555555555555"
    status = b"<domstatus state='running' pid='1'>" + etree.tostring(root) + b"</domstatus>"
    with open(os.path.join(host.run_dir, "other.xml"), "wb") as f:
        f.write(status)
    assert_user_error(run_hook(host, "vm1", "prepare", "begin", xml), "running domain 'other'")


def test_unresolved_pool_interfaces_are_refused_naming_the_fix(host):
    host.write_config()
    proc = run_hook(host, "raw vm", "prepare", "begin", domain("raw vm", nics=2,
                                                             uuid="6c8d5e4f-0000-4000-8000-000000000001"))
    err = assert_user_error(proc, "unresolved pool interfaces", "vfpick repick 'raw vm'")
    assert claims_file(host) is None, err


def test_vanished_vf_is_refused(host):
    host.write_config()
    xml = resolved(host, "vm1", nics=1)
    vf = claims_of(host, "vm1")[0]["vf"]
    os.unlink(os.path.join(host.sysfs, "bus", "pci", "devices", vf, "physfn"))
    assert_user_error(run_hook(host, "vm1", "prepare", "begin", xml), vf, "no longer exists")


def test_plain_domains_pass_untouched_and_unclaimed_even_without_config(host):
    xml = domain("plain", nics=0, uuid="6c8d5e4f-0000-4000-8000-000000000002")
    for op, subop in OPS:
        proc = run_hook(host, "plain", op, subop, xml, env={"VFPICK_CONFIG": "/nonexistent.ini"})
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), (op, proc.stderr)


def test_non_pool_network_is_never_refused(host):
    host.write_config()
    xml = domain("netvm", pool="default", uuid="6c8d5e4f-0000-4000-8000-000000000003")
    for op in ("prepare", "migrate", "restore"):
        proc = run_hook(host, "netvm", op, "begin", xml)
        assert (proc.returncode, proc.stdout) == (0, b""), proc.stderr


# (stdin, what the hook's one line says about it)
GARBAGE = [
    (b"", "malformed domain XML: no element found"),
    (b"\x00\xff garbage", "malformed domain XML: not well-formed"),
    (b"<domain>", "malformed domain XML: no element found"),
    (b"<!DOCTYPE x [<!ENTITY a 'b'>]><domain/>", "must not contain a DOCTYPE or entity declaration"),
    (b"<domain><name>x</name><uuid>not-a-uuid</uuid><devices><interface type='hostdev'>"
     b"<mac address='zz'/><source><address type='pci' domain='0xffffffff' bus='x' slot='0x99' "
     b"function='9'/></source></interface></devices></domain>", "<uuid> is not a UUID: 'not-a-uuid'"),
]
# XML the hook cannot read. A domain that is not vfpick's as far as the hook can tell (no vfpick
# namespace, no pool named in its bytes) is never refused for it: exit 0, at most a warning at
# prepare. A vfpick domain is refused: the gatekeeper and the filters exit 1, release and
# reconnect report and exit 0 (libvirt ignores release's status and kills a running guest on
# a failed reconnect). Ops that do not read the XML exit 0 silently.
GARBAGE_EXIT = {"prepare": 1, "migrate": 1, "restore": 1, "release": 0, "reconnect": 0}
VFPICK_NS = b" xmlns:vfpick='http://vfpick.org/xmlns/libvirt/domain/1.0'"


# The same bytes declaring vfpick's namespace on the root element make them vfpick's.
GARBAGE_CASES = [(g, r, False) for g, r in GARBAGE] + [
    (g.replace(b"<domain", b"<domain" + VFPICK_NS, 1), r, True)
    for g, r in GARBAGE if g.startswith(b"<domain")]


@pytest.mark.parametrize("op,subop", OPS)
@pytest.mark.parametrize("garbage,reason,ours", GARBAGE_CASES)
def test_garbage_on_stdin_is_one_line_with_the_reason(host, op, subop, garbage, reason, ours):
    host.write_config()
    proc = run_hook(host, "g", op, subop, garbage)
    err = proc.stderr.decode()
    if op not in GARBAGE_EXIT:
        assert (proc.returncode, proc.stdout, err) == (0, b"", ""), err
    elif not ours:
        assert (proc.returncode, proc.stdout) == (0, b""), err
        assert err == "" or (op == "prepare" and err.startswith("vfpick: warning: ")
                             and err.count("\n") == 1 and reason in err), err
    else:
        assert proc.returncode == GARBAGE_EXIT[op], err
        assert proc.stdout == b""  # a filter never prints a partial domain
        assert err.startswith("vfpick: ") and err.count("\n") == 1 and reason in err, err
    assert claims_file(host) is None


def test_start_started_stopped_are_no_ops(host):
    host.write_config()
    xml = resolved(host, "vm1", nics=1)
    before = claims_file(host)
    for op, subop in [("start", "begin"), ("started", "begin"), ("stopped", "end")]:
        proc = run_hook(host, "vm1", op, subop, xml)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert claims_file(host) == before


def test_migrate_begin_rewrites_other_hosts_vfs_onto_this_hosts_links(make_host):
    source = make_host("mixed-speed")
    source.write_config()
    incoming = vfpick(source, "resolve", "-", input=domain("mig", nics=2), check=0).stdout
    target = make_host("two-dual-port")
    target.write_config()
    # The source's VF addresses do not exist on this host: every NIC must move.
    proc = run_hook(target, "mig", "migrate", "begin", incoming)
    assert proc.returncode == 0, proc.stderr
    out = etree.fromstring(proc.stdout)
    topo = target.topology()
    vfs = hostdev_vfs(proc.stdout)
    assert all(vf in topo.vfs for vf in vfs)
    assert len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 2
    assert {c["vf"] for c in claims_of(target, "mig")} == set(vfs)
    # The MACs travel with the guest.
    macs_in = sorted(i.find("mac").get("address") for i in etree.fromstring(incoming).findall("devices/interface"))
    assert sorted(i.find("mac").get("address") for i in out.findall("devices/interface")) == macs_in


def test_migrate_begin_moves_a_vf_whose_address_here_is_on_another_pf(make_host):
    # The target numbers its VFs alike but has 16 per PF, not 8: the source's VF 0 of its
    # second PF (0000:3c:01.0) is VF 8 of the first PF here. Kept, it would put both NICs on one
    # link; the VF whose PF still matches the recorded one stays.
    source = make_host("two-dual-port")
    source.write_config()
    incoming = vfpick(source, "resolve", "-", input=domain("mig", nics=2), check=0).stdout
    src_topo = source.topology()
    assert sorted(src_topo.vfs[vf].pf for vf in hostdev_vfs(incoming)) == \
        ["0000:3b:00.0", "0000:3b:00.1"]
    target = make_host("mixed-speed")
    target.write_config()
    topo = target.topology()
    assert all(vf in topo.vfs for vf in hostdev_vfs(incoming))  # the same addresses exist here
    proc = run_hook(target, "mig", "migrate", "begin", incoming)
    assert proc.returncode == 0, proc.stderr
    vfs = hostdev_vfs(proc.stdout)
    assert len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 2, vfs
    kept = [vf for vf in hostdev_vfs(incoming)
            if topo.vfs[vf].pf == src_topo.vfs[vf].pf]
    assert kept and set(kept) <= set(vfs)


def test_restore_of_an_unchanged_domain_prints_nothing(host):
    host.write_config()
    xml = resolved(host, "vm1")
    proc = run_hook(host, "vm1", "restore", "begin", xml)
    assert (proc.returncode, proc.stdout) == (0, b""), proc.stderr


def test_install_hook_bakes_config_and_works_with_scrubbed_env(host, tmp_path):
    host.write_config()
    hooks_dir = str(tmp_path / "hooks")
    for _ in range(2):  # idempotent
        proc = vfpick(host, "install-hook", "--hooks-dir", hooks_dir, "--config", host.config_path, check=0)
        assert b"restart" in proc.stdout
    installed = os.path.join(hooks_dir, "qemu.d", "vfpick")
    assert os.access(installed, os.X_OK)
    assert not os.path.exists(os.path.join(hooks_dir, "qemu"))
    proc = run_hook(host, "raw", "prepare", "begin",
                    domain("raw", uuid="6c8d5e4f-0000-4000-8000-000000000004"), env={},
                    hook_path=installed)
    assert_user_error(proc, "vfpick repick raw")
    xml = resolved(host, "vm1", nics=1)
    assert run_hook(host, "vm1", "prepare", "begin", xml, env={}, hook_path=installed).returncode == 0
    assert claims_of(host, "vm1")[0]["active"] is True
    vfpick(host, "uninstall-hook", "--hooks-dir", hooks_dir, check=0)
    assert not os.path.exists(installed)


def test_install_hook_never_clobbers_a_foreign_hook(host, tmp_path):
    host.write_config()
    qemu_d = tmp_path / "hooks" / "qemu.d"
    qemu_d.mkdir(parents=True)
    (qemu_d / "vfpick").write_text("#!/bin/sh\necho someone else\n")
    assert_user_error(vfpick(host, "install-hook", "--hooks-dir", str(tmp_path / "hooks")),
                      "not installed by vfpick")
    assert (qemu_d / "vfpick").read_text() == "#!/bin/sh\necho someone else\n"


def fake_netlink(host):
    nl = FakeNetlink()
    for netdev in host.netdevs():
        nl.add_link(netdev, num_vfs=64)
    return nl


def test_trust_and_spoofchk_are_applied_at_prepare(host):
    host.write_config(pools={"fast": "pfs = ens1f0 ens2f0\ntrust = on\nspoofchk = off\n"})
    xml = resolved(host, "bond", nics=2)
    nl = fake_netlink(host)
    err = io.StringIO()
    code = hook.run(["bond", "prepare", "begin", "-"], stdin=io.BytesIO(xml), stdout=io.BytesIO(),
                    stderr=err, config_path=host.config_path, netlink_factory=lambda: nl)
    assert code == 0, err.getvalue()
    assert sorted(nl.calls) == [("ens1f0", 0, True, False), ("ens2f0", 0, True, False)]


def test_failure_to_apply_vf_settings_refuses_the_start_and_changes_nothing(host):
    host.write_config(pools={"fast": "pfs = ens1f0 ens2f0\ntrust = on\n"})
    xml = resolved(host, "bond", nics=2)
    before = claims_file(host)
    nl = fake_netlink(host)
    nl.fail("ens2f0", 0, setting="trust")
    err = io.StringIO()
    code = hook.run(["bond", "prepare", "begin", "-"], stdin=io.BytesIO(xml), stdout=io.BytesIO(),
                    stderr=err, config_path=host.config_path, netlink_factory=lambda: nl)
    assert code == 1 and err.getvalue().startswith("vfpick: cannot set trust on for VF 0 of ens2f0")
    assert claims_file(host) == before
    # ens1f0's VF was set first: put back, since no claim records it
    assert nl.get_vf("ens1f0", 0).trust is False


def test_hook_keeps_more_than_the_parser_reads():
    from vfpick import domscan

    # Oversized XML reaches the scanner whole (refused there, then judged by its bytes).
    assert hook.MAX_KEPT > domscan.MAX_BYTES
