"""Golden files (tests/data/...): a test's output against the file it must equal byte for byte.

On a mismatch the assertion shows a unified diff, golden file first. After a deliberate format
change, ``pytest --regen tests/test_x.py`` (or ``VFPICK_REGEN=1``) rewrites the files and then
fails every golden test it touched, so a regeneration is reviewed (``git diff tests/data``) and
rerun without the flag: it never passes silently. conftest.py adds the option and registers
this module's ``golden`` fixture.
"""

import difflib
import os

import pytest


def regen_requested(config):
    return bool(config.getoption("regen")) or os.environ.get("VFPICK_REGEN", "") not in ("", "0")


def _lines(data):
    return data.decode("utf-8", "backslashreplace").splitlines(keepends=True)


def compare(path, actual, regen=False):
    """Assert that the file at *path* holds exactly *actual* (bytes); with *regen*, write
    *actual* there instead and fail."""
    try:
        with open(path, "rb") as f:
            expected = f.read()
    except FileNotFoundError:
        expected = None
    if regen:
        if expected != actual:
            with open(path, "wb") as f:
                f.write(actual)
        pytest.fail("%s %s by --regen/VFPICK_REGEN: review it, then run again without"
                    % (path, "unchanged" if expected == actual else "rewritten"), pytrace=False)
    assert expected is not None, "golden file %s is missing: write it with --regen" % path
    if actual != expected:
        diff = "".join(difflib.unified_diff(_lines(expected), _lines(actual),
                                            fromfile=path, tofile="actual output"))
        raise AssertionError("output differs from %s (--regen rewrites it):\n%s" % (path, diff))


@pytest.fixture
def golden(request):
    """golden(path, actual): compare(path, actual), rewriting under --regen/VFPICK_REGEN."""
    regen = regen_requested(request.config)

    def check(path, actual):
        compare(path, actual, regen)

    return check
