"""Scenario 7: faults on a real kernel: the daemon restarted under running domains, VFs removed
(sriov_numvfs=0) under a running domain and recreated, a PF's link down."""

from lab.labhost import VFS_PER_PF, wait_until


def start_domain(host, name, nics):
    host.put(f"/root/{name}.xml", host.domain_xml(name, pool_nics=nics))
    host.vfpick(f"define /root/{name}.xml", check=True)
    r = host.start(name)
    assert r.rc == 0, r.stderr
    return sorted(c["vf"] for c in host.status()["claims"] if c["domain"] == name)


def test_reconnect_after_daemon_restart(host):
    vfs = start_domain(host, "l2r", 2)
    before = host.status()["claims"]
    assert all(c["active"] for c in before)
    host.restart_daemon()
    assert host.run("virsh domstate l2r").stdout.strip() == "running"
    assert host.hostdev_vfs("l2r") == vfs
    after = host.status()["claims"]
    assert after == before, "the reconnect must keep the running domain's claims, active"
    host.vfpick("status")
    r = host.vfpick("reconcile --dry-run")
    assert r.rc == 0, r.stderr


def _remove_vfs(host, pf):
    f = f"/sys/bus/pci/devices/{pf}/sriov_numvfs"
    host.run(f"echo 0 > {f}; cat {f}", timeout=180, check=True)


def test_vfs_removed_under_running_domain(host, evidence):
    vfs = start_domain(host, "l2g", 2)
    claims = {c["vf"]: c for c in host.status()["claims"]}
    victim = claims[vfs[0]]["pf"]
    _remove_vfs(host, victim)
    # QEMU unplugs the VF when vfio-pci relays the kernel's request (asynchronously)
    assert wait_until(lambda: vfs[0] not in host.hostdev_vfs("l2g"), 60), "QEMU kept the removed VF"
    evidence(f"  live XML hostdevs of l2g after sriov_numvfs=0 on {victim}: {host.hostdev_vfs('l2g')} (were {vfs})\n")
    assert host.run("virsh domstate l2g").stdout.strip() == "running"
    status = host.status()
    gone = [c for c in status["claims"] if c["vf"] == vfs[0]]
    assert gone and gone[0]["present"] is False, gone
    assert "GONE" in host.vfpick("status").stdout
    # new picks: only VFs that exist, none on the PF without VFs
    host.put("/root/l2n.xml", host.domain_xml("l2n", pool_nics=2))
    host.vfpick("define /root/l2n.xml", check=True)
    picked = [c for c in host.status()["claims"] if c["domain"] == "l2n"]
    exist = set(host.run("ls /sys/bus/pci/devices").stdout.split())
    assert len(picked) == 2 and all(c["vf"] in exist and c["pf"] != victim for c in picked), picked
    # the VFs come back
    host.set_numvfs(VFS_PER_PF, [(victim, None, None)])
    status = host.status()
    assert [c["present"] for c in status["claims"] if c["vf"] == vfs[0]] == [True]
    host.vfpick("check")
    host.put("/root/l2p.xml", host.domain_xml("l2p", pool_nics=2))
    host.vfpick("define /root/l2p.xml", check=True)
    picked = [c for c in host.status()["claims"] if c["domain"] == "l2p"]
    exist = set(host.run("ls /sys/bus/pci/devices").stdout.split())
    assert len(picked) == 2 and all(c["vf"] in exist for c in picked), picked


def test_recreated_vf_not_shown_active(host, evidence):
    """The VF QEMU unplugged and the kernel recreated is not the domain's any more: status must
    not show its claim as active (issue 24 item 3)."""
    [vf] = start_domain(host, "l2v", 1)
    pf = next(c["pf"] for c in host.status()["claims"] if c["vf"] == vf)
    _remove_vfs(host, pf)
    assert wait_until(lambda: vf not in host.hostdev_vfs("l2v"), 60), "QEMU kept the removed VF"
    host.set_numvfs(VFS_PER_PF, [(pf, None, None)])
    assert host.driver(vf) == "igbvf"
    evidence(f"  {vf} recreated, driver igbvf; live XML hostdevs of l2v: {host.hostdev_vfs('l2v')}\n")
    host.vfpick("status")
    [claim] = [c for c in host.status()["claims"] if c["vf"] == vf]
    assert claim["active"] is not True, claim


def test_link_down_new_picks_avoid_it(host):
    addr, dev, _ = host.pfs[-1]
    host.run(f"ip link set {dev} down", check=True)
    assert wait_until(lambda: host.run(f"cat /sys/class/net/{dev}/operstate").stdout.strip() == "down", 30)
    host.vfpick("topology")
    for name in ("d1", "d2"):
        host.put(f"/root/{name}.xml", host.domain_xml(name, pool_nics=2))
        host.vfpick(f"define /root/{name}.xml", check=True)
    picked = host.status()["claims"]
    assert len(picked) == 4 and all(c["pf"] != addr for c in picked), picked
    assert all(c["link_up"] for c in picked)
