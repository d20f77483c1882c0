"""Kernel / libvirt cpu-list syntax: ``0-3,8,10-11`` (libvirt adds ``^N`` exclusions)."""

from vfpick import numbers

MAX_ID = 65535


def parse(text):
    """Set of ints in a cpulist/cpuset/nodeset, or None when *text* is malformed.

    Bounded: a hostile ``0-999999999`` must not allocate a billion ints.
    """
    if text is None:
        return None
    include, exclude = set(), set()
    text = text.strip()
    if not text:
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        target = include
        if part.startswith("^"):
            target, part = exclude, part[1:]
        lo_text, sep, hi_text = part.partition("-")
        lo = numbers.whole(lo_text.strip(), 0, MAX_ID)
        hi = numbers.whole(hi_text.strip(), 0, MAX_ID) if sep else lo
        if lo is None or hi is None or hi < lo:
            return None
        target.update(range(lo, hi + 1))
    return frozenset(include - exclude)
