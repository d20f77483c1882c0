"""The store under real concurrency: separate processes, as parallel hooks and commands are."""

import json
import os
import subprocess
import sys
import time

from vfpick.records import Claim
from vfpick.state import StateStore


# Each worker waits for a "go" file (so all 32 start contending at once), then per round adds
# its own distinct claim and tries to take every shared VF first-come (get() then put()
# inside one transaction). It prints the shared VFs it believes it won.
WORKER = r"""
import json, os, sys, time
from vfpick.records import Claim
from vfpick.state import StateStore
state_dir, go, me, rounds, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
while not os.path.exists(go):
    time.sleep(0.001)
store = StateStore(state_dir)
won = []
uuid = "uuid-%02d" % me
for r in range(rounds):
    with store.transaction() as claims:
        vf = "0000:%02x:%02x.0" % (me + 1, r)
        claims.put(Claim(vf, "pf", "link", "fast", "dom-%d" % me, uuid, "mac", False))
        for s in shared:
            if claims.get(s) is None:
                claims.put(Claim(s, "pf", "link", "fast", "dom-%d" % me, uuid, "mac", True))
                won.append(s)
                break
print(json.dumps(won))
"""


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_32_processes_lose_nothing_and_double_nothing(tmp_path):
    state_dir, go = str(tmp_path / "state"), str(tmp_path / "go")
    workers, rounds = 32, 4
    shared = ["0000:f0:00.%d" % i for i in range(8)]
    procs = [_spawn(WORKER, state_dir, go, i, rounds, json.dumps(shared)) for i in range(workers)]
    open(go, "w").close()
    wins = {}
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        wins[i] = json.loads(out)
    final = StateStore(state_dir).snapshot().mapping()
    # No lost claim: every worker's every round is there.
    for i in range(workers):
        for r in range(rounds):
            assert final["0000:%02x:%02x.0" % (i + 1, r)].uuid == "uuid-%02d" % i
    # No VF doubled: each shared VF was won by exactly one worker, the one the file names.
    winners = [(vf, i) for i, vfs in wins.items() for vf in vfs]
    assert sorted(vf for vf, _ in winners) == shared
    for vf, i in winners:
        assert final[vf].uuid == "uuid-%02d" % i
    assert len(final) == workers * rounds + len(shared)
    assert sorted(os.listdir(state_dir)) == ["claims.json", "claims.lock"]


WAITER = r"""
import sys, time
from vfpick.records import Claim
from vfpick.state import StateStore
store = StateStore(sys.argv[1])
print("ready", flush=True)
if sys.argv[2] == "transaction":
    with store.transaction() as claims:
        n = len(claims.all())
        claims.put(Claim("0000:02:00.0", "pf", "link", "fast", "b", "u-b", "mac", False))
else:
    n = len(store.snapshot().all())
print(time.monotonic(), n, flush=True)
"""


def _held_then_released(tmp_path, mode):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction() as claims:
        proc = _spawn(WAITER, store.state_dir, mode)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert proc.poll() is None, "the other process did not wait for the lock"
        claims.put(Claim("0000:01:00.0", "pf", "link", "fast", "a", "u-a", "mac", False))
        released = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    acquired, seen = out.split()
    assert float(acquired) >= released
    return store, int(seen)


def test_transaction_blocks_until_the_holder_releases(tmp_path):
    store, seen = _held_then_released(tmp_path, "transaction")
    assert seen == 1  # it read what the holder wrote: read-modify-write is serialized
    assert [c.domain for c in store.snapshot().all()] == ["a", "b"]


def test_snapshot_blocks_while_a_transaction_holds_the_lock(tmp_path):
    _store, seen = _held_then_released(tmp_path, "snapshot")
    assert seen == 1  # never a half-done transaction


CRASHER = r"""
import os, sys
from vfpick.records import Claim
from vfpick.state import StateStore
def die(stage):
    if stage == sys.argv[2]:
        os._exit(9)
with StateStore(sys.argv[1], _fault=die).transaction() as claims:
    claims.put(Claim("0000:02:00.0", "pf", "link", "fast", "b", "u-b", "mac", False))
"""


def test_crash_mid_write_keeps_old_state_and_releases_the_lock(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    old = Claim("0000:01:00.0", "pf", "link", "fast", "a", "u-a", "mac", False)
    with store.transaction() as claims:
        claims.put(old)
    for stage in ("after-temp-open", "after-temp-write"):
        proc = _spawn(CRASHER, store.state_dir, stage)
        proc.communicate(timeout=30)
        assert proc.returncode == 9
        assert "claims.json.tmp" in os.listdir(store.state_dir)  # a real crash cannot clean up
        assert store.snapshot().all() == [old]  # and the lock died with the process
    with store.transaction() as claims:
        claims.drop(old.vf)
    assert store.snapshot().all() == []
    assert sorted(os.listdir(store.state_dir)) == ["claims.json", "claims.lock"]
