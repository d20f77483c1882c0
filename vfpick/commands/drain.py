"""`vfpick drain PF|LINK [--dry-run]` and `vfpick undrain PF|LINK`: maintenance of one PF or link.

Draining records the PFs in the state file (with the claims, under the same lock), so every
pick from then on avoids them; then each stopped domain holding VFs there is moved elsewhere
(vfpick/moves.py: the same pool, distinct rules kept, all or nothing per domain, redefined
through libvirt; redundancy first: its NICs that share a distinct unit move to a unit of their
own on the way, where one has a free VF). Running domains are never touched: they are listed with what to do. A
domain that cannot move is one problem; the others still move. The drain mark is written
first and stays when some domain could not move: running drain again retries those.
"""

from collections import namedtuple

from vfpick import config as configmod, moves, pci, resolver
from vfpick.host import topology
from vfpick.domain import virt
from vfpick.errors import DomainNotFound, DomainRunning, StartedDuringMove, VfpickError

Target = namedtuple("Target", "label pfs")
Target.__doc__ = """What the operator named. label: 'PF ens1f0 (0000:3b:00.0)' or 'link
uplink-a'. pfs: frozenset of PF addresses."""

Holder = namedtuple("Holder", "uuid name claims")
Holder.__doc__ = """A domain with claims on the target. claims: its Claims there."""

Report = namedtuple("Report", "target already moved running problems warnings live",
                    defaults=((),))
Report.__doc__ = """moved: tuple of moves.Move (planned ones in a dry run); running: tuple of
Holder; problems: one-line messages, one per domain that could not move (or a libvirt outage);
already: the target was drained before; live: (moves.Move, [livemove.Moved]) of the running
domains moved live (--live; planned only in a dry run)."""


def _pf_label(topo, addr):
    pf = topo.pfs.get(addr)
    return "%s (%s)" % (pf.netdev, addr) if pf is not None and pf.netdev else addr


def find_target(config, topo, name, drained=frozenset()):
    """The Target *name* means: a link of the pools' PFs (several PFs), else a PF by netdev or
    PCI address. A drained PF that is gone from the host is still found by its address, so it
    can be undrained."""
    link = topo.links.get(name)
    if link is not None and len(link.pfs) > 1:
        return Target("link %s" % name, frozenset(link.pfs))
    addr = configmod.pf_address(config.sysfs_root, name) if name else None
    if addr is None and pci.normalize(name or "") in drained:
        addr = pci.normalize(name)
    if addr is None and link is not None:
        addr = link.pfs[0]
    if addr is not None and (addr in topo.pfs or addr in drained):
        return Target("PF %s" % _pf_label(topo, addr), frozenset([addr]))
    links = ", ".join(n for n, l in topo.links.items() if len(l.pfs) > 1)
    raise VfpickError(
        "'%s' is neither a PF nor a link of vfpick's pools (PFs: %s%s); give a PF netdev name, "
        "PCI address or link name (see vfpick topology)"
        % (name, ", ".join(_pf_label(topo, a) for a in topo.pfs) or "none",
           "; links: " + links if links else ""))


def holders(claims, pfs):
    """Holder of every domain with a claim on one of *pfs*, by domain name."""
    out = {}
    for claim in claims:
        if claim.pf in pfs:
            out.setdefault(claim.uuid, []).append(claim)
    return sorted((Holder(uuid, cs[0].domain, tuple(cs)) for uuid, cs in out.items()),
                  key=lambda h: (h.name, h.uuid))


def drain(config, uri, name, dry_run=False, store=None, topo=None, live=False, allow_gap=False):
    """Drains *name*; returns a Report. VfpickError for an unknown target (nothing changed).
    live: running domains whose NICs there may move live do (livemove.py), one NIC at a time."""
    store = store or resolver.store_for(config)
    topo = topo or topology.for_config(config)
    snapshot = store.snapshot()
    target = find_target(config, topo, name, snapshot.drained())
    already = target.pfs <= snapshot.drained()
    if not dry_run and not already:
        with store.transaction() as claims:
            claims.set_drained(claims.drained() | target.pfs)
        snapshot = store.snapshot()
    avoid = target.pfs | snapshot.drained()
    found = holders(snapshot.all(), target.pfs)
    if not found:
        return Report(target, already, (), (), (), ())
    try:
        conn = virt.connect(uri)
    except VfpickError as e:
        state = "not drained (dry run)" if dry_run else "drained"
        return Report(target, already, (), (), ("%s; %s is %s, but none of its %d domain(s) "
                                                "was moved: run the drain again"
                                                % (e, target.label, state, len(found)),), ())
    moved, running, problems, warnings, lived = [], [], [], [], []
    try:
        planned = dict(snapshot.mapping())  # a dry run plans each domain after the previous ones
        busy = resolver.running_vfs(config)
        for holder in found:
            try:
                move = _drain_one(config, conn, holder, dry_run, planned, busy, avoid, store, topo)
            except StartedDuringMove as e:
                problems.append(str(e))
                continue
            except DomainRunning:
                if not live:
                    running.append(holder)
                    continue
                try:
                    done = _drain_live(config, conn, holder, dry_run, planned, busy, avoid,
                                       store, topo, allow_gap)
                except VfpickError as e:
                    problems.append("running domain '%s' stays on %s: %s"
                                    % (holder.name, target.label, e))
                    continue
                if dry_run:
                    planned = moves.apply_to(planned, done[0])
                lived.append(done)
                continue
            except DomainNotFound:
                problems.append(
                    "domain '%s' (%s) holds %s on %s, but libvirt has no such domain; drop its "
                    "claims with 'vfpick reconcile'" % (holder.name, holder.uuid,
                                                        ", ".join(c.vf for c in holder.claims),
                                                        target.label))
                continue
            except VfpickError as e:
                problems.append("domain '%s' cannot leave %s: %s" % (holder.name, target.label, e))
                continue
            except Exception as e:  # noqa: BLE001 - one domain's XML never stops the drain
                # Its claims are as they were (moves roll back on any failure); the others go on.
                problems.append("domain '%s' cannot leave %s: unexpected %s: %s" % (
                    holder.name, target.label, type(e).__name__, " ".join(str(e).split())[:200]))
                continue
            if not move.nics:
                problems.append(
                    "domain '%s' holds %s on %s, but its definition does not use it; drop the "
                    "claim with 'vfpick reconcile'" % (holder.name, ", ".join(
                        c.vf for c in holder.claims), target.label))
                continue
            if dry_run:
                planned = moves.apply_to(planned, move)
            moved.append(move)
            warnings.extend(move.warnings)
    finally:
        virt.close(conn)
    return Report(target, already, tuple(moved), tuple(running), tuple(problems), tuple(warnings),
                  tuple(lived))


def _drain_one(config, conn, holder, dry_run, planned, busy, avoid, store, topo):
    """The Move of one holder; DomainRunning when it runs (libvirt or its claims say so)."""
    if not dry_run:
        return moves.move_stopped_domain(config, conn, holder.uuid, avoid=avoid, store=store, topo=topo,
                                 repair=True)
    dom = virt.lookup(conn, holder.uuid)
    if any(c.active for c in planned.values() if c.uuid == holder.uuid):
        raise DomainRunning(moves.running_message(holder.name))
    try:
        data = moves.stopped_definition(dom, holder.name)
    except virt.libvirt_error() as e:
        raise VfpickError("libvirt cannot describe it: %s" % virt.error_message(e)) from None
    return moves.plan_move(config, topo, data, planned, busy, avoid=avoid, repair=True)


def _drain_live(config, conn, holder, dry_run, planned, busy, avoid, store, topo, allow_gap):
    """(moves.Move planned on the live XML, [livemove.Moved]) of a running holder; a
    VfpickError when one of its NICs there may not move live (nothing moved then) or a live
    move failed (the NICs before it moved; the message says what the domain runs on)."""
    from vfpick import livemove

    dom = virt.lookup(conn, holder.uuid)
    try:
        xml = virt.live_xml(dom)
    except virt.libvirt_error() as e:
        raise VfpickError("libvirt cannot describe it: %s" % virt.error_message(e)) from None
    held = [c for c in planned.values() if c.uuid == holder.uuid]
    nics = livemove.vf_nics(xml)
    for claim in holder.claims:
        nic = nics.get(claim.mac)
        why = "NIC %s is not in its live XML" % claim.mac if nic is None else \
            livemove.may_move(nic, held, allow_gap)
        if why:
            raise VfpickError(why)
    move = moves.plan_move(config, topo, xml, planned, busy, avoid=avoid)
    if dry_run or not move.nics:
        return move, []
    return move, livemove.move_running_domain(config, conn, holder.uuid,
                                      {m.mac: m.new.vf for m in move.nics},
                                      allow_gap=allow_gap, store=store, topo=topo)


def undrain(config, name, store=None, topo=None):
    """Puts *name* back in service; returns (Target, whether it was drained)."""
    store = store or resolver.store_for(config)
    topo = topo or topology.for_config(config)
    with store.transaction() as claims:
        target = find_target(config, topo, name, claims.drained())
        was = bool(target.pfs & claims.drained())
        claims.set_drained(claims.drained() - target.pfs)
    return target, was


def render(report, dry_run):
    """stdout lines of a drain report (problems and warnings go to stderr, by the CLI)."""
    label = report.target.label
    if report.already:
        lines = ["%s was already drained" % label]
    elif dry_run:
        lines = ["would drain %s: new picks would avoid it" % label]
    else:
        lines = ["drained %s: new picks avoid it" % label]
    for move in report.moved:
        lines.append("%s domain '%s' (%s):" % ("would move" if dry_run else "moved", move.name,
                                               move.uuid))
        lines.extend(moves.describe(move))
    for move, _done in report.live:
        lines.append("%s running domain '%s' (%s) live:" % (
            "would move" if dry_run else "moved", move.name, move.uuid))
        lines.extend(moves.describe(move))
    for holder in report.running:
        lines.append(
            "running domain '%s' (%s) stays on %s: migrate it to another host (virsh migrate), "
            "stop it and run 'vfpick repick %s', or drain with --live if its NICs are failover "
            "pairs" % (holder.name, holder.uuid, ", ".join(c.vf for c in holder.claims),
                       holder.name))
    lines.append("%s: %d domain(s) %s, %d running, %d could not move" % (
        label, len(report.moved) + len(report.live), "to move" if dry_run else "moved",
        len(report.running), len(report.problems)))
    return lines
