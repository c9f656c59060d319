#!/usr/bin/env bash
# The one command a bare GPU machine runs: install what `make gpu-carry` built here, record what the machine has,
# then bench/gpu_check.py inside a time budget, its report and log written into $OUT (what comes back).
#
#   bash bench/gpu_device_run.sh [BUDGET_S [gpu_check flags ...]]     (default budget: 470 s, for a 540 s call)
#
# The machine has Python 3.12 with a CUDA torch, transformers and accelerate, and no network; .carry/ (git-ignored,
# carried with the call) holds the wheels it lacks and SmolLM2's tokenizer. PYTHON and SITE override the interpreter
# and the install folder, so the same script rehearses on a CPU with --tiny.
set -u
OUT=${OUT:-bench/results/device}
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
BUDGET=${1:-470}
shift || true
mkdir -p "$OUT"
if ! ls .carry/wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_device_run: no wheels in .carry/wheels: run \`make gpu-carry\` where pip works and carry .carry" >&2
    exit 2
fi
started=$(date +%s)
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .carry/wheels/*.whl || exit 3
export PYTHONPATH="$SITE:$PWD" QLORA4080_CACHE="$PWD/.carry/cache" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
{
    echo "installed in $(( $(date +%s) - started )) s into $SITE"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    "$PYTHON" -m pip show torch transformers accelerate peft trl datasets bitsandbytes unsloth unsloth_zoo pydantic tomlkit \
        triton xformers torchao cut-cross-entropy 2>&1 | grep -E "^(Name|Version|Location|WARNING)"
} > "$OUT/environment.txt" 2>&1
# what the install took comes out of the budget
exec "$PYTHON" bench/gpu_check.py --budget-s $(( BUDGET - ($(date +%s) - started) )) --out "$OUT" "$@"
