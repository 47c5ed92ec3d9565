#!/usr/bin/env bash
# CI: the edge kit (export/) runs where torch is not installed. Exports an ONNX purifier with
# pyengine (this environment), assembles the kit folder, creates a venv holding only numpy,
# onnxruntime and Pillow (constraints.txt's versions), runs the kit there on 10 CIFAR-10 test
# images (3 model batches of 4, the last padded) and compares its logits and purified images
# with pyengine's own ONNX Runtime run of the same model, images and seed.
#
#   bash scripts/check_export_kit.sh     # data: PYENGINE_DATA, default ../shared/data/cifar10
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/check_common.sh check_export_kit   # PYTHON, DATA, WORK

"$PYTHON" -m pyengine export onnx --checkpoint pyengine/checkpoints/cifar10_preact_resnet_tiny.safetensors \
    --steps 3 --batch 4 --out "$WORK/model.onnx"
"$PYTHON" export/kit.py "$WORK/kit" --model "$WORK/model.onnx" > /dev/null
"$PYTHON" - "$DATA" "$WORK" <<'EOF'
# The images as PNG files for the kit, and pyengine's own ONNX Runtime result on them.
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pyengine.data import load_cifar10
from pyengine.deploy import OnnxPurifier

sys.path.insert(0, "export")
from purify_images import purify_all  # batching and padding as the kit does them

data, work = sys.argv[1], Path(sys.argv[2])
images = load_cifar10(data, "test", limit=10).images.numpy()
(work / "images").mkdir()
for i, image in enumerate(images):
    Image.fromarray(image.transpose(1, 2, 0)).save(work / "images" / f"{i:03d}.png")
logits, purified = purify_all(OnnxPurifier(work / "model.onnx", seed=7), images.astype(np.float32) / 255)
np.save(work / "ref_logits.npy", logits)
np.save(work / "ref_purified.npy", purified)
EOF

"$PYTHON" -m venv "$WORK/venv"
KPY=$WORK/venv/bin/python
"$KPY" -m pip install -q -c constraints.txt numpy onnxruntime pillow
cd "$WORK/kit"   # the assembled kit alone: no checkout beside it
"$KPY" -c "import importlib.util as u; missing = [m for m in ('torch', 'pyengine') if u.find_spec(m)]; \
assert not missing, f'the kit venv must not hold {missing}'"
"$KPY" purify_images.py model.onnx ../images --seed 7 --out ../predictions.csv \
    --logits ../kit_logits.npy --purified ../kit_purified.npy
"$KPY" - <<'EOF'
import csv
import numpy as np
ref_logits, kit_logits = np.load("../ref_logits.npy"), np.load("../kit_logits.npy")
ref_images, kit_images = np.load("../ref_purified.npy"), np.load("../kit_purified.npy")
rows = list(csv.DictReader(open("../predictions.csv")))
assert kit_logits.shape == ref_logits.shape == (10, 10) and len(rows) == 10, (kit_logits.shape, len(rows))
assert [int(r["prediction"]) for r in rows] == ref_logits.argmax(1).tolist()
worst = max(float(np.abs(kit_logits - ref_logits).max()), float(np.abs(kit_images - ref_images).max()))
assert worst <= 1e-6, f"the kit differs from pyengine's ONNX Runtime run by {worst}"
print(f"check_export_kit: 10 images, kit == pyengine's ONNX Runtime run (max difference {worst:.1e})")
EOF
# Without TensorRT, the TensorRT scripts say what to install and exit with status 3.
for run in "build_plan.py model.onnx model.plan" "purify_images.py model.onnx ../images --plan model.plan"; do
  set +e; "$KPY" $run 2> ../trt.err; code=$?; set -e
  if [[ $code != 3 ]] || ! grep -q "TensorRT's Python package is not installed" ../trt.err; then
    echo "check_export_kit: '$run' without TensorRT exited $code:" >&2; cat ../trt.err >&2; exit 1
  fi
done
echo "check_export_kit: passed"
