#!/usr/bin/env bash
# One device call of the budget study (docs/device.md): train what fits in a wall-clock budget, then export the
# results folder's finished runs as one slim archive into $OUT. Nothing is installed and nothing is downloaded:
# the package runs from this checkout (PYTHONPATH) and the data from the carried prepared cache.
#
# Usage (repo root):
#   bash experiments/device/run_study.sh [--budget SECONDS] [--only FILTER]... [--set KEY=VALUE]...
#       [--pack-size N] [--spec SPEC]... [--results DIR] [--cache DIR]
#
#   --budget S     seconds the grid may run (default 480: a 600 s call keeps about 2 minutes for stopping,
#                  status and export). At the budget the grid is interrupted; unfinished runs stay on the
#                  machine (resumable while it stays warm) and are not exported.
#   --only F       passed to every `ablation run` (e.g. dataset=glas, fold=0); a spec without a matching run
#                  is skipped.
#   --set K=V      passed to every `ablation run` (e.g. model.img_size=32 for a trial: new run identities).
#   --pack-size N  passed to every `ablation run` (default: the spec's, 'auto').
#   --spec SPEC    run only these specs (repeat); default the skip study, then the module ablation.
#   --results DIR  results folder (default results/paper, the specs' own).
#   --cache DIR    the carried prepared-data cache, $ABLATION_CACHE (default .devcache).
#
# Writes into $OUT (default /tmp/ablation-device-out): paper_slim.tar.gz (ablation export --slim), call.json
# (experiments/device/call_record.py) and call.log (everything printed). Exit status: that of the export.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
repo=$PWD

budget=480
results=results/paper
cache=.devcache
specs=()
run_args=()
while (($#)); do
    case $1 in
        -h | --help) sed -n '2,22p' "$0" && exit 0 ;;
        --budget | --only | --set | --pack-size | --spec | --results | --cache) ;;
        *) echo "error: unknown argument $1 (see --help)" >&2 && exit 2 ;;
    esac
    (($# >= 2)) || { echo "error: $1 needs a value" >&2 && exit 2; }
    case $1 in
        --budget) budget=$2 ;;
        --only | --set | --pack-size) run_args+=("$1" "$2") ;;
        --spec) specs+=("$2") ;;
        --results) results=$2 ;;
        --cache) cache=$2 ;;
    esac
    shift 2
done
[[ $budget =~ ^[0-9]+$ ]] || { echo "error: --budget must be whole seconds, got $budget" >&2 && exit 2; }
((${#specs[@]})) || specs=(experiments/paper_skip_study_budget.toml experiments/paper_module_ablation_budget.toml)
[[ $cache == /* ]] || cache=$repo/$cache

out=${OUT:-/tmp/ablation-device-out}
mkdir -p "$out"
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} ABLATION_CACHE=$cache PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
record=experiments/device/call_record.py

study() {
    local started deadline before spec left begin ms rc phases=()
    started=$(date +%s)
    deadline=$((started + budget))
    echo "device call $(date -u +%FT%TZ): budget ${budget}s, specs ${specs[*]}, args ${run_args[*]:-none}"
    [[ -d $cache ]] || echo "warning: no carried cache at $cache: named datasets need their folders"
    before=$(mktemp)
    "$python" "$record" done "$results" >"$before" || return 2
    for spec in "${specs[@]}"; do
        left=$((deadline - $(date +%s)))
        if ((left < 10)); then
            echo "budget spent: $spec not started"
            phases+=(--phase "$spec:124:0")
            continue
        fi
        begin=$(date +%s%N)
        # At the deadline the runner and its workers end at once; the runs they held keep their last checkpoint
        # and a stale lock, which the next call on a warm machine breaks before resuming them.
        timeout --kill-after=20 "$left" \
            "$python" -m ablation run "$spec" --out "$results" --no-progress "${run_args[@]}"
        rc=$?
        ((rc == 124 || rc == 137)) && echo "budget reached during $spec (exit $rc)"
        ms=$((($(date +%s%N) - begin) / 1000000))
        phases+=(--phase "$spec:$rc:$((ms / 1000)).$((ms % 1000 / 100))")
    done
    "$python" -m ablation status "$results" --quiet
    "$python" -m ablation export "$results" --slim "$out/paper_slim.tar.gz"
    rc=$?
    "$python" "$record" record "$results" --before "$before" --started "$started" --budget "$budget" \
        "${phases[@]}" >"$out/call.json"
    cat "$out/call.json"
    rm -f "$before"
    return $rc
}

study 2>&1 | tee "$out/call.log"
exit "${PIPESTATUS[0]}"
