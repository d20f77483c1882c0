"""A NIC's <bandwidth>: recorded at resolve, set on the VF at prepare (IFLA_VF_RATE through
tests/fakenetlink.py, which refuses what each driver refuses), put back when the claim ends."""

import io
import json
import os

import pytest

from clitools import domain, hostdev_vfs
from fakenetlink import FakeNetlink
from vfpick import cli, hook, resolver
from vfpick.host import simhost
from vfpick.errors import XmlError
from vfpick.records import VfSettings

# 500 Mb/s average, 1000 peak, 100 floor (KiB/s: 61035 x 8192 = 499.998 Mb/s, rounded up).
BANDWIDTH = ("<bandwidth><inbound floor='12207'/><outbound average='61035' peak='122070'/>"
             "</bandwidth>")
CAP_ONLY = "<bandwidth><outbound average='122070'/></bandwidth>"


def rates_host(make_host, driver_rates="both", preset="two-dual-port"):
    """A simulated host and a fake netlink whose PFs take the rates *driver_rates* says, or
    (None) what the preset's drivers take (simhost.driver_rates)."""
    host = make_host(preset)
    nl = FakeNetlink()
    takes = simhost.driver_rates(host.spec)
    for netdev in host.netdevs():
        nl.add_link(netdev, num_vfs=64, rates=driver_rates or takes[netdev])
    return host, nl


def run(host, nl, name, op, xml, subop="begin"):
    err = io.StringIO()
    code = hook.run([name, op, subop, "-"], stdin=io.BytesIO(xml), stdout=io.BytesIO(), stderr=err,
                    config_path=host.config_path, netlink_factory=lambda: nl)
    return code, err.getvalue()


def claims(cfg):
    return {c.vf: c for c in resolver.store_for(cfg).snapshot().all()}


def vf_key(host, vf):
    topo = host.topology()
    return topo.pfs[topo.vfs[vf].pf].netdev, topo.vfs[vf].index


@pytest.mark.parametrize("bandwidth,rates,vf_rates", [
    (BANDWIDTH, (500, 1000, 100), (1000, 100)),
    (CAP_ONLY, (1000, None, None), (1000, 0)),
    ("<bandwidth><inbound floor='1'/></bandwidth>", (None, None, 1), (0, 1)),
    ("<bandwidth><outbound average='1'/></bandwidth>", (1, None, None), (1, 0)),  # never 0
    ("<bandwidth><inbound average='1000'/></bandwidth>", (None, None, None), None),
])
def test_prepare_sets_the_rates_and_release_puts_them_back(make_host, bandwidth, rates, vf_rates):
    host, nl = rates_host(make_host)
    cfg = host.write_config()
    xml = resolver.resolve(cfg, domain("vm1", iface_extra=bandwidth)).xml
    assert b"<bandwidth" not in xml  # libvirt refuses to start a hostdev interface with it
    (vf,) = hostdev_vfs(xml)
    claim = claims(cfg)[vf]
    assert (claim.rate_mbps, claim.peak_mbps, claim.min_rate_mbps) == rates
    assert run(host, nl, "vm1", "prepare", xml) == (0, "")
    key = vf_key(host, vf)
    claim = claims(cfg)[vf]
    if vf_rates is None:
        assert nl.rate_calls == [] and claim.applied is None
        return
    assert nl.get_vf(*key)[2:] == vf_rates
    assert claim.applied == VfSettings(None, None, *vf_rates)
    assert claim.restore == VfSettings(None, None, 0, 0)
    # A transient domain: the claim ends at release and the VF gets its rates back.
    assert run(host, nl, "vm1", "release", xml, subop="end")[0] == 0
    assert claims(cfg) == {} and nl.get_vf(*key)[2:] == (0, 0)


def test_a_driver_without_min_tx_rate_warns_and_keeps_the_cap(make_host):
    host, nl = rates_host(make_host, None, "igb-i350")  # igb: max_tx_rate only
    cfg = host.write_config()
    xml = resolver.resolve(cfg, domain("vm1", iface_extra=BANDWIDTH)).xml
    (vf,) = hostdev_vfs(xml)
    netdev, index = vf_key(host, vf)
    code, err = run(host, nl, "vm1", "prepare", xml)
    assert code == 0
    assert err == ("vfpick: warning: VF %s (VF %d of %s, driver igb) refuses min_tx_rate 100 "
                   "Mb/s (Invalid argument): capped at max_tx_rate 1000 only; the guarantee "
                   "holds in placement, not on the NIC\n" % (vf, index, netdev))
    assert nl.get_vf(netdev, index)[2:] == (1000, 0)
    assert claims(cfg)[vf].applied == VfSettings(None, None, 1000, 0)
    assert claims(cfg)[vf].active


def test_a_driver_without_rates_warns_and_starts(make_host):
    host, nl = rates_host(make_host, "none")
    cfg = host.write_config()
    xml = resolver.resolve(cfg, domain("vm1", iface_extra=CAP_ONLY)).xml
    (vf,) = hostdev_vfs(xml)
    code, err = run(host, nl, "vm1", "prepare", xml)
    assert code == 0 and err.count("\n") == 1
    assert "refuses max_tx_rate 1000 min_tx_rate 0 Mb/s (Operation not supported): the VF runs " \
           "without a rate limit" in err and "driver i40e" in err
    assert claims(cfg)[vf].applied is None and claims(cfg)[vf].active


def test_guarantee_refuses_a_start_the_driver_cannot_guarantee(make_host):
    host, nl = rates_host(make_host, None, "igb-i350")  # igb: max_tx_rate only
    cfg = host.write_config(pools={"fast": "pfs = %s\nguarantee = yes\n" % " ".join(host.netdevs())})
    xml = resolver.resolve(cfg, domain("vm1", iface_extra=BANDWIDTH)).xml
    (vf,) = hostdev_vfs(xml)
    netdev, index = vf_key(host, vf)
    before = claims(cfg)
    code, err = run(host, nl, "vm1", "prepare", xml)
    assert code == 1
    assert err == ("vfpick: VF %s (VF %d of %s, driver igb) refuses max_tx_rate 1000 "
                   "min_tx_rate 100 Mb/s (Invalid argument), and pool 'fast' has guarantee = "
                   "yes: give the NIC a pool on a NIC whose driver can, or drop its <bandwidth>\n"
                   % (vf, index, netdev))
    assert claims(cfg) == before  # not active, nothing recorded
    assert nl.get_vf(netdev, index)[2:] in ((None, None), (0, 0))


def test_a_rerun_prepare_does_not_read_its_own_rates_as_the_original(make_host):
    host, nl = rates_host(make_host)
    cfg = host.write_config()
    xml = resolver.resolve(cfg, domain("vm1", iface_extra=BANDWIDTH)).xml
    (vf,) = hostdev_vfs(xml)
    with open(os.path.join(host.config_dir, "vm1.xml"), "wb") as f:
        f.write(xml)  # persistent: the claim outlives a stop
    key = vf_key(host, vf)
    nl.set_vf(*key, max_tx_rate=50, min_tx_rate=0)  # a previous tenant's cap
    for _ in range(2):
        assert run(host, nl, "vm1", "prepare", xml)[0] == 0
        assert run(host, nl, "vm1", "release", xml, subop="end")[0] == 0
    assert claims(cfg)[vf].restore == VfSettings(None, None, 50, 0)
    # The claim ends (vfpick release of the stopped domain): the previous cap comes back.
    os.unlink(os.path.join(host.config_dir, "vm1.xml"))
    assert run(host, nl, "vm1", "release", xml, subop="end")[0] == 0
    assert nl.get_vf(*key)[2:] == (50, 0)


def test_metadata_carries_the_bandwidth_through_a_re_resolve(make_host):
    host, _nl = rates_host(make_host)
    cfg = host.write_config()
    xml = resolver.resolve(cfg, domain("vm1", iface_extra=BANDWIDTH)).xml
    assert b'average="61035" peak="122070" floor="12207"' in xml
    again = resolver.resolve(cfg, xml)
    assert not again.changed
    [claim] = claims(cfg).values()
    assert (claim.rate_mbps, claim.peak_mbps, claim.min_rate_mbps) == (500, 1000, 100)


@pytest.mark.parametrize("bandwidth,message", [
    ("<bandwidth><outbound average='fast'/></bandwidth>",
     "interface 1 (network 'fast'): <bandwidth><outbound average='fast' is not a rate in KiB/s"),
    ("<bandwidth><outbound average='0'/></bandwidth>", "average='0' is not a rate in KiB/s"),
    ("<bandwidth><outbound peak='100'/></bandwidth>",
     "<bandwidth><outbound average> is missing: libvirt requires it beside peak or burst"),
    ("<bandwidth><outbound average='100' floor='10'/></bandwidth>",
     "libvirt accepts floor only on <inbound>; write the guarantee as <inbound floor='KiB/s'/>"),
    ("<bandwidth><outbound average='100' peak='10'/></bandwidth>",
     "<bandwidth><outbound peak='10'> is below its average (100 KiB/s)"),
    ("<bandwidth><inbound floor='-5'/></bandwidth>", "floor='-5' is not a rate in KiB/s"),
])
def test_a_bad_bandwidth_is_one_line_and_claims_nothing(make_host, bandwidth, message):
    host, _nl = rates_host(make_host)
    cfg = host.write_config()
    with pytest.raises(XmlError) as e:
        resolver.resolve(cfg, domain("vm1", iface_extra=bandwidth))
    assert message in str(e.value)
    assert claims(cfg) == {}


def test_status_json_claims_have_the_rate_keys(make_host, capsys):
    host, _nl = rates_host(make_host)
    cfg = host.write_config()
    resolver.resolve(cfg, domain("vm1", iface_extra=BANDWIDTH))
    resolver.resolve(cfg, domain("vm2"))
    assert cli.main(["--config", host.config_path, "status", "--json"]) == 0
    rows = {c["domain"]: c for c in json.loads(capsys.readouterr().out)["claims"]}
    keys = ("rate_mbps", "peak_mbps", "min_rate_mbps")
    assert tuple(rows["vm1"][k] for k in keys) == (500, 1000, 100)
    assert tuple(rows["vm2"][k] for k in keys) == (None, None, None)


def test_metrics_reserved_per_link(make_host):
    from vfpick.commands import metrics

    host, _nl = rates_host(make_host)
    cfg = host.write_config(pools={"fast": "pfs = ens1f0 ens1f1\nguarantee = yes\n"})
    resolver.resolve(cfg, domain("vm1", nics=2, iface_extra=BANDWIDTH))     # 100 floor each
    resolver.resolve(cfg, domain("vm2", iface_extra=CAP_ONLY))              # 1000 average
    resolver.resolve(cfg, domain("vm3"))                                    # no rate: nothing
    link_of = {c.domain: c.link for c in claims(cfg).values()}
    family = metrics.reserved_family(metrics.gather(cfg))
    got = {s.labels["link"]: s.value for s in family.samples if s.labels["link"] in link_of.values()
           or s.value}
    expect = {"ens1f0": 100 * 125000, "ens1f1": 100 * 125000}
    expect[link_of["vm2"]] += 1000 * 125000
    assert got == expect
    assert family.name == "vfpick_link_reserved_bytes"


@pytest.mark.parametrize("body,error", [
    ("nic_rate = 0", "[pool fast] nic_rate: '0' is not a rate in Mb/s from 1 to 10000000"),
    ("nic_rate = 1G", "[pool fast] nic_rate: '1G' is not a rate in Mb/s from 1 to 10000000"),
    ("nic_rate = ²", "[pool fast] nic_rate: '²' is not a rate in Mb/s"),
    ("guarantee = maybe", "[pool fast] guarantee: 'maybe' is not one of yes, true, on"),
    ("pcie_affinity = near", "[pool fast] pcie_affinity: 'near' is not one of required, "
                             "preferred, ignore"),
])
def test_bad_bandwidth_keys_name_file_section_and_key(make_host, body, error):
    from vfpick.errors import ConfigError

    host = make_host()
    with pytest.raises(ConfigError) as e:
        host.write_config(pools={"fast": "pfs = ens1f0\n%s\n" % body})
    assert str(e.value).startswith(host.config_path + ": " + error)


@pytest.mark.parametrize("body,expect", [
    ("", (1000, False, "preferred")),
    ("nic_rate = 25000\nguarantee = yes\npcie_affinity = required", (25000, True, "required")),
    ("pcie_affinity = IGNORE", (1000, False, "ignore")),
])
def test_bandwidth_keys(make_host, body, expect):
    host = make_host()
    pool = host.write_config(pools={"fast": "pfs = ens1f0\n%s\n" % body}).pools["fast"]
    assert (pool.nic_rate, pool.guarantee, pool.pcie_affinity) == expect


def test_a_lost_claim_comes_back_at_prepare_with_the_rates_of_its_metadata(make_host):
    host, nl = rates_host(make_host)
    cfg = host.write_config()
    xml = resolver.resolve(cfg, domain("vm1", iface_extra=BANDWIDTH)).xml
    (vf,) = hostdev_vfs(xml)
    with resolver.store_for(cfg).transaction() as held:
        held.drop(vf)  # the state file lost it (restored from an old backup, say)
    assert run(host, nl, "vm1", "prepare", xml) == (0, "")
    claim = claims(cfg)[vf]
    assert (claim.rate_mbps, claim.peak_mbps, claim.min_rate_mbps) == (500, 1000, 100)
    assert nl.get_vf(*vf_key(host, vf))[2:] == (1000, 100)
