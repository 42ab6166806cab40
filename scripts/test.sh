#!/usr/bin/env bash
# The README's second command: build what the tests need, then run every test tier
# (unit, tiny-guest KVM, end-to-end boot). Tests that need /dev/kvm or root say
# "skipped: <reason>" where those are missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# What the tests need built outside cargo: packages, the guest kernel and the guest image
# (with the agent), cached under /var/cache/hull. The tests run the debug host binaries
# (built below), so the release build of scripts/build.sh is not repeated here.
"$repo/scripts/deps.sh"
"$repo/kernel-config/build.sh" >/dev/null
"$repo/resources/build-image.sh" >/dev/null
cd "$repo"
echo "test: rustfmt and clippy" >&2
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
# The fuzz crate is outside the workspace (it needs nightly to run); type-check it on
# stable so an API change cannot leave its targets broken until someone fuzzes.
echo "test: fuzz targets compile" >&2
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
# The end-to-end tests start the debug binaries of other packages (the shim, the VMM, the
# agent, the CLI); cargo builds a package's binaries for its own tests only, so build them
# all here or a clean checkout runs the containerd tests without a shim.
echo "test: debug binaries" >&2
cargo build --quiet --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
