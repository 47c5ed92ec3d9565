"""TensorRT plans from exported purifiers, and a runner (optional: needs ``import tensorrt``).

``build_engine`` parses the ONNX model with TensorRT's ONNX parser and serialises a plan.
With ``fp16=True`` the classifier (nodes under ``classify/``) of an fp32 export may run in
fp16 while every layer of the purification steps is pinned to fp32 (layer precision and
output types, with ``OBEY_PRECISION_CONSTRAINTS``): without a loss scale the backward pass
can underflow in fp16 and flip the signs that drive the steps. An fp16 export
(``export_onnx(..., precision="fp16")``: the network in fp16 with its loss scaled by a power
of two, the rest fp32) carries its precisions in its types: the build keeps the layers with
fp16 outputs in fp16 and pins the others to fp32. :class:`TensorRTRunner` runs a plan with
device buffers from cuda-python (no torch). This module imports only numpy (TensorRT and
cuda-python on use), so the edge kit in ``export/`` loads it from its file on devices without
torch. Untested: none of the machines this project runs on has TensorRT (see
export/README.md); it is written against TensorRT's documented Python API (8.5+: named
tensors, ``execute_async_v3``), and the fp16 export's typed build is untested likewise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INSTALL_HINT = ("TensorRT's Python package is not installed. On a Jetson, use the one JetPack ships "
                "(`sudo apt-get install python3-libnvinfer`, TensorRT 8.5/8.6 on JetPack 5, 10.3 on JetPack 6); "
                "on an x86_64 machine with an NVIDIA GPU, `pip install tensorrt`. The ONNX model itself runs "
                "without it: pyengine.deploy.OnnxPurifier (ONNX Runtime).")
CUDA_PYTHON_HINT = ("TensorRTRunner needs cuda-python for its device buffers: `pip install cuda-python` "
                    "(a release matching the device's CUDA)")
FP16_SAFE_PREFIX = "classify/"


class TensorRTUnavailable(RuntimeError):
    """``import tensorrt`` failed; the message says what to install."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTUnavailable(f"{INSTALL_HINT} (import tensorrt: {err})") from None
    return trt


def import_cudart():
    """cuda-python's runtime API (``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as err:
            raise TensorRTUnavailable(f"{CUDA_PYTHON_HINT} (import cuda: {err})") from None
    return cudart


def _cuda(cudart, result):
    """The value of a cuda-python call's ``(error, value...)`` tuple; RuntimeError on an error."""
    err, *values = result
    if int(err.value) != 0:
        raise RuntimeError(f"CUDA error {err.value} ({cudart.cudaGetErrorName(err)[1]})")
    return values[0] if len(values) == 1 else None


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

    ``run(output_names, feeds: {name: ndarray}) -> [ndarray]``, the call shape of
    ``onnxruntime.InferenceSession.run``, so :class:`pyengine.deploy.OnnxPurifier` (which
    draws the randomness on the host) takes it as ``session=runner``. Device buffers and the
    stream come from cuda-python; host buffers are numpy arrays of the plan's shapes and dtypes.
    """

    def __init__(self, plan_path):
        trt, cudart = import_tensorrt(), import_cudart()
        self.trt, self.cudart = trt, cudart
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise ValueError(f"{plan_path} is not a plan for this TensorRT ({trt.__version__}) and GPU; rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.host = {n: np.empty(tuple(self.engine.get_tensor_shape(n)), trt.nptype(self.engine.get_tensor_dtype(n)))
                     for n in names}
        self.device = {}
        for name, array in self.host.items():
            self.device[name] = _cuda(cudart, cudart.cudaMalloc(array.nbytes))
            self.context.set_tensor_address(name, self.device[name])
        self.stream = _cuda(cudart, cudart.cudaStreamCreate())

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Copy ``feeds`` in, execute on the runner's stream, copy every output back."""
        cudart = self.cudart
        kinds = cudart.cudaMemcpyKind
        for name in self.inputs:
            host = self.host[name]
            value = np.asarray(feeds[name])
            if value.shape != host.shape:
                raise ValueError(f"input {name} must have shape {host.shape}, got {value.shape}")
            host[...] = value  # the plan's dtype; the host buffer outlives the asynchronous copy
            _cuda(cudart, cudart.cudaMemcpyAsync(self.device[name], host.ctypes.data, host.nbytes,
                                                 kinds.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execution failed")
        for name in self.outputs:
            host = self.host[name]
            _cuda(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, self.device[name], host.nbytes,
                                                 kinds.cudaMemcpyDeviceToHost, self.stream))
        _cuda(cudart, cudart.cudaStreamSynchronize(self.stream))
        return [self.host[n].copy() for n in (output_names or self.outputs)]

    def close(self) -> None:
        """Free the device buffers and the stream (also on garbage collection)."""
        for pointer in self.device.values():
            self.cudart.cudaFree(pointer)
        self.device = {}
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):
        if getattr(self, "stream", None) is not None:
            self.close()
