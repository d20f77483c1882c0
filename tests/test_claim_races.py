"""Claims against libvirt in races (issue 9, items 5 and 6).

- A reconcile never drops a claim whose define is still in flight: `vfpick define` writes the
  claim, then asks libvirt; a reconcile whose listing runs in between must keep it, whether its
  snapshot was read before or after the claim was written. A 1-VF pool makes a lost claim
  visible: the VF would be handed out twice.
- Nothing waits on libvirt while holding the claims lock: with a libvirt that never answers,
  the prepare hook of another domain still runs.

Run against libvirt's test driver and against the real system libvirtd (tests/libvirtd.py).
"""

import os
import socket
import subprocess
import tempfile
import threading

import pytest

import libvirtd as lv
from clitools import VFPICK, cli_env, domain, status_json, vfpick
from test_hook import run_hook
from vfpick import resolver
from vfpick.host import topology
from vfpick.commands import define, reconcile
from vfpick.errors import VfpickError
from vfpick.records import Claim, Writer
from vfpick.state import writer
from waiting import WAIT, wait_until

libvirt = pytest.importorskip("libvirt")

# Pool "one": a single VF. Pool "other": two more, for the domains that must not wait.
SPEC = {"nodes": {"0": "0-7"}, "cards": [{"bus": "3b", "numa": 0, "pfs": [
    {"netdev": "ens1f0", "port": 0, "vfs": 1}, {"netdev": "ens1f1", "port": 1, "vfs": 2}]}]}
POOLS = {"one": "pfs = ens1f0\n", "other": "pfs = ens1f1\n"}


class GatedConn:
    """A libvirt connection whose defineXML waits for the test: the define is in flight."""

    def __init__(self, conn):
        self._conn = conn
        self.in_flight, self.go = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def defineXML(self, xml):
        self.in_flight.set()
        assert self.go.wait(WAIT), "the test never let the define go on"
        return self._conn.defineXML(xml)


class Libvirt:
    """One connection to a libvirt (test driver or the real daemon) and the domains made."""

    def __init__(self, uri, names):
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.uri, self.names, self.made = uri, names, []
        self.conn = libvirt.open(uri)

    def xml(self, pool="one"):
        name = self.names()
        self.made.append(name)
        iface = "<interface type='network'><source network='%s'/></interface>" % pool
        return lv.domain_xml(name, devices=iface).encode(), name

    def close(self):
        for name in self.made:
            try:
                self.conn.lookupByName(name).undefine()
            except libvirt.libvirtError:
                pass
        self.conn.close()


@pytest.fixture(params=["test:///default", "qemu:///system"])
def lvconn(request):
    if request.param == "qemu:///system":
        daemon = request.getfixturevalue("libvirtd")
        names = lambda: daemon.unique_name("race")
    else:
        counter = iter(range(1, 1000))
        names = lambda: "race-%d" % next(counter)
    c = Libvirt(request.param, names)
    yield c
    c.close()


@pytest.fixture
def race_host(make_host):
    host = make_host(SPEC)
    host.cfg = host.write_config(pools=POOLS)
    return host


@pytest.fixture
def cfg(race_host):
    return race_host.cfg


def _define_in_flight(cfg, conn, xml):
    """Starts `vfpick define` of *xml* in a thread; returns once it waits in defineXML."""
    gated, outcome = GatedConn(conn), {}

    def run():
        try:
            outcome["result"] = define.define_resolved(cfg, gated, xml)
        except Exception as e:  # noqa: BLE001 - shown by the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: gated.in_flight.is_set() or not thread.is_alive(), "define reaches libvirt")
    assert "error" not in outcome, outcome
    return gated, thread, outcome


def _finish(gated, thread, outcome):
    gated.go.set()
    thread.join(WAIT)
    assert not thread.is_alive() and "error" not in outcome, outcome
    return outcome["result"]


def _one_claim(cfg):
    (claim,) = [c for c in resolver.store_for(cfg).snapshot().all() if c.pool == "one"]
    return claim


def _vf_is_handed_out_once(cfg, lvconn, winner):
    xml, _name = lvconn.xml()
    with pytest.raises(VfpickError, match="one"):
        define.define_resolved(cfg, lvconn.conn, xml)
    assert _one_claim(cfg).uuid == winner.uuid
    defined = lvconn.conn.lookupByUUIDString(winner.uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert _one_claim(cfg).vf.split(":")[1] in defined  # the definition holds the claimed VF


def test_reconcile_listing_during_a_define_keeps_its_claim(cfg, lvconn):
    """define writes the claim (pending) -> reconcile: snapshot, listing, apply -> define's
    libvirt call returns. The claim was written BEFORE the snapshot and the listing."""
    xml, name = lvconn.xml()
    gated, thread, outcome = _define_in_flight(cfg, lvconn.conn, xml)
    claim = _one_claim(cfg)
    assert claim.domain == name and claim.pending == writer.me()
    report = reconcile.cmd_reconcile(cfg, lvconn.uri)
    actions = report.result
    assert [a for a in actions if a.verb == "drop"] == [], report.lines
    assert _one_claim(cfg) == claim
    result = _finish(gated, thread, outcome)
    assert _one_claim(cfg) == claim._replace(pending=None)   # libvirt answered: settled
    _vf_is_handed_out_once(cfg, lvconn, result)
    assert reconcile.cmd_reconcile(cfg, lvconn.uri).result == []


def test_reconcile_whose_snapshot_predates_the_claim_keeps_it(cfg, lvconn):
    """reconcile's snapshot -> define writes the claim -> reconcile's listing and apply. The
    writer was not pending at the snapshot: only the claim's generation protects it."""
    store = resolver.store_for(cfg)
    before = store.snapshot()
    writers = reconcile.live_writers(before)
    xml, _name = lvconn.xml()
    gated, thread, outcome = _define_in_flight(cfg, lvconn.conn, xml)
    views = reconcile.domain_views(lvconn.conn)
    actions, _ = reconcile.apply_reconcile(cfg, store, before, writers, views, topology.for_config(cfg))
    assert actions == []
    result = _finish(gated, thread, outcome)
    _vf_is_handed_out_once(cfg, lvconn, result)


def test_a_define_that_died_before_libvirt_answered_loses_its_claim(cfg, lvconn):
    dead = Writer(writer.me().boot, (1 << 22) + 1, 1)  # above the kernel's pid_max: never alive
    topo = topology.for_config(cfg)
    (vf,) = [v for v in topo.vfs.values() if topo.pfs[v.pf].netdev == "ens1f0"]
    with resolver.store_for(cfg).transaction() as claims:
        claims.put(Claim(vf=vf.addr, pf=vf.pf, link="ens1f0", pool="one", domain="crashed",
                         uuid="99999999-0000-0000-0000-000000000009", mac="52:54:00:00:00:09",
                         active=False, pending=dead))
    report = reconcile.cmd_reconcile(cfg, lvconn.uri)
    actions = report.result
    assert [(a.verb, a.claim.vf) for a in actions] == [("drop", vf.addr)]
    assert "ended before libvirt answered" in "\n".join(report.lines)
    xml, _name = lvconn.xml()
    assert define.define_resolved(cfg, lvconn.conn, xml).picks  # the VF is free again


def test_prepare_of_another_domain_runs_while_a_define_waits_on_libvirt(race_host, cfg, lvconn):
    host = race_host
    other = vfpick(host, "resolve", "-", input=domain("other", pool="other")).stdout
    xml, _name = lvconn.xml()
    gated, thread, outcome = _define_in_flight(cfg, lvconn.conn, xml)
    proc = run_hook(host, "other", "prepare", "begin", other)
    assert proc.returncode == 0, proc.stderr
    assert [c["active"] for c in status_json(host)["claims"] if c["domain"] == "other"] == [True]
    assert thread.is_alive()  # the define was still waiting on libvirt all along
    _finish(gated, thread, outcome)


# ------------------------------------------------------------ a libvirt that never answers

class SilentLibvirt:
    """A unix socket that accepts connections and never answers: libvirt's client waits on it
    as on a hung libvirtd."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="vfpick-silent-")
        self.path = os.path.join(self.dir, "libvirt-sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.clients, self.accepted = [], threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self):
        return "qemu+unix:///system?socket=%s" % self.path

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)
            self.accepted.set()

    def close(self):
        self.sock.close()
        for client in self.clients:
            client.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def silent():
    s = SilentLibvirt()
    yield s
    s.close()


@pytest.mark.parametrize("command", ["release", "reconcile", "repick", "define"])
def test_a_hung_libvirt_never_holds_up_a_prepare(race_host, silent, command):
    host = race_host
    gate = vfpick(host, "resolve", "-", input=domain("gate", pool="other")).stdout
    vfpick(host, "resolve", "-", input=domain("old-name", pool="other"))
    path = os.path.join(host.base, "new.xml")
    with open(path, "wb") as f:
        f.write(domain("new", pool="one"))
    args = {"release": ["release", "renamed"],     # not in the claims: asks libvirt
            "reconcile": ["reconcile"], "repick": ["repick", "old-name"], "define": ["define", path]}
    proc = subprocess.Popen([VFPICK] + args[command] + ["--connect", silent.uri], env=cli_env(host),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(silent.accepted.is_set, "vfpick %s connects to libvirt" % command)
        hook = run_hook(host, "gate", "prepare", "begin", gate)
        assert hook.returncode == 0, hook.stderr
        assert [c["active"] for c in status_json(host)["claims"] if c["domain"] == "gate"] == [True]
        assert proc.poll() is None  # still waiting on libvirt: the prepare really ran meanwhile
    finally:
        proc.kill()
        proc.communicate()
