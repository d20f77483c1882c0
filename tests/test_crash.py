"""Crash safety: kill -9 at random moments of parallel CLI and hook runs, and faults in the
state writer that test_state.py does not reach (real disk full, short writes, fsync and rename
failures, a crash between the rename and the directory fsync).

The kill storm is short in CI; set VFPICK_CRASH_SECONDS (e.g. 300) for a longer one, and
VFPICK_CRASH_SEED to replay one. The stress command (bench/stress.py) runs here briefly too.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from clitools import HOOK, REPO, VFPICK, cli_env, domain, vfpick
from waiting import WAIT
from test_state_concurrency import CRASHER  # one crashing writer for both files
from vfpick.errors import StateError
from vfpick.records import Claim
from vfpick.state import StateStore

STORM_SECONDS = float(os.environ.get("VFPICK_CRASH_SECONDS", "10"))
STORM_CHAINS = int(os.environ.get("VFPICK_CRASH_CHAINS", "6"))
# Fixed, so a failure replays: the seed picks every domain, op and kill time.
STORM_SEED = int(os.environ.get("VFPICK_CRASH_SEED", "20261130"))
STORM_MIN_OPS, STORM_MIN_KILLS = 10, 1

SPEC = {
    "nodes": {"0": "0-7", "1": "8-15"},
    "cards": [
        {"bus": "3b", "numa": 0, "pfs": [{"netdev": "ens1f0", "port": 0, "vfs": 16},
                                         {"netdev": "ens1f1", "port": 1, "vfs": 16}]},
        {"bus": "af", "numa": 1, "pfs": [{"netdev": "ens2f0", "port": 0, "vfs": 16},
                                         {"netdev": "ens2f1", "port": 1, "vfs": 16}]},
    ],
}


def _parse_state(host):
    """Claims from the raw file, checked independently of the store's own parser."""
    path = os.path.join(host.state_dir, "claims.json")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        doc = json.loads(f.read().decode("utf-8"))
    assert set(doc) == {"version", "generation", "claims"} and doc["version"] == 2
    vfs = [c["vf"] for c in doc["claims"]]
    assert len(vfs) == len(set(vfs)), "a VF is claimed twice: %s" % sorted(vfs)
    # And the store agrees (it refuses duplicates and bad schema on its own).
    assert len(StateStore(host.state_dir).snapshot().all()) == len(vfs)
    return [Claim(**{k: v for k, v in c.items() if k in Claim._fields[:8]}) for c in doc["claims"]]


class Chain:
    """One domain's life, op after op, each op a subprocess that may be killed with SIGKILL.

    expected: after a completed op, the exact set of states the domain's claims may be in;
    after a killed op, either the state before it or the one after it (all or nothing)."""

    def __init__(self, host, n, rnd, durations, lock):
        self.host, self.n, self.rnd = host, n, rnd
        self.name = "crash-%04d" % n
        self.uuid = "00000000-0000-4000-8000-%012d" % n
        self.nics = rnd.choice([1, 1, 2, 3])
        self.persistent = rnd.random() < 0.5
        self.durations, self.lock = durations, lock
        self.log = []          # (op, returncode)
        self.before = "none"   # model state before the last op: none | idle | active | unknown-idle
        self.after = "none"
        self.vfs = None        # the VFs the resolve printed (None when unknown)

    def _run(self, op, cmd, data):
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env)
        kill_at = None
        if self.rnd.random() < 0.35:
            with self.lock:
                typical = self.durations.get(op, 0.4)
            kill_at = time.monotonic() + self.rnd.uniform(0, typical * 1.3)
        start = time.monotonic()
        killer = None
        if kill_at is not None:
            def kill():
                time.sleep(max(0.0, kill_at - time.monotonic()))
                if proc.poll() is None:
                    try:
                        proc.send_signal(signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            killer = threading.Thread(target=kill, daemon=True)
            killer.start()
        out, err = proc.communicate(data, timeout=120)
        if killer is not None:
            killer.join()
        if proc.returncode == 0:
            with self.lock:
                old = self.durations.get(op, 0.4)
                self.durations[op] = 0.8 * old + 0.2 * (time.monotonic() - start)
        self.log.append((op, proc.returncode))
        assert b"Traceback" not in err, err
        return proc.returncode, out, err

    def run(self):
        self.env = cli_env(self.host)
        xml = domain(self.name, nics=self.nics, uuid=self.uuid)
        rc, out, err = self._run("resolve", [VFPICK, "resolve", "-"], xml)
        self.before = "none"
        if rc == -signal.SIGKILL:
            self.after = "unknown-idle"
            return
        if rc == 1:
            assert b"exhausted" in err, err
            self.after = "none"
            return
        assert rc == 0, (rc, err)
        # Success means the whole document came out.
        assert out.endswith(b"</domain>\n"), out[-200:]
        from vfpick import domscan

        self.vfs = sorted(n.vf for n in domscan.scan(out).meta_nics)
        assert len(self.vfs) == self.nics
        self.after = "idle"
        if self.persistent:
            with open(os.path.join(self.host.config_dir, self.name + ".xml"), "wb") as f:
                f.write(out)
        state = "idle"
        for _ in range(self.rnd.randint(0, 4)):
            op = self.rnd.choice(["prepare", "hook-release", "release"])
            if op == "prepare":
                cmd = [sys.executable, HOOK, self.name, "prepare", "begin", "-"]
                rc, stdout, err = self._run(op, cmd, out)
                new = "active"
            elif op == "hook-release":
                cmd = [sys.executable, HOOK, self.name, "release", "end", "-"]
                rc, stdout, err = self._run(op, cmd, out)
                new = "idle" if self.persistent else "none"
            else:
                cmd = [VFPICK, "release", self.name]
                rc, stdout, err = self._run(op, cmd, b"")
                new = "none"
                if rc == 0:  # complete output: one line per released VF
                    released = [l for l in stdout.splitlines() if l.startswith(b"released ")]
                    assert len(released) == self.nics, stdout
            self.before = state
            if rc == -signal.SIGKILL:
                self.after = (state, new)
                return
            assert rc == 0, (op, rc, err)
            state = self.after = new
            if state == "none":
                return  # released: its VFs may go to other domains now

    def check(self, claims):
        mine = [c for c in claims if c.uuid == self.uuid]
        if mine:
            assert {c.domain for c in mine} == {self.name}
            actives = {c.active for c in mine}
            assert len(actives) == 1, "half-activated claims: %s (%s)" % (mine, self.log)
            actual = "active" if actives.pop() else "idle"
            assert len(mine) == self.nics, (mine, self.log)
            if self.vfs is not None:
                assert sorted(c.vf for c in mine) == self.vfs, (mine, self.vfs, self.log)
        else:
            actual = "none"
        allowed = self.after if isinstance(self.after, tuple) else (self.after,)
        allowed = {"idle" if a == "unknown-idle" else a for a in allowed}
        if self.after == "unknown-idle":
            allowed.add("none")
        assert actual in allowed, (self.name, actual, allowed, self.log)


def _storm(host, seconds, chains, seed):
    rnd = random.Random(seed)
    durations, lock = {}, threading.Lock()
    done, errors = [], []
    counter = [0]
    deadline = time.monotonic() + seconds
    # A slow machine gets more time, not a weaker storm: it runs on until it has done enough.
    last_call = deadline + WAIT * 5

    def enough():
        with lock:
            logs = [rc for c in done for _, rc in c.log]
        return len(logs) >= STORM_MIN_OPS and logs.count(-signal.SIGKILL) >= STORM_MIN_KILLS

    def go_on():
        now = time.monotonic()
        return now < deadline or (now < last_call and not enough())

    def worker(wseed):
        wrnd = random.Random(wseed)
        while go_on():
            with lock:
                counter[0] += 1
                n = counter[0]
            chain = Chain(host, n, random.Random(wrnd.random()), durations, lock)
            try:
                chain.run()
            except Exception as exc:  # noqa: BLE001 - reported below with the seed
                errors.append((chain.name, chain.log, repr(exc)))
                return
            done.append(chain)
            # Free VFs now and then: release some finished domains (not under a kill).
            if wrnd.random() < 0.3:
                with lock:
                    victims = [c for c in done if c.after in ("idle", "active")
                               and not getattr(c, "released", False)]
                    victim = victims[0] if victims else None
                    if victim is not None:
                        victim.released = True
                if victim is not None:
                    proc = subprocess.run([VFPICK, "release", victim.uuid], capture_output=True,
                                          env=cli_env(host), timeout=120)
                    assert proc.returncode == 0, proc.stderr
                    victim.after, victim.vfs = "none", None

    threads = [threading.Thread(target=worker, args=(rnd.random(),)) for _ in range(chains)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=last_call - time.monotonic() + 300)
    assert not errors, "seed %s: %s" % (seed, errors[:3])
    return done


def test_kill_storm_loses_nothing_and_doubles_nothing(make_host):
    host = make_host(SPEC)
    host.write_config()
    seed = STORM_SEED
    print("kill storm: seed %d (VFPICK_CRASH_SEED=%d replays it)" % (seed, seed))
    chains = _storm(host, STORM_SECONDS, STORM_CHAINS, seed)
    kills = sum(rc == -signal.SIGKILL for c in chains for _, rc in c.log)
    ops = sum(len(c.log) for c in chains)
    assert ops >= STORM_MIN_OPS and kills >= STORM_MIN_KILLS, ("seed %d" % seed, ops, kills)

    claims = _parse_state(host)
    topo = host.topology()
    known = {c.uuid for c in chains}
    for c in claims:
        assert c.vf in topo.vfs and c.uuid in known, c
    for chain in chains:
        try:
            chain.check(claims)
        except AssertionError as exc:
            raise AssertionError("seed %s: %s" % (seed, exc))
    # The lock is free and the store writable: status, a release and one more resolve work.
    # (The storm may have filled the pool: the release makes room for the resolve.)
    vfpick(host, "status", "--json", check=0)
    if claims:
        vfpick(host, "release", claims[0].uuid, check=0)
    vfpick(host, "resolve", "-", input=domain("after-storm", nics=1), check=0)
    leftover = set(os.listdir(host.state_dir)) - {"claims.json", "claims.lock"}
    assert leftover == set(), leftover
    print("kill storm: seed %d, %d domains, %d ops, %d kills" % (seed, len(chains), ops, kills))


def test_short_stress_run_holds_its_invariants(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "stress.py"), "--procs", "6",
                           "--seconds", "4", "--dir", str(tmp_path / "stress")],
                          capture_output=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert b"invariants hold" in proc.stdout


# --- writer faults not covered by test_state.py --------------------------------------------------

A = Claim("0000:3b:02.0", "0000:3b:00.0", "l", "fast", "a", "u-a", "52:54:00:00:00:01", False)


def _claim(i):
    return A._replace(vf="0000:3c:%02x.%d" % (i // 8, i % 8), uuid="u-%d" % i, domain="d%d" % i)


def _listing(state_dir):
    return sorted(os.listdir(state_dir))


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs, to run out of space for real (root only; skipped where mount fails)."""
    mnt = str(tmp_path / "tiny")
    os.mkdir(mnt)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", mnt],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % proc.stderr.decode().strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def _fill(mnt):
    """Fills the file system to the last byte."""
    fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_real_disk_full_keeps_the_old_state_and_no_temp(tiny_fs):
    state_dir = os.path.join(tiny_fs, "state")
    store = StateStore(state_dir)
    with store.transaction() as claims:
        claims.put(A)
    with open(os.path.join(state_dir, "claims.json"), "rb") as f:
        old = f.read()
    _fill(tiny_fs)
    with pytest.raises(StateError, match="No space left on device") as info:
        with store.transaction() as claims:
            for i in range(200):
                claims.put(_claim(i))
    assert store.path in str(info.value)
    with open(store.path, "rb") as f:
        assert f.read() == old
    assert _listing(state_dir) == ["claims.json", "claims.lock"]
    assert store.snapshot().all() == [A]
    # Space back: the next write works.
    os.unlink(os.path.join(tiny_fs, "filler"))
    with store.transaction() as claims:
        claims.put(_claim(1))
    assert len(store.snapshot().all()) == 2


def test_disk_full_through_the_cli_is_one_line_and_claims_nothing(host, tiny_fs):
    host.state_dir = os.path.join(tiny_fs, "state")
    host.write_config()
    vfpick(host, "resolve", "-", input=domain("first", nics=1), check=0)
    with open(os.path.join(host.state_dir, "claims.json"), "rb") as f:
        old = f.read()
    _fill(tiny_fs)
    proc = vfpick(host, "resolve", "-", input=domain("second", nics=4))
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("vfpick: ") and err.count("\n") == 1, err
    assert "No space left on device" in err and "Traceback" not in err
    assert proc.stdout == b""  # no XML printed for claims that were not recorded
    with open(os.path.join(host.state_dir, "claims.json"), "rb") as f:
        assert f.read() == old


def _is_temp(fd):
    try:
        return os.readlink("/proc/self/fd/%d" % fd).endswith("claims.json.tmp")
    except OSError:
        return False


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_write = os.write

    def dribble(fd, data):
        return real_write(fd, bytes(data[:7])) if _is_temp(fd) else real_write(fd, data)

    store = StateStore(str(tmp_path / "state"))
    monkeypatch.setattr(os, "write", dribble)
    with store.transaction() as claims:
        for i in range(20):
            claims.put(_claim(i))
    monkeypatch.undo()
    assert len(store.snapshot().all()) == 20


@pytest.mark.parametrize("where", ["write-partial", "fsync", "replace"])
def test_io_failure_before_the_rename_keeps_the_old_state(tmp_path, monkeypatch, where):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as claims:
        claims.put(A)
    with open(store.path, "rb") as f:
        old = f.read()
    real_write, real_fsync, real_replace = os.write, os.fsync, os.replace

    def write(fd, data):
        if _is_temp(fd):
            real_write(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def fsync(fd):
        if _is_temp(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        if str(src).endswith("claims.json.tmp"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, {"write-partial": "write", "fsync": "fsync", "replace": "replace"}[where],
                        {"write-partial": write, "fsync": fsync, "replace": replace}[where])
    with pytest.raises(StateError) as info:
        with store.transaction() as claims:
            claims.put(_claim(3))
    monkeypatch.undo()
    assert store.path in str(info.value)
    with open(store.path, "rb") as f:
        assert f.read() == old
    assert _listing(store.state_dir) == ["claims.json", "claims.lock"]




def test_crash_after_rename_before_dir_fsync_leaves_the_new_state(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as claims:
        claims.put(A)
    proc = subprocess.run([sys.executable, "-c", CRASHER, store.state_dir, "after-rename"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    # The rename happened: the new state is complete, no temp file, and the lock died with it.
    assert [c.vf for c in store.snapshot().all()] == ["0000:02:00.0", A.vf]
    assert _listing(store.state_dir) == ["claims.json", "claims.lock"]
    with store.transaction() as claims:
        claims.drop(A.vf)
    assert [c.vf for c in store.snapshot().all()] == ["0000:02:00.0"]
