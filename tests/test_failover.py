"""[pool] failover: virtio + VF pairs (libvirt <teaming>), golden XML, config, migrate filter.

libvirt's acceptance of the result (`virsh define`) is in test_clients_libvirt.py.
Regenerate the golden outputs after a deliberate format change with
``pytest --regen tests/test_failover.py`` (tests/golden.py) and review the diff.
"""

import itertools
import os

import pytest
from lxml import etree

from vfpick.domain import failover
from vfpick import resolver
from vfpick.config import Failover
from vfpick.errors import ConfigError, UnknownPool
from vfpick.hostdev import DomainXml
from vfpick.records import Assignment

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "xml")


def _read(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def pool_config(host, failover_value, extra=""):
    return host.write_config({"fast": "pfs = %s\nfailover = %s\n%s" % (
        " ".join(host.netdevs()), failover_value, extra)})


def golden_run(cfg, case):
    """pair, then apply fixed VFs to the pool NICs in document order (as the resolver would)."""
    doc = DomainXml.parse(_read(case + "-in.xml"))
    macs = ("52:54:00:0f:00:%02x" % i for i in itertools.count(1))
    failover.pair_pool_nics(doc, cfg, lambda: next(macs), lambda name: name == "failnet")
    vfs = iter(["0000:3b:02.1", "0000:3b:02.2", "0000:3b:02.3"])
    doc.apply({i.index: Assignment(mac=i.mac, pool="fast", vf=next(vfs), pf="0000:3b:00.0",
                                   link="ens1f0")
               for i in doc.network_interfaces() if i.network == "fast"})
    return doc.to_bytes()


@pytest.mark.parametrize("case, value", [
    ("failover-bridge", "bridge:br0"),
    ("failover-handwritten", "bridge:br0"),
    ("failover-network", "network:failnet"),
])
def test_golden(golden, host, case, value):
    out = golden_run(pool_config(host, value), case)
    golden(os.path.join(DATA, case + "-out.xml"), out)
    # Resolving the result again changes nothing: no second partner, the same teaming.
    again = DomainXml.parse(out)
    assert not failover.pair_pool_nics(again, pool_config(host, value), lambda: "x", lambda n: True)


def pairs(xml):
    """[(virtio iface, hostdev iface)] paired by teaming, read with lxml."""
    ifaces = etree.fromstring(xml).findall("devices/interface")
    by_alias = {i.find("alias").get("name"): i for i in ifaces
                if i.find("teaming") is not None and i.find("teaming").get("type") == "persistent"}
    return [(by_alias[i.find("teaming").get("persistent")], i) for i in ifaces
            if i.find("teaming") is not None and i.find("teaming").get("type") == "transient"]


def test_every_pool_nic_becomes_one_mac_virtio_plus_vf_pair(host):
    out = golden_run(pool_config(host, "bridge:br0"), "failover-bridge")
    found = pairs(out)
    assert len(found) == 2
    for virtio, vf in found:
        assert virtio.get("type") == "bridge" and virtio.find("source").get("bridge") == "br0"
        assert virtio.find("model").get("type") == "virtio"
        assert virtio.find("alias").get("name").startswith("ua-")
        assert vf.get("type") == "hostdev" and vf.find("source/address") is not None
        assert virtio.find("mac").get("address") == vf.find("mac").get("address")
    # the user's alias, MAC and VLAN stay on the VF; the non-pool NIC is untouched
    assert found[0][1].find("alias").get("name") == "ua-net1"
    assert found[0][1].find("vlan/tag").get("id") == "100"
    assert found[0][1].find("mac").get("address") == "52:54:00:fa:11:01"
    assert etree.fromstring(out).findall("devices/interface")[0].find("source").get("network") == "default"


def test_hand_written_pair_is_kept(host):
    src = _read("failover-handwritten-in.xml")
    out = golden_run(pool_config(host, "bridge:br0"), "failover-handwritten")
    [(virtio, vf)] = pairs(out)
    assert virtio.find("source").get("bridge") == "br-mine"
    assert vf.find("teaming").get("persistent") == "ua-backup0"
    assert out.count(b"<interface") == src.count(b"<interface")


def test_failover_network_must_exist(host):
    cfg = pool_config(host, "network:nowhere")
    doc = DomainXml.parse(_read("failover-network-in.xml"))
    with pytest.raises(UnknownPool, match="failover network 'nowhere'"):
        failover.pair_pool_nics(doc, cfg, lambda: "52:54:00:00:00:01", lambda name: False)


@pytest.mark.parametrize("value, words", [
    ("bridge", "use bridge:BRIDGE, network:NETWORK or none"),
    ("tap:br0", "use bridge:BRIDGE, network:NETWORK or none"),
    ("bridge:", "use bridge:BRIDGE, network:NETWORK or none"),
    ("bridge:br'0", "not a valid bridge name"),
    ("bridge:a-very-long-bridge-name", "not a valid bridge name"),
    ("network:fast", "is a vfpick pool"),
])
def test_bad_failover_values(host, value, words):
    with pytest.raises(ConfigError, match="failover") as info:
        pool_config(host, value)
    assert words in str(info.value) and "[pool fast]" in str(info.value)


def test_config_values(host):
    assert pool_config(host, " Bridge : br0 ").pools["fast"].failover == Failover("bridge", "br0")
    assert pool_config(host, "network:mig-net").pools["fast"].failover == Failover("network", "mig-net")
    assert host.write_config().pools["fast"].failover is None
    assert pool_config(host, "None").pools["fast"].failover is None


def test_resolve_pairs_and_claims_one_vf_per_nic(host):
    cfg = pool_config(host, "bridge:br0")
    result = resolver.resolve(cfg, _read("failover-bridge-in.xml"), network_exists=lambda n: True)
    found = pairs(result.xml)
    assert len(found) == 2 and len(result.picks) == 2
    claims = resolver.store_for(cfg).snapshot().mapping()
    assert sorted(c.mac for c in claims.values()) == sorted(
        vf.find("mac").get("address") for _, vf in found)
    # resolving libvirt's view of it again keeps everything
    again = resolver.resolve(cfg, result.xml, network_exists=lambda n: True)
    assert again.xml == result.xml


def test_migrate_filter_moves_only_the_vf(make_host):
    """Source resolves; the destination's migrate filter re-picks the VF on its own host."""
    from vfpick import hook

    src, dst = make_host(), make_host()
    src_cfg = pool_config(src, "bridge:br0")
    dst_cfg = pool_config(dst, "bridge:br0")
    xml = resolver.resolve(src_cfg, _read("failover-bridge-in.xml"), network_exists=lambda n: True).xml
    # The destination already gave the source's VFs to someone else.
    taken = resolver.resolve(dst_cfg, b"<domain><name>other</name><devices>" + b"".join(
        b"<interface type='network'><source network='fast'/></interface>" for _ in range(4))
        + b"</devices></domain>")
    busy = set(c.vf for c in resolver.store_for(dst_cfg).snapshot().mapping().values())
    out = hook.refilter(dst_cfg, xml.replace(b"network='default'", b"network='default'"))
    assert out, "the filter must rewrite the VFs"
    before, after = pairs(xml), pairs(out)
    assert len(after) == 2
    for (v0, f0), (v1, f1) in zip(before, after):
        assert etree.tostring(v0) == etree.tostring(v1)          # virtio side unchanged
        assert f1.find("teaming").get("persistent") == f0.find("teaming").get("persistent")
        assert f1.find("mac").get("address") == f0.find("mac").get("address")
    new_vfs = {c.vf for c in resolver.store_for(dst_cfg).snapshot().mapping().values()} - busy
    assert len(new_vfs) == 2 and taken.picks


def test_resolve_asks_libvirt_about_networks_only_outside_the_claims_lock(host):
    """network_exists is libvirt's networkLookupByName in `vfpick define`: asked under the
    claims lock, a hung libvirtd would hold every vfpick start of the host behind it."""
    import fcntl

    cfg = pool_config(host, "network:failnet")
    asked = []

    def network_exists(name):
        fd = os.open(os.path.join(cfg.state_dir, "claims.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: held by resolve
        finally:
            os.close(fd)
        asked.append(name)
        return True

    os.makedirs(cfg.state_dir, exist_ok=True)
    result = resolver.resolve(cfg, _read("failover-network-in.xml"), network_exists=network_exists)
    assert b"<source network='failnet'/>" in result.xml or b'network="failnet"' in result.xml
    assert "failnet" in asked
