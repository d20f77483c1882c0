"""`vfpick rebalance` against libvirt's in-process test driver (``test:///default``).

The test driver runs domains without devices or hooks, so "running" is what libvirt says; the
prepare hook's part (a claim going active) is played by writing the claim. Holes are made the
way they happen: domains defined with vfpick, then undefined and released.
See tests/test_rebalance_libvirt.py for the same against the real libvirtd and its hook.
"""


import libvirt
import pytest

from clitools import domain, hostdev_vfs
from libvirtfixtures import URI
from test_virt import claims, state_bytes
from vfpick import cli, resolver
from vfpick.commands import define as define_cmd, rebalance as rebalancecmd


def define(cfg, name, nics=1):
    return define_cmd.cmd_define(cfg, domain(name, nics=nics), URI).result


def holes(cfg, conn, count=12, keep_link="ens1f0"):
    """*count* 1-NIC domains spread by vfpick over the 4 links; those off *keep_link* are
    undefined and released. Returns the names kept (all on keep_link)."""
    kept = []
    for result in [define(cfg, "d%02d" % i) for i in range(count)]:
        if next(iter(result.picks.values())).link == keep_link:
            kept.append(result.name)
        else:
            conn.lookupByName(result.name).undefine()
            with resolver.store_for(cfg).transaction() as cs:
                cs.drop_uuid(result.uuid)
    return kept


def links_of(cfg, host, conn, name):
    topo = host.topology()
    xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return [topo.link_of[topo.vfs[vf].pf] for vf in hostdev_vfs(xml)]


def rebalance(cfg, **kw):
    report = rebalancecmd.cmd_rebalance(cfg, URI, **kw)
    return report.status, "".join(line + "\n" for line in report.lines)


def moved(out):
    """Names of the domains whose NIC moves *out* reports."""
    return [line.split()[1] for line in out.splitlines() if line.startswith("moved ") and " -> " in line]


def test_holes_are_closed_by_redefining_stopped_domains(cfg, conn, host):
    kept = holes(cfg, conn)
    assert len(kept) == 3
    status, out = rebalance(cfg)
    assert status == 0, out
    assert ("before: busiest link ens1f0, 3 claims on 25 Gb/s (0.120 per Gb/s), +200.0 % over "
            "the optimum") in out
    assert "after: busiest link" in out and "1 claims on 25 Gb/s (0.040 per Gb/s), +0.0 %" in out
    assert len(moved(out)) == 2 and "moved 2 NIC(s) of 2 domain(s)" in out
    links = {name: links_of(cfg, host, conn, name) for name in kept}
    assert sorted(l for ls in links.values() for l in ls)[0] == "ens1f0"
    assert len({l for ls in links.values() for l in ls}) == 3
    # The claims are what libvirt has, and the MACs stayed.
    for name in kept:
        xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        mine = [c for c in claims(cfg) if c.domain == name]
        assert [c.vf for c in mine] == hostdev_vfs(xml) and mine[0].mac in xml
        assert not mine[0].active
    # Nothing left to do.
    status, out = rebalance(cfg)
    assert "within 5 % of the optimum already" in out and "moved 0 NIC(s)" in out


def test_dry_run_changes_nothing(cfg, conn, host):
    kept = holes(cfg, conn)
    before = state_bytes(cfg)
    xml = {n: conn.lookupByName(n).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for n in kept}
    status, out = rebalance(cfg, dry_run=True)
    assert status == 0
    assert out.count("\nwould move ") == 2 and "after (planned)" in out
    assert "dry run: would move 2 NIC(s) of 2 domain(s); nothing changed" in out
    assert state_bytes(cfg) == before
    assert xml == {n: conn.lookupByName(n).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for n in kept}


def test_a_running_domain_is_never_moved(cfg, conn, host):
    kept = holes(cfg, conn)
    conn.lookupByName(kept[0]).create()
    conn.lookupByName(kept[1]).create()
    before = links_of(cfg, host, conn, kept[0])
    status, out = rebalance(cfg)
    assert status == 0
    assert moved(out) == [kept[2]]
    assert links_of(cfg, host, conn, kept[0]) == before
    assert "running domains hold the busiest links" in out


def test_claims_gone_active_mean_running_though_libvirt_says_stopped(cfg, conn, host):
    kept = holes(cfg, conn)
    with resolver.store_for(cfg).transaction() as cs:
        for c in cs.all():
            if c.domain != kept[2]:
                cs.put(c._replace(active=True))
    status, out = rebalance(cfg)
    assert moved(out) == [kept[2]]


@pytest.mark.parametrize("how", ["libvirt runs it", "its prepare hook ran"])
def test_a_domain_that_starts_after_the_plan_is_left_alone(cfg, conn, host, how):
    holes(cfg, conn)
    gathered = rebalancecmd.gather(cfg, conn)
    planned = [m.domain for m in gathered.plan.moves]
    assert len(planned) == 2
    starter = planned[0]
    before = links_of(cfg, host, conn, starter)
    before_claims = [c for c in claims(cfg) if c.domain == starter]
    # It starts between the listing and the move: the claims decide, not the listing.
    if how == "libvirt runs it":
        conn.lookupByName(starter).create()
    else:
        with resolver.store_for(cfg).transaction() as cs:
            for c in cs.all():
                if c.domain == starter:
                    cs.put(c._replace(active=True))
        before_claims = [c._replace(active=True) for c in before_claims]
    out = []
    status, nics, domains = rebalancecmd.apply(cfg, conn, gathered, out)
    assert status == 0 and (nics, domains) == (1, 1)
    text = "".join(line + "\n" for line in out)
    assert "left alone: domain '%s'" % starter in text
    assert moved(text) == [planned[1]]
    assert links_of(cfg, host, conn, starter) == before
    assert [c for c in claims(cfg) if c.domain == starter] == before_claims


def test_max_moves(cfg, conn, host):
    holes(cfg, conn)
    status, out = rebalance(cfg, max_moves=1)
    assert status == 0 and len(moved(out)) == 1 and "--max-moves 1" in out
    status, out = rebalance(cfg, max_moves=0)
    assert "moved 0 NIC(s) of 0 domain(s)" in out


def test_a_2_nic_domain_keeps_its_nics_apart(cfg, conn, host):
    define(cfg, "pair", nics=2)
    holes(cfg, conn, count=12, keep_link="ens1f0")
    rebalance(cfg)
    links = links_of(cfg, host, conn, "pair")
    assert len(set(links)) == 2


def test_cli_one_line_errors(cfg, conn, host, capsys, monkeypatch):
    monkeypatch.setenv("VFPICK_CONFIG", cfg.path)
    assert cli.main(["rebalance", "--connect", URI, "--max-moves", "-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vfpick: --max-moves") and err.count("\n") == 1
    assert cli.main(["rebalance", "--connect", URI, "--max-moves", "x"]) == 1
    assert cli.main(["rebalance", "--connect", URI, "--dry-run"]) == 0
    assert "no claims on an up link" in capsys.readouterr().out


def defined_while_drained(cfg, host, name, nics, links, undrain=True):
    """Defines *name* while every link but *links* is drained (a best-effort placement), then
    undrains them again (unless told not to)."""
    topo = host.topology()
    with resolver.store_for(cfg).transaction() as cs:
        cs.set_drained(frozenset(pf for pf in topo.pfs if topo.link_of[pf] not in links))
    define(cfg, name, nics=nics)
    if undrain:
        with resolver.store_for(cfg).transaction() as cs:
            cs.set_drained(frozenset())


def test_a_pair_placed_on_one_link_while_the_others_were_drained_is_repaired_first(cfg, conn, host):
    defined_while_drained(cfg, host, "pair", 2, ["ens1f0"])
    assert links_of(cfg, host, conn, "pair") == ["ens1f0", "ens1f0"]  # best effort
    status, out = rebalance(cfg, dry_run=True)
    repair = [line for line in out.splitlines() if line.startswith("would repair pair NIC")]
    assert status == 0 and len(repair) == 1 and repair[0].endswith("(restores distinct)")
    assert not any(line.startswith("would move") for line in out.splitlines())
    assert links_of(cfg, host, conn, "pair") == ["ens1f0", "ens1f0"]
    status, out = rebalance(cfg)
    assert status == 0 and "repaired pair NIC" in out, out
    assert len(set(links_of(cfg, host, conn, "pair"))) == 2
    assert sorted(c.vf for c in claims(cfg)) == sorted(
        hostdev_vfs(conn.lookupByName("pair").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))


def test_a_pair_that_cannot_be_made_distinct_is_named_in_one_line(cfg, conn, host):
    defined_while_drained(cfg, host, "pair", 2, ["ens1f0"], undrain=False)
    status, out = rebalance(cfg, dry_run=True)
    assert status == 0
    assert ("not distinct: pair: 2 NICs, pool fast has 1 links up with free VFs it may use "
            "(distinct=link)") in out.splitlines(), out


def test_live_names_running_domains_that_may_not_move_and_a_refused_live_move_is_one_line(
        cfg, conn, host):
    # A running 2-NIC domain sharing ens1f0 (placed while the rest was drained), plain VFs.
    defined_while_drained(cfg, host, "pair", 2, ["ens1f0"])
    conn.lookupByName("pair").create()  # the test driver runs it
    before = sorted(c.vf for c in claims(cfg))
    status, out = rebalance(cfg, dry_run=True, live=True)
    assert status == 0
    assert "running, not moved live: pair: NIC" in out and "is a plain VF" in out
    assert "not distinct: pair: 2 NICs, pool fast: running (or unknown to libvirt), not moved" in out
    # --allow-nic-gap: both NICs on one link, so neither has another NIC on a distinct link.
    status, out = rebalance(cfg, dry_run=True, live=True, allow_gap=True)
    assert "no other NIC on a distinct link" in out and "would repair" not in out
    assert sorted(c.vf for c in claims(cfg)) == before


def test_live_move_refused_by_libvirt_leaves_the_running_domain_on_its_vfs(cfg, conn, host):
    kept = holes(cfg, conn)              # 3 one-NIC domains on ens1f0, running: fixed load
    for name in kept:
        conn.lookupByName(name).create()
    defined_while_drained(cfg, host, "pair", 2, ["ens1f0", "ens1f1"])  # ens1f0 now holds 4
    conn.lookupByName("pair").create()
    before = sorted((c.vf, c.uuid, c.active) for c in claims(cfg))
    status, out = rebalance(cfg, dry_run=True, live=True, allow_gap=True)
    assert status == 0 and "would move pair NIC" in out and out.count(" live\n") == 1, out
    status, out = rebalance(cfg, live=True, allow_gap=True)
    # The test driver has no device hotplug: the live move stops at its first step.
    refused = [line for line in out.splitlines() if line.startswith("not moved: ")]
    assert status == 1 and len(refused) == 1, out
    assert "libvirt refused to detach VF" in refused[0] and "nothing moved" in refused[0]
    assert sorted((c.vf, c.uuid, c.active) for c in claims(cfg)) == before


BIG = "<bandwidth><outbound average='2441406'/></bandwidth>"  # 20000 Mb/s in KiB/s


def test_by_rate_the_small_nics_move_and_the_heavy_one_stays(cfg, conn, host):
    """Two 1 Gb/s NICs per link, then a 20 Gb/s one (on a link with two), then the small ones
    elsewhere leave: that link carries 22 Gb/s of 25, the bound is 20/25; one small NIC moves."""
    small = [define(cfg, "s%02d" % i) for i in range(8)]
    big = define_cmd.cmd_define(cfg, domain("big", iface_extra=BIG), URI).result
    heavy = next(iter(big.picks.values())).link
    for result in small:
        if next(iter(result.picks.values())).link != heavy:
            conn.lookupByName(result.name).undefine()
            with resolver.store_for(cfg).transaction() as cs:
                cs.drop_uuid(result.uuid)
    assert [c.rate_mbps for c in claims(cfg) if c.domain == "big"] == [20000]
    status, out = rebalance(cfg, dry_run=True)
    assert status == 0, out
    assert "optimum (lower bound by rate): 80.0 % of the busiest link's speed" in out
    assert ("before: busiest link by rate %s, 3 claims, 22000 Mb/s on 25 Gb/s (88.0 %% of its "
            "speed), +10.0 %% over the optimum's bound" % heavy) in out, out
    assert out.count("\nwould move ") == 1 and "would move big" not in out
    status, out = rebalance(cfg)
    assert status == 0 and len(moved(out)) == 1 and moved(out) != ["big"], out
    assert "21000 Mb/s on 25 Gb/s (84.0 % of its speed), +5.0 % over the optimum's bound" in out
    assert links_of(cfg, host, conn, "big") == [heavy]
