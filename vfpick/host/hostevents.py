"""Host events for ``vfpick watch``: VFs/PFs vanishing (udev) and PF links going down (rtnetlink).

The watcher only logs them: ``vfpick status`` computes presence and link state from sysfs on
each call. Sources are small iterators (``udev_events``, ``netlink.RealNetlink.watch_links``)
feeding one queue; ``HostMonitor.handle`` turns an event into log lines and is a pure function
of the event, the claims and the topology callables, so tests drive it with fakes.
"""

import os
import threading
from collections import namedtuple

from vfpick import pci
from vfpick.host import topology
from vfpick.host.netlink import LinkEvent

HostEvent = namedtuple("HostEvent", "subsystem action name pci")
HostEvent.__doc__ = """One udev event. subsystem: "pci" | "net". action: add, remove, bind,
unbind, change, move. name: the PCI address or the ifname. pci: the PCI function the device is
(pci) or hangs off (net), None for a virtual netdev."""


def pci_of_path(devpath):
    """The last PCI address in a sysfs device path (``/devices/pci0000:00/0000:3b:00.0/net/x``)."""
    for part in reversed((devpath or "").split("/")):
        addr = pci.normalize(part) if part.count(":") == 2 else None
        if addr:
            return addr
    return None


def from_udev(device):
    """HostEvent of a pyudev Device (only action, subsystem, sys_name and device_path are used)."""
    subsystem = device.subsystem
    name = device.sys_name
    addr = pci.normalize(name) if subsystem == "pci" else pci_of_path(device.device_path)
    return HostEvent(subsystem, device.action, name, addr)


class _UdevWatch:
    def __init__(self, monitor, stop, timeout):
        self._monitor, self._stop, self._timeout = monitor, stop, timeout

    def __iter__(self):
        while not self._stop.is_set():
            device = self._monitor.poll(timeout=self._timeout)
            if device is not None and device.subsystem in ("pci", "net"):
                yield from_udev(device)


def udev_events(stop, source=None, timeout=0.5):
    """Subscribe now to PCI and net uevents; iterate HostEvents until *stop* is set.

    source: "udev" (after udevd's rules; default when udevd runs) or "kernel" (raw uevents:
    the only ones in a container or a sandbox without udevd).
    """
    import pyudev

    if source is None:
        source = "udev" if os.path.exists("/run/udev/control") else "kernel"
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
    monitor.filter_by("pci")
    monitor.filter_by("net")
    monitor.start()
    return _UdevWatch(monitor, stop, timeout)


def _held(claims):
    return ", ".join("%s (domain %s%s)" % (c.vf, c.domain, ", running" if c.active else "")
                     for c in claims)


class HostMonitor:
    """Turns host events into warnings about claimed VFs. claims() -> [Claim]; topo() -> Topology."""

    def __init__(self, claims, topo, log):
        self._claims, self._topo, self.log = claims, topo, log
        self._pf_of = {}      # PF netdev -> PF address (kept after the netdev vanishes)
        self._carrier = {}    # PF netdev -> last carrier seen (True/False)
        self.refresh()

    def refresh(self):
        """Re-reads the PFs' netdevs and carriers from sysfs; returns {ifname: carrier}."""
        t = self._topo()
        now = {}
        for addr, pf in t.pfs.items():
            if pf.netdev:
                self._pf_of[pf.netdev] = addr
                now[pf.netdev] = topology.link_up(pf)
        return now

    def _link_line(self, ifname, up, what=None):
        addr = self._pf_of[ifname]
        held = [c for c in self._claims() if c.pf == addr]
        links = sorted({c.link for c in held})
        head = "%s PF %s (%s%s)" % (what or ("link up again on" if up else "warning: link down on"),
                                   ifname, addr, ", link " + "/".join(links) if links else "")
        if not held:
            return head + ": no claimed VF"
        if up:
            return head + ": %d claimed VFs reachable again" % len(held)
        return head + ": %d claimed VFs affected: %s" % (len(held), _held(held))

    def _carrier_changed(self, ifname, up):
        before = self._carrier.get(ifname)
        self._carrier[ifname] = up
        if before is None and up:
            return None  # first news of a link that is up: nothing to say
        if before == up:
            return None  # RTM_NEWLINK fires for any change, not only carrier
        return self._link_line(ifname, up)

    def handle(self, event):
        """Log lines (also returned) for one LinkEvent or HostEvent."""
        lines = [line for line in self._lines(event) if line]
        for line in lines:
            self.log(line)
        return lines

    def _lines(self, event):
        if isinstance(event, LinkEvent):
            if event.kind == "resync":
                yield "link events were lost (socket overflow); re-reading link states from sysfs"
                for ifname, up in sorted(self.refresh().items()):
                    yield self._carrier_changed(ifname, up)
                return
            if event.ifname not in self._pf_of:
                return
            if event.kind == "del":
                self._carrier.pop(event.ifname, None)
                yield self._link_line(event.ifname, False, "warning: netdev removed of")
                return
            up = event.carrier if event.carrier is not None else event.operstate == "up"
            yield self._carrier_changed(event.ifname, up)
            return
        if event.subsystem == "pci" and event.action in ("add", "remove"):
            gone = event.action == "remove"
            vf_claims = [c for c in self._claims() if c.vf == event.pci]
            if vf_claims:
                yield ("warning: claimed VF %s vanished (sriov_numvfs lowered or device removed?): %s"
                       % (event.pci, _held(vf_claims))) if gone else (
                       "claimed VF %s is present again: %s" % (event.pci, _held(vf_claims)))
            pf_claims = [c for c in self._claims() if c.pf == event.pci]
            if pf_claims and gone:
                yield "warning: PF %s removed; its claimed VFs: %s" % (event.pci, _held(pf_claims))
        elif event.subsystem == "net" and event.action in ("add", "remove"):
            known = event.name in self._pf_of or (event.pci is not None
                                                  and event.pci in self._pf_of.values())
            if not known:
                return  # VF netdevs come and go as VFs move between vfio-pci and the host
            if event.action == "add":
                self.refresh()
                if event.name in self._pf_of:
                    self._carrier.pop(event.name, None)
                    yield self._link_line(event.name, True, "netdev back on")


def start(put, stop, log, open_netlink=None, udev=udev_events):
    """Daemon threads feeding each event (a HostEvent or LinkEvent) to *put*; a source that fails logs one line.

    Returns the threads (they end when *stop* is set)."""
    if open_netlink is None:
        from vfpick.host.netlink import open_netlink

    def pump(label, subscribe):
        try:
            for event in subscribe():
                put(event)
        except Exception as e:  # noqa: BLE001 - an optional source: the watcher carries on without it
            if not stop.is_set():
                log("host events: %s stopped: %s" % (label, " ".join(str(e).split()) or repr(e)))

    def links():
        nl = open_netlink()
        try:
            for event in nl.watch_links(stop):
                yield event
        finally:
            nl.close()

    threads = []
    for label, subscribe in (("link events (rtnetlink)", links),
                             ("device events (udev)", lambda: udev(stop))):
        t = threading.Thread(target=pump, args=(label, subscribe), daemon=True,
                             name="vfpick-" + label.split()[0])
        t.start()
        threads.append(t)
    return threads
