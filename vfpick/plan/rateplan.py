"""PURE: the rebalance plan when NICs weigh differently (rates): the optimum's bound and the moves.

vfpick.plan.rebalance hands its population here when not every NIC on the up links weighs the same
(policy.weight: a NIC's rate, else its pool's nic_rate), or a guarantee=yes pool holds room
back. A link's load is then the Mb/s of weight on it over its speed, as in the placement.

- The optimum: placing NICs of different weights under a load bound is bin packing (NP-hard),
  so the figure is a *lower bound*: the splittable relaxation (each demand sends its Mb/s through
  the units/PFs/links network; a unit takes at most its share times the demand's largest NIC, a
  PF its free VFs times the largest NIC, a link T x speed; bisection on T, then snapped down to
  the last Mb/s step that still flows), and never below the heaviest NIC over the fastest link
  it may use. No placement does better; it may be unreachable (a NIC cannot be split).
- The moves, redundancy first: each repairable demand (rebalance's max-flow says which) keeps
  its heaviest NICs on a shared unit and moves the others, one by one, to the PF of an unused
  unit that ends least loaded; a demand one of whose NICs finds no room is left as it is and
  named. Then balance by local search: while the busiest link is over the goal (5 % over the
  bound), move one NIC of a movable domain off it: a NIC that fits within what the link must
  shed (the heaviest such: fewest NICs moved), else the lightest that brings the link to the
  goal, else the one that lowers the pair's peak most; a move is taken only when the target
  link ends below the busiest one's load, so every move lowers the sorted loads and it ends.
  Last, a moved NIC goes back to where it was when that keeps every link within the result.
  Every move keeps `distinct` (the demand's share per unit), finds a free VF, never lands on a
  drained, down or NUMA-barred PF, and under guarantee=yes never puts more guaranteed Mb/s on a
  link than its speed. Heuristic: fewest moves and the reached load are not proven optimal.
"""

from fractions import Fraction

from vfpick.plan import moveplan, optimum

_BISECT = 60


def _link_totals(population, where):
    """({link: Mb/s}, {link: NICs}, {link: reserved Mb/s}) of the placement *where* {vf: pf}
    and the foreign busy VFs."""
    host = population.host
    mbps, nics, held = {}, {}, {}
    for pf, w in population.foreign_weight.items():
        link = host.pf_link[pf]
        mbps[link] = mbps.get(link, 0) + w
        nics[link] = nics.get(link, 0) + population.foreign[pf]
    for vf, pf in where.items():
        link = host.pf_link[pf]
        mbps[link] = mbps.get(link, 0) + population.weights[vf]
        nics[link] = nics.get(link, 0) + 1
        held[link] = held.get(link, 0) + population.reserve[vf]
    return mbps, nics, held


def figures(population, where, reference):
    """moveplan.Figures by rate of the placement *where* {vf: pf}."""
    speed = population.host.speed
    mbps, nics, _ = _link_totals(population, where)
    busiest = max((l for l in mbps if mbps[l]), key=lambda l: (Fraction(mbps[l], speed[l]), l),
                  default=None)
    if busiest is None:
        return moveplan.Figures(Fraction(0), None, 0, None, reference, 0, True)
    return moveplan.Figures(Fraction(mbps[busiest], speed[busiest]), busiest, nics[busiest],
                             speed[busiest], reference, mbps[busiest], True)


def bound(population, demands):
    """A lower bound (Fraction) on the busiest link's Mb/s over speed over every placement of
    *demands* {key: optimum.Demand} (the shares rebalance's repairs allow) with the foreign busy
    VFs fixed; None when not even the VFs allow one."""
    host, weights = population.host, population.weights
    if not demands:
        return Fraction(0)
    ws = {key: [weights[c.vf] for c in population.claims_of[key]] for key in demands}
    biggest = max(weights.values())
    fixed = {}
    for pf, w in population.foreign_weight.items():
        fixed[host.pf_link[pf]] = fixed.get(host.pf_link[pf], 0) + w
    single = max(Fraction(max(ws[key]), max(host.speed[host.pf_link[pf]] for pf in d.units))
                 for key, d in demands.items() if d.units)

    def feasible(threshold):
        net = optimum.Net()
        s, t = net.node(), net.node()
        link_node = {}
        for link, speed in host.speed.items():
            room = int(threshold * speed) - fixed.get(link, 0)
            if room < 0:
                return False
            link_node[link] = net.node()
            net.edge(link_node[link], t, room)
        pf_node = {}
        for pf, link in host.pf_link.items():
            pf_node[pf] = net.node()
            vfs = host.pf_vfs[pf] - population.foreign.get(pf, 0)
            net.edge(pf_node[pf], link_node[link], max(0, vfs) * biggest)
        need = 0
        for key, d in demands.items():
            need += sum(ws[key])
            dn = net.node()
            net.edge(s, dn, sum(ws[key]))
            units = {}
            for pf in sorted(d.units):
                unit = d.units[pf]
                if unit not in units:
                    units[unit] = net.node()
                    net.edge(dn, units[unit], d.share.get(unit, 1) * max(ws[key]))
                net.edge(units[unit], pf_node[pf], optimum.INF)
        return net.max_flow(s, t) == need

    total = sum(weights.values()) + sum(fixed.values())
    hi = Fraction(total, min(host.speed.values()))
    if not feasible(hi) or not optimum.feasible(list(demands.values()), host, None,
                                                population.foreign):
        return None
    lo = Fraction(0)
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    # The network only sees floor(T x speed) per link: the largest such step at or below hi
    # flows too, and is the bound's true value where the steps are further apart than hi - lo.
    snapped = max(Fraction(int(hi * speed), speed) for speed in host.speed.values())
    return max(snapped, single)


class _State:
    """A placement of every NIC on the host's up links being planned: {vf: pf} and its sums."""

    def __init__(self, population, demands):
        self.p, self.demands = population, demands
        self.origin = dict(population.where)
        self.where = dict(population.where)
        self.mbps, _, self.held = _link_totals(population, self.where)
        self.vfs_used = dict(population.counts)
        self.key_of = {c.vf: key for key, held in population.claims_of.items() for c in held}

    def moved(self):
        return sum(1 for vf, pf in self.where.items() if pf != self.origin[vf])

    def load(self, link, extra=0):
        return Fraction(self.mbps.get(link, 0) + extra, self.p.host.speed[link])

    def unit_count(self, key, unit, but=None):
        d = self.demands[key]
        return sum(1 for c in self.p.claims_of[key]
                   if c.vf != but and d.units[self.where[c.vf]] == unit)

    def may_go(self, vf, pf, share=True):
        """True when NIC *vf* may move to *pf*: an allowed PF with a free VF, its unit within
        the demand's share (unless not *share*), and room for its guarantee."""
        key = self.key_of[vf]
        d, host = self.demands[key], self.p.host
        if pf == self.where[vf] or pf not in d.units or pf not in host.pf_link:
            return False
        if self.vfs_used.get(pf, 0) >= host.pf_vfs[pf]:
            return False
        unit = d.units[pf]
        if share and self.unit_count(key, unit, but=vf) >= d.share.get(unit, 1):
            return False
        link = host.pf_link[pf]
        if key[1] in self.p.guarded and self.p.reserve[vf] and \
                link != host.pf_link[self.where[vf]] and \
                self.held.get(link, 0) + self.p.reserve[vf] > host.speed[link]:
            return False
        return True

    def move(self, vf, pf):
        host, w, r = self.p.host, self.p.weights[vf], self.p.reserve[vf]
        old = self.where[vf]
        for link, sign in ((host.pf_link[old], -1), (host.pf_link[pf], 1)):
            self.mbps[link] = self.mbps.get(link, 0) + sign * w
            self.held[link] = self.held.get(link, 0) + sign * r
        self.vfs_used[old] -= 1
        self.vfs_used[pf] = self.vfs_used.get(pf, 0) + 1
        self.where[vf] = pf

    def busiest(self):
        speed = self.p.host.speed
        return max(speed, key=lambda l: (self.load(l), l))

    def repair(self, key):
        """Puts demand *key* on distinct units (its heaviest NICs stay); False and unchanged
        when one of its NICs finds no PF to go to."""
        d, host, w = self.demands[key], self.p.host, self.p.weights
        before = {c.vf: self.where[c.vf] for c in self.p.claims_of[key]}
        by_unit = {}
        for c in sorted(self.p.claims_of[key], key=lambda c: (-w[c.vf], c.mac)):
            by_unit.setdefault(d.units[self.where[c.vf]], []).append(c.vf)
        for unit, vfs in sorted(by_unit.items(), key=lambda i: str(i[0])):
            for vf in reversed(vfs[d.share.get(unit, 1):]):
                options = [pf for pf in sorted(d.units) if self.may_go(vf, pf)]
                if not options:
                    for back, pf in before.items():
                        if self.where[back] != pf:
                            self.move(back, pf)
                    return False
                self.move(vf, min(options, key=lambda pf: (
                    self.load(host.pf_link[pf], w[vf]), pf != self.origin[vf], pf)))
        return True

    def _steps(self, link, movable):
        """Candidate steps off *link*: one NIC to another link's PF, or, where the domain's
        own NIC on the target unit is in the way, that NIC elsewhere first (a swap included)."""
        host = self.p.host
        for vf, pf in sorted(self.where.items()):
            key = self.key_of[vf]
            if host.pf_link[pf] != link or key not in movable:
                continue
            d = self.demands[key]
            for to in sorted(d.units):
                if host.pf_link.get(to) in (None, link):
                    continue
                if self.may_go(vf, to):
                    yield ((vf, to),)
                    continue
                unit = d.units[to]
                sibs = [c.vf for c in self.p.claims_of[key]
                        if c.vf != vf and d.units[self.where[c.vf]] == unit]
                if len(sibs) != 1 or not self.may_go(vf, to, share=False):
                    continue
                sib = sibs[0]
                for alt in sorted(d.units):
                    # Both VFs must be free before either moves: a domain's moves go together.
                    if host.pf_link.get(alt) is None or alt == to or \
                            self.vfs_used.get(alt, 0) >= host.pf_vfs[alt]:
                        continue
                    self.move(vf, to)
                    ok = self.may_go(sib, alt) and \
                        self.unit_count(key, unit, but=sib) <= d.share.get(unit, 1)
                    self.move(vf, pf)
                    if ok:
                        yield ((vf, to), (sib, alt))

    def _cost(self, step):
        return sum((to != self.origin[vf]) - (self.where[vf] != self.origin[vf])
                   for vf, to in step)

    def balance(self, goal, movable, max_moves=None):
        """Local search until the busiest link is within *goal* or no step lowers it."""
        host = self.p.host
        for _ in range(4 * len(self.where) + 8):  # each step lowers the sorted loads: bounded
            link = self.busiest()
            peak = self.load(link)
            if peak <= goal:
                return
            shed = self.mbps[link] - int(goal * host.speed[link])
            moved = self.moved()
            best = None
            for step in list(self._steps(link, movable)):
                cost = self._cost(step)
                if max_moves is not None and moved + cost > max_moves:
                    continue
                back = [(vf, self.where[vf]) for vf, _ in step]
                touched = {host.pf_link[pf] for _, pf in step} | {host.pf_link[pf] for _, pf in back}
                before = self.mbps[link]
                for vf, to in step:
                    self.move(vf, to)
                done = before - self.mbps[link]
                there = max((self.load(l) for l in touched if l != link), default=Fraction(0))
                here = self.load(link)
                for vf, pf in reversed(back):
                    self.move(vf, pf)
                if there >= peak or here >= peak:
                    continue
                if there <= goal and done <= shed:
                    rank = (0, cost, -done, there)
                elif there <= goal:
                    rank = (1, cost, done, there)
                else:
                    rank = (2, max(there, here), cost, done)
                if best is None or rank < best[0]:
                    best = (rank, step)
            if best is None:
                return
            for vf, to in best[1]:
                self.move(vf, to)

    def trim(self, movable):
        """Moved NICs go back where they were when every link stays within today's peak."""
        host, w = self.p.host, self.p.weights
        peak = self.load(self.busiest())
        for vf in sorted(self.where, key=lambda v: (-w[v], v)):
            home = self.origin[vf]
            if self.where[vf] == home or self.key_of[vf] not in movable:
                continue
            if self.may_go(vf, home) and self.load(host.pf_link[home], w[vf]) <= peak:
                self.move(vf, home)


def plan(population, claims, busy, max_moves=None, slack=moveplan.SLACK):
    """moveplan.Plan by rate for *population* (a rebalance.Population): the same steps and
    notes as the count planner, with the bound above for the optimum."""
    p = population
    movable = sorted(p.movable)
    fixed = p.fixed(k for k in p.demands if k not in p.movable)
    repaired, chosen = p.repairable(movable, fixed)
    before = p.figures(None, p.optimum())
    notes = []
    unrepaired = [p.why_not(k, fixed) for k in sorted(
        p.overlap, key=lambda k: (p.names.get(k[0], ""), k)) if k not in repaired]
    demands = dict(p.demands)
    demands.update(chosen)
    state = _State(p, demands)
    goal = reachable = None
    made = []
    if before.optimum is None:
        notes.append("no placement keeps every domain's NICs apart; nothing to aim at")
    else:
        for key in repaired:
            if state.repair(key):
                if max_moves is not None and state.moved() > max_moves:
                    for c in p.claims_of[key]:
                        if state.where[c.vf] != state.origin[c.vf]:
                            state.move(c.vf, state.origin[c.vf])
                    unrepaired.append("%s: --max-moves %d is too few to repair it too; run "
                                      "rebalance again" % (p.names[key[0]], max_moves))
                    continue
                made.append(key)
            else:
                unrepaired.append("%s: %d NICs, pool %s: no free VF on another unit it may use "
                                  "has room for its rate" % (p.names[key[0]], demands[key].nics,
                                                             key[1]))
        target = before.optimum * slack
        balanced = before.load <= target
        if balanced and not made:
            notes.append("the busiest link is within %d %% of the optimum already"
                         % round((slack - 1) * 100))
        else:
            goal = max(target, before.load) if balanced else target
            state.balance(goal, set(movable), max_moves)
            state.trim(set(movable))
            reachable = state.load(state.busiest())
            if max_moves is not None and state.moved() >= max_moves and reachable > target:
                notes.append("--max-moves %d: this goes as far as %d NIC moves reach"
                             % (max_moves, max_moves))
            elif not made and reachable >= before.load:
                notes.append("only running (or unknown) domains could make it better: none of "
                             "the defined, stopped domains can move to help")
            elif reachable > target and not balanced and not any(
                    state.key_of[vf] in p.movable for vf, pf in state.where.items()
                    if p.host.pf_link[pf] == state.busiest()):
                notes.append("running domains hold the busiest links: the best that moving "
                             "stopped domains reaches is %+.0f %% over the optimum's bound"
                             % (moveplan.over(reachable, before.optimum) * 100))
            elif reachable > target and not balanced:
                notes.append("by rate the optimum is a lower bound (NICs cannot be split): the "
                             "moves reach %+.0f %% over it" % (moveplan.over(reachable,
                                                                         before.optimum) * 100))
    made = set(made)
    pending = {}
    for key, held in sorted(p.claims_of.items()):
        for c in sorted(held, key=lambda c: c.mac):
            to = state.where[c.vf]
            if to != c.pf:
                unit = demands[key].units[c.pf]
                shared = key in made and sum(
                    1 for o in held if demands[key].units[o.pf] == unit) > 1
                pending.setdefault(key[0], []).append((c, to, shared))
    moves, skipped = moveplan.order(p, claims, busy, pending)
    after_where = dict(p.where)
    for m in moves:
        after_where[m.vf] = m.to_pf
    after = figures(p, after_where, before.optimum)
    return moveplan.Plan(before, after, before.optimum, reachable, goal, tuple(moves), skipped,
                          notes, tuple(unrepaired))
