#!/usr/bin/env bash
# One lease of a GPU machine (about 9 minutes): a calibration of the shipped model with the
# K=20, M=4 bound on the same test maps as the CPU calibration (8 Dask workers sharing
# the GPU), then the batched-inference benchmark.
#
# Here:   python scripts/gpu/export_test_maps.py --n 64 --out .transport/test64.npz
#         pip download the wheels the GPU image lacks into .whl/ (pyro-ppl, pyro-api, arviz,
#         xarray-einstats, h5netcdf, platformdirs, zuko; see the device notes)
# There:  OUT=<folder> bash scripts/gpu/device_checks.sh   (carry .transport/test64.npz, .whl)
# Back:   batched_gpu.json, bench.log, calibration.tgz (per-map folders, calibration.json/png)
# BENCH_ARGS adds benchmark options (e.g. --skip-grad when the gradient part is done).
set -uo pipefail
OUT=${OUT:-outputs/gpu}
CAL_S=${CAL_S:-240}        # seconds for the calibration shards
BENCH_S=${BENCH_S:-270}    # seconds for the benchmark
N_CAL=${N_CAL:-50}
DATASET=${DATASET:-data/pm64}
SHARDS=${SHARDS:-8}
BENCH_ARGS=${BENCH_ARGS:-}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/bench.log"
python3 -c "import arviz, pyro, zuko; print('arviz', arviz.__version__, 'pyro', pyro.__version__)" \
  || exit 1
CAL=runs/calibration_gpu
mkdir -p "$CAL"
# the calibration runs `diffhmc infer --dataset` (infer_dataset): it needs the dataset
# folder $DATASET on this machine (with its test split); SHARDS Dask workers share the GPU
timeout "$CAL_S" python3 evaluations/calibration.py --dataset "$DATASET" --device cuda \
  --n "$N_CAL" --timesteps 20 --draws 4 --max-batch 1024 --threads 2 --workers "$SHARDS" \
  --out "$CAL" > "$CAL/run.log" 2>&1
echo "calibration maps finished: $(ls "$CAL"/*/summary.json | wc -l)" | tee -a "$OUT/bench.log"
python3 evaluations/calibration.py --report-only --out "$CAL" 2>&1 | tail -30 \
  | tee -a "$OUT/bench.log"
tail -n 3 "$CAL/run.log" > "$OUT/cal_run_tail.log"
tar czf "$OUT/calibration.tgz" -C "$CAL" .
timeout "$BENCH_S" python3 benchmarks/bench_batched.py --device cuda \
  --maps-npz .transport/test64.npz --r256 --posterior --long-warmup 150 --long-samples 250 \
  --min-seconds 2 $BENCH_ARGS --out "$OUT/batched_gpu.json" 2>&1 | grep -v Warning \
  | tee -a "$OUT/bench.log"
ls -la "$OUT"
