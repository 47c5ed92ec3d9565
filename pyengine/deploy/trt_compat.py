"""Check an ONNX model against TensorRT's ONNX parser support matrix, without TensorRT.

The matrices are package data (``pyengine/deploy/trt_supported_ops/tensorrt-<version>.json``,
built from onnx-tensorrt's ``docs/operators.md`` and changelog; each file cites its source). For
every node the check looks at: the domain (standard only), the op type (supported in
that version), inputs that must be initializers or constants (e.g. Reduce* ``axes``),
attribute values (e.g. Resize modes, Scatter reductions), output counts and input ranks;
for the model: the opset and IR version and the element types of every tensor.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper

from ..resources import trt_ops_dir

OPS_DIR = Path(os.environ.get("PYENGINE_TRT_OPS_DIR") or trt_ops_dir())


def available_versions(ops_dir: Path = OPS_DIR) -> list[str]:
    names = [p.stem.removeprefix("tensorrt-") for p in Path(ops_dir).glob("tensorrt-*.json")]
    return sorted(names, key=lambda v: tuple(int(x) for x in v.split(".")))


def load_matrix(version: str, ops_dir: Path = OPS_DIR) -> dict:
    path = Path(ops_dir) / f"tensorrt-{version}.json"
    if not path.is_file():
        known = ", ".join(available_versions(ops_dir)) or "none"
        raise ValueError(f"no TensorRT {version} operator list in {ops_dir} (available: {known})")
    return json.loads(path.read_text())


@dataclass
class CompatReport:
    tensorrt: str
    opset: int
    nodes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"TensorRT {self.tensorrt}: {'compatible' if self.ok else 'NOT compatible'} "
                f"(opset {self.opset}, {self.nodes} nodes, {len(self.op_counts)} op types)")
        lines = [head, "  ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(self.op_counts.items()))]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type in ("Constant", "ConstantOfShape") and
              (n.op_type == "Constant" or n.input[0] in names) for o in n.output}
    return names


def check_model(model: onnx.ModelProto | str | Path, version: str, *, ops_dir: Path = OPS_DIR) -> CompatReport:
    """-> a report whose ``problems`` list every reason TensorRT ``version``'s parser would refuse the model."""
    matrix = load_matrix(version, ops_dir)
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    report = CompatReport(version, opset, len(graph.node))
    problems = report.problems
    if opset > matrix["opset_max"] or opset < matrix.get("opset_min", 1):
        problems.append(f"opset {opset} outside TensorRT {version}'s range "
                        f"{matrix.get('opset_min', 1)}..{matrix['opset_max']}: re-export with --opset {matrix['opset_max']}")
    if model.ir_version > matrix["ir_version_max"]:
        problems.append(f"IR version {model.ir_version} > {matrix['ir_version_max']}, the newest TensorRT {version}'s parser reads")
    for fn in model.functions:
        problems.append(f"model-local function {fn.domain}::{fn.name} (the exporter should inline it)")

    supported, unsupported = set(matrix["supported"]), set(matrix["unsupported"])
    constants = _constants(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as err:
        inferred = model
        report.notes.append(f"shape inference failed ({err}); ranks and types of intermediate tensors not checked")
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output] if v.type.HasField("tensor_type")}
    for node in graph.node:
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        report.op_counts[node.op_type] = report.op_counts.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain!r} is not the standard ONNX domain (a plugin would be needed)")
            continue
        if node.op_type in unsupported:
            problems.append(f"{where}: {node.op_type} is not supported by TensorRT {version}")
            continue
        if node.op_type not in supported:
            problems.append(f"{where}: {node.op_type} is not in TensorRT {version}'s operator list")
            continue
        for index in matrix["constant_inputs"].get(node.op_type, []):
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                problems.append(f"{where}: input {index} ({node.input[index]}) must be an initializer or constant")
        for name, allowed in matrix.get("attribute_values", {}).get(node.op_type, {}).items():
            attr = next((a for a in node.attribute if a.name == name), None)
            if attr is not None:
                value = helper.get_attribute_value(attr)
                value = value.decode() if isinstance(value, bytes) else value
                if value not in allowed:
                    problems.append(f"{where}: attribute {name}={value!r} not supported (TensorRT {version} allows {allowed})")
        most = matrix.get("max_outputs", {}).get(node.op_type)
        if most is not None and len([o for o in node.output if o]) > most:
            problems.append(f"{where}: only {most} output(s) supported, node has {len(node.output)}")
        allowed_ranks = matrix.get("input_rank", {}).get(node.op_type)
        if allowed_ranks and ranks.get(node.input[0]) not in allowed_ranks:
            problems.append(f"{where}: input rank {ranks.get(node.input[0])} not in {allowed_ranks}")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            report.notes.append(f"{where}: subgraph not checked")

    type_names = set(matrix["tensor_types"])
    tensors = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    for value in tensors:
        if value.type.HasField("tensor_type"):
            name = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            if name not in type_names:
                problems.append(f"tensor {value.name}: element type {name} not supported by TensorRT {version}")
    for init in graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type)
        if name not in type_names:
            problems.append(f"initializer {init.name}: element type {name} not supported by TensorRT {version}")
    for op, text in matrix.get("restrictions", {}).items():
        if op in report.op_counts:
            report.notes.append(f"{op}: {text}")
    return report
