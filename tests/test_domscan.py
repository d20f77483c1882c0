"""vfpick.domscan: the hook's expat scan of domain and <domstatus> XML."""

import os
import subprocess
import sys

import pytest

from vfpick import domscan
from vfpick.domscan import MetaNic, RunningVfs, scan, scan_running
from vfpick.errors import XmlError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "xml")
NS = "http://vfpick.org/xmlns/libvirt/domain/1.0"

_LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE domain [\n <!ENTITY lol "lol">\n'
           + b"".join(b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                      for i in range(1, 10))
           + b"]>\n<domain><name>&lol9;</name></domain>\n")

# Shared with test_hostdev: every one of these must be an XmlError from both parsers, and no
# error message may leak a byte of a file an entity points at.
HOSTILE = {
    "billion-laughs": _LAUGHS,
    "external-entity": b'<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY xxe SYSTEM '
                       b'"file:///etc/passwd">]>\n<domain><name>&xxe;</name></domain>\n',
    "parameter-entity": b'<!DOCTYPE domain [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                        b"<domain><name>x</name></domain>",
    "external-dtd": b'<!DOCTYPE domain SYSTEM "file:///etc/passwd"><domain><name>x</name></domain>',
    "doctype-alone": b"<!DOCTYPE domain><domain><name>x</name></domain>",
    "undeclared-entity": b"<domain><name>&xxe;</name></domain>",
    "too-large": b"<domain><name>big</name><description>" + b"a" * (5 << 20)
                 + b"</description></domain>",
    "deep-nesting": b"<domain>" + b"<a>" * 10000 + b"</a>" * 10000 + b"</domain>",
    "non-domain-root": b"<network><name>default</name></network>",
    "invalid-utf8": b"<domain><name>\xff\xfe\xc3</name></domain>",
    "empty": b"",
    "whitespace-only": b"  \n",
    "truncated": b"<domain><name>x</name><devices>",
    "two-roots": b"<domain/><domain/>",
}
SECRET_MARKERS = ("root:", "/bin/", "daemon")


# The scanner counts only the depth of subtrees it skips (libvirt accepts any <metadata>), so
# deep nesting there is read, not refused; lxml (hostdev.py) still refuses it.
SCANNED_ANYWAY = {"deep-nesting"}


@pytest.mark.parametrize("name", sorted(set(HOSTILE) - SCANNED_ANYWAY))
def test_hostile_input_is_refused(name):
    with pytest.raises(XmlError) as info:
        scan(HOSTILE[name])
    message = str(info.value)
    assert len(message) < 300
    for marker in SECRET_MARKERS:
        assert marker not in message


NIC = ("<interface type='hostdev'><mac address='52:54:00:aa:00:01'/><source><address type='pci' "
       "domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source></interface>")
META = ("<vfpick:domain xmlns:vfpick='%s'><vfpick:nic mac='52:54:00:aa:00:01' pool='fast' "
        "vf='0000:3b:02.1'/></vfpick:domain>" % NS)


@pytest.mark.parametrize("depth", [100, 100000])
@pytest.mark.parametrize("ours", [False, True])
def test_deep_foreign_metadata_and_devices_are_skipped_not_refused(depth, ours):
    deep = "<app:x xmlns:app='urn:other'>" + "<app:a>" * depth + "</app:a>" * depth + "</app:x>"
    xml = ("<domain><name>d</name><metadata>%s%s</metadata><devices>%s<controller>%s</controller>"
           "%s</devices></domain>" % (deep, META if ours else "", "<a>" * depth + "</a>" * depth,
                                      "<b>" * depth + "</b>" * depth, NIC)).encode()
    facts = scan(xml)
    assert facts.vfpick_meta is ours
    assert [n.vf for n in facts.meta_nics] == (["0000:3b:02.1"] if ours else [])
    assert facts.hostdev_vfs == (("0000:3b:02.1", "52:54:00:aa:00:01"),)


def test_deep_nesting_on_the_path_vfpick_reads_is_still_refused():
    xml = ("<domain><devices><interface type='hostdev'>" + "<source>" * 100 + "</source>" * 100
           + "</interface></devices></domain>").encode()
    with pytest.raises(XmlError, match="nested deeper"):
        scan(xml)


def test_domstatus_sample():
    with open(os.path.join(DATA, "domstatus-running.xml"), "rb") as f:
        facts = scan(f.read())
    assert facts.name == "db-01"
    assert facts.uuid == "9d3a4c1e-5b2f-4a6d-8e7f-0123456789ab"
    assert facts.networks == (("sriov-legacy", "52:54:00:bb:00:07"), ("default", "52:54:00:cc:00:01"))
    # the guest-side <address> of an interface is not its VF; usb and mdev hostdevs are no VFs
    assert facts.hostdev_vfs == (("0000:3b:02.1", "52:54:00:aa:10:01"),
                                 ("0000:af:02.3", "52:54:00:aa:10:02"),
                                 ("0000:5e:00.0", None))
    assert facts.actual_vfs == (("0000:3b:10.6", "52:54:00:bb:00:07"),)
    assert facts.meta_nics == (
        MetaNic("52:54:00:aa:10:01", "fast", "0000:3b:02.1", "0000:3b:00.0", "ens1f0"),
        MetaNic("52:54:00:aa:10:02", "fast", "0000:af:02.3", "0000:af:00.1", "ens2f1"),
    )
    assert facts.policy_overrides == ()
    assert facts.interesting


@pytest.mark.parametrize("name", ["pool-nic-full-in.xml", "already-resolved-in.xml",
                                  "odd-layout-in.xml", "stale-entry-in.xml"])
def test_agrees_with_hostdev(name):
    from vfpick.hostdev import DomainXml

    with open(os.path.join(DATA, name), "rb") as f:
        data = f.read()
    facts, doc = scan(data), DomainXml.parse(data)
    assert facts.name == doc.name and facts.uuid == doc.uuid
    assert [(n.network, n.mac) for n in doc.network_interfaces()] == list(facts.networks)
    meta = {n.mac: n for n in facts.meta_nics}
    for m in doc.managed_interfaces():
        assert (m.vf, m.mac) in facts.hostdev_vfs and meta[m.mac].pool == m.pool


def test_domain_scan_details():
    data = ("""<domain type='kvm'>
  <name>a&amp;b</name>
  <uuid>  9D3A4C1E5B2F4A6D8E7F0123456789AB </uuid>
  <metadata>
    <x:domain xmlns:x='%s'>
      <x:policy distinct='pf' strict='yes'/>
      <x:policy pool='fast' numa='required'/>
      <x:nic mac='52:54:0:A:B:C' pool='fast' vf='3b:02.1' pf='bogus' link='l0'/>
      <x:other mac='52:54:00:00:00:99'/>
    </x:domain>
    <nic mac='52:54:00:00:00:98'/>
  </metadata>
  <devices>
    <interface type='hostdev'>
      <mac address='52:54:00:0A:0B:0C'/>
      <source><address type='pci' domain='0x0000' bus='0x3b' slot='0x20' function='0x1'/></source>
    </interface>
    <interface type='hostdev'>
      <source><address type='pci' bus='0x3b' slot='0x02' function='0x2'/></source>
    </interface>
    <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='zz' slot='0' function='0'/></source></hostdev>
    <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/></interface>
    <interface type='network'><source network='fast'/></interface>
  </devices>
</domain>""" % NS).encode()
    facts = scan(data)
    assert facts.name == "a&b"
    assert facts.uuid == "9d3a4c1e-5b2f-4a6d-8e7f-0123456789ab"
    assert facts.networks == (("fast", None),)
    assert facts.hostdev_vfs == (("0000:3b:02.2", None),)  # slot 0x20 and bus 'zz' are skipped
    assert facts.meta_nics == (MetaNic("52:54:00:0a:0b:0c", "fast", "0000:3b:02.1", None, "l0"),)
    assert facts.policy_overrides == ((None, "pf", "yes", None), ("fast", None, None, "required"))
    assert facts.interesting


def test_uninteresting_domain():
    facts = scan(b"<domain><name>plain</name><devices><disk type='file'/>"
                 b"<interface type='bridge'><source bridge='br0'/></interface></devices></domain>")
    assert not facts.interesting and facts.uuid is None
    assert facts.networks == facts.hostdev_vfs == facts.meta_nics == ()


@pytest.mark.parametrize("data,match", [
    (b"<domain><uuid>nope</uuid></domain>", "uuid"),
    (b"<domstatus state='running'><monitor/></domstatus>", "no <domain>"),
    (b"<domstatus><domain/><domain/></domstatus>", "more than one"),
    (b"<domain xmlns='urn:x'/>", "namespace"),
])
def test_refusals(data, match):
    with pytest.raises(XmlError, match=match):
        scan(data)


def test_limit_is_a_parameter():
    data = b"<domain><name>x</name></domain>"
    assert scan(data, limit=len(data)).name == "x"
    with pytest.raises(XmlError, match="larger"):
        scan(data, limit=len(data) - 1)


def test_scan_running(tmp_path):
    with open(os.path.join(DATA, "domstatus-running.xml"), "rb") as f:
        (tmp_path / "db-01.xml").write_bytes(f.read())
    (tmp_path / "other.xml").write_bytes(
        b"<domstatus state='running'><domain><name>other</name>"
        b"<uuid>11111111-2222-4333-8444-555555555555</uuid><devices>"
        b"<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x3b' "
        b"slot='0x02' function='0x7'/></source></hostdev></devices></domain></domstatus>")
    (tmp_path / "broken.xml").write_bytes(b"<domstatus><domain>")
    (tmp_path / "evil.xml").write_bytes(HOSTILE["external-entity"])
    (tmp_path / "db-01.pid").write_text("48213")
    (tmp_path / "domain-7-db-01").mkdir()
    os.symlink("/etc/passwd", str(tmp_path / "link.xml"))

    used = scan_running(str(tmp_path))
    assert isinstance(used, dict) and isinstance(used, RunningVfs)
    db = ("9d3a4c1e-5b2f-4a6d-8e7f-0123456789ab", "db-01")
    assert used == {
        "0000:3b:02.1": db, "0000:af:02.3": db, "0000:5e:00.0": db, "0000:3b:10.6": db,
        "0000:3b:02.7": ("11111111-2222-4333-8444-555555555555", "other"),
    }
    skipped = dict(used.skipped)
    assert sorted(os.path.basename(p) for p in skipped) == ["broken.xml", "evil.xml", "link.xml"]
    assert all("\n" not in reason for reason in skipped.values())


def test_scan_running_missing_dir(tmp_path):
    used = scan_running(str(tmp_path / "absent"))
    assert used == {} and used.skipped == []


def test_normalize_mac():
    assert domscan.normalize_mac(" 52:54:0:A:b:0C ") == "52:54:00:0a:0b:0c"
    assert domscan.normalize_mac("Not-A-Mac") == "not-a-mac"
    assert domscan.normalize_mac(None) is None


def test_hook_import_budget():
    # The hook path must not pull in lxml, re, typing, dataclasses or inspect.
    code = ("import sys; before = set(sys.modules); import vfpick.domscan as d; "
            "d.scan(b'<domain/>'); d.scan_running('/nonexistent'); "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added = set(out.stdout.split())
    assert not added & {"lxml", "lxml.etree", "re", "typing", "dataclasses", "inspect", "xml.dom"}


def test_running_scan_cache_follows_status_file_changes(tmp_path):
    """The cache must never hide a domain that started, stopped or changed VFs."""
    import time as _time

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cache = str(tmp_path / "running.cache")

    def status(name, uuid, bus):
        return ("<domstatus state='running'><domain type='qemu'><name>%s</name><uuid>%s</uuid>"
                "<devices><hostdev mode='subsystem' type='pci' managed='yes'><source>"
                "<address domain='0x0000' bus='%s' slot='0x00' function='0x1'/></source></hostdev>"
                "</devices></domain></domstatus>" % (name, uuid, bus))

    def write(name, text):
        # libvirt replaces status files by rename: a new inode each time.
        tmp = run_dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, run_dir / (name + ".xml"))

    uuid_a = "6c8d5e4f-0000-4000-8000-00000000000a"
    write("a", status("a", uuid_a, "0x3c"))
    assert dict(domscan.scan_running(str(run_dir), cache_path=cache)) == {"0000:3c:00.1": (uuid_a, "a")}
    _time.sleep(0.3)  # past the racy window: the next scans trust the cache for unchanged files
    assert dict(domscan.scan_running(str(run_dir), cache_path=cache)) == {"0000:3c:00.1": (uuid_a, "a")}
    write("a", status("a", uuid_a, "0x3d"))  # same size, new inode, inside the racy window
    assert dict(domscan.scan_running(str(run_dir), cache_path=cache)) == {"0000:3d:00.1": (uuid_a, "a")}
    os.unlink(run_dir / "a.xml")
    assert dict(domscan.scan_running(str(run_dir), cache_path=cache)) == {}
    with open(cache, "w") as f:
        f.write("{garbage")
    write("a", status("a", uuid_a, "0x3e"))
    assert dict(domscan.scan_running(str(run_dir), cache_path=cache)) == {"0000:3e:00.1": (uuid_a, "a")}
