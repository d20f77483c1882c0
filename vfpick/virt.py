"""Commands that talk to libvirt: define, repick, release by name, reconcile.

libvirt-python is imported here only, and only by these commands: never on the hook path
(a hook must not call back into libvirt anyway: it would deadlock the daemon).
"""

import sys

from vfpick import config as configmod, domscan, reconcile, resolver, topology, vfsettings
from vfpick.errors import DomainNotFound, LibvirtFailure, VfpickError
from vfpick.state import ClaimSet


def _libvirt():
    try:
        import libvirt
    except ImportError:
        raise VfpickError("libvirt-python is not installed (pip install libvirt-python)") from None
    # libvirt-python prints every error to stderr unless a handler swallows it; we report
    # our own one-line errors instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def error_message(err):
    """A libvirt error (or any exception) as one line, for the messages that quote it."""
    return " ".join(str(err.get_error_message() if hasattr(err, "get_error_message") else err).split())


def libvirt_error():
    """libvirt's exception class, for callers that must not import libvirt themselves."""
    return _libvirt().libvirtError


def connect(uri):
    libvirt = _libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise LibvirtFailure("cannot connect to %s: %s" % (uri, error_message(e))) from None


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
                             % (name, error_message(e), outcome)) from None


def define_resolved(config, conn, data, store=None, only_if_changed=False, netlink_factory=None):
    """Resolves *data* and defines it; rolls the claims back when libvirt refuses.

    The claims libvirt does not know yet are written pending (this process waits for
    libvirt's answer): a reconcile listing libvirt meanwhile leaves them alone. All of them for
    a define (the domain may be new to libvirt), the new VFs only for a repick or the watcher
    (only_if_changed: the domain is defined already, with its kept VFs). Settled once libvirt
    answered; a crash in between leaves them to reconcile (the writer is gone).
    No lock is held while libvirt is asked.
    """
    from vfpick.state import writer

    store = store or resolver.store_for(config)
    me = writer.me()
    result = resolver.resolve(config, data, network_exists=network_checker(config, conn), store=store,
                              pending=me, pending_kept=not only_if_changed,
                              netlink_factory=netlink_factory)
    if only_if_changed and not result.changed:
        resolver.settle_claims(store, result.uuid, me)
        return result

    def undo():
        if result.uuid:
            resolver.restore_claims(store, result.uuid, result.previous)

    define_xml(conn, result.xml, result.name, undo, "no claim changed")
    resolver.settle_claims(store, result.uuid, me)
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
                                error_message(e), dom.name())) from None


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


def find_uuid(claims, who):
    """UUID of the domain named or identified by *who* among the claims, or None."""
    lowered = who.lower()
    if any(c.uuid == lowered for c in claims.all()):
        return lowered
    by_name = {c.uuid for c in claims.all() if c.domain == who}
    if len(by_name) > 1:
        raise VfpickError("several domains named '%s' hold claims (%s); release by UUID"
                          % (who, ", ".join(sorted(by_name))))
    return by_name.pop() if by_name else None


def release(config, who, uri, netlink_factory=None):
    """Drops the claims of domain *who* (name or UUID); returns (dropped, warnings).

    A name the claims do not know may be a renamed domain: libvirt is asked for its UUID
    first, without the lock (a hung libvirt must not hold up every VM start behind the lock),
    and the claims are looked up again under it.
    """
    store = resolver.store_for(config)
    renamed = None
    if find_uuid(store.snapshot(), who) is None:
        renamed = uuid_by_name(uri, who)
    warnings = []
    with store.transaction() as claims:
        uuid = find_uuid(claims, who) or renamed
        if uuid is None or not claims.for_uuid(uuid):
            raise DomainNotFound("no claims for domain '%s' (see vfpick status)" % who)
        dropped = claims.drop_uuid(uuid)
        ended = []
        for claim in dropped:
            fix = vfsettings.manual_fix(config, claim) if claim.active else None
            if fix:
                # Its guest still runs on the VF: changing trust/spoofchk under it is not ours.
                warnings.append("domain '%s' still runs on VF %s: its trust/spoofchk stay; once it "
                                "stops, put them back with: %s" % (claim.domain, claim.vf, fix))
            elif not claim.active:
                ended.append(claim)
        warnings.extend(vfsettings.put_back(config, ended, netlink_factory))
    return dropped, warnings


def domain_views(conn, problems=None):
    """{uuid: reconcile.DomainView, or None when it could not be described} for every domain.

    problems: a list to append one line to per domain that could not be described.
    """
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
            views[uuid] = reconcile.DomainView(dom.name(), persistent, active, live, config)
        except Exception as e:  # noqa: BLE001 - one domain's content never stops the rest
            # Vanished between list and lookup, or unreadable: leave its claims alone (a
            # domain libvirt still lists is not a domain it no longer has); next run sees it.
            views[uuid] = None
            if problems is not None and not isinstance(e, libvirt.libvirtError):
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
    return reconcile.plan(frozenset(config.pools), pool_of_pf, claims, views, topo, unsettled)


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


def cmd_reconcile(config, uri, dry_run=False, rebuild=False, out=None, netlink_factory=None):
    out = sys.stdout if out is None else out
    store = resolver.store_for(config)
    conn = connect(uri)  # before touching the state: a daemon that is down changes nothing
    try:
        if rebuild and not dry_run:
            moved = store.quarantine()
            if moved:
                out.write("moved the old state file aside to %s\n" % moved)
        before = ClaimSet({}, False) if rebuild and dry_run else store.snapshot()
        writers = live_writers(before)
        problems = []
        views = domain_views(conn, problems)  # after the snapshot: see apply_reconcile
    finally:
        conn.close()
    topo = topology.for_config(config)
    warnings = []
    if dry_run:
        actions = _plan(config, before, views, topo,
                        frozenset(c.vf for c in before.all() if c.pending in writers))
    else:
        actions, warnings = apply_reconcile(config, store, before, writers, views, topo,
                                            netlink_factory)
    for action in actions:
        out.write(action.line(dry_run) + "\n")
    for warning in problems + warnings:
        sys.stderr.write("vfpick: warning: %s\n" % warning)
    if not actions:
        out.write("claims agree with libvirt\n")
    return actions


class Devices(object):
    """The libvirt calls of a live NIC move (vfpick/livemove.py), on one domain.

    live=True: the running domain (VIR_DOMAIN_AFFECT_LIVE, its live XML). live=False: the same
    steps on the persistent definition (AFFECT_CONFIG, the inactive XML): what the tests drive
    where no VF can be hot-plugged (simulated VFs), and the seam they inject failures through.
    Every call raises libvirt's own error; livemove turns it into one line."""

    def __init__(self, dom, live=True):
        self.dom, self.live = dom, live
        self._lv = _libvirt()
        self.flag = self._lv.VIR_DOMAIN_AFFECT_LIVE if live else self._lv.VIR_DOMAIN_AFFECT_CONFIG

    def xml(self):
        """The XML the moves act on (live, or the persistent definition)."""
        if not self.live:
            return inactive_xml(self.dom)
        return self.dom.XMLDesc(self._lv.VIR_DOMAIN_XML_SECURE).encode("utf-8")

    def running(self):
        return bool(self.dom.isActive())

    def persistent_xml(self):
        return inactive_xml(self.dom) if self.dom.isPersistent() else None

    def detach(self, iface_xml):
        self.dom.detachDeviceFlags(iface_xml, self.flag)

    def attach(self, iface_xml):
        self.dom.attachDeviceFlags(iface_xml, self.flag)

    def define(self, xml):
        self.dom.connect().defineXML(xml.decode("utf-8"))

    def set_metadata(self, element_xml, namespace, key):
        """vfpick's <metadata> element of the side moved (libvirt wants it unprefixed)."""
        self.dom.setMetadata(self._lv.VIR_DOMAIN_METADATA_ELEMENT, element_xml, key, namespace,
                             self.flag)
