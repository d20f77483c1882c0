"""A simulated SR-IOV host: a sysfs tree in the real kernel layout, written under a directory.

Tests, the demo and operators without hardware point ``sysfs_root`` at it. The layout follows
the kernel's, links and all, so discovery code has one path for real and simulated hosts:

    devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/{sriov_totalvfs,virtfn0 -> ../0000:3c:00.0,..}
    devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/net/ens1f0/{carrier,speed,phys_port_id,..}
    bus/pci/devices/0000:3b:00.0 -> ../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0
    class/net/ens1f0 -> ../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/net/ens1f0
    devices/system/node/node0/cpulist

A spec is plain data (JSON-compatible):

    {"nodes": {"0": "0-7", "1": "8-15"},
     "cards": [{"bus": "3b", "numa": 0, "driver": "i40e", "vf_driver": "iavf",
                "vendor": "0x8086", "device": "0x158b", "switch_id": null,
                "pfs": [{"netdev": "ens1f0", "port": 0, "vfs": 8, "speed": 25000,
                         "carrier": true, "port_id": true, "vfio": [0, 1]}]}]}

Per PF: ``port`` groups NPAR partitions (same port -> same phys_port_id); ``port_id: false``
models drivers without phys_port_id; ``speed: null`` or a down carrier writes -1; ``vfio`` lists
VF indexes bound to vfio-pci (no ``net/``); ``numa`` overrides the card's node (-1 allowed);
``split`` makes the devlink port name ``p<port>s<split>``; ``ports`` lists more netdevs of the
same function (mlx4-style multi-port: ``dev_port`` 1, 2, .., each its own phys_port_id).

Per card, what the driver exposes (see docs/hardware.md and vfpick/host/simnics.py for the drivers):
``port_name``: ``"port"`` writes the devlink name ``p<port>`` (bnxt_en: the physical port),
``"function"`` writes ``p<function>`` (mlx5, ice: the port number is the PCI function), null
writes none (default: ``"port"`` when ``switch_id`` is set, for older specs);
``eswitch: "switchdev"`` adds one VF representor per VF in the PF's ``net/``, named by
``rep_name`` (a format with {netdev} {pf} {vf}; default ``{netdev}_{vf}``), whose
phys_port_name is ``pf<function>vf<N>`` (``c<K>pf..`` with ``rep_controller``);
``vf_device``: the VFs' PCI device id. Per PF, ``total_vfs`` overrides sriov_totalvfs
(default: at least 64).

Per card, where it sits in the PCIe hierarchy: ``parent``, the sysfs path components from the
host bridge down to the bridge above it (``["pci0000:00", "0000:00:01.0", "0000:01:00.0",
"0000:02:01.0"]``: root port, switch upstream port, switch downstream port); every bridge is
written as a PCI device too (class 0x0604). Default: a host bridge and root port of its own,
``pci0000:BB-1/0000:BB-1:00.0``. ``rates``: what the driver's ndo_set_vf_rate takes, for the
fake netlink of tests and demos (``driver_rates``): ``"both"`` (max_tx_rate and min_tx_rate),
``"max"`` (no min_tx_rate: igb, ixgbe, i40e, mlx4), ``"none"``; default ``"max"``.

Top level ``devices``: other PCI devices (a GPU, an NVMe) for PCIe affinity, each
``{"addr": "0000:03:00.0", "parent": [...], "class": "0x030200", "vendor": "0x10de",
"device": "0x20b5", "driver": "vfio-pci"}``.

Top level ``iommu``: absent or ``"off"`` writes no ``kernel/iommu_groups`` (IOMMU disabled),
``"on"`` puts every function in a group of its own (ACS everywhere), ``"shared"`` puts all
functions of a card, PFs and VFs, in one group (no ACS below the card's port).
"""

import json
import os

from vfpick.host import simnics

_DEFAULTS_CARD = {
    "numa": 0,
    "driver": "i40e",
    "vf_driver": "iavf",
    "vendor": "0x8086",
    "device": "0x158b",
    "switch_id": None,
    "eswitch": "legacy",
    "rep_name": "{netdev}_{vf}",
    "rep_controller": None,
    "vf_device": None,
    "parent": None,
    "rates": "max",
}
_DEFAULTS_DEVICE = {"class": "0x030200", "vendor": "0x10de", "device": "0x20b5", "driver": "vfio-pci"}
RATES = ("both", "max", "none")
_DEFAULTS_PF = {"vfs": 8, "speed": 25000, "carrier": True, "port_id": True, "vfio": (),
                "split": None, "ports": ()}

PRESETS = {
    # Two dual-port 25G cards on two NUMA nodes: the demo host.
    "two-dual-port": {
        "nodes": {"0": "0-7", "1": "8-15"},
        "cards": [
            {"bus": "3b", "numa": 0, "pfs": [
                {"netdev": "ens1f0", "port": 0}, {"netdev": "ens1f1", "port": 1}]},
            {"bus": "af", "numa": 1, "pfs": [
                {"netdev": "ens2f0", "port": 0}, {"netdev": "ens2f1", "port": 1}]},
        ],
    },
    # One card, two ports each split in two NPAR partitions (functions 0,2 on port 0; 1,3 on 1),
    # partitions of a port sharing phys_port_id as i40e's do (upstream qede has none: qede-npar).
    "npar": {
        "nodes": {"0": "0-7"},
        "cards": [
            {"bus": "5e", "driver": "qede", "vf_driver": "qede", "vendor": "0x1077",
             "device": "0x8070", "pfs": [
                 {"netdev": "ens3f0", "port": 0, "speed": 10000},
                 {"netdev": "ens3f1", "port": 1, "speed": 10000},
                 {"netdev": "ens3f2", "port": 0, "speed": 10000},
                 {"netdev": "ens3f3", "port": 1, "speed": 10000}]},
        ],
    },
    # Links of mixed speed: a 100G port beside a 25G one, and a 10G card without phys_port_id.
    "mixed-speed": {
        "nodes": {"0": "0-7", "1": "8-15"},
        "cards": [
            {"bus": "3b", "numa": 0, "driver": "mlx5_core", "vf_driver": "mlx5_core",
             "vendor": "0x15b3", "device": "0x101d", "switch_id": "b8cef60300aa0001", "pfs": [
                 {"netdev": "ens1f0np0", "port": 0, "speed": 100000, "vfs": 16},
                 {"netdev": "ens1f1np1", "port": 1, "speed": 25000, "vfs": 16}]},
            {"bus": "af", "numa": 1, "driver": "ixgbe", "vf_driver": "ixgbevf",
             "device": "0x10fb", "pfs": [
                 {"netdev": "ens2f0", "port": 0, "speed": 10000, "port_id": False, "vfs": 16},
                 {"netdev": "ens2f1", "port": 1, "speed": 10000, "port_id": False, "vfs": 16}]},
        ],
    },
    # Two dual-port cards with one cable pulled.
    "link-down": {
        "nodes": {"0": "0-7"},
        "cards": [
            {"bus": "3b", "pfs": [
                {"netdev": "ens1f0", "port": 0},
                {"netdev": "ens1f1", "port": 1, "carrier": False}]},
            {"bus": "af", "numa": -1, "pfs": [
                {"netdev": "ens2f0", "port": 0}, {"netdev": "ens2f1", "port": 1}]},
        ],
    },
}


# A GPU under a PCIe switch beside one dual-port NIC card; another card and an NVMe under root
# ports of their own (pcie_affinity puts the GPU domain's NICs on the first card).
_SWITCH = ["pci0000:00", "0000:00:01.0", "0000:01:00.0"]
PRESETS["gpu-switch"] = {
    "nodes": {"0": "0-7"},
    "devices": [
        {"addr": "0000:03:00.0", "parent": _SWITCH + ["0000:02:00.0"]},
        {"addr": "0000:09:00.0", "parent": ["pci0000:00", "0000:00:03.0"], "class": "0x010802",
         "vendor": "0x144d", "device": "0xa808", "driver": "nvme"},
    ],
    "cards": [
        {"bus": "04", "parent": _SWITCH + ["0000:02:01.0"], "driver": "ice", "vf_driver": "iavf",
         "device": "0x159b", "port_name": "function", "rates": "both", "pfs": [
             {"netdev": "ens1f0", "port": 0}, {"netdev": "ens1f1", "port": 1}]},
        {"bus": "06", "parent": ["pci0000:00", "0000:00:02.0"], "driver": "ice",
         "vf_driver": "iavf", "device": "0x159b", "port_name": "function", "rates": "both",
         "pfs": [{"netdev": "ens2f0", "port": 0}, {"netdev": "ens2f1", "port": 1}]},
    ],
}

PRESETS.update(simnics.PRESETS)


def bench_spec(cards=4, pfs_per_card=2, vfs_per_pf=128, nodes=2):
    """A big host for benchmarks: ``cards x pfs_per_card`` PFs of ``vfs_per_pf`` VFs each."""
    spec_cards = []
    for c in range(cards):
        spec_cards.append({
            "bus": "%02x" % (0x10 + c * 0x20),
            "numa": c % nodes,
            "pfs": [{"netdev": "ens%df%d" % (c + 1, p), "port": p, "vfs": vfs_per_pf}
                    for p in range(pfs_per_card)],
        })
    per_node = 8
    return {
        "nodes": {str(n): "%d-%d" % (n * per_node, n * per_node + per_node - 1) for n in range(nodes)},
        "cards": spec_cards,
    }


def load_spec(name_or_path):
    """A preset by name, or a JSON spec file."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if name_or_path.startswith("bench-"):
        return bench_spec(vfs_per_pf=int(name_or_path[len("bench-"):]) // 8)
    with open(name_or_path, encoding="utf-8") as f:
        return json.load(f)


def _write(path, text):
    with open(path, "w", encoding="ascii") as f:
        f.write(text + "\n")


def _symlink(target, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


class _Writer:
    def __init__(self, root):
        self.root = root
        self.sys = os.path.join(root, "sys") if os.path.basename(root) != "sys" else root

    def p(self, *parts):
        return os.path.join(self.sys, *parts)

    def driver(self, name):
        os.makedirs(self.p("bus", "pci", "drivers", name), exist_ok=True)

    def device(self, parent_rel, addr, vendor, device, numa, driver, pci_class="0x020000"):
        """Creates devices/<parent_rel>/<addr> and its bus/pci/devices link; returns rel path."""
        rel = os.path.join(parent_rel, addr)
        d = self.p("devices", rel)
        os.makedirs(d, exist_ok=True)
        _write(os.path.join(d, "vendor"), vendor)
        _write(os.path.join(d, "device"), device)
        _write(os.path.join(d, "numa_node"), str(numa))
        _write(os.path.join(d, "class"), pci_class)
        if driver:
            self.driver(driver)
            depth = rel.count("/") + 2  # devices/<rel> -> back up to sys/
            _symlink("../" * depth + "bus/pci/drivers/" + driver, os.path.join(d, "driver"))
        _symlink("../../../devices/" + rel, self.p("bus", "pci", "devices", addr))
        return rel

    def bridges(self, path, numa=0):
        """Writes the bridges of *path* (host bridge first) as PCI devices; returns the rel path."""
        rel = path[0]
        os.makedirs(self.p("devices", rel), exist_ok=True)
        for addr in path[1:]:
            if not os.path.isdir(self.p("devices", rel, addr)):
                self.device(rel, addr, "0x8086", "0x347a", numa, "pcieport", "0x060400")
            rel = os.path.join(rel, addr)
        return rel

    def iommu_groups(self, mode, functions):
        if mode == "off":
            return
        groups = {}
        for n, (card_no, rel) in enumerate(functions):
            groups.setdefault(card_no if mode == "shared" else n, []).append(rel)
        for group, members in enumerate(groups.values()):
            gdir = self.p("kernel", "iommu_groups", str(group))
            for rel in members:
                dev = self.p("devices", rel)
                _symlink(os.path.relpath(dev, os.path.join(gdir, "devices")),
                         os.path.join(gdir, "devices", os.path.basename(rel)))
                _symlink(os.path.relpath(gdir, dev), os.path.join(dev, "iommu_group"))

    def netdev(self, dev_rel, ifname, attrs):
        nd = self.p("devices", dev_rel, "net", ifname)
        os.makedirs(nd, exist_ok=True)
        for key, value in attrs.items():
            if value is not None:
                _write(os.path.join(nd, key), value)
        _symlink("../../../" + os.path.basename(dev_rel), os.path.join(nd, "device"))
        _symlink("../../devices/" + dev_rel + "/net/" + ifname, self.p("class", "net", ifname))


def _port_name(card, pf, fn):
    style = card.get("port_name", "port" if card["switch_id"] else None)
    if style is None:
        return None
    number = pf["port"] if style == "port" else fn
    return "p%d" % number + ("s%d" % pf["split"] if pf["split"] is not None else "")


def _port_id(domain, bus, port):
    return "%02x%02x%04x%02x" % (domain & 0xFF, bus, 0x1E00, port)


def build(root, spec):
    """Writes the simulated host for *spec* under *root* (``root/sys`` unless root ends in sys).

    Returns the sysfs root to put in ``sysfs_root``.
    """
    w = _Writer(root)
    os.makedirs(w.sys, exist_ok=True)
    for node, cpus in sorted((spec.get("nodes") or {"0": "0-7"}).items()):
        nd = w.p("devices", "system", "node", "node%s" % node)
        os.makedirs(nd, exist_ok=True)
        _write(os.path.join(nd, "cpulist"), cpus)
    os.makedirs(w.p("class", "net"), exist_ok=True)
    os.makedirs(w.p("bus", "pci", "devices"), exist_ok=True)
    functions = []  # (card number, devices/ relative path)
    for card_no, card_in in enumerate(spec["cards"]):
        card = dict(_DEFAULTS_CARD, **card_in)
        bus = int(str(card.get("bus", "%02x" % (0x10 + card_no * 0x20))), 16)
        domain = int(str(card.get("domain", "0")), 16)
        if card["parent"]:
            parent = w.bridges(card["parent"], card["numa"])
        else:
            bridge = "%04x:%02x:00.0" % (domain, bus - 1)
            parent = os.path.join("pci%04x:%02x" % (domain, bus - 1), bridge)
            os.makedirs(w.p("devices", parent), exist_ok=True)
        switchdev = card["eswitch"] == "switchdev"
        switch_id = card["switch_id"]
        vf_seq = 0
        for fn, pf_in in enumerate(card["pfs"]):
            pf = dict(_DEFAULTS_PF, **pf_in)
            numa = pf.get("numa", card["numa"])
            addr = "%04x:%02x:00.%d" % (domain, bus, fn)
            rel = w.device(parent, addr, card["vendor"], card["device"], numa, card["driver"])
            functions.append((card_no, rel))
            d = w.p("devices", rel)
            _write(os.path.join(d, "sriov_totalvfs"), str(pf.get("total_vfs") or max(pf["vfs"], 64)))
            _write(os.path.join(d, "sriov_numvfs"), str(pf["vfs"]))
            up = bool(pf["carrier"])
            speed = pf["speed"] if up and pf["speed"] is not None else -1
            link = {"carrier": "1" if up else "0", "operstate": "up" if up else "down"}
            for dev_port, ifname in enumerate([pf["netdev"]] + list(pf["ports"])):
                port = pf["port"] + dev_port
                w.netdev(rel, ifname, dict(
                    link, speed=str(speed), dev_port=str(dev_port),
                    phys_port_id=_port_id(domain, bus, port) if pf["port_id"] else None,
                    phys_switch_id=switch_id,
                    phys_port_name=_port_name(card, pf, fn),
                    address="3c:fd:fe:%02x:%02x:%02x" % (bus, fn * 4 + dev_port, card_no)))
            vfio = set(pf["vfio"])
            for index in range(pf["vfs"]):
                vf_bus = bus + 1 + vf_seq // 256
                vf_addr = "%04x:%02x:%02x.%d" % (domain, vf_bus, (vf_seq % 256) // 8, vf_seq % 8)
                vf_seq += 1
                vf_driver = "vfio-pci" if index in vfio else card["vf_driver"]
                vf_rel = w.device(parent, vf_addr, card["vendor"], card["vf_device"] or card["device"],
                                  numa, vf_driver)
                functions.append((card_no, vf_rel))
                _symlink("../" + vf_addr, os.path.join(w.p("devices", rel), "virtfn%d" % index))
                _symlink("../" + addr, os.path.join(w.p("devices", vf_rel), "physfn"))
                if index not in vfio:
                    w.netdev(vf_rel, "%sv%d" % (pf["netdev"], index), dict(link, dev_port="0"))
                if switchdev:
                    controller = card["rep_controller"]
                    w.netdev(rel, card["rep_name"].format(netdev=pf["netdev"], pf=fn, vf=index), dict(
                        carrier="1", operstate="up", speed="-1", dev_port="0",
                        phys_switch_id=switch_id,
                        phys_port_name=("c%d" % controller if controller is not None else "")
                        + "pf%dvf%d" % (fn, index)))
    for n, dev_in in enumerate(spec.get("devices") or ()):
        dev = dict(_DEFAULTS_DEVICE, **dev_in)
        rel = w.device(w.bridges(dev["parent"]), dev["addr"], dev["vendor"], dev["device"],
                       dev.get("numa", 0), dev["driver"], dev["class"])
        functions.append((len(spec["cards"]) + n, rel))
    w.iommu_groups(spec.get("iommu", "off"), functions)
    return w.sys


def driver_rates(spec):
    """{PF netdev: "both" | "max" | "none"}: what each PF's driver takes as VF rates (the
    card's ``rates``), to build a fake netlink that refuses what the driver would."""
    out = {}
    for card in spec["cards"]:
        rates = card.get("rates", _DEFAULTS_CARD["rates"])
        if rates not in RATES:
            raise ValueError("card rates %r is not one of %s" % (rates, ", ".join(RATES)))
        for pf in card["pfs"]:
            out[pf["netdev"]] = rates
    return out


def set_carrier(sysfs_root, ifname, up, speed=None):
    """Flips a simulated link, as pulling or plugging a cable would."""
    nd = os.path.join(sysfs_root, "class", "net", ifname)
    _write(os.path.join(nd, "carrier"), "1" if up else "0")
    _write(os.path.join(nd, "operstate"), "up" if up else "down")
    _write(os.path.join(nd, "speed"), str(speed if up and speed else -1))


def sample_config(sysfs_root, state_dir, spec, run_dir=None, config_dir=None, pool="fast"):
    """An INI text with one pool over every PF of *spec*, for demos and tests."""
    netdevs = [pf["netdev"] for card in spec["cards"] for pf in card["pfs"]]
    lines = [
        "[vfpick]",
        "state_dir = %s" % state_dir,
        "sysfs_root = %s" % sysfs_root,
    ]
    if run_dir:
        lines.append("libvirt_run_dir = %s" % run_dir)
    if config_dir:
        lines.append("libvirt_config_dir = %s" % config_dir)
    lines += ["", "[pool %s]" % pool, "pfs = %s" % " ".join(netdevs), ""]
    return "\n".join(lines)
