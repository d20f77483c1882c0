"""``vfpick rebalance``: gather the inputs, ask the pure planner, apply domain by domain.

The plan is vfpick/plan/rebalance.py (pure); moving one domain is vfpick/moves.py (reserve the new
VFs beside the old ones, redefine through libvirt without the claims lock, settle or roll
back; a domain that starts meanwhile is left alone: its claims decide, not our listing).
With --live, a running domain whose every NIC may move live (failover pairs; plain VFs beside
a NIC on a distinct link with --allow-nic-gap) is movable too, and vfpick/livemove.py moves
its NICs one at a time.
"""

from collections import namedtuple

from vfpick import moves, resolver
from vfpick.plan import rebalance
from vfpick.host import topology
from vfpick.domain import virt
from vfpick.commands import Report
from vfpick.errors import DomainChanged, DomainRunning, VfpickError
from vfpick.where import where


def _domains(config, conn, claims, topo, live=False, allow_gap=False):
    """({uuid: rebalance.Domain} of every domain holding claims that libvirt knows, {uuid:
    why} of the running ones that stay, frozenset of the running ones that move live).
    With *live*, a running domain is movable when every NIC it holds may move live."""
    from vfpick import livemove
    from vfpick.hostdev import DomainXml

    libvirt_error = virt.libvirt_error()
    out, stays, running = {}, {}, set()
    for uuid in sorted({c.uuid for c in claims.values()}):
        try:
            seen = virt.facts(virt.by_uuid(conn, uuid))
            active, persistent, live_xml = seen.active, seen.persistent, seen.live_xml
            doc = DomainXml.parse(seen.config_xml if persistent else live_xml)
        except (libvirt_error, VfpickError):
            continue  # gone or unreadable: not ours to move now (the planner keeps it fixed)
        rules = {}
        for name, pool in config.pools.items():
            rules[name] = resolver.effective(pool, doc.overrides(name))
        held = [c for c in claims.values() if c.uuid == uuid]
        movable = persistent and not active and not any(c.active for c in held)
        if live and active:
            nics = {n.vf: n for n in livemove.vf_nics(live_xml).values()}
            why = [("NIC %s is not in its live XML" % c.mac) if c.vf not in nics else
                   livemove.may_move(nics[c.vf], held, allow_gap) for c in held]
            why = [w for w in why if w]
            if why:
                stays[uuid] = why[0]
            else:
                movable = True
                running.add(uuid)
        out[uuid] = rebalance.Domain(uuid, seen.name, movable, rules,
                                     doc.numa_nodes(topo.node_cpus))
    return out, stays, frozenset(running)


def _per_gbit(load):
    return float(load) * 1000


def figure_line(label, figures):
    """The report's line of rebalance.Figures: its busiest link, by rate or by claims."""
    if figures.busiest is None:
        return "%s: no claims on an up link" % label
    if figures.by_rate:
        text = "%s: busiest link by rate %s, %d claims, %d Mb/s on %g Gb/s (%.1f %% of its speed)" % (
            label, figures.busiest, figures.claims, figures.mbps, figures.speed / 1000,
            float(figures.load) * 100)
        if figures.optimum is not None:
            text += ", %+.1f %% over the optimum's bound" % (
                rebalance.over(figures.load, figures.optimum) * 100)
        return text
    text = "%s: busiest link %s, %d claims on %g Gb/s (%.3f per Gb/s)" % (
        label, figures.busiest, figures.claims, figures.speed / 1000, _per_gbit(figures.load))
    if figures.optimum is not None:
        text += ", %+.1f %% over the optimum" % (rebalance.over(figures.load, figures.optimum) * 100)
    return text


def optimum_line(plan):
    """The report's line of the plan's optimum (a lower bound when it weighs by rate)."""
    if plan.before.by_rate:
        return ("optimum (lower bound by rate): %.1f %% of the busiest link's speed (no placement "
                "keeping every domain's NICs on distinct units does better; NICs of different "
                "rates may not reach it)" % (float(plan.optimum) * 100))
    return ("optimum: %.3f claims per Gb/s on the busiest link (the best placement keeping every "
            "domain's NICs on distinct units)" % _per_gbit(plan.optimum))


def _move_line(verb, m, live=False):
    return "%s %s NIC %s: %s -> %s%s" % (verb, m.domain, m.mac, where(m.vf, m.link),
                                          where(m.to_vf, m.to_link), " live" if live else "")


Gathered = namedtuple("Gathered", "store topo domains drained plan running stays allow_gap",
                      defaults=(frozenset(), {}, False))
Gathered.__doc__ = """What apply() needs: the store, topology, {uuid: rebalance.Domain}, drained
PFs and the rebalance.Plan made from them; running: the running domains it moves live;
stays: {uuid: why} of the running ones --live leaves where they are."""


def gather(config, conn, max_moves=None, live=False, allow_gap=False):
    """Reads the claims, then asks libvirt (without the lock), then plans; changes nothing."""
    store = resolver.store_for(config)
    topo = topology.for_config(config)
    snapshot = store.snapshot()
    claims = dict(snapshot.mapping())
    drained = frozenset(snapshot.drained())
    domains, stays, running = _domains(config, conn, claims, topo, live, allow_gap)
    plan = rebalance.plan(topo, config.pools, claims, resolver.running_vfs(config), domains,
                          max_moves=max_moves, avoid=drained)
    return Gathered(store, topo, domains, drained, plan, running, stays, allow_gap)


def apply(config, conn, gathered, out):
    """Moves each planned domain with moves.move_stopped_domain, one line each appended to the list
    *out*; returns (status, NICs, domains moved).

    The plan is a listing from the past: moves.py checks again, under the claims lock, that
    each domain is still stopped and defined as it was, so one that started meanwhile is left
    alone whatever the plan said."""
    from vfpick import livemove

    plan = gathered.plan
    status, moved, domains_moved = 0, 0, 0
    for uuid in _in_order(plan.moves):
        mine = [m for m in plan.moves if m.uuid == uuid]
        targets = {m.mac: m.to_vf for m in mine}
        try:
            if uuid in gathered.running:
                for done in livemove.move_running_domain(config, conn, uuid, targets,
                                                 allow_gap=gathered.allow_gap,
                                                 store=gathered.store, topo=gathered.topo):
                    for warning in done.warnings:
                        out.append("warning: %s" % warning)
            else:
                moves.move_stopped_domain(config, conn, uuid, targets=targets, store=gathered.store,
                                  topo=gathered.topo)
        except (DomainRunning, DomainChanged) as e:
            out.append("left alone: %s" % e)
            continue
        except VfpickError as e:
            # A live move stops at the failing NIC: the ones before it have moved.
            out.append("not moved: %s" % e)
            status = 1
            continue
        for m in mine:
            out.append(_move_line("repaired" if m.repair else "moved", m, uuid in gathered.running)
                       + (" (restores distinct)" if m.repair else ""))
        moved += len(mine)
        domains_moved += 1
    return status, moved, domains_moved


def cmd_rebalance(config, uri, dry_run=False, max_moves=None, live=False, allow_gap=False):
    """Report.status: 0, or 1 when libvirt refused a definition or a live move."""
    out = []
    if max_moves is not None and max_moves < 0:
        raise VfpickError("--max-moves wants a count of NICs, 0 or more (got %d)" % max_moves)
    conn = virt.connect(uri)
    try:
        gathered = gather(config, conn, max_moves, live, allow_gap)
        plan = gathered.plan
        if plan.optimum is not None:
            out.append(optimum_line(plan))
        out.append(figure_line("before", plan.before))
        for note in plan.notes:
            out.append("note: %s" % note)
        for line in plan.unrepaired:
            out.append("not distinct: %s" % line)
        for uuid, why in sorted(gathered.stays.items()):
            out.append("running, not moved live: %s: %s" % (gathered.domains[uuid].name, why))
        for uuid in plan.skipped:
            out.append("left alone: %s: its VFs wait on a VF another move would free"
                      % gathered.domains[uuid].name)
        if dry_run:
            # Redundancy first: the repairs, then the balancing moves (applied in plan order).
            for m in plan.moves:
                if m.repair:
                    out.append(_move_line("would repair", m, m.uuid in gathered.running)
                               + " (restores distinct)")
            for m in plan.moves:
                if not m.repair:
                    out.append(_move_line("would move", m, m.uuid in gathered.running))
            out.append(figure_line("after (planned)", plan.after))
            out.append("dry run: would move %d NIC(s) of %d domain(s); nothing changed"
                      % (len(plan.moves), len({m.uuid for m in plan.moves})))
            return Report(tuple(out))
        status, moved, domains_moved = apply(config, conn, gathered, out)
    finally:
        virt.close(conn)
    after = rebalance.figures(gathered.topo, config.pools,
                              dict(gathered.store.snapshot().mapping()),
                              resolver.running_vfs(config), gathered.domains, gathered.drained)
    out.append(figure_line("after", after))
    out.append("moved %d NIC(s) of %d domain(s)" % (moved, domains_moved))
    return Report(tuple(out), status=status)


def _in_order(plan_moves):
    seen = []
    for m in plan_moves:
        if m.uuid not in seen:
            seen.append(m.uuid)
    return seen
