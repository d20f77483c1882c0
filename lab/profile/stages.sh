# stages.sh: the release end's cost in stages, by hand on L1 with the XML libvirt passed (medians of 7)
H=/etc/libvirt/hooks/qemu.d/vfpick X=/run/vfpick-release.xml
ms() { local s=$EPOCHREALTIME; "$@" >/dev/null 2>&1; local e=$EPOCHREALTIME; echo $(( (${e/./} - ${s/./}) / 1000 )); }
med() { local label=$1; shift; local v=(); for i in 1 2 3 4 5 6 7; do v+=($("$@")); done
        echo "$label: $(printf '%s\n' "${v[@]}" | sort -n | sed -n 4p) ms  (${v[*]})"; }
prep_rel() { python3 -IS $H l2p prepare begin - < $X >/dev/null 2>&1; ms python3 -IS $H l2p release end - < $X; }
med "sh -c exit (dash)" ms /bin/sh -c 'exit 0'
med "hook, stopped end (sh part: cat)" ms sh -c "$H l2p stopped end - < $X"
med "python3 -IS -c pass" ms python3 -IS -c pass
med "python3 -IS -c 'import os'" ms python3 -IS -c 'import os'
med "import vfpick.hook" ms python3 -IS -c 'import sys; sys.path.insert(0, "/usr/lib/python3/dist-packages"); import vfpick.hook'
med "+ domscan config state stale" ms python3 -IS -c 'import sys; sys.path.insert(0, "/usr/lib/python3/dist-packages"); import vfpick.hook, vfpick.domscan, vfpick.config, vfpick.state, vfpick.stale'
med "import json" ms python3 -IS -c 'import json'
med "import threading" ms python3 -IS -c 'import threading'
med "import vfpick.records" ms python3 -IS -c 'import sys; sys.path.insert(0, "/usr/lib/python3/dist-packages"); import vfpick.records'
med "hook release end, claims already inactive (no write)" ms sh -c "python3 -IS $H l2p release end - < $X"
med "hook release end, active claims (one write)" prep_rel
cat /proc/loadavg
