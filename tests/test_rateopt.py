"""The rate-aware figures (vfpick.plan.rateopt) and the mixed-rate population of bench/quality.py."""

from fractions import Fraction

import pytest

import memtopo
from test_quality import quality  # the study (bench/quality.py), loaded by its path
from vfpick.plan import rateopt, rebalance
from vfpick.config import Pool
from vfpick.records import Claim


def pools_for(topo, nic_rate=1000):
    return {"fast": Pool("fast", tuple(topo.pfs), "link", False, "ignore", "spread", None, None,
                         nic_rate=nic_rate)}


def claims_for(topo, placement):
    """placement: [(link, rate or None), ...] one single-NIC domain each."""
    claims, used = {}, set()
    for n, (link, rate) in enumerate(placement):
        pf = topo.links[link].pfs[0]
        vf = next(v for v in topo.pfs[pf].vfs if v not in used)
        used.add(vf)
        claims[vf] = Claim(vf, pf, link, "fast", "d%d" % n, "u%d" % n, "52:54:00:00:00:%02x" % n,
                           False, rate_mbps=rate)
    return claims


@pytest.mark.parametrize("nic_rate", [1000, 7])
def test_without_rates_it_is_rebalances_exact_optimum_times_the_weight(nic_rate):
    topo = memtopo.build([[{"vfs": 8}, {"vfs": 8, "speed": 10000}]], nodes=(0,))
    claims = claims_for(topo, [("c0p0", None)] * 1 + [("c0p1", None)] * 5)
    pools = pools_for(topo, nic_rate)
    got = rateopt.figures(topo, pools, claims, {})
    base = rebalance.figures(topo, pools, claims, {})
    assert got.exact and got.optimum == base.optimum * nic_rate
    assert got.load == base.load * nic_rate and got.busiest == "c0p1"


def test_mixed_rates_busiest_by_rate_and_the_splittable_bound():
    topo = memtopo.build([[{"vfs": 8}, {"vfs": 8}]], nodes=(0,))
    # 20G + 10G on one 25G link, 5G + 5G on the other: busiest 30/25. Best: 20 | 5+5+10 = 0.8.
    claims = claims_for(topo, [("c0p0", 20000), ("c0p0", 10000), ("c0p1", 5000), ("c0p1", 5000)])
    got = rateopt.figures(topo, pools_for(topo), claims, {})
    assert (got.busiest, got.mbps, got.load) == ("c0p0", 30000, Fraction(30000, 25000))
    assert not got.exact
    assert abs(float(got.optimum) - 0.8) < 1e-6
    assert rebalance.over(got.load, got.optimum) == pytest.approx(0.5, abs=1e-5)


def test_the_bound_never_beats_the_capacity_only_figure():
    topo = memtopo.build([[{"vfs": 8}, {"vfs": 8, "speed": 10000}]], nodes=(0,))
    claims = claims_for(topo, [("c0p0", 20000), ("c0p1", 1000), ("c0p1", 3000)])
    got = rateopt.figures(topo, pools_for(topo), claims, {})
    assert float(got.optimum) >= 24000 / 35000 - 1e-6
    assert got.optimum <= got.load


def test_mixed_rate_study_spread_beats_pack_and_random(tmp_path):
    topo = {preset: t for _, preset, t in quality.load_topologies(str(tmp_path))}["two-dual-port"]
    over = {pol: quality.mixed_rates(topo, pol, 4000) for pol in quality.POLICIES}
    mean = {pol: sum(v) / len(v) for pol, v in over.items()}
    assert all(v for v in over.values())
    assert mean["spread"] < mean["random"] < mean["pack"]
