"""VF trust/spoofchk and rates: set at prepare, recorded in the claim, put back when it ends.

A pool's ``trust``/``spoofchk`` are set on the VF by the prepare hook. Before vfpick sets one
for the first time on a claim, it reads the VF's value (RTM_GETLINK) and records it in the
claim's ``restore``; when the claim ends (release of a transient domain, ``vfpick release``,
a repick that moves the NIC, a reconcile that drops the claim of an undefined domain), the
recorded values are set again, so no VF carries a previous tenant's ``trust on`` or
``spoofchk off`` into a pool that leaves them unset. A driver that does not report a setting
gets the driver default back (trust off, spoofchk on): the safe side.

Rates come from the claim, not the pool: the NIC's <bandwidth> (vfpick.bandwidth) becomes
max_tx_rate / min_tx_rate (IFLA_VF_RATE, one request for both), recorded and put back the same
way (no rate: 0, no limit). A driver that refuses them (igb, ixgbe, i40e have no min_tx_rate)
is one warning naming the VF and the driver, and the cap alone is tried; in a pool with
``guarantee = yes`` the start is refused instead, since the guarantee is part of its promise.

On the hook path: imports only records; vfpick.host.netlink (stdlib rtnetlink) when a VF is touched.
"""

from vfpick.records import VfSettings

NONE = VfSettings(trust=None, spoofchk=None)
DRIVER_DEFAULT = VfSettings(trust=False, spoofchk=True)
SETTINGS = VfSettings._fields
FLAGS = ("trust", "spoofchk")
RATES = ("max_tx_rate", "min_tx_rate")


def _default(setting):
    """What a VF that reports nothing gets back: trust off, spoofchk on, no rate limit (0)."""
    return 0 if setting in RATES else getattr(DRIVER_DEFAULT, setting)


def _word(name, value):
    if name in RATES:
        return "%s %d" % (name, value)
    return "%s %s" % (name, "on" if value else "off")


def claim_rates(claim):
    """(max_tx_rate, min_tx_rate) the claim's NIC asks for, (None, None) without a rate."""
    from vfpick.bandwidth import vf_rates

    return vf_rates(claim.rate_mbps, claim.peak_mbps, claim.min_rate_mbps)


def locate(config, pf, vf):
    """(PF netdev, VF index), or None when sysfs no longer shows them."""
    from vfpick.host import topology

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
                from vfpick.host.netlink import open_netlink as factory
            else:
                factory = self._factory
            self._nl = factory()
        return self._nl

    def close(self):
        if self._nl is not None:
            self._nl.close()


def wanted(claim, pool):
    """Whether prepare has VF settings to apply or to take back for this claim."""
    return claim.applied is not None or claim.rate_mbps is not None or \
        claim.min_rate_mbps is not None or (pool is not None and (
            pool.trust is not None or pool.spoofchk is not None))


def apply(config, claim, pool, netlink, warnings=None):
    """Sets the pool's settings and the claim's rates on its VF; returns the claim with
    applied/restore.

    netlink: a callable returning the netlink object (opened once, on demand). Settings the
    claim applied earlier but no longer asks for are put back first. Raises NetlinkError,
    or LookupError when the VF cannot be found in sysfs; a failed set is undone as far as it can.
    warnings: a list for one line per rate the driver refused (outside guarantee = yes).
    """
    want = VfSettings(pool.trust if pool else None, pool.spoofchk if pool else None,
                      *claim_rates(claim))
    applied, restore = claim.applied or NONE, claim.restore or NONE
    back = {s: getattr(restore, s) for s in SETTINGS
            if getattr(want, s) is None and getattr(applied, s) is not None}
    new = {s: getattr(want, s) for s in SETTINGS if getattr(want, s) is not None}
    if not back and not new:
        return claim
    where = locate(config, claim.pf, claim.vf)
    if where is None:
        raise LookupError("cannot apply VF settings to VF %s: PF %s has no netdev or no "
                          "such VF" % (claim.vf, claim.pf))
    nl = netlink()
    unread = [s for s in new if getattr(applied, s) is None]
    if unread:
        # What the VF had before vfpick touched it: put back when the claim ends.
        now = nl.get_vf(*where)
        restore = restore._replace(**{s: _default(s) if getattr(now, s) is None
                                      else getattr(now, s) for s in unread})
    if back:
        nl.set_vf(*where, **{s: (_default(s) if v is None else v)
                             for s, v in back.items()})
    try:
        flags = {s: v for s, v in new.items() if s in FLAGS}
        if flags:
            nl.set_vf(*where, **flags)
        if "max_tx_rate" in new:
            got = _set_rates(config, claim, pool, nl, where, new, warnings)
            for s in RATES:
                if got is None:
                    del new[s]
                    unread = [u for u in unread if u != s]
                else:
                    new[s] = got[RATES.index(s)]
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


def _driver(config, pf):
    from vfpick.host import topology

    record, _ = topology.read_pf(config.sysfs_root, pf, with_vfs=False)
    return (record.driver if record is not None else None) or "unknown"


def _set_rates(config, claim, pool, nl, where, new, warnings):
    """Sets the claim's rates; returns the (max, min) set, or None when the driver took none.
    Raises NetlinkError when the driver refuses and the pool guarantees."""
    from vfpick.errors import VfpickError
    from vfpick.host.netlink import NetlinkError

    high, low = new["max_tx_rate"], new["min_tx_rate"]
    try:
        nl.set_vf(*where, max_tx_rate=high, min_tx_rate=low)
        return high, low
    except VfpickError as e:
        first = e
    vf = "VF %s (VF %d of %s, driver %s)" % (claim.vf, where[1], where[0], _driver(config, claim.pf))
    why = str(first).rsplit(": ", 1)[-1]
    if pool is not None and pool.guarantee:
        raise NetlinkError("%s refuses max_tx_rate %d min_tx_rate %d Mb/s (%s), and pool '%s' has "
                           "guarantee = yes: give the NIC a pool on a NIC whose driver can, or "
                           "drop its <bandwidth>" % (vf, high, low, why, pool.name),
                           where[0], where[1], "rate", getattr(first, "errno", None))
    if low:
        try:
            nl.set_vf(*where, max_tx_rate=high, min_tx_rate=0)
            _warn(warnings, "%s refuses min_tx_rate %d Mb/s (%s): capped at max_tx_rate %d "
                  "only; the guarantee holds in placement, not on the NIC" % (vf, low, why, high))
            return high, 0
        except VfpickError as e:
            why = str(e).rsplit(": ", 1)[-1]
    _warn(warnings, "%s refuses max_tx_rate %d min_tx_rate %d Mb/s (%s): the VF runs without a "
          "rate limit" % (vf, high, low, why))
    return None


def _warn(warnings, text):
    if warnings is not None:
        warnings.append(text)


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
