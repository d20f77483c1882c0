"""vfpick.host.hostevents: warnings about claimed VFs from udev and rtnetlink events.

The logic runs on fakes; the real kernel is exercised with veth links (rtnetlink in a netns,
kernel uevents through pyudev) when root and iproute2 are available; skipped otherwise.
"""

import os
import queue
import shutil
import subprocess
import threading
import time
import uuid as uuidmod

import pytest

from vfpick.host import hostevents, netlink, simhost
from vfpick.host.hostevents import HostEvent, HostMonitor
from vfpick.host.netlink import LinkEvent
from vfpick.records import Claim

from fakenetlink import FakeNetlink
from waiting import WAIT, wait_until

VF_A, VF_B = "0000:3b:02.0", "0000:3b:02.1"
PF0 = "0000:3b:00.0"


class Mon:
    def __init__(self, host, claims):
        self.host, self.claims, self.lines = host, list(claims), []
        self.monitor = HostMonitor(lambda: self.claims, host.topology, self.lines.append)

    def __call__(self, event):
        return self.monitor.handle(event)


@pytest.fixture
def mon(host):
    topo = host.topology()
    assert topo.pfs[PF0].netdev == "ens1f0"
    vfs = topo.pfs[PF0].vfs
    claims = [Claim(vf, PF0, "ens1f0", "fast", "web1", "u-1", "52:54:00:00:00:0%d" % i, i == 0)
              for i, vf in enumerate(vfs[:2])]
    return Mon(host, claims)


def link(kind, ifname, carrier, operstate="up"):
    return LinkEvent(kind, ifname, 7, carrier, operstate)


def test_link_down_and_up_on_a_pf_with_claims(mon):
    vfs = [c.vf for c in mon.claims]
    assert mon(link("new", "ens1f0", True)) == []            # known up: nothing to say
    lines = mon(link("new", "ens1f0", False, "lowerlayerdown"))
    assert lines == ["warning: link down on PF ens1f0 (%s, link ens1f0): 2 claimed VFs affected: "
                     "%s (domain web1, running), %s (domain web1)" % (PF0, vfs[0], vfs[1])]
    assert mon(link("new", "ens1f0", False)) == []           # any other change: no repeat
    assert mon(link("new", "ens1f0", True)) == [
        "link up again on PF ens1f0 (%s, link ens1f0): 2 claimed VFs reachable again" % PF0]
    assert mon.lines == lines + ["link up again on PF ens1f0 (%s, link ens1f0): 2 claimed VFs "
                                 "reachable again" % PF0]


def test_link_down_without_claims_and_unknown_links(mon):
    assert mon(link("new", "ens2f0", False)) == [
        "warning: link down on PF ens2f0 (0000:af:00.0): no claimed VF"]
    assert mon(link("new", "eth0", False)) == []              # not a PF of the config
    assert mon(link("new", "ens1f0", None, "down")) != []     # no carrier attr: operstate


def test_pf_netdev_removed_and_back(mon):
    assert mon(link("del", "ens1f0", False))[0].startswith(
        "warning: netdev removed of PF ens1f0 (%s, link ens1f0): 2 claimed VFs affected" % PF0)
    assert mon(HostEvent("net", "add", "ens1f0", PF0)) == [
        "netdev back on PF ens1f0 (%s, link ens1f0): 2 claimed VFs reachable again" % PF0]


def test_resync_rereads_sysfs(mon, host):
    mon(link("new", "ens1f0", True))
    simhost.set_carrier(host.sysfs, "ens1f0", False)
    lines = mon(LinkEvent("resync", None, None, None, None))
    assert lines[0].startswith("link events were lost")
    assert lines[1].startswith("warning: link down on PF ens1f0")
    assert len(lines) == 2


def test_claimed_vf_vanishes_and_returns(mon):
    vf = mon.claims[1].vf
    assert mon(HostEvent("pci", "remove", vf, vf)) == [
        "warning: claimed VF %s vanished (sriov_numvfs lowered or device removed?): "
        "%s (domain web1)" % (vf, vf)]
    assert mon(HostEvent("pci", "add", vf, vf)) == ["claimed VF %s is present again: %s (domain web1)"
                                                     % (vf, vf)]
    unclaimed = "0000:3b:03.7"
    assert mon(HostEvent("pci", "remove", unclaimed, unclaimed)) == []
    assert mon(HostEvent("pci", "bind", vf, vf)) == []


def test_pf_removed(mon):
    lines = mon(HostEvent("pci", "remove", PF0, PF0))
    assert lines == ["warning: PF %s removed; its claimed VFs: %s (domain web1, running), "
                     "%s (domain web1)" % (PF0, mon.claims[0].vf, mon.claims[1].vf)]


def test_vf_netdevs_come_and_go_quietly(mon):
    vf = mon.claims[0].vf
    assert mon(HostEvent("net", "remove", "ens1f0v0", vf)) == []   # bound to vfio-pci at start
    assert mon(HostEvent("net", "add", "ens1f0v0", vf)) == []
    assert mon(HostEvent("net", "add", "veth9", None)) == []


class Device:
    def __init__(self, action, subsystem, sys_name, device_path):
        self.action, self.subsystem, self.sys_name, self.device_path = \
            action, subsystem, sys_name, device_path


def test_from_udev():
    net = Device("remove", "net", "ens1f0", "/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/net/ens1f0")
    assert hostevents.from_udev(net) == HostEvent("net", "remove", "ens1f0", PF0)
    dev = Device("add", "pci", "0000:3b:02.1", "/devices/pci0000:3a/0000:3a:00.0/0000:3b:02.1")
    assert hostevents.from_udev(dev) == HostEvent("pci", "add", "0000:3b:02.1", "0000:3b:02.1")
    veth = Device("add", "net", "veth0", "/devices/virtual/net/veth0")
    assert hostevents.from_udev(veth) == HostEvent("net", "add", "veth0", None)


def test_start_pumps_both_sources_and_survives_a_broken_one():
    nl = FakeNetlink()
    nl.add_link("ens1f0")
    stop, q, logged = threading.Event(), queue.Queue(), []

    def udev(stop_event):
        yield HostEvent("pci", "remove", VF_A, VF_A)
        raise OSError("monitor gone")

    threads = hostevents.start(q.put, stop, logged.append, open_netlink=lambda: nl, udev=udev)
    wait_until(lambda: nl._watchers, "the link watch subscribed")
    nl.set_link("ens1f0", carrier=False)
    got = [q.get(timeout=WAIT), q.get(timeout=WAIT)]
    stop.set()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert HostEvent("pci", "remove", VF_A, VF_A) in got
    assert LinkEvent("new", "ens1f0", 1, False, "up") in got
    assert logged == ["host events: device events (udev) stopped: monitor gone"]
    assert nl.closed


# ---------------------------------------------------------------- the real kernel

def _ip(*args, check=True):
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, check=check)


def _need_root_ip():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")


@pytest.fixture
def netns():
    """A netns with a veth pair named like the simulated PF: ens1f0 <-> peer0."""
    _need_root_ip()
    name = "vfpick-test-%s" % uuidmod.uuid4().hex[:8]
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip("cannot create a netns here: %s" % made.stderr.strip())
    try:
        veth = _ip("-n", name, "link", "add", "ens1f0", "type", "veth", "peer", "name", "peer0",
                   check=False)
        if veth.returncode != 0:
            pytest.skip("cannot create a veth pair here: %s" % veth.stderr.strip())
        yield name
    finally:
        _ip("netns", "del", name, check=False)


def _pump(q, watch):
    for event in watch:
        q.put(event)


def test_real_rtnetlink_carrier_changes_warn_about_claims(netns, mon):
    stop, q = threading.Event(), queue.Queue()
    nl = netlink.open_netlink(netns)
    try:
        t = threading.Thread(target=_pump, args=(q, nl.watch_links(stop, timeout=0.1)), daemon=True)
        t.start()
        _ip("-n", netns, "link", "set", "peer0", "up")
        _ip("-n", netns, "link", "set", "ens1f0", "up")      # carrier up: quiet
        time.sleep(0.3)
        _ip("-n", netns, "link", "set", "peer0", "down")     # ens1f0 loses carrier
        deadline, lines = time.monotonic() + WAIT, []
        while time.monotonic() < deadline and not any("link down" in x for x in lines):
            try:
                lines += mon(q.get(timeout=0.2))
            except queue.Empty:
                pass
        assert [x for x in lines if "ens1f0" in x] == [
            "warning: link down on PF ens1f0 (%s, link ens1f0): 2 claimed VFs affected: %s "
            "(domain web1, running), %s (domain web1)" % (PF0, mon.claims[0].vf, mon.claims[1].vf)]
        _ip("-n", netns, "link", "set", "peer0", "up")
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not any("up again" in x for x in lines):
            try:
                lines += mon(q.get(timeout=0.2))
            except queue.Empty:
                pass
        assert lines[-1].startswith("link up again on PF ens1f0")
    finally:
        stop.set()
        nl.close()


def test_real_kernel_uevents_for_net_devices():
    _need_root_ip()
    stop = threading.Event()
    try:
        watch = hostevents.udev_events(stop, source="kernel", timeout=0.1)
    except OSError as e:  # the kernel refuses a uevent socket here (a sandbox): nothing to test
        pytest.skip("no uevent monitor here: %s" % e)
    name = "vfpk%s" % uuidmod.uuid4().hex[:6]
    made = _ip("link", "add", name, "type", "veth", "peer", "name", name + "p", check=False)
    if made.returncode != 0:
        pytest.skip("cannot create a veth pair: %s" % made.stderr.strip())
    _ip("link", "del", name, check=False)
    seen = []
    timer = threading.Timer(WAIT, stop.set)
    timer.start()
    try:
        for event in watch:
            if event.name in (name, name + "p"):
                seen.append(event)
            if {e.action for e in seen if e.name == name} >= {"add", "remove"}:
                break
    finally:
        timer.cancel()
        stop.set()
    assert HostEvent("net", "add", name, None) in seen
    assert HostEvent("net", "remove", name, None) in seen
