"""torch.ops.pyengine.contrastive_loss (fused) against contrastive_loss_reference (the specification)."""
import pytest
import torch

from pyengine.ops import contrastive_loss, contrastive_loss_reference, extension_loaded

if not extension_loaded():
    pytest.skip("pyengine._C is not built: no fused contrastive_loss to test", allow_module_level=True)

cuda_only = pytest.mark.cuda_kernels  # conftest.py skips it without a GPU and CUDA kernels

fused = torch.ops.pyengine.contrastive_loss
fused_backward = torch.ops.pyengine._contrastive_loss_backward

# (V, N, D, bank rows): the smallest problem, V = 2/3/4, bank or not, D = 128.
SIZES = [(2, 1, 3, 0), (4, 8, 16, 0), (4, 8, 16, 37), (3, 5, 8, 64), (2, 33, 128, 100)]
TOLERANCES = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=2e-5, rtol=1e-4)}


def make(v, n, d, m, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(v * n, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    bank = torch.randn(m, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) if m else None
    return z, bank


def loss_and_grad(fn, z, v, temperature, bank, batch_negatives, seed=1):
    z = z.detach().clone().requires_grad_()
    loss = fn(z, v, temperature, bank, batch_negatives)
    weights = torch.randn(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=loss.dtype)
    (grad,) = torch.autograd.grad(loss, z, weights.to(loss.device))
    return loss, grad


def check_against_reference(z, v, temperature, bank, batch_negatives, **tol):
    loss, grad = loss_and_grad(fused, z, v, temperature, bank, batch_negatives)
    want_loss, want_grad = loss_and_grad(contrastive_loss_reference, z, v, temperature, bank, batch_negatives)
    assert loss.dtype == want_loss.dtype and grad.dtype == z.dtype
    torch.testing.assert_close(loss, want_loss, **tol)
    torch.testing.assert_close(grad, want_grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_negatives", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_matches_reference(size, batch_negatives, dtype):
    v, n, d, m = size
    z, bank = make(v, n, d, m, dtype)
    check_against_reference(z, v, 0.2, bank, batch_negatives, **TOLERANCES[dtype])


@pytest.mark.parametrize("batch_negatives", [False, True])
def test_small_temperature_does_not_overflow(batch_negatives):
    # exp(1 / 0.005) overflows fp32: only a shifted log-sum-exp stays finite.
    z, bank = make(4, 6, 8, 20)
    loss, grad = loss_and_grad(fused, z, 4, 0.005, bank, batch_negatives)
    want_loss, want_grad = loss_and_grad(contrastive_loss_reference, z.double(), 4, 0.005, bank.double(),
                                         batch_negatives)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), want_loss, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch_negatives", [False, True])
def test_reduced_precision_input_accumulates_in_fp32(dtype, batch_negatives):
    z, bank = make(4, 8, 16, 32, dtype)
    check_against_reference(z, 4, 0.2, bank.float(), batch_negatives, atol=1e-2, rtol=1e-2)


def test_zero_rows_follow_normalize_clamp():
    z, bank = make(3, 4, 5, 6, torch.float64)
    z[2] = 0
    z[7] = 1e-14  # below F.normalize's eps = 1e-12
    check_against_reference(z, 3, 0.5, bank, True, **TOLERANCES[torch.float64])


def test_bank_gets_no_gradient():
    z, bank = make(2, 3, 4, 5)
    z.requires_grad_()
    bank.requires_grad_()
    fused(z, 2, 0.3, bank, False).sum().backward()
    assert z.grad is not None and bank.grad is None


@pytest.mark.parametrize("batch_negatives", [False, True])
def test_non_contiguous_inputs(batch_negatives):
    z_base, bank_base = make(4, 5, 12, 9)
    z, bank = z_base[:, ::2], bank_base.t().contiguous().t()[:, 1::2]
    assert not z.is_contiguous() and not bank.is_contiguous()
    check_against_reference(z, 4, 0.2, bank, batch_negatives, **TOLERANCES[torch.float32])


def test_empty_batch():
    assert fused(torch.zeros(0, 4), 4, 0.2, None, True).shape == (0,)
    assert fused_backward(torch.zeros(0), torch.zeros(0, 4), 4, 0.2, None, True).shape == (0, 4)


@pytest.mark.parametrize("batch_negatives", [False, True])
@pytest.mark.parametrize("with_bank", [False, True])
def test_gradcheck(with_bank, batch_negatives):
    z, bank = make(3, 2, 4, 5 if with_bank else 0, torch.float64)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fused(t, 3, 0.5, bank, batch_negatives), (z,))


@pytest.mark.parametrize("batch_negatives", [False, True])
def test_gradgradcheck_through_the_reference_recompute(batch_negatives):
    # Second-order attacks (create_graph) must see the loss's curvature, not a zero.
    z, bank = make(3, 2, 4, 5, torch.float64)
    z.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: fused(t, 3, 0.5, bank, batch_negatives), (z,))


@pytest.mark.parametrize("batch_negatives", [False, True])
@pytest.mark.parametrize("with_bank", [False, True])
def test_opcheck(with_bank, batch_negatives):
    z, bank = make(4, 3, 8, 6 if with_bank else 0)
    torch.library.opcheck(fused, (z.requires_grad_(), 4, 0.2, bank, batch_negatives))
    torch.library.opcheck(fused_backward, (torch.randn(3), z.detach(), 4, 0.2, bank, batch_negatives))


def test_public_function_uses_fused_kernel_without_warning(recwarn):
    z, bank = make(4, 3, 8, 6)
    torch.testing.assert_close(contrastive_loss(z, 4, 0.2, bank, True), fused(z, 4, 0.2, bank, True))
    assert not [w for w in recwarn if "pyengine" in str(w.message)]


def test_torch_compile_fullgraph():
    z, bank = make(4, 8, 16, 32)

    def loss_and_grad_of(t):
        t = t.detach().requires_grad_()
        loss = contrastive_loss(t, 4, 0.2, bank, True).sum()
        return loss, torch.autograd.grad(loss, t)[0]

    torch._dynamo.reset()
    compiled = torch.compile(lambda t: contrastive_loss(t, 4, 0.2, bank, True).sum(), fullgraph=True)
    t = z.clone().requires_grad_()
    loss = compiled(t)
    loss.backward()
    want_loss, want_grad = loss_and_grad_of(z)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(t.grad, want_grad)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(8), 4, 0.2, None, True), r"contrastive_loss: z must be 2-D \[V\*N, D\], got \[8\]"),
    ((torch.zeros(8, 3, dtype=torch.int64), 4, 0.2, None, True), "contrastive_loss: z must be a floating tensor"),
    ((torch.zeros(8, 3), 1, 0.2, None, True), "contrastive_loss: n_views must be >= 2, got 1"),
    ((torch.zeros(9, 3), 4, 0.2, None, True), "contrastive_loss: z must have a multiple of n_views = 4 rows"),
    ((torch.zeros(8, 3), 4, 0.0, None, True), "contrastive_loss: temperature must be > 0, got 0"),
    ((torch.zeros(8, 3), 4, 0.2, torch.zeros(5, 4), True), r"contrastive_loss: bank must be 2-D \[M, 3\]"),
    ((torch.zeros(8, 3), 4, 0.2, torch.zeros(5), True), r"contrastive_loss: bank must be 2-D \[M, 3\]"),
    ((torch.zeros(8, 3), 4, 0.2, torch.zeros(5, 3, dtype=torch.int32), True),
     "contrastive_loss: bank must be a floating tensor"),
])
def test_argument_errors(args, match):
    with pytest.raises(RuntimeError, match=match):
        fused(*args)


def test_backward_argument_errors():
    with pytest.raises(RuntimeError, match=r"_contrastive_loss_backward: grad must be \[2\] \(one per image\)"):
        fused_backward(torch.zeros(3), torch.zeros(8, 3), 4, 0.2, None, True)
    with pytest.raises(RuntimeError, match="_contrastive_loss_backward: n_views must be >= 2"):
        fused_backward(torch.zeros(8), torch.zeros(8, 3), 1, 0.2, None, True)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_negatives", [False, True])
@pytest.mark.parametrize("size", SIZES + [(4, 512, 8, 4096), (4, 512, 16, 4096), (4, 64, 300, 50)])
def test_cuda_matches_reference(size, batch_negatives, dtype):
    v, n, d, m = size
    z, bank = make(v, n, d, m, dtype, "cuda")
    check_against_reference(z, v, 0.2, bank, batch_negatives, **TOLERANCES[dtype])


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision(dtype):
    z, bank = make(4, 16, 16, 64, dtype, "cuda")
    check_against_reference(z, 4, 0.2, bank.float(), True, atol=1e-2, rtol=1e-2)


@cuda_only
def test_cuda_small_temperature_and_zero_rows():
    z, bank = make(4, 6, 8, 20, torch.float64, "cuda")
    z[3] = 0
    check_against_reference(z, 4, 0.005, bank, True, **TOLERANCES[torch.float64])


@cuda_only
def test_cuda_gradcheck_and_opcheck():
    z, bank = make(3, 2, 4, 5, torch.float64, "cuda")
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fused(t, 3, 0.5, bank, True), (z,))
    torch.library.opcheck(fused, (z, 3, 0.5, bank, False))
    torch.library.opcheck(fused_backward, (torch.randn(2, device="cuda"), z.detach(), 3, 0.5, bank, True))


@cuda_only
def test_cuda_bank_on_other_device():
    z, bank = make(2, 3, 4, 5, device="cuda")
    with pytest.raises(RuntimeError, match="contrastive_loss: bank must be on z's device cuda:0, got cpu"):
        fused(z, 2, 0.2, bank.cpu(), True)
