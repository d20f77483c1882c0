"""Property-based tests: the policy's invariants over random topologies and claim sets, and the
resolver/rewriter's over random domains against a simulated host.

Every expectation is computed independently of vfpick/plan/policy.py (feasibility, eligibility),
so a policy change that breaks an invariant fails here even when its own unit tests pass.
"""

import os
import random
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from lxml import etree

import domgen
import memtopo
from vfpick import domscan, resolver
from vfpick.plan import policy
from vfpick.host import simhost
from vfpick import config as configmod
from vfpick.errors import DistinctImpossible, PoolExhausted, VfpickError
from vfpick.records import Claim, Nic, Request
from vfpick.state import StateStore

SPEEDS = [None, 1000, 10000, 25000, 100000]

# --- strategies --------------------------------------------------------------------------------

port_st = st.fixed_dictionaries({
    "vfs": st.integers(0, 4),
    "speed": st.sampled_from(SPEEDS[1:]),
    "up": st.booleans(),
    "numa": st.sampled_from([0, 1, -1]),
    "parts": st.integers(1, 2),
})
cards_st = st.lists(st.lists(port_st, min_size=1, max_size=3), min_size=1, max_size=4)


@st.composite
def scenario(draw, allow_keep=False, **fixed):
    """(topology, pool_pfs, claims, busy, request); *fixed* pins Request fields."""
    cards = draw(cards_st)
    one_node = draw(st.booleans())
    topo = memtopo.build(cards, nodes=(0,) if one_node else (0, 1))
    pfs = sorted(topo.pfs)
    pool_pfs = draw(st.lists(st.sampled_from(pfs), min_size=1, unique=True)) if pfs else []
    # Sometimes a pool names a PF the host no longer has: the policy must ignore it.
    if draw(st.booleans()):
        pool_pfs.append("0000:ee:00.0")
    vfs = sorted(topo.vfs)
    claimed = draw(st.lists(st.sampled_from(vfs), unique=True)) if vfs else []
    claims = {}
    for vf in claimed:
        owner = draw(st.sampled_from(["me", "u1", "u2"]))
        pf = topo.vfs[vf].pf
        claims[vf] = Claim(vf, pf, topo.link_of[pf], "p", "dom-" + owner, owner,
                           "52:54:00:00:00:01", draw(st.booleans()))
    # Claims on VFs that no longer exist (sriov_numvfs lowered) must not confuse anything.
    if draw(st.booleans()):
        claims["0000:ee:01.0"] = Claim("0000:ee:01.0", "0000:ee:00.0", "gone", "p", "dom-u1",
                                       "u1", "52:54:00:00:00:02", True)
    busy_vfs = draw(st.lists(st.sampled_from(vfs), unique=True, max_size=4)) if vfs else []
    busy = {vf: draw(st.sampled_from(["me", "u3", "u1"])) for vf in busy_vfs}
    n = draw(st.integers(1, 5))
    nics = []
    for i in range(n):
        keep = None
        if allow_keep and vfs and draw(st.booleans()):
            keep = draw(st.sampled_from(vfs + ["0000:ee:02.0"]))
        nics.append(Nic("52:54:00:aa:00:%02x" % i, keep))
    nodes = draw(st.one_of(st.none(), st.sampled_from([frozenset([0]), frozenset([1]),
                                                       frozenset([0, 1])])))
    request = Request(
        uuid="me", pool="p", nics=tuple(nics),
        distinct=draw(st.sampled_from(["card", "link", "pf", "none"])),
        strict=draw(st.booleans()),
        numa=draw(st.sampled_from(["required", "preferred", "ignore"])),
        policy=draw(st.sampled_from(["spread", "spread", "pack"])),
        numa_nodes=nodes, held=(),
    )._replace(**fixed)
    return topo, pool_pfs, claims, busy, request


# --- an independent model of the hard filters ---------------------------------------------------

def _pool_vfs(topo, pool_pfs):
    out = []
    for pf in pool_pfs:
        if pf in topo.pfs:
            out.extend(vf for vf in topo.pfs[pf].vfs if vf in topo.vfs)
    return out


def _others(claims, busy, uuid):
    return ({vf for vf, c in claims.items() if c.uuid != uuid}
            | {vf for vf, u in busy.items() if u != uuid})


def _numa_local(topo, vf, nodes):
    node = topo.vfs[vf].numa_node
    if node is None or node < 0:
        return len(topo.node_cpus) <= 1
    return node in nodes


def _eligible(topo, pool_pfs, claims, busy, request):
    """Free VFs of the pool that pass the numa=required filter, in pool order."""
    taken = _others(claims, busy, request.uuid)
    out = [vf for vf in _pool_vfs(topo, pool_pfs) if vf not in taken]
    if request.numa == "required" and request.numa_nodes is not None:
        out = [vf for vf in out if _numa_local(topo, vf, request.numa_nodes)]
    return out


def _unit(topo, distinct, vf):
    pf = topo.vfs[vf].pf
    return {"card": topo.card_of[pf], "link": topo.link_of[pf], "pf": pf}[distinct]


def _up(topo, vf):
    return topo.links[topo.link_of[topo.vfs[vf].pf]].up


def _feasible(topo, eligible, request):
    n = len(request.nics)
    if request.strict and request.distinct != "none":
        return len({_unit(topo, request.distinct, vf) for vf in eligible}) >= n
    return len(eligible) >= n


def _call(topo, pool_pfs, claims, busy, request):
    return policy.pick(topo, pool_pfs, MappingProxyType(dict(claims)), dict(busy), request)


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- policy invariants ---------------------------------------------------------------------------

@PROPS
@given(scenario(allow_keep=True))
def test_picks_are_free_distinct_vfs_of_the_pool_or_nothing(case):
    topo, pool_pfs, claims, busy, request = case
    claims_before, busy_before = dict(claims), dict(busy)
    try:
        picks = _call(topo, pool_pfs, claims, busy, request)
    except (PoolExhausted, DistinctImpossible):
        picks = None
    # Pure: the inputs are untouched whatever happened (all-or-nothing has nothing to undo).
    assert claims == claims_before and busy == busy_before
    if picks is None:
        return
    taken = _others(claims, busy, request.uuid)
    pool = set(_pool_vfs(topo, pool_pfs))
    vfs = [p.vf for p in picks]
    assert len(picks) == len(request.nics)
    assert [p.mac for p in picks] == [nic.mac for nic in request.nics]
    assert len(set(vfs)) == len(vfs), "one VF handed out twice"
    for p in picks:
        assert p.vf in pool, p
        assert p.vf not in taken, "picked a VF claimed or used by another domain: %s" % p.vf
        assert p.pf == topo.vfs[p.vf].pf and p.link == topo.link_of[p.pf]
        assert p.card == topo.card_of[p.pf]


@PROPS
@given(scenario())
def test_exception_exactly_when_infeasible(case):
    """No keeps: a request fails iff the hard filters leave too few VFs (or units, strict)."""
    topo, pool_pfs, claims, busy, request = case
    feasible = _feasible(topo, _eligible(topo, pool_pfs, claims, busy, request), request)
    try:
        _call(topo, pool_pfs, claims, busy, request)
        ok = True
    except (PoolExhausted, DistinctImpossible) as exc:
        ok = False
        assert request.pool in str(exc)
    assert ok == feasible


@PROPS
@given(st.one_of(scenario(policy="spread"), scenario(strict=True))
       .filter(lambda case: case[4].distinct != "none"))
def test_distinct_met_whenever_feasible(case):
    """spread (or strict): when enough units have free eligible VFs on up links, no two NICs
    share one. Up links come first by design, so down-link units count only when no VF on an
    up link is eligible at all."""
    topo, pool_pfs, claims, busy, request = case
    eligible = _eligible(topo, pool_pfs, claims, busy, request)
    up = [vf for vf in eligible if _up(topo, vf)]
    candidates = up if up and not request.strict else eligible
    feasible = len({_unit(topo, request.distinct, vf) for vf in candidates}) >= len(request.nics)
    try:
        picks = _call(topo, pool_pfs, claims, busy, request)
    except (PoolExhausted, DistinctImpossible):
        assert not _feasible(topo, eligible, request)
        return
    if request.strict:
        assert policy.distinct_met(topo, picks, request.distinct)
    if feasible:
        assert policy.distinct_met(topo, picks, request.distinct), (
            [(p.vf, _unit(topo, request.distinct, p.vf)) for p in picks])


@PROPS
@given(scenario(numa="required").filter(lambda case: case[4].numa_nodes is not None))
def test_numa_required_never_leaves_the_nodes(case):
    topo, pool_pfs, claims, busy, request = case
    try:
        picks = _call(topo, pool_pfs, claims, busy, request)
    except (PoolExhausted, DistinctImpossible):
        return
    for p in picks:
        assert _numa_local(topo, p.vf, request.numa_nodes), (p, topo.vfs[p.vf].numa_node)


@PROPS
@given(scenario(policy="spread", strict=False))
def test_up_links_preferred(case):
    """Not strict, spread: a pick lands on a down link only once every eligible up VF is used."""
    topo, pool_pfs, claims, busy, request = case
    eligible = _eligible(topo, pool_pfs, claims, busy, request)
    up = [vf for vf in eligible if _up(topo, vf)]
    try:
        picks = _call(topo, pool_pfs, claims, busy, request)
    except (PoolExhausted, DistinctImpossible):
        return
    on_down = sum(1 for p in picks if not _up(topo, p.vf))
    assert on_down == max(0, len(request.nics) - len(up))
    # Order too: the down-link picks are the last NICs placed.
    flags = [_up(topo, p.vf) for p in picks]
    assert flags == sorted(flags, reverse=True)


@PROPS
@given(scenario(policy="pack", strict=False))
def test_pack_takes_the_first_eligible_vfs_in_list_order(case):
    topo, pool_pfs, claims, busy, request = case
    eligible = _eligible(topo, pool_pfs, claims, busy, request)
    try:
        picks = _call(topo, pool_pfs, claims, busy, request)
    except (PoolExhausted, DistinctImpossible):
        assert len(eligible) < len(request.nics)
        return
    assert [p.vf for p in picks] == eligible[:len(request.nics)]


@PROPS
@given(scenario(allow_keep=True), st.randoms(use_true_random=False))
def test_deterministic_and_blind_to_input_order(case, rnd):
    topo, pool_pfs, claims, busy, request = case
    try:
        first = _call(topo, pool_pfs, claims, busy, request)
    except (PoolExhausted, DistinctImpossible) as exc:
        first = type(exc)
    items = list(claims.items())
    rnd.shuffle(items)
    busy_items = list(busy.items())
    rnd.shuffle(busy_items)
    try:
        again = _call(topo, pool_pfs, dict(items), dict(busy_items), request)
    except (PoolExhausted, DistinctImpossible) as exc:
        again = type(exc)
    assert first == again


@PROPS
@given(scenario(allow_keep=True))
def test_kept_vfs_stay_when_valid(case):
    topo, pool_pfs, claims, busy, request = case
    taken = _others(claims, busy, request.uuid)
    pool = set(_pool_vfs(topo, pool_pfs))
    try:
        picks = _call(topo, pool_pfs, claims, busy, request)
    except (PoolExhausted, DistinctImpossible):
        return
    seen = set()
    for nic, p in zip(request.nics, picks):
        if nic.keep_vf and nic.keep_vf in pool and nic.keep_vf not in taken \
                and nic.keep_vf not in seen:
            assert p.vf == nic.keep_vf
        if nic.keep_vf:
            seen.add(nic.keep_vf)


@PROPS
@given(scenario())
def test_more_claims_never_make_a_request_succeed(case):
    """Monotone: claiming one more VF for someone else can turn success into failure, never
    failure into success."""
    topo, pool_pfs, claims, busy, request = case
    try:
        _call(topo, pool_pfs, claims, busy, request)
        return
    except (PoolExhausted, DistinctImpossible):
        pass
    free = [vf for vf in _pool_vfs(topo, pool_pfs) if vf not in claims and vf not in busy]
    assume(free)
    vf = free[0]
    pf = topo.vfs[vf].pf
    more = dict(claims)
    more[vf] = Claim(vf, pf, topo.link_of[pf], "p", "dom-x", "ux", "52:54:00:00:00:09", False)
    with pytest.raises((PoolExhausted, DistinctImpossible)):
        _call(topo, pool_pfs, more, busy, request)


# --- resolver / rewriter properties against a simulated host ------------------------------------

SPEC = {
    "nodes": {"0": "0-7", "1": "8-15"},
    "cards": [
        {"bus": "3b", "numa": 0, "pfs": [{"netdev": "ens1f0", "port": 0, "vfs": 6},
                                         {"netdev": "ens1f1", "port": 1, "vfs": 6}]},
        {"bus": "af", "numa": 1, "pfs": [{"netdev": "ens2f0", "port": 0, "vfs": 6},
                                         {"netdev": "ens2f1", "port": 1, "vfs": 6,
                                          "carrier": False}]},
    ],
}


@pytest.fixture(scope="module")
def simcfg(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("prophost"))
    sysfs = simhost.build(base, SPEC)
    for d in ("run", "etc/networks"):
        os.makedirs(os.path.join(base, d))
    open(os.path.join(base, "etc", "networks", "default.xml"), "w").close()
    path = os.path.join(base, "vfpick.ini")
    with open(path, "w") as f:
        f.write("[vfpick]\nstate_dir = %s/state\nsysfs_root = %s\nlibvirt_run_dir = %s/run\n"
                "libvirt_config_dir = %s/etc\n\n[pool fast]\npfs = ens1f0 ens2f0 ens2f1\n\n"
                "[pool slow]\npfs = ens1f1\ndistinct = pf\n" % (base, sysfs, base, base))
    return configmod.load(path)


EXTRAS = ["<vlan><tag id='7'/></vlan>", "<alias name='ua-x'/>", "<boot order='3'/>",
          "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>",
          "<model type='virtio'/>", "<!-- a comment -->", "<target dev='vnet0'/>"]
iface_st = st.tuples(st.sampled_from(["fast", "slow", "fast-mac", "default", "bridge", "passthru"]),
                     st.lists(st.sampled_from(EXTRAS), max_size=3, unique=True))


def _domain(ifaces, with_uuid, indent, head, name="prop-vm"):
    return domgen.build(ifaces, indent, head, name=name,
                        uuid="0f0f0f0f-0000-4000-8000-00000000abcd" if with_uuid else None)


def _skeleton(data):
    """Everything but interfaces, <metadata> and <uuid> (a missing one gets assigned)."""
    return domgen.skeleton(data, drop=("devices/interface", "metadata", "uuid"))


def _claims(cfg):
    return {c.vf: c for c in StateStore(cfg.state_dir).snapshot().all()}


def _reset(cfg):
    try:
        os.unlink(os.path.join(cfg.state_dir, "claims.json"))
    except FileNotFoundError:
        pass


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(iface_st, max_size=5), st.booleans(), st.sampled_from(["", "  ", "\t"]),
       st.sampled_from(["", "<title>t &amp; u</title>",
                        "<metadata><o:x xmlns:o='urn:other'>keep</o:x></metadata>"]),
       st.integers(0, 3))
def test_resolve_keeps_non_pool_parts_and_is_a_fixed_point(simcfg, ifaces, with_uuid, indent,
                                                           head, others):
    _reset(simcfg)
    # Other domains hold some VFs first, so the picks work around real claims.
    for i in range(others):
        other = _domain([("fast", [])], False, "", "", name="other%d" % i)
        resolver.resolve(simcfg, other, rng=random.Random(i))
    before = _claims(simcfg)
    src = _domain(ifaces, with_uuid, indent, head)
    try:
        result = resolver.resolve(simcfg, src, rng=random.Random(7))
    except VfpickError as exc:
        # The pool can run out (6+6 VFs in 'fast' minus others); then nothing changed.
        assert "exhausted" in str(exc) or "cannot give" in str(exc), exc
        assert _claims(simcfg) == before
        return
    out = result.xml
    assert _skeleton(out) == _skeleton(src)
    src_if = etree.fromstring(src).findall("devices/interface")
    out_if = etree.fromstring(out).findall("devices/interface")
    assert len(src_if) == len(out_if)
    pool_kinds = domgen.POOL_KINDS
    for (kind, _), old, new in zip(ifaces, src_if, out_if):
        if kind in pool_kinds:
            assert new.get("type") == "hostdev"
        else:
            assert etree.tostring(old) == etree.tostring(new), kind
    if not any(kind in pool_kinds for kind, _ in ifaces):
        assert out == src and _claims(simcfg) == before
        return
    # The claims recorded are exactly the VFs the XML names, each once, for this domain.
    facts = domscan.scan(out)
    mine = {vf: c for vf, c in _claims(simcfg).items() if c.uuid == facts.uuid}
    managed = {n.vf for n in facts.meta_nics}
    assert set(mine) == managed
    assert len(managed) == sum(kind in pool_kinds for kind, _ in ifaces)
    for c in mine.values():
        assert c.vf not in before
        assert c.pf in simcfg.pools[c.pool].pfs and not c.active
    # Resolving the resolved domain again changes nothing: same bytes, same claims.
    claims_after = _claims(simcfg)
    again = resolver.resolve(simcfg, out, rng=random.Random(99))
    assert again.xml == out and not again.changed
    assert _claims(simcfg) == claims_after
