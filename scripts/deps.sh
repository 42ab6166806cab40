#!/usr/bin/env bash
# Install what hull needs to build and test on Debian 12, idempotently: packages that are
# already at the wanted version are left alone, and apt is only consulted when something
# is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
. <(grep -E '^(package|version)=' "$here/../kernel-config/VERSION")
kernel_pkg="$package=$version"

packages=(
    build-essential flex bison bc libelf-dev libssl-dev cpio   # guest kernel build
    erofs-utils                                                # guest root image
    libseccomp-dev pkg-config                                  # agent: seccomp (linked statically)
    busybox-static runc strace                                 # agent tests' rootfs; benchmark peer, syscall counts
    containerd tmux                                            # shim tests: containerd 1.6 + ctr; ctr run -t through a terminal
    containernetworking-plugins iproute2                       # CRI tests: CNI bridge, host-local, loopback, portmap
    protobuf-compiler                                          # CRI tests: the k8s-cri client's gRPC bindings
    "$kernel_pkg"                                              # guest kernel source
)

missing=()
for p in "${packages[@]}"; do
    name="${p%%=*}"
    want="${p#*=}"; [ "$want" = "$p" ] && want=""
    have="$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)"
    case "$have" in
        "install ok installed "*)
            if [ -z "$want" ] || [ "${have##* }" = "$want" ]; then continue; fi ;;
    esac
    missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "deps: need root to install packages (run as root or with sudo)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        echo "deps: apt-get install failed; if $kernel_pkg is no longer available, update kernel-config/VERSION to the version apt offers (apt-cache policy $package) and re-test" >&2
        exit 1
    fi
fi

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
    echo "deps: installing cargo-nextest" >&2
    cargo install --locked cargo-nextest >&2
fi
echo "deps: ok" >&2
