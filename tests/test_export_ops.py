"""Every operator of the exported graphs is one TensorRT 10's ONNX parser supports (onnx-tensorrt's table), and
the checker catches the graphs TensorRT would reject."""

import onnx
import pytest
from export_helpers import exported
from onnx import TensorProto, helper

from lens_model.export import read_metadata
from lens_model.export.op_support import TABLE, check_file, check_tensorrt_support, load_operator_table, operator_counts


@pytest.fixture(scope="module")
def export_dir(tiny_dir, tmp_path_factory):
    return exported(tiny_dir, tmp_path_factory)


def test_operator_table_is_the_published_tensorrt_10_list():
    header = [line for line in TABLE.read_text().splitlines() if line.startswith("#")]
    assert any("onnx/onnx-tensorrt" in line and "docs/operators.md" in line for line in header)
    assert "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20" in " ".join(
        h[2:] for h in header
    )
    table = load_operator_table()
    assert len(table) == 196 and sum(op.supported for op in table.values()) == 150
    assert table["LayerNormalization"].supported and table["GatherND"].supported
    assert not table["Unique"].supported and not table["SequenceAt"].supported
    assert table["ArgMax"].types == {"FP32", "FP16", "BF16", "INT32", "INT64"}
    assert "`axes` must be an initializer" in table["Slice"].restrictions


@pytest.mark.parametrize("graph", ["image_encoder", "context_head", "mask_decoder"])
def test_exported_graph_uses_only_operators_tensorrt_parses(export_dir, graph):
    meta = read_metadata(export_dir)
    counts, problems = check_file(export_dir / meta.graphs[graph].onnx)
    table = load_operator_table()
    print(f"{graph}: {dict(sorted(counts.items()))}")  # the list of operators, shown with pytest -s
    assert counts and all(table[op].supported for op in counts)
    assert problems == []


def _model(nodes, inputs, outputs, initializers=(), opset=18, domain_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domain_opsets)]
    return helper.make_model(graph, opset_imports=imports)


def _value(name, dtype=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_checker_accepts_a_supported_graph():
    model = _model(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
        [_value("x")],
        [_value("y")],
    )
    assert check_tensorrt_support(model) == []
    assert operator_counts(model) == {"Relu": 1, "Softmax": 1}


@pytest.mark.parametrize(
    "build, expected",
    [
        (
            lambda: _model([helper.make_node("Unique", ["x"], ["y"])], [_value("x")], [_value("y", shape=(None,))]),
            "Unique node",
        ),
        (
            lambda: _model(
                [helper.make_node("MyOp", ["x"], ["y"], domain="custom")],
                [_value("x")],
                [_value("y")],
                domain_opsets=["custom"],
            ),
            "custom domain 'custom' needs a TensorRT plugin",
        ),
        (
            lambda: _model(
                [helper.make_node("Relu", ["x"], ["y"])],
                [_value("x", TensorProto.DOUBLE)],
                [_value("y", TensorProto.DOUBLE)],
            ),
            "type DOUBLE",
        ),
        (
            lambda: _model([helper.make_node("Relu", ["x"], ["y"])], [_value("x")], [_value("y")], opset=21),
            "opset 21 is outside TensorRT 10's range 9-20",
        ),
        (
            lambda: _model(
                [helper.make_node("Slice", ["x", "s", "e", "axes"], ["y"])],
                [
                    _value("x"),
                    _value("s", TensorProto.INT64, (1,)),
                    _value("e", TensorProto.INT64, (1,)),
                    _value("axes", TensorProto.INT64, (1,)),
                ],
                [_value("y")],
            ),
            "input 3 (axes) must be a build-time constant",
        ),
        (
            lambda: _model(
                [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")],
                [_value("x", shape=(1, 1, 2, 2))],
                [_value("y", shape=(1, 1, 4, 4))],
                [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
            ),
            "Resize mode 'cubic'",
        ),
        (
            lambda: _model(
                [helper.make_node("ArgMax", ["x"], ["y"])],
                [_value("x", TensorProto.BOOL)],
                [_value("y", TensorProto.INT64)],
            ),
            "type BOOL of x",
        ),
    ],
)
def test_checker_reports_what_tensorrt_rejects(build, expected):
    problems = check_tensorrt_support(build())
    assert any(expected in p for p in problems), problems


def test_checker_reads_a_file_without_loading_weights(export_dir, tmp_path):
    model = onnx.load(str(export_dir / "context_head.onnx"), load_external_data=False)
    model.graph.node[0].op_type = "Unique"  # break one node
    onnx.save(model, str(tmp_path / "broken.onnx"))
    counts, problems = check_file(tmp_path / "broken.onnx")
    assert counts["Unique"] == 1 and any("Unique node" in p and "marked unsupported" in p for p in problems)
