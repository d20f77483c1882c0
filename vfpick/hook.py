"""The libvirt qemu hook: ``hooks/qemu NAME OP SUBOP EXTRA`` with the domain XML on stdin.

libvirt discards stdout for prepare/start/started, so a start cannot be rewritten here:
``prepare begin`` is the gatekeeper (verify, claim, activate), ``release end`` deactivates,
``reconnect begin`` re-asserts, and ``migrate begin``/``restore begin`` are filters that
re-resolve against this host and print the new XML.

Fail open for what is not vfpick's, closed for what is. A domain is vfpick's when its XML has
vfpick's metadata, a pool interface, or a VF of a pool PF. That is decided before anything that
can fail is loaded: a byte search first (no metadata, no network or hostdev device: done, with
nothing imported), then the expat scan and the config. Only vfpick's own domains touch the
state (and its lock); a fault on their path refuses them with one ``vfpick:`` line.
Never a traceback; exit 0 or 1 only.
"""

import os
import sys

# libvirt cannot hold a larger domain (its RPC messages stop at 32 MiB): more is drained unkept.
# Well past domscan.MAX_BYTES, so XML too large to scan still shows its pools' names.
MAX_KEPT = 32 << 20
# domscan.NS without its scheme; the byte search needs no import.
NS_MARK = b"vfpick.org/xmlns/libvirt/domain/1.0"
# Every domain vfpick could care about holds one of these words (libvirt writes them literally).
MARKS = (NS_MARK, b"network", b"hostdev")
# The ops vfpick acts on; every other one (start, started, stopped, ...) exits 0 at once. The
# installed hook's sh part exits for those before starting Python (installhook).
WANTED = (("prepare", "begin"), ("release", "end"), ("reconnect", "begin"),
          ("migrate", "begin"), ("restore", "begin"))
# Where libvirt keeps networks when the config (and its libvirt_config_dir) cannot be read.
NETWORK_DIRS = ("/etc/libvirt/qemu/networks", "/run/libvirt/network")
# The layout of install-hook's reading of the config it bakes (installhook.known_config): a
# hook baked for another layout parses the config.
KNOWN_FORMAT = 1


def config_stamp(st):
    """What tells the config changed since install-hook read it: its ctime too, which no tool
    sets back (``cp -p``, ``touch -r`` and ``rsync -t`` restore mtime, and the size may match)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_input(stream):
    """(data, marks): the XML (its first MAX_KEPT bytes) and which MARKS occur in all of it."""
    chunks, size, found, tail = [], 0, set(), b""
    while True:
        try:
            chunk = stream.read(1 << 20)
        except (OSError, ValueError):
            chunk = b""
        if not chunk:
            break
        window = tail + chunk
        found.update(m for m in MARKS if m in window)
        tail = window[-len(NS_MARK):]
        if size < MAX_KEPT:
            chunks.append(chunk[:MAX_KEPT - size])
        size += len(chunk)
    return b"".join(chunks), found


def _shell_word(text):
    # The command we print must survive copy-paste for any domain name.
    from vfpick.names import shell_word

    return shell_word(text)


class Refusal(Exception):
    """The hook refuses the operation; str() is the one-line reason."""


def _running_others(config, uuid):
    from vfpick import domscan
    from vfpick.config import running_cache_path

    used = domscan.scan_running(config.libvirt_run_dir, cache_path=running_cache_path(config))
    return {vf: owner for vf, owner in used.items() if owner.uuid != uuid}


def _domain_vfs(config, facts):
    """domscan.DomainVf of every VF of the domain vfpick manages or must guard."""
    from vfpick import config as configmod, pci
    from vfpick.domscan import DomainVf

    meta = {n.mac: n for n in facts.meta_nics}
    pool_of_pf = configmod.pool_of_pf(config.pools)
    out = []
    for vf, mac in facts.hostdev_vfs:
        nic = meta.get(mac) if mac else None
        pf = pci.physfn(config.sysfs_root, vf)
        pool = pool_of_pf.get(pf) if pf else None
        if nic is not None and nic.pool in config.pools:
            pool = config.pools[nic.pool]
        out.append(DomainVf(vf=vf, mac=mac, pf=pf, pool=pool, managed=nic is not None, nic=nic))
    return out


def one_thread():
    """True in a process that runs one thread, whose claims store then need not import
    threading (2-4 % of ``release end``). Threads are made through threading, so a process
    that has not imported it (the installed hook) has one; a test calling run() has imported it."""
    return "threading" not in sys.modules


def prepare(config, name, facts, netlink_factory=None, reassert=False):
    """Verifies and activates the domain's claims. Raises Refusal (or VfpickError).

    Returns warnings: with reassert (reconnect), conflicts are reported, not raised.
    """
    from vfpick.records import Claim
    from vfpick.state import StateStore

    uuid = facts.uuid
    unresolved = [net for net, _ in facts.networks if net in config.pools]
    if unresolved and not reassert:
        raise Refusal(
            "domain '%s' has unresolved pool interfaces (network %s); libvirt cannot start a pool "
            "interface: resolve it with 'vfpick repick %s' (or define it with 'vfpick define', or "
            "run 'vfpick watch')" % (name, ", ".join("'%s'" % n for n in sorted(set(unresolved))),
                                     _shell_word(name)))
    vfs = _domain_vfs(config, facts)
    if not vfs:
        return []
    if not uuid:
        raise Refusal("domain '%s' has no <uuid>" % name)
    running = _running_others(config, uuid)
    ready, warnings, link_of = [], [], {}

    def conflict(message):
        if not reassert:
            raise Refusal(message)
        warnings.append(message)

    with StateStore.for_config(config, one_thread=one_thread()).transaction() as claims:
        for dvf in vfs:
            vf, mac, pf, pool = dvf.vf, dvf.mac, dvf.pf, dvf.pool
            held = claims.get(vf)
            if held is not None and held.uuid != uuid:
                conflict("VF %s of domain '%s' is held by domain '%s' (%s); %s, or free it with "
                         "'vfpick release %s' if '%s' no longer needs it"
                         % (vf, name, held.domain, held.uuid, _fix(name, dvf.managed, pool),
                            _shell_word(held.uuid), held.domain))
                continue
            if vf in running:
                conflict("VF %s of domain '%s' is in use by running domain '%s'; %s"
                         % (vf, name, running[vf].name, _fix(name, dvf.managed, pool)))
                continue
            if pool is None and held is None:
                continue  # a passthrough device that is not vfpick's business
            if pf is None:
                conflict("VF %s of domain '%s' no longer exists on this host (sriov_numvfs "
                         "changed?); pick another with 'vfpick repick %s'"
                         % (vf, name, _shell_word(name)))
                continue
            if held is not None:
                claim = held._replace(active=True, domain=name)
            else:
                # Only a VF nobody claimed yet (hand-edited XML, lost state) needs the links:
                # the full sysfs scan stays off the common path.
                if pool and not link_of:
                    from vfpick.host import topology

                    link_of = topology.for_config(config).link_of
                link = link_of.get(pf, pf)
                from vfpick.errors import XmlError

                try:
                    rates = _meta_rates(config, name, dvf, pool, claims, ready)
                except (Refusal, XmlError) as e:
                    conflict(str(e))  # raises, but on a reconnect: the guest runs on it already,
                    from vfpick.bandwidth import claim_rates  # so its claim records it, rateless

                    rates = claim_rates(None)
                claim = Claim(vf=vf, pf=pf, link=link, pool=pool.name if pool else "",
                              domain=name, uuid=uuid, mac=mac or "", active=True,
                              pending=None, applied=None, restore=None, **rates)
            ready.append((claim, pool))
        # Every refusal is raised above, before any VF is touched.
        _put_with_vf_settings(config, claims, ready, netlink_factory, reassert, warnings)
    return warnings


def _meta_rates(config, name, dvf, pool, claims, ready):
    """The claim rates of a VF nobody claimed, from the domain's metadata (a lost claim is not a
    lost guarantee). The metadata is the domain's own XML: its rates are checked as a pool
    interface's <bandwidth> is (XmlError), and under guarantee = yes they must fit on the link
    beside every other claim, as a new pick's must (Refusal)."""
    from vfpick.bandwidth import of_meta

    rates = of_meta(dvf.nic)
    if pool is not None and pool.guarantee and (rates["rate_mbps"] or rates["min_rate_mbps"]):
        from vfpick.plan import policy
        from vfpick.host import topology

        others = dict(claims.mapping())
        others.update((claim.vf, claim) for claim, _pool in ready)
        problem = policy.room_problem(topology.for_config(config), pool.pfs, others, dvf.vf,
                                      rates["rate_mbps"], rates["min_rate_mbps"])
        if problem:
            raise Refusal("VF %s of domain '%s': %s; lower the NIC's <bandwidth> and run "
                          "'vfpick repick %s'" % (dvf.vf, name, problem, _shell_word(name)))
    return rates


def _fix(name, managed, pool):
    """How to get the domain another VF: repick moves only NICs vfpick handed out."""
    if managed:
        return "pick another with 'vfpick repick %s'" % _shell_word(name)
    pool = pool.name if pool is not None else "NAME"
    return ("'%s' names this VF by hand (no vfpick metadata for it), so 'vfpick repick' cannot "
            "move it: ask for a NIC from pool '%s' instead (<interface type='network'><source "
            "network='%s'/>) and run 'vfpick repick %s'" % (name, pool, pool, _shell_word(name)))


def _put_with_vf_settings(config, claims, ready, netlink_factory, reassert, warnings):
    """Puts the claims; sets the pools' trust/spoofchk and the NICs' rates, recording what to
    put back (not on a reconnect: the running guest has them already). A failure takes back
    this run's changes; a rate the driver refuses outside guarantee = yes goes to *warnings*."""
    from vfpick.host import vfsettings

    netlink, first_set = vfsettings.Netlink(netlink_factory), []
    try:
        for claim, pool in ready:
            if not reassert and vfsettings.wanted(claim, pool):
                fresh = claim.applied is None
                try:
                    claim = vfsettings.apply(config, claim, pool, netlink, warnings)
                except LookupError as e:
                    raise Refusal(str(e))
                if fresh:
                    first_set.append(claim)
            claims.put(claim)
    except BaseException:
        # The transaction writes nothing now: no VF may keep settings no claim records.
        vfsettings.put_back(config, first_set, netlink=netlink)
        raise
    finally:
        netlink.close()


def _site_packages():
    """The installed hook runs with ``-S`` (no ``site``: start-up speed on every VM start), so
    site-packages is not on sys.path; the migrate/restore filters (lxml) need it. Appended
    after the baked package dir, so an installed copy never shadows it."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


def release(config, name, facts, netlink_factory=None):
    """Deactivates the domain's claims; drops them when it has no persistent definition
    (putting back the VF settings vfpick applied). Returns warnings."""
    from vfpick.state import StateStore

    if not facts.uuid:
        return []
    store = StateStore.for_config(config, one_thread=one_thread())
    try:
        os.lstat(store.path)
    except FileNotFoundError:
        return []  # no claims at all: create nothing (not even the state dir or its lock)
    except OSError:
        pass  # the transaction names what is wrong with the state dir
    definition_path = os.path.join(config.libvirt_config_dir, name + ".xml")
    persistent = os.path.exists(definition_path) if "/" not in name else False
    definition = _definition(definition_path) if persistent else None
    with store.transaction() as claims:
        mine = claims.for_uuid(facts.uuid)
        if not mine:
            return []
        if not persistent:
            from vfpick.host import vfsettings

            return vfsettings.put_back(config, claims.drop_uuid(facts.uuid), netlink_factory)
        # What only the ending live domain used (a --live-only NIC) ends with it; the
        # definition's own claims stay, reserved. Unreadable definition: nothing is dropped.
        ended = _unused(mine, definition)
        for claim in mine:
            if claim in ended:
                claims.drop(claim.vf)
            elif claim.active:
                claims.put(claim._replace(active=False))
        if ended:
            from vfpick.host import vfsettings

            return vfsettings.put_back(config, ended, netlink_factory)
    return []


def _definition(path):
    """DomainFacts of the persistent definition at *path*, or None when it cannot be scanned."""
    from vfpick import domscan
    from vfpick.errors import XmlError

    try:
        return domscan.scan_file(path)
    except (OSError, XmlError):
        return None


def _unused(mine, definition):
    if definition is None:
        return []
    from vfpick import stale

    return stale.unused_claims(mine, [definition])


def refilter(config, data):
    """migrate/restore: re-resolve against this host's pools; XML to print, or b'' if unchanged."""
    from vfpick import resolver

    # The hook never refuses a network that is not a pool: libvirt checks those itself.
    result = resolver.resolve(config, data, network_exists=lambda _name: True)
    return result.xml if result.changed else b""


def run(argv, stdin=None, stdout=None, stderr=None, config_path=None, netlink_factory=None,
        known=None):
    """Entry point used by hooks/qemu. Returns the exit status (0 or 1).

    known: what install-hook read in the config at *config_path* (installhook.known_config)."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    if len(argv) < 2:
        stderr.write("vfpick: hook usage: qemu NAME OP SUBOP EXTRA (run by libvirt)\n")
        return 1
    name, op = argv[0], argv[1]
    subop = argv[2] if len(argv) > 2 else "-"
    data, marks = read_input(stdin)
    if (op, subop) not in WANTED or not marks:
        return 0
    # A failed reconnect makes libvirt kill a running guest, and release's status is ignored:
    # those report and exit 0; the gatekeeping and filter ops refuse with 1.
    failed = 0 if op in ("release", "reconnect") else 1
    try:
        decided = _decide(name, op, data, marks, stderr, config_path, known)
    except Refusal as e:
        stderr.write("vfpick: %s\n" % _one_line(e))
        return failed
    except Exception as e:  # noqa: BLE001 - vfpick itself is broken (a module gone mid-upgrade)
        # Nothing but the bytes can tell whose the domain is: only vfpick's metadata says "ours".
        why = _broken(e)
        if NS_MARK in marks:
            stderr.write("vfpick: refusing domain '%s', which has vfpick metadata: %s\n"
                         % (name, why))
            return failed
        if op != "release" and op != "reconnect":
            stderr.write("vfpick: warning: %s; domain '%s' left alone\n" % (why, name))
        return 0
    if decided is None:
        return 0
    try:
        name = _checked_name(name, decided[1])
        return _act(name, op, data, stdout, stderr, netlink_factory, *decided)
    except Refusal as e:
        stderr.write("vfpick: %s\n" % _one_line(e))
        return failed
    except Exception as e:  # noqa: BLE001 - the hook must never show libvirt a traceback
        try:
            from vfpick.errors import VfpickError
        except Exception:  # noqa: BLE001 - even errors.py may be gone
            VfpickError = ()
        if isinstance(e, VfpickError):
            stderr.write("vfpick: %s\n" % _one_line(e))
        elif isinstance(e, ImportError):
            stderr.write("vfpick: refusing domain '%s', which is vfpick's: %s\n" % (name, _broken(e)))
        else:
            stderr.write("vfpick: internal error in the %s hook: %s: %s\n"
                         % (op, type(e).__name__, _one_line(e)))
        return failed


def _checked_name(argv_name, facts):
    """The domain's name for the claims: its XML's <name> (libvirt's own record) over argv;
    Refusal when it holds control characters or is not UTF-8."""
    from vfpick import names

    name = facts.name if facts is not None and facts.name else argv_name
    why = names.problem(name)
    if why:
        raise Refusal("domain name '%s' %s; rename the domain" % (names.printable(name), why))
    return name


def _broken(e):
    """Why vfpick cannot run: its package is broken (a module gone mid-upgrade, a bad edit)."""
    return "vfpick in %s cannot run (%s: %s); reinstall vfpick" % (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), type(e).__name__, _one_line(e))


def _one_line(e):
    return " ".join(str(e).split())


def whose(config, facts, data, marks):
    """Why the domain is vfpick's (a short phrase), or None when it is not.

    config or facts may be None (config or XML unreadable): then decide from what is left,
    and fail open only where neither metadata nor a possible pool interface says "ours".
    """
    if facts is None:
        if NS_MARK in marks:
            return "it has vfpick metadata"
        for pool in (config.pools if config is not None else ()):
            for quote in (b"'", b'"'):
                if b"network=" + quote + pool.encode() + quote in data:
                    return "it names pool '%s'" % pool
        return None
    if facts.vfpick_meta:
        return "it has vfpick metadata"
    if config is None:
        # Pools cannot be told from libvirt networks: a network libvirt does not have may be
        # an unresolved pool (and libvirt would refuse the start anyway).
        from vfpick.config import network_file_exists

        for net, _ in facts.networks:
            if not network_file_exists(NETWORK_DIRS, net):
                return "network '%s' is not a libvirt network, so it may be a vfpick pool" % net
        return None
    for net, _ in facts.networks:
        if net in config.pools:
            return "it asks for pool '%s'" % net
    # No vfpick metadata here, so a VF's pool can only come from its PF: prepare's own reading.
    for dvf in _domain_vfs(config, facts):
        if dvf.pool is not None:
            return "VF %s is on PF %s of pool '%s'" % (dvf.vf, dvf.pf, dvf.pool.name)
    return None


def _no_vf_of_a_pool(facts, config_path, known):
    """True when *facts* cannot be vfpick's by what install-hook read in the config (*known*),
    which still holds while the config's stamp is unchanged: no vfpick metadata, no pool
    interface, no PCI device with a ``physfn`` (a GPU, an NVMe: no VF, so no pool's). False
    when that cannot be told so cheaply: then the config is parsed."""
    if known is None or facts.vfpick_meta or not config_path:
        return False
    try:
        _format, stamp, sysfs_root, pools = known
        if any(net in pools for net, _ in facts.networks):
            return False
        if config_stamp(os.stat(config_path)) != tuple(stamp):
            return False
        from vfpick import pci

        return not any(pci.physfn(sysfs_root, vf) for vf, _ in facts.hostdev_vfs)
    except Exception:  # noqa: BLE001 - a bad baked value or stat: the config decides, as always
        return False


def _decide(name, op, data, marks, stderr, config_path, known=None):
    """(config, facts) of a domain that is vfpick's, None when it is not (warned, if need be).

    Raises Refusal when it is vfpick's but cannot be checked."""
    from vfpick import domscan
    from vfpick.errors import XmlError

    facts = config = unread = None
    try:
        facts = domscan.scan(data)
    except XmlError as e:
        unread = "its XML cannot be read (%s)" % e
    if facts is not None and _no_vf_of_a_pool(facts, config_path, known):
        return None
    from vfpick import config as configmod
    from vfpick.errors import ConfigError

    try:
        config = configmod.load(config_path or configmod.config_path())
    except ConfigError as e:
        unread = unread or str(e)
    why = whose(config, facts, data, marks)
    if why is None:
        if unread and op == "prepare":
            stderr.write("vfpick: warning: domain '%s' left alone, not vfpick's as far as it can "
                         "tell: %s\n" % (name, unread))
        return None
    if unread:
        raise Refusal("cannot check domain '%s', which is vfpick's (%s): %s" % (name, why, unread))
    return config, facts


def _act(name, op, data, stdout, stderr, netlink_factory, config, facts):
    if op in ("prepare", "reconnect"):
        for warning in prepare(config, name, facts, netlink_factory, reassert=op == "reconnect"):
            stderr.write("vfpick: warning: %s\n" % " ".join(warning.split()))
    elif op == "release":
        for warning in release(config, name, facts, netlink_factory):
            stderr.write("vfpick: warning: %s\n" % " ".join(warning.split()))
    else:
        _site_packages()
        xml = refilter(config, data)
        if xml:
            stdout.write(xml)
            stdout.flush()
    return 0
