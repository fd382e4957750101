#!/usr/bin/env bash
# The one prepared GPU session (device time is scarce): the issue-3 smoke run (synthetic data made
# there, one epoch at 224 px, batch 16, bf16 through `cmt train`), then the training / inference
# throughput benchmark on the real cxr-public cache carried as .gpu/cache224.tgz.
# Run from the repository root on the GPU machine; results go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_MININTERVAL=5
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
tar xzf .gpu/cache224.tgz -C /tmp
t0=$(date +%s)
python3 -m cmtlib.cli data synth --out /tmp/synth --n 96 --size 224 --seed 0 &&
timeout 120 python3 -m cmtlib.cli train --params params/paper.yaml --set data_kind=manifest --set data_root=/tmp/synth/manifest.csv \
  --set epochs=1 --set batch_size=16 --set precision=bf16 --set encoder_weights=none --set run_dir=/tmp/runs/gpu-smoke 2>&1 | grep -v "^epoch" | tail -5
echo "smoke rc=$? in $(( $(date +%s) - t0 )) s"; cp /tmp/runs/gpu-smoke/history.csv "$OUT/smoke_history.csv" 2>/dev/null
timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/train_throughput.py --cache /tmp/cache224 --out "$OUT/throughput.json" 2>&1 | grep -v "^epoch"
echo "bench rc=$?"
