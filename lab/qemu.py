"""The L0 QEMU: 11.x from trixie-backports, in a root of its own, run through that root's loader.

Why 11: QEMU 10.0.2 registers the igb VFs' BARs as 32-bit while the PF's SR-IOV capability says
64-bit; L1's kernel places them above 4 GiB and QEMU maps nothing there, so every VF register
reads 0 and no packet ever crosses a VF (../shared/sriov-lab/FINDINGS.md, measured). 11.1.3
registers them 64-bit: VFs get the MAC their PF sets, carrier, and carry frames.

It needs trixie's libraries, so it lives in a minimal trixie root made by mmdebstrap (the
qemu packages from trixie-backports, with seabios from there too: trixie's own is too old for
it) and is started through that root's own dynamic loader with its library path. The host's
packages, its apt configuration and its qemu are never touched. Cached under CACHE/qemu-ROOTKEY.
"""
import os
import re
import shutil
import subprocess

from lab.host import CACHE, LabError, LabUnavailable, locked, log, mirrors, run

SUITE = "trixie"
BACKPORTS = f"{SUITE}-backports"
# (package, suite it comes from): the qemu parts and seabios from backports, ipxe from trixie
PACKAGES = (("qemu-system-x86", BACKPORTS), ("qemu-system-common", BACKPORTS),
            ("qemu-system-data", BACKPORTS), ("qemu-utils", BACKPORTS),
            ("seabios", BACKPORTS), ("ipxe-qemu", SUITE))
# the first major whose igb VFs map their 64-bit BARs (10.0.2 does not: FINDINGS.md)
MIN_MAJOR = 11
ROOT_KEY = "trixie-backports-1"   # bump when PACKAGES or the way the root is made changes


class Qemu:
    """QEMU in its own root: the commands that run its binaries, its firmware search path."""

    def __init__(self, root, loader=None):
        self.root = root
        self.loader = loader or os.path.join(root, "lib64/ld-linux-x86-64.so.2")
        self.libpath = ":".join(os.path.join(root, d) for d in ("lib/x86_64-linux-gnu",
                                                                  "usr/lib/x86_64-linux-gnu"))

    def command(self, binary):
        """argv prefix that runs BINARY (a name under usr/bin) with the root's own libraries."""
        return [self.loader, "--library-path", self.libpath, os.path.join(self.root, "usr/bin", binary)]

    @property
    def system(self):
        return self.command("qemu-system-x86_64")

    @property
    def img(self):
        return self.command("qemu-img")

    @property
    def env(self):
        return dict(os.environ, QEMU_MODULE_DIR=os.path.join(self.root, "usr/lib/x86_64-linux-gnu/qemu"))

    @property
    def firmware_args(self):
        return ["-L", os.path.join(self.root, "usr/share/seabios"),
                "-L", os.path.join(self.root, "usr/share/qemu")]

    def version(self):
        out = subprocess.run([*self.system, "--version"], capture_output=True, text=True,
                             timeout=30, env=self.env).stdout
        m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
        return tuple(map(int, m.groups())) if m else None

    def problems(self, min_major=MIN_MAJOR):
        """Why this root cannot run the lab (empty: it can)."""
        for path in (self.loader, self.system[-1], self.img[-1]):
            if not os.path.exists(path):
                return [f"{path} missing"]
        v = self.version()
        if not v or v[0] < min_major:
            return [f"QEMU {v} < {min_major}.0 (igb VFs need 64-bit BARs)"]
        p = subprocess.run([*self.system, "-device", "igb,help"], capture_output=True, text=True,
                           timeout=30, env=self.env)
        if p.returncode != 0 or "netdev" not in p.stdout:
            return [f"no -device igb: {(p.stderr or p.stdout).strip()[:200]}"]
        return []


def ensure(cache=CACHE):
    """The lab's QEMU, its root made on first use; LabUnavailable when none fits."""
    base = os.path.join(cache, f"qemu-{ROOT_KEY}")
    with locked(f"{base}.lock", 900, "QEMU"):
        return _ensure(base)


def _ensure(base):
    q = Qemu(os.path.join(base, "root"))
    if not q.problems():
        return q
    log(f"making QEMU's own {SUITE} root in {base} (qemu from {BACKPORTS}; not installed on the host)")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    archive, _ = mirrors()
    include = ",".join(f"{name}/{suite}" if suite != SUITE else name for name, suite in PACKAGES)
    try:
        run(["mmdebstrap", "--variant=apt", "--mode=root", f"--include={include}",
             "--aptopt=Acquire::Retries \"3\"",   # a dropped connection to the mirror is transient
             SUITE, q.root, f"deb {archive} {SUITE} main", f"deb {archive} {BACKPORTS} main"],
            timeout=900, log_path=os.path.join(base, "mmdebstrap.log"))
    except LabError as e:
        raise LabUnavailable(f"cannot make QEMU >= {MIN_MAJOR} from {BACKPORTS}: {e}") from None
    problems = q.problems()
    if problems:
        raise LabUnavailable(f"QEMU from {BACKPORTS} cannot run the lab: {problems[0]}")
    return q
