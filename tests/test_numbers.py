"""vfpick/numbers.py is the one parser of numbers from outside (issue 31): its bounds, and a
walk of the package that finds no other ``int()``/``float()`` of text, nor ``str.isdigit``
(which accepts '²', which int() refuses)."""

import ast
import os

import pytest

from vfpick import numbers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vfpick")
HUGE = "9" * 4301


@pytest.mark.parametrize("text, lo, hi, base, value", [
    ("0", 0, 10, 10, 0), ("10", 0, 10, 10, 10), ("11", 0, 10, 10, None), ("007", 0, 10, 10, 7),
    ("", 0, 10, 10, None), (" 1", 0, 10, 10, None), ("+1", 0, 10, 10, None), ("-1", 0, 10, 10, None),
    ("\u00b2", 0, 10, 10, None), ("\u0661", 0, 10, 10, None), ("1_0", 0, 100, 10, None),
    (HUGE, 0, numbers.U64, 10, None), ("0" * 5000 + "5", 0, 10, 10, 5),
    ("ff", 0, 255, 16, 255), ("FF", 0, 255, 16, 255), ("100", 0, 255, 16, None), ("0x1", 0, 255, 16, None),
    (None, 0, 10, 10, None), (5, 0, 10, 10, None),
])
def test_whole(text, lo, hi, base, value):
    assert numbers.whole(text, lo, hi, base) == value


@pytest.mark.parametrize("text, value", [
    ("0x3b", 0x3b), ("59", 59), (" 0x3b ", 0x3b), ("010", 8), ("0", 0), ("09", None),
    ("0x", None), ("-1", None), ("0x" + "f" * 5000, None), (HUGE, None), ("\u00b2", None),
])
def test_libvirt_int(text, value):
    assert numbers.libvirt_int(text) == value


@pytest.mark.parametrize("text, value", [
    ("-1", -1), ("25000", 25000), ("0x8086", 0x8086), ("1\n", 1), (None, None), ("", None),
    ("--1", None), (HUGE, None), ("-" + HUGE, None), ("1.5", None),
])
def test_sysfs_int(text, value):
    assert numbers.sysfs_int(text) == value


# int()/float() calls outside numbers.py that convert no outside text, each with why.
ALLOWED = {
    ("vfpick/cli.py", "int(now * 1000)"): "a float clock",
    ("vfpick/heal.py", "int(self.wall())"): "a float clock (a heal event's epoch seconds)",
    ("vfpick/pci.py", "int(domain, 16)"): "sort_key: canonical addresses only (is_canonical)",
    ("vfpick/pci.py", "int(bus, 16)"): "sort_key",
    ("vfpick/pci.py", "int(slot, 16)"): "sort_key",
    ("vfpick/pci.py", "int(function)"): "sort_key",
    ("vfpick/config.py", "float(value)"): "lock_timeout: float() of any length is bounded "
                                          "(inf, nan), range-checked after",
    ("vfpick/docgen.py", 'int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))'):
        "build time, the packager's environment",
    ("vfpick/host/netlink.py", "int(value)"): "a claim's rate, already an int",
    ("vfpick/plan/optimum.py", "int(threshold * speed // 1)"): "arithmetic",
    ("vfpick/plan/rateplan.py", "int(threshold * speed)"): "arithmetic",
    ("vfpick/plan/rateplan.py", "int(hi * speed)"): "arithmetic",
    ("vfpick/plan/rateplan.py", "int(goal * host.speed[link])"): "arithmetic",
    ("vfpick/plan/moveplan.py", "float(figure / reference)"): "arithmetic",
    ("vfpick/plan/moveplan.py", 'float("inf")'): "a constant",
    ("vfpick/commands/rebalance.py", "float(load)"): "a Fraction",
    ("vfpick/commands/rebalance.py", "float(plan.optimum)"): "a Fraction",
    ("vfpick/commands/rebalance.py", "float(figures.load)"): "a Fraction",
    # the simulated host's own spec (presets, or the operator's JSON for `vfpick simulate`)
    ("vfpick/host/simhost.py", 'int(str(card.get("bus", "%02x" % (0x10 + card_no * 0x20))), 16)'): "spec",
    ("vfpick/host/simhost.py", 'int(str(card.get("domain", "0")), 16)'): "spec",
    ("vfpick/host/simhost.py", 'int(name_or_path[len("bench-"):])'): "spec",
}


def _calls():
    for top, _dirs, files in os.walk(PACKAGE):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(top, name)
            rel = os.path.relpath(path, REPO).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                src = f.read()
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.Call):
                    yield rel, node, ast.get_source_segment(src, node)


def test_no_other_parser_of_numbers_from_outside():
    found = set()
    for rel, node, text in _calls():
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("isdigit", "isdecimal", "isnumeric"):
            assert rel == "vfpick/numbers.py", "%s: %s: use vfpick.numbers" % (rel, text)
        if isinstance(func, ast.Name) and func.id in ("int", "float") and rel != "vfpick/numbers.py":
            assert (rel, text) in ALLOWED, "%s: %s: parse outside text with vfpick.numbers" % (rel, text)
            found.add((rel, text))
    assert found == set(ALLOWED), "stale ALLOWED entries: %s" % (set(ALLOWED) - found)
