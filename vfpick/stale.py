"""Stale claims: claims whose domain libvirt no longer has, found without calling libvirt.

A claim is stale when no persistent definition in ``libvirt_config_dir`` and no live status
XML in ``libvirt_run_dir`` (a running transient domain) carries its domain's UUID. Both dirs
are scanned with vfpick.domscan (expat, bounded), so this works where libvirt cannot be asked
(metrics, a host whose daemon is down). When a dir cannot be read, or one of its files cannot
be scanned, nothing that could live in it is called stale: a false "stale" invites an operator
to release a VF that a domain still uses.
"""

import os

from vfpick import domscan
from vfpick.errors import XmlError


class _Unknown(Exception):
    """The directory could not be listed: nothing can be said about what it holds."""


def _uuids_in(directory):
    """(uuids, names of files that could not be scanned) of the domain XML files in *directory*."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return set(), set()
    except OSError:
        raise _Unknown(directory) from None
    uuids, unsure = set(), set()
    for fname in names:
        if not fname.endswith(".xml") or fname.startswith("."):
            continue
        path = os.path.join(directory, fname)
        try:
            facts = domscan.scan_file(path)
        except (OSError, XmlError):
            unsure.add(fname[:-4])
            continue
        if facts.uuid:
            uuids.add(facts.uuid)
        else:
            unsure.add(facts.name or fname[:-4])
    return uuids, unsure


def stale_uuids(config, claims):
    """frozenset of the UUIDs of *claims* (iterable of Claim) whose domain libvirt no longer has."""
    try:
        defined, unsure = _uuids_in(config.libvirt_config_dir)
        running, unsure_running = _uuids_in(config.libvirt_run_dir)
    except _Unknown:
        return frozenset()
    known = defined | running
    unsure |= unsure_running
    return frozenset(c.uuid for c in claims if c.uuid not in known and c.domain not in unsure)
