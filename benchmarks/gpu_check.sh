#!/usr/bin/env bash
# One short device session (under 4 minutes): the GPU tests, then the training-engine benchmark.
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu_check.sh   (results and logs land in $OUT)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
timeout 75 python -m pytest -q -x -m gpu tests/test_train_gpu.py -p no:cacheprovider 2>&1 | tail -20 \
    | tee "$OUT/gpu_tests.log"
timeout 150 python benchmarks/packed_training.py --out "$OUT" --budget-s 120 2>&1 | tail -45
