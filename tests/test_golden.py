"""tests/golden.py: a mismatch shows a unified diff; a regeneration rewrites and still fails."""

import pytest

import golden

OUT = b"<domain>\n  <name>vm</name>\n  <uuid>@UUID@</uuid>\n</domain>\n"


def test_equal_output_passes_and_leaves_the_file(tmp_path):
    path = tmp_path / "x-out.xml"
    path.write_bytes(OUT)
    golden.compare(str(path), OUT)
    assert path.read_bytes() == OUT


def test_a_mismatch_is_a_unified_diff_naming_the_file(tmp_path):
    path = tmp_path / "x-out.xml"
    path.write_bytes(OUT)
    with pytest.raises(AssertionError) as info:
        golden.compare(str(path), OUT.replace(b"vm", b"db"))
    message = str(info.value)
    assert "--- %s\n+++ actual output\n" % path in message
    assert "\n-  <name>vm</name>\n+  <name>db</name>\n" in message
    assert path.read_bytes() == OUT


def test_a_missing_golden_file_fails(tmp_path):
    with pytest.raises(AssertionError, match="missing: write it with --regen"):
        golden.compare(str(tmp_path / "none-out.xml"), OUT)


@pytest.mark.parametrize("before, says", [(None, "rewritten"), (b"old\n", "rewritten"),
                                          (OUT, "unchanged")])
def test_regen_writes_the_output_and_fails(tmp_path, before, says):
    path = tmp_path / "x-out.xml"
    if before is not None:
        path.write_bytes(before)
    with pytest.raises(pytest.fail.Exception, match="%s by --regen" % says):
        golden.compare(str(path), OUT, regen=True)
    assert path.read_bytes() == OUT


@pytest.mark.parametrize("value, regen", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_vfpick_regen_in_the_environment_asks_for_a_regeneration(pytestconfig, monkeypatch,
                                                                 value, regen):
    monkeypatch.setenv("VFPICK_REGEN", value)
    assert golden.regen_requested(pytestconfig) is (regen or pytestconfig.getoption("regen"))
