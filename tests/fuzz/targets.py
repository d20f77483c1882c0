"""Fuzz targets for vfpick's untrusted inputs: domain XML (rewriter and expat scanner), the INI
config, and the qemu hook (argv + stdin for every op), plus hypothesis strategies that feed them.

Each target takes one input and raises AssertionError (or any unexpected exception) on a bug;
refusing bad input with a VfpickError is the correct behaviour, never a failure.
Used briefly by tests/test_hostile.py (so the harness cannot rot) and for hours by bench/fuzz.py.
"""

import io
import json
import os
import random

from hypothesis import strategies as st

from vfpick import config as configmod
from vfpick import domscan, hook, resolver
from vfpick.host import simhost
from vfpick.errors import ConfigError, VfpickError, XmlError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NS = "http://vfpick.org/xmlns/libvirt/domain/1.0"
OPS = [("prepare", "begin"), ("release", "end"), ("reconnect", "begin"), ("migrate", "begin"),
       ("restore", "begin"), ("start", "begin"), ("stopped", "end"), ("attach", "begin")]


# --- corpus and strategies -----------------------------------------------------------------------

def corpus():
    """Seed documents: the golden files and examples (real domains, resolved and not)."""
    docs = []
    for d in (os.path.join(REPO, "tests", "data", "xml"), os.path.join(REPO, "examples")):
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.endswith(".xml"):
                    with open(os.path.join(d, name), "rb") as f:
                        docs.append(f.read())
    return docs or [b"<domain type='kvm'><name>x</name><devices/></domain>"]


HUGE = b"9" * 4301   # past Python's int digit limit

TOKENS = [
    b"<!DOCTYPE d [<!ENTITY a 'aaaa'>]>", b"<!ENTITY x SYSTEM 'file:///etc/passwd'>", b"&a;",
    b"&#0;", b"&#x110000;", b"&lt;", b"<![CDATA[x]]>", b"<?pi x?>", b"<!-- c -->", b"\x00",
    b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3\x28", "\u202e\u0000\U0001f600".encode("utf-8", "surrogatepass"),
    b"<interface type='network'><source network='fast'/></interface>",
    b"<interface type='network'><mac address='52:54:00:00:00:01'/><source network='fast'/></interface>",
    b"<interface type='network'><source network='../../etc'/></interface>",
    b"<interface type='hostdev' managed='yes'><mac address='52:54:00:00:00:01'/><source>"
    b"<address type='pci' domain='0x0000' bus='0x3c' slot='0x00' function='0x0'/></source></interface>",
    b"<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x3c' slot='0x00' "
    b"function='0x1'/></source></hostdev>",
    b"<address type='pci' domain='0xffffffff' bus='0x100' slot='0x20' function='0x8'/>",
    b"<address type='pci' domain='-1' bus='x' slot='' function='0x0'/>",
    b"<metadata><vfpick:domain xmlns:vfpick='" + NS.encode() + b"'><vfpick:nic mac='52:54:00:00:00:01' "
    b"pool='fast' vf='0000:3c:00.0' pf='0000:3b:00.0' link='l'/></vfpick:domain></metadata>",
    b"<vfpick:nic xmlns:vfpick='" + NS.encode() + b"' mac='zz' pool='nope' vf='../../x'/>",
    b"<vfpick:policy xmlns:vfpick='" + NS.encode() + b"' distinct='card' strict='maybe' numa='x'/>",
    b"<uuid>not-a-uuid</uuid>", b"<uuid>00000000-0000-4000-8000-00000000000G</uuid>",
    b"<uuid>0F0F0F0F00004000800000000000ABCD</uuid>", b"<name>a'b\"c&amp;</name>",
    b"<name>../../../etc/passwd</name>", b"<name></name>", b"<uuid/>",
    b"<numatune><memory nodeset='0-99999999'/></numatune>", b"<vcpu cpuset='^0,1-'>2</vcpu>",
    b"<devices>", b"</devices>", b"</domain>", b"<domain>", b"'", b'"', b"<", b">", b"=",
    b"<a>" * 70, b"</a>" * 70, b"xmlns:vfpick='" + NS.encode() + b"'",
    # issue 31: numbers past Python's int digit limit, digits int() refuses, libvirt's MAC
    # spellings, a guarantee above its cap, forged metadata rates, a DTD in UTF-16
    b" average='" + HUGE + b"'", b" floor='" + HUGE + b"'", b" peak='" + HUGE + b"'",
    b" floor='99999' average='1'", b" average='\xc2\xb2'",
    b"<bandwidth><outbound average='" + HUGE + b"'/></bandwidth>",
    b"<bandwidth><inbound floor='2000'/><outbound average='1000'/></bandwidth>",
    b"<vcpu cpuset='\xc2\xb2'>2</vcpu>", b"<vcpu cpuset='" + HUGE + b"'>2</vcpu>",
    b"<numatune><memory nodeset='1-" + HUGE + b"'/></numatune>",
    b"<mac address='52:54:00:00:00:01 x'/>", b"<mac address='52:54:0:0:0:1'/>",
    b"<vfpick:nic xmlns:vfpick='" + NS.encode() + b"' mac='52:54:00:00:00:01 x' pool='fast' "
    b"vf='0000:3c:00.1' floor='" + HUGE + b"'/>",
    b"<address type='pci' domain='0x" + HUGE + b"' bus='0x3c' slot='0' function='\xc2\xb2'/>",
    "<?xml version='1.0' encoding='UTF-16'?><!DOCTYPE d [<!ENTITY a 'x'>]><d>&a;</d>".encode("utf-16"),
]


@st.composite
def domain_bytes(draw):
    """Corpus documents with byte-level and token-level mutations."""
    data = bytearray(draw(st.sampled_from(corpus())))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 4))
        at = draw(st.integers(0, len(data)))
        if kind == 0:
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == 1 and data:
            end = min(len(data), at + draw(st.integers(1, 64)))
            del data[at:end]
        elif kind == 2 and data:
            at = min(at, len(data) - 1)
            data[at] = draw(st.integers(0, 255))
        elif kind == 3:
            data[at:at] = draw(st.binary(max_size=16))
        else:
            end = min(len(data), at + draw(st.integers(1, 200)))
            piece = bytes(data[at:end])
            data[at:at] = piece * draw(st.integers(1, 3))
    return bytes(data)


any_xml = st.one_of(domain_bytes(), st.binary(max_size=300),
                    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))

INI_TOKENS = ["[vfpick]", "[pool fast]", "[pool ]", "[link l]", "[pool a b]", "[x]", "pfs = ens1f0",
              "pfs = 0000:3b:00.0 0000:3b:00.0", "pfs =", "pfs = ../../etc", "pfs = 0000:zz:00.0",
              "distinct = link", "distinct = LINK", "strict = yes", "strict = maybe", "numa = required",
              "policy = pack", "trust = on", "spoofchk = unset", "state_dir = relative",
              "state_dir = /tmp/x", "sysfs_root = /nonexistent", "connect = ", "key", "= value",
              "  continued", "; comment", "# comment", "x = y ; inline", "\t", "\x00", "\ufeff",
              "pfs = ens1f0\n  ens1f1", "[pool fast]\n[pool fast]", "pfs = ens1f0\npfs = ens1f1",
              "nic_rate = " + HUGE.decode(), "nic_rate = \u00b2", "nic_rate = 0", "guarantee = yes",
              "lock_timeout = " + HUGE.decode(), "lock_timeout = nan"]


@st.composite
def ini_text(draw):
    lines = draw(st.lists(st.one_of(st.sampled_from(INI_TOKENS), st.text(max_size=30)), max_size=25))
    return "\n".join(lines)


# --- targets -------------------------------------------------------------------------------------

def _valid_mac(mac):
    return bool(mac) and len(mac) == 17 and domscan.normalize_mac(mac) == mac


def rewriter(data):
    """DomainXml and domscan on arbitrary bytes: refuse with XmlError or rewrite consistently."""
    from vfpick.hostdev import DomainXml
    from vfpick.records import Assignment

    try:
        facts = domscan.scan(data)
    except XmlError as exc:
        assert str(exc).strip(), "%s without a message" % type(exc).__name__
        facts = None
    try:
        doc = DomainXml.parse(data)
        nets = doc.network_interfaces()
        managed = doc.managed_interfaces()
        doc.macs()
        for pool in ("fast", None):
            doc.overrides(pool)
        doc.numa_nodes({0: frozenset(range(8)), 1: frozenset(range(8, 16))})
        uuid = doc.ensure_uuid()
    except XmlError as exc:
        assert str(exc).strip(), "%s without a message" % type(exc).__name__
        return
    # What lxml accepts, expat accepted too (the hook and the rewriter see the same domains).
    assert facts is not None, "hostdev accepted what domscan refused"
    assert uuid and domscan.canonical_uuid(uuid) == uuid
    assignments = {}
    for n, iface in enumerate(nets):
        assignments[iface.index] = Assignment(
            # apply() takes valid MACs only (the resolver must refuse others before it).
            mac=iface.mac if _valid_mac(iface.mac) else "52:54:00:ee:00:%02x" % (n % 256), pool="fast",
            vf="0000:3c:%02x.%d" % (n // 8 % 32, n % 8), pf="0000:3b:00.0", link="l")
    try:
        doc.apply(assignments)
    except XmlError as exc:
        assert str(exc).strip(), "%s without a message" % type(exc).__name__
        return
    out = doc.to_bytes()
    again = DomainXml.parse(out)  # our own output always parses
    again.apply(assignments)
    assert again.to_bytes() == out, "apply is not a fixed point"
    scanned = domscan.scan(out)
    assert scanned.uuid == uuid
    assert {m.index for m in again.managed_interfaces()} >= set(assignments)
    del managed


NUMBER_TOKENS = ["0", "1", "-1", "0x3b", "010", "\u00b2", "\u0661", HUGE.decode(), "-" + HUGE.decode(),
                 "0x" + HUGE.decode(), "1_0", " 1 ", "1-3", "^2", ",", "4294967296", "65536"]

numbers_text = st.one_of(
    st.lists(st.sampled_from(NUMBER_TOKENS), max_size=6).map("".join), st.text(max_size=40))


def numbers_target(text):
    """Every parser of numbers from outside (vfpick.numbers, cpulist, PCI addresses, MACs,
    <bandwidth> rates) on any text: a value within its bounds or a refusal, nothing else."""
    from vfpick import bandwidth, cpulist, numbers, pci

    for value in (numbers.whole(text), numbers.whole(text, 0, 255, 16), numbers.libvirt_int(text),
                  numbers.sysfs_int(text)):
        assert value is None or type(value) is int
    cpus = cpulist.parse(text)
    assert cpus is None or all(0 <= c <= cpulist.MAX_ID for c in cpus)
    pci.from_libvirt_attrs(text, text, text, text)
    pci.normalize(text)
    mac = domscan.libvirt_mac(text)
    assert mac is None or (len(mac) == 17 and domscan.libvirt_mac(mac) == mac)
    try:
        bw = bandwidth.from_attrs({"average": text, "peak": None, "floor": text}.get)
    except XmlError as exc:
        assert "\n" not in str(exc)
    else:
        assert bw is None or bw.average <= bandwidth.MAX_KIB


@st.composite
def claims_file(draw):
    """A claims file with claims whose fields are drawn from the hostile values issue 31 found
    (rates past u32, lone surrogates, huge counts) and plain ones."""
    value = st.one_of(st.none(), st.booleans(), st.integers(-1, 2 ** 70), st.sampled_from(
        ["\udcff", "fast", "vm", "0000:3c:00.1", "52:54:00:00:00:01", ""]), st.text(max_size=8))
    settings_ = st.fixed_dictionaries({"trust": value, "spoofchk": value},
                                      optional={"max_tx_rate": value, "min_tx_rate": value})
    claim = st.fixed_dictionaries({
        "vf": st.sampled_from(["0000:3c:00.1", "0000:3C:00.1", "\udcff"]), "pf": value, "link": value,
        "pool": value, "domain": value, "uuid": value, "mac": value, "active": value,
        "pending": st.one_of(st.none(), st.fixed_dictionaries({"boot": value, "pid": value,
                                                               "start": value})),
        "applied": st.one_of(st.none(), settings_), "restore": st.one_of(st.none(), settings_),
        "gen": value}, optional={"rate_mbps": value, "peak_mbps": value, "min_rate_mbps": value})
    doc = {"version": 2, "generation": draw(st.integers(0, 2 ** 65)),
           "claims": draw(st.lists(claim, max_size=2))}
    return json.dumps(doc).encode()


def claims_target(raw):
    """The claims codec on a hostile file: claims within their bounds or a ValueError; and what
    it accepts, every report prints (names escaped)."""
    from vfpick import names
    from vfpick.state import codec

    try:
        claims, _generation, _gens, _drained = codec.parse(raw)
    except ValueError as exc:
        assert str(exc)
        return
    for claim in claims.values():
        assert codec.claim_problem(claim) is None
        for rate in (claim.rate_mbps, claim.peak_mbps, claim.min_rate_mbps):
            assert rate is None or 1 <= rate <= codec.MAX_RATE
        for field in (claim.pool, claim.domain, claim.mac, claim.link):
            names.printable(field).encode("utf-8")


def config(text):
    """config.parse: a Config or a one-line ConfigError naming the file, never anything else."""
    try:
        cfg = configmod.parse(text, "/fuzz/vfpick.ini")
    except ConfigError as exc:
        message = str(exc)
        assert "/fuzz/vfpick.ini" in message, message  # names the file (str() is one line anyway)
        return
    for pool in cfg.pools.values():
        assert pool.distinct in configmod.DISTINCT and pool.numa in configmod.NUMA
        assert isinstance(pool.strict, bool)


SPEC = {
    "nodes": {"0": "0-7", "1": "8-15"},
    "cards": [{"bus": "3b", "numa": 0, "pfs": [{"netdev": "ens1f0", "port": 0, "vfs": 4},
                                               {"netdev": "ens1f1", "port": 1, "vfs": 4}]}],
}


class HookHost:
    """A simulated host with a config, for in-process hook runs; reset() empties the claims."""

    def __init__(self, base):
        self.base = base
        sysfs = simhost.build(base, SPEC)
        for d in ("run", "etc/networks", "state"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        self.state = os.path.join(base, "state", "claims.json")
        self.config_path = os.path.join(base, "vfpick.ini")
        with open(self.config_path, "w") as f:
            f.write("[vfpick]\nstate_dir = %s/state\nsysfs_root = %s\nlibvirt_run_dir = %s/run\n"
                    "libvirt_config_dir = %s/etc\n\n[pool fast]\npfs = ens1f0 ens1f1\n"
                    % (base, sysfs, base, base))
        self.cfg = configmod.load(self.config_path)
        # One resolved domain, so hostile inputs meet real claims.
        self.owner = resolver.resolve(
            self.cfg, b"<domain type='kvm'><name>owner</name><devices><interface type='network'>"
                      b"<source network='fast'/></interface></devices></domain>",
            rng=random.Random(1)).xml
        with open(self.state, "rb") as f:
            self.baseline = f.read()

    def reset(self):
        with open(self.state, "wb") as f:
            f.write(self.baseline)


def hook_op(host, name, op, subop, data):
    """hook.run on anything: exit 0/1, one `vfpick:` line per message, no internal error, the
    state parses, the owner's claim survives, and nothing is claimed twice."""
    out, err = io.BytesIO(), io.StringIO()
    rc = hook.run([name, op, subop, "-"], stdin=io.BytesIO(data), stdout=out, stderr=err,
                  config_path=host.config_path)
    message = err.getvalue()
    assert rc in (0, 1), rc
    assert message == "" or message.endswith("\n"), message
    assert "internal error" not in message and "Traceback" not in message, message
    for line in message.split("\n")[:-1]:
        assert line.startswith("vfpick: "), message
    if op not in ("migrate", "restore"):
        assert out.getvalue() == b""
    elif out.getvalue():
        domscan.scan(out.getvalue())  # a filter prints a domain libvirt can parse
    with open(host.state, "rb") as f:
        doc = json.loads(f.read())
    vfs = [c["vf"] for c in doc["claims"]]
    assert len(vfs) == len(set(vfs))
    owner = [c for c in doc["claims"] if c["domain"] == "owner"]
    assert owner, "another domain's input took the owner's claim away"
    return rc, out.getvalue(), message


def is_user_error(exc):
    return isinstance(exc, VfpickError)
