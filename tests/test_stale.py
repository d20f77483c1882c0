"""vfpick.stale: claims whose domain has neither a persistent definition nor live XML."""

import os

import pytest

from vfpick import stale
from vfpick.records import Claim

UUIDS = {name: "%08d-0000-4000-8000-000000000000" % i for i, name in enumerate(["a", "b", "c", "d"], 1)}


def claim(name, vf="0000:3c:00.0"):
    return Claim(vf=vf, pf="0000:3b:00.0", link="ens1f0", pool="fast", domain=name,
                 uuid=UUIDS[name], mac="52:54:00:00:00:01", active=False)


def domain_xml(name, uuid=None, status=False):
    dom = "<domain type='qemu'><name>%s</name>%s</domain>" % (
        name, "<uuid>%s</uuid>" % uuid if uuid else "")
    return "<domstatus state='running'>%s</domstatus>" % dom if status else dom


def write(directory, fname, text):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, fname), "w") as f:
        f.write(text)


@pytest.mark.parametrize("persistent, live, expected", [
    (True, False, False),    # defined, stopped
    (True, True, False),     # defined, running
    (False, True, False),    # transient, running
    (False, False, True),    # gone
])
def test_stale_iff_neither_definition_nor_live_xml(host, persistent, live, expected):
    config = host.write_config()
    if persistent:
        write(host.config_dir, "a.xml", domain_xml("a", UUIDS["a"]))
    if live:
        write(host.run_dir, "a.xml", domain_xml("a", UUIDS["a"], status=True))
    assert stale.stale_uuids(config, [claim("a")]) == (frozenset({UUIDS["a"]}) if expected else frozenset())


def test_matched_by_uuid_not_by_file_name(host):
    # A domain renamed behind vfpick's back: the claim's name is old, the UUID still matches.
    config = host.write_config()
    write(host.config_dir, "renamed.xml", domain_xml("renamed", UUIDS["a"]))
    # Another domain reusing b's old name with another UUID does not keep b's claims alive.
    write(host.config_dir, "b.xml", domain_xml("b", UUIDS["c"]))
    assert stale.stale_uuids(config, [claim("a"), claim("b", vf="0000:3c:00.1")]) == {UUIDS["b"]}


def test_a_file_that_cannot_be_scanned_protects_the_claim_of_that_name(host):
    config = host.write_config()
    write(host.config_dir, "a.xml", "<domain><name>a</name")  # truncated
    write(host.config_dir, "b.xml", "<!DOCTYPE x [<!ENTITY e 'x'>]><domain/>")  # hostile
    assert stale.stale_uuids(config, [claim("a"), claim("b", "0000:3c:00.1"),
                                      claim("c", "0000:3c:00.2")]) == {UUIDS["c"]}


def test_unlistable_dir_calls_nothing_stale(host):
    config = host.write_config()._replace(libvirt_config_dir=os.path.join(host.base, "vfpick.ini"))
    assert stale.stale_uuids(config, [claim("a")]) == frozenset()


def test_missing_dirs_mean_no_domains(host):
    config = host.write_config()._replace(libvirt_config_dir=os.path.join(host.base, "nope"),
                                          libvirt_run_dir=os.path.join(host.base, "nope2"))
    assert stale.stale_uuids(config, [claim("a")]) == {UUIDS["a"]}


def test_status_marks_claims_of_undefined_domains(host):
    """Two resolved domains, one 'defined' (its XML in libvirt_config_dir): status marks the other."""
    from clitools import domain, status_json, vfpick

    host.write_config()
    for name in ("kept", "gone"):
        out = vfpick(host, "resolve", "-", input=domain(name, uuid=UUIDS["a" if name == "kept" else "b"]),
                     check=0).stdout
        if name == "kept":
            write(host.config_dir, "kept.xml", out.decode())
    assert {(c["domain"], c["stale"]) for c in status_json(host)["claims"]} == {
        ("kept", False), ("gone", True)}
    lines = vfpick(host, "status", check=0).stdout.decode().splitlines()
    [gone] = [line for line in lines if line.startswith("gone")]
    [kept] = [line for line in lines if line.startswith("kept")]
    assert "STALE" in gone and "vfpick reconcile" in gone
    assert "STALE" not in kept
