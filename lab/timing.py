"""The lab's start/destroy measurement (lab/tests/test_timing_lab.py) as a JSON result that
`python -m bench` reads back (bench/lab.py): RUNDIR/timing.json for the run, and
CACHE/results/timing-SUITE.json, the latest one per suite, kept between runs."""
import collections
import datetime
import json
import os
import statistics

from lab.host import CACHE, run_dir

RESULTS = os.path.join(CACHE, "results")

Result = collections.namedtuple("Result", "suite rounds domain_type nics medians samples load "
                                "hook_ms", defaults=(None, None))
Result.__doc__ = """load: {"host": [1-min load average before, after], "l1": [the same in L1]}, or
None: the machine was shared, so a ratio is read beside the load it was measured under.
hook_ms: {"bare": ms, "prepare begin": ms, "stopped end": ms, "release end": ms}, medians of
the installed hook's calls timed inside L1 (HOOK_CALLS) and of `python3 -IS -c pass` between
them (what the hook's interpreter costs at the least), or None."""

# Each round, inside L1: the bare interpreter, then the hook's calls of one start and destroy
# of the defined, stopped domain, with its XML as libvirt passes it: prepare begin makes its
# claims active and release end makes them inactive again (a state write), as in a real cycle.
HOOK_CALLS = r"""set -e
H=/etc/libvirt/hooks/qemu.d/vfpick X=/root/hookcalls-$1.xml
virsh dumpxml --inactive "$1" > "$X"
us() { local s; s=$(date +%%s%%N); "$@" < "$X" > /dev/null || { echo "failed: rc $?"; return; }
      echo $(( ($(date +%%s%%N) - s) / 1000 )); }
for i in $(seq %(rounds)d); do
    echo "bare $(us /usr/bin/python3 -IS -c pass)"
    echo "prepare-begin $(us "$H" "$1" prepare begin -)"
    echo "stopped-end $(us "$H" "$1" stopped end -)"
    echo "release-end $(us "$H" "$1" release end -)"
done
rm -f "$X"
"""


def hook_calls(host, name, rounds=7):
    """Result.hook_ms of the stopped, defined domain *name*, timed in L1."""
    host.put("/root/hookcalls.sh", HOOK_CALLS % {"rounds": rounds})
    r = host.run(f"bash /root/hookcalls.sh {name}", timeout=60 + 30 * rounds, check=True,
                 quiet=True)
    samples = {}
    for line in r.stdout.splitlines():
        what, _, us = line.partition(" ")
        if not us.isdigit():
            raise AssertionError(f"hook calls in L1: {line!r} (stderr: {r.stderr[-500:]!r})")
        samples.setdefault(what.replace("-", " "), []).append(int(us) / 1000)
    if set(samples) != {"bare", "prepare begin", "stopped end", "release end"}:
        raise AssertionError("hook calls in L1: unexpected output %r" % r.stdout[-500:])
    return {what: statistics.median(v) for what, v in samples.items()}


def load_now(host):
    """(this machine's 1-min load average, L1's), each None when it cannot be read."""
    try:
        here = round(os.getloadavg()[0], 2)
    except OSError:
        here = None
    r = host.run("cat /proc/loadavg", quiet=True)
    try:
        l1 = float(r.stdout.split()[0]) if r.rc == 0 else None
    except (IndexError, ValueError):
        l1 = None
    return here, l1


def loads(before, after):
    """Result.load from two load_now() readings."""
    return {"host": [before[0], after[0]], "l1": [before[1], after[1]]}


def to_json(result):
    data = result._asdict()
    data["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    data["ratios"] = {op: result.medians["hook"][op] / result.medians["bare"][op]
                      for op in ("start", "destroy")}
    return data


def write(result, results=RESULTS, rundir=None):
    data = json.dumps(to_json(result), indent=1, sort_keys=True) + "\n"
    paths = [os.path.join(rundir or run_dir(), "timing.json"),
             os.path.join(results, f"timing-{result.suite}.json")]
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, path)
    return paths


def render(result):
    data = to_json(result)
    lines = [f"  virsh start/destroy of a {result.nics}-VF L2 (type {result.domain_type}, "
             f"{result.suite} L1), medians of {result.rounds}:"]
    for op in ("start", "destroy"):
        lines.append(f"    {op:8s} with hook {result.medians['hook'][op]:6.2f} s   "
                     f"without {result.medians['bare'][op]:6.2f} s   ratio {data['ratios'][op]:.2f}")
    if result.load:
        lines.append(f"    load (1 min, before - after): this machine {load_text(result.load, 'host')}, "
                     f"L1 {load_text(result.load, 'l1')}")
    if result.hook_ms:
        bare = result.hook_ms["bare"]
        lines.append(f"  the hook's calls timed in L1 (medians), against python3 -IS -c pass "
                     f"({bare:.0f} ms):")
        for what in ("prepare begin", "stopped end", "release end"):
            ms = result.hook_ms[what]
            lines.append(f"    {what:14s} {ms:6.0f} ms   {ms / bare:5.2f}x")
    return "\n".join(lines) + "\n"


def load_text(load, where):
    values = (load or {}).get(where) or []
    return " - ".join("?" if v is None else "%.2f" % v for v in values) or "?"
