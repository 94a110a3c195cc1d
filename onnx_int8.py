"""The int8 variant of the exported vision encoder: int8 weights in the transformer blocks, for ONNX Runtime on CPU.

ONNX Runtime's dynamic quantizer rewrites `MatMul` nodes whose second input is a weight, but the exporter writes linear
layers as `Gemm`. The graph is first rewritten to `MatMul` + `Add` with the weight stored transposed, then quantized:
weights to int8 per output channel, activations to uint8 per call. Attention, normalisation and the patch mergers,
which produce the features handed to the text model, stay fp32.
"""

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

KEPT_FP32 = "merger"  # the weight names of the final merger and the DeepStack mergers


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite `Gemm(x, weight, bias, transB=1)` with constant weight into `MatMul(x, weight.T) + bias`, in place."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    consumers = Counter(name for node in model.graph.node for name in node.input)
    rewritten, transposed_names = [], set()
    for node in model.graph.node:
        attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        is_plain_gemm = attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0
        if node.op_type != "Gemm" or attributes.get("transA", 0) or not is_plain_gemm:
            rewritten.append(node)
            continue
        if node.input[1] not in initializers or consumers[node.input[1]] != 1:
            rewritten.append(node)  # a weight shared with other nodes must keep its layout
            continue

        weight = initializers[node.input[1]]
        if attributes.get("transB", 0):
            transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), weight.name)
            weight.CopyFrom(transposed)
            transposed_names.add(weight.name)
        product = f"{node.output[0]}_matmul" if len(node.input) > 2 else node.output[0]
        rewritten.append(onnx.helper.make_node("MatMul", node.input[:2], [product], name=f"{node.name}_matmul"))
        if len(node.input) > 2:
            rewritten.append(
                onnx.helper.make_node("Add", [product, node.input[2]], node.output, name=f"{node.name}_bias")
            )

    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    # Shapes recorded for the weights before the transposition would contradict shape inference.
    stale = [info for info in model.graph.value_info if info.name in transposed_names]
    for info in stale:
        model.graph.value_info.remove(info)
    return model


def outer_inputs(node: onnx.NodeProto) -> set[str]:
    """Every value a node reads: its inputs and the outer-scope values its subgraphs (a Loop's body) refer to."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            defined = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
            for inner in graph.node:
                names |= outer_inputs(inner) - defined
                defined |= set(inner.output)
    return names - {""}


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after the producers of everything it reads, subgraph references included.

    The quantizer sorts by explicit inputs only, which can move a Loop ahead of a value its body reads.
    """
    produced_by = {output: index for index, node in enumerate(graph.node) for output in node.output}
    remaining = {
        index: {produced_by[name] for name in outer_inputs(node) if name in produced_by}
        for index, node in enumerate(graph.node)
    }
    ordered = []
    while remaining:
        ready = sorted(index for index, needs in remaining.items() if not needs)
        if not ready:
            raise ValueError("the graph has a cycle")
        for index in ready:
            del remaining[index]
            ordered.append(graph.node[index])
        for needs in remaining.values():
            needs.difference_update(ready)
    nodes = [onnx.NodeProto.FromString(node.SerializeToString()) for node in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Write the int8-weight variant of the fp32 graph at `fp32_path` to `int8_path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = gemm_to_matmul(onnx.load(str(fp32_path)))
    # The mergers are 7% of the FLOPs; keeping them fp32 lifts the worst token cosine from 0.9991 to 0.9993
    # (full-size tower, random weights).
    mergers = [node.name for node in model.graph.node if node.op_type == "MatMul" and KEPT_FP32 in node.input[1]]
    # The quantizer logs a suggestion to pre-process on the root logger; it does not apply to this graph.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            model,
            str(int8_path),
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=mergers,
            per_channel=True,
            # x86 kernels without VNNI add pairs of uint8 x int8 products in int16, which int8 weights can overflow;
            # uint8 weights take a kernel that cannot overflow, at full 8-bit precision.
            weight_type=QuantType.QUInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.disable(logging.NOTSET)
    quantized = onnx.load(str(int8_path))
    sort_topologically(quantized.graph)
    onnx.save(quantized, str(int8_path))
    return Path(int8_path)
