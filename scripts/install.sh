#!/usr/bin/env bash
# The README's first command: install and build everything, then boot the default hull
# microVM (our kernel, our PID 1) and power it off, showing its console.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/build.sh" >/dev/null
echo "install: booting the default microVM (30 to 40 seconds on a host whose KVM emulates guest kernel code)" >&2
exec "$repo/target/release/hull-vmm" --cmdline-extra "hull.ready=poweroff"
