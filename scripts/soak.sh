#!/usr/bin/env bash
# Soak: the leak tests with a long count: containerd task create/delete and CRI pod
# sandbox run/remove (CI runs five cycles of each; each cycle is checked exactly, the long
# count catches leaks too rare to show in five).
#   scripts/soak.sh [CYCLES]      # default 20; about 30-45 s a cycle on an emulating host
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cycles="${1:-20}"
case "$cycles" in '' | *[!0-9]*) echo "soak: CYCLES must be a count, not '$cycles'" >&2; exit 2 ;; esac
cd "$repo"
cargo build --quiet --workspace --bins
HULL_SOAK_CYCLES="$cycles" cargo nextest run --profile soak -p hull-e2e \
    --test containerd_faults --test containerd_cri --no-capture \
    -E 'test(create_delete_cycles_leak_nothing) | test(pod_sandbox_cycles_leak_nothing)'
