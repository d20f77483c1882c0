"""Nested-guest stress: how often does L1's kernel panic while nested-KVM L2s start at once?

    python3 -m lab stress [--qemu 11|10] [--starts N] [--at-once K] [--type kvm|qemu]

A lab tool (issue 29), not a CI step. It boots one L1 (no vfpick: the panic is the emulator's),
keeps one L2 with two VFs running and, round after round, starts K more L2s at the same time
(each with a VF through a plain <hostdev>, as the foreign-VM scenario did), waits until each
printed L2-DONE, destroys them; an L2 that prints nothing for L2_BOOT_S is counted as hung
(nested SVM under TCG has also left L2s stuck at boot) and destroyed. When L1's QEMU ends, its serial log is read for a kernel panic,
kept, and L1 is booted again. At the end: panics per L2 starts, and the starts before the
first panic. --qemu 10 runs L0 on QEMU 10.0.2 from bookworm-backports (the lab's L0 before
11.1.3), unpacked beside the cache, for the comparison.
"""
import argparse
import json
import os
import shutil
import time

from lab import image, qemu
from lab.host import CACHE, LabError, LabUnavailable, locked, log, mirrors, run, run_dir
from lab.labhost import L2_BOOT, LabHost, hostdev_xml
from lab.vm import L1

L2_BOOT_S = 300   # s for an L2 to print L2-DONE; 20-120 s measured, beyond it: hung
LEGACY_PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "qemu-utils")


def legacy_qemu(cache=CACHE):
    """QEMU 10.0.2 from bookworm-backports, unpacked (dpkg-deb -x) under the cache; it runs on
    the host's own bookworm libraries, so its loader is the host's."""
    base = os.path.join(cache, "qemu-bookworm-backports")
    with locked(f"{base}.lock", 900, "QEMU 10"):
        q = qemu.Qemu(os.path.join(base, "root"), loader="/lib64/ld-linux-x86-64.so.2")
        if not q.problems(min_major=8):
            return q
        shutil.rmtree(base, ignore_errors=True)
        for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "debs"):
            os.makedirs(os.path.join(base, d))
        archive, _ = mirrors()
        with open(os.path.join(base, "sources.list"), "w", encoding="ascii") as f:
            f.write(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {archive} bookworm-backports main\n")
        opts = [f"-oDir::Etc::SourceList={base}/sources.list", f"-oDir::Etc::SourceParts={base}/sources.list.d",
                f"-oDir::State::Lists={base}/lists", f"-oDir::Cache={base}/cache", "-oAPT::Sandbox::User=root", "-q"]
        run(["apt-get", *opts, "update"], timeout=300, log_path=f"{base}/apt.log")
        run(["apt-get", *opts, "download", *[f"{p}/bookworm-backports" for p in LEGACY_PACKAGES]],
            timeout=600, log_path=f"{base}/apt.log", cwd=f"{base}/debs")
        for deb in sorted(os.listdir(f"{base}/debs")):
            run(["dpkg-deb", "-x", f"{base}/debs/{deb}", q.root], timeout=120)
        problems = q.problems(min_major=8)
        if problems:
            raise LabUnavailable(f"QEMU 10 from bookworm-backports: {problems[0]}")
        return q


class Stress:
    def __init__(self, q, img, at_once, domain_type):
        self.q, self.img, self.at_once, self.domain_type = q, img, at_once, domain_type
        self.host = None
        self.boots = 0

    def boot(self):
        """A fresh L1 with its VFs up and the L2s defined (anchor: 2 VFs; sN: 1 VF each)."""
        self.boots += 1
        vm = L1(f"stress{self.boots}", self.q, self.img)
        vm.start()
        host = LabHost(vm)
        vm.wait_booted()
        host.run(f"install -m 0644 /lab/l2-initrd.img {L2_BOOT}/l2-initrd.img", check=True, quiet=True)
        host.pfs = host.read_pfs()
        host.pfs_up(check=True)
        host.set_numvfs(3)
        vfs = [vf for addr, _, _ in host.pfs for vf in host.vfs(addr)]
        names = ["anchor"] + [f"s{i}" for i in range(self.at_once)]
        devices = {"anchor": hostdev_xml(vfs[0]) + hostdev_xml(vfs[3])}
        for i in range(self.at_once):
            devices[f"s{i}"] = hostdev_xml(vfs[6 + i % 3] if i < 3 else vfs[1 + i])
        for name in names:
            host.put(f"/root/{name}.xml", host.domain_xml(name, pool_nics=0, extra_devices=devices[name],
                                                         domain_type=self.domain_type))
            host.run(f"virsh define /root/{name}.xml", check=True, quiet=True)
        r = host.start("anchor")
        if r.rc != 0:
            raise LabError(f"anchor L2 did not start: {r.stderr}")
        host.l2_report("anchor")
        self.host = host

    def round(self):
        """Starts the K L2s at once, waits for each one's L2-DONE (bounded); (True when L1
        survived, the names of the L2s that never finished booting: hung in nested SVM)."""
        host = self.host
        names = [f"s{i}" for i in range(self.at_once)]
        hung = []
        try:
            host.run("rm -f " + " ".join(f"/var/lib/libvirt/qemu/{n}-serial.log" for n in names), quiet=True)
            host.run(" ".join(f"virsh start {n} >/dev/null & " for n in names) + "wait", timeout=600, quiet=True)
            for n in names:
                try:
                    host.l2_report(n, timeout=L2_BOOT_S if not hung else 10)
                except LabError:
                    if not host.vm.alive():
                        raise
                    hung.append(n)
            host.run(" ".join(f"virsh destroy {n} >/dev/null 2>&1; " for n in names), timeout=300, quiet=True)
            return True, hung
        except LabError:
            if host.vm.alive():
                raise
            return False, hung

    def stop(self):
        if self.host:
            self.host.vm.stop()


def main(argv):
    ap = argparse.ArgumentParser(prog="python3 -m lab stress", description=__doc__.split("\n\n")[0])
    ap.add_argument("--qemu", choices=("11", "10"), default="11")
    ap.add_argument("--starts", type=int, default=60, help="L2 starts to make (default 60)")
    ap.add_argument("--at-once", type=int, default=3, help="L2s started together each round (default 3)")
    ap.add_argument("--type", choices=("kvm", "qemu"), default="kvm", help="the L2s' domain type")
    ap.add_argument("--max-panics", type=int, default=3)
    args = ap.parse_args(argv)
    q = qemu.ensure() if args.qemu == "11" else legacy_qemu()
    version = ".".join(map(str, q.version()))
    stress = Stress(q, image.ensure("bookworm"), args.at_once, args.type)
    t0 = time.monotonic()
    starts, panics, first, hangs = 0, [], None, []
    try:
        stress.boot()
        while starts < args.starts and len(panics) < args.max_panics:
            survived, hung = stress.round()
            starts += args.at_once
            hangs += [starts] * len(hung)
            if survived:
                log(f"stress: round {'ok' if not hung else 'with L2s hung at boot: ' + ' '.join(hung)}, "
                    f"{starts} L2 starts, {len(panics)} L1 lost, {len(hangs)} L2 hung ({time.monotonic() - t0:.0f} s)")
                continue
            vm = stress.host.vm
            kept = os.path.join(run_dir(), f"stress-panic-{len(panics) + 1}-serial.log")
            shutil.copyfile(vm.serial, kept)
            panics.append({"starts": starts, "panic": vm.panicked(), "serial": kept})
            first = first or starts
            log(f"stress: L1 lost after {starts} L2 starts (kernel panic: {vm.panicked()}; serial {kept})")
            stress.stop()
            stress.boot()
    finally:
        stress.stop()
    result = {"qemu": version, "domain_type": args.type, "at_once": args.at_once, "starts": starts,
              "l1_lost": len(panics), "first_loss_after_starts": first, "losses": panics,
              "l2_hung": len(hangs), "l2_hung_after_starts": hangs,
              "seconds": round(time.monotonic() - t0)}
    with open(os.path.join(run_dir(), f"stress-qemu{args.qemu}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    log(f"stress: QEMU {version}, L2 type {args.type}, {args.at_once} at once beside one running: "
        f"{len(panics)} L1 lost in {starts} L2 starts" + (f" (the first after {first})" if first else "")
        + f", {len(hangs)} L2 hung at boot" + (f" (the first after {hangs[0]})" if hangs else "")
        + f", {result['seconds']} s")
    return 0

