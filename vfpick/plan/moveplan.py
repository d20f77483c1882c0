"""PURE: what the rebalance plan is made of, shared by vfpick/plan/rebalance.py (claims/speed)
and vfpick/plan/rateplan.py (by rate): the records (``Domain``, ``Relocation``, ``Figures``,
``Plan``), ``SLACK``, ``over`` and ``order`` (the planned NIC moves in apply order, with their
concrete VFs). rebalance imports rateplan; both import this, so neither imports the other."""

from collections import namedtuple
from fractions import Fraction

from vfpick import pci

SLACK = Fraction(21, 20)  # "within 5 % of the optimum"

Domain = namedtuple("Domain", "uuid name movable rules numa_nodes")
Domain.__doc__ = """What the planner knows of one domain with claims. movable: defined and
stopped (libvirt says so, and none of its claims is active). rules: {pool: records.Rule}; a pool
missing there uses the pool's own settings. numa_nodes: frozenset, or None (not placed)."""

Relocation = namedtuple("Relocation", "uuid domain pool mac vf pf link to_vf to_pf to_link repair",
                        defaults=(False,))
Relocation.__doc__ = """One NIC the plan moves, from VF vf (on pf, link) to to_vf (on to_pf,
to_link); moves.Move is a whole domain's move as applied. repair: it leaves a unit it shared
with another NIC of its domain (redundancy restored)."""

Figures = namedtuple("Figures", "load busiest claims speed optimum mbps by_rate",
                     defaults=(None, False))
Figures.__doc__ = """load: the busiest up link's claims/speed (Fraction, claims per Mb/s) when every
NIC weighs the same, else its Mb/s of weight over its speed (by_rate True, vfpick.plan.rateplan);
busiest: that link's name (None when nothing is placed), claims, speed (Mb/s) and Mb/s of
weight on it; optimum: the distinctness-aware optimum for the same population (Fraction,
exact), or by rate a lower bound no placement beats; None when no placement keeps them apart."""

Plan = namedtuple("Plan", "before after optimum reachable goal moves skipped notes unrepaired")
Plan.__doc__ = """before/after: Figures now and once the moves are done. optimum: as in
Figures. reachable: the lowest busiest load moving only the movable domains. goal: the load
the moves aim at (None: nothing to do). moves: tuple of Relocation, grouped by domain, in the order
to apply them (Relocation.repair: restores distinctness). skipped: domains whose moves could not be
ordered (a cycle of full PFs). notes: one-line remarks for the user. unrepaired: one line per
domain that shares a unit and stays so, with why."""


def over(figure, reference):
    """*figure* over *reference* as a fraction (+0.05 = 5 % over); 0 when both are 0."""
    if not reference:
        return 0.0 if not figure else float("inf")
    return float(figure / reference) - 1


def order(population, claims, busy, pending):
    """Moves in apply order from *pending* {uuid: [(claim, target pf, repair)]}: VFs the lowest
    free address, VFs free now before VFs another move frees; a domain whose targets wait on a
    cycle of full PFs is skipped. Returns (moves, skipped uuids)."""
    topology = population.topology
    taken = set(claims) | set(busy)
    free = {pf: [vf for vf in topology.pfs[pf].vfs if vf in topology.vfs and vf not in taken]
            for pf in population.host.pf_link}
    vacated = {pf: [] for pf in free}
    moves = []
    progress = True
    while pending and progress:
        progress = False
        for uuid in sorted(pending, key=lambda u: (population.names.get(u, ""), u)):
            wanted = {}
            for _, pf, _ in pending[uuid]:
                wanted[pf] = wanted.get(pf, 0) + 1
            if any(len(free[pf]) + len(vacated[pf]) < n for pf, n in wanted.items()):
                continue
            for claim, pf, repair in pending.pop(uuid):
                source = free[pf] if free[pf] else vacated[pf]
                vf = source.pop(0)
                moves.append(Relocation(uuid=uuid, domain=claim.domain, pool=claim.pool, mac=claim.mac,
                                        vf=claim.vf, pf=claim.pf, link=claim.link, to_vf=vf, to_pf=pf,
                                        to_link=population.host.pf_link[pf], repair=repair))
                vacated[claim.pf].append(claim.vf)
                vacated[claim.pf].sort(key=pci.sort_key)
            progress = True
    return moves, tuple(sorted(pending))
