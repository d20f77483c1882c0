"""Scenario 6: live migration between two L1 hosts (igb PFs on both, libvirt over TCP on their
private link) of a domain whose NIC comes from a failover pool: a virtio-net NIC (failover=on)
paired with the VF (vfio-pci failover_pair_id) by libvirt's <teaming>. QEMU asks the guest to
unplug the VF (its virtio_net loaded net_failover), migrates over virtio, and the destination's
`migrate begin` filter re-picks a VF of that host for the hostdev; QEMU plugs it in there.

The destination holds the source's VF address for another domain first, so the VF the migrated
domain runs on can only be one vfpick picked on the destination."""
from lab.guestwatch import guest_vfs, listen_tcp, pci_reports, wait_guest_vfs
from lab.labhost import CONFIG_TEXT, POOL

FAILOVER = POOL + "-fo"
MIGRATE_TIMEOUT = 900   # s; measured 168 s for a 256 MiB L2 between two TCG L1s


def configure(host):
    pfs = " ".join(dev for _, dev, _ in host.pfs)
    host.write_config(CONFIG_TEXT.format(pool=POOL, pfs=pfs)
                      + f"\n[pool {FAILOVER}]\npfs = {pfs}\nfailover = bridge:labbr0\n")
    host.run("ip link show labbr0 >/dev/null 2>&1 || { ip link add labbr0 type bridge && ip link set labbr0 up; }",
             check=True)
    return listen_tcp(host)


def claims(host, name):
    return [c for c in host.status()["claims"] if c["domain"] == name]


def test_failover_domain_migrates_onto_a_destination_pick(pair, evidence):
    src, dst = pair
    configure(src)
    dst_uri = configure(dst)
    assert src.run(f"virsh -c {dst_uri} hostname", check=True).stdout.strip() == dst.vm.name

    src.put("/root/l2m.xml", src.domain_xml("l2m", pool_nics=1, pool=FAILOVER))
    src.run("vfpick resolve /root/l2m.xml > /root/l2m-resolved.xml", check=True)
    [claim] = claims(src, "l2m")
    src_vf = claim["vf"]
    xml = src.run("cat /root/l2m-resolved.xml", quiet=True).stdout
    assert "<teaming type='persistent'/>" in xml and "<teaming type='transient'" in xml, xml
    # the destination's copy of that VF address is taken: its pick must differ
    dst.put("/root/l2x.xml", dst.domain_xml("l2x", pool_nics=1))
    dst.vfpick("define /root/l2x.xml", check=True)
    assert [c["vf"] for c in claims(dst, "l2x")] == [src_vf]

    # transient on the source: its claims end with it there (release end, no definition)
    r = src.run("virsh create /root/l2m-resolved.xml", timeout=180)
    assert r.rc == 0, r.stderr
    assert src.hostdev_vfs("l2m") == [src_vf]
    # QEMU plugs the VF (the failover primary) once the guest's virtio_net acks STANDBY
    wait_guest_vfs(src, "l2m", 1, timeout=300)

    r = src.run(f"time virsh migrate --live --verbose l2m {dst_uri} "
                f"--migrateuri tcp://{dst.vm.link_ip}:49152", timeout=MIGRATE_TIMEOUT)
    if r.rc != 0:
        src.run("tail -30 /var/log/libvirt/qemu/l2m.log")
    assert r.rc == 0, r.stderr
    unplugged = [rep for rep in pci_reports(src, "l2m") if not guest_vfs(rep[1])]
    assert unplugged, "the source guest never reported the VF unplugged before the migration"

    assert src.run("virsh list --all --name").stdout.split() == []
    assert claims(src, "l2m") == [], "the source's claims must end with the migrated domain"
    assert src.status()["claims"] == []
    assert src.driver(src_vf) == "igbvf"

    assert dst.run("virsh domstate l2m").stdout.strip() == "running"
    [dclaim] = claims(dst, "l2m")
    assert dclaim["active"] and dclaim["pool"] == FAILOVER and dclaim["vf"] != src_vf, dclaim
    assert dst.hostdev_vfs("l2m") == [dclaim["vf"]]
    assert dst.driver(dclaim["vf"]) == "vfio-pci"
    wait_guest_vfs(dst, "l2m", 1, timeout=300)
    evidence(f"  l2m ran on {src.vm.name} VF {src_vf}; migrated ({r.seconds:.0f} s) to {dst.vm.name}, "
             f"which picked VF {dclaim['vf']} (its {src_vf} held by l2x)\n")
    dst.vfpick("status")
