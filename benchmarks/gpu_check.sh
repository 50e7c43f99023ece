#!/usr/bin/env bash
# One short device session (under 4 minutes): the GPU tests, then the training-engine benchmark.
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu_check.sh   (results and full logs land in $OUT)
# The device machine's PyTorch is its `python3` (there may be no `python`); PYTHON=... picks another.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
python=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
# Every GPU test runs (no -x: one call should show every failure); the full log, tracebacks included, goes to
# $OUT. The slicing test is first in the file, whose order pytest keeps: a pack that re-captures its graph.
timeout 90 "$python" -m pytest -q -m gpu -p no:cacheprovider tests/test_train_gpu.py 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -20
timeout 150 "$python" benchmarks/packed_training.py --out "$OUT" --budget-s 120 2>&1 \
    | tee "$OUT/benchmark.log" | tail -45
