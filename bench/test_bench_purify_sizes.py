"""Purification time per step beyond CIFAR's 32 px: a user's ResNet-18 at 64, 128 and 224 px.

    python -m pytest bench/test_bench_purify_sizes.py --benchmark-only \
        --benchmark-json runs/bench_purify_sizes.json

The model comes through the model sources a user's does (``pyengine.models.sources``:
``timm:resnet18`` by default, random weights saved to a temporary safetensors file, ImageNet
normalisation inside, features hooked at the input of ``fc``), so the hook and normalisation
are part of what is timed. Each result records ``seconds_per_step`` (the mean time of one
``purify`` call divided by K: 4 views forward and input-gradient backward, plus the step) and
the device with its threads.

Settings from the environment: PYENGINE_BENCH_SOURCE (default ``timm:resnet18``; or e.g.
``torchvision:resnet18``), PYENGINE_BENCH_SIZES (default 64,128,224), PYENGINE_BENCH_BATCHES
(default 1,8), PYENGINE_BENCH_STEPS (K per call, default 2), PYENGINE_BENCH_PRECISION (default
auto: bf16 on CUDA and on CPUs with native bf16, else fp32).
"""
import os

import pytest
import torch

from pyengine import Purifier
from pyengine.models import ContrastiveHead, sources
from pyengine.provenance import device_name, provenance, utc_now

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SOURCE = os.environ.get("PYENGINE_BENCH_SOURCE", "timm:resnet18")
SIZES = [int(s) for s in os.environ.get("PYENGINE_BENCH_SIZES", "64,128,224").split(",")]
BATCHES = [int(b) for b in os.environ.get("PYENGINE_BENCH_BATCHES", "1,8").split(",")]
STEPS = int(os.environ.get("PYENGINE_BENCH_STEPS", "2"))
PRECISION = os.environ.get("PYENGINE_BENCH_PRECISION", "auto")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    library, name = SOURCE.split(":")
    try:
        lib = getattr(sources, f"import_{library}")()
    except ImportError as err:
        pytest.skip(str(err))
    torch.manual_seed(0)
    model = (lib.create_model(name, pretrained=False) if library == "timm"
             else lib.models.get_model(name, weights=None))
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("bench") / "weights.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", SIZES)
def test_purify_step(benchmark, weights, size, batch):
    model = sources.load_model(SOURCE, weights=weights, image_size=size).to(DEVICE)
    head = ContrastiveHead(model.record["num_features"], 128, 8)
    purifier = Purifier(model, head, bank=torch.randn(2048, 8), steps=STEPS, precision=PRECISION,
                        image_size=(size, size)).to(DEVICE)
    x = torch.rand(batch, 3, size, size, device=DEVICE)
    gen = torch.Generator().manual_seed(1)

    def run():
        out = purifier.purify(x, generator=gen)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"purify {SOURCE} {size}px"
    started = utc_now()
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(source=SOURCE, size=size, batch=batch, steps=STEPS, precision=PRECISION,
                                device=device_name(DEVICE), threads=torch.get_num_threads(),
                                provenance=provenance(started=started, device=DEVICE))
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["seconds_per_step"] = benchmark.stats.stats.mean / STEPS
