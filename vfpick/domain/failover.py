"""virtio-net failover pairs: ``[pool NAME] failover = bridge:BR | network:NET``.

Each unresolved NIC of such a pool becomes two interfaces with one MAC: a virtio NIC on BR/NET
(``<teaming type='persistent'/>``, alias ``ua-vfpick-MAC``) and the pool interface, which the
resolver then turns into the VF hostdev, carrying ``<teaming type='transient'
persistent='ua-vfpick-MAC'/>``. libvirt (>= 6.1) and QEMU (>= 4.2) then unplug the VF before a
migration and plug the destination's VF after it; the guest's net_failover driver keeps the
traffic on virtio in between. The migrate filter only moves the hostdev to a VF of the
destination: the pair is made once, at define time.

A pool interface that already has a ``<teaming>`` is a pair its author wrote by hand: it is
left as it is (the teaming rides along to the hostdev).
"""

from lxml import etree

from vfpick.errors import UnknownPool


def alias_for(mac):
    """libvirt user aliases must start with ``ua-``; one per MAC keeps the pair findable."""
    return "ua-vfpick-" + mac.replace(":", "")


def _partner(failover, mac, alias):
    source = ("<source bridge='%s'/>" if failover.kind == "bridge" else "<source network='%s'/>") \
        % failover.name
    children = ["<mac address='%s'/>" % mac, source, "<model type='virtio'/>",
                "<teaming type='persistent'/>", "<alias name='%s'/>" % alias]
    return (("<interface type='%s'>" % failover.kind).encode("ascii"),
            [c.encode("ascii") for c in children], b"</interface>")


def pair_pool_nics(doc, config, new_mac, network_exists):
    """Adds the virtio partner of every unpaired pool interface of a failover pool in *doc*
    (DomainXml, changed in place). new_mac() gives a MAC to a NIC that has none (the pair must
    share one). Returns True when *doc* changed."""
    ifaces = doc.network_interfaces()
    wanted = [i for i in ifaces if i.network in config.pools and config.pools[i.network].failover]
    if not wanted:
        return False
    elements = etree.fromstring(doc.to_bytes()).findall("devices/interface")
    changed = False
    # A partner goes in before its VF: walk backwards so the indexes still to visit stay valid.
    for iface in reversed(wanted):
        if elements[iface.index].find("teaming") is not None:
            continue
        failover = config.pools[iface.network].failover
        if failover.kind == "network" and not network_exists(failover.name):
            raise UnknownPool("pool '%s': failover network '%s' is not a libvirt network of this "
                              "host; define it or fix failover= in %s"
                              % (iface.network, failover.name, config.path))
        mac = iface.mac or new_mac()
        alias = alias_for(mac)
        added = [("<teaming type='transient' persistent='%s'/>" % alias).encode("ascii")]
        if iface.mac is None:
            added.insert(0, ("<mac address='%s'/>" % mac).encode("ascii"))
        doc.pair_interface(iface.index, _partner(failover, mac, alias), added)
        changed = True
    return changed
