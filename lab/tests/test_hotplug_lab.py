"""Scenario 5: NIC hotplug on a running L2. `vfpick attach --live` claims a VF on a link the
domain does not use yet and libvirt plugs it: the guest reports the new 8086:10ca; `vfpick detach
--live` waits until the guest let go of it, then releases the claim; the guest reports it gone.
A failover pool's NIC is not hotplugged (vfpick refuses it in one line, no claim changes)."""
from lab.guestwatch import guest_vfs, wait_guest_vfs
from lab.labhost import CONFIG_TEXT, POOL

NEW_MAC = "52:54:00:5a:00:02"
FAILOVER = POOL + "-fo"


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
