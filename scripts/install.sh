#!/usr/bin/env bash
# The README's first command: install and build everything, then run the main job on its
# built-in defaults: `hull run --rm busybox echo hello`, a container in its own microVM
# (our kernel, our PID 1, the built-in busybox image). The first run boots a VM and keeps
# it as the template later runs restore.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/build.sh" >/dev/null
echo "install: hull run --rm busybox echo hello (the first run makes the template: about a minute on a host whose KVM emulates guest kernel code)" >&2
exec "$repo/target/release/hull" run --rm busybox echo hello
