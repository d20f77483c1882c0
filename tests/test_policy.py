"""The policy is pure: every test here builds records in memory and does no I/O."""

import itertools

import pytest

import memtopo
from vfpick.plan import policy
from vfpick.errors import DistinctImpossible, PoolExhausted
from vfpick.records import Claim, Nic, Request

_uuid = itertools.count()


def request(n, uuid=None, distinct="link", strict=False, numa="preferred", pol="spread",
            nodes=None, keep=(), held=()):
    nics = tuple(Nic("52:54:00:00:00:%02x" % i, keep[i] if i < len(keep) else None) for i in range(n))
    return Request(uuid or "u%d" % next(_uuid), "fast", nics, distinct, strict, numa, pol,
                   frozenset(nodes) if nodes is not None else None, tuple(held))


def all_pfs(topo):
    return tuple(topo.pfs)


def claim_all(claims, picks, uuid):
    for p in picks:
        claims[p.vf] = Claim(p.vf, p.pf, p.link, "fast", "dom-" + uuid, uuid, p.mac, False)


def place(topo, req, claims=None, busy=None, pfs=None):
    claims = {} if claims is None else claims
    picks = policy.pick(topo, pfs or all_pfs(topo), claims, busy or {}, req)
    claim_all(claims, picks, req.uuid)
    return picks


TWO_DUAL = [[{}, {}], [{"numa": 1}, {"numa": 1}]]


@pytest.mark.parametrize("n,distinct,expect_units", [
    (2, "link", 2), (4, "link", 4), (2, "card", 2), (3, "card", 2), (4, "pf", 4), (4, "none", 4),
])
def test_multi_nic_domain_lands_on_distinct_units(n, distinct, expect_units):
    topo = memtopo.build(TWO_DUAL)
    picks = place(topo, request(n, distinct=distinct))
    level = "card" if distinct == "card" else "link"
    assert len({policy.unit_of(topo, level, p.pf) for p in picks}) == expect_units


def test_npar_partitions_count_as_one_link():
    topo = memtopo.build([[{"parts": 2}, {"parts": 2}]], nodes=(0,))
    picks = place(topo, request(2))
    assert len({p.link for p in picks}) == 2
    with pytest.raises(DistinctImpossible):
        place(topo, request(3, strict=True))


def test_strict_refusal_picks_nothing():
    topo = memtopo.build([[{}, {}]])
    claims = {}
    with pytest.raises(DistinctImpossible, match="strict=yes"):
        place(topo, request(3, strict=True), claims)
    assert claims == {}


def test_best_effort_spreads_extra_nics_evenly():
    topo = memtopo.build([[{"vfs": 8}, {"vfs": 8}]])
    picks = place(topo, request(4))
    assert sorted(p.link for p in picks) == ["c0p0", "c0p0", "c0p1", "c0p1"]


@pytest.mark.parametrize("links,domains", [(4, 40), (3, 30), (2, 17)])
def test_single_nic_domains_spread_evenly_over_equal_links(links, domains):
    topo = memtopo.build([[{"vfs": 16}] * links], nodes=(0,))
    claims = {}
    for _ in range(domains):
        place(topo, request(1), claims)
    per_link = {}
    for c in claims.values():
        per_link[c.link] = per_link.get(c.link, 0) + 1
    assert len(per_link) == links
    assert max(per_link.values()) - min(per_link.values()) <= 1


@pytest.mark.parametrize("speeds,domains", [((100000, 25000), 50), ((10000, 25000, 40000), 60),
                                            ((25000, 10000), 21)])
def test_load_is_proportional_to_speed(speeds, domains):
    topo = memtopo.build([[{"vfs": 64, "speed": s} for s in speeds]], nodes=(0,))
    claims = {}
    for _ in range(domains):
        place(topo, request(1), claims)
    total = sum(speeds)
    for i, s in enumerate(speeds):
        got = sum(1 for c in claims.values() if c.link == "c0p%d" % i)
        assert abs(got - domains * s / total) <= 1, (i, got)


def test_unknown_speed_counts_as_slowest_known():
    topo = memtopo.build([[{"vfs": 32, "speed": 10000}, {"vfs": 32, "speed": 40000}]], nodes=(0,))
    # Forge an unknown speed on an up link by rebuilding the Link record.
    links = dict(topo.links)
    links["c0p1"] = links["c0p1"]._replace(speed=None)
    topo = topo._replace(links=links)
    claims = {}
    for _ in range(20):
        place(topo, request(1), claims)
    assert sum(1 for c in claims.values() if c.link == "c0p1") == 10


def test_down_link_used_only_when_no_up_link_has_room():
    topo = memtopo.build([[{"vfs": 2}, {"vfs": 2, "up": False}]], nodes=(0,))
    claims = {}
    first = [place(topo, request(1), claims)[0].link for _ in range(2)]
    assert first == ["c0p0", "c0p0"]
    assert place(topo, request(1), claims)[0].link == "c0p1"


def test_up_link_beats_distinct():
    topo = memtopo.build([[{"vfs": 4}, {"vfs": 4, "up": False}]], nodes=(0,))
    assert {p.link for p in place(topo, request(2))} == {"c0p0"}


@pytest.mark.parametrize("nodes", [{0}, {1}])
def test_numa_required_never_leaves_the_domains_nodes(nodes):
    topo = memtopo.build(TWO_DUAL)
    claims = {}
    node_vfs = sum(1 for v in topo.vfs.values() if v.numa_node in nodes)
    for _ in range(node_vfs):
        p = place(topo, request(1, numa="required", nodes=nodes), claims)[0]
        assert topo.vfs[p.vf].numa_node in nodes
    before = dict(claims)
    with pytest.raises(PoolExhausted, match="numa=required"):
        place(topo, request(1, numa="required", nodes=nodes), claims)
    assert claims == before


def test_numa_preferred_goes_local_first_then_remote():
    topo = memtopo.build([[{"vfs": 1}], [{"vfs": 4, "numa": 1}]])
    picks = place(topo, request(2, numa="preferred", nodes={0}))
    assert [topo.vfs[p.vf].numa_node for p in picks] == [0, 1]


@pytest.mark.parametrize("host_nodes,allowed", [((0,), True), ((0, 1), False)])
def test_unknown_numa_node_is_local_only_on_one_node_hosts(host_nodes, allowed):
    topo = memtopo.build([[{"vfs": 2, "numa": -1}]], nodes=host_nodes)
    if allowed:
        assert place(topo, request(1, numa="required", nodes={0}))
    else:
        with pytest.raises(PoolExhausted):
            place(topo, request(1, numa="required", nodes={0}))


def test_numa_required_without_placement_is_unconstrained():
    topo = memtopo.build([[{"vfs": 2, "numa": 1}]])
    assert place(topo, request(1, numa="required", nodes=None))


def test_pack_fills_first_pf_in_list_order():
    topo = memtopo.build(TWO_DUAL)
    order = ("0000:20:00.1", "0000:10:00.0")  # list order, not address order
    claims = {}
    picks = [place(topo, request(1, pol="pack"), claims, pfs=order)[0] for _ in range(5)]
    assert [p.pf for p in picks] == ["0000:20:00.1"] * 4 + ["0000:10:00.0"]
    assert picks[0].vf == topo.pfs["0000:20:00.1"].vfs[0]


def test_exhausted_pool_is_all_or_nothing():
    topo = memtopo.build([[{"vfs": 1}, {"vfs": 1}]], nodes=(0,))
    claims = {}
    place(topo, request(1), claims)
    before = dict(claims)
    with pytest.raises(PoolExhausted, match="exhausted"):
        place(topo, request(2), claims)
    assert claims == before


def test_claimed_and_busy_vfs_are_never_picked():
    topo = memtopo.build([[{"vfs": 3}]], nodes=(0,))
    vfs = list(topo.vfs)
    claims = {vfs[0]: Claim(vfs[0], "", "c0p0", "fast", "other", "other", "m", True)}
    busy = {vfs[1]: "running-uuid"}
    assert place(topo, request(1), claims, busy)[0].vf == vfs[2]
    with pytest.raises(PoolExhausted):
        place(topo, request(1), claims, busy)


def test_kept_vfs_stay_and_new_ones_avoid_their_links():
    topo = memtopo.build(TWO_DUAL)
    claims = {}
    first = place(topo, request(2, uuid="dom"), claims)
    again = policy.pick(topo, all_pfs(topo), claims, {},
                        request(3, uuid="dom", keep=[first[0].vf, first[1].vf]))
    assert [p.vf for p in again[:2]] == [first[0].vf, first[1].vf]
    assert again[2].link not in {first[0].link, first[1].link}


def test_kept_vf_held_by_another_domain_is_repicked():
    topo = memtopo.build(TWO_DUAL)
    claims = {}
    other = place(topo, request(1, uuid="other"), claims)[0]
    mine = policy.pick(topo, all_pfs(topo), claims, {}, request(1, uuid="dom", keep=[other.vf]))
    assert mine[0].vf != other.vf


def test_held_vfs_from_other_pools_count_for_distinctness():
    topo = memtopo.build([[{}, {}]], nodes=(0,))
    held = [topo.pfs["0000:10:00.0"].vfs[0]]
    picks = policy.pick(topo, all_pfs(topo), {}, {}, request(1, held=held))
    assert picks[0].link == "c0p1"


def test_deterministic():
    topo = memtopo.build(TWO_DUAL)
    runs = []
    for _ in range(3):
        claims = {}
        runs.append([tuple(p.vf for p in place(topo, request(n, uuid="d%d" % i), claims))
                     for i, n in enumerate([1, 2, 4, 1, 3])])
    assert runs[0] == runs[1] == runs[2]
