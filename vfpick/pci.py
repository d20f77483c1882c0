"""PCI address parsing: one canonical text form, ``0000:3b:02.1``.

No ``re``: the hook imports this on every VM start and ``re`` costs it ~8 ms.
"""

from vfpick import numbers


def _hex(text, max_len):
    if not 1 <= len(text) <= max_len:
        return None
    return numbers.whole(text, 0, 16 ** max_len - 1, 16)


def normalize(text):
    """Canonical form of ``[DDDD:]BB:SS.F``, or None when *text* is not a PCI address."""
    if not isinstance(text, str):
        return None
    head, dot, function = text.strip().rpartition(".")
    parts = head.split(":")
    if not dot or len(function) != 1 or function not in "01234567" or len(parts) not in (2, 3):
        return None
    if len(parts) == 2:
        parts.insert(0, "0")
    domain, bus, slot = _hex(parts[0], 4), _hex(parts[1], 2), _hex(parts[2], 2)
    if domain is None or bus is None or slot is None or slot > 0x1F:
        return None
    return "%04x:%02x:%02x.%s" % (domain, bus, slot, function)


_LOWER_HEX = frozenset("0123456789abcdef")


def is_canonical(addr):
    """True when *addr* is exactly normalize()'s form; cheap enough for every claim on load."""
    return (isinstance(addr, str) and len(addr) == 12 and addr[4] == ":" and addr[7] == ":"
            and addr[10] == "." and addr[11] in "01234567" and addr[8] in "01"
            and _LOWER_HEX.issuperset(addr[:4] + addr[5:7] + addr[8:10]))


def sort_key(addr):
    """Numeric order, so 0000:0a:00.0 sorts before 0000:10:00.0 (hex, not text). Of canonical
    addresses only (is_canonical: a fixed number of hex digits), on every claims sort: plain
    int() is both safe and the fastest here."""
    domain, bus, rest = addr.split(":")
    slot, function = rest.split(".")
    return (int(domain, 16), int(bus, 16), int(slot, 16), int(function))


def card_of(addr):
    """The card a function sits on: its address without the function."""
    return addr.rsplit(".", 1)[0]


def from_libvirt_attrs(domain, bus, slot, function):
    """Canonical address from libvirt's ``<address domain='0x0000' bus=...>``.

    Returns None for anything that is not a well-formed PCI address.
    """
    values = [numbers.libvirt_int(v) if v is not None else None
              for v in (domain, bus, slot, function)]
    if any(v is None and t is not None for v, t in zip(values, (domain, bus, slot, function))):
        return None
    domain_n, bus_n, slot_n, function_n = values
    if domain_n is None:
        domain_n = 0
    if None in (bus_n, slot_n, function_n):
        return None
    if not (0 <= domain_n <= 0xFFFF and 0 <= bus_n <= 0xFF and 0 <= slot_n <= 0x1F and 0 <= function_n <= 7):
        return None
    return "%04x:%02x:%02x.%d" % (domain_n, bus_n, slot_n, function_n)


def libvirt_attrs(addr):
    """The four attributes libvirt's ``<address type='pci'>`` takes."""
    domain, bus, rest = addr.split(":")
    slot, function = rest.split(".")
    return {
        "domain": "0x" + domain,
        "bus": "0x" + bus,
        "slot": "0x" + slot,
        "function": "0x" + function,
    }


def physfn(sysfs_root, addr):
    """PF address of VF *addr*, or None when *addr* is not a VF (or does not exist).

    Here, not in topology: the hook asks it of every PCI hostdev (a GPU, an NVMe: no
    ``physfn``, so never vfpick's) without importing the topology reader."""
    import os

    try:
        target = os.readlink(os.path.join(sysfs_root, "bus", "pci", "devices", addr, "physfn"))
    except OSError:
        return None
    return normalize(os.path.basename(target))
