"""The SR-IOV lab's traffic scenarios, read back for docs/BENCHMARKS.md.

`scripts/test-lab` (lab/tests/test_traffic_lab.py) runs guests from libvirt's own hostdev pool
and from a vfpick pool on the same PFs, with packets: a bonded guest pinged while one PF's cable
is cut at L0, and single-NIC guests sent the same traffic while L0 counts each PF's bytes. It
writes the figures to /var/cache/vfpick-lab/results/traffic-SUITE.json (lab/traffic.py); bench
reports the latest per suite, with its date, and boots nothing.
"""

import glob
import json
import os

RESULTS = os.path.join(os.environ.get("VFPICK_LAB_CACHE", "/var/cache/vfpick-lab"), "results")
POOLS = (("libvirt", "libvirt's pool (first free VF in list order)"), ("vfpick", "vfpick pool"))


def load(results=RESULTS):
    """{suite: {"redundancy": {...}, "spread": {...}}} of the latest runs; {} when none ran."""
    out = {}
    for path in sorted(glob.glob(os.path.join(results, "traffic-*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            suite = os.path.basename(path)[len("traffic-"):-len(".json")]
            kept = {}
            if "redundancy" in data:
                r = data["redundancy"]
                for pool, _ in POOLS:
                    int(r[pool]["sent"]) + int(r[pool]["lost"]) + float(r[pool]["longest_gap"])
                kept["redundancy"] = r
            if "spread" in data:
                s = data["spread"]
                for pool, _ in POOLS:
                    sum(int(v) for v in s[pool]["bytes_per_pf"].values())
                kept["spread"] = s
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if kept:
            out[suite] = kept
    return out


def markdown(results):
    out = []
    rows = [(suite, r["redundancy"]) for suite, r in results.items() if "redundancy" in r]
    if rows:
        out += ["A guest with an active-backup bond over two NICs, pinged 5 times a second by a "
                "peer on the PFs' segment, while the cable of the PF under libvirt's guest is cut "
                "at L0 (QMP `set_link`); the same PF, from the same start, for each pool:", "",
                "| L1 | measured | pool | NICs' PFs | cut s | sent | lost | longest silence s | replies during the cut |",
                "|---|---|---|---|---:|---:|---:|---:|---:|"]
        for suite, r in rows:
            for pool, label in POOLS:
                p = r[pool]
                out.append("| %s | %s | %s | %s | %s | %d | %d | %.1f | %d |"
                           % (suite, r.get("at", "?"), label, " ".join(r.get(pool + "_pfs", [])),
                              r.get("cut_seconds", "?"), p["sent"], p["lost"], p["longest_gap"],
                              p["replies_in_cut"]))
    rows = [(suite, r["spread"]) for suite, r in results.items() if "spread" in r]
    if rows:
        out += ["", "Single-NIC guests from each pool, each sent the same traffic; bytes each PF "
                "put on the wire (counted at L0), all three PFs 1 Gb/s:", "",
                "| L1 | measured | pool | guests | bytes per PF | busiest PF's share |",
                "|---|---|---|---:|---|---:|"]
        for suite, s in rows:
            for pool, label in POOLS:
                per_pf = s[pool]["bytes_per_pf"]
                out.append("| %s | %s | %s | %s | %s | **%s** |"
                           % (suite, s.get("at", "?"), label, s.get("guests", "?"),
                              " / ".join(str(per_pf[k]) for k in sorted(per_pf)),
                              s[pool].get("busiest_share")))
    return "\n".join(out)
