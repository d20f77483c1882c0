"""vfpick/moves.py against libvirt's in-process test driver (``test:///default``).

The test driver runs domains without devices or hooks, so "running" is real here (libvirt says
so); the prepare hook's part (a claim going active) is played by writing the claim. The same
moves against the real libvirtd: tests/test_drain_libvirt.py.
"""


import libvirt
import pytest
from lxml import etree

from clitools import hostdev_vfs
from libvirtfixtures import URI
from test_virt import claims, claims_of, libvirt_xml, state_bytes
from vfpick import moves, resolver
from vfpick.plan import policy
from vfpick.host import topology
from vfpick.domain import virt
from vfpick.commands import define as define_cmd
from vfpick.domscan import NS
from vfpick.errors import (ClaimConflict, DistinctImpossible, DomainChanged, DomainRunning,
                           LibvirtFailure, PoolExhausted)


def nic_xml(n, pool="fast"):
    # Every per-NIC setting a move must carry over: MAC, VLAN, alias, boot order, guest address.
    return ("<interface type='network'><mac address='52:54:00:00:00:%02x'/>"
            "<source network='%s'/><vlan><tag id='%d'/></vlan><alias name='ua-net%d'/>"
            "<boot order='%d'/><address type='pci' domain='0x0000' bus='0x00' slot='0x%02x' "
            "function='0x0'/></interface>" % (n, pool, 100 + n, n, n + 1, 3 + n))


def define(cfg, name, nics=2, first=0, policy_xml=""):
    ifaces = "".join(nic_xml(first + i) for i in range(nics))
    meta = ("<metadata><vfpick:domain xmlns:vfpick='http://vfpick.org/xmlns/libvirt/domain/1.0'>"
            "%s</vfpick:domain></metadata>" % policy_xml) if policy_xml else ""
    xml = ("<domain type='qemu'><name>%s</name>%s<memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64'>hvm</type></os><devices>%s</devices></domain>"
           % (name, meta, ifaces)).encode()
    return define_cmd.cmd_define(cfg, xml, URI).result


@pytest.fixture
def cfg(host):
    return host.write_config()


def nics(conn, name):
    """[(mac, vf, vlan, alias, boot, guest slot)] of the domain as libvirt has it."""
    root = etree.fromstring(libvirt_xml(conn, name).encode())
    out = []
    for iface, vf in zip(root.findall("devices/interface"), hostdev_vfs(etree.tostring(root))):
        out.append((iface.find("mac").get("address"), vf, iface.find("vlan/tag").get("id"),
                    iface.find("alias").get("name"), iface.find("boot").get("order"),
                    iface.find("address").get("slot")))
    return out


def pf_of(host, vf):
    return host.topology().vfs[vf].pf


def test_avoid_moves_only_the_nics_on_those_pfs_and_keeps_every_nic_setting(cfg, conn, host):
    d = define(cfg, "vm1")
    before = nics(conn, "vm1")
    leave = pf_of(host, before[0][1])
    move = moves.move_stopped_domain(cfg, conn, "vm1", avoid={leave})
    after = nics(conn, "vm1")
    assert [m.mac for m in move.nics] == [before[0][0]]
    assert move.nics[0].old == before[0][1] and move.nics[0].new.vf == after[0][1]
    assert pf_of(host, after[0][1]) != leave
    assert after[1] == before[1]                      # the other NIC stayed
    assert [n[:1] + n[2:] for n in after] == [n[:1] + n[2:] for n in before]  # settings kept
    topo = host.topology()
    assert topo.link_of[pf_of(host, after[0][1])] != topo.link_of[pf_of(host, after[1][1])]
    # exactly the new set is claimed (the old VF went back to the pool), inactive
    assert sorted((c.vf, c.mac, c.active) for c in claims_of(cfg, d.uuid)) == \
        sorted((n[1], n[0], False) for n in after)
    # the metadata follows the VF
    root = etree.fromstring(libvirt_xml(conn, "vm1").encode())
    recorded = {n.get("mac"): n.get("vf") for n in root.iter("{%s}nic" % NS)}
    assert recorded == {n[0]: n[1] for n in after}


def test_a_move_with_nothing_to_do_changes_nothing(cfg, conn, host):
    define(cfg, "vm1")
    xml, state = libvirt_xml(conn, "vm1"), state_bytes(cfg)
    unrelated = [a for a in host.topology().pfs if a not in
                 {pf_of(host, n[1]) for n in nics(conn, "vm1")}]
    move = moves.move_stopped_domain(cfg, conn, "vm1", avoid=set(unrelated))
    assert move.nics == ()
    assert libvirt_xml(conn, "vm1") == xml and state_bytes(cfg) == state


def test_targets_put_nics_on_the_given_vfs(cfg, conn, host):
    d = define(cfg, "vm1")
    before = nics(conn, "vm1")
    topo = host.topology()
    pf = pf_of(host, before[0][1])
    target = next(vf for vf in topo.pfs[pf].vfs if vf != before[0][1])
    move = moves.move_stopped_domain(cfg, conn, d.uuid, targets={before[0][0]: target})
    assert [(m.old, m.new.vf) for m in move.nics] == [(before[0][1], target)]
    assert [n[1] for n in nics(conn, "vm1")] == [target, before[1][1]]
    assert sorted(c.vf for c in claims_of(cfg, d.uuid)) == sorted([target, before[1][1]])


def test_a_target_that_is_not_free_or_breaks_distinctness_changes_nothing(cfg, conn, host):
    define(cfg, "vm1")
    other = define(cfg, "vm2", first=4)
    mine = nics(conn, "vm1")
    xml, state = libvirt_xml(conn, "vm1"), state_bytes(cfg)
    taken = claims_of(cfg, other.uuid)[0].vf
    with pytest.raises(ClaimConflict, match="VF %s is not free" % taken):
        moves.move_stopped_domain(cfg, conn, "vm1", targets={mine[0][0]: taken})
    # onto the link of its other NIC: two NICs on one link where there were two links
    topo = host.topology()
    same_link = next(vf for vf in topo.pfs[pf_of(host, mine[1][1])].vfs
                     if vf not in {c.vf for c in claims(cfg)})
    with pytest.raises(DistinctImpossible, match="nothing moved"):
        moves.move_stopped_domain(cfg, conn, "vm1", targets={mine[0][0]: same_link})
    with pytest.raises(Exception, match="no vfpick NIC with MAC 52:54:00:99:99:99"):
        moves.move_stopped_domain(cfg, conn, "vm1", targets={"52:54:00:99:99:99": same_link})
    assert libvirt_xml(conn, "vm1") == xml and state_bytes(cfg) == state


def test_strict_distinct_that_cannot_be_kept_refuses_the_whole_domain(cfg, conn, host):
    define(cfg, "vm1", policy_xml="<vfpick:policy distinct='card' strict='yes'/>")
    mine = nics(conn, "vm1")
    xml, state = libvirt_xml(conn, "vm1"), state_bytes(cfg)
    card = host.topology().card_of[pf_of(host, mine[0][1])]
    whole_card = {a for a, c in host.topology().card_of.items() if c == card}
    with pytest.raises(DistinctImpossible):
        moves.move_stopped_domain(cfg, conn, "vm1", avoid=whole_card)
    assert libvirt_xml(conn, "vm1") == xml and state_bytes(cfg) == state


def test_a_full_pool_refuses_the_move(cfg, conn, host):
    define(cfg, "vm1")
    xml, state = libvirt_xml(conn, "vm1"), state_bytes(cfg)
    with pytest.raises(PoolExhausted):  # every PF avoided: nowhere to go
        moves.move_stopped_domain(cfg, conn, "vm1", avoid=set(host.topology().pfs))
    assert libvirt_xml(conn, "vm1") == xml and state_bytes(cfg) == state


def test_a_running_domain_is_never_moved(cfg, conn, host):
    define(cfg, "vm1")
    conn.lookupByName("vm1").create()  # the test driver runs it
    xml, state = libvirt_xml(conn, "vm1"), state_bytes(cfg)
    with pytest.raises(DomainRunning, match="migrate it to another host, or stop it and run "
                                            "'vfpick repick vm1'"):
        moves.move_stopped_domain(cfg, conn, "vm1", avoid=set(host.topology().pfs))
    assert libvirt_xml(conn, "vm1") == xml and state_bytes(cfg) == state


def test_claims_gone_active_refuse_though_libvirt_says_stopped(cfg, conn, host):
    d = define(cfg, "vm1")
    with resolver.store_for(cfg).transaction() as cs:  # what the prepare hook does
        for c in cs.for_uuid(d.uuid):
            cs.put(c._replace(active=True))
    state = state_bytes(cfg)
    leave = pf_of(host, nics(conn, "vm1")[0][1])
    with pytest.raises(DomainRunning):
        moves.move_stopped_domain(cfg, conn, "vm1", avoid={leave})
    assert state_bytes(cfg) == state


class Intercept:
    """The test driver's connection, with a callback before each defineXML (a refusal or a
    race staged exactly between vfpick's reservation and its define)."""

    def __init__(self, conn, before_define):
        self._conn = conn
        self._before_define = before_define

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def defineXML(self, xml):
        self._before_define(xml)
        return self._conn.defineXML(xml)


def test_a_libvirt_refusal_rolls_the_reservation_back(cfg, conn, host):
    d = define(cfg, "vm1")
    old = sorted(claims_of(cfg, d.uuid))
    leave = pf_of(host, nics(conn, "vm1")[0][1])
    seen = []

    def refuse(xml):
        # while libvirt is asked, the domain holds both VF sets: its old VF is nobody's to take
        seen.append(sorted(c.vf for c in claims_of(cfg, d.uuid)))
        raise libvirt.libvirtError("staged refusal")

    xml = libvirt_xml(conn, "vm1")
    with pytest.raises(LibvirtFailure, match="refused the definition of 'vm1'.*nothing moved"):
        moves.move_stopped_domain(cfg, Intercept(conn, refuse), "vm1", avoid={leave})
    assert len(seen[0]) == 3 and {c.vf for c in old} < set(seen[0])
    assert sorted(claims_of(cfg, d.uuid)) == old and libvirt_xml(conn, "vm1") == xml


def test_a_domain_started_meanwhile_is_left_alone(cfg, conn, host):
    d = define(cfg, "vm1")
    old = {c.vf for c in claims_of(cfg, d.uuid)}
    leave = pf_of(host, nics(conn, "vm1")[0][1])

    def prepare_runs(xml):
        with resolver.store_for(cfg).transaction() as cs:
            for c in cs.for_uuid(d.uuid):
                if c.vf in old:
                    cs.put(c._replace(active=True))

    with pytest.raises(DomainRunning, match="started while vfpick moved it"):
        moves.move_stopped_domain(cfg, Intercept(conn, prepare_runs), "vm1", avoid={leave})
    # it runs on the old VFs (still claimed, active); its next boot's VF is reserved
    now = {c.vf: c.active for c in claims_of(cfg, d.uuid)}
    assert {vf for vf, active in now.items() if active} == old
    assert set(hostdev_vfs(libvirt_xml(conn, "vm1"))) <= set(now)


def test_a_domain_redefined_meanwhile_is_not_overwritten(cfg, conn, host):
    d = define(cfg, "vm1")
    old = sorted(claims_of(cfg, d.uuid))
    leave = pf_of(host, nics(conn, "vm1")[0][1])
    dom = conn.lookupByName("vm1")
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "edited", None, None,
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    edited = libvirt_xml(conn, "vm1")

    class LateEdit(Intercept):
        def lookupByName(self, name):
            return Twice(self._conn.lookupByName(name))

    class Twice:
        """The domain object whose persistent XML changes after vfpick first read it."""

        def __init__(self, dom):
            self._dom, self._reads = dom, 0

        def __getattr__(self, name):
            return getattr(self._dom, name)

        def XMLDesc(self, flags):
            self._reads += 1
            text = self._dom.XMLDesc(flags)
            return text.replace("edited", "before the edit") if self._reads == 1 else text

    with pytest.raises(DomainChanged, match="redefined while vfpick moved it"):
        moves.move_stopped_domain(cfg, LateEdit(conn, lambda xml: None), "vm1", avoid={leave})
    assert sorted(claims_of(cfg, d.uuid)) == old and libvirt_xml(conn, "vm1") == edited


def test_a_dry_run_plans_domains_one_after_the_other(cfg, conn, host):
    a, b = define(cfg, "vm1", nics=1), define(cfg, "vm2", nics=1, first=2)
    topo = topology.for_config(cfg)
    busy, state = {}, state_bytes(cfg)
    current = dict(resolver.store_for(cfg).snapshot().mapping())
    # leave every PF but one: both domains must land there, on different VFs
    keep = sorted(topo.pfs)[-1]
    avoid = set(topo.pfs) - {keep}
    planned = []
    for name in ("vm1", "vm2"):
        data = virt.inactive_xml(conn.lookupByName(name))
        move = moves.plan_move(cfg, topo, data, current, busy, avoid=avoid)
        current = moves.apply_to(current, move)
        planned.extend(m.new.vf for m in move.nics)
    assert len(set(planned)) == len(planned) >= 1
    assert all(topo.vfs[vf].pf == keep for vf in planned)
    assert {c.uuid for c in current.values()} == {a.uuid, b.uuid}
    assert state_bytes(cfg) == state  # planning wrote nothing


def test_in_service_filters_drained_pfs_in_pool_order():
    assert policy.in_service(("b", "a", "c"), frozenset({"a"})) == ("b", "c")
    assert policy.in_service(("b", "a"), frozenset()) == ("b", "a")


def test_drained_pfs_in_the_state_are_avoided_by_picks_and_left_by_moves(cfg, conn, host):
    d = define(cfg, "vm1")
    leave = pf_of(host, nics(conn, "vm1")[0][1])
    with resolver.store_for(cfg).transaction() as cs:
        cs.set_drained({leave})
    for n in range(4):  # new picks: never on the drained PF
        define(cfg, "new%d" % n, first=10 + 2 * n)
        assert leave not in {pf_of(host, vf) for _, vf, *_ in nics(conn, "new%d" % n)}
    before = nics(conn, "vm1")
    move = moves.move_stopped_domain(cfg, conn, "vm1")  # no avoid: the state's drained set
    assert [(m.old, m.new.vf) for m in move.nics] == [(before[0][1], nics(conn, "vm1")[0][1])]
    assert leave not in {c.pf for c in claims(cfg)}
    assert resolver.store_for(cfg).snapshot().drained() == {leave}
    assert len(claims_of(cfg, d.uuid)) == 2
