import filecmp
import inspect
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# The package under test is the INSTALLED one (tests/README.md), as users get it: the checkout
# leaves sys.path (pytest run from the repo puts its cwd there), and so does every `python -c`
# or `python -m` a test starts (PYTHONSAFEPATH: no cwd or script dir first on sys.path).
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != os.path.realpath(REPO)]
sys.path.insert(0, HERE)
os.environ["PYTHONSAFEPATH"] = "1"
if "PYTHONPATH" in os.environ:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in os.environ["PYTHONPATH"].split(os.pathsep)
        if p and os.path.realpath(p) != os.path.realpath(REPO))


def _installed_package_problem():
    """Why the importable vfpick is not an up-to-date install of this checkout, or None."""
    import vfpick

    installed = os.path.dirname(os.path.realpath(vfpick.__file__))
    source = os.path.join(os.path.realpath(REPO), "vfpick")
    if installed == source:
        return "vfpick is imported from the checkout (%s), not from an installed package" % source
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".pyc"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), source)
            there = os.path.join(installed, rel)
            if not os.path.exists(there):
                return "the installed package %s lacks %s" % (installed, rel)
            if not filecmp.cmp(os.path.join(dirpath, name), there, shallow=False):
                return "the installed %s differs from vfpick/%s" % (there, rel)
    return None


def pytest_sessionstart(session):
    problem = _installed_package_problem()
    if problem:
        pytest.exit("%s: reinstall it (scripts/setup, or %s -m pip install -q --no-deps %s); "
                    "if it persists, setup.py does not ship that file"
                    % (problem, sys.executable, REPO), returncode=4)

from vfpick import config as configmod  # noqa: E402
from vfpick.host import simhost, topology  # noqa: E402


class Host:
    """A simulated SR-IOV host plus a config and state dir around it, all under tmp_path."""

    def __init__(self, base, spec):
        self.base = str(base)
        self.spec = spec
        self.sysfs = simhost.build(self.base, spec)
        self.state_dir = os.path.join(self.base, "state")
        self.run_dir = os.path.join(self.base, "run")
        self.config_dir = os.path.join(self.base, "etc")
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(os.path.join(self.config_dir, "networks"), exist_ok=True)
        self.config_path = os.path.join(self.base, "vfpick.ini")

    def netdevs(self):
        return [pf["netdev"] for card in self.spec["cards"] for pf in card["pfs"]]

    def write_config(self, pools=None, extra=""):
        """pools: {name: "key = value\\n..."}; default one pool 'fast' over every PF."""
        if pools is None:
            pools = {"fast": "pfs = %s\n" % " ".join(self.netdevs())}
        text = ("[vfpick]\nstate_dir = %s\nsysfs_root = %s\nlibvirt_run_dir = %s\n"
                "libvirt_config_dir = %s\n\n" % (self.state_dir, self.sysfs, self.run_dir,
                                                  self.config_dir))
        for name, body in pools.items():
            text += "[pool %s]\n%s\n" % (name, body)
        text += extra
        with open(self.config_path, "w") as f:
            f.write(text)
        return configmod.load(self.config_path)

    def topology(self, links=None):
        return topology.discover(self.sysfs, None, links)


@pytest.fixture
def make_host(tmp_path):
    counter = [0]

    def make(spec="two-dual-port"):
        if isinstance(spec, str):
            spec = simhost.load_spec(spec)
        counter[0] += 1
        return Host(tmp_path / ("host%d" % counter[0]), spec)

    return make


@pytest.fixture
def host(make_host):
    return make_host()


# The real-libvirtd harness (tests/libvirtd.py): one daemon per session, started on demand.
from libvirtd import hook_recorder_fixture, libvirtd_fixture  # noqa: E402

libvirtd = libvirtd_fixture()
hook_recorder = hook_recorder_fixture()

# conn, cfg (libvirt's test driver), env (the real libvirtd with the hook installed) and golden
# (golden files), for every test module: they ask for them as parameters and never import them.
pytest_plugins = ["libvirtfixtures", "golden"]


def pytest_addoption(parser):
    parser.addoption("--regen", action="store_true",
                     help="rewrite the golden files (tests/golden.py) from the output, then fail")


# --- test tiers (docs/development.md) ------------------------------------------------------------
# Markers registered in pytest.ini, applied here from what a test uses, so a test author
# marks nothing by hand and `-m "not libvirtd"` selects the fast tier with one flag:
#   libvirtd    the real system libvirtd (tests/libvirtd.py): the fixtures that start it, or a
#               parameter that connects to qemu:///system;
#   testdriver  libvirt's in-process test driver test:///default (no daemon, no hooks).
# Everything else needs no libvirt at all. The SR-IOV lab (lab/tests, scripts/test-lab) is a
# tier of its own, never collected from tests/.
LIBVIRTD_FIXTURES = frozenset({"libvirtd", "hook_recorder", "env"})
LIBVIRTD_URI = "qemu:///system"
TESTDRIVER_URI = "test:///default"


_NAMES_TEST_DRIVER = {}  # test function -> its source names test:///default


def _uses_test_driver(item):
    """The test's own source names test:///default, or its module takes libvirtfixtures.URI
    (the test driver) for its helpers."""
    function = getattr(item, "function", None)
    module = getattr(item, "module", None)
    if module is not None and getattr(module, "URI", None) == TESTDRIVER_URI:
        return True
    if function not in _NAMES_TEST_DRIVER:
        try:
            _NAMES_TEST_DRIVER[function] = TESTDRIVER_URI in inspect.getsource(function)
        except (OSError, TypeError):
            _NAMES_TEST_DRIVER[function] = False
    return _NAMES_TEST_DRIVER[function]


def tier_markers(item):
    """The tier markers *item* gets: a subset of {"libvirtd", "testdriver"}."""
    names = set(getattr(item, "fixturenames", ()))
    params = getattr(getattr(item, "callspec", None), "params", {})
    values = {v for v in params.values() if isinstance(v, str)}
    marks = set()
    if names & LIBVIRTD_FIXTURES or LIBVIRTD_URI in values:
        marks.add("libvirtd")
    elif "conn" in names or TESTDRIVER_URI in values or _uses_test_driver(item):
        marks.add("testdriver")
    return marks


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in sorted(tier_markers(item)):
            item.add_marker(mark)
