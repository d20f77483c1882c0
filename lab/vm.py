"""An L1 lab VM: boot (TCG, q35, intel-iommu, 3 igb PFs, two NUMA nodes), commands, stop.

Every wait is bounded. stop() is poweroff through the agent, then QMP quit, then SIGKILL: no
qemu process outlives its L1 object unless the caller asks (keep=True). Each VM records its
pid in RUNDIR/qemu.pid so scripts/test-lab's trap can end exactly the processes it started.
"""
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

from lab.image import l2_initrd
from lab.host import KERNEL_PANIC, L1Gone, LabError, log, run_dir

Result = collections.namedtuple("Result", "script rc stdout stderr seconds")

PEER = "peer"      # the netdev id of L1's peer NIC on the PFs' segment
PFS = 3            # igb PFs per L1: two on pcie.0 (NUMA -1), one behind a pxb-pcie on node 1
MEM_MIB = 4096     # two NUMA nodes of MEM_MIB/2 each
BOOT_TIMEOUT = 900  # s; measured 16-53 s on an idle host, 200+ s with the 2 cores busy
MARGIN = 30        # s the host waits beyond a job's own timeout (9p polling, a busy TCG guest)


class Link:
    """A private L2 segment between two L1s: a QEMU stream socket on 127.0.0.1."""

    def __init__(self, port=None):
        self.port = port or _free_port()

    def netdev(self, server):
        return (f"stream,id=link0,server={'on' if server else 'off'},addr.type=inet,"
                f"addr.host=127.0.0.1,addr.port={self.port}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port):
    with open("/proc/net/tcp", encoding="ascii") as f:
        return any(line.split()[1].endswith(":%04X" % port) and line.split()[3] == "0A"
                   for line in f.readlines()[1:])


class L1:
    """One lab host. index selects its MACs (and its address on a Link)."""

    def __init__(self, name, qemu, image, index=1, link=None, link_server=True, rundir=None):
        self.name = name
        self.qemu = qemu
        self.image = image
        self.index = index
        self.link = link
        self.link_server = link_server
        self.dir = rundir or os.path.join(run_dir(), name)
        self.share = os.path.join(self.dir, "share")
        self.queue = os.path.join(self.share, "q")
        self.serial = os.path.join(self.dir, "serial.log")
        self.qmp = os.path.join(self.dir, "qmp.sock")
        self.proc = None
        self.pid = None
        self.deb = None
        self.evidence = None   # callable(str) that records what a scenario read
        self.link_ip = f"10.77.0.{index}" if link else None
        self.peer_mac = f"52:54:00:1{index % 10}:99:00"

    def wire_dump(self, n):
        """L0's pcap of what PF N (1-based, address order) put on the wire."""
        return os.path.join(self.dir, f"pf{n}-wire.pcap")

    # --- life cycle -------------------------------------------------------------------------
    def argv(self):
        mac = f"52:54:00:1{self.index % 10}"
        a = [*self.qemu.system, *self.qemu.firmware_args, "-name", self.name,
             "-accel", "tcg,thread=multi,tb-size=512", "-machine", "q35,kernel-irqchip=split",
             "-cpu", "max", "-smp", "2", "-m", str(MEM_MIB),
             "-object", f"memory-backend-ram,id=m0,size={MEM_MIB // 2}M",
             "-object", f"memory-backend-ram,id=m1,size={MEM_MIB // 2}M",
             "-numa", "node,nodeid=0,cpus=0,memdev=m0", "-numa", "node,nodeid=1,cpus=1,memdev=m1",
             "-device", "intel-iommu,intremap=on,caching-mode=on",
             "-uuid", str(uuid.uuid4()), "-display", "none", "-nodefaults",
             "-serial", f"file:{self.serial}", "-qmp", f"unix:{self.qmp},server=on,wait=off",
             "-kernel", self.image.kernel, "-initrd", self.image.initrd,
             # no_timer_check: on a busy host TCG is too slow for the kernel's IO-APIC timer
             # check, which then panics ("timer doesn't work through Interrupt-remapped
             # IO-APIC", seen here at load 18); a panic reboots and -no-reboot ends QEMU, so a
             # failed boot is seen at once instead of at the boot timeout
             "-append", f"root=/dev/vda rw console=ttyS0 intel_iommu=on iommu=pt no_timer_check panic=1 "
                        f"systemd.hostname={self.name} systemd.show_status=0",
             "-no-reboot",
             # with a pxb-pcie present, devices left to QEMU may land behind it: pin them
             "-drive", f"file={self.dir}/disk.qcow2,if=none,id=disk,format=qcow2,cache=unsafe",
             "-device", "virtio-blk-pci,drive=disk,bus=pcie.0",
             "-fsdev", f"local,id=share,path={self.share},security_model=none",
             "-device", "virtio-9p-pci,fsdev=share,mount_tag=lab,bus=pcie.0",
             "-device", "pxb-pcie,id=pxb1,bus_nr=0x80,numa_node=1,bus=pcie.0"]
        # One segment: every PF's port and a peer NIC on QEMU hub 0 (a hub repeats each frame
        # to every other port; the PFs' own MAC filters pick theirs), so L2 guests reach the
        # peer through whichever PF their VF is on. A PF's cable is cut with QMP set_link on
        # its netdev (pfN): libvirt-free, as an unplugged cable. What each PF puts on the wire
        # is dumped at L0 (filter-dump, queue=rx: the frames the NIC sends to its netdev).
        a += ["-netdev", f"hubport,id={PEER},hubid=0",
              "-device", f"virtio-net-pci,netdev={PEER},bus=pcie.0,mac={self.peer_mac},romfile="]
        for n in range(1, PFS + 1):
            bus = "pxb1" if n == PFS else "pcie.0"
            a += ["-device", f"pcie-root-port,id=rp{n},chassis={n},slot={n},bus={bus}",
                  "-netdev", f"hubport,id=pf{n},hubid=0",
                  "-object", f"filter-dump,id=dump{n},netdev=pf{n},queue=rx,maxlen=96,"
                             f"file={self.wire_dump(n)}",
                  "-device", f"igb,bus=rp{n},netdev=pf{n},mac={mac}:0{n}:00,romfile="]
        if self.link:
            a += ["-netdev", self.link.netdev(self.link_server),
                  "-device", f"virtio-net-pci,netdev=link0,bus=pcie.0,mac=52:54:00:77:00:0{self.index},romfile="]
        return a

    def start(self, deb=None):
        """Start QEMU (not waiting for the guest). DEB is copied to the share as vfpick.deb."""
        self.deb = deb
        self._reap_previous()
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.queue)
        if deb:
            shutil.copy(deb, os.path.join(self.share, "vfpick.deb"))
        l2_initrd(self.image, os.path.join(self.share, "l2-initrd.img"))
        subprocess.run([*self.qemu.img, "create", "-q", "-f", "qcow2", "-b", self.image.disk,
                        "-F", "raw", f"{self.dir}/disk.qcow2"], check=True, timeout=60, env=self.qemu.env)
        with open(os.path.join(self.dir, "qemu.log"), "wb") as logf:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=self.qemu.env,
                                         start_new_session=True)
        self.pid = self.proc.pid
        with open(os.path.join(self.dir, "qemu.pid"), "w", encoding="ascii") as f:
            f.write(f"{self.pid}\n")
        if self.link and self.link_server:
            self._wait(lambda: _listening(self.link.port), 30, "its link socket to listen")

    def wait_booted(self, timeout=BOOT_TIMEOUT):
        t0 = time.monotonic()
        self._wait(lambda: os.path.exists(os.path.join(self.share, "booted")), timeout, "its agent")
        with open(os.path.join(self.share, "booted"), encoding="utf-8") as f:
            booted = json.load(f)
        log(f"{self.name} booted: agent up after {time.monotonic() - t0:.0f} s (guest uptime {booted['uptime']:.0f} s)")
        if self.link:
            mac = f"52:54:00:77:00:0{self.index}"
            self.run(f"dev=$(ip -o link | awk -v m={mac} '$0 ~ m {{sub(\":\", \"\", $2); print $2}}'); "
                     f"ip addr add {self.link_ip}/24 dev $dev && ip link set $dev up", timeout=30, check=True)

    def alive(self):
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and os.path.exists(f"/proc/{self.pid}")

    @classmethod
    def attach(cls, name):
        """The kept VM NAME of an earlier run (scripts/test-lab --keep), for commands only."""
        vm = cls(name, None, None)
        with open(os.path.join(vm.dir, "qemu.pid"), encoding="ascii") as f:
            vm.pid = int(f.read())
        return vm

    def _wait(self, ready, timeout, what):
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                why = f"{KERNEL_PANIC} ({self.name})" if self.panicked() else "qemu exited"
                raise L1Gone(f"{self.name}: {why} before {what}; "
                             f"qemu log: {self._tail('qemu.log')} serial: {self._tail('serial.log')}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: no {what} after {timeout} s; serial: {self._tail('serial.log')}")
            time.sleep(0.5)

    def panicked(self):
        """Whether the guest kernel panicked (its serial log says so)."""
        try:
            with open(self.serial, "rb") as f:
                return b"Kernel panic - not syncing" in f.read()
        except OSError:
            return False

    def _tail(self, name, n=600):
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace").replace("\n", " | ")
        except OSError:
            return "(none)"

    def stop(self, timeout=90):
        """Poweroff through the agent, then QMP quit, then SIGKILL; bounded at each step."""
        if not self.alive():
            return
        t0 = time.monotonic()
        self.submit("for d in $(virsh list --name); do timeout 30 virsh destroy $d; done; systemctl poweroff")
        how = "poweroff"
        if not self._exited(timeout):
            how = "QMP quit"
            self._qmp_quit()
            if not self._exited(15):
                how = "SIGKILL"
                self.proc.kill()
                self._exited(15)
        log(f"{self.name} stopped ({how}, {time.monotonic() - t0:.0f} s)")

    def _exited(self, timeout):
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _qmp_quit(self):
        try:
            self.qmp_command("quit")
        except (OSError, LabError):
            pass

    def qmp_command(self, execute, timeout=10, **arguments):
        """One QMP command on L1's monitor (bounded); its "return" value. LabError on an error."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.qmp)
            f = s.makefile("rwb")

            def reply():
                while True:   # asynchronous events come on the same stream: skip them
                    line = f.readline()
                    if not line:
                        raise LabError(f"{self.name}: QMP closed during {execute}")
                    msg = json.loads(line)
                    if "return" in msg or "error" in msg:
                        return msg
            f.readline()   # the greeting
            f.write(b'{"execute":"qmp_capabilities"}\n')
            f.flush()
            reply()
            f.write(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
            f.flush()
            msg = reply()
        if "error" in msg:
            raise LabError(f"{self.name}: QMP {execute} {arguments}: {msg['error'].get('desc')}")
        return msg["return"]

    def set_cable(self, n, up):
        """Plug (UP) or cut PF N's cable (1-based, address order) at L0: QMP set_link."""
        self.qmp_command("set_link", name=f"pf{n}", up=bool(up))

    def _reap_previous(self):
        """A VM a previous run kept (--keep) in this run dir: stop it by its recorded pid."""
        try:
            with open(os.path.join(self.dir, "qemu.pid"), encoding="ascii") as f:
                pid = int(f.read())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                mine = self.dir.encode() in f.read()
        except (OSError, ValueError):
            return
        if mine:
            log(f"{self.name}: stopping the VM a previous run kept (pid {pid})")
            os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.1)

    # --- commands -----------------------------------------------------------------------------
    def submit(self, script, timeout=60):
        """Queue SCRIPT (bash) in L1; returns its job id."""
        job_id = f"{time.time_ns()}-{os.getpid()}"
        tmp = os.path.join(self.queue, job_id + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"script": script, "timeout": timeout}, f)
        os.rename(tmp, os.path.join(self.queue, job_id + ".job"))
        return job_id

    def result(self, job_id, script, timeout):
        res = os.path.join(self.queue, job_id + ".res")
        self._wait(lambda: os.path.exists(res), timeout + MARGIN, f"result of {script[:80]!r}")
        with open(res, encoding="utf-8") as f:
            r = json.load(f)
        for suffix in (".res", ".run"):
            try:
                os.unlink(os.path.join(self.queue, job_id + suffix))
            except OSError:
                pass
        return Result(script, r["rc"], r["stdout"], r["stderr"], r["seconds"])

    def run(self, script, timeout=60, check=False, quiet=False):
        """Run SCRIPT (bash) in L1, bounded by TIMEOUT; the result, recorded as evidence."""
        r = self.result(self.submit(script, timeout), script, timeout)
        if self.evidence and not quiet:
            self.evidence(_render(self.name, r))
        if check and r.rc != 0:
            raise LabError(f"{self.name}: `{script[:200]}` exited {r.rc}: {(r.stderr or r.stdout).strip()[-800:]}")
        return r


def _render(host, r, lines=25):
    def trim(text):
        rows = text.rstrip("\n").splitlines()
        if len(rows) > lines:
            rows = rows[:lines] + [f"... ({len(rows) - lines} more lines)"]
        return "".join(f"    {row}\n" for row in rows)
    out = f"  [{host}] $ {r.script.strip()}\n"
    out += trim(r.stdout)
    if r.stderr.strip():
        out += "    (stderr)\n" + trim(r.stderr)
    out += f"    (rc={r.rc}, {r.seconds:.1f} s)\n"
    return out
