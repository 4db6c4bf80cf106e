"""The one tolerance rule of the parity checks (lens_model.parity): its closed form, and that it passes an exported
graph's rounding at two widths while a real bug — two swapped weight elements — fails it."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lens_model.export.graphs import ContextHeadGraph, graph_io
from lens_model.export.onnx_export import export_graph
from lens_model.model.context import ContextHead
from lens_model.model.tiny import tiny_lens_config
from lens_model.parity import LOW_PRECISION_SAFETY, SAFETY, compare, linear_width, mask_agreement, tolerance


def test_tolerance_closed_form():
    want = torch.full((4, 25), 2.0)  # rms 2
    eps32 = torch.finfo(torch.float32).eps
    assert tolerance(want, 100) == pytest.approx(SAFETY * eps32 * 10 * 2)
    assert tolerance(want, 400) == pytest.approx(2 * tolerance(want, 100))  # grows with sqrt(width)
    assert tolerance(-3 * want, 100) == pytest.approx(3 * tolerance(want, 100))  # and with the output's scale
    eps16 = torch.finfo(torch.bfloat16).eps
    assert tolerance(want, 100, torch.bfloat16) == pytest.approx(LOW_PRECISION_SAFETY * eps16 * 2)
    assert tolerance(want, 10_000, torch.bfloat16) == tolerance(want, 100, torch.bfloat16)
    parity = compare(want.numpy() + 1e-6, want, 100)
    assert parity.ok and parity.max_diff == pytest.approx(1e-6, rel=0.1)
    assert not compare(want + 1e-3, want, 100).ok
    with pytest.raises(ValueError, match="shapes differ"):
        compare(want[:1], want, 100)


def test_linear_width_is_the_longest_reduction():
    head = ContextHead(64, tiny_lens_config())
    assert linear_width(head) == head.connector.blocks[0].mlp.fc2.in_features == 4 * 64  # the MLP's hidden layer
    assert linear_width(torch.nn.Conv2d(3, 8, 3)) == 1


def test_mask_agreement():
    want = torch.tensor([[1.0, -1.0], [2.0, -0.5]])
    assert mask_agreement(want.numpy(), want) == 1.0
    assert mask_agreement(np.array([[1.0, 1.0], [2.0, -0.5]]), want) == 0.75


@pytest.mark.parametrize("hidden", [64, 512])
def test_exported_head_passes_and_two_swapped_weights_fail(hidden, tmp_path):
    """ONNX Runtime's rounding passes at both widths; swapping two neighbouring elements of one weight matrix deep in
    the connector (its first MLP's output layer) fails, at both widths."""
    torch.manual_seed(0)
    queries = 8
    head = ContextHead(hidden, tiny_lens_config(num_queries=queries)).eval()
    path = tmp_path / "context_head.onnx"
    export_graph(ContextHeadGraph(head), *graph_io(128, queries, hidden)["context_head"], path, 18)
    states = torch.randn(3, queries, hidden, generator=torch.Generator().manual_seed(1))
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"query_states": states.numpy()}
    )
    width = linear_width(head)
    with torch.no_grad():
        want = head(states)
        weight = head.connector.blocks[0].mlp.fc2.weight
        weight.view(-1)[[0, 1]] = weight.view(-1)[[1, 0]].clone()
        broken = head(states)
    assert compare(got, want, width).ok, compare(got, want, width)
    parity = compare(got, broken, width)
    assert not parity.ok and parity.max_diff > 5 * parity.tolerance, parity
    assert math.isfinite(parity.tolerance) and parity.tolerance > 0
