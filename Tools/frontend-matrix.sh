#!/usr/bin/env bash
# The frontends users run, each against tapwire, in one run; `make test` runs it and the
# README's "Tested with" table is its output. Rows:
#   QEMU 7.2 (Debian 12, vectors=0) and QEMU 10.0 (bookworm-backports, MSI-X): a real guest,
#     ping and iperf3 both ways (Tools/e2e.sh), 7.2 also without offloads;
#   QEMU 10.0: multiqueue with channel changes, NIC and memory hot-plug (Tools/qemu10-check.sh);
#   libvirt 11.3 on QEMU 7.2 and 10.0, both socket modes, reconnect (Tools/libvirt-check.sh);
#   DPDK's virtio-user frontend, mrg_rxbuf=0/1, in_order=1, packed_vq=1 (Tools/dpdk-frontend-check.sh);
#   live migration on QEMU 10.0 between two tapwires, on one host and across two, and beside
#     DPDK's vhost PMD as the backends (Tools/migration-check.sh); libvirt's `virsh migrate
#     --live` between two libvirtds as two hosts (Tools/libvirt-migration-check.sh).
#   tenant isolation: three QEMU 10.0 guests of two tenants on two "hosts" (namespaces), port
#     security, bridge ports, VXLAN between the hosts (Tools/tenant-check.sh).
# Every row runs even when an earlier one failed; the exit status says whether all passed.
#
# Usage: Tools/frontend-matrix.sh [--tapwire BIN] [--only LIST] [--markdown FILE]
#   --only LIST      comma-separated subset of: qemu, qemu10, libvirt, dpdk, migration, tenants
#   --markdown FILE  also write the table there
# Output: each check's own lines, then a Markdown table (frontend | version | what was
# checked | result) and "N passed, N failed, N not run".
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
ONLY=qemu,qemu10,libvirt,dpdk,migration,tenants
MARKDOWN=
while (($#)); do
    case $1 in
        --tapwire) TAPWIRE=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --markdown) MARKDOWN=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) tw_die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -x $TAPWIRE ]] || tw_die "no tapwire binary at $TAPWIRE (make release)"
wanted() { [[ ,$ONLY, == *,$1,* ]]; }

rows=()    # "frontend|version|checked|result"
passed=0 failed=0 not_run=0
# A "NOT RUN (why)" row is a check this machine lacks a facility for (e.g. a kernel without
# bridge VLAN filtering): shown and counted apart, neither passed nor failed.
add_row() {
    rows+=("$1|$2|$3|$4")
    if [[ $4 == PASS* ]]; then passed=$((passed + 1))
    elif [[ $4 == "NOT RUN"* ]]; then not_run=$((not_run + 1))
    else failed=$((failed + 1)); fi
}

# e2e_row LABEL VERSION CHECKED E2E-ARGS...: one real-guest e2e run as a row.
e2e_row() {
    local label=$1 version=$2 checked=$3; shift 3
    local json result start=$SECONDS
    json=$(mktemp)
    if "$TW_REPO_ROOT/Tools/e2e.sh" --backend tapwire --tapwire "$TAPWIRE" --json "$@" >"$json"; then result=PASS; else result=FAIL; fi
    local figures
    figures=$(jq -r '"h2g \(.iperf3_host_to_guest.gbps) Gbit/s, g2h \(.iperf3_guest_to_host.gbps) Gbit/s, ping \(.ping_host_to_guest_ms.min) ms"' "$json" 2>/dev/null || echo "no results")
    tw_log "$label: $result ($figures) in $((SECONDS - start)) s"
    add_row "$label" "$version" "$checked" "$result ($figures)"
    rm -f "$json"
}

# script_rows LABEL VERSION CMD...: a check script's ROW lines become rows (its own output
# is shown as it runs); a script that fails without printing any row is one FAIL row.
script_rows() {
    local label=$1 version=$2; shift 2
    local out rc=0 line before=${#rows[@]} start=$SECONDS
    out=$(mktemp)
    "$@" 2>&1 | tee "$out" >&2 || rc=$?
    tw_log "$label: $(basename "$1") took $((SECONDS - start)) s"
    while IFS= read -r line; do
        local field checked="" result qemu
        field() { sed -n "s/.* $1=\"\([^\"]*\)\".*/\1/p; t; s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
        local devargs mode check
        devargs=$(field devargs) mode=$(field mode) check=$(field checks)
        [[ -n $check ]] || check=$(field check)
        [[ -z $devargs ]] || checked="$devargs: "
        [[ -z $mode ]] || checked="${checked}mode=$mode: "
        checked="$checked$check"
        qemu=$(field qemu)
        result=$(field result)
        add_row "$label" "$version${qemu:+, QEMU $qemu}" "$checked" "${result:-FAIL}"
    done < <(grep '^ROW .* result=' "$out" || true)
    if ((${#rows[@]} == before)); then add_row "$label" "$version" "(no result)" "FAIL (exit $rc)"; fi
    rm -f "$out"
}

q10=$(tw_qemu_select 10 >/dev/null 2>&1 && echo yes || echo no)
if wanted qemu; then
    e2e_row "QEMU (Debian 12)" 7.2 "ping and iperf3 both ways, vectors=0, offloads" --qemu 7.2 --time 3
    e2e_row "QEMU (Debian 12)" 7.2 "the same without offloads (receive in io_uring batches)" --qemu 7.2 --time 3 \
        --tapwire-args --offloads=none
    e2e_row "QEMU (bookworm-backports)" 10.0 "ping and iperf3 both ways, MSI-X, offloads" --qemu 10 --time 3
fi
if wanted qemu10; then
    script_rows "QEMU (bookworm-backports)" 10.0 "$TW_REPO_ROOT/Tools/qemu10-check.sh" --tapwire "$TAPWIRE"
fi
if wanted libvirt; then
    script_rows "libvirt" 11.3 "$TW_REPO_ROOT/Tools/libvirt-check.sh" --tapwire "$TAPWIRE"
fi
if wanted dpdk; then
    script_rows "DPDK virtio-user (testpmd)" "$(dpkg-query -W -f '${Version}' dpdk-dev 2>/dev/null | cut -d- -f1)" \
        "$TW_REPO_ROOT/Tools/dpdk-frontend-check.sh" --tapwire "$TAPWIRE"
fi
if wanted migration; then
    script_rows "QEMU live migration" 10.0 "$TW_REPO_ROOT/Tools/migration-check.sh" --tapwire "$TAPWIRE"
    script_rows "QEMU live migration, two hosts" 10.0 "$TW_REPO_ROOT/Tools/migration-check.sh" --tapwire "$TAPWIRE" --two-hosts
    script_rows "libvirt live migration, two hosts" 11.3 "$TW_REPO_ROOT/Tools/libvirt-migration-check.sh" --tapwire "$TAPWIRE"
    # The anchor: the same migrations with DPDK's vhost PMD and TAP PMD as the backends.
    script_rows "QEMU live migration, tapwire and DPDK" 10.0 "$TW_REPO_ROOT/Tools/migration-check.sh" --tapwire "$TAPWIRE" \
        --compare --round-trips 2
fi
if wanted tenants; then
    script_rows "Tenant isolation (two tenants, two hosts)" 10.0 "$TW_REPO_ROOT/Tools/tenant-check.sh" --tapwire "$TAPWIRE"
fi

table() {
    echo "| frontend | version | what was checked | result |"
    echo "|---|---|---|---|"
    local row
    for row in "${rows[@]}"; do
        IFS='|' read -r f v c r <<<"$row"
        echo "| $f | $v | $c | $r |"
    done
}
echo
echo "Frontend matrix ($(date -u +%Y-%m-%d), $(uname -r), $(nproc) cores; QEMU 10 installed: $q10):"
table
[[ -z $MARKDOWN ]] || table >"$MARKDOWN"
# CI shows only the end of the output: name the failed rows last.
for row in "${rows[@]}"; do
    IFS='|' read -r f v c r <<<"$row"
    [[ $r == PASS* ]] || echo "matrix ${r%% (*}: $f $v: $c: $r"
done
echo "matrix: $passed passed, $failed failed, $not_run not run (a facility this machine lacks)"
((failed == 0))
