#!/usr/bin/env bash
# One lease of a GPU machine (about 9 minutes): the batched-inference benchmark and a
# calibration of the shipped model with the K=20, M=4 bound on the same 50 test maps as the
# CPU calibration (8 shard processes sharing the GPU).
#
# Here:   python scripts/gpu/export_test_maps.py --n 64 --out .transport/test64.npz
#         pip download the wheels the GPU image lacks into .whl/ (pyro-ppl, pyro-api, arviz,
#         xarray-einstats, h5netcdf, zuko; see the device notes)
# There:  OUT=<folder> bash scripts/gpu/device_checks.sh        (carry .transport and .whl)
# Back:   batched_gpu.json, bench.log, calibration.tgz (maps/*.json, calibration.json/png)
set -uo pipefail
OUT=${OUT:-outputs/gpu}
BUDGET=${BUDGET:-540}      # seconds for the whole script
N_CAL=${N_CAL:-50}
SHARDS=${SHARDS:-8}
mkdir -p "$OUT"
start=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/bench.log"
timeout 270 python3 benchmarks/bench_batched.py --device cuda --maps-npz .transport/test64.npz \
  --r256 --posterior --long-warmup 400 --long-samples 1000 --min-seconds 2 \
  --out "$OUT/batched_gpu.json" 2>&1 | grep -v Warning | tee -a "$OUT/bench.log"
left=$((BUDGET - (SECONDS - start) - 25))
echo "calibration: $left s left" | tee -a "$OUT/bench.log"
CAL=runs/calibration_gpu; mkdir -p "$CAL"
for i in $(seq 0 $((SHARDS - 1))); do
  timeout "$left" python3 evaluations/calibration.py --maps-npz .transport/test64.npz \
    --device cuda --n "$N_CAL" --timesteps 20 --draws 4 --max-batch 8192 --threads 2 \
    --shard "$i" --n-shards "$SHARDS" --out "$CAL" > "$CAL/shard$i.log" 2>&1 &
done
wait
ls "$CAL/maps" | wc -l | tee -a "$OUT/bench.log"
python3 evaluations/calibration.py --maps-npz .transport/test64.npz --n "$N_CAL" \
  --report-only --out "$CAL" 2>&1 | tail -30 | tee -a "$OUT/bench.log"
tail -n 3 "$CAL"/shard*.log > "$OUT/cal_shards_tail.log"
tar czf "$OUT/calibration.tgz" -C "$CAL" .
ls -la "$OUT"
