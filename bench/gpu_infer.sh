#!/usr/bin/env bash
# GPU inference latency per series, by stage, for the default ensemble (configs/default.yaml, 5 folds + L/R flip) on a
# realistic CTA (512 x 512, 300 slices) and MR series; baseline in the same run: 1 fold without flip.
# Target on a T4-class GPU: <= 5 s per series, I/O included.
#   bash bench/gpu_infer.sh                      # extra arguments go to bench/bench_infer.py
#   bash bench/gpu_infer.sh --syntax jpegls      # compressed DICOM
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
python bench/bench_infer.py --device cuda --repeats 3 "$@"
