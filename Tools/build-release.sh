#!/usr/bin/env bash
# The release binaries, built once the way the Debian package ships them, into .build/release
# where every Tools script looks: `make release`, `make deb` and `make test` all use these.
#   --static-swift-stdlib   the Swift runtime and Foundation linked in: only Debian libraries
#                           at run time (lintian, dpkg-shlibdeps);
#   --disable-local-rpath   no $ORIGIN rpath;
#   -z now                  full RELRO (lintian: hardening-no-bindnow).
# A second build with other flags would be a second full compile of every target (minutes on
# two cores), which is why the package no longer has a scratch path of its own.
#
# Usage: Tools/build-release.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
TW_LOG_PREFIX=build-release

tw_log "swift build -c release --static-swift-stdlib (all products; minutes on a fresh tree)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Other people may edit the tree while it builds; SwiftPM then stops with "was modified during
# the build". Try again (up to three times) in that case only.
for attempt in 1 2 3; do
    if (cd "$TW_REPO_ROOT" && swift build -c release --static-swift-stdlib --disable-local-rpath \
        -Xlinker -z -Xlinker now) >"$log" 2>&1; then
        exit 0
    fi
    grep -q 'modified during the build' "$log" || break
    tw_warn "sources changed during the build, trying again ($attempt)"
done
grep -v ': warning:' "$log" | tail -n 40 >&2
tw_die "swift build -c release failed"
