#!/usr/bin/env bash
# Installs what building and testing tapwire needs on a fresh Debian 12 machine.
# Idempotent: only missing packages are installed (apt-get update runs first, once).
# Usage: Tools/install-deps.sh [--bench]   (--bench adds DPDK and hugepage tools)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

specs=(
    dpkg:libcap-ng-dev dpkg:pkg-config
    qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio iperf3:iperf3
    ip:iproute2 ethtool:ethtool jq:jq xz:xz-utils curl:curl python3:python3
)
if [[ ${1:-} == --bench ]]; then
    specs+=(dpdk-testpmd:dpdk-dev tcpdump:tcpdump)
fi
tw_ensure_packages "${specs[@]}"
command -v swift >/dev/null || tw_die "swift is not on PATH (Swift 6.x toolchain required)"
