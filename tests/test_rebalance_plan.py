"""The rebalance planner is pure: topology, pools, claims, busy VFs, movable domains -> moves."""

from fractions import Fraction

import pytest

import memtopo
from vfpick.plan import rebalance
from vfpick.config import Pool
from vfpick.plan.rebalance import Domain
from vfpick.records import Rule
from vfpick.records import Claim

FOUR_LINKS = [[{"vfs": 8}, {"vfs": 8}], [{"vfs": 8}, {"vfs": 8}]]  # 2 cards x 2 ports, 25G, node 0


def pools_for(topo, **named):
    """named: pool -> list of PF addrs (default: one pool 'fast' with every PF)."""
    named = named or {"fast": list(topo.pfs)}
    return {name: Pool(name, tuple(pfs), "link", False, "ignore", "spread", None, None)
            for name, pfs in named.items()}


class Host:
    def __init__(self, cards=FOUR_LINKS, nodes=(0,), **pools):
        self.topo = memtopo.build(cards, nodes=nodes)
        self.pools = pools_for(self.topo, **pools)
        self.claims, self.domains, self.busy = {}, {}, {}

    def pf_of(self, link, part=0):
        return self.topo.links[link].pfs[part]

    def add(self, name, links, movable=True, pool="fast", rule=None, nodes=None):
        """A domain with one NIC on each of *links* (a link twice: two NICs there)."""
        uuid = "uuid-" + name
        for i, link in enumerate(links):
            pf = self.pf_of(link)
            vf = next(v for v in self.topo.pfs[pf].vfs if v not in self.claims and v not in self.busy)
            mac = "52:54:00:%02x:00:%02x" % (len(self.domains), i)
            self.claims[vf] = Claim(vf, pf, link, pool, name, uuid, mac, not movable)
        rules = {pool: rule} if rule else {}
        self.domains[uuid] = Domain(uuid, name, movable, rules, nodes)
        return uuid

    def plan(self, **kw):
        return rebalance.plan(self.topo, self.pools, self.claims, self.busy, self.domains, **kw)

    def after(self, plan):
        """{uuid: [link of each NIC]} once *plan* is applied, checking every move's VF was free."""
        claims = dict(self.claims)
        for m in plan.moves:
            assert claims[m.vf].uuid == m.uuid and m.to_vf not in claims and m.to_vf not in self.busy
            c = claims.pop(m.vf)
            claims[m.to_vf] = c._replace(vf=m.to_vf, pf=m.to_pf, link=m.to_link)
        out = {}
        for c in claims.values():
            out.setdefault(c.uuid, []).append(c.link)
        return out


def per_25g(n):
    return Fraction(n, 25000)


def test_holes_after_departures_are_closed_with_fewest_moves():
    h = Host()
    for i in range(4):
        h.add("d%d" % i, ["c0p0"])
    h.add("wide", ["c0p0", "c0p1", "c1p0", "c1p1"])
    p = h.plan()
    # 8 NICs on 4 links: 2 each at best; c0p0 has 5, so 3 of the 1-NIC domains move.
    assert p.before.load == per_25g(5) and p.optimum == per_25g(2)
    assert len(p.moves) == 3 and p.after.load == per_25g(2)
    assert {m.uuid for m in p.moves} <= {"uuid-d%d" % i for i in range(4)}
    links = h.after(p)
    assert sorted(links["uuid-wide"]) == ["c0p0", "c0p1", "c1p0", "c1p1"]


def test_within_five_percent_nothing_moves():
    h = Host()
    for link in ["c0p0", "c0p1", "c1p0", "c1p1", "c0p0"]:
        h.add("d" + link + str(len(h.domains)), [link])
    p = h.plan()
    # 2 on the busiest link is the optimum for 5 NICs on 4 equal links.
    assert p.before.load == p.optimum and p.moves == () and p.goal is None
    assert "within 5 %" in p.notes[0]


def test_running_domains_never_move_and_the_note_says_what_is_reachable():
    h = Host()
    for i in range(4):
        h.add("run%d" % i, ["c0p0"], movable=False)
    h.add("stopped", ["c0p0"])
    p = h.plan()
    assert p.optimum == per_25g(2) and p.before.load == per_25g(5)
    assert [m.uuid for m in p.moves] == ["uuid-stopped"]
    assert p.after.load == per_25g(4) and p.reachable == per_25g(4)
    assert any("running domains" in n for n in p.notes)


def test_unknown_domains_count_as_running():
    h = Host()
    for i in range(3):
        h.add("d%d" % i, ["c0p0"])
    del h.domains["uuid-d0"]
    p = h.plan()
    assert "uuid-d0" not in {m.uuid for m in p.moves} and len(p.moves) == 2


@pytest.mark.parametrize("strict", [False, True])
def test_distinctness_is_kept(strict):
    # Three 2-NIC domains on c0p0+c0p1; c1p0/c1p1 empty. Each may move one NIC, never onto
    # the link its other NIC uses.
    h = Host()
    rule = Rule("link", strict, "ignore")
    for i in range(3):
        h.add("pair%d" % i, ["c0p0", "c0p1"], rule=rule)
    p = h.plan()
    assert p.moves and p.after.load <= p.optimum * rebalance.SLACK
    for uuid, links in h.after(p).items():
        assert len(set(links)) == len(links), (uuid, links)


def test_a_domain_sharing_a_link_today_may_share_but_never_more():
    h = Host(cards=[[{"vfs": 8}, {"vfs": 8}]])
    h.add("three", ["c0p0", "c0p0", "c0p1"])   # 3 NICs on 2 links: ceil(3/2) = 2 per link
    for i in range(3):
        h.add("one%d" % i, ["c0p0"])
    p = h.plan()
    for uuid, links in h.after(p).items():
        assert max(links.count(l) for l in links) <= (2 if uuid == "uuid-three" else 1)


def test_a_best_effort_domain_never_ends_on_fewer_units():
    # 5 NICs on 4 links as 2+1+1+1 (best effort): may not become 2+2+1+0, even when that
    # would empty the busy link.
    h = Host()
    h.add("five", ["c0p0", "c0p0", "c0p1", "c1p0", "c1p1"])
    for i in range(4):
        h.add("one%d" % i, ["c0p0"])
    p = h.plan()
    links = h.after(p)["uuid-five"]
    assert len(set(links)) == 4 and max(links.count(l) for l in links) <= 2


def test_no_nic_moves_onto_an_avoided_pf():
    h = Host()
    for i in range(4):
        h.add("d%d" % i, ["c0p0"])
    p = h.plan(avoid=frozenset({h.pf_of("c1p1")}))
    assert p.moves and all(m.to_link != "c1p1" for m in p.moves)


def test_distinct_none_may_stack_on_one_link():
    h = Host()
    h.add("flat", ["c0p0", "c0p0", "c0p0", "c0p0"], rule=Rule("none", False, "ignore"))
    p = h.plan()
    assert p.optimum == per_25g(1) and p.after.load == per_25g(1) and len(p.moves) == 3


def test_card_level_distinctness():
    h = Host()
    rule = Rule("card", True, "ignore")
    for i in range(3):
        h.add("pair%d" % i, ["c0p0", "c1p0"], rule=rule)
    p = h.plan()
    assert p.moves
    for links in h.after(p).values():
        assert sorted(l[:2] for l in links) == ["c0", "c1"]


def test_never_across_pools():
    h = Host(fast=["0000:10:00.0", "0000:10:00.1"], slow=["0000:20:00.0", "0000:20:00.1"])
    for i in range(4):
        h.add("s%d" % i, ["c1p0"], pool="slow")
    p = h.plan()
    assert all(m.to_link in ("c1p0", "c1p1") and m.pool == "slow" for m in p.moves)
    assert len(p.moves) == 2


def test_numa_required_stays_on_its_node():
    cards = [[{}, {}], [{"numa": 1}, {"numa": 1}]]
    h = Host(cards=cards, nodes=(0, 1))
    for i in range(4):
        h.add("n%d" % i, ["c0p0"], rule=Rule("link", False, "required"), nodes=frozenset({0}))
    p = h.plan()
    assert p.moves and all(m.to_link == "c0p1" for m in p.moves)


def test_max_moves_caps_the_nics_moved():
    h = Host()
    for i in range(8):
        h.add("d%d" % i, ["c0p0"] if i < 4 else ["c0p1"])
    full = h.plan()
    assert len(full.moves) == 4 and full.after.load == per_25g(2)
    capped = h.plan(max_moves=2)
    assert len(capped.moves) == 2 and capped.after.load == per_25g(3)
    assert h.plan(max_moves=0).moves == ()


def test_mixed_speed_optimum_counts_the_price_of_distinctness():
    # 100G/25G/10G/10G: capacity alone would put everything on the 100G link; four 4-NIC
    # domains with distinct=link must put one NIC each on both 10G links.
    cards = [[{"speed": 100000, "vfs": 8}, {"speed": 25000, "vfs": 8}],
             [{"speed": 10000, "vfs": 8}, {"speed": 10000, "vfs": 8}]]
    h = Host(cards=cards)
    for i in range(4):
        h.add("q%d" % i, ["c0p0", "c0p1", "c1p0", "c1p1"])
    p = h.plan()
    assert p.optimum == Fraction(4, 10000) and p.moves == ()


def test_moves_into_a_full_pf_wait_for_the_vf_another_move_frees():
    # c0p1 full of domains that must go to c1*, and domains on c0p0 that want c0p1.
    cards = [[{"vfs": 2}, {"vfs": 2}], [{"vfs": 2}, {"vfs": 2}]]
    h = Host(cards=cards)
    h.add("a", ["c0p0"])
    h.add("b", ["c0p0"])
    h.add("c", ["c0p1"])
    h.add("d", ["c0p1"])
    p = h.plan()
    assert p.skipped == () and p.after.load == per_25g(1)
    h.after(p)  # asserts each target was free when its move runs, in plan order


def test_foreign_busy_vfs_are_load_and_never_targets():
    h = Host()
    busy_pf = h.pf_of("c1p1")
    for vf in h.topo.pfs[busy_pf].vfs[:2]:
        h.busy[vf] = "someone-else"
    for i in range(4):
        h.add("d%d" % i, ["c0p0"])
    p = h.plan()
    assert all(m.to_vf not in h.busy for m in p.moves)
    assert p.optimum == per_25g(2) and p.after.load == per_25g(2)  # c1p1: the 2 foreign VFs
    assert len(p.moves) == 2 and all(m.to_link in ("c0p1", "c1p0") for m in p.moves)


def test_down_links_are_out_of_the_figures_and_never_targets():
    cards = [[{}, {"up": False}], [{}, {}]]
    h = Host(cards=cards)
    for i in range(3):
        h.add("d%d" % i, ["c0p0"])
    p = h.plan()
    assert all(m.to_link != "c0p1" for m in p.moves)
    assert p.optimum == per_25g(1) and p.after.load == per_25g(1)


def test_moves_of_one_domain_are_contiguous():
    h = Host()
    for i in range(3):
        h.add("pair%d" % i, ["c0p0", "c0p1"])
    p = h.plan()
    order = [m.uuid for m in p.moves]
    assert order == sorted(order, key=order.index)
    seen = []
    for u in order:
        if not seen or seen[-1] != u:
            assert u not in seen
            seen.append(u)


def test_figures_for_the_benchmark():
    h = Host()
    for i in range(4):
        h.add("d%d" % i, ["c0p0"])
    f = rebalance.figures(h.topo, h.pools, h.claims, {})
    assert f.load == per_25g(4) and f.busiest == "c0p0" and f.optimum == per_25g(1)


# Redundancy first: domains that share a unit today (best effort) are repaired where VFs allow.

THREE_LINKS = [[{"vfs": 2}, {"vfs": 2}], [{"vfs": 2}]]
FAST_SLOW = [[{"speed": 100000, "vfs": 8}], [{"speed": 10000, "vfs": 8}]]
ONE_FREE = [[{"vfs": 4}, {"vfs": 1}]]
RUNNING = False


@pytest.mark.parametrize("name, cards, domains, avoid, moves, repaired, unrepaired", [
    ("issue 19: a 3-NIC domain on c1p1, c1p0, c1p1 after churn, free VFs elsewhere",
     FOUR_LINKS, [("web3", ["c1p1", "c1p0", "c1p1"]), ("a", ["c0p0"]), ("b", ["c0p1"])],
     [], 1, ["web3"], []),
    ("issue 19: a 2-NIC domain collided on c0p1 by a drain of c0p0; two VFs freed on c1p0",
     THREE_LINKS, [("pair", ["c0p1", "c0p1"])], ["c0p0"], 1, ["pair"], []),
    ("balanced already (2 per link at best): the repair alone is made",
     FOUR_LINKS, [("pair", ["c0p0", "c0p0"]), ("a", ["c0p1"]), ("b", ["c1p0"]), ("c", ["c1p1"])],
     [], 1, ["pair"], []),
    ("a repair that costs balance is made: the pair needs the 10G link",
     FAST_SLOW, [("pair", ["c0p0", "c0p0"])], [], 1, ["pair"], []),
    ("3 NICs, 2 links: cannot be distinct, named with why, nothing moves",
     [[{"vfs": 8}, {"vfs": 8}]], [("web3", ["c0p0", "c0p0", "c0p1"])], [], 0, [],
     ["web3: 3 NICs, pool fast has 2 links up with free VFs it may use (distinct=link)"]),
    ("a running domain sharing a link is named, never moved",
     FOUR_LINKS, [("live", ["c0p0", "c0p0"], RUNNING)], [], 0, [],
     ["live: 2 NICs, pool fast: running (or unknown to libvirt), not moved"]),
    ("two pairs want the one free VF on c0p1: the first by name gets it",
     ONE_FREE, [("x", ["c0p0", "c0p0"]), ("y", ["c0p0", "c0p0"])], [], 1, ["x"],
     ["y: 2 NICs, pool fast: the free VFs on other links are needed by other domains' NICs "
      "(distinct=link)"]),
    ("a repair never lands on a drained PF: the only other link is drained",
     [[{"vfs": 8}, {"vfs": 8}]], [("pair", ["c0p0", "c0p0"])], ["c0p1"], 0, [],
     ["pair: 2 NICs, pool fast has 1 links up with free VFs it may use (distinct=link)"]),
])
def test_repairs_come_first(name, cards, domains, avoid, moves, repaired, unrepaired):
    h = Host(cards=cards)
    for entry in domains:
        h.add(entry[0], entry[1], movable=entry[2] if len(entry) > 2 else True)
    p = h.plan(avoid=frozenset(h.pf_of(link) for link in avoid))
    assert len(p.moves) == moves, name  # fewest: one per NIC beyond the first on a unit
    assert sorted({m.domain for m in p.moves if m.repair}) == repaired, name
    assert list(p.unrepaired) == unrepaired, name
    after = h.after(p)
    for dom in repaired:
        links = after["uuid-" + dom]
        assert len(set(links)) == len(links), (name, links)
    assert all(m.to_link not in avoid for m in p.moves), name
    if p.optimum is not None and not any(len(e) > 2 for e in domains):
        assert p.after.load <= p.optimum * rebalance.SLACK, name


def test_repairs_and_balancing_in_one_plan_with_fewest_moves():
    # c0p0 holds 5 (pair twice + 3 singles); the pair must split and the link drain to 2.
    h = Host()
    h.add("pair", ["c0p0", "c0p0"])
    for i in range(3):
        h.add("s%d" % i, ["c0p0"])
    p = h.plan()
    assert p.optimum == per_25g(2) and p.after.load == per_25g(2)
    assert [m.domain for m in p.moves if m.repair] == ["pair"]
    assert len(p.moves) == 3  # 5 on c0p0 -> 2: three NICs leave, one of them the pair's
    links = h.after(p)["uuid-pair"]
    assert len(set(links)) == 2


def test_the_optimum_counts_the_domains_made_distinct():
    # 100G + 10G: 4 NICs of one domain sharing the 100G link would weigh 4/100000 there;
    # made distinct (distinct=pf on a 2-PF NPAR 100G port + 10G): the 10G link carries one.
    h = Host(cards=FAST_SLOW)
    h.add("pair", ["c0p0", "c0p0"])
    assert rebalance.figures(h.topo, h.pools, h.claims, {}).optimum == Fraction(1, 10000)


def test_max_moves_below_the_repairs_repairs_what_it_can_and_names_the_rest():
    h = Host()
    h.add("pair", ["c0p0", "c0p0"])
    h.add("pair2", ["c0p1", "c0p1"])
    p = h.plan(max_moves=0)
    assert p.moves == () and len(p.unrepaired) == 2
    p = h.plan(max_moves=1)
    assert [m.domain for m in p.moves] == ["pair"] and p.moves[0].repair
    assert p.unrepaired == ("pair2: --max-moves 1 is too few to repair it too; run rebalance again",)
