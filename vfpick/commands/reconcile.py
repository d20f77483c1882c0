"""`vfpick reconcile`: list libvirt's domains (without the claims lock), then plan
(vfpick/plan/reconcile.py, pure) and apply under the lock; also the watcher's sync."""

from vfpick import config as configmod, domscan, resolver
from vfpick.plan import policy, reconcile
from vfpick.host import topology, vfsettings
from vfpick.domain import virt
from vfpick.commands import Report
from vfpick.state import ClaimSet


def domain_views(conn, problems=None):
    """{uuid: reconcile.DomainView, or None when it could not be described} for every domain.

    problems: a list to append one line to per domain that could not be described.
    """
    lv_error = virt.libvirt_error()
    views = {}
    for dom in virt.all_domains(conn):
        try:
            uuid = virt.identity(dom)[1]
        except lv_error:
            continue
        try:
            seen = virt.facts(dom)
            views[uuid] = reconcile.DomainView(
                seen.name, seen.persistent, seen.active,
                domscan.scan(seen.live_xml) if seen.active else None,
                domscan.scan(seen.config_xml) if seen.persistent else None)
        except Exception as e:  # noqa: BLE001 - one domain's content never stops the rest
            # Vanished between list and lookup, or unreadable: leave its claims alone (a
            # domain libvirt still lists is not a domain it no longer has); next run sees it.
            views[uuid] = None
            if problems is not None and not isinstance(e, lv_error):
                problems.append("domain %s: cannot read it (%s); its claims are left as they are"
                                % (uuid, " ".join(str(e).split()) or type(e).__name__))
    return views


def live_writers(snapshot):
    """The pending writers of *snapshot* that still run (taken before libvirt is listed)."""
    from vfpick.state import writer

    return frozenset(w for w in {c.pending for c in snapshot.all() if c.pending is not None}
                     if writer.alive(w))


def _plan(config, claims, views, topo, unsettled):
    pool_of_pf = {addr: pool.name for addr, pool in configmod.pool_of_pf(config.pools).items()}
    actions = reconcile.plan(frozenset(config.pools), pool_of_pf, claims, views, topo, unsettled)
    return _guaranteed(config, claims, actions, topo)


def _guaranteed(config, claims, actions, topo):
    """*actions* with each claim added from a domain's metadata (lost state, a rebuild) held to
    the guarantee's room, as a requested NIC is: one that does not fit is recorded without its
    rates, and says so (the metadata is the domain's XML, anyone who defines domains writes it)."""
    held, out = dict(claims.mapping()), []
    for action in actions:
        claim = action.claim
        pool = config.pools.get(claim.pool) if claim is not None else None
        if action.verb == "add" and pool is not None and pool.guarantee and (
                claim.rate_mbps or claim.min_rate_mbps):
            problem = policy.room_problem(topo, pool.pfs, held, claim.vf, claim.rate_mbps,
                                          claim.min_rate_mbps)
            if problem:
                claim = claim._replace(rate_mbps=None, peak_mbps=None, min_rate_mbps=None)
                action = reconcile.Action("add", claim, "%s, without the rates its metadata "
                                          "names: %s" % (action.reason, problem))
        if action.verb in ("add", "update"):
            held[claim.vf] = claim
        elif action.verb == "drop":
            held.pop(claim.vf, None)
        out.append(action)
    return out


def apply_reconcile(config, store, before, writers, views, topo, netlink_factory=None):
    """Plans and applies under the lock; returns (actions, warnings).

    before: the snapshot read before libvirt was listed (libvirt is asked without the lock: a
    VM start waits for the hook, which waits for the lock); writers: live_writers(before).
    Claims written since, or pending for a writer alive then, are not judged by this listing
    (reconcile.unsettled). Dropped claims get their VF settings put back.
    """
    with store.transaction() as claims:
        actions = _plan(config, claims, views, topo, reconcile.unsettled(claims, before, writers))
        dropped = []
        for action in actions:
            if action.verb == "drop":
                dropped.append(claims.drop(action.claim.vf))
            elif action.verb in ("add", "update"):
                claims.put(action.claim)
        warnings = vfsettings.put_back(config, dropped, netlink_factory)
    return actions, warnings


def cmd_reconcile(config, uri, dry_run=False, rebuild=False, netlink_factory=None):
    """Report.result: the actions (applied, or planned with *dry_run*)."""
    store = resolver.store_for(config)
    lines = []
    # Both before touching the state: a daemon that is down, or a host whose sysfs cannot be
    # read, changes nothing (a rebuild never moves the file aside and then stops).
    topo = topology.for_config(config)
    conn = virt.connect(uri)
    try:
        if rebuild and not dry_run:
            moved = store.quarantine()
            if moved:
                lines.append("moved the old state file aside to %s" % moved)
        before = ClaimSet({}, False) if rebuild and dry_run else store.snapshot()
        writers = live_writers(before)
        problems = []
        views = domain_views(conn, problems)  # after the snapshot: see apply_reconcile
    finally:
        virt.close(conn)
    warnings = []
    if dry_run:
        actions = _plan(config, before, views, topo,
                        frozenset(c.vf for c in before.all() if c.pending in writers))
    else:
        actions, warnings = apply_reconcile(config, store, before, writers, views, topo,
                                            netlink_factory)
    lines.extend(action.line(dry_run) for action in actions)
    if not actions:
        lines.append("claims agree with libvirt")
    return Report(tuple(lines), tuple(problems + warnings), actions)
