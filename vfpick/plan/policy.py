"""The placement policy: a pure function of (topology, pool, claims, busy, request) → picks.

No I/O here. ``spread`` places each NIC in turn by hard filters, then by preference:
link up; not sharing the ``distinct`` level with the domain's other NICs; NUMA-local;
sharing the deepest PCIe bridge with the domain's other PCI hostdevs; lowest load on the
link after the pick (the sum of its NICs' rates over its speed: a NIC without a rate weighs
the pool's ``nic_rate``, so without rates this is (claims+1)/speed); least loaded PF; lowest
VF address. With ``guarantee`` the guaranteed rates on a link never exceed its speed. ``pack`` is the
legacy "first free VF in list order". Claimed VFs never move: a kept NIC stays where it is.
All-or-nothing: a request that cannot be met raises and picks nothing.
"""

from fractions import Fraction

from vfpick import pci
from vfpick.errors import DistinctImpossible, GuaranteeImpossible, PcieAffinityImpossible, PoolExhausted
from vfpick.records import Pick


def unit_of(topology, distinct, pf_addr):
    """The thing one domain's NICs must not share, at the *distinct* level."""
    if distinct == "card":
        return topology.card_of[pf_addr]
    if distinct == "link":
        return topology.link_of[pf_addr]
    if distinct == "pf":
        return pf_addr
    return None


def in_service(pool_pfs, drained):
    """The pool's PFs new picks may use: those not drained, in the pool's order."""
    return tuple(addr for addr in pool_pfs if addr not in drained) if drained else tuple(pool_pfs)


def pool_vfs(topology, pool_pfs):
    """Every VF of the pool's PFs, PFs in list order, VFs in index order."""
    out = []
    for pf_addr in pool_pfs:
        pf = topology.pfs.get(pf_addr)
        if pf is not None:
            out.extend(vf for vf in pf.vfs if vf in topology.vfs)
    return out


def numa_local(topology, node, nodes):
    """Whether a device on NUMA *node* (a VF's or PF's numa_node) is local to *nodes* (the
    domain's). The one rule of locality for the policy and the rebalance planner."""
    if node is None or node < 0:
        # An unknown node is local only where there is no other node to be on.
        return len(topology.node_cpus) <= 1
    return node in nodes


def link_speeds(topology, pool_pfs):
    """Link speed for load weighting; an unknown speed counts as the slowest known one."""
    links = {topology.link_of[a] for a in pool_pfs if a in topology.pfs}
    known = [topology.links[n].speed for n in links if topology.links[n].speed]
    floor = min(known) if known else 1
    return {n: topology.links[n].speed or floor for n in links}


def weight(rate, nic_rate):
    """Mb/s a NIC (or claim) weighs on its link: its rate, else the pool's nic_rate."""
    return rate if rate else nic_rate


def reserved(rate, min_rate):
    """Mb/s a NIC (or claim) holds back on its link under guarantee=yes: floor, else average."""
    return min_rate or rate or 0


def shared_bridges(path, other):
    """How many PCIe bridges (root port, switch ports) two sysfs device paths share; 0 when
    they sit under different host bridges or only share the host bridge."""
    if not path or not other or path[0] != other[0]:
        return 0
    depth = 0
    for a, b in zip(path[1:-1], other[1:-1]):
        if a != b:
            break
        depth += 1
    return depth


def affinity(pcie, near):
    """The deepest bridge a PF (its PCIe path) shares with any of the domain's other devices."""
    return max((shared_bridges(pcie, other) for other in near), default=0)


class _Ledger:
    """Load (Mb/s of weight) and reservations per link and PF: other domains' claims, busy VFs,
    this request's picks."""

    def __init__(self, topology, taken, claims, nic_rate):
        self.topology, self.nic_rate = topology, nic_rate
        self.link, self.pf, self.reserved = {}, {}, {}
        for vf in taken:
            claim = claims.get(vf)
            if claim is None:
                self.add(vf, None, None)
            else:
                self.add(vf, claim.rate_mbps, claim.min_rate_mbps)

    def add(self, vf, rate, min_rate):
        record = self.topology.vfs.get(vf)
        if record is None or record.pf not in self.topology.link_of:
            return
        link = self.topology.link_of[record.pf]
        load = weight(rate, self.nic_rate)
        self.link[link] = self.link.get(link, 0) + load
        self.pf[record.pf] = self.pf.get(record.pf, 0) + load
        self.reserved[link] = self.reserved.get(link, 0) + reserved(rate, min_rate)


def pick(topology, pool_pfs, claims, busy, request):
    """Picks one VF per NIC of *request*; returns a tuple of Pick in NIC order.

    claims: {vf: Claim} of every domain. busy: {vf: uuid} of VFs running domains use.
    Raises PoolExhausted or DistinctImpossible; then nothing is picked.
    """
    candidates_all = pool_vfs(topology, pool_pfs)
    pool_set = set(candidates_all)
    taken = {vf for vf, c in claims.items() if c.uuid != request.uuid}
    taken.update(vf for vf, uuid in busy.items() if uuid != request.uuid)
    held = [vf for vf in request.held if vf in topology.vfs]
    ledger = _Ledger(topology, taken | set(held), claims, request.nic_rate)
    speeds = link_speeds(topology, pool_pfs)
    nodes = request.numa_nodes
    numa_filter = request.numa == "required" and nodes is not None
    numa_prefer = request.numa == "preferred" and nodes is not None
    near = tuple(request.near) if request.pcie_affinity != "ignore" else ()
    depth = {addr: affinity(topology.pfs[addr].pcie, near) for addr in pool_pfs
             if addr in topology.pfs} if near else {}

    mine = list(held)  # VFs this domain holds so far: held ones, kept ones, new picks
    chosen = [None] * len(request.nics)

    def units_used(level):
        return [unit_of(topology, level, topology.vfs[vf].pf) for vf in mine]

    # Kept VFs first: they are fixed, and new picks must stay distinct from them. A kept VF
    # passes the guarantee's room check like a new pick (its rates come from the domain's
    # metadata, which whoever defines the domain may have raised); one that fails is picked
    # anew below, and refused when no link has room.
    for i, nic in enumerate(request.nics):
        vf = nic.keep_vf
        if vf and vf in pool_set and vf not in taken and vf not in mine and (
                not request.guarantee or _fits(topology, vf, nic, ledger, speeds)):
            chosen[i] = vf
            mine.append(vf)
            ledger.add(vf, nic.rate, nic.min_rate)

    # The heaviest NICs first (a stable sort: without rates, NIC order): a light NIC placed
    # first could take the one fast link a heavy NIC of the same domain needs (distinct).
    order = sorted(range(len(request.nics)),
                   key=lambda i: -weight(request.nics[i].rate, request.nic_rate))
    for i in order:
        nic = request.nics[i]
        if chosen[i] is not None:
            continue
        free = [vf for vf in candidates_all if vf not in taken and vf not in mine]
        if not free:
            raise PoolExhausted(
                "pool '%s' is exhausted: no free VF for NIC %d of %d (%d VFs, all claimed or in use); "
                "release a domain or add PFs to the pool"
                % (request.pool, i + 1, len(request.nics), len(candidates_all)))
        if numa_filter:
            free = [vf for vf in free if numa_local(topology, topology.vfs[vf].numa_node, nodes)]
            if not free:
                raise PoolExhausted(
                    "pool '%s' has no free VF on NUMA node(s) %s for NIC %d of %d (numa=required); "
                    "free VFs elsewhere or set numa=preferred"
                    % (request.pool, ",".join(map(str, sorted(nodes))), i + 1, len(request.nics)))
        used = units_used(request.distinct) if request.distinct != "none" else []
        if request.strict and used:
            free = [vf for vf in free
                    if unit_of(topology, request.distinct, topology.vfs[vf].pf) not in used]
            if not free:
                raise DistinctImpossible(
                    "pool '%s' cannot give NIC %d of %d a %s of its own (distinct=%s, strict=yes); "
                    "free VFs on another %s, or set strict=no"
                    % (request.pool, i + 1, len(request.nics), request.distinct,
                       request.distinct, request.distinct))
        if request.guarantee:
            free = _guaranteed(topology, free, nic, request, ledger, speeds, i)
        if near and request.pcie_affinity == "required":
            free = [vf for vf in free if depth.get(topology.vfs[vf].pf)]
            if not free:
                raise PcieAffinityImpossible(
                    "pool '%s' has no free VF on a PF that shares a PCIe bridge (root port or "
                    "switch) with the domain's other PCI devices (%s) for NIC %d of %d "
                    "(pcie_affinity=required); free one there or set pcie_affinity=preferred"
                    % (request.pool, ", ".join(sorted({p[-1] for p in near})), i + 1,
                       len(request.nics)))
        nic_weight = weight(nic.rate, request.nic_rate)

        if request.policy == "pack":
            vf = free[0]
        else:
            def key(vf):
                pf_addr = topology.vfs[vf].pf
                link = topology.link_of[pf_addr]
                unit = unit_of(topology, request.distinct, pf_addr)
                return (
                    not topology.links[link].up,
                    used.count(unit) if unit is not None else 0,
                    numa_prefer and not numa_local(topology, topology.vfs[vf].numa_node, nodes),
                    -depth.get(pf_addr, 0),
                    Fraction(ledger.link.get(link, 0) + nic_weight, speeds[link]),
                    ledger.pf.get(pf_addr, 0),
                    pci.sort_key(vf),
                )
            vf = min(free, key=key)
        chosen[i] = vf
        mine.append(vf)
        ledger.add(vf, nic.rate, nic.min_rate)

    picks = []
    for nic, vf in zip(request.nics, chosen):
        pf_addr = topology.vfs[vf].pf
        picks.append(Pick(mac=nic.mac, vf=vf, pf=pf_addr, link=topology.link_of[pf_addr],
                          card=topology.card_of[pf_addr]))
    return tuple(picks)


def _fits(topology, vf, nic, ledger, speeds):
    need = reserved(nic.rate, nic.min_rate)
    link = topology.link_of[topology.vfs[vf].pf]
    return not need or speeds[link] - ledger.reserved.get(link, 0) >= need


def room_problem(topology, pool_pfs, claims, vf, rate, min_rate):
    """Why a NIC with these rates cannot be guaranteed on *vf* (guarantee = yes) beside
    *claims* ({vf: Claim}, the VF's own excluded), or None: the check a rate read from a
    domain's metadata passes where no pick made it (the hook claiming a VF nobody claimed)."""
    need = reserved(rate, min_rate)
    record = topology.vfs.get(vf)
    if not need or record is None or record.pf not in topology.link_of:
        return None
    link = topology.link_of[record.pf]
    speeds = link_speeds(topology, tuple(pool_pfs) + (record.pf,))
    others = {v: c for v, c in claims.items() if v != vf}
    ledger = _Ledger(topology, list(others), others, 0)
    room = speeds[link] - ledger.reserved.get(link, 0)
    if room >= need:
        return None
    return ("its guarantee of %d Mb/s does not fit on link %s (guarantee=yes: %d Mb/s of %d left)"
            % (need, link, max(0, room), speeds[link]))


def _guaranteed(topology, free, nic, request, ledger, speeds, i):
    """The VFs of *free* on links with room for the NIC's guaranteed rate; refuses when none."""
    need = reserved(nic.rate, nic.min_rate)
    if not need:
        return free
    room = {link: speed - ledger.reserved.get(link, 0) for link, speed in speeds.items()}
    fits = [vf for vf in free if room[topology.link_of[topology.vfs[vf].pf]] >= need]
    if not fits:
        raise GuaranteeImpossible(
            "pool '%s' cannot guarantee %d Mb/s to NIC %d of %d (guarantee=yes): room left per "
            "link: %s; lower the NIC's <bandwidth>, free a NIC with a rate, or add a link"
            % (request.pool, need, i + 1, len(request.nics),
               ", ".join("%s %d Mb/s" % (link, max(0, room[link])) for link in sorted(room))))
    return fits


def link_load(topology, pool_pfs, claims, nic_rate):
    """{link: Mb/s of weight} of every claim on the pool's links (the policy's load figure)."""
    return _Ledger(topology, list(claims), claims, nic_rate).link


def distinct_met(topology, picks, distinct):
    """True when no two picks share the *distinct* level."""
    if distinct == "none":
        return True
    units = [unit_of(topology, distinct, p.pf) for p in picks]
    return len(units) == len(set(units))
