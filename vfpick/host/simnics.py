"""Simulated hosts for the NIC drivers operators run, as the kernel driver exposes them.

Each preset is a simhost spec (see vfpick/host/simhost.py) written from what the driver really
implements: ndo_get_phys_port_id, a devlink physical port (phys_port_name ``p<N>``: the
physical port on bnxt_en, the PCI function on mlx5/ice), a switch id (phys_switch_id: the
devlink port's switch_id or ndo_get_port_parent_id) and switchdev representors. The facts
and their kernel sources are in docs/hardware.md; tests/test_hardware.py checks the links,
cards, netdevs and speeds vfpick derives from each.

Switch ids stand in for the PCIe Device Serial Number (bnxt_en, ice, i40e, ixgbe) or the
NIC system image GUID (mlx5); one value per card.
"""

_INTEL = "0x8086"


def _pfs(names, speed, vfs=8, **extra):
    """One PF per name, each on its own port (port = position)."""
    return [dict({"netdev": name, "port": i, "speed": speed, "vfs": vfs}, **extra)
            for i, name in enumerate(names)]


PRESETS = {
    # ice, E810-XXVDA2 (2x25G). No ndo_get_phys_port_id; devlink port p<pf_id>; switch id DSN.
    "ice-e810": {"cards": [
        {"bus": "3b", "driver": "ice", "rates": "both", "vf_driver": "iavf", "vendor": _INTEL, "device": "0x159b",
         "vf_device": "0x1889", "switch_id": "0c42a1fffe5e8a10", "port_name": "function",
         "pfs": _pfs(["ens1f0np0", "ens1f1np1"], 25000, port_id=False)}]},
    # ice, E810-CQDA2 with the 4x25G port option: four PFs, each its own port, p0..p3.
    "ice-e810-breakout": {"cards": [
        {"bus": "3b", "driver": "ice", "rates": "both", "vf_driver": "iavf", "vendor": _INTEL, "device": "0x1592",
         "vf_device": "0x1889", "switch_id": "0c42a1fffe5e8a20", "port_name": "function",
         "pfs": _pfs(["ens1f0np0", "ens1f1np1", "ens1f2np2", "ens1f3np3"], 25000,
                     port_id=False)}]},
    # ice in switchdev mode: VF representors (pf<pf_id>vf<N>) sit in the PF's net/; left to
    # the kernel (no udev rule) they are eth0...
    "ice-e810-switchdev": {"cards": [
        {"bus": "3b", "driver": "ice", "rates": "both", "vf_driver": "iavf", "vendor": _INTEL, "device": "0x159b",
         "vf_device": "0x1889", "switch_id": "0c42a1fffe5e8a30", "port_name": "function",
         "eswitch": "switchdev", "rep_name": "eth{pf}{vf}",
         "pfs": _pfs(["ens1f0np0", "ens1f1np1"], 25000, vfs=4, port_id=False)}]},
    # i40e, X710-DA4 (4x10G). phys_port_id = the port MAC; devlink port (6.6+) with the
    # switch id and, since the naming fix, no phys_port_name.
    "i40e-x710": {"cards": [
        {"bus": "5e", "driver": "i40e", "vf_driver": "iavf", "vendor": _INTEL, "device": "0x1572",
         "vf_device": "0x154c", "switch_id": "3cfdfeffff9c5e00", "port_name": None,
         "pfs": _pfs(["ens2f0", "ens2f1", "ens2f2", "ens2f3"], 10000)}]},
    # i40e, XL710-QDA2 (2x40G).
    "i40e-xl710": {"cards": [
        {"bus": "5e", "driver": "i40e", "vf_driver": "iavf", "vendor": _INTEL, "device": "0x1583",
         "vf_device": "0x154c", "switch_id": "3cfdfeffff9c5e10", "port_name": None,
         "pfs": _pfs(["ens2f0", "ens2f1"], 40000)}]},
    # i40e NPAR (X710 on a Dell NDC): 2 ports x 4 partitions; partitions of a port share
    # the port MAC, hence phys_port_id.
    "i40e-x710-npar": {"cards": [
        {"bus": "5e", "driver": "i40e", "vf_driver": "iavf", "vendor": _INTEL, "device": "0x1572",
         "vf_device": "0x154c", "switch_id": "3cfdfeffff9c5e20", "port_name": None,
         "pfs": [{"netdev": "eno%d" % (fn + 1), "port": fn % 2, "speed": 10000, "vfs": 4}
                 for fn in range(8)]}]},
    # mlx5, ConnectX-5 (2x25G), legacy SR-IOV. No ndo_get_phys_port_id; devlink port
    # p<PCI function>; switch id = the NIC's system image GUID, one per card.
    "mlx5-cx5": {"cards": [
        {"bus": "af", "numa": 1, "driver": "mlx5_core", "rates": "both", "vf_driver": "mlx5_core",
         "vendor": "0x15b3", "device": "0x1017", "vf_device": "0x1018",
         "switch_id": "b8cef60300aa0010", "port_name": "function",
         "pfs": _pfs(["ens3f0np0", "ens3f1np1"], 25000, port_id=False)}],
        "nodes": {"0": "0-7", "1": "8-15"}},
    # mlx5, ConnectX-6 Dx (2x100G), switchdev: the uplink representor keeps the PF's name
    # (p0/p1); VF representors pf<N>vf<M> share net/, named by the vendor's udev rule
    # ens3f0_0..: they sort before the uplink ens3f0np0.
    "mlx5-cx6-switchdev": {"cards": [
        {"bus": "af", "driver": "mlx5_core", "rates": "both", "vf_driver": "mlx5_core", "vendor": "0x15b3",
         "device": "0x101d", "vf_device": "0x101e", "switch_id": "b8cef60300aa0020",
         "port_name": "function", "eswitch": "switchdev", "rep_name": "ens3f{pf}_{vf}",
         "pfs": _pfs(["ens3f0np0", "ens3f1np1"], 100000, vfs=4, port_id=False)}]},
    # bnxt_en, BCM57414 (2x25G) in NPAR: 8 partitions, functions 0,2,4,6 on port 0 and
    # 1,3,5,7 on port 1. No ndo_get_phys_port_id; the devlink port is p<pf.port_id>, the
    # physical port, so partitions of one port say the same name. Switch id: the DSN.
    "bnxt-npar": {"cards": [
        {"bus": "3b", "driver": "bnxt_en", "rates": "both", "vf_driver": "bnxt_en", "vendor": "0x14e4",
         "device": "0x16d7", "vf_device": "0x16dc", "switch_id": "0a0b0c0d0e0f1011",
         "port_name": "port",
         "pfs": [{"netdev": "ens1f%dnp%d" % (fn, fn % 2), "port": fn % 2, "speed": 25000,
                  "vfs": 4, "port_id": False} for fn in range(8)]}]},
    # bnxt_en in switchdev mode (no NPAR): representors pf<function>vf<N> in the PF's net/.
    "bnxt-switchdev": {"cards": [
        {"bus": "3b", "driver": "bnxt_en", "rates": "both", "vf_driver": "bnxt_en", "vendor": "0x14e4",
         "device": "0x16d7", "vf_device": "0x16dc", "switch_id": "0a0b0c0d0e0f1021",
         "port_name": "port", "eswitch": "switchdev", "rep_name": "ens1f{pf}_{vf}",
         "pfs": _pfs(["ens1f0np0", "ens1f1np1"], 25000, vfs=4, port_id=False)}]},
    # qede, FastLinQ QL41000 (2x25G) in NPAR: 4 partitions. Upstream qede has no
    # ndo_get_phys_port_id and qed registers no devlink port: nothing says which port a
    # partition is on; only a [link] section can.
    "qede-npar": {"cards": [
        {"bus": "d8", "driver": "qede", "rates": "both", "vf_driver": "qede", "vendor": "0x1077",
         "device": "0x8070", "vf_device": "0x8090", "port_name": None,
         "pfs": [{"netdev": "ens4f%d" % fn, "port": fn % 2, "speed": 25000, "vfs": 4,
                  "port_id": False} for fn in range(4)]}]},
    # ixgbe, 82599ES (2x10G): no port id, no port name, no switch id (kernels before the
    # devlink port of 6.15, which adds the switch id only).
    "ixgbe-82599": {"cards": [
        {"bus": "86", "driver": "ixgbe", "vf_driver": "ixgbevf", "vendor": _INTEL,
         "device": "0x10fb", "vf_device": "0x10ed", "port_name": None,
         "pfs": _pfs(["ens5f0", "ens5f1"], 10000, port_id=False, total_vfs=63)}]},
    # igb, I350-T4 (4x1G): nothing; at most 7 VFs per port.
    "igb-i350": {"cards": [
        {"bus": "02", "driver": "igb", "vf_driver": "igbvf", "vendor": _INTEL,
         "device": "0x1521", "vf_device": "0x1520", "port_name": None,
         "pfs": _pfs(["eno1", "eno2", "eno3", "eno4"], 1000, vfs=7, port_id=False,
                     total_vfs=7)}]},
    # mlx4, ConnectX-3 Pro (2x40G): ONE PCI function drives both ports (netdevs ens6 and
    # ens6d1, dev_port 0 and 1), each with its own phys_port_id; a VF's port is set by the
    # mlx4_core num_vfs module parameter, which sysfs does not show.
    "mlx4-cx3": {"cards": [
        {"bus": "07", "driver": "mlx4_core", "vf_driver": "mlx4_core", "vendor": "0x15b3",
         "device": "0x1007", "vf_device": "0x1004", "port_name": None,
         "pfs": [{"netdev": "ens6", "ports": ["ens6d1"], "port": 1, "speed": 40000,
                  "vfs": 8}]}]},
}
