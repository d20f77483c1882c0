import pytest

from vfpick import cpulist, pci


@pytest.mark.parametrize("text,expect", [
    ("0000:3b:02.1", "0000:3b:02.1"), ("3b:02.1", "0000:3b:02.1"), ("0000:3B:1f.7", "0000:3b:1f.7"),
    (" 10000:3b:02.1", None), ("0000:3b:20.0", None), ("0000:3b:02.8", None), ("0000:3b:02", None),
    ("3b.02.1", None), ("0000:3b:02.1.2", None), ("", None), ("x:y:z.1", None), (None, None),
    ("0000:3b:02.1 ", "0000:3b:02.1"), ("0000::02.1", None), ("0:0:0:0.0", None), ("+1:02.1", None),
])
def test_normalize(text, expect):
    assert pci.normalize(text) == expect


def test_sort_key_is_numeric():
    addrs = ["0000:10:00.0", "0000:0a:00.0", "0000:0a:00.7", "0001:00:00.0"]
    assert sorted(addrs, key=pci.sort_key) == ["0000:0a:00.0", "0000:0a:00.7", "0000:10:00.0", "0001:00:00.0"]


@pytest.mark.parametrize("attrs,expect", [
    (("0x0000", "0x3b", "0x02", "0x1"), "0000:3b:02.1"), ((None, "0x3b", "0x02", "0x1"), "0000:3b:02.1"),
    (("0x0", "59", "2", "1"), "0000:3b:02.1"), (("0x0", "0x3b", "0x20", "0x1"), None),
    (("0x0", "0x100", "0x1", "0x1"), None), (("0x0", "x", "0x1", "0x1"), None), (("0", "0x3b", None, "1"), None),
])
def test_from_libvirt_attrs(attrs, expect):
    assert pci.from_libvirt_attrs(*attrs) == expect


@pytest.mark.parametrize("text,expect", [
    ("0-3", {0, 1, 2, 3}), ("0-3,^2,8", {0, 1, 3, 8}), ("5", {5}), ("", set()), ("1-0", None),
    ("a", None), ("0-999999999", None), ("1,,2", None), (" 2 , 4 ", {2, 4}),
])
def test_cpulist(text, expect):
    got = cpulist.parse(text)
    assert (set(got) if got is not None else None) == expect


@pytest.mark.parametrize("text", ["0000:3b:02.1", "0000:3B:02.1", "3b:02.1", "0000:3b:20.0", "0000:3b:1f.7",
                                  "0000:3b:02.8", "0000:3b:02.10", "", "0000-3b:02.1", "ffff:ff:1f.7"])
def test_is_canonical_agrees_with_normalize(text):
    assert pci.is_canonical(text) == (pci.normalize(text) == text)
