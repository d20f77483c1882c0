"""PURE: the busiest link by rate, and the rate-aware optimum it is measured against.

A link's load is the sum of its NICs' rates over its speed (vfpick.policy: a NIC without a rate
weighs its pool's ``nic_rate``). The optimum is the lowest busiest load over every placement of
the same domains that keeps each one's NICs on distinct units, as in vfpick.rebalance, with
rates for weights:

- Every NIC weighs the same (no rates at all, the common case): the weights are claims times
  one constant, so the optimum is vfpick.rebalance's exact one (binary search with a max-flow)
  times that weight. ``exact`` is True.
- Mixed rates: placing NICs of different weights under a load bound is bin packing (NP-hard),
  so the figure is the *splittable* bound: the same network with each demand sending its Mb/s,
  a unit taking at most its share times the demand's largest NIC, a PF at most its VFs times the
  largest NIC, a link at most T x speed; bisection on T. No placement does better; it may be
  unreachable by a little (a NIC cannot be split). ``exact`` is False.

Used by bench/quality.py's mixed-rate population. ``vfpick rebalance`` itself still plans by
claims (see README, "Bandwidth and PCIe affinity").
"""

from collections import namedtuple
from fractions import Fraction

from vfpick import optimum, policy, rebalance

RateFigures = namedtuple("RateFigures", "load busiest mbps speed optimum exact")
RateFigures.__doc__ = """load: the busiest up link's Mb/s over its speed (Fraction; 0 when
nothing is placed); busiest: that link (None), its Mb/s and speed; optimum: the rate-aware
optimum (Fraction) or None when no placement keeps the domains apart; exact: see the module."""

_BISECT = 40


def _weights(pools, claims, busy, topology):
    """{vf: Mb/s} of every claim and unclaimed busy VF of the pools' PFs."""
    pool_of_pf = rebalance._pool_of_pf(pools)
    out = {}
    for vf, claim in claims.items():
        pool = pools.get(claim.pool)
        out[vf] = policy.weight(claim.rate_mbps, pool.nic_rate if pool else 1000)
    for vf in busy:
        record = topology.vfs.get(vf)
        if vf not in out and record is not None and record.pf in pool_of_pf:
            out[vf] = pools[pool_of_pf[record.pf]].nic_rate
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
    distinct_weights = set(weights.values())
    if len(distinct_weights) <= 1:
        base = rebalance.figures(topology, pools, claims, busy, domains, avoid).optimum
        w = distinct_weights.pop() if distinct_weights else 1
        best = None if base is None else base * w
        return RateFigures(load, busiest, per_link.get(busiest, 0),
                           host.speed.get(busiest), best, True)
    population = rebalance._Population(topology, pools, claims, busy, domains or {}, avoid)
    best = _splittable(population, weights, set(claims), load)
    return RateFigures(load, busiest, per_link[busiest], host.speed[busiest], best, False)


def _splittable(population, weights, claimed, upper):
    host = population.host
    demand_w = {key: [weights.get(c.vf, 0) for c in held]
                for key, held in population.claims_of.items()}
    fixed = {}  # Mb/s of the unclaimed busy VFs: they stay where they are
    for vf, w in weights.items():
        record = population.topology.vfs.get(vf)
        if vf not in claimed and record is not None and record.pf in host.pf_link:
            link = host.pf_link[record.pf]
            fixed[link] = fixed.get(link, 0) + w
    biggest = max(weights.values(), default=1)

    def feasible(threshold):
        net = optimum._Net()
        s, t = net.node(), net.node()
        link_node = {}
        for link, speed in host.speed.items():
            link_node[link] = net.node()
            room = int(threshold * speed) - fixed.get(link, 0)
            if room < 0:
                return False
            net.edge(link_node[link], t, room)
        pf_node = {}
        for pf, link in host.pf_link.items():
            pf_node[pf] = net.node()
            vfs = host.pf_vfs[pf] - population.foreign.get(pf, 0)
            net.edge(pf_node[pf], link_node[link], max(0, vfs) * biggest)
        need = 0
        for key, d in population.demands.items():
            ws = demand_w[key]
            need += sum(ws)
            dn = net.node()
            net.edge(s, dn, sum(ws))
            units = {}
            for pf in sorted(d.units):
                unit = d.units[pf]
                if unit not in units:
                    units[unit] = net.node()
                    net.edge(dn, units[unit], d.share.get(unit, 1) * max(ws))
                net.edge(units[unit], pf_node[pf], optimum._INF)
        return net.max_flow(s, t) == need

    if not population.demands:
        return Fraction(0)
    if not feasible(upper):
        return None
    lo, hi = Fraction(0), Fraction(upper)
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    return hi
