"""torch.ops.pyengine.projection_step(_) (fused) against projection_step_reference (the specification)."""
import pytest
import torch

from pyengine.ops import (NORMS, extension_loaded, projection_step, projection_step_,
                          projection_step_reference)

if not extension_loaded():
    pytest.skip("pyengine._C is not built: no fused projection_step to test", allow_module_level=True)

cuda_only = pytest.mark.cuda_kernels  # conftest.py skips it without a GPU and CUDA kernels

fused = torch.ops.pyengine.projection_step
fused_ = torch.ops.pyengine.projection_step_
fused_backward = torch.ops.pyengine._projection_step_backward

SHAPES = [(4, 3, 8, 8), (2, 5), (3, 1, 7, 5), (1, 3, 32, 32)]
# L-inf rounds exactly like the reference; L2 sums in another order.
TOLERANCES = {
    ("linf", torch.float32): dict(atol=0, rtol=0), ("linf", torch.float64): dict(atol=0, rtol=0),
    ("linf", torch.float16): dict(atol=0, rtol=0), ("linf", torch.bfloat16): dict(atol=0, rtol=0),
    ("l2", torch.float32): dict(atol=1e-6, rtol=1e-5), ("l2", torch.float64): dict(atol=1e-12, rtol=1e-10),
    ("l2", torch.float16): dict(atol=4e-3, rtol=4e-3), ("l2", torch.bfloat16): dict(atol=3e-2, rtol=3e-2),
}


def make(shape, dtype=torch.float32, device="cpu", spread=0.05, seed=0, margin=0.0):
    """x0 in [margin, 1 - margin], x near it (so both clamps and the eps ball are active
    somewhere), a gradient."""
    g = torch.Generator().manual_seed(seed)
    x0 = margin + (1 - 2 * margin) * torch.rand(shape, generator=g, dtype=torch.float64)
    x = (x0 + spread * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (x, grad, x0))


def value_and_grads(fn, x, grad, x0, step_size, eps, norm, seed=1):
    x, x0 = x.detach().clone().requires_grad_(), x0.detach().clone().requires_grad_()
    out = fn(x, grad, x0, step_size, eps, norm)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gx, gx0 = torch.autograd.grad(out, (x, x0), weights.to(device=out.device, dtype=out.dtype))
    return out, gx, gx0


def check_against_reference(x, grad, x0, step_size, eps, norm, **tol):
    got = value_and_grads(fused, x, grad, x0, step_size, eps, norm)
    # fp16/bf16 L2: the reference rounds after each of its many ops (and is the less accurate of
    # the two), so compare with its fp64 evaluation on the same inputs.
    precise = norm == "l2" and x.dtype in (torch.float16, torch.bfloat16)
    args = [t.double() for t in (x, grad, x0)] if precise else (x, grad, x0)
    want = value_and_grads(projection_step_reference, *args, step_size, eps, norm)
    for g, w in zip(got, want):
        assert g.dtype == x.dtype
        torch.testing.assert_close(g.to(w.dtype), w, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, norm, dtype):
    step_size, eps = (2 / 255, 8 / 255) if norm == "linf" else (0.1, 0.3)
    check_against_reference(*make(shape, dtype), step_size, eps, norm, **TOLERANCES[norm, dtype])


@pytest.mark.parametrize("eps", [0.0, 1e-3, 100.0])
@pytest.mark.parametrize("norm", NORMS)
def test_eps_edge_cases(norm, eps):
    check_against_reference(*make((3, 3, 4, 4), torch.float64), 0.05, eps, norm, **TOLERANCES[norm, torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_linf_ties_and_clamp_boundaries_match_autograd(dtype):
    # Multiples of 1/8 are exact, so x - a*sign(g) lands exactly on x0 -/+ eps, 0 and 1: torch
    # splits max/min gradients evenly on ties and clamp passes them on its closed interval.
    values = torch.arange(0, 9, dtype=torch.float64) / 8
    x, x0, sign = torch.meshgrid(values, values, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), indexing="ij")
    shape = (9, 27)
    for eps in (0.0, 0.125, 0.25):
        check_against_reference(x.reshape(shape).to(dtype), sign.reshape(shape).to(dtype), x0.reshape(shape).to(dtype),
                                0.125, eps, "linf", atol=0, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_zero_gradient(norm):
    x, grad, x0 = make((2, 3, 4, 4), torch.float64)
    check_against_reference(x, torch.zeros_like(grad), x0, 0.1, 0.05, norm, **TOLERANCES[norm, torch.float64])


@pytest.mark.parametrize("norm", NORMS)
def test_non_contiguous_inputs(norm):
    x, grad, x0 = make((2, 3, 6, 6))
    x = x.contiguous(memory_format=torch.channels_last)
    grad = grad.transpose(2, 3).contiguous().transpose(2, 3)
    x0 = torch.cat([x0, x0], dim=3)[..., ::2]
    assert not (x.is_contiguous() or grad.is_contiguous() or x0.is_contiguous())
    check_against_reference(x, grad, x0, 0.03, 0.1, norm, **TOLERANCES[norm, torch.float32])


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("norm", NORMS)
def test_in_place(norm, contiguous):
    x, grad, x0 = make((3, 3, 5, 5))
    want = projection_step_reference(x, grad, x0, 0.03, 0.1, norm)
    target = x.clone() if contiguous else x.clone().contiguous(memory_format=torch.channels_last)
    fused_(target, grad, x0, 0.03, 0.1, norm)
    torch.testing.assert_close(target, want, **TOLERANCES[norm, torch.float32])
    again = x.clone()
    assert projection_step_(again, grad, x0, 0.03, 0.1, norm) is again
    torch.testing.assert_close(again, want, **TOLERANCES[norm, torch.float32])


def test_empty_input():
    x = torch.zeros(0, 3, 4, 4)
    assert fused(x, x, x, 0.1, 0.1, "l2").shape == x.shape
    assert fused_backward(x, x, x, x, 0.1, 0.1, "linf")[0].shape == x.shape


def gradcheck_inputs(norm, device="cpu"):
    """Values inside (0, 1) and away from the eps ball's faces, where the step is differentiable."""
    g = torch.Generator().manual_seed(0)
    x0 = 0.3 + 0.4 * torch.rand(2, 3, 3, 3, generator=g, dtype=torch.float64)
    x = x0 + 0.02 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    grad = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x, grad, x0 = (t.to(device) for t in (x, grad, x0))
    return x.requires_grad_(), grad, x0.requires_grad_(), 0.05 if norm == "l2" else 0.2


@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck(norm):
    x, grad, x0, eps = gradcheck_inputs(norm)
    assert torch.autograd.gradcheck(lambda a, b: fused(a, grad, b, 0.01, eps, norm), (x, x0))


@pytest.mark.parametrize("norm", NORMS)
def test_opcheck(norm):
    x, grad, x0 = make((2, 3, 4, 4))
    torch.library.opcheck(fused, (x.clone().requires_grad_(), grad, x0.clone().requires_grad_(), 0.03, 0.1, norm))
    torch.library.opcheck(fused_, (x.clone(), grad, x0, 0.03, 0.1, norm))
    torch.library.opcheck(fused_backward, (torch.randn_like(x), x, grad, x0, 0.03, 0.1, norm))


def test_public_function_uses_fused_kernel_without_warning(recwarn):
    x, grad, x0 = make((2, 3, 4, 4))
    torch.testing.assert_close(projection_step(x, grad, x0, 0.03, 0.1, "linf"), fused(x, grad, x0, 0.03, 0.1, "linf"))
    assert not [w for w in recwarn if "pyengine" in str(w.message)]


def test_torch_compile_fullgraph():
    x, grad, x0 = make((4, 3, 8, 8))

    def unrolled(a, b):
        for _ in range(2):
            a = projection_step(a, grad, b, 0.03, 0.1, "l2")
        return projection_step(a, grad, b, 0.01, 0.1, "linf").sum()

    torch._dynamo.reset()
    compiled = torch.compile(unrolled, fullgraph=True)
    a, b = x.clone().requires_grad_(), x0.clone().requires_grad_()
    got = compiled(a, b)
    got.backward()
    ra, rb = x.clone().requires_grad_(), x0.clone().requires_grad_()
    want = unrolled(ra, rb)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(a.grad, ra.grad)
    torch.testing.assert_close(b.grad, rb.grad)

    def purify(t):  # the purifier's no-grad loop, mutating its input
        for _ in range(2):
            projection_step_(t, grad, x0, 0.03, 0.1, "linf")
        return t

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(purify, fullgraph=True)(x.clone()), purify(x.clone()))


def test_reference_rejects_unknown_norm():
    x, grad, x0 = make((2, 3))
    with pytest.raises(ValueError, match=r"projection_step: norm must be one of \('linf', 'l2'\), got 'l1'"):
        projection_step_reference(x, grad, x0, 0.1, 0.1, "l1")


def _args(**changes):
    x, grad, x0 = make((2, 3, 4, 4))
    args = dict(x=x, grad=grad, x0=x0, step_size=0.1, eps=0.1, norm="linf")
    args.update(changes)
    return tuple(args.values())


@pytest.mark.parametrize("changes,match", [
    (dict(norm="l1"), "projection_step: norm must be 'linf' or 'l2', got 'l1'"),
    (dict(x=torch.tensor(0.5), grad=torch.tensor(1.0), x0=torch.tensor(0.5)),
     r"projection_step: x must be \[N, ...\] with at least 1 dim"),
    (dict(x=torch.zeros(4), grad=torch.zeros(4), x0=torch.zeros(4), norm="l2"),
     r"projection_step: x must be \[N, ...\] with at least 2 dims \(l2 norms are per image\)"),
    (dict(x=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), "projection_step: x must be a floating tensor"),
    (dict(grad=torch.zeros(2, 3, 4)), r"projection_step: grad must have x's shape \[2, 3, 4, 4\], got \[2, 3, 4\]"),
    (dict(x0=torch.zeros(1, 3, 4, 4)), r"projection_step: x0 must have x's shape \[2, 3, 4, 4\], got \[1, 3, 4, 4\]"),
    (dict(grad=torch.zeros(2, 3, 4, 4, dtype=torch.float64)), "projection_step: grad must have x's dtype Float"),
    (dict(x0=torch.zeros(2, 3, 4, 4, dtype=torch.float16)), "projection_step: x0 must have x's dtype Float"),
    (dict(step_size=-0.1), "projection_step: step_size must be >= 0, got -0.1"),
    (dict(eps=-1.0), "projection_step: eps must be >= 0, got -1"),
])
def test_argument_errors(changes, match):
    args = _args(**changes)
    with pytest.raises(RuntimeError, match=match):
        fused(*args)
    with pytest.raises(RuntimeError, match=match.replace("projection_step:", "projection_step_:")):
        fused_(args[0].clone(), *args[1:])


def test_backward_argument_errors():
    x, grad, x0 = make((2, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"_projection_step_backward: grad_out must have x's shape"):
        fused_backward(x[:1], x, grad, x0, 0.1, 0.1, "l2")
    with pytest.raises(RuntimeError, match="_projection_step_backward: grad_out must have x's dtype Float"):
        fused_backward(x.double(), x, grad, x0, 0.1, 0.1, "l2")
    with pytest.raises(RuntimeError, match="_projection_step_backward: norm must be 'linf' or 'l2'"):
        fused_backward(x, x, grad, x0, 0.1, 0.1, "L2")


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES + [(512, 3, 32, 32), (2, 3, 224, 224)])
def test_cuda_matches_reference(shape, norm, dtype):
    step_size, eps = (2 / 255, 8 / 255) if norm == "linf" else (0.1, 0.3)
    # x0 away from 0 and 1: on large fp16/bf16 images a few L2 outputs land within fp32
    # rounding of a clamp edge, where the kernel (fp32) and the fp64 reference may pass or
    # block that element's gradient differently; test_cuda_linf_ties_and_in_place covers edges.
    check_against_reference(*make(shape, dtype, "cuda", margin=0.02), step_size, eps, norm, **TOLERANCES[norm, dtype])


@cuda_only
def test_cuda_linf_ties_and_in_place():
    values = torch.arange(0, 9, dtype=torch.float64) / 8
    x, x0, sign = (t.reshape(9, 27).float().cuda() for t in torch.meshgrid(
        values, values, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), indexing="ij"))
    check_against_reference(x, sign, x0, 0.125, 0.125, "linf", atol=0, rtol=0)
    for norm in NORMS:
        want = projection_step_reference(x, sign, x0, 0.125, 0.125, norm)
        target = x.t().contiguous().t()
        fused_(target, sign, x0, 0.125, 0.125, norm)
        torch.testing.assert_close(target, want, **TOLERANCES[norm, torch.float32])


@cuda_only
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_gradcheck_and_opcheck(norm):
    x, grad, x0, eps = gradcheck_inputs(norm, "cuda")
    assert torch.autograd.gradcheck(lambda a, b: fused(a, grad, b, 0.01, eps, norm), (x, x0))
    torch.library.opcheck(fused, (x, grad, x0, 0.01, eps, norm))
    torch.library.opcheck(fused_, (x.detach().clone(), grad, x0.detach(), 0.01, eps, norm))
    torch.library.opcheck(fused_backward, (torch.randn_like(grad), x.detach(), grad, x0.detach(), 0.01, eps, norm))


@cuda_only
def test_cuda_inputs_on_other_device():
    x, grad, x0 = make((2, 3, 4, 4), device="cuda")
    with pytest.raises(RuntimeError, match="projection_step: grad must be on x's device cuda:0, got cpu"):
        fused(x, grad.cpu(), x0, 0.1, 0.1, "linf")
    with pytest.raises(RuntimeError, match="projection_step: x0 must be on x's device cuda:0, got cpu"):
        fused(x, grad, x0.cpu(), 0.1, 0.1, "l2")
