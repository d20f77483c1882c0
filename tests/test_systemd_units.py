"""The shipped systemd units load in systemd (systemd-analyze verify) and run the right command."""

import os
import shutil
import subprocess

import pytest

from clitools import REPO, VFPICK

UNITS = os.path.join(REPO, "etc", "systemd")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_verify(tmp_path):
    # ExecStart must name an executable that exists here: point it at this interpreter's vfpick.
    paths = []
    for unit in sorted(os.listdir(UNITS)):  # one run: systemd-analyze takes seconds to start
        with open(os.path.join(UNITS, unit)) as f:
            text = f.read().replace("/usr/local/bin/vfpick", VFPICK)
        path = tmp_path / unit
        path.write_text(text)
        paths.append(str(path))
    proc = subprocess.run(["systemd-analyze", "verify"] + paths, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_reconcile_service_runs_reconcile():
    with open(os.path.join(UNITS, "vfpick-reconcile.service")) as f:
        lines = f.read().splitlines()
    [exec_start] = [line for line in lines if line.startswith("ExecStart=")]
    assert exec_start.split()[1:3] == ["reconcile", "--connect"]
    assert "Type=oneshot" in lines
    with open(os.path.join(UNITS, "vfpick-reconcile.timer")) as f:
        timer = f.read().splitlines()
    assert "WantedBy=timers.target" in timer and any(t.startswith("OnUnitActiveSec=") for t in timer)


def _unit_lines(name):
    with open(os.path.join(UNITS, name)) as f:
        return f.read().splitlines()


def _deps(lines, key):
    return [word for line in lines if line.startswith(key + "=")
            for word in line.split("=", 1)[1].split()]


LIBVIRT_CLIENTS = sorted(u for u in os.listdir(UNITS) if u.endswith(".service")
                         and any("--connect" in line for line in _unit_lines(u)
                                 if line.startswith("ExecStart=")))


def test_libvirt_clients_are_known():
    assert LIBVIRT_CLIENTS == ["vfpick-reconcile.service", "vfpick-watch.service"]


@pytest.mark.parametrize("unit", LIBVIRT_CLIENTS)
def test_libvirt_clients_order_after_either_daemon(unit):
    """Debian 12 and 13 run libvirtd, modular hosts virtqemud: After= both (After= on a unit that
    does not exist is a no-op). Never Wants=/Requires= one: on a host that installs both (Fedora)
    that would start the monolithic daemon beside virtqemud."""
    lines = _unit_lines(unit)
    assert {"libvirtd.service", "virtqemud.service"} <= set(_deps(lines, "After")), lines
    for key in ("Wants", "Requires", "BindsTo", "Requisite"):
        assert not {"libvirtd.service", "virtqemud.service", "libvirtd.socket",
                    "virtqemud.socket"} & set(_deps(lines, key)), (unit, key)
