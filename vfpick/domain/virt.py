"""The libvirt adapter: the one module that imports libvirt-python and calls its connection and
domain objects (connect, lookup, live/inactive XML, define, start, attach/detach, metadata,
events, the error type and its one-line message, the flags).

libvirt-python is imported lazily, by the commands that talk to libvirt: never on the hook path
(a hook must not call back into libvirt anyway: it would deadlock the daemon).
"""

import threading
import time
from collections import namedtuple

from vfpick.errors import DomainNotFound, LibvirtFailure, VfpickError

# The two sides of a domain a device change acts on (virsh's --live / --config).
LIVE, PERSISTENT = "live", "persistent"


def _libvirt():
    try:
        import libvirt
    except ImportError:
        raise VfpickError("libvirt-python is not installed (pip install libvirt-python)") from None
    # libvirt-python prints every error to stderr unless a handler swallows it; we report
    # our own one-line errors instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def error_message(err):
    """A libvirt error (or any exception) as one line, for the messages that quote it."""
    return " ".join(str(err.get_error_message() if hasattr(err, "get_error_message") else err).split())


def libvirt_error():
    """libvirt's exception class, for callers that must not import libvirt themselves."""
    return _libvirt().libvirtError


def client_version():
    """The libvirt client library's version as (major, minor, micro), or None without
    libvirt-python (check's fallback when no daemon binary says its own)."""
    try:
        import libvirt
    except ImportError:
        return None
    number = libvirt.getVersion()
    return number // 1000000, number // 1000 % 1000, number % 1000


def open_connection(uri):
    """libvirt's own open: raises libvirt's error (the watcher retries on it)."""
    return _libvirt().open(uri)


def connect(uri):
    libvirt = _libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise LibvirtFailure("cannot connect to %s: %s" % (uri, error_message(e))) from None


def close(conn):
    conn.close()


def unwatch(conn):
    """Drops the close callback of watch_events and closes *conn* (libvirt's errors of a
    connection already gone swallowed)."""
    for call in (conn.unregisterCloseCallback, conn.close):
        try:
            call()
        except _libvirt().libvirtError:
            pass


def network_exists(conn, name):
    """Whether *conn*'s host has the libvirt network *name*."""
    libvirt = _libvirt()
    try:
        conn.networkLookupByName(name)
        return True
    except libvirt.libvirtError:
        return False


def lookup(conn, who):
    libvirt = _libvirt()
    for finder in (conn.lookupByUUIDString, conn.lookupByName):
        try:
            return finder(who)
        except libvirt.libvirtError:
            continue
    raise DomainNotFound("libvirt has no domain '%s' (see virsh list --all)" % who)


def by_uuid(conn, uuid):
    """The domain *uuid*; libvirt's error when it has none (callers that expect it may go)."""
    return conn.lookupByUUIDString(uuid)


def inactive_xml(dom):
    libvirt = _libvirt()
    # SECURE keeps passwords and secrets, INACTIVE the persistent (next boot) definition:
    # redefining from anything less would lose configuration.
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    return dom.XMLDesc(flags).encode("utf-8")


def live_xml(dom):
    """The running domain's XML (with its secrets: a redefinition must not lose them)."""
    return dom.XMLDesc(_libvirt().VIR_DOMAIN_XML_SECURE).encode("utf-8")


def side_xml(dom, side):
    """The XML of *side* (LIVE or PERSISTENT) of *dom*."""
    return inactive_xml(dom) if side == PERSISTENT else live_xml(dom)


Facts = namedtuple("Facts", "name uuid active persistent live_xml config_xml")
Facts.__doc__ = """One domain as libvirt has it: live_xml (bytes) when it runs and was asked
for, config_xml (bytes) when it is persistent, else None."""


def facts(dom, live=True):
    """Facts of *dom*; libvirt's error when it vanished meanwhile. live=False: no live XML."""
    active, persistent = bool(dom.isActive()), bool(dom.isPersistent())
    return Facts(dom.name(), dom.UUIDString(), active, persistent,
                 live_xml(dom) if active and live else None,
                 inactive_xml(dom) if persistent else None)


def all_domains(conn):
    return conn.listAllDomains(0)


def define_xml(conn, xml, name, undo, outcome):
    """Defines *xml* (bytes); when libvirt refuses, calls undo() and raises LibvirtFailure
    naming the domain, libvirt's reason and the *outcome* ("no claim changed"). Any other
    failure before libvirt accepted (an exception, an interrupt) calls undo() too, then
    propagates: the claims written for this definition never outlive it."""
    libvirt = _libvirt()
    try:
        conn.defineXML(xml.decode("utf-8"))
    except libvirt.libvirtError as e:
        undo()
        raise LibvirtFailure("libvirt refused the definition of '%s': %s (%s)"
                             % (name, error_message(e), outcome)) from None
    except BaseException:
        undo()
        raise


def start(dom, reserved):
    """Starts the defined domain *dom*. A refusal keeps the definition (and, *reserved*, its
    VFs): `virsh start` can try again once the cause is fixed."""
    libvirt = _libvirt()
    try:
        dom.create()
    except libvirt.libvirtError as e:
        raise LibvirtFailure("domain '%s' is defined%s but libvirt could not start it: %s; "
                             "fix that, then: virsh start %s"
                             % (dom.name(), " (its VFs stay reserved)" if reserved else "",
                                error_message(e), dom.name())) from None


def _affect(sides):
    libvirt = _libvirt()
    flags = 0
    for side in sides:
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE if side == LIVE else libvirt.VIR_DOMAIN_AFFECT_CONFIG
    return flags


def attach(dom, device_xml, sides):
    """Attaches *device_xml* (str) on every side in *sides* in one call: libvirt changes live
    and persistent together or neither. Raises libvirt's error."""
    dom.attachDeviceFlags(device_xml, _affect(sides))


def detach(dom, device_xml, side):
    dom.detachDeviceFlags(device_xml, _affect((side,)))


def set_metadata(dom, side, element_xml, namespace, key):
    """Replaces the <metadata> element of *namespace* on *side* (libvirt wants it unprefixed:
    it puts it under the prefix *key* itself). Raises libvirt's error."""
    dom.setMetadata(_libvirt().VIR_DOMAIN_METADATA_ELEMENT, element_xml, key, namespace,
                    _affect((side,)))


_event_impl = []                       # virEventRegisterDefaultImpl: once per process


def start_event_loop(stop):
    """Runs libvirt's default event loop in a daemon thread until *stop* (an Event) is set;
    returns the thread. Register it before the first connection whose events are wanted."""
    lv = _libvirt()
    if not _event_impl:
        lv.virEventRegisterDefaultImpl()
        # A periodic timer wakes the loop so its thread notices `stop`.
        lv.virEventAddTimeout(250, lambda _timer, _opaque: None, None)
        _event_impl.append(True)

    def run():
        while not stop.is_set():
            if lv.virEventRunDefaultImpl() < 0:
                time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True, name="vfpick-libvirt-events")
    thread.start()
    return thread


def watch_events(conn, on_close, on_lifecycle, opaque, keepalive):
    """on_close(conn, reason, opaque) when *conn* closes; on_lifecycle(conn, dom, event,
    detail, opaque) per lifecycle event (see lifecycle_kind). Raises libvirt's error."""
    lv = _libvirt()
    conn.registerCloseCallback(on_close, opaque)
    try:
        conn.setKeepAlive(*keepalive)
    except lv.libvirtError:
        pass  # local drivers (test:///) have no keepalive
    conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, opaque)


def lifecycle_kind(event):
    """"defined", "undefined" or None (the lifecycle events vfpick does not act on)."""
    lv = _libvirt()
    return {lv.VIR_DOMAIN_EVENT_DEFINED: "defined",
            lv.VIR_DOMAIN_EVENT_UNDEFINED: "undefined"}.get(event)


def identity(dom):
    """(name, uuid) of *dom*."""
    return dom.name(), dom.UUIDString()


def is_running(dom):
    return bool(dom.isActive())


def is_persistent(dom):
    """Whether *dom* has a persistent definition (else it is transient)."""
    return bool(dom.isPersistent())


class Devices(object):
    """The libvirt calls of a live NIC move (vfpick/livemove.py), on one domain.

    live=True: the running domain (VIR_DOMAIN_AFFECT_LIVE, its live XML). live=False: the same
    steps on the persistent definition (AFFECT_CONFIG, the inactive XML): what the tests drive
    where no VF can be hot-plugged (simulated VFs), and the seam they inject failures through.
    Every call raises libvirt's own error; livemove turns it into one line."""

    def __init__(self, dom, live=True):
        self.dom, self.live = dom, live
        self.side = LIVE if live else PERSISTENT

    def xml(self):
        """The XML the moves act on (live, or the persistent definition)."""
        return side_xml(self.dom, self.side)

    def running(self):
        return bool(self.dom.isActive())

    def persistent_xml(self):
        return inactive_xml(self.dom) if self.dom.isPersistent() else None

    def detach(self, iface_xml):
        detach(self.dom, iface_xml, self.side)

    def attach(self, iface_xml):
        attach(self.dom, iface_xml, (self.side,))

    def define(self, xml):
        self.dom.connect().defineXML(xml.decode("utf-8"))

    def set_metadata(self, element_xml, namespace, key):
        """vfpick's <metadata> element of the side moved (libvirt wants it unprefixed)."""
        set_metadata(self.dom, self.side, element_xml, namespace, key)
