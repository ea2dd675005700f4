#!/usr/bin/env bash
# Allocation-counting benchmark of the packet path (Tools/Benchmarks: ordo-one/benchmark with
# its malloc interposer). A production NetDevice, set up in-process with the requests QEMU
# sends, moves batches of 64-byte frames: guest transmit dropped in sink mode, guest transmit to
# a real TAP and host-to-guest receive from it, each with the TAP in io-uring mode (the daemon's
# default) and in writev mode, and with port security's checks on every frame. Only the
# device's service calls are measured, warm-up iterations are excluded, and every
# steady-state iteration must allocate nothing. Prints a
# table; exits non-zero naming any benchmark that allocated, with its allocation stacks.
#
# Runs in a private network namespace (unshare --net): the TAPs are created there and vanish
# with it, and no frame meets the host's interfaces. Needs root (CAP_NET_ADMIN for the TAP,
# CAP_NET_RAW for the injector).
#
#   Tools/bench-alloc.sh [--results DIR]
#     --results DIR   keep the raw results (ordo-one/benchmark's influx CSV and the run's log) in DIR
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-0}"; }

keep_dir=
while (($#)); do
    case $1 in
        --results) keep_dir=${2:?--results needs a directory}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) tw_warn "unknown argument $1"; usage 2 ;;
    esac
done

tw_require_root
tw_install_traps
tw_ensure_packages "unshare:util-linux" "ip:iproute2"

bench_dir=$TW_REPO_ROOT/Tools/Benchmarks
if [[ -n $keep_dir ]]; then
    mkdir -p "$keep_dir"
    results=$(cd "$keep_dir" && pwd)
else
    results=$(mktemp -d /tmp/tapwire-bench-alloc.XXXXXX)
    tw_at_exit "rm -rf '$results'"
fi

# Built (and its packages resolved) out here, where the package mirror is reachable; inside the
# namespace the plugin finds it up to date.
started=$(tw_now)
tw_log "building Tools/Benchmarks in release mode"
(cd "$bench_dir" && swift build -c release --product HotPathAllocations >&2) || tw_die "building Tools/Benchmarks failed"
tw_log "built in $(tw_elapsed "$started") s; running the benchmarks in a private network namespace"

# run_in_namespace ARGS...: the benchmark plugin with ARGS, in a fresh private network namespace.
# IPv6 is off by default there: the kernel then sends nothing of its own (router or neighbour
# solicitations) into the TAPs, so every frame read is an injected one.
run_in_namespace() {
    # shellcheck disable=SC2016 # $1 belongs to the inner sh
    tw_interruptible unshare --net -- sh -c '
        ip link set lo up &&
        { [ ! -w /proc/sys/net/ipv6/conf/default/disable_ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6; } &&
        cd "$1" && shift &&
        exec swift package --disable-sandbox benchmark --no-progress "$@"' sh "$bench_dir" "$@"
}

log=$results/run.log
if ! run_in_namespace --format influx --path "$results" >"$log" 2>&1; then
    tw_tail_log "$log" 40 "the benchmark run"
    tw_die "the benchmark run failed"
fi
csv=$results/Current_run.influx.csv
[[ -s $csv ]] || { tw_tail_log "$log" 40 "the benchmark run"; tw_die "the run wrote no results ($csv)"; }

# The CSV has one row per benchmark, metric and percentile; value is that percentile's value
# (times in ns) and test_average the mean over the measured iterations. Benchmark names hold
# no commas, so plain field splitting is enough.
summary=$(awk -F, '
    NR == 2 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    NR < 2 { next }
    {
        test = $col["test"]; gsub(/"/, "", test)
        metric = $col["metric"]; p = $col["percentile"] + 0
        seen[test] = 1
        if (metric == "frames" && p == 50) frames[test] = $col["value"]
        if (metric == "Malloc(total)") {
            if (p == 0) mallocMin[test] = $col["value"]
            if (p == 100) mallocMax[test] = $col["value"]
            mallocMean[test] = $col["test_average"]
        }
        if (metric ~ /^Time\(wallclock\)/ && p == 50) wallP50[test] = $col["value"]
    }
    END {
        for (t in seen)
            printf "%s\t%s\t%s\t%s\t%s\t%s\n", t, frames[t], mallocMin[t], mallocMax[t], mallocMean[t], wallP50[t]
    }' "$csv")

row() { awk -F'\t' -v t="$1" '$1 == t' <<<"$summary"; }

baseline="baseline: empty measured region"
control="control: one allocation"
hot_paths=("guest transmit to sink" "guest transmit to sink with port security" "guest transmit to TAP in io-uring mode" "guest transmit to TAP in writev mode"
    "host to guest from TAP in io-uring mode" "host to guest in io-uring batches (no guest GSO)"
    "host to guest from TAP in writev mode"
    "guest transmit to TAP in io-uring mode with port security" "host to guest in io-uring batches with port security")

table_row() { printf '%-58s %11s %13s %14s %11s\n' "$@"; }
echo
table_row benchmark frames/iter mallocs/iter mallocs/frame ns/frame
table_row "(steady state, warm-up excluded)" "" "mean (max)" "" "p50 (info)"
failures=()
for name in "$baseline" "$control" "${hot_paths[@]}"; do
    line=$(row "$name")
    if [[ -z $line ]]; then
        failures+=("$name: did not run")
        continue
    fi
    IFS=$'\t' read -r _ frames malloc_min malloc_max malloc_mean wall_p50 <<<"$line"
    per_frame=$(awk -v m="$malloc_mean" -v f="$frames" 'BEGIN { if (f > 0) printf "%.4g", m / f; else print "-" }')
    ns=$(awk -v w="$wall_p50" -v f="$frames" 'BEGIN { if (f > 0) printf "%.0f", w / f; else print "-" }')
    table_row "$name" "$frames" "$(printf '%g (%s)' "$malloc_mean" "$malloc_max")" "$per_frame" "$ns"
    case $name in
        "$baseline")
            [[ $malloc_max == 0 ]] || failures+=("$name: the measurement itself allocates ($malloc_max per iteration)") ;;
        "$control")
            [[ $malloc_min == 1 && $malloc_max == 1 ]] ||
                failures+=("$name: counted $malloc_min..$malloc_max instead of exactly 1: the malloc counter is not counting") ;;
        *)
            [[ $frames == 256 ]] || failures+=("$name: moved $frames frames per iteration, not 256")
            [[ $malloc_max == 0 ]] ||
                failures+=("$name: the packet path allocates (mean $malloc_mean, max $malloc_max per iteration of $frames frames)") ;;
    esac
done
echo

if ((${#failures[@]})); then
    for failure in "${failures[@]}"; do tw_warn "$failure"; done
    # Where: the same benchmark again with every allocation's stack recorded (file:line; the
    # symlinked sources shown under Sources/).
    for name in "${hot_paths[@]}"; do
        [[ $(row "$name" | cut -f4) =~ ^[1-9] ]] || continue
        tw_log "allocation stacks of '$name':"
        run_in_namespace --filter "$name" --allocation-stacks --allocation-stack-limit 5 --allocation-stack-depth 24 2>&1 |
            tee -a "$log" | sed -n '/^Allocation stacks/,$p' | sed 's#Tools/Benchmarks/Tapwire/#Sources/#' >&2 || true
    done
    tw_die "${#failures[@]} check(s) failed"
fi
tw_log "no allocation on the packet path: 0 mallocs per frame in every steady-state iteration"
