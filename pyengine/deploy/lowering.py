"""Input gradients as forward graphs: ``make_fx`` of ``torch.func.grad`` with backward ops lowered.

Neither ONNX exporter can export ``torch.autograd.grad``, and tracing ``torch.func.grad``
with ``make_fx`` leaves ``aten.convolution_backward`` in the graph, which has no ONNX
translation. Tracing with a decomposition that rewrites the input half of a convolution
backward as a transposed convolution (same weights, ``output_padding`` chosen to give back
the input size), and that of a transposed convolution (e.g. SOAP's reconstruction decoder)
as an ordinary one, yields a graph of ordinary forward ops whose numbers are autograd's
own, including its conventions at ties (clamp boundaries, ReLU at 0). Weight and bias
gradients are never needed: purification differentiates with respect to the input only.

Why not hand-written VJP modules: they must be written (and kept exactly consistent with
autograd's tie conventions) for every layer type of every architecture and objective;
this lowering covers any model built from convolutions and ops with aten decompositions.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch._decomp import decomposition_table
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten


def _convolution_backward(grad_out, input, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError("export lowers input gradients only; got a weight/bias gradient (are the "
                                  "model's parameters frozen with requires_grad_(False)?)")
    spatial = input.dim() - 2
    if len(stride) == 1:
        stride, padding, dilation = [stride[0]] * spatial, [padding[0]] * spatial, [dilation[0]] * spatial
    if transposed:
        # The adjoint of a transposed convolution is the ordinary convolution with the same
        # weights; output_padding < stride only adds rows that this convolution never reaches.
        grad_in = aten.convolution.default(grad_out, weight, None, list(stride), list(padding), list(dilation),
                                           False, [0] * spatial, groups)
        return grad_in, None, None
    pad_out = []
    for d in range(spatial):
        k = weight.shape[2 + d]
        covered = (grad_out.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k - 1) + 1
        pad_out.append(input.shape[2 + d] - covered)
    grad_in = aten.convolution.default(grad_out, weight, None, list(stride), list(padding), list(dilation),
                                       True, pad_out, groups)
    return grad_in, None, None


def _slice_backward(grad_out, input_sizes, dim, start, end, step):
    # aten's own decomposition writes into zeros with slice_scatter, an ONNX ScatterND that
    # opset 17 and TensorRT's parser lack; a contiguous slice's adjoint is zero padding.
    if step != 1:
        return decomposition_table[aten.slice_backward.default](grad_out, input_sizes, dim, start, end, step)
    dim = dim % len(input_sizes)
    size = input_sizes[dim]
    start = min(max(start + size if start < 0 else start, 0), size)
    after = size - start - grad_out.shape[dim]
    pad = [0, 0] * (len(input_sizes) - 1 - dim) + [start, after]
    return aten.constant_pad_nd.default(grad_out, pad, 0.0)


def _backward_decompositions() -> dict:
    """Every aten ``*_backward`` op with a decomposition (threshold, batch norm, softmax, ...),
    plus the convolution and slice rules above."""
    table = {op: fn for op, fn in decomposition_table.items() if "backward" in str(op)}
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten.slice_backward.default] = _slice_backward
    return table


DECOMPOSITIONS = _backward_decompositions()


def input_gradient(loss: Callable[..., torch.Tensor], scale: float = 1.0) -> Callable[..., torch.Tensor]:
    """``loss(x, *rest) -> Tensor[N]`` -> ``grad(x, *rest)``: d(``scale`` * sum of the losses)/dx.

    A power-of-two ``scale`` multiplies every tensor of the backward pass exactly (barring
    overflow), so the gradient's signs and directions are those of scale 1; in fp16 it lifts
    the backward out of the range where it underflows (:mod:`pyengine.deploy.onnx_export`).
    """
    if scale == 1:
        return torch.func.grad(lambda x, *rest: loss(x, *rest).sum())
    return torch.func.grad(lambda x, *rest: loss(x, *rest).sum() * scale)


def lower(fn: Callable[..., torch.Tensor], example_inputs: Sequence[torch.Tensor]) -> torch.fx.GraphModule:
    """Trace ``fn`` (which may call ``torch.func.grad``) into a GraphModule with no backward ops left.

    Shapes are static: the graph is valid for inputs shaped like ``example_inputs``. Module
    parameters and buffers that ``fn`` reads become constants of the graph.
    """
    with torch.no_grad():
        graph = make_fx(fn, decomposition_table=DECOMPOSITIONS, tracing_mode="real")(*example_inputs)
    left = sorted({str(n.target) for n in graph.graph.nodes
                   if n.op == "call_function" and "backward" in str(n.target)})
    if left:
        raise NotImplementedError(f"backward ops without a forward lowering remain in the graph: {left}; "
                                  "add a decomposition to pyengine.deploy.lowering.DECOMPOSITIONS")
    return graph
