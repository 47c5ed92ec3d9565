#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu with nvcc on a machine without a GPU or a CUDA build of torch,
# against the headers of a CUDA torch wheel (the CPU wheel lacks c10/cuda/impl/cuda_cmake_macros.h),
# with the flags torch.utils.cpp_extension gives nvcc. Stops at the first file that fails.
#
#   bash scripts/check_cuda_compile.sh          # PYENGINE_CACHE (default ~/.cache/pyengine) keeps the headers
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.14.1
CACHE=${PYENGINE_CACHE:-$HOME/.cache/pyengine}
HEADERS=$CACHE/torch-$TORCH_VERSION
INC=$HEADERS/torch/include
PYTHON=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pyengine-nvcc.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

if [[ ! -f $INC/c10/cuda/impl/cuda_cmake_macros.h ]]; then
  echo "check_cuda_compile: fetching torch $TORCH_VERSION headers into $HEADERS"
  download=$TMP/wheel
  "$PYTHON" -m pip download -q --no-deps "torch==$TORCH_VERSION" -d "$download"
  mkdir -p "$HEADERS"
  unzip -q -o "$download"/torch-"$TORCH_VERSION"-*.whl 'torch/include/*' -d "$HEADERS"
fi

PY_INC=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
shopt -s nullglob
sources=(csrc/cuda/*.cu)
if (( ${#sources[@]} == 0 )); then
  echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2
  exit 1
fi
for src in "${sources[@]}"; do
  echo "check_cuda_compile: $src"
  start=$SECONDS
  if ! "$NVCC" -c "$src" -o "$TMP/$(basename "$src" .cu).o" -std=c++20 -O3 -fmad=false -arch=sm_90 \
      -Xcompiler -fPIC --expt-relaxed-constexpr \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ -DWITH_CUDA -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
      -isystem "$INC" -isystem "$INC/torch/csrc/api/include" -isystem "$PY_INC" -I csrc; then
    echo "check_cuda_compile: FAILED: $src" >&2
    exit 1
  fi
  echo "check_cuda_compile: ok ($((SECONDS - start)) s)"
done
echo "check_cuda_compile: all ${#sources[@]} files compiled"
