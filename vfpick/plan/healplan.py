"""PURE: what self-healing does about the NICs of running domains whose link died (no I/O).

``vfpick watch`` (vfpick/heal.py) feeds it what it read: the topology, the claims, the running
domains' VF NICs as libvirt has them live, the VFs running domains use, the drained PFs and
the clock. Three steps, each a function of its inputs only, so the tests drive them as tables:

- ``dead_nics``: the NICs of active claims in pools with ``heal`` on whose VF is gone or whose
  link is down;
- ``track``: since when each of them has been dead (a NIC whose link came back is forgotten:
  a flap within the hold-down moves nothing);
- ``plan``: per dead NIC, wait (hold-down), defer (the pool's moves-per-minute limit), refuse
  (and why) or move it to one VF.

A move is planned only where it makes the domain better and never worse: the NIC's link is
dead (so it carries nothing now), the new VF is on an up link that none of the domain's other
NICs uses, at the domain's distinct level too, so the domain ends at least as distinct as it
is; a plain VF (no failover partner) moves only while another NIC of the domain is up to carry
the traffic (the guest loses the NIC while it moves). A NIC whose VF QEMU already unplugged
(the VF vanished) only gets a new VF attached. The VF itself is chosen by the placement
policy (policy.pick, strict at the domain's level), among the pool's PFs on up links.
"""

from dataclasses import dataclass, field
from typing import Mapping, Optional

from vfpick.plan import policy
from vfpick.errors import VfpickError
from vfpick.records import Claim, Nic, Request

WINDOW = 60.0  # seconds: heal_moves_per_minute counts the moves started within it

# Why a NIC is dead, and why a move is refused: the short codes are metric labels, the
# phrases the log lines.
DEAD_WHY = {"vf_gone": "its VF is gone", "pf_gone": "its PF is gone", "link_down": "link down"}
REFUSED = {
    "not_running": "the domain is not running",
    "not_in_domain": "the domain has no VF NIC with its MAC, live or in its definition",
    "last_working_nic": "it is a plain VF (no failover partner) and no other NIC of the domain "
                        "is up to carry the traffic while it moves",
    "no_spare_link": "no free VF on an up link that none of the domain's other NICs uses",
}


@dataclass(frozen=True)
class Running:
    """A running domain as libvirt has it live. kinds: {mac: 'failover' | 'plain'} of its VF
    NICs (livemove.vf_nics); lost: the same for the VF NICs of its definition that the live
    XML lacks (QEMU unplugged the VF when it vanished); levels: {pool: distinct level} after
    its metadata overrides (a pool missing: the pool's own)."""
    uuid: str
    name: str
    kinds: Mapping[str, str]
    levels: Mapping[str, str] = field(default_factory=dict)
    lost: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dead:
    """A NIC of an active claim on a dead link. why: a DEAD_WHY key."""
    uuid: str
    domain: str
    mac: str
    vf: str
    pf: str
    link: str
    pool: str
    why: str

    @property
    def key(self):
        return (self.uuid, self.mac)


@dataclass(frozen=True)
class Decision:
    """What to do about one dead NIC. action: wait | defer | refuse | move. reason: for wait
    'holddown' (until: when it ends), for defer 'rate_limit', for refuse a REFUSED key, for a
    move None. kind: 'failover' | 'plain' | None (not in the domain). lost: the NIC is out of
    the running domain already (its VF vanished): the move only attaches the new VF."""
    nic: Dead
    action: str
    reason: Optional[str] = None
    name: str = ""
    kind: Optional[str] = None
    to_vf: Optional[str] = None
    to_pf: Optional[str] = None
    to_link: Optional[str] = None
    until: Optional[float] = None
    lost: bool = False

    @property
    def why(self):
        return REFUSED.get(self.reason, self.reason)


def dead_nics(topo, pools, claims):
    """{(uuid, mac): Dead} of the active claims ({vf: Claim}) in pools whose heal is not off,
    whose VF or PF is gone or whose link is down."""
    out = {}
    for claim in claims.values():
        pool = pools.get(claim.pool)
        if not claim.active or pool is None or pool.heal == "off":
            continue
        if claim.vf not in topo.vfs:
            why = "vf_gone"
        elif claim.pf not in topo.link_of:
            why = "pf_gone"
        elif not topo.links[topo.link_of[claim.pf]].up:
            why = "link_down"
        else:
            continue
        link = topo.link_of.get(claim.pf, claim.link)
        nic = Dead(claim.uuid, claim.domain, claim.mac, claim.vf, claim.pf, link, claim.pool, why)
        out[nic.key] = nic
    return out


def track(since, dead, now):
    """{key: time it was first seen dead}: *since* ({key: time}) for the keys still in *dead*,
    *now* for the new ones; a key no longer dead is dropped (it counts from zero next time)."""
    return {key: since.get(key, now) for key in dead}


def _works(topo, claim, kinds, dead_keys):
    return (claim.vf in topo.vfs and claim.pf in topo.link_of
            and topo.links[topo.link_of[claim.pf]].up and claim.mac in kinds
            and (claim.uuid, claim.mac) not in dead_keys)


def plan(topo, pools, claims, busy, drained, running, dead, since, now, recent=None):
    """Decisions (a tuple, one per NIC of *dead*, oldest death first).

    claims: {vf: Claim}; busy: {vf: uuid} of VFs running domains use; drained: PF addresses;
    running: {uuid: Running} (a domain absent is not running); dead: dead_nics(...); since:
    track(...); recent: {pool: (times of moves started)}: with the moves this plan adds, at most
    the pool's heal_moves_per_minute within WINDOW seconds."""
    recent = {name: [t for t in times if now - t < WINDOW] for name, times in (recent or {}).items()}
    planned = {}  # vf -> placeholder Claim of a target this plan hands out
    mine = {}     # uuid -> [target vf] this plan gives the domain
    out = []
    for key in sorted(dead, key=lambda k: (since.get(k, now), dead[k].domain, k[1])):
        nic = dead[key]
        pool = pools[nic.pool]
        domain = running.get(nic.uuid)
        name = domain.name if domain else nic.domain

        def decide(action, reason=None, **kw):
            out.append(Decision(nic, action, reason, name=name, **kw))

        start = since.get(key, now)
        if now - start < pool.heal_holddown:
            decide("wait", "holddown", until=start + pool.heal_holddown)
            continue
        if domain is None:
            decide("refuse", "not_running")
            continue
        kind = domain.kinds.get(nic.mac)
        lost = kind is None and nic.mac in domain.lost
        kind = domain.lost.get(nic.mac) if lost else kind
        if kind is None:
            decide("refuse", "not_in_domain")
            continue
        others = [c for c in claims.values() if c.uuid == nic.uuid and c.mac != nic.mac]
        # A NIC already out (lost) takes nothing from the guest when a VF is attached to it.
        if kind == "plain" and not lost and not any(_works(topo, c, domain.kinds, dead)
                                                     for c in others):
            decide("refuse", "last_working_nic", kind=kind)
            continue
        target = _target(topo, pool, claims, busy, drained, nic, domain, others,
                         mine.get(nic.uuid, []), planned)
        if target is None:
            decide("refuse", "no_spare_link", kind=kind)
            continue
        if len(recent.get(nic.pool, [])) >= pool.heal_moves_per_minute:
            decide("defer", "rate_limit", kind=kind)
            continue
        recent.setdefault(nic.pool, []).append(now)
        planned[target.vf] = Claim(vf=target.vf, pf=target.pf, link=target.link, pool=nic.pool,
                                   domain=name, uuid=nic.uuid, mac=nic.mac, active=True)
        mine.setdefault(nic.uuid, []).append(target.vf)
        decide("move", kind=kind, to_vf=target.vf, to_pf=target.pf, to_link=target.link,
               lost=lost)
    return tuple(out)


def _target(topo, pool, claims, busy, drained, nic, domain, others, given, planned):
    """The Pick for *nic* (policy.pick, strict at the domain's level) on a PF of the pool on an
    up link none of the domain's other NICs (nor a target this plan gave it) uses; or None."""
    held = [c.vf for c in others if c.vf in topo.vfs] + list(given)
    used_links = {c.link for c in others} | {topo.link_of[c.pf] for c in others
                                             if c.pf in topo.link_of}
    used_links |= {topo.link_of[topo.vfs[vf].pf] for vf in given}
    pfs = tuple(addr for addr in pool.pfs
                if addr in topo.pfs and addr not in drained and topo.links[topo.link_of[addr]].up
                and topo.link_of[addr] not in used_links)
    if not pfs:
        return None
    claim = claims.get(nic.vf)
    level = domain.levels.get(nic.pool, pool.distinct)
    request = Request(
        uuid=nic.uuid, pool=nic.pool,
        nics=(Nic(nic.mac, None, claim.rate_mbps if claim else None,
                  claim.min_rate_mbps if claim else None),),
        distinct=level, strict=True, numa="ignore", policy=pool.policy, numa_nodes=None,
        held=tuple(held), nic_rate=pool.nic_rate, guarantee=pool.guarantee,
        pcie_affinity="ignore")
    try:
        [pick] = policy.pick(topo, pfs, {**claims, **planned}, busy, request)
    except VfpickError:
        return None
    return pick


def cannot_heal(topo, pool, claims, drained=frozenset()):
    """Why *pool* can never heal its busiest domain now (one phrase), or None: a dead NIC needs
    a free VF on an up link none of the domain's other NICs uses, so a domain with k NICs of
    the pool needs k + 1 links of it (k >= 1)."""
    links = {topo.link_of[a] for a in pool.pfs if a in topo.pfs and a not in drained}
    per_domain = {}
    for claim in claims.values():
        if claim.pool == pool.name:
            per_domain[claim.uuid] = per_domain.get(claim.uuid, 0) + 1
    most = max(per_domain.values(), default=1)
    if len(links) > most:
        return None
    return ("its PFs in service span %d link(s) and a domain holds %d NIC(s) of it: a NIC on a "
            "dead link has no spare distinct link to go to" % (len(links), most))

