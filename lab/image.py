"""The L1 image: a Debian root made by mmdebstrap, customized, packed into a raw ext4 file.

Cached under CACHE/images/SUITE-HASH/ where HASH covers every input (suite, package list, this
module, the files under lab/guest/); a change rebuilds it, a stale one is removed. vfpick
itself is NOT in the image: its .deb changes every commit and is installed at each boot
(its Depends are preinstalled here, so that needs no network).
"""
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat

from lab.host import CACHE, LabError, locked, log, run, sources_lines

GUEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest")
IMAGE_GIB = 8

COMMON = ("linux-image-amd64", "systemd-sysv", "udev", "kmod", "iproute2", "pciutils", "procps",
          "dbus", "ethtool", "iputils-ping", "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients",
          "qemu-system-x86", "ipxe-qemu", "busybox-static", "python3",
          # vfpick's Depends (debian/control), so its .deb installs offline in L1
          "python3-libvirt", "python3-lxml", "python3-pyroute2", "python3-pyudev",
          "python3-prometheus-client")
PACKAGES = {"bookworm": COMMON, "trixie": COMMON}

# the nested guest's modules (and whatever they depend on): igbvf for the VF, virtio_net and
# its failover stack for the failover pair, bonding for the guests whose bond carries traffic
L2_MODULES = ("igbvf", "failover", "net_failover", "virtio_net", "virtio_pci", "bonding")


class Image:
    def __init__(self, directory, suite):
        self.dir = directory
        self.suite = suite
        self.disk = os.path.join(directory, "l1.img")
        self.kernel = os.path.join(directory, "vmlinuz")
        self.initrd = os.path.join(directory, "initrd.img")

    def complete(self):
        return os.path.exists(os.path.join(self.dir, "ok"))


def inputs_hash(suite):
    h = hashlib.sha256()
    h.update(suite.encode())
    h.update("\n".join(PACKAGES[suite]).encode())
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    for name in sorted(os.listdir(GUEST)):
        if name == "l2-init":   # the L2 initrd is made at each boot (l2_initrd): not an input
            continue
        h.update(name.encode())
        with open(os.path.join(GUEST, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def ensure(suite, cache=CACHE):
    """The cached image for SUITE, built when missing or when its inputs changed."""
    images = os.path.join(cache, "images")
    with locked(os.path.join(images, f"{suite}.lock"), 3600, f"the {suite} image"):
        return _ensure(images, suite)


def _ensure(images, suite):
    os.makedirs(images, exist_ok=True)
    image = Image(os.path.join(images, f"{suite}-{inputs_hash(suite)}"), suite)
    if image.complete():
        log(f"L1 image (cached): {image.dir}")
        return image
    for old in os.listdir(images):   # other builds of this suite: stale inputs, or a half build
        if old.startswith(suite + "-") and not old.endswith(".lock"):
            shutil.rmtree(os.path.join(images, old), ignore_errors=True)
    os.makedirs(image.dir)
    build(image)
    return image


def build(image):
    root = os.path.join(image.dir, "root")
    logf = os.path.join(image.dir, "build.log")
    log(f"building the {image.suite} L1 image in {image.dir} (log {logf})")
    run(["mmdebstrap", "--variant=apt", "--mode=root", "--include=" + ",".join(PACKAGES[image.suite]),
         "--aptopt=Acquire::Retries \"3\"",   # a dropped connection to the mirror is transient
         image.suite, root, *sources_lines(image.suite)], timeout=1500, log_path=logf)
    kver = customize(root)
    shutil.copy(os.path.join(root, f"boot/vmlinuz-{kver}"), image.kernel)
    shutil.copy(os.path.join(root, f"boot/initrd.img-{kver}"), image.initrd)
    with open(image.disk, "wb") as f:
        f.truncate(IMAGE_GIB * 2**30)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "labroot", "-d", root, image.disk],
        timeout=600, log_path=logf)
    shutil.rmtree(root)
    with open(os.path.join(image.dir, "ok"), "w", encoding="ascii") as f:
        f.write(kver + "\n")


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


def customize(root):
    """Make the mmdebstrap root a lab host; returns its kernel version."""
    kvers = sorted(os.listdir(os.path.join(root, "lib/modules")))
    if len(kvers) != 1:
        raise LabError(f"expected one kernel in the L1 root, found {kvers}")
    kver = kvers[0]
    _write(f"{root}/etc/hostname", "lab-l1\n")
    _write(f"{root}/etc/hosts", "127.0.0.1 localhost\n")
    _write(f"{root}/etc/fstab", "/dev/vda / ext4 rw,relatime 0 1\n")
    run(["chroot", root, "passwd", "-d", "root"], timeout=60)   # serial console login (--keep)
    with open(os.path.join(GUEST, "lab-agent"), encoding="utf-8") as f:
        _write(f"{root}/usr/local/sbin/lab-agent", f.read(), 0o755)
    _write(f"{root}/etc/systemd/system/lab-agent.service",
           "[Unit]\nDescription=vfpick lab command agent (9p queue)\nAfter=local-fs.target\n"
           "[Service]\nExecStart=/usr/local/sbin/lab-agent\nRestart=always\nRestartSec=1\n"
           "[Install]\nWantedBy=multi-user.target\n")
    wants = f"{root}/etc/systemd/system/multi-user.target.wants"
    os.makedirs(wants, exist_ok=True)
    os.symlink("/etc/systemd/system/lab-agent.service", f"{wants}/lab-agent.service")
    # libvirt-guests waits up to 300 s for the busybox L2s at shutdown; timers only cost CPU
    for unit in ("libvirt-guests.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "e2scrub_all.timer", "fstrim.timer", "man-db.timer", "dpkg-db-backup.timer",
                 "systemd-tmpfiles-clean.timer", "logrotate.timer"):
        link = f"{root}/etc/systemd/system/{unit}"
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink("/dev/null", link)
    timers = f"{root}/etc/systemd/system/timers.target.wants"
    if os.path.isdir(timers):
        shutil.rmtree(timers)
    # libvirt's default NAT network needs dnsmasq, which the lab does not have nor need
    autostart = f"{root}/etc/libvirt/qemu/networks/autostart/default.xml"
    if os.path.lexists(autostart):
        os.unlink(autostart)
    # TCG emulates SVM: kvm_amd gives L1 a /dev/kvm for type='kvm' L2s
    _write(f"{root}/etc/modules-load.d/vfpick-lab.conf", "kvm_amd\n")
    l2_assets(root, kver)
    return kver


def _module_closure(root, kver, names):
    """Module files (relative to lib/modules/KVER) for NAMES and their deps, in load order."""
    base = f"{root}/lib/modules/{kver}"
    deps, by_name = {}, {}
    with open(f"{base}/modules.dep", encoding="utf-8") as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
            by_name[os.path.basename(path).split(".ko")[0].replace("-", "_")] = path
    order = []

    def visit(path):
        for d in deps.get(path, ()):
            visit(d)
        if path not in order:
            order.append(path)
    for name in names:
        if name in by_name:   # absent: built into the kernel
            visit(by_name[name])
    return order


def l2_assets(root, kver):
    """The L2 kernel (L1's, world-readable for libvirt's qemu user) in the image; the pieces of
    the L2's busybox initramfs (busybox, the modules in load order) kept beside the image, so
    that l2_initrd can make the initramfs with the current lab/guest/l2-init at each boot."""
    boot = f"{root}/var/lib/libvirt/boot"
    os.makedirs(boot, exist_ok=True)
    shutil.copy(f"{root}/boot/vmlinuz-{kver}", f"{boot}/vmlinuz")
    os.chmod(f"{boot}/vmlinuz", 0o644)
    parts = os.path.join(os.path.dirname(root), "l2")
    os.makedirs(f"{parts}/modules")
    shutil.copy(f"{root}/bin/busybox", f"{parts}/busybox")
    names = []
    for rel in _module_closure(root, kver, L2_MODULES):
        with open(f"{root}/lib/modules/{kver}/{rel}", "rb") as f:
            data = f.read()
        name = os.path.basename(rel)
        if name.endswith(".xz"):   # busybox insmod takes plain .ko files
            data, name = lzma.decompress(data), name[:-3]
        names.append(name)
        with open(f"{parts}/modules/{name}", "wb") as f:
            f.write(data)
    with open(f"{parts}/modules.order", "w", encoding="ascii") as f:
        f.write("\n".join(names) + "\n")


def l2_initrd(image, dest):
    """Writes the L2's initramfs (busybox, lab/guest/l2-init as /init, the modules) to DEST."""
    parts = os.path.join(image.dir, "l2")
    entries = [("dev", None, 0o40755), ("proc", None, 0o40755), ("sys", None, 0o40755),
               ("bin", None, 0o40755), ("modules", None, 0o40755)]
    with open(f"{parts}/busybox", "rb") as f:
        entries.append(("bin/busybox", f.read(), 0o100755))
    with open(os.path.join(GUEST, "l2-init"), "rb") as f:
        entries.append(("init", f.read(), 0o100755))
    with open(f"{parts}/modules.order", "rb") as f:
        order = f.read()
    for name in order.decode().split():
        with open(f"{parts}/modules/{name}", "rb") as f:
            entries.append((f"modules/{name}", f.read(), 0o100644))
    entries.append(("modules.order", order, 0o100644))
    with open(dest, "wb") as f:
        f.write(gzip.compress(newc(entries, console=True), compresslevel=6))
    os.chmod(dest, 0o644)


def newc(entries, console):
    """A cpio archive in the kernel's initramfs format (newc) of (name, data, mode) entries."""
    out = io.BytesIO()
    ino = 1

    def header(name, mode, size, rdev=(0, 0)):
        nonlocal ino
        fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        ino += 1
        out.write(b"070701" + b"".join(b"%08X" % v for v in fields))
        out.write(name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))
    for name, data, mode in entries:
        header(name, mode, len(data or b""))
        if data:
            out.write(data)
            out.write(b"\0" * (-out.tell() % 4))
    if console:   # the kernel opens /dev/console for init's stdio before devtmpfs is mounted
        header("dev/console", stat.S_IFCHR | 0o600, 0, rdev=(5, 1))
    header("TRAILER!!!", 0, 0)
    return out.getvalue()
