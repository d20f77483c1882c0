"""PURE: the best placement of a population of domains that keeps each one's NICs apart.

A *demand* is one domain's NICs in one pool. The network a placement must flow through:

    source -> demand (NICs) -> (demand, unit) (share) -> PF -> link (PF's VFs) -> sink (link cap)

``unit`` is what the demand's NICs must not share (its ``distinct`` level: card, link or PF);
``share`` is how many of its NICs one unit may take (1 when the domain is fully distinct). A
demand over its share today (two NICs on one unit, share 1) is repaired by ``min_moves``.
A link may carry ``min(VFs, floor(T * speed))`` NICs for a threshold T of claims/speed: the
smallest T at which every NIC flows is the distinctness-aware optimum, found exactly by a binary
search over the finitely many values k/speed with a max-flow (Dinic) per step. The graphs are
small (a host has a few links and at most a few hundred domains).

``min_moves`` answers the rebalance question: at a given T, route every NIC while keeping as
many as possible on the PF they are on. It is a min-cost flow (staying costs 0, arriving on a
PF the demand did not use costs 1), solved by successive shortest paths that start from the
current placement, so the work is proportional to the NICs that must move, not to the host.

No I/O, no vfpick imports: plain data in, plain data out.
"""

from collections import deque, namedtuple
from fractions import Fraction

Demand = namedtuple("Demand", "key nics share units current")
Demand.__doc__ = """One domain's NICs in one pool.

key: hashable id (e.g. (uuid, pool)). nics: how many to place. units: {pf: unit} of the PFs
the demand may use (unit: any hashable). share: {unit: most of its NICs the unit's PFs may
take together}, 1 for a unit not listed. current: {pf: NICs there now} (only used by
min_moves; PFs outside *units* are not allowed)."""

Host = namedtuple("Host", "pf_link pf_vfs speed")
Host.__doc__ = """pf_link: {pf: link}; pf_vfs: {pf: VFs}; speed: {link: positive number}
(the load of a link is NICs/speed). Only the PFs and links a placement may use."""

INF = 1 << 60


class Net:
    """Adjacency-list flow network; edge e's reverse is e ^ 1."""

    def __init__(self):
        self.adj = []
        self.head, self.cap, self.cost = [], [], []

    def node(self):
        self.adj.append([])
        return len(self.adj) - 1

    def edge(self, u, v, cap, cost=0):
        e = len(self.head)
        self.head += [v, u]
        self.cap += [cap, 0]
        self.cost += [cost, -cost]
        self.adj[u].append(e)
        self.adj[v].append(e + 1)
        return e

    def push(self, e, amount):
        self.cap[e] -= amount
        self.cap[e ^ 1] += amount

    def flow(self, e):
        return self.cap[e ^ 1]

    def max_flow(self, s, t):
        """Dinic: BFS levels, blocking flow by DFS (paths here are at most 6 edges long)."""
        total = 0
        while True:
            level = [-1] * len(self.adj)
            level[s] = 0
            queue = deque([s])
            while queue:
                u = queue.popleft()
                for e in self.adj[u]:
                    v = self.head[e]
                    if self.cap[e] > 0 and level[v] < 0:
                        level[v] = level[u] + 1
                        queue.append(v)
            if level[t] < 0:
                return total
            it = [0] * len(self.adj)

            def dfs(u, limit):
                if u == t:
                    return limit
                edges = self.adj[u]
                while it[u] < len(edges):
                    e = edges[it[u]]
                    v = self.head[e]
                    if self.cap[e] > 0 and level[v] == level[u] + 1:
                        got = dfs(v, min(limit, self.cap[e]))
                        if got:
                            self.push(e, got)
                            return got
                    it[u] += 1
                return 0

            while True:
                got = dfs(s, INF)
                if not got:
                    break
                total += got

    def shortest_path(self, sources, t):
        """Bellman-Ford queue (SPFA) from several sources: residual costs may be negative
        (reverse edges), never in a cycle (successive shortest paths keep it so).
        Returns (source, edge list) of a cheapest path to *t*, or None."""
        n = len(self.adj)
        dist = [INF] * n
        via = [-1] * n
        inq = [False] * n
        queue = deque()
        for s in sources:
            dist[s] = 0
            queue.append(s)
            inq[s] = True
        while queue:
            u = queue.popleft()
            inq[u] = False
            du = dist[u]
            for e in self.adj[u]:
                if self.cap[e] > 0:
                    v = self.head[e]
                    nd = du + self.cost[e]
                    if nd < dist[v]:
                        dist[v] = nd
                        via[v] = e
                        if not inq[v]:
                            queue.append(v)
                            inq[v] = True
        if dist[t] >= INF:
            return None
        path, v = [], t
        while via[v] >= 0:
            e = via[v]
            path.append(e)
            v = self.head[e ^ 1]
        path.reverse()
        return v, path


def link_fixed(host, fixed):
    """{link: NICs that stay where they are}, from {pf: count}."""
    out = {}
    for pf, count in (fixed or {}).items():
        if pf in host.pf_link:
            link = host.pf_link[pf]
            out[link] = out.get(link, 0) + count
    return out


def link_caps(host, threshold, fixed=None):
    """{link: NICs the link may carry beside the fixed ones at *threshold*} (may be < 0);
    *threshold* None: only the link's VFs limit."""
    vfs, held = {}, link_fixed(host, fixed)
    for pf, link in host.pf_link.items():
        vfs[link] = vfs.get(link, 0) + host.pf_vfs[pf]
    caps = {}
    for link, speed in host.speed.items():
        room = vfs.get(link, 0)
        if threshold is not None:
            room = min(room, int(threshold * speed // 1))
        caps[link] = room - held.get(link, 0)
    return caps


_Graph = namedtuple("_Graph", "net s t stay move pf_out link_sink source unit")


def _build(demands, host, caps, fixed, movable_cost):
    """The network at link capacities *caps*. Edges by what they join: stay/move
    {(key, pf)}, pf_out {pf}, link_sink {link}, source {key}, unit {(key, unit)}."""
    net = Net()
    s, t = net.node(), net.node()
    link_node = {link: net.node() for link in host.speed}
    link_sink = {link: net.edge(link_node[link], t, max(0, caps[link])) for link in host.speed}
    pf_node, pf_out = {}, {}
    for pf, link in host.pf_link.items():
        if link in link_node:
            pf_node[pf] = net.node()
            pf_out[pf] = net.edge(pf_node[pf], link_node[link],
                                  max(0, host.pf_vfs[pf] - (fixed or {}).get(pf, 0)))
    stay, move, source_edge, unit_edge = {}, {}, {}, {}
    for d in demands:
        dn = net.node()
        source_edge[d.key] = net.edge(s, dn, d.nics)
        unit_nodes = {}
        for pf in sorted(d.units):
            if pf not in pf_node:
                continue
            unit = d.units[pf]
            if unit not in unit_nodes:
                unit_nodes[unit] = net.node()
                unit_edge[(d.key, unit)] = net.edge(dn, unit_nodes[unit], d.share.get(unit, 1))
            here = d.current.get(pf, 0) if movable_cost else 0
            if here:
                stay[(d.key, pf)] = net.edge(unit_nodes[unit], pf_node[pf], here, 0)
            move[(d.key, pf)] = net.edge(unit_nodes[unit], pf_node[pf], INF, movable_cost)
    return _Graph(net, s, t, stay, move, pf_out, link_sink, source_edge, unit_edge)


def feasible(demands, host, threshold, fixed=None):
    """True when every demand's NICs fit with no link over *threshold* (NICs/speed); None:
    any load, only the VFs limit."""
    caps = link_caps(host, threshold, fixed)
    if any(c < 0 for c in caps.values()):
        return False
    need = sum(d.nics for d in demands)
    g = _build(demands, host, caps, fixed, 0)
    return g.net.max_flow(g.s, g.t) == need


def max_load(host, counts):
    """Busiest link's NICs/speed (a Fraction) for {pf: NICs}; 0 when nothing is placed."""
    per_link = link_fixed(host, counts)
    return max((Fraction(n) / Fraction(host.speed[link]) for link, n in per_link.items() if n),
               default=Fraction(0))


def candidates(host, fixed):
    vfs = {}
    for pf, link in host.pf_link.items():
        vfs[link] = vfs.get(link, 0) + host.pf_vfs[pf]
    held = link_fixed(host, fixed)
    values = {Fraction(0)}
    for link, speed in host.speed.items():
        speed = Fraction(speed)
        values.update(Fraction(k) / speed for k in range(held.get(link, 0), vfs.get(link, 0) + 1))
    return sorted(values)


def min_max_load(demands, host, fixed=None, lower=None, upper=None):
    """The smallest busiest-link NICs/speed over every placement of *demands* (fixed ones
    included in the load), or None when no placement exists at all. *lower*/*upper*: known
    bounds (a placement that reaches *upper* exists) to shorten the search."""
    values = candidates(host, fixed)
    if lower is not None:
        values = [v for v in values if v >= lower] or values[-1:]
    if upper is not None:
        values = [v for v in values if v <= upper] or values[:1]
    lo, hi = 0, len(values) - 1
    if upper is None and not feasible(demands, host, values[hi], fixed):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(demands, host, values[mid], fixed):
            hi = mid
        else:
            lo = mid + 1
    return values[lo]


def min_moves(demands, host, threshold, fixed=None):
    """Fewest NICs moved so that no link is over *threshold*. Returns (moved, {key: {pf: NICs}})
    or None when no placement reaches it. A NIC moves when it lands on a PF its demand had
    fewer NICs on before; which VF on a PF is the caller's choice."""
    caps = link_caps(host, threshold, fixed)
    if any(c < 0 for c in caps.values()):
        return None
    g = _build(demands, host, caps, fixed, 1)
    net = g.net
    # Start from the current placement: every NIC where it is. It costs 0 and every edge it
    # uses costs 0, so its residual network has no negative cycle; the links it overloads get
    # the excess, and successive shortest paths move it away as cheaply as possible.
    # A demand holding more NICs on a unit than its share (a repair: share 1 where it shares
    # a unit today) keeps only its share there; the rest waits at the demand's node as excess
    # and is routed like a link's excess, so the repair costs the fewest moves too.
    load, excess = {}, {}
    for d in demands:
        if sum(d.current.values()) != d.nics:
            raise ValueError("demand %r: current placement has %d NICs, not %d"
                             % (d.key, sum(d.current.values()), d.nics))
        net.push(g.source[d.key], d.nics)
        room = {}
        for pf, here in sorted(d.current.items()):
            if (d.key, pf) not in g.stay:
                raise ValueError("demand %r is on PF %s, outside its units" % (d.key, pf))
            e = g.unit[(d.key, d.units[pf])]
            room.setdefault(e, net.cap[e])
            keep = min(here, room[e])
            room[e] -= keep
            if keep:
                net.push(e, keep)
                net.push(g.stay[(d.key, pf)], keep)
                net.push(g.pf_out[pf], keep)
                load[host.pf_link[pf]] = load.get(host.pf_link[pf], 0) + keep
            if here > keep:
                node = net.head[g.source[d.key]]
                excess[node] = excess.get(node, 0) + here - keep
    for link, e in g.link_sink.items():
        on = load.get(link, 0)
        fits = min(on, net.cap[e])
        net.push(e, fits)
        if on > fits:
            excess[net.head[e ^ 1]] = on - fits
    while excess:
        found = net.shortest_path(list(excess), g.t)
        if found is None:
            return None
        source, path = found
        amount = min([excess[source]] + [net.cap[e] for e in path])
        for e in path:
            net.push(e, amount)
        excess[source] -= amount
        if not excess[source]:
            del excess[source]
    placement, moved = {}, 0
    for (key, pf), e in g.move.items():
        got = net.flow(e) + (net.flow(g.stay[(key, pf)]) if (key, pf) in g.stay else 0)
        moved += net.flow(e)
        if got:
            placement.setdefault(key, {})[pf] = got
    return moved, placement
