#!/usr/bin/env bash
# Builds and runs tapwire's libFuzzer targets.
#
# Usage: Tools/fuzz/run.sh [--seconds N] [--target message|chain|packed|portfilter|all] [--parallel] [--merge]
#                          [--no-coverage] [--build-only] [--repro FILE] [-- extra libFuzzer flags]
#   --seconds N   run each target for N seconds (default 60)
#   --target T    message (vhost-user message stream), chain (split virtqueue descriptor chains),
#                 packed (packed virtqueue descriptor chains), portfilter (port security's frame
#                 classifier), all
#   --parallel    run the targets at the same time (one core each) instead of one after the other
#   --merge       afterwards, add the run's inputs that reach new edges to Fixtures/fuzz/<target>/
#                 (libFuzzer -merge=1 -use_counters=0, inputs cut to 4 KiB; warns past 60 files).
#                 Without it nothing is written to Fixtures: the run works on a copy of the corpus
#   --build-only  just build .build-fuzz/fuzz-message, fuzz-chain, fuzz-packed and fuzz-portfilter
#   --no-coverage skip the line-coverage report (a second, coverage-instrumented build that
#                 replays the final corpus; llvm-cov's line/region figures per source file)
#   --repro FILE  run the built target once on FILE (a crash file) and show the report
#
# The targets are built with swiftc straight from the real module sources, one module at a
# time, in dependency order, exactly as SwiftPM splits them:
#   CTapwire     shim.c with clang; its header through Tools/fuzz/modules/CTapwire/module.modulemap
#   SystemCalls  Sources/SystemCalls/*.swift -> SystemCalls.swiftmodule + SystemCalls.o
#   GuestMemory  Sources/GuestMemory/*.swift (imports CTapwire)
#   Virtqueue    Sources/Virtqueue/*.swift (imports CTapwire, GuestMemory)
#   VhostUser    Sources/VhostUser/*.swift (imports CTapwire, SystemCalls; not swift-log, which
#                none of these files imports)
#   PortSecurity Sources/PortSecurity/*.swift (imports only Glibc)
# so every `import` in the sources resolves to the module it names and nothing is copied.
# All of it is compiled with -sanitize=fuzzer,address (coverage + ASan), -O, and Swift 6 mode.
#
# Exits non-zero with the crash file's path when a target crashes, leaks, times out or breaks
# one of its invariants (messages starting with "==FUZZ INVARIANT==").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
# FUZZ_OUT: another build and run directory (two checkouts or sessions fuzzing at once).
OUT=${FUZZ_OUT:-$ROOT/.build-fuzz}
SWIFTC=${SWIFTC:-swiftc}
CLANG=${CLANG:-clang}

seconds=60
target=all
merge=0
parallel=0
coverage=1
build_only=0
repro=""
extra=()
while (($#)); do
    case $1 in
        --seconds) seconds=$2; shift ;;
        --target) target=$2; shift ;;
        --merge) merge=1 ;;
        --parallel) parallel=1 ;;
        --build-only) build_only=1 ;;
        --no-coverage) coverage=0 ;;
        --repro) repro=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "fuzz: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
case $target in message|chain|packed|portfilter) targets=("$target") ;; all) targets=(message chain packed portfilter) ;;
    *) echo "fuzz: --target must be message, chain, packed, portfilter or all" >&2; exit 2 ;; esac

log() { printf 'fuzz: %s\n' "$*" >&2; }
die() { printf 'fuzz: error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ build

# portfilter: a policy record (at most 60 bytes) and a frame somewhat past PortFilter.inspectedBytes.
max_len() { case $1 in message) echo 8192 ;; chain|packed) echo 12288 ;; portfilter) echo 512 ;; esac; }


# Runs a compiler, leaving out gold's noise about ASan's local helper symbols.
quiet() { "$@" 2> >(grep -v "Cannot export local symbol '__asan" >&2); }

# build VARIANT: "fuzz" (ASan + libFuzzer coverage, -O: what runs) into $OUT, or "cov"
# (source-based coverage, no ASan: only to measure which lines of Sources/ the corpus reaches)
# into $OUT/cov.
build() {
    local variant=$1 dir flags cflags
    # shellcheck disable=SC2054 # the commas are inside compiler flags, not array separators
    case $variant in
        fuzz) dir=$OUT; flags=(-O -g -sanitize=fuzzer,address); cflags=(-O1 -g -fsanitize=address,fuzzer-no-link) ;;
        cov) dir=$OUT/cov; flags=(-O -g -sanitize=fuzzer -profile-generate -profile-coverage-mapping)
             cflags=(-O1 -g -fsanitize=fuzzer-no-link -fprofile-instr-generate -fcoverage-mapping) ;;
    esac
    mkdir -p "$dir/modules" "$dir/obj"
    local common=(-parse-as-library -swift-version 6 "${flags[@]}" -I "$ROOT/Tools/fuzz/modules/CTapwire" -I "$dir/modules")
    local stamp="$dir/.inputs"
    # Rebuild only when a source, the harness, this script or the toolchain changed.
    local inputs
    inputs=$( { "$SWIFTC" --version 2>&1; cat "$0" Sources/CTapwire/shim.c Sources/CTapwire/include/*.h \
        Sources/SystemCalls/*.swift Sources/GuestMemory/*.swift Sources/Virtqueue/*.swift Sources/VhostUser/*.swift \
        Sources/PortSecurity/*.swift \
        Tools/fuzz/*.swift Tools/fuzz/support/* Tools/fuzz/modules/CTapwire/*; } | sha256sum | cut -c1-16)
    if [[ -f $stamp && $(cat "$stamp") == "$inputs" && -x $dir/fuzz-message && -x $dir/fuzz-chain && -x $dir/fuzz-packed && -x $dir/fuzz-portfilter ]]; then
        log "$variant build is up to date ($dir)"
        return
    fi
    local t0=$SECONDS
    log "building the $variant variant into $dir"
    quiet "$CLANG" -c "${cflags[@]}" -I Sources/CTapwire/include Sources/CTapwire/shim.c -o "$dir/obj/CTapwire.o"
    # Harness helpers: no coverage instrumentation (their branches are not tapwire's).
    local support=(-O1 -g)
    [[ $variant == fuzz ]] && support+=(-fsanitize=address)
    quiet "$CLANG" -c "${support[@]}" Tools/fuzz/support/fuzz_support.c \
        -o "$dir/obj/FuzzSupport.o"
    local module
    for module in SystemCalls GuestMemory Virtqueue VhostUser PortSecurity; do
        quiet "$SWIFTC" "${common[@]}" -module-name "$module" -wmo -emit-module -emit-module-path "$dir/modules/$module.swiftmodule" \
            -c Sources/"$module"/*.swift -o "$dir/obj/$module.o"
    done
    quiet "$SWIFTC" "${common[@]}" -I Tools/fuzz/support -module-name FuzzMessage Tools/fuzz/FuzzMessage.swift \
        "$dir/obj/VhostUser.o" "$dir/obj/SystemCalls.o" "$dir/obj/GuestMemory.o" "$dir/obj/CTapwire.o" "$dir/obj/FuzzSupport.o" -o "$dir/fuzz-message"
    # The two virtqueue harnesses share FuzzGuestMemory.swift (guarded regions and their model).
    quiet "$SWIFTC" "${common[@]}" -I Tools/fuzz/support -module-name FuzzChain Tools/fuzz/FuzzChain.swift Tools/fuzz/FuzzGuestMemory.swift \
        "$dir/obj/Virtqueue.o" "$dir/obj/GuestMemory.o" "$dir/obj/CTapwire.o" "$dir/obj/FuzzSupport.o" -o "$dir/fuzz-chain"
    quiet "$SWIFTC" "${common[@]}" -I Tools/fuzz/support -module-name FuzzPackedChain Tools/fuzz/FuzzPackedChain.swift Tools/fuzz/FuzzGuestMemory.swift \
        "$dir/obj/Virtqueue.o" "$dir/obj/GuestMemory.o" "$dir/obj/CTapwire.o" "$dir/obj/FuzzSupport.o" -o "$dir/fuzz-packed"
    quiet "$SWIFTC" "${common[@]}" -I Tools/fuzz/support -module-name FuzzPortFilter Tools/fuzz/FuzzPortFilter.swift \
        "$dir/obj/PortSecurity.o" "$dir/obj/FuzzSupport.o" -o "$dir/fuzz-portfilter"
    echo "$inputs" >"$stamp"
    log "built $variant fuzz-message, fuzz-chain, fuzz-packed and fuzz-portfilter in $((SECONDS - t0))s"
}

# coverage TARGET CORPUS: line coverage of the Sources/ files the target exercises, over CORPUS.
coverage() {
    local t=$1 corpus=$2 sources
    case $t in
        message) sources=(Sources/VhostUser/Message.swift Sources/VhostUser/Connection.swift Sources/SystemCalls/Sockets.swift) ;;
        chain) sources=(Sources/Virtqueue/SplitQueue.swift Sources/Virtqueue/IOVectorBuffer.swift Sources/GuestMemory/GuestMemoryMap.swift) ;;
        packed) sources=(Sources/Virtqueue/PackedQueue.swift Sources/Virtqueue/Layout.swift Sources/GuestMemory/GuestMemoryMap.swift) ;;
        portfilter) sources=(Sources/PortSecurity/PortFilter.swift Sources/PortSecurity/PortPolicy.swift) ;;
    esac
    local tools; tools=$(dirname "$(readlink -f "$(command -v "$SWIFTC")")") # the toolchain's llvm-cov, not Debian's
    rm -f "$OUT/cov/$t-"*.profraw
    LLVM_PROFILE_FILE="$OUT/cov/$t-%p.profraw" "$OUT/cov/fuzz-$t" -runs=0 -max_len="$(max_len "$t")" "$corpus" >/dev/null 2>&1 || true
    "$tools/llvm-profdata" merge -sparse "$OUT/cov/$t-"*.profraw -o "$OUT/cov/$t.profdata" 2>/dev/null || { echo "?"; return; }
    "$tools/llvm-cov" report "$OUT/cov/fuzz-$t" -instr-profile="$OUT/cov/$t.profdata" "${sources[@]}" 2>/dev/null \
        | awk '$1 ~ /\.swift$|^TOTAL$/ { printf "%s%s lines %s (%s/%s missed), regions %s", sep, $1, $10, $9, $8, $4; sep = "; " }'
}

build fuzz
((coverage)) && build cov
((build_only)) && exit 0

export SWIFT_BACKTRACE=enable=no # else Swift's backtracer hangs instead of letting libFuzzer write the crash file
# Leaks are checked by libFuzzer (-detect_leaks=1) per input; ASan must not abort on them itself.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1:handle_abort=1:quarantine_size_mb=64}

if [[ -n $repro ]]; then
    t=$target; [[ $t == all ]] && die "--repro needs --target message|chain|packed|portfilter"
    "$OUT/fuzz-$t" -runs=1 "$repro"
    exit $?
fi

# ------------------------------------------------------------------ run


# run_target T: one fuzzing session; writes $work/summary (result lines) and $work/status.
run_target() {
    local t=$1 work=$OUT/run-$1 rc seeds last execs rate cov ft corp crash rss
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    cp Fixtures/fuzz/"$t"/* "$work/corpus/" 2>/dev/null || log "no seeds in Fixtures/fuzz/$t"
    seeds=$(find "$work/corpus" -type f | wc -l)
    log "== fuzz-$t for ${seconds}s over a copy of $seeds seed(s) (log: $work/fuzz.log)"
    set +e
    "$OUT/fuzz-$t" "$work/corpus" \
        -max_total_time="$seconds" -rss_limit_mb=3072 -malloc_limit_mb=2048 -timeout=10 \
        -max_len="$(max_len "$t")" -detect_leaks=1 -print_final_stats=1 -print_pcs=0 \
        -artifact_prefix="$work/artifacts/" "${extra[@]}" >"$work/fuzz.log" 2>&1
    rc=$?
    set -e
    # Final figures: libFuzzer's last status line and its final stats.
    last=$(grep -E '^#[0-9]+' "$work/fuzz.log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/fuzz.log" | tail -n 1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$work/fuzz.log" | tail -n 1)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
    corp=$(grep -oE 'corp: [0-9]+/[^ ]+' <<<"$last" || echo "corp: ?")
    {
        echo "fuzz-$t: ${execs:-?} execs in ${seconds}s, ${rate:-?} execs/s, cov $cov edges (all instrumented code), ft $ft, $corp, peak RSS ${rss:-?} MB, exit $rc"
        if ((coverage)); then
            echo "fuzz-$t: line coverage of its sources over the final corpus: $(coverage "$t" "$work/corpus")"
        fi
    } >"$work/summary"
    crash=$(find "$work/artifacts" -type f | head -n 1)
    if ((rc != 0)) || [[ -n $crash ]]; then
        echo 1 >"$work/status"
        {
            echo "fuzz-$t FAILED (exit $rc); full log: $work/fuzz.log"
            grep -E '==FUZZ INVARIANT==|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|SUMMARY:|Fatal error|^ *#[0-9]+ .* in .*(Sources|Tools)/' \
                "$work/fuzz.log" | head -n 25 || true
            if [[ -n $crash ]]; then
                echo "crash input: $crash"
                echo "reproduce:   Tools/fuzz/run.sh --target $t --repro $crash"
                echo "minimize:    SWIFT_BACKTRACE=enable=no $OUT/fuzz-$t -minimize_crash=1 -runs=20000 -exact_artifact_path=$crash.min $crash"
            fi
        } >>"$work/summary" 2>&1
        return
    fi
    echo 0 >"$work/status"
    if ((merge)); then
        local before after
        before=$(find Fixtures/fuzz/"$t" -type f | wc -l)
        mkdir -p Fixtures/fuzz/"$t"
        "$OUT/fuzz-$t" -merge=1 -use_counters=0 -max_len=4096 Fixtures/fuzz/"$t" "$work/corpus" >"$work/merge.log" 2>&1 \
            || die "merge into Fixtures/fuzz/$t failed (see $work/merge.log)"
        after=$(find Fixtures/fuzz/"$t" -type f | wc -l)
        echo "fuzz-$t: merged $((after - before)) new input(s) that add coverage into Fixtures/fuzz/$t ($after files)" >>"$work/summary"
        ((after <= 60)) || echo "fuzz-$t: warning: Fixtures/fuzz/$t now has $after files; keep the committed seeds to a few dozen" >>"$work/summary"
    fi
}

if ((parallel)) && ((${#targets[@]} > 1)); then
    pids=()
    for t in "${targets[@]}"; do run_target "$t" & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid"; done
else
    for t in "${targets[@]}"; do run_target "$t"; done
fi

status=0
log "== results"
for t in "${targets[@]}"; do
    sed 's/^/fuzz:   /' "$OUT/run-$t/summary" >&2
    [[ $(cat "$OUT/run-$t/status" 2>/dev/null) == 0 ]] || status=1
done
exit $status
