"""Placement by rate, guarantees and PCIe affinity (vfpick.plan.policy): pure, records in memory."""

import itertools

import pytest

import memtopo
from vfpick.plan import policy
from vfpick.errors import GuaranteeImpossible, PcieAffinityImpossible
from vfpick.records import Claim, Nic, Request

_uuid = itertools.count()
MAC = "52:54:00:00:%02x:%02x"


def request(rates=(None,), floors=None, guarantee=False, nic_rate=1000, near=(),
            affinity="preferred", distinct="link", nodes=None):
    n = next(_uuid)
    floors = floors or (None,) * len(rates)
    nics = tuple(Nic(MAC % (n % 256, i), None, r, f) for i, (r, f) in enumerate(zip(rates, floors)))
    return Request("u%d" % n, "fast", nics, distinct, False, "preferred", "spread",
                   frozenset(nodes) if nodes else None, (), nic_rate, guarantee, affinity,
                   tuple(near))


def place(topo, req, claims):
    picks = policy.pick(topo, tuple(topo.pfs), claims, {}, req)
    for nic, p in zip(req.nics, picks):
        claims[p.vf] = Claim(p.vf, p.pf, p.link, "fast", "dom-" + req.uuid, req.uuid, p.mac,
                             False, rate_mbps=nic.rate, min_rate_mbps=nic.min_rate)
    return picks


def per_link(claims):
    out = {}
    for c in claims.values():
        out[c.link] = out.get(c.link, 0) + 1
    return out


def test_a_20g_nic_keeps_its_link_until_the_others_are_as_loaded():
    """The issue's example: a 20 Gb/s NIC on one of four 25G links, then NICs without a rate.
    By claims the 20G link would get the fifth NIC; by rate it gets none until the other three
    links carry 20 Gb/s each (20 NICs of the default 1000 Mb/s)."""
    topo = memtopo.build([[{"vfs": 32}] * 4], nodes=(0,))
    claims = {}
    [big] = place(topo, request(rates=(20000,)), claims)
    for _ in range(6):
        place(topo, request(), claims)
    assert big.link not in {c.link for c in claims.values() if c.vf != big.vf}
    for _ in range(54):  # 60 unrated NICs: 20 on each other link before the big one's gets one
        place(topo, request(), claims)
    counts = per_link(claims)
    assert counts[big.link] == 1 and sorted(counts.values()) == [1, 20, 20, 20]
    place(topo, request(), claims)
    assert per_link(claims)[big.link] == 2


@pytest.mark.parametrize("nic_rate", [1000, 1, 25000])
def test_without_rates_placement_is_claims_over_speed_whatever_nic_rate(nic_rate):
    topo = memtopo.build([[{"speed": 100000, "vfs": 16}, {"speed": 25000, "vfs": 16}],
                          [{"speed": 10000, "vfs": 16}, {"speed": 10000, "vfs": 16}]], nodes=(0,))
    by_rate, by_claims = {}, {}
    for _ in range(30):
        place(topo, request(nic_rate=nic_rate), by_rate)
        place(topo, request(), by_claims)
    assert [c.vf for c in sorted(by_rate.values(), key=lambda c: c.uuid)] and \
        sorted(by_rate) == sorted(by_claims)


@pytest.mark.parametrize("first,then,expect_link", [
    # An existing claim's rate weighs on its link: the next NIC avoids it.
    ((5000,), None, "c0p1"),
    # Two slow NICs weigh less than one fast one: by claims c0p0 (1 NIC) would win.
    ((5000, 100, 100), None, "c0p1"),
])
def test_a_claims_rate_is_its_weight(first, then, expect_link):
    topo = memtopo.build([[{"vfs": 8}, {"vfs": 8}]], nodes=(0,))
    claims = {}
    place(topo, request(rates=first, distinct="none"), claims)
    [pick] = place(topo, request(rates=(then,), nic_rate=1000), claims)
    assert pick.link == expect_link


@pytest.mark.parametrize("rates,floors,expect", [
    ((20000,), (None,), "c0p0"),          # average reserves when there is no floor
    ((30000,), (10000,), "c0p0"),         # the floor is what is guaranteed
    ((None,), (None,), "c0p0"),           # no rate: nothing reserved, always fits
])
def test_guarantee_reserves_floor_else_average(rates, floors, expect):
    topo = memtopo.build([[{"vfs": 8}]], nodes=(0,))
    claims = {}
    [pick] = place(topo, request(rates=rates, floors=floors, guarantee=True), claims)
    assert pick.link == expect


def test_guarantee_refuses_a_nic_that_fits_nowhere_and_claims_nothing():
    topo = memtopo.build([[{"vfs": 8}, {"vfs": 8}]], nodes=(0,))
    claims = {}
    place(topo, request(rates=(20000,), guarantee=True), claims)
    place(topo, request(rates=(30000,), floors=(15000,), guarantee=True), claims)
    before = dict(claims)
    with pytest.raises(GuaranteeImpossible) as err:
        place(topo, request(rates=(6000, 6000), guarantee=True), claims)
    assert str(err.value) == (
        "pool 'fast' cannot guarantee 6000 Mb/s to NIC 2 of 2 (guarantee=yes): room left per "
        "link: c0p0 5000 Mb/s, c0p1 4000 Mb/s; lower the NIC's <bandwidth>, free a NIC with a "
        "rate, or add a link")
    assert claims == before
    # What fits still goes where the room is, even onto a link that already has a NIC.
    [p1, p2] = place(topo, request(rates=(5000, 5000), guarantee=True, distinct="none"), claims)
    assert {p1.link, p2.link} == {"c0p0", "c0p1"}


def test_without_guarantee_rates_only_weigh():
    topo = memtopo.build([[{"vfs": 8}]], nodes=(0,))
    claims = {}
    place(topo, request(rates=(25000,)), claims)
    place(topo, request(rates=(25000,)), claims)
    assert per_link(claims) == {"c0p0": 2}


# A GPU under a PCIe switch (root port 00:01.0, switch 01:00.0, downstream port 02:00.0), one
# NIC card under the same switch (downstream 02:01.0), one under another root port, one under
# another host bridge.
SWITCH = ["pci0000:00", "0000:00:01.0", "0000:01:00.0"]
GPU = tuple(SWITCH + ["0000:02:00.0", "0000:03:00.0"])
CARDS = [
    [{"pcie": SWITCH + ["0000:02:01.0"]}],          # c0p0: shares root port and switch: depth 2
    [{"pcie": ["pci0000:00", "0000:00:02.0"]}],     # c1p0: same host bridge, other root port: 0
    [{"pcie": ["pci0000:80", "0000:80:01.0"]}],     # c2p0: another host bridge: 0
]


@pytest.mark.parametrize("path,other,depth", [
    (("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:01.0", "0000:04:00.0"), GPU, 2),
    (("pci0000:00", "0000:00:01.0", "0000:04:00.0"), GPU, 1),
    (("pci0000:00", "0000:00:02.0", "0000:05:00.0"), GPU, 0),
    (("pci0000:80", "0000:00:01.0", "0000:81:00.0"), GPU, 0),   # same names, other root
    ((), GPU, 0),
])
def test_shared_bridges(path, other, depth):
    assert policy.shared_bridges(path, other) == depth


@pytest.mark.parametrize("affinity,near,expect", [
    ("preferred", (GPU,), "c0p0"),
    ("required", (GPU,), "c0p0"),
    ("ignore", (GPU,), "c0p0"),       # all equal: the lowest load, then the lowest VF address
    ("preferred", (), "c0p0"),
])
def test_pcie_affinity_picks_the_card_beside_the_gpu(affinity, near, expect):
    topo = memtopo.build(CARDS, nodes=(0,))
    claims = {}
    [pick] = place(topo, request(near=near, affinity=affinity), claims)
    assert pick.link == expect


def test_pcie_affinity_comes_before_load_and_after_distinct():
    topo = memtopo.build(CARDS, nodes=(0,))
    claims = {}
    for _ in range(3):  # load c0p0 well above the others
        place(topo, request(rates=(10000,), affinity="ignore"), claims)
    load = per_link(claims)
    [pick] = place(topo, request(near=(GPU,)), claims)
    assert pick.link == "c0p0", load
    [ignored] = place(topo, request(near=(GPU,), affinity="ignore"), claims)
    assert ignored.link != "c0p0"
    # A 2-NIC domain: the second NIC goes to another link (distinct beats affinity).
    picks = place(topo, request(rates=(None, None), near=(GPU,)), claims)
    assert picks[0].link == "c0p0" and picks[1].link != "c0p0"


def test_pcie_affinity_required_refuses_when_no_pf_shares_a_bridge():
    topo = memtopo.build(CARDS[1:], nodes=(0,))
    claims = {}
    with pytest.raises(PcieAffinityImpossible) as err:
        place(topo, request(near=(GPU,), affinity="required"), claims)
    assert str(err.value) == (
        "pool 'fast' has no free VF on a PF that shares a PCIe bridge (root port or switch) with "
        "the domain's other PCI devices (0000:03:00.0) for NIC 1 of 1 (pcie_affinity=required); "
        "free one there or set pcie_affinity=preferred")
    assert claims == {}
    # preferred falls back to load.
    assert place(topo, request(near=(GPU,)), claims)


def test_a_domains_heaviest_nic_is_placed_first():
    """A 1G and a 20G NIC of one domain on a 100G and a 10G link (distinct=link): in NIC order
    the 1G NIC would take the 100G link and leave the 20G one a 10G link (load 2.0)."""
    topo = memtopo.build([[{"vfs": 8, "speed": 100000}, {"vfs": 8, "speed": 10000}]], nodes=(0,))
    light, heavy = place(topo, request(rates=(1000, 20000)), {})
    assert (light.link, heavy.link) == ("c0p1", "c0p0")
