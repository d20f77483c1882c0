#!/usr/bin/env python3
"""Stress vfpick's claims store: many processes mixing resolve, release and hook prepare/release.

    bench/stress.py --procs 64 --seconds 30          # the full run
    bench/stress.py --procs 6 --seconds 4            # what CI runs (tests/test_crash.py)
    bench/stress.py --procs 16 --seconds 30 --exec   # each operation a real `vfpick`/hook process

It builds a simulated host (4 PFs x 32 VFs) under --dir (default: a temp dir), then starts
--procs worker processes. Each worker loops for --seconds over its own domains: resolve (CLI),
hook prepare, hook release end, CLI release, in a random order that follows a domain's life,
and journals what each operation reported. By default the operations run in-process
(vfpick.cli.main, vfpick.hook.run: more contention per second); --exec runs them as
subprocesses, as libvirt and users do.

At the end it checks, and exits 1 naming the first violation otherwise:
  * the state file parses and no VF is claimed twice;
  * every claim belongs to a live domain of some worker, on a VF of the pool;
  * every domain's claims are exactly what its last successful operation left (VFs, active);
  * no operation failed other than "pool exhausted" (a full pool is expected under load).
"""

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SPEC = {
    "nodes": {"0": "0-7", "1": "8-15"},
    "cards": [
        {"bus": "3b", "numa": 0, "pfs": [{"netdev": "ens1f0", "port": 0, "vfs": 32},
                                         {"netdev": "ens1f1", "port": 1, "vfs": 32}]},
        {"bus": "af", "numa": 1, "pfs": [{"netdev": "ens2f0", "port": 0, "vfs": 32},
                                         {"netdev": "ens2f1", "port": 1, "vfs": 32}]},
    ],
}


def domain_xml(name, uuid, nics):
    ifaces = "".join("<interface type='network'><source network='fast'/></interface>\n"
                     for _ in range(nics))
    return ("<domain type='kvm'>\n<name>%s</name>\n<uuid>%s</uuid>\n<memory unit='MiB'>64</memory>\n"
            "<devices>\n%s</devices>\n</domain>\n" % (name, uuid, ifaces)).encode()


# --- the worker ----------------------------------------------------------------------------------

class InProcess:
    def __init__(self, config_path):
        self.config_path = config_path
        os.environ["VFPICK_CONFIG"] = config_path

    def cli(self, args, data=b""):
        from vfpick import cli

        stdin, stdout, stderr = sys.stdin, sys.stdout, sys.stderr
        out, err = io.BytesIO(), io.StringIO()
        fake_in = io.TextIOWrapper(io.BytesIO(data))
        fake_out = io.TextIOWrapper(out, write_through=True)
        sys.stdin, sys.stdout, sys.stderr = fake_in, fake_out, err
        try:
            rc = cli.main(args)
            fake_out.flush()
        except SystemExit as e:  # argparse --help and the like: not used here
            rc = e.code
        finally:
            sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
            fake_in.detach()
            fake_out.detach()  # a collected wrapper would close the BytesIO under it
        return rc, out.getvalue(), err.getvalue().encode()

    def hook(self, name, op, subop, data):
        from vfpick import hook

        out, err = io.BytesIO(), io.StringIO()
        rc = hook.run([name, op, subop, "-"], stdin=io.BytesIO(data), stdout=out, stderr=err,
                      config_path=self.config_path)
        return rc, out.getvalue(), err.getvalue().encode()


class Exec:
    def __init__(self, config_path):
        self.env = dict(os.environ, VFPICK_CONFIG=config_path, PYTHONPATH=REPO)

    def _run(self, cmd, data):
        proc = subprocess.run(cmd, input=data, capture_output=True, env=self.env, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr

    def cli(self, args, data=b""):
        return self._run([sys.executable, "-m", "vfpick"] + args, data)

    def hook(self, name, op, subop, data):
        return self._run([sys.executable, os.path.join(REPO, "hooks", "qemu"), name, op, subop, "-"],
                         data)


def worker(args):
    from vfpick import domscan

    runner = (Exec if args.exec else InProcess)(args.config)
    rnd = random.Random(args.seed)
    journal = []  # one entry per domain: its final expected state
    live = []     # [entry] of domains that hold claims
    config_dir = args.config_dir
    deadline = time.time() + args.seconds
    n = 0
    failures = []
    while time.time() < deadline:
        action = rnd.random()
        if not live or action < 0.35:
            n += 1
            name = "w%02d-d%04d" % (args.me, n)
            uuid = "%08x-0000-4000-8000-%012x" % (args.me, n)
            nics = rnd.choice([1, 1, 2, 2, 3, 4])
            rc, out, err = runner.cli(["resolve", "-"], domain_xml(name, uuid, nics))
            if rc == 0:
                vfs = sorted(nic.vf for nic in domscan.scan(out).meta_nics)
                if len(vfs) != nics or not out.rstrip().endswith(b"</domain>"):
                    failures.append("resolve %s printed %d VFs for %d NICs" % (name, len(vfs), nics))
                entry = {"name": name, "uuid": uuid, "vfs": vfs, "active": False, "xml": out,
                         "persistent": rnd.random() < 0.6}
                if entry["persistent"]:
                    with open(os.path.join(config_dir, name + ".xml"), "wb") as f:
                        f.write(out)
                journal.append(entry)
                live.append(entry)
            elif b"exhausted" not in err:
                failures.append("resolve %s: rc %s: %s" % (name, rc, err.decode(errors="replace")))
            continue
        entry = rnd.choice(live)
        if action < 0.6:
            rc, _, err = runner.hook(entry["name"], "prepare", "begin", entry["xml"])
            if rc == 0:
                entry["active"] = True
            else:
                failures.append("prepare %s: rc %s: %s" % (entry["name"], rc, err.decode(errors="replace")))
        elif action < 0.85:
            rc, _, err = runner.hook(entry["name"], "release", "end", entry["xml"])
            if rc != 0 or err:
                failures.append("hook release %s: rc %s: %s" % (entry["name"], rc, err.decode(errors="replace")))
            entry["active"] = False
            if not entry["persistent"]:
                entry["vfs"] = []
                live.remove(entry)
        else:
            who = entry["uuid"] if rnd.random() < 0.5 else entry["name"]
            rc, out, err = runner.cli(["release", who])
            released = [l for l in out.splitlines() if l.startswith(b"released ")]
            if rc != 0 or len(released) != len(entry["vfs"]):
                failures.append("release %s: rc %s, %d lines for %d VFs: %s"
                                % (who, rc, len(released), len(entry["vfs"]), err.decode(errors="replace")))
            entry["vfs"], entry["active"] = [], False
            live.remove(entry)
    for entry in journal:
        del entry["xml"]
    with open(args.out, "w") as f:
        json.dump({"journal": journal, "failures": failures, "ops": n}, f)
    return 0


# --- the driver ----------------------------------------------------------------------------------

def setup(base):
    from vfpick.host import simhost

    sysfs = simhost.build(base, SPEC)
    for d in ("run", "etc/networks", "journal"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    path = os.path.join(base, "vfpick.ini")
    with open(path, "w") as f:
        f.write("[vfpick]\nstate_dir = %s/state\nsysfs_root = %s\nlibvirt_run_dir = %s/run\n"
                "libvirt_config_dir = %s/etc\n\n[pool fast]\npfs = ens1f0 ens1f1 ens2f0 ens2f1\n"
                % (base, sysfs, base, base))
    return path


def check(base, config_path, journals):
    from vfpick import config as configmod
    from vfpick.host import topology
    from vfpick.state import StateStore

    cfg = configmod.load(config_path)
    problems = []
    path = os.path.join(cfg.state_dir, "claims.json")
    raw = open(path, "rb").read() if os.path.exists(path) else b'{"version": 1, "claims": []}'
    doc = json.loads(raw)
    vfs = [c["vf"] for c in doc["claims"]]
    if len(vfs) != len(set(vfs)):
        problems.append("a VF is claimed twice in %s" % path)
    claims = {c.vf: c for c in StateStore(cfg.state_dir).snapshot().all()}  # parses, strictly
    topo = topology.for_config(cfg)
    pool = set(vf for pf in cfg.pools["fast"].pfs for vf in topo.pfs[pf].vfs)
    expected = {}
    for journal in journals:
        for entry in journal["journal"]:
            for vf in entry["vfs"]:
                if vf in expected:
                    problems.append("%s expected by two domains" % vf)
                expected[vf] = (entry["uuid"], entry["active"])
    for vf, claim in claims.items():
        if vf not in pool:
            problems.append("claim on %s, not a VF of the pool" % vf)
        if vf not in expected:
            problems.append("stray claim %s of %s (%s)" % (vf, claim.domain, claim.uuid))
        elif expected[vf] != (claim.uuid, claim.active):
            problems.append("claim %s is %s active=%s; the journal says %s active=%s"
                            % (vf, claim.uuid, claim.active, expected[vf][0], expected[vf][1]))
    for vf in set(expected) - set(claims):
        problems.append("lost claim %s of %s" % (vf, expected[vf][0]))
    for journal in journals:
        problems.extend(journal["failures"])
    return problems, len(claims)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--dir", help="work dir (default: a new temp dir, removed on success)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--exec", action="store_true", help="run each operation as a subprocess")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--me", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    base = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="vfpick-stress-")
    os.makedirs(base, exist_ok=True)
    config_path = setup(base)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    print("stress: %d procs, %.0f s, %s, seed %d, dir %s"
          % (args.procs, args.seconds, "exec" if args.exec else "in-process", seed, base), flush=True)
    procs, outs = [], []
    started = time.time()
    for me in range(args.procs):
        out = os.path.join(base, "journal", "w%02d.json" % me)
        outs.append(out)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--me", str(me),
               "--seconds", str(args.seconds), "--seed", str(rnd.randrange(1 << 30)),
               "--config", config_path, "--config-dir", os.path.join(base, "etc"), "--out", out]
        if args.exec:
            cmd.append("--exec")
        procs.append(subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=REPO)))
    bad = [me for me, p in enumerate(procs) if p.wait() != 0]
    elapsed = time.time() - started
    if bad:
        print("stress: FAILED: workers %s crashed" % bad)
        return 1
    journals = []
    for out in outs:
        with open(out) as f:
            journals.append(json.load(f))
    problems, held = check(base, config_path, journals)
    ops = sum(j["ops"] for j in journals)
    if problems:
        print("stress: FAILED (seed %d, dir %s):" % (seed, base))
        for p in problems[:20]:
            print("  " + p)
        return 1
    print("stress: %d resolves tried, %d claims held at the end, %.1f s: invariants hold"
          % (ops, held, elapsed))
    if not args.dir:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
