"""vfpick metrics: the exposition read back with prometheus_client's own parser."""

import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from clitools import HOOK, REPO, VFPICK, assert_user_error, cli_env, domain, free_port, status_json, vfpick
from vfpick import __version__
from vfpick.commands import metrics
from vfpick.host import simhost
from vfpick.config import DISTINCT
from waiting import WAIT, wait_until

ALERTS = os.path.join(REPO, "etc", "prometheus", "vfpick-alerts.yml")
NS = "http://vfpick.org/xmlns/libvirt/domain/1.0"


def samples(text):
    """{(sample name, frozenset of label items): value}."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, key
            out[key] = s.value
    return out


def value(parsed, name, **labels):
    return parsed.get((name, frozenset(labels.items())))


def scrape(host):
    return samples(vfpick(host, "metrics", check=0).stdout)


def resolve(host, name, nics=2, head="", persistent=True):
    xml = vfpick(host, "resolve", "-", input=domain(name, nics=nics, head=head), check=0).stdout
    if persistent:
        with open(os.path.join(host.config_dir, name + ".xml"), "wb") as f:
            f.write(xml)
    return xml


def run_live(host, name, xml):
    """Writes *xml* as libvirt's status file of a running domain."""
    with open(os.path.join(host.run_dir, name + ".xml"), "wb") as f:
        f.write(b"<domstatus state='running' pid='1'>\n" + xml + b"</domstatus>\n")


def test_vfs_by_state_add_up_and_follow_claims(host):
    host.write_config()
    # A VF a foreign running domain uses without a claim is not free either.
    run_live(host, "foreign", ("<domain type='qemu'><name>foreign</name><uuid>"
                               "11111111-2222-4333-8444-555555555555</uuid><devices><hostdev "
                               "mode='subsystem' type='pci'><source><address domain='0x0000' "
                               "bus='0x3c' slot='0x00' function='0x7'/></source></hostdev>"
                               "</devices></domain>").encode())
    resolve(host, "stopped", nics=2)
    running = resolve(host, "running", nics=1)
    run_live(host, "running", running)
    # The running domain's claim turns active the way the prepare hook does it.
    from vfpick import config, resolver
    store = resolver.store_for(config.load(host.config_path))
    with store.transaction() as claims:
        for c in claims.all():
            if c.domain == "running":
                claims.put(c._replace(active=True))
    parsed = scrape(host)
    by_state = {s: 0 for s in metrics.VF_STATES}
    total = 0
    for (name, labels), v in parsed.items():
        if name == "vfpick_vfs":
            labels = dict(labels)
            assert labels["pool"] == "fast"
            by_state[labels["state"]] += v
            total += v
    assert total == 32
    assert by_state == {"reserved": 2, "active": 2, "free": 28}
    assert value(parsed, "vfpick_domain_nics", domain="stopped", pool="fast") == 2
    assert value(parsed, "vfpick_domain_nics", domain="running", pool="fast") == 1
    assert value(parsed, "vfpick_domain_degraded", domain="stopped") == 0
    assert value(parsed, "vfpick_claims_stale") == 0
    assert value(parsed, "vfpick_build_info", version=__version__,
                 python="%d.%d.%d" % sys.version_info[:3]) == 1


def test_links_speed_in_bytes_and_down_links(make_host):
    host = make_host("link-down")
    host.write_config()
    parsed = scrape(host)
    assert value(parsed, "vfpick_link_up", link="ens1f0") == 1
    assert value(parsed, "vfpick_link_up", link="ens1f1") == 0
    assert value(parsed, "vfpick_link_speed_bytes", link="ens1f0") == 25e9 / 8
    assert value(parsed, "vfpick_link_speed_bytes", link="ens1f1") is None  # unknown, not 0


def test_a_nic_on_a_link_that_goes_down_degrades_its_domain(host):
    host.write_config()
    resolve(host, "web", nics=2)
    assert value(scrape(host), "vfpick_domain_degraded", domain="web") == 0
    links = {c["link"] for c in status_json(host)["claims"]}
    simhost.set_carrier(host.sysfs, sorted(links)[0], False)
    parsed = scrape(host)
    assert value(parsed, "vfpick_domain_degraded", domain="web") == 1
    assert value(parsed, "vfpick_link_up", link=sorted(links)[0]) == 0


def policy(**attrs):
    return ("<metadata><vfpick:domain xmlns:vfpick='%s'>%s</vfpick:domain></metadata>\n" % (
        NS, "".join("<vfpick:policy %s/>" % " ".join("%s='%s'" % kv for kv in a.items())
                    for a in attrs.get("policies", ()))))


# npar: one card, two ports, each split into two partitions (PFs f0,f2 on port 0; f1,f3 on 1).
@pytest.mark.parametrize("pool_distinct, policies, nics, degraded", [
    ("link", (), 2, 0),                                   # two links for two NICs
    ("link", (), 3, 1),                                   # three NICs, two links: best effort
    ("link", ({"distinct": "pf"},), 3, 0),                # the domain asks only for distinct PFs
    ("pf", ({"distinct": "link", "pool": "fast"},), 3, 1),   # the override naming the pool wins
    ("link", ({"distinct": "pf"}, {"distinct": "card", "pool": "fast"}), 2, 1),  # one card only
    ("link", ({"distinct": "none"},), 4, 0),
    ("card", (), 2, 1),
    ("link", ({"distinct": "bogus"},), 3, 1),             # invalid override: the pool's level
])
def test_degraded_follows_the_distinct_level_and_the_domains_override(
        make_host, pool_distinct, policies, nics, degraded):
    host = make_host("npar")
    host.write_config({"fast": "pfs = %s\ndistinct = %s\n" % (" ".join(host.netdevs()), pool_distinct)})
    head = policy(policies=policies) if policies else ""
    if any(p["distinct"] not in DISTINCT for p in policies):
        # resolve refuses an invalid override; a hand-edited definition can still carry one.
        good = resolve(host, "db", nics=nics, persistent=False)
        bad = good.replace(b"<vfpick:domain xmlns:vfpick=\"%s\">" % NS.encode(),
                           b"<vfpick:domain xmlns:vfpick=\"%s\"><vfpick:policy distinct=\"bogus\"/>"
                           % NS.encode())
        assert bad != good
        with open(os.path.join(host.config_dir, "db.xml"), "wb") as f:
            f.write(bad)
    else:
        resolve(host, "db", nics=nics, head=head)
    assert value(scrape(host), "vfpick_domain_degraded", domain="db") == degraded
    # status names the same domains (table and JSON `degraded`), with the unit they share.
    rows = [r for r in status_json(host)["degraded"] if r["domain"] == "db"]
    assert len(rows) == degraded and all(len(r["macs"]) >= 2 for r in rows)
    text = vfpick(host, "status", check=0).stdout.decode()
    assert ("degraded: domain 'db'" in text) == bool(degraded)


def test_stale_claims_are_counted(host):
    host.write_config()
    resolve(host, "kept", nics=2)
    resolve(host, "gone", nics=2, persistent=False)
    transient = resolve(host, "transient", nics=1, persistent=False)
    run_live(host, "transient", transient)
    assert value(scrape(host), "vfpick_claims_stale") == 2


def test_textfile_is_the_only_file_written_and_replaces_the_old_one(host, tmp_path):
    host.write_config()
    resolve(host, "web", nics=1)
    out = tmp_path / "textfile"
    out.mkdir()
    (out / "vfpick.prom").write_text("stale content\n")
    vfpick(host, "metrics", "--textfile", str(out), check=0)
    assert sorted(os.listdir(out)) == ["vfpick.prom"]
    parsed = samples((out / "vfpick.prom").read_text())
    assert value(parsed, "vfpick_domain_nics", domain="web", pool="fast") == 1


def test_textfile_failures_are_one_line_and_leave_the_dir_as_it_was(host, tmp_path):
    host.write_config()
    out = tmp_path / "textfile"
    out.mkdir()
    assert_user_error(vfpick(host, "metrics", "--textfile", str(out / "nope")), "not a directory")
    os.makedirs(host.state_dir, exist_ok=True)
    with open(os.path.join(host.state_dir, "claims.json"), "w") as f:
        f.write("{corrupt")
    assert_user_error(vfpick(host, "metrics", "--textfile", str(out)), "claims.json")
    assert os.listdir(out) == []
    assert_user_error(vfpick(host, "metrics"))


def test_version():
    proc = subprocess.run([VFPICK, "--version"], capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.decode() == "vfpick %s\n" % __version__


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9731", ("127.0.0.1", 9731)),
    ("[::1]:9731", ("::1", 9731)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(text, expected):
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9731", ":9731", "127.0.0.1:", "127.0.0.1:http", "h:70000"])
def test_parse_listen_refuses(text):
    with pytest.raises(metrics.VfpickError, match="ADDR:PORT"):
        metrics.parse_listen(text)


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_server_reads_afresh_on_every_scrape(host):
    config = host.write_config()
    logged = []
    server = metrics.serve(config, "127.0.0.1:0", logged.append)
    try:
        url = "http://127.0.0.1:%d/metrics" % server.server_address[1]
        status, body = fetch(url)
        assert status == 200 and value(samples(body), "vfpick_domain_nics", domain="web", pool="fast") is None
        resolve(host, "web", nics=2)
        assert value(samples(fetch(url)[1]), "vfpick_domain_nics", domain="web", pool="fast") == 2
        # A broken state file: the scrape still answers (build info), the reason is logged.
        with open(os.path.join(host.state_dir, "claims.json"), "w") as f:
            f.write("[")
        parsed = samples(fetch(url)[1])
        assert {name for name, _ in parsed} == {"vfpick_build_info"}
        assert logged and "claims.json" in logged[-1]
    finally:
        server.shutdown()
        server.server_close()


def test_watch_serves_metrics_and_stops_on_sigterm(host):
    host.write_config()
    resolve(host, "web", nics=1)
    port = free_port()
    proc = subprocess.Popen([VFPICK, "watch", "--connect", "test:///default",
                             "--metrics-listen", "127.0.0.1:%d" % port], env=cli_env(host),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def scrape():
            assert proc.poll() is None, proc.stderr.read1()
            try:
                return fetch("http://127.0.0.1:%d/metrics" % port)[1]
            except OSError:
                return None
        body = wait_until(scrape, "an answer on port %d" % port, interval=0.2)
        assert value(samples(body), "vfpick_link_up", link="ens1f0") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert b"serving metrics on http://127.0.0.1:%d/metrics" % port in err


def test_watch_refuses_a_bad_listen_address_in_one_line(host):
    host.write_config()
    assert_user_error(vfpick(host, "watch", "--connect", "test:///default", "--metrics-listen", "nope"),
                      "ADDR:PORT")


# ------------------------------------------------------------------ the shipped alert rules
def rule_metric_names(expr):
    """Metric names an expression reads: identifiers not followed by '(' and not PromQL words."""
    expr = re.sub(r'"[^"]*"', '""', expr)            # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)           # label matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)          # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        after = expr[m.end():].lstrip()
        if after.startswith("("):
            continue                                  # a function or aggregation
        words.add(m.group())
    keywords = {"and", "or", "unless", "bool", "offset"}
    return {w for w in words - keywords if not re.fullmatch(r"[0-9e]+", w)}


def test_alert_rules_use_only_metrics_vfpick_exposes(make_host):
    host = make_host("link-down")
    host.write_config()
    resolve(host, "web", nics=2)
    exposed = {name for name, _ in scrape(host)}
    with open(ALERTS) as f:
        doc = yaml.safe_load(f)
    alerts = [rule for group in doc["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in alerts} >= {"VfpickDomainDegraded", "VfpickPoolNearlyFull",
                                            "VfpickLinkDownUnderClaims"}
    for rule in alerts:
        used = rule_metric_names(rule["expr"])
        assert used, rule
        assert used <= exposed, (rule["alert"], used - exposed)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    # Families vfpick exposes only when something is true still have to exist somewhere.
    assert "vfpick_domain_degraded" in exposed and "vfpick_vfs" in exposed


def test_rule_metric_names_extracts_what_it_should():
    expr = ('sum by (pool) (vfpick_vfs{state="free"}) / sum by (pool) (vfpick_vfs) < 0.1 '
            'and on(link) vfpick_link_up == 0 unless rate(foo_total[5m]) > 0')
    assert rule_metric_names(expr) == {"vfpick_vfs", "vfpick_link_up", "foo_total"}


def test_metrics_timer_unit_writes_the_textfile(host, tmp_path):
    # The shipped unit's command line, run as systemd would (its dir swapped for a temp one).
    units = os.path.join(REPO, "etc", "systemd")
    with open(os.path.join(units, "vfpick-metrics.service")) as f:
        service = f.read().splitlines()
    [exec_start] = [line[len("ExecStart="):] for line in service if line.startswith("ExecStart=")]
    argv = exec_start.split()
    assert argv[0] == "/usr/local/bin/vfpick" and argv[1:3] == ["metrics", "--textfile"]
    assert "ConditionPathIsDirectory=%s" % argv[3] in service and "Type=oneshot" in service
    host.write_config()
    out = tmp_path / "node-exporter"
    out.mkdir()
    subprocess.run([VFPICK] + argv[1:3] + [str(out)], env=cli_env(host), check=True, timeout=60)
    assert value(samples((out / "vfpick.prom").read_text()), "vfpick_link_up", link="ens1f0") == 1
    with open(os.path.join(units, "vfpick-metrics.timer")) as f:
        timer = f.read().splitlines()
    assert "WantedBy=timers.target" in timer and any(t.startswith("OnUnitActiveSec=") for t in timer)


@pytest.mark.parametrize("op, subop", [("prepare", "begin"), ("release", "end")])
def test_the_hook_never_imports_prometheus_client(host, op, subop):
    host.write_config()
    xml = resolve(host, "web", nics=1)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C",
           "VFPICK_CONFIG": host.config_path}
    proc = subprocess.run([sys.executable, "-X", "importtime", HOOK, "web", op, subop, "-"],
                          input=xml, capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = proc.stderr.decode()
    assert "vfpick.hook" in imported and "prometheus_client" not in imported
    assert "vfpick.commands.metrics" not in imported
