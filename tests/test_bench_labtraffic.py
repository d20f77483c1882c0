"""The lab's traffic figures: what lab/traffic.py reads from ping and L0's pcaps, what it
writes, and what bench reports of it (bench/labtraffic.py)."""

import importlib
import os
import struct
import subprocess
import sys

from test_bench_labtiming import BENCH, REPO, _load

labtraffic = _load("vfpick_bench_labtraffic", os.path.join(REPO, "bench", "labtraffic.py"))
traffic = importlib.import_module("lab.traffic")

PING = """\
PING 10.99.0.11 (10.99.0.11) 56(84) bytes of data.
[100.000000] 64 bytes from 10.99.0.11: icmp_seq=1 ttl=64 time=2.0 ms
[100.200000] 64 bytes from 10.99.0.11: icmp_seq=2 ttl=64 time=2.0 ms
[100.400000] 64 bytes from 10.99.0.11: icmp_seq=3 ttl=64 time=2.0 ms
[102.400000] 64 bytes from 10.99.0.11: icmp_seq=13 ttl=64 time=2.0 ms
[102.600000] 64 bytes from 10.99.0.11: icmp_seq=14 ttl=64 time=2.0 ms

--- 10.99.0.11 ping statistics ---
14 packets transmitted, 5 received, 64.2857% packet loss, time 2600ms
"""


def test_a_failover_is_a_bounded_silence_and_a_dead_guest_a_silent_cut():
    p = traffic.account(PING, cut_at=100.5, plug_at=110.0)
    assert (p.sent, p.received, p.lost) == (14, 5, 9)
    assert p.longest_gap == 1.9 and p.replies_in_cut == 2 and p.back
    # nothing answered after the cut: silent for the whole cut at least, never back
    dead = traffic.account(PING, cut_at=103.0, plug_at=123.0)
    assert dead.replies_in_cut == 0 and not dead.back and dead.longest_gap >= 20.0


def _pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 96, 1))
        for frame, orig in frames:
            f.write(struct.pack("<IIII", 0, 0, len(frame), orig) + frame)


class _Vm:
    def __init__(self, d):
        self.d = d

    def wire_dump(self, n):
        return os.path.join(self.d, f"pf{n}-wire.pcap")


def test_bytes_per_pf_count_the_guests_frames_sent_after_the_offsets(tmp_path):
    guest, other = bytes.fromhex("525400a0d801"), bytes.fromhex("525400119900")
    bcast = b"\xff" * 6
    vm = _Vm(str(tmp_path))
    _pcap(vm.wire_dump(1), [(bcast + guest + b"\x08\x00" + b"x" * 50, 1042)])
    _pcap(vm.wire_dump(2), [])
    offsets = traffic.wire_offsets(vm, 2)
    with open(vm.wire_dump(1), "ab") as f:   # after the offsets: two of the guest's, one not
        for src, orig in ((guest, 1042), (other, 98), (guest, 1042)):
            frame = bcast + src + b"\x08\x00" + b"y" * 50
            f.write(struct.pack("<IIII", 0, 0, len(frame), orig) + frame)
    assert traffic.wire_bytes(vm, offsets, ["52:54:00:a0:d8:01"]) == {1: 2084, 2: 0}
    assert traffic.busiest_share({1: 2084, 2: 0}) == 1.0


def test_bench_reports_both_pools_side_by_side(tmp_path):
    results, rundir = str(tmp_path / "results"), str(tmp_path / "run")
    lping = traffic.account(PING, cut_at=103.0, plug_at=123.0)
    vping = traffic.account(PING, cut_at=100.5, plug_at=110.0)
    traffic.write("redundancy", {"cut_seconds": 20, "libvirt": lping._asdict(), "vfpick": vping._asdict(),
                                 "libvirt_pfs": ["0000:01:00.0"] * 2,
                                 "vfpick_pfs": ["0000:01:00.0", "0000:02:00.0"]},
                  "bookworm", results=results, rundir=rundir)
    traffic.write("spread", {"guests": 3, "libvirt": {"bytes_per_pf": {"1": 900, "2": 0, "3": 0}, "busiest_share": 1.0},
                             "vfpick": {"bytes_per_pf": {"1": 300, "2": 300, "3": 300}, "busiest_share": 0.333}},
                  "bookworm", results=results, rundir=rundir)
    loaded = labtraffic.load(results)
    assert set(loaded["bookworm"]) == {"redundancy", "spread"}
    table = labtraffic.markdown(loaded)
    assert "| libvirt's pool (first free VF in list order) | 0000:01:00.0 0000:01:00.0 | 20 | 14 | 9 |" in table
    assert "| vfpick pool | 900" not in table and "| 300 / 300 / 300 | **0.333** |" in table
    assert "| 900 / 0 / 0 | **1.0** |" in table
    env = dict(os.environ, VFPICK_LAB_CACHE=str(tmp_path))
    proc = subprocess.run([sys.executable, BENCH, "--lab"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "| 300 / 300 / 300 | **0.333** |" in proc.stdout, proc.stderr
    # a record a later lab cannot read (a field missing) is left out, not a crash
    with open(os.path.join(results, "traffic-trixie.json"), "w") as f:
        f.write('{"redundancy": {"libvirt": {}}}')
    assert set(labtraffic.load(results)) == {"bookworm"}
