"""Moves (vfpick/moves.py) and `vfpick drain`/`undrain` against the real system libvirtd.

Domains are defined with `vfpick define`, moved or drained, and redefined by vfpick through
libvirt; then `virsh start` shows that vfpick's prepare hook accepts the new definition (the
start gets past vfpick and fails only at libvirt's passthrough check: this host has no IOMMU)
and activates exactly the new VFs. The env fixture (hook installed, state recorder) is
test_e2e_libvirt's.
"""

import pytest

import libvirtd as lv
from clitools import hostdev_vfs
from test_e2e_libvirt import PASSTHROUGH_ERROR, env, start_error  # noqa: F401 (fixture)
from vfpick import config as configmod, moves, virt


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
        move = moves.move_domain(cfg, conn, name, avoid={leave})
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
