"""FakeNetlink: vfpick.host.netlink's interface (set_vf, get_vf, link_state, watch_links) in memory.

A test double, so it lives with the tests, not in the package. It shares the real module's
records, errors and argument checks (netlink._requested), so a caller cannot pass the fake
what the real one would refuse.
"""

import errno
import os
import queue

from vfpick.host import netlink


class FakeNetlink(netlink._Closing):
    """In-memory stand-in with RealNetlink's methods, errnos and messages.

    calls: one (pf_ifname, vf_index, trust, spoofchk) per set_vf call of trust/spoofchk,
    failed ones included; rate_calls: one (pf_ifname, vf_index, max_tx_rate, min_tx_rate) per
    set_vf call of the rates. New VFs start untrusted with spoofchk on and no rates (the usual
    driver defaults; rates read None until set).
    """

    def __init__(self):
        self.links, self.num_vfs, self.vfs, self.calls, self.rate_calls = {}, {}, {}, [], []
        self._index, self._failures, self._watchers, self.closed = {}, {}, [], False
        self._rates = {}

    def add_link(self, ifname, carrier=True, operstate="up", num_vfs=0, rates="both"):
        """rates: what the driver's ndo_set_vf_rate takes: "both" (mlx5, ice, bnxt_en), "max"
        (igb, ixgbe, i40e: EINVAL for a min_tx_rate other than 0), "none" (EOPNOTSUPP)."""
        self._index.setdefault(ifname, len(self._index) + 1)
        self.links[ifname] = netlink.LinkState(ifname, carrier, operstate, None)
        self.num_vfs[ifname] = num_vfs
        self._rates[ifname] = rates
        # Rates None until set: a kernel says 0 (no limit), which vfsettings reads the same.
        self.vfs.update(((ifname, vf), netlink.VfState(False, True)) for vf in range(num_vfs))
        self._emit("new", ifname)

    def set_link(self, ifname, carrier=None, operstate=None):
        old = self.links[ifname]
        self.links[ifname] = old._replace(
            carrier=old.carrier if carrier is None else carrier,
            operstate=old.operstate if operstate is None else operstate)
        self._emit("new", ifname)

    def del_link(self, ifname):
        self._emit("del", ifname)
        del self.links[ifname]

    def fail(self, pf_ifname, vf_index, err=errno.EOPNOTSUPP, setting=None):
        """Make set_vf of this VF fail with errno err: for that setting only, if given;
        else for every setting and for get_vf too."""
        self._failures[(pf_ifname, vf_index, setting)] = err

    def emit(self, event):
        for q in list(self._watchers):
            q.put(event)

    def _emit(self, kind, ifname):
        st = self.links[ifname]
        self.emit(netlink.LinkEvent(kind, ifname, self._index[ifname], st.carrier, st.operstate))

    def _check(self, pf, vf, what, setting=None):
        err = self._failures.get((pf, vf, setting)) or self._failures.get((pf, vf, None))
        text = os.strerror(err) if err else None
        if not err and pf not in self.links:
            err, text = errno.ENODEV, os.strerror(errno.ENODEV)
        elif not err and not 0 <= vf < self.num_vfs[pf]:
            err, text = ((errno.EINVAL, os.strerror(errno.EINVAL)) if setting else
                         (errno.ENOENT, "the kernel reports no such VF"))
        if err:
            raise netlink.NetlinkError("cannot %s: %s" % (what, text), pf, vf, setting, err)

    def set_vf(self, pf_ifname, vf_index, trust=None, spoofchk=None, max_tx_rate=None,
               min_tx_rate=None):
        requested = netlink._requested(trust, spoofchk)
        rates = netlink._rates_requested(max_tx_rate, min_tx_rate)
        if requested or rates is None:
            self.calls.append((pf_ifname, vf_index, trust, spoofchk))
        if rates is not None:
            self.rate_calls.append((pf_ifname, vf_index) + rates)
        key = (pf_ifname, vf_index)
        for setting, value, word in requested:
            self._check(pf_ifname, vf_index, "set %s %s for VF %d of %s" % (
                setting, word, vf_index, pf_ifname), setting)
            self.vfs[key] = self.vfs[key]._replace(**{setting: value})
        if rates is not None:
            what = "set %s for VF %d of %s" % (netlink.rates_word(*rates), vf_index, pf_ifname)
            self._check(pf_ifname, vf_index, what, "rate")
            refusal = {"none": errno.EOPNOTSUPP, "max": errno.EINVAL if rates[1] else 0}.get(
                self._rates.get(pf_ifname, "both"), 0)
            if refusal:
                raise netlink.NetlinkError("cannot %s: %s" % (what, os.strerror(refusal)),
                                           pf_ifname, vf_index, "rate", refusal)
            self.vfs[key] = self.vfs[key]._replace(max_tx_rate=rates[0], min_tx_rate=rates[1])

    def get_vf(self, pf_ifname, vf_index):
        self._check(pf_ifname, vf_index, "read VF %d of %s" % (vf_index, pf_ifname))
        return self.vfs[(pf_ifname, vf_index)]

    def link_state(self, ifname):
        if ifname not in self.links:
            raise netlink.NetlinkError("cannot read the link state of %s: %s" % (
                ifname, os.strerror(errno.ENODEV)), ifname, errno=errno.ENODEV)
        return self.links[ifname]

    def watch_links(self, stop_event=None, timeout=0.5):
        q = queue.Queue()
        self._watchers.append(q)  # subscribed now, like the real one
        return _FakeWatch(self._watchers, q, stop_event, timeout)

    def close(self):
        self.closed = True


class _FakeWatch(netlink._Watch):
    def __init__(self, watchers, q, stop_event, timeout):
        self._watchers, self._q, self._stop, self._timeout = watchers, q, stop_event, timeout

    def _wait(self):
        try:
            return [self._q.get(timeout=self._timeout)]
        except queue.Empty:
            return []

    def close(self):
        if self._q in self._watchers:
            self._watchers.remove(self._q)
