"""Real clients against the real libvirtd: `vfpick define --start`, virt-install, NIC hotplug.

Same setup as test_e2e_libvirt (its ``env`` fixture): the hook installed with
``vfpick install-hook``, a simulated SR-IOV host, libvirt's real run and config dirs. A start
with a simulated VF passes vfpick's prepare gate, then libvirt refuses it (no IOMMU here).
"""

import os
import shutil
import subprocess

import pytest
from lxml import etree

import libvirtd as lv
from clitools import assert_user_error, hostdev_vfs, vfpick
from test_e2e_libvirt import PASSTHROUGH_ERROR, env  # noqa: F401 (env: the fixture)


def ops(env, name):
    return [tuple(c["argv"][1:3]) for c in env.hook_calls(name)]


def pool_domain(env, name, nics=2):
    ifaces = "".join("\n    <interface type='network'><source network='fast'/></interface>"
                     for _ in range(nics))
    env.daemon.track(name)
    return lv.domain_xml(name, devices=ifaces).encode()


def test_define_start_failed_start_keeps_definition_and_reserved_claims(env):
    name = env.daemon.unique_name("ds")
    proc = vfpick(env.host, "define", "--start", "-", input=pool_domain(env, name))
    err = assert_user_error(proc, "domain '%s' is defined" % name, PASSTHROUGH_ERROR,
                            "virsh start %s" % name)
    assert ("defined domain '%s'" % name).encode() in proc.stdout
    assert name in env.daemon.list_domains() and not env.daemon.is_running(name)
    vfs = hostdev_vfs(env.daemon.dumpxml(name, inactive=True))
    assert len(vfs) == 2
    # prepare activated them, release end made them reserved again: still this domain's
    assert ops(env, name) == [("prepare", "begin"), ("stopped", "end"), ("release", "end")]
    assert env.state_at(name, "prepare begin") == [[(vf, True) for vf in sorted(vfs)]]
    assert sorted((c["vf"], c["active"], c["uuid"]) for c in env.claims(name)) == [
        (vf, False, env.uuid(name)) for vf in sorted(vfs)]
    assert "Traceback" not in err


def test_define_start_runs_a_domain_that_can_run(env):
    # No pool interface: nothing to resolve, and a plain TCG domain really starts here.
    name = env.daemon.unique_name("dsok")
    env.daemon.track(name)
    proc = vfpick(env.host, "define", "--start", "-", input=lv.domain_xml(name).encode(), check=0)
    assert ("started domain '%s'" % name).encode() in proc.stdout
    assert env.daemon.is_running(name)


def test_define_start_refused_definition_claims_nothing(env):
    name = env.daemon.unique_name("dsbad")
    bad = pool_domain(env, name).replace(b"<vcpu>1</vcpu>", b"<vcpu>0</vcpu>")
    proc = vfpick(env.host, "define", "--start", "-", input=bad)
    assert_user_error(proc, "libvirt refused the definition", "no claim changed")
    assert env.claims() == [] and name not in env.daemon.list_domains()


@pytest.mark.skipif(shutil.which("virt-install") is None, reason="needs virt-install (Debian virtinst)")
def test_virt_install_print_xml_piped_into_define_start(env):
    """What the README tells virt-install users: the real virt-install, the real libvirtd."""
    name = env.daemon.unique_name("vi")
    env.daemon.track(name)
    virt_install = subprocess.run(
        ["virt-install", "--connect", lv.URI, "--name", name, "--memory", "64", "--vcpus", "1",
         "--import", "--disk", "none", "--virt-type", "qemu", "--arch", "x86_64",
         "--osinfo", "detect=off,name=generic", "--graphics", "none", "--noautoconsole",
         "--network", "network=fast,mac=52:54:00:5a:00:01", "--network", "network=fast",
         "--print-xml"], capture_output=True, timeout=120)
    assert virt_install.returncode == 0, virt_install.stderr
    assert virt_install.stdout.count(b"network=\"fast\"") == 2
    proc = vfpick(env.host, "define", "--start", "-", input=virt_install.stdout)
    assert_user_error(proc, "domain '%s' is defined" % name, PASSTHROUGH_ERROR)
    xml = env.daemon.dumpxml(name, inactive=True)
    root = etree.fromstring(xml.encode())
    # virt-install's e1000 model is network-only: dropped; the MAC it was given is kept
    ifaces = root.findall("devices/interface")
    assert [i.get("type") for i in ifaces] == ["hostdev", "hostdev"]
    assert ifaces[0].find("mac").get("address") == "52:54:00:5a:00:01"
    assert all(i.find("model") is None for i in ifaces)
    vfs = hostdev_vfs(xml)
    topo = env.host.topology()
    assert len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 2
    # the hook had made them this domain's at prepare; they stay reserved for it
    assert ops(env, name) == [("prepare", "begin"), ("stopped", "end"), ("release", "end")]
    assert env.state_at(name, "prepare begin") == [[(vf, True) for vf in sorted(vfs)]]
    claims = env.claims(name)
    assert sorted((c["vf"], c["mac"], c["active"]) for c in claims) == sorted(
        (vf, i.find("mac").get("address"), False) for vf, i in zip(vfs, ifaces))
    assert {c["uuid"] for c in claims} == {env.uuid(name)}
