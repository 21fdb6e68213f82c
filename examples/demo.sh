#!/usr/bin/env bash
# The main job on the embedded default: a virtual tape library in a temporary directory.
# Builds tapevault, makes a sample VM of three disks, takes a full backup and two
# incrementals (one from a changed-extents file, one by hash scan), restores every point
# in time of every disk and checks each is bit-identical to the disk as it was.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
TV="$PWD/target/release/tapevault"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tapevault-demo.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export TAPEVAULT_HOME="$WORK/home"
cd "$WORK"

step() { printf '\n== %s\n' "$*"; }

step "a virtual library: 8 slots, 2 drives, 4 mail slots, 256 MiB cartridges"
"$TV" init --slots 8 --drives 2 --mailslots 4 --capacity 256M
"$TV" pool create demo
"$TV" library status

step "a sample VM of three disks (random data, zero areas, an odd size)"
mkdir vm points
head -c 24M /dev/urandom > vm/system.img
truncate -s 48M vm/system.img                      # 24 MiB of data, 24 MiB of zeros
head -c 8M /dev/urandom > vm/data.img
head -c 3M /dev/urandom > vm/swap.img
truncate -s 5242881 vm/swap.img                     # not a multiple of the block size
SYS=6f1c0b2e-7d3a-4e55-9a71-0c2b9d1e0a01
DAT=6f1c0b2e-7d3a-4e55-9a71-0c2b9d1e0a02
SWP=6f1c0b2e-7d3a-4e55-9a71-0c2b9d1e0a03
# The system disk's hypervisor tracks changed blocks (VMware CBT style): each backup
# gets a changed-extents file relative to the previous change id. The other disks are
# compared block by block against the previous image (hash scan).
manifest() {  # manifest CBT-FILE
    cat > vm/demo.toml <<TOML
name = "demo-vm"
[[disk]]
id = "$SYS"
label = "system"
path = "system.img"
changed_extents = "$1"
[[disk]]
id = "$DAT"
label = "data"
path = "data.img"
[[disk]]
id = "$SWP"
label = "swap"
path = "swap.img"
TOML
    "$TV" manifest check vm/demo.toml > /dev/null
}
cbt() {  # cbt FILE FROM TO START:LENGTH...
    local f=$1 from=$2 to=$3; shift 3
    local areas="" sep=""
    for a in "$@"; do areas="$areas$sep{\"start\": ${a%%:*}, \"length\": ${a##*:}}"; sep=", "; done
    printf '{"from_change_id": "%s", "change_id": "%s", "changed_area": [%s]}\n' "$from" "$to" "$areas" > "$f"
}

# The image each backup took of each disk, in manifest order, from its summary lines.
# The result line of each disk: "disk UUID: KIND [(METHOD)] image UUID: ..." (other lines,
# such as the reasons a backup gives, may name images too).
images() { sed -n -E 's/^disk [0-9a-f-]{36}: (full|incremental|copy)( \([a-z-]+\))? image ([0-9a-f-]{36}): .*/\3/p'; }
save() { for d in system data swap; do cp --sparse=always "vm/$d.img" "points/$d.$1"; done; }

step "full backup"
cbt vm/cbt0.json "*" "52 0f 1" "0:$((48 << 20))"
manifest cbt0.json
"$TV" backup --manifest vm/demo.toml --pool demo 2>&1 | tee full.log
save 0

step "change blocks: overwrite, zero an area, grow the data disk"
dd if=/dev/urandom of=vm/system.img bs=64K count=16 seek=100 conv=notrunc status=none
dd if=/dev/zero of=vm/system.img bs=64K count=8 seek=10 conv=notrunc status=none
cbt vm/cbt1.json "52 0f 1" "52 0f 2" "$((100 << 16)):$((16 << 16))" "$((10 << 16)):$((8 << 16))"
manifest cbt1.json
head -c 2M /dev/urandom >> vm/data.img
"$TV" backup --manifest vm/demo.toml --pool demo 2>&1 | tee inc1.log
save 1

step "change more blocks"
dd if=/dev/urandom of=vm/system.img bs=64K count=4 seek=300 conv=notrunc status=none
cbt vm/cbt2.json "52 0f 2" "52 0f 3" "$((300 << 16)):$((4 << 16))"
manifest cbt2.json
dd if=/dev/urandom of=vm/swap.img bs=4K count=3 seek=17 conv=notrunc status=none
"$TV" backup --manifest vm/demo.toml --pool demo 2>&1 | tee inc2.log
save 2

"$TV" images || true
"$TV" media list

step "restore every point in time of every disk and compare"
n=0
for point in 0 1 2; do
    file=(full.log inc1.log inc2.log)
    mapfile -t ids < <(images < "${file[$point]}")
    i=0
    for d in system data swap; do
        # A disk is named by VM/LABEL (or its UUID, or a unique prefix of it).
        "$TV" restore --disk "demo-vm/$d" --image "${ids[$i]}" --to "restored.$d.$point" > /dev/null
        cmp "restored.$d.$point" "points/$d.$point"
        echo "point $point, disk $d: bit-identical"
        n=$((n+1))
        i=$((i+1))
    done
done
echo
echo "demo passed: $n restores, every one bit-identical"
