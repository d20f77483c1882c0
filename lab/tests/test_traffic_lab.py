"""Scenario 12 (issue 30): vfpick's two promises proven with packets, side by side with libvirt's
own hostdev pool (`<forward mode='hostdev'>` over the same VFs, PF after PF: it hands out the
first free VF in that order).

Redundancy: a guest with a bond over two NICs, once from libvirt's pool, once from a vfpick
pool (distinct = link), each pinged steadily by L1's peer while the cable of the PF under the
libvirt guest's NICs is cut at L0 (QMP set_link) for CUT_S seconds. The same PF, the same
start: fair and repeatable. libvirt put both NICs on that PF: the guest goes silent for the
whole cut. vfpick put one NIC there and one on another PF: the bond fails over.

Load spread: three single-NIC guests from each pool; the peer pings each one with the same
amount of traffic; L0 counts the bytes each PF put on the wire from the guests' MACs. libvirt
fills the first PF; vfpick spreads them over the three (all 1 Gb/s: an even share)."""
import time

from lab import traffic
from lab.labhost import PEER_IP, PEER_NS

CUT_S = 20          # s the cable stays cut
SETTLE_S = 4        # s of steady ping before the cut and after the plug
FAILOVER_MAX_S = 8  # s without a reply the vfpick guest may take (ARP monitor 0.3 s, TCG)


def started(host, name, ip):
    r = host.start(name)
    assert r.rc == 0, r.stderr
    host.l2_report(name)
    traffic.wait_reachable(host, ip)
    vfs = host.hostdev_vfs(name)
    return vfs, [traffic.pf_of(host, vf) for vf in vfs]


def through_cut(host, name, ip, pf_n, evidence):
    traffic.start_ping(host, ip, name)
    time.sleep(SETTLE_S)
    cut_at, plug_at = traffic.cut_window(host, pf_n, CUT_S)
    time.sleep(SETTLE_S)
    ping = traffic.account(traffic.stop_ping(host, name), cut_at, plug_at)
    guest = host.run(f"grep -a '^L2-PCI-NOW' /var/lib/libvirt/qemu/{name}-serial.log | "
                     "grep -o 'bond:active=[^ ]*' | uniq", quiet=True).stdout.split()
    evidence(f"  {name}: cable of PF {pf_n} cut {CUT_S} s: {ping.sent} sent, {ping.lost} lost, "
             f"longest silence {ping.longest_gap} s, {ping.replies_in_cut} replies during the cut; "
             f"guest's active leg: {' -> '.join(guest) or '(no bond report)'}\n")
    return ping


def test_bonded_guest_keeps_traffic_across_a_cut_cable(host, evidence):
    traffic.define_libvirt_pool(host)
    # libvirt's pool first, alone on the host
    bond = f"lab.bond={PEER_IP}"
    host.put("/root/lbond.xml", traffic.libvirt_pool_domain(host, "lbond", 2, f"lab.ip=10.99.0.12/24 {bond}"))
    host.run("virsh define /root/lbond.xml", check=True)
    lvfs, lpfs = started(host, "lbond", "10.99.0.12")
    evidence(f"  libvirt's pool gave lbond VFs {lvfs} on PFs {lpfs}\n")
    assert len(set(lpfs)) == 1, f"libvirt's pool was expected to put both NICs on one PF: {lpfs}"
    cut_n = traffic.pf_number(host, lpfs[0])
    lping = through_cut(host, "lbond", "10.99.0.12", cut_n, evidence)
    host.run("virsh destroy lbond", check=True, timeout=120)

    # vfpick's pool, from the same start, the same PF cut
    host.put("/root/vbond.xml", host.domain_xml("vbond", pool_nics=2, kernel_args=f"lab.ip=10.99.0.11/24 {bond}"))
    host.vfpick("define /root/vbond.xml", check=True)
    vvfs, vpfs = started(host, "vbond", "10.99.0.11")
    evidence(f"  vfpick's pool gave vbond VFs {vvfs} on PFs {vpfs}\n")
    assert len(set(vpfs)) == 2, vpfs
    assert lpfs[0] in vpfs, f"vfpick's guest must have a NIC on the cut PF {lpfs[0]} for a fair test: {vpfs}"
    vping = through_cut(host, "vbond", "10.99.0.11", cut_n, evidence)

    record = {"cut_seconds": CUT_S, "libvirt": lping._asdict(), "vfpick": vping._asdict(),
              "libvirt_pfs": lpfs, "vfpick_pfs": vpfs}
    paths = traffic.write("redundancy", record, host.vm.image.suite)
    evidence(f"  written to {', '.join(paths)}\n")
    assert lping.replies_in_cut == 0, f"libvirt's guest answered with its only PF cut: {lping}"
    assert vping.back and vping.longest_gap <= FAILOVER_MAX_S, f"vfpick's bonded guest lost traffic: {vping}"
    assert vping.replies_in_cut > 0, vping


def single_nic_guests(host, names, define):
    """Defines (DEFINE(name, xml path)) and starts each single-NIC guest; {name: (ip, mac)}."""
    guests = {}
    for i, name in enumerate(names):
        ip = f"10.99.0.{21 + i}"
        guests[name] = ip
        define(name, ip)
    # one at a time, each booted before the next starts: nested-KVM L2s booting at once under
    # TCG's emulated SVM crash L1 (docs/lab.md, "Reruns, L1 losses")
    for name, ip in guests.items():
        r = host.start(name)
        assert r.rc == 0, r.stderr
        host.l2_report(name)
        traffic.wait_reachable(host, ip)
    return {name: (ip, traffic.guest_macs(host, name)[0]) for name, ip in guests.items()}


def bytes_per_pf(host, guests, evidence, label):
    offsets = traffic.wire_offsets(host.vm, len(host.pfs))
    # the same traffic to every guest: 300 echo requests of 1000 bytes; their replies leave
    # through the guest's VF and its PF's port
    host.run(" ".join(f"ip netns exec {PEER_NS} ping -q -c 300 -s 1000 -i 0.01 {ip} >/dev/null & "
                      for ip, _ in guests.values()) + "wait", timeout=300)
    time.sleep(1)
    per_pf = traffic.wire_bytes(host.vm, offsets, [mac for _, mac in guests.values()])
    placed = {name: traffic.pf_number(host, traffic.pf_of(host, host.hostdev_vfs(name)[0])) for name in guests}
    share = traffic.busiest_share(per_pf)
    evidence(f"  {label}: guests on PFs {placed}; bytes each PF sent: {per_pf}; busiest PF's share {share}\n")
    return per_pf, share, placed


def test_load_spreads_over_the_pfs(host, evidence):
    traffic.define_libvirt_pool(host)

    def libvirt_define(name, ip):
        host.put(f"/root/{name}.xml", traffic.libvirt_pool_domain(host, name, 1, f"lab.ip={ip}/24"))
        host.run(f"virsh define /root/{name}.xml", check=True)

    def vfpick_define(name, ip):
        host.put(f"/root/{name}.xml", host.domain_xml(name, pool_nics=1, kernel_args=f"lab.ip={ip}/24"))
        host.vfpick(f"define /root/{name}.xml", check=True)

    lnames, vnames = ["lspread0", "lspread1", "lspread2"], ["vspread0", "vspread1", "vspread2"]
    guests = single_nic_guests(host, lnames, libvirt_define)
    lbytes, lshare, lplaced = bytes_per_pf(host, guests, evidence, "libvirt's pool")
    host.run("for d in " + " ".join(lnames) + "; do virsh destroy $d; done", timeout=300, check=True)
    guests = single_nic_guests(host, vnames, vfpick_define)
    vbytes, vshare, vplaced = bytes_per_pf(host, guests, evidence, "vfpick's pool")

    record = {"guests": len(vnames), "libvirt": {"bytes_per_pf": lbytes, "busiest_share": lshare},
              "vfpick": {"bytes_per_pf": vbytes, "busiest_share": vshare}}
    paths = traffic.write("spread", record, host.vm.image.suite)
    evidence(f"  written to {', '.join(paths)}\n")
    assert len(set(lplaced.values())) == 1 and lshare > 0.95, (lplaced, lbytes)
    assert len(set(vplaced.values())) == 3, vplaced
    assert vshare < 0.40 and min(vbytes.values()) > 0, vbytes
