"""Real NIC layouts (vfpick/host/simnics.py): the links, cards, netdevs and speeds vfpick derives.

Each row is what the kernel driver exposes (docs/hardware.md cites the sources) and what
vfpick must make of it: NPAR partitions of one port are one link, switchdev representors
are never the PF's netdev, drivers that say nothing leave each PF its own link.
"""

import os

import pytest

from clitools import assert_user_error, domain, hostdev_vfs, vfpick
from vfpick import config as configmod
from vfpick.host import simhost, topology
from vfpick.errors import ConfigError

# preset: ({link: (basis, [netdevs])}, number of cards, link speed, representors per PF, ports)
CASES = {
    "ice-e810": ({"ens1f0np0": ("phys_port_name", ["ens1f0np0"]),
                  "ens1f1np1": ("phys_port_name", ["ens1f1np1"])}, 1, 25000, 0, 1),
    "ice-e810-breakout": ({"ens1f%dnp%d" % (i, i): ("phys_port_name", ["ens1f%dnp%d" % (i, i)])
                           for i in range(4)}, 1, 25000, 0, 1),
    "ice-e810-switchdev": ({"ens1f0np0": ("phys_port_name", ["ens1f0np0"]),
                            "ens1f1np1": ("phys_port_name", ["ens1f1np1"])}, 1, 25000, 4, 1),
    "i40e-x710": ({"ens2f%d" % i: ("phys_port_id", ["ens2f%d" % i]) for i in range(4)},
                  1, 10000, 0, 1),
    "i40e-xl710": ({"ens2f0": ("phys_port_id", ["ens2f0"]), "ens2f1": ("phys_port_id", ["ens2f1"])},
                   1, 40000, 0, 1),
    "i40e-x710-npar": ({"eno1+eno3+eno5+eno7": ("phys_port_id", ["eno1", "eno3", "eno5", "eno7"]),
                        "eno2+eno4+eno6+eno8": ("phys_port_id", ["eno2", "eno4", "eno6", "eno8"])},
                       1, 10000, 0, 1),
    "mlx5-cx5": ({"ens3f0np0": ("phys_port_name", ["ens3f0np0"]),
                  "ens3f1np1": ("phys_port_name", ["ens3f1np1"])}, 1, 25000, 0, 1),
    "mlx5-cx6-switchdev": ({"ens3f0np0": ("phys_port_name", ["ens3f0np0"]),
                            "ens3f1np1": ("phys_port_name", ["ens3f1np1"])}, 1, 100000, 4, 1),
    "bnxt-npar": ({"+".join("ens1f%dnp%d" % (f, p) for f in range(p, 8, 2)):
                   ("phys_port_name", ["ens1f%dnp%d" % (f, p) for f in range(p, 8, 2)])
                   for p in (0, 1)}, 1, 25000, 0, 1),
    "bnxt-switchdev": ({"ens1f0np0": ("phys_port_name", ["ens1f0np0"]),
                        "ens1f1np1": ("phys_port_name", ["ens1f1np1"])}, 1, 25000, 4, 1),
    # Nothing tells qede partitions apart: four "links" until a [link] section says otherwise.
    "qede-npar": ({"ens4f%d" % i: ("pf", ["ens4f%d" % i]) for i in range(4)}, 1, 25000, 0, 1),
    "ixgbe-82599": ({"ens5f0": ("pf", ["ens5f0"]), "ens5f1": ("pf", ["ens5f1"])}, 1, 10000, 0, 1),
    "igb-i350": ({"eno%d" % i: ("pf", ["eno%d" % i]) for i in range(1, 5)}, 1, 1000, 0, 1),
    "mlx4-cx3": ({"ens6": ("phys_port_id", ["ens6"])}, 1, 40000, 0, 2),
}


@pytest.mark.parametrize("preset", sorted(CASES))
def test_driver_layout_derives_links_cards_netdevs_speeds(make_host, preset):
    links, cards, speed, representors, ports = CASES[preset]
    topo = make_host(preset).topology()
    derived = {name: (link.basis, [topo.pfs[a].netdev for a in link.pfs])
               for name, link in topo.links.items()}
    assert derived == links
    assert len(set(topo.card_of.values())) == cards
    assert {link.speed for link in topo.links.values()} == {speed}
    assert all(link.up for link in topo.links.values())
    assert {pf.representors for pf in topo.pfs.values()} == {representors}
    assert {pf.ports for pf in topo.pfs.values()} == {ports}
    # Every VF is found under its PF, with the driver's VF driver bound.
    assert all(len(pf.vfs) == pf.num_vfs for pf in topo.pfs.values())
    assert {topo.vfs[vf].pf for pf in topo.pfs.values() for vf in pf.vfs} == set(topo.pfs)


@pytest.mark.parametrize("preset", ["mlx5-cx6-switchdev", "bnxt-switchdev"])
def test_representors_that_sort_first_are_never_the_pf_netdev(make_host, preset):
    host = make_host(preset)
    pf_dir = os.path.join(host.sysfs, "bus/pci/devices/0000:%s:00.0" % (
        "af" if preset.startswith("mlx5") else "3b"))
    names = sorted(os.listdir(os.path.join(pf_dir, "net")))
    assert names[0].endswith("_0"), names  # the trap: a representor sorts first
    pf = host.topology().pfs[os.path.basename(os.path.realpath(pf_dir))]
    assert pf.netdev.endswith("np0") and pf.phys_port_name == "p0" and pf.speed > 0


def test_link_state_follows_the_uplink_not_a_representor(make_host):
    host = make_host("mlx5-cx6-switchdev")
    simhost.set_carrier(host.sysfs, "ens3f0np0", False)
    topo = host.topology()
    assert topo.links["ens3f0np0"].up is False and topo.links["ens3f0np0"].speed is None
    assert topo.links["ens3f1np1"].up is True


@pytest.mark.parametrize("name, physical, representor", [
    ("p0", True, False), ("p12", True, False), ("p1s3", True, False),
    ("pf0vf0", False, True), ("pf1sf7", False, True), ("c1pf0vf3", False, True),
    ("pf0", False, True), ("pf0vfr2", False, True), ("c1pf0", False, True),
    ("", False, False), (None, False, False), ("p", False, False), ("ps1", False, False),
    ("p0s", False, False), ("pf", False, False), ("pfvf1", False, False), ("c1", False, False),
    ("pf0vf", False, False), ("eth0", False, False), ("0", False, False), ("p0x", False, False),
])
def test_port_name_kinds(name, physical, representor):
    assert topology.is_physical_port_name(name) is physical
    assert topology.is_representor_name(name) is representor


def test_external_controller_representors_are_not_uplinks(make_host):
    spec = {"cards": [{"bus": "3b", "driver": "mlx5_core", "switch_id": "aa", "port_name": "function",
                       "eswitch": "switchdev", "rep_controller": 1, "rep_name": "a{pf}c1vf{vf}",
                       "pfs": [{"netdev": "p0", "port": 0, "vfs": 2, "port_id": False}]}]}
    host = make_host(spec)
    net = os.path.join(host.sysfs, "bus/pci/devices/0000:3b:00.0/net")
    with open(os.path.join(net, "a0c1vf1", "phys_port_name")) as f:
        assert f.read().strip() == "c1pf0vf1"
    pf = host.topology().pfs["0000:3b:00.0"]
    assert (pf.netdev, pf.representors) == ("p0", 2)


def test_split_port_name_is_a_physical_port(make_host):
    spec = {"cards": [{"bus": "3b", "switch_id": "bb", "port_name": "port", "pfs": [
        {"netdev": "a", "port": 0, "split": 0, "port_id": False},
        {"netdev": "b", "port": 0, "split": 1, "port_id": False}]}]}
    topo = make_host(spec).topology()
    assert sorted((l.name, l.evidence) for l in topo.links.values()) == [
        ("a", "switch bb port p0s0"), ("b", "switch bb port p0s1")]


def test_same_port_name_on_two_cards_is_two_links(make_host):
    spec = {"cards": [
        {"bus": bus, "driver": "bnxt_en", "switch_id": sid, "port_name": "port", "pfs": [
            {"netdev": "c%sf%d" % (bus, fn), "port": 0, "port_id": False} for fn in range(2)]}
        for bus, sid in (("3b", "01"), ("af", "02"))]}
    topo = make_host(spec).topology()
    assert sorted(topo.links) == ["c3bf0+c3bf1", "caff0+caff1"]


def test_port_name_without_switch_id_groups_by_pci_card(make_host):
    spec = {"cards": [{"bus": "3b", "port_name": "port", "pfs": [
        {"netdev": "x%d" % fn, "port": fn % 2, "port_id": False} for fn in range(4)]}]}
    topo = make_host(spec).topology()
    assert {l.evidence for l in topo.links.values()} == {"0000:3b:00 port p0", "0000:3b:00 port p1"}


def test_bnxt_npar_distinct_link_strict_never_shares_a_cable(make_host):
    host = make_host("bnxt-npar")
    host.write_config(pools={"fast": "pfs = %s\nstrict = yes\n" % " ".join(host.netdevs())})
    vfs = hostdev_vfs(vfpick(host, "resolve", "-", input=domain(nics=2), check=0).stdout)
    topo = host.topology()
    ports = {topo.pfs[topo.vfs[vf].pf].phys_port_name for vf in vfs}
    assert ports == {"p0", "p1"}
    assert_user_error(vfpick(host, "resolve", "-", input=domain("three", nics=3)), "strict=yes")


def test_qede_npar_needs_link_sections(make_host):
    host = make_host("qede-npar")
    host.write_config(extra="[link port0]\npfs = ens4f0 ens4f2\n[link port1]\npfs = ens4f1 ens4f3\n")
    topo = topology.for_config(configmod.load(host.config_path))
    assert sorted(topo.links) == ["port0", "port1"]
    assert {l.basis for l in topo.links.values()} == {"link_section"}


@pytest.mark.parametrize("name, clash", [("ens1f0np0", "0000:3b:00.0"), ("ens1f1np1", "0000:3b:00.1")])
def test_link_section_named_like_a_derived_link_is_refused(make_host, name, clash):
    host = make_host("bnxt-switchdev")
    with pytest.raises(ConfigError) as e:
        host.write_config(extra="[link %s]\npfs = ens1f0np0 ens1f1np1\n" % name)
    message = str(e.value)
    assert host.config_path in message
    assert "[link %s]" % name in message and clash in message


def test_link_section_named_like_a_representor_is_allowed(make_host):
    # A representor's name is not a link name: only the uplink's is.
    host = make_host("bnxt-switchdev")
    config = host.write_config(extra="[link ens1f0_0]\npfs = ens1f0np0 ens1f1np1\n")
    assert list(config.links) == ["ens1f0_0"]


def test_renamed_netdev_colliding_with_a_section_keeps_two_links(make_host):
    host = make_host("ixgbe-82599")
    topo = topology.discover(host.sysfs, None, {"ens5f0": ("0000:86:00.1",)})
    assert sorted(topo.links) == ["0000:86:00.0", "ens5f0"]
    assert topo.links["ens5f0"].pfs == ("0000:86:00.1",)


@pytest.mark.parametrize("preset, uplinks", [
    ("mlx5-cx6-switchdev", ["ens3f0np0", "ens3f1np1"]),
    ("bnxt-switchdev", ["ens1f0np0", "ens1f1np1"]),
])
def test_hook_sends_trust_to_the_uplink_not_a_representor(make_host, preset, uplinks):
    import io

    from vfpick import hook

    host = make_host(preset)
    host.write_config(pools={"fast": "pfs = %s\ntrust = on\n" % " ".join(host.netdevs())})
    xml = vfpick(host, "resolve", "-", input=domain("bond", nics=2), check=0).stdout
    from fakenetlink import FakeNetlink

    nl, err = FakeNetlink(), io.StringIO()
    for netdev in host.netdevs():  # the uplinks: a representor is no link the fake knows
        nl.add_link(netdev, num_vfs=64)
    code = hook.run(["bond", "prepare", "begin", "-"], stdin=io.BytesIO(xml), stdout=io.BytesIO(),
                    stderr=err, config_path=host.config_path, netlink_factory=lambda: nl)
    assert code == 0, err.getvalue()
    assert sorted(name for name, _, _, _ in nl.calls) == uplinks


def test_topology_shows_how_each_link_was_derived(make_host):
    import json

    host = make_host("bnxt-npar")
    host.write_config()
    report = json.loads(vfpick(host, "topology", "--json", check=0).stdout)
    assert {(l["basis"], l["evidence"]) for l in report["links"]} == {
        ("phys_port_name", "switch 0a0b0c0d0e0f1011 port p0"),
        ("phys_port_name", "switch 0a0b0c0d0e0f1011 port p1")}
    text = vfpick(host, "topology", check=0).stdout.decode()
    assert text.count("(identity: devlink port name: switch 0a0b0c0d0e0f1011 port p") == 2


@pytest.mark.parametrize("preset, extra, words", [
    ("i40e-x710-npar", "", "identity: same phys_port_id 005e1e0000"),
    ("qede-npar", "[link port0]\npfs = ens4f0 ens4f2\n", "identity: [link port0] in the config"),
    ("igb-i350", "", "identity: the PF 0000:02:00.0 alone"),
    ("mlx4-cx3", "", "MULTI-PORT: one PCI function drives 2 ports"),
    ("mlx5-cx6-switchdev", "", "switchdev: 4 VF/SF representors"),
])
def test_topology_text_names_the_basis(make_host, preset, extra, words):
    host = make_host(preset)
    host.write_config(extra=extra)
    assert words in vfpick(host, "topology", check=0).stdout.decode()
