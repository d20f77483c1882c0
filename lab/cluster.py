"""Booting lab hosts: one L1, or a pair joined by a private link (live migration).

    assets = cluster.Assets.ensure(suite, deb)          # QEMU, cached image, the .deb
    [host] = cluster.boot(assets, ["l1"])               # LabHost, set up for vfpick
    a, b = cluster.boot(assets, ["l1a", "l1b"], link=True)   # a.vm.link_ip 10.77.0.1, b ... .2
    cluster.shutdown(hosts, keep=False)

Hosts boot at the same time (measured 36-53 s each for two); setup (the .deb, VFs, config,
hook) runs on each in parallel too.
"""
import collections
import concurrent.futures
import os
import shutil
import time

from lab import image, qemu
from lab.host import LabError, log, require_memory
from lab.labhost import LabHost
from lab.vm import MEM_MIB, L1, Link

PER_L1_MIB = MEM_MIB // 2 + 1024
BOOT_FAILURES = []   # names of L1s whose first boot failed (and were booted once more) this run   # measured RSS of a 4 GiB TCG L1 with an L2: 1.2-1.5 GiB


class Assets(collections.namedtuple("Assets", "qemu image deb")):
    @classmethod
    def ensure(cls, suite, deb):
        return cls(qemu.ensure(), image.ensure(suite), deb)


def boot(assets, names, link=False):
    """Boot and set up len(NAMES) L1s (a Link between them when LINK); their LabHosts."""
    require_memory(PER_L1_MIB * len(names) + 1024)
    shared = Link() if link else None
    vms = [L1(name, assets.qemu, assets.image, index=i + 1, link=shared, link_server=(i == 0))
           for i, name in enumerate(names)]
    hosts = [LabHost(vm) for vm in vms]
    try:
        for vm in vms:   # the link's server first: the client connects at start
            vm.start(deb=assets.deb)
        with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
            for f in [pool.submit(_bring_up, h) for h in hosts]:
                f.result()
    except BaseException:
        shutdown(hosts)
        raise
    return hosts


def _bring_up(host):
    try:
        host.vm.wait_booted()
    except LabError as e:
        # a guest kernel that panics early (TCG starved by a busy host) ends QEMU (-no-reboot):
        # the one failure worth a second boot; a pair's link cannot be re-made, so not there
        if host.vm.alive() or host.vm.link:
            raise
        BOOT_FAILURES.append(host.vm.name)
        log(f"{host.vm.name}: boot failed, booting once more ({e})")
        os.replace(host.vm.serial, os.path.join(os.path.dirname(host.vm.dir), f"{host.vm.name}-failed-serial.log"))
        host.vm.start(deb=host.vm.deb)
        host.vm.wait_booted()
    t0 = time.monotonic()
    host.setup()
    log(f"{host.vm.name} set up in {time.monotonic() - t0:.0f} s: PFs "
        + ", ".join(f"{dev} ({addr}, numa {numa})" for addr, dev, numa in host.pfs)
        + f"; daemon {host.daemon}; L2 domain type {host.domain_type}")


def shutdown(hosts, keep=False):
    """Stop the hosts (each bounded); with KEEP leave them running and say how to reach them."""
    errors = []
    for h in hosts:
        if keep and h.vm.alive():
            log(f"{h.vm.name} kept running (pid {h.vm.pid}); serial log {h.vm.serial}; "
                f"commands: VFPICK_LAB_RUN={os.path.dirname(h.vm.dir)} .venv/bin/python -m lab run "
                f"{h.vm.name} 'CMD'; stop: kill {h.vm.pid}")
            continue
        try:
            h.vm.stop()
        except (LabError, OSError) as e:
            errors.append(f"{h.vm.name}: {e}")
            if h.vm.alive():
                h.vm.proc.kill()
    if errors:
        raise LabError("; ".join(errors))


def keep_serial_logs(hosts, tag):
    """Copies each host's serial log beside its dir as NAME-TAG-serial.log (a boot of the same
    name wipes its dir); the copies' paths."""
    kept = []
    for h in hosts:
        dest = os.path.join(os.path.dirname(h.vm.dir), f"{h.vm.name}-{tag}-serial.log")
        try:
            shutil.copyfile(h.vm.serial, dest)
        except OSError:
            continue
        kept.append(dest)
    return kept
