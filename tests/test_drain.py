"""`vfpick drain` / `undrain` / status / metrics through cli.main, against libvirt's test driver.

The same against the real libvirtd (domains defined with `vfpick define`, started through the
hook): tests/test_drain_libvirt.py.
"""

import json

import pytest

from clitools import domain, hostdev_vfs
from libvirtfixtures import URI
from test_virt import claims, claims_of, libvirt_xml, state_bytes
from vfpick import cli, resolver
from vfpick.commands import define as define_cmd
from vfpick.commands.metrics import exposition

from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def cfg(host):
    return host.write_config()


def define(cfg, name, nics=2):
    return define_cmd.cmd_define(cfg, domain(name, nics=nics), URI).result


def run(host, capsys, *args):
    code = cli.main(["--config", host.config_path] + list(args))
    out, err = capsys.readouterr()
    return code, out, err


def drain(host, capsys, target, *extra):
    return run(host, capsys, "drain", target, "--connect", URI, *extra)


def status(host, capsys):
    code, out, _ = run(host, capsys, "status", "--json")
    assert code == 0
    return json.loads(out)


def pf_of_vf(host, vf):
    return host.topology().vfs[vf].pf


def test_drain_a_pf_moves_stopped_domains_and_new_picks_avoid_it(cfg, conn, host, capsys):
    for n in range(4):
        define(cfg, "vm%d" % n)
    topo = host.topology()
    pf = next(a for a, p in topo.pfs.items() if p.netdev == "ens1f0")
    on_pf = sorted({c.domain for c in claims(cfg) if c.pf == pf})
    assert on_pf
    before = {n: libvirt_xml(conn, n) for n in on_pf}
    state = state_bytes(cfg)

    code, out, err = drain(host, capsys, "ens1f0", "--dry-run")
    assert code == 0 and err == ""
    assert out.startswith("would drain PF ens1f0 (%s)" % pf)
    assert out.count("would move domain") == len(on_pf)
    planned = [line.split(" -> ")[1].split()[0] for line in out.splitlines() if " -> " in line]
    assert len(planned) == len(set(planned)) == len(on_pf)  # the plan never hands a VF twice
    assert all(pf_of_vf(host, vf) != pf for vf in planned)
    assert state_bytes(cfg) == state and {n: libvirt_xml(conn, n) for n in on_pf} == before

    code, out, err = drain(host, capsys, "ens1f0")
    assert code == 0 and err == "", err
    assert out.startswith("drained PF ens1f0 (%s): new picks avoid it" % pf)
    assert "%d domain(s) moved, 0 running, 0 could not move" % len(on_pf) in out
    assert not [c for c in claims(cfg) if c.pf == pf]
    for name in on_pf:  # redefined in libvirt, claims follow the definition
        vfs = hostdev_vfs(libvirt_xml(conn, name))
        assert pf not in {pf_of_vf(host, vf) for vf in vfs}
        uuid = conn.lookupByName(name).UUIDString()
        assert sorted(c.vf for c in claims_of(cfg, uuid)) == sorted(vfs)
    for n in range(4, 8):
        define(cfg, "vm%d" % n)
    assert not [c for c in claims(cfg) if c.pf == pf]

    report = status(host, capsys)
    assert report["drained"] == [{"pf": pf, "netdev": "ens1f0", "link": "ens1f0", "present": True}]
    rows = {p["pf"]: p for pool in report["pools"] for link in pool["links"] for p in link["pfs"]}
    assert rows[pf]["drained"] and not any(r["drained"] for a, r in rows.items() if a != pf)
    _, table, _ = run(host, capsys, "status")
    assert "up drained" in table and "drained: PF ens1f0 (%s), link ens1f0" % pf in table

    # drained again: says so, nothing left to move
    code, out, _ = drain(host, capsys, pf)
    assert code == 0 and out.startswith("PF ens1f0 (%s) was already drained" % pf)

    code, out, _ = run(host, capsys, "undrain", "ens1f0")
    assert code == 0 and out == "undrained PF ens1f0 (%s): back in service, new picks fill it " \
                                "first\n" % pf
    assert status(host, capsys)["drained"] == []
    assert b"drained" not in state_bytes(cfg)
    # the emptiest PF now: the next NICs land there
    new = define(cfg, "after", nics=1)
    assert [c.pf for c in claims_of(cfg, new.uuid)] == [pf]
    code, out, _ = run(host, capsys, "undrain", "ens1f0")
    assert code == 0 and out == "PF ens1f0 (%s) was not drained\n" % pf


def test_drain_a_link_drains_each_of_its_pfs(make_host, capsys, conn):
    host = make_host("npar")  # ens3f0 and ens3f2 partition port 0: one link
    cfg = host.write_config()
    for n in range(3):
        define(cfg, "vm%d" % n)
    topo = host.topology()
    link = next(name for name, link in topo.links.items() if len(link.pfs) == 2 and
                {topo.pfs[a].netdev for a in link.pfs} == {"ens3f0", "ens3f2"})
    code, out, err = drain(host, capsys, link)
    assert out.startswith("drained link %s" % link), out
    assert code == 0, err
    # one link left for two NICs each: best effort (distinct=link is not strict), said on stderr
    assert err.count("vfpick: warning: pool 'fast': 2 NICs of domain") == 3, err
    assert {r["pf"] for r in status(host, capsys)["drained"]} == set(topo.links[link].pfs)
    assert not [c for c in claims(cfg) if c.link == link]
    code, out, _ = run(host, capsys, "undrain", link)
    assert code == 0 and out.startswith("undrained link %s" % link)


def test_unknown_target_is_one_line_and_changes_nothing(cfg, conn, host, capsys):
    define(cfg, "vm1")
    state = state_bytes(cfg)
    for verb in ("drain", "undrain"):
        code, out, err = run(host, capsys, verb, "ens9f9")
        assert code == 1 and out == ""
        assert err.startswith("vfpick: 'ens9f9' is neither a PF nor a link of vfpick's pools")
        assert "ens1f0 (0000:3b:00.0)" in err and err.count("\n") == 1
    assert state_bytes(cfg) == state


def test_a_domain_that_cannot_move_is_one_line_and_left_whole(make_host, conn, capsys):
    host = make_host()
    cfg = host.write_config(pools={"fast": "pfs = ens1f0 ens1f1\n"})  # 16 VFs
    define(cfg, "a")
    define(cfg, "b")
    filler = define(cfg, "filler", nics=12)  # the pool is now full
    assert len(claims(cfg)) == 16
    victims = sorted({c.domain for c in claims(cfg) if c.link == "ens1f0"} - {"filler"})
    before = {n: libvirt_xml(conn, n) for n in victims}
    state_before = {c.vf: c for c in claims(cfg) if c.domain in victims}
    code, out, err = drain(host, capsys, "ens1f0")
    assert code == 1
    lines = err.splitlines()
    # one line per domain that could not move (filler too: it has NICs there), nothing else
    assert len(lines) == len(victims) + 1 and all(l.startswith("vfpick: domain '") for l in lines)
    assert all("cannot leave PF ens1f0" in l and "exhausted" in l for l in lines), lines
    assert "0 domain(s) moved, 0 running, %d could not move" % len(lines) in out
    assert {n: libvirt_xml(conn, n) for n in victims} == before
    assert {c.vf: c for c in claims(cfg) if c.domain in victims} == state_before
    # the drain mark stays: once room is made, the same drain moves them
    assert run(host, capsys, "release", "filler")[0] == 0
    conn.lookupByUUIDString(filler.uuid).undefine()
    code, out, err = drain(host, capsys, "ens1f0")
    assert code == 0, err
    assert "was already drained" in out and "%d domain(s) moved" % len(victims) in out


def test_running_domains_are_listed_with_what_to_do(cfg, conn, host, capsys):
    busy = define(cfg, "busy")
    conn.lookupByName("busy").create()  # the test driver runs it
    for n in range(3):  # spread: every PF now holds two NICs, one of them a stopped domain's
        define(cfg, "idle%d" % n)
    busy_before = sorted(claims_of(cfg, busy.uuid))
    held = busy_before[0]
    idle = sorted(c.domain for c in claims(cfg) if c.pf == held.pf and c.uuid != busy.uuid)
    assert len(idle) == 1
    netdev = host.topology().pfs[held.pf].netdev
    code, out, err = drain(host, capsys, netdev)
    assert code == 0, err
    assert ("running domain 'busy' (%s) stays on %s: migrate it to another host (virsh "
            "migrate), stop it and run 'vfpick repick busy', or drain with --live if its NICs "
            "are failover pairs" % (busy.uuid, held.vf)) in out
    assert "moved domain '%s'" % idle[0] in out
    assert "1 domain(s) moved, 1 running, 0 could not move" in out
    assert sorted(claims_of(cfg, busy.uuid)) == busy_before
    assert [c.uuid for c in claims(cfg) if c.pf == held.pf] == [busy.uuid]


def test_undrain_of_a_pf_gone_from_the_config(cfg, conn, host, capsys):
    pf = next(a for a, p in host.topology().pfs.items() if p.netdev == "ens2f1")
    assert drain(host, capsys, "ens2f1")[0] == 0
    host.write_config(pools={"fast": "pfs = ens1f0 ens1f1 ens2f0\n"})
    _, table, _ = run(host, capsys, "status")
    assert "drained: PF - (%s), not present (vfpick undrain %s)" % (pf, pf) in table
    code, out, _ = run(host, capsys, "undrain", pf)
    assert code == 0 and out.startswith("undrained PF %s" % pf)
    assert status(host, capsys)["drained"] == []


def test_metrics_export_drained_pfs_and_links(cfg, conn, host, capsys):
    busy = define(cfg, "busy", nics=1)
    conn.lookupByName("busy").create()  # stays where it is: what the alert rule looks for
    pf = claims_of(cfg, busy.uuid)[0].pf
    netdev = host.topology().pfs[pf].netdev
    assert drain(host, capsys, netdev)[0] == 0
    families = {f.name: f for f in text_string_to_metric_families(exposition(cfg).decode())}
    pfs = {s.labels["pf"]: s.value for s in families["vfpick_pf_drained"].samples}
    assert pfs == {a: (1.0 if a == pf else 0.0) for a in host.topology().pfs}
    links = {s.labels["link"]: s.value for s in families["vfpick_link_drained"].samples}
    assert links[netdev] == 1.0 and sum(links.values()) == 1.0
    # VfpickDrainedPfStillClaimed: drained, and claimed VFs on it
    claimed = sum(s.value for s in families["vfpick_vfs"].samples
                  if s.labels["pf"] == pf and s.labels["state"] in ("reserved", "active"))
    assert claimed == 1
    assert resolver.store_for(cfg).snapshot().drained() == {pf}


def test_a_claim_the_definition_no_longer_uses_is_reported_not_moved(cfg, conn, host, capsys):
    d = define(cfg, "vm1", nics=1)
    conn.defineXML(domain("vm1", nics=0, uuid=d.uuid).decode())  # hand-edited: no vfpick NIC
    held = claims_of(cfg, d.uuid)[0]
    code, out, err = drain(host, capsys, held.pf)
    assert code == 1 and err == ("vfpick: domain 'vm1' holds %s on PF %s, but its definition "
                                 "does not use it; drop the claim with 'vfpick reconcile'\n"
                                 % (held.vf, held.pf if not host.topology().pfs[held.pf].netdev
                                    else "%s (%s)" % (host.topology().pfs[held.pf].netdev,
                                                      held.pf)))
    assert claims_of(cfg, d.uuid) == [held]


def test_drain_of_a_failover_pool_moves_the_vf_and_keeps_its_virtio_partner(make_host, conn,
                                                                               capsys):
    from lxml import etree

    host = make_host()
    cfg = host.write_config({"fast": "pfs = %s\nfailover = bridge:br0\n" % " ".join(
        host.netdevs())})
    d = define(cfg, "mig", nics=2)

    def pairs():
        """{mac: {"virtio": (alias, teaming), "vf": (VF, teaming, persistent)}}"""
        out = {}
        for iface in etree.fromstring(libvirt_xml(conn, "mig").encode()).findall("devices/interface"):
            half = out.setdefault(iface.find("mac").get("address"), {})
            teaming = iface.find("teaming")
            if iface.get("type") == "bridge":
                half["virtio"] = (iface.find("alias").get("name"), teaming.get("type"))
            else:
                [vf] = hostdev_vfs(b"<domain><devices>%s</devices></domain>" % etree.tostring(iface))
                half["vf"] = (vf, teaming.get("type"), teaming.get("persistent"))
        return out

    before = pairs()
    assert len(before) == 2 and all(set(p) == {"virtio", "vf"} for p in before.values())
    mac, pair = sorted(before.items())[0]
    pf = pf_of_vf(host, pair["vf"][0])
    code, out, err = drain(host, capsys, pf)
    assert code == 0, err
    after = pairs()
    assert after[mac]["virtio"] == pair["virtio"]                  # the partner is untouched
    assert after[mac]["vf"][1:] == pair["vf"][1:]                  # still its transient half
    assert pf_of_vf(host, after[mac]["vf"][0]) != pf               # on another PF now
    assert sorted(c.vf for c in claims_of(cfg, d.uuid)) == sorted(p["vf"][0] for p in after.values())


def test_libvirt_unreachable_keeps_the_mark_and_says_to_run_again(cfg, conn, host, capsys):
    d = define(cfg, "vm1", nics=1)
    held = claims_of(cfg, d.uuid)
    code, out, err = run(host, capsys, "drain", held[0].pf, "--connect", "bogus:///nowhere")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("vfpick: cannot connect to bogus:///nowhere")
    assert "is drained, but none of its 1 domain(s) was moved: run the drain again" in err
    assert resolver.store_for(cfg).snapshot().drained() == {held[0].pf}
    assert claims_of(cfg, d.uuid) == held
    code, out, err = run(host, capsys, "drain", held[0].pf, "--connect", URI)  # libvirt is back
    assert code == 0 and "1 domain(s) moved" in out, err


def test_drain_moves_restore_the_distinct_level_on_the_way(cfg, conn, host, capsys):
    topo = host.topology()
    card2 = frozenset(pf for pf in topo.pfs if topo.link_of[pf] in ("ens2f0", "ens2f1"))
    with resolver.store_for(cfg).transaction() as cs:
        cs.set_drained(card2)
    define(cfg, "web3", nics=3)
    links = sorted(topo.link_of[c.pf] for c in claims(cfg))
    assert len(set(links)) == 2  # best effort: 3 NICs on ens1f0, ens1f1
    with resolver.store_for(cfg).transaction() as cs:
        cs.set_drained(frozenset())
    code, out, err = drain(host, capsys, "ens1f1")
    assert code == 0 and err == "", err
    assert "(restores distinct)" in out
    after = [topo.link_of[c.pf] for c in claims(cfg)]
    assert len(set(after)) == 3 and "ens1f1" not in after, after
    assert sorted(c.vf for c in claims(cfg)) == sorted(hostdev_vfs(libvirt_xml(conn, "web3")))


def test_drain_live_of_a_plain_vf_nic_needs_allow_nic_gap_and_says_so(cfg, conn, host, capsys):
    busy = define(cfg, "busy")
    conn.lookupByName("busy").create()  # the test driver runs it
    before = sorted(claims_of(cfg, busy.uuid))
    netdev = host.topology().pfs[before[0].pf].netdev
    state = state_bytes(cfg)
    code, out, err = drain(host, capsys, netdev, "--live", "--dry-run")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("vfpick: running domain 'busy' stays on PF %s" % netdev)
    assert "is a plain VF (no failover partner)" in err and "--allow-nic-gap" in err
    assert state_bytes(cfg) == state
    code, out, err = drain(host, capsys, netdev, "--allow-nic-gap")
    assert code == 1 and err == "vfpick: --allow-nic-gap moves running domains' plain VF NICs: " \
        "it needs --live\n"
    assert state_bytes(cfg) == state
    code, out, err = drain(host, capsys, netdev, "--live", "--allow-nic-gap", "--dry-run")
    assert code == 0, err
    assert "would move running domain 'busy' (%s) live:" % busy.uuid in out
    assert state_bytes(cfg) == state and sorted(claims_of(cfg, busy.uuid)) == before


def test_drain_live_where_libvirt_cannot_detach_leaves_the_domain_on_its_vf(cfg, conn, host,
                                                                            capsys):
    # The test driver has no device hotplug: the detach is refused for real, first step.
    busy = define(cfg, "busy")
    conn.lookupByName("busy").create()
    before = sorted(claims_of(cfg, busy.uuid))
    netdev = host.topology().pfs[before[0].pf].netdev
    code, out, err = drain(host, capsys, netdev, "--live", "--allow-nic-gap")
    assert code == 1 and err.count("\n") == 1, err
    assert "libvirt refused to detach VF %s from domain 'busy'" % before[0].vf in err
    assert "it keeps the VF, nothing moved" in err
    assert sorted(claims_of(cfg, busy.uuid)) == before  # no claim lost, none left behind



def _floor(mbps):
    """libvirt's <bandwidth> guaranteeing *mbps* Mb/s (its floor in KiB/s, rounded down)."""
    return "<bandwidth><inbound floor='%d'/></bandwidth>" % (mbps * 10 ** 6 // 8192)


def test_a_dry_run_counts_the_guarantees_it_planned_and_agrees_with_the_drain(make_host, conn,
                                                                              capsys):
    import copy

    from vfpick.host import simhost

    spec = copy.deepcopy(simhost.load_spec("two-dual-port"))
    spec["cards"][1]["pfs"][0]["speed"] = 20000  # ens2f0; the others 25000
    host = make_host(spec)
    pool = "pfs = %s\nguarantee = yes\n"
    cfg = host.write_config(pools={"fast": pool % "ens1f0"})
    for name in ("a", "b"):  # 24000 of ens1f0's 25000 Mb/s
        define_cmd.cmd_define(cfg, domain(name, iface_extra=_floor(12000)), URI)
    cfg = host.write_config(pools={"fast": pool % "ens1f0 ens1f1"})
    define_cmd.cmd_define(cfg, domain("c", iface_extra=_floor(14000)), URI)  # ens1f1: 11000 left
    cfg = host.write_config(pools={"fast": pool % "ens1f0 ens1f1 ens2f0"})
    assert {c.domain: c.link for c in claims(cfg)} == {"a": "ens1f0", "b": "ens1f0", "c": "ens1f1"}
    # Leaving ens1f0, a and b fit nowhere but ens2f0, and it has room for one of them.
    code, out, err = drain(host, capsys, "ens1f0", "--dry-run")
    assert code == 1 and out.count("would move domain") == 1, (out, err)
    assert len(err.splitlines()) == 1 and "cannot leave PF ens1f0" in err, err
    assert "cannot guarantee 12000 Mb/s" in err, err
    code, out, err = drain(host, capsys, "ens1f0")
    assert code == 1 and "1 domain(s) moved, 0 running, 1 could not move" in out, (out, err)
    links = {c.domain: c.link for c in claims(cfg)}
    assert sorted(links.values()) == ["ens1f0", "ens1f1", "ens2f0"]
    # The moved claim keeps its guarantee: no link's is overbooked, now or by the next pick.
    assert {c.min_rate_mbps for c in claims(cfg)} == {12000, 14000}
    reserved = {}
    for c in claims(cfg):
        reserved[c.link] = reserved.get(c.link, 0) + c.min_rate_mbps
    assert reserved == {"ens1f0": 12000, "ens1f1": 14000, "ens2f0": 12000}
