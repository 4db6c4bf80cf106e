"""int8 versions of exported graphs for CPUs (`lens export --int8`): ONNX Runtime's dynamic quantisation.

What is quantised: every MatMul and Gemm whose second operand is a weight (linear layers: int8 weights, one scale
per output channel, activations quantised to uint8 at run time from their own range), and the attention score
products q·kᵀ (both operands activations, per-tensor). Not quantised: the product of the softmax probabilities with
the values (over thousands of memory tokens the probabilities are ~1e-4 each; one uint8 step of their range would
round most of them to zero: measured on one cross-attention at 1024 px, it multiplies the error by six),
convolutions (ONNX Runtime's ConvInteger: the memory encoder at 1024 px took 3.3× its float32 time) and
normalisation layers. No calibration data is needed: the activation ranges are measured on every call.

Why dynamic and not static quantisation: the graphs' inputs vary (any image, any prompt, any memory length), and the
per-call range keeps the error of a changing input bounded without a calibration set that would have to cover them.
The cost of measuring the ranges is small next to the products (benchmarks/README.md has the per-graph table).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

INT8_SUFFIX = ".int8.onnx"


def int8_name(onnx_file: str) -> str:
    """image_encoder.onnx -> image_encoder.int8.onnx"""
    return onnx_file.removesuffix(".onnx") + INT8_SUFFIX


def probability_products(model) -> list[str]:
    """Names of the MatMul nodes that multiply softmax probabilities (attention · values): kept in float32."""
    producers = {output: node for node in model.graph.node for output in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[0] in producers and producers[node.input[0]].op_type == "Softmax"
    ]


def quantize_graph(src: Path, dst: Path) -> None:
    """The float32 graph `src` -> its dynamic int8 version `dst` (see the module docstring)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src), load_external_data=False)
    keep_float = probability_products(model)
    external = any(src.parent.glob(src.name + ".data"))  # the graph's weights are in NAME.onnx.data (> 2 GB)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(max(previous, logging.ERROR))  # the quantiser logs a pre-processing hint per graph
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=keep_float,
            use_external_data_format=external,
            extra_options={"MatMulConstBOnly": False},  # the score products q·kᵀ too (their B is an activation)
        )
    finally:
        logging.getLogger().setLevel(previous)
    log.info("%s -> %s (%d attention-probability products kept in float32)", src.name, dst.name, len(keep_float))
