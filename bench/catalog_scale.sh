#!/usr/bin/env bash
# Big catalogs and long snapshot histories (issue 18 item 4; see docs/BENCHMARKS.md,
# "Long chains and big catalogs").
#
#   cargo build --release --bin tapevault
#   bench/catalog_scale.sh [WORKDIR]
#
# 1. A real home and library with one small real backup; then a generator inserts
#    IMAGES images (DISKS disks, each a full and IMAGES/DISKS-1 incrementals, one
#    session per "night", one segment and two extents per image, on a cartridge of the
#    same media set that is kept in the vault) straight into catalog.db with SQL.
#    The generator is this script (Python's sqlite3), not tapevault: the rows copy
#    the real image's columns.
# 2. Times ROUNDS alternating rounds of: `images` (all), `images --json` (all),
#    `images --disk` (one chain of IMAGES/DISKS), restore planning (`restore` of the
#    newest point of one disk, which plans, prints the pull list and stops with exit 4
#    since its cartridge is in the vault), `rotate --dry-run`, and a fast-path `catalog rebuild` into a fresh
#    home (its snapshot holds every generated image: a backup session after the
#    generation wrote a full snapshot of the set). With REBUILD_ONLY=1 only the
#    rebuild: for an OTHER_BIN of an older catalog schema, which cannot open the
#    generated catalog but rebuilds from its cartridges into a home of its own.
# 3. The snapshot each session writes: SESSIONS more small incremental backups into
#    the big set; their snapshot kind (full/delta) and plain length from catalog.db,
#    and the backup wall time.
# Reports catalog.db's size per image.
#
# Environment: IMAGES (default 100000), DISKS (default 1000), UUIDS (random, as
# tapevault makes them, or ordered: ascending in the order taken), ROUNDS (default 3),
# SESSIONS (default 6), TAPEVAULT_BIN, KEEP=1. With OTHER_BIN (another tapevault
# binary, e.g. main's), each round times every command with both binaries one after
# the other on the same catalog (names `...-other`), for side-by-side ratios; the
# summary also gives each command's CPU seconds (user + system), which depend less on
# the load of a shared machine than the wall time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TAPEVAULT_BIN:-$ROOT/target/release/tapevault}
W=${1:-${TMPDIR:-/tmp}/tapevault-catscale}
IMAGES=${IMAGES:-100000}
DISKS=${DISKS:-1000}
ROUNDS=${ROUNDS:-3}
SESSIONS=${SESSIONS:-6}
DISK_ID=0c0c0c0c-1111-4222-8333-444444444444

. "$ROOT/bench/common.sh"

HOME_DIR=$W/home
tv() { "$BIN" --home "$HOME_DIR" "$@"; }

tv init --library "$W/library" --capacity 2G --slots 4 >/dev/null
tv pool create p --compression off >/dev/null
head -c $((4 << 20)) /dev/urandom > "$W/disk.img"
tv backup --disk "$W/disk.img" --disk-id "$DISK_ID" --pool p >/dev/null 2>&1

python3 - "$HOME_DIR/catalog.db" "$IMAGES" "$DISKS" <<'EOF'
import sqlite3, sys, uuid, datetime, os
db, n, disks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per = n // disks
c = sqlite3.connect(db)
c.row_factory = sqlite3.Row
img = dict(c.execute("SELECT * FROM images LIMIT 1").fetchone())
ses = dict(c.execute("SELECT * FROM sessions LIMIT 1").fetchone())
med = dict(c.execute("SELECT * FROM media WHERE media_set_uuid IS NOT NULL LIMIT 1").fetchone())
seq = c.execute("SELECT MAX(seq_in_set) FROM media WHERE media_set_uuid=?", (med["media_set_uuid"],)).fetchone()[0]
gen = dict(med, barcode="GEN000L8", volume_uuid=str(uuid.uuid4()), seq_in_set=seq + 1,
           state="full", location="vault", next_tape_file=n + 1)
c.execute(f"INSERT INTO media ({','.join(gen)}) VALUES ({','.join('?' * len(gen))})", list(gen.values()))
base = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
t = lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
size = 1 << 30
chunk = 1 << 20
tf = 1
ordered = os.environ.get("UUIDS", "random") == "ordered"
prev = [None] * disks
for night in range(per):
    s = dict(ses, uuid=str(uuid.uuid4()), started=t(base + datetime.timedelta(days=night)),
             finished=t(base + datetime.timedelta(days=night, hours=1)), status="complete", writer=None)
    c.execute(f"INSERT INTO sessions ({','.join(s)}) VALUES ({','.join('?' * len(s))})", list(s.values()))
    rows, segs, exts = [], [], []
    for d in range(disks):
        # Random (version 4) image UUIDs as tapevault makes them, unless UUIDS=ordered
        # (ascending in the order the images were taken, as older runs of this script
        # generated them: the best case for the catalog's B-trees).
        u = str(uuid.UUID(int=(night << 32) | d | (1 << 100))) if ordered else str(uuid.uuid4())
        parent = prev[d] if night > 0 else None
        prev[d] = u
        when = base + datetime.timedelta(days=night, seconds=d)
        r = dict(img, uuid=u, disk_uuid=str(uuid.UUID(int=d | (7 << 120))), vm_name=f"vm{d}",
                 kind="full" if night == 0 else "incremental", parent_uuid=parent,
                 disk_size=size, session_uuid=s["uuid"], started=t(when), finished=t(when),
                 status="complete", digest_list=None, note=None, writer=None,
                 plain_bytes=chunk, stored_bytes=chunk, records=2)
        rows.append(r)
        off = (night * 4 + d) % (size // chunk) * chunk
        segs.append((u, 0, "GEN000L8", tf, 10 * tf, 10 * tf + 1, 0, 1, off, off + chunk))
        if night == 0:
            if off > 0:
                exts.append((u, 0, off, 0, 1))
            exts.append((u, off, chunk, 1, 0))
            if off + chunk < size:
                exts.append((u, off + chunk, size - off - chunk, 0, 1))
        else:
            exts.append((u, off, chunk, 1, 0))
        tf += 1
    cols = list(rows[0])
    c.executemany(f"INSERT INTO images ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                  [list(r.values()) for r in rows])
    c.executemany("INSERT INTO segments (image_uuid, part, barcode, tape_file, first_block, last_block, "
                  "first_seq, last_seq, disk_start, disk_end) VALUES (?,?,?,?,?,?,?,?,?,?)", segs)
    c.executemany("INSERT INTO image_extents (image_uuid, offset, length, is_zero) VALUES (?,?,?,?)",
                  [(e[0], e[1], e[2], e[4]) for e in exts])  # (image, offset, length, is data, is zero)
c.commit()
print(f"generated {per * disks} images, {disks} disks x {per}", file=sys.stderr)
EOF
# A real backup session now writes a full snapshot of the set, generated images included.
timed gen-backup 0 "$BIN" --home "$HOME_DIR" backup --disk "$W/disk.img" --disk-id "$DISK_ID" --pool p
tv catalog check >/dev/null 2>&1 || true
DB_BYTES=$(stat -c %s "$HOME_DIR/catalog.db")
NIMG=$(sqlite3 "$HOME_DIR/catalog.db" "SELECT COUNT(*) FROM images")
log "catalog.db: $DB_BYTES bytes for $NIMG images: $((DB_BYTES / NIMG)) bytes per image"
sqlite3 "$HOME_DIR/catalog.db" "SELECT kind, plain_len FROM snapshots ORDER BY rowid DESC LIMIT 1" | sed 's/^/last snapshot (kind|plain bytes): /' | tee -a "$W/results.txt" >&2

ONE_DISK=$(python3 -c "import uuid; print(uuid.UUID(int=17 | (7 << 120)))")
# cpu NAME: the user + system seconds of the latest `timed NAME` (appended to $W/cpu).
cpu() {
  awk -F': ' -v n="$1" '/User time|System time/ {s += $2} END {printf "%s %.3f\n", n, s}' "$W/$1.time" >> "$W/cpu"
}
round() { # round SUFFIX BIN
  local r=$1 B=$2
  [ "${REBUILD_ONLY:-0}" = 1 ] || catalog_round "$r" "$B"
  rm -rf "$W/rebuilt-$r"
  "$B" --home "$W/rebuilt-$r" init --library "$W/library" >/dev/null
  sync  # the rebuild's own writes, not the ones before it, are what its fsyncs wait for
  timed "rebuild-$r" 0 "$B" --home "$W/rebuilt-$r" catalog rebuild; cpu "rebuild-$r"
  log "  rebuilt catalog: $(sqlite3 "$W/rebuilt-$r/catalog.db" "SELECT COUNT(*) FROM images") images, $(stat -c %s "$W/rebuilt-$r/catalog.db") bytes"
  rm -rf "$W/rebuilt-$r" "$W/out-$r.img"
}
catalog_round() { # the commands on the generated catalog
  local r=$1 B=$2
  timed "images-$r" 0 "$B" --home "$HOME_DIR" images; cpu "images-$r"
  timed "images-json-$r" 0 "$B" --home "$HOME_DIR" images --json; cpu "images-json-$r"
  timed "images-disk-$r" 0 "$B" --home "$HOME_DIR" images --disk "$ONE_DISK"; cpu "images-disk-$r"
  timed "restore-plan-$r" any "$B" --home "$HOME_DIR" restore --disk "$ONE_DISK" --to "$W/out-$r.img"; cpu "restore-plan-$r"
  timed "rotate-dry-$r" 0 "$B" --home "$HOME_DIR" rotate --dry-run; cpu "rotate-dry-$r"
}
for r in $(seq 1 "$ROUNDS"); do
  log "round $r"
  round "$r" "$BIN"
  [ -n "${OTHER_BIN:-}" ] && round "$r-other" "$OTHER_BIN"
  rm -f "$W"/images*.out  # the listings of 100 k images (up to 89 MB each)
done

log "sessions after the big catalog (snapshot kind, plain bytes, backup wall time):"
for s in $(seq 1 "$SESSIONS"); do
  printf '\x01%08d' "$s" | dd of="$W/disk.img" bs=4096 seek=$((s * 7)) conv=notrunc status=none
  timed "session-$s" 0 "$BIN" --home "$HOME_DIR" backup --disk "$W/disk.img" --disk-id "$DISK_ID" --pool p
  sqlite3 "$HOME_DIR/catalog.db" "SELECT kind, plain_len FROM snapshots ORDER BY rowid DESC LIMIT 1" | sed 's/^/  snapshot: /' | tee -a "$W/results.txt" >&2
done
# summary FILE KEY SUFFIX-PATTERN UNIT: min / median / max of the rounds' values.
summary() {
  { grep -E "^$2-[0-9]+$3 " "$1" || true; } | awk '{print $2}' | sort -n | awk -v k="$2${4}" '{a[NR]=$1} END {if (NR) printf "%-26s min %.3f  median %.3f  max %.3f s\n", k, a[1], a[int((NR+1)/2)], a[NR]}' | tee -a "$W/results.txt" >&2
}
for k in images images-json images-disk restore-plan rotate-dry rebuild; do
  summary "$W/timings" "$k" "" ""
  summary "$W/cpu" "$k" "" " (cpu)"
  if [ -n "${OTHER_BIN:-}" ]; then
    summary "$W/timings" "$k" "-other" " other"
    summary "$W/cpu" "$k" "-other" " other (cpu)"
  fi
done
[ -n "${RESULTS_OUT:-}" ] && cp "$W/results.txt" "$RESULTS_OUT"
true
