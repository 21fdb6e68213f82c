#!/usr/bin/env bash
# Memory and time per extent with many scattered changed extents (issue 18 item 2; see
# docs/BENCHMARKS.md, "Many extents").
#
#   cargo build --release --bin tapevault
#   COUNTS="1000 65536 1048576" bench/extents_scale.sh [WORKDIR]
#
# For each N in COUNTS: a sparse disk of N x 128 KiB in which one area in DATA_EVERY
# holds 4 KiB of random data and the rest are holes; a thin full backup
# of it with a changed-extents file (`--full --changed-extents`, which starts a
# change-id epoch); then the data areas rewritten with new random data and a
# changed-extents file listing all N 4 KiB areas, in a scattered order (area i*P mod N,
# P = 1000003), so the backup must sort them. A backup widens each area to its 64 KiB
# tracking block, so they stay apart: the incremental records N extents, most of them
# zero extents over holes (never read, a few bytes each on tape), which keeps the data
# written small at any N. Timed, with peak RSS (/usr/bin/time -v): the incremental
# backup from that file, a restore of it to a new sparse file (the zero extents stay
# holes), `verify --image` of it, `catalog check --json` and `catalog export` (the
# full snapshot's writer) of the home, a fast-path `catalog rebuild` into a fresh home, and
# a full-scan `catalog rebuild --scan` into another.
# The restore is checked: the data areas compared with the disk, and the restored
# file's allocated size reported (cmp of the whole file too when N <= 65536).
#
# Space: about 64 bytes per extent for each block digest list (the full's, the
# incremental's: 1 GiB each at 16 M), the data areas' tracking blocks twice on tape
# (4096 x 64 KiB at 1 M and 16 M), the changed-extents file (590 MB at 16 M, deleted
# after the backup) and a catalog of about 90 bytes per extent in each home (the
# rebuilt homes are deleted after their rebuild). 16 M extents need a 2 TiB sparse disk
# (the filesystem must allow such a file: ext4 does) and peaked at 4.6 GiB used; 1 M
# at 0.8 GiB. Temporary spool files go to TMPDIR.
#
# Environment: COUNTS (default "1000 65536 1048576"), DATA_EVERY_FIXED (default: 256, or
# N / 4096 above 1 M, so 16 M writes no more data than 1 M), TAPEVAULT_BIN, KEEP=1,
# RESULTS_OUT (a file to copy the results to).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-extscale}
COUNTS=${COUNTS:-"1000 65536 1048576"}
DISK_ID=0e0e0e0e-1111-4222-8333-555555555555
STRIDE=131072

command -v python3 >/dev/null || { echo "python3 is needed to write the changed-extents files" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "sqlite3 is needed to count the catalog's extents" >&2; exit 2; }
. "$ROOT/bench/common.sh"

# per_extent N NAME: the last timed line of NAME as microseconds per extent.
per_extent() {
  awk -v n="$1" -v name="$2" '$1 == name { s = $2; r = $3 } END { printf "%s %.3f s  %.2f us/extent  %.1f MiB\n", name, s, s * 1e6 / n, r / 1024 }' "$W/timings"
}

log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for N in $COUNTS; do
  # One area in 256 holds data, or in N / 4096 (4096 data areas) beyond 1 M.
  DATA_EVERY=${DATA_EVERY_FIXED:-$(( N / 4096 > 256 ? N / 4096 : 256 ))}
  D=$W/n$N
  mkdir -p "$D"
  H=$D/home
  "$BIN" --home "$H" init --library "$D/library" --capacity 64G --slots 4 >/dev/null
  "$BIN" --home "$H" pool create p --compression off >/dev/null
  scattered_chain "$BIN" "$H" "$D" "$N" "$STRIDE" "$DISK_ID" "$DATA_EVERY"
  log "N=$N extents (disk $((N * STRIDE >> 20)) MiB, sparse; data in one area of $DATA_EVERY; changed-extents file $(du -k "$D/inc.json" | cut -f1) KiB)"
  timed "n$N-backup" 0 "$BIN" --home "$H" backup --changed-extents "$D/inc.json" \
    --disk "$D/disk.img" --disk-id "$DISK_ID" --pool p
  log "  $(per_extent "$N" "n$N-backup")"
  rm -f "$D/inc.json"
  INC=$(sqlite3 "$H/catalog.db" "SELECT uuid FROM images WHERE kind='incremental' ORDER BY started DESC LIMIT 1")
  timed "n$N-restore" 0 "$BIN" --home "$H" restore --disk "$DISK_ID" --to "$D/out.img"
  log "  $(per_extent "$N" "n$N-restore")"
  python3 - "$D" "$N" "$STRIDE" "$DATA_EVERY" <<'PY' || { echo "restore of N=$N differs from the disk" >&2; exit 1; }
import os, sys
d, n, stride, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if os.path.getsize(f"{d}/out.img") != os.path.getsize(f"{d}/disk.img"):
    sys.exit("sizes differ")
with open(f"{d}/disk.img", "rb") as a, open(f"{d}/out.img", "rb") as b:
    for i in range(0, n, every):
        a.seek(i * stride); b.seek(i * stride)
        if a.read(4096) != b.read(4096):
            sys.exit(f"extent {i} differs")
PY
  if [ "$N" -le 65536 ]; then
    cmp "$D/disk.img" "$D/out.img" || { echo "restore of N=$N differs from the disk" >&2; exit 1; }
  fi
  log "  restored file: $(du -k "$D/out.img" | cut -f1) KiB allocated of $((N * STRIDE >> 10)) KiB"
  rm -f "$D/out.img"
  timed "n$N-verify" 0 "$BIN" --home "$H" verify --image "$INC"
  log "  $(per_extent "$N" "n$N-verify")"
  # The catalog's own passes over the image's N extents: `catalog check` (reads and
  # checks each image's extents) and `catalog export` (the full snapshot's writer).
  timed "n$N-check" 0 "$BIN" --home "$H" catalog check --json
  log "  $(per_extent "$N" "n$N-check")"
  timed "n$N-export" 0 "$BIN" --home "$H" catalog export --out "$D/export.json"
  log "  $(per_extent "$N" "n$N-export"); export $(du -k "$D/export.json" | cut -f1) KiB"
  rm -f "$D/export.json"
  "$BIN" --home "$D/rebuilt" init --library "$D/library" >/dev/null
  timed "n$N-rebuild" 0 "$BIN" --home "$D/rebuilt" catalog rebuild
  log "  $(per_extent "$N" "n$N-rebuild")"
  log "  extents recorded for the incremental: $(sqlite3 "$H/catalog.db" "SELECT COUNT(*) FROM image_extents WHERE image_uuid='$INC'"), rebuilt: $(sqlite3 "$D/rebuilt/catalog.db" "SELECT COUNT(*) FROM image_extents WHERE image_uuid='$INC'"); space used: $(du -sh "$D" | cut -f1)"
  rm -rf "$D/rebuilt"
  "$BIN" --home "$D/scanned" init --library "$D/library" >/dev/null
  timed "n$N-rebuild-scan" 0 "$BIN" --home "$D/scanned" catalog rebuild --scan
  log "  $(per_extent "$N" "n$N-rebuild-scan")"
  log "  extents after the scan: $(sqlite3 "$D/scanned/catalog.db" "SELECT COUNT(*) FROM image_extents WHERE image_uuid='$INC'")"
  rm -rf "$D/scanned"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "${RESULTS_OUT:-}" ] && cp "$W/results.txt" "$RESULTS_OUT"
true
