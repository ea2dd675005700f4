#!/usr/bin/env bash
# Builds the whole test suite under AddressSanitizer and/or ThreadSanitizer and runs it the way
# `make test` does (root, /dev/net/tun, a private network namespace with loopback up).
#
# Usage: Tools/sanitizers.sh [address|thread|all] [--filter REGEX] [--skip REGEX] [--serial]
#   address  ASan (+ LeakSanitizer) into .build-asan; suppressions (toolchain and runtime code
#            only, each explained): Tools/asan.supp, Tools/lsan.supp
#   thread   TSan into .build-tsan (Tools/tsan.supp is used as the suppression file if present;
#            none is needed today)
#   all      both, one after the other (default)
#   --filter/--skip are handed to `swift test` to run a subset; --serial runs one test at a time
#   (--no-parallel), for tests that count process-wide descriptors or have wall-clock timeouts.
#
# Prints the build and test time of each sanitizer, every sanitizer report's headline with the
# first tapwire frame (file:line), and fails when a test fails or a sanitizer reports anything.
# Full logs: .build-asan/sanitizer-output.txt, .build-tsan/sanitizer-output.txt.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
SWIFT=${SWIFT:-swift}

which=all
test_args=()
while (($#)); do
    case $1 in
        address|thread|all) which=$1 ;;
        --filter|--skip) test_args+=("$1" "$2"); shift ;;
        --serial) test_args+=(--no-parallel) ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "sanitizers: unknown argument '$1' (address|thread|all, --filter R, --skip R, --serial)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf 'sanitizers: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.0f", e - s }'; }

[[ $(id -u) -eq 0 ]] || { log "must run as root (the TAP tests need CAP_NET_ADMIN and a network namespace)"; exit 2; }

summary=()
failed=0

run_one() {
    local sanitizer=$1 scratch out rc build_s test_s reports
    case $sanitizer in
        address) scratch=.build-asan ;;
        thread) scratch=.build-tsan ;;
    esac
    out=$scratch/sanitizer-output.txt
    mkdir -p "$scratch"

    log "== $sanitizer: building the tests into $scratch"
    local t0; t0=$(now)
    if ! $SWIFT build --build-tests --sanitize="$sanitizer" --scratch-path "$scratch" 2>&1 | tail -n 30; then
        :
    fi
    rc=${PIPESTATUS[0]}
    build_s=$(since "$t0")
    if ((rc != 0)); then
        log "$sanitizer: build FAILED (exit $rc) after ${build_s}s"
        summary+=("$sanitizer: build failed after ${build_s}s")
        failed=1
        return
    fi
    log "$sanitizer: build took ${build_s}s"

    # Sanitizer runtime options. The Swift backtracer is turned off so a sanitizer's own report
    # (and exit) is what ends a crashing test process.
    local asan_opts="detect_leaks=1:abort_on_error=0:print_summary=1:strict_string_checks=1:detect_stack_use_after_return=0"
    local tsan_opts="halt_on_error=0:second_deadlock_stack=1:history_size=4"
    if [[ -f Tools/tsan.supp ]]; then
        tsan_opts+=":suppressions=$ROOT/Tools/tsan.supp"
    fi
    if [[ -f Tools/asan.supp ]]; then
        asan_opts+=":suppressions=$ROOT/Tools/asan.supp"
    fi
    if [[ -f Tools/lsan.supp ]]; then
        export LSAN_OPTIONS="suppressions=$ROOT/Tools/lsan.supp:print_suppressions=0"
    fi

    log "== $sanitizer: running the tests (private network namespace, as make test does)"
    t0=$(now)
    local args=""
    ((${#test_args[@]})) && args=$(printf ' %q' "${test_args[@]}")
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=$asan_opts TSAN_OPTIONS=$tsan_opts TAPWIRE_TEST_NETNS=1 \
        unshare --net -- sh -c "ip link set lo up && exec $SWIFT test --skip-build --sanitize=$sanitizer --scratch-path $scratch$args" \
        >"$out" 2>&1
    rc=$?
    test_s=$(since "$t0")

    # Reports: ASan/LSan "ERROR: ...Sanitizer", TSan "WARNING: ThreadSanitizer". For each, the
    # headline and the first frame in tapwire's own sources (or the first frame at all).
    reports=$(grep -cE '^(==[0-9]+==ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer)' "$out")
    tail -n 5 "$out" >&2
    if ((reports > 0)); then
        log "$sanitizer: $reports sanitizer report(s) in $out:"
        # One line per report (kind, first frame in tapwire's own Sources/ or Tests/, first
        # frame at all), identical reports counted together.
        awk -v root="$ROOT/" '
            function flush() {
                if (kind != "") print kind " | tapwire: " (own == "" ? "-" : own) " | top: " first
                kind = ""
            }
            /^(==[0-9]+==ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer)/ {
                flush(); kind = $0
                sub(/^==[0-9]+==ERROR: /, "", kind); sub(/^WARNING: /, "", kind)
                sub(/ on address.*| \(pid=.*/, "", kind)
                first = ""; own = ""; next
            }
            kind != "" && /^ *#[0-9]+ / {
                frame = $0; sub(/^ *#[0-9]+ (0x[0-9a-f]+ )?(in )?/, "", frame)
                if (first == "") first = frame
                if (own == "" && (index($0, root "Sources/") > 0 || index($0, root "Tests/") > 0)) own = frame
                next
            }
            kind != "" && /^SUMMARY/ { flush() }
            END { flush() }
        ' "$out" | sed "s#$ROOT/##g" | sort | uniq -c | sort -rn | head -n 40 >&2
        grep -E '^SUMMARY: ' "$out" | sed "s#$ROOT/##g" | sort | uniq -c | sort -rn >&2
        failed=1
    fi
    if ((rc != 0)); then
        log "$sanitizer: swift test exited $rc after ${test_s}s (log: $out)"
        grep -E '✘|error:|Fatal error|Test run with .* failed|(SUMMARY|ERROR): ' "$out" | head -n 40 >&2
        failed=1
    fi
    summary+=("$sanitizer: build ${build_s}s, tests ${test_s}s, exit $rc, $reports sanitizer report(s) (log: $out)")
}

case $which in
    address) run_one address ;;
    thread) run_one thread ;;
    all) run_one address; run_one thread ;;
esac

log "== summary"
for line in "${summary[@]}"; do log "  $line"; done
exit $failed
