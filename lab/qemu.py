"""The L0 QEMU: >= 8.0 (the first with `-device igb`), from the host release's backports.

Downloaded with a private apt configuration (its own sources list and lists directory under
the cache) and unpacked with dpkg-deb -x: the host's packages, its apt lists and its qemu are
never touched. Its libraries must resolve against the host's (checked with ldd).
"""
import os
import re
import shutil
import subprocess

from lab.host import CACHE, LabError, LabUnavailable, host_codename, locked, log, mirrors, run

PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "qemu-utils")
MIN_MAJOR = 8


class Qemu:
    """An unpacked QEMU tree: binaries, firmware search path, module dir."""

    def __init__(self, root):
        self.root = root
        self.system = os.path.join(root, "usr/bin/qemu-system-x86_64")
        self.img = os.path.join(root, "usr/bin/qemu-img")

    @property
    def env(self):
        return dict(os.environ, QEMU_MODULE_DIR=os.path.join(self.root, "usr/lib/x86_64-linux-gnu/qemu"))

    @property
    def firmware_args(self):
        # seabios first: the qemu-system-data tree links bios-256k.bin to the host's (older) one.
        return ["-L", os.path.join(self.root, "usr/share/seabios"),
                "-L", os.path.join(self.root, "usr/share/qemu")]

    def version(self):
        out = subprocess.run([self.system, "--version"], capture_output=True, text=True,
                             timeout=30, env=self.env).stdout
        m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
        return tuple(map(int, m.groups())) if m else None

    def problems(self):
        """Why this tree cannot run the lab (empty: it can)."""
        for binary in (self.system, self.img):
            if not os.access(binary, os.X_OK):
                return [f"{binary} missing"]
        missing = [line.strip() for line in
                   subprocess.run(["ldd", self.system], capture_output=True, text=True,
                                  timeout=30).stdout.splitlines() if "not found" in line]
        if missing:
            return [f"libraries not found: {'; '.join(missing)}"]
        v = self.version()
        if not v or v[0] < MIN_MAJOR:
            return [f"QEMU {v} < {MIN_MAJOR}.0"]
        p = subprocess.run([self.system, "-device", "igb,help"], capture_output=True, text=True,
                           timeout=30, env=self.env)
        if p.returncode != 0 or "netdev" not in p.stdout:
            return [f"no -device igb: {(p.stderr or p.stdout).strip()[:200]}"]
        return []


def backports_suite():
    codename = host_codename()
    # Debian 12's own QEMU is 7.2 (no igb); from Debian 13 on the release's own QEMU has it.
    return f"{codename}-backports" if codename == "bookworm" else codename


def _apt(base, *args, timeout, cwd=None):
    opts = ["-o", f"Dir::Etc::SourceList={base}/sources.list",
            "-o", f"Dir::Etc::SourceParts={base}/sources.list.d",
            "-o", f"Dir::State::Lists={base}/lists",
            "-o", f"Dir::Cache={base}/cache",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Retries=3",   # a dropped connection to the mirror is transient
            "-q"]
    return run(["apt-get", *opts, *args], timeout=timeout, log_path=f"{base}/apt.log", cwd=cwd or base)


def ensure(cache=CACHE):
    """The lab's QEMU, fetched and unpacked on first use; LabUnavailable when none fits."""
    suite = backports_suite()
    base = os.path.join(cache, f"qemu-{suite}")
    with locked(f"{base}.lock", 900, "QEMU"):
        return _ensure(base, suite)


def _ensure(base, suite):
    q = Qemu(os.path.join(base, "root"))
    if not q.problems():
        return q
    log(f"fetching QEMU from {suite} into {base} (not installed on the host)")
    shutil.rmtree(base, ignore_errors=True)
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "debs"):
        os.makedirs(os.path.join(base, d))
    archive, _ = mirrors()
    with open(os.path.join(base, "sources.list"), "w", encoding="ascii") as f:
        f.write(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {archive} {suite} main\n")
    try:
        _apt(base, "update", timeout=300)
        _apt(base, "download", *[f"{p}/{suite}" for p in PACKAGES], timeout=600, cwd=f"{base}/debs")
    except LabError as e:
        raise LabUnavailable(f"cannot download QEMU >= {MIN_MAJOR} from {suite}: {e}") from None
    for deb in sorted(os.listdir(f"{base}/debs")):
        run(["dpkg-deb", "-x", f"{base}/debs/{deb}", q.root], timeout=120)
    problems = q.problems()
    if problems:
        raise LabUnavailable(f"QEMU from {suite} cannot run the lab: {problems[0]}")
    return q
