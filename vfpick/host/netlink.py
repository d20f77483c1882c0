"""The narrow rtnetlink interface: VF trust/spoofchk/rates on a PF, link state, link events.

set_vf and get_vf speak rtnetlink themselves (vfpick.host.rtnl: standard library only, ~1 ms):
the qemu hook calls set_vf on every VM start of a pool with trust/spoofchk, and pyroute2
costs ~200 ms to import. pyroute2 is imported only by link_state and watch_links (the
long-running watcher), on first use. For the same reason socket and queue are imported where
used: importing this module costs the hook only errno, os and collections.
tests/fakenetlink.py has the same methods, in memory, for tests of other modules.
"""

import errno
import os
from collections import namedtuple

from vfpick.errors import VfpickError

VfState = namedtuple("VfState", "trust spoofchk max_tx_rate min_tx_rate", defaults=(None, None))
VfState.__doc__ = """trust, spoofchk: True/False, None when the driver does not report it.
max_tx_rate, min_tx_rate: Mb/s (0: no limit), None when the kernel sent none."""

LinkState = namedtuple("LinkState", "ifname carrier operstate speed")
LinkState.__doc__ = """carrier: bool (netlink reports it even for an admin-down link, where
sysfs gives EINVAL). operstate: sysfs spelling ("up", "down", "lowerlayerdown", ...).
speed: always None here (netlink has no speed; read sysfs or ethtool)."""

LinkEvent = namedtuple("LinkEvent", "kind ifname index carrier operstate")
LinkEvent.__doc__ = """kind: "new" (RTM_NEWLINK: any change, not only carrier/operstate),
"del" (RTM_DELLINK), or "resync" (events were lost: the kernel's socket buffer overflowed;
every other field None, re-read the state of every link you care about). index survives
renames, ifname does not."""

SETTINGS = ("trust", "spoofchk")
RATES = ("max_tx_rate", "min_tx_rate")
_UNREPORTED = 0xFFFFFFFF  # the kernel presets -1 and keeps it when the driver says nothing
_RTMGRP_LINK = 1
_KINDS = {16: "new", 17: "del"}  # RTM_NEWLINK, RTM_DELLINK


class NetlinkError(VfpickError):
    """rtnetlink refused a request. Attributes: ifname, vf, setting, errno (all may be None)."""

    def __init__(self, message, ifname=None, vf=None, setting=None, errno=None):
        VfpickError.__init__(self, message)
        self.ifname, self.vf, self.setting, self.errno = ifname, vf, setting, errno


def _requested(trust, spoofchk):
    pairs = [(n, v) for n, v in zip(SETTINGS, (trust, spoofchk)) if v is not None]
    for name, value in pairs:
        if value not in (True, False):  # bool("off") is True: refuse, do not guess
            raise ValueError("%s must be True, False or None, not %r" % (name, value))
    return [(name, bool(value), "on" if value else "off") for name, value in pairs]


def _rates_requested(max_tx_rate, min_tx_rate):
    """(max, min) to set, or None when neither is given; a rate not given is 0 (none), since
    IFLA_VF_RATE sets both."""
    if max_tx_rate is None and min_tx_rate is None:
        return None
    rates = (max_tx_rate or 0, min_tx_rate or 0)
    for name, value in zip(RATES, rates):
        if type(value) is not int or not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("%s must be Mb/s (an int from 0), not %r" % (name, value))
    return rates


def rates_word(max_tx_rate, min_tx_rate):
    return "max_tx_rate %d min_tx_rate %d" % (max_tx_rate, min_tx_rate)


def _reason(exc):
    # pyroute2's NetlinkError has args (code, text): text is the kernel's extack if it sent one.
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else None
    return code, (text or (os.strerror(code) if code else str(exc)))


def link_state_from_msg(msg):
    carrier = msg.get_attr("IFLA_CARRIER")
    return LinkState(msg.get_attr("IFLA_IFNAME"), None if carrier is None else bool(carrier),
                     (msg.get_attr("IFLA_OPERSTATE") or "unknown").lower(), None)


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _pyroute2(what):
    try:
        import pyroute2
    except ImportError as e:
        raise NetlinkError("pyroute2 is needed for %s: %s" % (what, e))
    return pyroute2


def _connect(pyroute2, netns):
    """A pyroute2 socket for requests, in the spellings pyroute2 0.9 and Debian's 0.7 accept
    (Debian 12: 0.7.2, 13: 0.7.7; neither takes IPRoute(netns=..., flags=...), and 0.7.2 has
    no groups argument)."""
    # groups=0: this socket only asks; 0.9 binds new sockets to multicast groups unless told,
    # and that noise would pile up unread in it (0.7 binds none until bind() is called).
    # flags=0: a missing netns is an error, not silently created.
    def open_socket(**groups):
        if netns:
            return pyroute2.NetNS(netns, flags=0, **groups)
        return pyroute2.IPRoute(ext_ack=True, **groups)

    try:
        return open_socket(groups=0)
    except TypeError:  # 0.7.2: no groups argument
        return open_socket()


class RealNetlink(_Closing):
    """The kernel. netns: a named network namespace (tests, containers).

    set_vf/get_vf: vfpick.host.rtnl on a socket opened here. link_state/watch_links: pyroute2,
    imported and connected on first use."""

    def __init__(self, netns=None):
        from vfpick.host import rtnl

        self.netns, self._ipr = netns, None
        try:
            self._rtnl = rtnl.Rtnl(netns)
        except OSError as e:
            raise NetlinkError("cannot open rtnetlink%s: %s" % (
                " in netns %s" % netns if netns else "", _reason(e)[1]), errno=e.errno)

    def close(self):
        self._rtnl.close()
        if self._ipr is not None:
            self._ipr.close()

    def set_vf(self, pf_ifname, vf_index, trust=None, spoofchk=None, max_tx_rate=None,
               min_tx_rate=None):
        """Set trust/spoofchk (True/False; None leaves it alone) and the rates (Mb/s, 0: none;
        both None leaves them alone, one None is 0) of VF vf_index of the PF."""
        # One request per setting: the kernel stops at the first failing one, and the
        # error must name the setting that failed.
        requested, rates = _requested(trust, spoofchk), _rates_requested(max_tx_rate, min_tx_rate)
        for setting, value, word in requested:
            try:
                self._rtnl.set_vf(pf_ifname, vf_index, setting, int(value))
            except OSError as e:
                code, text = _reason(e)
                raise NetlinkError("cannot set %s %s for VF %d of %s: %s" % (
                    setting, word, vf_index, pf_ifname, text), pf_ifname, vf_index, setting, code)
        if rates is not None:
            try:
                self._rtnl.set_vf_rate(pf_ifname, vf_index, rates[1], rates[0])
            except OSError as e:
                code, text = _reason(e)
                raise NetlinkError("cannot set %s for VF %d of %s: %s" % (
                    rates_word(*rates), vf_index, pf_ifname, text), pf_ifname, vf_index, "rate",
                    code)

    def get_vf(self, pf_ifname, vf_index):
        what = "read VF %d of %s" % (vf_index, pf_ifname)
        try:
            found = self._rtnl.get_vf(pf_ifname, vf_index)
        except OSError as e:
            code, text = _reason(e)
            raise NetlinkError("cannot %s: %s" % (what, text), pf_ifname, vf_index, errno=code)
        if found is None:
            raise NetlinkError("cannot %s: the kernel reports no such VF" % what,
                               pf_ifname, vf_index, errno=errno.ENOENT)
        flags = [None if found.get(name, _UNREPORTED) == _UNREPORTED else bool(found[name])
                 for name in SETTINGS]
        return VfState(*flags, *(found.get(name) for name in RATES))

    def _get(self, ifname, what, **kwarg):
        if self._ipr is None:
            try:
                self._ipr = _connect(_pyroute2("link state and link events"), self.netns)
            except OSError as e:
                raise NetlinkError("cannot open rtnetlink%s: %s" % (
                    " in netns %s" % self.netns if self.netns else "", _reason(e)[1]),
                    errno=e.errno)
        from pyroute2 import NetlinkError as KernelError
        try:
            return self._ipr.link("get", ifname=ifname, **kwarg)[0]
        except (KernelError, OSError) as e:
            code, text = _reason(e)
            raise NetlinkError("cannot %s: %s" % (what, text), ifname=ifname, errno=code)

    def link_state(self, ifname):
        return link_state_from_msg(self._get(ifname, "read the link state of %s" % ifname))

    def watch_links(self, stop_event=None, timeout=0.5):
        """Subscribe now; iterate LinkEvents until stop_event is set (checked every timeout s).

        The subscription starts in this call, not at the first next(): read the current link
        states after calling it and no change in between is missed.
        """
        import socket
        from vfpick.host import rtnl

        _pyroute2("link events")  # the events are decoded with it
        sock = None
        try:
            sock = rtnl.open_socket(self.netns)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, _RTMGRP_LINK))
        except OSError as e:
            if sock is not None:
                sock.close()
            raise NetlinkError("cannot subscribe to link events: %s" % _reason(e)[1],
                               errno=e.errno)
        sock.settimeout(timeout)
        return _KernelWatch(sock, stop_event)


class _Watch(_Closing):
    def __iter__(self):
        try:
            while not (self._stop is not None and self._stop.is_set()):
                for event in self._wait():  # [] after `timeout` s without events
                    yield event
        finally:
            self.close()


class _KernelWatch(_Watch):
    def __init__(self, sock, stop_event):
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl
        self._sock, self._stop, self._marshal = sock, stop_event, MarshalRtnl()

    def _wait(self):
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:  # socket.timeout
            return []
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise NetlinkError("cannot read link events: %s" % os.strerror(e.errno),
                                   errno=e.errno)
            return [LinkEvent("resync", None, None, None, None)]
        events = []
        for msg in self._marshal.parse(data):
            # family 0 only: the AF_BRIDGE copies repeat a bridge port's events
            if msg["header"]["type"] in _KINDS and msg["family"] == 0:
                st = link_state_from_msg(msg)
                events.append(LinkEvent(_KINDS[msg["header"]["type"]], st.ifname,
                                        msg["index"], st.carrier, st.operstate))
        return events

    def close(self):
        self._sock.close()


def open_netlink(netns=None):
    """The real implementation (pyroute2 only on first link_state/watch_links).
    Raises NetlinkError when rtnetlink or the netns cannot be opened."""
    return RealNetlink(netns)
