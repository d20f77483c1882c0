"""Live moves (vfpick/livemove.py) against the real libvirtd, every step and every failure.

A simulated VF cannot be hot-plugged into a running qemu on this host (no PCI device behind
it), so the steps run on the persistent definition of a stopped domain: virt.Devices with
live=False makes the same detach / wait / attach / define calls with VIR_DOMAIN_AFFECT_CONFIG
(libvirt's --config). Failures are injected at each step through that seam, as real libvirt
refusals (XML libvirt rejects), never by patching libvirt. The live flag itself is exercised
in the SR-IOV lab.
"""

import fcntl
import os

import pytest
from lxml import etree

import libvirtd as lv
from clitools import hostdev_vfs
from vfpick import config as configmod, livemove
from vfpick.domain import virt
from vfpick.errors import ClaimConflict, LiveMoveFailed


@pytest.fixture
def fo(env):
    """env with pool 'fast' making failover pairs (virtio on br0 + the VF)."""
    env.cfg = env.host.write_config({"fast": "pfs = %s\nfailover = bridge:br0\n"
                                     % " ".join(env.host.netdevs())})
    env.conn = virt.connect(lv.URI)
    yield env
    env.conn.close()


def nics(env, name):
    """{mac: (vf, teaming type, kind of the other interface with that MAC)} of the definition."""
    root = etree.fromstring(env.daemon.dumpxml(name, inactive=True).encode())
    out = {}
    for iface in root.findall("devices/interface"):
        if iface.get("type") != "hostdev":
            continue
        mac = iface.find("mac").get("address")
        [vf] = hostdev_vfs(b"<domain><devices>%s</devices></domain>" % etree.tostring(iface))
        partner = [i.get("type") for i in root.findall("devices/interface")
                   if i is not iface and i.find("mac").get("address") == mac]
        teaming = iface.find("teaming")
        out[mac] = (vf, teaming.get("type") if teaming is not None else None, partner)
    return out


def meta_vfs(env, name):
    root = etree.fromstring(env.daemon.dumpxml(name, inactive=True).encode())
    return {n.get("mac"): n.get("vf") for n in root.iter("{%s}nic" % livemove.domscan.NS)}


def claims(env, name):
    return sorted((c["mac"], c["vf"]) for c in env.claims(name))


def free_vf_elsewhere(env, name, mac):
    """A free VF on a link none of the domain's NICs uses."""
    topo = env.host.topology()
    used = {c["vf"] for c in env.claims()}
    links = {topo.link_of[topo.vfs[c["vf"]].pf] for c in env.claims(name)}
    return next(vf for vf, r in sorted(topo.vfs.items())
                if vf not in used and topo.link_of[r.pf] not in links)


def lock_is_free(env):
    fd = os.open(os.path.join(env.host.state_dir, "claims.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class Checked(virt.Devices):
    """The --config devices; every libvirt call asserts the claims lock is free, and the steps
    listed in *fail* are refused by libvirt for real (XML it rejects)."""

    def __init__(self, env, dom, fail=(), keep_device=False, live=False):
        virt.Devices.__init__(self, dom, live=live)
        self.env, self.fail, self.keep_device, self.calls = env, set(fail), keep_device, []

    def _step(self, what):
        """True when this call is to be refused: 'attach' is the first attach, 'attach#2' the
        second."""
        assert lock_is_free(self.env), "libvirt called under the claims lock (%s)" % what
        self.calls.append(what)
        n = self.calls.count(what)
        return ("%s#%d" % (what, n) if n > 1 else what) in self.fail

    def detach(self, iface_xml):
        if self._step("detach"):
            return virt.Devices.detach(self, "<interface type='hostdev'/>")
        if self.keep_device:
            return None  # the guest never acknowledges the unplug: libvirt keeps the device
        return virt.Devices.detach(self, iface_xml)

    def attach(self, iface_xml):
        if self._step("attach"):
            return virt.Devices.attach(self, "<interface type='hostdev'><source/></interface>")
        return virt.Devices.attach(self, iface_xml)

    def define(self, xml):
        if self._step("define"):
            return virt.Devices.define(self, b"<domain type='qemu'/>")
        return virt.Devices.define(self, xml)

    def xml(self):
        assert lock_is_free(self.env)
        return virt.Devices.xml(self)


def setup(fo, nics_count=2):
    name = fo.define(nics=nics_count)
    dom = fo.conn.lookupByName(name)
    mac = sorted(nics(fo, name))[0]
    return name, dom, mac, free_vf_elsewhere(fo, name, mac)


def move(fo, devices, name, dom, mac, to_vf, **kw):
    return livemove.move_nic(fo.cfg, devices, name, dom.UUIDString(), mac, to_vf, **kw)


def test_a_failover_nic_moves_step_by_step_and_keeps_its_mac_teaming_and_partner(fo):
    name, dom, mac, to_vf = setup(fo)
    before = nics(fo, name)
    devices = Checked(fo, dom)
    moved = move(fo, devices, name, dom, mac, to_vf)
    assert devices.calls == ["detach", "attach", "define"]
    after = nics(fo, name)
    assert after[mac] == (to_vf, "transient", ["bridge"])       # same MAC, teaming, partner
    assert {m: v for m, v in after.items() if m != mac} == {m: v for m, v in before.items()
                                                            if m != mac}
    assert meta_vfs(fo, name)[mac] == to_vf
    assert claims(fo, name) == sorted((m, v[0]) for m, v in after.items())  # old one released
    assert not any(c["active"] for c in fo.claims(name)) and moved.vf == before[mac][0]


@pytest.mark.parametrize("fail, says", [
    (["detach"], "libvirt refused to detach VF"),
    (["attach"], "libvirt refused to attach VF"),
    (["define"], "libvirt refused the new definition"),
])
def test_a_refused_step_leaves_the_nic_where_it_was_and_the_claims_as_they_were(fo, fail, says):
    name, dom, mac, to_vf = setup(fo)
    before, held = nics(fo, name), claims(fo, name)
    with pytest.raises(LiveMoveFailed) as e:
        move(fo, Checked(fo, dom, fail=fail), name, dom, mac, to_vf)
    assert says in str(e.value)
    assert str(e.value).endswith("nothing moved")
    assert nics(fo, name) == before and claims(fo, name) == held
    assert meta_vfs(fo, name)[mac] == before[mac][0]


def test_attach_refused_and_the_old_vf_refused_too_leaves_the_virtio_partner_alone(fo):
    name, dom, mac, to_vf = setup(fo)
    before, held = nics(fo, name), claims(fo, name)
    with pytest.raises(LiveMoveFailed) as e:
        move(fo, Checked(fo, dom, fail=["attach", "attach#2"]), name, dom, mac, to_vf)
    msg = str(e.value)
    assert "runs on its virtio partner alone" in msg and "keeps VF %s (claimed)" % before[mac][0] in msg
    assert mac not in nics(fo, name)                           # the VF half is out
    root = etree.fromstring(fo.daemon.dumpxml(name, inactive=True).encode())
    assert [i.get("type") for i in root.findall("devices/interface")
            if i.find("mac").get("address") == mac] == ["bridge"]  # the virtio partner stays
    assert claims(fo, name) == held                            # no claim lost, none doubled


def test_definition_refused_and_the_new_vf_refused_to_leave_keeps_both_claimed(fo):
    name, dom, mac, to_vf = setup(fo)
    before = nics(fo, name)
    devices = Checked(fo, dom, fail=["define", "detach#2"])
    with pytest.raises(LiveMoveFailed) as e:
        move(fo, devices, name, dom, mac, to_vf)
    assert devices.calls == ["detach", "attach", "define", "detach"]
    assert "both stay claimed" in str(e.value)
    assert nics(fo, name)[mac][0] == to_vf                      # the new VF is attached
    mine = {c["vf"]: c for c in fo.claims(name)}
    assert {before[mac][0], to_vf} <= set(mine)                 # neither VF lost nor handed out
    assert not any(c["active"] for c in mine.values())


def test_live_on_a_domain_that_is_not_running_moves_nothing(fo):
    name, dom, mac, to_vf = setup(fo)
    before, held = nics(fo, name), claims(fo, name)
    devices = Checked(fo, dom, live=True)
    with pytest.raises(LiveMoveFailed) as e:
        move(fo, devices, name, dom, mac, to_vf)
    assert "is not running" in str(e.value) and devices.calls == []
    assert nics(fo, name) == before and claims(fo, name) == held


def test_a_guest_that_never_releases_the_vf_times_out_and_nothing_moves(fo):
    name, dom, mac, to_vf = setup(fo)
    before, held = nics(fo, name), claims(fo, name)
    with pytest.raises(LiveMoveFailed) as e:
        move(fo, Checked(fo, dom, keep_device=True), name, dom, mac, to_vf, timeout=0,
             sleep=lambda _s: None)
    assert "has not released VF %s within 0 s" % before[mac][0] in str(e.value)
    assert nics(fo, name) == before and claims(fo, name) == held


def test_a_target_that_is_not_free_changes_nothing(fo):
    name, dom, mac, _ = setup(fo)
    other = fo.define(nics=1)
    taken = fo.claims(other)[0]["vf"]
    before, held = nics(fo, name), claims(fo, name)
    with pytest.raises(ClaimConflict):
        move(fo, Checked(fo, dom), name, dom, mac, taken)
    assert nics(fo, name) == before and claims(fo, name) == held


def test_a_plain_vf_moves_only_with_allow_gap_and_another_nic_on_a_distinct_link(env):
    env.cfg = configmod.load(env.host.config_path)
    env.conn = virt.connect(lv.URI)
    try:
        name, dom, mac, to_vf = setup(env)
        assert nics(env, name)[mac][2] == []                   # no failover partner
        held = claims(env, name)
        with pytest.raises(LiveMoveFailed) as e:
            move(env, Checked(env, dom), name, dom, mac, to_vf)
        assert "--allow-nic-gap" in str(e.value) and claims(env, name) == held
        move(env, Checked(env, dom), name, dom, mac, to_vf, allow_gap=True)
        assert nics(env, name)[mac][0] == to_vf
        single = env.define(nics=1)
        one = sorted(nics(env, single))[0]
        with pytest.raises(LiveMoveFailed) as e:
            move(env, Checked(env, env.conn.lookupByName(single)), single,
                 env.conn.lookupByName(single), one, free_vf_elsewhere(env, single, one),
                 allow_gap=True)
        assert "no other NIC on a distinct link" in str(e.value)
    finally:
        env.conn.close()


def test_a_nic_with_a_rate_takes_it_to_the_vf_it_moves_to(env):
    from fakenetlink import FakeNetlink

    env.cfg = configmod.load(env.host.config_path)
    env.conn = virt.connect(lv.URI)
    nl = FakeNetlink()
    for netdev in env.host.netdevs():
        nl.add_link(netdev, num_vfs=64)
    try:
        # 500 Mb/s average, 1000 peak, 100 guaranteed (libvirt's KiB/s)
        name = env.define(nics=2, iface_extra="<bandwidth><inbound floor='12207'/><outbound "
                                              "average='61035' peak='122070'/></bandwidth>")
        dom = env.conn.lookupByName(name)
        mac = sorted(nics(env, name))[0]
        to_vf = free_vf_elsewhere(env, name, mac)
        before = {c["mac"]: c for c in env.claims(name)}
        assert (before[mac]["rate_mbps"], before[mac]["min_rate_mbps"]) == (500, 100)
        move(env, Checked(env, dom), name, dom, mac, to_vf, allow_gap=True,
             netlink_factory=lambda: nl)
        after = {c["mac"]: c for c in env.claims(name)}
        assert after[mac]["vf"] == to_vf
        assert (after[mac]["rate_mbps"], after[mac]["min_rate_mbps"]) == (500, 100)
        topo = env.host.topology()
        state = nl.get_vf(topo.pfs[topo.vfs[to_vf].pf].netdev, topo.vfs[to_vf].index)
        assert (state.max_tx_rate, state.min_tx_rate) == (1000, 100)  # the peak caps the VF
    finally:
        env.conn.close()
