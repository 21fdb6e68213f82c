#!/usr/bin/env bash
# Streaming benchmark of the virtual tape drive next to dd on the same filesystem.
# Usage: bench/vtl_stream.sh [WORK_DIR] [TOTAL_BYTES] [BLOCK_BYTES] [ROUNDS]
# WORK_DIR (default: a new directory under the current one) needs 2 x TOTAL_BYTES free.
# Each round writes with dd (conv=fsync) and through the virtual drive (flush = fsync),
# then reads both back, alternating which goes first (on virtual disks with burst
# credits the second writer of a round is throttled, whoever it is), with SETTLE seconds
# (default 15) of sync + pause between steps. Use an even ROUNDS (default 4) so both go
# first equally often; the geometric mean of the per-round ratios is the headline.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d ./vtl-bench.XXXXXX)}
TOTAL=${2:-$((2 * 1024 * 1024 * 1024))}
BS=${3:-$((256 * 1024))}
ROUNDS=${4:-4}
COUNT=$((TOTAL / BS))
mkdir -p "$WORK"
cargo build --release -p vtl-sim --example vtl_stream >&2
BIN=target/release/examples/vtl_stream

now() { python3 -c 'import time; print(f"{time.time():.6f}")'; }
rate() { python3 -c "print(f'{$1/($3-$2)/1e6:.1f}')"; }
mbps() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['mb_per_s'])" "$1"; }

dd_write() { local t0 t1; t0=$(now); dd if=/dev/zero of="$WORK/dd.img" bs="$BS" count="$COUNT" conv=fsync status=none; t1=$(now); rate "$TOTAL" "$t0" "$t1"; }
dd_read() { local t0 t1; t0=$(now); dd if="$WORK/dd.img" of=/dev/null bs="$BS" status=none; t1=$(now); rate "$TOTAL" "$t0" "$t1"; }
vtl_write() { mbps "$("$BIN" write "$WORK/lib" "$TOTAL" "$BS")"; }
vtl_read() { mbps "$("$BIN" read "$WORK/lib" "$TOTAL" "$BS")"; }

# Let writeback of the previous step finish so it does not slow the next one.
settle() { sync; sleep "${SETTLE:-15}"; }

RESULTS=()
for r in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/lib" "$WORK/dd.img"; settle
    if [ $((r % 2)) -eq 1 ]; then DW=$(dd_write); settle; VW=$(vtl_write); else VW=$(vtl_write); settle; DW=$(dd_write); fi
    sync
    if [ $((r % 2)) -eq 1 ]; then DR=$(dd_read); VR=$(vtl_read); else VR=$(vtl_read); DR=$(dd_read); fi
    echo "round $r: write dd $DW vtl $VW MB/s; read dd $DR vtl $VR MB/s" >&2
    RESULTS+=("$DW,$VW,$DR,$VR")
done
LOC=$("$BIN" locate "$WORK/lib" "$TOTAL" "$BS")
rm -rf "$WORK/lib" "$WORK/dd.img"
rmdir "$WORK" 2>/dev/null || true

python3 - "$LOC" "${RESULTS[@]}" <<'PY'
import json, statistics, sys
l = json.loads(sys.argv[1])
rows = [list(map(float, a.split(","))) for a in sys.argv[2:]]
for i, (dw, vw, dr, vr) in enumerate(rows, 1):
    print(f"round {i}: write dd {dw:.0f} vtl {vw:.0f} MB/s ratio {vw/dw:.2f}; read dd {dr:.0f} vtl {vr:.0f} MB/s ratio {vr/dr:.2f}")
med = lambda k: statistics.median(r[k] for r in rows)
gm = lambda a, b: statistics.geometric_mean(r[b] / r[a] for r in rows)
print(f"write: median dd {med(0):.0f} MB/s, vtl {med(1):.0f} MB/s; ratio vtl/dd geometric mean {gm(0, 1):.2f}")
print(f"read:  median dd {med(2):.0f} MB/s, vtl {med(3):.0f} MB/s; ratio vtl/dd geometric mean {gm(2, 3):.2f}")
print(f"locate over {l['objects']} objects: median {l['median_us']} us, p99 {l['p99_us']} us, max {l['max_us']} us; "
      f"locate+read median {l['locate_read_median_us']} us, p99 {l['locate_read_p99_us']} us")
PY
