"""The ONNX form of `qwen3_vl::frame_attention`: attention within each frame, as a loop over frames.

The vision encoder emits that operator while it is exported; `export_vision.py` hands this lowering to
`torch.onnx.export`. Each loop iteration attends over one frame's contiguous slice of patches, so the cost is the sum of
the squared frame sizes: several images in one call cost what they cost one by one, and no mask is ever built.
"""

from onnxscript import FLOAT, INT64, script
from onnxscript import opset18 as op  # the exporter assembles graphs at opset 18, then converts the whole model


@script()
def frame_attention(
    query: FLOAT["num_heads", "num_patches", "head_dim"],
    key: FLOAT["num_heads", "num_patches", "head_dim"],
    value: FLOAT["num_heads", "num_patches", "head_dim"],
    frame_start: INT64["num_patches"],
) -> FLOAT["num_heads", "num_patches", "head_dim"]:
    # A frame begins where a patch is its own frame's first patch; it ends where the next one begins.
    num_patches = op.Shape(frame_start)
    patch_index = op.Range(op.Constant(value_int=0), op.Squeeze(num_patches), op.Constant(value_int=1))
    starts = op.Compress(patch_index, op.Equal(frame_start, patch_index))
    ends = op.Concat(op.Slice(starts, op.Constant(value_ints=[1]), num_patches), num_patches, axis=0)

    head_dim = op.Cast(op.Shape(query, start=2), to=1)
    scale = op.Div(op.Constant(value_float=1.0), op.Sqrt(head_dim))
    patch_axis = op.Constant(value_ints=[1])
    outputs = op.SequenceEmpty(dtype=1)
    for frame in range(op.Squeeze(op.Shape(starts))):
        start = op.Unsqueeze(op.Gather(starts, frame), op.Constant(value_ints=[0]))
        end = op.Unsqueeze(op.Gather(ends, frame), op.Constant(value_ints=[0]))
        frame_query = op.Slice(query, start, end, patch_axis)
        frame_key = op.Slice(key, start, end, patch_axis)
        frame_value = op.Slice(value, start, end, patch_axis)
        scores = op.MatMul(op.Mul(frame_query, scale), op.Transpose(frame_key, perm=[0, 2, 1]))
        outputs = op.SequenceInsert(outputs, op.MatMul(op.Softmax(scores, axis=-1), frame_value))
    return op.ConcatFromSequence(outputs, axis=1)
