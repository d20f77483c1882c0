#!/usr/bin/env python3
"""Fuzz vfpick's untrusted inputs for N minutes (not run in CI; tests/test_hostile.py runs each
target briefly).

    bench/fuzz.py --minutes 10                     # all targets, round-robin
    bench/fuzz.py --minutes 60 --target hook       # rewriter | config | hook | numbers | claims | all
    bench/fuzz.py --minutes 5 --seed 1234          # replay a run

Targets (tests/fuzz/targets.py): the domain XML rewriter and expat scanner on mutated real
domains and random bytes; the INI config parser; the qemu hook in-process for every op with
random argv names and stdin, against a simulated host holding a real claim; every parser of
numbers from outside (numbers, cpulist, PCI, MAC, rates); the claims file's codec. Engine: hypothesis
(each round a fresh seed, no example database), so a failure is shrunk to a minimal input and
printed with its seed; exit 1 on the first failure, 0 when the time is up.
"""

import argparse
import os
import random
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "fuzz")]

from hypothesis import HealthCheck, given, seed as hseed, settings, strategies as st  # noqa: E402

import targets  # noqa: E402

ROUND = settings(max_examples=300, deadline=None, database=None, derandomize=False,
                 suppress_health_check=list(HealthCheck))


def make_tests(host):
    @ROUND
    @given(targets.any_xml)
    def rewriter(data):
        targets.rewriter(data)

    @ROUND
    @given(st.one_of(targets.ini_text(), st.text(max_size=400)))
    def config(text):
        targets.config(text)

    @ROUND
    @given(st.sampled_from(targets.OPS),
           st.one_of(st.just("vm"), st.just("owner"), st.text(max_size=40).filter(lambda t: "\0" not in t and "\n" not in t)),
           targets.any_xml)
    def hook(op, name, data):
        host.reset()
        targets.hook_op(host, name, op[0], op[1], data)

    @ROUND
    @given(targets.numbers_text)
    def numbers(text):
        targets.numbers_target(text)

    @ROUND
    @given(targets.claims_file())
    def claims(raw):
        targets.claims_target(raw)

    return {"rewriter": rewriter, "config": config, "hook": hook, "numbers": numbers,
            "claims": claims}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--target", choices=["rewriter", "config", "hook", "numbers", "claims", "all"],
                        default="all")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    base = tempfile.mkdtemp(prefix="vfpick-fuzz-")
    host = targets.HookHost(base)
    tests = make_tests(host)
    names = list(tests) if args.target == "all" else [args.target]
    master = random.Random(args.seed if args.seed is not None else random.randrange(1 << 30))
    deadline = time.monotonic() + args.minutes * 60
    rounds = {name: 0 for name in names}
    print("fuzz: %s for %.1f min (host %s)" % (", ".join(names), args.minutes, base), flush=True)
    while time.monotonic() < deadline:
        for name in names:
            round_seed = master.randrange(1 << 32)
            try:
                hseed(round_seed)(tests[name])()
            except Exception as exc:  # noqa: BLE001 - hypothesis has printed the falsifying example
                print("fuzz: FAILED: target %s, round seed %d: %s: %s"
                      % (name, round_seed, type(exc).__name__, exc), flush=True)
                return 1
            rounds[name] += 1
            if time.monotonic() >= deadline:
                break
    print("fuzz: no failure; rounds of %d examples: %s" % (
        ROUND.max_examples, ", ".join("%s %d" % kv for kv in rounds.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
