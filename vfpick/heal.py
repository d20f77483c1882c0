"""Self-healing in ``vfpick watch``: a NIC of a running domain on a dead link gets a live leg back.

The watcher calls ``Healer.tick`` when a host event arrives (rtnetlink carrier/operstate, udev
VF/PF removal: ``poke``) and every few seconds anyway (an event can be lost, and host events
can be off). A tick reads sysfs and the claims, asks healplan (pure) which NICs are dead since
when and what to do about each, logs each new decision in one line and counts it
(``vfpick_heal_decisions_total`` on the watcher's /metrics), and with ``heal = live`` moves the
NIC through livemove.move_nic, the mover of ``drain --live`` and ``rebalance --live`` (same
MAC, teaming, guest address; every failure rolled back to a working NIC). With ``heal =
report`` nothing is changed: no claim, no domain, no state file write.

A decision is made once per NIC and death ("episode"): a move that was done, planned in report
mode or rolled back is not planned again until the NIC's link has come back and died again; a
refusal is logged again only when its reason changes (a spare link came up: then it moves).
Nothing moves back when the link returns. ``heal = live`` records each outcome in the NIC's
claim (``Claim.heal``, the last records.HEAL_HISTORY events), which ``vfpick status`` shows.
"""

import threading
import time
from collections import Counter

from vfpick import domscan, livemove, resolver
from vfpick.plan import healplan
from vfpick.host import topology
from vfpick.domain import virt
from vfpick.errors import VfpickError
from vfpick.records import HEAL_HISTORY, HealEvent
from vfpick.commands.status import distinct_level

POLL = 10.0          # seconds between ticks while no event asks for one
RETRY = 5.0          # seconds between ticks while a move waits for the rate limit
FINAL = ("done", "planned-report", "rolled_back")   # an episode's last word


class Healer:
    """The healing state of one watcher. describe(conn, uuid) -> (name, live XML, persistent
    XML or None) of a running domain, or None; devices_for(conn, uuid) -> virt.Devices the move acts on. Both
    default to libvirt's running domain; the tests pass the persistent definition instead
    (virt.Devices(live=False): the seam livemove's tests use)."""

    def __init__(self, config, log, store=None, clock=time.monotonic, wall=time.time,
                 describe=None, devices_for=None, timeout=livemove.DETACH_TIMEOUT,
                 netlink_factory=None):
        self.config, self.log, self.clock, self.wall = config, log, clock, wall
        self.pools = {name: p for name, p in config.pools.items() if p.heal != "off"}
        self.store = store or resolver.store_for(config)
        self.describe = describe or _describe
        self.devices_for = devices_for or (lambda conn, uuid: virt.Devices(virt.by_uuid(conn, uuid)))
        self.timeout, self.netlink_factory = timeout, netlink_factory
        self.since = {}      # (uuid, mac) -> clock() when first seen dead
        self.dead = {}       # (uuid, mac) -> healplan.Dead as last seen
        self.said = {}       # (uuid, mac) -> the last decision logged for it (a signature)
        self.recent = {}     # pool -> [clock() of moves started (report: planned)]
        self.next_check = 0.0
        self._lock = threading.Lock()   # the metrics server's thread reads the counts
        self._counts = Counter()        # (pool, mode, decision, reason) -> n
        self._waiting = Counter()       # pool -> NICs dead and not yet decided

    @classmethod
    def wanted(cls, config):
        return any(p.heal != "off" for p in config.pools.values())

    # -------------------------------------------------------------------- for /metrics
    def counts(self):
        """({(pool, mode, decision, reason): n}, {pool: NICs waiting}) as of now."""
        with self._lock:
            return dict(self._counts), dict(self._waiting)

    def _count(self, pool, decision, reason=""):
        with self._lock:
            self._counts[(pool, self.pools[pool].heal, decision, reason or "")] += 1

    # -------------------------------------------------------------------- the watcher's calls
    def poke(self):
        """A host event: look at the links at the next tick."""
        self.next_check = 0.0

    def due(self):
        return self.clock() >= self.next_check

    def tick(self, conn):
        """Looks at the links once; acts on what is due. conn: libvirt, or None while the
        watcher is disconnected (then deaths are tracked and nothing is decided)."""
        now = self.clock()
        self.next_check = now + POLL
        topo = topology.for_config(self.config)
        snapshot = self.store.snapshot()
        claims = snapshot.mapping()
        dead = healplan.dead_nics(topo, self.pools, claims)
        since = healplan.track(self.since, dead, now)
        for key in sorted(set(since) - set(self.since)):
            nic = dead[key]
            pool = self.pools[nic.pool]
            self.log("heal: %s under NIC %s of '%s' (VF %s, link %s): hold-down %gs, then heal=%s"
                     % (healplan.DEAD_WHY[nic.why], nic.mac, nic.domain, nic.vf, nic.link,
                        pool.heal_holddown, pool.heal))
        for key in sorted(set(self.since) - set(since)):
            said, nic = self.said.pop(key, None), self.dead.get(key)
            if said is None and nic is not None:
                self.log("heal: NIC %s of '%s' (VF %s, link %s) is live again before any decision "
                         "(a flap): nothing moves" % (nic.mac, nic.domain, nic.vf, nic.link))
        self.since, self.dead = since, dead
        self.recent = {p: [t for t in times if now - t < healplan.WINDOW]
                       for p, times in self.recent.items()}
        with self._lock:
            self._waiting = Counter(dead[k].pool for k in dead if self.said.get(k) is None)
        open_keys = {k: nic for k, nic in dead.items() if (self.said.get(k) or ("",))[0] not in FINAL}
        if not open_keys or conn is None:
            return
        due = {nic.uuid for k, nic in open_keys.items()
               if now - since[k] >= self.pools[nic.pool].heal_holddown}
        running = {}
        for uuid in sorted(due):
            described = self.describe(conn, uuid)
            if described is not None:
                running[uuid] = _running(uuid, described, self.pools)
        busy = resolver.running_vfs(self.config)
        decisions = healplan.plan(topo, self.pools, claims, busy, snapshot.drained(), running,
                                  open_keys, since, now, self.recent)
        for decision in decisions:
            if decision.action == "wait":
                self.next_check = min(self.next_check, decision.until)
            elif decision.action == "defer":
                self.next_check = min(self.next_check, now + RETRY)
                self._say(decision, ("deferred",), "deferred", "rate_limit",
                          "heal: deferred: NIC %s of '%s' (VF %s, link %s): pool '%s' started %d "
                          "move(s) in the last minute (heal_moves_per_minute); retried then"
                          % (decision.nic.mac, decision.name, decision.nic.vf, decision.nic.link,
                             decision.nic.pool, self.pools[decision.nic.pool].heal_moves_per_minute))
            elif decision.action == "refuse":
                self._refuse(decision)
            else:
                self._move(conn, decision, topo, busy, now)

    # -------------------------------------------------------------------- decisions
    def _say(self, decision, signature, counted, reason, line):
        """Logs and counts *decision* unless the NIC's last decision had this signature."""
        key = decision.nic.key
        if self.said.get(key) == signature:
            return False
        self.said[key] = signature
        self.log(line)
        self._count(decision.nic.pool, counted, reason)
        return True

    def _where(self, decision):
        nic = decision.nic
        return "NIC %s of '%s' (VF %s, link %s, %s)" % (nic.mac, decision.name, nic.vf, nic.link,
                                                         healplan.DEAD_WHY[nic.why])

    def _refuse(self, decision):
        if self._say(decision, ("refused", decision.reason), "refused", decision.reason,
                     "heal: refused: %s stays: %s" % (self._where(decision), decision.why)) \
                and self.pools[decision.nic.pool].heal == "live":
            self._remember(decision.nic.vf, decision, "refused", None, None, decision.why)

    def _move(self, conn, decision, topo, busy, now):
        nic, pool = decision.nic, self.pools[decision.nic.pool]
        target = "VF %s (PF %s, link %s)" % (decision.to_vf, decision.to_pf, decision.to_link)
        self.recent.setdefault(nic.pool, []).append(now)
        what = "%s NIC%s" % (decision.kind, ", unplugged from the guest: attach only"
                             if decision.lost else "")
        if pool.heal == "report":
            self._say(decision, ("planned-report",), "planned", "",
                      "heal: planned (heal=report, nothing changed): move %s to %s (%s)"
                      % (self._where(decision), target, what))
            return
        self._say(decision, ("planned",), "planned", "",
                  "heal: planned: move %s to %s (%s)" % (self._where(decision), target, what))
        lv_error = virt.libvirt_error()
        try:
            devices = self.devices_for(conn, nic.uuid)
            kw = dict(store=self.store, topo=topo, busy=busy, timeout=self.timeout,
                      netlink_factory=self.netlink_factory,
                      step=lambda what, vf: self.log("heal: step: VF %s %s (NIC %s of '%s')" % (
                          vf, what, nic.mac, decision.name)))
            if decision.lost:   # QEMU unplugged it already: attach only
                moved = livemove.replace_lost(self.config, devices, decision.name, nic.uuid,
                                              nic.mac, decision.to_vf, **kw)
            else:
                moved = livemove.move_nic(self.config, devices, decision.name, nic.uuid, nic.mac,
                                          decision.to_vf, allow_gap=decision.kind == "plain", **kw)
        except (VfpickError, lv_error) as e:
            why = virt.error_message(e) if isinstance(e, lv_error) else str(e)
            self.said[nic.key] = ("rolled_back",)
            self.log("heal: rolled back: %s: %s" % (self._where(decision), why))
            self._count(nic.pool, "rolled_back", "move_failed")
            self._remember(nic.vf, decision, "rolled_back", decision.to_vf, decision.to_link, why)
            return
        self.said[nic.key] = ("done",)
        self.log("heal: done: NIC %s of '%s' moved live from VF %s (link %s) to %s"
                 % (nic.mac, decision.name, nic.vf, nic.link, target))
        self._count(nic.pool, "done")
        for warning in moved.warnings:
            self.log("warning: %s" % warning)
        self._remember(decision.to_vf, decision, "moved", decision.to_vf, decision.to_link,
                       healplan.DEAD_WHY[nic.why])

    def _remember(self, vf, decision, outcome, to_vf, to_link, why):
        """Appends one HealEvent to the claim of *vf* (still this NIC's), the newest
        HEAL_HISTORY kept."""
        nic = decision.nic
        event = HealEvent(at=int(self.wall()), outcome=outcome, from_vf=nic.vf, to_vf=to_vf,
                          from_link=nic.link, to_link=to_link, why=why)
        with self.store.transaction() as claims:
            claim = claims.get(vf)
            if claim is not None and claim.uuid == nic.uuid and claim.mac == nic.mac:
                claims.put(claim._replace(heal=((claim.heal or ()) + (event,))[-HEAL_HISTORY:]))


def _describe(conn, uuid):
    lv_error = virt.libvirt_error()
    try:
        dom = virt.by_uuid(conn, uuid)
        if not virt.is_running(dom):
            return None
        live = virt.live_xml(dom)
        return (virt.identity(dom)[0], live,
                virt.inactive_xml(dom) if virt.is_persistent(dom) else None)
    except lv_error:
        return None  # gone meanwhile: not running


def _running(uuid, described, pools):
    name, xml, persistent = described
    facts = domscan.scan(xml)
    kinds = {mac: nic.kind for mac, nic in livemove.vf_nics(xml).items()}
    defined = livemove.vf_nics(persistent) if persistent is not None else {}
    return healplan.Running(
        uuid=uuid, name=name, kinds=kinds,
        levels={p.name: distinct_level(p, facts) for p in pools.values()},
        lost={mac: nic.kind for mac, nic in defined.items() if mac not in kinds})
