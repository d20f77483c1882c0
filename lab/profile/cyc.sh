# cyc.sh N: N start/destroy cycles of l2p, each timed; then the hook calls' times
t() { local s=$EPOCHREALTIME; "$@" >/dev/null || echo "FAILED: $*"; echo "$1 $2 $(( (${EPOCHREALTIME/./} - ${s/./}) / 1000 )) ms"; }
rm -f /run/vfpick-hooktimes
for i in $(seq ${1:-3}); do
  t virsh start l2p; sleep ${2:-2}
  echo "--- destroy $i" >> /run/vfpick-hooktimes
  t virsh destroy l2p
done
awk '/^---/{print; next} {printf "  %s %s %.1f ms\n",$4,$5,($2-$1)*1000}' /run/vfpick-hooktimes
cat /proc/loadavg
