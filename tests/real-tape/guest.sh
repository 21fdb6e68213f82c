#!/bin/sh
# Runs inside the QEMU guest (busybox sh). Prints RT-PASS/RT-FAIL lines that the host
# harness (run.sh) reads from the console; exit status 0 only if every check passed.
PATH=/usr/bin:/bin:/sbin
failed=0
pass() { echo "RT-PASS $*"; }
fail() { echo "RT-FAIL $*"; failed=1; }
info() { echo "RT-INFO $*"; }
# run NAME CMD...: run a command, its output prefixed, PASS on exit 0.
run() {
    name=$1; shift
    out=$("$@" 2>&1); rc=$?
    echo "$out" | sed "s/^/RT-OUT [$name] /" | head -200
    if [ $rc -eq 0 ]; then pass "$name"; else fail "$name (exit $rc)"; fi
    return $rc
}
has_phase() { case " $RT_PHASES " in *" $1 "*) return 0;; esac; return 1; }

changer=""
for g in /sys/class/scsi_changer/sch*/device/scsi_generic/*; do [ -e "$g" ] && changer=/dev/$(basename "$g"); done
sg_of() { ls "/sys/class/scsi_tape/$1/device/scsi_generic/" 2>/dev/null | head -1; }
info "devices: $(ls /dev | grep -E '^(n?st[0-9]|sg|sch)' | tr '\n' ' ') changer=$changer nst0-sg=$(sg_of nst0)"
dmesg | grep -E 'Block limits|Attached scsi (tape|changer)' | sed 's/^/RT-INFO kernel: /'
[ -n "$changer" ] && [ -e /dev/nst0 ] && [ -e /dev/nst1 ] || { fail "guest devices: need /dev/nst0, /dev/nst1 and a changer"; exit 1; }
MT=/usr/bin/mt-st

# ---- peer: the peer tools against the emulation (proves the stack) ------------------
if has_phase peer; then
    run peer-mtx-status mtx -f "$changer" status
    run peer-mtx-load mtx -f "$changer" load 1 0
    run peer-mt-status $MT -f /dev/nst0 status
    run peer-mt-rewind $MT -f /dev/nst0 rewind
    dd if=/dev/urandom of=/tmp/blk bs=65536 count=1 2>/dev/null
    run peer-dd-write dd if=/tmp/blk of=/dev/nst0 bs=65536 count=1
    run peer-mt-weof $MT -f /dev/nst0 weof 1
    run peer-mt-rewind2 $MT -f /dev/nst0 rewind
    run peer-dd-read dd if=/dev/nst0 of=/tmp/blk2 bs=65536 count=1
    run peer-cmp cmp /tmp/blk /tmp/blk2
    run peer-mt-status2 $MT -f /dev/nst0 status
    run peer-mtx-unload mtx -f "$changer" unload 1 0
fi

# ---- smoke: examples/st_smoke drives StDrive and ScsiLibrary through the traits ------
if has_phase smoke; then
    if command -v st_smoke >/dev/null; then
        st_smoke "$changer" /dev/nst0 /dev/nst1 2>&1; rc=$?
        [ $rc -eq 0 ] && pass "smoke (st_smoke)" || fail "smoke (st_smoke exit $rc)"
    else
        fail "smoke: st_smoke binary not in the initramfs"
    fi
fi

exit $failed
