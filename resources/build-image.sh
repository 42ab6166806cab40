#!/usr/bin/env bash
# Build the hull guest root image: a read-only erofs holding hull-agent as /sbin/init, the
# device self-test (/usr/libexec/hull/guest-test, run by the agent only when the kernel
# command line says hull.run=...), a busybox container rootfs for end-to-end tests and
# benchmarks (/usr/share/hull/rootfs/busybox) and the directory skeleton PID 1 mounts onto.
# Cached under $HULL_CACHE/image (default
# /var/cache/hull/image) by a hash of the agent binary and this script; prints the image
# path as its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${HULL_CACHE:-/var/cache/hull}/image"
target=x86_64-unknown-linux-gnu

die() { echo "resources/build-image.sh: $*" >&2; exit 1; }
command -v mkfs.erofs >/dev/null || die "mkfs.erofs not found; apt-get install erofs-utils"
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox not found; apt-get install busybox-static"

# The agent is PID 1 of a minimal guest with no shared libraries: link it statically.
# Building for an explicit --target keeps these flags away from build scripts and the host
# binaries.
echo "guest image: building hull-agent (static, with libcontainer and libseccomp; three to five minutes the first time)" >&2
# libseccomp-sys links the shared library unless told otherwise; a static-pie that still
# needs libseccomp.so.2 crashes before main.
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
    cargo build --release -p hull-agent --target "$target")
agent="$repo/target/$target/release/hull-agent"
guest_test="$repo/target/$target/release/hull-guest-test"
for bin in "$agent" "$guest_test"; do
    [ -x "$bin" ] || die "cargo did not produce $bin"
    if readelf -l "$bin" | grep -q INTERP || readelf -d "$bin" | grep -q NEEDED; then
        die "$bin is dynamically linked"
    fi
done

hash="$( { sha256sum "$agent" "$guest_test" "$busybox" | cut -d' ' -f1; cat "$here/build-image.sh"; } | sha256sum | cut -c1-16)"
out="$cache/rootfs-$hash.erofs"
if [ -f "$out" ]; then
    ln -sfn "$(basename "$out")" "$cache/rootfs.erofs"
    echo "guest image: cached ($hash)" >&2
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
stage="$(mktemp -d "$cache/stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{sbin,dev,proc,sys,run,tmp,etc,root,usr/libexec/hull}
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
install -m 0755 "$agent" "$stage/sbin/init"
install -m 0755 "$guest_test" "$stage/usr/libexec/hull/guest-test"
# The kernel opens /dev/console on the root filesystem before it starts init, which is
# before the agent mounts devtmpfs: the node has to be in the image.
# A container rootfs (read-only, like the image): mount points exist, since nothing can
# create them at run time.
ctr="$stage/usr/share/hull/rootfs/busybox"
mkdir -p "$ctr"/{bin,dev,proc,sys,tmp,etc,root,run}
install -m 0755 "$busybox" "$ctr/bin/busybox"
for applet in sh echo cat sleep true false ls id hostname stty mkdir touch; do
    ln -s busybox "$ctr/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ctr/etc/passwd"
printf 'root:x:0:\n' > "$ctr/etc/group"
# Bind-mount targets for the sandbox's hostname, hosts and resolv.conf.
: > "$ctr/etc/hostname"; : > "$ctr/etc/hosts"; : > "$ctr/etc/resolv.conf"
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3
printf 'root:x:0:0:root:/root:/sbin/init\n' > "$stage/etc/passwd"
printf 'root:x:0:\n' > "$stage/etc/group"
: > "$stage/etc/hostname"

echo "guest image: mkfs.erofs" >&2
# Uncompressed: the guest kernel pays per instruction for decompression, the host not at all
# for a few hundred KiB more image. Fixed timestamps and UUID keep the image reproducible.
mkfs.erofs --quiet -T0 -U 00000000-0000-0000-0000-000000000000 --all-root "$out.tmp" "$stage" >&2
mv "$out.tmp" "$out"
ln -sfn "$(basename "$out")" "$cache/rootfs.erofs"
echo "guest image: built $out ($(du -h "$out" | cut -f1))" >&2
echo "$out"
