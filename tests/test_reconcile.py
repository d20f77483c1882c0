"""vfpick/plan/reconcile.py: the pure planning, table-driven (no libvirt, no files)."""

import dataclasses

import pytest

from vfpick.plan import reconcile
from vfpick.domscan import DomainFacts, MetaNic
from vfpick.plan.reconcile import Action, DomainView
from vfpick.records import VF, Claim, Topology, Writer
from vfpick.state import ClaimSet

P0, P9 = "0000:3b:00.0", "0000:5e:00.0"          # P0 is pool "fast"'s PF, P9 in no pool
V0, V1, V2 = "0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"
W0 = "0000:5e:02.0"
U1, U2 = "11111111-0000-0000-0000-000000000001", "22222222-0000-0000-0000-000000000002"
MAC1, MAC2 = "52:54:00:00:00:01", "52:54:00:00:00:02"
ALIVE, DEAD = Writer("boot", 100, 5), Writer("boot", 200, 6)

TOPO = Topology(
    pfs={}, links={}, card_of={}, node_cpus={},
    vfs={vf: VF(vf, P0, i, 0, "iavf", None) for i, vf in enumerate((V0, V1, V2))}
    | {W0: VF(W0, P9, 0, 0, "iavf", None)},
    link_of={P0: "ens1f0", P9: "ens9f0"},
)
POOLS = ("fast",)
POOL_OF_PF = {P0: "fast"}


def claim(vf, uuid=U1, domain="vm1", active=False, pool="fast", mac=MAC1, pending=None):
    return Claim(vf=vf, pf=P0, link="ens1f0", pool=pool, domain=domain, uuid=uuid, mac=mac,
                 active=active, pending=pending)


def facts(*vfs, meta=()):
    """vfs: (vf, mac) pairs; meta: MetaNic records."""
    return DomainFacts(name=None, uuid=None, networks=(), hostdev_vfs=tuple(vfs),
                       meta_nics=tuple(meta), policy_overrides=(), interesting=True, actual_vfs=(),
                       vfpick_meta=bool(meta))


def nic(mac=MAC1, pool="fast", vf=V0):
    return MetaNic(mac, pool, vf, P0, "ens1f0")


def defined(name, *vfs, meta=()):
    return DomainView(name, True, False, None, facts(*vfs, meta=meta))


def running(name, *vfs, meta=(), persistent=True):
    f = facts(*vfs, meta=meta)
    return DomainView(name, persistent, True, f, f if persistent else None)


def claimset(*claims, generation=1, gens=None):
    gens = gens or {}
    return ClaimSet({c.vf: c for c in claims}, False, generation,
                    {c.vf: gens.get(c.vf, 1) for c in claims})


def summary(actions):
    return sorted((a.verb, a.claim.vf if a.claim else a.domain,
                   a.claim.domain if a.claim else None, a.claim.active if a.claim else None)
                  for a in actions)


CASES = [
    ("libvirt has no such domain: drop",
     [claim(V0)], {}, (), [("drop", V0, "vm1", False)]),
    ("libvirt could not describe the domain: keep",
     [claim(V0)], {U1: None}, (), []),
    ("the definition no longer uses the VF: drop",
     [claim(V0), claim(V1)], {U1: defined("vm1", (V1, MAC1), meta=[nic(vf=V1)])}, (),
     [("drop", V0, "vm1", False)]),
    ("started: update to active",
     [claim(V0)], {U1: running("vm1", (V0, MAC1), meta=[nic()])}, (), [("update", V0, "vm1", True)]),
    ("stopped: update to inactive",
     [claim(V0, active=True)], {U1: defined("vm1", (V0, MAC1), meta=[nic()])}, (),
     [("update", V0, "vm1", False)]),
    ("renamed: update",
     [claim(V0)], {U1: defined("vm1-new", (V0, MAC1), meta=[nic()])}, (),
     [("update", V0, "vm1-new", False)]),
    ("in agreement: nothing",
     [claim(V0)], {U1: defined("vm1", (V0, MAC1), meta=[nic()])}, (), []),
    ("pending, libvirt has it: update clears the marker",
     [claim(V0, pending=DEAD)], {U1: defined("vm1", (V0, MAC1), meta=[nic()])}, (),
     [("update", V0, "vm1", False)]),
    ("pending, libvirt has no such domain: drop",
     [claim(V0, pending=DEAD)], {}, (), [("drop", V0, "vm1", False)]),
    ("unsettled claim: no drop",
     [claim(V0, pending=ALIVE)], {}, (V0,), []),
    ("unsettled VF: no add",
     [], {U2: running("vm2", (V0, MAC2))}, (V0,), []),
    ("running domain on an unclaimed pool VF: add, pool of its PF",
     [], {U2: running("vm2", (V1, MAC2))}, (), [("add", V1, "vm2", True)]),
    ("stopped domain resolved to an unclaimed VF: add from its metadata",
     [], {U2: defined("vm2", (V1, MAC2), meta=[nic(mac=MAC2, vf=V1)])}, (), [("add", V1, "vm2", False)]),
    ("stopped hand-made hostdev: left to prepare",
     [], {U2: defined("vm2", (V1, MAC2))}, (), []),
    ("a VF of no pool, unmanaged: not vfpick's",
     [], {U2: running("vm2", (W0, None))}, (), []),
    ("running domain on another domain's VF: conflict, reported",
     [claim(V0)], {U1: defined("vm1", (V0, MAC1), meta=[nic()]), U2: running("thief", (V0, None))}, (),
     [("conflict", V0, "vm1", False)]),
    ("metadata without pool, running on a pool VF: invalid, and the VF recorded by its PF",
     [], {U2: running("vm2", (V1, MAC2), meta=[nic(mac=MAC2, pool=None, vf=V1)])}, (),
     [("add", V1, "vm2", True), ("invalid", "vm2", None, None)]),
    ("metadata naming an unknown pool, stopped: invalid only (one line for live and config)",
     [], {U2: defined("vm2", (V1, MAC2), meta=[nic(mac=MAC2, pool="gone", vf=V1)])}, (),
     [("invalid", "vm2", None, None)]),
    ("metadata with a bad MAC and one with a bad VF: one line each, the good one handled",
     [], {U2: running("vm2", (V1, MAC2), (V2, "zz"), (V0, MAC1), persistent=False,
                      meta=[nic(mac=MAC2, vf=None), nic(mac="zz", vf=V2), nic(mac=MAC1, vf=V0)])}, (),
     [("add", V0, "vm2", True), ("add", V1, "vm2", True), ("add", V2, "vm2", True),
      ("invalid", "vm2", None, None), ("invalid", "vm2", None, None)]),
]


@pytest.mark.parametrize("what, claims, views, unsettled, expected", CASES, ids=[c[0] for c in CASES])
def test_plan(what, claims, views, unsettled, expected):
    actions = reconcile.plan(POOLS, POOL_OF_PF, claimset(*claims), views, TOPO, frozenset(unsettled))
    assert summary(actions) == sorted(expected)
    for action in actions:
        line = action.line()
        assert "\n" not in line and action.reason in line
        if action.claim is not None and action.verb in ("add", "update"):
            assert action.claim.pending is None


def test_invalid_lines_name_the_record_and_the_fix():
    views = {U2: defined("vm2", (V1, MAC2), meta=[nic(mac=MAC2, pool=None, vf=V1)])}
    (action,) = reconcile.plan(POOLS, POOL_OF_PF, claimset(), views, TOPO)
    assert action.line() == (
        "invalid: domain 'vm2': <vfpick:nic mac='52:54:00:00:00:02' pool=None vf='0000:3b:02.1'> "
        "has no pool; left alone (fix it and run 'vfpick repick vm2')")
    assert Action("drop", claim(V0), "gone").line(dry_run=True) == "would drop %s (vm1, pool fast): gone" % V0


SNAP = claimset(claim(V0), claim(V1, pending=ALIVE), claim(V2, pending=DEAD), generation=3,
                gens={V0: 1, V1: 2, V2: 3})


def _now(*claims, generation=3, gens=None):
    return claimset(*claims, generation=generation, gens=gens)


UNSETTLED = [
    ("nothing changed: only the live writer's claim",
     _now(claim(V0), claim(V1, pending=ALIVE), claim(V2, pending=DEAD), gens={V0: 1, V1: 2, V2: 3}),
     {V1}),
    ("a claim changed since the snapshot",
     _now(claim(V0, active=True), claim(V1, pending=ALIVE), claim(V2, pending=DEAD), generation=4,
          gens={V0: 4, V1: 2, V2: 3}),
     {V0, V1}),
    ("dropped and written again, equal: another generation",
     _now(claim(V0), claim(V1, pending=ALIVE), claim(V2, pending=DEAD), generation=5,
          gens={V0: 5, V1: 2, V2: 3}),
     {V0, V1}),
    ("a claim added and one dropped since",
     _now(claim(V1, pending=ALIVE), claim(V2, pending=DEAD), claim(W0), generation=4,
          gens={V1: 2, V2: 3, W0: 4}),
     {V0, V1, W0}),
    ("the file was rebuilt since (generation went back): nothing is judged",
     _now(claim(V0), generation=1, gens={V0: 1}),
     {V0, V1, V2}),
]


@pytest.mark.parametrize("what, now, expected", UNSETTLED, ids=[c[0] for c in UNSETTLED])
def test_unsettled(what, now, expected):
    assert reconcile.unsettled(now, SNAP, {ALIVE}) == frozenset(expected)


def test_records_are_immutable_and_not_indexable():
    view = defined("vm1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.name = "x"
    with pytest.raises(TypeError):
        view[0]  # fields by name only
