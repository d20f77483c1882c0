"""Domain XML rewriting: pool interfaces become concrete VF hostdevs.

lxml is used to parse (hardened parser) and to query the tree, but the output is NOT lxml's
serialization: libxml2 rewrites every attribute with double quotes (libvirt writes single),
turns ``<a></a>`` into ``<a/>``, drops the whitespace after the root, and so on. The contract
says everything else in the domain stays byte for byte, so edits are spliced into the original
bytes at element offsets taken from an expat pass over the same document (that parse and the
text inserted: vfpick/domain/xmlsplice.py). Each mutation (``ensure_uuid``, ``apply``) splices, then
re-parses the result, so queries always describe exactly the bytes ``to_bytes()`` returns.

Only UTF-8 / ASCII / ISO-8859-1 documents are accepted (libvirt only ever writes UTF-8): byte
offsets and the ASCII-only text we insert (non-ASCII goes in as character references) are
then valid in the document's own encoding.
"""

import collections
import uuid as uuidmod

from vfpick import bandwidth as bandwidthmod, cpulist, pci
from vfpick.domain import xmlsplice
from vfpick.config import DISTINCT, NUMA
from vfpick.domscan import NS, canonical_uuid, normalize_mac, pci_source
from vfpick.errors import XmlError
from vfpick.records import Assignment
from vfpick.names import printable

NetIface = collections.namedtuple("NetIface", "index network mac bandwidth", defaults=(None,))
NetIface.__doc__ = """An <interface type='network'>. index: position among <devices>'s
<interface> elements (stable across apply). mac: normalized or None. bandwidth: its
<bandwidth> (bandwidth.Bandwidth, KiB/s) for a pool interface, else None."""
ManagedIface = collections.namedtuple("ManagedIface", "index mac pool vf recorded_vf recorded_pf "
                                      "bandwidth", defaults=(None,))
ManagedIface.__doc__ = """An <interface type='hostdev'> whose MAC has a vfpick:nic entry.
vf: its current source address (canonical) or None; recorded_vf, recorded_pf: the entry's vf
and pf (canonical; None when absent or not a PCI address). bandwidth: the entry's recorded
bandwidth.Bandwidth, or None."""
Overrides = collections.namedtuple("Overrides", "distinct strict numa")
Overrides.__doc__ = """A domain's policy overrides for one pool: each None (use the pool's)
or a validated value (distinct: card|link|pf|none, strict: bool, numa: required|preferred|ignore)."""

# Children of a pool interface that mean the same thing on a hostdev interface and are kept,
# verbatim, in their original order. Everything else is network/tap-only (model, target,
# bandwidth, filterref, link, mtu, coalesce, tune, backend, guest, ip, route, port, script,
# actual...) and libvirt either rejects it on a hostdev or silently ignores it, so it is dropped.
_CARRIED = frozenset(["vlan", "alias", "boot", "address", "rom", "teaming", "acpi"])
# <driver> and <virtualport> exist for both kinds but with different meanings: only the
# hostdev flavours survive (a virtio <driver name='vhost' queues=..> would make libvirt refuse).
_CARRIED_IF = {"driver": ("name", ("vfio",)), "virtualport": ("type", ("802.1Qbg", "802.1Qbh"))}

_STRICT = {"yes": True, "no": False}
_HEAD = ("name", "uuid", "genid", "title", "description")  # libvirt's order before <metadata>

class DomainXml(object):
    """One domain definition; construct with ``DomainXml.parse(data)``."""

    def __init__(self, data, root, spans):
        self._data = data
        self._root = root
        self._span = spans  # {lxml node: (start, stag_end, etag_start|None, end)}

    @classmethod
    def parse(cls, data):
        """Parses domain XML bytes. XmlError for malformed, hostile or non-<domain> input."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        root, spans = xmlsplice.parse(data)
        return cls(data, root, spans)

    def to_bytes(self):
        return self._data

    # -- queries ---------------------------------------------------------------------------

    @property
    def name(self):
        """The domain's <name>; XmlError when it holds control characters (a newline would
        forge a status row)."""
        from vfpick import names

        el = self._root.find("name")
        text = None if el is None else (el.text or "")
        why = names.problem(text) if text else None
        if why:
            raise XmlError("the domain's <name> '%s' %s; rename it" % (names.printable(text), why))
        return text

    @property
    def uuid(self):
        """Canonical lowercase UUID, None when absent; XmlError when not a UUID."""
        el = self._root.find("uuid")
        return None if el is None else canonical_uuid(el.text or "")

    def _interfaces(self):
        devices = self._root.find("devices")
        return [] if devices is None else devices.findall("interface")

    @staticmethod
    def _mac(iface):
        el = iface.find("mac")
        return None if el is None else normalize_mac(el.get("address"))

    def _meta_domain(self):
        meta = self._root.find("metadata")
        found = [] if meta is None else meta.findall("{%s}domain" % NS)
        if len(found) > 1:
            raise XmlError("<metadata> holds %d vfpick:domain elements; merge them into one"
                           % len(found))
        return meta, (found[0] if found else None)

    def _entries(self):
        """{mac: Assignment} from vfpick:nic entries, attributes as written (first entry per
        MAC wins)."""
        entries = {}
        dom = self._meta_domain()[1]
        for nic in ([] if dom is None else dom.findall("{%s}nic" % NS)):
            mac = normalize_mac(nic.get("mac"))
            if mac and mac not in entries:
                entries[mac] = Assignment(mac=mac, pool=nic.get("pool"), vf=nic.get("vf"),
                                          pf=nic.get("pf"), link=nic.get("link"),
                                          bandwidth=bandwidthmod.from_attrs(
                                              nic.get, "<vfpick:nic mac='%s'>" % printable(mac[:40])))
        return entries

    def network_interfaces(self, pools=None):
        """The network interfaces; *pools* (names): read the <bandwidth> of those (XmlError
        for a bad one)."""
        out = []
        for index, iface in enumerate(self._interfaces()):
            if iface.get("type") == "network":
                source = iface.find("source")
                network = None if source is None else source.get("network")
                bw = None
                if pools is not None and network in pools:
                    bw = bandwidthmod.from_interface(
                        iface, "interface %d (network '%s')" % (index + 1, network))
                out.append(NetIface(index, network, self._mac(iface), bw))
        return out

    def pci_hostdevs(self):
        """PCI addresses of the domain's <hostdev type='pci'> devices (a GPU, an NVMe)."""
        devices = self._root.find("devices")
        out = []
        for hostdev in ([] if devices is None else devices.findall("hostdev")):
            address = hostdev.find("source/address")
            if hostdev.get("type") == "pci" and address is not None:
                addr = pci_source(address.attrib)
                if addr:
                    out.append(addr)
        return out

    def managed_interfaces(self):
        entries, out = self._entries(), []
        for index, iface in enumerate(self._interfaces()):
            mac = self._mac(iface)
            if iface.get("type") == "hostdev" and mac in entries:
                address = iface.find("source/address")
                vf = None if address is None else pci_source(address.attrib)
                entry = entries[mac]
                out.append(ManagedIface(index, mac, entry.pool, vf, pci.normalize(entry.vf or ""),
                                        pci.normalize(entry.pf or ""), entry.bandwidth))
        return out

    def macs(self):
        return {mac for mac in (self._mac(i) for i in self._interfaces()) if mac}

    def duplicate_mac(self):
        """A MAC two interfaces of the domain carry, or two vfpick:nic records, or None.

        Claims and metadata are per MAC: a second NIC with it would silently share or swap
        VFs. The transient member of a libvirt <teaming> pair shares its partner's MAC by
        design, so it is not counted."""
        seen = set()
        for iface in self._interfaces():
            teaming = iface.find("teaming")
            mac = self._mac(iface)
            if not mac or (teaming is not None and teaming.get("type") == "transient"):
                continue
            if mac in seen:
                return mac
            seen.add(mac)
        seen = set()
        dom = self._meta_domain()[1]
        for nic in ([] if dom is None else dom.findall("{%s}nic" % NS)):
            mac = normalize_mac(nic.get("mac"))
            if mac in seen:
                return mac
            seen.add(mac)
        return None

    def overrides(self, pool):
        """Overrides for *pool*: a policy with pool='NAME' beats one without a pool."""
        dom = self._meta_domain()[1]
        policies = [] if dom is None else dom.findall("{%s}policy" % NS)
        values = {}
        for wanted in (None, pool):
            for el in policies:
                if el.get("pool") != wanted:
                    continue
                for key, allowed in (("distinct", DISTINCT), ("strict", _STRICT), ("numa", NUMA)):
                    raw = el.get(key)
                    if raw is None:
                        continue
                    if raw not in allowed:
                        raise XmlError("vfpick:policy %s='%s' in the domain's <metadata>: must be %s"
                                       % (key, raw[:40], " or ".join(allowed)))
                    values[key] = _STRICT[raw] if key == "strict" else raw
        return Overrides(values.get("distinct"), values.get("strict"), values.get("numa"))

    def numa_nodes(self, node_cpus):
        """The domain's NUMA nodes (frozenset), or None when it is not placed."""
        memory = self._root.find("numatune/memory")
        if memory is not None and memory.get("nodeset") is not None:
            nodes = cpulist.parse(memory.get("nodeset"))
            if nodes is None:
                raise XmlError("<numatune><memory nodeset='%s'> is not a node list"
                               % memory.get("nodeset")[:40])
            return frozenset(nodes) or None
        vcpu = self._root.find("vcpu")
        if vcpu is None or vcpu.get("cpuset") is None:
            return None
        cpus = cpulist.parse(vcpu.get("cpuset"))
        if cpus is None:
            raise XmlError("<vcpu cpuset='%s'> is not a cpu list" % vcpu.get("cpuset")[:40])
        return frozenset(node for node, node_set in node_cpus.items() if node_set & cpus) or None

    # -- layout helpers: infer the document's own indentation ------------------------------

    def _indent(self, node):
        """Whitespace before *node* on its line, or None when it does not start a line."""
        start = self._span[node][0]
        line = self._data.rfind(b"\n", 0, start) + 1
        lead = self._data[line:start]
        return lead if not lead.strip(b" \t") else None

    def _unit(self):
        first = next(iter(self._root), None)
        lead = self._indent(first) if first is not None else None
        return lead or b"  "

    def _child_indent(self, node):
        """(own indent, indent for children) or (None, None) for a one-line layout."""
        own = self._indent(node)
        if own is None:
            return None, None
        for child in node:
            lead = self._indent(child)
            if lead is not None and len(lead) > len(own):
                return own, lead
            break
        return own, own + self._unit()

    def _top_level_slot(self, anchor):
        """(indent, offset) for a new child of the root: after *anchor*, else first in the root."""
        if anchor is not None:
            return self._indent(anchor), self._span[anchor][3]
        return self._child_indent(self._root)[1], self._span[self._root][1]

    def _bytes(self, node):
        span = self._span[node]
        return self._data[span[0]:span[3]]

    def _commit(self, edits):
        """Splices (start, end, bytes) edits into the document and re-parses it."""
        out, at = [], 0
        for start, end, text in sorted(edits, key=lambda e: (e[0], e[1])):
            if start < at:
                raise XmlError("internal error: overlapping XML edits")
            out.extend((self._data[at:start], text))
            at = end
        out.append(self._data[at:])
        fresh = DomainXml.parse(b"".join(out))
        self._data, self._root, self._span = fresh._data, fresh._root, fresh._span

    # -- mutations --------------------------------------------------------------------------

    def pair_interface(self, index, partner, children):
        """Inserts *partner* ((open tag, [child elements], close tag) bytes) as a sibling right
        before interface #index and appends *children* (element bytes) to that interface, in
        the document's own layout: a failover pair (vfpick.domain.failover)."""
        iface = self._interfaces()[index]
        start, stag_end, etag_start, _end = self._span[iface]
        if etag_start is None:
            raise XmlError("interface %d has no <source>" % (index + 1))
        own, kids = self._child_indent(iface)
        block = self._block(partner[0], partner[1], partner[2], own, kids)
        inner = list(iface)
        at = self._span[inner[-1]][3] if inner else stag_end
        added = b"".join((b"\n" + kids if kids is not None else b"") + c for c in children)
        self._commit([(start, start, block + (b"\n" + own if own is not None else b"")),
                      (at, at, added)])

    def ensure_uuid(self):
        """The domain's UUID; adds ``<uuid>`` (random) after ``<name>`` when absent."""
        current = self.uuid
        if current is not None:
            return current
        new = str(uuidmod.uuid4())
        element = ("<uuid>%s</uuid>" % new).encode("ascii")
        name = self._root.find("name")
        if name is None and self._span[self._root][2] is None:
            raise XmlError("the domain is empty")
        lead, at = self._top_level_slot(name)
        self._commit([(at, at, (b"\n" + lead if lead is not None else b"") + element)])
        return new

    def apply(self, assignments):
        """Rewrites each interface named by index in *assignments* ({index: Assignment}) into
        a VF hostdev and records every managed NIC in vfpick's metadata."""
        ifaces = self._interfaces()
        checked = {}
        for index, a in assignments.items():
            if not 0 <= index < len(ifaces):
                raise ValueError("no <interface> #%r in the domain" % (index,))
            mac, vf = normalize_mac(a.mac), pci.normalize(a.vf or "")
            if not mac or len(mac) != 17 or vf is None:
                raise ValueError("bad assignment %r" % (a,))
            checked[index] = a._replace(mac=mac, vf=vf, pf=pci.normalize(a.pf or "") or a.pf)
        edits = [self._rewrite_iface(ifaces[i], a) for i, a in checked.items()]
        edits.extend(self._rewrite_metadata(ifaces, checked))
        if edits:
            self._commit(edits)

    def _rewrite_iface(self, iface, a):
        own, kids = self._child_indent(iface)
        unit = kids[len(own):] if own is not None and kids.startswith(own) else self._unit()
        sep = b"\n" + kids if own is not None else b""
        old_mac = iface.find("mac")
        if old_mac is not None and normalize_mac(old_mac.get("address")) == a.mac:
            mac = self._bytes(old_mac)  # keeps extra attributes (type, check) and spelling
        else:
            mac = xmlsplice.tag("mac", [("address", a.mac)])
        where = pci.libvirt_attrs(a.vf)
        address = xmlsplice.tag("address", [("type", "pci")] + [
            (k, where[k]) for k in ("domain", "bus", "slot", "function")])
        source = b"".join((b"<source>", sep + unit if own is not None else b"", address, sep,
                           b"</source>"))
        # Children keep their original order (libvirt writes <driver> between <mac> and
        # <source>), so re-applying to libvirt's own output changes nothing.
        kids_out, placed = [], set()
        for child in iface:
            tag = child.tag if isinstance(child.tag, str) else None
            if tag in ("mac", "source"):
                if "mac" not in placed:
                    kids_out.append(mac)
                    placed.add("mac")
                if tag == "source" and "source" not in placed:
                    kids_out.append(source)
                    placed.add("source")
                continue
            rule = _CARRIED_IF.get(tag)
            if tag is not None and tag not in _CARRIED and (
                    rule is None or child.get(rule[0]) not in rule[1]):
                continue
            kids_out.append(self._bytes(child))  # comments and PIs ride along too
        if "mac" not in placed:
            kids_out.insert(0, mac)
        if "source" not in placed:  # right after the <mac>, wherever that ended up
            kids_out.insert(next(i for i, k in enumerate(kids_out) if k is mac) + 1, source)
        parts = [b"<interface type='hostdev' managed='yes'>"]
        for kid in kids_out:
            parts.extend((sep, kid))
        parts.extend((b"\n" + own if own is not None else b"", b"</interface>"))
        span = self._span[iface]
        return (span[0], span[3], b"".join(parts))

    def _rewrite_metadata(self, ifaces, assignments):
        entries, wanted, seen = self._entries(), [], set()
        for index, iface in enumerate(ifaces):
            entry = assignments.get(index)
            if entry is None:
                mac = self._mac(iface)
                if iface.get("type") != "hostdev" or mac not in entries:
                    continue
                entry = entries[mac]
            if entry.mac not in seen:
                seen.add(entry.mac)
                wanted.append(entry)
        names = ("mac", "pool", "vf", "pf", "link")
        meta, dom = self._meta_domain()
        if dom is None and not wanted:
            return []
        prefix = (dom.prefix if dom is not None else "vfpick") or ""
        nic_tag = prefix + ":nic" if prefix else "nic"
        nics = [xmlsplice.tag(nic_tag, [(n, getattr(w, n)) for n in names]
                              + bandwidthmod.to_attrs(w.bandwidth), quote='"') for w in wanted]
        if dom is not None:
            kept = [self._bytes(c) for c in dom if c.tag != "{%s}nic" % NS]
            start, stag_end, etag_start, end = self._span[dom]
            if not kept and not nics:
                # Nothing left to record: drop the element and the whitespace that led to it.
                lead = len(self._data[:start]) - len(self._data[:start].rstrip())
                return [(start - lead, end, b"")]
            own, kids = self._child_indent(dom)
            open_tag = self._data[start:stag_end]
            if etag_start is None:
                open_tag = open_tag[:-2].rstrip() + b">"
                close_tag = ("</%s>" % (prefix + ":domain" if prefix else "domain")).encode("ascii")
            else:
                close_tag = self._data[etag_start:end]
            return [(start, end, self._block(open_tag, kept + nics, close_tag, own, kids))]
        block_open = ('<vfpick:domain xmlns:vfpick="%s">' % NS).encode("ascii")
        if meta is not None:
            own, kids = self._child_indent(meta)
            inner = self._block(block_open, nics, b"</vfpick:domain>", kids,
                                kids + self._unit() if kids is not None else None)
            start, stag_end, etag_start, end = self._span[meta]
            children = list(meta)
            if children:
                at = self._span[children[-1]][3]
                return [(at, at, (b"\n" + kids if kids is not None else b"") + inner)]
            if etag_start is None:
                open_tag = self._data[start:stag_end][:-2].rstrip() + b">"
                return [(start, end, self._block(open_tag, [inner], b"</metadata>", own, kids))]
            return [(stag_end, etag_start, self._block(b"", [inner], b"", own, kids))]
        # No <metadata>: create it where libvirt would put it (after name/uuid/title/...).
        anchor = None
        for child in self._root:
            if child.tag not in _HEAD and isinstance(child.tag, str):
                break
            anchor = child
        own, at = self._top_level_slot(anchor)
        kids = own + self._unit() if own is not None else None
        inner = self._block(block_open, nics, b"</vfpick:domain>", kids,
                            kids + self._unit() if kids is not None else None)
        block = self._block(b"<metadata>", [inner], b"</metadata>", own, kids)
        return [(at, at, (b"\n" + own if own is not None else b"") + block)]

    @staticmethod
    def _block(open_tag, children, close_tag, own, kids):
        """open_tag, each child on its own line at *kids*, close_tag at *own* (or one line)."""
        if own is None or kids is None:
            return open_tag + b"".join(children) + close_tag
        return (open_tag + b"".join(b"\n" + kids + c for c in children) + b"\n" + own
                + close_tag)
