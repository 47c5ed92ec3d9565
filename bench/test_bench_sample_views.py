"""Fused sample_views against sample_views_reference: forward and forward+backward.

Run: python -m pytest bench/test_bench_sample_views.py --benchmark-only
"""
import platform

import pytest
import torch

from pyengine.ops import sample_views_reference
from pyengine.ops._extension import cuda_kernels_built, extension_loaded
from pyengine.ops.view_sampling import (BRIGHTNESS, CONTRAST, CROP_HEIGHT, CROP_LEFT, CROP_TOP, CROP_WIDTH, FLIP,
                                        GRAYSCALE, HUE, NUM_VIEW_PARAMS, SATURATION)

pytestmark = pytest.mark.skipif(not extension_loaded(), reason="pyengine._C is not built: no fused sample_views")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_kernels_built() else [])
# (N, V): a CIFAR batch of 512 images x 4 views (M = 2048), and one image x 4 views; 32x32 in and out.
CASES = {"batch512": (512, 4), "batch1": (1, 4)}


def view_params(m, generator):
    p = torch.zeros(m, NUM_VIEW_PARAMS)
    side = torch.rand(m, generator=generator) * 0.6 + 0.4
    p[:, CROP_HEIGHT], p[:, CROP_WIDTH] = side, side
    p[:, CROP_TOP], p[:, CROP_LEFT] = torch.rand(m, 2, generator=generator).mul(1 - side[:, None]).unbind(1)
    p[:, FLIP] = (torch.rand(m, generator=generator) < 0.5).float()
    p[:, [BRIGHTNESS, CONTRAST, SATURATION]] = torch.rand(m, 3, generator=generator) * 0.8 + 0.6
    p[:, HUE] = torch.rand(m, generator=generator) * 0.2 - 0.1
    p[:, GRAYSCALE] = (torch.rand(m, generator=generator) < 0.2).float()
    return p


def fused(x, params):
    return torch.ops.pyengine.sample_views(x, params, 32, 32, None, False)


def reference(x, params):
    return sample_views_reference(x, params, 32, 32)


def run(fn, x, params, backward, device):
    if backward:
        x.grad = None
        fn(x, params).square().sum().backward()
    else:
        fn(x, params)
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_sample_views(benchmark, impl, backward, case, device):
    n, v = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g).to(device).requires_grad_(backward)
    params = view_params(n * v, g).to(device)
    benchmark.group = f"sample_views {case} {'fwd+bwd' if backward else 'fwd'} {device}"
    benchmark.extra_info["device"] = (torch.cuda.get_device_name() if device == "cuda"
                                      else f"{platform.processor() or platform.machine()}, "
                                           f"{torch.get_num_threads()} threads")
    benchmark.extra_info["views"] = n * v
    benchmark(run, fused if impl == "fused" else reference, x, params, backward, device)
