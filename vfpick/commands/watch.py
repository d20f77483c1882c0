"""``vfpick watch``: resolve pool interfaces of domains defined with plain ``virsh define``.

libvirt's default event loop runs in a thread; its callbacks only queue work (they must never
block the loop). The main thread takes the queue: resolve + redefine on DEFINED, drop claims on
UNDEFINED, reconnect with backoff when the connection closes (libvirtd restart, keepalive
timeout), then reconcile and resolve whatever was defined meanwhile. Host events
(vfpick.host.hostevents) are logged: one line per action through the *log* callback the CLI passes
(vfpick/cli.py timestamps them on stderr); they also wake self-healing (vfpick/heal.py), which
otherwise looks at the links every few seconds.
"""

import queue
import signal
import threading
import time
from collections import namedtuple

from vfpick import domscan, heal, resolver
from vfpick.host import hostevents, topology, vfsettings
from vfpick.domain import virt
from vfpick.commands import define, reconcile
from vfpick.errors import VfpickError
from vfpick.where import where

BACKOFF = (0.5, 1, 2, 5, 10, 30)       # seconds between reconnect attempts
KEEPALIVE = (5, 3)                     # interval s, missed replies: a hung daemon closes in ~20 s
LOOP_LIMIT, LOOP_WINDOW = 3, 10.0      # more resolves of one domain than this in the window: a loop

Work = namedtuple("Work", "kind generation uuid name reason event", defaults=(None,) * 5)
Work.__doc__ = """One item of the watcher's queue. kind: defined | undefined (uuid, name) |
closed (reason) | host (event: a hostevents record); generation: the connection's."""


class Watcher:
    def __init__(self, config, uri, log, opener=None, host_events=True, clock=time.monotonic,
                 healer=None):
        self.config, self.uri, self.log, self.clock = config, uri, log, clock
        self.lv_error = virt.libvirt_error()
        self.opener = opener or virt.open_connection
        self.host_events = host_events
        self.store = resolver.store_for(config)
        self.queue = queue.Queue()
        self.stop = threading.Event()
        self.conn = None
        self.generation = 0            # one per connection: a stale close event is ignored
        self.failures = 0
        self.next_attempt = 0.0
        self.resolves = {}             # uuid -> [times] (loop guard)
        self.monitor = None
        self._loop_thread = None
        # healer: a heal.Healer (the tests pass one with their seams); else one when a pool heals
        self.healer = healer or (heal.Healer(config, self.log, store=self.store, clock=clock)
                                 if heal.Healer.wanted(config) else None)

    # ------------------------------------------------ event loop thread: queue only, never block
    def on_lifecycle(self, _conn, dom, event, _detail, generation):
        kind = virt.lifecycle_kind(event)
        if kind is not None:
            name, uuid = virt.identity(dom)
            self.queue.put(Work(kind, generation, uuid, name))

    def on_close(self, _conn, reason, generation):
        self.queue.put(Work("closed", generation, reason=reason))

    def start_event_loop(self):
        self._loop_thread = virt.start_event_loop(self.stop)

    # ------------------------------------------------ main thread
    def run(self):
        """Runs until stop is set; returns 0."""
        self.start_event_loop()
        if self.host_events:
            try:
                self.monitor = hostevents.HostMonitor(
                    lambda: self.store.snapshot().all(), lambda: topology.for_config(self.config), self.log)
                hostevents.start(lambda event: self.queue.put(Work("host", event=event)), self.stop, self.log)
            except VfpickError as e:
                self.log("host events off: %s" % e)
        self.log("watching %s (config %s)" % (self.uri, self.config.path))
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            self.disconnect()
            self.stop.set()
            if self._loop_thread is not None:
                self._loop_thread.join(2)
        self.log("stopped")
        return 0

    def step(self, timeout=0.25):
        """Connects when due, then handles at most one queued item."""
        if self.conn is None and self.clock() >= self.next_attempt:
            self.connect()
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            item = None
        if item is not None:
            self.dispatch(item)
        if self.healer is not None and self.healer.due():
            self.guarded("self-healing", self.healer.tick, self.conn)

    def guarded(self, what, call, *args):
        """call(*args); an error is logged naming *what*, and the watcher goes on."""
        try:
            call(*args)
        except VfpickError as e:
            self.log("%s: %s" % (what, e))
        except self.lv_error as e:
            self.log("%s: libvirt: %s" % (what, virt.error_message(e)))
        except Exception as e:  # noqa: BLE001 - a service: one bad domain or event must not stop it
            self.log("internal error on %s: %r" % (what, e))

    def dispatch(self, item):
        kind = item.kind
        if kind == "host":
            if self.monitor is not None:
                self.guarded("host event", self.monitor.handle, item.event)
            if self.healer is not None:
                self.healer.poke()
        elif kind == "closed":
            self.guarded("connection closed", self.closed, item.generation, item.reason)
        elif self.conn is None:
            return  # disconnected: the reconcile after reconnecting covers it
        elif kind in ("defined", "undefined"):
            handler = self.defined if kind == "defined" else self.undefined
            self.guarded("%s %s" % (kind, item.name or item.uuid), handler, item.uuid, item.name)

    def connect(self):
        try:
            conn = self.opener(self.uri)
            self.generation += 1
            gen = self.generation
            virt.watch_events(conn, self.on_close, self.on_lifecycle, gen, KEEPALIVE)
        except self.lv_error as e:
            delay = BACKOFF[min(self.failures, len(BACKOFF) - 1)]
            self.failures += 1
            self.next_attempt = self.clock() + delay
            self.log("cannot connect to %s: %s; retrying in %gs" % (self.uri, virt.error_message(e), delay))
            return False
        self.conn = conn
        self.log("%sconnected to %s" % ("re" if self.failures or gen > 1 else "", self.uri))
        self.failures = 0
        self.guarded("sync after connecting", self.sync)
        return True

    def disconnect(self):
        conn, self.conn = self.conn, None
        if conn is None:
            return
        virt.unwatch(conn)

    def closed(self, generation, reason):
        if generation != self.generation or self.conn is None:
            return  # a connection we already dropped
        self.log("connection to %s closed (%s); reconnecting" % (self.uri, _REASONS.get(reason, reason)))
        self.disconnect()
        self.next_attempt = self.clock() + BACKOFF[0]

    def sync(self):
        """Reconcile the claims with libvirt, then resolve every domain with pool interfaces.

        One domain's trouble (bad metadata, a refused redefinition) is logged for it alone.
        """
        before = self.store.snapshot()
        writers = reconcile.live_writers(before)
        problems = []
        views = reconcile.domain_views(self.conn, problems)
        topo = topology.for_config(self.config)
        done, warnings = reconcile.apply_reconcile(self.config, self.store, before, writers, views, topo)
        warnings = problems + warnings
        for action in done:
            self.log("reconcile: %s" % action.line())
        for warning in warnings:
            self.log("warning: %s" % warning)
        for uuid, view in sorted(views.items()):
            if view is not None and view.persistent:
                self.guarded("domain '%s' (%s)" % (view.name, uuid), self.defined, uuid, view.name)

    def _looping(self, uuid):
        now = self.clock()
        times = [t for t in self.resolves.get(uuid, []) if now - t < LOOP_WINDOW] + [now]
        self.resolves[uuid] = times
        return len(times) > LOOP_LIMIT

    def defined(self, uuid, name):
        try:
            dom = virt.by_uuid(self.conn, uuid)
            if not virt.is_persistent(dom):
                return
            data = virt.inactive_xml(dom)
        except self.lv_error:
            return  # gone again: its UNDEFINED event follows
        facts = domscan.scan(data)
        name = facts.name or name
        pools = sorted({n for n, _ in facts.networks if n in self.config.pools})
        if not pools:
            self.rename_claims(uuid, name)
            exists = define.network_checker(self.config, self.conn)
            unknown = sorted({n for n, _ in facts.networks if n and not exists(n)})
            if unknown:  # a mistyped pool name: libvirt itself will refuse the start
                self.log("domain '%s' (%s): network %s is neither a vfpick pool (pools: %s) nor a "
                         "libvirt network; left as is" % (name, uuid, ", ".join(unknown),
                                                          ", ".join(self.config.pools) or "none"))
            return  # nothing unresolved: also the echo of our own redefinition
        if self._looping(uuid):
            self.log("domain '%s' (%s) still has pool interfaces after %d resolves in %gs; "
                     "leaving it alone (libvirt rewrites it?)" % (name, uuid, LOOP_LIMIT, LOOP_WINDOW))
            return
        try:
            result = define.define_resolved(self.config, self.conn, data)
        except VfpickError as e:
            self.log("cannot resolve domain '%s' (%s): %s; left unresolved (its start is refused); "
                     "fix it, then `vfpick repick %s`" % (name, uuid, e, name))
            return
        self.log("resolved domain '%s' (%s): %s" % (result.name, result.uuid, "; ".join(
            "%s -> %s" % (mac, where(p.vf, p.link, p.pf, word="")) for mac, p in sorted(result.picks.items()))))
        for w in result.warnings:
            self.log("warning: %s" % w)

    def rename_claims(self, uuid, name):
        if not name or all(c.domain == name for c in self.store.snapshot().for_uuid(uuid)):
            return
        with self.store.transaction() as claims:
            for c in claims.for_uuid(uuid):
                claims.put(c._replace(domain=name))
        self.log("domain %s renamed to '%s': claims updated" % (uuid, name))

    def undefined(self, uuid, name):
        try:
            dom = virt.by_uuid(self.conn, uuid)
            if virt.is_persistent(dom):
                return  # defined again since
            if virt.is_running(dom):
                self.log("domain '%s' (%s) undefined while running: its claims stay until it stops "
                         "(the release hook drops them)" % (name, uuid))
                return
        except self.lv_error:
            pass
        with self.store.transaction() as claims:
            dropped = claims.drop_uuid(uuid)
            warnings = vfsettings.put_back(self.config, dropped)
        for warning in warnings:
            self.log("warning: %s" % warning)
        if dropped:
            self.log("released %d VF%s of undefined domain '%s' (%s): %s" % (
                len(dropped), "" if len(dropped) == 1 else "s", name, uuid, ", ".join(c.vf for c in dropped)))


_REASONS = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "client closed"}


def cmd_watch(config, uri, log, metrics_listen=None):
    """Runs until SIGTERM/SIGINT; returns the exit status. log(message): one line per action."""
    watcher = Watcher(config, uri, log)
    server = None
    if metrics_listen:
        from vfpick.commands import metrics  # prometheus_client: only when asked for

        server = metrics.serve(config, metrics_listen, watcher.log,
                               extra=lambda: metrics.heal_families(watcher.healer))
        addr, port = server.server_address[:2]
        watcher.log("serving metrics on http://%s:%d/metrics" % ("[%s]" % addr if ":" in addr else addr, port))

    def stop(signum, _frame):
        watcher.log("signal %d: stopping" % signum)
        watcher.stop.set()

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return watcher.run()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if server is not None:
            server.shutdown()
            server.server_close()
