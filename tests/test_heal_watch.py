"""Self-healing in the watcher (vfpick/heal.py) against the real libvirtd.

A simulated VF cannot be hot-plugged into a running qemu here, so the domains are defined,
not started, and the watcher is given livemove's test seams: the domain "runs" as its
persistent definition says (describe), and the move acts on that definition
(virt.Devices(live=False), as tests/test_livemove.py drives it; failures are injected there
as real libvirt refusals). Its claims are marked active, as the prepare hook of a running
domain leaves them. The link dies in the simulated sysfs (carrier 0) and the watcher hears of
it as it would from rtnetlink (a host event); the clock is the test's, so the hold-down
passes without waiting.
"""

import hashlib
import os

import pytest
from lxml import etree

import libvirtd as lv
from clitools import status_json, vfpick
from test_livemove import Checked, nics
from test_watch import Clock
from vfpick import config as configmod, heal, livemove
from vfpick.host import simhost
from vfpick.domain import virt
from vfpick.commands import watch
from vfpick.host.hostevents import HostEvent
from vfpick.host.netlink import LinkEvent
from vfpick.state import StateStore

HOLD = 20


def configure(env, heal_line, failover=True):
    pool = "pfs = %s\n%s%s" % (" ".join(env.host.netdevs()),
                               "failover = bridge:br0\n" if failover else "", heal_line)
    env.cfg = env.host.write_config({"fast": pool})
    env.conn = virt.connect(lv.URI)
    return env.cfg


@pytest.fixture
def healing(env):
    yield env
    env.conn.close()


def running_domain(env, nics=2, heal_line="heal = live\n", failover=True):
    """A domain of pool 'fast' (heal_line, hold-down HOLD) "running": its claims active.
    Returns (name, its (mac, vf) pairs sorted)."""
    configure(env, "%sheal_holddown = %d\n" % (heal_line, HOLD), failover=failover)
    name = env.define(nics=nics)
    mark_running(env, name)
    return name, sorted((c["mac"], c["vf"]) for c in env.claims(name))


def mark_running(env, name):
    """The domain's claims active, as its prepare hook leaves them."""
    store = StateStore.for_config(env.cfg)
    with store.transaction() as claims:
        for c in claims.all():
            if c.domain == name:
                claims.put(c._replace(active=True))


class Unplugged(Checked):
    """The seam for a NIC QEMU already unplugged: the definition libvirt has now stands for
    the live XML (the NIC detached from it for real), *defined* for the persistent
    definition that still names the vanished VF."""

    def __init__(self, env, dom, defined, **kw):
        Checked.__init__(self, env, dom, **kw)
        self.defined = defined

    def persistent_xml(self):
        return self.defined


def make_watcher(env, names, fail=(), clock=None, defined=None):
    """A Watcher on the harness libvirtd whose healer sees *names* running (their persistent
    XML) and moves on their definitions; libvirt refuses the steps in *fail*. defined: {name:
    persistent XML} of domains that lost a NIC (see Unplugged)."""
    clock = clock or Clock()
    lines = []
    running = {env.uuid(n): n for n in names}
    defined = defined or {}

    def describe(conn, uuid):
        if uuid not in running:
            return None
        now = env.daemon.dumpxml(running[uuid], inactive=True).encode()
        return running[uuid], now, defined.get(running[uuid], now)

    def devices_for(conn, uuid):
        dom = conn.lookupByUUIDString(uuid)
        if running.get(uuid) in defined:
            return Unplugged(env, dom, defined[running[uuid]], fail=fail)
        return Checked(env, dom, fail=fail)

    log = lines.append
    healer = heal.Healer(env.cfg, log, clock=clock, describe=describe, devices_for=devices_for,
                         timeout=5)
    w = watch.Watcher(env.cfg, lv.URI, log, host_events=False, clock=clock, healer=healer)
    w.conn = env.conn   # connected: no sync (it would find the domains stopped and say so)
    w.lines, w.clock_ = lines, clock
    return w


def pf_netdev(env, vf):
    topo = env.host.topology()
    return topo.pfs[topo.vfs[vf].pf].netdev


def cut(env, w, netdev, up=False):
    """The PF's link goes down (or up) in sysfs; the watcher hears of it, then takes a step."""
    simhost.set_carrier(env.host.sysfs, netdev, up)
    w.dispatch(watch.Work("host", event=LinkEvent("new", netdev, 7, up, "up" if up else "down")))
    w.step(timeout=0)


def after_holddown(w):
    w.clock_.now += HOLD + 1
    w.step(timeout=0)


def state_bytes(env):
    with open(os.path.join(env.host.state_dir, "claims.json"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_live_heal_moves_the_nic_off_the_dead_link_once_and_not_back(healing):
    env = healing
    configure(env, "heal = live\nheal_holddown = %d\n" % HOLD)
    name = env.define(nics=2)
    mark_running(env, name)
    before = {c["mac"]: c for c in env.claims(name)}
    mac = sorted(before)[0]
    dead = before[mac]
    w = make_watcher(env, [name])
    netdev = pf_netdev(env, dead["vf"])

    cut(env, w, netdev)
    assert any("link down under NIC %s" % mac in x and "hold-down 20s, then heal=live" in x
               for x in w.lines), w.lines
    assert {c["mac"]: c["vf"] for c in env.claims(name)} == {m: c["vf"] for m, c in before.items()}

    after_holddown(w)
    assert any(x.startswith("heal: planned: move NIC %s" % mac) for x in w.lines), w.lines
    assert any(x.startswith("heal: done: NIC %s" % mac) for x in w.lines), w.lines
    after = {c["mac"]: c for c in env.claims(name)}
    moved, other = after[mac], after[sorted(before)[1]]
    steps = [x for x in w.lines if x.startswith("heal: step: ")]    # the lab's timeline
    assert steps == ["heal: step: VF %s detached (NIC %s of '%s')" % (dead["vf"], mac, name),
                     "heal: step: VF %s attached (NIC %s of '%s')" % (moved["vf"], mac, name)]
    assert moved["vf"] != dead["vf"] and moved["link"] not in (dead["link"], other["link"])
    assert other == before[sorted(before)[1]]                        # the other NIC stays
    assert nics(env, name)[mac] == (moved["vf"], "transient", ["bridge"])  # MAC, teaming kept
    [event] = moved["heal"]
    assert (event["outcome"], event["from_vf"], event["to_vf"], event["from_link"]) == \
        ("moved", dead["vf"], moved["vf"], dead["link"])
    counts, waiting = w.healer.counts()
    assert counts[("fast", "live", "planned", "")] == 1 and counts[("fast", "live", "done", "")] == 1
    text = vfpick(env.host, "status").stdout.decode()
    assert "self-healing of NIC %s of '%s':" % (mac, name) in text
    assert "moved VF %s (link %s) -> VF %s" % (dead["vf"], dead["link"], moved["vf"]) in text

    # decided once: more ticks change nothing; the link coming back moves nothing back
    n = len(w.lines)
    after_holddown(w)
    cut(env, w, netdev, up=True)
    after_holddown(w)
    assert {c["mac"]: c["vf"] for c in env.claims(name)} == {m: c["vf"] for m, c in after.items()}
    assert not any("heal: planned" in x or "heal: done" in x for x in w.lines[n:]), w.lines[n:]


def test_the_report_default_changes_nothing(healing):
    env = healing
    name, [(mac, vf), _] = running_domain(env, heal_line="")
    assert env.cfg.pools["fast"].heal == "report"                 # the default
    w = make_watcher(env, [name])
    xml, state = env.daemon.dumpxml(name, inactive=True), state_bytes(env)
    cut(env, w, pf_netdev(env, vf))
    after_holddown(w)
    after_holddown(w)
    planned = [x for x in w.lines if x.startswith("heal: planned (heal=report, nothing changed)")]
    assert len(planned) == 1 and mac in planned[0], w.lines
    assert env.daemon.dumpxml(name, inactive=True) == xml
    assert state_bytes(env) == state                              # not even the history
    counts, _ = w.healer.counts()
    assert counts[("fast", "report", "planned", "")] == 1
    assert not any(k[2] == "done" and n for k, n in counts.items())


def test_a_refused_attach_rolls_back_and_is_not_retried(healing):
    env = healing
    name, before = running_domain(env)
    mac, dead_vf = before[0]
    w = make_watcher(env, [name], fail=["attach"])
    cut(env, w, pf_netdev(env, dead_vf))
    after_holddown(w)
    assert any(x.startswith("heal: rolled back: NIC %s" % mac) and "nothing moved" in x
               for x in w.lines), w.lines
    assert sorted((c["mac"], c["vf"]) for c in env.claims(name)) == before
    [event] = next(c for c in env.claims(name) if c["mac"] == mac)["heal"]
    assert event["outcome"] == "rolled_back" and "libvirt refused to attach" in event["why"]
    n = len(w.lines)
    after_holddown(w)
    assert not any("heal: planned" in x for x in w.lines[n:])     # once per death
    counts, _ = w.healer.counts()
    assert counts[("fast", "live", "rolled_back", "move_failed")] == 1


def test_a_plain_single_nic_domain_is_refused_and_nothing_changes(healing):
    env = healing
    name, _ = running_domain(env, nics=1, failover=False)
    [claim] = env.claims(name)
    xml = env.daemon.dumpxml(name, inactive=True)
    w = make_watcher(env, [name])
    cut(env, w, pf_netdev(env, claim["vf"]))
    after_holddown(w)
    after_holddown(w)
    refused = [x for x in w.lines if x.startswith("heal: refused: NIC %s" % claim["mac"])]
    assert len(refused) == 1 and "no other NIC of the domain is up" in refused[0], w.lines
    assert env.daemon.dumpxml(name, inactive=True) == xml
    [after] = env.claims(name)
    assert after["vf"] == claim["vf"] and [e["outcome"] for e in after["heal"]] == ["refused"]


def test_a_flap_within_the_holddown_moves_nothing(healing):
    env = healing
    name, before = running_domain(env)
    w = make_watcher(env, [name])
    netdev = pf_netdev(env, before[0][1])
    cut(env, w, netdev)
    w.clock_.now += HOLD / 2
    cut(env, w, netdev, up=True)
    after_holddown(w)
    assert any("live again before any decision (a flap): nothing moves" in x for x in w.lines)
    assert sorted((c["mac"], c["vf"]) for c in env.claims(name)) == before
    assert not any("heal: planned" in x for x in w.lines)


def test_check_warns_when_live_healing_has_no_spare_link(healing, make_host):
    env = healing
    configure(env, "heal = live\n")
    ok = vfpick(env.host, "check", "--json", check=None)
    assert b"heal = live: a spare distinct link" in ok.stdout
    two = " ".join(env.host.netdevs()[:2])
    env.host.write_config({"fast": "pfs = %s\nheal = live\n" % two})
    env.define(nics=2)
    out = vfpick(env.host, "check", "--json", check=None).stdout
    assert b"heal = live cannot heal" in out and b"add PFs on another link" in out


def test_heal_keys_are_checked(host):
    for line, says in [("heal = sometimes", "heal: 'sometimes' is not one of off, report, live"),
                       ("heal_holddown = -1", "heal_holddown: '-1' is not a number of seconds"),
                       ("heal_moves_per_minute = 0", "heal_moves_per_minute: '0' is not a whole")]:
        with pytest.raises(configmod.ConfigError) as e:
            host.write_config({"fast": "pfs = %s\n%s\n" % (host.netdevs()[0], line)})
        assert says in str(e.value)
    cfg = host.write_config()
    assert (cfg.pools["fast"].heal, cfg.pools["fast"].heal_holddown,
            cfg.pools["fast"].heal_moves_per_minute) == ("report", 30.0, 4)


def test_the_live_move_keeps_the_guest_address(healing):
    env = healing
    name, [(mac, vf), _] = running_domain(env)

    def guest_address():
        root = etree.fromstring(env.daemon.dumpxml(name, inactive=True).encode())
        iface = next(i for i in root.findall("devices/interface[@type='hostdev']")
                     if i.find("mac").get("address") == mac)
        return dict(iface.find("address").attrib)

    address = guest_address()
    w = make_watcher(env, [name])
    cut(env, w, pf_netdev(env, vf))
    after_holddown(w)
    assert any(x.startswith("heal: done") for x in w.lines), w.lines
    assert guest_address() == address
    assert status_json(env.host)["claims"]


def test_a_vanished_vf_the_guest_lost_gets_a_new_vf_attached(healing):
    env = healing
    name, [(mac, vf), (other_mac, other_vf)] = running_domain(env, failover=False)
    dom = env.conn.lookupByName(name)
    original = env.daemon.dumpxml(name, inactive=True).encode()
    root = etree.fromstring(original)
    [iface] = [i for i in root.findall("devices/interface[@type='hostdev']")
               if i.find("mac").get("address") == mac]
    address = dict(iface.find("address").attrib)
    virt.Devices(dom, live=False).detach(etree.tostring(iface).decode())  # QEMU unplugged it
    topo = env.host.topology()
    pf = topo.vfs[vf].pf
    os.unlink(os.path.join(env.host.sysfs, "bus", "pci", "devices", pf,
                           "virtfn%d" % topo.vfs[vf].index))     # sriov_numvfs lowered: VF gone
    w = make_watcher(env, [name], defined={name: original})
    w.dispatch(watch.Work("host", event=HostEvent("pci", "remove", vf, vf)))
    w.step(timeout=0)
    assert any(x.startswith("heal: its VF is gone under NIC %s" % mac) for x in w.lines), w.lines
    after_holddown(w)
    assert any("plain NIC, unplugged from the guest: attach only" in x for x in w.lines), w.lines
    steps = [x for x in w.lines if x.startswith("heal: step: ")]
    after = {c["mac"]: c for c in env.claims(name)}
    new = after[mac]["vf"]
    assert steps == ["heal: step: VF %s attached (NIC %s of '%s')" % (new, mac, name)], w.lines
    assert any(x.startswith("heal: done: NIC %s" % mac) for x in w.lines), w.lines
    assert new != vf and after[mac]["link"] != after[other_mac]["link"]
    assert after[other_mac]["vf"] == other_vf
    assert sorted(c["vf"] for c in env.claims(name)) == sorted([new, other_vf])   # the old one ends
    assert [(e["outcome"], e["why"]) for e in after[mac]["heal"]] == [("moved", "its VF is gone")]
    now = etree.fromstring(env.daemon.dumpxml(name, inactive=True).encode())
    mine = [i for i in now.findall("devices/interface[@type='hostdev']")
            if i.find("mac").get("address") == mac]
    assert len(mine) == 1 and dict(mine[0].find("address").attrib) == address
    assert nics(env, name)[mac][0] == new


def test_a_lost_nic_is_not_attached_twice(healing):
    """replace_lost refuses a NIC the domain still has: that is a move's job."""
    env = healing
    name, [(mac, vf), _] = running_domain(env, failover=False)
    dom = env.conn.lookupByName(name)
    topo = env.host.topology()
    used = {c["link"] for c in env.claims(name)}
    to_vf = next(v for v, r in sorted(topo.vfs.items()) if topo.link_of[r.pf] not in used)
    with pytest.raises(livemove.LiveMoveFailed) as e:
        livemove.replace_lost(env.cfg, Checked(env, dom), name, env.uuid(name), mac, to_vf)
    assert "still has its VF NIC" in str(e.value)
    assert sorted((c["mac"], c["vf"]) for c in env.claims(name))[0] == (mac, vf)
