"""Topology discovery: sysfs (under ``sysfs_root``) → Topology.

Attributes that are absent or unreadable are None: many drivers lack phys_port_id, and the
kernel answers EINVAL for carrier/speed on a down interface. Failing to list a PF's own
directory is an error naming its PCI address.
"""

import os
from types import MappingProxyType

from vfpick import cpulist, numbers, pci, safeio
from vfpick.errors import TopologyError
from vfpick.records import PF, VF, Link, Topology


def _read(path):
    try:
        return safeio.read_text(path, 4096, "ascii", "replace")[:4096].strip()
    except OSError:
        return None


def _read_int(path):
    return numbers.sysfs_int(_read(path))


def _link_name(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _netdevs(dev_dir):
    try:
        return sorted(os.listdir(os.path.join(dev_dir, "net")))
    except OSError:
        return []


_DIGITS = frozenset("0123456789")


def _number(text):
    """(leading decimal digits, rest); no ``re``: the hook imports this module."""
    i = 0
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    return text[:i], text[i:]


def is_physical_port_name(name):
    """True for a devlink physical port name: ``p<N>``, or ``p<N>s<M>`` for a split port."""
    if not name or name[0] != "p":
        return False
    port, rest = _number(name[1:])
    if not port:
        return False
    if not rest:
        return True
    sub, tail = _number(rest[1:])
    return rest[0] == "s" and bool(sub) and not tail


def is_representor_name(name):
    """True for a switchdev representor's phys_port_name.

    devlink names them ``pf<N>vf<M>``, ``pf<N>sf<M>``, ``pf<N>`` (a host PF seen from a
    SmartNIC), each with a ``c<K>`` prefix for an external controller; ice before devlink
    ports said ``pf<N>vfr<M>``.
    """
    if not name:
        return False
    if name[0] == "c":
        controller, name = _number(name[1:])
        if not controller:
            return False
    if not name.startswith("pf"):
        return False
    pf, rest = _number(name[2:])
    if not pf:
        return False
    if not rest:
        return True
    for tag in ("vfr", "vf", "sf"):
        if rest.startswith(tag):
            number, tail = _number(rest[len(tag):])
            return bool(number) and not tail
    return False


def uplinks(dev_dir):
    """(uplink netdevs, representor count) of a PF's ``net/``.

    In switchdev mode the PF's ``net/`` also holds its VF/SF representors: they are told
    apart by phys_port_name, never by how names sort. Uplinks with a devlink physical port
    name come first; more than one uplink left means a multi-port function (mlx4), ordered
    by dev_port.
    """
    names = _netdevs(dev_dir)
    if not names:
        return [], 0
    port_name = {n: _read(os.path.join(dev_dir, "net", n, "phys_port_name")) for n in names}
    ups = [n for n in names if not is_representor_name(port_name[n])]
    representors = len(names) - len(ups)
    if len(ups) > 1:
        physical = [n for n in ups if is_physical_port_name(port_name[n])]
        ups = physical or ups
    if len(ups) > 1:
        ups.sort(key=lambda n: (_read_int(os.path.join(dev_dir, "net", n, "dev_port")) or 0, n))
    return ups, representors


def is_pf(sysfs_root, addr):
    return os.path.exists(os.path.join(sysfs_root, "bus", "pci", "devices", addr, "sriov_totalvfs"))


physfn = pci.physfn


def vf_index(sysfs_root, pf_addr, vf_addr):
    """N of the PF's ``virtfnN`` that points at *vf_addr*, or None."""
    pf_dir = os.path.join(sysfs_root, "bus", "pci", "devices", pf_addr)
    try:
        entries = os.listdir(pf_dir)
    except OSError:
        return None
    for entry in entries:
        if entry.startswith("virtfn") and _link_name(os.path.join(pf_dir, entry)) == vf_addr:
            return numbers.whole(entry[len("virtfn"):], 0, 65535)
    return None


def read_vf(sysfs_root, addr, pf_addr=None, index=None, pf_numa=-1):
    """VF record for *addr*, or None when it is not a VF."""
    dev = os.path.join(sysfs_root, "bus", "pci", "devices", addr)
    if pf_addr is None:
        pf_addr = physfn(sysfs_root, addr)
        if pf_addr is None:
            return None
    if index is None:
        index = vf_index(sysfs_root, pf_addr, addr)
    numa = _read_int(os.path.join(dev, "numa_node"))
    netdevs = _netdevs(dev)
    return VF(addr=addr, pf=pf_addr, index=index,
              numa_node=pf_numa if numa is None else numa,
              driver=_link_name(os.path.join(dev, "driver")),
              netdev=netdevs[0] if netdevs else None)


def pcie_path(sysfs_root, addr):
    """The PCIe path of device *addr*: its sysfs device path below ``devices/`` as a tuple
    (``("pci0000:00", "0000:00:01.0", "0000:01:00.0", addr)``: host bridge, bridges down to
    the device), read from where ``bus/pci/devices/ADDR`` resolves; () when unknown."""
    link = os.path.join(sysfs_root, "bus", "pci", "devices", addr)
    try:
        real = os.path.realpath(link)
        base = os.path.realpath(os.path.join(sysfs_root, "devices"))
    except OSError:
        return ()
    if not real.startswith(base + os.sep) or not os.path.exists(real):
        return ()
    parts = tuple(real[len(base) + 1:].split(os.sep))
    if len(parts) < 2 or not parts[0].startswith("pci") or parts[-1] != addr:
        return ()
    return parts


def read_pf(sysfs_root, addr, with_vfs=True, vf_details=True):
    """PF record for *addr* (and its VFs), or None when it is not an SR-IOV PF.

    vf_details=False skips each VF's numa_node, driver and net/ (the VF takes its PF's node,
    driver and netdev are None): placement needs none of them, and on a 1024-VF host those
    reads are most of a resolve.
    """
    dev = os.path.join(sysfs_root, "bus", "pci", "devices", addr)
    if not os.path.exists(os.path.join(dev, "sriov_totalvfs")):
        return None, ()
    try:
        entries = os.listdir(dev)
    except OSError as e:
        raise TopologyError("cannot read PF %s: %s" % (addr, e.strerror)) from None
    virtfns = []
    for entry in entries:
        index = numbers.whole(entry[6:], 0, 65535) if entry.startswith("virtfn") else None
        if index is not None:
            vf_addr = pci.normalize(_link_name(os.path.join(dev, entry)) or "")
            if vf_addr:
                virtfns.append((index, vf_addr))
    virtfns.sort()
    ups, representors = uplinks(dev)
    netdev = ups[0] if ups else None
    net = os.path.join(dev, "net", netdev) if netdev else None

    def net_attr(name):
        return _read(os.path.join(net, name)) if net else None

    numa = _read_int(os.path.join(dev, "numa_node"))
    carrier = _read_int(os.path.join(net, "carrier")) if net else None
    speed = _read_int(os.path.join(net, "speed")) if net else None
    record = PF(
        addr=addr, netdev=netdev,
        driver=_link_name(os.path.join(dev, "driver")),
        vendor=_read(os.path.join(dev, "vendor")), device=_read(os.path.join(dev, "device")),
        numa_node=-1 if numa is None else numa,
        total_vfs=_read_int(os.path.join(dev, "sriov_totalvfs")),
        num_vfs=_read_int(os.path.join(dev, "sriov_numvfs")),
        vfs=tuple(vf for _, vf in virtfns),
        carrier=None if carrier is None else carrier == 1,
        operstate=net_attr("operstate"),
        speed=speed if speed is not None and speed > 0 else None,
        phys_port_id=net_attr("phys_port_id") or None,
        phys_switch_id=net_attr("phys_switch_id") or None,
        phys_port_name=net_attr("phys_port_name") or None,
        ports=max(1, len(ups)),
        representors=representors,
        pcie=pcie_path(sysfs_root, addr),
    )
    vfs = ()
    if with_vfs:
        # A VF counts only when its physfn points back: the hook judges existence the same way
        # (topology.physfn), so discovery and the hook never disagree about a half-gone VF.
        vfs = tuple(
            read_vf(sysfs_root, vf, addr, index, record.numa_node) if vf_details
            else VF(addr=vf, pf=addr, index=index, numa_node=record.numa_node, driver=None,
                    netdev=None)
            for index, vf in virtfns if physfn(sysfs_root, vf) == addr)
    return record, vfs


def all_pfs(sysfs_root):
    """Every SR-IOV PF on the host, in PCI order."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    try:
        entries = os.listdir(base)
    except OSError:
        return []
    found = [a for a in (pci.normalize(e) for e in entries) if a and is_pf(sysfs_root, a)]
    return sorted(found, key=pci.sort_key)


def link_up(pf):
    """Carrier when the kernel gives it; operstate otherwise (carrier reads EINVAL when down)."""
    if pf.carrier is not None:
        return pf.carrier
    return pf.operstate == "up"


def node_cpus(sysfs_root):
    base = os.path.join(sysfs_root, "devices", "system", "node")
    nodes = {}
    try:
        entries = os.listdir(base)
    except OSError:
        return nodes
    for entry in entries:
        node = numbers.whole(entry[4:], 0, 65535) if entry.startswith("node") else None
        if node is not None:
            cpus = cpulist.parse(_read(os.path.join(base, entry, "cpulist")))
            nodes[node] = cpus or frozenset()
    return nodes


def _pf_label(pf):
    return pf.netdev or pf.addr


def link_identity(pf, card, section=None):
    """(key, basis, evidence) of the link *pf* sits on; PFs with equal keys share a link.

    A ``[link]`` section wins; then phys_port_id (NPAR partitions of one port share it);
    then the devlink physical port name on its card (bnxt_en NPAR partitions have no
    phys_port_id but say ``p0``/``p1``); else the PF is its own link.
    """
    if section is not None:
        return ("section", section), "link_section", section
    if pf.phys_port_id:
        return ("port", pf.phys_switch_id or pci.card_of(pf.addr), pf.phys_port_id), \
            "phys_port_id", pf.phys_port_id
    if is_physical_port_name(pf.phys_port_name):
        return ("port_name", card, pf.phys_port_name), "phys_port_name", \
            "%s port %s" % (card, pf.phys_port_name)
    return ("pf", pf.addr), "pf", pf.addr


def discover(sysfs_root, pf_addrs=None, link_sections=None, vf_details=True):
    """Topology of *pf_addrs* (default: every SR-IOV PF on the host).

    link_sections: {name: PF addrs} from ``[link]`` sections. Link identity: see
    link_identity. Card: phys_switch_id when present, else the PCI address sans function.
    """
    link_sections = link_sections or {}
    if pf_addrs is None:
        pf_addrs = all_pfs(sysfs_root)
    pfs, vfs = {}, {}
    for addr in sorted(set(pf_addrs), key=pci.sort_key):
        record, pf_vfs = read_pf(sysfs_root, addr, vf_details=vf_details)
        if record is None:
            continue
        pfs[addr] = record
        for vf in pf_vfs:
            vfs[vf.addr] = vf

    link_of, card_of = {}, {}
    section_of = {addr: name for name, addrs in link_sections.items() for addr in addrs}
    groups = {}
    for addr, pf in pfs.items():
        card_of[addr] = ("switch " + pf.phys_switch_id) if pf.phys_switch_id else pci.card_of(addr)
        key, basis, evidence = link_identity(pf, card_of[addr], section_of.get(addr))
        groups.setdefault(key, (basis, evidence, []))[2].append(addr)

    links = {}
    for key, (basis, evidence, members) in groups.items():
        if basis == "link_section":
            name = key[1]
        else:
            name = "+".join(_pf_label(pfs[a]) for a in members)
            if name in link_sections:
                # A netdev renamed after the config was checked: never merge two links.
                name = "+".join(members)
        speeds = [pfs[a].speed for a in members if pfs[a].speed]
        links[name] = Link(name=name, pfs=tuple(members),
                           up=any(link_up(pfs[a]) for a in members),
                           speed=max(speeds) if speeds else None,
                           basis=basis, evidence=evidence)
        for addr in members:
            link_of[addr] = name

    return Topology(
        pfs=MappingProxyType(pfs), vfs=MappingProxyType(vfs),
        links=MappingProxyType(dict(sorted(links.items()))),
        link_of=MappingProxyType(link_of), card_of=MappingProxyType(card_of),
        node_cpus=MappingProxyType(node_cpus(sysfs_root)),
    )


def for_config(config, extra_pfs=()):
    """Topology of every PF the config names (pools and links)."""
    addrs = {a for pool in config.pools.values() for a in pool.pfs}
    addrs.update(a for pfs in config.links.values() for a in pfs)
    addrs.update(extra_pfs)
    # Placement and status need no per-VF driver/netdev/node reads (see read_pf).
    return discover(config.sysfs_root, addrs, config.links, vf_details=False)
