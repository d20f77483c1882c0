"""Bounded waits for the claims lock: [vfpick] lock_timeout, one line naming the lock and holder."""

import os
import subprocess
import sys

import pytest

from clitools import assert_user_error, claims_file, vfpick
from test_hook import resolved, run_hook
from vfpick import config as configmod
from vfpick.errors import ConfigError, LockTimeout
from vfpick.state import StateStore

_HOLDER = r"""
import fcntl, os, sys
os.makedirs(sys.argv[1], 0o700, exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], "claims.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_SH if sys.argv[2] == "shared" else fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # holds the lock until the test closes our stdin
"""


class Holder:
    """Another process holding the claims lock, as a hung vfpick command would."""

    def __init__(self, state_dir, how="exclusive"):
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, state_dir, how],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "locked\n"

    def release(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def holder():
    made = []

    def make(state_dir, how="exclusive"):
        made.append(Holder(state_dir, how))
        return made[-1]

    yield make
    for h in made:
        if h.proc.poll() is None:
            h.release()


def test_transaction_and_snapshot_give_up_naming_the_lock_and_the_holders_pid(tmp_path, holder):
    state_dir = str(tmp_path / "state")
    h = holder(state_dir)
    store = StateStore(state_dir, lock_timeout=0.3)
    for attempt in (lambda: store.transaction().__enter__(), store.snapshot):
        with pytest.raises(LockTimeout) as info:
            attempt()
        message = str(info.value)
        assert os.path.join(state_dir, "claims.lock") in message and "0.3 s" in message
        assert "pid %d" % h.proc.pid in message and "lock_timeout" in message
    h.release()
    with store.transaction() as claims:  # the lock was not left taken by the failed attempts
        assert claims.all() == []


def test_a_shared_holder_blocks_writers_not_readers(tmp_path, holder):
    state_dir = str(tmp_path / "state")
    holder(state_dir, "shared")
    store = StateStore(state_dir, lock_timeout=0.2)
    assert store.snapshot().all() == []
    with pytest.raises(LockTimeout):
        store.transaction().__enter__()


def test_a_lock_freed_before_the_deadline_is_taken(tmp_path, holder):
    state_dir = str(tmp_path / "state")
    h = holder(state_dir)
    store = StateStore(state_dir, lock_timeout=60)
    import threading

    timer = threading.Timer(0.3, h.release)
    timer.start()
    try:
        with store.transaction() as claims:
            assert claims.all() == []
    finally:
        timer.join()


def write_timeout(host, value, pools=None):
    """host's config with `lock_timeout = value` in [vfpick] (None: the key left out)."""
    host.write_config(pools=pools)
    if value is not None:
        with open(host.config_path) as f:
            text = f.read()
        with open(host.config_path, "w") as f:
            f.write(text.replace("[vfpick]\n", "[vfpick]\nlock_timeout = %s\n" % value, 1))
    return host.config_path


@pytest.mark.parametrize("value,expect", [(None, 30.0), ("2.5", 2.5), ("0", 0.0), ("120", 120.0)])
def test_lock_timeout_config(host, value, expect):
    cfg = configmod.load(write_timeout(host, value))
    assert cfg.lock_timeout == expect
    assert StateStore.for_config(cfg).lock_timeout == expect


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf", "1e9", ""])
def test_bad_lock_timeout_names_file_section_key(host, value):
    with pytest.raises(ConfigError) as info:
        configmod.load(write_timeout(host, value))
    assert str(info.value).startswith(host.config_path + ": [vfpick] lock_timeout: ")


def test_commands_and_the_hook_exit_1_with_one_line_when_the_lock_stays_taken(host, holder):
    write_timeout(host, "0.5")
    xml = resolved(host, "vm1", nics=1)
    before = claims_file(host)
    h = holder(host.state_dir)
    lock = os.path.join(host.state_dir, "claims.lock")
    for argv in (["status"], ["release", "vm1"], ["resolve", "-"]):
        proc = vfpick(host, *argv, input=xml)
        assert_user_error(proc, lock, "pid %d" % h.proc.pid)
    assert_user_error(run_hook(host, "vm1", "prepare", "begin", xml), lock, "pid %d" % h.proc.pid)
    assert claims_file(host) == before
    h.release()
    assert run_hook(host, "vm1", "prepare", "begin", xml).returncode == 0


def test_release_of_a_name_without_claims_asks_libvirt_without_holding_the_lock(host, tmp_path):
    """A renamed domain is looked up in libvirt; a libvirt that never answers must not hold
    every VM start of the host behind the claims lock."""
    import fcntl
    import socket

    host.write_config()
    resolved(host, "mine", nics=1)  # a claims file and its lock exist
    sock_path = str(tmp_path / "hung-libvirt.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(1)  # accepts, never answers: a hung libvirtd
    proc = subprocess.Popen([sys.executable, "-m", "vfpick", "release", "renamed", "--connect",
                             "qemu+unix:///system?socket=" + sock_path],
                            env=dict(os.environ, VFPICK_CONFIG=host.config_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server.settimeout(60)
        conn, _ = server.accept()  # release is now waiting on libvirt
        fd = os.open(os.path.join(host.state_dir, "claims.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: release holds it
        finally:
            os.close(fd)
        assert proc.poll() is None
        conn.close()  # libvirt goes away: release gives up on the name, one line, exit 1
        assert proc.wait(timeout=60) == 1
        err = proc.stderr.read().decode()
        assert err.startswith("vfpick: no claims for domain 'renamed'") and err.count("\n") == 1, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
