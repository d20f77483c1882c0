"""The SR-IOV lab's start/destroy measurement, read back for docs/BENCHMARKS.md.

`scripts/test-lab` (lab/tests/test_timing_lab.py) times `virsh start` and `virsh destroy` of a
2-VF passthrough L2 with vfpick's hook and without it, in one run, and writes the medians and
ratios to /var/cache/vfpick-lab/results/timing-SUITE.json (lab/timing.py). bench does not boot
the lab (it takes minutes of TCG); it reports the latest result per suite, with its date.
"""

import glob
import json
import os

RESULTS = os.path.join(os.environ.get("VFPICK_LAB_CACHE", "/var/cache/vfpick-lab"), "results")


def load(results=RESULTS):
    """The lab's timing results, one per suite, sorted by suite; [] when the lab never ran."""
    out = []
    for path in sorted(glob.glob(os.path.join(results, "timing-*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            for op in ("start", "destroy"):
                float(data["medians"]["hook"][op]) + float(data["medians"]["bare"][op]) + float(data["ratios"][op])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(data)
    return out


def load_text(result, where):
    """"1.20 - 3.40": the 1-min load average (this machine's, or L1's) before and after the
    lab's measurement; "?" for a result written before the lab recorded it."""
    values = (result.get("load") or {}).get(where) or []
    text = " - ".join("?" if v is None else "%.2f" % float(v) for v in values)
    return text or "?"


def markdown(results):
    out = ["`scripts/test-lab` (scenario 9, `lab/tests/test_timing_lab.py`): `virsh start` and "
           "`virsh destroy` of a %d-VF passthrough L2 in the TCG lab VM, with vfpick's hook and "
           "without it (hook removed, daemon restarted), medians of %d each, measured side by "
           "side in one lab run, the arms alternating. Ratio = with hook / without. Load: the "
           "1-min load average before - after, of the machine running the lab and of L1."
           % (results[0]["nics"], results[0]["rounds"]),
           "", "| L1 | measured | L2 type | rounds | op | with hook s | without s | ratio | load here | load L1 |",
           "|---|---|---|---:|---|---:|---:|---:|---|---|"]
    for r in results:
        for op in ("start", "destroy"):
            out.append("| %s | %s | %s | %s | %s | %.2f | %.2f | **%.2f** | %s | %s |"
                       % (r["suite"], r.get("date", "?"), r["domain_type"], r.get("rounds", "?"), op,
                          r["medians"]["hook"][op], r["medians"]["bare"][op], r["ratios"][op],
                          load_text(r, "host"), load_text(r, "l1")))
    calls = [r for r in results if r.get("hook_ms")]
    if calls:
        out += ["", "The hook's own calls of that start and destroy, timed inside L1 in the same "
                "run (medians of 7; the domain defined and stopped; `release end` writes the "
                "state, as at a real destroy), against `python3 -IS -c pass` there (the least an "
                "interpreter start costs):", "",
                "| L1 | measured | `python3 -IS -c pass` ms | `prepare begin` | `stopped end` | "
                "`release end` |", "|---|---|---:|---:|---:|---:|"]
        for r in calls:
            ms = r["hook_ms"]
            out.append("| %s | %s | %.0f | %s |" % (r["suite"], r.get("date", "?"), ms["bare"], " | ".join(
                "%.0f ms (%.2fx)" % (ms[k], ms[k] / ms["bare"])
                for k in ("prepare begin", "stopped end", "release end"))))
    return "\n".join(out)
