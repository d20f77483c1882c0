import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from vfpick import config as configmod  # noqa: E402
from vfpick import simhost, topology  # noqa: E402


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
