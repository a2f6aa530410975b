#!/usr/bin/env bash
# Train the shipped default emulator on a lent GPU machine (one command, about 9 minutes).
# How the shipped default.pt was made; new runs use scripts/gpu/emulator_lease.py (data,
# warm start, training, validation with both samplers and export in one budgeted call).
#
# Here:   python scripts/gpu/transport_dataset.py pack data/pm64 .transport/pm64.npz
# There:  OUT=<folder> TIME_LIMIT=420 bash scripts/gpu/train_default.sh   (carry .transport)
# Back:   cat <OUT>/last.pt.part-* > runs/default-gpu/checkpoints/last.pt
#         diffhmc train --resume runs/default-gpu ... continues it anywhere.
# The GPU image has its own torch/lightning/numba; the package runs from src/ uninstalled.
set -euo pipefail
OUT=${OUT:-outputs/gpu}
TIME_LIMIT=${TIME_LIMIT:-420}
BATCH=${BATCH:-128}
LR=${LR:-3e-4}
PY=${PY:-python3}
EXTRA=${EXTRA:-}     # more --set overrides (the local dry run uses a tiny model)
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
  $PY scripts/gpu/transport_dataset.py unpack .transport/pm64.npz data/pm64
  $PY -m diffhmc train --config configs/train_default.yaml --out runs/default-gpu \
    --set batch_size="$BATCH" --set lr="$LR" --set time_limit_s="$TIME_LIMIT" \
    --set max_steps=1000000 --set ckpt_every=5000 --set log_every=200 --set val_every=2000 $EXTRA
  timeout 90 $PY benchmarks/bench_emulator.py --batch "$BATCH" --steps 50 \
    --ddim-maps 64 --ddpm-maps 16 --out runs/default-gpu/bench || echo "benchmark failed or timed out"
} 2>&1 | tee "$OUT/train.out"
tar czf "$OUT/run_files.tgz" -C runs/default-gpu --exclude checkpoints .
split -b 15M runs/default-gpu/checkpoints/last.pt "$OUT/last.pt.part-"
ls -la "$OUT"
