"""vfpick resolve / status / release end to end, as subprocesses on simulated hosts."""

import json
import os
import subprocess
import sys

import pytest
from lxml import etree

from clitools import (REPO, VFPICK, assert_user_error, claims_file, cli_env, domain, example,
                      hostdev_vfs, status_json, vfpick)

NS = {"v": "http://vfpick.org/xmlns/libvirt/domain/1.0"}


def links_of(host, vfs):
    topo = host.topology()
    return [topo.link_of[topo.vfs[vf].pf] for vf in vfs]


def test_two_nic_domain_gets_two_links_and_status_matches(host):
    host.write_config()
    proc = vfpick(host, "resolve", os.path.join(REPO, "examples", "db1.xml"), check=0)
    vfs = hostdev_vfs(proc.stdout)
    assert len(vfs) == 2 and len(set(links_of(host, vfs))) == 2
    root = etree.fromstring(proc.stdout)
    uuid = root.findtext("uuid")
    macs = [i.find("mac").get("address") for i in root.findall("devices/interface")]
    status = status_json(host)
    claims = status["claims"]
    assert sorted(c["vf"] for c in claims) == sorted(vfs)
    for c in claims:
        assert set(["vf", "pf", "link", "pool", "domain", "uuid", "mac", "active"]) <= set(c)
        assert (c["domain"], c["uuid"], c["pool"], c["active"]) == ("db1", uuid, "fast", False)
        assert c["mac"] in macs
    meta = root.findall("metadata/v:domain/v:nic", NS)
    assert sorted(m.get("vf") for m in meta) == sorted(vfs)
    pool = status["pools"][0]
    assert (pool["total"], pool["claimed"], pool["free"]) == (32, 2, 30)


def test_four_nic_domain_one_per_link(host):
    host.write_config()
    vfs = hostdev_vfs(vfpick(host, "resolve", "-", input=example("lb1"), check=0).stdout)
    assert sorted(links_of(host, vfs)) == ["ens1f0", "ens1f1", "ens2f0", "ens2f1"]


def test_npar_partitions_count_as_one_link(make_host):
    host = make_host("npar")
    host.write_config(pools={"fast": "pfs = ens3f0 ens3f1 ens3f2 ens3f3\nstrict = yes\n"})
    vfs = hostdev_vfs(vfpick(host, "resolve", "-", input=domain(nics=2), check=0).stdout)
    assert sorted(links_of(host, vfs)) == ["ens3f0+ens3f2", "ens3f1+ens3f3"]
    before = claims_file(host)
    err = assert_user_error(vfpick(host, "resolve", "-", input=domain("three", nics=3)), "strict=yes")
    assert claims_file(host) == before, err


def test_link_sections_make_pfs_one_link(host):
    host.write_config(
        pools={"fast": "pfs = ens1f0 ens1f1 ens2f0 ens2f1\nstrict = yes\n"},
        extra="[link a]\npfs = ens1f0 ens2f0\n[link b]\npfs = ens1f1 ens2f1\n")
    assert vfpick(host, "resolve", "-", input=domain(nics=2), check=0)
    assert_user_error(vfpick(host, "resolve", "-", input=domain("x", nics=3)), "strict=yes")


def test_single_nic_domains_spread_evenly(host):
    host.write_config()
    for i in range(12):
        vfpick(host, "resolve", "-", input=domain("d%d" % i), check=0)
    per_link = {}
    for c in status_json(host)["claims"]:
        per_link[c["link"]] = per_link.get(c["link"], 0) + 1
    assert sorted(per_link.values()) == [3, 3, 3, 3]


def test_policy_pack_fills_first_pf_in_list_order(host):
    host.write_config(pools={"fast": "pfs = ens2f1 ens1f0\npolicy = pack\n"})
    for i in range(3):
        vfpick(host, "resolve", "-", input=domain("d%d" % i), check=0)
    assert {c["pf"] for c in status_json(host)["claims"]} == {"0000:af:00.1"}


@pytest.mark.parametrize("head,nodes", [
    ("<vcpu cpuset='8-11'>2</vcpu>\n", {1}),
    ("<vcpu>2</vcpu><numatune><memory nodeset='0'/></numatune>\n", {0}),
    ("<vcpu cpuset='8-11'>2</vcpu><numatune><memory nodeset='0'/></numatune>\n", {0}),
])
def test_numa_required_from_numatune_or_cpuset(host, head, nodes):
    host.write_config(pools={"fast": "pfs = ens1f0 ens1f1 ens2f0 ens2f1\nnuma = required\n"})
    for i in range(4):
        vfpick(host, "resolve", "-", input=domain("d%d" % i, nics=2, head=head), check=0)
    topo = host.topology()
    assert {topo.vfs[c["vf"]].numa_node for c in status_json(host)["claims"]} == nodes


def test_rewrite_carries_everything_over_and_assigns_uuid_and_mac(host):
    host.write_config()
    extra = ("<mac address='52:54:00:AA:00:01'/><vlan><tag id='100'/></vlan><alias name='ua-net0'/>"
             "<boot order='2'/><address type='pci' domain='0x0000' bus='0x00' slot='0x07' "
             "function='0x0'/>")
    xml = domain(nics=1, iface_extra=extra,
                 extra_devices="<interface type='network'><source network='fast'/></interface>\n")
    out = vfpick(host, "resolve", "-", input=xml, check=0).stdout
    root = etree.fromstring(out)
    assert len(root.findtext("uuid")) == 36
    first, second = root.findall("devices/interface")
    assert first.get("type") == "hostdev" and first.get("managed") == "yes"
    assert first.find("mac").get("address").lower() == "52:54:00:aa:00:01"
    assert first.find("vlan/tag").get("id") == "100"
    assert first.find("alias").get("name") == "ua-net0"
    assert first.find("boot").get("order") == "2"
    assert first.find("address").get("slot") == "0x07"
    assert second.find("mac").get("address").startswith("52:54:00:")
    assert root.find("memory").text == "64"


def test_re_resolving_keeps_vfs(host):
    host.write_config()
    first = vfpick(host, "resolve", "-", input=example("lb1"), check=0).stdout
    vfpick(host, "resolve", "-", input=example("db1"), check=0)
    again = vfpick(host, "resolve", "-", input=first, check=0).stdout
    assert hostdev_vfs(again) == hostdev_vfs(first)
    assert again == first
    assert len(status_json(host)["claims"]) == 6


def test_libvirt_network_passes_untouched(host):
    host.write_config()
    open(os.path.join(host.config_dir, "networks", "default.xml"), "w").close()
    xml = domain(pool="default")
    assert vfpick(host, "resolve", "-", input=xml, check=0).stdout == xml
    assert claims_file(host) is None or status_json(host)["claims"] == []


# (input, what the one line must say): the reason, so a refusal for the wrong reason fails.
HOSTILE = [
    (b"<domain><name>x</name>", "malformed domain XML: no element found"),
    (b"not xml at all", "malformed domain XML: syntax error, line 1"),
    (b"", "domain XML is empty"),
    (b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
     b"<domain type='qemu'><name>&x;</name><devices><interface type='network'>"
     b"<source network='fast'/></interface></devices></domain>",
     "must not contain a DOCTYPE or entity declaration"),
    (b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;"
     b"&a;&a;&a;'><!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;"
     b"&c;&c;'>]><domain><name>&d;</name></domain>",
     "must not contain a DOCTYPE or entity declaration"),
    (b"<network><name>x</name></network>", "not a libvirt domain: the root element is <network>"),
    (b"<domain>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</domain>", "nested deeper than 64 elements"),
]


@pytest.mark.parametrize("xml,words", HOSTILE)
def test_hostile_or_malformed_xml_is_one_line_and_claims_nothing(host, xml, words):
    host.write_config()
    proc = vfpick(host, "resolve", "-", input=xml)
    assert_user_error(proc, words)
    assert b"root:" not in proc.stdout + proc.stderr
    assert proc.stdout == b""
    assert claims_file(host) is None


def test_huge_input_is_refused(host):
    host.write_config()
    xml = domain(extra_devices="<!-- %s -->" % ("x" * (5 << 20)))
    assert_user_error(vfpick(host, "resolve", "-", input=xml))
    assert claims_file(host) is None


def test_unknown_pool_names_the_pools(host):
    host.write_config(pools={"fast": "pfs = ens1f0\n", "slow": "pfs = ens2f0\n"})
    assert_user_error(vfpick(host, "resolve", "-", input=domain(pool="fsat")), "'fsat'", "fast, slow")
    assert claims_file(host) is None


def test_exhausted_pool_claims_nothing(host):
    host.write_config(pools={"fast": "pfs = ens1f0\n"})
    for i in range(2):
        vfpick(host, "resolve", "-", input=domain("d%d" % i, nics=4), check=0)
    before = claims_file(host)
    assert_user_error(vfpick(host, "resolve", "-", input=domain("big", nics=2)), "exhausted")
    assert claims_file(host) == before


def test_bad_config_is_one_line_naming_file_section_key(host):
    host.write_config(pools={"fast": "pfs = ens1f0\n"})
    with open(host.config_path, "a") as f:
        f.write("numa = sometimes\n")
    assert_user_error(vfpick(host, "status"), host.config_path, "[pool fast] numa", "'sometimes'")


def test_corrupt_state_refuses_and_is_kept(host):
    host.write_config()
    os.makedirs(host.state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(host.state_dir, "claims.json")
    with open(path, "wb") as f:
        f.write(b'{"version": 1, "claims": [')
    assert_user_error(vfpick(host, "resolve", "-", input=domain()), path)
    with open(path, "rb") as f:
        assert f.read() == b'{"version": 1, "claims": ['


def test_release_by_name_and_uuid(host):
    host.write_config()
    vfpick(host, "resolve", "-", input=domain("a", nics=2), check=0)
    out = vfpick(host, "resolve", "-", input=domain("b", nics=1), check=0).stdout
    uuid = etree.fromstring(out).findtext("uuid")
    vfpick(host, "release", "a", check=0)
    assert [c["domain"] for c in status_json(host)["claims"]] == ["b"]
    vfpick(host, "release", uuid.upper(), check=0)
    assert status_json(host)["claims"] == []
    assert_user_error(vfpick(host, "release", "nobody"),
                      "no claims")


def test_parallel_resolves_never_double_a_vf(make_host):
    host = make_host("bench-1024")
    host.write_config()
    script = ("import subprocess, sys\n"
              "procs = [subprocess.Popen([%r, 'resolve', '-'],"
              " stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)"
              " for _ in range(%d)]\n"
              "for i, p in enumerate(procs):\n"
              "    p.stdin.write(%r.replace(b'NAME', b'd%%d' %% i)); p.stdin.close()\n"
              "print(sum(p.wait() != 0 for p in procs))\n")
    n = 24
    xml = domain("NAME", nics=2)
    proc = subprocess.run([sys.executable, "-c", script % (VFPICK, n, xml)], capture_output=True,
                          env=cli_env(host),
                          timeout=300)
    assert proc.stdout.strip() == b"0", proc.stderr
    claims = status_json(host)["claims"]
    assert len(claims) == 2 * n
    assert len({c["vf"] for c in claims}) == 2 * n
    assert len({c["domain"] for c in claims}) == n


def test_status_text_shows_links_and_domains(host):
    host.write_config()
    vfpick(host, "resolve", "-", input=example("db1"), check=0)
    text = vfpick(host, "status", check=0).stdout.decode()
    assert "pool fast: 32 VFs, 2 claimed, 30 free" in text
    assert "ens1f0" in text and "db1" in text


def test_topology_json(host):
    host.write_config()
    report = json.loads(vfpick(host, "topology", "--json", check=0).stdout)
    assert len(report["pfs"]) == 4 and len(report["links"]) == 4


def test_usage_errors_are_one_line(host):
    host.write_config()
    assert_user_error(vfpick(host, "frobnicate"))
    assert_user_error(vfpick(host, "resolve"))
    assert_user_error(vfpick(host, "resolve", "/nonexistent.xml"), "/nonexistent.xml")


OVERRIDE = ("<metadata><vfpick:domain xmlns:vfpick='http://vfpick.org/xmlns/libvirt/domain/1.0'>"
            "<vfpick:policy %s/></vfpick:domain></metadata>\n")


def test_domain_metadata_overrides_the_pools_distinct_and_strict(host):
    # The pool allows sharing; this domain insists on distinct cards and refuses otherwise.
    host.write_config(pools={"fast": "pfs = ens1f0 ens1f1 ens2f0 ens2f1\ndistinct = none\n"})
    out = vfpick(host, "resolve", "-", check=0,
                 input=domain("picky", nics=2, head=OVERRIDE % "distinct='card' strict='yes'")).stdout
    topo = host.topology()
    assert len({topo.card_of[topo.vfs[vf].pf] for vf in hostdev_vfs(out)}) == 2
    assert_user_error(vfpick(host, "resolve", "-",
                             input=domain("pickier", nics=3, head=OVERRIDE % "distinct='card' strict='yes'")),
                      "strict=yes")


def test_bad_override_value_is_refused(host):
    host.write_config()
    assert_user_error(vfpick(host, "resolve", "-", input=domain("x", head=OVERRIDE % "numa='sometimes'")),
                      "numa")
    assert claims_file(host) is None
