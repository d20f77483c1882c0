"""Raw rtnetlink for VF trust/spoofchk and rates, standard library only: the qemu hook's path.

pyroute2 costs ~200 ms to import and the hook runs on every VM start; this costs ~1 ms.
Public modules only (``socket``, not its private ``_socket`` core, although ``socket`` adds
``selectors`` to the imports): this runs only for vfpick's own domains in pools that set
trust/spoofchk, where correctness beats milliseconds. vfpick.host.netlink wraps this.

Requests are RTM_SETLINK / RTM_GETLINK with ifi_index 0 and IFLA_IFNAME: the kernel looks
the link up by name (in the socket's netns), one round trip, no rename. Errors are OSError:
errno and, as strerror, the kernel's extended ack message when it sent one (else
os.strerror); a malformed or truncated reply is EPROTO, never a struct.error.
"""

import errno
import os
import socket
import struct

SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x1, 0x4, 0x100, 0x200
NLMSG_ERROR, NLMSGERR_ATTR_MSG = 2, 1
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
IFLA_IFNAME, IFLA_VFINFO_LIST, IFLA_EXT_MASK, IFLA_VF_INFO = 3, 22, 29, 1
IFLA_VF = {"spoofchk": 4, "trust": 9}  # IFLA_VF_SPOOFCHK, IFLA_VF_TRUST: {u32 vf; u32 setting}
# IFLA_VF_RATE: {u32 vf; u32 min_tx_rate; u32 max_tx_rate} in Mb/s, both set by one request (the
# kernel calls ndo_set_vf_rate(min, max)). IFLA_VF_TX_RATE {u32 vf; u32 rate} is the older
# max-only spelling: the kernel reads the VF's min back and makes the same driver call, so
# IFLA_VF_RATE with min 0 is what igb/ixgbe (no min_tx_rate: EINVAL for min != 0) accept.
IFLA_VF_TX_RATE, IFLA_VF_RATE = 3, 6
RTEXT_FILTER_VF, RTEXT_FILTER_SKIP_STATS = 1, 8  # VF stats can make one reply exceed 64 KiB
CLONE_NEWNET = 0x40000000

_HDR = struct.Struct("=IHHII")     # nlmsghdr: len, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")    # ifinfomsg: family, pad, type, index, flags, change
_NLA = struct.Struct("=HH")        # nlattr: len, type
_VF_U32 = struct.Struct("=II")     # ifla_vf_trust / ifla_vf_spoofchk: vf, setting
_VF_RATE = struct.Struct("=III")   # ifla_vf_rate: vf, min_tx_rate, max_tx_rate
_ERR = struct.Struct("=i")         # nlmsgerr: error (then the request's header, ...)
_NLA_TYPE = 0x3FFF                 # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def _malformed(what):
    return OSError(errno.EPROTO, "malformed rtnetlink reply (%s)" % what)


# ---------------------------------------------------------------- encoding

def _attr(kind, payload):
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _link_msg(kind, flags, seq, ifname, attrs):
    body = _IFI.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, os.fsencode(ifname) + b"\0") + attrs
    return _HDR.pack(_HDR.size + len(body), kind, flags, seq, 0) + body


def setlink_vf(ifname, vf, setting, value, seq=1):
    """RTM_SETLINK of one setting ("trust"/"spoofchk") of one VF: IFLA_VFINFO_LIST /
    IFLA_VF_INFO / IFLA_VF_<SETTING> {vf, value}, as `ip link set IFNAME vf N trust on`."""
    vfinfo = _attr(IFLA_VF_INFO, _attr(IFLA_VF[setting], _VF_U32.pack(vf, value)))
    return _link_msg(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifname,
                     _attr(IFLA_VFINFO_LIST, vfinfo))


def setlink_vf_rate(ifname, vf, min_tx_rate, max_tx_rate, seq=1):
    """RTM_SETLINK of one VF's rates (Mb/s, 0: none): IFLA_VFINFO_LIST / IFLA_VF_INFO /
    IFLA_VF_RATE {vf, min, max}, as `ip link set IFNAME vf N min_tx_rate MIN max_tx_rate MAX`."""
    vfinfo = _attr(IFLA_VF_INFO, _attr(IFLA_VF_RATE, _VF_RATE.pack(vf, min_tx_rate, max_tx_rate)))
    return _link_msg(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifname,
                     _attr(IFLA_VFINFO_LIST, vfinfo))


def getlink_vfs(ifname, seq=1):
    """RTM_GETLINK of one link with its VFs (IFLA_EXT_MASK: RTEXT_FILTER_VF, no stats)."""
    mask = struct.pack("=I", RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS)
    return _link_msg(RTM_GETLINK, NLM_F_REQUEST, seq, ifname, _attr(IFLA_EXT_MASK, mask))


# ---------------------------------------------------------------- decoding

def messages(data):
    """(type, flags, seq, payload) of each netlink message in one datagram."""
    off = 0
    while off < len(data):
        if len(data) - off < _HDR.size:
            raise _malformed("truncated header")
        size, kind, flags, seq, _pid = _HDR.unpack_from(data, off)
        if size < _HDR.size or off + size > len(data):
            raise _malformed("message length %d, %d bytes left" % (size, len(data) - off))
        yield kind, flags, seq, data[off + _HDR.size:off + size]
        off += (size + 3) & ~3


def attrs(data, off=0):
    """(type, payload) of each attribute from off on; a truncated one is an error."""
    while off + _NLA.size <= len(data):
        size, kind = _NLA.unpack_from(data, off)
        if size < _NLA.size or off + size > len(data):
            raise _malformed("attribute length %d, %d bytes left" % (size, len(data) - off))
        yield kind & _NLA_TYPE, data[off + _NLA.size:off + size]
        off += (size + 3) & ~3


def error_of(flags, payload):
    """NLMSG_ERROR payload -> None for an ack, else OSError(errno, extack message or strerror)."""
    if len(payload) < _ERR.size:
        raise _malformed("truncated error message")
    code = -_ERR.unpack_from(payload)[0]
    if code == 0:
        return None  # an extack warning may come with a success: not ours to report
    if code < 0:
        raise _malformed("error %d" % -code)
    text = None
    if flags & NLM_F_ACK_TLVS and len(payload) >= _ERR.size + _HDR.size:
        # After the error: the request's nlmsghdr, with its payload unless NLM_F_CAPPED.
        skip = _HDR.size if flags & NLM_F_CAPPED else _HDR.unpack_from(payload, _ERR.size)[0]
        try:
            for kind, value in attrs(payload, _ERR.size + ((skip + 3) & ~3)):
                if kind == NLMSGERR_ATTR_MSG:
                    text = value.split(b"\0", 1)[0].decode("utf-8", "replace").strip() or None
        except OSError:
            pass  # a damaged extack loses the text, not the errno
    return OSError(code, text or os.strerror(code))


def vf_settings(payload, vf):
    """{"trust": int, "spoofchk": int, "min_tx_rate": int, "max_tx_rate": int} of VF vf in an
    RTM_NEWLINK payload (the keys the kernel sent); None if absent. 0xFFFFFFFF: the driver
    does not report that setting."""
    if len(payload) < _IFI.size:
        raise _malformed("truncated ifinfomsg")
    names = {number: name for name, number in IFLA_VF.items()}
    for kind, vflist in attrs(payload, _IFI.size):
        if kind != IFLA_VFINFO_LIST:
            continue
        for info_kind, info in attrs(vflist):
            found = {}
            for setting, value in attrs(info) if info_kind == IFLA_VF_INFO else ():
                if setting in (IFLA_VF_RATE, IFLA_VF_TX_RATE):
                    _rates(setting, value, vf, found)
                elif setting in names:
                    if len(value) < _VF_U32.size:
                        raise _malformed("truncated IFLA_VF_%s" % names[setting].upper())
                    index, state = _VF_U32.unpack_from(value)
                    if index == vf:
                        found[names[setting]] = state
            if found:
                return found
    return None


def _rates(setting, value, vf, found):
    if setting == IFLA_VF_RATE:
        if len(value) < _VF_RATE.size:
            raise _malformed("truncated IFLA_VF_RATE")
        index, low, high = _VF_RATE.unpack_from(value)
        if index == vf:
            found["min_tx_rate"], found["max_tx_rate"] = low, high
        return
    if len(value) < _VF_U32.size:
        raise _malformed("truncated IFLA_VF_TX_RATE")
    index, high = _VF_U32.unpack_from(value)
    if index == vf:
        found.setdefault("max_tx_rate", high)  # IFLA_VF_RATE, when sent too, says the same


# ---------------------------------------------------------------- the socket

def _setns(fd):
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes  # only for a named netns (tests, containers): never on the hook's path

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def open_socket(netns=None):
    """A NETLINK_ROUTE socket, created in netns (a name under /run/netns, or a path) if given.

    Switches only this thread's netns, and back: the socket stays in the one it was made in.
    A missing netns is ENOENT, never created."""
    def new():
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)

    if not netns:
        return new()
    flags = os.O_RDONLY | os.O_CLOEXEC
    target = os.open(netns if "/" in netns else "/run/netns/" + netns, flags)
    try:
        home = os.open("/proc/thread-self/ns/net", flags)
        try:
            _setns(target)
            try:
                return new()
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


class Rtnl:
    """One NETLINK_ROUTE socket, one request at a time. sock: for tests, anything with
    send/recv_into/close."""

    def __init__(self, netns=None, sock=None, timeout=5.0):
        self._sock = sock if sock is not None else open_socket(netns)
        if sock is None:
            for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                try:
                    self._sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:  # older kernels: plain errors, whole requests echoed
                    pass
            self._sock.settimeout(timeout)  # the kernel answers at once; never hang a hook
        self._seq, self._buf = 0, bytearray(1 << 15)

    def close(self):
        self._sock.close()

    def _recv(self):
        size = self._sock.recv_into(self._buf, 0, socket.MSG_PEEK | socket.MSG_TRUNC)
        if size > len(self._buf):
            self._buf = bytearray(size)
        size = self._sock.recv_into(self._buf)
        return bytes(self._buf[:size])

    def request(self, build, *args):
        """Sends build(*args, seq=...); returns the payload of the reply (None for an ack).
        Raises OSError for a kernel error."""
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        self._sock.send(build(*args, seq=seq))
        while True:
            replies = list(messages(self._recv()))
            if not replies:
                raise _malformed("empty")
            for kind, flags, got, payload in replies:
                if got != seq:
                    continue  # a late answer to an earlier request
                if kind != NLMSG_ERROR:
                    return payload
                error = error_of(flags, payload)
                if error is not None:
                    raise error
                return None

    def set_vf(self, ifname, vf, setting, value):
        """Sets one setting ("trust"/"spoofchk") of VF vf of link ifname to value (0/1)."""
        self.request(setlink_vf, ifname, vf, setting, value)

    def set_vf_rate(self, ifname, vf, min_tx_rate, max_tx_rate):
        """Sets VF vf's rates (Mb/s, 0: none) on link ifname, both in one request."""
        self.request(setlink_vf_rate, ifname, vf, min_tx_rate, max_tx_rate)

    def get_vf(self, ifname, vf):
        """{"trust", "spoofchk", "min_tx_rate", "max_tx_rate"} (ints, 0xFFFFFFFF: unreported;
        the keys the kernel sent) of VF vf; None: no such VF."""
        reply = self.request(getlink_vfs, ifname)
        if reply is None:
            raise _malformed("an ack instead of the link")
        return vf_settings(reply, vf)
