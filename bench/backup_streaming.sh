#!/usr/bin/env bash
# Whole `tapevault backup` runs on a modelled drive (docs/BENCHMARKS.md, "Drive
# streaming"): the drive's time repositioning, from its statistics, and the backup's
# wall and CPU time, for
#   1. a fast source (random data on tmpfs);
#   2. a source throttled by nbdkit's rate filter (an NBD source, as a slow hypervisor
#      export would be) at several rates;
# each with several spool variants side by side, ROUNDS alternating rounds; min / median
# / max printed per row.
#
#   cargo build --release --bin tapevault
#   bench/backup_streaming.sh [WORKDIR]
#
# Environment:
#   TOTAL_MIB (default 512), ROUNDS (3), RATES (MB/s, default "60 20", empty for none;
#   FAST=0 leaves out the fast source);
#   SPOOLS (default "default auto 0"): `default` runs without --spool, anything else is
#   given as --spool VALUE, and `main` runs MAIN_BIN (another build, e.g. of the main
#   branch) without --spool (left out when MAIN_BIN is unset);
#   SPOOL_DIR (a --spool-dir for every run; default the home's spool/, under WORKDIR);
#   MODEL (default speed=200M,min=70M,buffer=64Mi,reposition=2.5s; `off`: no drive
#   model, the drive as fast as its files, only wall and CPU times measured);
#   TAPEVAULT_BIN (default target/release/tapevault).
# WORKDIR (default a new directory under /dev/shm, emptied first and removed at the end
# unless KEEP=1; bench/common.sh) needs about 2x TOTAL_MIB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-/dev/shm/backup-streaming.$$}
TOTAL=${TOTAL_MIB:-512}
ROUNDS=${ROUNDS:-3}
RATES=${RATES-60 20}
FAST=${FAST:-1}
SPOOLS=${SPOOLS:-default auto 0}
MAIN_BIN=${MAIN_BIN:-}
SPOOL_DIR=${SPOOL_DIR:-}
MODEL=${MODEL:-speed=200M,min=70M,buffer=64Mi,reposition=2.5s}
ID=6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d31
SMALL_ID=6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d32
for t in nbdkit python3; do
  command -v $t >/dev/null || { echo "skipping: $t is not installed" >&2; exit 2; }
done
. "$ROOT/bench/common.sh"
if [ -z "$MAIN_BIN" ]; then
  SPOOLS=$(echo " $SPOOLS " | sed 's/ main / /g')
elif [ ! -x "$MAIN_BIN" ]; then
  echo "no binary at MAIN_BIN=$MAIN_BIN" >&2; exit 2
fi
OUT=$W/results.jsonl
: > "$OUT"
head -c $((TOTAL << 20)) /dev/urandom > "$W/disk.img"
head -c 1048576 /dev/urandom > "$W/small.img"

# run LABEL RATE SPOOL SOURCE: one backup into a fresh home; appends a JSON line.
run() {
  local label=$1 rate=$2 spool=$3 src=$4 bin=$BIN args=()
  case $spool in
    default) ;;
    main) bin=$MAIN_BIN ;;
    *) args+=(--spool "$spool") ;;
  esac
  [ -z "$SPOOL_DIR" ] || args+=(--spool-dir "$SPOOL_DIR")
  rm -rf "$W/home" "$W/home-library"
  "$bin" --home "$W/home" init --slots 2 --drives 1 --capacity 4G --drive-model "$MODEL" >/dev/null 2>&1
  "$bin" --home "$W/home" pool create p --compression off >/dev/null 2>&1
  # A first small session labels the cartridge into the media set, so the session
  # measured appends (a label is written and flushed once in a cartridge's life).
  "$bin" --home "$W/home" --json backup --disk "$W/small.img" --disk-id $SMALL_ID --pool p >/dev/null 2>&1
  cp "$W/home-library/drives/0.stats.json" "$W/before.json" 2>/dev/null || echo '{}' > "$W/before.json"
  local name="$label-$rate-$spool-$round"
  timed "$name" 0 "$bin" --home "$W/home" --json backup --disk "$src" --disk-id $ID --pool p --full "${args[@]}"
  python3 - "$W" "$name" "$label" "$rate" "$spool" "$(cut -d' ' -f1 /proc/loadavg)" >> "$OUT" <<'PY'
import json, sys
w, name, label, rate, spool, load = sys.argv[1:]
keys = ["repositions", "buffer_underruns", "repositioning_ns", "streaming_ns"]
try:
    after = json.load(open(w + "/home-library/drives/0.stats.json"))
except OSError:  # no drive model
    after = {}
before = json.load(open(w + "/before.json"))
st = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
wall = float([l.split()[1] for l in open(w + "/timings") if l.split()[0] == name][-1])
tv = {}
for l in open(w + "/" + name + ".time"):
    k, _, v = l.strip().partition(": ")
    tv[k] = v
cpu = float(tv["User time (seconds)"]) + float(tv["System time (seconds)"])
print(json.dumps({"case": label, "rate": rate, "spool": spool, "wall_s": wall, "cpu_s": cpu,
                  "repositions": st["repositions"], "underruns": st["buffer_underruns"],
                  "repositioning_s": st["repositioning_ns"] / 1e9,
                  "streaming_s": st["streaming_ns"] / 1e9,
                  "repositioning_pct": 100 * st["repositioning_ns"] / 1e9 / wall,
                  "load1": float(load)}))
PY
}

for round in $(seq 1 "$ROUNDS"); do
  if [ "$FAST" = 1 ]; then
    for spool in $SPOOLS; do run fast fast "$spool" "$W/disk.img"; done
  fi
  for rate in $RATES; do
    for spool in $SPOOLS; do
      rm -f "$W/nbd.sock"
      # The rate filter counts bits per second.
      nbdkit --foreground --readonly --exit-with-parent -U "$W/nbd.sock" \
        --filter=rate file "$W/disk.img" rate=$((rate * 8))M burstiness=0.5 &
      NBD=$!
      for _ in $(seq 100); do [ -S "$W/nbd.sock" ] && break; sleep 0.05; done
      run throttled "$rate" "$spool" "nbd+unix:///?socket=$W/nbd.sock"
      kill "$NBD" 2>/dev/null || true
      wait "$NBD" 2>/dev/null || true
      sleep 0.2
    done
  done
done

python3 - "$OUT" <<'PY' | tee -a "$W/results.txt"
import json, statistics as S, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for x in rows:
    by.setdefault((x["case"], x["rate"], x["spool"]), []).append(x)
def mmm(v, f):
    v = sorted(v)
    return " / ".join(f.format(a) for a in (v[0], S.median(v), v[-1]))
print("| source | spool | wall s | CPU s (user+sys) | repositions | repositioning, % of wall time | streaming s | load avg (1 min) |")
print("|---|---|---|---|---|---|---|---|")
for (case, rate, spool), xs in by.items():
    src = "fast (tmpfs)" if case == "fast" else f"NBD, {rate} MB/s"
    print(f"| {src} | {spool} | {mmm([x['wall_s'] for x in xs], '{:.2f}')} | {mmm([x['cpu_s'] for x in xs], '{:.2f}')} "
          f"| {mmm([x['repositions'] for x in xs], '{:.0f}')} "
          f"| {mmm([x['repositioning_pct'] for x in xs], '{:.1f}')} | {mmm([x['streaming_s'] for x in xs], '{:.2f}')} "
          f"| {mmm([x['load1'] for x in xs], '{:.1f}')} |")
PY
