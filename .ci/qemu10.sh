#!/usr/bin/env bash
# The QEMU and libvirt tests a second time, against QEMU 10 (Debian 12's backports) beside the
# installed 7.2: the packages are downloaded and unpacked into target/qemu10 (not
# installed, the system keeps 7.2), and the tests run with them first on PATH. The
# apt sources, lists and cache used for this are private to that folder; the mirror is
# the one the system's own Debian sources name.
# QEMU10_ROOT names an already unpacked root (its usr/bin/qemu-system-x86_64) to use
# instead of downloading one. The libvirt tests point the domains' <emulator> at the
# unpacked qemu-system-x86_64 and bind-mount its data and module directories over the
# compiled-in ones inside the hand-started libvirtd's private mount namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/target/qemu10
root=${QEMU10_ROOT:-$dir/root}
if [ -n "${QEMU10_ROOT:-}" ] && [ ! -x "$root/usr/bin/qemu-system-x86_64" ]; then
    echo "qemu10: QEMU10_ROOT=$root has no usr/bin/qemu-system-x86_64; unset it to download" >&2
    exit 1
fi
pkgs="qemu-utils qemu-system-x86 qemu-system-common qemu-block-extra qemu-system-data"
if [ ! -x "$root/usr/bin/qemu-system-x86_64" ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 ~ /bookworm/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
    if [ -z "$uri" ]; then
        echo "qemu10: skipped, no Debian mirror found in the system's apt sources" >&2
        exit 0
    fi
    rm -rf "$dir"; mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bookworm-backports main" >"$dir/sources.list"
    opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives"
          -o "APT::Sandbox::User=root")
    if ! apt-get "${opts[@]}" update -qq; then
        echo "qemu10: skipped, bookworm-backports could not be read" >&2
        exit 0
    fi
    want=""
    for p in $pkgs; do want="$want $p/bookworm-backports"; done
    (cd "$dir/debs" && apt-get "${opts[@]}" download -qq $want)
    for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
fi
export PATH="$root/usr/bin:$PATH"
export QEMU_MODULE_DIR="$root/usr/lib/x86_64-linux-gnu/qemu"
qemu-system-x86_64 --version | head -1 >&2
qemu-nbd --version | head -1 >&2
case "$(qemu-img --version | head -1)" in
    *"version 10."*) ;;
    *) echo "qemu10: the unpacked qemu-img is not version 10" >&2; exit 1 ;;
esac
cargo test -p nbd-client --test qemu
cargo test -p tapevault --lib -- source::qemu_image source::nbd
cargo test -p tapevault --test qemu_image --test qmp_live --test qmp_backup
cargo test -p tapevault --test libvirt_backup -- --test-threads=1
