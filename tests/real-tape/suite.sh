#!/bin/sh
# One target's suite, run inside the QEMU guest (busybox sh) by guest.sh, once per
# target: the same checks through /dev/nst* and the changer against tgt and against
# tapevault's own target. Prints RT-PASS/RT-FAIL lines (named "T: check") that the host
# harness (run.sh) reads from the console; exit status 0 only if every check passed.
#
# env: T        the target: tgt or tapevault
#      CH       the changer's sg node; N0, N1 its drives' non-rewinding st nodes
#      BCS      the seven barcodes in slot order (the last a small cartridge)
#      HWBC     the cartridge of the drive-encrypted pool (written on ours, refused on tgt)
#      RT_PHASES the phases to run
PATH=/usr/bin:/bin:/sbin
failed=0
pass() { echo "RT-PASS $T: $*"; }
fail() { echo "RT-FAIL $T: $*"; failed=1; }
info() { echo "RT-INFO $T: $*"; }
# run NAME CMD...: run a command, its output prefixed, PASS on exit 0.
run() {
    name=$1; shift
    out=$("$@" </dev/null 2>&1); rc=$?
    echo "$out" | sed "s/^/RT-OUT [$T $name] /" | head -200
    if [ $rc -eq 0 ]; then pass "$name"; else fail "$name (exit $rc)"; fi
    return $rc
}
has_phase() { case " $RT_PHASES " in *" $1 "*) return 0;; esac; return 1; }
t_prev=$(date +%s)
lap() { t_now=$(date +%s); info "timing: $1 took $((t_now - t_prev)) s"; t_prev=$t_now; }
# BC1..BC7: the cartridges of slots 1..7.
i=1; for b in $BCS; do eval "BC$i=$b"; i=$((i+1)); done
changer=$CH
sg_of() { ls "/sys/class/scsi_tape/$(basename "$1")/device/scsi_generic/" 2>/dev/null | head -1; }
info "devices: changer=$changer drives=$N0 ($(sg_of $N0)) $N1 ($(sg_of $N1)) barcodes=$BCS"
MT=/usr/bin/mt-st
mkdir -p /tmp/$T

# ---- peer: the peer tools against the emulation (proves the stack) ------------------
if has_phase peer; then
    run peer-mtx-status mtx -f "$changer" status
    run peer-mtx-load mtx -f "$changer" load 1 0
    run peer-mt-status $MT -f $N0 status
    run peer-mt-rewind $MT -f $N0 rewind
    dd if=/dev/urandom of=/tmp/blk bs=65536 count=1 2>/dev/null
    run peer-dd-write dd if=/tmp/blk of=$N0 bs=65536 count=1
    run peer-mt-weof $MT -f $N0 weof 1
    run peer-mt-rewind2 $MT -f $N0 rewind
    run peer-dd-read dd if=$N0 of=/tmp/blk2 bs=65536 count=1
    run peer-cmp cmp /tmp/blk /tmp/blk2
    run peer-mt-status2 $MT -f $N0 status
    run peer-mtx-unload mtx -f "$changer" unload 1 0
fi

lap peer
# ---- smoke: examples/st_smoke drives StDrive and ScsiLibrary through the traits ------
if has_phase smoke; then
    if command -v st_smoke >/dev/null; then
        RT_TARGET=$T RT_BARCODES="$BCS" st_smoke "$changer" $N0 $N1 2>&1; rc=$?
        [ $rc -eq 0 ] && pass "smoke (st_smoke)" || fail "smoke (st_smoke exit $rc)"
    else
        fail "smoke: st_smoke binary not in the initramfs"
    fi
fi

lap smoke
# ---- conformance (a): the btape-style suite against $N0 -----------------------
if has_phase conformance; then
    mtx -f "$changer" load 1 0 >/dev/null 2>&1 || fail "conformance: mtx load slot 1"
    tapevault --json tape --device $N0 conformance --destroy-data --blocks "${RT_CONF_BLOCKS:-1000}" >/tmp/conf.json 2>/tmp/conf.err; rc=$?
    sed "s/^/RT-OUT [$T conformance] /" /tmp/conf.json | head -120
    sed "s/^/RT-OUT [$T conformance stderr] /" /tmp/conf.err | head -40
    [ $rc -eq 0 ] && pass "conformance $N0" || fail "conformance $N0 (exit $rc)"
    # ---- probe (b) ----
    if has_phase probe; then
        run probe tapevault --json tape --device $N0 probe
        out=$(tapevault --json tape --device $N0 probe 2>&1 | tr -d ' ')
        if [ "$T" = tgt ]; then
            case "$out" in *'"max_block_size":1048576'*) pass "probe block limits from READ BLOCK LIMITS";; *) fail "probe block limits: $out";; esac
            # tgt answers neither: the software position and the no-LOCATE fallbacks
            # are what the backup phase below runs on.
            # (the JSON document's members come in any order: each is checked alone)
            case "$out" in *'"read_position":false'*) rp=no;; *) rp=yes;; esac
            case "$out" in *'"locate":false'*) lc=no;; *) lc=yes;; esac
            if [ "$rp$lc" = nono ]; then pass "probe: no READ POSITION, no LOCATE (fallbacks in use)"; else fail "probe on tgt: $out"; fi
        else
            case "$out" in *'"read_position":true'*) rp=yes;; *) rp=no;; esac
            case "$out" in *'"locate":true'*) lc=yes;; *) lc=no;; esac
            if [ "$rp$lc" = yesyes ]; then pass "probe: READ POSITION and LOCATE supported"; else fail "probe: READ POSITION/LOCATE not reported: $out"; fi
            case "$out" in *'"hardware_encryption":true'*) pass "probe: hardware encryption offered";; *) fail "probe: no hardware encryption: $out";; esac
            case "$out" in *'"max_block_size":8388608'*) pass "probe block limits from READ BLOCK LIMITS (16 MiB - 1, capped at 8 MiB)";; *) fail "probe block limits: $out";; esac
        fi
    fi
    mtx -f "$changer" unload 1 0 >/dev/null 2>&1 || fail "conformance: mtx unload"
elif has_phase probe; then
    mtx -f "$changer" load 1 0 >/dev/null 2>&1
    run probe tapevault --json tape --device $N0 probe
    mtx -f "$changer" unload 1 0 >/dev/null 2>&1
fi

lap conformance+probe
# ---- backup (c): full + incremental, restore, verify through the changer and nst* ----
H=/tmp/$T/tvhome
TV="tapevault --home $H"
DISK_ID=6f1c2b9e-3d4a-4e5f-8a9b-0c1d2e3f4a5b
if has_phase backup; then
    run init $TV init --changer "$changer" --drive $N0 --drive $N1
    run library-status $TV library status
    run empty-drive-status timeout 30 $TV tape --drive 1 status
    run library-load $TV library load $BC6 --drive 1
    out=$($TV tape --drive 1 status 2>&1)
    case "$out" in *loaded*BOT*|*ONLINE*) pass "drive 1 status after library load";; *) fail "drive 1 status after library load: $out";; esac
    run library-unload $TV library unload --drive 1
    run pool-create $TV pool create rt
    run label-1 $TV label $BC2 --pool rt
    run label-2 $TV label $BC5 --pool rt
    # A 24 MiB disk: 8 MiB of base64 text from random bytes, 8 MiB of zeros, 8 MiB more
    # text. Text, not raw random bytes: the test rig (QEMU's iSCSI passthrough to tgt)
    # corrupts transfers between 512 KiB and 1 MiB (mt-st + dd show it too), and
    # incompressible 512 KiB extents make records of 512 KiB + header.
    head -c 6291456 /dev/urandom | base64 | head -c 8388608 >/tmp/disk.img
    dd if=/dev/zero bs=1M count=8 2>/dev/null >>/tmp/disk.img
    head -c 6291456 /dev/urandom | base64 | head -c 8388608 >>/tmp/disk.img
    cp /tmp/disk.img /tmp/disk.full
    run backup-full $TV --json backup --disk /tmp/disk.img --disk-id $DISK_ID --pool rt --full
    # Change 2 MiB in the middle and 64 KiB at the end, then an incremental.
    head -c 1572864 /dev/urandom | base64 | head -c 2097152 | dd of=/tmp/disk.img bs=1M seek=10 conv=notrunc 2>/dev/null
    head -c 49152 /dev/urandom | base64 | head -c 65536 | dd of=/tmp/disk.img bs=64k seek=383 conv=notrunc 2>/dev/null
    run backup-incremental $TV --json backup --disk /tmp/disk.img --disk-id $DISK_ID --pool rt
    run images $TV --json images --disk $DISK_ID
    run restore-latest $TV restore --disk $DISK_ID --to /tmp/restored.img
    run restore-latest-cmp cmp /tmp/disk.img /tmp/restored.img
    full_id=$($TV --json images --disk $DISK_ID 2>/dev/null | grep -m1 -o '"root": *"[0-9a-f-]*"' | grep -o '[0-9a-f-]\{36\}')
    nimg=$($TV --json images --disk $DISK_ID 2>/dev/null | grep -c '"kind": *"\(full\|incremental\)"')
    [ "$nimg" -eq 2 ] && pass "images: a full and an incremental" || fail "images: expected 2 images, found $nimg"
    info "first image id: $full_id"
    if [ -n "$full_id" ]; then
        run restore-full $TV restore --disk $DISK_ID --image "$full_id" --to /tmp/restored-full.img
        run restore-full-cmp cmp /tmp/disk.full /tmp/restored-full.img
        run verify-image $TV verify --image "$full_id"
    else
        fail "images: no image id in the JSON"
    fi
    run verify-barcode $TV verify --barcode $BC2
    run media-list $TV media list

    # ---- encryption through st: an encrypted pool, a full, a restore ----
    # A small disk: the guest CPU (TCG) has no AES-NI, so AES-GCM runs in software.
    export TAPEVAULT_PASSPHRASE=real-tape-passphrase
    DISK_ID2=7a2d3c0f-4e5b-4f60-9bac-1d2e3f4a5b6c
    head -c 1572864 /dev/urandom | base64 | head -c 2097152 >/tmp/disk2.img
    dd if=/dev/zero bs=1M count=1 2>/dev/null >>/tmp/disk2.img
    run key-create $TV key create rtk
    run pool-create-enc $TV pool create rtenc --encrypt-key rtk
    # $BC3 holds the smoke test's blocks: relabelling it needs --force.
    run label-enc $TV label $BC3 --pool rtenc --force
    run backup-enc $TV --json backup --disk /tmp/disk2.img --disk-id $DISK_ID2 --pool rtenc --full
    run restore-enc $TV restore --disk $DISK_ID2 --to /tmp/restored-enc.img
    run restore-enc-cmp cmp /tmp/disk2.img /tmp/restored-enc.img
    run verify-enc $TV verify --barcode $BC3

    # ---- disaster recovery through st: a fresh home with only the key ----
    H2=/tmp/$T/tvhome-dr
    TV2="tapevault --home $H2"
    run key-export $TV key export rtk --out /tmp/$T/rtk.key
    run dr-init $TV2 init --changer "$changer" --drive $N0 --drive $N1
    run dr-key-import $TV2 key import /tmp/$T/rtk.key
    run dr-rebuild $TV2 --json catalog rebuild --scan --barcode $BC2 --barcode $BC5 --barcode $BC3
    run dr-restore-enc $TV2 restore --disk $DISK_ID2 --to /tmp/dr-enc.img
    run dr-restore-enc-cmp cmp /tmp/disk2.img /tmp/dr-enc.img
    run dr-restore-clear $TV2 restore --disk $DISK_ID --to /tmp/dr-clear.img
    run dr-restore-clear-cmp cmp /tmp/disk.img /tmp/dr-clear.img
    # The fast path: each cartridge's newest catalog snapshot, found by spacing to end
    # of data and back over filemarks, without reading the data records.
    H3=/tmp/$T/tvhome-dr-fast
    TV3="tapevault --home $H3"
    run dr-fast-init $TV3 init --changer "$changer" --drive $N0 --drive $N1
    run dr-fast-key-import $TV3 key import /tmp/$T/rtk.key
    run dr-fast-rebuild $TV3 --json catalog rebuild --barcode $BC2 --barcode $BC5 --barcode $BC3
    out=$($TV3 --json catalog rebuild --barcode $BC3 2>&1)
    case "$out" in *'"method": "snapshot"'*) pass "dr-fast: the encrypted cartridge's snapshot was used";; *) fail "dr-fast: no snapshot used: $out";; esac
    run dr-fast-restore-enc $TV3 restore --disk $DISK_ID2 --to /tmp/dr-fast-enc.img
    run dr-fast-restore-enc-cmp cmp /tmp/disk2.img /tmp/dr-fast-enc.img
    run dr-fast-restore-clear $TV3 restore --disk $DISK_ID --to /tmp/dr-fast-clear.img
    run dr-fast-restore-clear-cmp cmp /tmp/disk.img /tmp/dr-fast-clear.img

    # ---- drive (hardware) encryption through st: pools.toml encryption = "drive" ----
    # The drive encrypts (SECURITY PROTOCOL OUT) under a key derived from the keystore key
    # rthw, loaded only while tapevault holds the drive. A 2 MiB disk: 1 MiB of the
    # plaintext canary the host then looks for on the cartridge files (run.sh), 1 MiB of
    # text from random bytes; the pool does not compress, so a clear write would show it.
    DISK_ID3=8b3e4d10-5f6c-4071-9cbd-2e3f4a5b6c7d
    { yes RTCANARY-DRIVE-POOL-0123456789 | head -c 1048576; head -c 786432 /dev/urandom | base64 | head -c 1048576; } >/tmp/disk3.img
    run key-create-hw $TV key create rthw
    run pool-create-hw $TV pool create rthw --encrypt-key rthw --compression off
    printf '[pools.rthw]\nencrypt_key = "rthw"\nencryption = "drive"\ncompression = "off"\n' >>$H/pools.toml
    run pool-apply-hw $TV pool apply
    run label-hw $TV label $HWBC --pool rthw --force
    # SECURITY PROTOCOL IN page 0x0020 through sg: the drive's encryption and decryption
    # modes (0 0: no key loaded).
    hw_modes() { rm -f /tmp/ds.bin; sg_raw -o /tmp/ds.bin -r 64 "$1" a2 20 00 20 00 00 00 00 00 40 00 00 >/dev/null 2>&1; od -An -tu1 -j5 -N2 /tmp/ds.bin 2>/dev/null | tr -s ' ' | sed 's/^ //;s/ $//'; }
    if [ "$T" = tapevault ]; then
        run backup-hw $TV --json backup --disk /tmp/disk3.img --disk-id $DISK_ID3 --pool rthw --full
        m0=$(hw_modes /dev/$(sg_of $N0)); m1=$(hw_modes /dev/$(sg_of $N1))
        [ "$m0/$m1" = "0 0/0 0" ] && pass "drive encryption: no key left in either drive after the backup" || fail "drive encryption: drive modes after the backup: '$m0' / '$m1'"
        run restore-hw $TV restore --disk $DISK_ID3 --to /tmp/restored-hw.img
        run restore-hw-cmp cmp /tmp/disk3.img /tmp/restored-hw.img
        hw_id=$($TV --json images --disk $DISK_ID3 2>/dev/null | grep -m1 -o '"image": *"[0-9a-f-]*"' | grep -o '[0-9a-f-]\{36\}')
        run verify-hw-image $TV verify --image "$hw_id"
        run verify-hw-barcode $TV verify --barcode $HWBC
        m0=$(hw_modes /dev/$(sg_of $N0)); m1=$(hw_modes /dev/$(sg_of $N1))
        [ "$m0/$m1" = "0 0/0 0" ] && pass "drive encryption: no key left in either drive after restore and verify" || fail "drive encryption: drive modes after restore/verify: '$m0' / '$m1'"
        # Without the key (none in the drive now): the clear label reads, the data does not.
        $TV library load $HWBC --drive 0 >/dev/null 2>&1 || fail "library load $HWBC"
        $MT -f $N0 rewind
        rm -f /tmp/hwl; dd if=$N0 of=/tmp/hwl bs=1M count=1 2>/dev/null
        [ "$(head -c 7 /tmp/hwl)" = TAPEVLT ] && pass "drive encryption: the label reads in the clear" || fail "drive encryption: the label does not read in the clear"
        $MT -f $N0 fsf 1
        if dd if=$N0 of=/tmp/hwd bs=1M count=1 2>/tmp/hwd.err; then
            fail "drive encryption: a data block was read without the key ($(head -c 16 /tmp/hwd | od -An -c | head -1))"
        else
            pass "drive encryption: reading the data without the key is refused ($(head -1 /tmp/hwd.err))"
        fi
        $MT -f $N0 rewind
        $TV library unload --drive 0 >/dev/null 2>&1
    else
        # tgt offers no hardware encryption: the pool is refused (exit 1) before anything
        # is written, never written in the clear (the host checks tgt's media file too).
        out=$($TV backup --disk /tmp/disk3.img --disk-id $DISK_ID3 --pool rthw --full 2>&1); rc=$?
        echo "$out" | sed "s/^/RT-OUT [$T backup-hw-refused] /" | tail -5
        case "$rc:$out" in 1:*"offers no hardware encryption"*) pass "drive encryption: pool refused on a drive without it (exit 1)";; *) fail "drive encryption on tgt: exit $rc: $out";; esac
        # The image the refused backup began is recorded as failed, none as complete.
        out=$($TV --json images --disk $DISK_ID3 2>/dev/null)
        n=$(echo "$out" | grep -c '"status": *"complete"')
        [ "$n" = 0 ] && pass "drive encryption: no complete image in the catalog after the refusal" || fail "drive encryption: $n complete image(s) after the refusal: $out"
    fi
    unset TAPEVAULT_PASSPHRASE
fi

lap backup+restore+verify
# ---- crosscheck (d): our tape read with mt-st + dd; a dd-written tape read by us -----
if has_phase crosscheck; then
    if has_phase backup; then
        $TV library unload --drive 0 >/dev/null 2>&1; $TV library unload --drive 1 >/dev/null 2>&1
        mtx -f "$changer" load 2 0 >/dev/null 2>&1 || fail "crosscheck: mtx load $BC2"
        # Count the tape files by spacing filemarks (a read past the last one is not
        # trustworthy on tgt), then read the first block of each with dd.
        $MT -f $N0 rewind
        nfm=0
        while [ $nfm -lt 256 ] && $MT -f $N0 fsf 1 2>/dev/null; do nfm=$((nfm+1)); done
        files=0; n=0
        while [ $n -lt $nfm ]; do
            $MT -f $N0 rewind
            [ $n -gt 0 ] && $MT -f $N0 fsf $n
            rm -f /tmp/xb; dd if=$N0 of=/tmp/xb bs=1M count=1 2>/dev/null
            magic=$(head -c 7 /tmp/xb)
            if [ "$magic" = "TAPEVLT" ]; then files=$((files+1)); else fail "crosscheck: tape file $n does not start with the TAPEVLT record magic"; fi
            n=$((n+1))
        done
        info "crosscheck: $files tape files read back with mt-st fsf + dd"
        $MT -f $N0 rewind; $MT -f $N0 fsf 1
        tapevault tape --device $N0 read --count 4 2>&1 | sed 's/^/RT-INFO tape file 1: /'
        # label + 2 images at least
        [ $files -ge 3 ] && pass "crosscheck mt-st+dd reads our tape files ($files)" || fail "crosscheck: only $files tape files readable with mt-st + dd"
        mtx -f "$changer" unload 2 0 >/dev/null 2>&1
    fi
    # A tape written with dd, read with our tape commands.
    mtx -f "$changer" load 4 0 >/dev/null 2>&1 || fail "crosscheck: mtx load slot 4"
    $MT -f $N0 rewind
    dd if=/dev/urandom of=/tmp/f0 bs=32k count=3 2>/dev/null
    dd if=/dev/urandom of=/tmp/f1 bs=100000 count=2 2>/dev/null
    dd if=/tmp/f0 of=$N0 bs=32k 2>/dev/null   # closing writes a filemark
    dd if=/tmp/f1 of=$N0 bs=100000 2>/dev/null
    $MT -f $N0 rewind
    run xc-status tapevault tape --device $N0 status
    run xc-fsf tapevault tape --device $N0 fsf 1
    run xc-tell tapevault --json tape --device $N0 tell
    run xc-read1 tapevault tape --device $N0 read --out /tmp/r1
    run xc-cmp1 cmp /tmp/f1 /tmp/r1
    run xc-rewind tapevault tape --device $N0 rewind
    run xc-read0 tapevault tape --device $N0 read --out /tmp/r0
    run xc-cmp0 cmp /tmp/f0 /tmp/r0
    run xc-eod tapevault tape --device $N0 eod
    run xc-bsf tapevault tape --device $N0 bsf 1
    run xc-bsr tapevault tape --device $N0 bsr 1
    run xc-read-last tapevault tape --device $N0 read --out /tmp/rl
    tail -c 100000 /tmp/f1 >/tmp/f1last
    run xc-cmp-last cmp /tmp/f1last /tmp/rl
    mtx -f "$changer" unload 4 0 >/dev/null 2>&1
fi
lap crosscheck
exit $failed
