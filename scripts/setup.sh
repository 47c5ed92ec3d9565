#!/usr/bin/env bash
# Installs pyengine and everything it needs from this checkout's own files, then builds
# the C++ extension (CPU kernels always; CUDA kernels where torch has CUDA and nvcc exists).
# Versions come from constraints.txt (the ones CI tests). A torch already installed (CPU or
# CUDA, at least pyproject.toml's floor) is kept; otherwise constraints.txt's torch is installed.
# Installed: pyengine (editable) with its extras plots, export, attacks, models and test, and
# torchattacks, timm and torchvision with --no-deps (see below and pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP=("$PYTHON" -m pip install -q)
constraints=$(mktemp "${TMPDIR:-/tmp}/pyengine-constraints.XXXXXX")
trap 'rm -f "$constraints"' EXIT
if "$PYTHON" -c "import torch" 2>/dev/null; then
  grep -v '^torch==' constraints.txt > "$constraints"   # keep the installed torch
else
  cp constraints.txt "$constraints"
  "${PIP[@]}" -c "$constraints" torch
fi
# setup.py imports torch to configure the build, so the build is not isolated: its tools first.
"${PIP[@]}" -c "$constraints" setuptools ninja
MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" -c "$constraints" --no-build-isolation -e ".[plots,export,attacks,models,test]"
# Installed without their dependencies (pyproject.toml's extras hold what their code imports):
# torchattacks pins requests 2.25 and a torchvision; torchvision pins an exact torch, which pip
# would replace. PyPI's Linux torchvision is a CUDA build: with a CPU torch its C++ ops do not
# load, and pyengine.models.sources.import_torchvision still imports its models.
"${PIP[@]}" -c "$constraints" --no-deps torchattacks timm
if "$PYTHON" -c "import sys, torch; sys.exit(not torch.__version__.startswith('2.13.'))"; then
  "${PIP[@]}" -c "$constraints" --no-deps torchvision
else
  echo "pyengine: torch is not 2.13; install the torchvision that matches it for torchvision: models"
fi
"$PYTHON" -c "from pyengine.ops import _extension as ext; assert ext.extension_loaded(), ext.extension_error(); print('pyengine: extension built, CUDA kernels:', ext.cuda_kernels_built())"
