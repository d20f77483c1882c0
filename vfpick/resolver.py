"""Resolve a domain's pool interfaces into concrete VFs and record the claims.

The one place where config, topology, state, policy and the XML rewriter meet. Used by
``vfpick resolve``/``define``/``repick``, the migrate/restore hook filters and the watcher.
Everything that decides is done under the state lock, so parallel resolves never hand out
one VF twice; the XML is rewritten inside the transaction so a failure claims nothing.
"""

import os
import random
from collections import namedtuple

from vfpick import bandwidth, config as configmod, domscan, numbers
from vfpick.plan import policy
from vfpick.host import topology, vfsettings
from vfpick.errors import ClaimConflict, PoolError, UnknownPool, XmlError
from vfpick.records import Assignment, Claim, Nic, Request, Rule
from vfpick.state import StateStore

Result = namedtuple("Result", "xml uuid name picks previous changed warnings")
Result.__doc__ = """xml: the resolved domain (bytes). picks: {mac: Pick}. previous: the
domain's claims before (for rollback). changed: the XML differs from the input."""


def libvirt_network_exists(config, name):
    """A libvirt network of this host (in the config's libvirt_config_dir)."""
    return configmod.network_file_exists((os.path.join(config.libvirt_config_dir, "networks"),), name)


def _unicast_mac(text):
    mac = domscan.normalize_mac(text)
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= set("0123456789abcdef") for p in parts):
        return False
    return not numbers.whole(parts[0], 0, 255, 16) & 1  # libvirt refuses multicast MACs


def _new_mac(taken, rng):
    # 52:54:00 is the prefix libvirt and qemu use for generated MACs.
    while True:
        mac = "52:54:00:%02x:%02x:%02x" % (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if mac not in taken:
            taken.add(mac)
            return mac


def effective(pool, overrides):
    """The Rule for *pool* given the domain's hostdev.Overrides for it."""
    return Rule(
        distinct=overrides.distinct or pool.distinct,
        strict=pool.strict if overrides.strict is None else overrides.strict,
        numa=overrides.numa or pool.numa,
    )


def store_for(config):
    return StateStore.for_config(config)


def running_vfs(config):
    """{vf: uuid} of VFs that running domains use, from libvirt's status XML."""
    used = domscan.scan_running(config.libvirt_run_dir,
                                cache_path=configmod.running_cache_path(config))
    return {vf: owner.uuid for vf, owner in used.items()}


def _keepable(topo, iface):
    """The interface's VF if it is still the one that was picked: a VF of the PF recorded
    for it. Another host (a migration, a restore elsewhere) can have a VF at the same address
    on another PF, and keeping it there could put two of the domain's NICs on one link."""
    record = topo.vfs.get(iface.vf) if iface.vf else None
    if record is None or (iface.recorded_pf and record.pf != iface.recorded_pf):
        return None
    return iface.vf


Interfaces = namedtuple("Interfaces", "pool managed")
Interfaces.__doc__ = """The NICs vfpick places: pool (hostdev.NetIface, not yet resolved) and
managed (hostdev.ManagedIface, resolved before)."""


def interfaces(config, doc, network_exists):
    """Interfaces of *doc*; UnknownPool/XmlError for a bad one.

    network_exists(name) -> bool: is a non-pool <source network> a libvirt network?"""
    dup = doc.duplicate_mac()
    if dup:
        raise XmlError("MAC %s is used twice in domain '%s'; give each NIC its own MAC (or "
                       "drop the <mac> of one: vfpick assigns one)" % (dup, doc.name or "?"))
    pool_nics = []
    for iface in doc.network_interfaces(pools=config.pools):
        if iface.network in config.pools:
            if iface.mac is not None and not _unicast_mac(iface.mac):
                raise XmlError("interface %d (network '%s') has an invalid mac address %r "
                               "(want six hex pairs, unicast, e.g. 52:54:00:aa:00:01)"
                               % (iface.index + 1, iface.network, iface.mac))
            pool_nics.append(iface)
        elif not iface.network or not network_exists(iface.network):
            raise UnknownPool(
                "network '%s' is neither a vfpick pool (pools: %s) nor a libvirt network of this host; "
                "fix <source network=...> or add [pool %s] to %s"
                % (iface.network or "", ", ".join(config.pools) or "none", iface.network or "NAME",
                   config.path))
    managed = doc.managed_interfaces()
    for iface in managed:
        if iface.pool not in config.pools:
            raise UnknownPool(
                "interface %s was resolved from pool '%s', which %s does not define (pools: %s)"
                % (iface.mac, iface.pool, config.path, ", ".join(config.pools) or "none"))
    return Interfaces(pool_nics, managed)


def _missing_pfs(config, pool):
    """Warnings for the pool's PFs that are not on this host; PoolError when none is."""
    if not pool.missing:
        return []
    gone = ", ".join(pool.missing)
    if not pool.pfs:
        raise PoolError("pool '%s' has none of its PFs on this host (%s not found: renamed or "
                        "removed? see 'ip -br link'); fix [pool %s] pfs in %s"
                        % (pool.name, gone, pool.name, config.path))
    return ["pool '%s': PF %s listed in %s is not on this host (renamed or removed?); picking "
            "from the %d PF%s present" % (pool.name, gone, config.path, len(pool.pfs),
                                           "" if len(pool.pfs) == 1 else "s")]


def macs_in_use(doc, claims):
    """MACs a new NIC must not get: the domain's own and every claim's ({vf: Claim})."""
    return set(doc.macs()) | {c.mac for c in claims.values() if c.mac}


Placement = namedtuple("Placement", "assignments picks warnings")
Placement.__doc__ = """Where a domain's NICs go: assignments {interface index: records.Assignment};
picks {mac: Pick}; warnings: one-line remarks (best-effort distinct, missing PFs)."""


def plan(config, doc, ifaces, claims, busy, topo, rng, avoid=frozenset(), targets=None):
    """Places every NIC of *ifaces* (Interfaces of *doc*, its uuid set); returns Placement.

    No I/O but sysfs links of the domain's other PCI hostdevs (PCIe affinity): claims is
    {vf: Claim} (a transaction's mapping, or an overlay for a dry run).
    avoid: PF addresses no NIC may be placed on (drained), not even a NIC that holds a VF
    there. targets: {mac: vf} the NICs to put on those VFs (a ClaimConflict when one is not
    free for this domain in its pool); other managed NICs keep their valid VFs.
    Raises a VfpickError when any pool cannot be met: then nothing is placed.
    """

    targets = targets or {}
    uuid, name = doc.uuid, doc.name
    macs_taken = macs_in_use(doc, claims)
    by_pool = {}  # pool -> list of (iface index, Nic)
    bandwidths = {}  # mac -> Bandwidth
    # A NIC keeps the VF this domain's claim for its MAC names on this host, before the
    # address in the XML: after `migrate --persistent` the definition libvirt wrote holds
    # the source host's addresses while the domain runs on the VFs the filter claimed here.
    claimed = {(c.mac, c.pool): c.vf for c in claims.values()
               if c.uuid == uuid and c.mac and c.vf in topo.vfs}
    for iface in ifaces.managed:
        keep = (targets.get(iface.mac) or claimed.get((iface.mac, iface.pool))
                or _keepable(topo, iface))
        by_pool.setdefault(iface.pool, []).append((iface.index, _nic(iface.mac, keep, iface.bandwidth)))
        bandwidths[iface.mac] = iface.bandwidth
    for iface in ifaces.pool:
        mac = iface.mac or _new_mac(macs_taken, rng)
        by_pool.setdefault(iface.network, []).append(
            (iface.index, _nic(mac, targets.get(mac), iface.bandwidth)))
        bandwidths[mac] = iface.bandwidth
    near = near_devices(config, doc)

    numa_nodes = doc.numa_nodes(topo.node_cpus)
    assignments, picks, held, warnings = {}, {}, [], []
    for pool_name in sorted(by_pool, key=list(config.pools).index):
        pool = config.pools[pool_name]
        warnings += _missing_pfs(config, pool)
        entries = sorted(by_pool[pool_name])
        rule = effective(pool, doc.overrides(pool_name))
        distinct = rule.distinct
        request = Request(
            uuid=uuid, pool=pool_name, nics=tuple(nic for _, nic in entries),
            distinct=distinct, strict=rule.strict, numa=rule.numa, policy=pool.policy,
            numa_nodes=numa_nodes, held=tuple(held), nic_rate=pool.nic_rate,
            guarantee=pool.guarantee, pcie_affinity=pool.pcie_affinity, near=near,
        )
        chosen = policy.pick(topo, policy.in_service(pool.pfs, avoid), claims, busy, request)
        if len(chosen) > 1 and not policy.distinct_met(topo, chosen, distinct):
            warnings.append("pool '%s': %d NICs of domain '%s' share a %s (distinct=%s is best "
                            "effort: not enough free %ss)" % (pool_name, len(chosen), name,
                                                             distinct, distinct, distinct))
        for (index, _), p in zip(entries, chosen):
            if p.mac in targets and p.vf != targets[p.mac]:
                raise ClaimConflict(
                    "VF %s is not free for NIC %s of domain '%s' in pool '%s' (claimed, in use, "
                    "drained or not in the pool); nothing changed" % (targets[p.mac], p.mac, name,
                                                                      pool_name))
            assignments[index] = Assignment(mac=p.mac, pool=pool_name, vf=p.vf, pf=p.pf, link=p.link,
                                            bandwidth=bandwidths.get(p.mac))
            picks[p.mac] = p
            held.append(p.vf)
    return Placement(assignments, picks, warnings)


def near_devices(config, doc):
    """PCIe paths of the domain's other PCI hostdevs (a GPU, an NVMe): PCIe affinity."""
    return tuple(p for p in (topology.pcie_path(config.sysfs_root, addr)
                             for addr in doc.pci_hostdevs()) if p)


def _nic(mac, keep, bw):
    rate, _peak, floor = bandwidth.rates(bw)
    return Nic(mac, keep, rate, floor)


def record(claims, uuid, name, assignments, busy, keep_previous=False, pending=None,
           pending_kept=False):
    """Writes the claims of *assignments* into a writable ClaimSet; returns the previous claims.

    A claim keeps its active flag when it stays. A VF the domain still runs on (*busy*, {vf:
    uuid}) stays its own (reconcile drops it once it stopped). keep_previous: the domain's other
    claims stay too (a move holds both sets until libvirt has the new definition).
    pending: the Writer about to hand the XML to libvirt: the new claims (pending_kept: the
    kept ones too) are marked pending for it until settle_claims."""
    previous = claims.for_uuid(uuid)
    mine = {c.vf: c for c in previous}
    kept = {a.vf for a in assignments.values()}
    if not keep_previous:
        for old in previous:
            if old.vf not in kept and busy.get(old.vf) != uuid:
                claims.drop(old.vf)
    for a in assignments.values():
        fields = dict(vf=a.vf, pf=a.pf, link=a.link, pool=a.pool, domain=name, uuid=uuid, mac=a.mac,
                      **bandwidth.claim_rates(a.bandwidth))
        # A kept claim keeps the rest (active, VF settings to restore): only placement changes.
        old = mine.get(a.vf)
        if old is None:
            claims.put(Claim(active=False, pending=pending, applied=None, restore=None, **fields))
        else:
            claims.put(old._replace(pending=pending if pending_kept else old.pending, **fields))
    return previous


def resolve(config, data, network_exists=None, rng=None, store=None, topo=None, pending=None,
            pending_kept=False, netlink_factory=None):
    """Resolves pool interfaces of domain XML *data*; returns Result.

    network_exists(name) -> bool tells whether a non-pool network is a libvirt network;
    default: ``libvirt_config_dir/networks/NAME.xml``. pending, pending_kept: see record.
    A VF a NIC leaves gets its trust/spoofchk put back (netlink_factory, for tests).
    Raises a VfpickError (unknown pool, exhausted, strict, bad XML); then nothing is claimed.
    """
    from vfpick.domain import failover  # lxml: only the commands that rewrite
    from vfpick.hostdev import DomainXml

    rng = rng or random.SystemRandom()
    if network_exists is None:
        def network_exists(name):
            return libvirt_network_exists(config, name)
    network_exists = _asked_before_the_lock(network_exists)
    doc = DomainXml.parse(data)
    ifaces = interfaces(config, doc, network_exists)
    for iface in ifaces.pool:
        failover_net = config.pools[iface.network].failover
        if failover_net is not None and failover_net.kind == "network":
            network_exists(failover_net.name)
    if not ifaces.pool and not ifaces.managed:
        return Result(xml=data, uuid=doc.uuid, name=doc.name, picks={}, previous=[],
                      changed=False, warnings=[])

    uuid = doc.ensure_uuid()
    name = doc.name
    if not name:
        raise XmlError("the domain has no <name>")
    topo = topo or topology.for_config(config)
    busy = running_vfs(config)

    store = store or store_for(config)
    with store.transaction() as claims:
        macs_taken = macs_in_use(doc, claims.mapping())
        if failover.pair_pool_nics(doc, config, lambda: _new_mac(macs_taken, rng), network_exists):
            # Interfaces moved (partners went in before their VFs) and MACs were given out.
            ifaces = interfaces(config, doc, network_exists)
        placed = plan(config, doc, ifaces, claims.mapping(), busy, topo, rng, avoid=claims.drained())
        doc.apply(placed.assignments)
        xml = doc.to_bytes()
        previous = record(claims, uuid, name, placed.assignments, busy, pending=pending,
                          pending_kept=pending_kept)
        # The VFs the domain left; one it still runs on is not ours to change under its guest.
        left = [c for c in previous if claims.get(c.vf) is None and not c.active]
        warnings = placed.warnings + vfsettings.put_back(config, left, netlink_factory)
    return Result(xml=xml, uuid=uuid, name=name, picks=placed.picks, previous=previous,
                  changed=xml != data, warnings=warnings)


def _asked_before_the_lock(network_exists):
    """network_exists remembering its answers: it may ask libvirt, which must never happen
    under the claims lock, so resolve asks every name it will need before taking it."""
    known = {}

    def remembered(name):
        if name not in known:
            known[name] = network_exists(name)
        return known[name]

    return remembered


ExtraNic = namedtuple("ExtraNic", "claim warnings unused")
ExtraNic.__doc__ = """claim_extra_nic's answer. claim: the new NIC's; warnings: lines to show;
unused: the domain's claims no definition used, as they were (dropped or reused by claim), for
a rollback (roll_back_extra_nic) or, once libvirt accepted, their VF settings (end_unused)."""


def claim_extra_nic(config, doc, uuid, pool_name, mac, definitions, rng=None, store=None,
                    pending=None, bw=None):
    """Picks and claims (reserved) a VF for one more NIC of domain *doc* (hotplug); returns
    ExtraNic. pending: the Writer about to ask libvirt to attach it (see settle_claims).

    The NIC is placed like one more NIC of a full resolve: distinct from the VFs the domain
    uses (*definitions*: DomainFacts of its live and persistent XML; its claims they use count
    as held too), the domain's policy overrides and NUMA nodes from *doc*. A claim of the
    domain that no definition uses (stale.unused_claims) is no NIC of it: reused when the pick
    lands on its VF, else dropped. Best effort that misses `distinct` is a warning, as in
    resolve. mac None: a new one, unique among the domain's and every claim's. bw: the NIC's
    <bandwidth> (bandwidth.Bandwidth): placed by its rate and floor, its rates in the claim.
    """
    from vfpick import stale

    pool = config.pools[pool_name]
    dup = doc.duplicate_mac()
    if dup:
        raise XmlError("MAC %s is used twice in domain '%s'; give each NIC its own MAC, then "
                       "attach" % (dup, doc.name or "?"))
    if mac is not None and not _unicast_mac(mac):
        raise XmlError("invalid mac address %r (want six hex pairs, unicast, e.g. 52:54:00:aa:00:01)"
                       % mac)
    topo = topology.for_config(config)
    busy = running_vfs(config)
    rule = effective(pool, doc.overrides(pool_name))
    domain_vfs = {vf for facts in definitions for vf, _mac in facts.hostdev_vfs + facts.actual_vfs}
    store = store or store_for(config)
    with store.transaction() as claims:
        macs = doc.macs() | {c.mac for c in claims.all() if c.mac and c.uuid != uuid}
        if mac is None:
            mac = _new_mac(macs, rng or random.SystemRandom())
        elif mac in macs:
            raise XmlError("MAC %s is already used by this domain or another domain's claim" % mac)
        mine = claims.for_uuid(uuid)
        unused = {c.vf: c for c in stale.unused_claims(mine, definitions)}
        held = domain_vfs | {c.vf for c in mine if c.vf not in unused}
        request = Request(uuid=uuid, pool=pool_name, nics=(_nic(mac, None, bw),),
                          distinct=rule.distinct, strict=rule.strict, numa=rule.numa, policy=pool.policy,
                          numa_nodes=doc.numa_nodes(topo.node_cpus), held=tuple(sorted(held)),
                          nic_rate=pool.nic_rate, guarantee=pool.guarantee,
                          pcie_affinity=pool.pcie_affinity, near=near_devices(config, doc))
        [p] = policy.pick(topo, policy.in_service(pool.pfs, claims.drained()), claims.mapping(),
                          busy, request)
        warnings = _missing_pfs(config, pool)
        distinct = rule.distinct
        units = {policy.unit_of(topo, distinct, topo.vfs[vf].pf) for vf in held if vf in topo.vfs}
        if distinct != "none" and policy.unit_of(topo, distinct, p.pf) in units:
            warnings.append("pool '%s': NIC %s of domain '%s' shares a %s with another of its NICs "
                            "(distinct=%s is best effort: not enough free %ss)"
                            % (pool_name, mac, doc.name, distinct, distinct, distinct))
        fields = dict(vf=p.vf, pf=p.pf, link=p.link, pool=pool_name, domain=doc.name, uuid=uuid,
                      mac=mac, active=False, pending=pending, **bandwidth.claim_rates(bw))
        reused = unused.get(p.vf)
        # A reused claim keeps what it must put back on the VF (trust/spoofchk) when it ends.
        claim = reused._replace(**fields) if reused else Claim(applied=None, restore=None, **fields)
        for left in unused.values():
            claims.drop(left.vf)
        claims.put(claim)
    return ExtraNic(claim, warnings, tuple(unused.values()))


def roll_back_extra_nic(store, extra, config=None, netlink_factory=None):
    """libvirt refused the NIC: its claim goes, the unused claims it replaced come back (no
    claim changed); one someone changed since is left alone. config: the VF settings a live
    attach applied (extra.claim.restore) are put back, under the lock. Returns warnings."""
    warnings = []
    with store.transaction() as claims:
        if claims.get(extra.claim.vf) == extra.claim:
            claims.drop(extra.claim.vf)
            if config is not None:
                warnings = vfsettings.put_back(config, [extra.claim], netlink_factory)
        for old in extra.unused:
            if claims.get(old.vf) is None:
                claims.put(old)
    return warnings


def end_unused(config, store, extra, netlink_factory=None):
    """libvirt took the NIC: the unused claims dropped for it end; their VFs get back the
    settings vfpick applied (under the lock, as at prepare). Returns warnings."""
    with store.transaction() as claims:
        ended = [c for c in extra.unused if claims.get(c.vf) is None]
        return vfsettings.put_back(config, ended, netlink_factory)


def settle_claims(store, uuid, writer):
    """libvirt answered: the claims *writer* marked pending for domain *uuid* are settled."""
    if not uuid or not any(c.pending == writer for c in store.snapshot().for_uuid(uuid)):
        return
    with store.transaction() as claims:
        for claim in claims.for_uuid(uuid):
            if claim.pending == writer:
                claims.put(claim._replace(pending=None))


def restore_claims(store, uuid, previous):
    """Rolls a domain's claims back to *previous* (libvirt refused the definition)."""
    with store.transaction() as claims:
        claims.drop_uuid(uuid)
        for claim in previous:
            if claims.get(claim.vf) is None:
                claims.put(claim)
