"""The one parser of whole numbers from outside: domain XML (rates, cpusets, PCI addresses),
the config, the claims file's counts, sysfs and procfs. Nowhere else does vfpick call
``int()`` on text it did not write or ``str.isdigit`` (which accepts '²'): tests/test_numbers.py
greps the package for it.

Bounded before any conversion: only ASCII digits (hex digits for base 16), at most as many
significant digits as the upper bound has, so a 4,301-digit value (past Python's int digit
limit, a ValueError from int()) is refused like any other bad number, never converted.
No imports: the hook path uses it.
"""

_DEC = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF


def whole(text, lo=0, hi=U64, base=10):
    """int of *text* (ASCII digits of *base*, 10 or 16, no sign, no spaces) when lo <= it <= hi,
    else None."""
    if not isinstance(text, str) or not text:
        return None
    digits = _HEX if base == 16 else _DEC
    if not digits.issuperset(text):
        return None
    significant = text.lstrip("0") or "0"
    if len(significant) > len("%x" % hi if base == 16 else "%d" % hi):
        return None
    value = int(significant, base)
    return value if lo <= value <= hi else None


def libvirt_int(text, lo=0, hi=U64):
    """A number as libvirt writes an attribute it reads with strtoul base 0 (``0x3b``, ``59``;
    surrounding spaces allowed): PCI address parts. None when malformed or out of range."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text[:2] in ("0x", "0X"):
        return whole(text[2:], lo, hi, 16)
    if len(text) > 1 and text.startswith("0"):  # strtoul base 0: octal
        if not set(text) <= set("01234567") or len(text.lstrip("0")) > 22:
            return None
        value = int(text, 8)
        return value if lo <= value <= hi else None
    return whole(text, lo, hi)


def sysfs_int(text, lo=-(2 ** 63), hi=U64):
    """A sysfs or procfs attribute: decimal with an optional '-' (``-1``) or ``0x`` hex;
    None when absent or malformed."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("-"):
        value = whole(text[1:], 0, -lo)
        return None if value is None else -value
    if text[:2] in ("0x", "0X"):
        return whole(text[2:], lo, hi, 16)
    return whole(text, max(lo, 0), hi)
