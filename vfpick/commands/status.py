"""`vfpick status` and `vfpick topology`: reports built from records, rendered as text or JSON."""

import json

from vfpick import config as configmod, names, pci
from vfpick.plan import policy

# The claim keys of `status --json` (the contract); pending and VF settings are internal.
CLAIM_KEYS = ("vf", "pf", "link", "pool", "domain", "uuid", "mac", "active", "rate_mbps",
              "peak_mbps", "min_rate_mbps")


def distinct_level(pool, facts):
    """The distinct level that applies to *pool*'s NICs of a domain: its metadata override
    (a policy naming the pool beats one without) or the pool's default. An invalid override is
    ignored here: resolve refuses such a domain, status and metrics only report."""
    level = pool.distinct
    if facts is None:
        return level
    for wanted in (None, pool.name):
        for pool_name, distinct, _strict, _numa in facts.policy_overrides:
            if pool_name == wanted and distinct in configmod.DISTINCT:
                level = distinct
    return level


def degraded_domains(topo, pools, claims, facts_of=lambda _uuid: None):
    """[{domain, uuid, pool, distinct, unit, macs}]: one row per domain and unit where two or
    more of the domain's NICs of a pool share what its distinct level (after the domain's
    override: facts_of(uuid) -> domscan facts or None) forbids. Pure."""
    groups = {}
    for claim in claims.values():
        pool = pools.get(claim.pool)
        if pool is None or claim.pf not in topo.link_of:
            continue
        level = distinct_level(pool, facts_of(claim.uuid))
        if level == "none":
            continue
        unit = policy.unit_of(topo, level, claim.pf)
        groups.setdefault((claim.domain, claim.uuid, claim.pool, level, unit), []).append(claim.mac)
    return [{"domain": d, "uuid": u, "pool": p, "distinct": level, "unit": unit,
             "macs": sorted(macs)}
            for (d, u, p, level, unit), macs in sorted(groups.items()) if len(macs) > 1]


def _counts(vfs, claims, busy):
    claimed = sum(1 for vf in vfs if vf in claims)
    in_use = sum(1 for vf in vfs if vf not in claims and vf in busy)
    return {"total": len(vfs), "claimed": claimed, "unmanaged_in_use": in_use,
            "free": len(vfs) - claimed - in_use}


def _summed(rows):
    # Pool and link figures are sums of the PF rows, so the table always adds up.
    rows = list(rows)
    return {key: sum(r[key] for r in rows) for key in ("total", "claimed", "unmanaged_in_use", "free")}


def status_report(config, topo, claims, busy, stale=frozenset(), drained=frozenset(),
                  lost=frozenset(), facts_of=lambda _uuid: None):
    """{"pools": [...], "claims": [...], "drained": [...], "degraded": [...]}: per pool, link
    and PF the counts; per claim the holder; the drained PFs; the domains whose NICs share a
    distinct unit (degraded_domains; facts_of as there).

    stale: UUIDs of domains libvirt no longer defines (vfpick.stale.stale_uuids).
    drained: PF addresses taken out of service (vfpick drain).
    lost: VFs of active claims their running domain no longer has (vfpick.stale.lost_vfs):
    reported ``active`` false, ``lost`` true.
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
        row["lost"] = claim.vf in lost
        # Self-healing history (heal = live): oldest first, bounded by records.HEAL_HISTORY.
        row["heal"] = [event._asdict() for event in claim.heal or ()]
        if row["lost"]:
            row["active"] = False  # the running guest does not use it
        claim_rows.append(row)
    drained_rows = []
    for addr in sorted(drained, key=pci.sort_key):
        pf = topo.pfs.get(addr)
        drained_rows.append({"pf": addr, "netdev": pf.netdev if pf else None,
                             "link": topo.link_of.get(addr), "present": pf is not None})
    return {"pools": pools, "claims": claim_rows, "drained": drained_rows,
            "degraded": degraded_domains(topo, config.pools, claims, facts_of)}


def _speed(speed):
    if not speed:
        return "?"
    return "%dG" % (speed // 1000) if speed >= 1000 and speed % 1000 == 0 else "%dM" % speed


def _table(rows, header):
    # A name with a newline or an escape sequence (a state file from before names were
    # checked) must not forge a row or repaint the terminal.
    rows = [[names.printable(str(cell)) for cell in row] for row in rows]
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
    for row in report.get("degraded", ()):
        lines.append("degraded: domain '%s' (%s): NICs %s of pool %s share %s %s (distinct=%s); "
                     "vfpick rebalance restores it where free VFs allow"
                     % (row["domain"], row["uuid"], ", ".join(row["macs"]), row["pool"],
                        row["distinct"], row["unit"], row["distinct"]))
    if report.get("degraded"):
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
            if c.get("lost"):
                notes.append("VF NOT IN DOMAIN (unplugged from the running guest: vfpick detach "
                             "%s %s --live, or restart the domain)" % (c["domain"], c["mac"]))
            active = "lost" if c.get("lost") else "yes" if c["active"] else "no"
            rows.append([c["domain"], c["uuid"], c["mac"], c["vf"], c["pf"], c["link"], c["pool"],
                         active, " ".join(notes)])
        lines += _table(rows, ["domain", "uuid", "mac", "vf", "pf", "link", "pool", "active", ""])
    else:
        lines.append("no claims")
    healed = [c for c in report["claims"] if c.get("heal")]
    if healed:
        lines.append("")
    for c in healed:
        lines.append("self-healing of NIC %s of '%s':" % (names.printable(c["mac"]),
                                                         names.printable(c["domain"])))
        for event in c["heal"]:
            lines.append("  " + names.printable(heal_line(event)))
    return "\n".join(lines)


def heal_line(event):
    """One HealEvent (as a dict) of a NIC's history, for the status table."""
    import time

    at = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(event["at"]))
    where = "VF %s (link %s)" % (event["from_vf"], event["from_link"] or "?")
    if event["outcome"] == "moved":
        return "%s moved %s -> VF %s (link %s)%s" % (
            at, where, event["to_vf"], event["to_link"] or "?",
            ": " + event["why"] if event["why"] else "")
    if event["outcome"] == "rolled_back":
        return "%s move from %s to VF %s rolled back: %s" % (at, where, event["to_vf"], event["why"])
    return "%s refused on %s: %s" % (at, where, event["why"])


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
