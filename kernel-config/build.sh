#!/usr/bin/env bash
# Build the hull guest kernel: an uncompressed vmlinux from Debian's linux-source-6.12,
# tinyconfig + hull-guest.config + patches/*.patch.
#
# The result is cached under $HULL_CACHE/kernel (default /var/cache/hull/kernel) by a
# hash of (source version, fragment, patches, this script); a second run with the same
# inputs only prints the path. Prints the vmlinux path as its last line.
#
#   kernel-config/build.sh            build (or reuse) and print the path
#   kernel-config/build.sh --print    print the path the current inputs map to
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HULL_CACHE:-/var/cache/hull}/kernel"
# shellcheck source=/dev/null
. <(grep -E '^(package|version|tarball)=' "$here/VERSION")

die() { echo "kernel-config/build.sh: $*" >&2; exit 1; }

inputs_hash() {
    {
        echo "$version"
        cat "$here/hull-guest.config"
        cat "$here/build.sh"
        # Patch names, not paths: the cache must not depend on where the checkout lives.
        for p in "$here"/patches/*.patch; do [ -e "$p" ] && { basename "$p"; cat "$p"; }; done
    } | sha256sum | cut -c1-16
}

hash="$(inputs_hash)"
out="$cache/vmlinux-$hash"
if [ "${1:-}" = "--print" ]; then echo "$out"; exit 0; fi
if [ -f "$out" ]; then
    ln -sfn "$(basename "$out")" "$cache/vmlinux"
    echo "guest kernel: cached ($hash)" >&2
    echo "$out"
    exit 0
fi

installed="$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || true)"
[ -n "$installed" ] || die "$package is not installed; run: apt-get install $package=$version"
[ "$installed" = "$version" ] || die "$package $installed is installed but hull pins $version \
(kernel-config/VERSION); install the pinned one (apt-get install $package=$version) or update the pin and re-test"
[ -f "$tarball" ] || die "$tarball missing; reinstall $package"

mkdir -p "$cache"
work="$cache/build-$hash"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
echo "guest kernel: extracting $package $version" >&2
tar -C "$work" -xf "$tarball"
src="$work/linux-source-6.12"

for p in "$here"/patches/*.patch; do
    [ -e "$p" ] || continue
    echo "guest kernel: applying $(basename "$p")" >&2
    patch -d "$src" -p1 --quiet --forward < "$p" || die "patch $(basename "$p") does not apply to $version"
done

echo "guest kernel: configuring (tinyconfig + hull-guest.config)" >&2
make -C "$src" -s tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/hull-guest.config" >/dev/null
make -C "$src" -s olddefconfig >/dev/null

# Every line of the fragment must have survived olddefconfig.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) want="$line" ;;
        "# CONFIG_"*" is not set") want="$line" ;;
        *) continue ;;
    esac
    sym="${want#\# }"; sym="${sym%%[= ]*}"
    if ! grep -qxF "$want" "$src/.config"; then
        if [[ "$want" == "# "* ]] && ! grep -q "^$sym=" "$src/.config"; then continue; fi
        echo "  wanted: $want   got: $(grep -E "^(# )?$sym[= ]" "$src/.config" || echo '<absent>')" >&2
        missing=1
    fi
done < "$here/hull-guest.config"
[ "$missing" = 0 ] || die "config fragment lines did not survive olddefconfig (unmet dependencies?)"

jobs="$(nproc)"
echo "guest kernel: compiling vmlinux with -j$jobs (about 10 minutes on 2 cores)" >&2
n=0
make -C "$src" -j"$jobs" vmlinux 2>&1 | while IFS= read -r l; do
    n=$((n + 1))
    case "$l" in
        *"error:"*|*"Error "*) echo "$l" >&2 ;;
    esac
    if [ $((n % 250)) -eq 0 ]; then echo "guest kernel: ... $n build steps" >&2; fi
done
[ "${PIPESTATUS[0]}" = 0 ] || die "make vmlinux failed"
[ -f "$src/vmlinux" ] || die "make finished without producing vmlinux"

cp "$src/.config" "$out.config"
cp "$src/vmlinux" "$out.tmp"
mv "$out.tmp" "$out"
ln -sfn "$(basename "$out")" "$cache/vmlinux"
echo "guest kernel: built $out ($(du -h "$out" | cut -f1))" >&2
echo "$out"
