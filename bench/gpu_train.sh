#!/usr/bin/env bash
# GPU training check and throughput, ready for a CUDA machine (1 or 2 GPUs); runs from the repository root.
#   bash bench/gpu_train.sh [WORK]        (default WORK: ./gpu_bench_work)
# 1. a small synthetic competition + its cache; 2. training samples/s of the default recipe (AMP) on fold 0 for one
# epoch; 3. with 2+ GPUs the same through torchrun DDP (2 processes), to compare samples/s; 4. the CPU baseline of
# the same config for the ratio. Prints one line per measurement, taken from the fold's metrics.json.
set -euo pipefail
WORK="${1:-gpu_bench_work}"
mkdir -p "$WORK"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
if [ ! -f "$WORK/competition/train.csv" ]; then
  "$PY" -c "from kaggle_utils.synth import make_competition; make_competition('$WORK/competition', n_series=120, n_test=0, seed=7, workers=4)"
fi
"$PY" -m kaggle_utils preprocess --data-dir "$WORK/competition" --out "$WORK/cache" --workers 4 --no-progress
COMMON=(--cache "$WORK/cache" --config configs/default.yaml --fold 0 --no-progress train.epochs=1 train.num_workers=4)
rate() { "$PY" -c "import json,sys; h=json.load(open(sys.argv[1]))['history'][-1]; print(f\"{h['train_samples_per_s']:.1f} samples/s\")" "$1/fold0/metrics.json"; }
rm -rf "$WORK/run_gpu" && "$PY" -m kaggle_utils train "${COMMON[@]}" --out "$WORK/run_gpu" train.device=cuda train.amp=true
echo "default, 1 GPU, AMP: $(rate "$WORK/run_gpu")"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  rm -rf "$WORK/run_ddp" && "$PY" -m torch.distributed.run --nproc_per_node=2 -m kaggle_utils train "${COMMON[@]}" \
    --out "$WORK/run_ddp" train.device=cuda train.amp=true
  echo "default, 2 GPUs DDP, AMP: $(rate "$WORK/run_ddp")"
fi
rm -rf "$WORK/run_cpu" && "$PY" -m kaggle_utils train "${COMMON[@]}" --out "$WORK/run_cpu" train.device=cpu \
  train.max_train_minutes=2
echo "default, CPU baseline (2 min budget): $(rate "$WORK/run_cpu")"
