"""Deployment: the purify loop as ONNX (ONNX Runtime, TensorRT) with explicit gradients.

- :func:`export_onnx` writes purify + classify (K unrolled steps, or one step the runtime
  calls K times) as a standard-domain ONNX model plus a JSON sidecar;
- :class:`OnnxPurifier` runs it with numpy + ONNX Runtime, drawing the randomness on the host;
- :func:`check_model` checks a model against TensorRT's ONNX operator support matrix;
- :mod:`pyengine.deploy.tensorrt` builds and runs TensorRT plans where TensorRT is installed.
"""
from .runtime import OnnxPurifier, OnnxPurifyResult, draw_start_noise, draw_view_params


def __getattr__(name):
    # torch/onnx-heavy parts load on first use, so the runtime alone stays light.
    if name in ("export_onnx", "trace_purifier", "sidecar_path"):
        from . import onnx_export
        return getattr(onnx_export, name)
    if name in ("check_model", "CompatReport", "available_versions"):
        from . import trt_compat
        return getattr(trt_compat, name)
    if name in ("build_engine", "TensorRTRunner", "TensorRTUnavailable"):
        from . import tensorrt
        return getattr(tensorrt, name)
    raise AttributeError(f"module 'pyengine.deploy' has no attribute {name!r}")


__all__ = ["CompatReport", "OnnxPurifier", "OnnxPurifyResult", "TensorRTRunner", "TensorRTUnavailable",
           "available_versions", "build_engine", "check_model", "draw_start_noise", "draw_view_params",
           "export_onnx", "sidecar_path", "trace_purifier"]
