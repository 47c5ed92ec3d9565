"""The engine's three fused ops, each with its pure-PyTorch reference.

``sample_views``, ``contrastive_loss`` and ``projection_step`` run the C++/CUDA kernels of
``pyengine._C`` where the extension is built for the tensors' device and fall back to
``*_reference`` (the specification) elsewhere.
"""
from ._extension import cuda_kernels_built, extension_loaded
from .contrastive_loss import contrastive_loss, contrastive_loss_reference
from .projection_step import NORMS, projection_step, projection_step_, projection_step_reference
from .view_sampling import (NUM_VIEW_PARAMS, identity_view_params, interpolation_matrices,
                            sample_views, sample_views_reference)

__all__ = [
    "NORMS", "NUM_VIEW_PARAMS", "contrastive_loss", "contrastive_loss_reference", "cuda_kernels_built",
    "extension_loaded", "identity_view_params", "interpolation_matrices", "projection_step", "projection_step_",
    "projection_step_reference", "sample_views", "sample_views_reference",
]
