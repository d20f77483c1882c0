"""Issue 31: a domain's own XML is hostile input, vfpick's metadata in it included.

Each test names the defect of the issue it pins (1-12 and the two seen once). Simulated hosts,
libvirt's test driver (test:///default, in this process: the commands run through cli.main),
the installed `vfpick` and hook for what a user runs.
"""

import json
import os

import pytest
from lxml import etree

from clitools import assert_user_error, domain, vfpick
from libvirtfixtures import URI
from test_hook import run_hook
from test_virt import _hostdev, claims, define_with_vfpick, libvirt_xml, state_bytes
from vfpick import cli, cpulist, livemove, resolver
from vfpick.commands import define as define_cmd
from vfpick.errors import GuaranteeImpossible, VfpickError, XmlError
from vfpick.hostdev import DomainXml

NS = "http://vfpick.org/xmlns/libvirt/domain/1.0"
HUGE = "9" * 4301   # past Python's int digit limit: int() raises ValueError on it
MAC1, MAC2 = "52:54:00:aa:00:01", "52:54:00:aa:00:02"


def meta(*nics):
    return ("<metadata><vfpick:domain xmlns:vfpick='%s'>%s</vfpick:domain></metadata>"
            % (NS, "".join("<vfpick:nic %s/>" % n for n in nics)))


def nic_attrs(mac, vf, pf="", pool="fast", **rates):
    return "mac='%s' pool='%s' vf='%s' pf='%s' link='x' %s" % (
        mac, pool, vf, pf, " ".join("%s='%s'" % kv for kv in sorted(rates.items())))


def hostile(host, name="evil", uuid="0f0f0f0f-0000-4000-8000-000000000031", **rates):
    """A domain as plain `virsh define` takes it: a hand-written hostdev NIC of a pool VF
    whose vfpick metadata carries *rates* (average='HUGE' by default)."""
    topo = host.topology()
    vf = sorted(topo.vfs)[-1]
    rates = rates or {"average": HUGE}
    return domain(name, nics=0, uuid=uuid, head=meta(nic_attrs(MAC1, vf, topo.vfs[vf].pf, **rates)),
                  extra_devices=_hostdev(vf, MAC1)).decode()


def with_meta_rates(xml, rates):
    """*xml* (str or bytes) with *rates* (attribute text) added to its <vfpick:nic> records."""
    text = xml.decode() if isinstance(xml, bytes) else xml
    for quoted in ("pool='fast'", 'pool="fast"'):
        text = text.replace(quoted, "%s %s" % (quoted, rates))
    assert rates in text
    return text.encode() if isinstance(xml, bytes) else text


def run(host, capsys, *args):
    code = cli.main(["--config", host.config_path] + list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# ---------------------------------------------------------------- 1: reconcile, drain, watcher

@pytest.mark.parametrize("flags", [["--dry-run"], [], ["--rebuild"], ["--rebuild", "--dry-run"]])
def test_1_reconcile_reports_a_domain_with_a_huge_metadata_rate_and_handles_the_rest(
        cfg, conn, host, capsys, flags):
    honest = define_with_vfpick(cfg, conn, "honest", nics=1)
    conn.defineXML(hostile(host))
    before = {c.vf: c for c in claims(cfg)}
    code, out, err = run(host, capsys, "reconcile", "--connect", URI, *flags)
    assert code == 0, err
    assert any(line.startswith("invalid: domain 'evil'") and "average" in line
               for line in out.splitlines()), out
    after = {c.vf: c for c in claims(cfg)}
    assert {vf: c for vf, c in after.items() if c.uuid == honest.uuid} == before


def test_1_drain_reports_a_domain_with_a_huge_metadata_rate_and_moves_the_rest(
        cfg, conn, host, capsys):
    # the hostile domain went through vfpick once (its claim is recorded), then was edited
    evil = define_cmd.cmd_define(cfg, domain("evil", nics=1), URI).result
    xml = libvirt_xml(conn, "evil")
    conn.defineXML(with_meta_rates(xml, "average='%s'" % HUGE))
    [claim] = [c for c in claims(cfg) if c.uuid == evil.uuid]
    for extra in (["--dry-run"], []):
        code, out, err = run(host, capsys, "drain", claim.pf, "--connect", URI, *extra)
        assert "evil" in err + out and "average" in err + out, (out, err)
        assert [c.vf for c in claims(cfg) if c.uuid == evil.uuid] == [claim.vf]


def test_1_watcher_sync_skips_the_hostile_domain_and_resolves_the_others(host):
    from test_watch import FakeConn, make_watcher

    cfg = host.write_config()
    conn = FakeConn()
    conn.add(hostile(host).encode())
    conn.add(domain("web1", nics=1, uuid="33333333-3333-3333-3333-333333333333"))
    w = make_watcher(cfg, [conn])
    assert w.connect()
    assert not any("internal error" in line for line in w.lines), w.lines
    assert any("invalid: domain 'evil'" in line for line in w.lines), w.lines
    assert [c.domain for c in claims(cfg) if c.domain == "web1"] == ["web1"]


# ---------------------------------------------------------------- 2: huge numbers in, one line out

def test_2_a_huge_bandwidth_or_nic_rate_is_one_line(host):
    cfg = host.write_config()
    bw = "<bandwidth><outbound average='%s'/></bandwidth>" % HUGE
    proc = vfpick(host, "resolve", "-", input=domain("vm", iface_extra=bw))
    assert_user_error(proc, "average")
    assert not os.path.exists(os.path.join(cfg.state_dir, "claims.json")) or \
        json.loads(state_bytes(cfg))["claims"] == []
    with open(host.config_path, "a") as f:   # written by hand: write_config would refuse it
        f.write("nic_rate = %s\n" % HUGE)
    proc = vfpick(host, "resolve", "-", input=domain("vm"))
    assert_user_error(proc, "nic_rate")
    # the hook of a vfpick domain says what is wrong with the config, not "reinstall"
    proc = run_hook(host, "vm", "prepare", "begin", domain("vm"))
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "nic_rate" in err and "reinstall" not in err, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- 3: forged floors and guarantee

def guarantee_cfg(host):
    return host.write_config(pools={"fast": "pfs = ens1f0\nguarantee = yes\n"})


def test_3_prepare_refuses_a_forged_metadata_floor_past_the_links_room(make_host):
    host = make_host()
    cfg = guarantee_cfg(host)
    # 20,000 Mb/s guaranteed on the 25G link by an honest domain
    resolver.resolve(cfg, domain("honest", iface_extra="<bandwidth><inbound floor='2441406'/>"
                                 "<outbound average='2441406'/></bandwidth>"))
    topo = host.topology()
    free = [vf for vf in sorted(topo.vfs) if topo.vfs[vf].pf == cfg.pools["fast"].pfs[0]
            and vf not in {c.vf for c in claims(cfg)}][0]
    forged = domain("forged", nics=0, uuid="0f0f0f0f-0000-4000-8000-000000000033",
                    head=meta(nic_attrs(MAC2, free, topo.vfs[free].pf, average="2441406",
                                        floor="2441406")),
                    extra_devices=_hostdev(free, MAC2))
    before = claims(cfg)
    proc = run_hook(host, "forged", "prepare", "begin", forged)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "guarantee" in err and err.count("\n") == 1, err
    assert claims(cfg) == before
    # a reconnect (the guest runs on it already) records it, rateless, and says why
    proc = run_hook(host, "forged", "reconnect", "begin", forged)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "guarantee" in err and "Traceback" not in err, err
    [recorded] = [c for c in claims(cfg) if c.vf == free]
    assert (recorded.rate_mbps, recorded.min_rate_mbps) == (None, None)


def test_3_a_kept_vf_whose_metadata_floor_was_raised_is_checked_again(make_host):
    host = make_host()
    cfg = guarantee_cfg(host)
    resolver.resolve(cfg, domain("honest", iface_extra="<bandwidth><inbound floor='2441406'/>"
                                 "<outbound average='2441406'/></bandwidth>"))
    mine = resolver.resolve(cfg, domain("mine", uuid="0f0f0f0f-0000-4000-8000-000000000034"))
    raised = with_meta_rates(mine.xml, "average='2441406' floor='2441406'")
    before = claims(cfg)
    with pytest.raises(GuaranteeImpossible):
        resolver.resolve(cfg, raised)
    assert claims(cfg) == before


def test_3_a_rebuild_holds_metadata_rates_to_the_links_room(make_host, conn, capsys):
    host = make_host()
    cfg = guarantee_cfg(host)
    big = "<bandwidth><inbound floor='2441406'/><outbound average='2441406'/></bandwidth>"
    define_cmd.cmd_define(cfg, domain("honest", uuid="00000000-0000-4000-8000-000000000001",
                                      iface_extra=big), URI)
    define_cmd.cmd_define(cfg, domain("mine", uuid="ffffffff-0000-4000-8000-000000000001"), URI)
    conn.defineXML(with_meta_rates(libvirt_xml(conn, "mine"), "average='2441406' floor='2441406'"))
    with open(os.path.join(cfg.state_dir, "claims.json"), "wb") as f:
        f.write(b"{lost")
    code, out, err = run(host, capsys, "reconcile", "--connect", URI, "--rebuild")
    assert code == 0, err
    rates = {c.domain: (c.rate_mbps, c.min_rate_mbps) for c in claims(cfg)}
    assert rates == {"honest": (20000, 20000), "mine": (None, None)}, rates
    assert "without the rates its metadata names" in out


# ---------------------------------------------------------------- 4: livemove keeps <bandwidth>

def test_4_a_live_moves_new_definition_keeps_the_nics_rates(cfg):
    bw = "<bandwidth><inbound floor='12207'/><outbound average='61035' peak='122070'/></bandwidth>"
    result = resolver.resolve(cfg, domain("vm", iface_extra=bw))
    [(mac, pick)] = result.picks.items()
    new = [c for c in claims(cfg) if c.mac == mac][0]._replace(vf=sorted(cfg.pools["fast"].pfs)[0])
    out, element = livemove.new_definition(result.xml, mac, new)
    [entry] = DomainXml.parse(out).managed_interfaces()
    assert entry.bandwidth is not None
    assert (entry.bandwidth.average, entry.bandwidth.peak, entry.bandwidth.floor) == (61035, 122070, 12207)
    assert element is not None


# ---------------------------------------------------------------- 5: attach's claim rolled back

NESTED = b"<interface type='network'><source network='fast'/>" + b"<a>" * 80 + b"</a>" * 80 + \
    b"</interface>"
UTF16 = ("<?xml version='1.0' encoding='UTF-16'?><!DOCTYPE i [<!ENTITY e 'x'>]>"
         "<interface type='network'><source network='fast'/><alias name='&e;'/></interface>"
         ).encode("utf-16")


@pytest.mark.parametrize("data", [NESTED, UTF16], ids=["nested-80", "utf16-doctype"])
def test_5_attach_of_xml_that_fails_to_parse_claims_nothing(host, data):
    from test_hotplug_vf import Dom, attach, netlink_for

    cfg = host.write_config()
    nl = netlink_for(host)
    dom = Dom(nl, host)
    with pytest.raises(XmlError) as e:
        attach(dom, cfg, nl, data, live=True)
    assert "\n" not in str(e.value)
    assert claims(cfg) == [] and dom.seen == []


class Boom(Exception):
    """An unexpected failure injected at one step (not a VfpickError, not libvirt's)."""


@pytest.mark.parametrize("step", ["netlink", "attach", "attach-interrupt"])
def test_5_attach_rolls_back_claim_and_vf_settings_on_a_failure_at_each_step(host, step):
    from test_hotplug_vf import Dom, attach, netlink_for, vf_now

    cfg = host.write_config(pools={"fast": "pfs = %s\ntrust = on\n" % " ".join(host.netdevs())})
    nl = netlink_for(host)
    dom = Dom(nl, host)
    error = KeyboardInterrupt if step == "attach-interrupt" else Boom
    if step == "netlink":
        def set_vf(*_args, **_kw):
            raise error("netlink went away")
        nl.set_vf = set_vf
    else:
        def refuse(_dom, xml, _sides):
            dom.seen.append(dom._vf_state(etree.fromstring(xml)))
            raise error("libvirt-python broke")
        dom.attach = refuse
    with pytest.raises((error, VfpickError)):
        attach(dom, cfg, nl, live=True)
    assert claims(cfg) == []
    for vf, _state in dom.seen:
        assert vf_now(nl, host, vf) == (False, True, 0, 0)


class FailingDefine:
    """A libvirt connection whose defineXML fails with something else than a libvirtError."""

    def __init__(self, conn, error):
        self.conn, self.error = conn, error

    def defineXML(self, _xml):
        raise self.error("the client library broke")

    def __getattr__(self, name):
        return getattr(self.conn, name)


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_5_define_repick_and_moves_roll_back_on_any_failure_of_the_call(cfg, conn, error):
    from vfpick import moves

    with pytest.raises(error):
        define_cmd.define_resolved(cfg, FailingDefine(conn, error), domain("new", nics=2))
    assert claims(cfg) == []
    kept = define_with_vfpick(cfg, conn, "kept", nics=2)
    before = claims(cfg)
    xml = libvirt_xml(conn, "kept")
    with pytest.raises(error):   # a repick that must pick anew (no kept VFs in the XML)
        define_cmd.define_resolved(cfg, FailingDefine(conn, error),
                                   domain("kept", nics=2, uuid=kept.uuid), only_if_changed=True)
    assert claims(cfg) == before
    with pytest.raises(error):
        moves.move_stopped_domain(cfg, FailingDefine(conn, error), "kept", avoid={before[0].pf})
    assert claims(cfg) == before and libvirt_xml(conn, "kept") == xml


# ---------------------------------------------------------------- 6: the watcher's log lines

def test_6_a_carriage_return_in_a_name_stays_on_its_log_line(capsys):
    cli.log_line("resolved domain 'a\rForged: line' and 'b\nc\x1b[2J'")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\r" not in err and "\x1b" not in err
    assert "a\\rForged: line" in err


# ---------------------------------------------------------------- 7: metrics clients that reset

def test_7_clients_that_reset_after_get_metrics_leave_no_traceback(host, capfd):
    import socket
    import struct
    import threading
    import urllib.request

    from vfpick.commands import metrics
    from waiting import wait_until

    cfg = host.write_config()
    resolver.resolve(cfg, domain("web", nics=2))
    logged = []
    before = threading.active_count()
    server = metrics.serve(cfg, "127.0.0.1:0", logged.append)
    try:
        port = server.server_address[1]
        for _ in range(20):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()   # a reset, not a FIN
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:
            assert resp.status == 200
        wait_until(lambda: threading.active_count() <= before + 1, "the handlers to end")
    finally:
        server.shutdown()
        server.server_close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    assert not any("Traceback" in line for line in logged), logged


# ---------------------------------------------------------------- 8: MACs as libvirt reads them

@pytest.mark.parametrize("spelling", ["52:54:00:aa:00:01 x", "52:54:00:AA:0:1", "52:54:00:aa:00:01\t"])
def test_8_two_spellings_of_one_mac_are_a_duplicate(host, spelling):
    cfg = host.write_config()
    topo = host.topology()
    vf = sorted(topo.vfs)[-1]
    iface = ("<interface type='network'><mac address='%s'/><source network='fast'/></interface>"
             % MAC1)
    xml = domain("vm", nics=0, extra_devices=iface + _hostdev(vf, spelling))
    with pytest.raises(XmlError) as e:
        resolver.resolve(cfg, xml)
    assert MAC1 in str(e.value) and "twice" in str(e.value)
    assert claims(cfg) == []


@pytest.mark.parametrize("text, mac", [
    ("52:54:00:aa:00:01", MAC1), ("52:54:00:aa:00:01 x", MAC1), ("5:4:0:a:0:1", "05:04:00:0a:00:01"),
    ("52:54:00:aa:00:01x", None), ("52:54:00:aa:00:001", None), ("52:54:00:aa:00", None),
    ("52:54:00:aa:00:01:02", None), ("+52:54:00:aa:00:01", None), ("", None), ("52::00:aa:00:01", None),
])
def test_8_mac_parsing_is_libvirts(text, mac):
    from vfpick.domscan import libvirt_mac

    assert libvirt_mac(text) == mac


# ---------------------------------------------------------------- 9: floor above average

def test_9_a_floor_above_the_average_is_refused_at_resolve(host):
    host.write_config()
    bw = "<bandwidth><inbound floor='2000'/><outbound average='1000'/></bandwidth>"
    proc = vfpick(host, "resolve", "-", input=domain("vm", iface_extra=bw))
    assert_user_error(proc, "floor", "average")


# ---------------------------------------------------------------- 10: cpusets

@pytest.mark.parametrize("cpuset", ["\u00b2", "1-\u00b2", "\u0661", HUGE, "1-%s" % HUGE, "^%s" % HUGE,
                                    "0-65536", "-1", "1--2", "0x1"])
def test_10_a_bad_cpuset_or_nodeset_is_no_traceback(host, cpuset):
    assert cpulist.parse(cpuset) is None
    host.write_config()
    for head in ("<vcpu cpuset='%s'>2</vcpu>" % cpuset,
                 "<numatune><memory nodeset='%s'/></numatune>" % cpuset):
        proc = vfpick(host, "resolve", "-", input=domain("vm", head=head))
        assert "Traceback" not in proc.stderr.decode()
        assert proc.returncode in (0, 1)


# ---------------------------------------------------------------- 11, 12: the claims file

def write_state(cfg, **changes):
    claim = {"vf": "0000:3b:02.0", "pf": "0000:3b:00.0", "link": "l", "pool": "fast",
             "domain": "vm", "uuid": "0f0f0f0f-0000-4000-8000-000000000035",
             "mac": MAC1, "active": False, "pending": None, "applied": None,
             "restore": {"trust": False, "spoofchk": None}, "gen": 1}
    for key, value in changes.items():
        claim[key] = value
    os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(cfg.state_dir, "claims.json")
    with open(path, "w") as f:
        f.write(json.dumps({"version": 2, "generation": 1, "claims": [claim]}))
    os.chmod(path, 0o600)


@pytest.mark.parametrize("changes", [
    {"restore": {"trust": False, "spoofchk": None, "max_tx_rate": 2 ** 32}},
    {"applied": {"trust": None, "spoofchk": None, "min_tx_rate": 2 ** 64}},
    {"rate_mbps": 2 ** 32}, {"min_rate_mbps": 10 ** 30},
], ids=lambda c: "-".join(c))
def test_11_an_out_of_bound_rate_is_a_corrupt_file(host, changes):
    cfg = host.write_config()
    write_state(cfg, **changes)
    for args in (["status"], ["metrics"], ["release", "vm"]):
        assert_user_error(vfpick(host, *args), "claims.json")
    # release end says so in one line, and does not wedge in an internal error
    proc = run_hook(host, "vm", "release", "end",
                    domain("vm", nics=0, uuid="0f0f0f0f-0000-4000-8000-000000000035"))
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err and "internal error" not in err, err


@pytest.mark.parametrize("field", ["pool", "domain"])
def test_12_a_lone_surrogate_in_a_claim_is_escaped_by_metrics_and_release(host, field):
    cfg = host.write_config()
    write_state(cfg, **{field: "fa\udcffst" if field == "pool" else "vm\udcff"})
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    proc = vfpick(host, "metrics", env=strict)
    assert proc.returncode == 0 and b"\\udcff" in proc.stdout, proc.stderr
    proc = vfpick(host, "release", "0f0f0f0f-0000-4000-8000-000000000035", env=strict)
    assert proc.returncode == 0 and b"\\udcff" in proc.stdout, proc.stderr
    assert claims(cfg) == []


# ---------------------------------------------------------------- seen once: daemon

def test_a_masked_unit_with_a_wants_link_left_behind_is_not_enabled(tmp_path):
    from vfpick.host import libvirtdaemon

    root = tmp_path
    for d in ("lib/systemd/system", "etc/systemd/system/multi-user.target.wants"):
        os.makedirs(root / d)
    for unit in ("libvirtd.service", "virtqemud.service"):
        (root / "lib/systemd/system" / unit).write_text("[Service]\n")
    os.symlink("/lib/systemd/system/virtqemud.service",
               root / "etc/systemd/system/multi-user.target.wants/virtqemud.service")
    os.symlink("/dev/null", root / "etc/systemd/system/virtqemud.service")
    os.makedirs(root / "run")
    os.makedirs(root / "proc")
    assert libvirtdaemon.service(str(root)) == "libvirtd"


def test_a_fifo_at_the_daemons_pid_file_does_not_hang(tmp_path):
    from vfpick.host import libvirtdaemon

    os.makedirs(tmp_path / "run")
    os.makedirs(tmp_path / "proc")
    os.mkfifo(tmp_path / "run" / "libvirtd.pid")
    # a plain open() of the FIFO would block here forever
    assert libvirtdaemon.restart_command(str(tmp_path)) == "systemctl restart libvirtd"
