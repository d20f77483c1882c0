"""vfpick watch: the event handling on fakes, then the real thing against the harness libvirtd."""

import os
import signal
import subprocess
import xml.etree.ElementTree as ET

import libvirt
import pytest

import libvirtd as lv
from clitools import VFPICK, cli_env, domain, hostdev_vfs, status_json
from waiting import WAIT, wait_until
from vfpick import domscan, resolver
from vfpick.commands import watch
from vfpick.records import Claim

U1 = "11111111-1111-1111-1111-111111111111"
U2 = "22222222-2222-2222-2222-222222222222"


# ---------------------------------------------------------------- fakes

class FakeDom:
    def __init__(self, xml, active=False, persistent=True):
        facts = domscan.scan(xml)
        self.xml, self._uuid, self._name = xml, facts.uuid, facts.name
        self.active, self.persistent = active, persistent

    def UUIDString(self):
        return self._uuid

    def name(self):
        return self._name

    def isActive(self):
        return int(self.active)

    def isPersistent(self):
        return int(self.persistent)

    def XMLDesc(self, flags=0):
        return self.xml.decode() if isinstance(self.xml, bytes) else self.xml


class FakeConn:
    """The libvirt connection methods the watcher uses; defineXML raises DEFINED/UPDATED."""

    def __init__(self, rewrite=None):
        self.doms, self.defined, self.closed = {}, [], False
        self.lifecycle = self.close_cb = None
        self.rewrite = rewrite

    def registerCloseCallback(self, cb, opaque):
        self.close_cb = (cb, opaque)

    def unregisterCloseCallback(self):
        self.close_cb = None

    def setKeepAlive(self, interval, count):
        pass

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):
        assert event_id == libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE
        self.lifecycle = (cb, opaque)
        return 1

    def add(self, xml, **kw):
        dom = FakeDom(xml, **kw)
        self.doms[dom.UUIDString()] = dom
        return dom

    def event(self, dom, event, detail=0):
        cb, opaque = self.lifecycle
        cb(self, dom, event, detail, opaque)

    def defineXML(self, xml):
        self.defined.append(xml)
        if self.rewrite:
            xml = self.rewrite(xml)
        old = self.doms.get(domscan.scan(xml.encode()).uuid)
        dom = self.add(xml.encode(), active=old.active if old else False)
        self.event(dom, libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_UPDATED)
        return dom

    def undefine(self, uuid):
        dom = self.doms[uuid]
        if dom.active:
            dom.persistent = False
        else:
            del self.doms[uuid]
        self.event(dom, libvirt.VIR_DOMAIN_EVENT_UNDEFINED)

    def lookupByUUIDString(self, uuid):
        if uuid not in self.doms:
            raise libvirt.libvirtError("Domain not found: no domain with matching uuid '%s'" % uuid)
        return self.doms[uuid]

    def listAllDomains(self, flags=0):
        return list(self.doms.values())

    def networkLookupByName(self, name):
        raise libvirt.libvirtError("Network not found: no network with matching name '%s'" % name)

    def close(self):
        self.closed = True
        return 0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_watcher(cfg, conns, clock=None):
    """conns: FakeConn or exception instances, handed out by successive opens."""
    lines = []
    conns = list(conns)

    def opener(uri):
        item = conns.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    w = watch.Watcher(cfg, "fake:///system", log=lines.append, opener=opener, host_events=False,
                      clock=clock or Clock())
    w.lines = lines
    return w


def drain(w):
    while not w.queue.empty():
        w.dispatch(w.queue.get_nowait())


def claims_of(cfg, uuid):
    return resolver.store_for(cfg).snapshot().for_uuid(uuid)


def test_start_resolves_domains_defined_while_down(host):
    cfg = host.write_config()
    conn = FakeConn()
    conn.add(domain("web1", nics=2, uuid=U1))
    conn.add(domain("plain", nics=0, uuid=U2))
    w = make_watcher(cfg, [conn])
    assert w.connect()
    assert len(conn.defined) == 1
    vfs = hostdev_vfs(conn.defined[0])
    claims = claims_of(cfg, U1)
    assert sorted(vfs) == [c.vf for c in claims] and len(vfs) == 2
    assert len({c.link for c in claims}) == 2
    assert w.lines[0] == "connected to fake:///system"
    assert w.lines[1].startswith("resolved domain 'web1' (%s): " % U1)
    drain(w)  # the echo of our own redefinition: nothing unresolved any more
    assert len(conn.defined) == 1 and len(w.lines) == 2


def test_defined_event_is_queued_then_resolved_once(host):
    cfg = host.write_config()
    conn = FakeConn()
    w = make_watcher(cfg, [conn])
    w.connect()
    dom = conn.add(domain("web1", nics=2, uuid=U1))
    conn.event(dom, libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED)
    assert conn.defined == [] and w.queue.qsize() == 1   # the callback only queues
    drain(w)
    assert len(conn.defined) == 1 and len(claims_of(cfg, U1)) == 2
    conn.event(conn.doms[U1], libvirt.VIR_DOMAIN_EVENT_STARTED)  # other events: ignored
    assert w.queue.empty()


def test_loop_guard(host):
    cfg = host.write_config()
    original = domain("web1", nics=1, uuid=U1).decode()
    conn = FakeConn(rewrite=lambda _xml: original)   # a libvirt that undoes every resolve
    conn.add(original.encode())
    w = make_watcher(cfg, [conn])
    w.connect()
    drain(w)
    assert len(conn.defined) == watch.LOOP_LIMIT
    assert "leaving it alone" in w.lines[-1]


def test_unresolvable_domains_are_logged_and_left(host):
    cfg = host.write_config(pools={"fast": "pfs = ens1f0\n"})   # 8 VFs
    conn = FakeConn()
    conn.add(domain("big", nics=9, uuid=U1))
    conn.add(domain("typo", nics=1, pool="fsat", uuid=U2))
    w = make_watcher(cfg, [conn])
    w.connect()
    assert conn.defined == []
    assert resolver.store_for(cfg).snapshot().all() == []
    big = [x for x in w.lines if "'big'" in x]
    typo = [x for x in w.lines if "'typo'" in x]
    assert len(big) == 1 and big[0].startswith("cannot resolve domain 'big' (%s): " % U1)
    assert "vfpick repick big" in big[0]
    assert typo == ["domain 'typo' (%s): network fsat is neither a vfpick pool (pools: fast) nor "
                    "a libvirt network; left as is" % U2]


BAD_META = ("<metadata><vfpick:domain xmlns:vfpick='http://vfpick.org/xmlns/libvirt/domain/1.0'>"
            "<vfpick:nic mac='52:54:00:00:00:07' vf='0000:3b:02.7'/></vfpick:domain></metadata>")
U3 = "33333333-3333-3333-3333-333333333333"
U4 = "44444444-4444-4444-4444-444444444444"


class BrokenDom(FakeDom):
    """A domain whose XML cannot be read for a reason nobody planned for."""

    def XMLDesc(self, flags=0):
        raise RuntimeError("unexpected trouble reading this domain")


def test_sync_survives_bad_domains_and_handles_the_rest(host):
    cfg = host.write_config()
    conn = FakeConn()
    conn.add(domain("meta", nics=0, uuid=U1, head=BAD_META))   # <vfpick:nic> without a pool
    broken = BrokenDom(domain("broken", nics=1, uuid=U2))
    conn.doms[U2] = broken
    conn.add(domain("web1", nics=1, uuid=U3))
    w = make_watcher(cfg, [conn])
    assert w.connect()                      # the sync's troubles never escape the watcher
    assert [c.domain for c in claims_of(cfg, U3)] == ["web1"]
    assert any(x.startswith("reconcile: invalid: domain 'meta': <vfpick:nic") and "has no pool" in x
               for x in w.lines), w.lines
    assert "warning: domain %s: cannot read it (unexpected trouble reading this domain); its " \
        "claims are left as they are" % U2 in w.lines
    # and the loop goes on: a later event is handled
    conn.add(domain("web2", nics=1, uuid=U4))
    conn.event(conn.doms[U4], libvirt.VIR_DOMAIN_EVENT_DEFINED)
    conn.event(broken, libvirt.VIR_DOMAIN_EVENT_DEFINED)
    drain(w)
    assert len(claims_of(cfg, U4)) == 1
    assert sum("internal error on defined broken" in x for x in w.lines) == 1


def test_a_failing_sync_is_logged_not_fatal(host):
    cfg = host.write_config()
    conn = FakeConn()
    conn.add(domain("web1", nics=1, uuid=U1))
    os.makedirs(cfg.state_dir, exist_ok=True)
    with open(os.path.join(cfg.state_dir, "claims.json"), "w") as f:
        f.write("garbage")
    w = make_watcher(cfg, [conn])
    assert w.connect()
    assert any(x.startswith("sync after connecting: state file") and "--rebuild" in x for x in w.lines)


def test_undefined_drops_claims_unless_still_running(host):
    cfg = host.write_config()
    conn = FakeConn()
    conn.add(domain("web1", nics=2, uuid=U1))
    conn.add(domain("web2", nics=1, uuid=U2), active=True)
    w = make_watcher(cfg, [conn])
    w.connect()
    drain(w)
    assert len(claims_of(cfg, U1)) == 2 and len(claims_of(cfg, U2)) == 1
    conn.undefine(U1)
    conn.undefine(U2)   # running: becomes transient
    drain(w)
    assert claims_of(cfg, U1) == [] and len(claims_of(cfg, U2)) == 1
    assert any(x.startswith("released 2 VFs of undefined domain 'web1'") for x in w.lines)
    assert any("undefined while running" in x for x in w.lines)


def test_reconnect_with_backoff_then_reconcile(host):
    cfg = host.write_config()
    clock = Clock()
    first, second = FakeConn(), FakeConn()
    down = libvirt.libvirtError("Failed to connect socket to '/run/libvirt/libvirt-sock'")
    w = make_watcher(cfg, [first, down, down, second], clock)
    w.connect()
    with resolver.store_for(cfg).transaction() as claims:   # a domain libvirt no longer has
        claims.put(Claim("0000:af:02.0", "0000:af:00.0", "ens2f0", "fast", "gone", U2, "", False))
    first.close_cb[0](first, 1, first.close_cb[1])          # libvirtd went away
    drain(w)
    assert w.conn is None and "closed (end of file); reconnecting" in w.lines[-1]
    second.add(domain("web1", nics=1, uuid=U1))             # defined while we were away
    w.step(timeout=0)
    assert w.conn is None                                   # not before the backoff
    clock.now += 0.5
    w.step(timeout=0)
    assert w.lines[-1].endswith("retrying in 0.5s")
    clock.now += 0.5
    w.step(timeout=0)
    assert w.lines[-1].endswith("retrying in 1s")
    clock.now += 1
    w.step(timeout=0)
    assert w.conn is second and "reconnected to fake:///system" in w.lines
    assert claims_of(cfg, U2) == [] and len(claims_of(cfg, U1)) == 1
    assert any(x.startswith("reconcile: drop 0000:af:02.0 (gone") for x in w.lines)
    w.on_close(first, 1, 1)   # a late close event of the old connection: ignored
    drain(w)
    assert w.conn is second


# ---------------------------------------------------------------- the real libvirtd

def _watch_config(make_host):
    h = make_host()
    h.run_dir, h.config_dir = "/run/libvirt/qemu", "/etc/libvirt/qemu"
    return h, h.write_config()


class WatchProc:
    def __init__(self, host, tmp_path):
        self.log = tmp_path / "watch.log"
        env = cli_env(host)
        env.pop("LIBVIRT_DEFAULT_URI", None)
        self.proc = subprocess.Popen(
            [VFPICK, "watch", "--connect", "qemu:///system"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), env=env, cwd=host.base)

    def text(self):
        return self.log.read_text()

    def wait_for(self, needle, after=0):
        def seen():
            assert self.proc.poll() is None, self.text()
            return needle in self.text()[after:]
        wait_until(seen, lambda: "%r in the watcher's log:\n%s" % (needle, self.text()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def watcher(libvirtd, make_host, tmp_path):
    host, cfg = _watch_config(make_host)
    procs = []

    def start():
        p = WatchProc(host, tmp_path)
        procs.append(p)
        p.wait_for("connected to qemu:///system")
        return p

    yield host, start
    for p in procs:
        p.stop()


def pool_domain(libvirtd, base, nics=2):
    ifaces = "".join("\n    <interface type='network'><source network='fast'/></interface>"
                     for _ in range(nics))
    return lv.domain_xml(libvirtd.unique_name(base), devices=ifaces)


def wait_resolved(libvirtd, name, nics=2):
    """The inactive definition's hostdev NICs' VFs, once they are there."""
    def resolved():
        root = ET.fromstring(libvirtd.dumpxml(name, inactive=True))
        vfs = hostdev_vfs(ET.tostring(root))
        if len(vfs) == nics and not root.findall("devices/interface[@type='network']"):
            return root, vfs
        return None
    return wait_until(resolved, lambda: "%s resolved: %s" % (name, libvirtd.dumpxml(
        name, inactive=True)))


def domain_claims(host, uuid):
    return [c for c in status_json(host)["claims"] if c["uuid"] == uuid]


def test_watch_resolves_plain_virsh_define_and_survives_restart(libvirtd, watcher):
    host, start = watcher
    proc = start()
    name = libvirtd.define(pool_domain(libvirtd, "watch"))
    root, vfs = wait_resolved(libvirtd, name)
    uuid = root.findtext("uuid")
    claims = domain_claims(host, uuid)
    assert sorted(c["vf"] for c in claims) == sorted(vfs)
    assert len({c["link"] for c in claims}) == 2 and {c["domain"] for c in claims} == {name}
    proc.wait_for("resolved domain '%s'" % name)

    libvirtd.remove_domain(name)
    wait_until(lambda: not domain_claims(host, uuid), lambda: "claims dropped: " + proc.text())
    proc.wait_for("of undefined domain '%s'" % name)

    mark = len(proc.text())
    libvirtd.restart()
    proc.wait_for("reconnected to qemu:///system", after=mark)
    name2 = libvirtd.define(pool_domain(libvirtd, "watch-after"))
    root2, vfs2 = wait_resolved(libvirtd, name2)
    assert sorted(c["vf"] for c in domain_claims(host, root2.findtext("uuid"))) == sorted(vfs2)

    assert proc.stop() == 0
    assert proc.text().rstrip().endswith("vfpick watch: stopped")
    assert "Traceback" not in proc.text()


def test_watch_resolves_what_was_defined_while_it_was_down(libvirtd, watcher):
    host, start = watcher
    name = libvirtd.define(pool_domain(libvirtd, "early", nics=1))
    assert hostdev_vfs(libvirtd.dumpxml(name, inactive=True)) == []
    proc = start()
    root, vfs = wait_resolved(libvirtd, name, nics=1)
    assert [c["vf"] for c in domain_claims(host, root.findtext("uuid"))] == vfs
    proc.wait_for("resolved domain '%s'" % name)
    libvirtd.remove_domain(name)
    assert proc.stop() == 0


def test_watch_help_and_sigint(libvirtd, watcher):
    host, start = watcher
    proc = start()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(WAIT) == 0
    lines = proc.text().splitlines()
    assert all(" vfpick watch: " in x for x in lines), lines
    out = subprocess.run([VFPICK, "--help"], capture_output=True, text=True).stdout
    assert "watch" in out
