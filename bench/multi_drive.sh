#!/usr/bin/env bash
# A 4-disk VM backed up on one drive and on two drives at once (`backup --drives N`,
# docs/BENCHMARKS.md "Several drives at once"), on the virtual library's drive model
# with the sources on tmpfs, fast enough that the drives, not the source, limit.
# ROUNDS alternating rounds (one drive, two drives, one drive, ...); min / median / max
# wall seconds per case and the ratio two drives / one drive of the medians (issue 18
# item 6: at most 0.6).
#
#   cargo build --release --bin tapevault
#   bench/multi_drive.sh [WORKDIR]
#
# Environment: DISK_MIB (each of the 4 disks, default 512), ROUNDS (3), MODEL (default
# speed=100M,min=35M,buffer=64Mi,reposition=2.5s), TAPEVAULT_BIN (default
# target/release/tapevault). WORKDIR (default a new directory under /dev/shm) needs
# about 2 x 4 x DISK_MIB: the disks and the cartridges written.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-$(mktemp -d /dev/shm/multi-drive.XXXXXX)}
DISK_MIB=${DISK_MIB:-512}
ROUNDS=${ROUNDS:-3}
MODEL=${MODEL:-speed=100M,min=35M,buffer=64Mi,reposition=2.5s}
command -v python3 >/dev/null || { echo "skipping: python3 is not installed" >&2; exit 2; }
. "$ROOT/bench/common.sh"
OUT=$W/results.jsonl
: > "$OUT"

# The VM: 4 disks of random data (incompressible; the pool does not compress anyway).
M=$W/vm.toml
echo 'name = "bench-vm"' > "$M"
for i in 0 1 2 3; do
  head -c $((DISK_MIB << 20)) /dev/urandom > "$W/d$i.img"
  printf '\n[[disk]]\nid = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d4%d"\npath = "%s"\n' "$i" "$W/d$i.img" >> "$M"
done
# Two small disks for the session before the one measured.
S=$W/small.toml
echo 'name = "bench-small"' > "$S"
for i in 0 1; do
  head -c 1048576 /dev/urandom > "$W/s$i.img"
  printf '\n[[disk]]\nid = "6000c298-1f5e-4b0c-a8a4-2f7c3b9e0d5%d"\npath = "%s"\n' "$i" "$W/s$i.img" >> "$S"
done

# run DRIVES: one full backup of the VM into a fresh home; appends a JSON line.
run() {
  local drives=$1
  rm -rf "$W/home" "$W/home-library"
  "$BIN" --home "$W/home" init --slots 6 --drives 2 --capacity 4G --drive-model "$MODEL" >/dev/null 2>&1
  "$BIN" --home "$W/home" pool create p --compression off >/dev/null 2>&1
  # A first small session on both drives labels two cartridges into the media set, so
  # the session measured appends in both cases.
  "$BIN" --home "$W/home" --json backup --manifest "$S" --pool p --drives 2 >/dev/null 2>&1
  local t0 t1
  t0=$(now_s)
  "$BIN" --home "$W/home" --json backup --manifest "$M" --pool p --full --drives "$drives" > "$W/backup.json" 2> "$W/backup.err"
  t1=$(now_s)
  python3 - "$W/backup.json" "$drives" "$t0" "$t1" "$(cut -d' ' -f1 /proc/loadavg)" >> "$OUT" <<'PY'
import json, sys
path, drives, t0, t1, load = sys.argv[1:]
r = json.load(open(path))
carts = sorted({b for i in r["images"] for b in i["barcodes"]})
print(json.dumps({"drives": int(drives), "wall_s": float(t1) - float(t0),
                  "images": len(r["images"]), "cartridges": carts, "load1": float(load)}))
PY
  tail -1 "$OUT" >&2
}

for round in $(seq 1 "$ROUNDS"); do
  run 1
  run 2
done
rm -rf "$W/home" "$W/home-library"

python3 - "$OUT" "$DISK_MIB" "$MODEL" <<'PY'
import json, statistics as S, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mib, model = int(sys.argv[2]), sys.argv[3]
def mmm(v, f="{:.2f}"):
    v = sorted(v)
    return " / ".join(f.format(a) for a in (v[0], S.median(v), v[-1]))
print(f"4 disks x {mib} MiB, drive model {model}")
print("| drives | wall s (min / median / max) | MB/s (median) | cartridges written | load avg (1 min) |")
print("|---|---|---|---|---|")
med = {}
for d in (1, 2):
    xs = [x for x in rows if x["drives"] == d]
    w = [x["wall_s"] for x in xs]
    med[d] = S.median(w)
    carts = max(len(x["cartridges"]) for x in xs)
    print(f"| {d} | {mmm(w)} | {4 * mib * 1048576 / med[d] / 1e6:.0f} | {carts} | {mmm([x['load1'] for x in xs], '{:.1f}')} |")
ratios = sorted(b["wall_s"] / a["wall_s"] for a, b in zip(
    [x for x in rows if x["drives"] == 1], [x for x in rows if x["drives"] == 2]))
print(f"two drives / one drive: {med[2] / med[1]:.2f}x of the median (per round: {' / '.join(f'{r:.2f}' for r in ratios)})")
PY
