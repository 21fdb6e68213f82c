#!/usr/bin/env bash
# Real-stack tape tests: the Linux st/ch/sg drivers in a QEMU guest against two tape
# libraries on loopback, tgt's emulated drives and changer and tapevault's own target
# (`tapevault library serve`), plus the peer tools' suites (mt-st, tar, mtx, sg3-utils,
# stenc, Bacula's btape) against ours (see tests/real-tape/run.sh).
# Installs the Debian packages it needs, builds the binaries under test, runs the guest.
#
# env: TAPEVAULT_BIN   use this tapevault binary instead of building one
#      RT_SKIP_INSTALL set to skip apt-get (packages already present)
#      RT_PHASES, RT_TIMEOUT, RT_KEEP: passed to tests/real-tape/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

packages="tgt qemu-system-x86 qemu-block-extra linux-image-amd64 busybox-static mt-st mtx sg3-utils cpio xz-utils
  tar stenc bacula-sd"
if [ -z "${RT_SKIP_INSTALL:-}" ]; then
    missing=""
    for p in $packages; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        echo "real-tape: installing$missing" >&2
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        # Installing qemu-system-x86 may replace a newer qemu-utils with Debian's: fine here.
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    fi
fi

if [ -n "${TAPEVAULT_BIN:-}" ]; then
    bin=$TAPEVAULT_BIN
    cargo build --example st_smoke
else
    cargo build --bin tapevault --example st_smoke
    bin=target/debug/tapevault
fi
exec tests/real-tape/run.sh "$bin" target/debug/examples/st_smoke
