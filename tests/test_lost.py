"""A claim whose VF the running domain no longer has ("lost"): after `sriov_numvfs` 0 -> N under
a running domain, QEMU unplugged the VF (the live XML has one hostdev less) and the recreated VF
sits on its host driver again. The claim says active; status, check and metrics tell the truth.
Simulated igb host (no phys_port_id, no devlink), live XML in the run dir."""

import json
import os

from lxml import etree

from clitools import domain, hostdev_vfs, status_json, vfpick
from test_metrics import samples, value
from vfpick.commands import check
from vfpick import config as configmod, resolver


def running_domain_that_lost_a_vf(host, name="web"):
    """A 2-NIC domain, started (claims active), whose live XML lacks its first hostdev."""
    host.write_config()
    xml = vfpick(host, "resolve", "-", input=domain(name, nics=2), check=0).stdout
    with open(os.path.join(host.config_dir, name + ".xml"), "wb") as f:
        f.write(xml)
    cfg = configmod.load(host.config_path)
    with resolver.store_for(cfg).transaction() as claims:
        for c in claims.all():
            claims.put(c._replace(active=True))   # as the prepare hook leaves them
    root = etree.fromstring(xml)
    gone = root.find("devices/interface[@type='hostdev']")
    root.find("devices").remove(gone)
    live = etree.tostring(root)
    with open(os.path.join(host.run_dir, name + ".xml"), "wb") as f:
        f.write(b"<domstatus state='running' pid='1'>\n" + live + b"\n</domstatus>\n")
    lost_vf, kept_vf = hostdev_vfs(xml)[0], hostdev_vfs(xml)[1]
    assert hostdev_vfs(live) == [kept_vf]
    return cfg, lost_vf, kept_vf


def test_status_json_and_table_tell_a_lost_claim(make_host):
    host = make_host("igb-i350")
    _cfg, lost_vf, kept_vf = running_domain_that_lost_a_vf(host)
    claims = {c["vf"]: c for c in status_json(host)["claims"]}
    assert claims[lost_vf]["active"] is False and claims[lost_vf]["lost"] is True
    assert claims[kept_vf]["active"] is True and claims[kept_vf]["lost"] is False
    for c in claims.values():   # the contract's keys are all still there
        assert set("vf pf link pool domain uuid mac active".split()) <= set(c)
    table = vfpick(host, "status", check=0).stdout.decode()
    row = [line for line in table.splitlines() if lost_vf in line and "web" in line]
    assert len(row) == 1 and "VF NOT IN DOMAIN" in row[0] and " yes " not in row[0], table
    kept = [line for line in table.splitlines() if kept_vf in line and "web" in line]
    assert " yes" in kept[0] and "VF NOT IN DOMAIN" not in kept[0], table


def test_check_reports_a_lost_claim_with_its_fix(make_host):
    host = make_host("igb-i350")
    cfg, lost_vf, _kept = running_domain_that_lost_a_vf(host)
    finding = check.check_lost(cfg)
    assert finding.status == check.WARN and lost_vf in finding.message and "web" in finding.message
    assert "vfpick detach web" in finding.fix
    found = json.loads(vfpick(host, "check", "--json").stdout)["findings"]
    assert [f["status"] for f in found if f["check"] == "claims"] == ["warn"], found


def test_metrics_count_a_lost_claim_and_its_vf_as_reserved(make_host):
    host = make_host("igb-i350")
    _cfg, lost_vf, kept_vf = running_domain_that_lost_a_vf(host)
    parsed = samples(vfpick(host, "metrics", check=0).stdout)
    assert value(parsed, "vfpick_claims_lost") == 1
    status = status_json(host)
    pf_of = {c["vf"]: c["pf"] for c in status["claims"]}
    link_of = {c["vf"]: c["link"] for c in status["claims"]}
    pool = status["claims"][0]["pool"]
    for vf, state in ((lost_vf, "reserved"), (kept_vf, "active")):
        assert value(parsed, "vfpick_vfs", pool=pool, link=link_of[vf], pf=pf_of[vf],
                     state=state) >= 1, (vf, state)
    assert value(parsed, "vfpick_domain_degraded", domain="web") == 1


def test_no_lost_claim_while_the_live_xml_has_every_vf_or_the_domain_is_stopped(make_host):
    host = make_host("igb-i350")
    cfg, _lost, _kept = running_domain_that_lost_a_vf(host)
    os.unlink(os.path.join(host.run_dir, "web.xml"))   # stopped (release end not run yet)
    assert check.check_lost(cfg).status == check.OK
    assert not any(c["lost"] for c in status_json(host)["claims"])
