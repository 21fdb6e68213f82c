#!/usr/bin/env bash
# Hash scan against dd: a hash-scan incremental (nothing changed: the whole disk is read
# and hashed, the new digest list written, nothing backed up) against `dd` reading the
# same file to /dev/null, side by side in alternating rounds, from the page cache
# (warm) and from the device (cold: the image dropped from the page cache before each
# run). See docs/BENCHMARKS.md, "Hashing at memory speed", for recorded results.
#
#   cargo build --release --bin tapevault
#   bench/hashscan.sh [WORKDIR]
#
# Environment:
#   SIZE_MIB      image size (default 4096), random data
#   ROUNDS        alternating rounds per cache state (default 3); the order of dd and
#                 tapevault swaps each round
#   DD_BS         dd's block size (default 1M)
#   TAPEVAULT_BIN binary to measure (default target/release/tapevault)
#   KEEP=1        keep WORKDIR afterwards
#   RESULTS_OUT   also copy the results to this file
#
# tapevault's time is the whole `backup` command (catalog commits, the digest list
# written and synced, the session's snapshot on tape: about 0.1-0.2 s of fixed cost);
# the scan stage alone is in the report as stages of the image and printed beside it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-hashscan}
SIZE_MIB=${SIZE_MIB:-4096}
ROUNDS=${ROUNDS:-3}
DD_BS=${DD_BS:-1M}
DISK_ID=4b1d0c2e-5a61-4f3e-8d7c-2e9f1a0b3c54

[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release --bin tapevault" >&2; exit 2; }
rm -rf "$W"
mkdir -p "$W"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
RESULTS="$W/results.txt"
: > "$RESULTS"
log() { echo "$*" | tee -a "$RESULTS" >&2; }
now_s() { date +%s.%N; }
IMG="$W/disk.img"
cold() { dd if="$IMG" iflag=nocache count=0 status=none; }
warm() { cat "$IMG" > /dev/null; }

timed() {
  local name=$1; shift
  local t0 t1 secs
  t0=$(now_s)
  "$@" > "$W/$name.out" 2> "$W/$name.err" || { echo "$name failed:" >&2; cat "$W/$name.err" "$W/$name.out" >&2; exit 1; }
  t1=$(now_s)
  secs=$(echo "$t1 - $t0" | bc -l)
  printf '%s %.3f\n' "$name" "$secs" >> "$W/timings"
  log "$(printf '%-22s %8.3f s  load %s' "$name" "$secs" "$(cut -d' ' -f1 /proc/loadavg)")"
}

log "tapevault hash-scan benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SIZE_MIB} MiB random image, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "binary: $BIN ($("$BIN" --version))"
dd if=/dev/urandom of="$IMG" bs=1M count="$SIZE_MIB" status=none
sync
export TAPEVAULT_HOME="$W/home"
"$BIN" init --slots 2 --drives 1 --capacity $((SIZE_MIB * 3))M > /dev/null
"$BIN" pool create bench --compression off > /dev/null
"$BIN" --json backup --disk "$IMG" --disk-id $DISK_ID --pool bench --full > "$W/full.out"

run_dd() { timed "dd-$1-$2" dd if="$IMG" of=/dev/null bs="$DD_BS"; }
run_tv() {
  timed "tapevault-$1-$2" "$BIN" --json backup --disk "$IMG" --disk-id $DISK_ID --pool bench
  python3 - "$W/tapevault-$1-$2.out" <<'PY' | tee -a "$RESULTS" >&2
import json, sys
img = json.load(open(sys.argv[1]))["images"][0]
assert img["method"] == "hash-scan", img["method"]
print(f"  method {img['method']} read {img['read_bytes']} data {img['data_bytes']} image {img['seconds']:.3f} s")
PY
}
for state in warm cold; do
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="dd tv"; else order="tv dd"; fi
    for t in $order; do
      "$state"
      "run_$t" "$state" "$r"
    done
  done
done

stats() {
  awk -v p="$1-" 'index($1, p) == 1 {print $2}' "$W/timings" | sort -g |
    awk '{a[NR]=$1} END {printf "%.3f %.3f %.3f", a[1], a[int((NR+1)/2)], a[NR]}'
}
log ""
log "                       min      median   max (s)"
for state in warm cold; do
  read -r d_min d_med d_max <<< "$(stats dd-$state)"
  read -r t_min t_med t_max <<< "$(stats tapevault-$state)"
  log "$(printf 'dd read %-6s %9s %8s %8s' "$state" "$d_min" "$d_med" "$d_max")"
  log "$(printf 'hash scan %-6s %7s %8s %8s' "$state" "$t_min" "$t_med" "$t_max")"
  log "$state: scan / dd speed (median): $(echo "scale=3; $d_med / $t_med" | bc -l)x"
done
log "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "${RESULTS_OUT:-}" ]; then cp "$RESULTS" "$RESULTS_OUT"; fi
