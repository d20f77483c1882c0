"""A NIC's self-healing history in the claims file (Claim.heal): round trip, written only when
set (older files read the same), every field checked, bounded; and the watcher's heal metrics."""

import json
import urllib.request

import pytest

from vfpick import config as configmod
from vfpick.commands import metrics
from vfpick.errors import StateCorrupt
from vfpick.records import HEAL_HISTORY, Claim, HealEvent
from vfpick.state import StateStore
from vfpick.state import codec

VF, OLD = "0000:3b:02.1", "0000:af:02.0"
MOVED = HealEvent(at=1733628031, outcome="moved", from_vf=OLD, to_vf=VF, from_link="ens2f0",
                  to_link="ens1f0", why="link down")


def claim(**kw):
    return Claim(vf=VF, pf="0000:3b:00.0", link="ens1f0", pool="fast", domain="web", uuid="u1",
                 mac="52:54:00:00:00:01", active=True, **kw)


def write(tmp_path, doc):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction():
        pass  # creates the dir
    with open(store.path, "w") as f:
        json.dump(doc, f)
    return store


def test_round_trip_and_only_when_set(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    refused = HealEvent(at=1, outcome="refused", from_vf=VF, to_vf=None, from_link="ens1f0",
                        to_link=None, why="no spare link")
    with store.transaction() as claims:
        claims.put(claim(heal=(MOVED, refused)))
        claims.put(claim()._replace(vf=OLD, mac="52:54:00:00:00:02"))
    assert store.snapshot().get(VF).heal == (MOVED, refused)
    rows = {c["vf"]: c for c in json.load(open(store.path))["claims"]}
    assert "heal" not in rows[OLD]                 # a claim without history is written as before
    assert rows[VF]["heal"][0] == MOVED._asdict()


@pytest.mark.parametrize("heal, says", [
    ("moved", "'heal' is not a list"),
    ([], "'heal' is not a list of 1 to %d events" % HEAL_HISTORY),
    ([MOVED._asdict()] * (HEAL_HISTORY + 1), "'heal' is not a list of 1 to"),
    ([dict(MOVED._asdict(), outcome="teleported")], "outcome (moved, rolled_back, refused)"),
    ([dict(MOVED._asdict(), at=-1)], "at (count)"),
    ([dict(MOVED._asdict(), at=True)], "at (count)"),
    ([dict(MOVED._asdict(), from_vf="3b:02.1")], "VFs are not canonical"),
    ([dict(MOVED._asdict(), to_link=7)], "links and reason are not strings"),
    ([dict(MOVED._asdict(), extra=1)], "'heal' is not an object of at, outcome"),
    ([{k: v for k, v in MOVED._asdict().items() if k != "why"}], "'heal' is not an object"),
    ([None], "'heal' event is not an object"),
])
def test_a_bad_history_is_a_corrupt_file(tmp_path, heal, says):
    row = codec._to_json(claim(), 1)
    row["heal"] = heal
    store = write(tmp_path, {"version": 2, "generation": 1, "claims": [row]})
    with pytest.raises(StateCorrupt) as e:
        store.snapshot()
    assert says in str(e.value)


def test_a_version_1_file_has_no_history(tmp_path):
    row = {k: v for k, v in codec._to_json(claim(), 0).items() if k in Claim._fields[:8]}
    store = write(tmp_path, {"version": 1, "claims": [row]})
    assert store.snapshot().get(VF).heal is None


class FakeHealer:
    def __init__(self, pools):
        self.pools = pools

    def counts(self):
        return {("fast", "live", "done", ""): 2, ("fast", "live", "refused", "no_spare_link"): 1}, \
            {"fast": 1}


def test_heal_families_on_the_watchers_metrics_server(host):
    cfg = host.write_config({"fast": "pfs = %s\nheal = live\n" % " ".join(host.netdevs()),
                             "slow": "pfs = %s\nheal = off\n" % host.netdevs()[0]})
    healer = FakeHealer({"fast": cfg.pools["fast"]})
    server = metrics.serve(cfg, "127.0.0.1:0", lambda _line: None,
                           extra=lambda: metrics.heal_families(healer))
    try:
        port = server.server_address[1]
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    # prometheus_client writes the labels sorted by name
    want = ['vfpick_heal_decisions_total{decision="done",mode="live",pool="fast",reason=""} 2.0',
            'vfpick_heal_decisions_total{decision="refused",mode="live",pool="fast",'
            'reason="no_spare_link"} 1.0',
            'vfpick_heal_decisions_total{decision="planned",mode="live",pool="fast",reason=""} 0.0',
            'vfpick_heal_waiting{pool="fast"} 1.0']
    lines = set(text.splitlines())
    for line in want:
        assert line in lines, (line, text)
    assert 'pool="slow"' not in text.split("vfpick_heal_decisions")[1]
    assert metrics.heal_families(None)[0].samples == []   # no pool heals: empty families


def test_pool_heal_defaults_are_configs():
    assert configmod.Pool._field_defaults["heal"] == "report"
    assert configmod.Pool._field_defaults["heal_holddown"] == 30.0
