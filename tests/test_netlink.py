"""vfpick.netlink: the fake, the pyroute2 encoding/decoding, and the real kernel in a netns.

Kernel tests need root, `ip` and veth; they skip with the reason otherwise. netdevsim (the
only way to have VFs without SR-IOV hardware) is tried and skipped when the kernel lacks it.
"""

import errno
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from vfpick import netlink
from vfpick.errors import VfpickError
from vfpick.netlink import FakeNetlink, LinkEvent, LinkState, NetlinkError, VfState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- the fake

@pytest.fixture
def fake():
    nl = FakeNetlink()
    nl.add_link("ens1f0", num_vfs=4)
    nl.add_link("ens1f1", carrier=False, operstate="down", num_vfs=2)
    return nl


def test_fake_records_and_applies_set_vf(fake):
    assert fake.get_vf("ens1f0", 3) == VfState(False, True)
    fake.set_vf("ens1f0", 3, trust=True)
    fake.set_vf("ens1f0", 3, spoofchk=False)
    fake.set_vf("ens1f0", 2)  # nothing asked: nothing changes, still recorded
    assert fake.calls == [("ens1f0", 3, True, None), ("ens1f0", 3, None, False),
                          ("ens1f0", 2, None, None)]
    assert fake.get_vf("ens1f0", 3) == VfState(True, False)
    assert fake.get_vf("ens1f0", 2) == VfState(False, True)


def test_fake_told_to_fail(fake):
    fake.fail("ens1f0", 3, errno.EOPNOTSUPP)
    with pytest.raises(NetlinkError) as e:
        fake.set_vf("ens1f0", 3, trust=True)
    assert str(e.value) == "cannot set trust on for VF 3 of ens1f0: Operation not supported"
    assert (e.value.ifname, e.value.vf, e.value.setting, e.value.errno) == \
        ("ens1f0", 3, "trust", errno.EOPNOTSUPP)
    assert isinstance(e.value, VfpickError)
    assert fake.calls == [("ens1f0", 3, True, None)]  # failed calls are recorded too
    fake.set_vf("ens1f0", 2, trust=True)  # other VFs unaffected


def test_fake_fails_one_setting_only(fake):
    fake.fail("ens1f0", 1, errno.EPERM, setting="spoofchk")
    with pytest.raises(NetlinkError) as e:
        fake.set_vf("ens1f0", 1, trust=True, spoofchk=False)
    assert str(e.value) == "cannot set spoofchk off for VF 1 of ens1f0: Operation not permitted"
    # trust went through first, as in the kernel
    assert fake.get_vf("ens1f0", 1) == VfState(True, True)


def test_fake_unknown_pf_and_vf(fake):
    with pytest.raises(NetlinkError,
                       match="^cannot set trust off for VF 0 of nope: No such device$"):
        fake.set_vf("nope", 0, trust=False)
    with pytest.raises(NetlinkError, match="VF 4 of ens1f0: Invalid argument"):
        fake.set_vf("ens1f0", 4, spoofchk=True)
    with pytest.raises(NetlinkError, match="No such device"):
        fake.link_state("nope")
    with pytest.raises(NetlinkError) as e:
        fake.get_vf("ens1f0", 4)
    assert str(e.value) == "cannot read VF 4 of ens1f0: the kernel reports no such VF"


def test_fake_failing_vf_fails_reads_too(fake):
    fake.fail("ens1f0", 0, errno.EIO)
    with pytest.raises(NetlinkError, match="^cannot read VF 0 of ens1f0: Input/output error$"):
        fake.get_vf("ens1f0", 0)


@pytest.mark.parametrize("bad", ["on", "off", 2, "yes"])
def test_setting_must_be_a_bool(fake, bad):
    with pytest.raises(ValueError):
        fake.set_vf("ens1f0", 0, trust=bad)


def test_fake_link_state(fake):
    assert fake.link_state("ens1f0") == LinkState("ens1f0", True, "up", None)
    fake.set_link("ens1f0", carrier=False, operstate="lowerlayerdown")
    assert fake.link_state("ens1f0") == LinkState("ens1f0", False, "lowerlayerdown", None)


def test_fake_watch_links(fake):
    stop = threading.Event()
    seen = []
    fake.set_link("ens1f0", carrier=False)  # before subscribing: not seen
    watch = fake.watch_links(stop, timeout=0.05)
    fake.set_link("ens1f0", carrier=True)
    fake.del_link("ens1f1")
    fake.emit(LinkEvent("resync", None, None, None, None))
    for event in watch:
        seen.append(event)
        if len(seen) == 3:
            stop.set()
    assert seen == [LinkEvent("new", "ens1f0", 1, True, "up"),
                    LinkEvent("del", "ens1f1", 2, False, "down"),
                    LinkEvent("resync", None, None, None, None)]
    fake.set_link("ens1f0", carrier=False)  # after the end: nobody queues it
    assert fake._watchers == []


def test_fake_watch_stops_when_idle(fake):
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    start = time.monotonic()
    assert list(fake.watch_links(stop, timeout=0.05)) == []
    assert time.monotonic() - start < 2


def test_importing_does_not_import_pyroute2():
    code = ("import sys, vfpick.netlink as n; nl = n.FakeNetlink(); nl.add_link('a', num_vfs=1);"
            "nl.set_vf('a', 0, trust=True); assert 'pyroute2' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- pyroute2, no kernel

pyroute2 = pytest.importorskip("pyroute2")


def _decode(batch):
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl
    return list(MarshalRtnl().parse(bytes(batch)))


def test_set_vf_request_encoding():
    """What set_vf sends, byte for byte through pyroute2's own decoder."""
    from pyroute2 import IPBatch
    nl = object.__new__(netlink.RealNetlink)  # no socket: an IPBatch records the requests
    nl._ipr = IPBatch()
    nl.set_vf("ens1f0", 3, trust=True, spoofchk=False)
    msgs = _decode(nl._ipr.batch)
    assert [m["header"]["type"] for m in msgs] == [16, 16]  # RTM_NEWLINK, as `ip link set` does
    assert [(m["index"], m.get_attr("IFLA_IFNAME")) for m in msgs] == [(0, "ens1f0")] * 2
    infos = [m.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO") for m in msgs]
    assert [len(i) for i in infos] == [1, 1]
    sent = [[(name, dict(value)) for name, value in i[0]["attrs"]] for i in infos]
    assert sent == [[("IFLA_VF_TRUST", {"vf": 3, "trust": 1})],
                    [("IFLA_VF_SPOOFCHK", {"vf": 3, "spoofchk": 0})]]


def test_vf_state_from_a_kernel_style_message():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    msg = ifinfmsg()
    msg["index"] = 7
    msg["attrs"] = [("IFLA_IFNAME", "ens1f0"), ("IFLA_VFINFO_LIST", {"attrs": [
        ("IFLA_VF_INFO", {"attrs": [("IFLA_VF_SPOOFCHK", {"vf": vf, "spoofchk": spoof}),
                                    ("IFLA_VF_TRUST", {"vf": vf, "trust": trust})]})
        for vf, spoof, trust in ((0, 1, 0), (1, 0xFFFFFFFF, 1))]})]
    msg.encode()
    decoded = ifinfmsg(msg.data)
    decoded.decode()
    assert netlink.vf_state_from_msg(decoded, 0) == VfState(False, True)
    assert netlink.vf_state_from_msg(decoded, 1) == VfState(True, None)  # -1: not reported
    assert netlink.vf_state_from_msg(decoded, 2) is None


def test_watch_reports_overflow_as_resync():
    class Overflowing:
        calls = 0

        def recv(self, size):
            self.calls += 1
            raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))

        def close(self):
            pass

    watch = netlink._KernelWatch(Overflowing(), threading.Event())
    assert next(iter(watch)) == LinkEvent("resync", None, None, None, None)


# ---------------------------------------------------------------- the real kernel

def _ip(*args, check=True):
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    """A fresh named netns holding a veth pair va <-> vb (both admin-down); removed after."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create a network namespace")
    name = "vfpick-test-%s" % uuid.uuid4().hex[:8]
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip("cannot create a netns here: %s" % made.stderr.strip())
    try:
        veth = _ip("-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb",
                   check=False)
        if veth.returncode != 0:
            pytest.skip("cannot create a veth pair here: %s" % veth.stderr.strip())
        yield name
    finally:
        _ip("netns", "del", name, check=False)  # takes its links with it


@pytest.fixture
def real(netns):
    with netlink.open_netlink(netns) as nl:
        yield nl


def test_missing_netns_is_an_error_not_created():
    name = "vfpick-test-missing-%s" % uuid.uuid4().hex[:8]
    with pytest.raises(NetlinkError, match="cannot open rtnetlink in netns %s" % name):
        netlink.open_netlink(name)
    assert not os.path.exists("/run/netns/" + name)


def test_link_state_follows_the_peer(netns, real):
    assert real.link_state("va") == LinkState("va", False, "down", None)
    _ip("-n", netns, "link", "set", "va", "up")
    st = real.link_state("va")
    assert (st.carrier, st.operstate) == (False, "lowerlayerdown")  # up, peer down
    _ip("-n", netns, "link", "set", "vb", "up")
    assert real.link_state("va") == LinkState("va", True, "up", None)


def test_link_state_of_a_missing_link(real):
    with pytest.raises(NetlinkError) as e:
        real.link_state("nope0")
    assert str(e.value) == "cannot read the link state of nope0: No such device"


def test_set_vf_on_a_link_without_vfs(real):
    with pytest.raises(NetlinkError) as e:
        real.set_vf("va", 3, trust=True)
    assert str(e.value) == "cannot set trust on for VF 3 of va: Operation not supported"
    assert (e.value.ifname, e.value.vf, e.value.setting, e.value.errno) == \
        ("va", 3, "trust", errno.EOPNOTSUPP)
    with pytest.raises(NetlinkError, match="^cannot set spoofchk off for VF 0 of va: "):
        real.set_vf("va", 0, spoofchk=False)
    real.set_vf("va", 0)  # nothing asked: no request, no error


def test_set_vf_on_a_missing_pf(real):
    with pytest.raises(NetlinkError) as e:
        real.set_vf("nope0", 1, spoofchk=True)
    assert str(e.value) == "cannot set spoofchk on for VF 1 of nope0: No such device"


def test_get_vf_on_a_link_without_vfs(real):
    with pytest.raises(NetlinkError) as e:
        real.get_vf("va", 0)
    assert str(e.value) == "cannot read VF 0 of va: the kernel reports no such VF"


def test_watch_links_sees_carrier_flips_and_removal(netns, real):
    stop = threading.Event()
    watch = real.watch_links(stop, timeout=0.1)  # subscribed from here on
    events = queue.Queue()
    thread = threading.Thread(target=lambda: [events.put(e) for e in watch], daemon=True)
    thread.start()

    def wait_for(pred, what):
        seen, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                event = events.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(event)
            if pred(event):
                return event
        pytest.fail("no event %s; saw %s" % (what, seen))

    try:
        # vb is va's peer: its admin state is va's carrier.
        _ip("-n", netns, "link", "set", "va", "up")
        wait_for(lambda e: e[:2] == ("new", "va") and e.operstate == "lowerlayerdown",
                 "va up without carrier")
        for vb, carrier, operstate in (("up", True, "up"), ("down", False, "lowerlayerdown"),
                                       ("up", True, "up")):
            _ip("-n", netns, "link", "set", "vb", vb)
            event = wait_for(lambda e: e.ifname == "va" and e.carrier == carrier
                             and e.operstate == operstate, "va carrier %s" % carrier)
            assert event.kind == "new" and event.index
        _ip("-n", netns, "link", "del", "va")  # takes vb too
        wait_for(lambda e: e[:2] == ("del", "va"), "va deleted")
        wait_for(lambda e: e[:2] == ("del", "vb"), "vb deleted")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_watch_links_stops_on_the_event(real):
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    start = time.monotonic()
    assert list(real.watch_links(stop, timeout=0.05)) == []
    assert time.monotonic() - start < 2


def test_watch_links_in_this_netns_stops_and_closes():
    """Listening only (no privilege needed): the host's links are never touched."""
    with netlink.open_netlink() as nl:
        assert nl.link_state("lo").operstate in ("unknown", "up")
        stop = threading.Event()
        watch = nl.watch_links(stop, timeout=0.05)
        threading.Timer(0.2, stop.set).start()
        for event in watch:  # whatever the host does meanwhile is fine
            assert event.kind in ("new", "del", "resync")
        assert watch._sock.fileno() == -1  # the socket went with the iteration


# ---------------------------------------------------------------- netdevsim: VFs for real

NSIM = "/sys/bus/netdevsim"


@pytest.fixture
def nsim():
    """A netdevsim device with 4 VFs: (pf ifname, device id). Deleted after."""
    if not os.path.isdir(NSIM):
        pytest.skip("no netdevsim in this kernel (CONFIG_NETDEVSIM): set_vf is only "
                    "tested against a link without VFs")
    dev_id = 700 + os.getpid() % 200
    with open(NSIM + "/new_device", "w") as f:
        f.write("%d 1" % dev_id)
    dev = "%s/devices/netdevsim%d" % (NSIM, dev_id)
    try:
        with open(dev + "/sriov_numvfs", "w") as f:
            f.write("4")
        for _ in range(50):  # the netdev appears (and udev may rename it) asynchronously
            names = os.listdir(dev + "/net") if os.path.isdir(dev + "/net") else []
            if names:
                break
            time.sleep(0.1)
        yield names[0]
    finally:
        with open(NSIM + "/del_device", "w") as f:
            f.write(str(dev_id))


def test_set_vf_on_netdevsim(nsim):
    with netlink.open_netlink() as nl:
        nl.set_vf(nsim, 2, trust=True, spoofchk=False)
        assert nl.get_vf(nsim, 2) == VfState(True, False)
        nl.set_vf(nsim, 2, trust=False)
        assert nl.get_vf(nsim, 2) == VfState(False, False)
        with pytest.raises(NetlinkError, match="VF 9 of %s: " % nsim):
            nl.set_vf(nsim, 9, trust=True)
