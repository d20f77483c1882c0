"""vfpick.hostdev: golden rewrites (tests/data/xml/*-in.xml → *-out.xml), hostile input,
queries, and a fixed-point property.

Regenerate the golden outputs after a deliberate format change with
``pytest --regen tests/test_hostdev.py`` (tests/golden.py) and review the diff.
"""

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

import domgen
from test_domscan import HOSTILE, SECRET_MARKERS  # one hostile table for both parsers
from vfpick.errors import XmlError
from vfpick.hostdev import NS, DomainXml, ManagedIface, NetIface, Overrides
from vfpick.records import Assignment

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "xml")


def A(mac, vf, pf="0000:3b:00.0", link="ens1f0", pool="fast"):
    return Assignment(mac=mac, pool=pool, vf=vf, pf=pf, link=link)


# case -> (assignments, call ensure_uuid first)
CASES = {
    "pool-nic-full": ({0: A("52:54:00:aa:00:01", "0000:3b:02.1")}, False),
    "two-nics-no-mac": ({1: A("52:54:00:00:00:0a", "0000:3b:02.2"),
                         2: A("52:54:00:00:00:0b", "0000:af:02.3", "0000:af:00.1", "ens2f1")}, False),
    "no-uuid": ({0: A("52:54:00:10:20:30", "0000:3b:02.4")}, True),
    "odd-layout": ({0: A("52:54:00:0d:d0:01", "0000:3b:02.5"),
                    1: A("52:54:00:0d:d0:02", "0000:af:02.5", "0000:af:00.1", "ens2f1")}, False),
    "stale-entry": ({1: A("52:54:00:de:ad:02", "0000:3b:02.6")}, False),
    "one-line": ({0: A("52:54:00:01:01:01", "0000:3b:1f.7")}, False),
    "already-resolved": ({0: A("52:54:00:aa:00:01", "0000:3b:02.1"),
                          1: A("52:54:00:aa:00:02", "0000:af:02.0", "0000:af:00.1", "ens2f1")}, False),
}
UUID_RE = re.compile(rb"<uuid>([0-9a-f-]{36})</uuid>")


def _read(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def _run(case):
    assignments, want_uuid = CASES[case]
    doc = DomainXml.parse(_read(case + "-in.xml"))
    new_uuid = doc.ensure_uuid() if want_uuid else None
    doc.apply(assignments)
    return doc.to_bytes(), new_uuid


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(golden, case):
    out, new_uuid = _run(case)
    if new_uuid is not None:
        out = out.replace(new_uuid.encode(), b"@UUID@")
    golden(os.path.join(DATA, case + "-out.xml"), out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_is_fixed_point(case):
    out, _ = _run(case)
    again = DomainXml.parse(out)
    assert again.ensure_uuid()
    again.apply(CASES[case][0])
    assert again.to_bytes() == out


def test_no_uuid_gets_one_after_name():
    out, new_uuid = _run("no-uuid")
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", new_uuid)
    assert b"<name>fresh</name>\n  <uuid>%s</uuid>\n" % new_uuid.encode() in out
    assert DomainXml.parse(out).uuid == new_uuid


def test_ensure_uuid_keeps_existing_and_canonicalizes():
    doc = DomainXml.parse(_read("odd-layout-in.xml"))
    assert doc.ensure_uuid() == "c7a5fdbd-edaf-9455-926a-d65c16db1809"
    assert doc.to_bytes() == _read("odd-layout-in.xml")  # the text itself is not rewritten


@pytest.mark.parametrize("text", ["", "not-a-uuid", "1b4e28ba-2fa1-11d2-883f-0016d3cca42",
                                  "1b4e28ba-2fa1-11d2-883f-0016d3cca427x"])
def test_invalid_uuid_is_refused(text):
    doc = DomainXml.parse(b"<domain><name>x</name><uuid>%s</uuid><devices/></domain>" % text.encode())
    with pytest.raises(XmlError, match="uuid"):
        doc.ensure_uuid()


def test_ensure_uuid_without_name():
    doc = DomainXml.parse(b"<domain type='kvm'>\n  <memory>1</memory>\n</domain>\n")
    new = doc.ensure_uuid()
    assert doc.to_bytes() == ("<domain type='kvm'>\n  <uuid>%s</uuid>\n  <memory>1</memory>\n"
                              "</domain>\n" % new).encode()


def test_odd_layout_keeps_everything_outside_the_edits():
    src, (out, _) = _read("odd-layout-in.xml"), _run("odd-layout")
    head = src.index(b"\t\t<!-- uplink pair")
    assert out.startswith(src[:src.index(b"\n\t</metadata>")])  # declaration, comments, entities
    assert out.endswith(src[src.index(b"\t\t<serial"):])  # tail, incl. the blank line at EOF
    assert src[src.index(b"\t<memory"):head] in out
    assert b"<!-- first leg -->" in out  # comments inside an interface ride along


def test_queries_on_resolved_domain():
    doc = DomainXml.parse(_read("already-resolved-in.xml"))
    assert doc.name == "vm1"
    assert doc.network_interfaces() == []
    assert doc.managed_interfaces() == [
        ManagedIface(0, "52:54:00:aa:00:01", "fast", "0000:3b:02.1", "0000:3b:02.1", "0000:3b:00.0"),
        ManagedIface(1, "52:54:00:aa:00:02", "fast", "0000:af:02.0", "0000:af:02.0", "0000:af:00.1"),
    ]
    assert doc.macs() == {"52:54:00:aa:00:01", "52:54:00:aa:00:02"}
    assert doc.overrides("fast") == Overrides("card", None, "required")
    assert doc.overrides("other") == Overrides(None, None, None)


def test_network_interfaces_indices_are_positions_among_interfaces():
    doc = DomainXml.parse(_read("stale-entry-in.xml"))
    assert doc.network_interfaces() == [NetIface(1, "fast", "52:54:00:de:ad:02")]
    doc = DomainXml.parse(_read("two-nics-no-mac-in.xml"))
    assert doc.network_interfaces() == [NetIface(0, "default", None), NetIface(1, "fast", None),
                                        NetIface(2, "fast", None)]


def _policy(attrs):
    return ("<domain><name>p</name><metadata><v:domain xmlns:v='%s'>%s</v:domain></metadata>"
            "<devices/></domain>" % (NS, attrs)).encode()


def test_overrides_pool_specific_beats_general():
    doc = DomainXml.parse(_policy("<v:policy distinct='pf' strict='yes'/>"
                                  "<v:policy pool='fast' strict='no' numa='ignore'/>"))
    assert doc.overrides("fast") == Overrides("pf", False, "ignore")
    assert doc.overrides("slow") == Overrides("pf", True, None)


@pytest.mark.parametrize("attrs,name", [("distinct='rack'", "distinct"), ("strict='true'", "strict"),
                                        ("numa='maybe'", "numa")])
def test_overrides_invalid_value_names_attribute(attrs, name):
    doc = DomainXml.parse(_policy("<v:policy %s/>" % attrs))
    with pytest.raises(XmlError, match=name):
        doc.overrides("fast")


def test_two_vfpick_domain_elements_are_refused():
    doc = DomainXml.parse(_policy("</v:domain><v:domain xmlns:v='%s'>" % NS))
    with pytest.raises(XmlError, match="vfpick:domain"):
        doc.overrides("fast")


NODES = {0: frozenset(range(0, 8)), 1: frozenset(range(8, 16))}


@pytest.mark.parametrize("body,expected", [
    ("<numatune><memory mode='strict' nodeset='1'/></numatune><vcpu cpuset='0-3'>2</vcpu>", {1}),
    ("<vcpu placement='static' cpuset='6-9,^8'>2</vcpu>", {0, 1}),
    ("<vcpu cpuset='10'>1</vcpu>", {1}),
    ("<vcpu cpuset='64'>1</vcpu>", None),
    ("<numatune><memory placement='auto'/></numatune><vcpu>2</vcpu>", None),
    ("<vcpu>2</vcpu>", None),
])
def test_numa_nodes(body, expected):
    doc = DomainXml.parse(("<domain><name>n</name>%s</domain>" % body).encode())
    assert doc.numa_nodes(NODES) == (frozenset(expected) if expected is not None else None)


def test_numa_nodes_malformed():
    doc = DomainXml.parse(b"<domain><name>n</name><vcpu cpuset='1-x'>2</vcpu></domain>")
    with pytest.raises(XmlError, match="cpuset"):
        doc.numa_nodes(NODES)


def test_apply_rejects_unknown_index_and_bad_vf():
    doc = DomainXml.parse(_read("pool-nic-full-in.xml"))
    with pytest.raises(ValueError):
        doc.apply({5: A("52:54:00:00:00:01", "0000:3b:02.1")})
    with pytest.raises(ValueError):
        doc.apply({0: A("52:54:00:00:00:01", "nope")})
    assert doc.to_bytes() == _read("pool-nic-full-in.xml")


def test_apply_nothing_changes_nothing():
    for case in CASES:
        doc = DomainXml.parse(_read(case + "-in.xml"))
        if case == "stale-entry":
            continue  # stale entry is dropped on any apply
        doc.apply({})
        assert doc.to_bytes() == _read(case + "-in.xml"), case


def test_dropping_last_entry_removes_vfpick_element():
    src = _read("stale-entry-in.xml").replace(b'      <vf:policy distinct="pf" strict="yes"/>\n', b"")
    src = src.replace(b"type='hostdev'", b"type='bridge'")
    doc = DomainXml.parse(src)
    doc.apply({})
    out = doc.to_bytes()
    assert b"vf:domain" not in out and b"<metadata>\n  </metadata>" in out


def test_latin1_document_gets_char_refs():
    src = ("<?xml version='1.0' encoding='ISO-8859-1'?>\n<domain>\n  <name>caf\xe9</name>\n"
           "  <devices>\n    <interface type='network'><source network='fast'/></interface>\n"
           "  </devices>\n</domain>\n").encode("latin-1")
    doc = DomainXml.parse(src)
    doc.apply({0: A("52:54:00:00:00:01", "0000:3b:02.1", link="l\xe9")})
    out = doc.to_bytes()
    assert b"<name>caf\xe9</name>" in out and b'link="l&#233;"' in out
    assert DomainXml.parse(out).name == "caf\xe9"


# -- hostile input ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_refused(name):
    with pytest.raises(XmlError) as info:
        DomainXml.parse(HOSTILE[name])
    message = str(info.value)
    assert len(message) < 300
    for marker in SECRET_MARKERS:
        assert marker not in message


@pytest.mark.parametrize("data", [
    "<domain><name>u</name></domain>".encode("utf-16"),
    b"<?xml version='1.0' encoding='UTF-7'?><domain/>",
    b"<domstatus><domain><name>x</name></domain></domstatus>",
    b"<domain><x:a/></domain>",
])
def test_unsupported_input_is_refused(data):
    with pytest.raises(XmlError):
        DomainXml.parse(data)


# -- property: apply is a fixed point and touches only interfaces and metadata ---------------

EXTRAS = ["<vlan><tag id='7'/></vlan>", "<alias name='ua-x'/>", "<boot order='1'/>",
          "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>",
          "<model type='virtio'/>", "<!-- note -->", "<rom bar='on'/>", "<target dev='vnet0'/>",
          "<driver name='vhost'/>", "<link state='up'/>"]

iface_st = st.tuples(
    st.sampled_from(["fast", "fast-mac", "default", "bridge", "passthru"]),
    st.lists(st.sampled_from(EXTRAS), max_size=4),
    st.booleans(),  # assign it (only meaningful for pool interfaces)
)
indent_st = st.sampled_from(["  ", "\t", "    ", ""])  # "": the whole domain on one line
head_st = st.sampled_from([
    "", "<title>t</title>", "<metadata><other:x xmlns:other='urn:o'/></metadata>",
    "<description>d &amp; e</description><metadata/>",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(iface_st, max_size=6), indent_st, head_st, st.booleans())
def test_apply_is_fixed_point_and_local(ifaces, indent, head, with_uuid):
    src = domgen.build([(kind, extras) for kind, extras, _ in ifaces], indent, head,
                       uuid="00000000-0000-4000-8000-000000000001" if with_uuid else None,
                       declaration=True)
    assignments = {}
    for n, (kind, _extras, assign) in enumerate(ifaces):
        if kind in domgen.POOL_KINDS and assign:
            assignments[n] = A("52:54:00:00:ff:%02x" % n, "0000:3b:%02x.%d" % (n // 8, n % 8))
    doc = DomainXml.parse(src)
    doc.apply(assignments)
    out = doc.to_bytes()
    again = DomainXml.parse(out)
    again.apply(assignments)
    assert again.to_bytes() == out
    assert domgen.skeleton(out) == domgen.skeleton(src)

    src_ifaces = etree.fromstring(src).findall("devices/interface")
    out_ifaces = etree.fromstring(out).findall("devices/interface")
    assert len(out_ifaces) == len(src_ifaces)
    for n, (old, new) in enumerate(zip(src_ifaces, out_ifaces)):
        if n in assignments:
            assert new.get("type") == "hostdev" and new.get("managed") == "yes"
            assert new.find("mac").get("address") == assignments[n].mac
        else:
            assert etree.tostring(old) == etree.tostring(new)
    managed = {m.index: m for m in again.managed_interfaces()}
    for n, a in assignments.items():
        assert managed[n].vf == a.vf == managed[n].recorded_vf and managed[n].pool == "fast"
    if not assignments:
        assert out == src


DTD_CASES = ["billion-laughs", "external-entity", "parameter-entity", "external-dtd", "doctype-alone"]


@pytest.mark.parametrize("name", DTD_CASES)
@pytest.mark.parametrize("bypass", ["raw-scan", "raw-scan+expat"])
def test_each_dtd_defence_holds_alone(monkeypatch, name, bypass):
    """The raw byte scan, the expat pass and the hardened lxml parser each refuse a DTD."""
    from vfpick.domain import xmlsplice

    monkeypatch.setattr(xmlsplice, "_check_raw", lambda data: None)
    if bypass == "raw-scan+expat":
        monkeypatch.setattr(xmlsplice, "_node_spans", lambda data: [])
    with pytest.raises(XmlError) as info:
        DomainXml.parse(HOSTILE[name])
    for marker in SECRET_MARKERS:
        assert marker not in str(info.value)


def test_utf8_bom_and_declaration_survive():
    src = b"\xef\xbb\xbf<?xml version='1.0' encoding='utf-8' standalone='yes'?>\n" + _read(
        "pool-nic-full-in.xml")
    doc = DomainXml.parse(src)
    doc.apply(CASES["pool-nic-full"][0])
    assert doc.to_bytes() == src[:src.index(b"<domain")] + _read("pool-nic-full-out.xml")
