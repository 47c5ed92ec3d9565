"""Purify + classify latency: PyTorch eager (Purifier) against the exported ONNX model in ONNX Runtime.

Same K, batch and image size on both sides; the ONNX model is the unrolled export. The
trained checkpoint is used when present, else the same architecture with random weights
(latency does not depend on the weights). TensorRT is not timed here: none of this
project's machines has it (export/README.md gives the commands for a Jetson).

Run: python -m pytest bench/test_bench_export.py --benchmark-only
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from pyengine import Purifier, create_model
from pyengine.deploy import OnnxPurifier, export_onnx
from pyengine.hardware import cpu_description
from pyengine.models import ContrastiveHead
from pyengine.ops import extension_loaded

ort = pytest.importorskip("onnxruntime")

K = 10
SIZE = 32
BATCHES = [1, 32]
CHECKPOINT = Path(__file__).resolve().parent.parent / "pyengine" / "checkpoints" / "cifar10_preact_resnet_tiny.safetensors"
PROVIDERS = ["CPUExecutionProvider"] + (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in
                                        ort.get_available_providers() else [])


@pytest.fixture(scope="module")
def purifier():
    if CHECKPOINT.is_file():
        return Purifier.from_checkpoint(CHECKPOINT, steps=K)
    torch.manual_seed(0)
    model = create_model("preact_resnet_tiny")
    return Purifier(model, ContrastiveHead(model.num_features, 64, 16), bank=torch.randn(512, 16), steps=K)


@pytest.fixture(scope="module")
def exported(purifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_onnx")
    return {n: export_onnx(purifier, out / f"purify_b{n}.onnx", K, n, image_size=(SIZE, SIZE)) for n in BATCHES}


def info(benchmark, batch, backend):
    benchmark.group = f"purify+classify K={K} batch={batch} {SIZE}x{SIZE}"
    benchmark.extra_info.update({
        "K": K, "batch": batch, "image_size": SIZE, "backend": backend,
        "weights": CHECKPOINT.name if CHECKPOINT.is_file() else "random (checkpoint absent)",
        "cpu": cpu_description(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "fused_ops": extension_loaded(), "onnxruntime": ort.__version__, "torch": torch.__version__,
    })


@pytest.mark.parametrize("batch", BATCHES)
def test_pytorch_eager(benchmark, purifier, batch):
    info(benchmark, batch, "pytorch eager (Purifier, cpu)")
    x = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        purifier(x)  # warm-up
        benchmark.pedantic(purifier, args=(x,), rounds=3 if batch > 1 else 5, warmup_rounds=0)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES)
def test_onnxruntime(benchmark, exported, batch, provider):
    info(benchmark, batch, f"onnxruntime {provider}")
    runtime = OnnxPurifier(exported[batch], providers=[provider], seed=0)
    benchmark.extra_info["providers"] = runtime.providers
    x = np.random.default_rng(0).random((batch, 3, SIZE, SIZE), dtype=np.float32)
    runtime(x)  # warm-up (session initialisation, memory arena)
    benchmark.pedantic(runtime, args=(x,), rounds=3 if batch > 1 else 5, warmup_rounds=0)
