#!/usr/bin/env bash
# NBD-source benchmarks (docs/BENCHMARKS.md, "NBD sources"), all in one run:
#   1. full backup of a 4 GiB qcow2 full of random data through tapevault's own qemu-nbd,
#      vs `nbdcopy` of the same image served the same way to null: (the target), and to a
#      file on the same disk with a flush at the end (a second reference: the backup
#      also writes and flushes its cartridge there);
#   2. incrementals after writing 1 % of the disk: time vs the full, and bytes read vs the
#      dirty bytes the bitmap holds (nbdinfo --map);
#   3. full of a 64 GiB thin qcow2 holding 1 GiB vs full of a 1 GiB qcow2 holding 1 GiB.
# Each timing three times; min / median / max printed.
#
#   cargo build --release
#   bench/nbd.sh [WORKDIR]
#
# Part 1 also times nbdcopy from `qemu-nbd -r --cache=none` (how tapevault's offline
# image driver serves an image: O_DIRECT), and with TAPEVAULT_BIN_B set, a second build's
# full in each round (alternating with the first: a before/after in one run). With GNU
# time (/usr/bin/time) it prints the CPU time (user + sys) of the fulls and of nbdcopy
# from --cache=none, each with its qemu-nbd.
#
# Environment: SIZE_MIB (default 4096), TAPEVAULT_BIN (default target/release/tapevault),
# ROUNDS (default 3; part 1 only), NO_FILE=1 (part 1 without the nbdcopy to a file),
# KEEP=1 keeps WORKDIR. WORKDIR (default ${TMPDIR:-/tmp}/tapevault-bench-nbd) needs about
# 3x SIZE_MIB + 3 GiB. Each full of part 1 goes into a fresh home and library (removed
# before the next backup), and part 2 starts from a fresh one with an untimed full:
# the library holds at most one full and its incrementals. FULL_ONLY=1 runs only
# part 1. TAPE_DIR puts the home and its virtual library elsewhere, e.g. on tmpfs
# (`TAPE_DIR=/dev/shm/tv-nbd`): a tape drive is not the disk the image is read from, and
# on one disk the cartridge's writes compete with qemu-nbd's reads (nbdcopy to null:
# writes nothing). A library on tmpfs is memory: one that kept every full (as this
# script once did) slowed each full after the first as the page cache shrank (2.9, 3.8,
# 4.8 s on 23 GB of RAM), and one that filled the memory had backups killed by the
# kernel's OOM killer.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-bench-nbd}
SIZE_MIB=${SIZE_MIB:-4096}
ID=6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d21
THIN_ID=6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d22
SMALL_ID=6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d23

for t in qemu-img qemu-nbd qemu-io nbdcopy nbdinfo python3; do
  command -v $t >/dev/null || { echo "skipping: $t is not installed" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release" >&2; exit 2; }
rm -rf "$W"; mkdir -p "$W"
TAPE_DIR=${TAPE_DIR:-$W}
mkdir -p "$TAPE_DIR"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W" "$TAPEVAULT_HOME" "$TAPEVAULT_HOME"-library; }
trap cleanup EXIT
export TAPEVAULT_HOME=$TAPE_DIR/home
log() { echo "$*" | tee -a "$W/results.txt" >&2; }
now_s() { date +%s.%N; }
# stats V1 V2 V3 -> "min median max"
stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.3f %.3f %.3f", a[1], a[int((NR+1)/2)], a[NR]}'; }
# field JSONFILE KEY: a field of the first image of a backup report
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images"][0][sys.argv[2]])' "$1" "$2"; }

cap=$(( (SIZE_MIB * 5 + 8192) ))M
fresh_home() {
  rm -rf "$TAPEVAULT_HOME" "$TAPEVAULT_HOME"-library
  "$BIN" init --slots 8 --drives 1 --capacity "$cap" >/dev/null
  "$BIN" pool create b --compression off >/dev/null
}
fresh_home

# CPU time of a process tree (user + sys, children included: qemu-nbd is a child of
# tapevault and of nbdcopy), when GNU time is installed.
GNU_TIME=$(command -v /usr/bin/time || true)
# timed NAME OUT CMD...: run CMD with its output into OUT, keep its CPU seconds in
# $W/NAME.cpu; prints the wall time
timed() {
  local name=$1 out=$2; shift 2
  local t0 t1
  t0=$(now_s)
  if [ -n "$GNU_TIME" ]; then
    "$GNU_TIME" -o "$W/$name.cpu" -f '%U %S' "$@" > "$out"
  else
    "$@" > "$out"
  fi
  t1=$(now_s)
  echo "$t1 - $t0" | bc
}
# cpu NAME: the CPU seconds `timed NAME` measured
cpu() { [ -f "$W/$1.cpu" ] && awk '{print $1 + $2}' "$W/$1.cpu" || echo 0; }

# backup NAME ARGS...: time a backup, keep its JSON report in $W/NAME.json
backup() {
  local name=$1; shift
  timed "$name" "$W/$name.json" "$BIN" --json backup --pool b "$@"
}

IMG=$W/disk.qcow2
log "making a ${SIZE_MIB} MiB qcow2 of random data"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$W/rand.raw"
qemu-img convert -f raw -O qcow2 "$W/rand.raw" "$IMG"
rm -f "$W/rand.raw"

# 1. full vs nbdcopy (to null: and to a file), alternating
F=(); N=(); D=(); C=(); B=(); FC=(); DC=(); BC=()
BIN_B=${TAPEVAULT_BIN_B:-}
ROUNDS=${ROUNDS:-3}
for r in $(seq 1 "$ROUNDS"); do
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  N+=("$(timed nbdcopy$r /dev/null nbdcopy -- [ qemu-nbd -r -f qcow2 "$IMG" ] null:)")
  fresh_home
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  F+=("$(backup full$r --disk "qcow2:$IMG" --disk-id $ID --full)")
  FC+=("$(cpu full$r)")
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  D+=("$(timed direct$r /dev/null nbdcopy -- [ qemu-nbd -r --cache=none -f qcow2 "$IMG" ] null:)")
  DC+=("$(cpu direct$r)")
  if [ -n "$BIN_B" ]; then
    fresh_home
    sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
    B+=("$(BIN=$BIN_B backup fullb$r --disk "qcow2:$IMG" --disk-id $ID --full)")
    BC+=("$(cpu fullb$r)")
  fi
  [ "${NO_FILE:-0}" = 1 ] && continue
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  C+=("$(timed tofile$r /dev/null nbdcopy --flush -- [ qemu-nbd -r -f qcow2 "$IMG" ] "$W/copy.raw")")
  rm -f "$W/copy.raw"
done
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
log "full over NBD (s):     $(stats "${F[@]}")   read $(field "$W/full$ROUNDS.json" read_bytes) bytes"
[ -n "$BIN_B" ] && log "full, TAPEVAULT_BIN_B (s): $(stats "${B[@]}")"
log "nbdcopy to null: (s):  $(stats "${N[@]}")"
log "nbdcopy to null: from qemu-nbd --cache=none (s): $(stats "${D[@]}")"
if [ -n "$GNU_TIME" ]; then
  log "CPU s (user + sys, with qemu-nbd): full $(stats "${FC[@]}"); nbdcopy from --cache=none $(stats "${DC[@]}")"
  [ -n "$BIN_B" ] && log "CPU s, TAPEVAULT_BIN_B full: $(stats "${BC[@]}")"
fi
[ "${NO_FILE:-0}" = 1 ] || log "nbdcopy to a file (s): $(stats "${C[@]}")"
fm=$(stats "${F[@]}" | cut -d' ' -f2); nm=$(stats "${N[@]}" | cut -d' ' -f2)
dm=$(stats "${D[@]}" | cut -d' ' -f2)
log "full speed / nbdcopy-to-null speed (medians): $(echo "scale=3; $nm / $fm" | bc)"
log "full speed / nbdcopy-to-null from --cache=none speed (medians): $(echo "scale=3; $dm / $fm" | bc)"
if [ "${NO_FILE:-0}" != 1 ]; then
  cm=$(stats "${C[@]}" | cut -d' ' -f2)
  log "full speed / nbdcopy-to-file speed (medians): $(echo "scale=3; $cm / $fm" | bc)"
fi
if [ -n "$BIN_B" ]; then
  bm=$(stats "${B[@]}" | cut -d' ' -f2)
  log "TAPEVAULT_BIN_B: full speed / nbdcopy-to-null speed (medians): $(echo "scale=3; $nm / $bm" | bc)"
fi
log "full stages (s, run $ROUNDS): $(field "$W/full$ROUNDS.json" stages)"
[ -n "$BIN_B" ] && log "full stages, TAPEVAULT_BIN_B (s, run $ROUNDS): $(field "$W/fullb$ROUNDS.json" stages)"
[ "${FULL_ONLY:-0}" = 1 ] && exit 0

# 2. 1 %-dirty incrementals, on a full of their own
fresh_home
backup base --disk "qcow2:$IMG" --disk-id $ID --full >/dev/null
I=()
pieces=$(( SIZE_MIB * 1024 / 100 / 256 ))   # 256 KiB writes making 1 % of the disk
for r in 1 2 3; do
  args=()
  for i in $(seq 1 $pieces); do
    off=$(( (RANDOM * 32768 + RANDOM) % (SIZE_MIB * 16) * 65536 ))
    args+=(-c "write -P $((r + 1)) $off 256k")
  done
  qemu-io -f qcow2 "${args[@]}" "$IMG" >/dev/null
  bm=$(qemu-img info --output=json "$IMG" | python3 -c 'import json,sys; print([b["name"] for b in json.load(sys.stdin)["format-specific"]["data"]["bitmaps"] if b["name"].startswith("tapevault-")][0])')
  dirty=$(nbdinfo --json --map=qemu:dirty-bitmap:$bm -- [ qemu-nbd -r -f qcow2 -B "$bm" "$IMG" ] | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["type"] & 1))')
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  I+=("$(backup inc$r --disk "qcow2:$IMG" --disk-id $ID)")
  read=$(field "$W/inc$r.json" read_bytes)
  log "incremental $r: method $(field "$W/inc$r.json" method), dirty $dirty bytes, read $read bytes, read/dirty $(echo "scale=4; $read / $dirty" | bc)"
done
im=$(stats "${I[@]}" | cut -d' ' -f2)
log "1 %-dirty incremental (s): $(stats "${I[@]}")"
log "incremental / full time (medians): $(echo "scale=4; $im / $fm" | bc)"

# 3. 64 GiB thin with 1 GiB allocated vs 1 GiB holding 1 GiB
fresh_home
THIN=$W/thin.qcow2; SMALL=$W/small.qcow2
qemu-img create -q -f qcow2 "$THIN" 64G
qemu-img create -q -f qcow2 "$SMALL" 1G
# Patterned data (the pool does not compress, so the content does not matter), 256
# pieces of 4 MiB: spread over 64 GiB in the thin image, back to back in the small one.
targs=(); sargs=()
for i in $(seq 0 255); do
  targs+=(-c "write -P $((i % 250 + 1)) $((i * 256 * 1024 * 1024)) 4M")
  sargs+=(-c "write -P $((i % 250 + 1)) $((i * 4 * 1024 * 1024)) 4M")
done
qemu-io -f qcow2 "${targs[@]}" "$THIN" >/dev/null
qemu-io -f qcow2 "${sargs[@]}" "$SMALL" >/dev/null
T=(); S=()
for r in 1 2 3; do
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  T+=("$(backup thin$r --disk "qcow2:$THIN" --disk-id $THIN_ID --full)")
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  S+=("$(backup small$r --disk "qcow2:$SMALL" --disk-id $SMALL_ID --full)")
done
log "64 GiB thin, 1 GiB allocated (s): $(stats "${T[@]}")   read $(field "$W/thin3.json" read_bytes) bytes"
log "1 GiB, all allocated (s):         $(stats "${S[@]}")   read $(field "$W/small3.json" read_bytes) bytes"
tm=$(stats "${T[@]}" | cut -d' ' -f2); sm=$(stats "${S[@]}" | cut -d' ' -f2)
log "thin / 1 GiB (medians): $(echo "scale=3; $tm / $sm" | bc)"
