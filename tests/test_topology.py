import os

import pytest

from vfpick.host import simhost, topology


def test_two_dual_port_layout(host):
    topo = host.topology()
    assert list(topo.pfs) == ["0000:3b:00.0", "0000:3b:00.1", "0000:af:00.0", "0000:af:00.1"]
    pf = topo.pfs["0000:3b:00.0"]
    assert pf.netdev == "ens1f0" and pf.driver == "i40e" and pf.vendor == "0x8086"
    assert pf.numa_node == 0 and pf.num_vfs == 8 and len(pf.vfs) == 8
    assert pf.carrier is True and pf.speed == 25000
    assert topo.pfs["0000:af:00.1"].numa_node == 1
    vf = topo.vfs[pf.vfs[3]]
    assert (vf.pf, vf.index, vf.driver, vf.numa_node) == ("0000:3b:00.0", 3, "iavf", 0)
    assert vf.netdev == "ens1f0v3"
    # Four ports, four links, two cards.
    assert sorted(topo.links) == ["ens1f0", "ens1f1", "ens2f0", "ens2f1"]
    assert set(topo.card_of.values()) == {"0000:3b:00", "0000:af:00"}
    assert topo.node_cpus[1] == frozenset(range(8, 16))


def test_npar_partitions_of_one_port_are_one_link(make_host):
    topo = make_host("npar").topology()
    assert sorted(topo.links) == ["ens3f0+ens3f2", "ens3f1+ens3f3"]
    assert topo.links["ens3f0+ens3f2"].pfs == ("0000:5e:00.0", "0000:5e:00.2")


def test_link_sections_win_over_phys_port_id(host):
    topo = host.topology(links={"uplink-a": ("0000:3b:00.0", "0000:af:00.0")})
    assert topo.link_of["0000:3b:00.0"] == topo.link_of["0000:af:00.0"] == "uplink-a"
    assert topo.link_of["0000:3b:00.1"] == "ens1f1"


def test_mixed_speed_switch_id_and_missing_port_id(make_host):
    topo = make_host("mixed-speed").topology()
    assert topo.links["ens1f0np0"].speed == 100000
    assert topo.card_of["0000:3b:00.0"] == "switch b8cef60300aa0001"
    assert topo.pfs["0000:af:00.0"].phys_port_id is None
    assert topo.link_of["0000:af:00.0"] == "ens2f0"


def test_down_link_and_unknown_numa(make_host):
    topo = make_host("link-down").topology()
    assert topo.links["ens1f1"].up is False and topo.links["ens1f1"].speed is None
    assert topo.pfs["0000:af:00.0"].numa_node == -1


def test_vfio_bound_vf_has_no_netdev(make_host):
    spec = {"cards": [{"bus": "3b", "pfs": [{"netdev": "ens1f0", "port": 0, "vfs": 4, "vfio": [1]}]}]}
    topo = make_host(spec).topology()
    vfs = [topo.vfs[a] for a in topo.pfs["0000:3b:00.0"].vfs]
    assert [(v.driver, v.netdev) for v in vfs][1] == ("vfio-pci", None)
    assert vfs[0].netdev == "ens1f0v0"


@pytest.mark.parametrize("attr", ["speed", "phys_port_id", "carrier", "numa_node"])
def test_unreadable_attribute_is_none(host, attr):
    # A directory in place of the file reads as EISDIR: unreadable, like EINVAL on real sysfs.
    if attr == "numa_node":
        path = os.path.join(host.sysfs, "bus/pci/devices/0000:3b:00.0/numa_node")
    else:
        path = os.path.join(host.sysfs, "class/net/ens1f0", attr)
    os.unlink(path)
    os.mkdir(path)
    pf = host.topology().pfs["0000:3b:00.0"]
    value = {"speed": pf.speed, "phys_port_id": pf.phys_port_id, "carrier": pf.carrier,
             "numa_node": pf.numa_node}[attr]
    assert value in (None, -1)


def test_carrier_unreadable_falls_back_to_operstate(host):
    path = os.path.join(host.sysfs, "class/net/ens1f0/carrier")
    os.unlink(path)
    assert host.topology().links["ens1f0"].up is True
    simhost.set_carrier(host.sysfs, "ens1f0", False)
    os.unlink(path)
    assert host.topology().links["ens1f0"].up is False


def test_not_a_vf_is_none(host):
    assert topology.physfn(host.sysfs, "0000:3b:00.0") is None
    assert topology.read_vf(host.sysfs, "0000:3b:00.0") is None
    assert topology.read_vf(host.sysfs, "0000:99:00.0") is None
    assert topology.physfn(host.sysfs, "0000:3c:00.2") == "0000:3b:00.0"
    assert topology.vf_index(host.sysfs, "0000:3b:00.0", "0000:3c:00.2") == 2


def test_bench_host_is_1024_vfs(make_host):
    topo = make_host("bench-1024").topology()
    assert len(topo.pfs) == 8 and len(topo.vfs) == 1024
    assert len(set(topo.card_of.values())) == 4


def test_light_discovery_matches_full_for_placement(make_host):
    host = make_host("mixed-speed")
    full = host.topology()
    light = topology.discover(host.sysfs, None, None, vf_details=False)
    assert list(light.vfs) == list(full.vfs)
    assert all((light.vfs[a].pf, light.vfs[a].index, light.vfs[a].numa_node)
               == (full.vfs[a].pf, full.vfs[a].index, full.vfs[a].numa_node) for a in full.vfs)
    assert light.links == full.links and light.card_of == full.card_of
