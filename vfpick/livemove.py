"""Live moves of a running domain's VFs: ``vfpick drain --live``, ``vfpick rebalance --live``.

A NIC moves live when it is a failover pair (a VF hostdev with ``<teaming type='transient'>``
and a virtio partner with the same MAC, ``<teaming type='persistent'>``: the guest keeps its
traffic on the virtio partner while the VF is away), or, with ``allow_gap``, a plain VF NIC of
a domain that has another NIC on a distinct link (its bond's other leg carries the traffic).
One NIC at a time, never two of a domain in flight; each NIC all the way or back:

1. Under the claims lock: the new VF is reserved BESIDE the old one (pending for this
   process, so a reconcile meanwhile leaves it alone); the pool's trust/spoofchk are applied
   to it. Refused when it is not free: nothing changed.
2. libvirt (lock released): detach the old VF (AFFECT_LIVE); then wait, bounded, until
   libvirt has removed it from the live XML (the guest acknowledges the unplug). A refusal
   or a timeout drops the new reservation: the domain keeps the old VF (or, after a timeout,
   gets it back from libvirt when the guest lets go: its claim stays).
3. Attach the new VF with the same MAC, guest address, alias and teaming. A refusal puts the
   old VF back (attach again); if that fails too, the domain runs on its virtio partner (or
   its other NICs) alone, which the error says in one line. The new reservation is dropped.
4. The persistent definition (AFFECT_CONFIG side: defineXML) and vfpick's metadata are
   updated to the new VF. A refusal moves the live side back (steps 2-3 reversed).
5. Under the lock: the new claim is settled (active), the old one dropped and its VF
   settings put back (vfsettings).

No libvirt call is made under the claims lock. The calls go through ``virt.Devices`` (the
one module that owns libvirt): with ``live=False`` the same steps act on the persistent
definition, which is how the tests drive every step and failure on a host whose simulated
VFs cannot be hot-plugged.
"""

import time
from collections import namedtuple

from lxml import etree

from vfpick import domscan, pci, resolver
from vfpick.host import vfsettings
from vfpick.domain import virt
from vfpick.errors import ClaimConflict, LiveMoveFailed, VfpickError
from vfpick.hostdev import Assignment, DomainXml
from vfpick.state import writer

DETACH_TIMEOUT = 30.0
_POLL = 0.2

NicLive = namedtuple("NicLive", "mac vf kind iface")
NicLive.__doc__ = """A VF NIC of a running domain. kind: 'failover' (a virtio partner shares
the MAC) or 'plain'. iface: its <interface> element as libvirt has it (bytes)."""

Moved = namedtuple("Moved", "uuid name mac vf to_vf warnings")


def _parse(data):
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True,
                                                  load_dtd=False, huge_tree=False))


def _mac_of(iface):
    mac = iface.find("mac")
    return domscan.normalize_mac(mac.get("address")) if mac is not None else None


def _vf_of(iface):
    address = iface.find("source/address")
    if address is None or iface.get("type") != "hostdev":
        return None
    a = address.attrib
    return pci.from_libvirt_attrs(a.get("domain"), a.get("bus"), a.get("slot"), a.get("function"))


def vf_nics(xml):
    """{mac: NicLive} of the VF hostdev interfaces of a domain XML."""
    root = _parse(xml)
    ifaces = root.findall("devices/interface")
    out = {}
    for iface in ifaces:
        vf, mac = _vf_of(iface), _mac_of(iface)
        if vf is None or mac is None:
            continue
        teaming = iface.find("teaming")
        partner = teaming is not None and teaming.get("type") == "transient" and any(
            other is not iface and _mac_of(other) == mac and other.get("type") != "hostdev"
            and other.find("teaming") is not None
            and other.find("teaming").get("type") == "persistent" for other in ifaces)
        out[mac] = NicLive(mac, vf, "failover" if partner else "plain", etree.tostring(iface))
    return out


def may_move(nic, claims, allow_gap):
    """None when *nic* (NicLive) may move live, else why not (one phrase). claims: the
    domain's Claims (the links its other NICs use)."""
    if nic.kind == "failover":
        return None
    if not allow_gap:
        return ("NIC %s is a plain VF (no failover partner): the guest would lose it while it "
                "moves; --allow-nic-gap moves it when another NIC is on a distinct link" % nic.mac)
    mine = [c for c in claims if c.vf == nic.vf]
    link = mine[0].link if mine else None
    if not any(c.vf != nic.vf and c.link != link for c in claims):
        return ("NIC %s is a plain VF and the domain has no other NIC on a distinct link to carry "
                "the traffic meanwhile" % nic.mac)
    return None


def _attach_xml(iface, vf):
    """*iface* (bytes) pointing at *vf*: same MAC, teaming, guest address and user alias."""
    el = _parse(iface)
    address = el.find("source/address")
    for key, value in pci.libvirt_attrs(vf).items():
        address.set(key, value)
    alias = el.find("alias")
    if alias is not None and not (alias.get("name") or "").startswith("ua-"):
        el.remove(alias)  # libvirt names its own aliases; only a user alias is ours to keep
    return etree.tostring(el).decode()


def _gone(devices, vf):
    return vf not in {v for v, _mac in domscan.scan(devices.xml()).hostdev_vfs}


def wait_removed(devices, vf, timeout, clock=time.monotonic, sleep=time.sleep):
    """True once *vf* is no longer in the domain's XML; False after *timeout* seconds. libvirt
    removes a live device only when the guest has acknowledged the unplug."""
    deadline = clock() + timeout
    while True:
        if _gone(devices, vf):
            return True
        if clock() >= deadline:
            return False
        sleep(_POLL)


def _reserve(config, store, uuid, name, mac, old_vf, to_vf, topo, busy, netlink_factory):
    vf = topo.vfs.get(to_vf)
    if vf is None:
        raise ClaimConflict("VF %s is not on this host; nothing moved" % to_vf)
    with store.transaction() as claims:
        old = claims.get(old_vf)
        if old is None or old.uuid != uuid or old.mac != mac:
            raise LiveMoveFailed("domain '%s': VF %s is no longer its NIC %s in vfpick's claims; "
                                 "nothing moved (run 'vfpick reconcile')" % (name, old_vf, mac))
        pool = config.pools.get(old.pool)
        if claims.get(to_vf) is not None or busy.get(to_vf, uuid) != uuid or pool is None \
                or vf.pf not in pool.pfs or vf.pf in claims.drained():
            raise ClaimConflict("VF %s is not free for NIC %s of domain '%s' (claimed, in use, "
                                "drained or not in pool '%s'); nothing moved"
                                % (to_vf, mac, name, old.pool))
        # The same NIC on another VF: what it asks for (pool, rates) stays, the VF's settings
        # are the new VF's own; its rates go to the new VF before the attach.
        new = old._replace(vf=to_vf, pf=vf.pf, link=topo.link_of[vf.pf], domain=name,
                           active=False, pending=writer.me(), applied=None, restore=None)
        if vfsettings.wanted(new, pool):
            nl = vfsettings.Netlink(netlink_factory)
            try:
                new = vfsettings.apply(config, new, pool, nl)
            except Exception as e:  # noqa: BLE001 - netlink, sysfs: one line, nothing changed
                raise LiveMoveFailed("cannot apply trust/spoofchk to VF %s: %s; nothing moved"
                                     % (to_vf, e)) from None
            finally:
                nl.close()
        claims.put(new)
    return old, new


def _forget(config, store, new):
    """Drops the reservation *new* (unless someone changed it) and puts its VF settings back."""
    with store.transaction() as claims:
        held = claims.get(new.vf)
        if held is not None and held.uuid == new.uuid and held.mac == new.mac:
            claims.drop(new.vf)
            return vfsettings.put_back(config, [held])
    return []


def _mark(store, claim, active):
    with store.transaction() as claims:
        held = claims.get(claim.vf)
        if held is not None and held.uuid == claim.uuid and held.mac == claim.mac:
            claims.put(held._replace(active=active))


def _both(store, old, new, live):
    """Both VFs are the domain's now (the live side on *new*, the definition on *old*): the
    reservation is no longer pending, the old claim no longer in use live."""
    with store.transaction() as claims:
        held = claims.get(new.vf)
        if held is not None and held.uuid == new.uuid and held.mac == new.mac:
            claims.put(held._replace(pending=None, active=live))
        gone = claims.get(old.vf)
        if gone is not None and gone.uuid == old.uuid and gone.mac == old.mac:
            claims.put(gone._replace(active=False))


def _settle(config, store, old, new, live):
    with store.transaction() as claims:
        held = claims.get(new.vf)
        if held is None or held.uuid != new.uuid:
            claims.put(new._replace(pending=None, active=live))
        else:
            claims.put(held._replace(pending=None, active=live))
        gone = claims.get(old.vf)
        if gone is not None and gone.uuid == old.uuid and gone.mac == old.mac:
            claims.drop(old.vf)
            return vfsettings.put_back(config, [gone])
    return []


def new_definition(data, mac, new, meta_only=False):
    """(domain XML bytes, vfpick metadata element) with NIC *mac* on the VF of claim *new*."""
    doc = DomainXml.parse(data)
    nic = next((i for i in doc.managed_interfaces() if i.mac == mac), None)
    if nic is None:
        raise VfpickError("the definition has no vfpick NIC %s" % mac)
    # The NIC keeps its <bandwidth> (metadata): a later repick or rebuild reads its rates there.
    doc.apply({nic.index: Assignment(mac=mac, pool=new.pool, vf=new.vf, pf=new.pf,
                                     link=new.link, bandwidth=nic.bandwidth)})
    out = doc.to_bytes()
    meta = _parse(out).find("metadata/{%s}domain" % domscan.NS)
    return out, meta


def _plain_metadata(meta_el):
    plain = etree.Element(etree.QName(meta_el).localname, dict(meta_el.attrib))
    for child in meta_el:
        if isinstance(child.tag, str):
            etree.SubElement(plain, etree.QName(child).localname, dict(child.attrib))
    return etree.tostring(plain).decode()


def _redefine(devices, persistent_xml, store, name, old, new, new_xml, timeout, sleep):
    """Step 4: the definition (persistent_xml(), None for a transient domain) names the new VF
    of claim *new*. None when done; why libvirt refused once the new VF has left the domain
    again; LiveMoveFailed (both VFs claimed) when it cannot leave."""
    lv_error = virt.libvirt_error()
    try:
        data = persistent_xml()
        if data is not None:
            xml, _ = new_definition(data, new.mac, new)
            devices.define(xml)
        return None
    except (lv_error, VfpickError) as e:
        reason = virt.error_message(e) if isinstance(e, lv_error) else str(e)
    try:
        devices.detach(new_xml)
        stuck = None if wait_removed(devices, new.vf, timeout, sleep=sleep) else \
            "the guest has not released VF %s within %g s" % (new.vf, timeout)
    except lv_error as e:
        stuck = "the detach of VF %s (%s)" % (new.vf, virt.error_message(e))
    if stuck:
        _both(store, old, new, devices.live)
        raise LiveMoveFailed(
            "domain '%s': libvirt refused the new definition (%s) and %s: it runs on VF %s, its "
            "definition names VF %s; both stay claimed (run 'vfpick reconcile' once the guest "
            "has let go)" % (name, reason, stuck, new.vf, old.vf))
    return reason


def _live_metadata(devices, name, mac, new, old_vf, warnings):
    """The live side's vfpick metadata names the NIC's new VF; a refusal is one warning."""
    lv_error = virt.libvirt_error()
    try:
        _, meta = new_definition(devices.xml(), mac, new)
        devices.set_metadata(_plain_metadata(meta), domscan.NS, "vfpick")
    except (lv_error, VfpickError) as e:
        warnings.append("NIC %s of '%s' moved, but its live metadata still names VF %s: %s"
                        % (mac, name, old_vf, virt.error_message(e) if isinstance(e, lv_error) else e))


def move_nic(config, devices, name, uuid, mac, to_vf, store=None, topo=None, busy=None,
             allow_gap=False, timeout=DETACH_TIMEOUT, netlink_factory=None, sleep=time.sleep,
             step=None):
    """Moves NIC *mac* of the domain behind *devices* (virt.Devices) to VF *to_vf*, steps 1-5
    above; returns Moved. LiveMoveFailed (or ClaimConflict) says what the domain runs on.
    step(what, vf): told as the old VF is gone ("detached") and the new one in ("attached"):
    the watcher logs them (self-healing's timeline)."""
    step = step or (lambda _what, _vf: None)
    from vfpick.host import topology

    lv_error = virt.libvirt_error()
    store = store or resolver.store_for(config)
    topo = topo or topology.for_config(config)
    busy = resolver.running_vfs(config) if busy is None else busy
    try:
        if devices.live and not devices.running():
            raise LiveMoveFailed("domain '%s' is not running (any more): nothing moved live; "
                                 "'vfpick rebalance' or 'vfpick drain' moves it as a stopped "
                                 "domain" % name)
        nic = vf_nics(devices.xml()).get(mac)
    except lv_error as e:
        raise LiveMoveFailed("libvirt cannot describe domain '%s': %s; nothing moved"
                             % (name, virt.error_message(e))) from None
    if nic is None:
        raise LiveMoveFailed("domain '%s' has no VF NIC %s; nothing moved" % (name, mac))
    why = may_move(nic, store.snapshot().for_uuid(uuid), allow_gap)
    if why:
        raise LiveMoveFailed("domain '%s' stays as it is: %s" % (name, why))
    alone = ("its virtio partner alone" if nic.kind == "failover" else
             "its other NICs alone (NIC %s is out)" % mac)
    old, new = _reserve(config, store, uuid, name, mac, nic.vf, to_vf, topo, busy,
                        netlink_factory)
    old_xml, new_xml = _attach_xml(nic.iface, nic.vf), _attach_xml(nic.iface, to_vf)

    def put_old_back(why):
        """The old VF attached again after *why*; the one-line error either way."""
        warnings = _forget(config, store, new)
        try:
            devices.attach(old_xml)
        except lv_error as e:
            _mark(store, old, False)  # the definition still names it: reserved, not in use
            return LiveMoveFailed(
                "domain '%s': %s, and VF %s could not be attached again (%s): it runs on %s; its "
                "definition keeps VF %s (claimed); run the move again or restart the domain"
                % (name, why, nic.vf, virt.error_message(e), alone, nic.vf)), warnings
        return LiveMoveFailed("domain '%s': %s; VF %s is back, nothing moved"
                              % (name, why, nic.vf)), warnings

    # 2. Detach the old VF, wait for libvirt to remove it.
    try:
        devices.detach(old_xml)
    except lv_error as e:
        _forget(config, store, new)
        raise LiveMoveFailed("libvirt refused to detach VF %s from domain '%s': %s; it keeps "
                             "the VF, nothing moved" % (nic.vf, name, virt.error_message(e))) from None
    if not wait_removed(devices, nic.vf, timeout, sleep=sleep):
        _forget(config, store, new)
        raise LiveMoveFailed(
            "the guest of '%s' has not released VF %s within %g s: libvirt still lists it, so it "
            "stays claimed and nothing moved (should the guest let go later, it runs on %s); "
            "check the guest (ACPI hotplug), then run the move again"
            % (name, nic.vf, timeout, alone))
    step("detached", nic.vf)
    # 3. Attach the new VF: same MAC, teaming, guest address.
    try:
        devices.attach(new_xml)
    except lv_error as e:
        err, _ = put_old_back("libvirt refused to attach VF %s (%s)" % (to_vf, virt.error_message(e)))
        raise err from None
    step("attached", to_vf)
    # 4. The definition and the metadata follow.
    warnings = []
    reason = _redefine(devices, devices.persistent_xml, store, name, old, new, new_xml,
                       timeout, sleep)
    if reason:
        err, _ = put_old_back("libvirt refused the new definition (%s), so VF %s left again"
                              % (reason, to_vf))
        raise err
    if devices.live:
        _live_metadata(devices, name, mac, new, nic.vf, warnings)
    # 5. Settle: the new claim is the NIC's, the old one ends.
    warnings += _settle(config, store, old, new, devices.live)
    return Moved(uuid, name, mac, nic.vf, to_vf, warnings)


def replace_lost(config, devices, name, uuid, mac, to_vf, store=None, topo=None, busy=None,
                 netlink_factory=None, step=None, timeout=DETACH_TIMEOUT, sleep=time.sleep):
    """Gives NIC *mac*, whose VF QEMU already unplugged from the running domain (its VF
    vanished: sriov_numvfs lowered, the PF removed; the live XML no longer has it, the
    definition still does), VF *to_vf*: steps 1, 3, 4 and 5 above, no detach. The NIC is taken
    from the persistent definition (same MAC, teaming, guest address). Returns Moved; on a
    failure (LiveMoveFailed, ClaimConflict) the NIC stays out as it was, its claim kept."""
    from vfpick.host import topology

    lv_error = virt.libvirt_error()
    step = step or (lambda _what, _vf: None)
    store = store or resolver.store_for(config)
    topo = topo or topology.for_config(config)
    busy = resolver.running_vfs(config) if busy is None else busy
    try:
        if devices.live and not devices.running():
            raise LiveMoveFailed("domain '%s' is not running (any more): nothing attached" % name)
        if mac in vf_nics(devices.xml()):
            raise LiveMoveFailed("domain '%s' still has its VF NIC %s: nothing attached (a "
                                 "move detaches it first)" % (name, mac))
        data = devices.persistent_xml()
    except lv_error as e:
        raise LiveMoveFailed("libvirt cannot describe domain '%s': %s; nothing attached"
                             % (name, virt.error_message(e))) from None
    nic = vf_nics(data).get(mac) if data is not None else None
    if nic is None:
        raise LiveMoveFailed("domain '%s' has no VF NIC %s in its definition; nothing attached"
                             % (name, mac))
    old, new = _reserve(config, store, uuid, name, mac, nic.vf, to_vf, topo, busy,
                        netlink_factory)
    new_xml = _attach_xml(nic.iface, to_vf)
    try:
        devices.attach(new_xml)
    except lv_error as e:
        _forget(config, store, new)
        raise LiveMoveFailed("libvirt refused to attach VF %s to domain '%s' (%s): NIC %s stays "
                             "out (its VF %s is gone), nothing attached"
                             % (to_vf, name, virt.error_message(e), mac, nic.vf)) from None
    step("attached", to_vf)
    warnings = []
    reason = _redefine(devices, lambda: data, store, name, old, new, new_xml, timeout, sleep)
    if reason:
        _forget(config, store, new)
        raise LiveMoveFailed("domain '%s': libvirt refused the new definition (%s), so VF %s "
                             "left again: NIC %s stays out, nothing attached"
                             % (name, reason, to_vf, mac))
    if devices.live:
        _live_metadata(devices, name, mac, new, nic.vf, warnings)
    warnings += _settle(config, store, old, new, devices.live)
    return Moved(uuid, name, mac, nic.vf, to_vf, warnings)


def move_running_domain(config, conn, who, targets, allow_gap=False, timeout=DETACH_TIMEOUT, live=True,
                store=None, topo=None, netlink_factory=None):
    """Moves the NICs *targets* ({mac: vf}) of the running domain *who*, one after the other
    (never two in flight). Returns [Moved]; the first failure stops the domain's moves
    (LiveMoveFailed: the NICs before it moved, it did not). live=False: the same steps on
    the persistent definition of a stopped domain (tests)."""
    dom = virt.lookup(conn, who)
    devices = virt.Devices(dom, live=live)
    name, uuid = virt.identity(dom)
    done = []
    for mac, to_vf in sorted(targets.items()):
        done.append(move_nic(config, devices, name, uuid, mac, to_vf, store=store, topo=topo,
                             allow_gap=allow_gap, timeout=timeout,
                             netlink_factory=netlink_factory))
    return done
