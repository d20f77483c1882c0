# st2.sh N: N destroys of l2p, libvirtd traced for execve/exit_group only (seccomp-bpf: the
# other syscalls run untraced); per destroy: total, and each hook process's exec-to-exit
for i in $(seq ${1:-3}); do
  virsh domstate l2p | grep -q running || { virsh start l2p >/dev/null; sleep 3; }
  rm -f /root/st2.txt
  strace --seccomp-bpf -f -ttt -e trace=execve,exit_group -o /root/st2.txt -p $(pidof libvirtd) 2>/dev/null &
  sp=$!; sleep 2
  s=$EPOCHREALTIME; virsh destroy l2p >/dev/null; e=$EPOCHREALTIME
  sleep 0.5; kill $sp; wait $sp 2>/dev/null
  python3 - "$s" "$e" <<'PY'
import re, sys
s, e = float(sys.argv[1]), float(sys.argv[2])
start, out = {}, []
for line in open("/root/st2.txt"):
    m = re.match(r"(\d+) +([\d.]+) (execve|exit_group|\+\+\+ exited)\(?(.*)", line)
    if not m:
        continue
    pid, t, what, rest = m.group(1), float(m.group(2)), m.group(3), m.group(4)
    if what == "execve" and "hooks/qemu.d" in rest and pid not in start:
        args = re.findall(r'"([^"]*)"', rest)
        start[pid] = (t, " ".join(args[2:4]))
    elif what == "execve" and pid in start:
        out.append("    %s exec %s at +%.0f ms" % (start[pid][1], rest.split('"')[1], (t - start[pid][0]) * 1000))
    elif what == "exit_group" and pid in start:
        t0, op = start.pop(pid)
        out.append("  %-12s from +%5.0f ms  took %5.0f ms" % (op, (t0 - s) * 1000, (t - t0) * 1000))
print("destroy %.0f ms" % ((e - s) * 1000))
print("\n".join(out))
PY
done
cat /proc/loadavg
