"""Fused contrastive_loss vs contrastive_loss_reference, forward + backward, at the sizes of a
4-view purification of 512 CIFAR images: z [2048, D], D in {8, 16}, with a bank [4096, D].

    python -m pytest bench/test_bench_contrastive_loss.py --benchmark-only
"""
import platform

import pytest
import torch

from pyengine.ops import contrastive_loss_reference, cuda_kernels_built, extension_loaded

if not extension_loaded():
    pytest.skip("pyengine._C is not built: nothing fused to benchmark", allow_module_level=True)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_kernels_built() else [])
IMPLS = {"fused": torch.ops.pyengine.contrastive_loss, "reference": contrastive_loss_reference}


def device_name(device):
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dim", [8, 16])
def test_contrastive_loss_forward_backward(benchmark, dim, impl, device):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2048, dim, generator=g).to(device).requires_grad_()
    bank = torch.randn(4096, dim, generator=g).to(device)
    fn = IMPLS[impl]

    def step():
        (grad,) = torch.autograd.grad(fn(z, 4, 0.2, bank, True).sum(), z)
        if device == "cuda":
            torch.cuda.synchronize()
        return grad

    benchmark.group = f"contrastive_loss z[2048,{dim}] bank[4096,{dim}] {device}"
    benchmark.extra_info.update(device=device_name(device), threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=5 if device == "cpu" else 50, warmup_rounds=1)
