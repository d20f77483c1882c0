"""Prometheus metrics: ``vfpick metrics [--textfile DIR]`` and ``vfpick watch --metrics-listen``.

Built with prometheus_client (a CollectorRegistry of our own, never the global one, so no
process/platform collectors leak in). ``gather`` does the I/O (sysfs, state, domain dirs),
``families`` turns that into metric families without any. Every scrape reads afresh: the
numbers are what the host and the state file say now, not what the watcher last saw.
Never imported by the hook.

Family names and labels are an interface (dashboards and etc/prometheus/vfpick-alerts.yml).
"""

import os
import platform
from collections import Counter, namedtuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

import vfpick
from vfpick import names, numbers, pci, resolver, stale
from vfpick.plan import policy
from vfpick.host import topology
from vfpick.commands.status import distinct_level
from vfpick.errors import VfpickError

TEXTFILE_NAME = "vfpick.prom"
BYTES_PER_MBIT = 1000 * 1000 // 8
VF_STATES = ("free", "reserved", "active")

Facts = namedtuple("Facts", "config topo claims busy index drained")
Facts.__doc__ = """Everything one scrape reads. claims: {vf: Claim}; busy: {vf: uuid} of VFs running
domains use; index: stale.DomainIndex of the domain dirs, or None when they cannot be listed;
drained: PF addresses taken out of service (vfpick drain)."""


def gather(config):
    snapshot = resolver.store_for(config).snapshot()
    return Facts(config=config, topo=topology.for_config(config), claims=snapshot.mapping(),
                 busy=resolver.running_vfs(config), index=stale.domain_index(config),
                 drained=snapshot.drained())


def vf_state(vf, claims, busy, lost=frozenset()):
    """free | reserved (claimed, domain not running) | active (a running domain uses it).

    A VF a running domain uses without a vfpick claim counts as active: it is not free, and
    reconcile records it as that domain's claim. A lost claim's VF (stale.lost_vfs: its running
    domain no longer has it) is reserved: held, used by nobody.
    """
    claim = claims.get(vf)
    if claim is not None:
        return "active" if claim.active and vf not in lost else "reserved"
    return "active" if vf in busy else "free"


_domain_facts = stale.domain_facts


def degraded(topo, pools, domain_claims, domain_facts):
    """True when a NIC of the domain sits on a down (or vanished) link, or shares with another
    NIC of the domain what its pool's distinct level (after the domain's override) forbids."""
    present = [c for c in domain_claims if c.pf in topo.link_of]
    if len(present) < len(domain_claims):
        return True
    if any(not topo.links[topo.link_of[c.pf]].up for c in present):
        return True
    for claim in present:
        pool = pools.get(claim.pool)
        level = distinct_level(pool, domain_facts) if pool else "none"
        if level == "none":
            continue
        unit = policy.unit_of(topo, level, claim.pf)
        others = [policy.unit_of(topo, level, c.pf) for c in present if c.vf != claim.vf]
        if unit in others:
            return True
    return False


def families(facts):
    """The metric families for *facts* (no I/O)."""
    config, topo, claims = facts.config, facts.topo, facts.claims

    lost = stale.lost_vfs(claims.values(), facts.index)
    vfs = GaugeMetricFamily("vfpick_vfs", "VFs of a pool PF by state (free, reserved: claimed by "
                            "a stopped domain, active: used by a running domain)",
                            labels=["pool", "link", "pf", "state"])
    for pool in config.pools.values():
        for pf_addr in pool.pfs:
            pf = topo.pfs.get(pf_addr)
            if pf is None:
                continue
            counts = Counter(vf_state(vf, claims, facts.busy, lost) for vf in pf.vfs if vf in topo.vfs)
            for state in VF_STATES:
                vfs.add_metric([pool.name, topo.link_of[pf_addr], pf_addr, state], counts[state])

    up = GaugeMetricFamily("vfpick_link_up", "1 when the physical link carries a signal",
                           labels=["link"])
    speed = GaugeMetricFamily("vfpick_link_speed_bytes", "Link speed in bytes per second "
                              "(absent while the kernel does not know it, e.g. link down)",
                              labels=["link"])
    for link in topo.links.values():
        up.add_metric([link.name], 1 if link.up else 0)
        if link.speed:
            speed.add_metric([link.name], link.speed * BYTES_PER_MBIT)

    by_uuid = {}
    for claim in claims.values():
        by_uuid.setdefault(claim.uuid, []).append(claim)
    nics, bad = Counter(), {}
    for uuid, domain_claims in by_uuid.items():
        # Escaped: a lone surrogate from an old state file cannot be encoded in the exposition.
        name = names.printable(domain_claims[0].domain)
        for claim in domain_claims:
            nics[(name, names.printable(claim.pool))] += 1
        is_bad = degraded(topo, config.pools, domain_claims, _domain_facts(facts.index, uuid))
        is_bad = is_bad or any(c.vf in lost for c in domain_claims)  # a NIC unplugged
        bad[name] = bad.get(name, False) or is_bad  # names clash only for stale claims
    domain_nics = GaugeMetricFamily("vfpick_domain_nics", "VFs a domain holds from a pool",
                                    labels=["domain", "pool"])
    for (name, pool_name), count in sorted(nics.items()):
        domain_nics.add_metric([name, pool_name], count)
    domain_degraded = GaugeMetricFamily(
        "vfpick_domain_degraded", "1 when a domain's NICs share what its distinct level forbids "
        "or one sits on a down link", labels=["domain"])
    for name, is_bad in sorted(bad.items()):
        domain_degraded.add_metric([name], 1 if is_bad else 0)

    stale_set = stale.stale_uuids(config, claims.values(), facts.index) if facts.index else ()
    claims_stale = GaugeMetricFamily(
        "vfpick_claims_stale", "Claims whose domain libvirt no longer has (vfpick reconcile drops them)",
        value=sum(1 for c in claims.values() if c.uuid in stale_set))

    claims_lost = GaugeMetricFamily(
        "vfpick_claims_lost", "Active claims whose VF the running domain no longer has (QEMU "
        "unplugged it: sriov_numvfs changed under the guest)", value=len(lost))

    return [vfs, up, speed, domain_nics, domain_degraded, claims_stale, claims_lost] + drained_families(facts) + [
        reserved_family(facts), build_info()]


def reserved_family(facts):
    """vfpick_link_reserved_bytes{link}: what the claims on a link hold back (each NIC's
    <inbound floor>, else its outbound average; a NIC without a rate holds nothing), in bytes/s
    like vfpick_link_speed_bytes, so reserved / speed is the share a guarantee pool has used."""
    topo = facts.topo
    reserved = dict.fromkeys(topo.links, 0)
    for claim in facts.claims.values():
        link = topo.link_of.get(claim.pf)
        if link is not None:
            reserved[link] += policy.reserved(claim.rate_mbps, claim.min_rate_mbps)
    family = GaugeMetricFamily("vfpick_link_reserved_bytes", "Bytes per second the claims on the "
                               "link reserve (guaranteed rates: floor, else average)",
                               labels=["link"])
    for link in sorted(reserved):
        family.add_metric([link], reserved[link] * BYTES_PER_MBIT)
    return family


def drained_families(facts):
    """vfpick_pf_drained{link,pf} for every PF of the host's pools, vfpick_link_drained{link}:
    1 when taken out of service with vfpick drain (every PF of the link, for a link)."""
    topo, drained = facts.topo, facts.drained
    pf_drained = GaugeMetricFamily("vfpick_pf_drained", "1 while the PF is drained (vfpick drain): "
                                   "new picks avoid it", labels=["link", "pf"])
    for addr in sorted(topo.pfs, key=pci.sort_key):
        pf_drained.add_metric([topo.link_of[addr], addr], 1 if addr in drained else 0)
    link_drained = GaugeMetricFamily("vfpick_link_drained", "1 while every PF of the link is "
                                     "drained (vfpick drain)", labels=["link"])
    for link in topo.links.values():
        link_drained.add_metric([link.name], 1 if set(link.pfs) <= drained else 0)
    return [pf_drained, link_drained]


HEAL_DECISIONS = ("planned", "done", "refused", "rolled_back", "deferred")


def heal_families(healer):
    """The watcher's self-healing families (its own counts: they live in the watcher's memory,
    so only ``vfpick watch --metrics-listen`` has them): vfpick_heal_decisions_total{pool, mode,
    decision, reason} and vfpick_heal_waiting{pool} (NICs on a dead link not decided yet: in
    their hold-down). *healer*: a heal.Healer, or None when no pool heals."""
    decisions = CounterMetricFamily(
        "vfpick_heal_decisions", "Self-healing decisions of vfpick watch: planned (report: what it "
        "would move), done, refused (reason), rolled_back, deferred (rate limit)",
        labels=["pool", "mode", "decision", "reason"])
    waiting = GaugeMetricFamily("vfpick_heal_waiting", "NICs of running domains on a dead link "
                                "that self-healing has not decided about yet (hold-down)",
                                labels=["pool"])
    counts, waits = healer.counts() if healer is not None else ({}, {})
    pools = healer.pools if healer is not None else {}
    for name, pool in sorted(pools.items()):
        # Zeros for the usual series, so rate() and alerts see them before the first death.
        for decision in ("planned", "done", "refused", "rolled_back"):
            counts.setdefault((name, pool.heal, decision, ""), 0)
        waiting.add_metric([name], waits.get(name, 0))
    for (pool_name, mode, decision, reason), n in sorted(counts.items()):
        decisions.add_metric([pool_name, mode, decision, reason], n)
    return [decisions, waiting]


def build_info():
    return InfoMetricFamily("vfpick_build", "vfpick version and the Python that runs it",
                            value={"version": vfpick.__version__, "python": platform.python_version()})


class _Families:
    """A collector; ``load`` is called on every scrape and returns the families."""

    def __init__(self, load):
        self.load = load

    def collect(self):
        return self.load()


def registry_for(load):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(load))
    return registry


def exposition(config):
    """The text exposition of *config*'s host, as bytes."""
    snapshot = families(gather(config))
    return generate_latest(registry_for(lambda: snapshot))


def write_textfile(config, directory):
    """Writes DIRECTORY/vfpick.prom atomically: a temp file created exclusively and never
    through a symlink (the directory is node_exporter's, maybe not root's alone), mode 0644
    whatever the umask, fsync'd, renamed into place, the directory fsync'd."""
    if not os.path.isdir(directory):
        raise VfpickError("--textfile %s: not a directory (node_exporter's "
                          "--collector.textfile.directory)" % directory)
    # Gathered before anything is written: a failure leaves no temp file behind.
    snapshot = families(gather(config))
    data = generate_latest(registry_for(lambda: snapshot))
    path = os.path.join(directory, TEXTFILE_NAME)
    temp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except FileExistsError:
        raise VfpickError("cannot write %s: its temp file %s already exists (planted, or left "
                          "by a crash); remove it" % (path, temp)) from None
    except OSError as e:
        raise VfpickError("cannot write %s: %s" % (path, e.strerror or e)) from None
    try:
        try:
            os.fchmod(fd, 0o644)  # node_exporter reads it; the umask must not decide
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise VfpickError("cannot write %s: %s" % (path, e.strerror or e)) from None
    return path


# ------------------------------------------------------------------ /metrics for `vfpick watch`
REQUEST_TIMEOUT = 10  # seconds a client may take for its whole request: a stuck one frees its thread
MAX_HANDLERS = 8  # scrapes served at once; a connection past that is closed at once


def is_loopback(host):
    """True when *host* (an address or 'localhost') is only reachable from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to later


def parse_listen(text):
    """'ADDR:PORT' or '[V6ADDR]:PORT' -> (addr, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = numbers.whole(port, 0, 65535)
    if not sep or not host or number is None:
        raise VfpickError("--metrics-listen %r: want ADDR:PORT, e.g. 127.0.0.1:9731 or [::1]:9731"
                          % text)
    return host, number


def _live(config, log, extra=None):
    def load():
        try:
            return families(gather(config)) + (extra() if extra else [])
        except VfpickError as e:
            # The scrape still answers, with build info only: the gap shows in Prometheus and
            # the reason in the journal, and the watcher goes on.
            log("metrics: %s" % e)
            return [build_info()]
    return load


def serve(config, listen, log, request_timeout=REQUEST_TIMEOUT, max_handlers=MAX_HANDLERS,
          extra=None):
    """Serves /metrics on *listen* from a daemon thread; returns the server (``shutdown()``).
    extra() -> more families of the serving process (the watcher's self-healing counts).

    At most *max_handlers* requests are served at once, each within *request_timeout* seconds
    for receiving it (and as much again for the answer)."""
    import socket
    import threading
    from http.server import ThreadingHTTPServer

    from prometheus_client import MetricsHandler

    import io
    import time

    host, port = parse_listen(listen)
    slots = threading.BoundedSemaphore(max_handlers)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

        def process_request(self, request, client_address):
            # Bounded threads: past max_handlers in flight, the next connection waits (the
            # rest queue in the listen backlog), and is closed unserved if no slot frees in time.
            if not slots.acquire(timeout=request_timeout):
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

        def handle_error(self, request, client_address):
            # Not socketserver's traceback on stderr per client: a client that resets or
            # stalls is its own business (nothing logged); anything else is one log line.
            import sys

            error = sys.exc_info()[1]
            if isinstance(error, (ConnectionError, TimeoutError)):
                return
            log("metrics: request from %s failed: %s" % (
                client_address[0] if client_address else "?",
                " ".join(str(error).split())[:200] or type(error).__name__))

    class Deadline(io.RawIOBase):
        """The connection's reads, each with what is left of REQUEST_TIMEOUT: a client sending
        a byte every few seconds cannot hold its thread longer than that."""

        def __init__(self, sock):
            super().__init__()
            self.sock, self.end = sock, time.monotonic() + request_timeout

        def readable(self):
            return True

        def readinto(self, buf):
            left = self.end - time.monotonic()
            if left <= 0:
                raise TimeoutError("request not received within %g s" % request_timeout)
            self.sock.settimeout(left)
            return self.sock.recv_into(buf)

    class Handler(MetricsHandler.factory(registry_for(_live(config, log, extra)))):
        timeout = request_timeout

        def setup(self):
            super().setup()
            self.rfile = io.BufferedReader(Deadline(self.connection))

        def do_GET(self):
            self.connection.settimeout(request_timeout)  # the answer gets its own time
            super().do_GET()

    try:
        server = Server((host, port), Handler)
    except OSError as e:
        raise VfpickError("--metrics-listen %s: %s" % (listen, e.strerror or e)) from None
    if not is_loopback(host):
        log("warning: --metrics-listen %s is not a loopback address: anyone who can reach it "
            "sees this host's VFs and domain names; bind 127.0.0.1 or firewall it" % listen)
    threading.Thread(target=server.serve_forever, daemon=True, name="vfpick-metrics").start()
    return server
