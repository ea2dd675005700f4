#!/usr/bin/env bash
# The demo: boots a real QEMU guest whose only NIC is served by tapwire, then shows the
# guest reaching the host both ways (ping RTT) and iperf3 throughput in each direction.
# Usage: Tools/demo.sh [TAPWIRE_BINARY]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-$here/../.build/release/tapwire}
[[ $# -gt 0 ]] && shift
cat <<INFO
tapwire demo
  1. builds a small guest (Debian's 6.12 cloud kernel + busybox + iperf3) if needed
  2. starts tapwire in a private network namespace: it creates TAP tw0 (10.77.0.1)
  3. boots QEMU (TCG; the newest installed, 10.0 beside Debian's 7.2) with -netdev vhost-user
     pointing at tapwire's socket; guest is 10.77.0.2
  4. pings both ways and runs iperf3 host->guest and guest->host through tapwire
INFO
exec "$here/e2e.sh" --backend tapwire --tapwire "$bin" --show-offloads "$@"
