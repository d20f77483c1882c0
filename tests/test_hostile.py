"""Hostile and broken input: corrupt or unreadable state, hostile XML through every hook op,
odd domain names, bad UUIDs and PCI addresses, garbage on the hook's stdin, broken configs.

Always: no traceback (nor the hook's "internal error"), exit 0 or 1, one `vfpick:` line per
message, nothing claimed that should not be, and a corrupt state file left byte for byte.
Complements test_cli_resolve.py (hostile XML through `resolve`) and test_hook.py (a few
garbage inputs through the hook executable). The fuzz targets in tests/fuzz/ run briefly here.
"""

import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clitools import HOOK, REPO, assert_user_error, claims_file, domain, status_json, vfpick
from vfpick import cli, hook

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
import targets

NS = "http://vfpick.org/xmlns/libvirt/domain/1.0"
OPS = [("prepare", "begin"), ("release", "end"), ("reconnect", "begin"), ("migrate", "begin"),
       ("restore", "begin")]


def run_hook(host, name, op, subop, xml, config_path=None):
    out, err = io.BytesIO(), io.StringIO()
    rc = hook.run([name, op, subop, "-"], stdin=io.BytesIO(xml), stdout=out, stderr=err,
                  config_path=config_path or host.config_path)
    message = err.getvalue()
    assert rc in (0, 1), rc
    assert "Traceback" not in message and "internal error" not in message, message
    for line in message.split("\n")[:-1]:
        assert line.startswith("vfpick: "), message
    return rc, out.getvalue(), message


def run_cli(host, *args, data=None, config_path=None):
    """vfpick in-process (cli.main), as a subprocess would see it: (rc, stdout, stderr)."""
    argv = ["--config", config_path or host.config_path] + list(args)
    stdin, stdout, stderr = sys.stdin, sys.stdout, sys.stderr
    out, err = io.BytesIO(), io.StringIO()
    fake_in = io.TextIOWrapper(io.BytesIO(data or b""))
    fake_out = io.TextIOWrapper(out, write_through=True)
    sys.stdin, sys.stdout, sys.stderr = fake_in, fake_out, err
    try:
        rc = cli.main(argv)  # an exception escaping here is a traceback for the user
        fake_out.flush()
    finally:
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
        fake_in.detach()
        fake_out.detach()
    message = err.getvalue()
    assert rc in (0, 1), rc
    if rc == 1:
        assert message.startswith("vfpick: ") and message.count("\n") == 1, message
    return rc, out.getvalue(), message


def resolved(host, name="vm", nics=2, **kw):
    rc, out, err = run_cli(host, "resolve", "-", data=domain(name, nics=nics, **kw))
    assert rc == 0, err
    return out


def state_bytes(host):
    return claims_file(host)


# --- corrupt or unreadable state -----------------------------------------------------------------

def _corrupt(kind, path):
    if kind == "directory":
        os.mkdir(path)
        return
    if kind == "fifo":
        os.mkfifo(path)
        return
    if kind == "symlink":
        os.symlink("/etc/passwd", path)
        return
    raw = {
        "truncated": b'{"version": 1, "claims": [{"vf": "0000:3b:02.0", "pf',
        "garbage": b"\x00\xff\xfe garbage \x89PNG",
        "empty": b"",
        "schema": b'{"version": 2, "claims": []}',
        "doubled": json.dumps({"version": 1, "claims": [
            dict(vf="0000:3c:00.0", pf="0000:3b:00.0", link="l", pool="fast", domain="a",
                 uuid="u1", mac="52:54:00:00:00:01", active=False),
            dict(vf="0000:3c:00.0", pf="0000:3b:00.0", link="l", pool="fast", domain="b",
                 uuid="u2", mac="52:54:00:00:00:02", active=True)]}).encode(),
    }[kind]
    with open(path, "wb") as f:
        f.write(raw)


def _fingerprint(path):
    st_ = os.lstat(path)
    body = None
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as f:
            body = f.read()
    return st_.st_mode, st_.st_ino, st_.st_mtime_ns, st_.st_size, body


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "schema", "doubled",
                                  "directory", "fifo", "symlink"])
def test_corrupt_or_unreadable_state_is_refused_by_every_command_and_kept(host, kind):
    host.write_config()
    xml = resolved(host, "vm", nics=2)  # a resolved domain, for the hook
    path = os.path.join(host.state_dir, "claims.json")
    os.unlink(path)
    _corrupt(kind, path)
    before = _fingerprint(path)
    listing = sorted(os.listdir(host.state_dir))

    # The CLI as a user runs it (subprocess): one line naming the file, exit 1.
    for args, data in [(("resolve", "-"), domain("new", nics=1)), (("status",), None),
                       (("status", "--json"), None), (("release", "vm"), None),
                       (("topology",), None)]:
        proc = vfpick(host, *args, input=data)
        assert_user_error(proc, path)
        assert proc.stdout == b"", args
    # The hook as libvirt runs it: prepare refuses (aborts the start) naming the file...
    proc = subprocess.run([sys.executable, HOOK, "vm", "prepare", "begin", "-"], input=xml,
                          capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "VFPICK_CONFIG": host.config_path})
    assert_user_error(proc, path)
    # ...release and reconnect report it but exit 0 (libvirt ignores or kills the guest).
    for op, subop in [("release", "end"), ("reconnect", "begin")]:
        rc, _, err = run_hook(host, "vm", op, subop, xml)
        assert rc == 0 and path in err, (op, err)
    rc, _, err = run_hook(host, "vm", "migrate", "begin", xml)
    assert rc == 1 and path in err
    assert _fingerprint(path) == before
    # running.cache (what libvirt's status files held) is a cache, not state: it may appear.
    assert sorted(set(os.listdir(host.state_dir)) - {"running.cache"}) == listing


def test_state_dir_that_is_a_file_is_refused(host):
    host.state_dir = os.path.join(host.base, "state-file")
    with open(host.state_dir, "w") as f:
        f.write("I am not a directory")
    host.write_config()
    for args in (("resolve", "-"), ("status",), ("release", "vm")):
        rc, out, err = run_cli(host, *args, data=domain("vm"))
        assert rc == 1 and host.state_dir in err, (args, err)
    with open(host.state_dir) as f:
        assert f.read() == "I am not a directory"


# --- hostile XML through every hook op --------------------------------------------------------

POOL_IFACE = "<interface type='network'><source network='fast'/></interface>"
HOSTILE = {
    "billion-laughs": b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'>"
                      b"<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'><!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>"
                      b"<!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;'>]><domain><name>&d;</name><uuid>"
                      b"6c8d5e4f-0000-4000-8000-000000000001</uuid><devices>" + POOL_IFACE.encode()
                      + b"</devices></domain>",
    "external-entity": b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                       b"<domain><name>&x;</name><devices>" + POOL_IFACE.encode() + b"</devices></domain>",
    "parameter-entity": b"<!DOCTYPE d [<!ENTITY % p SYSTEM 'file:///etc/passwd'> %p;]>"
                        b"<domain><name>x</name></domain>",
    "external-dtd": b"<!DOCTYPE domain SYSTEM 'http://127.0.0.1:9/x.dtd'><domain><name>x</name></domain>",
    "xinclude": b"<domain xmlns:xi='http://www.w3.org/2001/XInclude'><name>x</name>"
                b"<description><xi:include href='/etc/passwd' parse='text'/></description><devices>"
                + POOL_IFACE.encode() + b"</devices></domain>",
    "deep": b"<domain><name>x</name><devices>" + b"<a>" * 20000 + b"</a>" * 20000
            + POOL_IFACE.encode() + b"</devices></domain>",
    "huge": b"<domain><name>x</name><devices>" + POOL_IFACE.encode() + b"<!--" + b"x" * (5 << 20)
            + b"--></devices></domain>",
    "wide": b"<domain><name>x</name><devices>" + POOL_IFACE.encode() * 5000 + b"</devices></domain>",
    "utf16": ("<domain><name>x</name><devices>" + POOL_IFACE + "</devices></domain>").encode("utf-16"),
    "bad-encoding": b"<?xml version='1.0' encoding='bogus-8'?><domain><name>x</name><devices>"
                    + POOL_IFACE.encode() + b"</devices></domain>",
    "nul": b"<domain><name>x\x00</name></domain>",
    "not-a-domain": b"<network><name>x</name><devices>" + POOL_IFACE.encode() + b"</devices></network>",
    "cdata-and-pi": b"<domain><name><![CDATA[x]]></name><?evil rm -rf /?><devices>"
                    + POOL_IFACE.encode() + b"</devices></domain>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("op,subop", OPS)
def test_hostile_xml_through_every_hook_op(host, name, op, subop):
    host.write_config()
    rc, out, err = run_hook(host, "evil", op, subop, HOSTILE[name])
    assert b"root:" not in out and "root:" not in err
    if rc == 1 or op in ("prepare", "release", "reconnect"):
        assert claims_file(host) is None, (name, op)
    if name not in ("xinclude", "cdata-and-pi", "not-a-domain"):
        # Refused only when the domain is vfpick's: its bytes name pool 'fast' (libvirt writes
        # UTF-8, so the UTF-16 one names nothing vfpick can see and is left to libvirt).
        ours = b"network='fast'" in HOSTILE[name]
        gate = op not in ("release", "reconnect")
        assert rc == (1 if ours and gate else 0), (rc, err)
        assert claims_file(host) is None and out == b""
        if ours and gate:
            assert err.startswith("vfpick: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("name", ["xinclude", "wide", "cdata-and-pi", "bad-encoding", "utf16",
                                  "deep"])
def test_hostile_xml_through_resolve(host, name):
    """The cases test_cli_resolve.py does not cover; resolve either refuses or resolves
    without expanding anything."""
    host.write_config()
    rc, out, err = run_cli(host, "resolve", "-", data=HOSTILE[name])
    assert b"root:" not in out and "root:" not in err
    if rc == 1:
        assert claims_file(host) is None
    elif name == "xinclude":
        assert b"xi:include" in out  # kept as an inert element, never expanded


def test_invalid_mac_on_a_pool_interface_is_a_user_error(host):
    """BUG (resolver.resolve): a malformed <mac> on a pool interface reaches DomainXml.apply,
    which raises ValueError: `vfpick resolve` shows a Python traceback and the migrate/restore
    filters report an internal error."""
    host.write_config()
    for mac in ("zz", ":54:00:10:20:30", "52:54:00:10:20:30:40", "52-54-00-10-20-30"):
        xml = domain("badmac", iface_extra="").replace(
            b"<source network='fast'/>", b"<mac address='%s'/><source network='fast'/>" % mac.encode())
        proc = vfpick(host, "resolve", "-", input=xml)
        assert b"Traceback" not in proc.stderr, (mac, proc.stderr.decode()[-300:])
        assert_user_error(proc, "mac")
        assert claims_file(host) is None
        rc, out, err = run_hook(host, "badmac", "migrate", "begin",
                                xml.replace(b"<name>", b"<uuid>6c8d5e4f-0000-4000-8000-0000000000aa</uuid><name>"))
        assert rc == 1 and out == b""


def test_unknown_encoding_declaration_is_refused_cleanly_by_the_hook(host):
    """BUG (domscan.scan): an XML declaration naming an encoding Python does not know makes
    expat raise LookupError, which scan() does not turn into XmlError: prepare refuses with
    "internal error ... LookupError" instead of a clear message (run_hook checks that)."""
    host.write_config()
    xml = resolved(host, "enc", nics=1)
    for enc in (b"bogus-8", b"TF-8", b"ebcdic"):
        bad = b"<?xml version='1.0' encoding='%s'?>\n" % enc + xml
        rc, _, err = run_hook(host, "enc", "prepare", "begin", bad)
        assert rc == 1 and "encoding" in err, err


def test_unknown_encoding_in_a_running_domains_status_file_does_not_break_other_starts(host):
    """BUG (domscan.scan_running): one status file in libvirt_run_dir with an unknown encoding
    name raises LookupError out of scan_running, so every prepare fails; it should be skipped
    like any other unreadable status file."""
    host.write_config()
    xml = resolved(host, "ok", nics=1)
    with open(os.path.join(host.run_dir, "weird.xml"), "wb") as f:
        f.write(b"<?xml version='1.0' encoding='bogus-8'?><domstatus><domain><name>weird</name>"
                b"</domain></domstatus>")
    rc, _, err = run_hook(host, "ok", "prepare", "begin", xml)
    assert rc == 0, err


# --- odd domain names --------------------------------------------------------------------------

ODD_NAMES = ["ドメイン-ü-😀", "a'b\"c", "../../etc/passwd", "x" * 1000, "$(touch /tmp/vfpick-pwned)",
             "`id`; rm -rf /", "-rf", "name with spaces", "\u202egnp.exe"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_domain_names(host, name):
    host.write_config()
    from xml.sax.saxutils import escape

    xml = domain(escape(name), nics=2)
    rc, out, err = run_cli(host, "resolve", "-", data=xml)
    assert rc == 0, err
    claims = [c for c in status_json(host)["claims"]]
    assert {c["domain"] for c in claims} == {name} and len(claims) == 2
    # The hook knows it by argv name; persistence lookups never leave libvirt_config_dir.
    rc, _, err = run_hook(host, name, "prepare", "begin", out)
    assert rc == 0, err
    # An unresolved domain of that name is refused with a command that survives copy-paste.
    rc, _, err = run_hook(host, name, "prepare", "begin",
                          domain(escape(name), uuid="6c8d5e4f-0000-4000-8000-0000000000bb"))
    assert rc == 1
    command = err.split("resolve it with '", 1)[1].split("' (or define", 1)[0]
    assert shlex.split(command) == ["vfpick", "repick", name], (command, err)
    # Release by that name works (`--` so a name like -rf is not an option).
    rc, out_rel, err = run_cli(host, "release", "--", name)
    assert rc == 0 and out_rel.count(b"released ") == 2, err
    assert not os.path.exists("/tmp/vfpick-pwned")


# --- bad UUIDs and PCI addresses ---------------------------------------------------------------

@pytest.mark.parametrize("uuid,ok", [
    ("not-a-uuid", False), ("", False), ("6c8d5e4f-0000-4000-8000-00000000000g", False),
    ("6c8d5e4f-0000-4000-8000-0000000000001", False), ("{6c8d5e4f-0000-4000-8000-000000000001}", False),
    ("6C8D5E4F-0000-4000-8000-0000000000AB", True), ("6c8d5e4f000040008000000000000001", True),
    (" 6c8d5e4f-0000-4000-8000-000000000002 ", True), ("../../../../etc/passwd", False),
])
def test_bad_uuids(host, uuid, ok):
    host.write_config()
    xml = domain("u", nics=1).replace(b"<name>u</name>", b"<name>u</name><uuid>%s</uuid>" % uuid.encode())
    rc, out, err = run_cli(host, "resolve", "-", data=xml)
    if not ok:
        assert rc == 1 and "uuid" in err.lower(), err
        assert claims_file(host) is None
        return
    assert rc == 0, err
    claims = status_json(host)["claims"]
    canonical = uuid.strip().lower().replace("-", "")
    canonical = "%s-%s-%s-%s-%s" % (canonical[:8], canonical[8:12], canonical[12:16],
                                    canonical[16:20], canonical[20:])
    assert [c["uuid"] for c in claims] == [canonical]
    rc, _, err = run_hook(host, "u", "prepare", "begin", out)
    assert rc == 0, err


def test_two_uuid_elements_never_split_claims(host):
    host.write_config()
    xml = domain("two", nics=1).replace(
        b"<name>two</name>", b"<name>two</name><uuid>6c8d5e4f-0000-4000-8000-000000000001</uuid>"
                             b"<uuid>6c8d5e4f-0000-4000-8000-000000000002</uuid>")
    rc, out, err = run_cli(host, "resolve", "-", data=xml)
    if rc == 0:
        uuids = {c["uuid"] for c in status_json(host)["claims"]}
        assert len(uuids) == 1
        rc, _, err = run_hook(host, "two", "prepare", "begin", out)
        assert rc == 0, err  # the hook reads the same UUID the resolver recorded


BAD_ADDRS = [
    "domain='0xffffffff' bus='0x3c' slot='0x00' function='0x0'",
    "domain='0x0000' bus='0x100' slot='0x00' function='0x0'",
    "domain='0x0000' bus='0x3c' slot='0x20' function='0x0'",
    "domain='0x0000' bus='0x3c' slot='0x00' function='0x8'",
    "domain='0x0000' bus='x' slot='0x00' function='0x0'",
    "domain='-1' bus='0x3c' slot='0x00' function='0x0'",
    "bus='0x3c' slot='0x00' function='0x0'",
    "domain='0x0000' bus='0x3c' slot='0x00'",
    "domain='' bus='' slot='' function=''",
    "domain='0x0000' bus='0x3c/../..' slot='0x00' function='0x0'",
    "domain='0x0000 ' bus=' 0x3c' slot='0x00' function='0x0'",
]
BAD_META_VFS = ["../../../etc", "0000:3c:00.0/../../..", "0000:3c:00.0\n", "", "0000:3c:00.9"]


def _managed(addr, meta_vf="0000:3c:00.0", uuid="6c8d5e4f-0000-4000-8000-0000000000cc"):
    return ("<domain type='kvm'><name>pci</name><uuid>%s</uuid><metadata><vfpick:domain "
            "xmlns:vfpick='%s'><vfpick:nic mac='52:54:00:00:00:01' pool='fast' vf='%s' "
            "pf='0000:3b:00.0' link='ens1f0'/></vfpick:domain></metadata><devices>"
            "<interface type='hostdev' managed='yes'><mac address='52:54:00:00:00:01'/><source>"
            "<address type='pci' %s/></source></interface><hostdev mode='subsystem' type='pci'>"
            "<source><address %s/></source></hostdev></devices></domain>"
            % (uuid, NS, meta_vf, addr, addr)).encode()


_IFACE_VF = re.compile(rb"<interface type='hostdev' managed='yes'><mac address='52:54:00:00:00:01'/>"
                       rb"<source><address type='pci' domain='0x([0-9a-f]{4})' bus='0x([0-9a-f]{2})' "
                       rb"slot='0x([0-9a-f]{2})' function='0x([0-7])'/></source></interface>")


def _assert_pool_vf(host, out, hostdev_addr):
    """*out* (a filter's or resolve's XML) puts the NIC on a well-formed VF of the pool that a
    claim of this domain holds and its metadata names, and carries the other hostdev (not
    vfpick's, whatever its address says) over byte for byte."""
    found = _IFACE_VF.findall(out)
    assert len(found) == 1, out
    vf = "%s:%s:%s.%s" % tuple(part.decode() for part in found[0])
    assert vf.startswith("0000:3c:"), vf  # a VF of the pool's PFs on the default host
    claims = status_json(host)["claims"]
    assert [(c["vf"], c["mac"], c["uuid"]) for c in claims] == \
        [(vf, "52:54:00:00:00:01", "6c8d5e4f-0000-4000-8000-0000000000cc")], claims
    assert re.findall(rb'<vfpick:nic [^>]*vf="([^"]*)"', out) == [vf.encode()], out
    assert ("<hostdev mode='subsystem' type='pci'><source><address %s/></source></hostdev>"
            % hostdev_addr).encode() in out, out


def _hooks_then_resolve(host, xml, hostdev_addr):
    """Every op of the hook on *xml*, then resolve: none fails (exit 0, nothing on stderr),
    the filters and resolve hand out a pool VF (never the malformed address)."""
    for op, subop in OPS:
        rc, out, err = run_hook(host, "pci", op, subop, xml)
        assert (rc, err) == (0, ""), (op, rc, err)
        if op in ("migrate", "restore"):
            _assert_pool_vf(host, out, hostdev_addr)
        else:
            assert out == b"", (op, out)  # libvirt discards it: nothing is printed
    rc, out, err = run_cli(host, "resolve", "-", data=xml)
    assert (rc, err) == (0, ""), err
    _assert_pool_vf(host, out, hostdev_addr)
    return out


@pytest.mark.parametrize("addr", BAD_ADDRS)
def test_bad_pci_addresses(host, addr):
    host.write_config()
    out = _hooks_then_resolve(host, _managed(addr), addr)
    assert b"<address type='pci' %s/>" % addr.encode() not in out  # the NIC's bad address is gone


@pytest.mark.parametrize("meta_vf", BAD_META_VFS)
def test_bad_vf_in_metadata(host, meta_vf):
    host.write_config()
    addr = "domain='0x0000' bus='0x3c' slot='0x00' function='0x0'"
    out = _hooks_then_resolve(host, _managed(addr, meta_vf=meta_vf), addr)
    assert b'vf="0000:3c:00.0"' in out  # the VF the NIC really uses, not the metadata's


# --- garbage on the hook's stdin, odd argv ---------------------------------------------------------

@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(targets.OPS), data=targets.any_xml,
       name=st.one_of(st.just("vm"), st.text(max_size=30).filter(lambda t: "\0" not in t and "\n" not in t)))
def test_garbage_on_stdin_for_every_op(tmp_path_factory, op, data, name):
    host = _fuzz_host(tmp_path_factory)
    host.reset()
    targets.hook_op(host, name, op[0], op[1], data)


_HOSTS = {}


def _fuzz_host(factory):
    if "h" not in _HOSTS:
        _HOSTS["h"] = targets.HookHost(str(factory.mktemp("fuzzhost")))
    return _HOSTS["h"]


USAGE = "vfpick: hook usage: qemu NAME OP SUBOP EXTRA (run by libvirt)\n"


# stdin is an unresolved pool domain: an argv read as `prepare begin` must refuse it (exit 1);
# anything else is no op of the hook's (exit 0, silent).
@pytest.mark.parametrize("argv,rc,said", [
    ([], 1, USAGE),
    (["vm"], 1, USAGE),
    (["vm", "prepare"], 0, ""),                        # no SUBOP: not `prepare begin`
    (["", "", "", ""], 0, ""),
    (["-", "--help", "-", "-"], 0, ""),                # no option parsing: op "--help"
    (["vm", "prepare", "begin", "-", "extra", "args"], 1, "domain 'vm' has unresolved pool"),
    # one line, and the XML's <name> (libvirt's record) is the name, not argv's
    (["vm\nx", "prepare", "begin", "-"], 1, "domain 'vm' has unresolved pool"),
])
def test_odd_hook_argv(host, argv, rc, said):
    host.write_config()
    out, err = io.BytesIO(), io.StringIO()
    got = hook.run(argv, stdin=io.BytesIO(domain("vm", nics=1)), stdout=out, stderr=err,
                   config_path=host.config_path)
    message = err.getvalue()
    assert (got, out.getvalue()) == (rc, b""), message
    if said:
        assert message.startswith("vfpick: ") and message.count("\n") == 1 and said in message, \
            message
    else:
        assert message == ""
    assert claims_file(host) is None


# --- broken configs ----------------------------------------------------------------------------------

def _broken_configs(host):
    base = host.base
    good = open(host.config_path).read()
    loop = os.path.join(base, "loop.ini")
    os.symlink(loop, loop)
    cases = {
        "missing": os.path.join(base, "nope.ini"),
        "directory": host.state_dir if os.path.isdir(host.state_dir) else base,
        "symlink-loop": loop,
    }
    texts = {
        "binary": b"\x00\x01\xff\xfe\x89PNG",
        "latin1": "[vfpick]\nstate_dir = /tmp/\xe9t\xe9\n".encode("latin-1"),
        "unknown-key": good.replace("[pool fast]", "[pool fast]\ncolour = blue").encode(),
        "bad-value": good.replace("[pool fast]", "[pool fast]\ndistinct = sometimes").encode(),
        # (a PF that is not on this host only degrades its pool: test_failopen.py)
        "pf-is-a-vf": good.replace("pfs = ", "pfs = 0000:3c:00.0 ").encode(),
        "relative-state": good.replace("state_dir = ", "state_dir = relative/").encode(),
        "pool-no-pfs": b"[vfpick]\n[pool fast]\ndistinct = link\n",
        "section-garbage": b"[pool\nfast]\npfs = ens1f0\n",
        "dup-key": good.replace("[pool fast]", "[pool fast]\nnuma = ignore\nnuma = required").encode(),
        "dup-section": (good + "\n[pool fast]\npfs = ens1f0\n").encode(),
    }
    for name, raw in texts.items():
        path = os.path.join(base, name + ".ini")
        with open(path, "wb") as f:
            f.write(raw)
        cases[name] = path
    return cases


def test_broken_configs_are_one_line_errors_and_claim_nothing(host):
    host.write_config()
    xml = resolved(host, "vm", nics=1)
    before = state_bytes(host)
    for name, path in _broken_configs(host).items():
        for args, data in [(("resolve", "-"), domain("c", nics=1)), (("status",), None),
                           (("release", "vm"), None)]:
            rc, out, err = run_cli(host, *args, data=data, config_path=path)
            assert rc == 1 and path in err, (name, args, err)
        rc, _, err = run_hook(host, "vm", "prepare", "begin", xml, config_path=path)
        assert rc == 1 and path in err, (name, err)
        # A domain with no pool and no hostdev never needs the config.
        rc, _, err = run_hook(host, "plain", "prepare", "begin",
                              b"<domain><name>plain</name><devices><disk type='file'/></devices></domain>",
                              config_path=path)
        assert rc == 0, (name, err)
    held = lambda raw: [(c["vf"], c["uuid"]) for c in json.loads(raw)["claims"]]
    assert held(state_bytes(host)) == held(before)


def test_oversized_config_is_refused_not_truncated(host):
    """BUG (config.load): it reads the first 1 MiB and parses that, silently dropping the rest:
    a long comment pushes the real settings past the cut and vfpick runs on the defaults
    (state_dir /var/lib/vfpick, sysfs_root /sys) instead of refusing the file."""
    host.write_config()
    good = open(host.config_path).read()
    path = os.path.join(host.base, "huge.ini")
    with open(path, "w") as f:
        f.write("[vfpick]\n; " + "x" * (2 << 20) + "\n" + good.replace("[vfpick]\n", ""))
    rc, out, err = run_cli(host, "status", config_path=path)
    assert rc == 1 and path in err, (rc, err, out[:200])


@settings(max_examples=150, deadline=None)
@given(st.one_of(targets.ini_text(), st.text(max_size=300)))
def test_config_parser_only_raises_config_errors(text):
    targets.config(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets.any_xml)
def test_rewriter_refuses_or_rewrites_consistently(data):
    targets.rewriter(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets.numbers_text)
def test_number_parsers_bound_or_refuse(text):
    targets.numbers_target(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(targets.claims_file())
def test_claims_codec_bounds_or_refuses(raw):
    targets.claims_target(raw)


def test_fuzz_command_runs(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "fuzz.py"), "--minutes", "0.05",
                           "--target", "config", "--seed", "1"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode()[-2000:] + proc.stderr.decode()[-2000:]
    assert b"no failure" in proc.stdout
