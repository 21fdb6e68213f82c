#!/bin/sh
# Runs inside the QEMU guest (busybox sh). The guest sees two tape libraries at once:
# tgt's (drives and changer of vendor other than TAPEVALT) and tapevault's own target
# (`tapevault library serve`, vendor TAPEVALT). suite.sh runs every check once per
# library; peers.sh runs the peer tools' suites (mt-st, tar, mtx, sg3-utils, stenc,
# btape) against tapevault's. Prints RT-PASS/RT-FAIL lines that the host harness
# (run.sh) reads from the console; exit status 0 only if every check passed.
#
# env: RT_TARGETS   which libraries to test ("tgt tapevault" by default)
#      RT_BARCODES_TGT, RT_BARCODES_TV  the seven barcodes of each library, slot order
#      RT_HW_TGT, RT_HW_TV  the cartridge of each library's drive-encrypted pool
#      RT_PHASES    suite phases; "peers" in it runs peers.sh
PATH=/usr/bin:/bin:/sbin
failed=0
fail() { echo "RT-FAIL $*"; failed=1; }
info() { echo "RT-INFO $*"; }

# The SCSI target id of a sysfs device (H:C:T:L), for ordering drives as the changer's
# drive elements are (the harness attaches them in element order).
tid_of() { basename "$(readlink -f "$1/device")" | cut -d: -f3; }
vendor_of() { tr -d ' ' <"$1/device/vendor" 2>/dev/null; }
# devices_of VENDOR_TEST: "CHANGER_SG NST_A NST_B" for the library whose vendor test passes.
devices_of() {
    want=$1
    ch=""
    for c in /sys/class/scsi_changer/sch*; do
        [ -e "$c" ] || continue
        v=$(vendor_of "$c")
        if { [ "$want" = tapevault ] && [ "$v" = TAPEVALT ]; } || { [ "$want" = tgt ] && [ "$v" != TAPEVALT ]; }; then
            ch=/dev/$(ls "$c/device/scsi_generic/" | head -1)
        fi
    done
    drives=$(for n in /sys/class/scsi_tape/nst[0-9]*; do
        [ -e "$n" ] || continue
        case "$(basename "$n")" in nst[0-9]|nst[0-9][0-9]) ;; *) continue;; esac
        v=$(vendor_of "$n")
        if { [ "$want" = tapevault ] && [ "$v" = TAPEVALT ]; } || { [ "$want" = tgt ] && [ "$v" != TAPEVALT ]; }; then
            echo "$(tid_of "$n") /dev/$(basename "$n")"
        fi
    done | sort -n | awk '{print $2}' | tr '\n' ' ')
    echo "$ch $drives"
}

dmesg | grep -E 'Block limits|Attached scsi (tape|changer)' | sed 's/^/RT-INFO kernel: /'
for T in ${RT_TARGETS:-tgt tapevault}; do
    set -- $(devices_of "$T")
    if [ $# -lt 3 ]; then fail "$T: guest devices: need a changer and two drives, found: $*"; continue; fi
    CH=$1 N0=$2 N1=$3
    if [ "$T" = tgt ]; then BCS=$RT_BARCODES_TGT HWBC=$RT_HW_TGT; else BCS=$RT_BARCODES_TV HWBC=$RT_HW_TV; fi
    info "$T: changer $CH, drives $N0 $N1"
    T=$T CH=$CH N0=$N0 N1=$N1 BCS=$BCS HWBC=$HWBC sh /rt/suite.sh || failed=1
    rm -rf /tmp/"$T" /tmp/*.img /tmp/*.full /tmp/*.key
    if [ "$T" = tapevault ] && case " $RT_PHASES " in *" peers "*) true;; *) false;; esac; then
        T=$T CH=$CH N0=$N0 N1=$N1 BCS=$BCS sh /rt/peers.sh || failed=1
    fi
done
exit $failed
