"""PURE: the busiest link by rate, and the rate-aware optimum it is measured against.

A link's load is the sum of its NICs' rates over its speed (vfpick.plan.policy: a NIC without a rate
weighs its pool's ``nic_rate``). The optimum is the lowest busiest load over every placement of
the same domains that keeps each one's NICs on distinct units, as in vfpick.plan.rebalance, with
rates for weights:

- Every NIC weighs the same (no rates at all, the common case): the weights are claims times
  one constant, so the optimum is vfpick.plan.rebalance's exact one (binary search with a max-flow)
  times that weight. ``exact`` is True.
- Mixed rates (or a guarantee=yes pool reserving room): placing NICs of different weights
  under a load bound is bin packing (NP-hard), so the figure is vfpick.plan.rateplan's lower bound,
  the one ``vfpick rebalance`` reports: the splittable max-flow (each demand sending its Mb/s)
  and never below the heaviest NIC over the fastest link it may use. No placement does better;
  it may be unreachable by a little (a NIC cannot be split). ``exact`` is False.

Nothing in vfpick imports it: it serves bench/quality.py's mixed-rate population (and
tests/test_rateopt.py) only, kept beside the planners it measures. ``vfpick rebalance`` plans by the same
weights (vfpick.plan.rateplan; docs/operator-guide.md, "Rebalancing", "By rate").
"""

from collections import namedtuple
from fractions import Fraction

from vfpick import config as configmod
from vfpick.plan import policy, rebalance

RateFigures = namedtuple("RateFigures", "load busiest mbps speed optimum exact")
RateFigures.__doc__ = """load: the busiest up link's Mb/s over its speed (Fraction; 0 when
nothing is placed); busiest: that link (None), its Mb/s and speed; optimum: the rate-aware
optimum (Fraction) or None when no placement keeps the domains apart; exact: see the module."""

def _weights(pools, claims, busy, topology):
    """{vf: Mb/s} of every claim and unclaimed busy VF of the pools' PFs."""
    pool_of_pf = configmod.pool_of_pf(pools)
    out = {}
    for vf, claim in claims.items():
        pool = pools.get(claim.pool)
        out[vf] = policy.weight(claim.rate_mbps, pool.nic_rate if pool else 1000)
    for vf in busy:
        record = topology.vfs.get(vf)
        if vf not in out and record is not None and record.pf in pool_of_pf:
            out[vf] = pool_of_pf[record.pf].nic_rate
    return out


def figures(topology, pools, claims, busy, domains=None, avoid=frozenset()):
    """RateFigures of the current placement. Same inputs as rebalance.figures."""
    weights = _weights(pools, claims, busy, topology)
    host = rebalance.host_for(topology, pools)
    per_link = {}
    for vf, w in weights.items():
        record = topology.vfs.get(vf)
        if record is not None and record.pf in host.pf_link:
            link = host.pf_link[record.pf]
            per_link[link] = per_link.get(link, 0) + w
    busiest = max(per_link, key=lambda l: (Fraction(per_link[l], host.speed[l]), l), default=None)
    load = Fraction(per_link[busiest], host.speed[busiest]) if busiest else Fraction(0)
    whole = rebalance.figures(topology, pools, claims, busy, domains, avoid)
    if whole.by_rate:
        # Mixed weights: rebalance plans by rate, its optimum is vfpick.plan.rateplan's lower bound.
        return RateFigures(load, busiest, per_link.get(busiest, 0), host.speed.get(busiest),
                           whole.optimum, False)
    w = Fraction(whole.mbps, whole.claims) if whole.claims else 1
    best = None if whole.optimum is None else whole.optimum * w
    return RateFigures(load, busiest, per_link.get(busiest, 0), host.speed.get(busiest), best, True)
