"""What a real libvirtd (tests/libvirtd.py) says about <bandwidth>: plain `virsh define` of a
pool interface takes vfpick's spelling (outbound average/peak, the guarantee as inbound floor),
refuses floor on outbound and bandwidth on a hostdev interface, and takes what `vfpick
resolve` makes of it (a hostdev without <bandwidth>, the rates in vfpick's metadata)."""

import re

import pytest

import libvirtd as lv
from clitools import vfpick

BANDWIDTH = ("<bandwidth><inbound floor='12207'/><outbound average='61035' peak='122070'/>"
             "</bandwidth>")


def _iface(kind, inner):
    if kind == "network":
        return "<interface type='network'><source network='vfpt-pool'/>%s</interface>" % inner
    return ("<interface type='hostdev' managed='yes'><mac address='52:54:00:aa:00:09'/><source>"
            "<address type='pci' domain='0x0000' bus='0x3c' slot='0x00' function='0x1'/>"
            "</source>%s</interface>" % inner)


def _define(libvirtd, kind, inner):
    name = libvirtd.unique_name("bw")
    path = libvirtd.workdir / (name + ".xml")
    path.write_text(lv.domain_xml(name, devices=_iface(kind, inner)))
    libvirtd.track(name)
    return name, libvirtd.virsh("define", str(path), check=False)


def test_virsh_define_takes_the_pool_interface_spelling(libvirtd):
    name, res = _define(libvirtd, "network", BANDWIDTH)
    assert res.returncode == 0, res.stderr
    dumped = libvirtd.virsh("dumpxml", name).stdout
    assert re.search(r"<inbound floor='12207'/>", dumped), dumped
    assert re.search(r"<outbound average='61035' peak='122070'/>", dumped), dumped


@pytest.mark.parametrize("kind,inner,refusal", [
    # floor exists on <inbound> only.
    ("network", "<bandwidth><outbound average='1000' floor='100'/></bandwidth>", "floor"),
    # libvirt has no bandwidth for a hostdev interface: vfpick must move it out.
    ("hostdev", "<bandwidth><outbound average='1000'/></bandwidth>", "bandwidth"),
])
def test_virsh_define_refuses(libvirtd, kind, inner, refusal):
    _name, res = _define(libvirtd, kind, inner)
    assert res.returncode != 0, "libvirt took %s" % inner
    assert refusal in res.stderr.lower(), res.stderr


def test_the_resolved_domain_is_what_libvirt_takes(libvirtd, make_host):
    host = make_host()
    host.write_config(pools={"vfpt-pool": "pfs = ens1f0 ens1f1\n"})
    name = libvirtd.unique_name("bw")
    xml = lv.domain_xml(name, devices=_iface("network", BANDWIDTH))
    out = vfpick(host, "resolve", "-", input=xml.encode(), check=0).stdout.decode()
    assert "<bandwidth" not in out and 'average="61035" peak="122070" floor="12207"' in out
    libvirtd.define(out)
    dumped = libvirtd.virsh("dumpxml", name).stdout
    assert "<bandwidth" not in dumped and "floor=\"12207\"" in dumped
