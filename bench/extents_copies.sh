#!/usr/bin/env bash
# Memory and time per extent of a synthetic full and a tape-to-tape copy of a chain
# with many scattered changed extents (issue 18 item 2; docs/BENCHMARKS.md, "Many
# extents"). The sibling of bench/extents_scale.sh, which measures backup, restore,
# verify and rebuild on the same kind of chain.
#
#   cargo build --release --bin tapevault
#   COUNTS="1000 65536 1048576" BINS="base=OLD_BUILD new=target/release/tapevault" \
#     bench/extents_copies.sh [WORKDIR]
#
# For each N in COUNTS, made once with the first binary of BINS: a library with two
# drives and the pools p (the chain), s (synthetic fulls) and c (copies); a sparse disk
# of N x 128 KiB in which one area in DATA_EVERY holds 4 KiB of random data; a thin
# full of it (`--full --changed-extents`), then the data areas rewritten and an
# incremental from a changed-extents file listing all N 4 KiB areas in a scattered
# order (as extents_scale.sh: N extents recorded, most of them zero extents over
# holes); then four more incrementals, each of a quarter of M = min(N, DATA_MAX)
# scattered 4 KiB data areas (area i + 64 KiB for every (N / M)-th area i, byte k + 1
# repeated, so they compress to little on tape; the disk is emptied before each, since
# only the point on tape matters), so the chain's point has about M data extents in the
# incrementals' restore plans (what a synthetic full stages and merges) besides the
# N-extent incremental (what a copy's coverage holds). Every pool compresses (zstd:1).
# M is capped (DATA_MAX, default 65536) since each data extent is a 64 KiB tracking
# block that the synthetic full's writer reads whole (mostly zeros): 1 M of them would
# be 64 GiB read per run. The home and the library are then saved, and each measured
# command starts from that saved state (so every run does the same work):
#
# * `backup --synthetic-full --pool s` (two drives: the incrementals staged, the full
#   streamed from one drive to the writer on the other, merged in disk order);
# * `copy --disk ID --from-pool p --to-pool c` (the six images, each read on one drive
#   while written on the other).
#
# ROUNDS rounds (default 3), the binaries of BINS alternating within each round. Each
# line: wall seconds, user+system CPU seconds, peak RSS (/usr/bin/time -v), exit code;
# per N a summary per binary and command: min / median / max of the wall time and of
# the CPU time, microseconds per extent at the median, the largest peak RSS. The
# synthetic full is checked to record at least 0.9 M data extents (a data area of the
# N-extent incremental and one of the four may touch: they coalesce), the copies 0.9 N
# rows or more.
#
# Space: the chain (see extents_scale.sh: 0.8 GiB at 1 M) and a saved copy of it; at
# 16 M some 10 GiB: check `df -h` first. Temporary spool files go to TMPDIR.
#
# Environment: COUNTS (default "1000 65536 1048576"), BINS (default "new=" the release
# build), ROUNDS (default 3), DATA_MAX (default 65536), DATA_EVERY_FIXED (as
# extents_scale.sh), KEEP=1, RESULTS_OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINS=${BINS:-"new=$ROOT/target/release/tapevault"}
BIN=${BINS%% *}
BIN=${BIN#*=}
W=${1:-${TMPDIR:-/tmp}/tapevault-extcopies}
COUNTS=${COUNTS:-"1000 65536 1048576"}
ROUNDS=${ROUNDS:-3}
DATA_MAX=${DATA_MAX:-65536}
DISK_ID=0e0e0e0e-1111-4222-8333-666666666666
STRIDE=131072

command -v python3 >/dev/null || { echo "python3 is needed to write the changed-extents files" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "sqlite3 is needed to count the catalog's extents" >&2; exit 2; }
for b in $BINS; do
  [ -x "${b#*=}" ] || { echo "no binary at ${b#*=} (BINS: NAME=PATH ...)" >&2; exit 2; }
done
. "$ROOT/bench/common.sh"

# cpu NAME: user + system seconds of the last run of NAME.
cpu() {
  awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {printf "%.2f", u + s}' "$W/$1.time"
}

# run_one TAG BIN KIND N D M: restore the saved state, then time one command.
run_one() {
  local tag=$1 bin=$2 kind=$3 n=$4 d=$5 m=$6 name
  rm -rf "$d/home" "$d/library"
  cp -a --sparse=always "$d/saved/home" "$d/saved/library" "$d/"
  name="n$n-$kind-$tag"
  case $kind in
    synthetic) timed "$name" 0 "$bin" --home "$d/home" --json backup --synthetic-full \
                 --disk-id "$DISK_ID" --pool s ;;
    copy) timed "$name" 0 "$bin" --home "$d/home" --json copy --disk "$DISK_ID" \
            --from-pool p --to-pool c ;;
  esac
  local pool=$([ "$kind" = synthetic ] && echo s || echo c) rows
  rows=$(sqlite3 "$d/home/catalog.db" "SELECT COUNT(*) FROM image_extents e JOIN images i ON i.uuid = e.image_uuid WHERE i.pool = '$pool' AND i.status = 'complete' AND ('$pool' = 'c' OR NOT e.is_zero)")
  [ "$rows" -ge $(( ($([ "$kind" = synthetic ] && echo "$m" || echo "$n")) * 9 / 10 )) ] || { echo "$name: only $rows extents recorded in pool $pool" >&2; exit 1; }
  echo "$name $(cpu "$name")" >> "$W/cpu"
  log "    $name: cpu $(cpu "$name") s, $rows extents in pool $pool"
}

log "load average: $(cut -d' ' -f1-3 /proc/loadavg); binaries: $BINS; rounds: $ROUNDS"
for N in $COUNTS; do
  DATA_EVERY=${DATA_EVERY_FIXED:-$(( N / 4096 > 256 ? N / 4096 : 256 ))}
  D=$W/n$N
  mkdir -p "$D"
  H=$D/home
  "$BIN" --home "$H" init --library "$D/library" --capacity 64G --slots 8 --drives 2 >/dev/null
  for p in p s c; do "$BIN" --home "$H" pool create $p --compression zstd:1 >/dev/null; done
  M=$(( N < DATA_MAX ? N : DATA_MAX ))
  scattered_chain "$BIN" "$H" "$D" "$N" "$STRIDE" "$DISK_ID" "$DATA_EVERY"
  "$BIN" --home "$H" backup --changed-extents "$D/inc.json" --disk "$D/disk.img" \
    --disk-id "$DISK_ID" --pool p >/dev/null 2>"$D/inc.err" || { cat "$D/inc.err" >&2; exit 1; }
  rm -f "$D/inc.json"
  for k in 0 1 2 3; do
    rm -f "$D/disk.img"
    truncate -s $((N * STRIDE)) "$D/disk.img"
    python3 - "$D" "$N" "$STRIDE" "$DISK_ID" "$k" "$M" <<'PY'
import sys
d, n, stride, disk, k, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
P = 1000003
step = n // m
piece = bytes([k + 1]) * 4096
areas = [(i * P % n) for i in range(n)]
areas = [i for i in areas if i % step == 0 and (i // step) % 4 == k]
with open(f"{d}/disk.img", "r+b") as f:
    for i in sorted(areas):
        f.seek(i * stride + 65536)
        f.write(piece)
with open(f"{d}/data.json", "w", buffering=1 << 20) as f:
    f.write('{"disk_id": "%s", "from_change_id": "c%d", "change_id": "c%d", "changed_area": [' % (disk, k + 2, k + 3))
    f.write(",".join('{"start":%d,"length":4096}' % (i * stride + 65536) for i in areas))
    f.write("]}")
PY
    "$BIN" --home "$H" backup --changed-extents "$D/data.json" --disk "$D/disk.img" \
      --disk-id "$DISK_ID" --pool p >/dev/null 2>"$D/data$k.err" || { cat "$D/data$k.err" >&2; exit 1; }
  done
  rm -f "$D/data.json" "$D/disk.img"
  mkdir -p "$D/saved"
  mv "$H" "$D/library" "$D/saved/"
  log "N=$N extents (disk $((N * STRIDE >> 20)) MiB, sparse; data in one area of $DATA_EVERY), M=$M data extents in four incrementals; chain: $(du -sh "$D/saved" | cut -f1)"
  for r in $(seq 1 "$ROUNDS"); do
    for kind in synthetic copy; do
      for b in $BINS; do
        run_one "${b%%=*}-r$r" "${b#*=}" "$kind" "$N" "$D" "$M"
      done
    done
  done
  for kind in synthetic copy; do
    for b in $BINS; do
      tag=${b%%=*}
      pre="n$N-$kind-$tag-r"
      # min / median / max of a column of the lines of this binary and command.
      stats() { awk -v pre="$pre" -v c="$2" 'index($1, pre) == 1 { print $c }' "$1" | sort -g |
        awk '{ v[NR] = $1 } END { printf "%.3f / %.3f / %.3f", v[1], v[int((NR + 1) / 2)], v[NR] }'; }
      med=$(stats "$W/timings" 2 | awk -F' / ' '{ print $2 }')
      rss=$(awk -v pre="$pre" 'index($1, pre) == 1 && $3 > m { m = $3 } END { printf "%.1f", m / 1024 }' "$W/timings")
      log "  $tag $kind: wall $(stats "$W/timings" 2) s, cpu $(stats "$W/cpu" 2) s, $(echo "$med * 1000000 / $N" | bc -l | xargs printf '%.2f') us/extent at the median, max RSS $rss MiB"
    done
  done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$D"
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "${RESULTS_OUT:-}" ] && cp "$W/results.txt" "$RESULTS_OUT"
true
