#!/usr/bin/env bash
# A 4-disk VM backed up on one drive and on two drives at once (`backup --drives N`,
# docs/BENCHMARKS.md "Several drives at once"), on the virtual library's drive model
# with the sources on tmpfs, fast enough that the drives, not the source, limit.
# ROUNDS alternating rounds (one drive, two drives, one drive, ...; with BASE_BIN, the
# base binary's two runs in the same round); per case min / median / max of the wall
# seconds, the CPU seconds (user + system) and the drive model's counters (streaming
# seconds and repositions, summed over the drives), and the ratio two drives / one
# drive of the medians (issue 18 item 6: at most 0.6).
#
#   cargo build --release --bin tapevault
#   bench/multi_drive.sh [WORKDIR]
#
# Environment: DISK_MIB (each of the 4 disks, default 512), ROUNDS (3), MODEL (default
# speed=100M,min=35M,buffer=64Mi,reposition=2.5s), TAPEVAULT_BIN (default
# target/release/tapevault), BASE_BIN (another build measured in the same rounds),
# KEEP=1 (keep WORKDIR). WORKDIR (default a new directory under /dev/shm) needs about
# 2 x 4 x DISK_MIB: the disks and the cartridges written.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-$(mktemp -d /dev/shm/multi-drive.XXXXXX)}
DISK_MIB=${DISK_MIB:-512}
ROUNDS=${ROUNDS:-3}
MODEL=${MODEL:-speed=100M,min=35M,buffer=64Mi,reposition=2.5s}
BASE_BIN=${BASE_BIN:-}
command -v python3 >/dev/null || { echo "skipping: python3 is not installed" >&2; exit 2; }
[ -z "$BASE_BIN" ] || [ -x "$BASE_BIN" ] || { echo "BASE_BIN=$BASE_BIN is not an executable" >&2; exit 2; }
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

# The drive model's counters of the library in $W/home-library, summed over drives.
drive_stats() {
  python3 - "$W/home-library/drives" <<'PY'
import glob, json, sys
t = {"repositions": 0, "streaming_ns": 0, "buffer_underruns": 0}
for f in glob.glob(sys.argv[1] + "/*.stats.json"):
    s = json.load(open(f))
    for k in t:
        t[k] += s.get(k, 0)
print(json.dumps(t))
PY
}

# run NAME BIN DRIVES: one full backup of the VM into a fresh home (`timed`, common.sh);
# appends a JSON line.
run() {
  local name=$1 bin=$2 drives=$3
  rm -rf "$W/home" "$W/home-library"
  "$bin" --home "$W/home" init --slots 6 --drives 2 --capacity 4G --drive-model "$MODEL" >/dev/null 2>&1
  "$bin" --home "$W/home" pool create p --compression off >/dev/null 2>&1
  # A first small session on both drives labels two cartridges into the media set, so
  # the session measured appends in both cases.
  "$bin" --home "$W/home" --json backup --manifest "$S" --pool p --drives 2 >/dev/null 2>&1
  local before
  before=$(drive_stats)
  timed "$name-$drives" 0 "$bin" --home "$W/home" --json backup --manifest "$M" --pool p --full --drives "$drives"
  python3 - "$W/$name-$drives.out" "$W/$name-$drives.time" "$name" "$drives" \
    "$(tail -1 "$W/timings" | cut -d' ' -f2)" "$(cut -d' ' -f1 /proc/loadavg)" \
    "$before" "$(drive_stats)" >> "$OUT" <<'PY'
import json, sys
out, tfile, name, drives, wall, load, before, after = sys.argv[1:]
r = json.load(open(out))
t = {}
for line in open(tfile):
    k, _, v = line.strip().partition(": ")
    t[k] = v
cpu = float(t["User time (seconds)"]) + float(t["System time (seconds)"])
b, a = json.loads(before), json.loads(after)
carts = sorted({c for i in r["images"] for c in i["barcodes"]})
print(json.dumps({"bin": name, "drives": int(drives), "wall_s": float(wall), "cpu_s": cpu,
                  "streaming_s": (a["streaming_ns"] - b["streaming_ns"]) / 1e9,
                  "repositions": a["repositions"] - b["repositions"],
                  "underruns": a["buffer_underruns"] - b["buffer_underruns"],
                  "images": len(r["images"]), "cartridges": carts, "load1": float(load)}))
PY
  tail -1 "$OUT" >&2
}

for round in $(seq 1 "$ROUNDS"); do
  run new "$BIN" 1
  run new "$BIN" 2
  if [ -n "$BASE_BIN" ]; then
    run base "$BASE_BIN" 1
    run base "$BASE_BIN" 2
  fi
done
rm -rf "$W/home" "$W/home-library"

python3 - "$OUT" "$DISK_MIB" "$MODEL" <<'PY'
import json, statistics as S, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mib, model = int(sys.argv[2]), sys.argv[3]
def mmm(v, f="{:.2f}"):
    v = sorted(v)
    return " / ".join(f.format(a) for a in (v[0], S.median(v), v[-1]))
print(f"4 disks x {mib} MiB, drive model {model}; min / median / max")
print("| binary | drives | wall s | MB/s (median) | CPU s (user + sys) | streaming s (all drives) | repositions | cartridges | load avg (1 min) |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("new", "base"):
    med = {}
    for d in (1, 2):
        xs = [x for x in rows if x["bin"] == name and x["drives"] == d]
        if not xs:
            continue
        w = [x["wall_s"] for x in xs]
        med[d] = S.median(w)
        carts = max(len(x["cartridges"]) for x in xs)
        print(f"| {name} | {d} | {mmm(w)} | {4 * mib * 1048576 / med[d] / 1e6:.0f} | {mmm([x['cpu_s'] for x in xs])} "
              f"| {mmm([x['streaming_s'] for x in xs])} | {mmm([x['repositions'] for x in xs], '{:.0f}')} | {carts} "
              f"| {mmm([x['load1'] for x in xs], '{:.1f}')} |")
    if len(med) == 2:
        one = [x for x in rows if x["bin"] == name and x["drives"] == 1]
        two = [x for x in rows if x["bin"] == name and x["drives"] == 2]
        ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(one, two)]
        print(f"{name}: two drives / one drive {med[2] / med[1]:.2f}x of the medians "
              f"(per round: {' / '.join(f'{r:.2f}' for r in ratios)})")
PY
