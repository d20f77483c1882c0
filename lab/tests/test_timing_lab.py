"""Scenario 9 (a measurement, not pass/fail): `virsh start` and `virsh destroy` of a 2-VF
passthrough L2, side by side in one run, with vfpick's hook installed and without it (hook
removed, daemon restarted), the two arms alternating round by round. Medians of ROUNDS each and their ratios are printed and written as
JSON (lab.timing), which `python -m bench` shows in docs/BENCHMARKS.md; so are the hook's own
calls of a start and a destroy, timed inside L1 against a bare `python3 -IS -c pass`. The only
assertions are that every start, destroy and hook call worked."""
import statistics

from lab import timing
from lab.guestwatch import hook_installed

ROUNDS = 5


def cycle(host, name, samples):
    r = host.start(name)
    assert r.rc == 0, r.stderr
    samples["start"].append(r.seconds)
    r = host.run(f"virsh destroy {name}", timeout=120, check=True)
    samples["destroy"].append(r.seconds)


def test_start_destroy_with_and_without_hook(host, evidence):
    host.put("/root/l2b.xml", host.domain_xml("l2b", pool_nics=2))
    host.vfpick("define /root/l2b.xml", check=True)
    samples = {mode: {"start": [], "destroy": []} for mode in ("hook", "bare")}
    current = None
    load_before = timing.load_now(host)

    def use(mode):
        nonlocal current
        if mode != current:
            hook_installed(host, mode == "hook")
            current = mode

    try:
        # one warm-up cycle each way: first starts pay for loading vfio and page cache
        for mode in ("hook", "bare"):
            use(mode)
            cycle(host, "l2b", {"start": [], "destroy": []})
        # The arms alternate (bare hook hook bare bare hook ...): a host whose load drifts
        # during the run (a shared CI machine) then weighs on both alike, instead of on
        # whichever arm ran last.
        for i in range(ROUNDS):
            for mode in (("bare", "hook") if i % 2 == 0 else ("hook", "bare")):
                use(mode)
                cycle(host, "l2b", samples[mode])
    finally:
        hook_installed(host, True)
    hook_ms = timing.hook_calls(host, "l2b")
    load = timing.loads(load_before, timing.load_now(host))
    result = timing.Result(suite=host.vm.image.suite if host.vm.image else "?", rounds=ROUNDS,
                           domain_type=host.domain_type, nics=2,
                           medians={mode: {op: statistics.median(v) for op, v in ops.items()}
                                    for mode, ops in samples.items()},
                           samples=samples, load=load, hook_ms=hook_ms)
    paths = timing.write(result)
    text = timing.render(result)
    evidence(text + f"  written to {', '.join(paths)}\n")
    print("\n" + text)
