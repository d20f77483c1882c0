"""The real-libvirtd harness (tests/libvirtd.py) and the libvirt facts vfpick relies on.

Each test starts from the session's daemon, makes its own domains (removed by the
hook_recorder fixture or explicitly) and its own hooks (removed likewise).
Skipped when libvirt is not installed or we are not root (see libvirtd.unavailable_reason).
"""

import os
import shutil

import pytest

try:  # tests/ as a package or as a plain directory on sys.path
    from . import libvirtd as lv  # type: ignore
except ImportError:
    import libvirtd as lv
from waiting import wait_until

# Module-level fixtures; tests/conftest.py may define the same ones: they share one daemon.
libvirtd = lv.libvirtd_fixture()
hook_recorder = lv.hook_recorder_fixture()

START = [("prepare", "begin"), ("start", "begin"), ("started", "begin")]
STOP = [("stopped", "end"), ("release", "end")]
# What libvirt passes to hooks (virCommandAddEnvPassCommon): LC_ALL=C plus these if the daemon has them.
HOOK_ENV_ALLOWED = {"LC_ALL", "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LD_PRELOAD",
                    "LD_LIBRARY_PATH"}


def test_unavailable_reason_is_none_here_or_explains(monkeypatch):
    monkeypatch.setenv(lv.ENV_MODE, "skip")
    assert lv.unavailable_reason() == "VFPICK_TEST_LIBVIRTD=skip"
    monkeypatch.delenv(lv.ENV_MODE)
    reason = lv.unavailable_reason()
    # What the harness needs, checked here without its code: root, the four binaries, the
    # qemu driver module, the libvirt-qemu user (scripts/setup makes them all).
    if os.geteuid() != 0:
        assert reason == "real libvirtd tests need root (system libvirtd, /etc/libvirt/hooks)"
        return
    missing = [b for b in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64")
               if not shutil.which(b, path=lv.DAEMON_PATH)]
    if missing:
        assert reason.startswith("libvirt/qemu not installed (missing %s)" % ", ".join(missing))
        return
    assert reason is None or "run scripts/setup" in reason, reason
    if lv.required():
        assert reason is None, reason


def test_required_turns_a_skip_into_a_failure(monkeypatch):
    monkeypatch.setenv(lv.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="VFPICK_REQUIRE_LIBVIRTD=1 and the real-"
                       "libvirtd test cannot run: no daemon"):
        lv.skip_or_fail("no daemon")
    monkeypatch.setenv(lv.REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception, match="^no daemon$"):
        lv.skip_or_fail("no daemon")


def test_daemon_answers_and_is_ours(libvirtd):
    res = libvirtd.virsh("version")
    assert "Running hypervisor: QEMU" in res.stdout
    assert libvirtd.running
    if not libvirtd.reused:
        assert libvirtd.owns_libvirtd
        assert lv.find_processes("libvirtd") == [(libvirtd.libvirtd_pid, "libvirtd")]
        assert libvirtd.hooks_live  # the placeholder hook was there at daemon start
    assert lv.find_processes("virtlogd")


def test_define_and_undefine_call_no_hook(libvirtd, hook_recorder):
    rec = hook_recorder()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("def")))
    assert (lv.CONFIG_DIR / (name + ".xml")).exists()
    libvirtd.remove_domain(name)
    assert not (lv.CONFIG_DIR / (name + ".xml")).exists()
    assert rec.calls() == []


def test_start_destroy_ops_env_and_xml(libvirtd, hook_recorder):
    rec = hook_recorder()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("life"), description="life"))
    libvirtd.virsh("start", name)
    assert libvirtd.is_running(name)
    assert libvirtd.live_xml_path(name).exists()
    assert rec.ops(name) == START
    libvirtd.virsh("destroy", name)
    assert not libvirtd.live_xml_path(name).exists()
    calls = rec.calls(name)
    assert [c.opsub for c in calls] == START + STOP
    for c in calls:
        assert c.argv == [name, c.op, c.subop, "-"]
        assert "<name>%s</name>" % name in c.stdin
        assert "<description>life</description>" in c.stdin
        assert set(c.env) <= HOOK_ENV_ALLOWED, c.env
        assert c.env.get("LC_ALL") == "C"
        assert c.config_xml          # persistent domain: /etc/libvirt/qemu/NAME.xml
        assert c.rec["uid"] == 0 and c.rec["cwd"] == "/"
    by_op = {c.op: c for c in calls}
    # live status XML exists from "started" until "stopped", not at prepare/start/release
    assert [by_op[o].run_xml for o in ("prepare", "start", "started", "stopped", "release")] == \
        [False, False, True, True, False]
    # the running domain's XML carries its id; the stopped one does not
    assert "<domain type='qemu' id='" in by_op["prepare"].stdin
    assert "id='" not in by_op["release"].stdin.splitlines()[0]


def test_transient_domain_ops(libvirtd, hook_recorder):
    rec = hook_recorder()
    name = libvirtd.create(lv.domain_xml(libvirtd.unique_name("trans")))
    libvirtd.virsh("destroy", name)
    calls = rec.calls(name)
    assert [c.opsub for c in calls] == START + STOP
    assert not any(c.config_xml for c in calls)
    assert name not in libvirtd.list_domains()


def test_main_hook_runs_before_qemu_d_in_name_order(libvirtd, hook_recorder):
    main = hook_recorder(main=True)
    b = hook_recorder("20-b")
    a = hook_recorder("10-a")
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("order")))
    libvirtd.virsh("start", name)
    libvirtd.virsh("destroy", name)
    calls = lv.read_calls(main, a, b, name=name)
    expected = []
    for op in START + STOP:
        for hook in ("qemu", "qemu.d/10-a", "qemu.d/20-b"):
            expected.append((op, hook))
    assert [(c.opsub, c.hook) for c in calls] == expected


def test_non_executable_qemu_d_file_is_skipped(libvirtd, hook_recorder):
    rec = hook_recorder("30-noexec")
    os.chmod(rec.path, 0o644)
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("noexec")))
    libvirtd.virsh("start", name)
    libvirtd.virsh("destroy", name)
    assert rec.calls() == []


def test_start_with_missing_pci_fails_after_prepare_then_release(libvirtd, hook_recorder):
    rec = hook_recorder()
    addr = lv.nonexistent_pci_address()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("hostdev"), hostdev_pci=addr))
    res = libvirtd.virsh("start", name, check=False)
    assert res.returncode != 0
    assert "Failed to start domain" in res.stderr
    # no IOMMU: "unsupported configuration: host doesn't support passthrough of host PCI
    # devices"; with an IOMMU the error names the missing device instead
    assert ("passthrough" in res.stderr) or (addr in res.stderr) or ("PCI" in res.stderr), res.stderr
    assert not libvirtd.is_running(name)
    assert rec.ops(name) == [("prepare", "begin")] + STOP
    prepare = rec.calls(name)[0]
    assert "bus='0x%s'" % addr.split(":")[1] in prepare.stdin


def test_refused_prepare_shows_stderr_and_still_releases(libvirtd, hook_recorder):
    a = hook_recorder("10-a")
    b = hook_recorder("20-b")
    a.refuse("prepare begin", exit=1, stderr="vfpick: refused for the test\nsecond line\n",
             stdout="stdout is not shown\n")
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("refuse")))
    res = libvirtd.virsh("start", name, check=False)
    assert res.returncode == 1
    assert not libvirtd.is_running(name)
    err = res.stderr
    assert "error: Failed to start domain '%s'" % name in err
    assert "Hook script execution failed" in err
    assert "unexpected exit status 1: vfpick: refused for the test\nsecond line" in err
    assert "%s %s prepare begin -" % (a.path, name) in err   # the command line is quoted
    assert "stdout is not shown" not in err
    # every qemu.d script still runs, then the stop + release of the failed start
    calls = lv.read_calls(a, b, name=name)
    assert [(c.hook, c.opsub) for c in calls] == [
        ("qemu.d/10-a", ("prepare", "begin")), ("qemu.d/20-b", ("prepare", "begin")),
        ("qemu.d/10-a", ("stopped", "end")), ("qemu.d/20-b", ("stopped", "end")),
        ("qemu.d/10-a", ("release", "end")), ("qemu.d/20-b", ("release", "end"))]


def test_several_refusals_virsh_shows_only_the_last(libvirtd, hook_recorder):
    main = hook_recorder(main=True)
    a = hook_recorder("10-a")
    main.refuse("prepare begin", stderr="main says no\n")
    a.refuse("prepare begin", stderr="10-a says no\n")
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("tworef")))
    res = libvirtd.virsh("start", name, check=False)
    assert res.returncode == 1
    assert "10-a says no" in res.stderr
    assert "main says no" not in res.stderr      # an earlier hook's error is lost
    assert [(c.hook, c.op) for c in lv.read_calls(main, a, name=name)][:2] == [
        ("qemu", "prepare"), ("qemu.d/10-a", "prepare")]


def test_prepare_stdout_does_not_change_the_domain(libvirtd, hook_recorder):
    rec = hook_recorder()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("prepout"), description="orig"))
    for op in ("prepare begin", "start begin"):
        rec.rewrite(op, [("<description>orig</description>",
                          "<description>changed</description>")])
    libvirtd.virsh("start", name)
    assert [c.rec["stdout"] is not None for c in rec.calls(name)][:2] == [True, True]
    assert "<description>orig</description>" in libvirtd.dumpxml(name)


def test_save_restore_filter_replaces_live_xml(libvirtd, hook_recorder, tmp_path):
    rec = hook_recorder()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("restore"), description="orig"))
    libvirtd.virsh("start", name)
    save = tmp_path / "dom.save"
    rec.clear()
    libvirtd.virsh("save", name, str(save))
    assert rec.ops(name) == STOP
    assert not libvirtd.is_running(name)

    rec.rewrite("restore begin", [("<description>orig</description>",
                                   "<description>restored by hook</description>")])
    rec.clear()
    libvirtd.virsh("restore", str(save))
    calls = rec.calls(name)
    assert [c.opsub for c in calls] == [("restore", "begin")] + START
    restore = calls[0]
    assert restore.argv == [name, "restore", "begin", "-"]
    assert "<description>orig</description>" in restore.stdin
    assert not restore.run_xml
    # the filtered XML is what the start hooks and the live domain get ...
    assert all("restored by hook" in c.stdin for c in calls[1:])
    assert "<description>restored by hook</description>" in libvirtd.dumpxml(name)
    # ... but the persistent definition is untouched
    assert "<description>orig</description>" in libvirtd.dumpxml(name, inactive=True)


def test_restore_filter_chain_and_empty_output(libvirtd, hook_recorder, tmp_path):
    main = hook_recorder(main=True)
    a = hook_recorder("10-a")
    b = hook_recorder("20-b")
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("chain"), description="d0"))
    main.rewrite("restore begin", [("<description>d0<", "<description>d1-main<")])
    # 10-a prints nothing: the XML passes through unchanged
    b.rewrite("restore begin", [("<description>d1-main<", "<description>d2-b<")])
    libvirtd.virsh("start", name)
    save = tmp_path / "chain.save"
    libvirtd.virsh("save", name, str(save))
    libvirtd.virsh("restore", str(save))
    seen = {c.hook: c.stdin for c in lv.read_calls(main, a, b, name=name) if c.op == "restore"}
    assert "<description>d0</description>" in seen["qemu"]
    assert "<description>d1-main</description>" in seen["qemu.d/10-a"]   # main's output
    assert "<description>d1-main</description>" in seen["qemu.d/20-b"]   # passed through 10-a
    assert "<description>d2-b</description>" in libvirtd.dumpxml(name)


def test_restore_refused_by_hook(libvirtd, hook_recorder, tmp_path):
    rec = hook_recorder()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("restref")))
    libvirtd.virsh("start", name)
    save = tmp_path / "r.save"
    libvirtd.virsh("save", name, str(save))
    rec.refuse("restore begin", exit=1, stderr="vfpick: no VF for you\n")
    rec.clear()
    res = libvirtd.virsh("restore", str(save), check=False)
    assert res.returncode == 1
    assert "vfpick: no VF for you" in res.stderr
    assert not libvirtd.is_running(name)
    assert rec.ops(name) == [("restore", "begin")]


@pytest.mark.parametrize("hook_exit", [0, 1])
def test_restart_reconnects_running_domain(libvirtd, hook_recorder, hook_exit):
    """After a restart libvirtd calls `reconnect begin` with the live XML of each running
    domain; a reconnect hook that fails makes it kill the guest (why vfpick's reconnect
    reports and exits 0 whatever goes wrong)."""
    if libvirtd.reused:
        lv.skip_or_fail("reused daemon cannot be restarted")
    rec = hook_recorder()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("reconn")))
    libvirtd.virsh("start", name)
    if hook_exit:
        rec.refuse("reconnect begin", exit=hook_exit, domain=name)
    rec.clear()
    libvirtd.restart()
    # made from a thread per domain, after libvirtd already answers
    calls = wait_until(lambda: rec.calls(name), "the reconnect call")
    assert calls[0].opsub == ("reconnect", "begin") and calls[0].run_xml
    if hook_exit:
        wait_until(lambda: not libvirtd.is_running(name), "the domain killed")
        assert name in libvirtd.list_domains()  # still defined, only stopped
    else:
        assert libvirtd.is_running(name)          # qemu survives the daemon
        assert [c.opsub for c in rec.calls(name)] == [("reconnect", "begin")]


def test_hooks_added_after_a_hookless_start_need_a_restart(libvirtd, hook_recorder):
    if libvirtd.reused:
        lv.skip_or_fail("reused daemon cannot be restarted")
    # restart with no hook at all (the placeholder removed)
    libvirtd.remove_hook(lv.PLACEHOLDER_HOOK)
    try:
        libvirtd.restart()
        assert not libvirtd.hooks_live
        rec = hook_recorder()
        name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("late")))
        libvirtd.virsh("start", name)
        libvirtd.virsh("destroy", name)
        assert rec.calls() == []              # ignored: no hook found at daemon start
        libvirtd.restart()
        assert libvirtd.hooks_live
        libvirtd.virsh("start", name)
        libvirtd.virsh("destroy", name)
        assert rec.ops(name) == START + STOP
    finally:
        libvirtd.install_hook(lv.PLACEHOLDER_HOOK, "#!/bin/sh\n# %s\nexit 0\n" % lv.HOOK_MARK)
        libvirtd.restart()
        assert libvirtd.hooks_live


def test_start_needs_virtlogd(libvirtd, hook_recorder):
    if not libvirtd.owns_virtlogd:
        lv.skip_or_fail("virtlogd was not started by the harness")
    rec = hook_recorder()
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("nolog")))
    libvirtd.stop_virtlogd()
    try:
        res = libvirtd.virsh("start", name, check=False)
        assert res.returncode != 0
        assert "virtlogd-sock" in res.stderr
        assert rec.ops(name) == [("prepare", "begin")] + STOP
    finally:
        libvirtd.start_virtlogd()
    libvirtd.virsh("start", name)
    assert libvirtd.is_running(name)


def test_parallel_starts_run_hooks_concurrently(libvirtd, hook_recorder):
    rec = hook_recorder()
    rec_rule_sleep = 0.5
    names = [libvirtd.define(lv.domain_xml(libvirtd.unique_name("par"))) for _ in range(2)]
    # make prepare slow, start both at once, check the prepare calls overlap
    rec.delay("prepare begin", rec_rule_sleep)
    import subprocess
    procs = [subprocess.Popen(["virsh", "-c", libvirtd.uri, "start", n],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    prepares = [c for c in rec.calls() if c.op == "prepare"]
    assert sorted(c.name for c in prepares) == sorted(names)
    # record time is taken after the sleep: overlapping calls finish < sleep apart
    assert abs(prepares[0].time - prepares[1].time) < rec_rule_sleep


def test_leftover_hooks_are_recognised(libvirtd, tmp_path):
    # a hook file written by a crashed session carries HOOK_MARK and is removed at start;
    # a foreign file is never overwritten
    foreign = libvirtd.qemu_d / "99-foreign-test"
    foreign.write_text("#!/bin/sh\nexit 0\n")
    try:
        with pytest.raises(lv.HarnessError):
            libvirtd.install_hook("99-foreign-test", "#!/bin/sh\n")
    finally:
        foreign.unlink()
    stale = libvirtd.qemu_d / "98-stale-test"
    stale.write_text("#!/bin/sh\n# %s\n" % lv.HOOK_MARK)
    assert stale in libvirtd.remove_leftover_hooks()
    assert not stale.exists()
    assert (libvirtd.qemu_d / lv.PLACEHOLDER_HOOK).exists()   # installed by us: kept


def test_domain_cleanup_is_complete(libvirtd):
    name = libvirtd.define(lv.domain_xml(libvirtd.unique_name("clean")))
    libvirtd.virsh("start", name)
    libvirtd.remove_domain(name)
    assert name not in libvirtd.list_domains()
    assert not libvirtd.live_xml_path(name).exists()
