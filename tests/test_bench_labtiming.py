"""The lab's start/destroy result (lab/timing.py writes it) is what bench reports (bench/labtiming.py)."""

import importlib
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
