"""Stale claims: claims whose domain libvirt no longer has, found without calling libvirt.

A claim is stale when no persistent definition in ``libvirt_config_dir`` and no live status
XML in ``libvirt_run_dir`` (a running transient domain) carries its domain's UUID. Both dirs
are scanned with vfpick.domscan (expat, bounded), so this works where libvirt cannot be asked
(metrics, a host whose daemon is down). When a dir cannot be read, or one of its files cannot
be scanned, nothing that could live in it is called stale: a false "stale" invites an operator
to release a VF that a domain still uses.
"""

import os
from collections import namedtuple

from vfpick import domscan
from vfpick.errors import XmlError

DomainIndex = namedtuple("DomainIndex", "defined running unsure")
DomainIndex.__doc__ = """What the domain dirs hold. defined / running: {uuid: DomainFacts} of
``libvirt_config_dir`` / ``libvirt_run_dir``; unsure: names of files that could not be scanned."""


class _Unknown(Exception):
    """The directory could not be listed: nothing can be said about what it holds."""


def _scan_dir(directory, unsure):
    """{uuid: DomainFacts} of the domain XML files in *directory*; adds unscannable names to *unsure*."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return {}
    except OSError:
        raise _Unknown(directory) from None
    found = {}
    for fname in names:
        if not fname.endswith(".xml") or fname.startswith("."):
            continue
        try:
            facts = domscan.scan_file(os.path.join(directory, fname))
        except (OSError, XmlError):
            unsure.add(fname[:-4])
            continue
        if facts.uuid:
            found[facts.uuid] = facts
        else:
            unsure.add(facts.name or fname[:-4])
    return found


def domain_index(config):
    """DomainIndex of the config's domain dirs, or None when one of them cannot be listed."""
    unsure = set()
    try:
        defined = _scan_dir(config.libvirt_config_dir, unsure)
        running = _scan_dir(config.libvirt_run_dir, unsure)
    except _Unknown:
        return None
    return DomainIndex(defined, running, frozenset(unsure))


def stale_uuids(config, claims, index=None):
    """frozenset of the UUIDs of *claims* (iterable of Claim) whose domain libvirt no longer has.

    index: a DomainIndex already read (default: read the dirs now).
    """
    index = index or domain_index(config)
    if index is None:
        return frozenset()
    return frozenset(c.uuid for c in claims if c.uuid not in index.defined
                     and c.uuid not in index.running and c.domain not in index.unsure)


def lost_vfs(claims, index):
    """frozenset of the VFs of *claims* marked active whose domain runs (its live XML is in the
    run dir) without them: QEMU unplugged the VF (``sriov_numvfs`` lowered and raised under the
    guest; a device removed behind vfpick's back). The recreated VF is back on its host driver;
    the claim still holds it for the definition, but the running guest has no such NIC."""
    if index is None:
        return frozenset()
    out = set()
    for claim in claims:
        live = index.running.get(claim.uuid)
        if claim.active and live is not None and claim.vf not in {
                vf for vf, _mac in live.hostdev_vfs + live.actual_vfs}:
            out.add(claim.vf)
    return frozenset(out)


def unused_claims(claims, definitions):
    """The claims of one domain that none of its *definitions* (DomainFacts of its live and/or
    persistent XML) uses: neither their VF nor their MAC is one of its hostdev NICs. They are
    left over (a NIC removed behind vfpick's back, a --live-only NIC once the domain stopped)
    and must not count as the domain's NICs. A pending claim (a define or attach still waiting
    for libvirt) is never unused: libvirt may be writing the definition that holds it."""
    vfs, macs = set(), set()
    for facts in definitions:
        for vf, mac in facts.hostdev_vfs + facts.actual_vfs:
            vfs.add(vf)
            if mac:
                macs.add(mac)
    return [c for c in claims
            if c.pending is None and c.vf not in vfs and not (c.mac and c.mac in macs)]


def domain_facts(index, uuid):
    """The DomainFacts of *uuid* in *index*: the live XML (what runs now) before the definition
    (what runs next); None when *index* is None or has neither."""
    if index is None:
        return None
    return index.running.get(uuid) or index.defined.get(uuid)
