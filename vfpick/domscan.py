"""Fast, safe, read-only scan of domain XML (``<domain>``) and libvirt status XML (``<domstatus>``).

This runs in the qemu hook on every VM start, so it uses expat only: lxml costs ~13 ms to
import and ``dataclasses``/``typing`` cost more than the scan itself. It never rewrites
anything (that is ``vfpick.hostdev``'s job) and it trusts nothing: the XML may come from any
user allowed to define a domain.

Hostile input is refused, not defused: libvirt never emits a DOCTYPE, so any DOCTYPE or
entity declaration is an error before a single entity could be declared or expanded; size and
nesting depth are bounded.
"""

import collections
import os
import xml.parsers.expat as expat

from vfpick import pci, safeio
from vfpick.errors import XmlError

NS = "http://vfpick.org/xmlns/libvirt/domain/1.0"
MAX_BYTES = 4 << 20
MAX_DEPTH = 64

DomainFacts = collections.namedtuple(
    "DomainFacts",
    "name uuid networks hostdev_vfs meta_nics policy_overrides interesting actual_vfs "
    "vfpick_meta",
)
DomainFacts.__doc__ = """What the hook needs to know about one domain.

name: text of <name> or None. uuid: canonical lowercase form or None when absent.
networks: ((network, mac|None), ...) for every <interface type='network'>.
hostdev_vfs: ((pci addr, mac|None), ...) for every <interface type='hostdev'> with a PCI
source and every <hostdev mode='subsystem' type='pci'> (mac None), in document order.
meta_nics: (MetaNic, ...) from vfpick's metadata. policy_overrides: ((pool|None, distinct,
strict, numa), ...) raw attribute strings (None when absent), unvalidated.
interesting: the domain has any network/hostdev interface or PCI hostdev at all.
actual_vfs: ((pci addr, mac|None), ...) VFs a running domain got from a libvirt hostdev
network (status XML: <interface type='network'><actual type='hostdev'>); they are busy too.
vfpick_meta: the domain's <metadata> holds vfpick's element (then the domain is vfpick's).
Subtrees vfpick does not read (other applications' metadata, non-NIC devices) are skipped
whatever their depth.
"""

MetaNic = collections.namedtuple("MetaNic", "mac pool vf pf link bandwidth", defaults=(None,))
MetaNic.__doc__ = """One <vfpick:nic> entry: mac normalized, vf/pf canonical PCI or None.
bandwidth: its average, peak and floor attributes as written (KiB/s text, each None when
absent), or None when it has none; bandwidth.of_meta reads them."""


DomainVf = collections.namedtuple("DomainVf", "vf mac pf pool managed nic", defaults=(None,))
DomainVf.__doc__ = """A VF of a domain, as the hook judges it (here, not in the hook module, which
imports nothing before it must): vf and its pf (canonical PCI; pf None when the VF is gone), mac
(or None), pool (the config.Pool it belongs to, or None), managed: it has a vfpick:nic entry,
nic (that MetaNic, or None)."""


RunningOwner = collections.namedtuple("RunningOwner", "uuid name")
RunningOwner.__doc__ = """The running domain that uses a VF, from its status file."""


class RunningVfs(dict):
    """{vf: RunningOwner} of running domains, plus ``skipped``: [(path, reason)].

    A plain dict to callers that only want the map; ``skipped`` lists status files that could
    not be read or parsed. They are skipped rather than fatal because one unreadable status file
    must not stop every other VM from starting; libvirt itself still refuses to hand one PCI
    device to two running domains, so a skipped file loses a hint, not the safety net.
    """

    def __init__(self):
        dict.__init__(self)
        self.skipped = []


_XDIGITS = frozenset("0123456789abcdef")


def libvirt_mac(text):
    """The MAC libvirt's virMacAddrParse reads in *text* (``52:54:00:aa:00:01`` form), or None
    when it refuses it. As libvirt: six groups of one or two hex digits joined by ':', and the
    MAC ends at the first byte <= ' ' after the sixth group, whatever follows
    (``52:54:00:aa:00:01 x`` is ``52:54:00:aa:00:01``); a byte >= 0x80 ends it too (a signed
    char on x86). Two spellings libvirt stores as one MAC are one MAC here."""
    text = text.lstrip().lower()
    groups, at = [], 0
    for i in range(6):
        end = at
        while end < len(text) and end - at < 3 and text[end] in _XDIGITS:
            end += 1
        if not 1 <= end - at <= 2:
            return None
        groups.append(text[at:end].rjust(2, "0"))
        if i == 5:
            if end == len(text) or ord(text[end]) <= 0x20 or ord(text[end]) >= 0x80:
                return ":".join(groups)
            return None
        if end >= len(text) or text[end] != ":":
            return None
        at = end + 1
    return None


def normalize_mac(text):
    """``52:54:00:aa:00:01`` form of the MAC libvirt reads in *text* (libvirt_mac); text it
    refuses is returned lowercased and stripped (callers refuse it)."""
    if text is None:
        return None
    return libvirt_mac(text) or text.strip().lower()


def canonical_uuid(text):
    """Canonical lowercase UUID, None when *text* is None; XmlError when it is not a UUID.

    Accepts what libvirt's virUUIDParse accepts: dashes/spaces between hex pairs, surrounding
    whitespace.
    """
    if text is None:
        return None
    digits = "".join(text.split()).replace("-", "").lower()
    if len(digits) != 32 or any(c not in "0123456789abcdef" for c in digits):
        raise XmlError("<uuid> is not a UUID: %r" % text.strip()[:64])
    return "%s-%s-%s-%s-%s" % (digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:])


def pci_source(attrs):
    """Canonical PCI address of a hostdev ``<source><address .../>`` or None.

    libvirt writes ``type='pci'`` on interface sources but not on <hostdev> sources; any
    other type (mdev, usb, ...) is not a PCI function.
    """
    if attrs.get("type", "pci") != "pci":
        return None
    return pci.from_libvirt_attrs(attrs.get("domain"), attrs.get("bus"), attrs.get("slot"),
                                  attrs.get("function"))


def _refuse_dtd(*_args):
    raise XmlError("domain XML must not contain a DOCTYPE or entity declaration")


class _Scanner(object):
    """expat callbacks; paths are tuples of names relative to the <domain> element."""

    def __init__(self):
        self.stack = []          # element names from the document root down
        self.base = None         # depth of the <domain> element in the stack
        self.root = None
        self.name = self.uuid = None
        self.text = None         # collecting character data for name/uuid
        self.networks, self.hostdev_vfs, self.actual_vfs = [], [], []
        self.meta_nics, self.policies = [], []
        self.interesting = False
        self.vfpick_meta = False
        self.iface = None        # the <interface>/<hostdev> being read: dict
        self.skip = 0            # >0: depth inside a subtree that is not read

    def start(self, tag, attrs):
        if self.skip:
            # Inside a subtree vfpick does not read (another application's <metadata>, qemuCaps,
            # devices that are not NICs): only its depth is counted, so no nesting is too deep.
            self.skip += 1
            return
        stack = self.stack
        stack.append(tag)
        depth = len(stack)
        if depth > MAX_DEPTH:
            raise XmlError("domain XML is nested deeper than %d elements" % MAX_DEPTH)
        if depth == 1:
            if tag not in ("domain", "domstatus"):
                raise XmlError("not a libvirt domain: the root element is <%s>%s" % (
                    tag.split(" ")[-1], " in namespace %s" % tag.split(" ")[0] if " " in tag else ""))
            self.root = tag
            if tag == "domain":
                self.base = 1
            return
        if depth == 2 and tag == "domain" and self.root == "domstatus":
            if self.base is not None:
                raise XmlError("<domstatus> holds more than one <domain>")
            self.base = 2
            return
        rel = depth - self.base if self.base is not None else 0
        if rel < 1:
            return self._skip()  # <domstatus>'s own children
        parent = stack[-2]
        if rel == 1:
            if tag in ("name", "uuid"):
                self.text = []
            elif tag not in ("devices", "metadata"):
                self._skip()
            return
        if rel == 2:
            if parent == "devices" and tag in ("interface", "hostdev"):
                self.iface = {"kind": tag, "type": attrs.get("type"), "mode": attrs.get("mode"),
                              "mac": None, "network": None, "vf": None, "actual": None}
            elif parent == "metadata" and tag == NS + " domain":
                self.stack[-1] = "vfpick-domain"
                self.vfpick_meta = True
            else:
                self._skip()
            return
        iface = self.iface
        if iface is not None:
            # rel 3: children of the interface; deeper: source/address, actual/source/address
            if rel == 3 and tag == "mac":
                iface["mac"] = normalize_mac(attrs.get("address"))
            elif rel == 3 and tag == "source":
                iface["network"] = attrs.get("network")
            elif rel == 3 and tag == "actual":
                iface["actual"] = attrs.get("type")
            elif tag == "address" and parent == "source":
                if rel == 4 and iface["vf"] is None:
                    iface["vf"] = ("own", pci_source(attrs))
                elif rel == 5 and stack[-3] == "actual" and iface["actual"] == "hostdev":
                    iface["vf"] = ("actual", pci_source(attrs))
            if tag not in ("source", "actual"):
                self._skip()
            return
        if rel == 3 and parent == "vfpick-domain":
            if tag == NS + " nic":
                rates = (attrs.get("average"), attrs.get("peak"), attrs.get("floor"))
                self.meta_nics.append(MetaNic(
                    normalize_mac(attrs.get("mac")), attrs.get("pool"),
                    pci.normalize(attrs.get("vf") or ""), pci.normalize(attrs.get("pf") or ""),
                    attrs.get("link"), rates if any(r is not None for r in rates) else None))
            elif tag == NS + " policy":
                self.policies.append((attrs.get("pool"), attrs.get("distinct"),
                                      attrs.get("strict"), attrs.get("numa")))
        self._skip()

    def _skip(self):
        """Skips the element just started and everything in it (end() pops nothing for it)."""
        self.stack.pop()
        self.skip = 1

    def end(self, tag):
        if self.skip:
            self.skip -= 1
            return
        stack = self.stack
        depth = len(stack)
        rel = depth - self.base if self.base is not None else None
        if rel == 1 and self.text is not None:
            value = "".join(self.text)
            if tag == "name" and self.name is None:
                self.name = value
            elif tag == "uuid" and self.uuid is None:
                self.uuid = canonical_uuid(value)
            self.text = None
        elif rel == 2 and self.iface is not None:
            self._finish(self.iface)
            self.iface = None
        stack.pop()

    def _finish(self, iface):
        kind, itype = iface["kind"], iface["type"]
        vf = iface["vf"]
        if kind == "interface":
            if itype == "network":
                self.interesting = True
                self.networks.append((iface["network"], iface["mac"]))
                if vf is not None and vf[0] == "actual" and vf[1]:
                    self.actual_vfs.append((vf[1], iface["mac"]))
            elif itype == "hostdev":
                self.interesting = True
                if vf is not None and vf[0] == "own" and vf[1]:
                    self.hostdev_vfs.append((vf[1], iface["mac"]))
        elif itype == "pci" and iface["mode"] in (None, "subsystem"):
            self.interesting = True
            if vf is not None and vf[0] == "own" and vf[1]:
                self.hostdev_vfs.append((vf[1], None))

    def chars(self, data):
        if self.text is not None:
            self.text.append(data)


def scan(data, limit=MAX_BYTES):
    """DomainFacts of domain or domstatus XML *data* (bytes). XmlError when refused."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > limit:
        raise XmlError("domain XML is larger than %d bytes" % limit)
    scanner = _Scanner()
    # namespace_separator: vfpick's metadata is matched by namespace URI, not by prefix.
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    parser.StartElementHandler = scanner.start
    parser.EndElementHandler = scanner.end
    parser.CharacterDataHandler = scanner.chars
    parser.buffer_text = True  # one call per text run, not one per line
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise XmlError("malformed domain XML: %s" % expat.ErrorString(exc.code)
                       + ", line %d, column %d" % (exc.lineno, exc.offset))
    except RecursionError:
        raise XmlError("domain XML is nested too deeply")
    except (LookupError, ValueError) as exc:
        # expat raises these for an unknown or unusable encoding= in the XML declaration.
        raise XmlError("domain XML cannot be decoded: %s" % " ".join(str(exc).split()))
    if scanner.base is None:
        raise XmlError("<domstatus> holds no <domain>")
    return DomainFacts(
        name=scanner.name,
        uuid=scanner.uuid,
        networks=tuple(scanner.networks),
        hostdev_vfs=tuple(scanner.hostdev_vfs),
        meta_nics=tuple(scanner.meta_nics),
        policy_overrides=tuple(scanner.policies),
        interesting=scanner.interesting,
        actual_vfs=tuple(scanner.actual_vfs),
        vfpick_meta=scanner.vfpick_meta,
    )


def _read_bounded(path, limit):
    # No symlink, no FIFO: a planted one in the run dir must not redirect or hang us.
    return safeio.read_file(path, limit, follow=False)


def scan_file(path, limit=MAX_BYTES):
    """scan() of one domain or status XML file; OSError when it cannot be read."""
    return scan(_read_bounded(path, limit), limit)


# A status file is parsed again only when its (inode, size, mtime, ctime) changed. libvirt
# replaces status files by rename, so a rewrite gets a new inode; a file whose timestamps are
# within RACY_NS of the cache's own write time is not trusted (timestamps are jiffy-coarse:
# the "racy git" problem) and is parsed again next time.
RACY_NS = 250 * 1000 * 1000


def _load_cache(cache_path, run_dir):
    import json

    try:
        fd = os.open(cache_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            # A cache another uid wrote (or could have) could hide a running domain's VFs.
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            doc = json.loads(safeio.read_fd(fd, 1 << 24).decode("utf-8"))
        finally:
            os.close(fd)
        if doc.get("v") == 1 and doc.get("dir") == run_dir and isinstance(doc.get("files"), dict):
            return doc
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        pass
    return None


def _save_cache(cache_path, run_dir, files, now_ns):
    import json

    tmp = "%s.%d.tmp" % (cache_path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(json.dumps({"v": 1, "dir": run_dir, "written_ns": now_ns,
                                "files": files}).encode("utf-8"))
        os.replace(tmp, cache_path)  # a cache: no fsync; a torn or lost one is just re-read
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def scan_running(run_dir, limit=MAX_BYTES, cache_path=None):
    """RunningVfs {vf: RunningOwner} of PCI devices used by running domains.

    Reads libvirt's status files ``run_dir/NAME.xml`` (``<domstatus>``) without calling
    libvirt (the hook must not). VFs from <interface type='hostdev'>, <hostdev> and libvirt
    hostdev networks (``<actual type='hostdev'>``) all count. A missing run dir means no
    running domains. Unreadable or malformed files land in ``.skipped``.
    cache_path: where to keep what each status file held, keyed by its stat (see RACY_NS).
    """
    import time

    used = RunningVfs()
    try:
        names = sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return used
    except OSError as exc:
        used.skipped.append((run_dir, exc.strerror or str(exc)))
        return used
    cache = _load_cache(cache_path, run_dir) if cache_path else None
    old = cache["files"] if cache else {}
    trusted_before = (cache.get("written_ns", 0) - RACY_NS) if cache else 0
    now_ns = time.time_ns()
    files, dirty = {}, cache is None and cache_path is not None
    for fname in names:
        if not fname.endswith(".xml") or fname.startswith("."):
            continue
        path = os.path.join(run_dir, fname)
        entry = None
        try:
            st = os.stat(path, follow_symlinks=False)
            key = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
            hit = old.get(fname)
            if hit and hit[0] == key and max(st.st_mtime_ns, st.st_ctime_ns) < trusted_before:
                entry = hit
            else:
                facts = scan(_read_bounded(path, limit), limit)
                name = facts.name if facts.name is not None else fname[:-4]
                entry = [key, facts.uuid, name, [vf for vf, _ in facts.hostdev_vfs + facts.actual_vfs]]
                dirty = True
        except OSError as exc:
            used.skipped.append((path, exc.strerror or str(exc)))
            continue
        except XmlError as exc:
            used.skipped.append((path, str(exc)))
            continue
        files[fname] = entry
        owner = RunningOwner(uuid=entry[1], name=entry[2])
        for vf in entry[3]:
            used.setdefault(vf, owner)
    if cache_path and (files or old) and (dirty or set(files) != set(old)):
        _save_cache(cache_path, run_dir, files, now_ns)
    return used
