"""The libvirt qemu hook: ``hooks/qemu NAME OP SUBOP EXTRA`` with the domain XML on stdin.

libvirt discards stdout for prepare/start/started, so a start cannot be rewritten here:
``prepare begin`` is the gatekeeper (verify, claim, activate), ``release end`` deactivates,
``reconnect begin`` re-asserts, and ``migrate begin``/``restore begin`` are filters that
re-resolve against this host and print the new XML.

This runs on every VM start: prepare/release/reconnect import nothing heavier than expat and
``_json`` (no ``re``, lxml, libvirt or typing). Never a traceback; exit 0 or 1 only.
"""

import os
import sys

# domscan.MAX_BYTES, not imported: the no-op ops (start, started, stopped) stay import-free.
MAX_XML = 4 << 20


def _shell_word(text):
    # The command we print must survive copy-paste for any domain name.
    if text and all(c.isalnum() or c in "-_.:@%+=" for c in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


class Refusal(Exception):
    """The hook refuses the operation; str() is the one-line reason."""


def _facts(data):
    from vfpick import domscan

    return domscan.scan(data)


def _running_others(config, uuid):
    from vfpick import domscan
    from vfpick.config import running_cache_path

    used = domscan.scan_running(config.libvirt_run_dir, cache_path=running_cache_path(config))
    return {vf: owner for vf, owner in used.items() if owner[0] != uuid}


def _domain_vfs(config, facts):
    """(vf, mac, pf, pool, managed) for every VF of the domain vfpick manages or must guard."""
    from vfpick import config as configmod, topology

    meta = {n.mac: n for n in facts.meta_nics}
    pool_of_pf = configmod.pool_of_pf(config)
    out = []
    for vf, mac in facts.hostdev_vfs:
        nic = meta.get(mac) if mac else None
        pf = topology.physfn(config.sysfs_root, vf)
        pool = pool_of_pf.get(pf) if pf else None
        if nic is not None and nic.pool in config.pools:
            pool = config.pools[nic.pool]
        out.append((vf, mac, pf, pool, nic is not None))
    return out


def prepare(config, name, facts, netlink_factory=None, reassert=False):
    """Verifies and activates the domain's claims. Raises Refusal (or VfpickError).

    Returns warnings: with reassert (reconnect), conflicts are reported, not raised.
    """
    from vfpick import topology
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
    settings, warnings, link_of = [], [], {}

    def conflict(message):
        if not reassert:
            raise Refusal(message)
        warnings.append(message)

    with StateStore.for_config(config).transaction() as claims:
        for vf, mac, pf, pool, _managed in vfs:
            held = claims.get(vf)
            if held is not None and held.uuid != uuid:
                conflict("VF %s of domain '%s' is held by domain '%s' (%s); pick another with "
                         "'vfpick repick %s'" % (vf, name, held.domain, held.uuid, _shell_word(name)))
                continue
            if vf in running:
                conflict("VF %s of domain '%s' is in use by running domain '%s'; pick another "
                         "with 'vfpick repick %s'" % (vf, name, running[vf][1], _shell_word(name)))
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
                    link_of = topology.for_config(config).link_of
                link = link_of.get(pf, pf)
                claim = Claim(vf=vf, pf=pf, link=link, pool=pool.name if pool else "",
                              domain=name, uuid=uuid, mac=mac or "", active=True)
            claims.put(claim)
            if pool is not None and (pool.trust is not None or pool.spoofchk is not None):
                settings.append((vf, pf, pool))
        if settings and not reassert:
            _apply_vf_settings(config, settings, netlink_factory)
    return warnings


def _site_packages():
    """The installed hook runs with ``-S`` (no ``site``: start-up speed on every VM start), so
    site-packages is not on sys.path; the migrate/restore filters (lxml) need it. Appended
    after the baked package dir, so an installed copy never shadows it."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


def _apply_vf_settings(config, settings, netlink_factory):
    from vfpick import topology

    if netlink_factory is None:
        # set_vf is standard library only (vfpick.rtnl): no site-packages, no pyroute2.
        from vfpick.netlink import open_netlink as netlink_factory
    nl = netlink_factory()
    for vf, pf, pool in settings:
        record, _ = topology.read_pf(config.sysfs_root, pf, with_vfs=False)
        index = topology.vf_index(config.sysfs_root, pf, vf)
        if record is None or record.netdev is None or index is None:
            raise Refusal("cannot apply trust/spoofchk to VF %s: PF %s has no netdev" % (vf, pf))
        nl.set_vf(record.netdev, index, trust=pool.trust, spoofchk=pool.spoofchk)


def release(config, name, facts):
    """Deactivates the domain's claims; drops them when it has no persistent definition."""
    from vfpick.state import StateStore

    if not facts.uuid:
        return
    persistent = os.path.exists(os.path.join(config.libvirt_config_dir, name + ".xml")) \
        if "/" not in name else False
    with StateStore.for_config(config).transaction() as claims:
        mine = claims.for_uuid(facts.uuid)
        if not mine:
            return
        if not persistent:
            claims.drop_uuid(facts.uuid)
            return
        for claim in mine:
            if claim.active:
                claims.put(claim._replace(active=False))


def refilter(config, data):
    """migrate/restore: re-resolve against this host's pools; XML to print, or b'' if unchanged."""
    from vfpick import resolver

    # The hook never refuses a network that is not a pool: libvirt checks those itself.
    result = resolver.resolve(config, data, network_exists=lambda _name: True)
    return result.xml if result.changed else b""


def run(argv, stdin=None, stdout=None, stderr=None, config_path=None, netlink_factory=None):
    """Entry point used by hooks/qemu. Returns the exit status (0 or 1)."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    if len(argv) < 2:
        stderr.write("vfpick: hook usage: qemu NAME OP SUBOP EXTRA (run by libvirt)\n")
        return 1
    name, op = argv[0], argv[1]
    subop = argv[2] if len(argv) > 2 else "-"
    wanted = {("prepare", "begin"), ("release", "end"), ("reconnect", "begin"),
              ("migrate", "begin"), ("restore", "begin")}
    try:
        data = stdin.read(MAX_XML + 1)
    except (OSError, ValueError):
        data = b""
    if (op, subop) not in wanted:
        return 0
    # A failed reconnect makes libvirt kill a running guest, and release's status is ignored:
    # those report and exit 0; the gatekeeping and filter ops refuse with 1.
    failed = 0 if op in ("release", "reconnect") else 1
    try:
        return _dispatch(name, op, data, stdout, stderr, config_path, netlink_factory)
    except Refusal as e:
        stderr.write("vfpick: %s\n" % " ".join(str(e).split()))
        return failed
    except Exception as e:  # noqa: BLE001 - the hook must never show libvirt a traceback
        from vfpick.errors import VfpickError

        if isinstance(e, VfpickError):
            stderr.write("vfpick: %s\n" % e)
        else:
            stderr.write("vfpick: internal error in the %s hook: %s: %s\n"
                         % (op, type(e).__name__, " ".join(str(e).split())))
        return failed


def _dispatch(name, op, data, stdout, stderr, config_path, netlink_factory):
    from vfpick import config as configmod
    from vfpick.errors import ConfigError

    facts = _facts(data)
    # release still looks up claims: the domain's hostdevs may have been edited away.
    if not facts.interesting and op != "release":
        return 0
    try:
        config = configmod.load(config_path or configmod.config_path())
    except ConfigError:
        if not facts.hostdev_vfs and not facts.meta_nics:
            # Without a config we cannot tell pools from libvirt networks: never block those.
            return 0
        raise
    if op == "prepare":
        prepare(config, name, facts, netlink_factory)
    elif op == "reconnect":
        for warning in prepare(config, name, facts, netlink_factory, reassert=True):
            stderr.write("vfpick: warning: %s\n" % " ".join(warning.split()))
    elif op == "release":
        release(config, name, facts)
    else:
        _site_packages()
        xml = refilter(config, data)
        if xml:
            stdout.write(xml)
            stdout.flush()
    return 0
