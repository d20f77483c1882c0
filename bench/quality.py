"""Allocation quality: vfpick ``spread`` against list-order first-free (``pack``) and random choice.

Random arrivals and departures of 1-4-NIC domains on simulated hosts (the simhost presets with
32 VFs per PF, discovered from a real sysfs layout so that link identity is what vfpick sees:
NPAR partitions share a link, a pulled cable is a down link). ``spread`` and ``pack`` are
``vfpick.plan.policy.pick`` itself, called with in-memory claims (it is pure); ``random`` draws
uniformly from the VFs that pass the same hard filters (free, and with strict=yes on a link the
domain does not use yet). Every domain asks for distinct=link.

Metrics:
  redundancy    share of multi-NIC domains whose NICs span as many distinct up links as the
                free VFs allowed at that moment (min(NICs, up links with a free VF)); only
                domains for which two or more up links had a free VF count.
  on down link  share of NICs placed on a link that is down.
  imbalance     over the up links, (max - min) of claims/speed divided by the host's mean
                claims/speed (0: perfectly even, weighted by speed); a full link is left out of
                the min (nothing more can go there); mean over steady-state churn.
  over capacity-only bound
                the busiest up link's claims/speed against the lowest any placement of the same
                NIC count could reach given each link's VF count, ignoring which NIC belongs to
                which domain (fractional water-filling). A lower bound, not a reachable target:
                it counts the price of redundancy (a 4-NIC domain with distinct=link must use
                the slow links) as if placement had left it on the table.
  over optimum  the busiest up link's claims/speed against the distinctness-aware optimum: the
                lowest any placement of the same domains reaches while keeping each domain's
                NICs on distinct links (vfpick.plan.rebalance / vfpick.plan.optimum: exact, binary search
                on claims/speed with a max-flow per step). Mean and worst over checkpoints of
                every seed, with arrivals only (filling an empty host until a refusal or 95 %,
                a checkpoint at each arrival from 25 % occupancy)
                and in churn (steady state around 70 %).
  rebalance     at each churn checkpoint, what `vfpick rebalance` would reach from there (the
                same planner, vfpick.plan.rebalance.plan): every domain stopped (all movable), or
                every other domain running (never moved); and the NICs it moves.
  refused       with strict=yes, arrivals refused while the pool still had a free VF for every
                NIC asked and the host has at least as many up links as NICs asked, in a run
                that fills the pool to saturation; and the free VFs left at the first such
                refusal (VFs stranded by where earlier picks went).
  repair        after a departure wave that empties one link, arrivals (no departures) until the
                imbalance is back under 0.25 (or "never" within the window).
  mixed rates   a population whose NICs carry rates (<bandwidth> outbound average: 1, 5, 10 or
                20 Gb/s, 40/30/20/10 %), arrivals only until half the VFs are claimed: the busiest
                link by rate (Mb/s over speed) against the rate-aware optimum (vfpick.plan.rateopt:
                the splittable bound, since unsplittable NICs of mixed weights make the exact
                optimum bin packing; so the figure is an upper bound on the true excess), mean
                and worst over a checkpoint every 4 arrivals from 25 % occupancy.
"""

import os
import random
import shutil
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOPOLOGIES = [
    ("two dual-port cards", "two-dual-port"),
    ("NPAR (2 ports x 2 partitions)", "npar"),
    ("mixed speed (100G/25G/10G/10G)", "mixed-speed"),
    ("one link down", "link-down"),
]
POLICIES = ("spread", "pack", "random")
NIC_WEIGHTS = ((1, 40), (2, 35), (3, 15), (4, 10))
VFS_PER_PF = 32
REPAIR_UNDER = 0.25
MIXED_RATES = ((1000, 40), (5000, 30), (10000, 20), (20000, 10))   # Mb/s, share
MIXED_TOPOLOGIES = ("two-dual-port", "mixed-speed")
OPTIMUM_EVERY = 15   # churn steps between distinctness-aware checkpoints (a max-flow search each)


def _vfpick():
    # Run as a script from the checkout, measure the checkout; imported by the tests, the
    # vfpick they already imported (the installed package).
    if "vfpick" not in sys.modules and REPO not in sys.path:
        sys.path.insert(0, REPO)
    from vfpick.plan import policy
    from vfpick import records
    from vfpick.host import simhost, topology
    from vfpick.errors import DistinctImpossible, PoolExhausted

    return policy, records, simhost, topology, (DistinctImpossible, PoolExhausted)


def _rebalance():
    _vfpick()
    from vfpick import config
    from vfpick.plan import rebalance

    return config, rebalance


def load_topologies(root):
    policy, records, simhost, topology, _ = _vfpick()
    out = []
    for label, preset in TOPOLOGIES:
        spec = {"nodes": simhost.PRESETS[preset]["nodes"],
                "cards": [dict(card, pfs=[dict(pf, vfs=VFS_PER_PF) for pf in card["pfs"]])
                          for card in simhost.PRESETS[preset]["cards"]]}
        sysfs = simhost.build(os.path.join(root, preset), spec)
        topo = topology.discover(sysfs)
        out.append((label, preset, topo))
    return out


class Sim:
    """One host, one policy: in-memory claims, arrivals and departures."""

    def __init__(self, topo, pol, rnd, strict=False, rates=False):
        self.policy, self.records, _, _, self.refusals = _vfpick()
        self.topo = topo
        self.pol = pol
        self.rnd = rnd
        self.strict = strict
        self.rates = rates    # draw a rate per NIC (MIXED_RATES)
        self.pfs = tuple(topo.pfs)
        self.claims = {}
        self.domains = {}   # uuid -> [vf]
        self.n = 0
        pl = self.policy
        self.all_vfs = pl.pool_vfs(topo, self.pfs)
        self.up_links = [n for n, l in topo.links.items() if l.up]
        self.speed = pl.link_speeds(topo, self.pfs)
        self.cap = {n: sum(1 for v in self.all_vfs if self.link_of_vf(v) == n) for n in self.up_links}
        self.stats = {"multi": 0, "redundant": 0, "nics": 0, "down": 0}
        config, _ = _rebalance()
        self.pools = {"fast": config.Pool("fast", self.pfs, "link", strict, "ignore",
                                          "pack" if pol == "pack" else "spread", None, None)}

    def free_vfs(self):
        return [vf for vf in self.all_vfs if vf not in self.claims]

    def link_of_vf(self, vf):
        return self.topo.link_of[self.topo.vfs[vf].pf]

    def _random_pick(self, req):
        mine, picks = [], []
        for nic in req.nics:
            free = [vf for vf in self.all_vfs if vf not in self.claims and vf not in mine]
            if not free:
                raise self.refusals[1]("exhausted")
            if req.strict and mine:
                used = {self.link_of_vf(v) for v in mine}
                free = [vf for vf in free if self.link_of_vf(vf) not in used]
                if not free:
                    raise self.refusals[0]("distinct")
            vf = self.rnd.choice(free)
            mine.append(vf)
            pf = self.topo.vfs[vf].pf
            picks.append(self.records.Pick(nic.mac, vf, pf, self.topo.link_of[pf], self.topo.card_of[pf]))
        return tuple(picks)

    def arrive(self, nics):
        """Places a domain; returns True, or False when refused."""
        self.n += 1
        uuid = "u%06d" % self.n
        R = self.records
        rates = [self.rnd.choices([r for r, _ in MIXED_RATES], [w for _, w in MIXED_RATES])[0]
                 if self.rates else None for _ in range(nics)]
        req = R.Request(uuid, "fast", tuple(R.Nic("52:54:00:00:%02x:%02x" % (self.n % 256, i), None,
                                                  rates[i]) for i in range(nics)),
                        "link", self.strict, "ignore", "pack" if self.pol == "pack" else "spread",
                        None, ())
        free = self.free_vfs()
        links_free = {self.link_of_vf(vf) for vf in free} & set(self.up_links)
        try:
            if self.pol == "random":
                picks = self._random_pick(req)
            else:
                picks = self.policy.pick(self.topo, self.pfs, self.claims, {}, req)
        except self.refusals:
            return False
        for p, rate in zip(picks, rates):
            self.claims[p.vf] = R.Claim(p.vf, p.pf, p.link, "fast", uuid, uuid, p.mac, False,
                                        rate_mbps=rate)
        self.domains[uuid] = [p.vf for p in picks]
        st = self.stats
        st["nics"] += nics
        st["down"] += sum(1 for p in picks if not self.topo.links[p.link].up)
        if nics > 1 and len(links_free) >= 2:
            st["multi"] += 1
            if len({p.link for p in picks if p.link in links_free}) >= min(nics, len(links_free)):
                st["redundant"] += 1
        return True

    def depart(self, uuid=None):
        uuid = uuid or self.rnd.choice(sorted(self.domains))
        for vf in self.domains.pop(uuid):
            del self.claims[vf]

    def imbalance(self):
        """(max - min) claims/speed over the up links, over the mean; a full link (no free VF)
        is left out of the min: nothing can be added to it, so it is not fixable imbalance."""
        load = {n: 0 for n in self.up_links}
        for c in self.claims.values():
            if c.link in load:
                load[c.link] += 1
        if not load:
            return 0.0
        per = {n: load[n] / self.speed[n] for n in load}
        open_links = {self.link_of_vf(vf) for vf in self.free_vfs()} & set(load)
        if not open_links:
            return 0.0
        mean = sum(load.values()) / sum(self.speed[n] for n in load)
        if mean == 0:
            return 0.0
        return max(0.0, max(per.values()) - min(per[n] for n in open_links)) / mean


    def overload(self):
        """Busiest up link's claims/speed over the best any placement of the same claims could
        reach given each link's VF count (water-filling), minus 1: 0 is optimal."""
        load = {n: 0 for n in self.up_links}
        for c in self.claims.values():
            if c.link in load:
                load[c.link] += 1
        total = sum(load.values())
        if not total:
            return 0.0
        cap = self.cap
        lo, hi = 0.0, max(cap[n] / self.speed[n] for n in load)
        for _ in range(30):
            mid = (lo + hi) / 2
            if sum(min(cap[n], mid * self.speed[n]) for n in load) >= total:
                hi = mid
            else:
                lo = mid
        return max(load[n] / self.speed[n] for n in load) / hi - 1


    def over_optimum(self):
        """Busiest up link over the distinctness-aware optimum of the same domains."""
        _, rebalance = _rebalance()
        f = rebalance.figures(self.topo, self.pools, self.claims, {})
        return rebalance.over(f.load, f.optimum)

    def rebalanced(self, running_every=0):
        """(over optimum after `vfpick rebalance`, NICs moved) from here; with running_every=k,
        every k-th domain runs (never moved). The simulation itself is not changed."""
        _, rebalance = _rebalance()
        domains = {u: rebalance.Domain(u, u, not (running_every and i % running_every == 0), {}, None)
                   for i, u in enumerate(sorted(self.domains))}
        plan = rebalance.plan(self.topo, self.pools, self.claims, {}, domains)
        return rebalance.over(plan.after.load, plan.optimum), len(plan.moves)


def over_rate_optimum(sim):
    """Busiest up link by rate over the rate-aware optimum (vfpick.plan.rateopt)."""
    _rebalance()
    from vfpick.plan import rateopt

    f = rateopt.figures(sim.topo, sim.pools, sim.claims, {})
    return _rebalance()[1].over(f.load, f.optimum)


def mixed_rates(topo, pol, seed, fill=0.5, start=0.25, every=4):
    """Arrivals only of NICs with mixed rates until *fill* of the VFs are claimed; the busiest
    link by rate over the rate-aware optimum at every *every*-th arrival from *start*."""
    rnd = random.Random(seed)
    sim = Sim(topo, pol, rnd, rates=True)
    cap = len(sim.all_vfs)
    over, k = [], 0
    while len(sim.claims) < cap * fill and sim.arrive(draw_nics(rnd)):
        k += 1
        if len(sim.claims) >= cap * start and k % every == 0:
            over.append(over_rate_optimum(sim))
    return over


def draw_nics(rnd):
    return rnd.choices([n for n, _ in NIC_WEIGHTS], weights=[w for _, w in NIC_WEIGHTS])[0]


def arrivals_only(topo, pol, seed, fill=0.95, start=0.25):
    """An empty host fills with arrivals only, until a refusal or *fill*. Returns the busiest
    link over the distinctness-aware optimum and over the capacity-only bound at every
    arrival once *start* of the VFs are claimed (below, one NIC more or less on a link is
    tens of per cent: noise, not load)."""
    rnd = random.Random(seed)
    sim = Sim(topo, pol, rnd)
    cap = len(sim.all_vfs)
    over, bound = [], []
    while len(sim.claims) < cap * fill and sim.arrive(draw_nics(rnd)):
        if len(sim.claims) >= cap * start:
            over.append(sim.over_optimum())
            bound.append(sim.overload())
    return over, bound


def churn(topo, pol, seed, events, target=0.7, repair_window=60, optimum_every=OPTIMUM_EVERY):
    """Steady churn around *target* occupancy, then a departure wave and a refill.
    Returns (redundancy, down share, mean imbalance, mean over the capacity-only bound,
    imbalance trace, arrivals to repair, checkpoints) where checkpoints: {"optimum": [over the
    distinctness-aware optimum], and for spread "all"/"half": [(over it after rebalance, NICs
    moved)]}."""
    rnd = random.Random(seed)
    sim = Sim(topo, pol, rnd)
    cap = len(sim.all_vfs)
    trace, over = [], []
    checks = {"optimum": [], "all": [], "half": []}
    # Fill to the target, then churn: arrive when below target, else depart (with some noise).
    for step in range(events):
        occ = len(sim.claims) / cap
        if not sim.domains or rnd.random() < 0.5 + (target - occ) * 2:
            sim.arrive(draw_nics(rnd))
        else:
            sim.depart()
        if occ >= target * 0.8 and step % 3 == 0:
            trace.append(sim.imbalance())
            over.append(sim.overload())
        if occ >= target * 0.8 and step % optimum_every == 0:
            checks["optimum"].append(sim.over_optimum())
            if pol == "spread":
                checks["all"].append(sim.rebalanced())
                checks["half"].append(sim.rebalanced(running_every=2))
    steady = statistics.mean(trace) if trace else 0.0
    steady_over = statistics.mean(over) if over else 0.0
    # Departure wave: every domain with a NIC on the most loaded up link leaves (a rack of
    # tenants shut down), then only arrivals.
    load = {}
    for c in sim.claims.values():
        load[c.link] = load.get(c.link, 0) + 1 / sim.speed[c.link]
    up_loaded = [n for n in sim.up_links if n in load]
    victim = max(up_loaded, key=lambda n: load[n]) if up_loaded else None
    for uuid in [u for u, vfs in sim.domains.items() if any(sim.link_of_vf(v) == victim for v in vfs)]:
        sim.depart(uuid)
    after = [sim.imbalance()]
    repaired = None
    for k in range(1, repair_window + 1):
        if len(sim.claims) >= cap * 0.95:
            break
        sim.arrive(draw_nics(rnd))
        after.append(sim.imbalance())
        if repaired is None and after[-1] <= REPAIR_UNDER:
            repaired = k
    if after[0] <= REPAIR_UNDER:
        repaired = 0
    st = sim.stats
    red = st["redundant"] / st["multi"] if st["multi"] else float("nan")
    return red, st["down"] / max(1, st["nics"]), steady, steady_over, after, repaired, checks


def saturate(topo, pol, seed):
    """strict=yes, arrivals only until the pool is full. Returns (avoidable refusals, free VFs at
    the first avoidable refusal, arrivals placed)."""
    rnd = random.Random(seed)
    sim = Sim(topo, pol, rnd, strict=True)
    refused, first_free, placed = 0, None, 0
    while True:
        free = len(sim.free_vfs())
        if free == 0:
            break
        nics = draw_nics(rnd)
        ok = sim.arrive(nics)
        if ok:
            placed += 1
        elif free >= nics and nics <= len(sim.up_links):
            refused += 1
            if first_free is None:
                first_free = free
            if refused > 200:
                break
        # a request larger than what is left is not the placement's fault: try a smaller one
    return refused, first_free, placed


def run(quick=False, log=print):
    root = tempfile.mkdtemp(prefix="vfpick-quality-",
                            dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    seeds = range(3 if quick else 8)
    events = 1200 if quick else 2000
    results = []
    try:
        for label, preset, topo in load_topologies(root):
            links = ", ".join("%s%s %s" % (n, "" if l.up else " (down)",
                                           "%dG" % (l.speed // 1000) if l.speed else "?")
                              for n, l in topo.links.items())
            for pol in POLICIES:
                reds, downs, imbs, overs, traces, repairs, refs, firsts, placed = ([] for _ in range(9))
                arr, arr_bound, ch, rb_all, rb_half = [], [], [], [], []
                for seed in seeds:
                    red, down, imb, over, after, repaired, checks = churn(topo, pol, 1000 + seed, events)
                    ch += checks["optimum"]
                    rb_all += checks["all"]
                    rb_half += checks["half"]
                    a, b = arrivals_only(topo, pol, 3000 + seed)
                    arr += a
                    arr_bound += b
                    overs.append(over)
                    reds.append(red)
                    downs.append(down)
                    imbs.append(imb)
                    traces.append(after)
                    repairs.append(repaired)
                    r, f, p = saturate(topo, pol, 2000 + seed)
                    refs.append(r)
                    firsts.append(f)
                    placed.append(p)
                never = sum(1 for r in repairs if r is None)
                done = [r for r in repairs if r is not None]
                row = {
                    "topology": label, "preset": preset, "links": links, "vfs": len(topo.vfs),
                    "policy": pol,
                    "redundancy": statistics.mean(reds),
                    "down": statistics.mean(downs),
                    "imbalance": statistics.mean(imbs),
                    "overload": statistics.mean(overs),
                    "refused": statistics.mean(refs),
                    "first_refusal_free": (statistics.median([f for f in firsts if f is not None])
                                           if any(f is not None for f in firsts) else None),
                    "repair": statistics.median(done) if done and never <= len(repairs) // 2 else None,
                    "repair_never": never, "runs": len(repairs),
                    "arrivals": _mean_worst(arr), "arrivals_bound": _mean_worst(arr_bound),
                    "churn": _mean_worst(ch),
                    "rebalance_all": _mean_worst([o for o, _ in rb_all]),
                    "rebalance_all_moves": _mean_worst([m for _, m in rb_all]),
                    "rebalance_half": _mean_worst([o for o, _ in rb_half]),
                    "rebalance_half_moves": _mean_worst([m for _, m in rb_half]),
                    "trace": [statistics.mean(t[k] for t in traces if len(t) > k)
                              for k in range(max(len(t) for t in traces))],
                }
                results.append(row)
                log("%-32s %-6s redundancy %5.1f%%  down %4.1f%%  imbalance %.2f  refused %.1f  "
                    "repair %s" % (label, pol, row["redundancy"] * 100, row["down"] * 100,
                                   row["imbalance"], row["refused"],
                                   row["repair"] if row["repair"] is not None else "never"))
        mixed = run_mixed(root, seeds, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"seeds": len(seeds), "events": events, "rows": results, "mixed": mixed}


def run_mixed(root, seeds, log=print):
    """The mixed-rate population on MIXED_TOPOLOGIES: rows of (topology, policy, mean/worst)."""
    rows = []
    for label, preset, topo in load_topologies(root):
        if preset not in MIXED_TOPOLOGIES:
            continue
        for pol in POLICIES:
            over = []
            for seed in seeds:
                over += mixed_rates(topo, pol, 4000 + seed)
            rows.append({"topology": label, "policy": pol, "over": _mean_worst(over)})
            log("%-32s %-6s mixed rates: busiest link by rate over the rate-aware optimum %s"
                % (label, pol, _pct(rows[-1]["over"])))
    return rows


def _mean_worst(values):
    return (statistics.mean(values), max(values)) if values else None


def _pct(pair):
    return "-" if pair is None else "%+.1f %% / %+.1f %%" % (pair[0] * 100, pair[1] * 100)


def markdown(res):
    out = ["%d seeds x %d churn events per topology and policy; 32 VFs per PF; 1-4 NICs per domain "
           "(40/35/15/10 %%); distinct=link, strict=no (strict=yes for the refusal column); churn "
           "around 70 %% occupancy." % (res["seeds"], res["events"]), ""]
    out.append("| topology | policy | redundancy | NICs on a down link | link imbalance | "
               "busiest link over capacity-only bound | "
               "avoidable refusals to saturation (strict=yes) | free VFs at 1st such refusal | "
               "arrivals to repair (imbalance <= %.2f) |" % REPAIR_UNDER)
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    last = None
    for r in res["rows"]:
        topo = r["topology"] if r["topology"] != last else ""
        last = r["topology"]
        repair = ("%g" % r["repair"]) if r["repair"] is not None else "never"
        if r["repair_never"] and r["repair"] is not None:
            repair += " (never in %d/%d)" % (r["repair_never"], r["runs"])
        out.append("| %s | %s | %.1f %% | %.1f %% | %.2f | +%.0f %% | %.1f | %s | %s |" % (
            topo, "**%s**" % r["policy"] if r["policy"] == "spread" else r["policy"],
            r["redundancy"] * 100, r["down"] * 100, r["imbalance"], r["overload"] * 100, r["refused"],
            "-" if r["first_refusal_free"] is None else "%g" % r["first_refusal_free"], repair))
    out.append("")
    out.append("**Busiest link against the distinctness-aware optimum** (the best placement of the "
               "same domains that keeps each one's NICs on distinct links; mean / worst over "
               "checkpoints of all seeds). The capacity-only bound ignores distinctness and is "
               "shown for comparison only: it is not reachable where redundancy has a price.")
    out.append("")
    out.append("| topology | policy | arrivals only: over optimum | arrivals only: over capacity-only "
               "bound | churn: over optimum | churn, after rebalance (all stopped) | NICs moved "
               "| churn, after rebalance (every other domain running) | NICs moved |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    last = None
    for r in res["rows"]:
        topo = r["topology"] if r["topology"] != last else ""
        last = r["topology"]
        moves = [r["rebalance_all_moves"], r["rebalance_half_moves"]]
        moves = ["-" if m is None else "%.1f / %d" % tuple(m) for m in moves]
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            topo, "**%s**" % r["policy"] if r["policy"] == "spread" else r["policy"],
            _pct(r["arrivals"]), _pct(r["arrivals_bound"]), _pct(r["churn"]),
            _pct(r["rebalance_all"]), moves[0], _pct(r["rebalance_half"]), moves[1]))
    out.append("")
    if res.get("mixed"):
        out.append("**Mixed rates** (NICs of 1/5/10/20 Gb/s, 40/30/20/10 %; arrivals only to half "
                   "the VFs): the busiest link by rate (Mb/s over speed) against the rate-aware "
                   "optimum, mean / worst over checkpoints. The optimum here is the splittable "
                   "bound (vfpick.plan.rateopt): no placement beats it, so these are upper bounds on "
                   "the real excess.")
        out.append("")
        out.append("| topology | policy | busiest link by rate over the rate-aware optimum |")
        out.append("|---|---|---:|")
        last = None
        for r in res["mixed"]:
            topo = r["topology"] if r["topology"] != last else ""
            last = r["topology"]
            out.append("| %s | %s | %s |" % (
                topo, "**%s**" % r["policy"] if r["policy"] == "spread" else r["policy"],
                _pct(r["over"])))
        out.append("")
    out.append("Links: " + "; ".join(
        "%s: %s" % (r["topology"], r["links"]) for r in res["rows"] if r["policy"] == "spread"))
    return "\n".join(out)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topos = []
    for r in res["rows"]:
        if r["topology"] not in topos:
            topos.append(r["topology"])
    colors = {"spread": "#1b7837", "pack": "#b2182b", "random": "#2166ac"}
    fig, axes = plt.subplots(2, len(topos), figsize=(4.2 * len(topos), 7.4))
    for col, topo in enumerate(topos):
        rows = [r for r in res["rows"] if r["topology"] == topo]
        ax = axes[0][col]
        for r in rows:
            ax.plot(range(len(r["trace"])), r["trace"], label=r["policy"], color=colors[r["policy"]],
                    linewidth=2)
        ax.axhline(REPAIR_UNDER, color="grey", linestyle=":", linewidth=1)
        ax.set_title(topo, fontsize=11)
        ax.set_xlabel("arrivals after the departure wave")
        if col == 0:
            ax.set_ylabel("link imbalance\n(max-min claims/speed, / mean)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        ax = axes[1][col]
        names = [r["policy"] for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["redundancy"] * 100 for r in rows], width=0.4,
               color=[colors[n] for n in names])
        ax2 = ax.twinx()
        ax2.bar([i + 0.2 for i in x], [r["churn"][0] * 100 for r in rows], width=0.4,
                color=[colors[n] for n in names], alpha=0.4, hatch="//")
        top2 = max(10.0, max(r["churn"][0] * 100 for r in rows) * 1.2)
        for i, r in enumerate(rows):
            ax.text(i - 0.2, r["redundancy"] * 100 + 1.5, "%.0f%%" % (r["redundancy"] * 100),
                    ha="center", fontsize=8)
            ax2.text(i + 0.2, r["churn"][0] * 100 + top2 * 0.015, "%+.0f%%" % (r["churn"][0] * 100),
                     ha="center", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names)
        ax.set_ylim(0, 112)
        ax2.set_ylim(0, top2)
        if col == 0:
            ax.set_ylabel("redundancy % (solid bars)")
        if col == len(topos) - 1:
            ax2.set_ylabel("busiest link over optimum % (hatched)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("vfpick spread vs list-order first-free (pack) vs random: repair after departures "
                 "(top),\nredundancy and busiest-link load over the distinctness-aware optimum in steady churn at 70 % occupancy (bottom)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(markdown(result))
    if "--plot" in sys.argv:
        plot(result, sys.argv[sys.argv.index("--plot") + 1])
