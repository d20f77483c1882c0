"""Issue 20's red-team findings, one section each; every test here failed before its fix.

See docs/THREAT-MODEL.md ("Hardening rules" of the contract)."""

import os
import shlex
import socket
import stat
import subprocess
import sys
import threading
import urllib.request

import pytest

from clitools import HOOK, VFPICK, assert_user_error, cli_env, domain, free_port, vfpick
from vfpick.commands import check, checkhook, installhook, metrics
from vfpick import cli, resolver
from vfpick.errors import VfpickError
from vfpick.hostdev import DomainXml
from vfpick.records import Claim
from vfpick.state import StateStore
from waiting import WAIT, wait_until

NOBODY = 65534
GPU = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' "
       "bus='0x65' slot='0x00' function='0x0'/></source></hostdev>\n")


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another uid")


def claim(n, domain_name="d%d", uuid="u%d"):
    return Claim("0000:3c:%02x.%d" % (n // 8, n % 8), "0000:3b:00.0", "l", "fast",
                 domain_name % n if "%" in domain_name else domain_name,
                 uuid % n if "%" in uuid else uuid, "52:54:00:00:%02x:%02x" % (n // 256, n % 256),
                 False)


def run_hook(host, name, xml, op="prepare", subop="begin", env=None):
    # libvirt's scrubbed environment; the interpreter with vfpick installed.
    scrubbed = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "USER": "root",
                "LOGNAME": "root", "LC_ALL": "C", "VFPICK_CONFIG": host.config_path}
    return subprocess.run([sys.executable, HOOK, name, op, subop, "-"], input=xml,
                          capture_output=True, env=dict(scrubbed, **(env or {})), timeout=WAIT)


def resolved(host, name, nics=1):
    xml = vfpick(host, "resolve", "-", input=domain(name, nics=nics), check=0).stdout
    with open(os.path.join(host.config_dir, name + ".xml"), "wb") as f:
        f.write(xml)
    return xml


# ------------------------------------------------------------- 1. threads of one process

def test_store_is_safe_across_threads(tmp_path):
    """Transactions and snapshots from many threads at once: no 'nested' error, nothing lost."""
    store = StateStore(str(tmp_path / "state"), lock_timeout=60)
    errors, per_thread, threads = [], 12, 8

    def work(t):
        try:
            for i in range(per_thread):
                with store.transaction() as claims:
                    claims.put(claim(t * per_thread + i))
                store.snapshot().all()
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(e))

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(WAIT)
    assert errors == []
    assert len(store.snapshot().all()) == threads * per_thread


def test_a_thread_still_may_not_nest_its_own_transaction(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    with store.transaction():
        with pytest.raises(RuntimeError, match="nested"):
            store.snapshot()


def test_snapshot_from_another_thread_waits_for_a_transaction(tmp_path):
    store = StateStore(str(tmp_path / "state"), lock_timeout=60)
    seen, inside = [], threading.Event()

    def reader():
        inside.wait(WAIT)
        seen.append(len(store.snapshot().all()))

    t = threading.Thread(target=reader)
    t.start()
    with store.transaction() as claims:
        claims.put(claim(1))
        inside.set()
        t.join(0.3)  # the reader is waiting for its turn, not failing
        assert seen == []
    t.join(WAIT)
    assert seen == [1]


def scrape_many(url, n, threads=8):
    results = []

    def one():
        for _ in range(n):
            try:
                with urllib.request.urlopen(url, timeout=WAIT) as resp:
                    body = resp.read()
                    results.append((resp.status, b"vfpick_vfs" in body))
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                results.append(repr(e))

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(WAIT * 4)
    return results


def test_parallel_scrapes_while_the_store_is_written(host):
    config = host.write_config()
    resolved(host, "web", nics=2)
    logged = []
    server = metrics.serve(config, "127.0.0.1:0", logged.append)
    stop, writer_errors = threading.Event(), []
    store = StateStore.for_config(config)

    def watcher_like():
        n = 0
        while not stop.is_set():
            try:
                with store.transaction() as claims:
                    c = claims.all()[0]
                    claims.put(c._replace(active=not c.active))
            except Exception as e:  # noqa: BLE001
                writer_errors.append(repr(e))
            n += 1

    writer = threading.Thread(target=watcher_like)
    writer.start()
    try:
        results = scrape_many("http://127.0.0.1:%d/metrics" % server.server_address[1], 6)
    finally:
        stop.set()
        writer.join(WAIT)
        server.shutdown()
        server.server_close()
    assert results == [(200, True)] * len(results) and len(results) == 48
    assert writer_errors == [] and logged == []


def test_watch_answers_parallel_scrapes_without_errors(host):
    host.write_config()
    for n in range(6):
        resolved(host, "web%d" % n, nics=2)
    port = free_port()
    proc = subprocess.Popen([VFPICK, "watch", "--connect", "test:///default",
                             "--metrics-listen", "127.0.0.1:%d" % port], env=cli_env(host),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = "http://127.0.0.1:%d/metrics" % port
    try:
        def up():
            assert proc.poll() is None, proc.stderr.read1()
            try:
                return urllib.request.urlopen(url, timeout=WAIT).read()
            except OSError:
                return None
        wait_until(up, "an answer on port %d" % port, interval=0.2)
        results = scrape_many(url, 20)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT)
    assert results == [(200, True)] * 160
    assert b"nested" not in err and b"Traceback" not in err, err
    assert b"not a loopback" not in err


def slow_client(port, stop):
    """Sends one byte of a request at a time until the server hangs up; True when it did."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 10000:
            if stop.wait(0.3):
                return False
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return True
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    return True
            except BlockingIOError:
                pass
            except OSError:
                return True
            finally:
                s.setblocking(True)
    return False


def handler_threads():
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_a_slow_client_cannot_keep_a_handler_and_handlers_are_capped(host):
    config = host.write_config()
    server = metrics.serve(config, "127.0.0.1:0", lambda _m: None, request_timeout=1,
                           max_handlers=2)
    port = server.server_address[1]
    stop, hung_up, most = threading.Event(), [], 0
    slow = [threading.Thread(target=lambda: hung_up.append(slow_client(port, stop)))
            for _ in range(6)]
    try:
        for t in slow:
            t.start()
        while any(t.is_alive() for t in slow):
            most = max(most, handler_threads())
            slow[0].join(0.05)
        # The server hung up on every one of them: a whole request is bounded in time, and
        # never more than two were served at once.
        assert hung_up == [True] * 6
        assert 1 <= most <= 2
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=WAIT) as r:
            assert r.status == 200
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("listen, warned", [("127.0.0.1:0", False), ("[::1]:0", False),
                                            ("0.0.0.0:0", True)])
def test_a_listen_address_that_is_not_loopback_is_warned_about(host, listen, warned):
    config = host.write_config()
    logged = []
    try:
        server = metrics.serve(config, listen, logged.append)
    except VfpickError as e:
        pytest.skip("cannot listen on %s here: %s" % (listen, e))
    server.shutdown()
    server.server_close()
    assert [m for m in logged if "not a loopback" in m] == (
        ["warning: --metrics-listen %s is not a loopback address: anyone who can reach it sees "
         "this host's VFs and domain names; bind 127.0.0.1 or firewall it" % listen]
        if warned else [])


# ------------------------------------------------------------- 2. state dir written by others

def _loose_dir(host):
    os.chmod(host.state_dir, 0o777)


def _planted_file(host):
    path = os.path.join(host.state_dir, "claims.json")
    os.chown(path, NOBODY, NOBODY)


def _planted_lock(host):
    path = os.path.join(host.state_dir, "claims.lock")
    os.chown(path, NOBODY, NOBODY)


def _loose_file(host):
    os.chmod(os.path.join(host.state_dir, "claims.json"), 0o666)


HOSTILE_STATE = [
    (_loose_dir, "writable by everyone", False),
    (_planted_file, "owned by uid %d" % NOBODY, True),
    (_planted_lock, "owned by uid %d" % NOBODY, True),
    (_loose_file, "writable by others", False),
]
READERS = ["status", "metrics", "resolve", "hook"]


def read_state(host, reader, xml):
    """Runs *reader* (a READERS entry) against the host's state; the process."""
    if reader == "hook":
        return run_hook(host, "mine", xml)
    if reader == "resolve":
        return vfpick(host, "resolve", "-", input=domain("new", nics=1))
    return vfpick(host, reader)


@pytest.mark.parametrize("make_hostile, says, root_only", HOSTILE_STATE,
                         ids=[h[0].__name__ for h in HOSTILE_STATE])
@pytest.mark.parametrize("reader", READERS)
def test_a_state_dir_others_could_write_is_refused_on_every_path(host, make_hostile, says,
                                                                 root_only, reader):
    if root_only:
        needs_root()
    host.write_config()
    xml = resolved(host, "mine", nics=1)
    make_hostile(host)
    before = {n: open(os.path.join(host.state_dir, n), "rb").read()
              for n in os.listdir(host.state_dir) if n.startswith("claims")}
    mode = stat.S_IMODE(os.stat(host.state_dir).st_mode)
    err = assert_user_error(read_state(host, reader, xml), says)
    assert "chmod 0700" in err or "remove it" in err
    after = {n: open(os.path.join(host.state_dir, n), "rb").read()
             for n in os.listdir(host.state_dir) if n.startswith("claims")}
    assert after == before  # nothing adopted, merged or tightened
    assert stat.S_IMODE(os.stat(host.state_dir).st_mode) == mode


def test_the_hook_leaves_foreign_domains_alone_with_a_loose_state_dir(host):
    host.write_config()
    resolved(host, "mine", nics=1)
    _loose_dir(host)
    before = sorted(os.listdir(host.state_dir))
    proc = run_hook(host, "gpu", domain("gpu", nics=0, extra_devices=GPU))
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert sorted(os.listdir(host.state_dir)) == before


# ------------------------------------------------------------- 3. the metrics textfile

def test_textfile_is_0644_whatever_the_umask(host, tmp_path):
    config = host.write_config()
    out = tmp_path / "textfile"
    out.mkdir()
    old = os.umask(0)
    try:
        path = metrics.write_textfile(config, str(out))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(str(out)) == ["vfpick.prom"]


def test_textfile_never_writes_through_a_planted_symlink(host, tmp_path):
    config = host.write_config()
    out = tmp_path / "textfile"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(str(victim), str(out / ("vfpick.prom.%d.tmp" % os.getpid())))
    with pytest.raises(VfpickError, match="already exists"):
        metrics.write_textfile(config, str(out))
    assert victim.read_text() == "precious\n"
    assert not (out / "vfpick.prom").exists()


# ------------------------------------------------------------- 4. FIFOs and devices

def _fifo(path):
    os.mkfifo(path)
    return path


def test_a_fifo_as_config_refuses_commands_in_one_line(host, tmp_path):
    host.write_config()
    fifo = _fifo(str(tmp_path / "fifo.ini"))
    for args in (["status"], ["install-hook", "--hooks-dir", str(tmp_path / "hooks")],
                 ["resolve", "-"]):
        proc = subprocess.run([VFPICK] + args + ["--config", fifo], input=domain("x"),
                              capture_output=True, timeout=WAIT, env=cli_env(host))
        assert_user_error(proc, fifo, "not a regular file (a FIFO)")


def test_a_device_as_config_is_refused(host):
    host.write_config()
    proc = vfpick(host, "status", "--config", "/dev/zero")
    assert_user_error(proc, "/dev/zero", "character device")


def test_the_hook_of_a_foreign_domain_with_a_fifo_config_exits_0(host, tmp_path):
    host.write_config()
    fifo = _fifo(str(tmp_path / "fifo.ini"))
    proc = run_hook(host, "gpu", domain("gpu", nics=0, extra_devices=GPU),
                    env={"VFPICK_CONFIG": fifo})
    assert proc.returncode == 0, proc.stderr  # within the subprocess timeout: no hang
    assert b"not a regular file (a FIFO)" in proc.stderr  # the one-line warning


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_as_domain_xml_is_refused(host, tmp_path, kind):
    host.write_config()
    path = _fifo(str(tmp_path / "d.xml")) if kind == "fifo" else "/dev/zero"
    assert_user_error(vfpick(host, "resolve", path), path, "not a regular file")


def test_fifos_in_libvirt_dirs_and_the_state_dir_do_not_hang(host):
    host.write_config()
    xml = resolved(host, "mine", nics=1)
    _fifo(os.path.join(host.config_dir, "planted.xml"))
    _fifo(os.path.join(host.run_dir, "planted.xml"))
    _fifo(os.path.join(host.state_dir, "running.cache"))
    assert vfpick(host, "status").returncode == 0
    assert vfpick(host, "metrics").returncode == 0
    proc = run_hook(host, "mine", xml)
    assert proc.returncode == 0, proc.stderr
    os.unlink(os.path.join(host.state_dir, "claims.json"))
    _fifo(os.path.join(host.state_dir, "claims.json"))
    assert_user_error(vfpick(host, "status"), "not a regular file")


def test_sysfs_attributes_still_read(host):
    # They are regular files (of size 4096, whatever they hold): read as before.
    assert vfpick(host.write_config() and host, "topology").returncode == 0


# ------------------------------------------------------------- 5. names

HOSTILE_NAMES = ["two\nlines", "esc\x1b[31mred", "nul\x7f", "c1\x85", "bad\udcffutf8", "tab\there"]


NAME_COMMANDS = {"release": ["release", "{}"], "repick": ["repick", "{}"],
                 "attach": ["attach", "{}", "-"], "detach": ["detach", "{}", "52:54:00:aa:00:01"],
                 "drain": ["drain", "{}"], "undrain": ["undrain", "{}"],
                 "detach-mac": ["detach", "vm", "{}"]}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("command", sorted(NAME_COMMANDS))
def test_hostile_names_in_argv_are_refused_in_one_line(host, capsys, name, command):
    host.write_config()
    os.environ["VFPICK_CONFIG"] = host.config_path
    try:
        assert cli.main([a.replace("{}", name) for a in NAME_COMMANDS[command]]) == 1
    finally:
        del os.environ["VFPICK_CONFIG"]
    err = capsys.readouterr().err
    assert err.startswith("vfpick: ") and err.count("\n") == 1, err
    assert "not UTF-8" in err or "control character" in err
    err.encode("utf-8")  # printable: no surrogate reaches the terminal


@pytest.mark.parametrize("name", ["two&#10;lines", "del&#127;x", "c1&#133;x", "tab&#9;x"])
def test_hostile_xml_names_are_refused_by_resolve(host, name):
    host.write_config()
    proc = vfpick(host, "resolve", "-", input=domain(name))
    assert_user_error(proc, "<name>", "control character")
    assert not os.path.exists(os.path.join(host.state_dir, "claims.json"))


def test_the_hook_prefers_the_xml_name_over_argv(host):
    host.write_config()
    xml = resolved(host, "good", nics=1)
    proc = run_hook(host, "forged\nrow", xml)
    assert proc.returncode == 0, proc.stderr
    assert {c.domain for c in StateStore(host.state_dir).snapshot().all()} == {"good"}


@pytest.mark.parametrize("xml_name", ["two&#10;lines", "del&#127;x"])
def test_the_hook_refuses_a_hostile_name_of_its_own_domain(host, xml_name):
    host.write_config()
    xml = resolved(host, "good", nics=1).replace(b"<name>good</name>",
                                                 b"<name>%s</name>" % xml_name.encode())
    proc = run_hook(host, "good", xml)
    assert_user_error(proc, "control character")
    assert not any(c.active for c in StateStore(host.state_dir).snapshot().all())


def test_status_and_metrics_escape_names_already_in_the_state(host):
    host.write_config()
    with StateStore(host.state_dir).transaction() as claims:
        claims.put(claim(1, domain_name="evil\nfast  0000:3b:00.0  forged"))
        claims.put(claim(2, domain_name="bad\udcffname"))
    proc = vfpick(host, "status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert any("evil\\nfast" in line for line in lines)
    assert not any(line.startswith("fast  0000:3b:00.0  forged") for line in lines)
    proc = vfpick(host, "metrics")
    assert proc.returncode == 0, proc.stderr
    assert b'domain="bad\\\\udcffname"' in proc.stdout


# ------------------------------------------------------------- 6. duplicate MACs

MAC = "52:54:00:aa:00:01"


def test_two_pool_nics_with_one_mac_are_refused(host):
    host.write_config()
    xml = domain("dup", nics=2, iface_extra="<mac address='%s'/>" % MAC)
    assert_user_error(vfpick(host, "resolve", "-", input=xml), MAC, "twice")
    assert not os.path.exists(os.path.join(host.state_dir, "claims.json"))


def test_a_pool_nic_with_a_resolved_nics_mac_is_refused(host):
    host.write_config()
    xml = vfpick(host, "resolve", "-", input=domain("dup", nics=1,
                 iface_extra="<mac address='%s'/>" % MAC), check=0).stdout
    before = open(os.path.join(host.state_dir, "claims.json"), "rb").read()
    more = xml.replace(b"</devices>", b"<interface type='network'><mac address='%s'/><source "
                       b"network='fast'/></interface>\n</devices>" % MAC.encode())
    assert_user_error(vfpick(host, "resolve", "-", input=more), MAC, "twice")
    assert open(os.path.join(host.state_dir, "claims.json"), "rb").read() == before


def test_two_metadata_records_with_one_mac_are_refused(host):
    host.write_config()
    xml = vfpick(host, "resolve", "-", input=domain("dup", nics=2), check=0).stdout
    doc = DomainXml.parse(xml)
    macs = sorted(doc.macs())
    forged = xml.replace(b'mac="%s"' % macs[1].encode(), b'mac="%s"' % macs[0].encode())
    assert_user_error(vfpick(host, "resolve", "-", input=forged), macs[0], "twice")


def test_attach_to_a_domain_with_duplicate_macs_is_refused(host):
    config = host.write_config()
    xml = domain("dup", nics=2, iface_extra="<mac address='%s'/>" % MAC, uuid="0" * 8 + "-0000-4000-8000-" + "0" * 12)
    with pytest.raises(VfpickError, match=MAC):
        resolver.claim_extra_nic(config, DomainXml.parse(xml), "0" * 8 + "-0000-4000-8000-" + "0" * 12,
                                 "fast", None, ())
    assert StateStore(host.state_dir).snapshot().all() == []


# ------------------------------------------------------------- 7. check reads the baked path

@pytest.mark.parametrize("tail", ["new\nline", "back\\slash", "quote'd", "dollar$(touch x)", "end))"])
def test_check_decodes_the_baked_config_path_and_quotes_commands(host, tmp_path, tail):
    host.write_config()
    odd = tmp_path / ("cfg-" + tail)
    odd.mkdir()
    config_path = str(odd / "vfpick.ini")
    with open(host.config_path) as src, open(config_path, "w") as dst:
        dst.write(src.read())
    hooks = str(tmp_path / ("hooks " + tail))
    installhook.install(hooks, config_path)
    with open(os.path.join(hooks, "qemu.d", "vfpick")) as f:
        text = f.read()
    assert installhook.baked(text, "config") == config_path
    paths = check.Paths(hooks_dir=hooks)
    findings, _ = checkhook.check_hook(paths, config_path)
    assert [f.status for f in findings] == ["ok"], findings
    # Another config: the fix is a command, every path in it one shell word.
    other = str(tmp_path / ("other " + tail + ".ini"))
    findings, _ = checkhook.check_hook(paths, other)
    [finding] = [f for f in findings if f.check == "hook-config"]
    assert shlex.split(finding.fix) == ["vfpick", "install-hook", "--config", other,
                                        "--hooks-dir", hooks]


# ------------------------------------------------------------- what held: a table, every reader

def _symlinked_state_dir(host):
    real = host.state_dir + ".real"
    os.rename(host.state_dir, real)
    os.symlink(real, host.state_dir)


def _symlinked_entry(name):
    def plant(host):
        path = os.path.join(host.state_dir, name)
        os.rename(path, path + ".real")
        os.symlink(path + ".real", path)
    plant.__name__ = "_symlinked_" + name.replace(".", "_")
    return plant


def _fifo_state_file(host):
    path = os.path.join(host.state_dir, "claims.json")
    os.rename(path, path + ".real")
    os.mkfifo(path)


HELD_STATE = [(_symlinked_state_dir, "symlink"), (_symlinked_entry("claims.json"), "symlink"),
              (_symlinked_entry("claims.lock"), "symlink"), (_fifo_state_file, "not a regular file")]


@pytest.mark.parametrize("plant, says", HELD_STATE, ids=[h[0].__name__ for h in HELD_STATE])
@pytest.mark.parametrize("reader", READERS)
def test_planted_state_entries_are_refused_by_every_reader(host, plant, says, reader):
    host.write_config()
    xml = resolved(host, "mine", nics=1)
    plant(host)
    assert_user_error(read_state(host, reader, xml), says)


XML_BOMBS = {
    "billion-laughs": b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'>"
                      b"<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]><domain><name>&b;</name>"
                      b"<devices><interface type='network'><source network='fast'/></interface>"
                      b"</devices></domain>",
    "external-entity": b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                       b"<domain><name>&x;</name><devices><interface type='network'><source "
                       b"network='fast'/></interface></devices></domain>",
}


@pytest.mark.parametrize("bomb", sorted(XML_BOMBS))
@pytest.mark.parametrize("command", [["resolve", "{file}"], ["define", "--connect",
                                     "test:///default", "{file}"]])
def test_xml_bombs_from_a_file_are_refused_by_resolve_and_define(host, tmp_path, bomb, command):
    host.write_config()
    path = tmp_path / "bomb.xml"
    path.write_bytes(XML_BOMBS[bomb])
    proc = vfpick(host, *[a.replace("{file}", str(path)) for a in command])
    assert_user_error(proc, "DOCTYPE")
    assert not os.path.exists(os.path.join(host.state_dir, "claims.json"))


# ------------------------------------------------------------- 8. a GPU VM that is not vfpick's

def test_the_hook_tells_a_gpu_is_no_vf_without_loading_the_topology_reader(host):
    """No ``physfn`` in sysfs: not a VF, so never vfpick's; decided from one readlink (the
    cost itself is bench/foreign.py's business, not a test's)."""
    host.write_config()
    xml = domain("gpu", nics=0, extra_devices=GPU).replace(
        b"</devices>", b"<interface type='network'><source network='default'/></interface>\n"
        b"</devices>")
    with open(os.path.join(host.config_dir, "networks", "default.xml"), "w") as f:
        f.write("<network><name>default</name></network>\n")
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime", HOOK, "gpu", "prepare",
                           "begin", "-"], input=xml, capture_output=True, timeout=WAIT,
                          env={"PATH": "/usr/bin:/bin", "VFPICK_CONFIG": host.config_path,
                               "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(
                                   os.path.abspath(metrics.__file__))))})
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.decode().splitlines()
                if line.startswith("import time:")}
    assert "vfpick.config" in imported  # the pools are still read from the config
    assert "vfpick.host.topology" not in imported and "vfpick.state" not in imported


# The installed hook bakes what install-hook read in the config (sysfs_root, pool names) with
# the config's stamp: while the stamp holds, a GPU VM is told without parsing the config.

def _install(host, tmp_path, text=None):
    """install-hook's hook (its text passed through *text*, if given); its path."""
    path = installhook.install(str(tmp_path / "hooks"), host.config_path)
    if text is not None:
        with open(path) as f:
            changed = text(f.read())
        with open(path, "w") as f:
            f.write(changed)
    return path


def _run_installed(path, xml, name="gpu"):
    """(proc, modules imported, stderr lines but -X importtime's) of ``prepare begin``."""
    proc = subprocess.run([sys.executable, "-IS", "-X", "importtime", path, name, "prepare",
                           "begin", "-"], input=xml, capture_output=True, timeout=WAIT,
                          env={"PATH": "/usr/bin:/bin"})
    lines = proc.stderr.decode().splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    return proc, imported, [line for line in lines if not line.startswith("import time:")]


def _gpu_on_default(host):
    with open(os.path.join(host.config_dir, "networks", "default.xml"), "w") as f:
        f.write("<network><name>default</name></network>\n")
    return domain("gpu", nics=0, extra_devices=GPU).replace(
        b"</devices>", b"<interface type='network'><source network='default'/></interface>\n"
        b"</devices>")


def _old_style(text):
    """The hook as install-hook wrote it before it baked what it read in the config."""
    head, _, _ = text.partition("\nKNOWN = ")
    return head + "\nsys.exit(run(sys.argv[1:], config_path=%r))\n" % installhook.baked(text, "config")


def _a_pool_vf(host):
    devices = os.path.join(host.sysfs, "bus", "pci", "devices")
    return sorted(d for d in os.listdir(devices)
                  if os.path.lexists(os.path.join(devices, d, "physfn")))[0]


def test_the_installed_hook_tells_a_gpu_vm_without_parsing_the_config(host, tmp_path):
    host.write_config()
    proc, imported, errors = _run_installed(_install(host, tmp_path), _gpu_on_default(host))
    assert proc.returncode == 0 and errors == [], proc.stderr
    assert "vfpick.config" not in imported and "configparser" not in imported, sorted(imported)
    assert "vfpick.domscan" in imported  # it did scan the XML: the fast path is not the byte search
    assert not os.path.exists(host.state_dir)


@pytest.mark.parametrize("change", ["rewritten", "rewritten, mtime set back", "touched",
                                    "old-style hook"])
def test_the_installed_hook_parses_the_config_when_it_cannot_trust_what_it_baked(
        host, tmp_path, change):
    pfs = "pfs = %s\n" % " ".join(host.netdevs())
    host.write_config(pools={"defaulx": pfs})
    xml = _gpu_on_default(host)
    path = _install(host, tmp_path, text=_old_style if change == "old-style hook" else None)
    before = os.stat(host.config_path)
    if change.startswith("rewritten"):
        # Now 'default' is a pool (same size, same inode): the GPU VM asks for it, so it is vfpick's.
        host.write_config(pools={"default": pfs})
        if change.endswith("set back"):  # as cp -p or rsync -t would: only the ctime tells
            os.utime(host.config_path, ns=(before.st_atime_ns, before.st_mtime_ns))
            after = os.stat(host.config_path)
            assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
                before.st_ino, before.st_size, before.st_mtime_ns)
    elif change == "touched":
        os.utime(host.config_path)
    proc, imported, errors = _run_installed(path, xml)
    assert "vfpick.config" in imported, sorted(imported)
    if change.startswith("rewritten"):
        assert proc.returncode == 1 and len(errors) == 1, proc.stderr
        assert errors[0].startswith("vfpick: ") and "unresolved pool interfaces" in errors[0]
    else:
        assert proc.returncode == 0 and errors == [], proc.stderr


def test_a_hand_written_hostdev_on_a_pool_vf_is_still_vfpicks_through_the_installed_hook(
        host, tmp_path):
    host.write_config()
    vf = _a_pool_vf(host)
    d, rest = vf.split(":", 1)
    bus, rest = rest.split(":")
    slot, fn = rest.split(".")
    hostdev = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
               "domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/></source></hostdev>\n"
               % (d, bus, slot, fn))
    xml = domain("hand", nics=0, uuid="6c8d5e4f-0000-4000-8000-000000000088", extra_devices=hostdev)
    proc, imported, errors = _run_installed(_install(host, tmp_path), xml, name="hand")
    assert proc.returncode == 0 and errors == [], proc.stderr
    assert "vfpick.config" in imported
    [held] = StateStore(host.state_dir).snapshot().all()
    assert held.vf == vf and held.domain == "hand" and held.active


def test_install_hook_bakes_what_it_read_and_check_reads_it_back(host, tmp_path):
    host.write_config()
    hooks = str(tmp_path / "hooks")
    installhook.install(hooks, host.config_path)
    with open(os.path.join(hooks, "qemu.d", "vfpick")) as f:
        text = f.read()
    known = installhook.baked_known(text)
    st = os.stat(host.config_path)
    assert known == (1, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                     host.sysfs, ("fast",))
    assert installhook.baked(text, "config") == host.config_path
    assert installhook.baked_known(_old_style(text)) is None
    assert installhook.baked(_old_style(text), "config") == host.config_path


def test_a_hook_baked_by_this_install_hook_runs_an_older_vfpick_behind_it(host, tmp_path):
    """A downgrade leaves the hook as it was: the older vfpick takes no known=, and parses."""
    import shutil

    import vfpick

    host.write_config()
    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(vfpick.__file__), str(site / "vfpick"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    hook_py = site / "vfpick" / "hook.py"
    old = hook_py.read_text().replace("KNOWN_FORMAT = 1\n", "").replace(
        "netlink_factory=None,\n        known=None):", "netlink_factory=None):").replace(
        "_decide(name, op, data, marks, stderr, config_path, known)",
        "_decide(name, op, data, marks, stderr, config_path)")
    assert "\nKNOWN_FORMAT" not in old and "netlink_factory=None):" in old
    hook_py.write_text(old)
    path = tmp_path / "hook"
    path.write_text(installhook.hook_text(host.config_path, package_dir=str(site),
                                          known=installhook.known_config(host.config_path)))
    path.chmod(0o755)
    proc, imported, errors = _run_installed(str(path), _gpu_on_default(host))
    assert proc.returncode == 0 and errors == [], proc.stderr
    assert "vfpick.config" in imported
    proc, _, errors = _run_installed(str(path), domain("pooled", nics=1), name="pooled")
    assert proc.returncode == 1 and "unresolved pool interfaces" in errors[0], proc.stderr


def test_check_warns_when_the_config_changed_since_install_hook(host, tmp_path):
    host.write_config()
    hooks = str(tmp_path / "hooks")
    installhook.install(hooks, host.config_path)
    paths = check.Paths(hooks_dir=hooks)
    findings, _ = checkhook.check_hook(paths, host.config_path)
    assert [(f.check, f.status) for f in findings] == [("hook", "ok")], findings
    host.write_config(pools={"other": "pfs = %s\n" % " ".join(host.netdevs())})
    findings, _ = checkhook.check_hook(paths, host.config_path)
    assert [(f.check, f.status) for f in findings] == [("hook", "ok"), ("hook-config", "warn")]
    assert "changed since install-hook" in findings[1].message
    assert shlex.split(findings[1].fix)[:4] == ["vfpick", "install-hook", "--config", host.config_path]
    installhook.install(hooks, host.config_path)
    findings, _ = checkhook.check_hook(paths, host.config_path)
    assert [(f.check, f.status) for f in findings] == [("hook", "ok")], findings
