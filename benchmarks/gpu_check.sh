#!/usr/bin/env bash
# One short device session (under 4 minutes): the GPU tests, then the training-engine benchmark.
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu_check.sh   (results and logs land in $OUT)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
# The slicing test first (also first in the file, whose order pytest keeps): a pack that re-captures its graph.
timeout 90 python -m pytest -q -x -m gpu -p no:cacheprovider \
    tests/test_train_gpu.py::test_cuda_graph_pack_recaptures_after_slicing_and_keeps_training \
    tests/test_train_gpu.py 2>&1 | tail -20 | tee "$OUT/gpu_tests.log"
timeout 150 python benchmarks/packed_training.py --out "$OUT" --budget-s 120 2>&1 | tail -45
