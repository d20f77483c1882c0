"""vfpick attach/detach without libvirt: input checks (before any connection) and the bounded
wait for a live detach. The libvirt side is in test_clients_libvirt.py (real libvirtd)."""

import pytest

from clitools import assert_user_error, domain, vfpick
from vfpick.commands import hotplug


@pytest.mark.parametrize("nic, words", [
    (b"<interface type='network'><source network='slow'/></interface>", ["'slow' is not a vfpick pool", "fast"]),
    (b"<interface type='bridge'><source bridge='br0'/></interface>", ["give one pool interface"]),
    (b"<interface type='network'><source network='fast'/>", ["not well-formed"]),
    (b"<!DOCTYPE x [<!ENTITY e 'x'>]><interface type='network'/>", ["DOCTYPE"]),
    (b"<interface type='network'><source network='fast'/><teaming type='transient' persistent='ua-x'/>"
     b"</interface>", ["failover"]),
    (domain(), ["give one pool interface"]),
])
def test_attach_refuses_bad_nic_xml_before_asking_libvirt(host, nic, words):
    host.write_config()
    # no libvirt at this URI: the input is refused before any connection is tried
    proc = vfpick(host, "attach", "guest", "-", "--connect", "qemu+unix:///system?socket=/nonexistent",
                  input=nic)
    assert_user_error(proc, *words)


def test_config_flag_means_persistent_definition_and_config_file_goes_first(host):
    host.write_config()
    proc = vfpick(host, "--config", host.config_path, "attach", "guest", "-", "--config",
                  input=b"<interface type='bridge'/>")
    assert_user_error(proc, "give one pool interface")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


MAC = "52:54:00:aa:00:01"
WITH = ("<domain><devices><interface type='hostdev'><mac address='%s'/></interface>"
        "</devices></domain>" % MAC.upper()).encode()
WITHOUT = b"<domain><devices/></domain>"


def test_live_detach_completes_when_the_live_xml_drops_the_nic():
    clock = Clock()
    answers = iter([WITH, WITH, WITHOUT])
    assert hotplug.wait_removed(lambda: next(answers), MAC, 5, clock=clock, sleep=clock.sleep)
    assert 0 < clock.now < 5


def test_live_detach_gives_up_after_the_timeout():
    clock = Clock()
    assert not hotplug.wait_removed(lambda: WITH, MAC, 3, clock=clock, sleep=clock.sleep)
    assert 3 <= clock.now < 3.5
