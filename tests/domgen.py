"""Random domains for the property tests of the rewriter and the resolver.

A domain is built from (kind, extras) pairs, one per interface; the layout (indent, one line)
and the head elements vary so that byte-preservation is exercised, not just structure.
"""

from lxml import etree

POOL_KINDS = ("fast", "slow", "fast-mac")  # <source network=...> naming a configured pool


def _interface(kind, n):
    mac = "<mac address='52:54:00:00:ff:%02x'/>" % n
    kids = {"fast": ["<source network='fast'/>"],
            "slow": ["<source network='slow'/>"],
            "fast-mac": [mac, "<source network='fast'/>"],
            "default": [mac, "<source network='default'/>"],
            "bridge": [mac, "<source bridge='br0'/>"],
            "passthru": [mac, "<source><address type='pci' domain='0x0000' bus='0x81' "
                              "slot='0x10' function='0x%d'/></source>" % (n % 8)]}[kind]
    return {"bridge": "bridge", "passthru": "hostdev"}.get(kind, "network"), kids


def build(ifaces, indent="  ", head="", uuid=None, name="prop", declaration=False):
    """Domain XML bytes; indent '' writes the whole document on one line."""
    nl = "\n" if indent else ""
    ind = lambda n: nl + indent * n
    parts = ["<?xml version='1.0'?>\n" if declaration else "", "<domain type='kvm'>",
             ind(1), "<name>%s</name>" % name]
    if uuid:
        parts += [ind(1), "<uuid>%s</uuid>" % uuid]
    if head:
        parts += [ind(1), head]
    parts += [ind(1), "<memory unit='KiB'>1024</memory>", ind(1), "<devices>",
              ind(2), "<disk type='file' device='disk'><source file='/x.img'/></disk>"]
    for n, (kind, extras) in enumerate(ifaces):
        itype, kids = _interface(kind, n)
        parts += [ind(2), "<interface type='%s'>" % itype]
        for kid in kids + list(extras):
            parts += [ind(3), kid]
        parts += [ind(2), "</interface>"]
    parts += [ind(2), "<console type='pty'/>", ind(1), "</devices>", nl, "</domain>", nl]
    return "".join(parts).encode()


def skeleton(data, drop=("devices/interface", "metadata")):
    """The document minus the *drop* paths, whitespace-insensitive (c14n)."""
    root = etree.fromstring(data)
    for path in drop:
        for el in root.findall(path):
            el.getparent().remove(el)
    for el in root.iter():
        if el.text is not None and not el.text.strip():
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None
    return etree.tostring(root, method="c14n")
