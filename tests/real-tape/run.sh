#!/bin/bash
# Real-stack tape test: two tape libraries on loopback, tgt's emulated drives and changer
# and tapevault's own target (`tapevault library serve`), both attached to one QEMU guest
# whose real Linux st/ch/sg drivers run every check once against each (guest.sh,
# suite.sh), then the peer tools' suites against ours (peers.sh); our binaries and the
# peer tools are in its initramfs.
#
# usage: tests/real-tape/run.sh TAPEVAULT_BINARY [EXTRA_BINARY...]
# env:   RT_TARGETS  libraries to test (default: "tgt tapevault")
#        RT_PHASES   guest phases to run (default: "peer smoke conformance probe backup crosscheck peers")
#        RT_TIMEOUT  seconds the guest may run (default 1500)
#        RT_KEEP     keep the work directory when set (its path is printed)
#        RT_KERNEL   kernel version for the guest (default: newest in /lib/modules with a /boot/vmlinuz)
#        RT_BTAPE_FILL  0 leaves btape's fill (two cartridges, ~40 s) out of peers.sh (default on)
# Exit status: 0 when every guest phase passed, non-zero otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 TAPEVAULT_BINARY [EXTRA_BINARY...]" >&2; exit 2; }
tv_bin=$(realpath "$1"); shift
extra_bins=()
for b in "$@"; do extra_bins+=("$(realpath "$b")"); done
[ -x "$tv_bin" ] || { echo "real-tape: $tv_bin is not an executable" >&2; exit 2; }

phases=${RT_PHASES:-"peer smoke conformance probe backup crosscheck peers"}
targets=${RT_TARGETS:-"tgt tapevault"}
has_target() { case " $targets " in *" $1 "*) return 0;; esac; return 1; }
timeout_s=${RT_TIMEOUT:-1500}
# Cartridge size in MB (tgt's media files are sparse: only what is written takes space).
media_mb=512
# Barcodes of the cartridges in the changer's storage slots; the last is a small one
# (small_mb) that st_smoke fills to early warning.
barcodes="TV0001L6 TV0002L6 TV0003L6 TV0004L6 TV0005L6 TV0006L6 TV0009L6"
small_mb=32
iqn=iqn.2026-11.test.tapevault:rt

for tool in tgtd tgtadm tgtimg qemu-system-x86_64 busybox cpio modprobe; do
    command -v "$tool" >/dev/null || { echo "real-tape: $tool is missing (run .ci/real-tape.sh, which installs the packages)" >&2; exit 2; }
done

if [ -n "${RT_KERNEL:-}" ]; then
    kver=$RT_KERNEL
else
    kver=$(for d in /lib/modules/*; do v=$(basename "$d"); [ -e "/boot/vmlinuz-$v" ] && echo "$v"; done | sort -V | tail -1)
fi
[ -n "$kver" ] && [ -e "/boot/vmlinuz-$kver" ] || { echo "real-tape: no guest kernel (install linux-image-amd64)" >&2; exit 2; }

work=$(mktemp -d /tmp/real-tape.XXXXXX)
tgt_pid=""
tv_pid=""
qemu_pid=""
cn=$(( (RANDOM % 800) + 100 ))

cleanup() {
    local rc=$?
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true; fi
    if [ -n "$tgt_pid" ] && kill -0 "$tgt_pid" 2>/dev/null; then
        tgtadm -C "$cn" --op delete --mode system --force >/dev/null 2>&1 || true
        kill "$tgt_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$tgt_pid" 2>/dev/null || true
        wait "$tgt_pid" 2>/dev/null || true
    fi
    if [ -n "$tv_pid" ] && kill -0 "$tv_pid" 2>/dev/null; then
        kill "$tv_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$tv_pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$tv_pid" 2>/dev/null || true
        wait "$tv_pid" 2>/dev/null || true
    fi
    if [ -n "${RT_KEEP:-}" ]; then echo "real-tape: work directory kept: $work" >&2; else rm -rf "$work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s.%N)
log() { printf 'real-tape [%6.1fs] %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$*" >&2; }

# ---- 1a. tgtd on loopback ------------------------------------------------------------
if has_target tgt; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    mkdir -p "$work/media"
    for bc in $barcodes; do
        size=$media_mb; [ "$bc" = TV0009L6 ] && size=$small_mb
        tgtimg --op new --device-type tape --barcode="$bc" --size="$size" --type=data --file="$work/media/$bc" >/dev/null
    done
    # A drive LUN needs a backing file at creation; it starts offline (no cartridge) and the
    # changer puts media from media_home into it.
    for d in 0 1; do
        tgtimg --op new --device-type tape --barcode="EMPTY$d" --size=1 --type=data --file="$work/empty$d" >/dev/null
    done
    dd if=/dev/zero of="$work/smc" bs=1k count=1 status=none

    tgtd -f -C "$cn" --iscsi portal="127.0.0.1:$port" >"$work/tgtd.log" 2>&1 &
    tgt_pid=$!
    adm() { tgtadm -C "$cn" --lld iscsi "$@"; }
    for _ in $(seq 50); do adm --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
    adm --op show --mode target >/dev/null || { echo "real-tape: tgtd did not start:" >&2; cat "$work/tgtd.log" >&2; exit 1; }

    adm --op new --mode target --tid 1 -T "$iqn"
    # LUN 1, 2: tape drives (drive elements 0x100, 0x101); LUN 3: the changer.
    for lun in 1 2; do
        adm --mode logicalunit --op new --tid 1 --lun $lun --device-type tape --bstype ssc -b "$work/empty$((lun-1))"
        adm --mode logicalunit --op update --tid 1 --lun $lun --params online=0
    done
    adm --mode logicalunit --op new --tid 1 --lun 3 --device-type changer -b "$work/smc"
    adm --mode logicalunit --op update --tid 1 --lun 3 --params media_home="$work/media"
    adm --mode logicalunit --op update --tid 1 --lun 3 --params element_type=1,start_address=1,quantity=1
    adm --mode logicalunit --op update --tid 1 --lun 3 --params element_type=4,start_address=256,quantity=2
    adm --mode logicalunit --op update --tid 1 --lun 3 --params element_type=4,address=256,tid=1,lun=1
    adm --mode logicalunit --op update --tid 1 --lun 3 --params element_type=4,address=257,tid=1,lun=2
    nslots=$(( $(echo $barcodes | wc -w) + 2 ))
    adm --mode logicalunit --op update --tid 1 --lun 3 --params element_type=2,start_address=4096,quantity=$nslots
    addr=4096
    for bc in $barcodes; do
        adm --mode logicalunit --op update --tid 1 --lun 3 --params element_type=2,address=$addr,barcode=$bc,sides=1
        addr=$((addr + 1))
    done
    adm --mode logicalunit --op update --tid 1 --lun 3 --params element_type=3,start_address=16,quantity=1
    adm --op bind --mode target --tid 1 -I 127.0.0.1
    log "tgtd up on 127.0.0.1:$port (control $cn), $(echo $barcodes | wc -w) cartridges of $media_mb MB"
fi

# ---- 1b. tapevault library serve on loopback ------------------------------------------
# The same library shape as tgt's: 2 drives, 9 slots (six 512 MB cartridges and a 32 MB
# one in slot 7), a mail slot. LUN 0 the changer, LUN 1 and 2 the drives.
tv_barcodes=""
if has_target tapevault; then
    tvh="$work/tvserve"
    # Slots 8-10 and the empty 12-13 are for peers.sh: tar's second volume and btape's
    # two cartridges; slot 11 holds the drive-encrypted pool's cartridge (suite.sh), which
    # the host searches for the plaintext canary after the guest.
    "$tv_bin" --home "$tvh" init --slots 13 --mailslots 1 --drives 2 --cartridges 6 \
        --capacity 512M --early-warning 8M >"$work/tvserve-init.log" 2>&1
    for cap in 32M 32M 360M 64M 64M; do
        "$tv_bin" --home "$tvh" library add-cartridge --capacity $cap >>"$work/tvserve-init.log" 2>&1
    done
    tv_barcodes="TV0001L9 TV0002L9 TV0003L9 TV0004L9 TV0005L9 TV0006L9 TV0007L9 TV0008L9 TV0009L9 TV0010L9"
    tv_hw=TV0011L9
    for bc in $tv_barcodes $tv_hw; do
        grep -q "$bc" <("$tv_bin" --home "$tvh" library status 2>&1) ||
            { echo "real-tape: the served library has no cartridge $bc:" >&2; "$tv_bin" --home "$tvh" library status >&2; exit 1; }
    done
    "$tv_bin" --home "$tvh" --json library serve --listen 127.0.0.1:0 >"$work/tvserve.json" 2>"$work/tvserve.log" &
    tv_pid=$!
    for _ in $(seq 100); do grep -q '^}' "$work/tvserve.json" 2>/dev/null && break; kill -0 $tv_pid 2>/dev/null || break; sleep 0.1; done
    grep -q '^}' "$work/tvserve.json" || { echo "real-tape: tapevault library serve did not start:" >&2; cat "$work/tvserve.log" >&2; exit 1; }
    tv_addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' "$work/tvserve.json")
    tv_iqn=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["target"])' "$work/tvserve.json")
    tv_lib=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["library"])' "$work/tvserve.json")
    log "tapevault library serve up on $tv_addr ($tv_iqn, library $tv_lib)"
fi

# ---- 2. initramfs --------------------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,lib,lib64,usr/bin,modules,rt,etc}
cp "$(command -v busybox)" "$root/bin/busybox"
n=0
for m in virtio_scsi virtio_pci st sg ch; do
    modprobe -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    n=$((n+1)); base=$(basename "$ko")
    case "$base" in
        *.ko.xz) xz -dc "$ko" >"$root/modules/$(printf %02d $n)-${base%.xz}";;
        *.ko.zst) zstd -qdc "$ko" >"$root/modules/$(printf %02d $n)-${base%.zst}";;
        *) cp "$ko" "$root/modules/$(printf %02d $n)-$base";;
    esac
done
add_bin() { # binary [name in guest]
    local src=$1 name=${2:-$(basename "$1")}
    # Stripped: debug info would make the initramfs (and the guest's boot) several times larger.
    strip -o "$root/usr/bin/$name" "$src" 2>/dev/null || cp "$src" "$root/usr/bin/$name"
    ldd "$src" 2>/dev/null | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
        [ -n "$lib" ] && [ -e "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
add_bin "$tv_bin" tapevault
for b in "${extra_bins[@]}"; do add_bin "$b"; done
add_bin "$(command -v mt-st)" mt-st
add_bin "$(command -v mtx)" mtx
for t in sg_raw sg_inq sg_map sg_turs sg_vpd sg_logs sg_read_attr sg_modes tapeinfo loaderinfo stenc tar btape stdbuf mkfifo; do
    if command -v $t >/dev/null; then add_bin "$(command -v $t)"; else echo "real-tape: $t is missing (peers.sh needs it)" >&2; fi
done
# stdbuf (peers.sh runs btape's fill through it to see its prompts) preloads this.
for so in /usr/libexec/coreutils/libstdbuf.so; do
    [ -e "$so" ] && { mkdir -p "$root$(dirname "$so")"; cp "$so" "$root$so"; }
done
# Bacula's changer script calls mt (mt-st, ahead of busybox's applet) and /usr/sbin/mtx,
# and checks /etc/debian_version.
ln -s mt-st "$root/usr/bin/mt"
mkdir -p "$root/usr/sbin" "$root/etc/bacula/scripts" "$root/var/lib/bacula" "$root/run"
ln -s ../bin/mtx "$root/usr/sbin/mtx"
cp /etc/debian_version "$root/etc/"
for f in mtx-changer mtx-changer.conf; do
    [ -e "/etc/bacula/scripts/$f" ] && cp "/etc/bacula/scripts/$f" "$root/etc/bacula/scripts/"
done
# busybox's sh (the guest's /bin/sh) runs its own mt applet ahead of PATH: the changer
# script and its configuration get mt-st by its full path.
for f in mtx-changer mtx-changer.conf; do
    [ -e "$root/etc/bacula/scripts/$f" ] &&
        sed -i -E 's#(^|[^[:alnum:]_/-])mt (-f|--version)#\1/usr/bin/mt-st \2#g' "$root/etc/bacula/scripts/$f"
done
cp "$here/guest.sh" "$root/rt/guest.sh"
cp "$here/suite.sh" "$here/peers.sh" "$root/rt/"
cat >"$root/rt/env" <<ENV
RT_PHASES="$phases"
RT_TARGETS="$targets"
RT_BARCODES_TGT="$barcodes"
RT_BARCODES_TV="$tv_barcodes"
RT_HW_TGT=TV0006L6
RT_HW_TV="${tv_hw:-}"
RT_BTAPE_TIMEOUT="${RT_BTAPE_TIMEOUT:-600}"
RT_BTAPE_FILL="${RT_BTAPE_FILL:-1}"
ENV
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs -o size=256m tmp /tmp
for ko in /modules/*.ko; do insmod "$ko" || echo "RT-INIT insmod $ko failed"; done
. /rt/env; export RT_PHASES RT_TARGETS RT_BARCODES_TGT RT_BARCODES_TV RT_HW_TGT RT_HW_TV RT_BTAPE_TIMEOUT RT_BTAPE_FILL
# Two drives and a changer per library.
nlib=$(echo $RT_TARGETS | wc -w)
i=0; while [ ! -e /dev/nst$((2*nlib-1)) ] || [ ! -e /dev/sch$((nlib-1)) ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
sh /rt/guest.sh; rc=$?
echo "RT-DONE rc=$rc"
sync; poweroff -f
INIT
chmod +x "$root/init" "$root/rt/guest.sh"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
log "initramfs built ($(du -h "$work/initrd.gz" | cut -f1), kernel $kver)"

# ---- 3. the guest --------------------------------------------------------------------
# tgt's LUNs on SCSI ids 0-2 (drives first), ours on 3-5 (changer, drive 0, drive 1):
# st numbers the drives in that order.
drives=""
k=0
if has_target tgt; then
    for lun in 1 2 3; do
        drives="$drives -drive if=none,id=lun$lun,driver=iscsi,transport=tcp,portal=127.0.0.1:$port,target=$iqn,lun=$lun"
        drives="$drives -device scsi-generic,drive=lun$lun,bus=scsi0.0,scsi-id=$k,lun=0"
        k=$((k+1))
    done
fi
if has_target tapevault; then
    for lun in 0 1 2; do
        drives="$drives -drive if=none,id=tv$lun,driver=iscsi,transport=tcp,portal=$tv_addr,target=$tv_iqn,lun=$lun"
        drives="$drives -device scsi-generic,drive=tv$lun,bus=scsi0.0,scsi-id=$((k+lun)),lun=0"
    done
fi
# shellcheck disable=SC2086
timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -nographic -no-reboot \
    -kernel "/boot/vmlinuz-$kver" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 loglevel=4" -nic none \
    -device virtio-scsi-pci,id=scsi0 $drives </dev/null >"$work/console.log" 2>&1 &
qemu_pid=$!
wait "$qemu_pid" && qrc=0 || qrc=$?
qemu_pid=""
log "guest finished (qemu exit $qrc)"

# ---- 4. results ----------------------------------------------------------------------
tr -d '\r' <"$work/console.log" >"$work/console.txt"
grep -E '^(RT-|\[ *[0-9.]+\] (st|ch) )' "$work/console.txt" >&2 || true
if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
    echo "real-tape: FAIL: the guest did not finish within ${timeout_s}s; console tail:" >&2
    tail -40 "$work/console.txt" >&2
    exit 1
fi
done_line=$(grep -E '^RT-DONE rc=' "$work/console.txt" | tail -1 || true)
if [ -z "$done_line" ]; then
    echo "real-tape: FAIL: the guest never reported RT-DONE; console tail:" >&2
    tail -60 "$work/console.txt" >&2
    exit 1
fi
# tgt offers no hardware encryption: the drive-encrypted pool was refused there, and
# its canary must not be on tgt's cartridge either (never written in the clear).
if has_target tgt && case " $phases " in *" backup "*) true;; *) false;; esac; then
    if grep -qa RTCANARY-DRIVE-POOL "$work/media/TV0006L6"; then
        echo "RT-FAIL host: tgt: the drive-encrypted pool's canary was written in the clear to TV0006L6" >>"$work/console.txt"
    else
        echo "RT-PASS host: tgt: the refused drive-encrypted pool wrote no plaintext to TV0006L6" >>"$work/console.txt"
    fi
fi
# Host-side checks of tapevault's target: no plaintext of what the guest wrote under drive
# encryption is on any cartridge file, the clear canary is (the search works), and the
# target stops cleanly on SIGTERM with every cartridge consistent.
if has_target tapevault; then
    if grep -rqa RTCANARY-HARDWARE-ENCRYPTED "$tv_lib"; then
        echo "RT-FAIL host: plaintext of the drive-encrypted canary found on the cartridges: $(grep -rla RTCANARY-HARDWARE-ENCRYPTED "$tv_lib" | tr '\n' ' ')" >>"$work/console.txt"
    else
        echo "RT-PASS host: no plaintext of the drive-encrypted canary on the cartridge files" >>"$work/console.txt"
    fi
    # The drive-encrypted pool's disk (suite.sh): its cartridge holds only the drive's
    # ciphertext after the clear label.
    if case " $phases " in *" backup "*) true;; *) false;; esac; then
        if grep -rqa RTCANARY-DRIVE-POOL "$tv_lib"; then
            echo "RT-FAIL host: plaintext of the drive-encrypted pool's canary found on the cartridges: $(grep -rla RTCANARY-DRIVE-POOL "$tv_lib" | tr '\n' ' ')" >>"$work/console.txt"
        elif [ -d "$tv_lib/cartridges/$tv_hw" ] && [ "$(du -sk "$tv_lib/cartridges/$tv_hw" | cut -f1)" -ge 2048 ]; then
            echo "RT-PASS host: no plaintext of the drive-encrypted pool's canary on the cartridge files ($tv_hw holds $(du -sk "$tv_lib/cartridges/$tv_hw" | cut -f1) KiB)" >>"$work/console.txt"
        else
            echo "RT-FAIL host: the drive-encrypted pool's cartridge $tv_hw holds less than the 2 MiB disk written to it" >>"$work/console.txt"
        fi
    fi
    if grep -rqa RTCANARY-CLEAR "$tv_lib"; then
        echo "RT-PASS host: the clear canary is found on its cartridge (the search sees plaintext)" >>"$work/console.txt"
    else
        echo "RT-FAIL host: the clear canary was not found on the cartridge files (the search is blind)" >>"$work/console.txt"
    fi
    kill -TERM "$tv_pid" 2>/dev/null || true
    wait "$tv_pid" && trc=0 || trc=$?
    tv_pid=""
    sed 's/^/real-tape: serve: /' "$work/tvserve.log" | tail -20 >&2
    if [ $trc -eq 0 ]; then
        echo "RT-PASS host: tapevault library serve exited 0 on SIGTERM" >>"$work/console.txt"
    else
        echo "RT-FAIL host: tapevault library serve exited $trc on SIGTERM" >>"$work/console.txt"
    fi
    if grep -qi panick "$work/tvserve.log"; then
        echo "RT-FAIL host: the target panicked: $(grep -i -m1 panick "$work/tvserve.log")" >>"$work/console.txt"
    fi
    if "$tv_bin" --home "$tvh" library status >"$work/tvserve-status.log" 2>&1; then
        echo "RT-PASS host: the served library opens in-process after the run" >>"$work/console.txt"
    else
        echo "RT-FAIL host: library status after the run: $(tail -1 "$work/tvserve-status.log")" >>"$work/console.txt"
    fi
    grep '^RT-[A-Z]* host' "$work/console.txt" >&2
fi
fails=$(grep -c '^RT-FAIL' "$work/console.txt" || true)
passes=$(grep -c '^RT-PASS' "$work/console.txt" || true)
if [ "$done_line" != "RT-DONE rc=0" ] || [ "$fails" -ne 0 ] || [ "$passes" -eq 0 ]; then
    echo "real-tape: FAIL ($passes passed, $fails failed, $done_line); console tail:" >&2
    tail -80 "$work/console.txt" >&2
    echo "real-tape: $passes passed, $((fails > 0 ? fails : 1)) failed"
    exit 1
fi
log "PASS: $passes checks passed in the guest"
echo "real-tape: $passes passed, 0 failed"
