#!/usr/bin/env bash
# The prepared-data cache a device call carries (docs/device.md): GlaS and MoNuSeg prepared at the budget specs'
# size, compressed, with the k-fold splits files the runs here use, in a git-ignored folder of the checkout.
#
# Usage (repo root, where the datasets are):
#   ABLATION_DATA=/path/holding/GlaS+MoNuSeg bash experiments/device/prepare_cache.sh [--img-size 224] [--to .devcache]
#
# Prints each file with its size, the folder's total and the size of the tracked files (they travel too; a call
# carries 64 MiB at most). PYTHON picks the interpreter (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
size=224
to=.devcache
while (($#)); do
    case $1 in
        -h | --help) sed -n '2,9p' "$0" && exit 0 ;;
        --img-size | --to) (($# >= 2)) || { echo "error: $1 needs a value" >&2 && exit 2; } ;;
        *) echo "error: unknown argument $1 (see --help)" >&2 && exit 2 ;;
    esac
    case $1 in
        --img-size) size=$2 ;;
        --to) to=$2 ;;
    esac
    shift 2
done
default_python=python3
[[ -x .venv/bin/python ]] && default_python=.venv/bin/python
python=${PYTHON:-$default_python}
for dataset in glas monuseg; do
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$python" -m ablation data prepare --root "$dataset" \
        --img-size "$size" --to "$to"
done
git check-ignore -q "$to" || echo "warning: $to is not git-ignored: keep it out of commits"
echo "carried cache: $(du -sh "$to" | cut -f1) in $to"
echo "tracked files: $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1)"
