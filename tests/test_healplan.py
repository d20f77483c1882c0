"""Self-healing's planner (vfpick/plan/healplan.py): a pure function of the host, the claims and the
clock, driven as tables. Links are named a, b, c, ... (one port per card unless said)."""

from types import MappingProxyType

import pytest

import memtopo
from vfpick import config as configmod
from vfpick.plan import healplan
from vfpick.records import Claim

HOLD = 30.0


def topo(links="abcd", down="", gone=(), cards=None):
    """One card per link (or *cards*: [[link, ...], ...]), 4 VFs a PF; *down* links without
    carrier; *gone*: VF addresses removed (sriov_numvfs lowered)."""
    cards = cards or [[name] for name in links]
    t = memtopo.build([[dict(name=n, up=n not in down) for n in card] for card in cards])
    if gone:
        vfs = {a: v for a, v in t.vfs.items() if a not in gone}
        t = t._replace(vfs=MappingProxyType(vfs))
    return t


def pool(t, heal="live", distinct="link", moves=4, **kw):
    return configmod.Pool(name="fast", pfs=tuple(t.pfs), distinct=distinct, strict=False,
                          numa="preferred", policy="spread", trust=None, spoofchk=None,
                          heal=heal, heal_holddown=HOLD, heal_moves_per_minute=moves, **kw)


def vf_on(t, link, n=0):
    [pf] = t.links[link].pfs
    return t.pfs[pf].vfs[n]


class Host:
    """Domains with NICs on links: dom(name, "a:failover", "b:plain"); the n-th domain on a
    link gets the link's n-th VF."""

    def __init__(self, t):
        self.t, self.claims, self.running, self.used, self.used_names = t, {}, {}, {}, []

    def dom(self, name, *nics, running=True, live_macs=None):
        uuid = "uuid-" + name
        self.used_names.append(name)
        kinds = {}
        for i, spec in enumerate(nics):
            link, kind = spec.split(":")
            n = self.used.get(link, 0)
            self.used[link] = n + 1
            vf = vf_on(self.t, link, n)
            mac = "52:54:00:00:%02x:%02x" % (len(self.used_names), i)
            self.claims[vf] = Claim(vf=vf, pf=self.t.vfs[vf].pf, link=link, pool="fast",
                                    domain=name, uuid=uuid, mac=mac, active=running)
            kinds[mac] = kind
        if running:
            if live_macs is not None:
                kinds = {m: k for m, k in kinds.items() if m in live_macs}
            self.running[uuid] = healplan.Running(uuid=uuid, name=name, kinds=kinds)
        return uuid

    def macs(self, name):
        return sorted(c.mac for c in self.claims.values() if c.domain == name)

    def plan(self, now_topo, pools=None, now=100.0, since=None, drained=frozenset(), recent=None):
        pools = pools or {"fast": pool(self.t)}
        dead = healplan.dead_nics(now_topo, pools, self.claims)
        since = healplan.track(since or {}, dead, 0.0)
        return healplan.plan(now_topo, pools, self.claims, {}, drained, self.running, dead,
                             since, now, recent)


def summary(decisions, t):
    """{(domain, NIC index): ('move', target link) | (action, reason)}."""
    out = {}
    for d in decisions:
        index = int(d.nic.mac.rsplit(":", 1)[1], 16)
        if d.action == "move":
            out[(d.name, index)] = ("move", t.link_of[d.to_pf])
        else:
            out[(d.name, index)] = (d.action, d.reason)
    return out


ANY_SPARE = object()  # a move to a link none of the domain's other NICs uses (checked below)

CASES = [
    # id, links, down, domains {name: nics}, expected {(name, nic): (action, link|reason)}
    ("1-nic failover moves", "abcd", "a", {"w": ["a:failover"]},
     {("w", 0): ("move", ANY_SPARE)}),
    ("1-nic plain is its last NIC", "abcd", "a", {"w": ["a:plain"]},
     {("w", 0): ("refuse", "last_working_nic")}),
    ("2-nic plain: the dead one moves off both links", "abcd", "a", {"w": ["a:plain", "b:plain"]},
     {("w", 0): ("move", ANY_SPARE)}),
    ("2-nic failover", "abcd", "b", {"w": ["a:failover", "b:failover"]},
     {("w", 1): ("move", ANY_SPARE)}),
    ("3-nic plain, a 4th link spare", "abcd", "a", {"w": ["a:plain", "b:plain", "c:plain"]},
     {("w", 0): ("move", "d")}),
    ("3-nic plain, no spare link", "abc", "a", {"w": ["a:plain", "b:plain", "c:plain"]},
     {("w", 0): ("refuse", "no_spare_link")}),
    ("2-nic failover, no spare link", "ab", "a", {"w": ["a:failover", "b:failover"]},
     {("w", 0): ("refuse", "no_spare_link")}),
    ("two links down: a 2-nic plain domain has no working NIC", "abcd", "ab",
     {"w": ["a:plain", "b:plain"]},
     {("w", 0): ("refuse", "last_working_nic"), ("w", 1): ("refuse", "last_working_nic")}),
    ("two links down: 3-nic plain, both dead NICs move to distinct spares", "abcde", "ab",
     {"w": ["a:plain", "b:plain", "c:plain"]},
     {("w", 0): ("move", ANY_SPARE), ("w", 1): ("move", ANY_SPARE)}),
    ("two links down: 2-nic failover moves both", "abcd", "ab", {"w": ["a:failover", "b:failover"]},
     {("w", 0): ("move", ANY_SPARE), ("w", 1): ("move", ANY_SPARE)}),
    ("two links down, one spare: the second NIC is refused", "abc", "ab",
     {"w": ["a:failover", "b:failover"]},
     {("w", 0): ("move", "c"), ("w", 1): ("refuse", "no_spare_link")}),
    ("mixed: failover moves, the plain one beside a dead link does not", "abcd", "ab",
     {"w": ["a:failover", "b:plain"]},
     {("w", 0): ("move", ANY_SPARE), ("w", 1): ("refuse", "last_working_nic")}),
    ("two domains on the dead link both move", "abcd", "a",
     {"v": ["a:failover", "b:failover"], "w": ["a:plain", "c:plain"]},
     {("v", 0): ("move", ANY_SPARE), ("w", 0): ("move", ANY_SPARE)}),
    ("a domain elsewhere is untouched", "abcd", "a", {"w": ["b:plain", "c:plain"]}, {}),
]


@pytest.mark.parametrize("links, down, domains, expect", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_plan_table(links, down, domains, expect):
    host = Host(topo(links))
    for name, nics in domains.items():
        host.dom(name, *nics)
    now_topo = topo(links, down=down)
    decisions = host.plan(now_topo)
    got = summary(decisions, now_topo)
    for key, (action, what) in expect.items():
        if what is ANY_SPARE:
            assert got[key][0] == "move", (key, got)
        else:
            assert got[key] == (action, what), (key, got)
    assert set(got) == set(expect)
    # every move: an up link, no link another NIC of the domain uses or is moved to
    by_domain = {}
    for d in decisions:
        if d.action == "move":
            assert now_topo.links[d.to_link].up and d.to_vf not in host.claims
            by_domain.setdefault(d.nic.uuid, []).append(d.to_link)
    for uuid, targets in by_domain.items():
        stay = {c.link for c in host.claims.values() if c.uuid == uuid
                and (uuid, c.mac) not in {d.nic.key for d in decisions}}
        assert not stay & set(targets) and len(set(targets)) == len(targets), (stay, targets)


def test_distinct_card_goes_to_a_card_none_of_the_other_nics_is_on():
    cards = [["a", "b"], ["c", "d"]]
    host = Host(topo(cards=cards))
    host.dom("w", "a:failover", "c:failover")
    now_topo = topo(cards=cards, down="a")
    pools = {"fast": pool(now_topo, distinct="card")}
    [d] = host.plan(now_topo, pools=pools)
    assert (d.action, d.to_link) == ("move", "b")   # d is on the other NIC's card
    host2 = Host(topo(cards=cards))
    host2.dom("w", "a:failover", "c:failover")
    [d] = host2.plan(topo(cards=cards, down="ab"), pools={"fast": pool(now_topo, distinct="card")})
    assert (d.action, d.reason) == ("refuse", "no_spare_link")


def test_drained_pfs_are_no_target():
    host = Host(topo("abc"))
    host.dom("w", "a:failover", "b:failover")
    now_topo = topo("abc", down="a")
    [pf_c] = now_topo.links["c"].pfs
    [d] = host.plan(now_topo, drained=frozenset([pf_c]))
    assert (d.action, d.reason) == ("refuse", "no_spare_link")


def test_not_running_not_in_the_live_xml_and_heal_off():
    host = Host(topo())
    host.dom("gone", "a:failover", running=True)
    host.running.pop("uuid-gone")                    # libvirt says it is not running
    host.dom("unplugged", "a:failover", "b:plain", live_macs=())
    got = summary(host.plan(topo(down="a")), topo())
    assert got[("gone", 0)] == ("refuse", "not_running")
    assert got[("unplugged", 0)] == ("refuse", "not_in_domain")
    off = {"fast": pool(topo(), heal="off")}
    assert host.plan(topo(down="a"), pools=off) == ()


def test_a_vanished_vf_is_dead_too_and_its_nic_moves():
    host = Host(topo())
    host.dom("w", "a:failover", "b:failover")
    gone = vf_on(host.t, "a")
    dead = healplan.dead_nics(topo(gone=[gone]), {"fast": pool(host.t)}, host.claims)
    assert [n.why for n in dead.values()] == ["vf_gone"]
    [d] = host.plan(topo(gone=[gone]))
    assert d.action == "move" and d.to_link not in ("b",)


def test_stopped_domains_inactive_claims_are_not_dead():
    host = Host(topo())
    host.dom("off", "a:failover", running=False)
    assert healplan.dead_nics(topo(down="a"), {"fast": pool(host.t)}, host.claims) == {}


def test_hold_down_and_a_flapping_link_move_nothing_until_it_stays_down():
    host = Host(topo())
    host.dom("w", "a:failover", "b:failover")
    pools = {"fast": pool(host.t)}
    down, up = topo(down="a"), topo()

    def step(t_now, now_topo, since):
        dead = healplan.dead_nics(now_topo, pools, host.claims)
        since = healplan.track(since, dead, t_now)
        return since, healplan.plan(now_topo, pools, host.claims, {}, frozenset(), host.running,
                                    dead, since, t_now)

    since, [d] = step(0.0, down, {})
    assert (d.action, d.reason, d.until) == ("wait", "holddown", HOLD)
    since, [d] = step(29.0, down, since)
    assert d.action == "wait"
    since, decisions = step(29.5, up, since)          # back within the hold-down: forgotten
    assert decisions == () and since == {}
    since, [d] = step(40.0, down, since)              # down again: the hold-down starts over
    assert d.until == 40.0 + HOLD
    since, [d] = step(69.0, down, since)
    assert d.action == "wait"
    since, [d] = step(70.0, down, since)
    assert d.action == "move"


def test_rate_limit_defers_the_moves_past_the_pools_budget():
    host = Host(topo())
    for name in ("u", "v", "w"):
        host.dom(name, "a:failover")
    pools = {"fast": pool(host.t, moves=2)}
    actions = [d.action for d in host.plan(topo(down="a"), pools=pools)]
    assert sorted(actions) == ["defer", "move", "move"]
    actions = [d.action for d in host.plan(topo(down="a"), pools=pools, recent={"fast": [95.0]})]
    assert sorted(actions) == ["defer", "defer", "move"]
    actions = [d.action for d in host.plan(topo(down="a"), pools=pools, recent={"fast": [30.0]})]
    assert sorted(actions) == ["defer", "move", "move"]   # older than a minute: not counted


def test_two_moves_of_one_plan_never_share_a_vf():
    host = Host(topo("abc"))
    for name in ("u", "v", "w", "x"):
        host.dom(name, "a:failover")
    moves = [d for d in host.plan(topo("abc", down="a"), pools={"fast": pool(host.t, moves=10)})
             if d.action == "move"]
    assert len(moves) == 4 and len({d.to_vf for d in moves}) == 4
    assert {d.to_link for d in moves} == {"b", "c"}      # spread by load


@pytest.mark.parametrize("links, nics, healable", [
    ("a", 1, False), ("ab", 1, True), ("ab", 2, False), ("abc", 2, True), ("abc", 3, False)])
def test_cannot_heal(links, nics, healable):
    host = Host(topo(links))
    host.dom("w", *["%s:failover" % link for link in links[:nics]])
    why = healplan.cannot_heal(host.t, pool(host.t), host.claims)
    assert (why is None) == healable, why


def test_a_nic_the_guest_already_lost_gets_a_vf_attached_even_plain_and_alone():
    host = Host(topo())
    uuid = host.dom("w", "a:plain")
    kinds = dict(host.running[uuid].kinds)
    host.running[uuid] = healplan.Running(uuid=uuid, name="w", kinds={}, lost=kinds)
    [d] = host.plan(topo(gone=[vf_on(host.t, "a")]))
    assert (d.action, d.lost, d.kind) == ("move", True, "plain")   # nothing to take: it is out
    host.running[uuid] = healplan.Running(uuid=uuid, name="w", kinds={})
    [d] = host.plan(topo(gone=[vf_on(host.t, "a")]))
    assert (d.action, d.reason) == ("refuse", "not_in_domain")
