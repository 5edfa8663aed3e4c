#!/usr/bin/env bash
# GPU check (under 8 minutes on one H100): resnet18 fine-tuning throughput at 224 and 32 px with
# none / random / mixcd, snapshot vs plain inference, GPU utilisation. Writes $OUT/gpu_check.json.
# Runs from the repository root with the machine's own PyTorch + timm (no Hydra needed):
#   bash benchmarks/gpu_check.sh            (device tool: results come back under $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OUT="${OUT:-$PWD}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
timeout 480 "$PY" benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
