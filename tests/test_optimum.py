"""vfpick.plan.optimum: hand-checked optima, and brute force on small random hosts."""

import itertools
import random
from fractions import Fraction

import pytest

from vfpick.plan.optimum import Demand, Host, feasible, max_load, min_max_load, min_moves


def host(links, pfs):
    """links: {link: speed}; pfs: {pf: (link, VFs)}."""
    return Host(pf_link={pf: link for pf, (link, _) in pfs.items()},
                pf_vfs={pf: vfs for pf, (_, vfs) in pfs.items()}, speed=dict(links))


def by_link(h, key, nics, share=1, current=None, pfs=None):
    """A distinct=link demand on every PF of *h* (or *pfs*), at most *share* NICs per link."""
    units = {pf: h.pf_link[pf] for pf in (pfs or h.pf_link)}
    return Demand(key, nics, {u: share for u in units.values()}, units, current or {})


TWO_EQUAL = host({"a": 10, "b": 10}, {"pa": ("a", 8), "pb": ("b", 8)})
MIXED = host({"fast": 100, "slow": 10}, {"pf": ("fast", 4), "ps": ("slow", 4)})
NPAR = host({"a": 10, "c": 100}, {"pa1": ("a", 1), "pa2": ("a", 1), "pc": ("c", 1)})


@pytest.mark.parametrize("name, h, demands, fixed, expected", [
    ("one 2-NIC domain, two equal links: one NIC each",
     TWO_EQUAL, [by_link(TWO_EQUAL, "d", 2)], None, Fraction(1, 10)),
    ("capacity alone would put 4 NICs on the 100G link; distinctness puts 2 on the 10G",
     MIXED, [by_link(MIXED, "d1", 2), by_link(MIXED, "d2", 2)], None, Fraction(2, 10)),
    ("the same NICs as 1-NIC domains all fit on the 100G link",
     MIXED, [by_link(MIXED, "d%d" % i, 1) for i in range(4)], None, Fraction(4, 100)),
    ("3 NICs on 2 links, share 2: 2 + 1",
     TWO_EQUAL, [by_link(TWO_EQUAL, "d", 3, share=2)], None, Fraction(2, 10)),
    ("distinct=pf: both NPAR partitions of one port would load it twice",
     NPAR, [Demand("d", 2, {}, {"pa1": "pa1", "pa2": "pa2", "pc": "pc"}, {})], None, Fraction(1, 10)),
    ("fixed load counts",
     TWO_EQUAL, [by_link(TWO_EQUAL, "d", 1)], {"pa": 3}, Fraction(3, 10)),
    ("fixed load takes VFs: 8 fixed on a, so the domain's 2 NICs cannot be apart",
     TWO_EQUAL, [by_link(TWO_EQUAL, "d", 2)], {"pa": 8}, None),
    ("two NICs, one link, share 1: no placement",
     TWO_EQUAL, [by_link(TWO_EQUAL, "d", 2, pfs=["pa"])], None, None),
    ("nothing to place", TWO_EQUAL, [], None, Fraction(0)),
])
def test_min_max_load_hand_checked(name, h, demands, fixed, expected):
    assert min_max_load(demands, h, fixed) == expected, name


@pytest.mark.parametrize("name, h, demands, threshold, moved, loads_at_most", [
    ("two 1-NIC domains on a, b empty: one moves",
     TWO_EQUAL, [by_link(TWO_EQUAL, "x", 1, current={"pa": 1}),
                 by_link(TWO_EQUAL, "y", 1, current={"pa": 1})], Fraction(1, 10), 1, Fraction(1, 10)),
    ("already under the threshold: nothing moves",
     TWO_EQUAL, [by_link(TWO_EQUAL, "x", 1, current={"pa": 1}),
                 by_link(TWO_EQUAL, "y", 1, current={"pb": 1})], Fraction(1, 10), 0, Fraction(1, 10)),
    ("a full link: 3 of 5 NICs leave a for b",
     TWO_EQUAL, [by_link(TWO_EQUAL, "d%d" % i, 1, current={"pa": 1}) for i in range(5)],
     Fraction(3, 10), 2, Fraction(3, 10)),
    ("a 2-NIC domain cannot double up on b: the 1-NIC domain moves",
     TWO_EQUAL, [by_link(TWO_EQUAL, "x", 2, current={"pa": 1, "pb": 1}),
                 by_link(TWO_EQUAL, "y", 1, current={"pa": 1}),
                 by_link(TWO_EQUAL, "z", 1, current={"pa": 1})], Fraction(2, 10), 1, Fraction(2, 10)),
    ("a domain sharing a link today keeps sharing where its share allows it",
     TWO_EQUAL, [by_link(TWO_EQUAL, "x", 2, share=2, current={"pa": 2})], Fraction(2, 10), 0,
     Fraction(2, 10)),
    ("a domain sharing a link today with share 1 is repaired: one NIC moves",
     TWO_EQUAL, [by_link(TWO_EQUAL, "x", 2, current={"pa": 2})], Fraction(2, 10), 1, Fraction(1, 10)),
    ("a repair beside another domain: the pair's second NIC goes to b",
     TWO_EQUAL, [by_link(TWO_EQUAL, "x", 2, current={"pa": 2}),
                 by_link(TWO_EQUAL, "y", 1, current={"pb": 1})], Fraction(2, 10), 1, Fraction(2, 10)),
    ("a repair that needs a swap: b is full (1 VF) with a 1-NIC domain, which moves to a",
     host({"a": 10, "b": 10}, {"pa": ("a", 3), "pb": ("b", 1)}),
     [Demand("x", 2, {}, {"pa": "a", "pb": "b"}, {"pa": 2}),
      Demand("y", 1, {}, {"pa": "a", "pb": "b"}, {"pb": 1})], Fraction(2, 10), 2, Fraction(2, 10)),
])
def test_min_moves_hand_checked(name, h, demands, threshold, moved, loads_at_most):
    got = min_moves(demands, h, threshold)
    assert got is not None, name
    assert got[0] == moved, name
    counts = {}
    for d in demands:
        placed = got[1][d.key]
        assert sum(placed.values()) == d.nics
        per_unit = {}
        for pf, n in placed.items():
            per_unit[d.units[pf]] = per_unit.get(d.units[pf], 0) + n
            counts[pf] = counts.get(pf, 0) + n
        for unit, n in per_unit.items():
            assert n <= d.share.get(unit, 1), name
    assert max_load(h, counts) <= loads_at_most


def test_min_moves_refuses_an_unreachable_threshold():
    demands = [by_link(TWO_EQUAL, "x", 2, current={"pa": 1, "pb": 1})]
    assert min_moves(demands, TWO_EQUAL, Fraction(0)) is None


# Brute force on small random hosts: every placement of every demand enumerated.

def _placements(d):
    """Every {pf: n} a demand may take (respecting share per unit)."""
    pfs = sorted(d.units)
    out = []
    for combo in itertools.combinations_with_replacement(pfs, d.nics):
        counts = {}
        for pf in combo:
            counts[pf] = counts.get(pf, 0) + 1
        per_unit = {}
        for pf, n in counts.items():
            per_unit[d.units[pf]] = per_unit.get(d.units[pf], 0) + n
        if all(n <= d.share.get(u, 1) for u, n in per_unit.items()):
            out.append(counts)
    return out


def _brute(demands, h, fixed):
    best, everything = None, []
    for combo in itertools.product(*[_placements(d) for d in demands]):
        counts = dict(fixed)
        for placed in combo:
            for pf, n in placed.items():
                counts[pf] = counts.get(pf, 0) + n
        if any(counts.get(pf, 0) > h.pf_vfs[pf] for pf in h.pf_link):
            continue
        load = max_load(h, counts)
        everything.append((load, combo))
        best = load if best is None else min(best, load)
    return best, everything


def _random_case(rnd):
    links = {"l%d" % i: rnd.choice([10, 25, 40, 100]) for i in range(rnd.randint(1, 3))}
    pfs = {}
    for i in range(rnd.randint(len(links), 4)):
        pfs["p%d" % i] = (list(links)[i % len(links)], rnd.randint(1, 3))
    h = host(links, pfs)
    demands = []
    for k in range(rnd.randint(1, 3)):
        level = rnd.choice(["link", "pf", "none"])
        allowed = rnd.sample(sorted(pfs), rnd.randint(1, len(pfs)))
        units = {pf: (h.pf_link[pf] if level == "link" else pf if level == "pf" else "all")
                 for pf in allowed}
        nics = rnd.randint(1, 3)
        share = {u: nics if level == "none" else rnd.randint(1, 2) for u in units.values()}
        demands.append(Demand("d%d" % k, nics, share, units, {}))
    fixed = {pf: rnd.randint(0, 1) for pf in pfs if rnd.random() < 0.3}
    return h, demands, {pf: n for pf, n in fixed.items() if n <= h.pf_vfs[pf]}


@pytest.mark.parametrize("seed", range(60))
def test_min_max_load_equals_brute_force(seed):
    h, demands, fixed = _random_case(random.Random(seed))
    best, everything = _brute(demands, h, fixed)
    got = min_max_load(demands, h, fixed)
    if best is None:
        assert got is None
        return
    # The brute force's load includes fixed NICs on their links; so does min_max_load.
    assert got == best
    assert feasible(demands, h, best, fixed)

    # min_moves from a random valid placement, at a random reachable threshold.
    rnd = random.Random(seed + 1000)
    _, start = rnd.choice(everything)
    moved_from = [d._replace(current=placed) for d, placed in zip(demands, start)]
    threshold = rnd.choice(sorted({load for load, _ in everything}))
    fewest = min(sum(sum(max(0, placed.get(pf, 0) - d.current.get(pf, 0)) for pf in placed)
                     for d, placed in zip(moved_from, combo))
                 for load, combo in everything if load <= threshold)
    got_moves = min_moves(moved_from, h, threshold, fixed)
    assert got_moves is not None and got_moves[0] == fewest


@pytest.mark.parametrize("seed", range(40))
def test_min_moves_repairs_with_the_fewest_moves(seed):
    """From a placement that breaks the shares (best-effort picks made while the host was
    tight), min_moves reaches a valid one with the fewest moves, as brute force says."""
    rnd = random.Random(seed + 5000)
    h, demands, fixed = _random_case(rnd)
    best, everything = _brute(demands, h, fixed)
    if best is None:
        return
    start, counts = [], dict(fixed)
    for d in demands:
        placed = {}
        for _ in range(d.nics):
            room = [pf for pf in sorted(d.units) if counts.get(pf, 0) < h.pf_vfs[pf]]
            if not room:
                return  # this random start does not fit: nothing to check
            pf = rnd.choice(room)
            placed[pf] = placed.get(pf, 0) + 1
            counts[pf] = counts.get(pf, 0) + 1
        start.append(placed)
    moved_from = [d._replace(current=placed) for d, placed in zip(demands, start)]
    threshold = max(load for load, _ in everything)
    fewest = min(sum(sum(max(0, placed.get(pf, 0) - d.current.get(pf, 0)) for pf in placed)
                     for d, placed in zip(moved_from, combo))
                 for load, combo in everything if load <= threshold)
    got = min_moves(moved_from, h, threshold, fixed)
    assert got is not None and got[0] == fewest
    for d in moved_from:
        per_unit = {}
        for pf, n in got[1].get(d.key, {}).items():
            per_unit[d.units[pf]] = per_unit.get(d.units[pf], 0) + n
        assert all(n <= d.share.get(u, 1) for u, n in per_unit.items())
