"""vfpick's libvirt commands against libvirt's in-process test driver (``test:///default``).

The test driver keeps its domains while at least one connection is open, so the ``conn``
fixture holds one for the test: the commands' own connections see the same domains, and the
state is gone after the test. It has no hooks and no device checks (a hostdev of the
simulated host can be defined and even "run").
"""

import json
import os

import libvirt
import pytest
from lxml import etree

from clitools import domain, hostdev_vfs
from libvirtfixtures import URI
from vfpick import cli, resolver
from vfpick.commands import define, reconcile
from vfpick.errors import DomainNotFound, LibvirtFailure, StateCorrupt, UnknownPool

NS = {"vfpick": "http://vfpick.org/xmlns/libvirt/domain/1.0"}


def claims(cfg):
    return resolver.store_for(cfg).snapshot().all()


def claims_of(cfg, uuid):
    return [c for c in claims(cfg) if c.uuid == uuid]


def libvirt_xml(conn, name):
    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def state_bytes(cfg):
    try:
        with open(os.path.join(cfg.state_dir, "claims.json"), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def define_with_vfpick(cfg, conn, name, nics=2, uuid=None):
    return define.cmd_define(cfg, domain(name, nics=nics, uuid=uuid), URI).result


def vanish_vf(host, vf):
    """The VF disappears as the kernel makes it (sriov_numvfs lowered): its device and the
    PF's virtfnN link go away."""
    dev = os.path.join(host.sysfs, "bus", "pci", "devices", vf)
    pf_dir = os.path.realpath(os.path.join(dev, "physfn"))
    undo = [(os.readlink(dev), dev)]
    for entry in os.listdir(pf_dir):
        link = os.path.join(pf_dir, entry)
        if entry.startswith("virtfn") and os.readlink(link).endswith("/" + vf):
            undo.append((os.readlink(link), link))
            os.unlink(link)
    os.unlink(dev)

    def restore():
        for target, path in undo:
            os.symlink(target, path)

    return restore


# --------------------------------------------------------------------------- define

def test_define_resolves_onto_distinct_links_and_records_the_claims(cfg, conn, host):
    result = define_with_vfpick(cfg, conn, "vm1")
    dom = conn.lookupByName("vm1")
    xml = libvirt_xml(conn, "vm1")
    vfs = hostdev_vfs(xml)
    topo = host.topology()
    assert len(vfs) == 2 and all(vf in topo.vfs for vf in vfs)
    assert len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 2
    # the pool interfaces are gone, vfpick's metadata records each NIC
    root = etree.fromstring(xml.encode())
    assert root.findall("devices/interface[@type='network']") == []
    nics = root.findall("metadata/vfpick:domain/vfpick:nic", NS)
    assert sorted(n.get("vf") for n in nics) == sorted(vfs)
    # claims keyed by the UUID libvirt knows, not active (the domain is not running)
    assert result.uuid == dom.UUIDString()
    mine = claims_of(cfg, dom.UUIDString())
    assert sorted(c.vf for c in mine) == sorted(vfs)
    assert {(c.domain, c.pool, c.active) for c in mine} == {("vm1", "fast", False)}
    assert {c.mac for c in mine} == {n.get("mac") for n in nics}


def test_define_keeps_a_libvirt_network_and_refuses_an_unknown_one(cfg, conn):
    # test:///default has a network "default": it passes through untouched
    xml = domain("mixed", nics=1).replace(
        b"</devices>", b"<interface type='network'><source network='default'/></interface></devices>")
    define.cmd_define(cfg, xml, URI)
    root = etree.fromstring(libvirt_xml(conn, "mixed").encode())
    assert [i.find("source").get("network") for i in root.findall("devices/interface[@type='network']")] \
        == ["default"]
    assert len(hostdev_vfs(libvirt_xml(conn, "mixed"))) == 1
    before = state_bytes(cfg)
    with pytest.raises(UnknownPool, match="fast"):
        define.cmd_define(cfg, domain("typo", nics=1, pool="fsat"), URI)
    assert state_bytes(cfg) == before
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("typo")


def test_claims_are_rolled_back_when_libvirt_refuses_a_duplicate_name(cfg, conn):
    conn.defineXML(domain("taken", nics=0, uuid="11111111-2222-3333-4444-555555555555").decode())
    define_with_vfpick(cfg, conn, "vm1")
    before = claims(cfg)
    with pytest.raises(LibvirtFailure) as err:
        define_with_vfpick(cfg, conn, "taken")  # no <uuid>: vfpick gives it a new one
    assert "already exists" in str(err.value) and "no claim changed" in str(err.value)
    # The claims are back as they were (the file counted two writes: claim, roll back).
    assert claims(cfg) == before
    assert {c.domain for c in claims(cfg)} == {"vm1"}
    assert hostdev_vfs(libvirt_xml(conn, "taken")) == []


def test_rollback_restores_the_previous_claims_of_a_redefined_domain(cfg, conn):
    first = define_with_vfpick(cfg, conn, "vm1")
    conn.defineXML(domain("vm2", nics=0).decode())
    old = claims_of(cfg, first.uuid)
    # Same UUID as vm1, another name: resolve would hand out new VFs (the XML has pool
    # interfaces again), libvirt refuses ("already defined with uuid"): vm1 keeps its VFs.
    with pytest.raises(LibvirtFailure, match="no claim changed"):
        define.cmd_define(cfg, domain("vm1-renamed", nics=2, uuid=first.uuid), URI)
    assert claims_of(cfg, first.uuid) == old
    assert len(claims(cfg)) == 2


def test_define_cli_reports_libvirt_errors_in_one_line(cfg, conn, host, capsys):
    path = os.path.join(host.base, "dup.xml")
    conn.defineXML(domain("dup", nics=0).decode())
    with open(path, "wb") as f:
        f.write(domain("dup", nics=1))
    assert cli.main(["--config", host.config_path, "define", path, "--connect", URI]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vfpick: libvirt refused the definition of 'dup'") and err.count("\n") == 1
    assert claims(cfg) == []
    assert cli.main(["--config", host.config_path, "define", path, "--connect", "bogus:///x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vfpick: cannot connect to bogus:///x") and err.count("\n") == 1


# --------------------------------------------------------------------------- repick

def test_repick_resolves_a_domain_defined_with_plain_virsh_define(cfg, conn, host):
    conn.defineXML(domain("raw", nics=2).decode())
    uuid = conn.lookupByName("raw").UUIDString()
    report = define.cmd_repick(cfg, "raw", URI)
    assert report.result.changed and "redefined domain 'raw'" in "\n".join(report.lines)
    vfs = hostdev_vfs(libvirt_xml(conn, "raw"))
    topo = host.topology()
    assert len({topo.link_of[topo.vfs[vf].pf] for vf in vfs}) == 2
    assert sorted(c.vf for c in claims_of(cfg, uuid)) == sorted(vfs)
    # again, by UUID: the VFs and claims stay. (The test driver adds <target dev> to hostdev
    # interfaces, which vfpick does not carry over, so the XML itself differs here; against
    # the real qemu driver, test_e2e_libvirt checks that a second repick changes nothing.)
    before = state_bytes(cfg)
    define.cmd_repick(cfg, uuid.upper(), URI)
    assert hostdev_vfs(libvirt_xml(conn, "raw")) == vfs
    assert state_bytes(cfg) == before


def test_repick_moves_only_the_nic_whose_vf_vanished(cfg, conn, host):
    first = define_with_vfpick(cfg, conn, "vm1")
    vfs = hostdev_vfs(libvirt_xml(conn, "vm1"))
    gone, kept = vfs
    vanish_vf(host, gone)
    define.cmd_repick(cfg, "vm1", URI)
    now = hostdev_vfs(libvirt_xml(conn, "vm1"))
    assert now[1] == kept and now[0] not in (gone, kept)
    assert sorted(c.vf for c in claims_of(cfg, first.uuid)) == sorted(now)
    topo = host.topology()
    assert topo.link_of[topo.vfs[now[0]].pf] != topo.link_of[topo.vfs[kept].pf]
    # the MAC travelled with the NIC
    macs = [i.find("mac").get("address") for i in
            etree.fromstring(libvirt_xml(conn, "vm1").encode()).findall("devices/interface")]
    assert {c.mac for c in claims_of(cfg, first.uuid)} == set(macs)


def test_repick_moves_a_nic_whose_vf_lost_its_physfn_link(cfg, conn, host):
    define_with_vfpick(cfg, conn, "vm1", nics=1)
    gone = hostdev_vfs(libvirt_xml(conn, "vm1"))[0]
    os.unlink(os.path.join(host.sysfs, "bus", "pci", "devices", gone, "physfn"))
    define.cmd_repick(cfg, "vm1", URI)
    assert hostdev_vfs(libvirt_xml(conn, "vm1")) != [gone]


def test_repick_of_a_plain_or_unknown_domain(cfg, conn):
    conn.defineXML(domain("plain", nics=0).decode())
    report = define.cmd_repick(cfg, "plain", URI)
    assert report.result is None
    assert "nothing to do" in "\n".join(report.lines)
    with pytest.raises(DomainNotFound, match="nosuch"):
        define.cmd_repick(cfg, "nosuch", URI)
    assert claims(cfg) == []


# --------------------------------------------------------------------------- release

def test_release_by_name_uuid_and_the_new_name_of_a_renamed_domain(cfg, conn, host, capsys):
    a = define_with_vfpick(cfg, conn, "a", nics=1)
    b = define_with_vfpick(cfg, conn, "b", nics=1)
    c = define_with_vfpick(cfg, conn, "c", nics=1)
    base = ["--config", host.config_path]
    assert cli.main(base + ["release", "a"]) == 0
    assert "released" in capsys.readouterr().out
    assert cli.main(base + ["release", b.uuid.upper()]) == 0
    conn.lookupByName("c").rename("c-new", 0)
    assert cli.main(base + ["release", "c-new", "--connect", URI]) == 0
    assert claims(cfg) == []
    capsys.readouterr()
    assert cli.main(base + ["release", "c-new", "--connect", URI]) == 1
    assert "no claims for domain 'c-new'" in capsys.readouterr().err
    assert {a.uuid, b.uuid, c.uuid} == {conn.lookupByName(n).UUIDString() for n in ("a", "b", "c-new")}


# --------------------------------------------------------------------------- reconcile

def run_reconcile(cfg, **kw):
    report = reconcile.cmd_reconcile(cfg, URI, **kw)
    return report.result, "".join(line + "\n" for line in report.lines)


def test_reconcile_drops_claims_of_undefined_domains_dry_run_first(cfg, conn):
    gone = define_with_vfpick(cfg, conn, "gone")
    define_with_vfpick(cfg, conn, "stays")
    conn.lookupByName("gone").undefine()
    before = state_bytes(cfg)
    actions, text = run_reconcile(cfg, dry_run=True)
    assert sorted((a.verb, a.claim.uuid) for a in actions) == [("drop", gone.uuid)] * 2
    assert text.count("would drop") == 2
    assert state_bytes(cfg) == before
    actions, text = run_reconcile(cfg)
    assert [a.verb for a in actions] == ["drop", "drop"] and "would" not in text
    assert {c.domain for c in claims(cfg)} == {"stays"}
    assert run_reconcile(cfg) == ([], "claims agree with libvirt\n")


def test_reconcile_records_vfs_of_running_domains_and_activity(cfg, conn, host):
    topo = host.topology()
    vf = sorted(topo.vfs)[3]
    a, b, s, f = vf.replace(":", " ").replace(".", " ").split()
    hostdev = ("<interface type='hostdev' managed='yes'><mac address='52:54:00:12:34:56'/><source>"
               "<address type='pci' domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/></source>"
               "</interface>" % (a, b, s, f))
    # a hand-made hostdev on a pool VF, running: vfpick did not hand it out
    conn.defineXML(domain("manual", nics=0, extra_devices=hostdev).decode())
    conn.lookupByName("manual").create()
    mine = define_with_vfpick(cfg, conn, "mine", nics=1)
    conn.lookupByName("mine").create()
    actions, text = run_reconcile(cfg)
    verbs = sorted((a.verb, a.claim.domain) for a in actions)
    assert verbs == [("add", "manual"), ("update", "mine")], text
    held = {c.vf: c for c in claims(cfg)}
    manual = held[vf]
    assert (manual.domain, manual.pool, manual.active, manual.mac) == ("manual", "fast", True,
                                                                      "52:54:00:12:34:56")
    assert manual.uuid == conn.lookupByName("manual").UUIDString()
    assert [c.active for c in claims_of(cfg, mine.uuid)] == [True]
    # stopped: claims stay, inactive
    conn.lookupByName("mine").destroy()
    actions, _ = run_reconcile(cfg)
    assert [(a.verb, a.claim.domain, a.claim.active) for a in actions] == [("update", "mine", False)]


def test_reconcile_reports_a_running_domain_on_another_domains_vf(cfg, conn):
    owner = define_with_vfpick(cfg, conn, "owner", nics=1)
    xml = libvirt_xml(conn, "owner")
    root = etree.fromstring(xml.encode())
    root.find("name").text = "thief"
    root.find("uuid").text = "99999999-2222-3333-4444-555555555555"
    root.remove(root.find("metadata"))
    conn.defineXML(etree.tostring(root).decode())
    conn.lookupByName("thief").create()
    before = state_bytes(cfg)
    actions, text = run_reconcile(cfg)
    assert [(a.verb, a.claim.domain) for a in actions] == [("conflict", "owner")]
    assert "thief" in text
    assert state_bytes(cfg) == before
    assert claims_of(cfg, owner.uuid)[0].domain == "owner"


def test_reconcile_rebuild_sets_a_corrupt_state_file_aside_and_recreates_it(cfg, conn, host):
    a = define_with_vfpick(cfg, conn, "a", nics=2)
    b = define_with_vfpick(cfg, conn, "b", nics=1)
    conn.lookupByName("b").create()
    good = {(c.vf, c.uuid, c.pool, c.mac, c.link, c.pf) for c in claims(cfg)}
    path = os.path.join(cfg.state_dir, "claims.json")
    with open(path, "wb") as f:
        f.write(b'{"version": 1, "claims": [tru')
    with pytest.raises(StateCorrupt, match="--rebuild"):
        run_reconcile(cfg)
    with pytest.raises(StateCorrupt):
        run_reconcile(cfg, dry_run=True)
    # --rebuild --dry-run: shows what it would record, touches nothing
    actions, text = run_reconcile(cfg, dry_run=True, rebuild=True)
    assert sorted(a.verb for a in actions) == ["add"] * 3 and "would add" in text
    assert os.listdir(cfg.state_dir).count("claims.json.corrupt-1") == 0
    with open(path, "rb") as f:
        assert f.read() == b'{"version": 1, "claims": [tru'
    actions, text = run_reconcile(cfg, rebuild=True)
    moved = os.path.join(cfg.state_dir, "claims.json.corrupt-1")
    assert "moved the old state file aside to %s" % moved in text
    with open(moved, "rb") as f:
        assert f.read() == b'{"version": 1, "claims": [tru'
    assert {(c.vf, c.uuid, c.pool, c.mac, c.link, c.pf) for c in claims(cfg)} == good
    assert {c.uuid: c.active for c in claims(cfg)} == {a.uuid: False, b.uuid: True}
    # and the rebuilt file is valid JSON in the documented schema
    with open(path) as f:
        assert json.load(f)["version"] == 2



def test_reconcile_rebuild_takes_the_rates_from_the_metadata(cfg, conn):
    # 500 Mb/s average, 1000 peak, 100 guaranteed (libvirt's KiB/s)
    bw = "<bandwidth><inbound floor='12207'/><outbound average='61035' peak='122070'/></bandwidth>"
    define.cmd_define(cfg, domain("capped", nics=2, iface_extra=bw), URI)
    define_with_vfpick(cfg, conn, "plain", nics=1)
    before = {c.vf: c for c in claims(cfg)}
    assert sorted(str((c.rate_mbps, c.peak_mbps, c.min_rate_mbps)) for c in before.values()) == [
        "(500, 1000, 100)", "(500, 1000, 100)", "(None, None, None)"]
    with open(os.path.join(cfg.state_dir, "claims.json"), "wb") as f:
        f.write(b"{broken")
    run_reconcile(cfg, rebuild=True)
    assert {c.vf: c for c in claims(cfg)} == before

def test_reconcile_cli(cfg, conn, host, capsys):
    gone = define_with_vfpick(cfg, conn, "gone", nics=1)
    conn.lookupByName("gone").undefine()
    base = ["--config", host.config_path, "reconcile", "--connect", URI]
    assert cli.main(base + ["--dry-run"]) == 0
    assert "would drop" in capsys.readouterr().out
    assert len(claims(cfg)) == 1
    assert cli.main(base) == 0
    out = capsys.readouterr().out
    assert out.startswith("drop ") and "would" not in out
    assert claims_of(cfg, gone.uuid) == []
    with open(os.path.join(cfg.state_dir, "claims.json"), "w") as f:
        f.write("garbage")
    assert cli.main(base) == 1
    err = capsys.readouterr().err
    assert err.startswith("vfpick: ") and "--rebuild" in err and err.count("\n") == 1
    assert cli.main(base + ["--rebuild"]) == 0
    assert "moved the old state file aside" in capsys.readouterr().out


def test_reconcile_drops_a_vf_the_domain_no_longer_uses_once_it_stops_using_it(cfg, conn):
    vm = define_with_vfpick(cfg, conn, "vm", nics=2)
    dom = conn.lookupByName("vm")
    dom.create()
    run_reconcile(cfg)
    assert [c.active for c in claims_of(cfg, vm.uuid)] == [True, True]
    # `virsh edit` while it runs: the next boot has one NIC, the running guest still two
    root = etree.fromstring(libvirt_xml(conn, "vm").encode())
    dropped_iface = root.findall("devices/interface")[0]
    dropped_vf = hostdev_vfs(etree.tostring(root))[0]
    root.find("devices").remove(dropped_iface)
    conn.defineXML(etree.tostring(root).decode())
    assert run_reconcile(cfg) == ([], "claims agree with libvirt\n")
    dom.destroy()
    actions, text = run_reconcile(cfg)
    assert sorted((a.verb, a.claim.vf) for a in actions if a.verb == "drop") == [("drop", dropped_vf)], text
    assert [(c.vf in hostdev_vfs(libvirt_xml(conn, "vm")), c.active)
            for c in claims_of(cfg, vm.uuid)] == [(True, False)]


def test_reconcile_claims_both_vf_sets_of_a_domain_repicked_while_running(cfg, conn, host):
    vm = define_with_vfpick(cfg, conn, "vm", nics=1)
    conn.lookupByName("vm").create()
    old = hostdev_vfs(conn.lookupByName("vm").XMLDesc(0))[0]
    restore = vanish_vf(host, old)
    define.cmd_repick(cfg, "vm", URI)  # the persistent definition moves
    restore()  # the old VF is back: only the definition moved
    new = hostdev_vfs(libvirt_xml(conn, "vm"))[0]
    assert new != old and hostdev_vfs(conn.lookupByName("vm").XMLDesc(0)) == [old]
    path = os.path.join(cfg.state_dir, "claims.json")
    with open(path, "w") as f:
        f.write("{}")
    run_reconcile(cfg, rebuild=True)
    assert {c.vf: c.active for c in claims_of(cfg, vm.uuid)} == {old: True, new: False}


def _hostdev(vf, mac):
    d, b, s_f = vf.split(":")[0], vf.split(":")[1], vf.split(":")[2]
    s, f = s_f.split(".")
    return ("<interface type='hostdev' managed='yes'><mac address='%s'/><source><address "
            "type='pci' domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/></source></interface>"
            % (mac, d, b, s, f))


def test_reconcile_reports_hand_edited_metadata_one_line_each_and_handles_the_rest(
        cfg, conn, host, capsys):
    vfs = sorted(host.topology().vfs)
    records = [  # (mac, attributes of its <vfpick:nic>): four broken, one good
        ("52:54:00:00:00:01", "vf='%s'" % vfs[0]),                        # no pool
        ("52:54:00:00:00:02", "pool='nosuch' vf='%s'" % vfs[1]),          # unknown pool
        ("52:54:00:00:00:03", "pool='fast' vf='not-a-pci-address'"),      # bad VF address
        ("zz:54", "pool='fast' vf='%s'" % vfs[3]),                        # bad MAC
        ("52:54:00:00:00:05", "pool='fast' vf='%s'" % vfs[4]),            # good
    ]
    meta = ("<metadata><vfpick:domain xmlns:vfpick='http://vfpick.org/xmlns/libvirt/domain/1.0'>%s"
            "</vfpick:domain></metadata>" % "".join("<vfpick:nic mac='%s' %s/>" % (mac, attrs)
                                                    for mac, attrs in records))
    devices = "".join(_hostdev(vf, "52:54:00:00:00:0%d" % (n + 1)) for n, vf in enumerate(vfs[:5]))
    conn.defineXML(domain("edited", nics=0, head=meta, extra_devices=devices).decode())
    assert cli.main(["--config", host.config_path, "reconcile", "--connect", URI]) == 0
    out = capsys.readouterr().out.splitlines()
    invalid = [line for line in out if line.startswith("invalid: domain 'edited'")]
    assert len(invalid) == 4, out
    for words in ("has no pool", "names pool 'nosuch'", "has no valid VF address", "has a bad mac"):
        assert sum(words in line for line in invalid) == 1, (words, invalid)
    # the good record is handled: its VF is recorded for the domain
    assert [(c.vf, c.mac, c.pool) for c in claims(cfg)] == [(vfs[4], "52:54:00:00:00:05", "fast")]
    assert any(line.startswith("add %s (edited, pool fast)" % vfs[4]) for line in out)
