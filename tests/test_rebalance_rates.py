"""The rebalance planner by rate (vfpick.plan.rateplan via vfpick.plan.rebalance): pure, records in memory.

A link's load is the Mb/s of its NICs' weights over its speed, as in the placement; the optimum
by rate is a lower bound (checked against brute force), the moves keep distinct, free VFs and
guarantees."""

import itertools
import random
from fractions import Fraction

import pytest

import memtopo
from vfpick.plan import rebalance
from vfpick.config import Pool
from vfpick.plan.rebalance import Domain
from vfpick.records import Rule
from vfpick.records import Claim

FOUR_25G = [[{"vfs": 16}, {"vfs": 16}], [{"vfs": 16}, {"vfs": 16}]]
LINKS = ["c0p0", "c0p1", "c1p0", "c1p1"]


class Host:
    def __init__(self, cards=FOUR_25G, nic_rate=1000, guarantee=False):
        self.topo = memtopo.build(cards, nodes=(0,))
        self.pools = {"fast": Pool("fast", tuple(self.topo.pfs), "link", False, "ignore",
                                   "spread", None, None, nic_rate=nic_rate, guarantee=guarantee)}
        self.claims, self.domains = {}, {}

    def add(self, name, nics, movable=True, rule=None):
        """nics: [(link, rate or None)] or [(link, rate, floor)], one NIC each."""
        uuid = "uuid-" + name
        for i, nic in enumerate(nics):
            link, rate = nic[0], nic[1]
            floor = nic[2] if len(nic) > 2 else None
            pf = self.topo.links[link].pfs[0]
            vf = next(v for v in self.topo.pfs[pf].vfs if v not in self.claims)
            self.claims[vf] = Claim(vf, pf, link, "fast", name, uuid,
                                    "52:54:00:%02x:00:%02x" % (len(self.domains), i), not movable,
                                    rate_mbps=rate, min_rate_mbps=floor)
        self.domains[uuid] = Domain(uuid, name, movable, {"fast": rule} if rule else {}, None)

    def plan(self, **kw):
        return rebalance.plan(self.topo, self.pools, self.claims, {}, self.domains, **kw)

    def after(self, plan):
        """{vf: Claim} once *plan* is applied, each move's VF free when it runs."""
        claims = dict(self.claims)
        for m in plan.moves:
            assert claims[m.vf].uuid == m.uuid and m.to_vf not in claims
            c = claims.pop(m.vf)
            claims[m.to_vf] = c._replace(vf=m.to_vf, pf=m.to_pf, link=m.to_link)
        return claims


def mbps_per_link(host, claims):
    out = {}
    for c in claims.values():
        out[c.link] = out.get(c.link, 0) + (c.rate_mbps or host.pools["fast"].nic_rate)
    return out


def distinct_ok(claims):
    links = {}
    for c in claims.values():
        links.setdefault(c.uuid, []).append(c.link)
    return all(len(set(l)) == len(l) for l in links.values())


def churned(heavy_with, others):
    """The brief's host after churn: a 20 Gb/s NIC on c0p0 with *heavy_with* 1 Gb/s NICs beside
    it; *others* 1 Gb/s NICs on each other link."""
    h = Host()
    h.add("big", [("c0p0", 20000)])
    for i in range(heavy_with):
        h.add("s%d" % i, [("c0p0", 1000)])
    for link in LINKS[1:]:
        for i in range(others):
            h.add("%s-%d" % (link, i), [(link, None)])
    return h


@pytest.mark.parametrize("name, heavy_with, others, moves", [
    ("5 small NICs beside the 20G one (100 %): only small ones leave, until 84 % of 25G",
     5, 2, 4),
    ("10 small NICs beside it (120 %): nine leave", 10, 2, 9),
    ("the 20G link alone plus one small NIC (84 %): within 5 % of the bound, nothing moves",
     1, 2, 0),
])
def test_a_heavy_nic_stays_and_small_ones_move(name, heavy_with, others, moves):
    h = churned(heavy_with, others)
    p = h.plan()
    assert p.before.by_rate and p.optimum == Fraction(20000, 25000), name  # the 20G NIC alone
    assert len(p.moves) == moves, name
    assert all(m.domain != "big" for m in p.moves), name
    after = mbps_per_link(h, h.after(p))
    assert max(Fraction(v, 25000) for v in after.values()) <= p.optimum * rebalance.SLACK, name
    assert p.after.load == max(Fraction(v, 25000) for v in after.values()), name
    assert p.after.mbps == max(after.values()), name


@pytest.mark.parametrize("rate", [None, 5000])
def test_every_nic_weighing_the_same_plans_as_by_claims(rate):
    # Explicit equal rates rank placements as claims do: the exact count planner answers.
    h = Host()
    for i in range(4):
        h.add("d%d" % i, [("c0p0", rate)])
    h.add("wide", [(l, rate) for l in LINKS])
    p = h.plan()
    assert not p.before.by_rate and p.optimum == Fraction(2, 25000) and len(p.moves) == 3
    assert p.before.mbps == 5 * (rate or 1000)


def test_mixed_rates_never_break_distinct():
    h = Host()
    for i in range(3):
        h.add("pair%d" % i, [("c0p0", 8000), ("c0p1", 1000)], rule=Rule("link", True, "ignore"))
    h.add("one", [("c0p0", 3000)])
    p = h.plan()
    assert p.moves and p.before.by_rate
    claims = h.after(p)
    assert distinct_ok(claims)
    assert p.after.load <= p.optimum * rebalance.SLACK


def test_running_domains_are_fixed_load_and_the_note_says_so():
    h = Host()
    h.add("run", [("c0p0", 20000)], movable=False)
    h.add("run2", [("c0p0", 4000)], movable=False)
    h.add("light", [("c1p0", 1000)])
    p = h.plan()
    assert p.moves == () and p.before.load == Fraction(24000, 25000)
    assert any("only running" in n for n in p.notes)


def test_a_guarantee_is_never_overbooked_by_a_move():
    # guarantee=yes: c0p1 has 20 Gb/s reserved, so the 8 Gb/s NIC may not go there even though
    # by weight (the floors are small) it would be the least loaded link.
    h = Host(cards=[[{"vfs": 8}, {"vfs": 8}, {"vfs": 8}]], guarantee=True)
    h.add("big", [("c0p1", 20000, 20000)], movable=False)
    h.add("a", [("c0p0", 8000)])
    h.add("b", [("c0p0", 8000)])
    h.add("c", [("c0p0", 8000)])
    h.add("fill", [("c0p2", 20000, 20000)], movable=False)
    p = h.plan()
    claims = h.after(p)
    held = {}
    for c in claims.values():
        held[c.link] = held.get(c.link, 0) + (c.min_rate_mbps or c.rate_mbps or 0)
    assert all(v <= 25000 for v in held.values()), held
    assert all(m.to_link != "c0p1" and m.to_link != "c0p2" for m in p.moves)


def test_repairs_come_first_by_rate():
    h = Host()
    h.add("pair", [("c0p0", 10000), ("c0p0", 2000)])
    h.add("x", [("c0p1", 5000)])
    p = h.plan()
    repairs = [m for m in p.moves if m.repair]
    assert [m.domain for m in repairs] == ["pair"] and p.unrepaired == ()
    assert distinct_ok(h.after(p))
    # The heavy NIC stays, the light one leaves the shared link.
    assert h.claims[repairs[0].vf].rate_mbps == 2000


def test_max_moves_caps_the_nics_moved_by_rate():
    h = churned(10, 2)
    for cap in (0, 3):
        p = h.plan(max_moves=cap)
        assert len(p.moves) == cap and all(m.domain != "big" for m in p.moves)
        assert p.after.load == Fraction(30000 - 1000 * cap, 25000)
        assert cap == 0 or p.notes == ["--max-moves %d: this goes as far as %d NIC moves reach"
                                       % (cap, cap)]


def brute_optimum(h):
    """The true lowest busiest Mb/s/speed over every distinct placement (tiny hosts only)."""
    claims = sorted(h.claims.values(), key=lambda c: c.vf)
    best = None
    for links in itertools.product(LINKS, repeat=len(claims)):
        per_dom = {}
        for c, l in zip(claims, links):
            per_dom.setdefault(c.uuid, []).append(l)
        if any(len(set(v)) != len(v) for v in per_dom.values()):
            continue
        load = {}
        for c, l in zip(claims, links):
            load[l] = load.get(l, 0) + (c.rate_mbps or 1000)
        peak = max(Fraction(v, 25000) for v in load.values())
        best = peak if best is None else min(best, peak)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_bound_never_beats_a_real_placement_and_moves_keep_the_rules(seed):
    rng = random.Random(seed)
    h = Host()
    for i in range(rng.randint(2, 4)):
        n = rng.choice([1, 1, 2])
        links = rng.sample(LINKS[:2], n) if rng.random() < 0.7 else [LINKS[0]] * n
        h.add("d%d" % i, [(l, rng.choice([1000, 3000, 12000, 20000])) for l in links],
              movable=rng.random() < 0.8)
    if len(h.claims) > 6:
        pytest.skip("too many NICs to enumerate")
    p = h.plan()
    true = brute_optimum(h)
    per_claim = 1 if p.before.by_rate else Fraction(p.before.mbps, p.before.claims)
    assert p.optimum is not None and p.optimum * per_claim <= true, (seed, p.optimum, true)
    claims = h.after(p)
    fixed = {c.vf: c for c in h.claims.values() if c.active}
    assert all(vf in claims and claims[vf].link == c.link for vf, c in fixed.items())
    assert p.after.load <= p.before.load or any(m.repair for m in p.moves)
    repaired = {m.uuid for m in p.moves if m.repair}
    links = {}
    for c in claims.values():
        links.setdefault(c.uuid, []).append(c.link)
    assert all(len(set(links[u])) == len(links[u]) for u in repaired)


def test_a_domain_swaps_its_own_nics_when_its_other_nic_is_in_the_way():
    # d's 20G NIC shares c0p0 with a running 20G one; the only room is c0p1, where d's own 1G
    # NIC sits (distinct=link): both of d's NICs move, the light one onto c0p0.
    h = Host()
    h.add("d", [("c0p0", 20000), ("c0p1", 1000)])
    h.add("run", [("c0p0", 20000)], movable=False)
    for link in ("c1p0", "c1p1"):
        h.add("run-" + link, [(link, 20000)], movable=False)
    p = h.plan()
    assert p.before.load == Fraction(40000, 25000) and len(p.moves) == 2
    claims = h.after(p)
    assert distinct_ok(claims)
    assert mbps_per_link(h, claims) == {"c0p0": 21000, "c0p1": 20000, "c1p0": 20000,
                                        "c1p1": 20000}
    assert p.after.load == Fraction(21000, 25000) and p.skipped == ()


def test_the_command_says_by_rate_and_bound():
    from vfpick.commands import rebalance as rebalancecmd
    p = churned(5, 2).plan()
    assert rebalancecmd.figure_line("before", p.before) == (
        "before: busiest link by rate c0p0, 6 claims, 25000 Mb/s on 25 Gb/s (100.0 % of its "
        "speed), +25.0 % over the optimum's bound")
    assert rebalancecmd.optimum_line(p).startswith(
        "optimum (lower bound by rate): 80.0 % of the busiest link's speed")
    assert rebalancecmd.figure_line("after (planned)", p.after).endswith(
        "21000 Mb/s on 25 Gb/s (84.0 % of its speed), +5.0 % over the optimum's bound")


@pytest.mark.parametrize("seed", range(20))
def test_random_churn_keeps_every_rule(seed):
    """Larger hosts than brute force can check: every move keeps distinct, free VFs, running
    domains and --max-moves; the busiest link never gets busier (no repairs are due here)."""
    rng = random.Random(1000 + seed)
    h = Host(cards=[[{"vfs": 6}, {"vfs": 6}], [{"vfs": 6, "speed": 10000}, {"vfs": 6}]])
    for i in range(rng.randint(4, 12)):
        n = rng.choice([1, 1, 2, 3])
        links = rng.sample(LINKS, n)
        if any(sum(1 for c in h.claims.values() if c.link == l) >= 6 for l in links):
            continue  # that PF is full
        h.add("d%02d" % i, [(l, rng.choice([None, 500, 2000, 8000, 15000])) for l in links],
              movable=rng.random() < 0.75, rule=Rule("link", True, "ignore"))
    cap = rng.choice([None, 1, 3])
    p = h.plan(max_moves=cap)
    claims = h.after(p)
    assert distinct_ok(claims), seed
    assert cap is None or len(p.moves) <= cap
    assert all(h.domains[m.uuid].movable for m in p.moves)
    per_pf = {}
    for c in claims.values():
        per_pf[c.pf] = per_pf.get(c.pf, 0) + 1
    assert all(n <= 6 for n in per_pf.values())
    assert p.after.load <= p.before.load, seed
    assert p.optimum is not None and p.optimum <= p.after.load, seed  # a bound: never beaten
