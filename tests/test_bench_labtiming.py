"""The lab's start/destroy result (lab/timing.py writes it) is what bench reports (bench/labtiming.py)."""

import importlib
import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench", "__main__.py")


def _load(name, path, package_dir=None):
    # bench/ and lab/ are script directories of the checkout, off sys.path here (conftest.py)
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=package_dir)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


labtiming = _load("vfpick_bench_labtiming", os.path.join(REPO, "bench", "labtiming.py"))
if "lab" not in sys.modules:
    _load("lab", os.path.join(REPO, "lab", "__init__.py"), [os.path.join(REPO, "lab")])
timing = importlib.import_module("lab.timing")


def _result(suite, hook_destroy):
    return timing.Result(suite=suite, rounds=5, domain_type="kvm", nics=2,
                         medians={"hook": {"start": 7.0, "destroy": hook_destroy},
                                  "bare": {"start": 7.0, "destroy": 5.0}},
                         samples={"hook": {"start": [7.0] * 5, "destroy": [hook_destroy] * 5},
                                  "bare": {"start": [7.0] * 5, "destroy": [5.0] * 5}})


def test_bench_reports_the_lab_result_per_suite(tmp_path):
    results, rundir = str(tmp_path / "results"), str(tmp_path / "run")
    timing.write(_result("trixie", 5.5), results=results, rundir=rundir)
    paths = timing.write(_result("bookworm", 6.0), results=results, rundir=rundir)
    assert paths == [os.path.join(rundir, "timing.json"), os.path.join(results, "timing-bookworm.json")]
    loaded = labtiming.load(results)
    assert [r["suite"] for r in loaded] == ["bookworm", "trixie"]
    assert loaded[0]["ratios"] == {"start": 1.0, "destroy": 1.2}
    table = labtiming.markdown(loaded)
    assert "| bookworm |" in table and "| destroy | 6.00 | 5.00 | **1.20** |" in table
    assert "| trixie |" in table and "**1.10**" in table


def test_unreadable_results_are_left_out(tmp_path):
    (tmp_path / "timing-bookworm.json").write_text("{not json")
    (tmp_path / "timing-trixie.json").write_text('{"medians": {}}')
    assert labtiming.load(str(tmp_path)) == []
    assert labtiming.load(str(tmp_path / "absent")) == []


def test_the_load_the_lab_ran_under_is_kept_and_shown(tmp_path):
    results, rundir = str(tmp_path / "results"), str(tmp_path / "run")
    loaded = _result("bookworm", 6.0)._replace(load=timing.loads((3.5, 1.25), (4.0, None)))
    timing.write(loaded, results=results, rundir=rundir)
    [data] = labtiming.load(results)
    assert data["load"] == {"host": [3.5, 4.0], "l1": [1.25, None]}
    row = [line for line in labtiming.markdown([data]).splitlines() if "| destroy |" in line]
    assert row and row[0].endswith("| **1.20** | 3.50 - 4.00 | 1.25 - ? |")
    assert "load (1 min, before - after): this machine 3.50 - 4.00, L1 1.25 - ?" in timing.render(loaded)
    # a result of a lab that did not record the load yet still reads, shown as unknown
    table = labtiming.markdown(labtiming.load(results) + [dict(data, load=None)])
    assert [line.endswith("| ? | ? |") for line in table.splitlines() if "| bookworm |" in line] == \
        [False, False, True, True]


def test_bench_lab_prints_only_the_lab_result(tmp_path):
    timing.write(_result("bookworm", 6.0), results=str(tmp_path / "results"),
                 rundir=str(tmp_path / "run"))
    env = dict(os.environ, VFPICK_LAB_CACHE=str(tmp_path))
    proc = subprocess.run([sys.executable, BENCH, "--lab"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| bookworm |" in proc.stdout and "| destroy | 6.00 | 5.00 | **1.20** |" in proc.stdout
    assert not os.path.exists(os.path.join(REPO, "docs", "BENCHMARKS.md.tmp"))
    proc = subprocess.run([sys.executable, BENCH, "--lab"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(env, VFPICK_LAB_CACHE=str(tmp_path / "none")))
    assert proc.returncode == 1 and "scripts/test-lab -k" in proc.stderr


def test_the_hook_calls_timed_in_l1_are_shown_as_ratios_to_a_bare_interpreter(tmp_path):
    results, rundir = str(tmp_path / "results"), str(tmp_path / "run")
    calls = {"bare": 200.0, "prepare begin": 900.0, "stopped end": 20.0, "release end": 600.0}
    timing.write(_result("bookworm", 6.0)._replace(hook_ms=calls), results=results, rundir=rundir)
    timing.write(_result("trixie", 5.5), results=results, rundir=rundir)  # an older result: none
    loaded = labtiming.load(results)
    assert loaded[0]["hook_ms"] == calls and loaded[1]["hook_ms"] is None
    table = labtiming.markdown(loaded)
    assert "| bookworm |" in table.split("python3 -IS -c pass` ms")[1]
    assert "| 200 | 900 ms (4.50x) | 20 ms (0.10x) | 600 ms (3.00x) |" in table
    assert "| trixie |" not in table.split("python3 -IS -c pass` ms")[1]
    text = timing.render(_result("bookworm", 6.0)._replace(hook_ms=calls))
    assert "release end       600 ms    3.00x" in text


def test_bench_measures_an_install_and_then_imports_vfpick_again_for_the_quality_study():
    # `python -m bench` runs bench/perf.py (vfpick imported from a temporary install) and then
    # bench/quality.py in one process: the install is gone by then.
    code = ("import sys; sys.path.insert(0, %r); import perf; "
            "perf.run_release_path(quick=True, log=lambda m: None, vfs_per_pf=4); "
            "from vfpick.plan import rebalance; print(rebalance.__file__)" % os.path.join(REPO, "bench"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "vfpick-bench-" not in proc.stdout
