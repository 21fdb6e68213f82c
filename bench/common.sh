# Shared by the bench scripts that time tapevault commands one by one (sourced, not run):
# the binary, the work directory, a log and `timed`.
#
#   BIN=... W=...; . "$ROOT/bench/common.sh"
#
# Needs BIN (the tapevault binary) and W (the work directory: emptied now, removed at
# exit unless KEEP=1).

[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release --bin tapevault" >&2; exit 2; }
rm -rf "$W"
mkdir -p "$W"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT
log() { echo "$*" | tee -a "$W/results.txt" >&2; }
now_s() { date +%s.%N; }

# timed NAME EXPECTED_RC CMD...: runs CMD with its output in $W/NAME.out and .err, and
# logs its wall seconds, max RSS and exit code (also appended to $W/timings); an exit
# code other than EXPECTED_RC (`any`: whatever it is) stops the script.
timed() {
  local name=$1 want=$2; shift 2
  local t0 t1 rc=0
  t0=$(now_s)
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.out" 2> "$W/$name.err" || rc=$?
  t1=$(now_s)
  if [ "$want" != any ] && [ "$rc" != "$want" ]; then
    echo "$name exited $rc, expected $want:" >&2; tail -20 "$W/$name.err" >&2; exit 1
  fi
  local rss secs
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$W/$name.time")
  secs=$(echo "$t1 - $t0" | bc -l)
  printf '%s %.3f %s\n' "$name" "$secs" "$rss" >> "$W/timings"
  log "$(printf '%-22s %8.3f s  max RSS %7d KiB  exit %d' "$name" "$secs" "$rss" "$rc")"
}

# scattered_chain BIN HOME DIR N STRIDE DISK_ID DATA_EVERY: the many-extents set-up shared by
# bench/extents_scale.sh and bench/extents_copies.sh. DIR/disk.img is a sparse disk of N
# areas of STRIDE bytes, 4 KiB of data in one area of DATA_EVERY; it gets a full backup
# into pool p of HOME; then its data areas are rewritten, and DIR/inc.json names all N
# areas (4 KiB each, in a scattered order) as the next incremental's changed extents.
scattered_chain() {
  local BIN=$1 H=$2 D=$3 N=$4 STRIDE=$5 DISK_ID=$6 DATA_EVERY=$7
  truncate -s $((N * STRIDE)) "$D/disk.img"
  python3 - "$D" "$N" "$STRIDE" "$DISK_ID" "$DATA_EVERY" <<'PY'
import json, os, sys
d, n, stride, disk, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
with open(f"{d}/full.json", "w") as f:
    json.dump({"disk_id": disk, "from_change_id": "*", "change_id": "c1", "changed_area": []}, f)
with open(f"{d}/disk.img", "r+b") as f:
    for i in range(0, n, every):
        f.seek(i * stride)
        f.write(os.urandom(4096))
P = 1000003
with open(f"{d}/inc.json", "w", buffering=1 << 20) as f:
    f.write('{"disk_id": "%s", "from_change_id": "c1", "change_id": "c2", "changed_area": [' % disk)
    for i in range(n):
        if i:
            f.write(",")
        f.write('{"start":%d,"length":4096}' % ((i * P % n) * stride))
    f.write("]}")
PY
  "$BIN" --home "$H" backup --full --changed-extents "$D/full.json" --disk "$D/disk.img" \
    --disk-id "$DISK_ID" --pool p >/dev/null 2>"$D/full.err" || { cat "$D/full.err" >&2; exit 1; }
  python3 - "$D" "$N" "$STRIDE" "$DATA_EVERY" <<'PY'
import os, sys
d, n, stride, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(f"{d}/disk.img", "r+b") as f:
    for i in range(0, n, every):
        f.seek(i * stride)
        f.write(os.urandom(4096))
PY
}
