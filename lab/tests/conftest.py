"""Fixtures of the SR-IOV lab (run by scripts/test-lab, which passes the options below).

- l1 (session): one booted L1 host (lab.labhost.LabHost), set up for vfpick; reused by every
  scenario; stopped at the end (unless --lab-keep).
- host (function): the l1 host for one scenario; its commands are recorded as the scenario's
  evidence; afterwards L1 is put back (no domains, no claims, VFs and PFs as set up).
- l1_pair (session): two L1 hosts joined by a private link (10.77.0.1 / 10.77.0.2), for
  live migration. Booted on first use, beside l1 if both are used.
  An L1 found dead when a scenario starts (its QEMU ended under the one before: see
  lab.host.L1Gone) is booted again, its serial log kept as NAME-gone-N-serial.log; a pair is
  booted again as a pair (its link cannot be re-made for one side).
- evidence (function): record(text) adds a line to the scenario's evidence.
Evidence is printed in the terminal summary and written to RUNDIR/evidence.txt.
"""
import json
import os
import time

import pytest

from lab import cluster, labhost, suites
from lab.host import LabError, log, run_dir

_EVIDENCE = {}
# per scenario: [final outcome, seconds over all its runs, reruns]; L1s found dead and booted again
_SCENARIOS = {}
_L1_LOST = []


def pytest_addoption(parser):
    parser.addoption("--lab-suite", default="bookworm", choices=("bookworm", "trixie"))
    parser.addoption("--lab-deb", required=True, help="the vfpick .deb to install in L1")
    parser.addoption("--lab-keep", action="store_true", help="leave the L1s running at the end")


def pytest_collection_modifyitems(config, items):
    """A suite's own selection of scenarios (lab.suites): the others are deselected, not skipped."""
    suite = config.getoption("--lab-suite")
    keep = [item for item in items if suites.selected(suite, item.nodeid)]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    # scenarios on the L1 pair last (stable): the single L1's measurements run before the pair
    # boots, and its two TCG VMs are not booted in the middle of the single-L1 scenarios
    items[:] = sorted(keep, key=lambda item: "l1_pair" in item.fixturenames)


@pytest.fixture(scope="session")
def lab_assets(request):
    return cluster.Assets.ensure(request.config.getoption("--lab-suite"),
                                 request.config.getoption("--lab-deb"))


class _Booted:
    """The L1s of one kind (names, link), booted on first use and again when one has died."""

    def __init__(self, assets, names, link):
        self.assets, self.names, self.link = assets, names, link
        self.hosts = None
        self.reboots = 0

    def live(self):
        if self.hosts and all(h.vm.alive() for h in self.hosts):
            return self.hosts
        if self.hosts:
            self.reboots += 1
            _L1_LOST.append(", ".join(self.names))
            kept = cluster.keep_serial_logs(self.hosts, f"gone-{self.reboots}")
            log(f"{', '.join(self.names)}: QEMU ended under the last scenario; booting again "
                f"(serial logs kept: {', '.join(kept) or 'none'})")
            try:
                cluster.shutdown(self.hosts)
            except LabError as e:
                log(f"stopping what was left: {e}")
            self.hosts = None
        self.hosts = cluster.boot(self.assets, self.names, link=self.link)
        return self.hosts

    def shutdown(self, keep):
        if self.hosts:
            cluster.shutdown(self.hosts, keep=keep)


def _booted(request, lab_assets, names, link):
    booted = _Booted(lab_assets, names, link)
    request.addfinalizer(lambda: booted.shutdown(request.config.getoption("--lab-keep")))
    return booted


@pytest.fixture(scope="session")
def l1(request, lab_assets):
    return _booted(request, lab_assets, ["l1"], link=False)


@pytest.fixture(scope="session")
def l1_pair(request, lab_assets):
    return _booted(request, lab_assets, ["l1a", "l1b"], link=True)


@pytest.fixture
def evidence(request):
    lines = _EVIDENCE.setdefault(request.node.nodeid, [])
    return lines.append


def _recording(hosts, record):
    for h in hosts:
        h.vm.evidence = record


@pytest.fixture
def host(l1, evidence):
    [h] = l1.live()
    _recording([h], evidence)
    yield h
    _recording([h], None)
    if h.vm.alive():   # a dead L1 has nothing to clean: the next scenario boots a new one
        h.clean()


@pytest.fixture
def pair(l1_pair, evidence):
    """l1_pair, recorded as evidence and cleaned after the scenario."""
    hosts = tuple(l1_pair.live())
    _recording(hosts, evidence)
    yield hosts
    _recording(hosts, None)
    if all(h.vm.alive() for h in hosts):
        for h in hosts:
            h.clean()


def pytest_runtest_logreport(report):
    """Each scenario's outcome, time (setup, call and teardown of every run) and reruns."""
    row = _SCENARIOS.setdefault(report.nodeid, ["passed", 0.0, 0])
    row[1] += report.duration
    if report.outcome == "rerun":
        row[2] += 1
    elif report.failed:
        row[0] = "failed" if report.when == "call" else "error"
    elif report.skipped and report.when in ("setup", "call"):
        row[0] = "skipped"


def summary_lines():
    """One line per scenario (result, duration, reruns) and the run's totals."""
    lines = [f"test-lab: scenario {nodeid.rsplit('/', 1)[-1]}: {outcome} in {seconds:.0f} s, "
             f"{reruns} rerun{'s' * (reruns != 1)}" for nodeid, (outcome, seconds, reruns) in _SCENARIOS.items()]
    reruns = sum(row[2] for row in _SCENARIOS.values())
    lost = _L1_LOST + [f"{name} at boot" for name in cluster.BOOT_FAILURES]
    restarts = labhost.L2_RESTARTS
    counts = {k: sum(row[0] == k for row in _SCENARIOS.values()) for k in ("passed", "failed", "error", "skipped")}
    lines.append(f"test-lab: scenarios: {counts['passed']} passed, {counts['failed'] + counts['error']} failed, "
                 f"{counts['skipped']} skipped; reruns {reruns}; L1 lost {len(lost)}"
                 + (f" ({'; '.join(lost)})" if lost else "")
                 + f"; L2 restarted after a boot hang {len(restarts)}"
                 + (f" ({'; '.join(restarts)})" if restarts else ""))
    return lines, {"scenarios": {k: {"outcome": o, "seconds": round(t, 1), "reruns": r}
                                 for k, (o, t, r) in _SCENARIOS.items()},
                   "reruns": reruns, "l1_lost": len(lost), "l2_restarted": len(restarts), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def pytest_terminal_summary(terminalreporter):
    totals, record = summary_lines()
    os.makedirs(run_dir(), exist_ok=True)
    with open(os.path.join(run_dir(), "summary.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    if not _EVIDENCE:
        terminalreporter.write("\n".join(totals) + "\n")
        return
    text = []
    for nodeid, lines in _EVIDENCE.items():
        text.append(f"===== {nodeid}\n" + "".join(line if line.endswith("\n") else line + "\n"
                                                  for line in lines))
    terminalreporter.section("evidence (what each scenario read from L1/L2)")
    terminalreporter.write("\n".join(text))
    os.makedirs(run_dir(), exist_ok=True)
    with open(os.path.join(run_dir(), "evidence.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    # last, so that the per-scenario lines close the log
    terminalreporter.section("scenarios")
    terminalreporter.write("\n".join(totals) + "\n")
