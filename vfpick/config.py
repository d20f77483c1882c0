"""vfpick.ini → Config. Every error names the file, the section and the key.

Imported by the qemu hook on every VM start. The INI reader is our own: configparser
imports ``re`` (with ``enum`` and ``functools``), which costs the hook as much as a bare
interpreter start. The syntax is configparser's subset that vfpick documents: ``[section]``,
``key = value``, indented continuation lines, ``;``/``#`` comments (inline after a space).
"""

import os
from collections import namedtuple

from vfpick import numbers, pci
from vfpick.errors import ConfigError

DEFAULT_PATH = "/etc/vfpick.ini"
MAX_CONFIG_BYTES = 1 << 20

Config = namedtuple(
    "Config",
    "path state_dir sysfs_root libvirt_run_dir libvirt_config_dir connect pools links "
    "lock_timeout",
)
Config.__doc__ = """pools: {name: Pool} in file order; links: {name: tuple of PF addrs}.
lock_timeout: seconds any command or the hook waits for the claims lock."""

Pool = namedtuple("Pool", "name pfs distinct strict numa policy trust spoofchk failover missing "
                  "nic_rate guarantee pcie_affinity heal heal_holddown heal_moves_per_minute",
                  defaults=(None, (), 1000, False, "preferred", "report", 30.0, 4))
Pool.__doc__ = """pfs: PF PCI addresses in the order the file lists them (``pack`` uses it), of the
PFs present on this host. missing: the names the file lists that are not on this host (a netdev
renamed by a kernel upgrade, a card removed): the pool degrades to the PFs present.
trust/spoofchk: True, False or None (leave the VF as the driver set it).
failover: a Failover, or None (plain VF NICs). nic_rate: Mb/s a NIC without a <bandwidth> rate
weighs on its link. guarantee: the guaranteed (floor, else average) rates on a link never exceed
its speed. pcie_affinity: required|preferred|ignore (the domain's other PCI hostdevs).
heal: off|report|live (what ``vfpick watch`` does when a link dies under running domains);
heal_holddown: seconds a NIC's link must stay dead before it is healed; heal_moves_per_minute:
the most live heal moves of the pool's NICs started in any 60 s."""

Failover = namedtuple("Failover", "kind name")
Failover.__doc__ = """``failover = bridge:BR | network:NET``: each NIC of the pool also gets a
virtio NIC (kind 'bridge' or 'network', on *name*) paired with the VF by libvirt <teaming>."""

DISTINCT = ("card", "link", "pf", "none")
NUMA = ("required", "preferred", "ignore")
POLICY = ("spread", "pack")
_BOOL = {"yes": True, "true": True, "on": True, "1": True,
         "no": False, "false": False, "off": False, "0": False}
_TRISTATE = {"on": True, "off": False, "unset": None}

# The keys of [vfpick] (with defaults), [pool NAME] and [link NAME]: the parser checks them,
# docgen documents them.
MAIN_KEYS = {
    "state_dir": "/var/lib/vfpick",
    "sysfs_root": "/sys",
    "libvirt_run_dir": "/run/libvirt/qemu",
    "libvirt_config_dir": "/etc/libvirt/qemu",
    "connect": "qemu:///system",
    "lock_timeout": "30",
}
_NOT_PATHS = {"connect", "lock_timeout"}
POOL_KEYS = {"pfs", "distinct", "strict", "numa", "policy", "trust", "spoofchk", "failover",
             "nic_rate", "guarantee", "pcie_affinity", "heal", "heal_holddown",
             "heal_moves_per_minute"}
PCIE_AFFINITY = ("required", "preferred", "ignore")
HEAL = ("off", "report", "live")
MAX_HEAL_MOVES = 600  # per minute: one every 100 ms is already past what libvirt's hotplug does
MAX_RATE_MBPS = 10 ** 7  # 10 Tb/s: far past any link, well inside IFLA_VF_RATE's u32
LINK_KEYS = {"pfs"}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def pool_of_pf(pools):
    """{PF address: Pool} of *pools* ({name: Pool}, as Config.pools); a PF in several pools
    belongs to the first one listed."""
    out = {}
    for pool in pools.values():
        for addr in pool.pfs:
            out.setdefault(addr, pool)
    return out


def network_file_exists(dirs, name):
    """Whether *name* is a libvirt network of this host: ``NAME.xml`` in one of *dirs*, found
    without calling libvirt (the hook may not). A name that is no plain file name never is."""
    if not name or "/" in name or name.startswith("."):
        return False
    return any(os.path.exists(os.path.join(d, name + ".xml")) for d in dirs)


def running_cache_path(config):
    """Where the scan of libvirt's status files is cached (see domscan.scan_running)."""
    return os.path.join(config.state_dir, "running.cache")


def config_path(explicit=None, environ=None):
    """--config beats VFPICK_CONFIG beats /etc/vfpick.ini."""
    if explicit:
        return explicit
    environ = os.environ if environ is None else environ
    return environ.get("VFPICK_CONFIG") or DEFAULT_PATH


def pf_address(sysfs_root, name):
    """PCI address of the SR-IOV PF named by netdev or PCI address, or None."""
    addr = pci.normalize(name)
    if addr is None:
        if "/" in name or name in (".", ".."):
            return None
        try:
            addr = pci.normalize(os.path.basename(
                os.readlink(os.path.join(sysfs_root, "class", "net", name, "device"))))
        except OSError:
            return None
        if addr is None:
            return None
    if not os.path.exists(os.path.join(sysfs_root, "bus", "pci", "devices", addr, "sriov_totalvfs")):
        return None
    return addr


def _derived_link_clash(sysfs_root, name):
    """The PF whose own link would be called *name*, or None.

    Derived link names are a PF's uplink netdev, or several joined by '+' (which section
    names cannot contain), so only a PF's uplink name can collide.
    """
    addr = pf_address(sysfs_root, name)
    if addr is None:
        return None
    from vfpick.host import topology

    ups, _ = topology.uplinks(os.path.join(sysfs_root, "bus", "pci", "devices", addr))
    return addr if ups and ups[0] == name else None


class _Where:
    """Builds 'FILE: [SECTION] KEY: ...' messages."""

    def __init__(self, path):
        self.path = path

    def error(self, section, key, message):
        where = self.path
        if section:
            where += ": [%s]" % section
        if key:
            where += " %s" % key
        return ConfigError("%s: %s" % (where, message))


def _choice(where, section, key, value, allowed):
    value = value.strip().lower()
    if value not in allowed:
        raise where.error(section, key, "%r is not one of %s" % (value, ", ".join(allowed)))
    return value


def _mapped(where, section, key, value, mapping):
    value = value.strip().lower()
    if value not in mapping:
        raise where.error(section, key, "%r is not one of %s" % (value, ", ".join(mapping)))
    return mapping[value]


def _seconds(where, section, key, value):
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    # "nan" fails every comparison; one day is far past any sane wait.
    if not 0 <= seconds <= 86400:
        raise where.error(section, key, "%r is not a number of seconds from 0 to 86400" % value)
    return seconds


def _mbps(where, section, key, value):
    value = value.strip()
    rate = numbers.whole(value, 1, MAX_RATE_MBPS)
    if rate is None:
        raise where.error(section, key, "%r is not a rate in Mb/s from 1 to %d"
                          % (value[:40], MAX_RATE_MBPS))
    return rate


def _count(where, section, key, value, most):
    value = value.strip()
    count = numbers.whole(value, 1, most)
    if count is None:
        raise where.error(section, key, "%r is not a whole number from 1 to %d" % (value[:40], most))
    return count


def _name(where, section, kind, name):
    name = name.strip()
    if not name or not set(name) <= _NAME_CHARS:
        raise where.error(section, None, "%s name %r: use letters, digits, '_', '.', '-'" % (kind, name))
    return name


def _absent(sysfs_root, name):
    """True when nothing called *name* is on this host (as opposed to something that is not a PF)."""
    addr = pci.normalize(name)
    if addr is not None:
        return not os.path.lexists(os.path.join(sysfs_root, "bus", "pci", "devices", addr))
    if "/" in name or name in (".", ".."):
        return False
    return not os.path.lexists(os.path.join(sysfs_root, "class", "net", name))


def _pf_list(where, section, key, value, sysfs_root):
    """(addresses of the PFs present, names of those absent from this host)."""
    names = value.replace(",", " ").split()
    if not names:
        raise where.error(section, key, "empty: list PF netdev names or PCI addresses")
    if len(set(names)) != len(names):
        raise where.error(section, key, "%r is listed twice"
                          % next(n for n in names if names.count(n) > 1))
    addrs, missing = [], []
    for name in names:
        addr = pf_address(sysfs_root, name)
        if addr is None:
            if _absent(sysfs_root, name):
                missing.append(name)
                continue
            raise where.error(section, key, "%r is not an SR-IOV PF under %s (give a PF netdev name or "
                              "PCI address; check sriov_totalvfs)" % (name, sysfs_root))
        if addr in addrs:
            raise where.error(section, key, "%r is listed twice" % name)
        addrs.append(addr)
    return tuple(addrs), tuple(missing)


def _comment_free(line):
    for i, char in enumerate(line):
        if char in ";#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def read_ini(text, where):
    """[(section, {key: value})] in file order; duplicate sections and keys are errors."""
    sections, current, last_key = [], None, None
    seen = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped[0] in ";#":
            continue
        line = _comment_free(raw).rstrip()
        if raw[0] in " \t" and current is not None and last_key is not None:
            value = current[1][last_key]
            current[1][last_key] = (value + " " + line.strip()).strip()
            continue
        line = line.strip()
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise where.error(None, None, "line %d: malformed section header %r" % (lineno, line))
            name = " ".join(line[1:-1].split())
            if name in seen:
                raise where.error(name, None, "section appears twice")
            seen.add(name)
            current, last_key = (name, {}), None
            sections.append(current)
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if current is None:
            raise where.error(None, None, "line %d: a key before any [section]" % lineno)
        if not sep or not key:
            raise where.error(current[0], None, "line %d: expected 'key = value', got %r" % (lineno, line))
        if key in current[1]:
            raise where.error(current[0], key, "key appears twice")
        current[1][key] = value.strip()
        last_key = key
    return sections


def parse(text, path="<config>"):
    """Validates *text*; returns Config. PF names are resolved against its sysfs_root."""
    where = _Where(path)
    sections = read_ini(text, where)

    main = dict(MAIN_KEYS)
    pools_raw, links_raw = [], []
    for section, items in sections:
        kind, _, name = section.partition(" ")
        if section == "vfpick":
            for key, value in items.items():
                if key not in MAIN_KEYS:
                    raise where.error(section, key, "unknown key (known: %s)" % ", ".join(MAIN_KEYS))
                value = value.strip()
                if not value:
                    raise where.error(section, key, "empty value")
                if key not in _NOT_PATHS and not os.path.isabs(value):
                    raise where.error(section, key, "%r is not an absolute path" % value)
                main[key] = value
        elif kind == "pool" and name.strip():
            pools_raw.append((section, _name(where, section, "pool", name), items))
        elif kind == "link" and name.strip():
            links_raw.append((section, _name(where, section, "link", name), items))
        else:
            raise where.error(section, None, "unknown section (use [vfpick], [pool NAME], [link NAME])")

    main["lock_timeout"] = _seconds(where, "vfpick", "lock_timeout", main["lock_timeout"])
    sysfs_root = main["sysfs_root"]
    links, linked = {}, {}
    for section, name, items in links_raw:
        for key in items:
            if key not in LINK_KEYS:
                raise where.error(section, key, "unknown key (known: pfs)")
        if "pfs" not in items:
            raise where.error(section, "pfs", "missing: list the PFs that share this link")
        clash = _derived_link_clash(sysfs_root, name)
        if clash:
            raise where.error(section, None, "link name %r is the uplink of PF %s, which vfpick "
                              "already uses as a link name; choose another name" % (name, clash))
        # A PF missing from sysfs just drops out of its link: the pool reports it.
        addrs, _ = _pf_list(where, section, "pfs", items["pfs"], sysfs_root)
        for addr in addrs:
            if addr in linked:
                raise where.error(section, "pfs", "%s is already in [link %s]" % (addr, linked[addr]))
            linked[addr] = name
        if addrs:
            links[name] = addrs

    pools = {}
    for section, name, items in pools_raw:
        for key in items:
            if key not in POOL_KEYS:
                raise where.error(section, key, "unknown key (known: %s)" % ", ".join(sorted(POOL_KEYS)))
        if "pfs" not in items:
            raise where.error(section, "pfs", "missing: list the pool's PFs")
        pfs, missing = _pf_list(where, section, "pfs", items["pfs"], sysfs_root)
        pools[name] = Pool(
            name=name,
            pfs=pfs,
            missing=missing,
            distinct=_choice(where, section, "distinct", items.get("distinct", "link"), DISTINCT),
            strict=_mapped(where, section, "strict", items.get("strict", "no"), _BOOL),
            numa=_choice(where, section, "numa", items.get("numa", "preferred"), NUMA),
            policy=_choice(where, section, "policy", items.get("policy", "spread"), POLICY),
            trust=_mapped(where, section, "trust", items.get("trust", "unset"), _TRISTATE),
            spoofchk=_mapped(where, section, "spoofchk", items.get("spoofchk", "unset"), _TRISTATE),
            failover=_failover(where, section, items.get("failover")),
            nic_rate=_mbps(where, section, "nic_rate", items.get("nic_rate", "1000")),
            guarantee=_mapped(where, section, "guarantee", items.get("guarantee", "no"), _BOOL),
            pcie_affinity=_choice(where, section, "pcie_affinity",
                                  items.get("pcie_affinity", "preferred"), PCIE_AFFINITY),
            heal=_choice(where, section, "heal", items.get("heal", "report"), HEAL),
            heal_holddown=_seconds(where, section, "heal_holddown", items.get("heal_holddown", "30")),
            heal_moves_per_minute=_count(where, section, "heal_moves_per_minute",
                                         items.get("heal_moves_per_minute", "4"), MAX_HEAL_MOVES),
        )
    for section, name, _items in pools_raw:
        failover = pools[name].failover
        if failover is not None and failover.kind == "network" and failover.name in pools:
            raise where.error(section, "failover", "network '%s' is a vfpick pool: the virtio "
                              "side needs a libvirt network or bridge" % failover.name)
    return Config(path=path, pools=pools, links=links, **main)


def _failover(where, section, value):
    if value is None or value.strip().lower() == "none":
        return None
    kind, sep, name = value.strip().partition(":")
    kind, name = kind.strip().lower(), name.strip()
    if not sep or kind not in ("bridge", "network") or not name:
        raise where.error(section, "failover", "%r: use bridge:BRIDGE, network:NETWORK or none" % value)
    # A bridge is a netdev (at most 15 bytes); both end up in XML attributes and file names.
    if not set(name) <= _NAME_CHARS or (kind == "bridge" and len(name) > 15):
        raise where.error(section, "failover", "%r is not a valid %s name" % (name, kind))
    return Failover(kind, name)


def load(path):
    from vfpick import safeio

    try:
        # A FIFO or device as the config must not hang the hook of every VM start.
        text = safeio.read_text(path, MAX_CONFIG_BYTES)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError("cannot read config %s: %s (pass --config FILE or set VFPICK_CONFIG)"
                          % (path, reason)) from None
    if len(text) > MAX_CONFIG_BYTES:
        # Never parse a prefix: settings past the cut would silently fall back to defaults.
        raise ConfigError("%s: larger than 1 MiB; is this the right file?" % path)
    return parse(text, path)
