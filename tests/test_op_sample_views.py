"""torch.ops.pyengine.sample_views against sample_views_reference (the specification)."""
import contextlib
import math

import pytest
import torch

from pyengine.ops import sample_views, sample_views_reference
from pyengine.ops._extension import extension_loaded
from pyengine.ops.view_sampling import (BRIGHTNESS, CONTRAST, CROP_HEIGHT, CROP_LEFT, CROP_TOP, CROP_WIDTH, FLIP,
                                        GRAYSCALE, HUE, NUM_VIEW_PARAMS, SATURATION, identity_view_params)

pytestmark = pytest.mark.skipif(not extension_loaded(), reason="pyengine._C is not built: no fused sample_views")
cuda_only = pytest.mark.cuda_kernels  # conftest.py skips it without a GPU and CUDA kernels

# (N, V, H, W, out_h, out_w): V = 1 and 4, out size equal to, above and below the input, non-square.
SIZES = [(2, 1, 32, 32, 32, 32), (3, 4, 11, 13, 7, 9), (1, 4, 8, 8, 16, 12), (2, 2, 5, 17, 24, 3)]


def random_params(m, generator=None, jitter=(0.2, 1.8), hue=0.2, grayscale_p=0.3):
    """Crop boxes as RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)), flips, colour jitter."""
    def uniform(lo, hi):
        return torch.rand(m, generator=generator) * (hi - lo) + lo
    area = uniform(0.08, 1.0)
    ratio = uniform(math.log(3 / 4), math.log(4 / 3)).exp()
    height, width = (area / ratio).sqrt().clamp(max=1), (area * ratio).sqrt().clamp(max=1)
    p = torch.zeros(m, NUM_VIEW_PARAMS)
    p[:, CROP_HEIGHT], p[:, CROP_WIDTH] = height, width
    p[:, CROP_TOP], p[:, CROP_LEFT] = uniform(0, 1) * (1 - height), uniform(0, 1) * (1 - width)
    p[:, FLIP] = (uniform(0, 1) < 0.5).float()
    for col in (BRIGHTNESS, CONTRAST, SATURATION):
        p[:, col] = uniform(*jitter)
    p[:, HUE] = uniform(-hue, hue)
    p[:, GRAYSCALE] = (uniform(0, 1) < grayscale_p).float()
    return p


def fused(x, params, out_h, out_w, out_dtype=None, channels_last=False):
    return torch.ops.pyengine.sample_views(x, params, out_h, out_w, out_dtype, channels_last)


def inputs(n, v, h, w, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g, dtype=dtype).to(device)
    return x, random_params(n * v, g).to(device)


def assert_grads_close(got, want, atol):
    """fp32 grads may differ where a grey pixel saturated at 1 sits on the hue clamp's boundary
    (its pre-clamp value is 1 up to one ulp, so the mask depends on summation order)."""
    bad = (got - want).abs() > atol + 1e-4 * want.abs()
    assert bad.float().mean() < 2e-3, f"{int(bad.sum())} of {bad.numel()} gradient entries differ"


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-6)])
@pytest.mark.parametrize("size", SIZES)
def test_forward_matches_reference(size, dtype, atol):
    n, v, h, w, oh, ow = size
    x, p = inputs(n, v, h, w, dtype)
    torch.testing.assert_close(fused(x, p, oh, ow), sample_views_reference(x, p, oh, ow), atol=atol, rtol=0)


def test_identity_params_reproduce_the_image():
    x = torch.rand(2, 3, 9, 7)
    torch.testing.assert_close(fused(x, identity_view_params(6), 9, 7), x.repeat(3, 1, 1, 1))


@pytest.mark.parametrize("size", SIZES)
def test_backward_matches_reference_float64(size):
    n, v, h, w, oh, ow = size
    x, p = inputs(n, v, h, w, torch.float64)
    x.requires_grad_()
    g = torch.randn(n * v, 3, oh, ow, dtype=torch.float64)
    got, = torch.autograd.grad(fused(x, p, oh, ow), x, g)
    want, = torch.autograd.grad(sample_views_reference(x, p, oh, ow), x, g)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_backward_matches_reference_float32(size):
    n, v, h, w, oh, ow = size
    x, p = inputs(n, v, h, w)
    x.requires_grad_()
    g = torch.randn(n * v, 3, oh, ow)
    got, = torch.autograd.grad(fused(x, p, oh, ow), x, g)
    want, = torch.autograd.grad(sample_views_reference(x, p, oh, ow), x, g)
    assert_grads_close(got, want, atol=1e-4)


def smooth_case(device="cpu"):
    """float64 x and params that keep every pre-clamp value inside (0, 1), where the op is smooth in x."""
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(2, 3, 6, 5, generator=g, dtype=torch.float64)
    p = random_params(4, g, jitter=(0.95, 1.05), hue=0.05, grayscale_p=0.5)
    return x.to(device).requires_grad_(), p.to(device)


def test_gradcheck_float64():
    x, p = smooth_case()
    assert torch.autograd.gradcheck(lambda t: fused(t, p, 4, 7), (x,))


def test_gradgradcheck_float64():
    # create_graph recomputes the adjoint with the reference, so second-order attacks stay exact.
    x, p = smooth_case()
    assert torch.autograd.gradgradcheck(lambda t: fused(t, p, 4, 7), (x,))


def test_opcheck():
    x, p = inputs(2, 2, 6, 5)
    torch.library.opcheck(torch.ops.pyengine.sample_views.default, (x.requires_grad_(), p, 4, 7, None, False))
    torch.library.opcheck(torch.ops.pyengine.sample_views.default, (x, p, 3, 3, torch.float16, True))
    grad = torch.randn(4, 3, 4, 7)
    # The backward op has no autograd rule of its own: double backward recomputes with the reference.
    torch.library.opcheck(torch.ops.pyengine._sample_views_backward.default, (grad, x.detach(), p, 4, 7),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_non_contiguous_and_channels_last_inputs():
    x, p = inputs(2, 2, 10, 12)
    wide = torch.rand(4, 3, 12, 10).transpose(2, 3)[::2]
    padded_params = torch.cat([p, torch.rand(4, 3)], dim=1)[:, :NUM_VIEW_PARAMS]
    for xi in (x.contiguous(memory_format=torch.channels_last), wide):
        xi = xi.requires_grad_()
        grad = torch.randn(3, 5, 7, 4).permute(3, 0, 1, 2)  # [4, 3, 5, 7], non-contiguous
        out = fused(xi, padded_params, 5, 7)
        torch.testing.assert_close(out, sample_views_reference(xi, p, 5, 7), atol=1e-5, rtol=0)
        got, = torch.autograd.grad(out, xi, grad)
        want, = torch.autograd.grad(sample_views_reference(xi, p, 5, 7), xi, grad)
        assert_grads_close(got, want, atol=1e-4)


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_dtype_and_layout(in_dtype, out_dtype, channels_last):
    x, p = inputs(2, 4, 11, 13, in_dtype)
    out = fused(x, p, 6, 8, out_dtype, channels_last)
    assert out.dtype == out_dtype and out.shape == (8, 3, 6, 8)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    want = sample_views_reference(x, p, 6, 8, out_dtype, channels_last)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-5}[out_dtype]
    torch.testing.assert_close(out, want, atol=tol, rtol=0)


def test_half_output_backward_returns_input_dtype():
    x, p = inputs(2, 2, 8, 8)
    x.requires_grad_()
    out = fused(x, p, 8, 8, torch.float16, True)
    grad = torch.randn_like(out)
    got, = torch.autograd.grad(out, x, grad)
    want, = torch.autograd.grad(sample_views_reference(x, p, 8, 8, torch.float16, True), x, grad)
    assert got.dtype == torch.float32
    assert_grads_close(got, want, atol=1e-3)


def test_empty_inputs():
    assert fused(torch.rand(0, 3, 8, 8), torch.rand(0, NUM_VIEW_PARAMS), 5, 6).shape == (0, 3, 5, 6)
    x = torch.rand(2, 3, 8, 8)
    assert fused(x, torch.rand(0, NUM_VIEW_PARAMS), 5, 6).shape == (0, 3, 5, 6)
    grad_x = torch.ops.pyengine._sample_views_backward(torch.rand(0, 3, 5, 6), x, torch.rand(0, 10), 5, 6)
    torch.testing.assert_close(grad_x, torch.zeros_like(x))


@pytest.mark.parametrize("args,match", [
    ((torch.rand(3, 8, 8), torch.rand(3, 10), 4, 4, None, False), r"x must be 4-D \[N, 3, H, W\], got \[3, 8, 8\]"),
    ((torch.rand(1, 4, 8, 8), torch.rand(1, 10), 4, 4, None, False), r"x must be 4-D \[N, 3, H, W\], got \[1, 4"),
    ((torch.ones(1, 3, 8, 8, dtype=torch.int64), torch.rand(1, 10), 4, 4, None, False), "x must be float32.*Long"),
    ((torch.rand(1, 3, 0, 8), torch.rand(1, 10), 4, 4, None, False), "x must have H >= 1 and W >= 1"),
    ((torch.rand(1, 3, 8, 8), torch.rand(10), 4, 4, None, False), r"params must be 2-D \[M, 10\], got \[10\]"),
    ((torch.rand(1, 3, 8, 8), torch.rand(2, 9), 4, 4, None, False), r"params must be 2-D \[M, 10\], got \[2, 9\]"),
    ((torch.rand(1, 3, 8, 8), torch.rand(1, 10, dtype=torch.float64), 4, 4, None, False), "params must be float32"),
    ((torch.rand(2, 3, 8, 8), torch.rand(3, 10), 4, 4, None, False), "params must have a multiple of N = 2 rows .*, got M = 3"),
    ((torch.rand(1, 3, 8, 8), torch.rand(1, 10), 0, 4, None, False), "out_h and out_w must be >= 1, got 0 and 4"),
    ((torch.rand(1, 3, 8, 8), torch.rand(1, 10), 4, 4, torch.int32, False), "out_dtype must be .*Int"),
])
def test_argument_errors(args, match):
    with pytest.raises(RuntimeError, match="sample_views: " + match):
        fused(*args)


def test_backward_argument_errors():
    x, p = torch.rand(1, 3, 8, 8), torch.rand(2, 10)
    with pytest.raises(RuntimeError, match=r"_sample_views_backward: grad must be \[2, 3, 4, 5\], got \[2, 3, 4, 4\]"):
        torch.ops.pyengine._sample_views_backward(torch.rand(2, 3, 4, 4), x, p, 4, 5)
    with pytest.raises(RuntimeError, match="_sample_views_backward: grad must be float32.*Int"):
        torch.ops.pyengine._sample_views_backward(torch.ones(2, 3, 4, 5, dtype=torch.int32), x, p, 4, 5)
    with pytest.raises(RuntimeError, match="_sample_views_backward: params must be float32"):
        torch.ops.pyengine._sample_views_backward(torch.rand(2, 3, 4, 5), x, p.double(), 4, 5)


def test_public_wrapper_uses_the_op():
    x, p = inputs(2, 2, 8, 8)
    torch.testing.assert_close(sample_views(x, p.double(), 6, 6), fused(x, p, 6, 6), atol=0, rtol=0)


def test_torch_compile_fullgraph():
    x, p = inputs(2, 2, 8, 8)
    x.requires_grad_()

    def loss(t):
        return (sample_views(t, p, 6, 6) ** 2).sum()

    # aot_eager traces the fake kernels and the autograd rule as inductor would, without its
    # C++ compile (about 45 s cold on a 2-core machine).
    got, = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(x), x)
    want, = torch.autograd.grad(loss(x), x)
    torch.testing.assert_close(got, want)


@contextlib.contextmanager
def deterministic_algorithms(warn_only=False):
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_cpu_backward_is_deterministic():
    """Per-view tasks and one task per (image, channel) plane summing views in order: the same bits
    for any thread count, and no alert under deterministic mode."""
    x, p = inputs(3, 4, 40, 40, seed=1)
    grad = torch.randn(12, 3, 128, 128, generator=torch.Generator().manual_seed(2))  # one view per task
    threads = torch.get_num_threads()
    results = []
    try:
        with deterministic_algorithms():
            for n in (1, 3):
                torch.set_num_threads(n)
                results.append(torch.ops.pyengine._sample_views_backward(grad, x, p, 128, 128))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@cuda_only
@pytest.mark.parametrize("size", SIZES + [(2, 2, 96, 80, 112, 100)])
def test_cuda_matches_reference(size):
    n, v, h, w, oh, ow = size
    # The CPU and CUDA references differ themselves: ATen's CUDA division by a Python scalar
    # multiplies by its reciprocal, which moves the fp32 crop coordinates by an ulp (measured on
    # an H200: up to 3.1e-5 in fp32 and 1.5e-6 in fp64 on these sizes), hence a looser cross-device bound.
    for dtype, atol, cross_device in ((torch.float32, 1e-5, 1e-4), (torch.float64, 1e-6, 1e-5)):
        x, p = inputs(n, v, h, w, dtype, "cuda")
        x.requires_grad_()
        out = fused(x, p, oh, ow)
        torch.testing.assert_close(out, sample_views_reference(x, p, oh, ow), atol=atol, rtol=0)
        torch.testing.assert_close(out.cpu(), fused(x.detach().cpu(), p.cpu(), oh, ow), atol=cross_device, rtol=0)
        g = torch.randn_like(out)
        got, = torch.autograd.grad(out, x, g)
        want, = torch.autograd.grad(sample_views_reference(x, p, oh, ow), x, g)
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        else:
            assert_grads_close(got, want, atol=1e-4)


@cuda_only
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_dtypes_layouts_and_strides(in_dtype, out_dtype):
    x, p = inputs(2, 4, 11, 13, in_dtype, "cuda")
    for xi in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        xi = xi.detach().requires_grad_()
        out = fused(xi, p, 6, 8, out_dtype, True)
        assert out.dtype == out_dtype and out.is_contiguous(memory_format=torch.channels_last)
        tol = 8e-3 if torch.bfloat16 in (in_dtype, out_dtype) else 1e-3
        torch.testing.assert_close(out, sample_views_reference(xi, p, 6, 8, out_dtype, True), atol=tol, rtol=0)
        grad = torch.randn(8, 8, 3, 6, device="cuda", dtype=out_dtype).permute(0, 2, 3, 1)
        got, = torch.autograd.grad(out, xi, grad)
        want, = torch.autograd.grad(sample_views_reference(xi, p, 6, 8, out_dtype, True), xi, grad)
        assert got.dtype == in_dtype
        assert_grads_close(got.float(), want.float(), atol=tol * 10)


@cuda_only
def test_cuda_opcheck_errors_and_empty():
    x, p = inputs(2, 2, 6, 5, device="cuda")
    torch.library.opcheck(torch.ops.pyengine.sample_views.default, (x.requires_grad_(), p, 4, 7, None, False))
    torch.library.opcheck(torch.ops.pyengine._sample_views_backward.default,
                          (torch.randn(4, 3, 4, 7, device="cuda"), x.detach(), p, 4, 7),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    with pytest.raises(RuntimeError, match="sample_views: params must be on x's device cuda:0, got cpu"):
        fused(x, p.cpu(), 4, 4)
    with pytest.raises(RuntimeError, match="sample_views: params must be on x's device cpu, got cuda:0"):
        fused(x.cpu(), p, 4, 4)
    assert fused(x[:0], p[:0], 4, 4).shape == (0, 3, 4, 4)
    x64, p64 = smooth_case("cuda")
    # atomicAdd order varies between backward runs.
    assert torch.autograd.gradcheck(lambda t: fused(t, p64, 4, 7), (x64,), nondet_tol=1e-12)


@cuda_only
def test_cuda_backward_alerts_under_deterministic_mode():
    x, p = inputs(2, 2, 8, 8, device="cuda")
    x.requires_grad_()
    with deterministic_algorithms():
        with pytest.raises(RuntimeError, match=r"sample_views_backward \(CUDA\) does not have a deterministic"):
            fused(x, p, 6, 6).sum().backward()
    with deterministic_algorithms(warn_only=True):
        with pytest.warns(UserWarning, match=r"sample_views_backward \(CUDA\) does not have a deterministic"):
            torch.ops.pyengine._sample_views_backward(torch.ones(4, 3, 6, 6, device="cuda"), x.detach(), p, 6, 6)
