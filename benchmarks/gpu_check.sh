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
# the language-model case (issue 26): needs transformers on the device machine; skipped with a line where absent
if "$PY" -c "import transformers" 2>/dev/null; then
  timeout 240 "$PY" benchmarks/generation_bench.py --device cuda --steps 60 --repeats 3 2>&1 | tee "$OUT/generation_bench.log"
else
  echo "generation benchmark skipped: transformers is not installed here" | tee "$OUT/generation_bench.log"
fi
