"""Packets through the lab's VFs (issue 30): libvirt's own hostdev pool beside vfpick's, a
steady ping from L1's peer to a guest, cable cuts at L0, bytes each PF put on the wire.

The wire: every PF's port and L1's peer NIC sit on one QEMU hub at L0 (lab.vm); the peer NIC is
in L1's network namespace `peer` at 10.99.0.254 (lab.labhost.setup_peer). A guest takes
10.99.0.N through its kernel command line (lab.ip=, lab.bond=: lab/guest/l2-init). L0 dumps
the frames each PF sends (filter-dump, lab.vm.L1.wire_dump): bytes per PF are counted there,
outside every driver under test. The results go to RUNDIR/traffic.json and, the latest per
suite, to CACHE/results/traffic-SUITE.json, which `python -m bench` shows.
"""
import collections
import json
import os
import re
import struct
import time

from lab.host import CACHE, LabError, run_dir
from lab.labhost import PEER_NS, _h, wait_until

RESULTS = os.path.join(CACHE, "results")
LIBVIRT_POOL = "lvpool"

Ping = collections.namedtuple("Ping", "sent received lost longest_gap replies_in_cut back")
Ping.__doc__ = """A steady ping's account: packets SENT and RECEIVED, LOST; LONGEST_GAP, the
longest time without a reply (s) from the cut on; REPLIES_IN_CUT, replies while the cable
was cut; BACK, whether replies came while the cable was still cut or after it was plugged."""


def libvirt_pool_xml(vfs):
    """libvirt's own hostdev network over VFS (PCI addresses), in the order given: what an
    operator writes for libvirt's pool, which hands out the first free VF in that order."""
    rows = []
    for vf in vfs:
        dom, bus, rest = vf.split(":")
        slot, fn = rest.split(".")
        rows.append(f"    <address type='pci' domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/>")
    return (f"<network>\n  <name>{LIBVIRT_POOL}</name>\n  <forward mode='hostdev' managed='yes'>\n"
            "    <driver name='vfio'/>\n" + "\n".join(rows) + "\n  </forward>\n</network>\n")


def define_libvirt_pool(host):
    """libvirt's pool over every VF of the lab's PFs, PF after PF (address order)."""
    vfs = [vf for addr, _, _ in host.pfs for vf in host.vfs(addr)]
    host.put("/root/lvpool.xml", libvirt_pool_xml(vfs))
    host.run(f"virsh net-define /root/lvpool.xml && virsh net-start {LIBVIRT_POOL}", check=True)
    return vfs


def libvirt_pool_domain(host, name, nics, kernel_args):
    """An L2 whose NICS interfaces come from libvirt's pool (plain virsh define: not vfpick's)."""
    extra = "".join(f"<interface type='network'><mac address='52:54:00:b{i}:{_h(name)}:01'/>"
                    f"<source network='{LIBVIRT_POOL}'/></interface>\n    " for i in range(nics))
    return host.domain_xml(name, pool_nics=0, extra_devices=extra, kernel_args=kernel_args)


def pf_of(host, vf):
    return host.run(f"basename $(readlink -f /sys/bus/pci/devices/{vf}/physfn)", check=True,
                    quiet=True).stdout.strip()


def pf_number(host, pf):
    """1-based index of PF (address) among the lab's PFs: its netdev pfN at L0."""
    return [addr for addr, _, _ in host.pfs].index(pf) + 1


def guest_macs(host, name):
    """MACs of NAME's hostdev interfaces (its live XML), lower case."""
    xml = host.run(f"virsh dumpxml {name}", check=True, quiet=True).stdout
    return re.findall(r"<mac address='([0-9a-f:]+)'/>", xml)


def wait_reachable(host, ip, timeout=300):
    """Until the peer gets a reply from IP (a guest's bond or NIC up, its ARP answered)."""
    ok = wait_until(lambda: host.run(f"ip netns exec {PEER_NS} ping -c 1 -W 2 {ip}", timeout=30,
                                     quiet=True).rc == 0, timeout, interval=2)
    if not ok:
        raise LabError(f"{ip} never answered the peer's ping in {timeout} s")


def start_ping(host, ip, tag):
    """A steady ping (5 per second) from the peer to IP, in the background in L1."""
    host.run(f"nohup ip netns exec {PEER_NS} ping -D -i 0.2 -W 1 {ip} > /root/ping-{tag}.log 2>&1 "
             f"& echo $! > /root/ping-{tag}.pid", check=True, quiet=True)


def stop_ping(host, tag):
    """Stops TAG's ping; its output lines."""
    r = host.run(f"kill -INT $(cat /root/ping-{tag}.pid); sleep 2; cat /root/ping-{tag}.log", quiet=True)
    return r.stdout


_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", re.M)
_STATS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def account(output, cut_at, plug_at):
    """Ping from ping -D's OUTPUT; CUT_AT and PLUG_AT are L1 epoch seconds (date +%s.%N)."""
    replies = [float(ts) for ts, _ in _REPLY.findall(output)]
    stats = _STATS.search(output)
    if not stats or not replies:
        raise LabError(f"no ping account in: {output[-500:]}")
    sent, received = int(stats.group(1)), int(stats.group(2))
    after = [cut_at] + [t for t in replies if t >= cut_at]
    gap = max(b - a for a, b in zip(after, after[1:])) if len(after) > 1 else replies[-1] - cut_at
    if len(after) == 1:   # no reply after the cut at all: silent until the ping stopped
        gap = max(gap, plug_at - cut_at)
    in_cut = sum(cut_at < t < plug_at for t in replies)
    return Ping(sent, received, sent - received, round(gap, 1), in_cut, any(t > cut_at for t in replies))


def l1_now(host):
    return float(host.run("date +%s.%N", check=True, quiet=True).stdout)


def cut_window(host, pf_n, seconds):
    """Cuts PF PF_N's cable at L0 for SECONDS; (cut, plugged) as L1 epoch seconds, read after
    the cut and before the plug: a reply already on its way when the cable went is not counted
    as one that crossed the cut."""
    host.vm.set_cable(pf_n, False)
    cut_at = l1_now(host)
    time.sleep(seconds)
    plug_at = l1_now(host)
    host.vm.set_cable(pf_n, True)
    return cut_at, plug_at


# --- bytes each PF put on the wire, from L0's pcap ---------------------------------------------
def wire_offsets(vm, pfs):
    """The current end of each PF's pcap: count from here."""
    return {n: os.path.getsize(vm.wire_dump(n)) for n in range(1, pfs + 1)}


def wire_bytes(vm, offsets, macs):
    """{PF number: bytes of frames whose source MAC is in MACS, sent since OFFSETS}."""
    want = {bytes.fromhex(m.replace(":", "")) for m in macs}
    out = {}
    for n, start in offsets.items():
        total = 0
        with open(vm.wire_dump(n), "rb") as f:
            f.seek(max(start, 24))   # a pcap file starts with its 24-byte header
            while True:
                head = f.read(16)
                if len(head) < 16:
                    break
                _, _, incl, orig = struct.unpack("<IIII", head)
                frame = f.read(incl)
                if len(frame) < incl:
                    break
                if frame[6:12] in want:
                    total += orig
        out[n] = total
    return out


def busiest_share(per_pf):
    total = sum(per_pf.values())
    return round(max(per_pf.values()) / total, 3) if total else None


def write(kind, record, suite, results=RESULTS, rundir=None):
    """RUNDIR/traffic.json gets KIND's record; CACHE/results/traffic-SUITE.json too (latest)."""
    paths = []
    for path in (os.path.join(rundir or run_dir(), "traffic.json"), os.path.join(results, f"traffic-{suite}.json")):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        data[kind] = dict(record, at=time.strftime("%Y-%m-%d %H:%M"), suite=suite)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths
