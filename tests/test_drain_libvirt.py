"""Moves (vfpick/moves.py) and `vfpick drain`/`undrain` against the real system libvirtd.

Domains are defined with `vfpick define`, moved or drained, and redefined by vfpick through
libvirt; then `virsh start` shows that vfpick's prepare hook accepts the new definition (the
start gets past vfpick and fails only at libvirt's passthrough check: this host has no IOMMU)
and activates exactly the new VFs. The env fixture (hook installed, state recorder) is
test_e2e_libvirt's.
"""

import libvirtd as lv
from clitools import hostdev_vfs, vfpick
from test_e2e_libvirt import PASSTHROUGH_ERROR, start_error
from vfpick import config as configmod, moves
from vfpick.domain import virt


def nics_of(env, name):
    """[(mac, vf, vlan)] as libvirt has the domain."""
    from lxml import etree

    root = etree.fromstring(env.daemon.dumpxml(name, inactive=True).encode())
    vfs = hostdev_vfs(etree.tostring(root))
    return [(i.find("mac").get("address"), vf, i.find("vlan/tag").get("id"))
            for i, vf in zip(root.findall("devices/interface"), vfs)]


def define_vlan(env, nics=2):
    name = env.daemon.unique_name("mv")
    ifaces = "".join("\n    <interface type='network'><source network='fast'/>"
                     "<vlan><tag id='%d'/></vlan></interface>" % (200 + i) for i in range(nics))
    path = env.tmp / (name + ".xml")
    path.write_text(lv.domain_xml(name, devices=ifaces))
    env.daemon.track(name)
    env.cli("define", str(path), check=0)
    return name


def test_move_domain_redefines_through_libvirt_and_prepare_accepts_it(env):
    name = define_vlan(env)
    before = nics_of(env, name)
    topo = env.host.topology()
    leave = topo.vfs[before[0][1]].pf
    cfg = configmod.load(env.host.config_path)
    conn = virt.connect(lv.URI)
    try:
        move = moves.move_stopped_domain(cfg, conn, name, avoid={leave})
    finally:
        conn.close()
    after = nics_of(env, name)
    assert [(m.mac, m.old, m.new.vf) for m in move.nics] == [(before[0][0], before[0][1], after[0][1])]
    assert topo.vfs[after[0][1]].pf != leave and after[1] == before[1]
    assert [(mac, vlan) for mac, _, vlan in after] == [(mac, vlan) for mac, _, vlan in before]
    assert sorted(c["vf"] for c in env.claims(name)) == sorted(vf for _, vf, _ in after)
    err = start_error(env, name)
    assert PASSTHROUGH_ERROR in err and "vfpick" not in err
    assert env.state_at(name, "prepare begin")[-1] == sorted((vf, True) for _, vf, _ in after)


def test_drain_moves_stopped_domains_and_undrain_takes_picks_back(env):
    names = [define_vlan(env) for _ in range(3)]
    before = {n: nics_of(env, n) for n in names}
    topo = env.host.topology()
    pf = topo.vfs[before[names[0]][0][1]].pf
    netdev = topo.pfs[pf].netdev
    on_pf = [n for n in names if pf in {topo.vfs[vf].pf for _, vf, _ in before[n]}]
    state = open(env.state_path, "rb").read()

    proc = env.cli("drain", netdev, "--dry-run", check=0)
    assert proc.stdout.count(b"would move domain") == len(on_pf), proc.stdout
    assert open(env.state_path, "rb").read() == state
    assert {n: nics_of(env, n) for n in names} == before

    proc = env.cli("drain", netdev, check=0)
    assert ("drained PF %s (%s)" % (netdev, pf)).encode() in proc.stdout
    assert ("%d domain(s) moved, 0 running, 0 could not move" % len(on_pf)).encode() in proc.stdout
    assert not [c for c in env.claims() if c["pf"] == pf]
    for n in names:
        after = nics_of(env, n)
        assert pf not in {topo.vfs[vf].pf for _, vf, _ in after}
        assert [(m, v) for m, _, v in after] == [(m, v) for m, _, v in before[n]]  # MAC, VLAN
        assert (after == before[n]) == (n not in on_pf)  # only the domains there moved
        assert sorted(c["vf"] for c in env.claims(n)) == sorted(vf for _, vf, _ in after)
    moved = on_pf[0]
    err = start_error(env, moved)
    assert PASSTHROUGH_ERROR in err and "vfpick" not in err
    assert env.state_at(moved, "prepare begin")[-1] == sorted((vf, True) for _, vf, _ in
                                                              nics_of(env, moved))
    status = env.cli("status", "--json", check=0)
    assert b'"drained": [\n    {\n      "pf": "%s"' % pf.encode() in status.stdout

    env.cli("undrain", netdev, check=0)
    fresh = define_vlan(env, nics=1)
    assert topo.vfs[nics_of(env, fresh)[0][1]].pf == pf  # the emptiest PF again


def test_a_full_pool_leaves_the_domain_whole_and_a_second_drain_moves_it(env):
    name = define_vlan(env)
    before = nics_of(env, name)
    topo = env.host.topology()
    pf = topo.vfs[before[0][1]].pf
    free = len(topo.vfs) - len(env.claims())
    filler = lv.domain_xml("filler", devices="".join(
        "<interface type='network'><source network='fast'/></interface>" for _ in range(free)))
    vfpick(env.host, "resolve", "-", input=filler.encode(), check=0)  # claims only, no libvirt
    assert len(env.claims()) == len(topo.vfs)

    proc = env.cli("drain", pf, check=1)
    lines = sorted(proc.stderr.decode().splitlines(), key=lambda l: "filler" in l)
    assert len(lines) == 2, lines
    assert lines[0].startswith("vfpick: domain '%s' cannot leave PF" % name) and \
        "exhausted" in lines[0], lines
    assert lines[1].startswith("vfpick: domain 'filler' (") and \
        "libvirt has no such domain" in lines[1], lines
    assert nics_of(env, name) == before
    assert sorted(c["vf"] for c in env.claims(name)) == sorted(vf for _, vf, _ in before)

    env.cli("release", "filler", check=0)
    proc = env.cli("drain", pf, check=0)
    assert b"was already drained" in proc.stdout and b"1 domain(s) moved" in proc.stdout
    assert pf not in {topo.vfs[vf].pf for _, vf, _ in nics_of(env, name)}
