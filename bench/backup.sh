#!/usr/bin/env bash
# Backup-side benchmarks of tapevault against dd, side by side in one run on the same
# files (see docs/benchmarks/backup.md for the targets and recorded results).
#
#   cargo build --release
#   bench/backup.sh [WORKDIR]
#
# Environment:
#   SIZE_MIB      disk image size (default 4096)
#   INCREMENTALS  incrementals before the restore benchmark (default 20)
#   TAPEVAULT_BIN binary to measure (default target/release/tapevault)
#   PAIRS         dd copy / full backup pairs, alternating (default 3; best of each)
#   SETTLE_SECS   pause after deleting a big file or a big write (default 10)
#   KEEP=1        keep WORKDIR afterwards (default: removed)
#
# WORKDIR (default ${TMPDIR:-/tmp}/tapevault-bench) must be on the filesystem being
# measured and hold about 3.5x SIZE_MIB. Before each timed run the image is dropped
# from the page cache (only that file), so dd and tapevault read it from the device;
# the hash scan is also measured warm (from the page cache). Both write to files on
# the same filesystem and both end with a flush to stable storage (dd conv=fsync;
# tapevault flushes the cartridge at the end of the image and of the session).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-bench}
SIZE_MIB=${SIZE_MIB:-4096}
INCS=${INCREMENTALS:-20}
SIZE=$((SIZE_MIB * 1024 * 1024))
DISK_ID=6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d11

[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release" >&2; exit 2; }
rm -rf "$W"
mkdir -p "$W"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
RESULTS="$W/results.txt"
: > "$RESULTS"

log() { echo "$*" | tee -a "$RESULTS" >&2; }

# now_s: seconds since the epoch with nanoseconds.
now_s() { date +%s.%N; }

# timed NAME CMD...: run CMD under /usr/bin/time -v, record wall seconds and max RSS.
timed() {
  local name=$1; shift
  local t0 t1 rss
  t0=$(now_s)
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.out" 2> "$W/$name.err" || {
    echo "$name failed:" >&2; cat "$W/$name.err" "$W/$name.out" >&2; exit 1; }
  t1=$(now_s)
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$W/$name.time")
  local secs
  secs=$(echo "$t1 - $t0" | bc -l)
  printf '%s %.3f %s\n' "$name" "$secs" "$rss" >> "$W/timings"
  log "$(printf '%-22s %8.3f s  max RSS %7d KiB  (%s)' "$name" "$secs" "$rss" "$*")"
}

secs_of() { awk -v n="$1" '$1 == n {print $2}' "$W/timings"; }
rss_of() { awk -v n="$1" '$1 == n {print $3}' "$W/timings"; }
ratio() { echo "scale=4; $1 / $2" | bc -l; }
mibs() { echo "scale=1; $1 / 1048576 / $2" | bc -l; }

# changed FILE FROM TO SEED: overwrite 1% of the disk with random data in 64 KiB
# extents at random 64 KiB-aligned offsets and write the matching changed-extents file.
changed() {
  python3 - "$W/disk.img" "$1" "$2" "$3" "$4" "$SIZE" <<'EOF'
import json, os, random, sys
disk, out, frm, to, seed, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
rng = random.Random(seed)
blk = 64 * 1024
nblocks = size // blk
picks = sorted(rng.sample(range(nblocks), max(1, nblocks // 100)))
with open(disk, "r+b") as f:
    for b in picks:
        f.seek(b * blk)
        f.write(os.urandom(blk))
    f.flush()
    os.fsync(f.fileno())
areas = [{"start": b * blk, "length": blk} for b in picks]
json.dump({"from_change_id": frm, "change_id": to, "changed_area": areas}, open(out, "w"))
EOF
}

log "tapevault backup benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SIZE_MIB} MiB image, $(nproc) cores"
log "binary: $BIN ($("$BIN" --version))"

# The disk: random (incompressible) data, compression off in the pool.
dd if=/dev/urandom of="$W/disk.img" bs=1M count="$SIZE_MIB" iflag=fullblock status=none
sync

# Cold: drop the disk image from the page cache (only this file) so a run reads it from
# the device, as a backup of a VM disk does. Warm: read it whole into the cache first.
cold() { dd if="$W/disk.img" iflag=nocache count=0 status=none; }
settle() { sync; sleep "${SETTLE_SECS:-10}"; }
warm() { cat "$W/disk.img" > /dev/null; }

# Full (its changed-extents answer sets change id b0).
python3 -c "import json,sys; json.dump({'from_change_id':'*','change_id':'b0','changed_area':[{'start':0,'length':$SIZE}]}, open(sys.argv[1],'w'))" "$W/cbt0.json"
# The device and the neighbours are noisy: dd copy and the full alternate PAIRS times
# (default 3), and the best of each is compared. Each full goes to a fresh home with a
# virtual library of big (sparse) cartridges; all but the last are deleted after their
# run to keep the disk footprint down. The last one carries the incrementals.
PAIRS=${PAIRS:-3}
for r in $(seq 1 "$PAIRS"); do
  export TAPEVAULT_HOME="$W/home$r"
  "$BIN" init --slots 4 --drives 1 --capacity 64G > /dev/null
  "$BIN" pool create bench --compression off > /dev/null
  cold
  timed dd-copy-$r dd if="$W/disk.img" of="$W/dd.out" bs=256K conv=fsync
  # The filesystem may discard freed blocks online (ext4 -o discard): let the discard
  # of the deleted copy finish before the next timed run, or it slows that run.
  rm -f "$W/dd.out"
  settle
  cold
  timed full-$r "$BIN" --json backup --disk "$W/disk.img" --disk-id $DISK_ID --pool bench --changed-extents "$W/cbt0.json" --full
  if [ "$r" -lt "$PAIRS" ]; then rm -rf "$TAPEVAULT_HOME" "$TAPEVAULT_HOME-library"; fi
  settle
done

# Incremental of 1% changed extents through a changed-extents file.
changed "$W/cbt1.json" b0 b1 1
timed inc-cbt-1pct "$BIN" --json backup --disk "$W/disk.img" --disk-id $DISK_ID --pool bench --changed-extents "$W/cbt1.json"
grep -q '"method": "changed-extents"' "$W/inc-cbt-1pct.out" || { echo "not a changed-extents incremental" >&2; cat "$W/inc-cbt-1pct.out" >&2; exit 1; }

# More changed-extents incrementals for the restore benchmark: full + INCS in all.
prev=b1
for i in $(seq 4 "$INCS"); do
  changed "$W/cbt$i.json" "$prev" "b$i" "$i"
  timed inc-cbt-$i "$BIN" --json backup --disk "$W/disk.img" --disk-id $DISK_ID --pool bench --changed-extents "$W/cbt$i.json"
  grep -q '"method": "changed-extents"' "$W/inc-cbt-$i.out" || { echo "incremental $i is not changed-extents" >&2; exit 1; }
  prev=b$i
done

# Hash-scan incrementals: read the whole disk. Their changed-extents files claim a stale
# change id, so tapevault must not trust them (it says so in "reason") and scans; such an
# image records no change id (a file not used never starts an epoch), so these come last.
# Measured cold (disk read from the device) and warm (from the page cache), each right
# after a dd read of the same file in the same cache state.
changed "$W/cbt2.json" stale b2 2
cold
timed dd-read-cold dd if="$W/disk.img" of=/dev/null bs=256K
cold
timed inc-hashscan "$BIN" --json backup --disk "$W/disk.img" --disk-id $DISK_ID --pool bench --changed-extents "$W/cbt2.json"
grep -q '"method": "hash-scan"' "$W/inc-hashscan.out" || { echo "not a hash-scan incremental" >&2; cat "$W/inc-hashscan.out" >&2; exit 1; }
changed "$W/cbt3.json" stale b3 3
warm
timed dd-read-warm dd if="$W/disk.img" of=/dev/null bs=256K
timed inc-hashscan-warm "$BIN" --json backup --disk "$W/disk.img" --disk-id $DISK_ID --pool bench --changed-extents "$W/cbt3.json"
grep -q '"method": "hash-scan"' "$W/inc-hashscan-warm.out" || { echo "not a hash-scan incremental" >&2; exit 1; }

if "$BIN" restore --help > /dev/null 2>&1; then
  cold
  timed ddcopy-restore dd if="$W/disk.img" of="$W/dd.out" bs=256K conv=fsync
  rm -f "$W/dd.out"
  settle
  timed restore "$BIN" --json restore --disk $DISK_ID --to "$W/restored.img"
  if cmp -s "$W/disk.img" "$W/restored.img"; then log "restore: bit-identical"; else log "restore: DIFFERS"; exit 1; fi
  rm -f "$W/restored.img"
else
  log "restore: not in this build; skipped"
fi

minof() { awk -v p="$1" 'index($1, p) == 1 {print $2}' "$W/timings" | sort -g | head -1; }
medianof() { awk -v p="$1" 'index($1, p) == 1 {print $2}' "$W/timings" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
full=$(minof full-); dd=$(minof dd-copy-); rd=$(secs_of dd-read-cold); rdw=$(secs_of dd-read-warm)
cbt=$(secs_of inc-cbt-1pct); cbtmed=$(medianof inc-cbt-); hs=$(secs_of inc-hashscan); hsw=$(secs_of inc-hashscan-warm)
log ""
log "full backup      best of ${PAIRS:-3}: $(mibs "$SIZE" "$full") MiB/s vs dd copy best of ${PAIRS:-3}: $(mibs "$SIZE" "$dd") MiB/s: $(ratio "$dd" "$full")x dd (target >= 0.9)"
log "1% cbt incr      ${cbt} s = $(ratio "$cbt" "$full")x the full's time; median of all $(awk 'index($1,"inc-cbt-")==1' "$W/timings" | wc -l) 1% incrementals ${cbtmed} s = $(ratio "$cbtmed" "$full")x (target <= 0.03)"
log "hash-scan incr   cold: $(mibs "$SIZE" "$hs") MiB/s vs dd read $(mibs "$SIZE" "$rd") MiB/s: $(ratio "$rd" "$hs")x dd read (target >= 0.8)"
log "hash-scan incr   warm: $(mibs "$SIZE" "$hsw") MiB/s vs dd read $(mibs "$SIZE" "$rdw") MiB/s: $(ratio "$rdw" "$hsw")x dd read (target >= 0.8)"
if [ -n "$(secs_of restore)" ]; then
  rs=$(secs_of restore); dd2=$(secs_of ddcopy-restore)
  log "restore full+$INCS  $(mibs "$SIZE" "$rs") MiB/s vs dd copy $(mibs "$SIZE" "$dd2") MiB/s: $(ratio "$dd2" "$rs")x dd (target >= 0.8)"
fi
maxrss=0
for r in $(awk '$1 !~ /^dd-/ {print $3}' "$W/timings"); do
  [ "$r" -gt "$maxrss" ] && maxrss=$r
done
log "peak RSS of tapevault: $((maxrss / 1024)) MiB (target <= 256 MiB)"
cp "$RESULTS" "${RESULTS_OUT:-/dev/null}" 2>/dev/null || true
