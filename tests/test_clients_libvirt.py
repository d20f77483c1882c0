"""Real clients against the real libvirtd: `vfpick define --start`, virt-install, NIC hotplug.

Same setup as test_e2e_libvirt (its ``env`` fixture): the hook installed with
``vfpick install-hook``, a simulated SR-IOV host, libvirt's real run and config dirs. A start
with a simulated VF passes vfpick's prepare gate, then libvirt refuses it (no IOMMU here).
"""

import shutil
import subprocess
import uuid as uuidmod

from lxml import etree

import libvirtd as lv
from clitools import assert_user_error, hostdev_vfs, vfpick
from test_e2e_libvirt import PASSTHROUGH_ERROR, VFPICK_NS


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


def test_virt_install_print_xml_piped_into_define_start(env):
    """What docs/operator-guide.md tells virt-install users: the real virt-install, the real libvirtd."""
    if shutil.which("virt-install") is None:
        # scripts/setup installs virtinst: under VFPICK_REQUIRE_LIBVIRTD=1 (CI) this fails.
        lv.skip_or_fail("needs virt-install (Debian virtinst; scripts/setup installs it)")
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


# --------------------------------------------------------------------------- hotplug

NEW_MAC = "52:54:00:77:00:01"
NIC = ("<interface type='network'><mac address='%s'/><source network='fast'/></interface>"
       % NEW_MAC).encode()


def metadata_macs(xml):
    root = etree.fromstring(xml.encode())
    return {n.get("mac"): n.get("vf") for n in root.iter("{http://vfpick.org/xmlns/libvirt/domain/1.0}nic")}


def test_attach_config_to_a_shut_off_domain_picks_a_distinct_link(env):
    name = env.define(nics=2)
    proc = vfpick(env.host, "attach", name, "-", "--config", input=NIC, check=0)
    assert ("attached %s to domain '%s' (persistent)" % (NEW_MAC, name)).encode() in proc.stdout
    xml = env.daemon.dumpxml(name, inactive=True)
    vfs = hostdev_vfs(xml)
    topo = env.host.topology()
    assert len(vfs) == 3 and len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 3
    new_vf = [c["vf"] for c in env.claims(name) if c["mac"] == NEW_MAC]
    assert len(new_vf) == 1 and new_vf[0] in vfs
    # recorded in vfpick's metadata, so the domain re-resolves to itself
    assert metadata_macs(xml).get(NEW_MAC) == new_vf[0], (proc.stderr, xml)
    assert sorted(c["vf"] for c in env.claims(name)) == sorted(vfs)
    assert {c["active"] for c in env.claims(name)} == {False}
    proc = env.cli("repick", name)
    assert ("kept domain '%s'" % name).encode() in proc.stdout
    assert hostdev_vfs(env.daemon.dumpxml(name, inactive=True)) == vfs


def test_attach_config_with_bandwidth_keeps_it_in_metadata_and_claim_not_on_the_hostdev(env):
    name = env.define(nics=1)
    bw = (b"<bandwidth><inbound floor='12207'/><outbound average='61035' peak='122070'/>"
          b"</bandwidth></interface>")
    proc = vfpick(env.host, "attach", name, "-", "--config", input=NIC.replace(b"</interface>", bw),
                  check=0)
    assert ("attached %s to domain '%s' (persistent)" % (NEW_MAC, name)).encode() in proc.stdout
    xml = env.daemon.dumpxml(name, inactive=True)
    assert "<bandwidth" not in xml, xml
    root = etree.fromstring(xml.encode())
    [entry] = [n for n in root.iter("{%s}nic" % VFPICK_NS) if n.get("mac") == NEW_MAC]
    assert (entry.get("average"), entry.get("peak"), entry.get("floor")) == ("61035", "122070", "12207")
    [claim] = [c for c in env.claims(name) if c["mac"] == NEW_MAC]
    assert (claim.get("rate_mbps"), claim.get("min_rate_mbps")) == (500, 100), claim
    # the domain re-resolves to itself, the rates kept
    assert ("kept domain '%s'" % name).encode() in env.cli("repick", name).stdout
    [claim] = [c for c in env.claims(name) if c["mac"] == NEW_MAC]
    assert claim.get("min_rate_mbps") == 100, claim


def test_attach_a_guarantee_pool_cannot_meet_is_one_line_and_changes_no_claim(env):
    env.host.write_config(pools={"fast": "pfs = %s\nguarantee = yes\n" % " ".join(env.host.netdevs())})
    name = env.define(nics=1)
    before, xml = env.claims(), env.daemon.dumpxml(name, inactive=True)
    floor = b"<bandwidth><inbound floor='3100000'/></bandwidth></interface>"   # 25396 Mb/s > 25G
    proc = vfpick(env.host, "attach", name, "-", "--config", input=NIC.replace(b"</interface>", floor))
    assert_user_error(proc, "pool 'fast' cannot guarantee 25396 Mb/s", "guarantee=yes")
    assert env.claims() == before
    assert env.daemon.dumpxml(name, inactive=True) == xml


def test_attach_refused_by_libvirt_rolls_the_claim_back(env):
    name = env.define(nics=1)
    before = env.claims()
    xml = env.daemon.dumpxml(name, inactive=True)
    # the guest PCI slot of the existing NIC: libvirt refuses a second device there
    used = etree.fromstring(xml.encode()).find("devices/interface/address")
    nic = NIC.replace(b"</interface>", etree.tostring(used) + b"</interface>")
    proc = vfpick(env.host, "attach", name, "-", "--config", input=nic)
    assert_user_error(proc, "libvirt refused to attach the NIC to '%s'" % name, "no claim changed")
    assert env.claims() == before
    assert env.daemon.dumpxml(name, inactive=True) == xml


def test_live_attach_that_libvirt_cannot_do_leaves_no_claim(env):
    # A plain TCG domain runs here; attaching a VF to it fails inside libvirt (no IOMMU).
    name = env.virsh_define(lv.domain_xml(env.daemon.unique_name("hp")))
    env.daemon.virsh("start", name)
    assert env.daemon.is_running(name)
    proc = vfpick(env.host, "attach", name, "-", "--live", input=NIC)
    assert_user_error(proc, "libvirt refused to attach the NIC to '%s'" % name, "no claim changed")
    assert env.claims() == []
    assert env.daemon.is_running(name)
    assert hostdev_vfs(env.daemon.dumpxml(name)) == []
    # --live on a running domain is the default; the same without the flag
    assert_user_error(vfpick(env.host, "attach", name, "-", input=NIC), "libvirt refused")
    assert env.claims() == []
    # a MAC that is not there
    assert_user_error(vfpick(env.host, "detach", name, NEW_MAC, "--live"),
                      "has no interface with MAC %s in its live definition" % NEW_MAC)


def test_detach_config_releases_the_claim_and_the_metadata(env):
    name = env.define(nics=2)
    claims = env.claims(name)
    gone, kept = claims[0], claims[1]
    proc = vfpick(env.host, "detach", name, gone["mac"].upper(), "--config", check=0)
    assert ("released VF %s" % gone["vf"]).encode() in proc.stdout
    xml = env.daemon.dumpxml(name, inactive=True)
    assert hostdev_vfs(xml) == [kept["vf"]]
    assert set(metadata_macs(xml)) == {kept["mac"]}
    assert [c["vf"] for c in env.claims(name)] == [kept["vf"]]
    # the freed VF is pickable again, and a detach of a MAC that is gone changes nothing
    assert_user_error(vfpick(env.host, "detach", name, gone["mac"], "--config"),
                      "no interface with MAC")
    assert_user_error(vfpick(env.host, "detach", name, gone["mac"], "--live"), "is not running")


def test_detach_of_a_nic_removed_behind_vfpicks_back_releases_claim_and_metadata(env):
    name = env.define(nics=2)
    claims = env.claims(name)
    gone, kept = claims[0], claims[1]
    # virsh detach-interface, not vfpick: libvirt drops the NIC, vfpick's claim and metadata stay
    env.daemon.virsh("detach-interface", name, "hostdev", "--mac", gone["mac"], "--config")
    xml = env.daemon.dumpxml(name, inactive=True)
    assert hostdev_vfs(xml) == [kept["vf"]] and gone["mac"] in metadata_macs(xml)
    proc = vfpick(env.host, "detach", name, gone["mac"], "--config", check=0)
    out = proc.stdout.decode().strip().splitlines()
    assert len(out) == 1 and "already removed" in out[0] and gone["vf"] in out[0], proc
    assert proc.stderr == b"", proc.stderr
    xml = env.daemon.dumpxml(name, inactive=True)
    assert set(metadata_macs(xml)) == {kept["mac"]}
    assert [c["vf"] for c in env.claims(name)] == [kept["vf"]]
    # nothing of vfpick's is left for that MAC: now it is an unknown MAC again
    assert_user_error(vfpick(env.host, "detach", name, gone["mac"], "--config"),
                      "no interface with MAC")


def links_of(env, vfs):
    topo = env.host.topology()
    return [topo.link_of[topo.vfs[vf].pf] for vf in vfs]


def test_attach_does_not_count_a_stale_claim_of_the_domain_and_warns_when_distinct_fails(env):
    """Four NICs on the host's four links; one removed behind vfpick's back leaves a stale claim
    on link D. The attached NIC must go to D (the stale claim is no NIC of the domain), and the
    next one, with every link taken, is best effort with a warning, as resolve gives."""
    name = env.define(nics=4)
    claims = env.claims(name)
    assert len(set(links_of(env, [c["vf"] for c in claims]))) == 4
    stale = claims[-1]
    env.daemon.virsh("detach-interface", name, "hostdev", "--mac", stale["mac"], "--config")
    proc = vfpick(env.host, "attach", name, "-", "--config", input=NIC, check=0)
    assert proc.stderr == b"", proc.stderr
    vfs = hostdev_vfs(env.daemon.dumpxml(name, inactive=True))
    assert len(vfs) == 4 and len(set(links_of(env, vfs))) == 4, links_of(env, vfs)
    # the stale claim was reused or dropped: the domain's claims are its NICs, no more
    assert sorted(c["vf"] for c in env.claims(name)) == sorted(vfs)
    assert NEW_MAC in {c["mac"] for c in env.claims(name)}
    # a fifth NIC cannot be distinct: attached, with one warning line
    fifth = NIC.replace(NEW_MAC.encode(), b"52:54:00:77:00:02")
    proc = vfpick(env.host, "attach", name, "-", "--config", input=fifth, check=0)
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vfpick: warning: ") and "best effort" in err[0], err
    assert "distinct=link" in err[0]
    vfs = hostdev_vfs(env.daemon.dumpxml(name, inactive=True))
    assert len(vfs) == 5 and len(set(links_of(env, vfs))) == 4


def running_with_next_definition(env, mac="52:54:00:10:00:01"):
    """A running plain domain with vfpick's metadata whose persistent definition (redefined
    while it runs) holds one resolved VF NIC: (name, uuid, that VF). A live VF cannot run here
    (no IOMMU), so the live side is what a guest looks like after QEMU unplugged its VF."""
    name, uuid = env.daemon.unique_name("lo"), str(uuidmod.uuid4())
    want = lv.domain_xml(name, uuid=uuid, devices="<interface type='network'><mac address='%s'/>"
                         "<source network='fast'/></interface>" % mac)
    resolved = vfpick(env.host, "resolve", "-", input=want.encode(), check=0).stdout
    meta = etree.fromstring(resolved).find("metadata/{%s}domain" % VFPICK_NS)
    plain = lv.domain_xml(name, uuid=uuid, metadata=etree.tostring(meta).decode(), devices=(
        "<interface type='user'><mac address='52:54:00:10:00:09'/><model type='e1000'/></interface>"))
    env.virsh_define(plain)
    env.daemon.virsh("start", name)
    assert env.daemon.is_running(name)
    env.virsh_define(resolved.decode())   # the next start's definition: the resolved VF
    [defined_vf] = hostdev_vfs(resolved)
    return name, uuid, defined_vf


def put_claim(env, **fields):
    from vfpick import config as configmod, resolver
    from vfpick.records import Claim

    topo = env.host.topology()
    pf = topo.vfs[fields["vf"]].pf
    claim = Claim(pf=pf, link=topo.link_of[pf], pool="fast", pending=None, applied=None,
                  restore=None, **fields)
    with resolver.store_for(configmod.load(env.host.config_path)).transaction() as claims:
        claims.put(claim)


def test_release_drops_a_claim_that_only_the_ending_live_domain_used(env):
    """A --live-only NIC's claim must not outlive it: when the domain stops, the claim whose VF
    its persistent definition does not use is dropped; the definition's own stays reserved.
    (The live-only claim is written as a live attach leaves it, active.)"""
    name, uuid, defined_vf = running_with_next_definition(env)
    live_only = [vf for vf in sorted(env.host.topology().vfs) if vf != defined_vf][0]
    put_claim(env, vf=live_only, domain=name, uuid=uuid, mac="52:54:00:10:00:02", active=True)
    assert sorted(c["vf"] for c in env.claims(name)) == sorted([defined_vf, live_only])
    env.daemon.virsh("destroy", name)
    assert ops(env, name)[-2:] == [("stopped", "end"), ("release", "end")]
    assert [(c["vf"], c["active"]) for c in env.claims(name)] == [(defined_vf, False)]


def test_a_lost_claim_is_settled_by_a_live_detach_of_the_unplugged_nic(env):
    """status's fix for a lost claim: the running guest has no such NIC, the definition does:
    `vfpick detach NAME MAC --live` exits 0 and the claim stays, reserved for the definition."""
    mac = "52:54:00:10:00:01"
    name, uuid, defined_vf = running_with_next_definition(env, mac)
    put_claim(env, vf=defined_vf, domain=name, uuid=uuid, mac=mac, active=True)  # as prepare left it
    [claim] = env.claims(name)
    assert claim["lost"] is True and claim["active"] is False
    proc = vfpick(env.host, "detach", name, mac, "--live", check=0)
    out = proc.stdout.decode().strip().splitlines()
    assert len(out) == 1 and "already removed from its live definition" in out[0], out
    assert "stays claimed" in out[0]
    [claim] = env.claims(name)
    assert (claim["vf"], claim["active"], claim["lost"]) == (defined_vf, False, False)
    assert hostdev_vfs(env.daemon.dumpxml(name, inactive=True)) == [defined_vf]


# --------------------------------------------------------------------------- failover

def test_libvirt_accepts_failover_pairs(env):
    """[pool] failover = bridge:BR: libvirt's own validation of <teaming> takes the result."""
    env.host.write_config({"fast": "pfs = %s\nfailover = bridge:vfpt-br0\n" % " ".join(env.host.netdevs())})
    name = env.define(nics=2)
    root = etree.fromstring(env.daemon.dumpxml(name, inactive=True).encode())
    ifaces = root.findall("devices/interface")
    assert [i.get("type") for i in ifaces] == ["bridge", "hostdev", "bridge", "hostdev"]
    for virtio, vf in zip(ifaces[::2], ifaces[1::2]):
        alias = virtio.find("alias").get("name")
        assert alias.startswith("ua-") and virtio.find("model").get("type") == "virtio"
        assert virtio.find("teaming").attrib == {"type": "persistent"}
        assert vf.find("teaming").attrib == {"type": "transient", "persistent": alias}
        assert virtio.find("mac").get("address") == vf.find("mac").get("address")
    assert sorted(c["mac"] for c in env.claims(name)) == sorted(
        i.find("mac").get("address") for i in ifaces[1::2])
    # libvirt's XML of it re-resolves to itself: no second partner
    assert ("kept domain '%s'" % name).encode() in env.cli("repick", name).stdout


def test_libvirt_accepts_a_hand_written_pair_in_a_pool_interface(env):
    name = env.daemon.unique_name("hand")
    devices = ("<interface type='bridge'><mac address='52:54:00:fa:22:01'/><source bridge='vfpt-br1'/>"
               "<model type='virtio'/><teaming type='persistent'/><alias name='ua-backup0'/></interface>"
               "<interface type='network'><mac address='52:54:00:fa:22:01'/><source network='fast'/>"
               "<teaming type='transient' persistent='ua-backup0'/></interface>")
    env.daemon.track(name)
    vfpick(env.host, "define", "-", input=lv.domain_xml(name, devices=devices).encode(), check=0)
    root = etree.fromstring(env.daemon.dumpxml(name, inactive=True).encode())
    ifaces = root.findall("devices/interface")
    assert [i.get("type") for i in ifaces] == ["bridge", "hostdev"]
    assert ifaces[1].find("teaming").attrib == {"type": "transient", "persistent": "ua-backup0"}
