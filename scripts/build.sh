#!/usr/bin/env bash
# Build everything hull runs: the guest kernel and root image (cached under
# /var/cache/hull) and the host binaries (release). Prints the artifact paths.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/deps.sh"
kernel="$("$repo/kernel-config/build.sh")"
image="$("$repo/resources/build-image.sh")"
echo "build: host binaries (release; a few minutes the first time)" >&2
(cd "$repo" && cargo build --release -p hull-vmm -p hull-shim -p hull-cli)
echo "kernel=$kernel"
echo "image=$image"
echo "vmm=$repo/target/release/hull-vmm"
echo "hull=$repo/target/release/hull"
