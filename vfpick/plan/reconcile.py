"""Reconcile planning, pure: the actions that make the claims agree with libvirt's domains.

No I/O: vfpick/commands/reconcile.py lists libvirt's domains (without the claims lock), the watcher
does the same after a reconnect; both apply the plan under the lock. Which claims a listing
may judge at all (``unsettled``) is decided by the caller from the state's write generations
and pending writers: see docs/DESIGN.md, "Reconcile".
"""

from dataclasses import dataclass
from typing import Optional

from vfpick import bandwidth, domscan
from vfpick.errors import XmlError
from vfpick.names import printable
from vfpick.records import Claim



@dataclass(frozen=True)
class DomainView:
    """One libvirt domain as reconcile sees it.

    live: DomainFacts of the running domain (None when it is not running); config: DomainFacts
    of its persistent definition (None for a transient domain). A running domain may hold one
    set of VFs and be defined with another (a repick while it runs): both are its own.
    """

    name: str
    persistent: bool
    active: bool
    live: Optional[domscan.DomainFacts]
    config: Optional[domscan.DomainFacts]


@dataclass(frozen=True)
class Action:
    """verb: drop | add | update (applied) | conflict | invalid (reported, never applied).

    claim: the claim to drop, add or write; for conflict the holder's; None for invalid,
    where domain names the domain whose metadata is bad.
    """

    verb: str
    claim: Optional[Claim]
    reason: str
    domain: Optional[str] = None

    def line(self, dry_run=False):
        if self.claim is None:
            return "%s: %s" % (self.verb, self.reason)
        return "%s%s %s (%s, pool %s): %s" % ("would " if dry_run and self.verb in _APPLIED else "",
                                              self.verb, self.claim.vf, self.claim.domain,
                                              self.claim.pool, self.reason)


_APPLIED = ("drop", "add", "update")


def _vfs_of(facts):
    return {vf for vf, _mac in facts.hostdev_vfs} if facts is not None else set()


def metadata_problem(nic, pools):
    """Why a <vfpick:nic> record (domscan.MetaNic) cannot be trusted, or None."""
    if not nic.mac:
        return "has no mac"
    if domscan.normalize_mac(nic.mac) != nic.mac or len(nic.mac) != 17:
        return "has a bad mac %r" % nic.mac
    if not nic.pool:
        return "has no pool"
    if nic.pool not in pools:
        return "names pool %r, which the config does not define" % nic.pool
    if nic.vf is None:
        return "has no valid VF address"
    try:
        bandwidth.of_meta(nic)
    except XmlError as e:
        return "has bad rates (%s)" % e
    return None


def _metadata(view, facts, pools, invalid):
    """{mac: MetaNic} of the valid records; one invalid Action per bad record (deduplicated:
    the live and the persistent XML usually carry the same metadata)."""
    good = {}
    for nic in facts.meta_nics:
        problem = metadata_problem(nic, pools)
        if problem is None:
            good[nic.mac] = nic
            continue
        key = (view.name, nic, problem)
        if key not in invalid:
            invalid[key] = Action("invalid", None, printable(
                "domain '%s': <vfpick:nic mac=%r pool=%r vf=%r> %s; left alone (fix it and run "
                "'vfpick repick %s')" % (view.name, nic.mac, nic.pool, nic.vf, problem, view.name)),
                domain=view.name)
    return good


def plan(pools, pool_of_pf, claims, views, topo, unsettled=frozenset()):
    """The list of Actions that make *claims* agree with libvirt's *views*.

    pools: the configured pool names. pool_of_pf: {PF address: pool name}. claims: a ClaimSet
    (or anything with all()). views: {uuid: DomainView, or None when libvirt could not describe
    the domain (its claims are kept)}. topo: Topology (vfs, link_of). unsettled: VFs whose claim
    this listing must not judge (written after it began, or by a define still in flight):
    nothing is planned for them.
    """
    actions = []
    for claim in claims.all():
        if claim.vf in unsettled:
            continue
        if claim.uuid not in views:
            why = "libvirt has no domain %s" % claim.uuid
            if claim.pending is not None:
                why += " (its define, pid %d, ended before libvirt answered)" % claim.pending.pid
            actions.append(Action("drop", claim, why))
            continue
        view = views[claim.uuid]
        if view is None:
            continue  # libvirt could not describe it: keep what we know
        live = _vfs_of(view.live)
        if claim.vf not in live | _vfs_of(view.config):
            actions.append(Action("drop", claim, "domain %s no longer uses VF %s" % (view.name, claim.vf)))
            continue
        active = claim.vf in live
        if claim.domain != view.name or claim.active != active or claim.pending is not None:
            actions.append(Action(
                "update", claim._replace(domain=view.name, active=active, pending=None),
                "domain %s %s" % (view.name, "runs on it" if active else "is not running on it")))
    claimed = {c.vf: c for c in claims.all()}
    invalid = {}
    for uuid, view in sorted(views.items()):
        if view is None:
            continue
        # One domain's XML is input from whoever defined it: whatever in it breaks planning,
        # that domain is reported and skipped, the pass goes on for the others.
        mark = (len(actions), dict(claimed))
        try:
            _plan_domain(actions, claimed, invalid, uuid, view, pools, pool_of_pf, topo, unsettled)
        except Exception as e:  # noqa: BLE001 - never abort the pass for one domain
            del actions[mark[0]:]
            claimed.clear()
            claimed.update(mark[1])
            invalid[(view.name, uuid)] = Action("invalid", None, printable(
                "domain '%s' (%s): cannot be reconciled (%s); its VFs are left as they are"
                % (view.name, uuid, " ".join(str(e).split())[:200] or type(e).__name__)),
                domain=view.name)
    actions.extend(invalid.values())
    return actions


def _plan_domain(actions, claimed, invalid, uuid, view, pools, pool_of_pf, topo, unsettled):
    """plan()'s additions for one domain's VFs (appended to *actions*, recorded in *claimed*)."""
    for facts, running in ((view.live, True), (view.config, False)):
        if facts is None:
            continue
        meta = _metadata(view, facts, pools, invalid)
        for vf, mac in facts.hostdev_vfs:
            vf_record = topo.vfs.get(vf)
            managed = bool(mac) and mac in meta
            if vf_record is None or (vf_record.pf not in pool_of_pf and not managed):
                continue
            if vf in unsettled:
                continue
            holder = claimed.get(vf)
            if holder is not None:
                if holder.uuid != uuid and running:
                    actions.append(Action("conflict", holder, "running domain %s uses VF %s "
                                          "held by %s" % (view.name, vf, holder.domain)))
                continue
            if not (running or managed):
                continue  # a defined, stopped, hand-made hostdev: prepare will claim it
            pool = meta[mac].pool if managed else pool_of_pf[vf_record.pf]
            claim = Claim(vf=vf, pf=vf_record.pf, link=topo.link_of.get(vf_record.pf, vf_record.pf),
                          pool=pool, domain=view.name, uuid=uuid, mac=mac or "", active=running,
                          pending=None, applied=None, restore=None,
                          **bandwidth.of_meta(meta[mac] if managed else None))
            claimed[vf] = claim
            actions.append(Action("add", claim, "domain %s %s VF %s" % (
                view.name, "uses" if running else "was resolved to", vf)))


def unsettled(current, before, live_writers):
    """VFs a listing taken after the snapshot *before* must not judge.

    current, before: ClaimSets (now, under the lock; and the snapshot read before libvirt was
    asked). A claim added, changed or dropped since the snapshot (another generation) was
    written by someone who knew more than the listing. A claim pending for a writer alive at
    the snapshot may be defined by libvirt at any moment, listing or not. live_writers: the
    pending writers that were alive when the snapshot was taken.
    """
    everything = set(current.mapping()) | set(before.mapping())
    if current.generation < before.generation:
        return frozenset(everything)  # the file was rebuilt since: the generations tell nothing
    vfs = set()
    for vf in everything:
        claim = current.get(vf)
        if claim != before.get(vf) or current.gen(vf) != before.gen(vf):
            vfs.add(vf)
        elif claim is not None and claim.pending is not None and claim.pending in live_writers:
            vfs.add(vf)
    return frozenset(vfs)

