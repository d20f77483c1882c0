"""Scenario 5: NIC hotplug on a running L2. `vfpick attach --live` claims a VF on a link the
domain does not use yet and libvirt plugs it: the guest reports the new 8086:10ca; `vfpick detach
--live` waits until the guest let go of it, then releases the claim; the guest reports it gone.
A NIC of a trust/spoofchk pool attached live runs with the pool's values (`ip -d link`),
and gets the VF's previous ones back at detach. A failover pool's NIC is not hotplugged
(vfpick refuses it in one line, no claim changes)."""
from lab.guestwatch import guest_vfs, vf_settings, wait_guest_vfs
from lab.labhost import CONFIG_TEXT, POOL

NEW_MAC = "52:54:00:5a:00:02"
FAILOVER = POOL + "-fo"
TRUSTED = POOL + "-trusted"    # lab.labhost's pool with trust = on, spoofchk = off
DRIVER_DEFAULT = (False, True)  # igb VFs start with trust off, spoof checking on


def claims_of(host, name):
    return sorted((c["mac"], c["vf"], c["link"], c["active"]) for c in host.status()["claims"]
                  if c["domain"] == name)


def test_attach_detach_live(host, evidence):
    host.put("/root/l2p.xml", host.domain_xml("l2p", pool_nics=1))
    host.vfpick("define /root/l2p.xml", check=True)
    assert host.start("l2p").rc == 0
    [(mac0, vf0, link0, active0)] = claims_of(host, "l2p")
    assert active0
    wait_guest_vfs(host, "l2p", 1)

    host.put("/root/nic.xml", f"<interface type='network'><mac address='{NEW_MAC}'/>"
                              f"<source network='{POOL}'/></interface>\n")
    r = host.vfpick("attach l2p /root/nic.xml --live", timeout=180)
    assert r.rc == 0, r.stderr
    claims = claims_of(host, "l2p")
    assert len(claims) == 2 and all(active for *_, active in claims), claims
    [(_, vf1, link1, _)] = [c for c in claims if c[0] == NEW_MAC]
    assert link1 != link0, "the hotplugged NIC must be on another link than the domain's first"
    assert host.hostdev_vfs("l2p") == sorted([vf0, vf1])
    assert host.driver(vf1) == "vfio-pci"
    uptime, devices = wait_guest_vfs(host, "l2p", 2)
    evidence(f"  attached {NEW_MAC} on {vf1} (link {link1}); guest PCI VFs {guest_vfs(devices)}\n")

    r = host.vfpick(f"detach l2p {NEW_MAC} --live", timeout=180)
    assert r.rc == 0, r.stderr
    assert claims_of(host, "l2p") == [(mac0, vf0, link0, True)]
    assert host.hostdev_vfs("l2p") == [vf0]
    wait_guest_vfs(host, "l2p", 1)
    assert host.driver(vf1) == "igbvf", "libvirt gives a detached managed VF back to its driver"
    host.vfpick("status")


def test_a_live_attach_sets_the_pools_vf_settings_and_detach_puts_them_back(host, evidence):
    host.put("/root/l2h.xml", host.domain_xml("l2h", pool_nics=1))
    host.vfpick("define /root/l2h.xml", check=True)
    assert host.start("l2h").rc == 0
    wait_guest_vfs(host, "l2h", 1)
    host.put("/root/trusted.xml", f"<interface type='network'><mac address='{NEW_MAC}'/>"
                                  f"<source network='{TRUSTED}'/></interface>\n")
    r = host.vfpick("attach l2h /root/trusted.xml --live", timeout=180)
    assert r.rc == 0, r.stderr
    [vf] = [c["vf"] for c in host.status()["claims"] if c["mac"] == NEW_MAC]
    running = vf_settings(host, vf)
    assert running == (True, False), running
    wait_guest_vfs(host, "l2h", 2)
    r = host.vfpick(f"detach l2h {NEW_MAC} --live", timeout=180)
    assert r.rc == 0, r.stderr
    assert NEW_MAC not in [c["mac"] for c in host.status()["claims"] if c["domain"] == "l2h"]
    after = vf_settings(host, vf)
    evidence(f"  {vf} attached live from pool {TRUSTED}: trust/spoofchk {running}; after detach "
             f"{after}\n")
    assert after == DRIVER_DEFAULT


def test_failover_nic_is_not_hotplugged(host):
    pfs = " ".join(dev for _, dev, _ in host.pfs)
    host.write_config(CONFIG_TEXT.format(pool=POOL, pfs=pfs)
                      + f"\n[pool {FAILOVER}]\npfs = {pfs}\nfailover = bridge:labbr0\n")
    host.run("ip link add labbr0 type bridge && ip link set labbr0 up", check=True)
    host.put("/root/l2q.xml", host.domain_xml("l2q", pool_nics=1))
    host.vfpick("define /root/l2q.xml", check=True)
    assert host.start("l2q").rc == 0
    before = host.status()["claims"]
    host.put("/root/fo.xml", f"<interface type='network'><source network='{FAILOVER}'/></interface>\n")
    r = host.vfpick("attach l2q /root/fo.xml --live", timeout=120)
    assert r.rc == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("vfpick: "), r.stderr
    assert "failover" in r.stderr
    assert host.status()["claims"] == before
