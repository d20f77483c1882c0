"""`vfpick release DOMAIN`: drop a domain's claims by name or UUID (a renamed domain: libvirt
is asked for its UUID, without the lock)."""

from vfpick import resolver
from vfpick.host import vfsettings
from vfpick.domain import virt
from vfpick.commands import Report
from vfpick.errors import DomainNotFound, VfpickError


def uuid_by_name(uri, who):
    """UUID of a libvirt domain named *who*, or None (release of a renamed domain)."""
    try:
        conn = virt.connect(uri)
    except VfpickError:
        return None
    try:
        return virt.identity(virt.lookup(conn, who))[1]
    except VfpickError:
        return None
    finally:
        virt.close(conn)


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
    """Drops the claims of domain *who* (name or UUID); Report.result: the claims dropped.

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
    return Report(tuple("released %s (%s, pool %s) from %s" % (c.vf, c.mac, c.pool, c.domain)
                        for c in dropped), tuple(warnings), tuple(dropped))
