#!/usr/bin/env bash
# Tape-to-tape copy benchmark (docs/BENCHMARKS.md, "Tape-to-tape copies"): in each round,
# the same library directory gets a full backup of a random disk, then the raw virtual
# drive's write and read speed is measured (vtl-sim's vtl_stream example, 512 KiB blocks,
# the same bytes), then `tapevault copy` of the image to another pool with two drives.
# The copy's throughput (the image's data bytes over the copy's time) is compared with
# the slower of the drive's read and write in the same round.
# Usage: bench/copy.sh [WORK_DIR] [DISK_MIB] [ROUNDS] [MODEL_SPEC|off]
# WORK_DIR (default: a new directory under /dev/shm, else under the current one) needs
# about 4 x DISK_MIB free. MODEL_SPEC (default speed=200M,min=70M,buffer=64Mi,reposition=2.5s)
# is vtl-sim's drive model (docs/OPERATIONS.md section 10) for every drive of the run:
# drives run at a tape's speed, as a real copy would; `off` measures the unthrottled
# drive (the page cache).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${1:-}" ]; then WORK=$1; elif [ -d /dev/shm ]; then WORK=$(mktemp -d /dev/shm/copy-bench.XXXXXX); else WORK=$(mktemp -d ./copy-bench.XXXXXX); fi
MIB=${2:-512}
ROUNDS=${3:-3}
MODEL=${4:-speed=200M,min=70M,buffer=64Mi,reposition=2.5s}
PROFILE=${PROFILE:-release}
mkdir -p "$WORK"
if [ "$PROFILE" = release ]; then
  cargo build --release -p tapevault --bin tapevault -p vtl-sim --example vtl_stream >&2
else
  cargo build -p tapevault --bin tapevault -p vtl-sim --example vtl_stream >&2
fi
TV=target/$PROFILE/tapevault
VS=target/$PROFILE/examples/vtl_stream
export VTL_SIM_DRIVE_MODEL=$MODEL
OUT="$WORK/results.jsonl"
: > "$OUT"
DISK_ID=c0b1e000-0000-4000-8000-000000000001
head -c $((MIB << 20)) /dev/urandom > "$WORK/disk.img"
for round in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/home" "$WORK/home-library" "$WORK/raw"
  tv() { "$TV" --home "$WORK/home" --json "$@"; }
  tv init --slots 8 --drives 2 --capacity $(((MIB * 2 + 256) << 20)) > /dev/null
  tv pool create src --compression off > /dev/null
  tv pool create dst --compression off > /dev/null
  IMG=$(tv backup --disk "$WORK/disk.img" --disk-id "$DISK_ID" --pool src --full |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["image"])')
  W=$("$VS" write "$WORK/raw" $((MIB << 20)) 524288)
  R=$("$VS" read "$WORK/raw" $((MIB << 20)) 524288)
  rm -rf "$WORK/raw"
  sync
  # Repositions and buffer underruns of the library's drives so far (drive model statistics).
  repos() { python3 -c 'import glob,json,sys; st=[json.load(open(f)) for f in glob.glob(sys.argv[1] + "/home-library/drives/*.stats.json")]; print(sum(x.get("repositions", 0) for x in st) * 1000 + sum(x.get("buffer_underruns", 0) for x in st))' "$WORK"; }
  P0=$(repos)
  T0=$(date +%s.%N)
  C=$(tv copy --image "$IMG" --to-pool dst)
  T1=$(date +%s.%N)
  P1=$(repos)
  python3 - "$round" "$W" "$R" "$C" "$T0" "$T1" "$((P1 - P0))" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY' | tee -a "$OUT"
import json, sys
rnd, w, r, c, t0, t1 = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
repositions, underruns, load = int(sys.argv[7]) // 1000, int(sys.argv[7]) % 1000, float(sys.argv[8])
img = c["copied"][0]
copy = img["data_bytes"] / img["seconds"] / 1e6
slower = min(w["mb_per_s"], r["mb_per_s"])
print(json.dumps({"round": int(rnd), "drive_write_mb_s": w["mb_per_s"], "drive_read_mb_s": r["mb_per_s"],
                  "copy_mb_s": round(copy, 1), "copy_command_s": round(t1 - t0, 2),
                  "ratio": round(copy / slower, 3), "mode": c["mode"],
                  "target_cartridges": len(img["barcodes"]), "repositions": repositions, "underruns": underruns, "load": load}))
PY
done
rm -rf "$WORK/home" "$WORK/home-library" "$WORK/disk.img"
python3 - "$OUT" <<'PY'
import json, statistics as S, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def mmm(k):
    v = sorted(x[k] for x in rows)
    return f"{v[0]} / {S.median(v)} / {v[-1]}"
print("| drive write MB/s | drive read MB/s | copy MB/s | copy / slower of read and write | copy command s |")
print("|---|---|---|---|---|")
print(f"| {mmm('drive_write_mb_s')} | {mmm('drive_read_mb_s')} | {mmm('copy_mb_s')} | {mmm('ratio')} | {mmm('copy_command_s')} |")
PY
