"""Moving the VFs of a defined, stopped domain: reserve, redefine through libvirt, settle.

Shared by ``vfpick drain`` (NICs leave drained PFs) and ``vfpick rebalance`` (NICs go to
given VFs). One domain at a time, all or nothing for that domain:

1. libvirt: the domain's persistent XML. A running domain is refused (DomainRunning).
2. Under the claims lock: the domain's NICs are placed again by ``resolver.plan`` (the same
   pool, distinct/strict/numa rules as any pick; NICs on an *avoid* or drained PF, or with a
   *target*, move; the others keep their VFs) and the new VFs are reserved BESIDE the old
   ones: while libvirt does not have the new definition the domain holds both sets, so no
   old VF is free for anyone to take and a refusal loses nothing. A claim of the domain that
   is active (its prepare hook ran) refuses the move.
3. libvirt, with the lock released: the domain must still be stopped and defined as it was
   read (else DomainRunning / DomainChanged); then the new XML is defined (hostdevs
   rewritten keeping MAC, VLAN, alias, boot order and guest address). Any refusal drops the
   new reservations again; the old claims never left.
4. Under the lock: the new claims are made sure of and the old VFs the domain no longer uses
   are released, unless the domain started meanwhile (a claim went active): then nothing
   more is touched, and DomainRunning says which definition it runs and what to do.

No libvirt call is made while the claims lock is held (a VM start waits for the hook, which
waits for the lock).

    move = plan_move(config, topo, xml, claims_map, busy, avoid=pfs, targets={mac: vf})
    move = move_stopped_domain(config, conn, "NAME|UUID", avoid=pfs, targets={mac: vf})
    claims_map = apply_to(claims_map, move)    # plan the next domain of a dry run after it
"""

import random
from collections import namedtuple

from vfpick import bandwidth, resolver
from vfpick.plan import policy
from vfpick.host import topology, vfsettings
from vfpick.domain import virt
from vfpick.errors import (DistinctImpossible, DomainChanged, DomainRunning, StartedDuringMove,
                           VfpickError)
from vfpick.where import where
from vfpick.records import Claim, Nic, Request
from vfpick.state import writer

Move = namedtuple("Move", "uuid name xml nics warnings assignments repaired", defaults=((),))
Move.__doc__ = """One domain's move. xml: its new definition (bytes). nics: tuple of NicMove,
only the NICs that change VF (empty: nothing to do). warnings: best-effort notes (distinct
not met). assignments: {interface index: hostdev.Assignment}, every NIC as it will be.
repaired: MACs that move to leave a distinct unit they shared (plan_move(repair=True))."""

NicMove = namedtuple("NicMove", "mac pool old new")
NicMove.__doc__ = """old: the VF address the NIC holds now (None: an unresolved pool
interface). new: the Pick it moves to."""


def running_message(name):
    return ("domain '%s' is running: vfpick moves only stopped domains; migrate it to another "
            "host, or stop it and run 'vfpick repick %s'" % (name, name))


def _units(topo, distinct, vfs):
    return {policy.unit_of(topo, distinct, topo.vfs[vf].pf) for vf in vfs if vf in topo.vfs}


def _repairs(config, doc, topo, claims, busy, placed, avoid, targets):
    """{mac: vf}: for each NIC of the placement that shares its distinct unit with an earlier
    NIC of the domain in its pool (a best-effort pick), a free VF on a unit of its own when
    the pool has one (redundancy first: drain's moves restore it on the way). NICs with a
    *target* stay as asked."""
    found = {}
    by_pool = {}
    for _, a in sorted(placed.assignments.items()):
        by_pool.setdefault(a.pool, []).append(a)
    for pool_name, mine in by_pool.items():
        pool = config.pools[pool_name]
        distinct, _, numa = resolver.effective(pool, doc.overrides(pool_name))
        if distinct == "none":
            continue
        held = [a.vf for a in mine]
        seen = set()
        for a in mine:
            unit = policy.unit_of(topo, distinct, a.pf)
            if unit not in seen or a.mac in targets:
                seen.add(unit)
                continue
            others = [vf for vf in held if vf != a.vf]
            request = Request(uuid=doc.uuid, pool=pool_name, nics=(Nic(a.mac, None),),
                              distinct=distinct, strict=True, numa=numa, policy=pool.policy,
                              numa_nodes=doc.numa_nodes(topo.node_cpus), held=tuple(others))
            taken = dict(claims)
            # Two repairs never take one VF: the first one's counts as another's.
            taken.update((vf, Claim(vf, None, None, pool_name, "", "(repair)", None, False))
                         for vf in found.values())
            try:
                pick, = policy.pick(topo, policy.in_service(pool.pfs, avoid), taken, busy, request)
            except VfpickError:
                continue  # no free VF on a unit of its own: it keeps sharing (best effort)
            found[a.mac] = pick.vf
            held = others + [pick.vf]
            seen.add(policy.unit_of(topo, distinct, pick.pf))
    return found


def plan_move(config, topo, data, claims, busy, avoid=frozenset(), targets=None, rng=None,
              repair=False):
    """The Move of the defined domain *data* (its persistent XML); no I/O.

    claims: {vf: Claim}; busy: {vf: uuid} of running domains; avoid: PF addresses to leave
    (drained ones: pass them, the caller knows whether they are persisted yet); targets:
    {mac: vf}. A target move must not leave the domain's NICs of a pool on fewer distinct
    units (links, PFs, cards: its distinct level) than before. repair: NICs sharing a unit
    move to a unit of their own where one has a free VF (Move.repaired names them). Raises a
    VfpickError when the domain cannot be placed: nothing is planned.
    """
    from vfpick.hostdev import DomainXml

    doc = DomainXml.parse(data)
    uuid, name = doc.uuid, doc.name
    # libvirt already holds this definition: its other networks are its business, not ours.
    ifaces = resolver.interfaces(config, doc, lambda _network: True)
    old = {i.mac: i.vf for i in ifaces.managed}
    targets = dict(targets or {})
    unknown = sorted(set(targets) - set(old))
    if unknown:
        raise VfpickError("domain '%s' has no vfpick NIC with MAC %s" % (name, ", ".join(unknown)))
    rng = rng or random.SystemRandom()
    placed = resolver.plan(config, doc, ifaces, claims, busy, topo, rng, avoid=frozenset(avoid),
                           targets=targets)
    found = {}
    if repair:
        found = _repairs(config, doc, topo, claims, busy, placed, avoid, targets)
        if found:
            targets.update(found)
            placed = resolver.plan(config, doc, ifaces, claims, busy, topo, rng,
                                   avoid=frozenset(avoid), targets=targets)
    nics = tuple(NicMove(mac=a.mac, pool=a.pool, old=old.get(a.mac), new=placed.picks[a.mac])
                 for _, a in sorted(placed.assignments.items())
                 if old.get(a.mac) != a.vf)
    asked = set(targets) - set(found)
    for pool_name in {m.pool for m in nics if m.mac in asked}:
        distinct, _, _ = resolver.effective(config.pools[pool_name], doc.overrides(pool_name))
        if distinct == "none":
            continue
        mine = [a for a in placed.assignments.values() if a.pool == pool_name]
        before = _units(topo, distinct, [old.get(a.mac) for a in mine])
        after = _units(topo, distinct, [a.vf for a in mine])
        if len(after) < len(before):
            raise DistinctImpossible(
                "moving domain '%s' would put %d NICs of pool '%s' on %d %s(s) instead of %d "
                "(distinct=%s); nothing moved" % (name, len(mine), pool_name, len(after),
                                                  distinct, len(before), distinct))
    if nics:
        doc.apply(placed.assignments)
    return Move(uuid=uuid, name=name, xml=doc.to_bytes(), nics=nics, warnings=placed.warnings,
                assignments=placed.assignments, repaired=tuple(sorted(found)))


def _claims_of(move):
    """The claims *move* makes, with each NIC's rates: a dry run planning its next domain
    counts the guarantees of the ones before it."""
    return [Claim(vf=a.vf, pf=a.pf, link=a.link, pool=a.pool, domain=move.name, uuid=move.uuid,
                  mac=a.mac, active=False, **bandwidth.claim_rates(a.bandwidth))
            for a in move.assignments.values()]


def apply_to(claims, move):
    """{vf: Claim} as it is once *move* is done: a dry run plans its next domain on it."""
    out = {vf: c for vf, c in claims.items() if c.uuid != move.uuid}
    out.update((c.vf, c) for c in _claims_of(move))
    return out


def _drop_mine(claims, uuid, vfs):
    dropped = []
    for vf in vfs:
        held = claims.get(vf)
        if held is not None and held.uuid == uuid and not held.active:
            dropped.append(claims.drop(vf))
    return dropped


def _rollback(store, move, previous):
    with store.transaction() as claims:
        _drop_mine(claims, move.uuid, {a.vf for a in move.assignments.values()} - previous)


def _settle(config, store, move, previous):
    """Step 4: the domain now runs (when started) on the new VFs only; the VFs it left get
    their trust/spoofchk back. Returns None when it started meanwhile, else the warnings."""
    new = {a.vf for a in move.assignments.values()}
    with store.transaction() as claims:
        if any(c.active for c in claims.for_uuid(move.uuid)):
            return None
        for claim in _claims_of(move):
            held = claims.get(claim.vf)
            # Re-asserted: a reconcile that listed libvirt before the define may have dropped it
            # (it should not: the reservations were pending for this process).
            if held is None:
                claims.put(claim)
            elif held.uuid != move.uuid:
                raise VfpickError(
                    "domain '%s' is now defined on VF %s, which %s took meanwhile; run 'vfpick "
                    "repick %s'" % (move.name, claim.vf, held.domain, move.name))
            elif held.pending is not None:
                claims.put(held._replace(pending=None))  # libvirt has it now
        left = _drop_mine(claims, move.uuid, previous - new)
        return vfsettings.put_back(config, left)


def stopped_definition(dom, name):
    """The persistent XML of *dom*; DomainRunning when it runs. libvirt's own error when it
    cannot tell (gone meanwhile): the caller says what that means for it."""
    if virt.is_running(dom):
        raise DomainRunning(running_message(name))
    return virt.inactive_xml(dom)


def _stopped_definition(dom, name):
    """stopped_definition; DomainChanged when the domain is gone."""
    try:
        return stopped_definition(dom, name)
    except virt.libvirt_error() as e:
        raise DomainChanged("domain '%s' vanished while vfpick moved it (%s); nothing moved"
                            % (name, virt.error_message(e))) from None


def move_stopped_domain(config, conn, who, avoid=frozenset(), targets=None, store=None, topo=None,
                repair=False):
    """Moves the defined, stopped domain *who* (name or UUID) as above; returns its Move.

    A Move with no nics changed nothing (no claim, no definition). Raises DomainNotFound,
    DomainRunning, DomainChanged, LibvirtFailure or the placement's VfpickError; on any of
    them the domain's definition and claims are as they were, except StartedDuringMove (a
    DomainRunning: it started after its new definition was in; both VF sets stay claimed).
    """
    store = store or resolver.store_for(config)
    topo = topo or topology.for_config(config)
    dom = virt.lookup(conn, who)
    name, uuid = virt.identity(dom)
    data = _stopped_definition(dom, name)
    busy = resolver.running_vfs(config)
    with store.transaction() as claims:
        if any(c.active for c in claims.for_uuid(uuid)):
            raise DomainRunning(running_message(name))
        move = plan_move(config, topo, data, claims.mapping(), busy,
                         avoid=frozenset(avoid) | claims.drained(), targets=targets,
                         repair=repair)
        if not move.nics:
            return move
        # Pending until libvirt answered: a reconcile meanwhile leaves the reservations alone.
        previous = {c.vf for c in resolver.record(claims, move.uuid, move.name, move.assignments,
                                                  busy, keep_previous=True, pending=writer.me())}
    try:
        if _stopped_definition(dom, move.name) != data:
            raise DomainChanged("domain '%s' was redefined while vfpick moved it; nothing moved, "
                                "run the command again" % move.name)
    except BaseException:
        _rollback(store, move, previous)
        raise
    virt.define_xml(conn, move.xml, move.name, lambda: _rollback(store, move, previous),
                    "nothing moved")
    warnings = _settle(config, store, move, previous)
    if warnings is None:
        raise StartedDuringMove(
            "domain '%s' started while vfpick moved it: its next boot uses the new VFs, the "
            "ones it runs on stay claimed; after it stops, run 'vfpick reconcile'" % move.name)
    return move._replace(warnings=list(move.warnings) + warnings)


def describe(move):
    """One line per moving NIC: '  MAC: OLD -> NEW (PF, link)'."""
    return ["  %s: %s -> %s%s" % (
        m.mac, m.old or "unresolved", where(m.new.vf, m.new.link, m.new.pf, word=""),
        " (restores distinct)" if m.mac in move.repaired else "") for m in move.nics]
