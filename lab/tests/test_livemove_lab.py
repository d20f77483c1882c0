"""Scenario 9: live moves on a drained PF (issue 19 item 4). A running 2-NIC L2 (its NICs on two
distinct PFs, a bond's two legs) has one PF drained with `vfpick drain PF --live
--allow-nic-gap`: vfpick reserves a VF on the third PF, detaches the old VF live (the guest
lets go of it), attaches the new one with the same MAC and guest address, redefines the
domain and releases the old claim. The guest reports the VF gone and back (L2-PCI-NOW lines);
the live and the persistent XML name the new VF; the claims are right. The guest's bond over
the two VFs carries a steady ping from L1's peer all along: the move costs it at most a short
silence (the bond's ARP monitor fails over, the guest enslaves the new VF), never the guest.

The same for a failover-pool NIC (virtio + VF, one MAC): `drain --live` alone moves it."""
import time

from lxml import etree

from lab import traffic

from lab.guestwatch import guest_vfs, netdevs, pci_reports, wait_guest_vfs
from lab.host import LabError
from lab.labhost import CONFIG_TEXT, PEER_IP, POOL, wait_until

FAILOVER = POOL + "-fo"
DRAIN_TIMEOUT = 300   # s for the drain command: a detach waits for the guest (vfpick: <= 30 s)
GUEST_TIMEOUT = 180   # s until the guest reports the VF gone and back (it polls every 2 s)
BOND_IP = "10.99.0.31"
MOVE_SILENCE_MAX_S = 8   # s without a reply while a bond leg moves (ARP monitor 0.3 s, TCG)


def claims_of(host, name):
    return sorted((c for c in host.status()["claims"] if c["domain"] == name), key=lambda c: c["mac"])


def netdev_of(host, pf):
    return next(dev for addr, dev, _ in host.pfs if addr == pf)


def nic_in_xml(host, name, mac, live):
    """(source VF, teaming type or None) of NAME's hostdev interface with MAC in its live or
    persistent XML."""
    xml = host.run(f"virsh dumpxml {'' if live else '--inactive'} {name}", check=True, quiet=True).stdout
    for iface in etree.fromstring(xml.encode()).findall("devices/interface[@type='hostdev']"):
        if iface.find("mac").get("address") == mac:
            a = iface.find("source/address")
            teaming = iface.find("teaming")
            return ("%04x:%02x:%02x.%x" % tuple(int(a.get(k), 16) for k in ("domain", "bus", "slot", "function")),
                    None if teaming is None else teaming.get("type"))
    raise LabError(f"{name}: no hostdev interface with MAC {mac} in its {'live' if live else 'persistent'} XML")


def wait_gone_and_back(host, name, seen, count):
    """The guest's reports after the first SEEN ones show the VF unplugged and plugged back
    (bounded): a report with COUNT-1 igb VFs then a later one with COUNT again, or, when the
    move fell between two of the guest's 2 s polls, a report whose VF at the same guest address
    has a new netdev (ifindex). Returns (before or gone report, back report, how)."""
    def gone_then_back():
        earlier = pci_reports(host, name)
        reports = earlier[seen:]
        gone = next((i for i, (_, devs) in enumerate(reports) if len(guest_vfs(devs)) == count - 1), None)
        if gone is not None:
            back = next((r for r in reports[gone + 1:] if len(guest_vfs(r[1])) == count), None)
            return back and (reports[gone], back, "gone, then back")
        if not seen:
            return None
        before = earlier[seen - 1]
        old = netdevs(before[1])
        for r in reports:
            new = netdevs(r[1])
            if len(guest_vfs(r[1])) == count and any(new.get(a) not in (None, old.get(a))
                                                     for a in guest_vfs(r[1]) if a in old):
                return before, r, "plugged back between two polls: a new netdev at the same address"
        return None
    found = wait_until(gone_then_back, GUEST_TIMEOUT, interval=2)
    if not found:
        raise LabError(f"{name}: the guest did not report a VF gone and back in {GUEST_TIMEOUT} s; "
                       f"reports since the move: {pci_reports(host, name)[seen:]}")
    return found


def assert_moved(host, name, before, drained_pf, evidence, failover=False):
    """The NIC that was on DRAINED_PF is on another PF now (its MAC and, for a failover NIC,
    its teaming kept, live and persistent), the other NIC as it was."""
    after = claims_of(host, name)
    [moving] = [c for c in before if c["pf"] == drained_pf]
    third = {addr for addr, _, _ in host.pfs} - {c["pf"] for c in before}
    assert [c["mac"] for c in after] == [c["mac"] for c in before], after   # no claim doubled or lost
    assert all(c["active"] for c in after), after
    assert len({c["vf"] for c in after}) == len(after), after
    assert not any(c["pf"] == drained_pf for c in after), after
    [moved] = [c for c in after if c["mac"] == moving["mac"]]
    assert moved["pf"] in third and moved["vf"] != moving["vf"], (moved, third)
    if len(after) > 1:
        assert len({c["pf"] for c in after}) == len(after), "the NICs must stay on distinct PFs"
        assert [c for c in after if c["mac"] != moving["mac"]] == \
            [c for c in before if c["mac"] != moving["mac"]], "the NIC elsewhere must not move"
    old_vf, new_vf = moving["vf"], moved["vf"]
    assert host.driver(old_vf) == "igbvf", "the old VF goes back to its driver, free"
    assert host.driver(new_vf) == "vfio-pci"
    want = sorted(c["vf"] for c in after)
    assert host.hostdev_vfs(name) == want, "the live XML names the new VF"
    assert host.hostdev_vfs(name, live=False) == want, "the persistent definition names the new VF"
    teaming = "transient" if failover else None
    for live in (True, False):
        assert nic_in_xml(host, name, moving["mac"], live) == (new_vf, teaming), (live, new_vf, teaming)
    evidence(f"  NIC {moving['mac']} moved live: VF {old_vf} (PF {drained_pf}) -> VF {new_vf} "
             f"(PF {moved['pf']}); live and persistent XML: {want}\n")
    return old_vf, new_vf


def drain_live(host, name, pf, flags):
    seen = len(pci_reports(host, name))
    r = host.vfpick(f"drain {netdev_of(host, pf)} --live {flags}".rstrip(), timeout=DRAIN_TIMEOUT)
    assert r.rc == 0, r.stdout + r.stderr
    assert f"moved running domain '{name}'" in r.stdout, r.stdout
    return seen


def drain_and_check(host, name, before, guest_before, flags, evidence, failover=False):
    """drain --live FLAGS of the PF of NAME's first NIC, then what must hold; undrained after."""
    drained = before[0]["pf"]
    count = len(guest_vfs(guest_before[1]))
    try:
        seen = drain_live(host, name, drained, flags)
        assert_moved(host, name, before, drained, evidence, failover=failover)
        gone, back, how = wait_gone_and_back(host, name, seen, count)
        assert guest_vfs(back[1]) == guest_vfs(guest_before[1]), "the new VF keeps the guest address"
        evidence(f"  guest {name} ({how}): at uptime {gone[0]:.0f} s sees {guest_vfs(gone[1])} "
                 f"{netdevs(gone[1])}, at {back[0]:.0f} s {guest_vfs(back[1])} {netdevs(back[1])}\n")
        host.vfpick("status")
    finally:
        r = host.vfpick(f"undrain {netdev_of(host, drained)}")
    assert r.rc == 0, r.stderr
    assert host.status()["drained"] == []


def test_drain_live_moves_a_running_bonded_l2(host, evidence):
    # the guest's bond over its two VFs carries a steady ping from L1's peer through the move
    host.put("/root/l2d.xml", host.domain_xml("l2d", pool_nics=2,
                                              kernel_args=f"lab.ip={BOND_IP}/24 lab.bond={PEER_IP}"))
    host.vfpick("define /root/l2d.xml", check=True)
    r = host.start("l2d")
    assert r.rc == 0, r.stderr
    report = host.l2_report("l2d")
    assert report.count(" 8086:10ca ") == 2, report
    guest_before = wait_guest_vfs(host, "l2d", 2)
    before = claims_of(host, "l2d")
    assert len(before) == 2 and all(c["active"] for c in before), before
    assert len({c["pf"] for c in before}) == 2, before
    traffic.wait_reachable(host, BOND_IP)
    traffic.start_ping(host, BOND_IP, "l2d")
    t0 = traffic.l1_now(host)
    drain_and_check(host, "l2d", before, guest_before, "--allow-nic-gap", evidence)
    # both legs again: the guest enslaved the new VF (lab/guest/l2-init), and traffic flowed
    legs = wait_until(lambda: sum(tok.startswith("carrier:") for tok in pci_reports(host, "l2d")[-1][1]) == 2,
                      GUEST_TIMEOUT, interval=2)
    time.sleep(4)
    ping = traffic.account(traffic.stop_ping(host, "l2d"), t0, traffic.l1_now(host))
    evidence(f"  l2d's bond through the live move: {ping.sent} pings, {ping.lost} lost, longest silence "
             f"{ping.longest_gap} s; last guest report: {pci_reports(host, 'l2d')[-1][1][-4:]}\n")
    assert legs, f"the guest's bond did not get its second leg back: {pci_reports(host, 'l2d')[-1]}"
    assert ping.back and ping.longest_gap <= MOVE_SILENCE_MAX_S, ping


def test_drain_live_moves_a_running_failover_nic(host, evidence):
    pfs = " ".join(dev for _, dev, _ in host.pfs)
    host.write_config(CONFIG_TEXT.format(pool=POOL, pfs=pfs)
                      + f"\n[pool {FAILOVER}]\npfs = {pfs}\nfailover = bridge:labbr0\n")
    host.run("ip link add labbr0 type bridge && ip link set labbr0 up", check=True)
    host.put("/root/l2f.xml", host.domain_xml("l2f", pool_nics=1, pool=FAILOVER))
    host.vfpick("define /root/l2f.xml", check=True)
    xml = host.run("virsh dumpxml --inactive l2f", quiet=True).stdout
    assert "<teaming type='persistent'/>" in xml and "<teaming type='transient'" in xml, xml
    r = host.start("l2f")
    assert r.rc == 0, r.stderr
    # QEMU plugs the VF (the failover primary) once the guest's virtio_net acks STANDBY
    guest_before = wait_guest_vfs(host, "l2f", 1, timeout=300)
    before = claims_of(host, "l2f")
    assert len(before) == 1 and before[0]["active"], before
    drain_and_check(host, "l2f", before, guest_before, "", evidence, failover=True)
