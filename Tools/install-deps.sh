#!/usr/bin/env bash
# Installs what building and testing tapwire needs on a fresh Debian 12 machine.
# Idempotent: only missing packages are installed (apt-get update runs first, once).
# Usage: Tools/install-deps.sh [--bench]   (--bench adds tcpdump)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

specs=(
    dpkg:libcap-ng-dev dpkg:libseccomp-dev dpkg:pkg-config
    qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio iperf3:iperf3
    ip:iproute2 ethtool:ethtool jq:jq xz:xz-utils curl:curl python3:python3
    dpdk-testpmd:dpdk-dev
)
if [[ ${1:-} == --bench ]]; then
    specs+=(tcpdump:tcpdump)
fi
tw_ensure_packages "${specs[@]}"
# The frontends the matrix in `make test` runs beside Debian 12's QEMU 7.2: QEMU 10.0 in its
# own prefix, and libvirt 11.3, both from bookworm-backports.
tw_ensure_qemu10
tw_ensure_libvirt
command -v swift >/dev/null || tw_die "swift is not on PATH (Swift 6.x toolchain required)"
