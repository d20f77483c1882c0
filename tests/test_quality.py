"""The allocation-quality study is seeded and deterministic, so its figures can be tested.

Not timing: these pin placement quality (spread against the distinctness-aware optimum) and
what rebalance reaches, on the benchmark's own simulated hosts.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

import vfpick  # noqa: F401  the installed package: bench/quality.py uses it once imported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUALITY = os.path.join(REPO, "bench", "quality.py")


def _load_quality():
    # bench/ is a script directory, not an installed package: load the file by its path.
    spec = importlib.util.spec_from_file_location("vfpick_bench_quality", QUALITY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = _load_quality()


@pytest.fixture(scope="module")
def topologies(tmp_path_factory):
    return {preset: topo for _, preset, topo in quality.load_topologies(str(tmp_path_factory.mktemp("q")))}


# Measured with the benchmark's 8 seeds: +0.0 % on the equal-speed hosts; +3.35 % on mixed
# speed, where an online pick cannot know that 4-NIC domains will need both 10G links later.
@pytest.mark.parametrize("preset, at_most", [
    ("two-dual-port", 0.005), ("npar", 0.005), ("mixed-speed", 0.035), ("link-down", 0.005),
])
def test_spread_arrivals_only_stays_near_the_optimum(topologies, preset, at_most):
    over, bound = [], []
    for seed in range(3000, 3008):
        o, b = quality.arrivals_only(topologies[preset], "spread", seed)
        over += o
        bound += b
    assert over and sum(over) / len(over) <= at_most
    # The distinctness-aware optimum is never below the capacity-only bound.
    assert all(o <= b + 1e-9 for o, b in zip(over, bound))


def test_churn_and_rebalance_figures_are_deterministic(topologies):
    topo = topologies["mixed-speed"]
    first = quality.churn(topo, "spread", 1000, 400, optimum_every=20)
    again = quality.churn(topo, "spread", 1000, 400, optimum_every=20)
    assert first == again
    checks = first[-1]
    assert checks["optimum"] and len(checks["all"]) == len(checks["optimum"])
    # With every domain stopped, rebalance always gets within 5 % of the optimum.
    assert all(after <= 0.05 + 1e-9 for after, _ in checks["all"])
    # Holes left by departures: churn is measurably worse than the optimum somewhere.
    assert max(checks["optimum"]) > 0.05


def test_figures_do_not_depend_on_hash_seed():
    code = ("import importlib.util, tempfile, vfpick; "
            "spec = importlib.util.spec_from_file_location('q', %r); "
            "quality = importlib.util.module_from_spec(spec); spec.loader.exec_module(quality); "
            "t = quality.load_topologies(tempfile.mkdtemp())[2][2]; "
            "print(quality.arrivals_only(t, 'spread', 3000)[0][-5:], "
            "quality.churn(t, 'random', 1000, 200, optimum_every=25)[-1], vfpick.__file__)" % QUALITY)
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(h))).stdout for h in (1, 2)}
    assert len(outs) == 1
    imported = outs.pop().split()[-1]  # the installed package (a venv's or Debian's), not the checkout
    checkout = os.path.realpath(os.path.join(REPO, "vfpick")) + os.sep
    assert not os.path.realpath(imported).startswith(checkout), imported
    assert imported.endswith(os.path.join("vfpick", "__init__.py")), imported
