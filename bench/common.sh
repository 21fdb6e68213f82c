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
