#!/bin/bash
# timing wrapper around the real vfpick hook (profiling only; not part of vfpick)
t0=$EPOCHREALTIME
mode=$(cat /run/vfpick-wrap-mode 2>/dev/null)
if [ "$2 $3" = "release end" ] && [ "$mode" = importtime ]; then
    /usr/bin/python3 -X importtime -IS /root/vfpick.real "$@" 2>>/run/vfpick-importtime.log
elif [ "$2 $3" = "release end" ] && [ "$mode" = cprofile ]; then
    /usr/bin/python3 -IS -m cProfile -o /run/vfpick-release.prof /root/vfpick.real "$@"
elif [ "$2 $3" = "release end" ] && [ "$mode" = xml ]; then
    cat > /run/vfpick-release.xml; /root/vfpick.real "$@" < /run/vfpick-release.xml
else
    /root/vfpick.real "$@"
fi
rc=$?
echo "$t0 $EPOCHREALTIME $1 $2 $3 rc=$rc" >> /run/vfpick-hooktimes
exit $rc
