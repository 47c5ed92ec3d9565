#!/usr/bin/env bash
# Installs pyengine and everything it needs from this checkout's own files, then builds
# the C++ extension (CPU kernels always; CUDA kernels where torch has CUDA and nvcc exists).
# Versions come from constraints.txt (the ones CI tests). A torch already installed (CPU or
# CUDA, at least pyproject.toml's floor) is kept; otherwise constraints.txt's torch is installed.
# Installed: pyengine (editable) with its extras plots, export, attacks and test, and
# torchattacks with --no-deps (its metadata pins requests~=2.25.1 and torchvision, which its
# code does not import; see pyproject.toml).
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
MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" -c "$constraints" --no-build-isolation -e ".[plots,export,attacks,test]"
"${PIP[@]}" -c "$constraints" --no-deps torchattacks
"$PYTHON" -c "from pyengine.ops import _extension as ext; assert ext.extension_loaded(), ext.extension_error(); print('pyengine: extension built, CUDA kernels:', ext.cuda_kernels_built())"
