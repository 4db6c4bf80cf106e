"""Can TensorRT's ONNX parser read an exported graph? A static check against its published operator table.

The table (`data/tensorrt-10-onnx-operators.tsv`) is onnx-tensorrt's docs/operators.md for TensorRT 10; its
header names the exact source. The check lists every operator of a graph and reports, for each node that
TensorRT would reject: operators it marks unsupported or does not list, operators outside the default ONNX
domain, tensor types it does not take, an opset outside 9-20, and the restrictions of the table that a graph
can be checked for statically (constant `axes`, Resize modes, TopK `sorted`, LayerNormalization outputs).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("data") / "tensorrt-10-onnx-operators.tsv"
TENSORRT_TARGET = "TensorRT 10"
OPSET_RANGE = (9, 20)  # "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"
# Opsets `lens export` writes: within OPSET_RANGE and new enough for LayerNormalization (opset 17).
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = (17, 18, 19, 20)

# ONNX TensorProto element types -> the names the table uses.
_TYPE_NAMES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    16: "BF16",
}
# Types TensorRT takes for tensors inside a network (INT8/FP8/INT4 only through quantisation, DOUBLE cast down).
NETWORK_TYPES = {"FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"}
# Input index whose type the table's "supported types" describe, where it is not input 0 (None: the output).
_DATA_INPUT = {"Where": 1, "Constant": None, "ConstantOfShape": None, "Cast": None, "CastLike": None}
# Shape-only operators: their input may have any type.
_ANY_INPUT_TYPE = {"Shape", "Size", "Identity"}
# Inputs that the table says must be build-time constants: op -> input index.
_CONSTANT_INPUTS = {
    "Slice": 3,
    "Squeeze": 1,
    "Unsqueeze": 1,
    "CumSum": 1,
    "Pad": 3,
    **{f"Reduce{k}": 1 for k in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum", "SumSquare")},
}
_RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


@dataclass(frozen=True)
class OperatorSupport:
    operator: str
    supported: bool
    types: frozenset[str]
    restrictions: str


@lru_cache(maxsize=1)
def load_operator_table(path: Path = TABLE) -> dict[str, OperatorSupport]:
    rows = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    table = {}
    for row in csv.DictReader(rows, delimiter="\t"):
        types = frozenset(t.strip() for t in (row["types"] or "").split(",") if t.strip())
        table[row["operator"]] = OperatorSupport(
            row["operator"], row["supported"] == "Y", types, row["restrictions"] or ""
        )
    return table


def operator_counts(model) -> Counter:
    """op type -> number of nodes, over the main graph and any subgraphs (If/Loop bodies)."""
    return Counter(node.op_type for node in _all_nodes(model.graph))


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _tensor_types(model) -> dict[str, str]:
    """tensor name -> table type name, from shape inference (weights are not needed for it)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {}
    for value in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        elem = value.type.tensor_type.elem_type
        types[value.name] = _TYPE_NAMES.get(elem, f"onnx type {elem}")
    for init in inferred.graph.initializer:
        types[init.name] = _TYPE_NAMES.get(init.data_type, f"onnx type {init.data_type}")
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = _TYPE_NAMES.get(attr.t.data_type, f"onnx type {attr.t.data_type}")
    return types


def _attr(node, name: str, default=None):
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _restriction_problems(node, constants: set[str], consumed: set[str]) -> list[str]:
    problems = []
    index = _CONSTANT_INPUTS.get(node.op_type)
    if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
        problems.append(f"input {index} ({node.input[index]}) must be a build-time constant")
    if node.op_type == "Resize":
        mode = _attr(node, "mode", "nearest")
        coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in _RESIZE_MODES:
            problems.append(f"Resize mode {mode!r} (supported: {sorted(_RESIZE_MODES)})")
        if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST_MODES:
            problems.append(f"Resize nearest_mode {_attr(node, 'nearest_mode')!r}")
        if coord not in _RESIZE_COORDINATE_MODES:
            problems.append(f"Resize coordinate_transformation_mode {coord!r}")
        if _attr(node, "antialias", 0):
            problems.append("Resize antialias")
    if node.op_type == "TopK" and _attr(node, "sorted", 1) != 1:
        problems.append("TopK sorted must be 1")
    if node.op_type == "LayerNormalization" and any(o and o in consumed for o in node.output[1:]):
        problems.append("only the first output of LayerNormalization is supported")
    return problems


def main_opset(model) -> int | None:
    """The opset of the default ONNX domain of a ModelProto (None when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def check_tensorrt_support(model) -> list[str]:
    """ONNX ModelProto -> list of problems (empty: every node is one TensorRT 10's ONNX parser accepts)."""
    table = load_operator_table()
    problems = []
    opset = main_opset(model)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} is outside {TENSORRT_TARGET}'s range {OPSET_RANGE[0]}-{OPSET_RANGE[1]}")
    if len(model.functions):
        problems.append(
            f"model-local functions {[f.name for f in model.functions]} (TensorRT parses no ONNX functions)"
        )
    types = _tensor_types(model)
    constants = {i.name for i in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    consumed = {name for node in _all_nodes(model.graph) for name in node.input} | {o.name for o in model.graph.output}
    for name, type_name in sorted(types.items()):
        if type_name not in NETWORK_TYPES and type_name not in ("UINT8", "INT8"):
            problems.append(f"tensor {name} has type {type_name}, which TensorRT does not take")
    for node in _all_nodes(model.graph):
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        support = table.get(node.op_type)
        if support is None or not support.supported:
            problems.append(
                f"{where}: {'not in' if support is None else 'marked unsupported in'} the {TENSORRT_TARGET} "
                "operator table"
            )
            continue
        if node.op_type not in _ANY_INPUT_TYPE:
            index = _DATA_INPUT.get(node.op_type, 0)
            tensor = node.output[0] if index is None else (node.input[index] if len(node.input) > index else "")
            type_name = types.get(tensor)
            if tensor and type_name is not None and support.types and type_name not in support.types:
                problems.append(
                    f"{where}: type {type_name} of {tensor} (supported: {', '.join(sorted(support.types))})"
                )
        problems += [f"{where}: {p}" for p in _restriction_problems(node, constants, consumed)]
    return problems


def check_file(path: str | Path) -> tuple[Counter, list[str]]:
    """ONNX file -> (operator counts, problems). Weights are not loaded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return operator_counts(model), check_tensorrt_support(model)
