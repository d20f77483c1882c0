"""Which lab scenarios each L1 suite runs. Debian 12 (bookworm) runs all of them; the Debian 13
flavour (trixie) runs the core ones (issue 23): check, define + start with passthrough, release,
reconnect after a daemon restart. Names are lab/tests/FILE::TEST."""

CORE = (
    "test_core.py::test_check_passes_before_any_vm",
    "test_core.py::test_define_start_passthrough_destroy",
    "test_faults.py::test_reconnect_after_daemon_restart",
    "test_vfsettings_lab.py::test_defined_domain_keeps_settings_until_release",
)
SCENARIOS = {"bookworm": None, "trixie": CORE}   # None: every scenario


def selected(suite, nodeid):
    """Whether the test NODEID (pytest's, e.g. lab/tests/test_core.py::test_x) runs in SUITE."""
    names = SCENARIOS[suite]
    return names is None or any(nodeid.endswith("/" + name) or nodeid == name for name in names)
