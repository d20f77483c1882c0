"""Scenario 10: self-healing (issue 32). A running bonded L2 (two plain VF NICs on two distinct
PFs, a bond's two legs) under `vfpick watch` with `heal = live`; one PF's link is cut: at L0
(QMP set_link, the cable) where the lab's VM has `set_cable`, else in L1 (`ip link set PF
down`: carrier and operstate go down); VFPICK_LAB_HEAL_CUT=ip|qmp chooses. Within the
hold-down plus a bound, the watcher moves the NIC on the dead PF to the third PF: detach
(the guest lets go), attach with the same MAC and guest address, redefinition, claims
settled. The guest reports the VF gone and back at the same address (L2-PCI-NOW lines); the
watcher's /metrics counts the move; the link coming back moves nothing back. With traffic: a
steady ping from L1's peer to the guest's bond crosses the cut and the heal, and the bond ends
with two working legs.

Evidence: the timeline, in seconds after the cut (L1's clock; the watcher's journal lines):
link down, seen (hold-down starts), planned (hold-down over), detached, attached, done
(claims settled), and the guest's reports (its own uptime).

Run: sudo scripts/test-lab -k heal   (VFPICK_LAB_HEAL_HOLDDOWN=SECONDS, default 10, sets the
pool's heal_holddown; the default of 30 s works too, only slower)."""
import os

from prometheus_client.parser import text_string_to_metric_families

from lab import traffic
from lab.guestwatch import guest_vfs, pci_reports, wait_guest_vfs
from lab.host import LabError
from lab.labhost import CONFIG_TEXT, PEER_IP, POOL, wait_until
from test_livemove_lab import claims_of, netdev_of, nic_in_xml, wait_gone_and_back

HOLDDOWN = float(os.environ.get("VFPICK_LAB_HEAL_HOLDDOWN", "10"))
MOVE_BOUND = 300    # s after the hold-down: the next look (<= 10 s), the guest's unplug ack
                    # (livemove waits <= 30 s), attach, redefine, settle, all under TCG
UNIT = "vfpick-lab-heal"
METRICS = "127.0.0.1:9731"
NAME = "l2h"
BOND_IP = "10.99.0.41"
SILENCE_MAX_S = 8   # s without a reply: the bond's ARP monitor (0.3 s) fails over, under TCG


def heal_config(host):
    text = CONFIG_TEXT.format(pool=POOL, pfs=" ".join(dev for _, dev, _ in host.pfs))
    # the heal keys go into [pool lab] (the first section after [vfpick])
    return text.replace("distinct = link\n", "distinct = link\nheal = live\nheal_holddown = %g\n"
                        % HOLDDOWN, 1)


def journal(host):
    """[(L1 epoch seconds, message)] of the watcher's lines (after its 'vfpick watch: ')."""
    out = host.run(f"journalctl -u {UNIT} -o short-unix --no-pager", quiet=True).stdout
    lines = []
    for line in out.splitlines():
        stamp, _, rest = line.partition(" ")
        _, sep, message = rest.partition(" vfpick watch: ")
        if sep:
            try:
                lines.append((float(stamp), message))
            except ValueError:
                pass
    return lines


def first(lines, *needles):
    """(time, message) of the first journal line that holds every needle, or None."""
    return next(((t, m) for t, m in lines if all(n in m for n in needles)), None)


def start_watcher(host):
    host.run(f"systemctl stop {UNIT} 2>/dev/null; systemctl reset-failed {UNIT} 2>/dev/null; true",
             quiet=True)
    host.run(f"systemd-run --unit {UNIT} --collect vfpick watch --connect qemu:///system "
             f"--metrics-listen {METRICS}", check=True)
    if not wait_until(lambda: first(journal(host), "connected to qemu:///system"), 120, interval=2):
        raise LabError(f"vfpick watch did not connect in 120 s: {journal(host)[-10:]}")


def stop_watcher(host):
    host.run(f"journalctl -u {UNIT} -o cat --no-pager | tail -40", quiet=False)  # into the log
    host.run(f"systemctl stop {UNIT} 2>/dev/null; systemctl reset-failed {UNIT} 2>/dev/null; true",
             quiet=True)


def by_qmp(host):
    how = os.environ.get("VFPICK_LAB_HEAL_CUT") or ("qmp" if hasattr(host.vm, "set_cable") else "ip")
    if how not in ("ip", "qmp"):
        raise LabError(f"VFPICK_LAB_HEAL_CUT={how}: use ip or qmp")
    return how == "qmp"


def pf_number(host, netdev):
    """PF NETDEV's number for the lab VM's set_cable: 1-based, in address order (host.pfs)."""
    return 1 + [dev for _, dev, _ in host.pfs].index(netdev)


def cut_link(host, netdev, up=False):
    """L1's clock (epoch s) right before PF NETDEV's link goes down (or up): its cable at L0
    (QMP set_link, PF N in address order) or `ip link set` in L1."""
    if by_qmp(host):
        t = float(host.run("date +%s.%N", check=True, quiet=True).stdout.split()[0])
        host.vm.set_cable(pf_number(host, netdev), up)
        if host.vm.evidence:
            host.vm.evidence(f"  [l0] QMP set_link pf{pf_number(host, netdev)} up={up}\n")
        return t
    r = host.run(f"date +%s.%N; ip link set {netdev} {'up' if up else 'down'}", check=True)
    return float(r.stdout.split()[0])


def heal_metrics(host):
    """{(decision, reason): value} of vfpick_heal_decisions_total for the lab pool, live mode;
    and {name: value} of vfpick_link_up by link, vfpick_domain_degraded by domain."""
    text = host.run("python3 -c \"import urllib.request; print(urllib.request.urlopen("
                    f"'http://{METRICS}/metrics', timeout=30).read().decode())\"",
                    check=True, quiet=True).stdout
    decisions, link_up, degraded = {}, {}, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vfpick_heal_decisions_total" and s.labels["pool"] == POOL:
                assert s.labels["mode"] == "live", s
                decisions[(s.labels["decision"], s.labels["reason"])] = s.value
            elif s.name == "vfpick_link_up":
                link_up[s.labels["link"]] = s.value
            elif s.name == "vfpick_domain_degraded":
                degraded[s.labels["domain"]] = s.value
    return decisions, link_up, degraded


def test_watch_heals_a_bonded_l2_when_a_pf_link_dies(host, evidence):
    host.write_config(heal_config(host))
    host.put(f"/root/{NAME}.xml", host.domain_xml(NAME, pool_nics=2,
                                                  kernel_args=f"lab.ip={BOND_IP}/24 lab.bond={PEER_IP}"))
    host.vfpick(f"define /root/{NAME}.xml", check=True)
    r = host.start(NAME)
    assert r.rc == 0, r.stderr
    guest_before = wait_guest_vfs(host, NAME, 2)
    before = claims_of(host, NAME)
    assert len(before) == 2 and all(c["active"] for c in before), before
    assert len({c["pf"] for c in before}) == 2, before
    dying = before[0]
    stays = before[1]
    third = {addr for addr, _, _ in host.pfs} - {c["pf"] for c in before}
    dead_dev = netdev_of(host, dying["pf"])
    traffic.wait_reachable(host, BOND_IP)
    traffic.start_ping(host, BOND_IP, NAME)
    t_ping = traffic.l1_now(host)
    try:
        start_watcher(host)
        seen_reports = len(pci_reports(host, NAME))
        t_cut = cut_link(host, dead_dev)
        evidence(f"  cut: {'cable at L0' if by_qmp(host) else 'ip link set down in L1'} of "
                 f"{dead_dev} (PF {dying['pf']}, NIC {dying['mac']}, VF {dying['vf']}); "
                 f"heal_holddown = {HOLDDOWN:g} s\n")

        def outcome():
            lines = journal(host)
            return (first(lines, "heal: done: NIC " + dying["mac"])
                    or first(lines, "heal: rolled back: NIC " + dying["mac"])
                    or first(lines, "heal: refused: NIC " + dying["mac"]))
        ended = wait_until(outcome, HOLDDOWN + MOVE_BOUND, interval=2)
        lines = journal(host)
        if not ended or "heal: done" not in ended[1]:
            raise LabError(f"no heal of NIC {dying['mac']} within {HOLDDOWN + MOVE_BOUND:g} s of "
                           f"the cut: {ended}; the watcher said: "
                           + " | ".join(m for _, m in lines if m.startswith("heal")))

        after = claims_of(host, NAME)
        [moved] = [c for c in after if c["mac"] == dying["mac"]]
        [kept] = [c for c in after if c["mac"] == stays["mac"]]
        assert moved["pf"] in third and moved["vf"] != dying["vf"], (moved, third)
        assert kept == stays, (kept, stays)                      # the other leg stays as it was
        assert all(c["active"] for c in after) and len(after) == 2, after
        assert [e["outcome"] for e in moved["heal"]] == ["moved"], moved
        assert (moved["heal"][0]["from_vf"], moved["heal"][0]["to_vf"]) == (dying["vf"], moved["vf"])
        # the old VF is released by libvirt (managed): with its PF down, igbvf may fail to
        # probe it (no mailbox answer), so its driver is only recorded, not asserted
        evidence(f"  old VF {dying['vf']} driver now: {host.driver(dying['vf'])}\n")
        assert host.driver(moved["vf"]) == "vfio-pci"
        for live in (True, False):
            assert nic_in_xml(host, NAME, dying["mac"], live) == (moved["vf"], None), live

        found = wait_gone_and_back(host, NAME, seen_reports, 2)
        gone, back = found[0], found[1]   # newer versions also say how (a third item)
        how = found[2] if len(found) > 2 else "gone, then back"
        assert guest_vfs(back[1]) == guest_vfs(guest_before[1]), "the new VF keeps the guest address"

        # the timeline, from the watcher's journal (L1's clock), in seconds after the cut
        steps = [("link cut", (t_cut, "")),
                 ("watcher sees it: hold-down starts", first(lines, "under NIC " + dying["mac"])),
                 ("hold-down over: move planned", first(lines, "heal: planned: move NIC " + dying["mac"])),
                 ("detach: guest released old VF", first(lines, "heal: step: VF %s detached" % dying["vf"])),
                 ("attach: new VF in", first(lines, "heal: step: VF %s attached" % moved["vf"])),
                 ("claims settled (heal: done)", first(lines, "heal: done: NIC " + dying["mac"]))]
        missing = [label for label, step in steps if not step]
        assert not missing, (missing, lines)
        evidence("  timeline (s after the cut, L1 clock):\n" + "".join(
            f"    {step[0] - t_cut:7.1f}  {label}\n" for label, step in steps))
        evidence(f"  guest {NAME} ({how}): at uptime {gone[0]:.0f} s sees {guest_vfs(gone[1])}, at "
                 f"{back[0]:.0f} s {guest_vfs(back[1])} (the new VF, same guest address)\n")
        seen_at, planned_at = steps[1][1][0], steps[2][1][0]
        assert planned_at >= seen_at + HOLDDOWN - 1, "the move waited out the hold-down"

        decisions, link_up, degraded = heal_metrics(host)
        assert decisions.get(("planned", "")) == 1 and decisions.get(("done", "")) == 1, decisions
        assert not decisions.get(("rolled_back", "move_failed")), decisions
        assert link_up.get(dying["link"]) == 0, link_up
        assert degraded.get(NAME) == 0, degraded   # two legs, up and distinct again
        evidence(f"  watcher /metrics: vfpick_heal_decisions_total {decisions}; "
                 f"link {dying['link']} up {link_up.get(dying['link'])}; {NAME} degraded "
                 f"{degraded.get(NAME)}\n")
        host.vfpick("status")
        # with traffic: the guest's bond has two working legs again and the ping never stopped
        # for longer than a failover (the cut leg's ARP monitor, then the move of a backup leg)
        legs = wait_until(lambda: sum(tok.startswith("carrier:") for tok in pci_reports(host, NAME)[-1][1]) == 2,
                          120, interval=2)
        ping = traffic.account(traffic.stop_ping(host, NAME), t_ping, traffic.l1_now(host))
        evidence(f"  {NAME}'s bond through the cut and the heal: {ping.sent} pings, {ping.lost} lost, "
                 f"longest silence {ping.longest_gap} s; last guest report: {pci_reports(host, NAME)[-1][1][-4:]}\n")
        assert legs, f"the guest's bond did not get its second leg back: {pci_reports(host, NAME)[-1]}"
        assert ping.back and ping.longest_gap <= SILENCE_MAX_S, ping

        # the link comes back: nothing moves back
        cut_link(host, dead_dev, up=True)
        wait_until(lambda: first(journal(host), "link up again on PF " + dead_dev), 60, interval=2)
        n = len(journal(host))
        wait_until(lambda: False, HOLDDOWN + 15, interval=5)  # past a hold-down and a look
        assert [c["vf"] for c in claims_of(host, NAME)] == [c["vf"] for c in after]
        assert not [m for _, m in journal(host)[n:] if m.startswith("heal: planned")]
    finally:
        host.run(f"pkill -f 'ping -D -i 0.2 -W 1 {BOND_IP}'", quiet=True)
        stop_watcher(host)
        host.run(f"ip link set {dead_dev} up", quiet=True)
        if hasattr(host.vm, "set_cable"):
            host.vm.set_cable(pf_number(host, dead_dev), True)
