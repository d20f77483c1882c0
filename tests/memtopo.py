"""In-memory Topology records for pure policy tests (no sysfs, no I/O)."""

from types import MappingProxyType

from vfpick.records import PF, VF, Link, Topology


def build(cards, nodes=(0, 1)):
    """cards: [[port, ...], ...]; port: dict(vfs=4, speed=25000, up=True, numa=0, parts=1,
    name=None, pcie=[bridges above the PF, from "pciDDDD:BB" down]). Each NPAR partition of a port is its own PF on the same link."""
    pfs, vfs, links, link_of, card_of = {}, {}, {}, {}, {}
    bus = 0x10
    for c, ports in enumerate(cards):
        fn = 0
        vf_seq = 0
        for p, port in enumerate(ports):
            link_name = port.get("name") or "c%dp%d" % (c, p)
            members = []
            for part in range(port.get("parts", 1)):
                addr = "0000:%02x:00.%d" % (bus, fn)
                fn += 1
                numa = port.get("numa", 0)
                vf_addrs = []
                for i in range(port.get("vfs", 4)):
                    vf_addr = "0000:%02x:%02x.%d" % (bus + 1, vf_seq // 8, vf_seq % 8)
                    vf_seq += 1
                    vfs[vf_addr] = VF(vf_addr, addr, i, numa, "iavf", None)
                    vf_addrs.append(vf_addr)
                up = port.get("up", True)
                pfs[addr] = PF(addr, "%sp%d" % (link_name, part), "i40e", "0x8086", "0x158b", numa,
                               64, len(vf_addrs), tuple(vf_addrs), up, "up" if up else "down",
                               port.get("speed", 25000) if up else None, None, None, None,
                               pcie=tuple(port.get("pcie", ())) + (addr,) if "pcie" in port else ())
                link_of[addr] = link_name
                card_of[addr] = "card%d" % c
                members.append(addr)
            speed = port.get("speed", 25000) if port.get("up", True) else None
            links[link_name] = Link(link_name, tuple(members), port.get("up", True), speed)
        bus += 0x10
    node_cpus = {n: frozenset(range(n * 8, n * 8 + 8)) for n in nodes}
    return Topology(MappingProxyType(pfs), MappingProxyType(vfs), MappingProxyType(links),
                    MappingProxyType(link_of), MappingProxyType(card_of), MappingProxyType(node_cpus))
