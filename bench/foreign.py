"""The hook's cost for domains that are not vfpick's, for one or more vfpick trees side by side:

    .venv/bin/python bench/foreign.py [--reps N] [SOURCE ...]   # default SOURCE: this repo

Each tree is installed (as bench/perf.py does) on its own simulated 1024-VF host; the runs of
the trees and a bare ``python -c pass`` are interleaved, so a busy machine weighs on all of them
alike. Prints, per tree and kind (a GPU passthrough VM on libvirt's default network, a
bridge-only VM), the median ``prepare begin`` time and its ratio to ``python -c pass``.
A benchmark, not a test: nothing asserts a timing.
"""

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import perf  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench/foreign.py")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("sources", nargs="*", default=[perf.REPO])
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="vfpick-bench-foreign-")
    try:
        hosts = []
        for n, source in enumerate(args.sources):
            inst = perf.Install(os.path.join(root, "i%d" % n), os.path.abspath(source))
            inst.import_vfpick()
            from vfpick.host import simhost

            hosts.append(perf.Host(inst, os.path.join(root, "h%d" % n),
                                   os.path.join(root, "s%d" % n), simhost.bench_spec()))
        kinds = ("gpu", "bridge")
        xml = {kind: perf.foreign_xml(kind) for kind in kinds}
        times = {(n, kind): [] for n in range(len(hosts)) for kind in kinds}
        base = perf.Baseline()
        for _ in range(3):  # warm the page cache and the byte-code
            for host in hosts:
                host.run_hook("other-gpu", xml["gpu"])
        for _ in range(args.reps):
            base.sample()
            for n, host in enumerate(hosts):
                for kind in kinds:
                    times[(n, kind)].append(host.run_hook("other-" + kind, xml[kind]))
        print("python -c pass: %.1f ms (median of %d)" % (base.site_ms, args.reps))
        for n, source in enumerate(args.sources):
            for kind in kinds:
                ms = perf.med_ms(times[(n, kind)])
                print("%s  %-6s prepare begin: %.1f ms  ratio %.2f"
                      % (source, kind, ms, ms / base.site_ms))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
