"""Commands that talk to libvirt: define, repick, release by name, reconcile.

libvirt-python is imported here only, and only by these commands: never on the hook path
(a hook must not call back into libvirt anyway: it would deadlock the daemon).
"""

import sys
from collections import namedtuple

from vfpick import config as configmod, domscan, resolver, topology
from vfpick.errors import DomainNotFound, LibvirtFailure, VfpickError
from vfpick.records import Claim


def _libvirt():
    try:
        import libvirt
    except ImportError:
        raise VfpickError("libvirt-python is not installed (pip install libvirt-python)") from None
    # libvirt-python prints every error to stderr unless a handler swallows it; we report
    # our own one-line errors instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _message(err):
    return " ".join(str(err.get_error_message() if hasattr(err, "get_error_message") else err).split())


def libvirt_error():
    """libvirt's exception class, for callers that must not import libvirt themselves."""
    return _libvirt().libvirtError


def connect(uri):
    libvirt = _libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise LibvirtFailure("cannot connect to %s: %s" % (uri, _message(e))) from None


def network_checker(config, conn):
    """A non-pool <source network> must be a libvirt network of this host."""
    libvirt = _libvirt()

    def exists(name):
        if resolver.libvirt_network_exists(config, name):
            return True
        try:
            conn.networkLookupByName(name)
            return True
        except libvirt.libvirtError:
            return False

    return exists


def lookup(conn, who):
    libvirt = _libvirt()
    for finder in (conn.lookupByUUIDString, conn.lookupByName):
        try:
            return finder(who)
        except libvirt.libvirtError:
            continue
    raise DomainNotFound("libvirt has no domain '%s' (see virsh list --all)" % who)


def inactive_xml(dom):
    libvirt = _libvirt()
    # SECURE keeps passwords and secrets, INACTIVE the persistent (next boot) definition:
    # redefining from anything less would lose configuration.
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    return dom.XMLDesc(flags).encode("utf-8")


def define_xml(conn, xml, name, undo, outcome):
    """Defines *xml* (bytes); when libvirt refuses, calls undo() and raises LibvirtFailure
    naming the domain, libvirt's reason and the *outcome* ("no claim changed")."""
    libvirt = _libvirt()
    try:
        conn.defineXML(xml.decode("utf-8"))
    except libvirt.libvirtError as e:
        undo()
        raise LibvirtFailure("libvirt refused the definition of '%s': %s (%s)"
                             % (name, _message(e), outcome)) from None


def define_resolved(config, conn, data, store=None, only_if_changed=False):
    """Resolves *data* and defines it; rolls the claims back when libvirt refuses."""
    store = store or resolver.store_for(config)
    result = resolver.resolve(config, data, network_exists=network_checker(config, conn), store=store)
    if only_if_changed and not result.changed:
        return result

    def undo():
        if result.uuid:
            resolver.restore_claims(store, result.uuid, result.previous)

    define_xml(conn, result.xml, result.name, undo, "no claim changed")
    return result


def describe(result):
    lines = []
    for mac, pick in sorted(result.picks.items()):
        lines.append("  %s -> VF %s (PF %s, link %s)" % (mac, pick.vf, pick.pf, pick.link))
    return lines


def cmd_define(config, path_data, uri, out=None, start=False):
    """Resolves and defines; with *start*, starts it too (one-call clients: virt-install)."""
    # sys.stdout at call time, not at import (a redirected or captured stdout)
    out = sys.stdout if out is None else out
    conn = connect(uri)
    try:
        result = define_resolved(config, conn, path_data)
        # A domain with nothing to resolve may have come without a <uuid>: libvirt made one.
        dom = lookup(conn, result.uuid or result.name)
        out.write("defined domain '%s' (%s)\n" % (dom.name(), dom.UUIDString()))
        out.write("".join(line + "\n" for line in describe(result)))
        if start:
            _start(dom, result)
            out.write("started domain '%s'\n" % dom.name())
    finally:
        conn.close()
    return result


def _start(dom, result):
    """Starts the just-defined domain. No claim lock is held here: the prepare hook takes it.

    A refused start keeps the definition and its reserved claims: the domain is defined like
    any other and `virsh start` can try again once the cause is fixed.
    """
    libvirt = _libvirt()
    try:
        dom.create()
    except libvirt.libvirtError as e:
        raise LibvirtFailure("domain '%s' is defined%s but libvirt could not start it: %s; "
                             "fix that, then: virsh start %s"
                             % (dom.name(), " (its VFs stay reserved)" if result.picks else "",
                                _message(e), dom.name())) from None


def cmd_repick(config, who, uri, out=None):
    out = sys.stdout if out is None else out
    conn = connect(uri)
    try:
        dom = lookup(conn, who)
        data = inactive_xml(dom)
        result = None
        if _needs_define(config, data):
            result = define_resolved(config, conn, data, only_if_changed=True)
    finally:
        conn.close()
    if result is None:
        out.write("domain '%s' has no pool interfaces; nothing to do\n" % who)
        return None
    out.write("%s domain '%s' (%s)\n" % ("redefined" if result.changed else "kept",
                                          result.name, result.uuid))
    out.write("".join(line + "\n" for line in describe(result)))
    return result


def _needs_define(config, data):
    facts = domscan.scan(data)
    pools = [n for n, _ in facts.networks if n in config.pools]
    return bool(pools or facts.meta_nics)


def uuid_by_name(uri, who):
    """UUID of a libvirt domain named *who*, or None (release of a renamed domain)."""
    try:
        conn = connect(uri)
    except VfpickError:
        return None
    try:
        return lookup(conn, who).UUIDString()
    except VfpickError:
        return None
    finally:
        conn.close()


DomainView = namedtuple("DomainView", "name persistent active live config")
DomainView.__doc__ = """One libvirt domain as reconcile sees it. live: DomainFacts of the running
domain (None when it is not running); config: DomainFacts of its persistent definition (None for
a transient domain). A running domain may hold one set of VFs and be defined with another (a
repick while it runs): both are its own."""


def _domain_views(conn):
    """{uuid: DomainView, or None when libvirt could not describe it} for every domain."""
    libvirt = _libvirt()
    views = {}
    for dom in conn.listAllDomains(0):
        try:
            uuid = dom.UUIDString()
        except libvirt.libvirtError:
            continue
        try:
            active = bool(dom.isActive())
            persistent = bool(dom.isPersistent())
            live = domscan.scan(dom.XMLDesc(0).encode("utf-8")) if active else None
            config = domscan.scan(inactive_xml(dom)) if persistent else None
            views[uuid] = DomainView(dom.name(), persistent, active, live, config)
        except (libvirt.libvirtError, VfpickError):
            # Vanished between list and lookup, or unreadable: leave its claims alone (a
            # domain libvirt still lists is not a domain it no longer has); next run sees it.
            views[uuid] = None
    return views


def _vfs_of(facts):
    return {vf for vf, _mac in facts.hostdev_vfs} if facts is not None else set()


def plan_reconcile(config, claims, views, topo):
    """Pure: the actions that make *claims* agree with libvirt's *views* ({uuid: DomainView}).

    Returns a list of (verb, Claim, reason): verb is drop | add | update | conflict
    (conflict: reported, never applied; the Claim is the holder's).
    """
    actions = []
    pool_of_pf = {addr: pool.name for addr, pool in configmod.pool_of_pf(config).items()}
    for claim in claims.all():
        if claim.uuid not in views:
            actions.append(("drop", claim, "libvirt has no domain %s" % claim.uuid))
            continue
        view = views[claim.uuid]
        if view is None:
            continue  # libvirt could not describe it: keep what we know
        live = _vfs_of(view.live)
        if claim.vf not in live | _vfs_of(view.config):
            actions.append(("drop", claim, "domain %s no longer uses VF %s" % (view.name, claim.vf)))
            continue
        active = claim.vf in live
        if claim.domain != view.name or claim.active != active:
            actions.append(("update", claim._replace(domain=view.name, active=active),
                            "domain %s %s" % (view.name, "runs on it" if active else "is not running on it")))
    claimed = {c.vf: c for c in claims.all()}
    for uuid, view in sorted(views.items()):
        if view is None:
            continue
        for facts, running in ((view.live, True), (view.config, False)):
            if facts is None:
                continue
            meta = {n.mac: n for n in facts.meta_nics}
            for vf, mac in facts.hostdev_vfs:
                vf_record = topo.vfs.get(vf)
                managed = mac in meta if mac else False
                if vf_record is None or (vf_record.pf not in pool_of_pf and not managed):
                    continue
                holder = claimed.get(vf)
                if holder is not None:
                    if holder.uuid != uuid and running:
                        actions.append(("conflict", holder, "running domain %s uses VF %s held by %s"
                                        % (view.name, vf, holder.domain)))
                    continue
                if not (running or managed):
                    continue  # a defined, stopped, hand-made hostdev: prepare will claim it
                pool = meta[mac].pool if managed else pool_of_pf[vf_record.pf]
                claim = Claim(vf=vf, pf=vf_record.pf, link=topo.link_of.get(vf_record.pf, vf_record.pf),
                              pool=pool, domain=view.name, uuid=uuid, mac=mac or "", active=running)
                claimed[vf] = claim
                actions.append(("add", claim, "domain %s %s VF %s" % (
                    view.name, "uses" if running else "was resolved to", vf)))
    return actions


def apply_reconcile(config, store, before, views, topo):
    """Applies plan_reconcile under the lock; returns the actions taken.

    before: {vf: Claim} read before libvirt was asked (libvirt is asked without the lock: a
    VM start waits for the hook, which waits for the lock). A claim that changed since (a
    define, a prepare) was written by someone who knew better than our listing: left alone.
    """
    with store.transaction() as claims:
        actions = []
        for verb, claim, reason in plan_reconcile(config, claims, views, topo):
            if verb in ("drop", "update") and claims.get(claim.vf) != before.get(claim.vf):
                continue
            actions.append((verb, claim, reason))
            if verb == "drop":
                claims.drop(claim.vf)
            elif verb in ("add", "update"):
                claims.put(claim)
    return actions


def cmd_reconcile(config, uri, dry_run=False, rebuild=False, out=None):
    out = sys.stdout if out is None else out
    store = resolver.store_for(config)
    conn = connect(uri)  # before touching the state: a daemon that is down changes nothing
    try:
        if rebuild and not dry_run:
            moved = store.quarantine()
            if moved:
                out.write("moved the old state file aside to %s\n" % moved)
        before = {} if rebuild and dry_run else dict(store.snapshot().mapping())
        views = _domain_views(conn)  # after the snapshot: see apply_reconcile
    finally:
        conn.close()
    topo = topology.for_config(config)
    if dry_run:
        snapshot = _EmptyClaims() if rebuild else store.snapshot()
        actions = plan_reconcile(config, snapshot, views, topo)
    else:
        actions = apply_reconcile(config, store, before, views, topo)
    for verb, claim, reason in actions:
        out.write("%s%s %s (%s, pool %s): %s\n" % ("would " if dry_run else "", verb, claim.vf,
                                                   claim.domain, claim.pool, reason))
    if not actions:
        out.write("claims agree with libvirt\n")
    return actions


class _EmptyClaims:
    def all(self):
        return []
