#!/usr/bin/env bash
# Memory and time per extent with many scattered changed extents (issue 18 item 2; see
# docs/BENCHMARKS.md, "Many extents").
#
#   cargo build --release --bin tapevault
#   bench/extents_scale.sh [WORKDIR]
#
# For each N in COUNTS: a sparse disk of N x 128 KiB; a thin full backup of it with a
# changed-extents file (`--full --changed-extents`, which starts a change-id epoch);
# then 4 KiB of random data written at every 128 KiB (N scattered extents; a backup
# widens each to its 64 KiB tracking block, so they stay apart) and a changed-extents
# file listing the N areas. Timed, with peak RSS (/usr/bin/time -v): the incremental
# backup from that file, a restore of it to a new file, `verify --image` of it, and a
# fast-path `catalog rebuild` into a fresh home. Reports time per extent.
#
# Environment: COUNTS (default "1000 65536 1048576"; 16777216 needs a 2 TiB sparse
# disk and reads 1 TiB of tracking blocks), RESTORE_MAX (default 65536: a restore
# writes every 64 KiB tracking block, 64 GiB at 1 M extents), TAPEVAULT_BIN, KEEP=1.
# Space: the 1 M case needs more than 38 GiB free in WORKDIR (its full filled that much
# of the shared disk it was tried on); 64 k needs about 9 GiB.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-extscale}
COUNTS=${COUNTS:-"1000 65536 1048576"}
DISK_ID=0e0e0e0e-1111-4222-8333-555555555555
STRIDE=131072
RESTORE_MAX=${RESTORE_MAX:-65536}

[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release --bin tapevault" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to write the changed-extents files" >&2; exit 2; }
rm -rf "$W"
mkdir -p "$W"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
log() { echo "$*" | tee -a "$W/results.txt" >&2; }
now_s() { date +%s.%N; }

# timed N NAME CMD...: wall seconds, max RSS and seconds per extent.
timed() {
  local n=$1 name=$2; shift 2
  local t0 t1 rc=0
  t0=$(now_s)
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.out" 2> "$W/$name.err" || rc=$?
  t1=$(now_s)
  if [ "$rc" != 0 ]; then
    echo "$name exited $rc:" >&2; tail -20 "$W/$name.err" >&2; exit 1
  fi
  local rss secs
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$W/$name.time")
  secs=$(echo "$t1 - $t0" | bc -l)
  printf '%s %s %.3f %s\n' "$n" "$name" "$secs" "$rss" >> "$W/timings"
  log "$(printf '%-22s %9.3f s  %8.3f us/extent  max RSS %8d KiB' "$name" "$secs" \
    "$(echo "$secs * 1000000 / $n" | bc -l)" "$rss")"
}

log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for N in $COUNTS; do
  D=$W/n$N
  mkdir -p "$D"
  H=$D/home
  "$BIN" --home "$H" init --library "$D/library" --capacity 64G --slots 4 >/dev/null
  "$BIN" --home "$H" pool create p --compression off >/dev/null
  truncate -s $((N * STRIDE)) "$D/disk.img"
  python3 - "$D" "$N" "$STRIDE" "$DISK_ID" <<'PY'
import json, os, sys
d, n, stride, disk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(f"{d}/full.json", "w") as f:
    json.dump({"disk_id": disk, "from_change_id": "*", "change_id": "c1", "changed_area": []}, f)
with open(f"{d}/disk.img", "r+b") as f:
    for i in range(n):
        f.seek(i * stride)
        f.write(os.urandom(4096))
with open(f"{d}/inc.json", "w") as f:
    f.write('{"disk_id": "%s", "from_change_id": "c1", "change_id": "c2", "changed_area": [' % disk)
    f.write(",".join('{"start":%d,"length":4096}' % (i * stride) for i in range(n)))
    f.write("]}")
PY
  # The full is taken of the disk with its data (a thin full reads only the data),
  # then the same areas are rewritten, so the incremental's file lists N extents.
  "$BIN" --home "$H" backup --full --changed-extents "$D/full.json" --disk "$D/disk.img" \
    --disk-id "$DISK_ID" --pool p >/dev/null 2>"$D/full.err" || { cat "$D/full.err" >&2; exit 1; }
  python3 - "$D" "$N" "$STRIDE" <<'PY'
import os, sys
d, n, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(f"{d}/disk.img", "r+b") as f:
    for i in range(n):
        f.seek(i * stride)
        f.write(os.urandom(4096))
PY
  log "N=$N extents (disk $((N * STRIDE >> 20)) MiB, sparse)"
  timed "$N" "n$N-backup" "$BIN" --home "$H" backup --changed-extents "$D/inc.json" \
    --disk "$D/disk.img" --disk-id "$DISK_ID" --pool p
  INC=$(sqlite3 "$H/catalog.db" "SELECT uuid FROM images WHERE kind='incremental' ORDER BY started DESC LIMIT 1")
  if [ "$N" -gt "$RESTORE_MAX" ]; then
    log "  restore of N=$N skipped: it writes N x 64 KiB tracking blocks ($((N >> 4)) MiB; RESTORE_MAX=$RESTORE_MAX)"
  else
  timed "$N" "n$N-restore" "$BIN" --home "$H" restore --disk "$DISK_ID" --to "$D/out.img"
  if [ "$N" -le 65536 ]; then
    cmp "$D/disk.img" "$D/out.img" || { echo "restore of N=$N differs from the disk" >&2; exit 1; }
  else
    # cmp would read N x 128 KiB of holes twice: compare the written areas only.
    python3 - "$D" "$N" "$STRIDE" <<'PY' || { echo "restore of N=$N differs from the disk" >&2; exit 1; }
import sys
d, n, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(f"{d}/disk.img", "rb") as a, open(f"{d}/out.img", "rb") as b:
    for i in range(n):
        a.seek(i * stride); b.seek(i * stride)
        if a.read(4096) != b.read(4096):
            sys.exit(f"extent {i} differs")
PY
  fi
  log "  restored file: $(du -k "$D/out.img" | cut -f1) KiB allocated of $((N * STRIDE >> 10)) KiB"
  rm -f "$D/out.img"
  fi
  timed "$N" "n$N-verify" "$BIN" --home "$H" verify --image "$INC"
  "$BIN" --home "$D/rebuilt" init --library "$D/library" >/dev/null
  timed "$N" "n$N-rebuild" "$BIN" --home "$D/rebuilt" catalog rebuild
  log "  extents recorded for the incremental: $(sqlite3 "$H/catalog.db" "SELECT COUNT(*) FROM image_extents WHERE image_uuid='$INC'"), rebuilt: $(sqlite3 "$D/rebuilt/catalog.db" "SELECT COUNT(*) FROM image_extents WHERE image_uuid='$INC'")"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "${RESULTS_OUT:-}" ] && cp "$W/results.txt" "$RESULTS_OUT"
true
