"""``vfpick rebalance``: gather the inputs, ask the pure planner, apply domain by domain.

The plan is vfpick/rebalance.py (pure); moving one domain is vfpick/moves.py (reserve the new
VFs beside the old ones, redefine through libvirt without the claims lock, settle or roll
back; a domain that starts meanwhile is left alone: its claims decide, not our listing).
"""

import sys
from collections import namedtuple

from vfpick import moves, rebalance, resolver, topology, virt
from vfpick.errors import DomainChanged, DomainRunning, VfpickError


def _domains(config, conn, claims, topo):
    """{uuid: rebalance.Domain} of every domain holding claims that libvirt knows."""
    from vfpick.hostdev import DomainXml

    libvirt_error = virt.libvirt_error()
    out = {}
    for uuid in sorted({c.uuid for c in claims.values()}):
        try:
            dom = conn.lookupByUUIDString(uuid)
            active, persistent = bool(dom.isActive()), bool(dom.isPersistent())
            doc = DomainXml.parse(virt.inactive_xml(dom) if persistent else
                                  dom.XMLDesc(0).encode("utf-8"))
        except (libvirt_error, VfpickError):
            continue  # gone or unreadable: not ours to move now (the planner keeps it fixed)
        rules = {}
        for name, pool in config.pools.items():
            distinct, strict, numa = resolver.effective(pool, doc.overrides(name))
            rules[name] = rebalance.Rule(distinct, strict, numa)
        held = [c for c in claims.values() if c.uuid == uuid]
        movable = persistent and not active and not any(c.active for c in held)
        out[uuid] = rebalance.Domain(uuid, dom.name(), movable, rules,
                                     doc.numa_nodes(topo.node_cpus))
    return out


def _per_gbit(load):
    return float(load) * 1000


def _figure(label, figures):
    if figures.busiest is None:
        return "%s: no claims on an up link" % label
    text = "%s: busiest link %s, %d claims on %g Gb/s (%.3f per Gb/s)" % (
        label, figures.busiest, figures.claims, figures.speed / 1000, _per_gbit(figures.load))
    if figures.optimum is not None:
        text += ", %+.1f %% over the optimum" % (rebalance.over(figures.load, figures.optimum) * 100)
    return text


def _move_line(verb, m):
    return "%s %s NIC %s: VF %s (link %s) -> VF %s (link %s)" % (
        verb, m.domain, m.mac, m.vf, m.link, m.to_vf, m.to_link)


Gathered = namedtuple("Gathered", "store topo domains drained plan")
Gathered.__doc__ = """What apply() needs: the store, topology, {uuid: rebalance.Domain}, drained
PFs and the rebalance.Plan made from them."""


def gather(config, conn, max_moves=None):
    """Reads the claims, then asks libvirt (without the lock), then plans; changes nothing."""
    store = resolver.store_for(config)
    topo = topology.for_config(config)
    snapshot = store.snapshot()
    claims = dict(snapshot.mapping())
    drained = frozenset(snapshot.drained())
    domains = _domains(config, conn, claims, topo)
    plan = rebalance.plan(topo, config.pools, claims, resolver.running_vfs(config), domains,
                          max_moves=max_moves, avoid=drained)
    return Gathered(store, topo, domains, drained, plan)


def apply(config, conn, gathered, out):
    """Moves each planned domain with moves.move_domain; returns (status, NICs, domains moved).

    The plan is a listing from the past: moves.py checks again, under the claims lock, that
    each domain is still stopped and defined as it was, so one that started meanwhile is left
    alone whatever the plan said."""
    plan = gathered.plan
    status, moved, domains_moved = 0, 0, 0
    for uuid in _in_order(plan.moves):
        mine = [m for m in plan.moves if m.uuid == uuid]
        try:
            moves.move_domain(config, conn, uuid, targets={m.mac: m.to_vf for m in mine},
                              store=gathered.store, topo=gathered.topo)
        except (DomainRunning, DomainChanged) as e:
            out.write("left alone: %s\n" % e)
            continue
        except VfpickError as e:
            out.write("not moved: %s\n" % e)
            status = 1
            continue
        for m in mine:
            out.write(_move_line("repaired" if m.repair else "moved", m)
                      + (" (restores distinct)\n" if m.repair else "\n"))
        moved += len(mine)
        domains_moved += 1
    return status, moved, domains_moved


def cmd_rebalance(config, uri, dry_run=False, max_moves=None, out=None):
    """Returns the exit status: 0, or 1 when libvirt refused a definition."""
    out = sys.stdout if out is None else out
    if max_moves is not None and max_moves < 0:
        raise VfpickError("--max-moves wants a count of NICs, 0 or more (got %d)" % max_moves)
    conn = virt.connect(uri)
    try:
        gathered = gather(config, conn, max_moves)
        plan = gathered.plan
        if plan.optimum is not None:
            out.write("optimum: %.3f claims per Gb/s on the busiest link (the best placement "
                      "keeping every domain's NICs on distinct units)\n" % _per_gbit(plan.optimum))
        out.write(_figure("before", plan.before) + "\n")
        for note in plan.notes:
            out.write("note: %s\n" % note)
        for line in plan.unrepaired:
            out.write("not distinct: %s\n" % line)
        for uuid in plan.skipped:
            out.write("left alone: %s: its VFs wait on a VF another move would free\n"
                      % gathered.domains[uuid].name)
        if dry_run:
            # Redundancy first: the repairs, then the balancing moves (applied in plan order).
            for m in plan.moves:
                if m.repair:
                    out.write(_move_line("would repair", m) + " (restores distinct)\n")
            for m in plan.moves:
                if not m.repair:
                    out.write(_move_line("would move", m) + "\n")
            out.write(_figure("after (planned)", plan.after) + "\n")
            out.write("dry run: would move %d NIC(s) of %d domain(s); nothing changed\n"
                      % (len(plan.moves), len({m.uuid for m in plan.moves})))
            return 0
        status, moved, domains_moved = apply(config, conn, gathered, out)
    finally:
        conn.close()
    after = rebalance.figures(gathered.topo, config.pools,
                              dict(gathered.store.snapshot().mapping()),
                              resolver.running_vfs(config), gathered.domains, gathered.drained)
    out.write(_figure("after", after) + "\n")
    out.write("moved %d NIC(s) of %d domain(s)\n" % (moved, domains_moved))
    return status


def _in_order(plan_moves):
    seen = []
    for m in plan_moves:
        if m.uuid not in seen:
            seen.append(m.uuid)
    return seen
