"""Performance of the installed vfpick: hook prepare, resolve (1/8/64 processes), status, scaling.

Everything is measured as subprocesses of the *same interpreter* as the bare-start baseline
(``python -c pass``), and reported as a ratio to it: absolute milliseconds depend on the machine,
the ratio says what vfpick adds to a process start. Medians over repeats; baselines interleaved
with the measured runs so that drift (frequency scaling, a busy neighbour) hits both alike.

What is measured is a fresh, regular (non-editable) ``pip install`` of this working tree into a
temp dir, with the hook written by that install's ``vfpick install-hook --hooks-dir TMP --config
CFG`` (the baked script libvirt runs: ``#!/bin/sh`` execing ``python -IS``). The simulated sysfs lives on tmpfs
(``/dev/shm``) when there is one, as the real sysfs is in memory; the state dir is on the regular
temp dir (a disk), as ``/var/lib/vfpick`` is, so fsyncs cost what they cost.
"""

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# A running domain's status file as libvirt writes it: a long <qemuCaps> list (real files carry a
# few hundred flags), then the live domain. ~16 KB, about what a production host has.
_CAPS = "".join("    <flag name='cap-%03d'/>\n" % i for i in range(300))


def domain_xml(name, uuid, nics, resolved_ifaces=None):
    """A plausible persistent domain with *nics* pool interfaces (or given resolved ones)."""
    ifaces = resolved_ifaces if resolved_ifaces is not None else "".join(
        "    <interface type='network'>\n      <source network='fast'/>\n"
        "      <vlan><tag id='%d'/></vlan>\n    </interface>\n" % (100 + i) for i in range(nics))
    return ("""<domain type='kvm'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='KiB'>8388608</memory>
  <currentMemory unit='KiB'>8388608</currentMemory>
  <vcpu placement='static' cpuset='0-3'>4</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/><timer name='pit' tickpolicy='delay'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/%(name)s.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'/>
    <controller type='pci' index='0' model='pcie-root'/>
%(ifaces)s    <interface type='network'>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
""" % {"name": name, "uuid": uuid, "ifaces": ifaces}).encode()


def domstatus_xml(resolved, dom_id):
    live = resolved.decode().replace("<domain type='kvm'>", "<domain type='kvm' id='%d'>" % dom_id, 1)
    return ("<!--\nWARNING: THIS IS AN AUTO-GENERATED FILE.\n-->\n"
            "<domstatus state='running' reason='booted' pid='%d'>\n"
            "  <monitor path='/var/lib/libvirt/qemu/domain-%d/monitor.sock' type='unix'/>\n"
            "  <qemuCaps>\n%s    <version>7002000</version>\n  </qemuCaps>\n%s</domstatus>\n"
            % (40000 + dom_id, dom_id, _CAPS, live)).encode()


def _uuid(kind, n):
    return "%08x-0000-4000-8000-%012x" % (kind, n)


# --- the install under test ----------------------------------------------------------------------

class Install:
    """A regular pip install of the working tree in a temp dir; commands that run from it."""

    def __init__(self, root, source=REPO):
        self.site = os.path.join(root, "site")
        self.how = "pip install --target (non-editable, byte-compiled)"
        cmd = [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-warn-script-location",
               "--disable-pip-version-check", "--target", self.site, source]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            # No network for the isolated build: lay the package out the way a wheel install
            # does (files plus byte-code) rather than fail.
            import compileall

            shutil.rmtree(self.site, ignore_errors=True)
            shutil.copytree(os.path.join(source, "vfpick"), os.path.join(self.site, "vfpick"),
                            ignore=shutil.ignore_patterns("__pycache__"))
            compileall.compile_dir(os.path.join(self.site, "vfpick"), quiet=1)
            self.how = "copy + compileall (pip build failed: %s)" % (
                proc.stderr.strip().splitlines() or ["?"])[-1]
        self.env = dict(os.environ, PYTHONPATH=self.site)
        self.env.pop("VFPICK_CONFIG", None)
        # The console script pip writes is `from vfpick.cli import main; sys.exit(main())`
        # under the interpreter's site; PYTHONPATH puts this install ahead of the venv's copy.
        self.cli_cmd = [PY, "-c", "import sys; from vfpick.cli import main; sys.exit(main())"]
        script = os.path.join(self.site, "bin", "vfpick")
        if os.path.exists(script):
            self.cli_cmd = [script]

    def cli(self, args, data=None, check=True):
        proc = subprocess.run(self.cli_cmd + args, input=data, capture_output=True, env=self.env)
        if check and proc.returncode != 0:
            raise RuntimeError("vfpick %s: %s" % (" ".join(args), proc.stderr.decode().strip()))
        return proc

    def import_vfpick(self):
        if self.site not in sys.path:
            sys.path.insert(0, self.site)
        _unimport_vfpick()
        import vfpick

        assert vfpick.__file__.startswith(self.site), vfpick.__file__
        return vfpick

    def forget_vfpick(self):
        """Undoes import_vfpick before the install is removed: what runs next in this process
        (bench/quality.py) imports vfpick's modules again, from the checkout, not from a
        directory that is gone."""
        while self.site in sys.path:
            sys.path.remove(self.site)
        _unimport_vfpick()


def _unimport_vfpick():
    for mod in [m for m in sys.modules if m == "vfpick" or m.startswith("vfpick.")]:
        del sys.modules[mod]


class Host:
    """A simulated host with config, state, run and config dirs, and the installed hook."""

    def __init__(self, inst, root, state_root, spec):
        from vfpick.host import simhost

        self.inst = inst
        self.root = root
        self.sysfs = simhost.build(os.path.join(root, "host"), spec)
        self.state_dir = os.path.join(state_root, "state")
        self.run_dir = os.path.join(root, "run")
        self.etc_dir = os.path.join(root, "etc")
        os.makedirs(self.run_dir)
        os.makedirs(os.path.join(self.etc_dir, "networks"))
        with open(os.path.join(self.etc_dir, "networks", "default.xml"), "w") as f:
            f.write("<network><name>default</name></network>\n")
        self.config = os.path.join(root, "vfpick.ini")
        with open(self.config, "w") as f:
            f.write(simhost.sample_config(self.sysfs, self.state_dir, spec, run_dir=self.run_dir,
                                          config_dir=self.etc_dir))
        self.hooks_dir = os.path.join(root, "hooks")
        inst.cli(["install-hook", "--hooks-dir", self.hooks_dir, "--config", self.config])
        self.hook = os.path.join(self.hooks_dir, "qemu.d", "vfpick")
        with open(self.hook) as f:
            self.hook_text = f.read()
        self.n_vfs = sum(pf.get("vfs", 8) for card in spec["cards"] for pf in card["pfs"])
        self.resolved = {}   # name -> resolved xml (inactive, persistent: the ones to start)

    def populate(self, fill=0.4, running_share=0.5, seed=1):
        """Claims on *fill* of the VFs by 1-4-NIC domains; *running_share* of them running
        (status file in run_dir, claims active). Done in-process (fast), through the same code."""
        from vfpick import config as configmod, hook, resolver
        from vfpick.host import topology

        cfg = configmod.load(self.config)
        topo = topology.for_config(cfg)
        # Setup only: every running domain's VFs are claimed here, so skip the run-dir scans
        # (they would make building a big host quadratic).
        saved = resolver.running_vfs, hook._running_others
        resolver.running_vfs, hook._running_others = (lambda *a, **k: {}), (lambda *a, **k: {})
        try:
            self._populate(cfg, topo, resolver, hook, fill, running_share, seed)
        finally:
            resolver.running_vfs, hook._running_others = saved
        return self

    def _populate(self, cfg, topo, resolver, hook, fill, running_share, seed):
        store = resolver.store_for(cfg)
        rnd = random.Random(seed)
        target = int(self.n_vfs * fill)
        claimed, n = 0, 0
        while claimed < target:
            n += 1
            nics = min(rnd.choice([1, 2, 2, 3, 4]), target - claimed)
            name = "base-%04d" % n
            res = resolver.resolve(cfg, domain_xml(name, _uuid(1, n), nics), store=store, topo=topo)
            claimed += nics
            with open(os.path.join(self.etc_dir, name + ".xml"), "wb") as f:
                f.write(res.xml)
            if rnd.random() < running_share:
                import io

                rc = hook.run([name, "prepare", "begin", "-"], stdin=io.BytesIO(res.xml),
                              stdout=io.BytesIO(), stderr=io.StringIO(), config_path=self.config)
                assert rc == 0
                with open(os.path.join(self.run_dir, name + ".xml"), "wb") as f:
                    f.write(domstatus_xml(res.xml, n))
            else:
                self.resolved[name] = res.xml
        self.n_claims = claimed
        self.n_running = len(os.listdir(self.run_dir))
        time.sleep(0.5)  # the running domains started a while ago: their status files are not new

    def release_uuids(self, prefix_kind):
        from vfpick.state import StateStore

        tag = "%08x-" % prefix_kind
        with StateStore(self.state_dir).transaction() as claims:
            for uuid in {c.uuid for c in claims.all() if c.uuid.startswith(tag)}:
                claims.drop_uuid(uuid)

    def run_hook(self, name, data, op="prepare", subop="begin"):
        # libvirt runs the hook by its path (shebang), with a scrubbed environment.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}
        t0 = time.perf_counter()
        proc = subprocess.run([self.hook, name, op, subop, "-"], input=data, capture_output=True,
                              env=env)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError("hook %s %s: %s" % (op, name, proc.stderr.decode().strip()))
        return dt


def timed(cmd, data=None, env=None):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, input=data, capture_output=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), proc.stderr.decode().strip()))
    return dt, proc


def med_ms(xs):
    return statistics.median(xs) * 1000


class Baseline:
    """Bare interpreter starts, sampled between measured runs."""

    def __init__(self):
        self.site = []   # python -c pass           (what `vfpick` CLI pays too: site, venv)
        self.bare = []   # python -IS -c pass      (what the -IS hook pays)

    def sample(self):
        self.site.append(timed([PY, "-c", "pass"])[0])
        self.bare.append(timed([PY, "-IS", "-c", "pass"])[0])

    @property
    def site_ms(self):
        return med_ms(self.site)

    @property
    def bare_ms(self):
        return med_ms(self.bare)


def bench_hook(host, base, reps):
    """prepare begin of a defined, not running domain (claims inactive → active, state written),
    each repeat a different domain; then release end puts it back for the next repeat."""
    names = sorted(host.resolved)[:reps]
    prep, rel = [], []
    for name in names:
        base.sample()
        prep.append(host.run_hook(name, host.resolved[name]))
        rel.append(host.run_hook(name, host.resolved[name], "release", "end"))
    return med_ms(prep), med_ms(rel)


RELEASE_OPS = (("start", "begin"), ("started", "begin"), ("stopped", "end"), ("release", "end"))


def bench_release_path(host, base, reps, nics=2):
    """The hook calls libvirt makes synchronously around a *nics*-NIC vfpick domain's life
    (``start begin``, ``started begin`` after the prepare; ``stopped end`` then ``release end``
    at a destroy), each repeat a different defined domain whose claims a ``prepare begin``
    (not timed) made active, as a start does. Returns {"OP SUBOP": ms, "destroy": ms} (destroy:
    stopped end + release end, what `virsh destroy` waits for)."""
    from vfpick import domscan

    names = [n for n in sorted(host.resolved)
             if len(domscan.scan(host.resolved[n]).meta_nics) == nics] or sorted(host.resolved)
    times = {"%s %s" % op: [] for op in RELEASE_OPS}
    times["destroy"] = []
    for i in range(reps):
        name = names[i % len(names)]
        xml = host.resolved[name]
        base.sample()
        host.run_hook(name, xml)      # prepare begin: the claims go active
        for op, subop in RELEASE_OPS:
            times["%s %s" % (op, subop)].append(host.run_hook(name, xml, op, subop))
        times["destroy"].append(times["stopped end"][-1] + times["release end"][-1])
    return {k: med_ms(v) for k, v in times.items()}


def run_release_path(quick=False, log=print, source=REPO, vfs_per_pf=16):
    """The release-path cases alone, on a smaller host (default 128 VFs): {"ms": {...},
    "site_ms", "bare_ms", ...}."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="vfpick-bench-", dir=shm)
    disk = tempfile.mkdtemp(prefix="vfpick-bench-state-")
    reps = 7 if quick else 21
    inst = None
    try:
        inst = Install(root, source)
        inst.import_vfpick()
        from vfpick.host import simhost

        host = Host(inst, os.path.join(root, "h"), os.path.join(disk, "h"),
                    simhost.bench_spec(vfs_per_pf=vfs_per_pf)).populate()
        warm = Baseline()
        bench_release_path(host, warm, 3)
        base = Baseline()
        ms = bench_release_path(host, base, reps)
        res = {"source": source, "install": inst.how, "reps": reps, "vfs": host.n_vfs,
               "claims": host.n_claims, "ms": ms, "site_ms": base.site_ms, "bare_ms": base.bare_ms,
               "hook_shebang": host.hook_text.splitlines()[0]}
        log("release path (%s): %s; python -c pass %.1f ms" % (source, ", ".join(
            "%s %.1f ms" % kv for kv in ms.items()), base.site_ms))
        return res
    finally:
        if inst is not None:
            inst.forget_vfpick()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)


def release_markdown(rp):
    """Table rows of bench_release_path results *rp* ({"ms", "site_ms", "bare_ms"})."""
    out = ["| hook call (vfpick's 2-NIC domain) | ms | ratio to `python -c pass` | ratio to "
           "`python -IS -c pass` |", "|---|---:|---:|---:|"]
    for key, ms in rp["ms"].items():
        label = ("`stopped end` + `release end` (what `virsh destroy` waits for)" if key == "destroy"
                 else "`%s`" % key)
        out.append("| %s | %.1f | %.2f | %.2f |" % (label, ms, ms / rp["site_ms"], ms / rp["bare_ms"]))
    return "\n".join(out)


def foreign_xml(kind):
    """A domain that is not vfpick's: a GPU passthrough VM on libvirt's default network (the
    hook must scan it and read the config to tell), or a bridge-only VM (a byte search tells)."""
    ifaces = ("    <hostdev mode='subsystem' type='pci' managed='yes'><source><address "
              "domain='0x0000' bus='0x65' slot='0x00' function='0x0'/></source></hostdev>\n"
              if kind == "gpu" else "")
    xml = domain_xml("other-" + kind, _uuid(9, 1 if kind == "gpu" else 2), 0, ifaces)
    if kind == "bridge":
        xml = xml.replace(b"<interface type='network'>\n      <source network='default'/>",
                          b"<interface type='bridge'>\n      <source bridge='br0'/>")
    return xml


def bench_hook_foreign(host, base, reps):
    """prepare begin + release end of domains that are not vfpick's: {kind: (prepare, release)}."""
    out = {}
    for kind in ("gpu", "bridge"):
        xml = foreign_xml(kind)
        prep, rel = [], []
        for _ in range(reps):
            base.sample()
            prep.append(host.run_hook("other-" + kind, xml))
            rel.append(host.run_hook("other-" + kind, xml, "release", "end"))
        out[kind] = (med_ms(prep), med_ms(rel))
    return out


def bench_resolve_seq(host, base, reps, nics=2):
    times = []
    for i in range(reps):
        base.sample()
        dt, _ = timed(host.inst.cli_cmd + ["--config", host.config, "resolve", "-"],
                      domain_xml("seq-%04d" % i, _uuid(2, i), nics), env=host.inst.env)
        times.append(dt)
    host.release_uuids(2)
    return med_ms(times)


_WORKER = r"""
import os, subprocess, sys, time, json
cmd, cfg, me, count, nics, start_at = json.loads(sys.argv[1])
sys.path.insert(0, %(bench)r)
from perf import domain_xml, _uuid
out = []
while time.time() < start_at:
    time.sleep(0.001)
for i in range(count):
    n = me * 1000 + i
    data = domain_xml("par-%%06d" %% n, _uuid(3, n), nics)
    t0 = time.perf_counter()
    p = subprocess.run(cmd + ["--config", cfg, "resolve", "-"], input=data, capture_output=True)
    dt = time.perf_counter() - t0
    out.append([n, p.returncode, dt, p.stdout.decode(), p.stderr.decode()])
    sys.stdout.write(json.dumps(out[-1]) + "\n")
"""


def bench_resolve_parallel(host, procs, per_proc, nics=2):
    """*procs* processes, each running *per_proc* `vfpick resolve` one after the other.
    Returns (median latency ms, claims/s, errors, problems with the claims)."""
    import json

    from vfpick import domscan
    from vfpick.state import StateStore

    before = {c.vf: c for c in StateStore(host.state_dir).snapshot().all()}
    start_at = time.time() + 0.3 + procs * 0.01
    script = _WORKER % {"bench": os.path.dirname(os.path.abspath(__file__))}
    workers = [subprocess.Popen([PY, "-c", script, json.dumps(
        [host.inst.cli_cmd, host.config, w, per_proc, nics, start_at])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=host.inst.env) for w in range(procs)]
    results = []
    for p in workers:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError("resolve worker failed: %s" % err.decode())
        results.extend(json.loads(line) for line in out.decode().splitlines())
    wall = time.time() - start_at
    errors = [r for r in results if r[1] != 0]
    ok = [r for r in results if r[1] == 0]

    # Every successful resolve's VFs are in the state, held by that domain; nothing else moved.
    after = {c.vf: c for c in StateStore(host.state_dir).snapshot().all()}
    problems = []
    printed = {}
    for n, _, _, xml, _ in ok:
        facts = domscan.scan(xml.encode())
        vfs = [nic.vf for nic in facts.meta_nics]
        if len(vfs) != nics or len(set(vfs)) != nics:
            problems.append("par-%06d printed %d VFs for %d NICs" % (n, len(set(vfs)), nics))
        for vf in vfs:
            if vf in printed:
                problems.append("VF %s handed to par-%06d and par-%06d" % (vf, printed[vf], n))
            printed[vf] = n
            c = after.get(vf)
            if c is None or c.uuid != _uuid(3, n):
                problems.append("VF %s of par-%06d lost (state: %s)" % (vf, n, c and c.domain))
    for vf, c in before.items():
        if after.get(vf) != c:
            problems.append("pre-existing claim on %s changed" % vf)
    extra = set(after) - set(before) - set(printed)
    if extra:
        problems.append("%d claims nobody was told about" % len(extra))
    host.release_uuids(3)
    lat = med_ms([r[2] for r in ok]) if ok else float("nan")
    return lat, len(ok) * nics / wall, len(ok), errors, problems


def bench_status(host, base, reps):
    times, jtimes = [], []
    for _ in range(reps):
        base.sample()
        times.append(timed(host.inst.cli_cmd + ["--config", host.config, "status"], env=host.inst.env)[0])
        jtimes.append(timed(host.inst.cli_cmd + ["--config", host.config, "status", "--json"],
                            env=host.inst.env)[0])
    return med_ms(times), med_ms(jtimes)


def run(quick=False, log=print, source=REPO, only=None):
    """Runs everything; returns a dict of results (also printed as it goes)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="vfpick-bench-", dir=shm)
    disk = tempfile.mkdtemp(prefix="vfpick-bench-state-")
    reps = 7 if quick else 21
    res = {"source": source, "python": sys.version.split()[0], "executable": PY, "cores": os.cpu_count(),
           "sysfs_on": "tmpfs" if shm else "temp dir", "reps": reps}
    inst = None
    try:
        t0 = time.time()
        inst = Install(root, source)
        inst.import_vfpick()
        from vfpick.host import simhost

        res["install"] = inst.how
        log("installed %s in %.1fs: %s" % (inst.site, time.time() - t0, inst.how))

        # --- the 1024-VF host ---------------------------------------------------------------
        host = Host(inst, os.path.join(root, "h1024"), os.path.join(disk, "h1024"),
                    simhost.bench_spec()).populate()
        res["hook_shebang"] = host.hook_text.splitlines()[0]
        res["host"] = {"vfs": host.n_vfs, "claims": host.n_claims, "running": host.n_running,
                       "defined_idle": len(host.resolved)}
        log("1024-VF host: %d claims, %d running domains" % (host.n_claims, host.n_running))
        base = Baseline()
        for _ in range(3):   # warm the page cache and the byte-code
            base.sample()
            host.run_hook(sorted(host.resolved)[0], host.resolved[sorted(host.resolved)[0]])
            host.run_hook(sorted(host.resolved)[0], host.resolved[sorted(host.resolved)[0]],
                          "release", "end")
        base = Baseline()
        prep, rel = bench_hook(host, base, reps)
        res["hook"] = {"prepare_ms": prep, "release_ms": rel, "site_ms": base.site_ms,
                       "bare_ms": base.bare_ms}
        log("hook prepare %.1f ms, release %.1f ms; python -c pass %.1f ms, -IS %.1f ms"
            % (prep, rel, base.site_ms, base.bare_ms))
        base = Baseline()
        res["release_path"] = {"ms": bench_release_path(host, base, reps), "site_ms": base.site_ms,
                               "bare_ms": base.bare_ms}
        log("release path: %s" % ", ".join("%s %.1f ms" % kv for kv in res["release_path"]["ms"].items()))
        base = Baseline()
        res["hook_foreign"] = {"ms": bench_hook_foreign(host, base, reps), "site_ms": base.site_ms,
                               "bare_ms": base.bare_ms}
        for kind, (p, r) in res["hook_foreign"]["ms"].items():
            log("hook, a %s domain that is not vfpick's: prepare %.1f ms, release %.1f ms" % (kind, p, r))

        base = Baseline()
        seq = bench_resolve_seq(host, base, reps)
        res["resolve"] = {"seq_ms": seq, "site_ms": base.site_ms, "bare_ms": base.bare_ms,
                          "parallel": []}
        log("resolve (1 process, 2 NICs) %.1f ms" % seq)
        if only == "1024":
            base = Baseline()
            st, stj = bench_status(host, base, max(5, reps // 2))
            res["status"] = {"text_ms": st, "json_ms": stj, "site_ms": base.site_ms}
            log("status %.1f ms, --json %.1f ms" % (st, stj))
            return res
        for procs, per in ((1, 10 if quick else 30), (8, 4 if quick else 10), (64, 2 if quick else 3)):
            lat, cps, n_ok, errors, problems = bench_resolve_parallel(host, procs, per)
            res["resolve"]["parallel"].append({
                "procs": procs, "resolves": n_ok, "median_ms": lat, "claims_per_s": cps,
                "errors": [e[4].strip() for e in errors][:3], "n_errors": len(errors),
                "problems": problems[:5], "n_problems": len(problems)})
            log("resolve x%d procs: %d ok, median %.1f ms, %.1f claims/s, %d errors, %d problems"
                % (procs, n_ok, lat, cps, len(errors), len(problems)))

        base = Baseline()
        st, stj = bench_status(host, base, max(5, reps // 2))
        res["status"] = {"text_ms": st, "json_ms": stj, "site_ms": base.site_ms}
        log("status %.1f ms, --json %.1f ms" % (st, stj))

        # --- scaling --------------------------------------------------------------------------
        res["scaling"] = []
        for total in (64, 128, 256, 512, 1024, 2048):
            h = Host(inst, os.path.join(root, "s%d" % total), os.path.join(disk, "s%d" % total),
                     simhost.bench_spec(vfs_per_pf=total // 8)).populate()
            b = Baseline()
            n = max(5, min(reps // 2, len(h.resolved)))
            prep, _ = bench_hook(h, b, n)
            seq = bench_resolve_seq(h, b, n)
            res["scaling"].append({"vfs": total, "claims": h.n_claims, "running": h.n_running,
                                   "hook_ms": prep, "resolve_ms": seq, "site_ms": b.site_ms,
                                   "bare_ms": b.bare_ms})
            log("scaling %4d VFs (%d claims, %d running): hook %.1f ms, resolve %.1f ms, "
                "python %.1f ms" % (total, h.n_claims, h.n_running, prep, seq, b.site_ms))
            shutil.rmtree(h.root, ignore_errors=True)
    finally:
        if inst is not None:
            inst.forget_vfpick()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    return res


def markdown(res):
    h, r, s = res["hook"], res["resolve"], res["status"]
    out = []
    out.append("Python %s (`%s`), %s cores; sysfs on %s, state dir on disk; medians of %d runs; "
               "install under test: %s; hook `%s`."
               % (res["python"], res["executable"], res["cores"], res["sysfs_on"], res["reps"],
                  res["install"], res["hook_shebang"]))
    out.append("")
    hc = res["host"]
    out.append("**1024-VF host** (`simhost.bench_spec()`: 4 cards x 2 PFs x 128 VFs): %d claims by "
               "%d running domains (status files of ~16 KB in the run dir) and %d defined ones."
               % (hc["claims"], hc["running"], hc["defined_idle"]))
    out.append("")
    out.append("| what | ms | ratio to `python -c pass` | ratio to `python -IS -c pass` | goal |")
    out.append("|---|---:|---:|---:|---|")
    out.append("| bare `python -c pass` | %.1f | 1.00 | %.2f | |" % (h["site_ms"], h["site_ms"] / h["bare_ms"]))
    out.append("| bare `python -IS -c pass` | %.1f | %.2f | 1.00 | |" % (h["bare_ms"], h["bare_ms"] / h["site_ms"]))
    out.append("| hook `prepare begin` | %.1f | **%.2f** | %.2f | <= 2 |"
               % (h["prepare_ms"], h["prepare_ms"] / h["site_ms"], h["prepare_ms"] / h["bare_ms"]))
    out.append("| hook `release end` | %.1f | %.2f | %.2f | |"
               % (h["release_ms"], h["release_ms"] / h["site_ms"], h["release_ms"] / h["bare_ms"]))
    f = res["hook_foreign"]
    for kind, what in (("gpu", "a GPU passthrough VM on the default network"),
                       ("bridge", "a bridge-only VM")):
        p, _ = f["ms"][kind]
        out.append("| hook `prepare begin`, %s (not vfpick's) | %.1f | %.2f | %.2f | |"
                   % (what, p, p / f["site_ms"], p / f["bare_ms"]))
    out.append("| `vfpick resolve` (2 NICs, 1 process) | %.1f | **%.2f** | %.2f | <= 3 |"
               % (r["seq_ms"], r["seq_ms"] / r["site_ms"], r["seq_ms"] / r["bare_ms"]))
    out.append("| `vfpick status` | %.1f | %.2f | | |" % (s["text_ms"], s["text_ms"] / s["site_ms"]))
    out.append("| `vfpick status --json` | %.1f | %.2f | | |" % (s["json_ms"], s["json_ms"] / s["site_ms"]))
    out.append("")
    if "release_path" in res:
        out.append("**Start and destroy hook calls** (libvirt runs them synchronously; the claims "
                   "active after a `prepare begin`, as after a start):")
        out.append("")
        out.append(release_markdown(res["release_path"]))
        out.append("")
    out.append("**Concurrent `vfpick resolve`** (2-NIC domains; each process resolves one after "
               "the other; all start together):")
    out.append("")
    out.append("| processes | resolves | median latency ms | ratio | claims/s | errors | lost/doubled claims |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|")
    for p in r["parallel"]:
        out.append("| %d | %d | %.1f | %.1f | %.0f | %d | %d |"
                   % (p["procs"], p["resolves"], p["median_ms"], p["median_ms"] / r["site_ms"],
                      p["claims_per_s"], p["n_errors"], p["n_problems"]))
    out.append("")
    out.append("**Scaling** (the host grows, 40 % of its VFs claimed, half of the claiming domains "
               "running; ratio to `python -c pass` of the same run):")
    out.append("")
    out.append("| VFs | claims | running domains | hook prepare ms | ratio | resolve ms | ratio |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|")
    for row in res["scaling"]:
        out.append("| %d | %d | %d | %.1f | %.2f | %.1f | %.2f |"
                   % (row["vfs"], row["claims"], row["running"], row["hook_ms"],
                      row["hook_ms"] / row["site_ms"], row["resolve_ms"], row["resolve_ms"] / row["site_ms"]))
    return "\n".join(out)


if __name__ == "__main__":
    import json

    src = sys.argv[sys.argv.index("--source") + 1] if "--source" in sys.argv else REPO
    result = run(quick="--quick" in sys.argv, source=os.path.abspath(src),
                 only="1024" if "--only-1024" in sys.argv else None)
    if "--only-1024" in sys.argv:
        print(json.dumps(result, indent=1, default=str))
        sys.exit(0)
    print(markdown(result))
    print(json.dumps(result, indent=1, default=str))
