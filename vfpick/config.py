"""vfpick.ini → Config. Every error names the file, the section and the key.

Imported by the qemu hook: configparser and vfpick's light modules only.
"""

import configparser
import os
from collections import namedtuple

from vfpick import pci
from vfpick.errors import ConfigError

DEFAULT_PATH = "/etc/vfpick.ini"

Config = namedtuple(
    "Config",
    "path state_dir sysfs_root libvirt_run_dir libvirt_config_dir connect pools links",
)
Config.__doc__ = """pools: {name: Pool} in file order; links: {name: tuple of PF addrs}."""

Pool = namedtuple("Pool", "name pfs distinct strict numa policy trust spoofchk")
Pool.__doc__ = """pfs: PF PCI addresses in the order the file lists them (``pack`` uses it).
trust/spoofchk: True, False or None (leave the VF as the driver set it)."""

DISTINCT = ("card", "link", "pf", "none")
NUMA = ("required", "preferred", "ignore")
POLICY = ("spread", "pack")
_BOOL = {"yes": True, "true": True, "on": True, "1": True,
         "no": False, "false": False, "off": False, "0": False}
_TRISTATE = {"on": True, "off": False, "unset": None}

_MAIN_KEYS = {
    "state_dir": "/var/lib/vfpick",
    "sysfs_root": "/sys",
    "libvirt_run_dir": "/run/libvirt/qemu",
    "libvirt_config_dir": "/etc/libvirt/qemu",
    "connect": "qemu:///system",
}
_POOL_KEYS = {"pfs", "distinct", "strict", "numa", "policy", "trust", "spoofchk"}
_LINK_KEYS = {"pfs"}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


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


def _name(where, section, kind, name):
    name = name.strip()
    if not name or not set(name) <= _NAME_CHARS:
        raise where.error(section, None, "%s name %r: use letters, digits, '_', '.', '-'" % (kind, name))
    return name


def _pf_list(where, section, key, value, sysfs_root):
    names = value.replace(",", " ").split()
    if not names:
        raise where.error(section, key, "empty: list PF netdev names or PCI addresses")
    addrs = []
    for name in names:
        addr = pf_address(sysfs_root, name)
        if addr is None:
            raise where.error(section, key, "%r is not an SR-IOV PF under %s (give a PF netdev name or "
                              "PCI address; check sriov_totalvfs)" % (name, sysfs_root))
        if addr in addrs:
            raise where.error(section, key, "%r is listed twice" % name)
        addrs.append(addr)
    return tuple(addrs)


def parse(text, path="<config>"):
    """Validates *text*; returns Config. PF names are resolved against its sysfs_root."""
    where = _Where(path)
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";", "#"), strict=True, empty_lines_in_values=False,
        default_section="\x00vfpick-no-default",
    )
    parser.optionxform = str
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as e:
        raise where.error(e.section, None, "section appears twice") from None
    except configparser.DuplicateOptionError as e:
        raise where.error(e.section, e.option, "key appears twice") from None
    except configparser.MissingSectionHeaderError as e:
        raise where.error(None, None, "line %d: a key before any [section]" % e.lineno) from None
    except configparser.Error as e:
        raise where.error(None, None, str(e).splitlines()[0]) from None

    main = dict(_MAIN_KEYS)
    pools_raw, links_raw = [], []
    for section in parser.sections():
        kind, _, name = section.partition(" ")
        if section == "vfpick":
            for key, value in parser.items(section):
                if key not in _MAIN_KEYS:
                    raise where.error(section, key, "unknown key (known: %s)" % ", ".join(_MAIN_KEYS))
                value = value.strip()
                if not value:
                    raise where.error(section, key, "empty value")
                if key != "connect" and not os.path.isabs(value):
                    raise where.error(section, key, "%r is not an absolute path" % value)
                main[key] = value
        elif kind == "pool" and name.strip():
            pools_raw.append((section, _name(where, section, "pool", name), dict(parser.items(section))))
        elif kind == "link" and name.strip():
            links_raw.append((section, _name(where, section, "link", name), dict(parser.items(section))))
        else:
            raise where.error(section, None, "unknown section (use [vfpick], [pool NAME], [link NAME])")

    sysfs_root = main["sysfs_root"]
    links, linked = {}, {}
    for section, name, items in links_raw:
        for key in items:
            if key not in _LINK_KEYS:
                raise where.error(section, key, "unknown key (known: pfs)")
        if "pfs" not in items:
            raise where.error(section, "pfs", "missing: list the PFs that share this link")
        addrs = _pf_list(where, section, "pfs", items["pfs"], sysfs_root)
        for addr in addrs:
            if addr in linked:
                raise where.error(section, "pfs", "%s is already in [link %s]" % (addr, linked[addr]))
            linked[addr] = name
        links[name] = addrs

    pools = {}
    for section, name, items in pools_raw:
        for key in items:
            if key not in _POOL_KEYS:
                raise where.error(section, key, "unknown key (known: %s)" % ", ".join(sorted(_POOL_KEYS)))
        if "pfs" not in items:
            raise where.error(section, "pfs", "missing: list the pool's PFs")
        pools[name] = Pool(
            name=name,
            pfs=_pf_list(where, section, "pfs", items["pfs"], sysfs_root),
            distinct=_choice(where, section, "distinct", items.get("distinct", "link"), DISTINCT),
            strict=_mapped(where, section, "strict", items.get("strict", "no"), _BOOL),
            numa=_choice(where, section, "numa", items.get("numa", "preferred"), NUMA),
            policy=_choice(where, section, "policy", items.get("policy", "spread"), POLICY),
            trust=_mapped(where, section, "trust", items.get("trust", "unset"), _TRISTATE),
            spoofchk=_mapped(where, section, "spoofchk", items.get("spoofchk", "unset"), _TRISTATE),
        )
    return Config(path=path, pools=pools, links=links, **main)


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError("cannot read config %s: %s (pass --config FILE or set VFPICK_CONFIG)"
                          % (path, reason)) from None
    return parse(text, path)
