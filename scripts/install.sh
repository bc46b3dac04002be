#!/usr/bin/env bash
# Create .venv and install pippo_lightning with every extra ([all]) and its dev tools ([dev]).
#
# PyTorch is chosen for the machine: with an NVIDIA GPU (nvidia-smi works) pip takes the default
# torch build (CUDA); without one it takes the CPU build pinned in TORCH_CPU_SPEC, so a CPU-only
# machine never pulls a multi-GB CUDA build. Override with TORCH_SPEC / TORCH_CPU_SPEC /
# TORCH_INDEX_URL (for example your site's CPU wheel index).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_CPU_SPEC="${TORCH_CPU_SPEC:-torch==2.13.0}"
TORCH_GPU_SPEC="${TORCH_SPEC:-torch}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[install] torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') already present"
else
  index_args=()
  [ -n "${TORCH_INDEX_URL:-}" ] && index_args=(--index-url "$TORCH_INDEX_URL")
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[install] NVIDIA GPU found: installing $TORCH_GPU_SPEC"
    "${PIP[@]}" "${index_args[@]}" "$TORCH_GPU_SPEC"
  else
    echo "[install] no GPU found: installing the CPU build $TORCH_CPU_SPEC"
    "${PIP[@]}" "${index_args[@]}" "$TORCH_CPU_SPEC"
  fi
fi

echo "[install] installing pippo_lightning (editable) with every extra and the dev tools"
"${PIP[@]}" -e ".[all,dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import pippo_lightning, torch; print('[install] ok: torch', torch.__version__)"
