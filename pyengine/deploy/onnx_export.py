"""``export_onnx``: the defended classifier as one ONNX model of standard-domain ops.

Two graphs are exported from PyTorch with the dynamo exporter: one purification step
(:class:`.graph.PurifyStepAtRadius`, its input gradient lowered to forward ops, the
radius eps an input fed by a constant) and the classifier. They are then assembled in
ONNX: the unrolled model is the random start, K copies of the step (sharing one set of
weights) and the classifier; the one-step model is the step followed by the classifier.
Tracing the step once keeps export time flat in K. Node names carry the part they belong
to (``start/``, ``step{k}/``, ``classify/``; min-aux: ``radius{e}/step{k}/``, ``select/``):
TensorRT's fp16 build of an fp32 export keeps everything but ``classify/`` in fp32. The assembled models
compute what :class:`.graph.PurifyClassify` and :class:`.graph.PurifyOneStep` compute in
PyTorch (exporting those directly works too, at K times the export time).

Inputs (float32, static shapes), unrolled: ``x [N,3,H,W]`` in [0, 1], ``start_noise
[N,3,H,W]`` (the random start's offset, already scaled by eps), and per objective random
input, e.g. ``view_params [K,V*N,10]``; outputs ``logits [N,C]``, ``purified [N,3,H,W]``.
One-step: ``x``, ``x_k``, ``view_params [V*N,10]`` -> ``logits`` (of x_{k+1}), ``x_next``.
SOAP's objectives (rotation, consistency, reconstruction) have no random inputs and SOAP
starts from the input itself (``start_noise`` is zeros). SOAP's min-aux selection
(:class:`pyengine.soap.MinAuxPurifier`, Section 3.3) is unrolled only: input ``x``; T steps
for each distinct radius, L_aux of each result (and of x, radius 0), a per-image ArgMin
(ties to the smaller radius) and GatherElements; outputs ``logits``, ``purified`` and the
chosen ``radius [N]``. A JSON sidecar (``<model>.json``) carries what the runtime needs.

fp16 (``precision="fp16"``, the contrastive objective): the backbone and head run in fp16,
weights and activations, in the step's forward and backward and in the classifier, where
nearly all the FLOPs are; the iterate, the rendered views, the loss over the bank (a
softmax over thousands of negatives) and the projection stay fp32, and the graph's inputs
and outputs are float32 as in the fp32 export. The L-inf step uses only the sign of the
input gradient, so the loss is multiplied by a power of two S before the backward pass:
every backward value is S times larger (exactly, in fp32: the fp32 step is unchanged to the
bit), which lifts the small ones out of fp16's subnormal range (below 2^-14, fewer bits)
and away from zero (below 2^-25). :data:`FP16_LOSS_SCALE` = 256 is what
:func:`.sign_agreement.choose_loss_scale` gives for the largest backward value measured on
the shipped FGSM-RS tiny checkpoint (11.8, at the head's output, 64 CIFAR-10 images): the
largest power of two that keeps it 16x below fp16's maximum, 65,504. On them the scale changes little (the
backward is well scaled: per-image losses are summed, not averaged, and 1/temperature = 5);
docs/BENCHMARKS.md has the measured sign agreement with and without it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..purify.purifier import Purifier
from ..soap.select import MinAuxPurifier
from .graph import PurifyStep, PurifyStepAtRadius, build_modules
from .lowering import lower
from .objectives import ExportableObjective
from .precision import FP16_LOSS_SCALE, Fp16Classifier, check_loss_scale

FORMAT = "pyengine-onnx-purifier"
FORMAT_VERSION = 1
VIEW_PARAM_COLUMNS = ["crop_top", "crop_left", "crop_height", "crop_width", "flip", "brightness",
                      "contrast", "saturation", "hue", "grayscale"]
# Reduce ops whose axes moved from an attribute to an input in opset 18 (ReduceSum did so in 13).
_AXES_TO_ATTRIBUTE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def _to_onnx(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str],
             opset: int) -> onnx.ModelProto:
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed" notices: irrelevant here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=max(opset, 18),
                                        input_names=input_names, output_names=output_names,
                                        optimize=True, verbose=False)
        finally:
            registration.setLevel(level)
    model = program.model_proto
    if model.functions:
        raise ValueError(f"the exporter left model-local functions {[f.name for f in model.functions]}; "
                         "they cannot be assembled")
    return downgrade_opset(model, opset) if opset < 18 else model


def downgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Opset 18 -> ``opset`` (13..17) for the ops this export emits: Reduce* axes back to
    attributes; Pad, which only gained an optional axes input, as it is.

    onnx's own converter fails on these graphs (it wants Constant nodes, and it leaves
    ``noop_with_empty_axes`` behind), so the few rewrites are done here; any other op whose
    schema changed after ``opset`` is an error rather than a silently wrong model.
    """
    if not 13 <= opset <= 18:
        raise ValueError(f"opset must lie in [13, 18], got {opset}")
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _AXES_TO_ATTRIBUTE and len(node.input) > 1:
            if node.input[1] not in consts:
                raise ValueError(f"{node.op_type} node {node.name!r} has computed axes; cannot express it in opset {opset}")
            axes = [int(a) for a in consts[node.input[1]].reshape(-1)]
            del node.input[1]
            noop = [a for a in node.attribute if a.name == "noop_with_empty_axes"]
            for a in noop:
                node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("axes", axes))
        elif node.op_type == "Pad" and (len(node.input) < 4 or not node.input[3]):
            pass  # opset 18 only added the optional axes input: without it, Pad is opset 13's
        elif node.op_type == "ScatterElements" and opset >= 16 and _reduction(node) in ("none", "add", "mul"):
            pass  # opset 18 only added reduction max/min (max-pool backward emits add)
        elif node.op_type in _AXES_TO_ATTRIBUTE:
            for a in [a for a in node.attribute if a.name == "noop_with_empty_axes"]:
                if a.i:
                    raise ValueError(f"{node.name!r}: noop_with_empty_axes=1 has no opset-{opset} form")
                node.attribute.remove(a)
        else:
            schema = onnx.defs.get_schema(node.op_type, 18, node.domain)
            if schema.since_version > opset:
                raise ValueError(f"{node.op_type} node {node.name!r} uses the opset-{schema.since_version} "
                                 f"schema, which opset {opset} lacks")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    return model


def _reduction(node: onnx.NodeProto) -> str:
    return next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")


class _Assembler:
    """Builds one graph out of copies of exported graphs, sharing identical initializers."""

    def __init__(self):
        self.nodes, self.initializers, self._by_content = [], [], {}

    def initializer(self, name: str, array) -> str:
        return self._add_init(numpy_helper.from_array(array, name))

    def _add_init(self, tensor: onnx.TensorProto) -> str:
        key = (tensor.data_type, tuple(tensor.dims), hashlib.sha1(numpy_helper.to_array(tensor).tobytes()).hexdigest())
        if key not in self._by_content:
            self._by_content[key] = tensor.name
            self.initializers.append(tensor)
        return self._by_content[key]

    def inline(self, model: onnx.ModelProto, prefix: str, inputs: dict[str, str]) -> dict[str, str]:
        """Copy ``model``'s nodes, input ``i`` reading ``inputs[i]``; -> its output names in the copy."""
        names = dict(inputs)
        for init in model.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = f"{prefix}{init.name}"
            names[init.name] = self._add_init(copy)
        for node in model.graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise ValueError(f"subgraphs are not supported in assembled models (node {node.name!r})")
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.metadata_props[:]
            copy.name = f"{prefix}{node.name}"
            for i, name in enumerate(node.input):
                if name:
                    copy.input[i] = names.setdefault(name, f"{prefix}{name}")
            for i, name in enumerate(node.output):
                copy.output[i] = names.setdefault(name, f"{prefix}{name}")
            self.nodes.append(copy)
        return {o.name: names[o.name] for o in model.graph.output}

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


def _value_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))


@dataclass
class TracedPurifier:
    """The two exported graphs of a purifier at one batch, image size and opset (see module doc)."""

    purifier: Purifier | MinAuxPurifier
    objective: ExportableObjective
    batch: int
    size: tuple[int, int]
    opset: int
    step_model: onnx.ModelProto  # (x0, xk, eps, *randoms) -> x_next
    classify_model: onnx.ModelProto  # (x) -> logits
    random_shapes: dict[str, tuple[int, ...]]
    step: PurifyStep  # the traced step in PyTorch (PurifyClassify(classifier, step, K) is the unrolled model)
    loss_model: onnx.ModelProto | None = None  # (x) -> loss [N]: the objective, for min-aux's selection
    precision: str = "fp32"
    loss_scale: float = 1.0

    @property
    def num_classes(self) -> int:
        return int(self.classify_model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)


def trace_purifier(purifier: Purifier | MinAuxPurifier, batch: int = 1, *,
                   image_size: tuple[int, int] | None = None, opset: int = 17, precision: str = "fp32",
                   loss_scale: float | None = None) -> TracedPurifier:
    """Export one step and the classifier (the slow part of :func:`export_onnx`, independent of
    K and form), and for a :class:`~pyengine.soap.MinAuxPurifier` the objective too.

    ``precision="fp16"`` (contrastive objective): the backbone and head, in the step's forward
    and backward and in the classifier, run in fp16; the iterate, the views, the loss over
    the bank and the projection stay fp32 (module doc). ``loss_scale``: a power of two
    multiplying the loss before the backward pass (default :data:`FP16_LOSS_SCALE` in fp16,
    1 in fp32); it changes no step."""
    min_aux = isinstance(purifier, MinAuxPurifier)
    if not isinstance(purifier, Purifier) and not min_aux:
        raise TypeError(f"purifier must be a pyengine Purifier or MinAuxPurifier, got {type(purifier).__name__}")
    loss_scale = check_loss_scale(loss_scale, precision)
    h, w = image_size or _default_size(purifier)
    source = (getattr(purifier, "manifest", None) or {}).get("model_source")
    if source and (h, w) != tuple(purifier.image_size):
        raise ValueError(f"image_size {h}x{w}: the checkpoint defends {source['source']} at "
                         f"{purifier.image_size[0]}x{purifier.image_size[1]} pixels only")
    objective, step = build_modules(purifier, batch, h, w, precision=precision, loss_scale=loss_scale)
    x = torch.rand(batch, 3, h, w)
    randoms = objective.draw(batch, h, w, generator=torch.Generator().manual_seed(0))
    shapes = objective.random_inputs(batch, h, w)
    if min_aux and shapes:
        raise NotImplementedError(f"min-aux export needs an objective without random inputs; "
                                  f"{objective.name!r} draws {sorted(shapes)}: export a fixed radius")
    radius_step = PurifyStepAtRadius(step.gradient, step.step_size, step.norm)
    eps = torch.tensor(step.eps, dtype=torch.float32)
    # Distinct tensors for x0 and xk: the tracer would alias one tensor passed twice into one input.
    step_model = _to_onnx(radius_step, (x, x.clone(), eps, *randoms), ["x0", "xk", "eps", *shapes], ["x_next"],
                          opset)
    classifier = Fp16Classifier(objective.classifier16) if precision == "fp16" else purifier.classifier
    classify_model = _to_onnx(classifier, (x,), ["x"], ["logits"], opset)
    loss_model = None
    if min_aux:  # L_aux of each radius's result, for the selection (the lambda: make_fx counts a method's self)
        loss_model = _to_onnx(lower(lambda xs: objective.loss(xs), [x]), (x,), ["x"], ["loss"], opset)
    return TracedPurifier(purifier, objective, batch, (h, w), opset, step_model, classify_model, shapes, step,
                          loss_model, precision, loss_scale)


def export_onnx(purifier: Purifier | TracedPurifier, path: str | Path, steps: int | None = None, batch: int = 1, *,
                opset: int = 17, unrolled: bool = True, image_size: tuple[int, int] | None = None,
                precision: str = "fp32", loss_scale: float | None = None) -> Path:
    """Write ``path`` (.onnx) and its JSON sidecar; -> the model path.

    Args:
        purifier: the engine purifier (classifier, objective, step rule) to export, or a
            :func:`trace_purifier` result (then ``batch``, ``opset`` and ``image_size`` come from it).
        steps: K (default: ``purifier.steps``); for the one-step form it is the runtime's default.
            A :class:`~pyengine.soap.MinAuxPurifier` exports its own T (unrolled only).
        batch: N, fixed in the graph.
        opset: ONNX opset, 13..18 (TensorRT 8.5/8.6 read up to 17).
        unrolled: K steps in one graph (True) or one step the runtime calls K times.
        image_size: (H, W); default: the architecture's input size (32x32 for CIFAR models).
        precision, loss_scale: as :func:`trace_purifier` takes them ("fp16": the network in
            fp16, the loss scaled by a power of two; inputs and outputs stay float32).
    """
    if sidecar_path(path) == Path(path):
        raise ValueError(f"path {path}: the model's JSON sidecar takes that name and would overwrite the model; "
                         "name the model *.onnx")
    traced = purifier if isinstance(purifier, TracedPurifier) else None
    engine = traced.purifier if traced else purifier
    steps = engine.steps if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(engine, MinAuxPurifier):
        if not unrolled:
            raise ValueError("min-aux selects each image's radius after all T steps of every radius, so it has "
                             "no one-step form: export it unrolled, or a fixed radius (soap_purifier(..., eps=...))")
        if steps != engine.steps:
            raise ValueError(f"this min-aux purifier runs T={engine.steps} steps (its radii grid depends on T); "
                             f"got steps={steps}: load it with steps={steps} instead")
    traced = traced or trace_purifier(engine, batch, image_size=image_size, opset=opset, precision=precision,
                                      loss_scale=loss_scale)
    model = assemble(traced, steps, unrolled)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    sidecar = _sidecar(traced, path, unrolled, steps, [(i.name, _shape(i)) for i in model.graph.input],
                       [(o.name, _shape(o)) for o in model.graph.output])
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def assemble(traced: TracedPurifier, steps: int, unrolled: bool) -> onnx.ModelProto:
    """The unrolled (K steps) or one-step model from the traced graphs, checked."""
    n, (h, w), opset = traced.batch, traced.size, traced.opset
    names = list(traced.random_shapes)
    asm = _Assembler()
    image = (n, 3, h, w)
    extra_outputs, min_aux = [], isinstance(traced.purifier, MinAuxPurifier)
    eps = None if min_aux else asm.initializer("step/eps", np.array(traced.purifier.step.eps, np.float32))
    if min_aux:
        if not unrolled or steps != traced.purifier.steps:
            raise ValueError(f"min-aux is exported unrolled with its own T={traced.purifier.steps} steps only")
        inputs = [_value_info("x", image)]
        xk, radius = _min_aux(asm, traced, image)
        outputs = [("logits", (n, traced.num_classes)), ("purified", image)]
        extra_outputs = [helper.make_tensor_value_info(radius, onnx.TensorProto.FLOAT, [n])]
    elif unrolled:
        inputs = [_value_info("x", image), _value_info("start_noise", image)]
        inputs += [_value_info(r, (steps, *s)) for r, s in traced.random_shapes.items()]
        zero = asm.initializer("start/zero", np.zeros((), np.float32))
        one = asm.initializer("start/one", np.ones((), np.float32))
        shifted = asm.node("Add", ["x", "start_noise"], "start/shifted", "start/Add")
        xk = asm.node("Clip", [shifted, zero, one], "start/x_start", "start/Clip")
        for k in range(steps):
            index = asm.initializer(f"step{k}/index", np.array(k, np.int64)) if names else None
            picked = {r: asm.node("Gather", [r, index], f"step{k}/{r}", f"step{k}/Gather_{r}", axis=0) for r in names}
            xk = asm.inline(traced.step_model, f"step{k}/", {"x0": "x", "xk": xk, "eps": eps, **picked})["x_next"]
        outputs = [("logits", (n, traced.num_classes)), ("purified", image)]
    else:
        inputs = [_value_info("x", image), _value_info("x_k", image)]
        inputs += [_value_info(r, s) for r, s in traced.random_shapes.items()]
        feeds = {"x0": "x", "xk": "x_k", "eps": eps, **{r: r for r in names}}
        xk = asm.inline(traced.step_model, "step0/", feeds)["x_next"]
        outputs = [("logits", (n, traced.num_classes)), ("x_next", image)]
    logits = asm.inline(traced.classify_model, "classify/", {"x": xk})["logits"]
    renames = {logits: outputs[0][0], xk: outputs[1][0]}
    for node in asm.nodes:
        node.output[:] = [renames.get(t, t) for t in node.output]
        node.input[:] = [renames.get(t, t) for t in node.input]
    name = "MinAuxPurifyClassify" if min_aux else "PurifyClassify" if unrolled else "PurifyOneStep"
    graph = helper.make_graph(asm.nodes, name, inputs,
                              [_value_info(o, s) for o, s in outputs] + extra_outputs, asm.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="pyengine", producer_version=_version())
    model.ir_version = 8  # the IR of opsets 17 and 18; TensorRT 8.x parsers refuse newer IRs
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def min_aux_radii(purifier: MinAuxPurifier) -> list[float]:
    """The distinct radii e * delta of min-aux, e = 0..: radii beyond the reach of T steps repeat
    the first of them (and lose ties to it), so the graph computes each result once."""
    return [purifier.radii[e] for e in sorted(set(purifier._source))]


def _min_aux(asm: _Assembler, traced: TracedPurifier, image: tuple[int, ...]) -> tuple[str, str]:
    """Min-aux (Section 3.3) in the graph: -> (purified images, chosen radius) tensor names."""
    radii, steps = min_aux_radii(traced.purifier), traced.purifier.steps
    n = image[0]
    images, losses = ["x"], [asm.inline(traced.loss_model, "radius0/loss/", {"x": "x"})["loss"]]
    for e, radius in enumerate(radii[1:], 1):
        eps = asm.initializer(f"radius{e}/eps", np.array(radius, np.float32))
        xk = "x"  # zero init: SOAP's steps start at the input itself
        for k in range(steps):
            xk = asm.inline(traced.step_model, f"radius{e}/step{k}/", {"x0": "x", "xk": xk, "eps": eps})["x_next"]
        images.append(xk)
        losses.append(asm.inline(traced.loss_model, f"radius{e}/loss/", {"x": xk})["loss"])
    axis0 = asm.initializer("select/axis0", np.array([0], np.int64))

    def stack(tensors: list[str], what: str) -> str:
        rows = [asm.node("Unsqueeze", [t, axis0], f"select/{what}{e}", f"select/Unsqueeze_{what}{e}")
                for e, t in enumerate(tensors)]
        return asm.node("Concat", rows, f"select/{what}s", f"select/Concat_{what}s", axis=0)

    grid = stack(losses, "loss")  # [E, N]
    # ArgMin returns the first minimum: ties go to the smaller radius, as MinAuxPurifier's.
    best = asm.node("ArgMin", [grid], "select/best", "select/ArgMin", axis=0, keepdims=1, select_last_index=0)
    candidates = stack(images, "image")  # [E, N, 3, H, W]
    index = asm.node("Reshape", [best, asm.initializer("select/index_shape", np.array([1, n, 1, 1, 1], np.int64))],
                     "select/index", "select/Reshape_index")
    index = asm.node("Expand", [index, asm.initializer("select/image_shape", np.array([1, *image], np.int64))],
                     "select/index_expanded", "select/Expand_index")
    chosen = asm.node("GatherElements", [candidates, index], "select/chosen", "select/GatherElements", axis=0)
    chosen = asm.node("Reshape", [chosen, asm.initializer("select/out_shape", np.array(image, np.int64))],
                      "select/purified", "select/Reshape_purified")
    flat = asm.node("Reshape", [best, asm.initializer("select/n", np.array([n], np.int64))], "select/best_flat",
                    "select/Reshape_best")
    radius = asm.node("Gather", [asm.initializer("select/radii", np.array(radii, np.float32)), flat], "radius",
                      "select/Gather_radius", axis=0)
    return chosen, radius


def _shape(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _default_size(purifier: Purifier) -> tuple[int, int]:
    from ..models import model_config

    if getattr(purifier, "image_size", None) is not None:  # the checkpoint's, e.g. a user's model at 64 px
        return tuple(purifier.image_size)
    name = getattr(purifier.classifier, "model_name", None)
    if name is None:
        raise ValueError("image_size is required for a classifier not built by create_model")
    return tuple(model_config(name).input_size[1:])


def _version() -> str:
    from .. import __version__

    return __version__


_INPUT_DOC = {
    "x": "images in [0, 1], float32 NCHW",
    "start_noise": "random-start offset added to x then clipped to [0, 1]: eps*(2u-1), u~U[0,1) for linf; 0 without random start",
    "x_k": "current iterate (clip(x + start_noise, 0, 1) at the first call)",
    "view_params": "per-step view parameters, rows view-major (row v*N+n: view v of image n); columns in view_param_columns",
}


def _sidecar(traced: TracedPurifier, path: Path, unrolled: bool, steps: int, inputs, outputs) -> dict:
    purifier = traced.purifier
    clf, step = purifier.classifier, purifier.step
    manifest = getattr(purifier, "manifest", {}) or {}
    norm = {"mean": clf.mean.flatten().tolist(), "std": clf.std.flatten().tolist(),
            "applied": "inside the graph; feed images in [0, 1]"} if getattr(clf, "mean", None) is not None else None
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": path.name,
        "form": "unrolled" if unrolled else "one_step",
        "steps": steps, "batch": traced.batch, "image_size": [3, *traced.size], "num_classes": traced.num_classes,
        "opset": traced.opset,
        "objective": traced.objective.settings(),
        "step": {"norm": step.norm, "eps": step.eps, "step_size": step.step_size, "random_start": step.random_start},
        "selection": ({"method": "min-aux", "radii": min_aux_radii(purifier), "delta": purifier.delta,
                       "n_radii": purifier.n_radii, "output": "radius: each image's chosen radius"}
                      if isinstance(purifier, MinAuxPurifier) else None),
        "normalization": norm,
        "view_param_columns": VIEW_PARAM_COLUMNS,
        "random_inputs": {n: list(s) for n, s in traced.random_shapes.items()},
        "inputs": [{"name": n, "shape": s, "dtype": "float32", "doc": _INPUT_DOC.get(n, "")} for n, s in inputs],
        "outputs": [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in outputs],
        "precision": {"network": traced.precision, "loss_scale": traced.loss_scale,
                      "fp32": "the iterate, the views, the loss over the bank, the projection"},
        "fp32_required": ("none beyond the graph's own types (fp16 network, loss scaled before the backward pass)"
                          if traced.precision == "fp16" else
                          "every node outside classify/ (input gradients underflow in fp16 without a loss scale)"),
        "source": {"architecture": getattr(clf, "model_name", None) or manifest.get("model_source", {}).get("source"),
                   "checkpoint": manifest.get("path"),
                   "pyengine": _version(), "torch": torch.__version__, "onnx": onnx.__version__},
    }
