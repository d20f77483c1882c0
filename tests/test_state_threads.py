"""The claims store in a process of one thread (the hook) and in one of many (the watcher)."""

import os
import re
import subprocess
import threading

import pytest

from clitools import domain, status_json, vfpick
from vfpick.records import Claim
from vfpick.state import StateStore


def _claim(vf="0000:3b:02.0", uuid="6c8d5e4f-0000-4000-8000-000000000001"):
    return Claim(vf=vf, pf="0000:3b:00.0", link="ens1f0", pool="p", domain="vm", uuid=uuid,
                 mac="52:54:00:00:00:01", active=False, pending=None, applied=None, restore=None)


def _nest(outer, inner, how):
    with outer.transaction():
        if how == "transaction":
            with inner.transaction():
                pass
        else:
            inner.snapshot()


@pytest.mark.parametrize("how", ["transaction", "snapshot"])
@pytest.mark.parametrize("outer_one, inner_one", [(True, True), (False, False)])
def test_a_nested_lock_on_one_state_dir_fails_instead_of_hanging(tmp_path, how, outer_one,
                                                                 inner_one):
    state = str(tmp_path / "state")
    outer = StateStore(state, lock_timeout=5, one_thread=outer_one)
    inner = StateStore(state, lock_timeout=5, one_thread=inner_one)
    with pytest.raises(RuntimeError, match="nested claims transaction"):
        _nest(outer, inner, how)
    # Refused, not left half-held: the same dir locks again at once.
    with inner.transaction() as claims:
        claims.put(_claim())
    assert [c.vf for c in outer.snapshot().all()] == ["0000:3b:02.0"]


def test_a_one_thread_store_writes_and_reads_like_any_other(tmp_path):
    state = str(tmp_path / "state")
    with StateStore(state, one_thread=True).transaction() as claims:
        claims.put(_claim())
        claims.put(_claim("0000:3b:02.1"))
    with StateStore(state).transaction() as claims:
        claims.drop("0000:3b:02.1")
    assert [c.vf for c in StateStore(state, one_thread=True).snapshot().all()] == ["0000:3b:02.0"]


def test_threads_of_a_process_take_turns_and_lose_no_claim(tmp_path):
    state = str(tmp_path / "state")
    store = StateStore(state, lock_timeout=30)
    errors = []

    def add(i):
        try:
            for j in range(10):
                with store.transaction() as claims:
                    claims.put(_claim("0000:3b:%02x.%d" % (i, j % 8),
                                      "6c8d5e4f-0000-4000-8000-%012x" % (i * 100 + j)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors
    assert len(store.snapshot().all()) == 4 * 8


def _installed_hook(host, tmp_path):
    hooks = str(tmp_path / "hooks")
    vfpick(host, "install-hook", "--hooks-dir", hooks, "--config", host.config_path)
    return os.path.join(hooks, "qemu.d", "vfpick")


def _imports(hook, host, name, op, subop, xml):
    # The installed hook (sh, then python -IS), as libvirt runs it: what it imported.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}
    with open(hook) as f:
        python = re.search(r"exec '([^']+)' -IS", f.read()).group(1)
    proc = subprocess.run([python, "-X", "importtime", "-IS", hook, name, op, subop, "-"],
                          input=xml, capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()
            if line.startswith("import time:")}


def test_the_hook_claims_and_releases_without_importing_threading(host, tmp_path):
    host.write_config()
    xml = vfpick(host, "resolve", "-", input=domain("vm1", nics=2), check=0).stdout
    with open(os.path.join(host.config_dir, "vm1.xml"), "wb") as f:
        f.write(xml)
    hook = _installed_hook(host, tmp_path)
    imported = _imports(hook, host, "vm1", "prepare", "begin", xml)
    assert "vfpick.state.store" in imported and "threading" not in imported
    assert [c["active"] for c in status_json(host)["claims"]] == [True, True]
    imported = _imports(hook, host, "vm1", "release", "end", xml)
    assert "vfpick.state.store" in imported and "threading" not in imported
    assert [c["active"] for c in status_json(host)["claims"]] == [False, False]
