"""NIC hotplug: `vfpick attach DOMAIN FILE` and `vfpick detach DOMAIN MAC`.

attach: the pool interface gets a VF distinct from the domain's other NICs (its VFs count as
held, as in a full resolve), the claim is written first, then libvirt's attachDeviceFlags; a
refusal rolls the claim back. The NIC's <bandwidth> is placed and recorded as define does it
(claim rates, vfpick:nic metadata; none on the hostdev interface). A live attach sets the
pool's trust/spoofchk and the claim's rates on the VF before libvirt's call, as prepare does at
start (vfsettings, under the claims lock), and puts them back when libvirt refuses. vfpick's
metadata (one vfpick:nic per MAC) is updated with setMetadata on each side that changed (live,
persistent), so the domain can be re-resolved.
detach: libvirt's detachDeviceFlags; a live detach is only complete when the guest has let
go of the device and libvirt removed it from the live XML: until then (bounded wait) the claim
stays. The claims lock is never held while libvirt is called.
"""

import time

from lxml import etree

from vfpick import bandwidth, domscan, resolver
from vfpick.host import vfsettings
from vfpick.domain import virt, xmlsplice
from vfpick.commands import Report
from vfpick.errors import LibvirtFailure, UnknownPool, VfpickError, XmlError
from vfpick.hostdev import Assignment, DomainXml
from vfpick.domscan import MAX_DEPTH
from vfpick.where import where
from vfpick.state import writer

DETACH_TIMEOUT = 30.0
_POLL = 0.2


def _targets(api, dom, live, config):
    """[side] (virt.LIVE, virt.PERSISTENT) to change; virsh's defaults when neither is asked."""
    active, persistent = api.is_running(dom), api.is_persistent(dom)
    if not live and not config:
        live, config = active, not active
    if live and not active:
        raise VfpickError("domain '%s' is not running: use --config to change its definition"
                          % api.identity(dom)[0])
    if config and not persistent:
        raise VfpickError("domain '%s' is transient (no persistent definition): drop --config"
                          % api.identity(dom)[0])
    return ([virt.LIVE] if live else []) + ([virt.PERSISTENT] if config else [])


def _parse_element(data, what):
    try:
        return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True,
                                                      load_dtd=False, huge_tree=False))
    except etree.XMLSyntaxError as e:
        raise XmlError("%s is not well-formed XML: %s" % (what, (str(e).splitlines() or ["?"])[0]))


def parse_nic(config, data):
    """(pool, mac or None, <interface> element) of the one pool interface in *data*."""
    # Refused as a domain is (size, encoding, any DTD in any encoding) and no deeper than it
    # may be where it goes (domain/devices/interface): before any claim is written.
    iface = xmlsplice.parse_fragment(data, "the interface XML", MAX_DEPTH - 2)
    source = iface.find("source")
    network = None if source is None else source.get("network")
    if iface.tag != "interface" or iface.get("type") != "network" or not network:
        raise XmlError("give one pool interface: <interface type='network'><source "
                       "network='POOL'/></interface> (pools: %s)" % ", ".join(config.pools))
    if network not in config.pools:
        raise UnknownPool("network '%s' is not a vfpick pool (pools: %s)"
                          % (network, ", ".join(config.pools) or "none"))
    if iface.find("teaming") is not None or config.pools[network].failover is not None:
        raise VfpickError("hotplug of a failover (teaming) NIC is not supported; add it to the "
                          "definition with 'vfpick define'")
    mac_el = iface.find("mac")
    return network, None if mac_el is None else domscan.normalize_mac(mac_el.get("address")), iface


def _with_nic(base_xml, iface):
    """Domain XML *base_xml* with *iface* appended to <devices>; (bytes, its interface index)."""
    root = _parse_element(base_xml, "the domain XML")
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    index = len(devices.findall("interface"))
    devices.append(iface)
    return etree.tostring(root), index


def _resolved_parts(base_xml, iface, assignment):
    """(hostdev <interface> XML, vfpick:domain metadata element) for *base_xml* plus the new NIC."""
    data, index = _with_nic(base_xml, iface)
    doc = DomainXml.parse(data)
    doc.apply({index: assignment})
    root = etree.fromstring(doc.to_bytes())
    new = root.findall("devices/interface")[index]
    return etree.tostring(new).decode(), root.find("metadata/{%s}domain" % domscan.NS)


def _set_metadata(api, dom, side, meta_el):
    """Replaces vfpick's <metadata> element. libvirt wants it without a namespace: it puts the
    element in *uri* under the prefix *key* itself (and fails on a namespaced one)."""
    plain = etree.Element(etree.QName(meta_el).localname, dict(meta_el.attrib))
    for child in meta_el:
        if isinstance(child.tag, str):
            etree.SubElement(plain, etree.QName(child).localname, dict(child.attrib))
    api.set_metadata(dom, side, etree.tostring(plain).decode(), domscan.NS, "vfpick")


def _apply_live(config, store, claim, netlink_factory, warnings):
    """Sets the VF settings of a live attach's claim, as prepare does (under the claims lock);
    returns the claim recording applied/restore. A refusal raises VfpickError, nothing set."""
    pool = config.pools.get(claim.pool)
    if not vfsettings.wanted(claim, pool):
        return claim
    netlink = vfsettings.Netlink(netlink_factory)
    try:
        with store.transaction() as claims:
            if claims.get(claim.vf) != claim:
                return claim  # changed meanwhile (reconcile): the next prepare sets them
            try:
                new = vfsettings.apply(config, claim, pool, netlink, warnings)
            except (VfpickError, LookupError, OSError) as e:
                raise VfpickError("cannot set the VF settings of NIC %s on VF %s: %s"
                                  % (claim.mac, claim.vf, " ".join(str(e).split()))) from None
            claims.put(new)
            return new
    finally:
        netlink.close()


def cmd_attach(config, uri, who, data, live=False, persistent=False, rng=None,
               netlink_factory=None, libvirt_api=virt):
    """Report.result: the new NIC's claim. libvirt_api: the libvirt calls (vfpick.domain.virt's
    connect, lookup, identity, is_running, is_persistent, side_xml, attach, set_metadata,
    close); a test's stand-in where no libvirt can hot-plug a VF."""
    api = libvirt_api
    pool_name, mac, iface = parse_nic(config, data)
    bw = bandwidth.from_interface(iface, "the interface (network '%s')" % pool_name)
    lv_error = virt.libvirt_error()
    store = resolver.store_for(config)
    conn = api.connect(uri)
    try:
        dom = api.lookup(conn, who)
        targets = _targets(api, dom, live, persistent)
        xmls = {side: api.side_xml(dom, side) for side in targets}
        name, uuid = api.identity(dom)
        docs = [DomainXml.parse(x) for x in xmls.values()]
        if mac is not None and any(mac in d.macs() for d in docs):
            raise VfpickError("domain '%s' already has an interface with MAC %s" % (name, mac))
        # Both definitions, whichever is changed: a claim neither uses is no NIC of the domain.
        definitions = [domscan.scan(x) for x in _definitions(api, dom, xmls)]
        # Policy overrides and NUMA placement: from the persistent side when it is changed.
        # Pending until libvirt answered: a reconcile listing the domain meanwhile (without
        # the new VF) must not drop it (docs/DESIGN.md, "Reconcile").
        me = writer.me()
        extra = resolver.claim_extra_nic(config, docs[-1], uuid, pool_name, mac,
                                         definitions, rng=rng, store=store, pending=me, bw=bw)
        claim, warnings = extra.claim, list(extra.warnings)
        applied = False
        # From the claim to libvirt's answer, ANY failure (a refusal, a parse error, a bug, an
        # interrupt) rolls the claim back, and a live attach's VF settings with it.
        try:
            if virt.LIVE in targets:
                # Before libvirt's call: the guest never sees the VF without them.
                fresh = claim.applied is None
                try:
                    claim = _apply_live(config, store, claim, netlink_factory, warnings)
                except VfpickError as e:
                    raise VfpickError("%s (no claim changed)" % e) from None
                applied = fresh and claim.applied is not None
                extra = extra._replace(claim=claim)
            parts = _attach_parts(xmls, targets, iface, pool_name, claim, bw)
            try:
                # One call for both sides: libvirt changes live and persistent together or neither.
                api.attach(dom, parts[targets[0]][0], targets)
            except lv_error as e:
                raise LibvirtFailure("libvirt refused to attach the NIC to '%s': %s (no claim "
                                     "changed)" % (name, virt.error_message(e))) from None
        except BaseException as e:
            back = resolver.roll_back_extra_nic(store, extra, config if applied else None,
                                                netlink_factory)
            if back and isinstance(e, VfpickError):
                raise type(e)("%s%s" % (e, "".join("; " + w for w in back))) from None
            raise
        for side in targets:
            try:
                _set_metadata(api, dom, side, parts[side][1])
            except lv_error as e:
                warnings.append("NIC %s attached, but its %s metadata was not recorded: %s"
                                % (claim.mac, side, virt.error_message(e)))
    finally:
        api.close(conn)
    resolver.settle_claims(store, claim.uuid, me)
    warnings += resolver.end_unused(config, store, extra, netlink_factory)
    if virt.LIVE in targets:
        _update(store, claim, active=True)
    line = "attached %s to domain '%s' (%s): %s" % (
        claim.mac, name, " and ".join(targets), where(claim.vf, claim.link, claim.pf))
    return Report((line,), tuple(warnings), claim)


def _attach_parts(xmls, targets, iface, pool_name, claim, bw):
    """{side: _resolved_parts} of the NIC placed on *claim*'s VF (gets the claim's MAC)."""
    assignment = Assignment(mac=claim.mac, pool=pool_name, vf=claim.vf, pf=claim.pf,
                            link=claim.link, bandwidth=bw)
    if iface.find("mac") is None:
        etree.SubElement(iface, "mac", address=claim.mac)
    parts = {side: _resolved_parts(xmls[side], iface, assignment) for side in targets}
    return parts


def _definitions(api, dom, xmls):
    """The live XML (when running) and the persistent one (when defined), reusing *xmls*."""
    out = []
    for side, wanted in ((virt.LIVE, api.is_running(dom)), (virt.PERSISTENT, api.is_persistent(dom))):
        if wanted:
            out.append(xmls[side] if side in xmls else api.side_xml(dom, side))
    return out


def _update(store, claim, active):
    with store.transaction() as claims:
        current = claims.get(claim.vf)
        if current is not None and current.uuid == claim.uuid and current.mac == claim.mac:
            claims.put(current._replace(active=active))


def _interfaces_with_mac(xml, mac):
    root = _parse_element(xml, "the domain XML")
    found = [i for i in root.findall("devices/interface")
             if i.find("mac") is not None and domscan.normalize_mac(i.find("mac").get("address")) == mac]
    # A failover pair shares the MAC: the VF (transient) goes first, then its virtio partner.
    return sorted(found, key=lambda i: i.get("type") != "hostdev")


def wait_removed(fetch_live_xml, mac, timeout, clock=time.monotonic, sleep=time.sleep):
    """True once the live XML has no interface with *mac*; False after *timeout* seconds."""
    deadline = clock() + timeout
    while True:
        if not _interfaces_with_mac(fetch_live_xml(), mac):
            return True
        if clock() >= deadline:
            return False
        sleep(_POLL)


def _without_nic_metadata(xml, mac):
    """vfpick:domain metadata element of *xml* without the entry for *mac*; None when there is none."""
    root = _parse_element(xml, "the domain XML")
    meta = root.find("metadata/{%s}domain" % domscan.NS)
    if meta is None:
        return None
    for nic in meta.findall("{%s}nic" % domscan.NS):
        if domscan.normalize_mac(nic.get("mac")) == mac:
            meta.remove(nic)
    return meta


def cmd_detach(config, uri, who, mac, live=False, persistent=False, timeout=None,
               netlink_factory=None, libvirt_api=virt):
    """Report.result: the VFs released. libvirt_api: as cmd_attach's (also detach, live_xml)."""
    api = libvirt_api
    timeout = DETACH_TIMEOUT if timeout is None else timeout
    wanted = domscan.normalize_mac(mac)
    lv_error = virt.libvirt_error()
    conn = api.connect(uri)
    try:
        dom = api.lookup(conn, who)
        name, uuid = api.identity(dom)
        targets = _targets(api, dom, live, persistent)
        found, removed = {}, []
        for label in targets:
            xml = api.side_xml(dom, label)
            ifaces = _interfaces_with_mac(xml, wanted)
            if not ifaces:
                # Removed behind vfpick's back (virsh detach-interface): vfpick's claim or
                # metadata for the MAC is what is left to settle.
                if not _ours(resolver.store_for(config), uuid, xml, wanted):
                    raise VfpickError("domain '%s' has no interface with MAC %s in its %s "
                                      "definition" % (name, wanted, label))
                removed.append(label)
                continue
            if not any(i.get("type") == "hostdev" for i in ifaces):
                raise VfpickError("the interface %s of domain '%s' is not a VF (type '%s'): use "
                                  "virsh detach-interface" % (wanted, name, ifaces[0].get("type")))
            found[label] = ifaces
        for label in targets:
            for iface in found.get(label, ()):
                try:
                    api.detach(dom, etree.tostring(iface).decode(), label)
                except lv_error as e:
                    raise LibvirtFailure("libvirt refused to detach %s from '%s' (%s): %s (no claim "
                                         "changed)" % (wanted, name, label, virt.error_message(e))) from None
        if virt.LIVE in found and not wait_removed(lambda: api.live_xml(dom), wanted, timeout):
            raise LibvirtFailure(
                "the guest of '%s' has not released %s within %g s: libvirt still lists it, so its "
                "VF stays claimed; check the guest (ACPI hotplug), then run 'vfpick detach %s %s "
                "--live' again, or 'vfpick reconcile' once it is gone"
                % (name, wanted, timeout, name, wanted))
        for side in targets:
            meta = _without_nic_metadata(api.side_xml(dom, side), wanted)
            if meta is not None:
                try:
                    _set_metadata(api, dom, side, meta)
                except lv_error:
                    pass  # the NIC is gone; a stale entry for a MAC with no interface is ignored
        # After the device is gone: the VF is free unless the other side still uses it.
        still = set()
        live_now = api.is_running(dom)
        for side in ([virt.LIVE] if live_now else []) + (
                [virt.PERSISTENT] if api.is_persistent(dom) else []):
            still.update(vf for vf, m in domscan.scan(api.side_xml(dom, side)).hostdev_vfs if m == wanted)
        running_vfs = {vf for vf, m in domscan.scan(api.live_xml(dom)).hostdev_vfs} \
            if live_now else set()
    finally:
        api.close(conn)
    released, ended = [], []
    with resolver.store_for(config).transaction() as claims:
        for claim in claims.for_uuid(uuid):
            if claim.mac != wanted:
                continue
            if claim.vf in still:
                claims.put(claim._replace(active=claim.vf in running_vfs))
            else:
                claims.drop(claim.vf)
                released.append(claim.vf)
                ended.append(claim)
        warnings = vfsettings.put_back(config, ended, netlink_factory)
    detached = [label for label in targets if label not in removed]
    line = "%s%s%s" % (
        "detached %s from domain '%s' (%s)" % (wanted, name, " and ".join(detached))
        if detached else "NIC %s of domain '%s'" % (wanted, name),
        "%s already removed from its %s definition (not by vfpick)"
        % ("; it was" if detached else " was", " and ".join(removed)) if removed else "",
        "; released VF %s and its metadata" % ", ".join(released) if released else
        "; its VF stays claimed (the other definition still uses it)" if still else
        "; its metadata is released")
    return Report((line,), tuple(warnings), released)


def _ours(store, uuid, xml, mac):
    """Whether vfpick still holds something for *mac* of the domain: a claim, or a vfpick:nic
    entry in *xml* (its interface is gone)."""
    if any(c.mac == mac for c in store.snapshot().for_uuid(uuid)):
        return True
    return any(domscan.normalize_mac(n.mac or "") == mac for n in domscan.scan(xml).meta_nics)
