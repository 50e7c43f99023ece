#!/usr/bin/env bash
# One short device session: packed training end to end through the grid on CUDA, then the packed benchmark.
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu_check.sh   (results and logs land in $OUT)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
cat > /tmp/gpu_grid.toml <<'TOML'
name = "gpu_packed_smoke"
datasets = ["synthetic-nuclei"]
subsets = "all"
[model]
img_size = 64
base_channels = 8
[train]
max_epochs = 4
min_best_epoch = 0
checkpoint_every = 2
TOML
start=$(date +%s)
timeout 70 python -m ablation run /tmp/gpu_grid.toml --out /tmp/gpu_grid --no-progress 2>&1 | tail -15 | tee "$OUT/grid.log"
echo "grid seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/grid.log"
python -m ablation status /tmp/gpu_grid --quiet 2>&1 | tail -3 | tee -a "$OUT/grid.log"
timeout 75 python benchmarks/packed_training.py --models unet --k 1,4,16 --steps 8 --warmup 3 \
    --budget-s 60 --out "$OUT" 2>&1 | tail -25
