#!/usr/bin/env bash
# Installs pyengine and everything it needs from this checkout's own files, then builds
# the C++ extension (CPU kernels always; CUDA kernels where torch has CUDA and nvcc exists).
# A torch already installed (2.4 or newer, CPU or CUDA) is kept; otherwise the CPU build of
# torch 2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install -q torch==2.13.0
fi
"$PYTHON" -m pip install -q -r requirements.txt
"$PYTHON" -m pip install -q --no-deps torchattacks==3.5.1
# Model sources timm:NAME and torchvision:NAME (pyengine.models.sources) and their tests.
# torchvision 0.28.0 pairs with torch 2.13.0; --no-deps, as its exact torch pin would make pip
# replace the installed torch (PyPI's Linux wheel is a CUDA build: with a CPU torch its C++ ops
# do not load, and pyengine.models.sources.import_torchvision still imports its models).
if "$PYTHON" -c "import sys, torch; sys.exit(not torch.__version__.startswith('2.13.'))"; then
  "$PYTHON" -m pip install -q --no-deps torchvision==0.28.0 timm==1.0.31
else
  echo "pyengine: torch is not 2.13; install the torchvision that matches it, and timm, for timm:/torchvision: models"
fi
MAX_JOBS=${MAX_JOBS:-2} "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
"$PYTHON" -c "import pyengine.ops as ops; assert ops.extension_loaded(), 'pyengine._C did not build'; print('pyengine: extension built, CUDA kernels:', ops.cuda_kernels_built())"
