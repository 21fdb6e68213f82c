#!/usr/bin/env bash
# Thin disks: a full backup of a large sparse image holding little data, against
# `tar --sparse` and `cp --sparse=always` of the same file, each also followed by an
# fsync of its output (`sync FILE`), side by side in one run (see docs/BENCHMARKS.md,
# "Thin disks", for recorded results).
#
#   cargo build --release --bin tapevault
#   bench/thin.sh [WORKDIR]
#
# Environment:
#   SIZE_GIB      apparent size of the image (default 64)
#   DATA_MIB      data scattered in it (default 1024), in PIECES pieces
#   PIECES        number of data pieces (default 4096; each DATA_MIB/PIECES long, at
#                 random 4 KiB-aligned offsets, so holes start and end mid tracking block)
#   ROUNDS        rounds of the five tools (default 3); the order rotates each round
#   TAPEVAULT_BIN binary to measure (default target/release/tapevault)
#   BASE_BIN      optional second tapevault binary (an older build) measured in the same
#                 rotation as "base", to compare code changes side by side
#   SETTLE_SECS   pause after deleting an output (default 5)
#   KEEP=1        keep WORKDIR afterwards (default: removed)
#   RESULTS_OUT   also copy the results to this file
#
# WORKDIR (default ${TMPDIR:-/tmp}/tapevault-thin) must be on the file system being
# measured (one that reports holes: ext4, xfs, btrfs, tmpfs) and hold about 3x DATA_MIB.
# The image's data stays in the page cache (it was just written and is re-read by
# every run); each tool writes its output to a file on the same file system, deleted
# after the run. tapevault writes to a virtual library in WORKDIR (compression off) and
# flushes the cartridge (and syncs the digest list) to stable storage at the end; tar
# and cp do not sync, so each is measured twice: as is, and followed by `sync OUT`
# (fsync of its output file), timed together ("tar+sync", "cp+sync").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-thin}
SIZE_GIB=${SIZE_GIB:-64}
DATA_MIB=${DATA_MIB:-1024}
PIECES=${PIECES:-4096}
ROUNDS=${ROUNDS:-3}
DISK_ID=6a0c5e11-7d2b-4c1e-9b1a-3f9e2d7c4b21

[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release --bin tapevault" >&2; exit 2; }
rm -rf "$W"
mkdir -p "$W"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
RESULTS="$W/results.txt"
: > "$RESULTS"
log() { echo "$*" | tee -a "$RESULTS" >&2; }
now_s() { date +%s.%N; }
settle() { sync; sleep "${SETTLE_SECS:-5}"; }

# timed NAME CMD...: wall seconds and max RSS of CMD.
timed() {
  local name=$1; shift
  local t0 t1 rss secs
  t0=$(now_s)
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.out" 2> "$W/$name.err" || {
    echo "$name failed:" >&2; cat "$W/$name.err" "$W/$name.out" >&2; exit 1; }
  t1=$(now_s)
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$W/$name.time")
  secs=$(echo "$t1 - $t0" | bc -l)
  printf '%s %.3f %s\n' "$name" "$secs" "$rss" >> "$W/timings"
  log "$(printf '%-16s %8.3f s  max RSS %7d KiB' "$name" "$secs" "$rss")"
}

log "tapevault thin-disk benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SIZE_GIB} GiB image with ${DATA_MIB} MiB of data in ${PIECES} pieces, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "binary: $BIN ($("$BIN" --version)); $(tar --version | head -1); $(cp --version | head -1)"

IMG="$W/thin.img"
python3 - "$IMG" "$SIZE_GIB" "$DATA_MIB" "$PIECES" <<'EOF'
import os, random, sys
path, size_gib, data_mib, pieces = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
size = size_gib << 30
piece = (data_mib << 20) // pieces
rng = random.Random(18)
# Non-overlapping slots, one piece at a random 4 KiB-aligned place in each.
slot = size // pieces
with open(path, "wb") as f:
    f.truncate(size)
    for i in range(pieces):
        off = i * slot + rng.randrange(0, (slot - piece) // 4096) * 4096
        f.seek(off)
        f.write(os.urandom(piece))
EOF
sync
log "image: $(du -h --apparent-size "$IMG" | cut -f1) apparent, $(du -h "$IMG" | cut -f1) allocated"

run_tapevault() { tapevault_with "$BIN" tapevault "$1"; }
run_base() { tapevault_with "$BASE_BIN" base "$1"; }
tapevault_with() {
  local bin=$1 name=$2 r=$3
  export TAPEVAULT_HOME="$W/home"
  rm -rf "$TAPEVAULT_HOME" "$TAPEVAULT_HOME-library"
  "$bin" init --slots 2 --drives 1 --capacity $((DATA_MIB * 4))M > /dev/null
  "$bin" pool create bench --compression off > /dev/null
  timed $name-$r "$bin" --json backup --disk "$IMG" --disk-id $DISK_ID --pool bench
  python3 - "$W/$name-$r.out" <<'EOF' | tee -a "$RESULTS" >&2
import json, sys
img = json.load(open(sys.argv[1]))["images"][0]
st = img["stages"]
print(f"  tapevault: data {img['data_bytes']} zero {img['zero_bytes']} read {img['read_bytes']} stored {img['stored_bytes']} records {img['records']}; stages read {st['produce_s']:.3f} transform {st['transform_s']:.3f} write {st['consume_s']:.3f} wall {st['wall_s']:.3f} s")
EOF
  rm -rf "$TAPEVAULT_HOME" "$TAPEVAULT_HOME-library"
  settle
}
run_tar() {
  timed tar-$1 tar --sparse -cf "$W/out.tar" -C "$W" thin.img
  log "  tar: archive $(du -h "$W/out.tar" | cut -f1)"
  rm -f "$W/out.tar"
  settle
}
run_cp() {
  timed cp-$1 cp --sparse=always "$IMG" "$W/copy.img"
  rm -f "$W/copy.img"
  settle
}
run_tarsync() {
  timed tarsync-$1 sh -c 'tar --sparse -cf "$1/out.tar" -C "$1" thin.img && sync "$1/out.tar"' sh "$W"
  rm -f "$W/out.tar"
  settle
}
run_cpsync() {
  timed cpsync-$1 sh -c 'cp --sparse=always "$1/thin.img" "$1/copy.img" && sync "$1/copy.img"' sh "$W"
  rm -f "$W/copy.img"
  settle
}

# One untimed pass of each puts every tool in the same (warm) state.
cp --sparse=always "$IMG" "$W/copy.img"; rm -f "$W/copy.img"; settle
tools=(tapevault tar tarsync cp cpsync)
if [ -n "${BASE_BIN:-}" ]; then tools+=(base); fi
n=${#tools[@]}
for r in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    t=${tools[$(((r - 1 + k) % n))]}
    "run_$t" "$r"
  done
done

stats() {
  awk -v p="$1-" 'index($1, p) == 1 {print $2}' "$W/timings" | sort -g |
    awk '{a[NR]=$1} END {printf "%.3f %.3f %.3f", a[1], a[int((NR+1)/2)], a[NR]}'
}
read -r tv_min tv_med tv_max <<< "$(stats tapevault)"
read -r tar_min tar_med tar_max <<< "$(stats tar)"
read -r cp_min cp_med cp_max <<< "$(stats cp)"
read -r ts_min ts_med ts_max <<< "$(stats tarsync)"
read -r cs_min cs_med cs_max <<< "$(stats cpsync)"
log ""
log "                 min      median   max (s)"
log "$(printf 'tapevault   %8s %8s %8s' "$tv_min" "$tv_med" "$tv_max")"
log "$(printf 'tar --sparse %7s %8s %8s' "$tar_min" "$tar_med" "$tar_max")"
log "$(printf 'tar+sync    %8s %8s %8s' "$ts_min" "$ts_med" "$ts_max")"
log "$(printf 'cp --sparse %8s %8s %8s' "$cp_min" "$cp_med" "$cp_max")"
log "$(printf 'cp+sync     %8s %8s %8s' "$cs_min" "$cs_med" "$cs_max")"
log "tapevault / tar      (median): $(echo "scale=3; $tv_med / $tar_med" | bc -l)x (target <= 1)"
log "tapevault / tar+sync (median): $(echo "scale=3; $tv_med / $ts_med" | bc -l)x"
log "tapevault / cp       (median): $(echo "scale=3; $tv_med / $cp_med" | bc -l)x"
log "tapevault / cp+sync  (median): $(echo "scale=3; $tv_med / $cs_med" | bc -l)x"
if [ -n "${BASE_BIN:-}" ]; then
  read -r b_min b_med b_max <<< "$(stats base)"
  log "$(printf 'base (%s) %8s %8s %8s' "$BASE_BIN" "$b_min" "$b_med" "$b_max")"
  log "base / tar           (median): $(echo "scale=3; $b_med / $tar_med" | bc -l)x"
fi
log "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${RESULTS_OUT:-}" ]; then cp "$RESULTS" "$RESULTS_OUT"; fi
