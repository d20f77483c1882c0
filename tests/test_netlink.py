"""vfpick.host.netlink: the fake, the rtnl codec (checked against pyroute2's), the real kernel in a
netns.

Kernel tests need root, `ip` and veth; they skip with the reason otherwise. netdevsim (the
only way to have VFs without SR-IOV hardware) is tried and skipped when the kernel lacks it.
"""

import errno
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from vfpick.host import netlink, rtnl
from vfpick.errors import VfpickError
from vfpick.host.netlink import LinkEvent, LinkState, NetlinkError, VfState

from fakenetlink import FakeNetlink
from waiting import WAIT

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


def _drain_until_stopped(watch, stop):
    """The events watch yields until stop is set (set 0.1 s from now), in a thread: a watch
    that ignores the stop fails the test after WAIT s instead of hanging it."""
    seen = []
    thread = threading.Thread(target=lambda: seen.extend(watch), daemon=True)
    thread.start()
    threading.Timer(0.1, stop.set).start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the watch did not stop within %d s of the event" % WAIT
    return seen


def test_fake_watch_stops_when_idle(fake):
    stop = threading.Event()
    assert _drain_until_stopped(fake.watch_links(stop, timeout=0.05), stop) == []
    assert fake._watchers == []


def test_importing_does_not_import_pyroute2():
    code = "import sys, vfpick.host.netlink; assert 'pyroute2' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_fake_is_not_in_the_package():
    assert not hasattr(netlink, "FakeNetlink")


def _imported(code, *prefix):
    """Module names imported by `python -X importtime -c code` (nothing is timed)."""
    out = subprocess.run(list(prefix) + [sys.executable, "-X", "importtime", "-c", code],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_open_netlink_does_not_import_pyroute2():
    """The hook's path: the real object, set_vf ready, without pyroute2 (public socket only)."""
    names = _imported("from vfpick.host.netlink import open_netlink; open_netlink()")
    assert "vfpick.host.rtnl" in names  # the log is read right
    assert not [n for n in names if n.split(".")[0] == "pyroute2"]
    assert "socket" in names and "_socket" in names  # through the public module
    assert "ctypes" not in names  # only for a named netns


# ---------------------------------------------------------------- pyroute2, no kernel



def _decode(batch):
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl
    return list(MarshalRtnl().parse(bytes(batch)))


def _pyroute2_request(ifname, vf):
    """The bytes pyroute2 0.9 sends for `link("set", ifname=..., vf={...})` (an IPBatch
    records requests instead of sending them)."""
    from pyroute2 import IPBatch
    batch = IPBatch()
    batch.link("set", ifname=ifname, vf=vf)
    return bytes(batch.batch)


@pytest.mark.parametrize("setting,value", [("trust", 1), ("trust", 0), ("spoofchk", 0),
                                           ("spoofchk", 1)])
def test_set_vf_request_encoding(setting, value):
    """rtnl's request, through pyroute2's own decoder, carries what pyroute2's request does."""
    ours = _decode(rtnl.setlink_vf("ens1f0", 3, setting, value, seq=7))
    theirs = _decode(_pyroute2_request("ens1f0", {"vf": 3, setting: value}))
    assert [m["header"]["type"] for m in ours + theirs] == [19, 16]  # RTM_SETLINK/NEWLINK
    assert [(m["header"]["flags"], m["header"]["sequence_number"]) for m in ours] == [(5, 7)]

    def sent(msg):
        infos = msg.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO")
        return (msg["index"], msg["flags"], msg["change"], msg.get_attr("IFLA_IFNAME"),
                [[(name, dict(v)) for name, v in info["attrs"]] for info in infos])

    assert sent(ours[0]) == sent(theirs[0]) == (0, 0, 0, "ens1f0", [
        [("IFLA_VF_" + setting.upper(), {"vf": 3, setting: value})]])
    # Byte for byte, past the header (type, seq and pid differ): same ifinfomsg, same attrs.
    assert rtnl.setlink_vf("ens1f0", 3, setting, value)[16:] == \
        _pyroute2_request("ens1f0", {"vf": 3, setting: value})[16:]


@pytest.mark.parametrize("low,high", [(0, 100), (250, 1000), (0, 0), (40000, 100000)])
def test_set_vf_rate_request_encoding(low, high):
    """IFLA_VF_RATE, decoded by pyroute2, as pyroute2's own request (`ip link set PF vf N
    min_tx_rate L max_tx_rate H` sends the same attribute)."""
    ours = _decode(rtnl.setlink_vf_rate("ens1f0", 3, low, high, seq=7))
    rate = {"vf": 3, "min_tx_rate": low, "max_tx_rate": high}
    theirs = _decode(_pyroute2_request("ens1f0", {"vf": 3, "rate": rate}))
    assert [m["header"]["type"] for m in ours + theirs] == [19, 16]
    assert [(m["header"]["flags"], m["header"]["sequence_number"]) for m in ours] == [(5, 7)]

    def sent(msg):
        infos = msg.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO")
        return (msg.get_attr("IFLA_IFNAME"), [[(name, dict(v)) for name, v in info["attrs"]]
                                              for info in infos])

    assert sent(ours[0]) == sent(theirs[0]) == ("ens1f0", [[("IFLA_VF_RATE", rate)]])
    assert rtnl.setlink_vf_rate("ens1f0", 3, low, high)[16:] == \
        _pyroute2_request("ens1f0", {"vf": 3, "rate": rate})[16:]


def test_set_vf_sends_flags_then_one_rate_request():
    kernel = Kernel(_ack, _ack)
    _real(kernel).set_vf("ens1f0", 3, trust=True, max_tx_rate=800, min_tx_rate=200)
    assert kernel.sent == [rtnl.setlink_vf("ens1f0", 3, "trust", 1, seq=1),
                           rtnl.setlink_vf_rate("ens1f0", 3, 200, 800, seq=2)]
    kernel = Kernel(_ack)
    _real(kernel).set_vf("ens1f0", 3, max_tx_rate=800)  # the other rate is 0: no guarantee
    assert kernel.sent == [rtnl.setlink_vf_rate("ens1f0", 3, 0, 800, seq=1)]


def test_a_refused_rate_is_one_line_naming_both_rates():
    """igb: min_tx_rate other than 0 is EINVAL (igb_ndo_set_vf_bw)."""
    kernel = Kernel(lambda seq: _error(errno.EINVAL, seq))
    with pytest.raises(NetlinkError) as e:
        _real(kernel).set_vf("ens1f0", 3, max_tx_rate=800, min_tx_rate=200)
    assert str(e.value) == ("cannot set max_tx_rate 800 min_tx_rate 200 for VF 3 of ens1f0: "
                            "Invalid argument")
    assert (e.value.setting, e.value.errno) == ("rate", errno.EINVAL)


@pytest.mark.parametrize("bad", [-1, "100", 1.5, True, 1 << 32])
def test_a_rate_must_be_whole_mbps(fake, bad):
    with pytest.raises(ValueError):
        fake.set_vf("ens1f0", 0, max_tx_rate=bad)


@pytest.mark.parametrize("rates,asked,refused", [
    ("both", (800, 200), None),
    ("max", (800, 0), None),
    ("max", (800, 200), errno.EINVAL),    # igb, ixgbe, i40e
    ("none", (800, 0), errno.EOPNOTSUPP),
])
def test_fake_rates_follow_the_driver(rates, asked, refused):
    nl = FakeNetlink()
    nl.add_link("ens1f0", num_vfs=2, rates=rates)
    if refused:
        with pytest.raises(NetlinkError) as e:
            nl.set_vf("ens1f0", 1, max_tx_rate=asked[0], min_tx_rate=asked[1])
        assert e.value.errno == refused and e.value.setting == "rate"
        assert nl.get_vf("ens1f0", 1)[2:] == (None, None)
    else:
        nl.set_vf("ens1f0", 1, max_tx_rate=asked[0], min_tx_rate=asked[1])
        assert nl.get_vf("ens1f0", 1)[2:] == asked
    assert nl.rate_calls == [("ens1f0", 1) + asked] and nl.calls == []


def test_getlink_request_encoding():
    msg, = _decode(rtnl.getlink_vfs("ens1f0", seq=2))
    assert (msg["header"]["type"], msg["header"]["flags"]) == (18, 1)  # RTM_GETLINK, REQUEST
    assert (msg["index"], msg.get_attr("IFLA_IFNAME"), msg.get_attr("IFLA_EXT_MASK")) == \
        (0, "ens1f0", 9)  # RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS


# ---------------------------------------------------------------- replies, no kernel

def _nlmsg(kind, payload, seq=1, flags=0):
    return rtnl._HDR.pack(16 + len(payload), kind, flags, seq, 4242) + payload + \
        b"\0" * (-len(payload) % 4)


def _error(code, seq=1, extack=None, flags=0):
    """NLMSG_ERROR: -code, then the (capped) request header, then extack TLVs."""
    payload = rtnl._ERR.pack(-code) + rtnl._HDR.pack(64, 19, 5, seq, 0)
    if extack is not None:
        flags |= rtnl.NLM_F_CAPPED | rtnl.NLM_F_ACK_TLVS
        payload += rtnl._attr(rtnl.NLMSGERR_ATTR_MSG, extack.encode() + b"\0")
    return _nlmsg(rtnl.NLMSG_ERROR, payload, seq, flags)


class Kernel:
    """A socket that records what is sent and answers each send with the next canned reply:
    bytes, or a function of the request's seq."""

    def __init__(self, *replies):
        self.replies, self.sent, self._pending = list(replies), [], []

    def send(self, data):
        self.sent.append(data)
        reply = self.replies.pop(0)
        seq = rtnl._HDR.unpack_from(data)[3]
        self._pending.append(reply(seq) if callable(reply) else reply)
        return len(data)

    def recv_into(self, buf, nbytes=0, flags=0):
        data = self._pending[0]
        if not flags & socket.MSG_PEEK:
            self._pending.pop(0)
        buf[:min(len(buf), len(data))] = data[:len(buf)]
        return len(data)

    def close(self):
        pass


def _real(kernel):
    nl = object.__new__(netlink.RealNetlink)
    nl.netns, nl._ipr, nl._rtnl = None, None, rtnl.Rtnl(sock=kernel)
    return nl


def _ack(seq):
    return _error(0, seq)


def test_set_vf_sends_one_request_per_setting_trust_first():
    kernel = Kernel(_ack, _ack)
    _real(kernel).set_vf("ens1f0", 3, trust=True, spoofchk=False)
    assert kernel.sent == [rtnl.setlink_vf("ens1f0", 3, "trust", 1, seq=1),
                           rtnl.setlink_vf("ens1f0", 3, "spoofchk", 0, seq=2)]
    kernel = Kernel()
    _real(kernel).set_vf("ens1f0", 3)  # nothing asked: nothing sent
    assert kernel.sent == []


def test_set_vf_error_names_the_setting():
    kernel = Kernel(_ack, lambda seq: _error(errno.EPERM, seq))
    with pytest.raises(NetlinkError) as e:
        _real(kernel).set_vf("ens1f0", 3, trust=True, spoofchk=False)
    assert str(e.value) == "cannot set spoofchk off for VF 3 of ens1f0: Operation not permitted"
    assert (e.value.ifname, e.value.vf, e.value.setting, e.value.errno) == \
        ("ens1f0", 3, "spoofchk", errno.EPERM)
    assert len(kernel.sent) == 2


def test_set_vf_reports_the_extended_ack():
    kernel = Kernel(lambda seq: _error(errno.EINVAL, seq, extack="VF 9 out of range"))
    with pytest.raises(NetlinkError) as e:
        _real(kernel).set_vf("ens1f0", 9, trust=False)
    assert str(e.value) == "cannot set trust off for VF 9 of ens1f0: VF 9 out of range"
    assert e.value.errno == errno.EINVAL


def test_an_uncapped_error_with_extack_skips_the_echoed_request():
    request = rtnl.setlink_vf("ens1f0", 1, "trust", 1, seq=1)
    payload = rtnl._ERR.pack(-errno.EOPNOTSUPP) + request + \
        rtnl._attr(rtnl.NLMSGERR_ATTR_MSG, b"no VFs here\0")
    err = rtnl.error_of(rtnl.NLM_F_ACK_TLVS, payload)
    assert (err.errno, err.strerror) == (errno.EOPNOTSUPP, "no VFs here")


def test_acks_of_other_requests_are_skipped():
    kernel = Kernel(lambda seq: _error(errno.EPERM, seq + 99) + _error(0, seq))
    _real(kernel).set_vf("ens1f0", 0, trust=True)


@pytest.mark.parametrize("reply", [
    b"",                                                  # nothing at all
    b"\x14\0\0\0\x02\0",                                  # a header cut short
    _nlmsg(rtnl.NLMSG_ERROR, b"\0\0")[:18],               # length says 18, error needs 4
    _nlmsg(rtnl.NLMSG_ERROR, rtnl._ERR.pack(0))[:-2],     # length beyond the datagram
    rtnl._HDR.pack(8, rtnl.NLMSG_ERROR, 0, 1, 0) + bytes(8),  # length below a header
    _nlmsg(rtnl.NLMSG_ERROR, rtnl._ERR.pack(5)),          # a positive "errno"
], ids=["empty", "short-header", "short-error", "past-end", "tiny-length", "positive"])
def test_a_malformed_reply_is_a_netlink_error(reply):
    def answer(seq):  # the seq where the kernel puts it, when the header is complete
        if len(reply) >= 16:
            return reply[:8] + rtnl._HDR.pack(0, 0, 0, seq, 0)[8:12] + reply[12:]
        return reply

    with pytest.raises(NetlinkError) as e:
        _real(Kernel(answer)).set_vf("ens1f0", 3, trust=True)
    assert str(e.value).startswith("cannot set trust on for VF 3 of ens1f0: malformed ")
    assert e.value.errno == errno.EPROTO


def test_a_damaged_extack_keeps_the_errno():
    payload = rtnl._ERR.pack(-errno.EBUSY) + rtnl._HDR.pack(16, 19, 5, 1, 0) + b"\x40\0\x01\0ab"
    err = rtnl.error_of(rtnl.NLM_F_CAPPED | rtnl.NLM_F_ACK_TLVS, payload)
    assert (err.errno, err.strerror) == (errno.EBUSY, os.strerror(errno.EBUSY))


def _newlink(vfs, seq, ifname="ens1f0", rates=None):
    """A kernel-style RTM_NEWLINK, encoded by pyroute2: vfs = [(vf, spoofchk, trust)];
    rates: {vf: (min, max)} sent as the kernel does, IFLA_VF_TX_RATE and IFLA_VF_RATE."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    msg = ifinfmsg()
    msg["header"]["type"], msg["header"]["sequence_number"] = 16, seq
    msg["index"] = 7
    msg["attrs"] = [("IFLA_IFNAME", ifname), ("IFLA_MTU", 1500), ("IFLA_VFINFO_LIST", {
        "attrs": [("IFLA_VF_INFO", {"attrs": [
            ("IFLA_VF_MAC", {"vf": vf, "mac": "52:54:00:00:%02x:%02x" % divmod(vf, 256)}),
            ("IFLA_VF_SPOOFCHK", {"vf": vf, "spoofchk": spoof}),
            ("IFLA_VF_TRUST", {"vf": vf, "trust": trust})] + ([
                ("IFLA_VF_TX_RATE", {"vf": vf, "tx_rate": rates[vf][1]}),
                ("IFLA_VF_RATE", {"vf": vf, "min_tx_rate": rates[vf][0],
                                  "max_tx_rate": rates[vf][1]})] if rates else [])})
            for vf, spoof, trust in vfs]})]
    msg.encode()
    return bytes(msg.data)


def test_get_vf_decodes_a_kernel_style_reply():
    vfs = [(0, 1, 0), (1, 0xFFFFFFFF, 1), (2, 0, 0xFFFFFFFF)]
    nl = _real(Kernel(*[lambda seq: _newlink(vfs, seq)] * 4))
    assert nl.get_vf("ens1f0", 0) == VfState(False, True)
    assert nl.get_vf("ens1f0", 1) == VfState(True, None)  # -1: the driver does not say
    assert nl.get_vf("ens1f0", 2) == VfState(None, False)
    with pytest.raises(NetlinkError) as e:
        nl.get_vf("ens1f0", 3)
    assert str(e.value) == "cannot read VF 3 of ens1f0: the kernel reports no such VF"
    assert nl._rtnl._sock.sent[0] == rtnl.getlink_vfs("ens1f0", seq=1)


def test_get_vf_decodes_the_rates():
    vfs = [(0, 1, 0), (1, 1, 0)]
    nl = _real(Kernel(*[lambda seq: _newlink(vfs, seq, rates={0: (0, 0), 1: (250, 1000)})] * 2))
    assert nl.get_vf("ens1f0", 0) == VfState(False, True, 0, 0)
    assert nl.get_vf("ens1f0", 1) == VfState(False, True, 1000, 250)


def test_get_vf_errors():
    nl = _real(Kernel(lambda seq: _error(errno.ENODEV, seq), lambda seq: _newlink([], seq)[:40]))
    with pytest.raises(NetlinkError, match="^cannot read VF 0 of nope: No such device$"):
        nl.get_vf("nope", 0)
    with pytest.raises(NetlinkError, match="^cannot read VF 0 of ens1f0: malformed "):
        nl.get_vf("ens1f0", 0)


def test_a_big_reply_is_read_whole():
    vfs = [(vf, 1, 0) for vf in range(600)]  # > the 32 KiB first buffer
    nl = _real(Kernel(lambda seq: _newlink(vfs, seq)))
    assert len(_newlink(vfs, 1)) > 1 << 15
    assert nl.get_vf("ens1f0", 599) == VfState(False, True)


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
    assert e.value.errno == errno.ENODEV
    with pytest.raises(NetlinkError, match="^cannot read VF 1 of nope0: No such device$"):
        real.get_vf("nope0", 1)


@pytest.mark.parametrize("ifname,vf", [("va", 3), ("nope0", 0)])
def test_set_vf_fails_as_pyroute2_does(netns, real, ifname, vf):
    """Same errno and text as pyroute2's request (RTM_NEWLINK) for our RTM_SETLINK."""
    from pyroute2 import NetNS, NetlinkError as KernelError
    with NetNS(netns, flags=0) as ipr:  # the spelling pyroute2 0.7 (Debian 12, 13) takes too
        with pytest.raises(KernelError) as theirs:
            ipr.link("set", ifname=ifname, vf={"vf": vf, "trust": 1})
    with pytest.raises(NetlinkError) as ours:
        real.set_vf(ifname, vf, trust=True)
    assert ours.value.errno == theirs.value.code
    assert str(ours.value).endswith(": " + netlink._reason(theirs.value)[1])


def test_set_vf_in_a_netns_without_pyroute2(netns):
    code = ("import sys; from vfpick.host.netlink import open_netlink, NetlinkError\n"
            "try: open_netlink(%r).set_vf('va', 3, trust=True)\n"
            "except NetlinkError as e: print(e)\n"
            "assert not [m for m in sys.modules if m.startswith('pyroute2')]" % netns)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "cannot set trust on for VF 3 of va: Operation not supported\n"


def test_set_vf_rate_on_a_link_without_vfs(netns, real):
    """The kernel's answer to IFLA_VF_RATE on a link whose driver has no ndo_set_vf_rate (veth,
    dummy): one line naming both rates, the same errno as pyroute2's request."""
    from pyroute2 import NetNS, NetlinkError as KernelError
    with pytest.raises(NetlinkError) as e:
        real.set_vf("va", 1, max_tx_rate=100, min_tx_rate=0)
    assert str(e.value) == ("cannot set max_tx_rate 100 min_tx_rate 0 for VF 1 of va: "
                            "Operation not supported")
    assert (e.value.setting, e.value.errno) == ("rate", errno.EOPNOTSUPP)
    with NetNS(netns, flags=0) as ipr:  # the spelling pyroute2 0.7 (Debian 12, 13) takes too
        with pytest.raises(KernelError) as theirs:
            ipr.link("set", ifname="va", vf={"vf": 1, "rate": {
                "vf": 1, "min_tx_rate": 0, "max_tx_rate": 100}})
    assert theirs.value.code == errno.EOPNOTSUPP
    with pytest.raises(NetlinkError, match="^cannot set max_tx_rate 100 min_tx_rate 0 for VF 0 "
                                           "of nope0: No such device$"):
        real.set_vf("nope0", 0, max_tx_rate=100)


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
        seen, deadline = [], time.monotonic() + WAIT
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
        thread.join(WAIT)
    assert not thread.is_alive()


def test_watch_links_stops_on_the_event(real):
    stop = threading.Event()
    watch = real.watch_links(stop, timeout=0.05)
    assert _drain_until_stopped(watch, stop) == []
    assert watch._sock.fileno() == -1


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
        assert nl.get_vf(nsim, 2) == VfState(True, False, 0, 0)
        nl.set_vf(nsim, 2, trust=False)
        assert nl.get_vf(nsim, 2) == VfState(False, False, 0, 0)
        nl.set_vf(nsim, 2, max_tx_rate=500, min_tx_rate=100)  # netdevsim takes both
        assert nl.get_vf(nsim, 2)[2:] == (500, 100)
        nl.set_vf(nsim, 2, max_tx_rate=0, min_tx_rate=0)
        assert nl.get_vf(nsim, 2)[2:] == (0, 0)
        with pytest.raises(NetlinkError, match="VF 9 of %s: " % nsim):
            nl.set_vf(nsim, 9, trust=True)
