"""Fused projection_step vs projection_step_reference on x [512, 3, 32, 32] (a batch of CIFAR
images): the in-place step of the purifier's no-grad loop, and forward + backward (unrolled attacks).

    python -m pytest bench/test_bench_projection_step.py --benchmark-only
"""
import platform

import pytest
import torch

from pyengine.ops import cuda_kernels_built, extension_loaded, projection_step_reference

if not extension_loaded():
    pytest.skip("pyengine._C is not built: nothing fused to benchmark", allow_module_level=True)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_kernels_built() else [])


def device_name(device):
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


def inputs(device):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(512, 3, 32, 32, generator=g)
    x = (x0 + 0.02 * torch.randn(x0.shape, generator=g)).clamp(0, 1)
    return x.to(device), torch.randn(x0.shape, generator=g).to(device), x0.to(device)


def run(benchmark, device, group, step):
    def timed():
        out = step()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"{group} x[512,3,32,32] {device}"
    benchmark.extra_info.update(device=device_name(device), threads=torch.get_num_threads())
    benchmark.pedantic(timed, rounds=20 if device == "cpu" else 200, warmup_rounds=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_step_in_place(benchmark, norm, impl, device):
    x, grad, x0 = inputs(device)
    if impl == "fused":
        step = lambda: torch.ops.pyengine.projection_step_(x, grad, x0, 2 / 255, 8 / 255, norm)  # noqa: E731
    else:
        step = lambda: x.copy_(projection_step_reference(x, grad, x0, 2 / 255, 8 / 255, norm))  # noqa: E731
    run(benchmark, device, f"projection_step_ {norm}", step)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_step_forward_backward(benchmark, norm, impl, device):
    x, grad, x0 = inputs(device)
    x.requires_grad_()
    x0.requires_grad_()
    fn = torch.ops.pyengine.projection_step if impl == "fused" else projection_step_reference
    run(benchmark, device, f"projection_step fwd+bwd {norm}",
        lambda: torch.autograd.grad(fn(x, grad, x0, 2 / 255, 8 / 255, norm).sum(), (x, x0)))
