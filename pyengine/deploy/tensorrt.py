"""TensorRT plans from exported purifiers, and a runner (optional: needs ``import tensorrt``).

``build_engine`` parses the ONNX model with TensorRT's ONNX parser and serialises a plan.
With ``fp16=True`` the classifier (nodes under ``classify/``) of an fp32 export may run in
fp16 while every layer of the purification steps is pinned to fp32 (layer precision and
output types, with ``OBEY_PRECISION_CONSTRAINTS``): without a loss scale the backward pass
can underflow in fp16 and flip the signs that drive the steps. An fp16 export
(``export_onnx(..., precision="fp16")``: the network in fp16 with its loss scaled by a power
of two, the rest fp32) carries its precisions in its types: the build keeps the layers with
fp16 outputs in fp16 and pins the others to fp32. TensorRT timing is left to users with
TensorRT: none of the machines this project runs on has it (see export/README.md); the fp16
export's typed build is untested for the same reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INSTALL_HINT = ("TensorRT's Python package is not installed. On a Jetson, use the one JetPack ships "
                "(`sudo apt-get install python3-libnvinfer`, TensorRT 8.5/8.6 on JetPack 5, 10.3 on JetPack 6); "
                "on an x86_64 machine with an NVIDIA GPU, `pip install tensorrt`. The ONNX model itself runs "
                "without it: pyengine.deploy.OnnxPurifier (ONNX Runtime).")
FP16_SAFE_PREFIX = "classify/"


class TensorRTUnavailable(RuntimeError):
    """``import tensorrt`` failed; the message says what to install."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTUnavailable(f"{INSTALL_HINT} (import tensorrt: {err})") from None
    return trt


def _major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def fp32_layers(network, prefix: str = FP16_SAFE_PREFIX) -> list:
    """Layers that must stay fp32: all but the classifier's (named after ONNX nodes ``classify/...``)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return [layer for layer in layers
            if not (layer.name.startswith(prefix) or prefix in (getattr(layer, "metadata", "") or ""))]


def typed_fp32_layers(network, trt) -> list:
    """Layers of an fp16 export that must stay fp32: those without an fp16 output."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return [layer for layer in layers
            if not any(layer.get_output(i).dtype == trt.float16 for i in range(layer.num_outputs))]


def _has_fp16(network, trt) -> bool:
    return any(network.get_layer(i).get_output(j).dtype == trt.float16
               for i in range(network.num_layers) for j in range(network.get_layer(i).num_outputs))


def build_engine(onnx_path, plan_path, *, fp16: bool = False, workspace_gib: float = 2.0, verbose: bool = False) -> Path:
    """Parse ``onnx_path``, build and write the serialised plan to ``plan_path``; -> the plan path.

    ``fp16``: let the classifier use fp16 kernels; the purification stays fp32 (module doc).
    A model exported in fp16 builds in its own precisions whatever ``fp16`` says.
    Raises :class:`TensorRTUnavailable` without TensorRT, ValueError when parsing fails.
    """
    trt = import_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if _major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT {trt.__version__} could not parse {onnx_path}:\n{errors}\n"
                         f"(run `pyengine export check --onnx {onnx_path} --trt <version>` for a static check)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    typed = _has_fp16(network, trt)
    if fp16 or typed:
        if not builder.platform_has_fast_fp16:
            raise ValueError("fp16 requested (or an fp16 export) but this GPU has no fast fp16; build an fp32 "
                             "export with fp16=False")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for layer in typed_fp32_layers(network, trt) if typed else fp32_layers(network):
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                if layer.get_output(i).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(i, trt.float32)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ValueError(f"TensorRT failed to build an engine from {onnx_path} (rerun with verbose=True)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    return plan_path


class TensorRTRunner:
    """Run a plan built from an exported purifier; inputs and outputs as in its ONNX sidecar.

    ``run(feeds: {name: float32 ndarray}) -> {name: ndarray}``. Device buffers are torch
    CUDA tensors (JetPack's torch wheels work), so the runner needs torch with CUDA.
    :class:`pyengine.deploy.OnnxPurifier` draws the randomness; pass it ``session=runner``.
    """

    def __init__(self, plan_path):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("TensorRTRunner needs a CUDA GPU visible to torch")
        self.trt, self.torch = trt, torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise ValueError(f"{plan_path} is not a plan for this TensorRT ({trt.__version__}) and GPU; rebuild it here")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.buffers = {n: torch.empty(tuple(self.engine.get_tensor_shape(n)), dtype=torch.float32, device="cuda")
                        for n in self.names}
        for name, buffer in self.buffers.items():
            self.context.set_tensor_address(name, buffer.data_ptr())
        self.stream = torch.cuda.Stream()

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Same call shape as ``onnxruntime.InferenceSession.run``."""
        torch = self.torch
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                self.buffers[name].copy_(torch.from_numpy(np.ascontiguousarray(feeds[name])), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return [self.buffers[n].cpu().numpy() for n in (output_names or self.outputs)]
