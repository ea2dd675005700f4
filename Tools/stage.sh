#!/usr/bin/env bash
# One stage of `make test`, timed: prints "== LABEL", runs the command, then how long it took,
# and keeps that in .build/stage-times.txt so the last line of a CI log can show every
# stage's share of the run (CI's budget is 90 minutes; the project's aim is under 40).
#
# Usage: Tools/stage.sh LABEL CMD...    run one stage (its exit status is the command's)
#        Tools/stage.sh --summary       the stages recorded since --reset, with their minutes
#        Tools/stage.sh --reset
set -uo pipefail
times=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.build/stage-times.txt
mkdir -p "$(dirname "$times")"
case ${1:-} in
    --reset) : >"$times"; exit 0 ;;
    --summary)
        awk -F'\t' '{ total += $2; printf "  %6.1f min  %s%s\n", $2 / 60, $1, ($3 == 0 ? "" : " (failed, exit " $3 ")") }
            END { printf "  %6.1f min  in all\n", total / 60 }' "$times"
        exit 0 ;;
esac
label=$1; shift
echo "== $label"
start=$(date +%s)
"$@"
rc=$?
seconds=$(($(date +%s) - start))
printf '%s\t%s\t%s\n' "$label" "$seconds" "$rc" >>"$times"
echo "== $label: $seconds s"
if ((rc != 0)); then
    echo "== failed: $label (exit $rc); minutes per stage so far:"
    "$0" --summary
fi
exit $rc
