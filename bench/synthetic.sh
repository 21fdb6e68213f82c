#!/usr/bin/env bash
# Synthetic full vs restore of the same point: a chain of a full and 20 incrementals is
# written once; then, alternating, ROUNDS restores of the newest point to a file and
# ROUNDS synthetic fulls of it (`backup --synthetic-full` into a second pool), in one
# run (see docs/BENCHMARKS.md, "Synthetic fulls", for recorded results).
#
#   cargo build --release --bin tapevault
#   bench/synthetic.sh [WORKDIR]
#
# Environment:
#   DISK_MIB      disk size, all random data (default 1024)
#   INC_MIB       data each incremental rewrites, in 64 KiB pieces at random places
#                 (default 16)
#   INCS          incrementals after the full (default 20)
#   ROUNDS        rounds of each (default 3)
#   DRIVES        drives of the virtual library (default 2: the synthetic full stages
#                 the incrementals, then streams the full from one drive to the writer
#                 on the other; 1: restore into a scratch file, then write it)
#   TAPEVAULT_BIN binary to measure (default target/release/tapevault)
#   KEEP=1        keep WORKDIR afterwards (default: removed)
#   RESULTS_OUT   also copy the results to this file
#
# Both read the same chain from the same virtual cartridges (compression off, clear)
# through the same restore planner (each cartridge once, in media order). The restore
# writes the disk to a new sparse file in WORKDIR and renames it into place. With two
# drives the synthetic full stages the incrementals' extents in a scratch file with no
# name in $TMPDIR (WORKDIR here), then reads the full on one drive while writing the
# new full to a cartridge of pool `s` on the other, merged in disk order (digest
# lists, content digest, records, flush), checked block for block against the point;
# with one drive it restores the point into a scratch file first, then writes it. Each
# synthetic round starts from a copy of the library and home taken before the first
# round (copying is not timed), so every round builds the same synthetic full. The
# ratio is restore time / synthetic-full time (>= 0.8 is the target: a synthetic full
# costs at most 1.25 restores).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-synthetic}
DISK_MIB=${DISK_MIB:-1024}
INC_MIB=${INC_MIB:-16}
INCS=${INCS:-20}
ROUNDS=${ROUNDS:-3}
DRIVES=${DRIVES:-2}
DISK_ID=3b8f1c2e-5a6d-4e7f-8a9b-0c1d2e3f4a5b

[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release --bin tapevault" >&2; exit 2; }
rm -rf "$W"
mkdir -p "$W"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
export TMPDIR="$W"
RESULTS="$W/results.txt"
: > "$RESULTS"
log() { echo "$*" | tee -a "$RESULTS" >&2; }
now_s() { date +%s.%N; }

HOME_DIR="$W/home"
LIB="$W/lib"
tv() { "$BIN" --home "$HOME_DIR" "$@"; }

log "tapevault synthetic-full benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${DISK_MIB} MiB disk, full + ${INCS} incrementals of ${INC_MIB} MiB each, ${DRIVES} drive(s), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
log "binary: $BIN ($("$BIN" --version))"

tv init --library "$LIB" --slots 6 --drives "$DRIVES" --capacity $((DISK_MIB * 3 + 1024))M > /dev/null
tv pool create p --compression off > /dev/null
tv pool create s --compression off > /dev/null
DISK="$W/disk.img"
head -c $((DISK_MIB << 20)) /dev/urandom > "$DISK"
tv backup --disk "$DISK" --disk-id "$DISK_ID" --pool p --full > /dev/null 2>&1
for i in $(seq 1 "$INCS"); do
  python3 - "$DISK" "$INC_MIB" "$i" <<'EOF'
import os, random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = os.path.getsize(path)
rng = random.Random(seed)
with open(path, "r+b") as f:
    for _ in range((mib << 20) // 65536):
        f.seek(rng.randrange(0, size // 65536) * 65536)
        f.write(os.urandom(65536))
EOF
  tv backup --disk "$DISK" --disk-id "$DISK_ID" --pool p > /dev/null 2>&1
done
POINT=$(tv --json images --disk "$DISK_ID" | python3 -c 'import json,sys; d=json.load(sys.stdin)["disks"][0]; print([i for c in d["chains"] for i in c["images"]][-1]["image"])')
log "chain written; point $POINT"
cp "$DISK" "$W/point.img"
rm -f "$DISK"
# The state every synthetic round starts from.
cp -a "$HOME_DIR" "$W/home.base"
cp -a "$LIB" "$W/lib.base"
sync

: > "$W/timings"
run_restore() {
  local out="$W/restored.img" t0 t1
  rm -f "$out"; sync
  t0=$(now_s)
  tv restore --disk "$DISK_ID" --image "$POINT" --to "$out" > /dev/null 2> "$W/restore.err" || { cat "$W/restore.err" >&2; exit 1; }
  t1=$(now_s)
  cmp -s "$out" "$W/point.img" || { echo "restore differs from the point" >&2; exit 1; }
  rm -f "$out"
  printf 'restore %.3f\n' "$(echo "$t1 - $t0" | bc -l)" | tee -a "$W/timings" >&2
}
run_synthetic() {
  local t0 t1 n
  rm -rf "$HOME_DIR" "$LIB"
  cp -a "$W/home.base" "$HOME_DIR"
  cp -a "$W/lib.base" "$LIB"
  sync
  t0=$(now_s)
  tv --json backup --synthetic-full --disk-id "$DISK_ID" --pool s > "$W/synthetic.json" 2> "$W/synthetic.err" || { cat "$W/synthetic.err" >&2; exit 1; }
  t1=$(now_s)
  n=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["disks"][0]; print(d["session"]["images"][0]["synthetic_of"], d["mode"])' "$W/synthetic.json")
  [ "${n% *}" = "$POINT" ] || { echo "synthetic full of ${n% *}, not $POINT" >&2; exit 1; }
  echo "synthetic mode ${n#* }" >&2
  printf 'synthetic %.3f\n' "$(echo "$t1 - $t0" | bc -l)" | tee -a "$W/timings" >&2
}
for r in $(seq 1 "$ROUNDS"); do
  run_restore
  run_synthetic
done
log "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$W/timings" "$DISK_MIB" <<'EOF' | tee -a "$RESULTS" >&2
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
mib = int(sys.argv[2])
by = {}
for name, secs in rows:
    by.setdefault(name, []).append(float(secs))
for name in ("restore", "synthetic"):
    v = sorted(by[name])
    print(f"{name:10s} min {v[0]:7.2f} s  median {statistics.median(v):7.2f} s  max {v[-1]:7.2f} s  ({mib / statistics.median(v):6.0f} MiB/s of disk at the median)")
r = [a / b for a, b in zip(by["restore"], by["synthetic"])]
print(f"ratio restore/synthetic per round: {', '.join(f'{x:.2f}' for x in r)}; median {statistics.median(r):.2f} (target >= 0.8)")
EOF
[ -n "${RESULTS_OUT:-}" ] && cp "$RESULTS" "$RESULTS_OUT"
exit 0
