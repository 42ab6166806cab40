#!/usr/bin/env bash
# Run each fuzz target for a fixed time: scripts/fuzz.sh [SECONDS] [TARGET...]
# (default 600 s each, every target). Installs the nightly toolchain and cargo-fuzz from
# crates.io when missing. Prints each target's executions and whether it crashed; exits
# non-zero if any did (the input is kept under fuzz/artifacts/<target>/).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-600}"; shift || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cd "$repo/fuzz"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
logs="$(mktemp -d)"
failed=0
for t in "${targets[@]}"; do
    echo "fuzz: $t for ${secs}s" >&2
    if cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -max_len=8192 -timeout=30 \
        -print_final_stats=1 >"$logs/$t.log" 2>&1; then
        result=ok
    else
        result=CRASHED
        failed=1
        grep -E "panicked|SUMMARY|artifact" "$logs/$t.log" >&2 || tail -20 "$logs/$t.log" >&2
    fi
    execs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' || echo '?')"
    printf '%-22s %8ss %12s execs  %s\n' "$t" "$secs" "$execs" "$result"
done
rm -rf "$logs"
exit "$failed"
