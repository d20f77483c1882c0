"""vfpick attach of a pool interface with <bandwidth>, and the VF settings of a live attach.

libvirt's side is a small stand-in (Dom) passed as hotplug's libvirt_api: no libvirt here
can hot-plug a VF (the test driver has no attachDeviceFlags; a real libvirtd has no IOMMU), and
the stand-in records what the VF had (tests/fakenetlink.py) when libvirt was asked. The claims,
the resolver, the simulated host and vfsettings are the real ones. test_clients_libvirt.py has
the --config attach with <bandwidth> against the real libvirtd.
"""

import libvirt
import pytest
from lxml import etree

from clitools import domain
from fakenetlink import FakeNetlink
from vfpick import resolver
from vfpick.domain import virt
from vfpick.commands import hotplug
from vfpick.errors import GuaranteeImpossible, LibvirtFailure, VfpickError
from vfpick.records import VfSettings

UUID = "6f1c3c1e-7d2b-4b8e-9a4f-0c5e7d1a2b3c"
MAC = "52:54:00:77:00:01"
# 500 Mb/s average, 1000 peak, 100 floor (KiB/s, rounded up to Mb/s)
BANDWIDTH = ("<bandwidth><inbound floor='12207'/><outbound average='61035' peak='122070'/>"
             "</bandwidth>")
FLOOR_20G = "<bandwidth><inbound floor='2441406'/></bandwidth>"   # 20000 Mb/s
TRUSTED = "trust = on\nspoofchk = off\n"


def nic(extra=BANDWIDTH, mac=MAC):
    return ("<interface type='network'><mac address='%s'/><source network='fast'/>%s"
            "</interface>" % (mac, extra)).encode()


class Dom:
    """One domain as libvirt would hold it, answering the vfpick.domain.virt calls hotplug makes (its
    libvirt_api); attach records the VF's state at the call."""

    def __init__(self, nl, host, running=True, refuse=False):
        xml = domain("vm", nics=0, uuid=UUID)
        self.xmls = {virt.LIVE: xml, virt.PERSISTENT: xml}
        self.nl, self.host, self.running, self.refuse = nl, host, running, refuse
        self.attached, self.metadata, self.seen = [], {}, []

    def _vf_state(self, iface):
        addr = iface.find("source/address")
        vf = "%04x:%02x:%02x.%x" % tuple(int(addr.get(k), 16) for k in ("domain", "bus", "slot", "function"))
        topo = self.host.topology()
        return vf, self.nl.get_vf(topo.pfs[topo.vfs[vf].pf].netdev, topo.vfs[vf].index)

    def attach(self, _dom, xml, sides):
        iface = etree.fromstring(xml)
        self.seen.append(self._vf_state(iface))
        if self.refuse:
            raise libvirt.libvirtError("internal error: no IOMMU")
        self.attached.append((xml, tuple(sides)))
        for side in sides:
            root = etree.fromstring(self.xmls[side])
            root.find("devices").append(etree.fromstring(xml))
            self.xmls[side] = etree.tostring(root)

    def detach(self, _dom, xml, side):
        mac = etree.fromstring(xml).find("mac").get("address")
        root = etree.fromstring(self.xmls[side])
        for iface in root.findall("devices/interface"):
            if iface.find("mac").get("address") == mac:
                iface.getparent().remove(iface)
        self.xmls[side] = etree.tostring(root)


    # the rest of the libvirt_api: one domain behind a connection that needs nothing
    def connect(self, uri):
        return self

    def close(self, conn):
        pass

    def lookup(self, conn, who):
        return self

    def identity(self, _dom):
        return "vm", UUID

    def is_running(self, _dom):
        return self.running

    def is_persistent(self, _dom):
        return True

    def side_xml(self, _dom, side):
        return self.xmls[side]

    def live_xml(self, _dom):
        return self.xmls[virt.LIVE]

    def set_metadata(self, _dom, side, element, _ns, _key):
        self.metadata[side] = element


def netlink_for(host, rates="both"):
    """A fake netlink with every PF of *host*; *rates*: what their driver takes (fakenetlink)."""
    fake_nl = FakeNetlink()
    for netdev in host.netdevs():
        fake_nl.add_link(netdev, num_vfs=64, rates=rates)
    return fake_nl


@pytest.fixture
def nl(host):
    return netlink_for(host)


def config(host, body=TRUSTED, pfs=None):
    return host.write_config(pools={"fast": "pfs = %s\n%s" % (pfs or " ".join(host.netdevs()), body)})


def claims(cfg):
    return {c.vf: c for c in resolver.store_for(cfg).snapshot().all()}


def attach(dom, cfg, nl, data=None, **flags):
    flags["libvirt_api"] = dom
    if flags.get("live"):
        flags["netlink_factory"] = lambda: nl
    return hotplug.cmd_attach(cfg, "test:///fake", "vm", nic() if data is None else data, **flags)


def test_attach_with_bandwidth_records_rates_and_metadata_and_no_bandwidth_on_the_hostdev(host, nl):
    cfg = config(host, body="")
    dom = Dom(nl, host, running=False)
    claim = attach(dom, cfg, nl, persistent=True).result
    assert (claim.rate_mbps, claim.peak_mbps, claim.min_rate_mbps) == (500, 1000, 100)
    stored = claims(cfg)[claim.vf]
    assert (stored.rate_mbps, stored.peak_mbps, stored.min_rate_mbps) == (500, 1000, 100)
    [(xml, sides)] = dom.attached
    iface = etree.fromstring(xml)
    assert sides == (virt.PERSISTENT,) and iface.get("type") == "hostdev"
    assert iface.find("bandwidth") is None
    meta = etree.fromstring(dom.metadata[virt.PERSISTENT])
    [entry] = [n for n in meta if n.get("mac") == MAC]
    assert (entry.get("average"), entry.get("peak"), entry.get("floor")) == ("61035", "122070", "12207")


def test_attach_places_by_the_floor_and_refuses_when_no_link_has_room(make_host, nl):
    host = make_host()
    cfg = config(host, body="guarantee = yes\n", pfs="ens1f0 ens1f1")
    other = resolver.resolve(cfg, domain("other", iface_extra=FLOOR_20G))
    taken = {c.link for c in claims(cfg).values()}
    dom = Dom(nl, host, running=False)
    claim = attach(dom, cfg, nl, nic(FLOOR_20G), persistent=True).result
    assert claim.min_rate_mbps == 20000
    assert {claim.link} | taken == {"ens1f0", "ens1f1"} and claim.link not in taken
    before = claims(cfg)
    with pytest.raises(GuaranteeImpossible) as e:
        attach(dom, cfg, nl, nic(FLOOR_20G, mac="52:54:00:77:00:02"), persistent=True)
    message = str(e.value)  # what the CLI prints after "vfpick: "
    assert message.startswith("pool 'fast' cannot guarantee 20000 Mb/s to NIC 1 of 1 (guarantee=yes)")
    assert "room left per link: ens1f0 5000 Mb/s, ens1f1 5000 Mb/s" in message, message
    assert claims(cfg) == before
    assert other.xml


def test_live_attach_sets_trust_spoofchk_and_rates_before_libvirt_and_records_them(host, nl):
    cfg = config(host)
    dom = Dom(nl, host)
    report = attach(dom, cfg, nl, live=True)
    claim = report.result
    [(vf, state)] = dom.seen
    assert vf == claim.vf
    assert (state.trust, state.spoofchk) == (True, False)
    assert (state.max_tx_rate, state.min_tx_rate) == (1000, 100)
    stored = claims(cfg)[claim.vf]
    assert stored.applied == VfSettings(True, False, 1000, 100)
    assert stored.restore == VfSettings(False, True, 0, 0)
    assert stored.active and stored.pending is None
    assert report.warnings == ()


def vf_now(nl, host, vf):
    topo = host.topology()
    state = nl.get_vf(topo.pfs[topo.vfs[vf].pf].netdev, topo.vfs[vf].index)
    return state.trust, state.spoofchk, state.max_tx_rate, state.min_tx_rate


def test_live_attach_refused_by_libvirt_puts_the_settings_back(host, nl):
    cfg = config(host)
    dom = Dom(nl, host, refuse=True)
    with pytest.raises(LibvirtFailure) as e:
        attach(dom, cfg, nl, live=True)
    message = str(e.value)
    assert message.startswith("libvirt refused to attach the NIC to 'vm'"), message
    assert message.endswith("(no claim changed)"), message
    [(vf, state)] = dom.seen
    assert (state.trust, state.spoofchk) == (True, False)     # set before libvirt's call
    assert vf_now(nl, host, vf) == (False, True, 0, 0)        # and put back after its refusal
    assert claims(cfg) == {}


def test_detach_of_a_live_attached_nic_puts_the_settings_back(host, nl):
    cfg = config(host)
    dom = Dom(nl, host)
    vf = attach(dom, cfg, nl, live=True).result.vf
    assert vf_now(nl, host, vf)[:2] == (True, False)
    report = hotplug.cmd_detach(cfg, "test:///fake", "vm", MAC, live=True, timeout=0,
                                netlink_factory=lambda: nl, libvirt_api=dom)
    assert report.result == [vf] and report.warnings == ()
    assert vf_now(nl, host, vf) == (False, True, 0, 0)
    assert claims(cfg) == {}


def test_config_only_attach_applies_nothing(host, nl):
    cfg = config(host)
    dom = Dom(nl, host)
    claim = attach(dom, cfg, nl, persistent=True).result
    assert nl.calls == [] and nl.rate_calls == []
    assert claims(cfg)[claim.vf].applied is None and claims(cfg)[claim.vf].restore is None


def test_live_attach_driver_refusing_the_floor_is_one_warning(make_host):
    host = make_host()
    nl = netlink_for(host, rates="max")
    cfg = config(host, body="")
    dom = Dom(nl, host)
    report = attach(dom, cfg, nl, live=True)
    [warning] = report.warnings
    assert "refuses min_tx_rate 100 Mb/s" in warning
    assert claims(cfg)[report.result.vf].applied == VfSettings(None, None, 1000, 0)


def test_live_attach_under_guarantee_refuses_what_the_driver_cannot_guarantee(make_host):
    host = make_host()
    nl = netlink_for(host, rates="max")
    cfg = config(host, body=TRUSTED + "guarantee = yes\n")
    dom = Dom(nl, host)
    with pytest.raises(VfpickError) as e:
        attach(dom, cfg, nl, live=True)
    text = str(e.value)
    assert "guarantee = yes" in text and "no claim changed" in text and "\n" not in text
    assert dom.seen == [] and claims(cfg) == {}
    assert nl.calls  # trust/spoofchk were set, then taken back with the refused rate
    assert all((v.trust, v.spoofchk) == (False, True) for v in nl.vfs.values())
