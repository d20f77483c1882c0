"""PCIe affinity on simulated hosts in the real sysfs layout: the PCIe path of a PF read from
where bus/pci/devices/ADDR resolves, shown by `vfpick topology`, and used by resolve to put a
GPU domain's NICs beside its GPU."""

import json
import os

import pytest

from clitools import domain
from vfpick import cli, resolver
from vfpick.host import simhost, topology
from vfpick.errors import PcieAffinityImpossible

GPU = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
       "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>\n")
NVME = GPU.replace("bus='0x03'", "bus='0x09'")


@pytest.mark.parametrize("preset,addr,path", [
    ("gpu-switch", "0000:04:00.0",
     ("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:01.0", "0000:04:00.0")),
    ("gpu-switch", "0000:06:00.1", ("pci0000:00", "0000:00:02.0", "0000:06:00.1")),
    ("gpu-switch", "0000:03:00.0",
     ("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:00.0", "0000:03:00.0")),
    ("two-dual-port", "0000:3b:00.1", ("pci0000:3a", "0000:3a:00.0", "0000:3b:00.1")),
    ("gpu-switch", "0000:77:00.0", ()),   # no such device
])
def test_pcie_path_from_the_sysfs_device_link(make_host, preset, addr, path):
    host = make_host(preset)
    assert topology.pcie_path(host.sysfs, addr) == path
    link = os.readlink(os.path.join(host.sysfs, "bus", "pci", "devices", addr)) if path else None
    assert link is None or link == "../../../devices/" + "/".join(path)


def test_bridges_are_pci_devices_too(make_host):
    host = make_host("gpu-switch")
    for bridge in ("0000:00:01.0", "0000:01:00.0", "0000:02:00.0", "0000:02:01.0"):
        with open(os.path.join(host.sysfs, "bus", "pci", "devices", bridge, "class")) as f:
            assert f.read().strip() == "0x060400"
    assert topology.all_pfs(host.sysfs) == ["0000:04:00.0", "0000:04:00.1", "0000:06:00.0",
                                            "0000:06:00.1"]


@pytest.mark.parametrize("devices,affinity,expect", [
    (GPU, "preferred", {"ens1f0", "ens1f1"}),       # the card under the GPU's switch
    (GPU, "required", {"ens1f0", "ens1f1"}),
    (NVME, "preferred", {"ens1f0", "ens1f1", "ens2f0", "ens2f1"}),  # shares no bridge: load
    ("", "required", {"ens1f0", "ens1f1", "ens2f0", "ens2f1"}),    # nothing to be near
])
def test_resolve_puts_nics_beside_the_gpu(make_host, devices, affinity, expect):
    host = make_host("gpu-switch")
    cfg = host.write_config(pools={"fast": "pfs = ens2f0 ens2f1 ens1f0 ens1f1\n"
                                           "pcie_affinity = %s\n" % affinity})
    links = set()
    for n in range(4):  # even after the GPU's card holds more than the other one
        result = resolver.resolve(cfg, domain("vm%d" % n, nics=2, extra_devices=devices))
        links.update(p.link for p in result.picks.values())
    assert links == expect


def test_required_affinity_refuses_in_one_line_and_claims_nothing(make_host):
    host = make_host("gpu-switch")
    cfg = host.write_config(pools={"fast": "pfs = ens2f0 ens2f1\npcie_affinity = required\n"})
    with pytest.raises(PcieAffinityImpossible) as e:
        resolver.resolve(cfg, domain("vm1", extra_devices=GPU))
    assert str(e.value) == (
        "pool 'fast' has no free VF on a PF that shares a PCIe bridge (root port or switch) with "
        "the domain's other PCI devices (0000:03:00.0) for NIC 1 of 1 (pcie_affinity=required); "
        "free one there or set pcie_affinity=preferred")
    assert resolver.store_for(cfg).snapshot().all() == []


def test_topology_shows_each_pfs_pcie_path(make_host, capsys):
    host = make_host("gpu-switch")
    host.write_config()
    assert cli.main(["--config", host.config_path, "topology"]) == 0
    out = capsys.readouterr().out
    assert "    pcie pci0000:00 > 0000:00:01.0 > 0000:01:00.0 > 0000:02:01.0 > 0000:04:00.0\n" in out
    assert cli.main(["--config", host.config_path, "topology", "--json"]) == 0
    pfs = {pf["addr"]: pf["pcie"] for pf in json.loads(capsys.readouterr().out)["pfs"]}
    assert pfs["0000:06:00.0"] == ["pci0000:00", "0000:00:02.0", "0000:06:00.0"]


@pytest.mark.parametrize("preset,expect", [
    ("igb-i350", {"eno1": "max", "eno2": "max", "eno3": "max", "eno4": "max"}),
    ("mlx5-cx5", {"ens3f0np0": "both", "ens3f1np1": "both"}),
    ("gpu-switch", {"ens1f0": "both", "ens1f1": "both", "ens2f0": "both", "ens2f1": "both"}),
    ("two-dual-port", {"ens1f0": "max", "ens1f1": "max", "ens2f0": "max", "ens2f1": "max"}),
])
def test_driver_rates_of_the_presets(preset, expect):
    assert simhost.driver_rates(simhost.load_spec(preset)) == expect


def test_a_bad_driver_rates_value_is_refused():
    with pytest.raises(ValueError, match="card rates 'min' is not one of both, max, none"):
        simhost.driver_rates({"cards": [{"rates": "min", "pfs": [{"netdev": "x"}]}]})
