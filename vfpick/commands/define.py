"""`vfpick define` and `vfpick repick`: resolve a domain's pool interfaces, define it through
libvirt (the claims are written first, pending, and rolled back when libvirt refuses)."""

from vfpick import domscan, resolver
from vfpick.domain import virt
from vfpick.commands import Report
from vfpick.errors import LibvirtFailure
from vfpick.where import where


def network_checker(config, conn):
    """A non-pool <source network> must be a libvirt network of this host."""
    def exists(name):
        return resolver.libvirt_network_exists(config, name) or virt.network_exists(conn, name)

    return exists


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

    virt.define_xml(conn, result.xml, result.name, undo, "no claim changed")
    resolver.settle_claims(store, result.uuid, me)
    return result


def describe(result):
    return ["  %s -> %s" % (mac, where(pick.vf, pick.link, pick.pf))
            for mac, pick in sorted(result.picks.items())]


def cmd_define(config, path_data, uri, start=False):
    """Resolves and defines; with *start*, starts it too (one-call clients: virt-install).

    A refused start keeps the definition and its reserved claims (virt.start): it raises
    DefinedNotStarted, whose report says what was defined (the CLI renders it, then the error)."""
    conn = virt.connect(uri)
    try:
        result = define_resolved(config, conn, path_data)
        # A domain with nothing to resolve may have come without a <uuid>: libvirt made one.
        dom = virt.lookup(conn, result.uuid or result.name)
        name, uuid = virt.identity(dom)
        lines = ["defined domain '%s' (%s)" % (name, uuid)] + describe(result)
        if start:
            try:
                virt.start(dom, bool(result.picks))
            except LibvirtFailure as e:
                raise DefinedNotStarted(str(e), Report(tuple(lines), result=result)) from None
            lines.append("started domain '%s'" % name)
    finally:
        virt.close(conn)
    return Report(tuple(lines), tuple(result.warnings), result)


class DefinedNotStarted(LibvirtFailure):
    """libvirt refused the start of the domain just defined; .report: what was defined."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def cmd_repick(config, who, uri):
    """Re-resolves the persistent definition of *who*; Report.result None when it has no pool
    interfaces (nothing to do)."""
    conn = virt.connect(uri)
    try:
        dom = virt.lookup(conn, who)
        data = virt.inactive_xml(dom)
        result = None
        if _needs_define(config, data):
            result = define_resolved(config, conn, data, only_if_changed=True)
    finally:
        virt.close(conn)
    if result is None:
        return Report(("domain '%s' has no pool interfaces; nothing to do" % who,))
    lines = ["%s domain '%s' (%s)" % ("redefined" if result.changed else "kept", result.name,
                                      result.uuid)] + describe(result)
    return Report(tuple(lines), tuple(result.warnings), result)


def _needs_define(config, data):
    facts = domscan.scan(data)
    pools = [n for n, _ in facts.networks if n in config.pools]
    return bool(pools or facts.meta_nics)
