"""python3 -m lab prepare SUITE DEB | run NAME SCRIPT [TIMEOUT] | stress [--help]

prepare: fetch QEMU and build (or reuse) the L1 image, one line per step; a reason the lab
cannot run is one line on stderr and exit 1. run: a command in a VM kept by --keep.
stress: count L1 kernel panics while nested L2s start at once (lab/stress.py).
"""
import sys
import time

from lab.host import LabError, LabUnavailable, log


def main(argv):
    try:
        if argv[:1] == ["prepare"] and len(argv) == 3:
            from lab import cluster, host
            host.require_root()
            host.require_disk(host.CACHE, 12)
            host.require_memory(cluster.PER_L1_MIB + 1024)   # one L1; a pair checks again at boot
            t0 = time.monotonic()
            assets = cluster.Assets.ensure(argv[1], argv[2])
            log(f"QEMU {'.'.join(map(str, assets.qemu.version()))} ({assets.qemu.root}), "
                f"image {assets.image.dir}: ready in {time.monotonic() - t0:.0f} s")
            return 0
        if argv[:1] == ["stress"]:
            from lab import stress
            return stress.main(argv[1:])
        if argv[:1] == ["run"] and len(argv) in (3, 4):
            from lab.vm import L1
            r = L1.attach(argv[1]).run(argv[2], timeout=int(argv[3]) if len(argv) == 4 else 60)
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
            return r.rc
    except (LabError, LabUnavailable, OSError) as e:
        print(f"test-lab: FAILED: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
