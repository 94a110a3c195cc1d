"""The ONNX form of `qwen3_vl::frame_attention`: attention within each frame, as a loop over frames.

The vision encoder emits that operator while it is exported; `export_vision.py` hands this lowering to
`torch.onnx.export`. Each loop iteration attends over one frame's contiguous slice of patches, so the cost is the sum
of the squared frame sizes: several images in one call cost what they cost one by one, and no mask is ever built.
A call with a single frame skips the loop and its slicing, so one image pays nothing for the support of many.
The softmax runs in float32 whatever the graph's precision, so the fp16 graph keeps fp32 attention weights.
"""

from typing import TypeVar, Union

import numpy as np
import onnx_ir as ir
from onnxscript import FLOAT, FLOAT16, INT64, script
from onnxscript import opset18 as op  # the exporter assembles graphs at opset 18, then converts the whole model

TFloat = TypeVar("TFloat", bound=Union[FLOAT, FLOAT16])  # noqa: UP007 - onnxscript reads typing.Union only
CASTS = ("Cast", "CastLike")


@script()
def frame_attention(query: TFloat, key: TFloat, value: TFloat, frame_start: INT64) -> TFloat:
    """query, key, value `[num_heads, num_patches, head_dim]`; frame_start `[num_patches]`; same shape out."""
    # A frame begins where a patch is its own frame's first patch; it ends where the next one begins.
    num_patches = op.Shape(frame_start)
    patch_index = op.Range(op.Constant(value_int=0), op.Squeeze(num_patches), op.Constant(value_int=1))
    starts = op.Compress(patch_index, op.Equal(frame_start, patch_index))
    ends = op.Concat(op.Slice(starts, op.Constant(value_ints=[1]), num_patches), num_patches, axis=0)
    num_frames = op.Squeeze(op.Shape(starts))
    head_dim = op.Cast(op.Shape(query, start=2), to=FLOAT.dtype)
    scale = op.CastLike(op.Div(op.Constant(value_float=1.0), op.Sqrt(head_dim)), query)

    # softmax(query key^T * scale) value, the softmax in fp32; written out in both branches because a script function
    # called inside a subgraph would not be inlined by the exporter.
    if num_frames == op.Constant(value_int=1):
        scores = op.MatMul(op.Mul(query, scale), op.Transpose(key, perm=[0, 2, 1]))
        attended = op.MatMul(op.CastLike(op.Softmax(op.Cast(scores, to=FLOAT.dtype), axis=-1), value), value)
    else:
        patch_axis = op.Constant(value_ints=[1])
        outputs = op.SequenceEmpty(dtype=FLOAT.dtype)
        for frame in range(num_frames):
            start = op.Unsqueeze(op.Gather(starts, frame), op.Constant(value_ints=[0]))
            end = op.Unsqueeze(op.Gather(ends, frame), op.Constant(value_ints=[0]))
            frame_query = op.Slice(query, start, end, patch_axis)
            frame_key = op.Slice(key, start, end, patch_axis)
            frame_value = op.Slice(value, start, end, patch_axis)
            scores = op.MatMul(op.Mul(frame_query, scale), op.Transpose(frame_key, perm=[0, 2, 1]))
            weights = op.CastLike(op.Softmax(op.Cast(scores, to=FLOAT.dtype), axis=-1), frame_value)
            outputs = op.SequenceInsert(outputs, op.Cast(op.MatMul(weights, frame_value), to=FLOAT.dtype))
        attended = op.CastLike(op.ConcatFromSequence(outputs, axis=1), query)
    return attended


def use_attention_operator(model: ir.Model) -> int:
    """Replace every matmul-softmax-matmul of the lowered frame attention with the ONNX `Attention` operator.

    `Attention` (opset 23) does the same math in one kernel, which in ONNX Runtime avoids a round trip through memory
    for the attention scores. Only for an fp32 graph at opset 23, where the casts around the softmax change nothing.
    Returns how many were replaced.
    """
    replaced = 0
    for softmax in [node for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.op_type == "Softmax"]:
        graph = softmax.graph
        scores = producer_behind_casts(softmax.inputs[0])
        weighted = consumer_after_casts(softmax.outputs[0])
        scaled_query, key_transposed = scores.inputs[0].producer(), scores.inputs[1].producer()
        chain = [scaled_query, key_transposed, scores, softmax, weighted]
        if [node.op_type if node else None for node in chain] != ["Mul", "Transpose", "MatMul", "Softmax", "MatMul"]:
            raise ValueError(
                f"unexpected attention around {softmax.name}: {[node and node.op_type for node in chain]}"
            )

        query, scale = scaled_query.inputs
        key, value = key_transposed.inputs[0], weighted.inputs[1]
        axes = ir.node("Constant", [], {"value": ir.tensor(np.array([0], dtype=np.int64))})
        batched = [ir.node("Unsqueeze", [tensor, axes.outputs[0]]) for tensor in (query, key, value)]
        attention = ir.node(
            "Attention", [node.outputs[0] for node in batched], {"scale": float(scale.const_value.numpy().reshape(()))}
        )
        unbatched = ir.node("Squeeze", [attention.outputs[0], axes.outputs[0]])
        new_nodes = [axes, *batched, attention, unbatched]
        # Subgraphs share the model's namespace of values: every name must be unique model-wide.
        for index, node in enumerate(new_nodes):
            node.name = node.outputs[0].name = f"{softmax.name}_attention_{index}"
        graph.insert_before(scaled_query, new_nodes)
        weighted.outputs[0].replace_all_uses_with(unbatched.outputs[0], replace_graph_outputs=True)
        replaced += 1
    return replaced


def producer_behind_casts(value: ir.Value) -> ir.Node | None:
    """The node that computes `value`, looking through casts."""
    node = value.producer()
    while node is not None and node.op_type in CASTS:
        node = node.inputs[0].producer()
    return node


def consumer_after_casts(value: ir.Value) -> ir.Node | None:
    """The single node that uses `value`, looking through casts."""
    uses = list(value.uses())
    while len(uses) == 1 and uses[0].node.op_type in CASTS:
        uses = list(uses[0].node.outputs[0].uses())
    return uses[0].node if len(uses) == 1 else None


def type_branch_outputs(model: ir.Model) -> None:
    """Give the outputs of every `If` branch the type of the `If` output they become, where the script left none.

    The ONNX checker's shape inference rejects a branch output typed as undefined.
    """
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "If":
            continue
        for branch in ("then_branch", "else_branch"):
            for outer, inner in zip(node.outputs, node.attributes[branch].as_graph().outputs):
                if inner.type is None:
                    inner.type = outer.type
