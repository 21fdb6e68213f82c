#!/usr/bin/env bash
# Drive streaming benchmark (docs/BENCHMARKS.md, "Drive streaming"): a modelled virtual
# drive fed by a source throttled to several rates, ROUNDS alternating rounds.
# Usage: bench/drive_streaming.sh [WORK_DIR] [TOTAL_MIB] [ROUNDS] [MODEL_SPEC]
# WORK_DIR (default: a new directory under /dev/shm, or under the current one when there
# is no /dev/shm) needs TOTAL_MIB free. Prints one JSON line per run, then a summary
# (min / median / max per rate) when python3 is available. Results stay in WORK_DIR/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${1:-}" ]; then WORK=$1; elif [ -d /dev/shm ]; then WORK=$(mktemp -d /dev/shm/drive-bench.XXXXXX); else WORK=$(mktemp -d ./drive-bench.XXXXXX); fi
TOTAL=${2:-512}
ROUNDS=${3:-3}
MODEL=${4:-speed=200M,min=70M,buffer=64Mi,reposition=2.5s}
RATES=${RATES:-400 150 100 85 60 35 20}
mkdir -p "$WORK"
cargo build --release -p vtl-sim --example drive_streaming >&2
BIN=target/release/examples/drive_streaming
OUT="$WORK/results.jsonl"
: > "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for rate in $RATES; do
    rm -rf "$WORK/lib"
    "$BIN" "$WORK/lib" "$rate" "$TOTAL" "$MODEL" | tee -a "$OUT"
    rm -rf "$WORK/lib"
  done
done
command -v python3 >/dev/null || exit 0
python3 - "$OUT" <<'PY'
import json, statistics as S, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for x in rows:
    by.setdefault(x["source_mb_s"], []).append(x)
def mmm(v, f):
    v = sorted(v)
    return " / ".join(f.format(a) for a in (v[0], S.median(v), v[-1]))
print("| source MB/s | end to end MB/s | wall s | repositions | repositioning, % of wall time | streaming s | host held back s |")
print("|---|---|---|---|---|---|---|")
for rate in sorted(by, reverse=True):
    xs = by[rate]
    print(f"| {rate:.0f} | {mmm([x['mb_s'] for x in xs], '{:.1f}')} | {mmm([x['seconds'] for x in xs], '{:.2f}')} "
          f"| {mmm([x['repositions'] for x in xs], '{:.0f}')} | {mmm([100 * x['repositioning_fraction'] for x in xs], '{:.1f}')} "
          f"| {mmm([x['streaming_s'] for x in xs], '{:.2f}')} | {mmm([x['host_wait_s'] for x in xs], '{:.2f}')} |")
PY
