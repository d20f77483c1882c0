"""The machine the lab runs on (L0): its apt mirrors, the cache directory, preconditions.

Every precondition that fails raises LabUnavailable with one line; scripts/test-lab prints it
and fails (a lab that cannot run is a red CI, never a skip).
"""
import contextlib
import fcntl
import os
import shutil
import subprocess
import time

CACHE = os.environ.get("VFPICK_LAB_CACHE", "/var/cache/vfpick-lab")
SOURCES = "/etc/apt/sources.list.d/debian.sources"
SUITES = ("bookworm", "trixie")


def run_dir():
    """This run's directory (VMs, share, logs): scripts/test-lab makes one per run, so that
    two runs on one machine (two developers) never share a VM directory."""
    return os.environ.get("VFPICK_LAB_RUN") or os.path.join(CACHE, "run", "default")


@contextlib.contextmanager
def locked(path, timeout, what):
    """An exclusive flock on PATH, waited for at most TIMEOUT s (another run building WHAT)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"{path}: another run held the lock on {what} for {timeout} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class LabUnavailable(Exception):
    """The lab cannot run on this machine; the message is one line with the reason."""


class LabError(Exception):
    """A lab step failed (image build, boot, a command in L1)."""


# In the message of an L1Gone whose serial log shows the guest kernel's panic: scripts/test-lab
# reruns a scenario (once, on a freshly booted L1) only when its failure says this.
KERNEL_PANIC = "L1 kernel panic"


class L1Gone(LabError):
    """L1's QEMU ended under a scenario (-no-reboot: a guest kernel panic ends it). Seen once
    in the nested-SVM entry path of L1's kvm_amd under TCG (a stack-guard hit in
    error_entry during __svm_vcpu_run): the emulator's, not vfpick's."""


def log(msg):
    print(f"test-lab: {msg}", flush=True)


def deb822_stanzas(text):
    """The stanzas of a deb822 sources file, as dicts (comment lines dropped)."""
    stanzas, cur, key = [], {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
            continue
        if line[0] in " \t" and key:
            cur[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        cur[key] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def mirrors(path=SOURCES):
    """(archive URI, security URI) this machine's apt uses, read from its deb822 sources.

    The archive is the stanza whose suites include one without a '-security' suffix; the
    security archive the one with '-security' suites (else the archive itself)."""
    try:
        with open(path, encoding="utf-8") as f:
            stanzas = deb822_stanzas(f.read())
    except OSError as e:
        raise LabUnavailable(f"cannot read the apt mirror from {path}: {e.strerror}") from None
    archive = security = None
    for st in stanzas:
        uris, suites = st.get("URIs", "").split(), st.get("Suites", "").split()
        if not uris or not suites:
            continue
        if any(s.endswith("-security") for s in suites):
            security = security or uris[0]
        else:
            archive = archive or uris[0]
    if not archive:
        raise LabUnavailable(f"no archive mirror (URIs: with a non-security suite) in {path}")
    return archive, security or archive


def sources_lines(suite, path=SOURCES):
    """One-line apt sources for SUITE (main, -updates, -security) on this machine's mirrors."""
    archive, security = mirrors(path)
    return [f"deb {archive} {suite} main", f"deb {archive} {suite}-updates main",
            f"deb {security} {suite}-security main"]


def host_codename():
    with open("/etc/os-release", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    raise LabUnavailable("no VERSION_CODENAME in /etc/os-release")


def mem_available_mib():
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def require_root():
    if os.geteuid() != 0:
        raise LabUnavailable("must run as root (mmdebstrap, chroot, the lab VM's 9p share)")


def require_memory(mib):
    have = mem_available_mib()
    if have < mib:
        raise LabUnavailable(f"not enough memory: {have} MiB available, the lab needs {mib} MiB")


def require_disk(path, gib):
    os.makedirs(path, exist_ok=True)
    free = shutil.disk_usage(path).free / 2**30
    if free < gib:
        raise LabUnavailable(f"not enough disk under {path}: {free:.1f} GiB free, the lab needs {gib} GiB")


def run(argv, timeout, log_path=None, **kw):
    """subprocess.run with a bound; output to LOG_PATH when given. Raises LabError on failure."""
    out = open(log_path, "ab") if log_path else subprocess.PIPE
    try:
        p = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise LabError(f"{argv[0]} did not finish in {timeout} s" +
                       (f" (log: {log_path})" if log_path else "")) from None
    finally:
        if log_path:
            out.close()
    if p.returncode != 0:
        detail = f"log: {log_path}" if log_path else (p.stdout or b"").decode(errors="replace")[-2000:]
        raise LabError(f"{' '.join(map(str, argv[:3]))} ... exited {p.returncode} ({detail})")
    return (p.stdout or b"").decode(errors="replace") if not log_path else ""
