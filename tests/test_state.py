"""The claims store: round trip, write-iff-changed, corrupt files, faults, modes, symlinks."""

import errno
import json
import os
import stat

import pytest
from hypothesis import given, settings, strategies as st

from vfpick.errors import StateCorrupt, StateError
from vfpick.records import Claim, VfSettings, Writer
from vfpick.state import ClaimSet, StateStore


def claim(vf, uuid="u1", active=False, **kw):
    fields = dict(vf=vf, pf="0000:3b:00.0", link="ens1f0", pool="fast", domain="dom-" + uuid,
                  uuid=uuid, mac="52:54:00:00:00:01", active=active)
    fields.update(kw)
    return Claim(**fields)


A, B, C = claim("0000:3b:02.1"), claim("0000:3b:02.0", uuid="u2"), claim("0000:0a:10.3")


def store_with(tmp_path, *claims, **kw):
    store = StateStore(str(tmp_path / "state"), **kw)
    with store.transaction() as cs:
        for c in claims:
            cs.put(c)
    return store


def read_bytes(store):
    with open(store.path, "rb") as f:
        return f.read()


def listing(store):
    return sorted(os.listdir(store.state_dir))


# --- round trip and the ClaimSet API -------------------------------------------------------

def test_round_trip_and_sorting(tmp_path):
    store = store_with(tmp_path, A, B, C)
    snap = store.snapshot()
    # Numeric PCI order: bus 0x0a before 0x3b, function .0 before .1.
    assert snap.all() == [C, B, A]
    assert snap.get(A.vf) == A and snap.get("0000:99:00.0") is None
    assert snap.for_uuid("u1") == [C, A]
    assert dict(snap.mapping()) == {A.vf: A, B.vf: B, C.vf: C}
    doc = json.loads(read_bytes(store))
    assert doc["version"] == 2 and doc["generation"] == 1
    # The rate keys are written only when set (tests/test_state_rates.py).
    rates = {"rate_mbps", "peak_mbps", "min_rate_mbps", "heal"}  # and the heal history
    assert [set(c) for c in doc["claims"]] == [set(Claim._fields) - rates | {"gen"}] * 3
    assert doc["claims"][0]["active"] is False
    assert doc["claims"][0]["pending"] is None and doc["claims"][0]["gen"] == 1


def test_nested_records_round_trip_as_json_objects(tmp_path):
    held = A._replace(pending=Writer("b00t", 42, 7), applied=VfSettings(True, None),
                      restore=VfSettings(False, None))
    store = store_with(tmp_path, held)
    assert store.snapshot().get(A.vf) == held
    row = json.loads(read_bytes(store))["claims"][0]
    assert row["pending"] == {"boot": "b00t", "pid": 42, "start": 7}
    assert row["applied"] == {"trust": True, "spoofchk": None}
    assert row["restore"] == {"trust": False, "spoofchk": None}


def test_generation_stamps_changed_claims_only(tmp_path):
    store = store_with(tmp_path, A, B)                  # generation 1
    with store.transaction() as cs:
        assert cs.generation == 1 and cs.gen(A.vf) == cs.gen(B.vf) == 1
        cs.put(A)                                       # same value: keeps its generation
        cs.put(B._replace(active=True))
        assert cs.gen(A.vf) == 1 and cs.gen(B.vf) == 2
    snap = store.snapshot()
    assert (snap.generation, snap.gen(A.vf), snap.gen(B.vf), snap.gen(C.vf)) == (2, 1, 2, None)
    with store.transaction() as cs:
        cs.drop(A.vf)
    with store.transaction() as cs:
        cs.put(A)                                       # the same claim, written again: new
    assert store.snapshot().gen(A.vf) == 4
    with store.transaction() as cs:
        pass                                            # nothing written, nothing counted
    assert store.snapshot().generation == 4


def test_version_1_files_are_read_and_rewritten_as_version_2(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    os.makedirs(store.state_dir)
    with open(store.path, "wb") as f:
        f.write(_doc(_good, dict(_good, vf=B.vf, uuid="u2")))
    snap = store.snapshot()
    assert snap.all() == [B._replace(domain="dom-u1"), A] and snap.generation == 0
    assert snap.gen(A.vf) == 0
    with store.transaction() as cs:
        cs.put(C)
    doc = json.loads(read_bytes(store))
    assert doc["version"] == 2 and [c["gen"] for c in doc["claims"]] == [1, 0, 0]


def test_put_replaces_drop_and_drop_uuid(tmp_path):
    store = store_with(tmp_path, A, B, C)
    with store.transaction() as cs:
        cs.put(A._replace(active=True))
        assert cs.drop(B.vf) == B and cs.drop(B.vf) is None
        assert cs.drop_uuid("u1") == [C, A._replace(active=True)]
        assert cs.drop_uuid("nobody") == []
        cs.put(B)
    assert store.snapshot().all() == [B]


def test_mapping_is_read_only(tmp_path):
    with store_with(tmp_path, A).transaction() as cs:
        with pytest.raises(TypeError):
            cs.mapping()[B.vf] = B


def test_snapshot_and_finished_transaction_are_read_only(tmp_path):
    store = store_with(tmp_path, A)
    with pytest.raises(RuntimeError):
        store.snapshot().put(B)
    with store.transaction() as cs:
        pass
    for change in (lambda: cs.put(B), lambda: cs.drop(A.vf), lambda: cs.drop_uuid("u1")):
        with pytest.raises(RuntimeError):
            change()


@pytest.mark.parametrize("bad", [
    ("0000:3b:02.1", "pf", "link", "pool", "dom", "u", "mac", False),  # a tuple, not a Claim
    claim("3b:02.1"),                 # not canonical
    claim("0000:3b:02.1", active=1),  # not a bool
    claim("0000:3b:02.1", mac=None),  # not a string
    claim("0000:3b:02.1", pending=(1, 2, 3)),                  # not a Writer
    claim("0000:3b:02.1", pending=Writer("b", 0, 1)),          # no such pid
    claim("0000:3b:02.1", applied=VfSettings("on", None)),     # not a bool
    claim("0000:3b:02.1", restore=VfSettings(1, None)),        # 1 is not a bool either
])
def test_put_refuses_what_load_would_call_corrupt(tmp_path, bad):
    store = store_with(tmp_path, A)
    before = read_bytes(store)
    with pytest.raises(ValueError):
        with store.transaction() as cs:
            cs.put(bad)
    assert read_bytes(store) == before


def test_missing_dir_snapshot_is_empty_and_creates_nothing(tmp_path):
    store = StateStore(str(tmp_path / "nope"))
    assert store.snapshot().all() == []
    assert not os.path.exists(store.state_dir)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_claims = st.lists(st.builds(
    Claim, vf=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F),
                        st.integers(0, 7)).map(lambda t: "%04x:%02x:%02x.%d" % t),
    pf=_text, link=_text, pool=_text, domain=_text, uuid=_text, mac=_text, active=st.booleans(),
    pending=st.none() | st.builds(Writer, _text, st.integers(1, 1 << 22), st.integers(0, 1 << 40)),
    applied=st.none() | st.builds(VfSettings, st.sampled_from((True, False, None)),
                                  st.sampled_from((True, False, None))),
), max_size=8, unique_by=lambda c: c.vf)


@settings(max_examples=60, deadline=None)
@given(claims=_claims)
def test_round_trip_property(tmp_path_factory, claims):
    store = store_with(tmp_path_factory.mktemp("rt"), *claims)
    assert store.snapshot().mapping() == {c.vf: c for c in claims}


# --- write iff changed, nothing on exception -----------------------------------------------

def _identity(store):
    st_ = os.stat(store.path)
    return st_.st_ino, st_.st_mtime_ns, read_bytes(store)


@pytest.mark.parametrize("body", [
    lambda cs: None,
    lambda cs: cs.get(A.vf),
    lambda cs: cs.put(A),                         # same value again
    lambda cs: (cs.put(B), cs.drop(B.vf)),        # changed and changed back
    lambda cs: (cs.drop(A.vf), cs.put(A)),
])
def test_nothing_written_when_unchanged(tmp_path, body):
    store = store_with(tmp_path, A)
    before = _identity(store)
    with store.transaction() as cs:
        body(cs)
    assert _identity(store) == before


def test_unchanged_transaction_on_fresh_dir_creates_no_state_file(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction():
        pass
    assert listing(store) == ["claims.lock"]


def test_exception_inside_transaction_writes_nothing(tmp_path):
    store = store_with(tmp_path, A)
    before = _identity(store)
    with pytest.raises(KeyError):
        with store.transaction() as cs:
            cs.put(B)
            cs.drop(A.vf)
            raise KeyError("boom")
    assert _identity(store) == before
    assert store.snapshot().all() == [A]


def test_nested_transaction_raises_instead_of_deadlocking(tmp_path):
    store = store_with(tmp_path, A)
    with store.transaction():
        with pytest.raises(RuntimeError, match="deadlock"):
            StateStore(store.state_dir).snapshot()
    assert store.snapshot().all() == [A]  # the outer lock was released normally


# --- corrupt files ---------------------------------------------------------------------------

_good = {k: v for k, v in zip(Claim._fields[:8], A)}  # a version-1 claim
_good2 = dict(_good, gen=1, pending=None, applied=None, restore=None)


def _doc(*claims, **top):
    doc = {"version": 1, "claims": list(claims)}
    doc.update(top)
    return json.dumps(doc).encode()


def _doc2(*claims, **top):
    return _doc(*claims, **dict({"version": 2, "generation": 1}, **top))


@pytest.mark.parametrize("raw, why", [
    (b"", "Expecting value"),
    (b"\x00\xffgarbage", "codec"),
    (_doc(_good)[:-7], "Expecting"),                                   # truncated
    (b"[" * 100000, "nested too deeply"),
    (b"[]", "not a JSON object"),
    (json.dumps([_good]).encode(), "not a JSON object"),
    (_doc(_good, version=3), "unsupported version 3"),
    (_doc(_good, version=2), "top-level keys are claims, version, not claims, generation"),
    (_doc2(_good), "missing keys applied, gen, pending, restore"),
    (_doc(_good2), "unknown keys applied, gen, pending, restore"),
    (_doc2(_good2, generation=-1), "'generation' is not a count"),
    (_doc2(dict(_good2, gen=True)), "'gen' is not a count"),
    (_doc2(dict(_good2, gen=2)), "'gen' 2 is past the file's generation 1"),
    (_doc2(dict(_good2, pending={"pid": 3})), "'pending' is not an object of boot, pid, start"),
    (_doc2(dict(_good2, pending={"boot": "b", "pid": 0, "start": 1})), "'pending' is not an object"),
    (_doc2(dict(_good2, applied=[True, False])), "'applied' is not an object of trust, spoofchk"),
    (_doc2(dict(_good2, restore={"trust": 1, "spoofchk": None})), "'restore' values are not true"),
    (_doc2(_good2, dict(_good2, uuid="u9")), "VF 0000:3b:02.1 is claimed twice"),
    (_doc(_good, version="1"), "unsupported version '1'"),
    (_doc(_good, version=True), "unsupported version True"),
    (b'{"claims": []}', "no 'version' key"),
    (_doc(_good, extra=1), "top-level keys"),
    (b'{"version": 1, "version": 1, "claims": []}', "duplicate key"),
    (_doc(claims={}), "'claims' is not a list"),
    (_doc("0000:3b:02.1"), "claim 0 is not an object"),
    (_doc({k: v for k, v in _good.items() if k != "mac"}), "missing keys mac"),
    (_doc(dict(_good, color="red")), "unknown keys color"),
    (_doc(dict(_good, active="yes")), "'active' is not a boolean"),
    (_doc(dict(_good, active=0)), "'active' is not a boolean"),
    (_doc(dict(_good, uuid=7)), "'uuid' is not a string"),
    (_doc(dict(_good, domain=None)), "'domain' is not a string"),
    (_doc(dict(_good, vf="3b:02.1")), "not a canonical PCI address"),
    (_doc(_good, dict(_good, uuid="u9")), "VF 0000:3b:02.1 is claimed twice"),
])
def test_corrupt_file_is_reported_and_kept(tmp_path, raw, why):
    store = StateStore(str(tmp_path / "state"))
    os.makedirs(store.state_dir)
    with open(store.path, "wb") as f:
        f.write(raw)
    for attempt in (store.snapshot, lambda: store.transaction().__enter__()):
        with pytest.raises(StateCorrupt) as info:
            attempt()
        message = str(info.value)
        assert store.path in message and why in message
        assert "kept untouched" in message and "vfpick reconcile --rebuild" in message
    with pytest.raises(StateCorrupt):
        with store.transaction() as cs:  # never reached: raised before yielding
            cs.put(B)
    assert read_bytes(store) == raw
    assert listing(store) == ["claims.json", "claims.lock"]


def test_quarantine_moves_the_file_aside(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    assert store.quarantine() is None
    for n in (1, 2):
        with open(store.path, "wb") as f:
            f.write(b"junk %d" % n)
        moved = store.quarantine()
        assert moved == store.path + ".corrupt-%d" % n
        assert open(moved, "rb").read() == b"junk %d" % n
    assert store.snapshot().all() == []


# --- faults while writing --------------------------------------------------------------------

def _fault_at(stage, exc):
    def fault(name):
        if name == stage:
            raise exc
    return fault


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("exc", [ENOSPC, OSError(errno.EIO, "Input/output error"),
                                 KeyboardInterrupt()], ids=["ENOSPC", "EIO", "interrupt"])
@pytest.mark.parametrize("stage, lands", [
    ("after-temp-open", "old"), ("after-temp-write", "old"), ("after-rename", "new"),
])
def test_fault_leaves_old_or_new_state_and_no_temp(tmp_path, stage, exc, lands):
    old = store_with(tmp_path, A, B)
    old_bytes = read_bytes(old)
    store = StateStore(old.state_dir, _fault=_fault_at(stage, exc))
    with pytest.raises(StateError if isinstance(exc, OSError) else type(exc)) as info:
        with store.transaction() as cs:
            cs.drop(B.vf)
            cs.put(C)
    if isinstance(exc, OSError):
        assert store.path in str(info.value) and exc.strerror in str(info.value)
    expect = {"old": [B, A], "new": [C, A]}[lands]
    assert StateStore(old.state_dir).snapshot().all() == expect
    if lands == "old":
        assert read_bytes(old) == old_bytes
    assert listing(store) == ["claims.json", "claims.lock"]


def test_first_write_failing_leaves_no_state_file(tmp_path):
    store = StateStore(str(tmp_path / "state"), _fault=_fault_at("after-temp-write", ENOSPC))
    with pytest.raises(StateError, match="No space left on device"):
        with store.transaction() as cs:
            cs.put(A)
    assert listing(store) == ["claims.lock"]
    assert store.snapshot().all() == []


def test_stale_temp_from_a_crash_is_replaced(tmp_path):
    store = store_with(tmp_path, A)
    with open(os.path.join(store.state_dir, "claims.json.tmp"), "wb") as f:
        f.write(b"half a fi")
    assert store.snapshot().all() == [A]
    with store.transaction() as cs:
        cs.put(B)
    assert store.snapshot().all() == [B, A]
    assert listing(store) == ["claims.json", "claims.lock"]


# --- modes and symlinks ----------------------------------------------------------------------

def test_modes(tmp_path):
    old = os.umask(0o022)
    try:
        store = store_with(tmp_path / "deep" / "er", A)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store.state_dir).st_mode) == 0o700
    for name in ("claims.json", "claims.lock"):
        assert stat.S_IMODE(os.stat(os.path.join(store.state_dir, name)).st_mode) == 0o600


@pytest.mark.parametrize("name", ["claims.json", "claims.lock"])
@pytest.mark.parametrize("dangling", [False, True])
def test_symlinked_file_is_refused_and_target_untouched(tmp_path, name, dangling):
    store = store_with(tmp_path, A)
    target = str(tmp_path / "target")
    if not dangling:
        with open(target, "wb") as f:
            f.write(read_bytes(store))
    link = os.path.join(store.state_dir, name)
    os.unlink(link)
    os.symlink(target, link)
    before = open(target, "rb").read() if not dangling else None
    for attempt in (store.snapshot, lambda: store.transaction().__enter__()):
        with pytest.raises(StateError, match="symlink") as info:
            attempt()
        assert not isinstance(info.value, StateCorrupt)
        assert link in str(info.value)
    if dangling:
        assert not os.path.lexists(target)
    else:
        assert open(target, "rb").read() == before
    assert os.path.islink(link)


def test_symlinked_state_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(str(real), str(tmp_path / "state"))
    store = StateStore(str(tmp_path / "state"))
    for attempt in (store.snapshot, lambda: store.transaction().__enter__(), store.quarantine):
        with pytest.raises(StateError, match="symlink"):
            attempt()
    assert os.listdir(str(real)) == []


def test_io_error_names_the_path_and_the_os_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    for state_dir in (str(blocker), str(blocker / "state")):
        with pytest.raises(StateError, match="Not a directory") as info:
            with StateStore(state_dir).transaction():
                pass
        assert state_dir in str(info.value) and not isinstance(info.value, StateCorrupt)


def test_fifo_as_state_file_is_refused_without_hanging(tmp_path):
    store = store_with(tmp_path)
    os.mkfifo(store.path)
    with pytest.raises(StateError, match="not a regular file"):
        store.snapshot()


def test_claimset_is_exported():
    assert isinstance(ClaimSet({}, writable=False).all(), list)


# --- drained PFs (vfpick drain) ------------------------------------------------------------

P1, P2 = "0000:3b:00.1", "0000:0a:00.0"


def test_drained_round_trip_written_only_when_set(tmp_path):
    store = store_with(tmp_path, A)
    plain = read_bytes(store)
    assert b"drained" not in plain and store.snapshot().drained() == frozenset()
    with store.transaction() as cs:  # a change of the drained set alone is written
        cs.set_drained({P1, P2})
    doc = json.loads(read_bytes(store))
    assert doc["drained"] == [P2, P1]  # PCI order
    assert store.snapshot().drained() == {P1, P2} and store.snapshot().all() == [A]
    with store.transaction() as cs:
        assert cs.drained() == {P1, P2}
        cs.put(B)
    assert store.snapshot().drained() == {P1, P2}  # a claim write keeps it
    with store.transaction() as cs:
        cs.set_drained(set())
        cs.drop(B.vf)
    assert b"drained" not in read_bytes(store)  # undrained: as a file written before drain
    assert json.loads(read_bytes(store))["claims"] == json.loads(plain)["claims"]


def test_set_drained_refuses_a_non_canonical_address_and_is_read_only_outside(tmp_path):
    store = store_with(tmp_path, A)
    with pytest.raises(ValueError, match="canonical"):
        with store.transaction() as cs:
            cs.set_drained({"3b:00.1"})
    with pytest.raises(RuntimeError):
        store.snapshot().set_drained({P1})
    assert b"drained" not in read_bytes(store)


@pytest.mark.parametrize("drained, why", [
    ("0000:3b:00.1", "'drained' is not a list"),
    ([P1, P1], "a PF is drained twice"),
    (["3b:00.1"], "drained PF 0 is not a canonical PCI address"),
    ([7], "drained PF 0 is not a canonical PCI address"),
])
def test_a_bad_drained_entry_is_corrupt(tmp_path, drained, why):
    store = StateStore(str(tmp_path / "state"))
    os.makedirs(store.state_dir)
    raw = json.dumps({"version": 1, "claims": [], "drained": drained}).encode()
    with open(store.path, "wb") as f:
        f.write(raw)
    with pytest.raises(StateCorrupt, match=why):
        store.snapshot()
    assert read_bytes(store) == raw
