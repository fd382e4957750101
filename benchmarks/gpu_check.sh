#!/usr/bin/env bash
# The one prepared GPU session (device time is scarce), on the real cxr-public cache at 224 px
# carried as .gpu/cache224.tgz (`cmt data cache` here, then tar):
#   1. params/paper.yaml trains CMTNet at full width for its 30 epochs from that cache and is
#      evaluated (issue 6); the run's small files come back in $OUT (the checkpoints stay there).
#   2. benchmarks/train_throughput.py: training and inference images/s, the naive reference beside.
# An earlier session ran the issue-3 smoke (synthetic data, one epoch, bf16): RESULTS.md.
# Run from the repository root on the GPU machine; results go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
tar xzf .gpu/cache224.tgz -C /tmp
t0=$(date +%s)
run=/tmp/runs/paper-real
timeout "${TRAIN_TIMEOUT:-220}" python3 -m cmtlib.cli train --params params/paper.yaml --set cache_dir=/tmp/cache224 \
  --set encoder_weights=none --set run_dir=$run 2>&1 | grep -E "INFO|rror" | grep -E "training|epoch (1|10|20|30)/|rror|best"
echo "paper train rc=$? in $(( $(date +%s) - t0 )) s"
timeout 90 python3 -m cmtlib.cli evaluate $run 2>&1 | tail -2
echo "evaluate rc=$? at $(( $(date +%s) - t0 )) s"
mkdir -p "$OUT/paper-real"
for f in metrics.json history.csv predictions.csv threshold.json config.yaml train.log; do cp "$run/$f" "$OUT/paper-real/" 2>/dev/null; done
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/train_throughput.py --cache /tmp/cache224 --infer-compile --out "$OUT/throughput.json" 2>&1 | grep -v "^epoch"
echo "bench rc=$? at $(( $(date +%s) - t0 )) s"
