"""A NIC's <bandwidth>, as libvirt users write it, turned into VF rates.

On a pool interface (``<interface type='network'>``)::

    <bandwidth>
      <inbound floor='1250000'/>                     <!-- the guarantee (min_tx_rate) -->
      <outbound average='2500000' peak='3125000'/>   <!-- the rate (its weight), the cap -->
    </bandwidth>

libvirt's units are KiB/s (1 KiB/s = 8192 bit/s); IFLA_VF_RATE's are Mb/s (10^6 bit/s), whole
numbers. The conversion rounds UP (``ceil(KiB/s x 8192 / 10^6)``): a small rate never becomes
0, which the kernel reads as "no limit", and a guarantee never shrinks; the error is below
1 Mb/s. ``average`` is the NIC's rate: its weight on a link and, without ``peak``, its
max_tx_rate; ``peak`` (the ceiling libvirt's own shaper lets it reach) is the max_tx_rate when
given. ``floor`` is libvirt's guarantee; libvirt spells it only on ``<inbound>`` (``virsh
define`` refuses it on ``<outbound>``), so vfpick reads ``<inbound floor>`` as the NIC's
guaranteed rate (min_tx_rate: a VF's limiter shapes what the guest sends). ``burst`` and
inbound average/peak have no VF equivalent and are ignored. libvirt defines a hostdev
interface with <bandwidth> but refuses its start, so the resolved interface has none: vfpick
keeps it in its metadata (``<vfpick:nic average= peak= floor=>``, KiB/s as written) and in the
claim (Mb/s).
"""

from collections import namedtuple

from vfpick import numbers
from vfpick.names import printable
from vfpick.errors import XmlError

Bandwidth = namedtuple("Bandwidth", "average peak floor")
Bandwidth.__doc__ = """KiB/s (libvirt's units), each a positive int or None."""

# libvirt stores rates as unsigned long long; Mb/s go into IFLA_VF_RATE's u32.
MAX_KIB = (0xFFFFFFFF * 10 ** 6) // 8192
ATTRS = Bandwidth._fields


def mbps(kib):
    """KiB/s -> Mb/s, rounded up; None stays None."""
    return None if kib is None else -(-kib * 8192 // 10 ** 6)


def _rate(text, what):
    if text is None:
        return None
    value = numbers.whole(text.strip(), 1, MAX_KIB)
    if value is None:
        raise XmlError("%s='%s' is not a rate in KiB/s (a whole number from 1 to %d)"
                       % (what, text.strip()[:40], MAX_KIB))
    return value


def from_interface(iface, label):
    """Bandwidth of a pool interface's <bandwidth> (lxml element *iface*), None without one.
    label names the interface in errors."""
    element = iface.find("bandwidth")
    if element is None:
        return None
    outbound, inbound = element.find("outbound"), element.find("inbound")
    where = "%s: <bandwidth><%%s %%s" % label
    average = peak = floor = None
    if outbound is not None:
        if outbound.get("floor") is not None:
            raise XmlError(where % ("outbound", "floor>") + ": libvirt accepts floor only on "
                           "<inbound>; write the guarantee as <inbound floor='KiB/s'/>")
        average = _rate(outbound.get("average"), where % ("outbound", "average"))
        peak = _rate(outbound.get("peak"), where % ("outbound", "peak"))
        if average is None and (peak is not None or outbound.get("burst") is not None):
            raise XmlError(where % ("outbound", "average>") + " is missing: libvirt requires "
                           "it beside peak or burst")
        if peak is not None and peak < average:
            raise XmlError(where % ("outbound", "peak='%d'>" % peak) + " is below its average "
                           "(%d KiB/s)" % average)
    if inbound is not None:
        floor = _rate(inbound.get("floor"), where % ("inbound", "floor"))
    if average is None and floor is None:
        return None
    if floor is not None and average is not None and floor > average:
        # The VF would be asked for min_tx_rate > max_tx_rate, which rtnetlink refuses.
        raise XmlError(where % ("inbound", "floor='%d'>" % floor) + " is above its <outbound "
                       "average='%d'>: a guarantee cannot exceed the NIC's own rate" % average)
    return Bandwidth(average, peak, floor)


def from_attrs(get, label="<vfpick:nic>"):
    """Bandwidth from vfpick:nic attributes (get: name -> text or None); None when none is set.
    The metadata is part of the domain's XML, so input from whoever may define domains: checked
    as a pool interface's <bandwidth> is (whole KiB/s within bounds, peak >= average,
    floor <= average); XmlError naming *label* otherwise. The one reader of metadata rates
    (hostdev for resolve, of_meta for the hook and reconcile)."""
    values = [_rate(get(name), "%s %s" % (label, name)) for name in ATTRS]
    bw = Bandwidth(*values)
    if bw.average is None and bw.peak is not None:
        raise XmlError("%s has a peak without an average" % label)
    if bw.peak is not None and bw.peak < bw.average:
        raise XmlError("%s peak='%d' is below its average (%d KiB/s)" % (label, bw.peak, bw.average))
    if bw.floor is not None and bw.average is not None and bw.floor > bw.average:
        raise XmlError("%s floor='%d' is above its average (%d KiB/s)"
                       % (label, bw.floor, bw.average))
    return bw if any(v is not None for v in values) else None


def claim_rates(bw):
    """The rate fields of a Claim (``rate_mbps``, ``peak_mbps``, ``min_rate_mbps``) for the
    NIC's Bandwidth or None, as keyword arguments."""
    rate, peak, floor = rates(bw)
    return {"rate_mbps": rate, "peak_mbps": peak, "min_rate_mbps": floor}


def of_meta(nic):
    """claim_rates() of what a domscan.MetaNic records (its bandwidth is ATTRS' texts, in
    order), or of none: what a claim rebuilt from the metadata (lost state) carries.
    XmlError for rates from_attrs refuses."""
    if nic is None or nic.bandwidth is None:
        return claim_rates(None)
    return claim_rates(from_attrs(dict(zip(ATTRS, nic.bandwidth)).get,
                                  "<vfpick:nic mac='%s'>" % printable((nic.mac or "")[:40])))


def to_attrs(bw):
    """[(name, text)] for vfpick:nic; None values are left out by the writer."""
    if bw is None:
        return [(name, None) for name in ATTRS]
    return [(name, None if v is None else str(v)) for name, v in zip(ATTRS, bw)]


def rates(bw):
    """(rate_mbps, peak_mbps, min_rate_mbps) of a Bandwidth or None."""
    if bw is None:
        return None, None, None
    return mbps(bw.average), mbps(bw.peak), mbps(bw.floor)


def vf_rates(rate_mbps, peak_mbps, min_rate_mbps):
    """(max_tx_rate, min_tx_rate) to set on the VF for a claim's rates; (None, None): none."""
    cap = peak_mbps or rate_mbps
    if cap is None and min_rate_mbps is None:
        return None, None
    return cap or 0, min_rate_mbps or 0
