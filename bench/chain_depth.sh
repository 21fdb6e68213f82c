#!/usr/bin/env bash
# Long chains (issue 18 item 4): restore time of a point DEEP1 and DEEP2 incrementals
# deep against a full of the same disk, and the cost of each session's catalog
# snapshot along the chain (see docs/BENCHMARKS.md, "Long chains and big catalogs").
#
#   cargo build --release --bin tapevault
#   bench/chain_depth.sh [WORKDIR]
#
# One disk of DISK_MIB random MiB: a full, then DEEP2 hash-scan incrementals, each
# after rewriting one 64 KiB block at a random place (so a deep point needs about
# the full's bytes plus DEEP2 blocks). Then a --full of the final disk (the "full of
# the same size"). Restores, ROUNDS alternating rounds: the point DEEP1 deep, the
# point DEEP2 deep, the final full, and `cat` of the disk file as the peer; each
# restore to a fresh file, deleted after. Prints min/median/max per kind, the
# snapshot kind and plain length of every session, and the backup wall time of the
# first and last ten incrementals.
#
# Environment: DISK_MIB (64), DEEP1 (50), DEEP2 (500), ROUNDS (3), TAPEVAULT_BIN, KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-chain}
DISK_MIB=${DISK_MIB:-64}
DEEP1=${DEEP1:-50}
DEEP2=${DEEP2:-500}
ROUNDS=${ROUNDS:-3}
DISK_ID=0d0d0d0d-2222-4333-8444-555555555555

. "$ROOT/bench/common.sh"

H=$W/home
tv() { "$BIN" --home "$H" "$@"; }

tv init --library "$W/library" --capacity 8G --slots 4 >/dev/null
tv pool create p --compression off >/dev/null
head -c $((DISK_MIB << 20)) /dev/urandom > "$W/disk.img"
tv backup --disk "$W/disk.img" --disk-id "$DISK_ID" --pool p >/dev/null 2>&1
t_at() { sqlite3 "$H/catalog.db" "SELECT started FROM images WHERE disk_uuid='$DISK_ID' ORDER BY started LIMIT 1 OFFSET $1"; }
: > "$W/session-times"
for i in $(seq 1 "$DEEP2"); do
  blk=$(( (RANDOM * 32768 + RANDOM) % (DISK_MIB * 16) ))
  head -c 65536 /dev/urandom | dd of="$W/disk.img" bs=65536 seek="$blk" conv=notrunc status=none
  [ "$i" = "$DEEP1" ] && cp --sparse=always "$W/disk.img" "$W/disk-$DEEP1.img"
  t0=$(now_s)
  tv backup --disk "$W/disk.img" --disk-id "$DISK_ID" --pool p >/dev/null 2>&1
  t1=$(now_s)
  echo "$i $(echo "$t1 - $t0" | bc -l)" >> "$W/session-times"
done
P1=$(t_at "$DEEP1"); P2=$(t_at "$DEEP2")
tv backup --disk "$W/disk.img" --disk-id "$DISK_ID" --pool p --full >/dev/null 2>&1
PF=$(t_at $((DEEP2 + 1)))
log "snapshots (kind, count, min/max plain bytes):"
sqlite3 "$H/catalog.db" "SELECT kind, COUNT(*), MIN(plain_len), MAX(plain_len) FROM snapshots GROUP BY kind" | tee -a "$W/results.txt" >&2
log "incremental backup wall time, first 10 and last 10 of $DEEP2 (s):"
head -10 "$W/session-times" | awk '{printf "%.3f ", $2}' | tee -a "$W/results.txt" >&2; echo >&2
tail -10 "$W/session-times" | awk '{printf "%.3f ", $2}' | tee -a "$W/results.txt" >&2; echo >&2

for r in $(seq 1 "$ROUNDS"); do
  log "round $r"
  for k in deep1 deep2 full cat; do
    rm -f "$W/out.img"; sync
    case $k in
      deep1) timed "deep1-$r" 0 "$BIN" --home "$H" restore --disk "$DISK_ID" --at "$P1" --to "$W/out.img"
             cmp "$W/out.img" "$W/disk-$DEEP1.img" ;;
      deep2) timed "deep2-$r" 0 "$BIN" --home "$H" restore --disk "$DISK_ID" --at "$P2" --to "$W/out.img"
             cmp "$W/out.img" "$W/disk.img" ;;
      full)  timed "full-$r" 0 "$BIN" --home "$H" restore --disk "$DISK_ID" --at "$PF" --to "$W/out.img"
             cmp "$W/out.img" "$W/disk.img" ;;
      cat)   timed "cat-$r" 0 sh -c "cat '$W/disk.img' > '$W/out.img'" ;;
    esac
  done
done
rm -f "$W/out.img"
for k in deep1 deep2 full cat; do
  grep "^$k-[0-9]" "$W/timings" | awk '{print $2, $3}' | sort -n | awk -v k="$k" '{a[NR]=$1; m[NR]=$2} END {printf "%-6s min %.3f  median %.3f  max %.3f s  (RSS of the median %d KiB)\n", k, a[1], a[int((NR+1)/2)], a[NR], m[int((NR+1)/2)]}' | tee -a "$W/results.txt" >&2
done
[ -n "${RESULTS_OUT:-}" ] && cp "$W/results.txt" "$RESULTS_OUT"
true
