"""PURE: the rebalance plan, and the distinctness-aware optimum it aims at.

(topology, pools, claims, busy VFs, which domains may move) -> figures and NIC moves. No I/O:
``vfpick.domain.virt`` gathers the inputs from libvirt and the state, ``vfpick.moves`` applies them.

The load of a link is its claims/speed (speed in Mb/s; unknown counts as the slowest known,
as in the policy) when every NIC weighs the same (policy.weight: its rate, else its pool's
nic_rate) and no guarantee=yes pool reserves room; otherwise it is the Mb/s of weight over the
speed and vfpick/plan/rateplan.py plans instead (a lower bound for the optimum, heuristic moves,
the same rules). Only up links count: a NIC on a down link is left where it is and out of
the figures. The *optimum* is the lowest busiest-link load over every placement of the same
domains that keeps each domain's NICs on distinct units (its ``distinct`` level): one NIC per
unit. Redundancy comes before balance: a domain holding k > 1 NICs on one unit today (best
effort, strict=no: there were not enough free units then) is repaired to one per unit when the
VFs allow it (a max-flow with no load limit: all such domains at once, else one at a time by
name); only one that cannot be keeps today's overlap (up to k on that unit, never fewer units),
and the plan names it with why. NUMA-required domains stay on their nodes,
NUMA-preferred ones never move to a remote PF; no NIC moves onto an *avoid* (drained) PF. See
vfpick/plan/optimum.py for the exact search.

The plan: if a movable domain can be repaired or the busiest link is more than 5 % over the
optimum, find the fewest NICs to move (only NICs of movable domains: defined and stopped; the
rest are fixed load) so that every repair is made and no link exceeds max(1.05 x optimum, the
best reachable with the fixed load; today's load when only repairs are due) — a min-cost flow,
exact in the number of NICs that change PF. ``max_moves`` caps that number: then the lowest busiest
load reachable within it. Which VF on the target PF: the lowest free address.
"""

from fractions import Fraction

from vfpick import config as configmod, pci
from vfpick.plan import optimum, policy, rateplan
from vfpick.plan.moveplan import (  # noqa: F401  (rebalance's public names)
    SLACK, Domain, Figures, Plan, Relocation, order, over)
from vfpick.records import Rule


def host_for(topology, pools):
    """optimum.Host of the pools' PFs on up links."""
    pf_link, pf_vfs, speed = {}, {}, {}
    for pool in pools.values():
        speeds = policy.link_speeds(topology, pool.pfs)
        for addr in pool.pfs:
            pf = topology.pfs.get(addr)
            link = topology.link_of.get(addr)
            if pf is None or link is None or not topology.links[link].up or addr in pf_link:
                continue
            pf_link[addr] = link
            pf_vfs[addr] = sum(1 for vf in pf.vfs if vf in topology.vfs)
            speed[link] = speeds[link]
    return optimum.Host(pf_link, pf_vfs, speed)


def _unit(topology, distinct, pf):
    return policy.unit_of(topology, distinct, pf) if distinct != "none" else "*"


class Population:
    """The claims on the host's up links, grouped into demands (one per domain and pool).

    Public for vfpick.plan.rateplan, which plans on the same population when NICs weigh
    differently: host (optimum.Host), counts {pf: claims + busy VFs}, foreign {pf: busy VFs
    nobody claimed}, claims_of {(uuid, pool): [Claim]}, demands {key: optimum.Demand},
    movable, names {uuid: domain name}, rules {key: Rule}, overlap, and the weights of _weigh."""

    def __init__(self, topology, pools, claims, busy, domains, avoid=frozenset()):
        self.topology = topology
        self.host = host_for(topology, pools)
        pool_of_pf = configmod.pool_of_pf(pools)
        self.counts = {}      # {pf: claims + busy VFs} on the host
        self.foreign = {}     # {pf: busy VFs nobody claimed}
        self.claims_of = {}   # {(uuid, pool): [Claim on the host]}
        outside = {}          # {uuid: [pf]} claims off the host (down link, other pool)
        for vf, uuid in busy.items():
            record = topology.vfs.get(vf)
            if vf not in claims and record is not None and record.pf in self.host.pf_link:
                self.foreign[record.pf] = self.foreign.get(record.pf, 0) + 1
                self.counts[record.pf] = self.counts.get(record.pf, 0) + 1
        for claim in claims.values():
            owner = pool_of_pf.get(claim.pf)
            if claim.pf in self.host.pf_link and owner is not None and owner.name == claim.pool:
                self.claims_of.setdefault((claim.uuid, claim.pool), []).append(claim)
                self.counts[claim.pf] = self.counts.get(claim.pf, 0) + 1
            else:
                outside.setdefault(claim.uuid, []).append(claim.pf)
        self._weigh(pools, claims, pool_of_pf)
        self.demands, self.movable, self.names, self.rules = {}, set(), {}, {}
        self.overlap = {}     # {key: today's share} of the demands sharing a unit (degraded)
        for (uuid, pool_name), held in sorted(self.claims_of.items()):
            pool = pools[pool_name]
            dom = domains.get(uuid)
            rule = (dom.rules.get(pool_name) if dom else None) or Rule(pool.distinct, pool.strict, pool.numa)
            nodes = dom.numa_nodes if dom else None
            current = {}
            for c in held:
                current[c.pf] = current.get(c.pf, 0) + 1
            # Units this domain uses elsewhere (another pool, a down link) stay its own.
            elsewhere = {_unit(topology, rule.distinct, pf) for pf in outside.get(uuid, ())
                         if pf in topology.link_of}
            for (other_uuid, other_pool), other in self.claims_of.items():
                if other_uuid == uuid and other_pool != pool_name:
                    elsewhere.update(_unit(topology, rule.distinct, c.pf) for c in other)
            units = {}
            for pf in pool.pfs:
                if pf not in self.host.pf_link:
                    continue
                unit = _unit(topology, rule.distinct, pf)
                if pf not in current:
                    if pf in avoid or (rule.distinct != "none" and unit in elsewhere):
                        continue
                    if rule.numa in ("required", "preferred") and nodes is not None \
                            and not policy.numa_local(topology, topology.pfs[pf].numa_node, nodes):
                        continue
                units[pf] = unit
            n = len(held)
            kept = {}  # today's overlap: a unit holding k > 1 NICs keeps k, others take 1
            for pf, count in current.items():
                kept[units[pf]] = kept.get(units[pf], 0) + count
            key = (uuid, pool_name)
            self.names[uuid] = held[0].domain
            self.rules[key] = rule
            if rule.distinct == "none":
                share = {"*": n}
            else:
                share = {}  # distinct: one NIC per unit
                if any(k > 1 for k in kept.values()):
                    self.overlap[key] = kept
            self.demands[key] = optimum.Demand(key, n, share, units, current)
            if dom is not None and dom.movable:
                self.movable.add(key)

    def _weigh(self, pools, claims, pool_of_pf):
        """What each NIC weighs, as in the policy: weights {vf: Mb/s} (its rate, else its
        pool's nic_rate; a foreign busy VF: the nic_rate of its PF's pool), reserve {vf: Mb/s}
        held back under guarantee=yes, guarded: the pools with guarantee=yes."""
        self.weights, self.reserve, self.where = {}, {}, {}
        for key, held in self.claims_of.items():
            pool = pools[key[1]]
            for c in held:
                self.weights[c.vf] = policy.weight(c.rate_mbps, pool.nic_rate)
                self.reserve[c.vf] = policy.reserved(c.rate_mbps, c.min_rate_mbps)
                self.where[c.vf] = c.pf
        self.foreign_weight = {pf: n * pool_of_pf[pf].nic_rate
                               for pf, n in self.foreign.items()}
        self.guarded = frozenset(name for name, pool in pools.items() if pool.guarantee)
        unit = set(self.weights.values()) | {pool_of_pf[pf].nic_rate for pf in self.foreign}
        # Every NIC weighs the same and no guarantee holds room back: claims/speed ranks
        # placements exactly as Mb/s over speed, and the exact count planner applies.
        self.unit_weight = unit.pop() if len(unit) == 1 else (1000 if not unit else None)
        if any(self.reserve.get(c.vf) for k, held in self.claims_of.items()
               if k[1] in self.guarded for c in held):
            self.unit_weight = None

    def fixed(self, keys):
        """{pf: NICs} of the foreign busy VFs and the demands *keys*."""
        out = dict(self.foreign)
        for key in keys:
            for pf, n in self.demands[key].current.items():
                out[pf] = out.get(pf, 0) + n
        return out

    def figures(self, counts, reference):
        if self.unit_weight is None:
            return rateplan.figures(self, self.where, reference)
        per_link = optimum.link_fixed(self.host, counts)
        busiest = max((link for link in per_link if per_link[link]),
                      key=lambda link: (Fraction(per_link[link], self.host.speed[link]), link),
                      default=None)
        if busiest is None:
            return Figures(Fraction(0), None, 0, None, reference)
        return Figures(optimum.max_load(self.host, counts), busiest, per_link[busiest],
                       self.host.speed[busiest], reference, per_link[busiest] * self.unit_weight)

    def repairable(self, keys, fixed):
        """The demands among *keys* sharing a unit that can all be made distinct at once, and
        {key: demand} with the others keeping today's overlap. All at once when the VFs allow
        (one max-flow), else one at a time by domain name (a maximal set, not the largest)."""
        degraded = sorted((k for k in keys if k in self.overlap),
                          key=lambda k: (self.names.get(k[0], ""), k))
        demands = {k: self.demands[k] for k in keys}
        if not degraded or optimum.feasible(list(demands.values()), self.host, None, fixed):
            return tuple(degraded), demands
        for k in degraded:
            demands[k] = demands[k]._replace(share=self.overlap[k])
        repaired = []
        for k in degraded:
            demands[k] = self.demands[k]
            if optimum.feasible(list(demands.values()), self.host, None, fixed):
                repaired.append(k)
            else:
                demands[k] = demands[k]._replace(share=self.overlap[k])
        return tuple(repaired), demands

    def why_not(self, key, fixed):
        """One line: why the demand *key* keeps sharing a unit."""
        d, rule = self.demands[key], self.rules[key]
        free_units = set()
        for pf, unit in d.units.items():
            if pf in d.current or self.host.pf_vfs[pf] - self.counts.get(pf, 0) > 0:
                free_units.add(unit)
        head = "%s: %d NICs, pool %s" % (self.names[key[0]], d.nics, key[1])
        if len(free_units) < d.nics:
            return "%s has %d %ss up with free VFs it may use (distinct=%s)" % (
                head, len(free_units), rule.distinct, rule.distinct)
        if key not in self.movable:
            return "%s: running (or unknown to libvirt), not moved" % head
        return ("%s: the free VFs on other %ss are needed by other domains' NICs (distinct=%s)"
                % (head, rule.distinct, rule.distinct))

    def optimum(self):
        if self.unit_weight is None:
            return rateplan.bound(self, self.repairable(list(self.demands), self.foreign)[1])
        load = optimum.max_load(self.host, self.counts)
        repaired, demands = self.repairable(list(self.demands), self.foreign)
        # Repairs may need a busier link than today's busiest: no upper bound then.
        upper = None if repaired else load
        return optimum.min_max_load(list(demands.values()), self.host, self.foreign,
                                    upper=upper)


def figures(topology, pools, claims, busy, domains=None, avoid=frozenset()):
    """Figures of the current placement (the benchmark's and the command's "before")."""
    population = Population(topology, pools, claims, busy, domains or {}, avoid)
    return population.figures(population.counts, population.optimum())


def plan(topology, pools, claims, busy, domains, max_moves=None, slack=SLACK, avoid=frozenset()):
    """Redundancy first, then balance: the moves that put every movable domain sharing a
    unit (best effort) back on distinct units where free VFs allow, and bring the busiest up
    link within *slack* of the optimum, fewest NIC moves in all.

    claims: {vf: Claim}; busy: {vf: uuid} VFs running domains use; domains: {uuid: Domain}
    (a uuid missing there is not movable); avoid: PF addresses no NIC may move to (drained).
    Returns Plan."""
    population = Population(topology, pools, claims, busy, domains, avoid)
    if population.unit_weight is None:
        return rateplan.plan(population, claims, busy, max_moves, slack)
    before = population.figures(population.counts, population.optimum())
    load = before.load
    notes = []
    movable = sorted(population.movable)
    fixed = population.fixed(k for k in population.demands if k not in population.movable)
    repaired, chosen = population.repairable(movable, fixed)
    demands = [chosen[k] for k in movable]
    host = population.host
    unrepaired = list(population.why_not(k, fixed) for k in sorted(
        population.overlap, key=lambda k: (population.names.get(k[0], ""), k))
        if k not in repaired)

    def done(goal=None, reachable=None, placement=None, repairs=()):
        moves, skipped = _concretize(population, claims, busy, placement or {}, repairs)
        counts = dict(population.counts)
        for m in moves:
            counts[m.pf] -= 1
            counts[m.to_pf] = counts.get(m.to_pf, 0) + 1
        after = population.figures(counts, before.optimum)
        return Plan(before, after, before.optimum, reachable, goal, tuple(moves), skipped, notes,
                    tuple(unrepaired))

    if before.optimum is None:
        notes.append("no placement keeps every domain's NICs apart; nothing to aim at")
        return done()
    balanced = load <= before.optimum * slack
    if balanced and not repaired:
        notes.append("the busiest link is within %d %% of the optimum already" % round((slack - 1) * 100))
        return done()
    while True:
        reachable = optimum.min_max_load(demands, host, fixed, upper=None if repaired else load)
        if not repaired and (reachable is None or reachable >= load):
            notes.append("only running (or unknown) domains could make it better: none of the "
                         "defined, stopped domains can move to help")
            return done(reachable=reachable)
        goal = max(before.optimum * slack, reachable)
        if balanced:
            goal = max(goal, load)  # only the repairs: they need not make the balance better
        result = optimum.min_moves(demands, host, goal, fixed)
        if max_moves is None or result[0] <= max_moves:
            break
        # Fewer moves reach less: the lowest load within the budget (monotone in the goal).
        values = [v for v in optimum.candidates(host, fixed) if v > goal]
        if not repaired:
            values = [v for v in values if v < load]
        best = None
        lo, hi = 0, len(values) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            got = optimum.min_moves(demands, host, values[mid], fixed)
            if got is not None and got[0] <= max_moves:
                best, hi = (values[mid], got), mid - 1
            else:
                lo = mid + 1
        notes.append("--max-moves %d: the goal needs %d NIC moves; this goes as far as %d reach"
                     % (max_moves, result[0], max_moves))
        if best is not None:
            goal, result = best
            break
        if not repaired:
            return done(reachable=reachable)
        # Too few moves for every repair: the last one by name waits for another run.
        key = repaired[-1]
        repaired = repaired[:-1]
        demands = [d._replace(share=population.overlap[key]) if d.key == key else d
                   for d in demands]
        unrepaired.append("%s: --max-moves %d is too few to repair it too; run rebalance again"
                          % (population.names[key[0]], max_moves))
    if not balanced and goal > before.optimum * slack:
        notes.append("running domains hold the busiest links: the best that moving stopped "
                     "domains reaches is %+.0f %% over the optimum" % (over(reachable, before.optimum) * 100))
    return done(goal, reachable, result[1], repaired)


def _concretize(population, claims, busy, placement, repairs=()):
    """Moves per domain from a {key: {pf: NICs}} placement; VFs: lowest free address, VFs free
    now before VFs another move frees. A NIC of a *repairs* demand leaving a unit it shared
    is a repair (Relocation.repair). Returns (moves in apply order, skipped uuids)."""
    pending = {}  # uuid -> [(claim leaving, target pf, repair)]
    for key, target in sorted(placement.items()):
        demand = population.demands[key]
        if target == demand.current:
            continue
        held = sorted(population.claims_of[key], key=lambda c: (c.pf, pci.sort_key(c.vf)))
        leaving, arriving = [], []
        for pf in sorted(set(demand.current) | set(target)):
            extra = demand.current.get(pf, 0) - target.get(pf, 0)
            on_pf = [c for c in held if c.pf == pf]
            if extra > 0:
                leaving.extend(on_pf[-extra:])
            elif extra < 0:
                arriving.extend([pf] * -extra)
        shared = {}  # unit -> NICs beyond the first there: that many leaving ones repair
        if key in repairs:
            for pf, n in demand.current.items():
                unit = demand.units[pf]
                shared[unit] = shared.get(unit, -1) + n
        marked = []
        for claim in sorted(leaving, key=lambda c: c.mac):
            unit = demand.units[claim.pf]
            marked.append((claim, shared.get(unit, 0) > 0))
            if shared.get(unit, 0) > 0:
                shared[unit] -= 1
        pending.setdefault(key[0], []).extend(
            (claim, pf, repair) for (claim, repair), pf in zip(marked, arriving))
    return order(population, claims, busy, pending)
