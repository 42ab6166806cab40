#!/usr/bin/env bash
# Run each fuzz target for a fixed time (default 600 s): scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs the nightly toolchain and cargo-fuzz (installed here if missing).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-600}"; shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cd "$repo/fuzz"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
    echo "fuzz: $t for ${secs}s" >&2
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -max_len=8192 -print_final_stats=1
done
