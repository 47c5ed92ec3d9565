#!/usr/bin/env bash
# CI: pyengine as a user installs it. Builds a wheel (compiling the extension again), checks
# what it carries, installs it into a fresh venv that holds constraints.txt's torch and the
# wheel's own dependencies only (no editable pyengine, no checkout on the path), and from
# another folder runs the demo on 5 images, an ONNX export and the TensorRT op check.
#
#   bash scripts/check_wheel.sh     # data: PYENGINE_DATA, default ../shared/data/cifar10
#
# MAX_JOBS (default 2) limits the compile; KEEP=1 keeps the work folder (printed) for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/check_common.sh check_wheel   # PYTHON, DATA, WORK

echo "check_wheel: building the wheel"
# build/lib* stages the package's files and is never pruned: a module that became a package
# (or was deleted) would ride along. The compiled objects in build/temp* are reused.
rm -rf build/lib.*
MAX_JOBS=${MAX_JOBS:-2} "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" .
wheels=("$WORK"/dist/pyengine-*.whl)
WHEEL=${wheels[0]}
"$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["pyengine/py.typed", "pyengine/_build_info.py", "pyengine/checkpoints/cifar10_preact_resnet_tiny_fgsm.safetensors",
        "pyengine/deploy/trt_supported_ops/tensorrt-8.6.json"]
missing = [n for n in need if n not in names]
missing += [] if any(n.startswith("pyengine/_C.") and n.endswith(".so") for n in names) else ["pyengine/_C*.so"]
stray = sorted(n for n in names if n.split("/")[0] in ("tests", "bench", "export", "scripts", "csrc"))
if missing or stray:
    sys.exit(f"check_wheel: {sys.argv[1]} lacks {missing}, carries {stray[:5]}")
print(f"check_wheel: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, package data and extension present")
EOF

echo "check_wheel: installing it into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
"$VPY" -m pip install -q -c constraints.txt torch              # the torch CI tests, as the wheel was built
"$VPY" -m pip install -q -c constraints.txt "$WHEEL[export]"    # its dependencies from its own metadata

cd "$WORK"   # away from the checkout: only the installed package can be imported
"$VPY" - <<'EOF'
import sys
from pathlib import Path
import pyengine
from pyengine.ops import _extension
assert Path(pyengine.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), \
    f"imported {pyengine.__file__}, not the wheel in {sys.prefix}"
assert _extension.extension_loaded(), _extension.extension_error()
print(f"check_wheel: pyengine {pyengine.__version__} from {Path(pyengine.__file__).parent}, extension loaded")
EOF
PYENGINE_DATA=$DATA "$WORK/venv/bin/pyengine" demo --n 5
# A shipped checkpoint by its name, from the installed package's data.
"$WORK/venv/bin/pyengine" export onnx --checkpoint cifar10_preact_resnet_tiny --steps 2 --out "$WORK/model.onnx"
"$WORK/venv/bin/pyengine" export check --onnx "$WORK/model.onnx" --trt all
echo "check_wheel: passed"
