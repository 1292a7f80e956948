#!/usr/bin/env bash
# A first check of a CUDA machine with only torch and transformers installed (scripts/gpu_check.py):
#   scripts/gpu_check.sh [--device cuda|cpu] [--out gpu_check.json] [--prompts 8] [--group-size 4]
# HF-engine episodes with the tiny model built in-process (bf16 on CUDA), one learner step
# (flash-attention 2 when importable, else sdpa), engine/learner logprob agreement, peak memory,
# tokens/s; writes a JSON report and exits 1 when a check fails. Needs no network and no vLLM/Ray/DeepSpeed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
[[ -x "$root/.venv/bin/python" && -z "${PYTHON:-}" ]] && PY="$root/.venv/bin/python"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" "$root/scripts/gpu_check.py" "$@"
