"""`vfpick status` and `vfpick topology`: reports built from records, rendered as text or JSON."""

import json

from vfpick import pci

# The claim keys of `status --json` (the contract); pending and VF settings are internal.
CLAIM_KEYS = ("vf", "pf", "link", "pool", "domain", "uuid", "mac", "active", "rate_mbps",
              "min_rate_mbps")


def _counts(vfs, claims, busy):
    claimed = sum(1 for vf in vfs if vf in claims)
    in_use = sum(1 for vf in vfs if vf not in claims and vf in busy)
    return {"total": len(vfs), "claimed": claimed, "unmanaged_in_use": in_use,
            "free": len(vfs) - claimed - in_use}


def _summed(rows):
    # Pool and link figures are sums of the PF rows, so the table always adds up.
    rows = list(rows)
    return {key: sum(r[key] for r in rows) for key in ("total", "claimed", "unmanaged_in_use", "free")}


def status_report(config, topo, claims, busy, stale=frozenset(), drained=frozenset()):
    """{"pools": [...], "claims": [...], "drained": [...]}: per pool, link and PF the counts;
    per claim the holder; the drained PFs.

    stale: UUIDs of domains libvirt no longer defines (vfpick.stale.stale_uuids).
    drained: PF addresses taken out of service (vfpick drain).
    """
    pools = []
    for pool in config.pools.values():
        links = {}
        for pf_addr in pool.pfs:
            pf = topo.pfs.get(pf_addr)
            if pf is None:
                continue
            link = topo.links[topo.link_of[pf_addr]]
            entry = links.setdefault(link.name, {
                "name": link.name, "up": link.up, "speed": link.speed, "pfs": []})
            vfs = [vf for vf in pf.vfs if vf in topo.vfs]
            entry["pfs"].append(dict({"pf": pf_addr, "netdev": pf.netdev, "numa_node": pf.numa_node,
                                      "card": topo.card_of[pf_addr], "drained": pf_addr in drained},
                                     **_counts(vfs, claims, busy)))
        for entry in links.values():
            entry.update(_summed(entry["pfs"]))
            entry["drained"] = all(pf["drained"] for pf in entry["pfs"])
        pools.append(dict({"name": pool.name, "distinct": pool.distinct, "strict": pool.strict,
                           "numa": pool.numa, "policy": pool.policy, "nic_rate": pool.nic_rate,
                           "guarantee": pool.guarantee, "pcie_affinity": pool.pcie_affinity,
                           "links": list(links.values()),
                           "missing": list(pool.missing)},
                          **_summed(links.values())))
    claim_rows = []
    for claim in sorted(claims.values(), key=lambda c: (c.domain, pci.sort_key(c.vf))):
        row = {field: getattr(claim, field) for field in CLAIM_KEYS}
        row["present"] = claim.vf in topo.vfs
        link = topo.links.get(claim.link)
        row["link_up"] = link.up if link else None
        row["stale"] = claim.uuid in stale
        row["drained"] = claim.pf in drained
        claim_rows.append(row)
    drained_rows = []
    for addr in sorted(drained, key=pci.sort_key):
        pf = topo.pfs.get(addr)
        drained_rows.append({"pf": addr, "netdev": pf.netdev if pf else None,
                             "link": topo.link_of.get(addr), "present": pf is not None})
    return {"pools": pools, "claims": claim_rows, "drained": drained_rows}


def _speed(speed):
    if not speed:
        return "?"
    return "%dG" % (speed // 1000) if speed >= 1000 and speed % 1000 == 0 else "%dM" % speed


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join("%%-%ds" % w for w in widths)
    return [(fmt % tuple(map(str, r))).rstrip() for r in [header] + rows]


def render_status(report):
    lines = []
    for pool in report["pools"]:
        lines.append("pool %s: %d VFs, %d claimed, %d free  (distinct=%s%s numa=%s policy=%s)" % (
            pool["name"], pool["total"], pool["claimed"], pool["free"], pool["distinct"],
            " strict" if pool["strict"] else "", pool["numa"], pool["policy"]))
        rows = []
        for link in pool["links"]:
            for pf in link["pfs"]:
                bar = "#" * pf["claimed"] + "." * pf["free"] if pf["total"] <= 40 else ""
                state = ("up" if link["up"] else "DOWN") + (" drained" if pf["drained"] else "")
                rows.append(["  " + link["name"], state, _speed(link["speed"]),
                             pf["pf"], pf["netdev"] or "-", pf["numa_node"], pf["claimed"],
                             pf["free"], bar])
        if rows:
            lines += _table(rows, ["  link", "state", "speed", "pf", "netdev", "numa", "claimed",
                                   "free", ""])
        for name in pool["missing"]:
            lines.append("  MISSING PF %s: listed in the config, not on this host (renamed or "
                         "removed?); the pool works with the PFs present" % name)
        lines.append("")
    for pf in report["drained"]:
        lines.append("drained: PF %s (%s)%s" % (
            pf["netdev"] or "-", pf["pf"], ", link %s" % pf["link"] if pf["present"] else
            ", not present (vfpick undrain %s)" % pf["pf"]))
    if report["drained"]:
        lines.append("")
    if report["claims"]:
        rows = []
        for c in report["claims"]:
            notes = []
            if not c["present"]:
                notes.append("VF GONE")
            if c["link_up"] is False:
                notes.append("LINK DOWN")
            if c["stale"]:
                notes.append("STALE (domain undefined: vfpick reconcile)")
            if c["drained"]:
                notes.append("ON DRAINED PF")
            rows.append([c["domain"], c["uuid"], c["mac"], c["vf"], c["pf"], c["link"], c["pool"],
                         "yes" if c["active"] else "no", " ".join(notes)])
        lines += _table(rows, ["domain", "uuid", "mac", "vf", "pf", "link", "pool", "active", ""])
    else:
        lines.append("no claims")
    return "\n".join(lines)


def topology_report(topo, claims):
    pfs = []
    for addr, pf in topo.pfs.items():
        d = pf._asdict()
        d["link"] = topo.link_of[addr]
        d["card"] = topo.card_of[addr]
        d["vfs"] = [dict(topo.vfs[vf]._asdict(), holder=(claims[vf].domain if vf in claims else None))
                    for vf in pf.vfs if vf in topo.vfs]
        pfs.append(d)
    links = [dict(link._asdict(), pfs=list(link.pfs)) for link in topo.links.values()]
    nodes = {str(n): sorted(cpus) for n, cpus in sorted(topo.node_cpus.items())}
    return {"pfs": pfs, "links": links, "numa_nodes": nodes}


_BASIS = {
    "phys_port_id": "same phys_port_id %s",
    "phys_port_name": "devlink port name: %s",
    "link_section": "[link %s] in the config",
    "pf": "the PF %s alone (no phys_port_id, no devlink port name)",
}


def render_topology(report):
    lines = ["NUMA nodes: %s" % (", ".join(report["numa_nodes"]) or "none")]
    for link in report["links"]:
        lines.append("link %s: %s %s  (identity: %s)" % (
            link["name"], "up" if link["up"] else "DOWN", _speed(link["speed"]),
            _BASIS.get(link["basis"], "%s") % link["evidence"]))
        for pf in (p for p in report["pfs"] if p["link"] == link["name"]):
            held = sum(1 for v in pf["vfs"] if v["holder"])
            vfio = sum(1 for v in pf["vfs"] if v["driver"] == "vfio-pci")
            lines.append("  pf %s %-10s card %s numa %s driver %s  VFs %s/%s (%d held, %d on vfio-pci)%s" % (
                pf["addr"], pf["netdev"] or "-", pf["card"], pf["numa_node"], pf["driver"] or "-",
                pf["num_vfs"], pf["total_vfs"], held, vfio,
                "  port_name %s" % pf["phys_port_name"] if pf["phys_port_name"] else ""))
            if pf["pcie"]:
                lines.append("    pcie %s" % " > ".join(pf["pcie"]))
            if pf["representors"]:
                lines.append("    switchdev: %d VF/SF representors in net/ (not the uplink)"
                             % pf["representors"])
            if pf["ports"] > 1:
                lines.append("    MULTI-PORT: one PCI function drives %d ports; vfpick cannot tell "
                             "which port a VF uses (counted as one link)" % pf["ports"])
            for vf in pf["vfs"]:
                if vf["holder"]:
                    lines.append("    vf %s #%s -> %s" % (vf["addr"], vf["index"], vf["holder"]))
    return "\n".join(lines)


def to_json(report):
    return json.dumps(report, indent=2, sort_keys=False)
