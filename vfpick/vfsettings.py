"""VF trust/spoofchk: set at prepare, recorded in the claim, put back when the claim ends.

A pool's ``trust``/``spoofchk`` are set on the VF by the prepare hook. Before vfpick sets one
for the first time on a claim, it reads the VF's value (RTM_GETLINK) and records it in the
claim's ``restore``; when the claim ends (release of a transient domain, ``vfpick release``,
a repick that moves the NIC, a reconcile that drops the claim of an undefined domain), the
recorded values are set again, so no VF carries a previous tenant's ``trust on`` or
``spoofchk off`` into a pool that leaves them unset. A driver that does not report a setting
gets the driver default back (trust off, spoofchk on): the safe side.

On the hook path: imports only records; vfpick.netlink (stdlib rtnetlink) when a VF is touched.
"""

from vfpick.records import VfSettings

NONE = VfSettings(trust=None, spoofchk=None)
DRIVER_DEFAULT = VfSettings(trust=False, spoofchk=True)
SETTINGS = VfSettings._fields


def _word(name, value):
    return "%s %s" % (name, "on" if value else "off")


def locate(config, pf, vf):
    """(PF netdev, VF index), or None when sysfs no longer shows them."""
    from vfpick import topology

    record, _ = topology.read_pf(config.sysfs_root, pf, with_vfs=False)
    index = topology.vf_index(config.sysfs_root, pf, vf)
    if record is None or record.netdev is None or index is None:
        return None
    return record.netdev, index


class Netlink:
    """Opens rtnetlink on first use only: most claims have nothing to set or put back.
    Call it for the netlink object; close() when done."""

    def __init__(self, factory):
        self._factory, self._nl = factory, None

    def __call__(self):
        if self._nl is None:
            if self._factory is None:
                from vfpick.netlink import open_netlink as factory
            else:
                factory = self._factory
            self._nl = factory()
        return self._nl

    def close(self):
        if self._nl is not None:
            self._nl.close()


def wanted(claim, pool):
    """Whether prepare has VF settings to apply or to take back for this claim."""
    return claim.applied is not None or (pool is not None and (
        pool.trust is not None or pool.spoofchk is not None))


def apply(config, claim, pool, netlink):
    """Sets the pool's settings on the claim's VF; returns the claim with applied/restore.

    netlink: a callable returning the netlink object (opened once, on demand). Settings the
    claim applied earlier but the pool no longer sets are put back first. Raises NetlinkError,
    or LookupError when the VF cannot be found in sysfs; a failed set is undone as far as it can.
    """
    want = VfSettings(pool.trust, pool.spoofchk) if pool is not None else NONE
    applied, restore = claim.applied or NONE, claim.restore or NONE
    back = {s: getattr(restore, s) for s in SETTINGS
            if getattr(want, s) is None and getattr(applied, s) is not None}
    new = {s: getattr(want, s) for s in SETTINGS if getattr(want, s) is not None}
    if not back and not new:
        return claim
    where = locate(config, claim.pf, claim.vf)
    if where is None:
        raise LookupError("cannot apply trust/spoofchk to VF %s: PF %s has no netdev or no "
                          "such VF" % (claim.vf, claim.pf))
    nl = netlink()
    unread = [s for s in new if getattr(applied, s) is None]
    if unread:
        # What the VF had before vfpick touched it: put back when the claim ends.
        now = nl.get_vf(*where)
        restore = restore._replace(**{s: getattr(DRIVER_DEFAULT, s) if getattr(now, s) is None
                                      else getattr(now, s) for s in unread})
    if back:
        nl.set_vf(*where, **{s: (getattr(DRIVER_DEFAULT, s) if v is None else v)
                             for s, v in back.items()})
    try:
        nl.set_vf(*where, **new)
    except Exception:
        undo = {s: getattr(restore, s) for s in unread}
        if undo:
            try:
                nl.set_vf(*where, **undo)  # trust may have been set before spoofchk failed
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise
    applied = VfSettings(**{s: new.get(s) for s in SETTINGS})
    restore = VfSettings(**{s: getattr(restore, s) if s in new else None for s in SETTINGS})
    return claim._replace(applied=None if applied == NONE else applied,
                          restore=None if restore == NONE else restore)


def put_back(config, ended, netlink_factory=None, netlink=None):
    """Puts back the recorded settings of claims that ended; returns one warning per failure.

    Called under the claims lock, like the prepare that set them (rtnetlink answers at once,
    with a 5 s socket timeout): a prepare of the VF's next tenant cannot slip in between.
    netlink: a Netlink to use (left open), else one is opened from netlink_factory if needed.
    """
    from vfpick.errors import VfpickError

    todo = [c for c in ended if c.restore is not None and c.restore != NONE]
    if not todo:
        return []
    own = netlink is None
    netlink, warnings = Netlink(netlink_factory) if own else netlink, []
    try:
        for claim in todo:
            values = {s: v for s, v in zip(SETTINGS, claim.restore) if v is not None}
            what = ", ".join(_word(s, v) for s, v in values.items())
            where = locate(config, claim.pf, claim.vf)
            try:
                if where is None:
                    raise LookupError("PF %s has no netdev or no such VF" % claim.pf)
                netlink().set_vf(*where, **values)
            except (VfpickError, LookupError, OSError) as e:
                warnings.append("cannot put back %s on VF %s (PF %s) after domain '%s': %s"
                                % (what, claim.vf, claim.pf, claim.domain, e))
    finally:
        if own:
            netlink.close()
    return warnings


def manual_fix(config, claim):
    """The `ip link` command that puts back what *claim* recorded, or None."""
    if claim.restore is None or claim.restore == NONE:
        return None
    where = locate(config, claim.pf, claim.vf)
    words = " ".join(_word(s, v) for s, v in zip(SETTINGS, claim.restore) if v is not None)
    if where is None:
        return "ip link set <PF of %s> vf <N> %s" % (claim.vf, words)
    return "ip link set %s vf %d %s" % (where[0], where[1], words)
