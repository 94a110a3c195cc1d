"""The vision rotary embedding: any length, exactly the `arange`-then-`outer` numbers, exportable with dynamic length.

The upstream export blocker was `arange(length)` over a length that tracing turned into a constant. Here the length is
a symbolic size, so one exported graph answers every length, and inside the vision model the angles come straight
from each patch's row and column with no table that a large image could outgrow.
"""

import numpy as np
import pytest
import torch
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig as ReferenceVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionRotaryEmbedding as ReferenceRotary
from transformers.vision_utils import get_vision_position_ids

from configuration_qwen3_vl import Qwen3VLVisionConfig
from modeling_qwen3_vl import Qwen3VLVisionModel, VisionRotaryEmbedding

DIM = 32  # head_dim 64 of the released vision tower, halved: rows and columns take half the rotary pairs each
THETA = 10000.0
LENGTHS = [12, 13, 32, 64, 95, 96, 97, 128, 500, 4096]


def arange_outer(length: int) -> torch.Tensor:
    """The reference formula, written out independently of the module."""
    inv_freq = 1.0 / (THETA ** (torch.arange(0, DIM, 2, dtype=torch.float32) / DIM))
    return torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)


@pytest.fixture(scope="module")
def rotary():
    return VisionRotaryEmbedding(DIM, THETA)


@pytest.mark.parametrize("length", LENGTHS)
def test_any_length_has_the_full_shape(rotary, length):
    assert rotary(length).shape == (length, DIM // 2)


@pytest.mark.parametrize("length", LENGTHS)
def test_equals_the_arange_outer_formula_exactly(rotary, length):
    assert torch.equal(rotary(length), arange_outer(length))


def test_inverse_frequencies_equal_transformers(rotary):
    reference = ReferenceRotary(ReferenceVisionConfig(hidden_size=1024, num_heads=16))
    assert torch.equal(rotary.inv_freq, reference.inv_freq)


def test_angles_of_positions_equal_the_table_lookup(rotary):
    positions = torch.randint(0, 5000, (7, 11), generator=torch.Generator().manual_seed(0))
    table = rotary(int(positions.max()) + 1)
    assert torch.equal(rotary.angles(positions), table[positions])


class RotaryByLength(torch.nn.Module):
    """Exports `rotary(seqlen)` with `seqlen` as a graph input."""

    def __init__(self, rotary: VisionRotaryEmbedding) -> None:
        super().__init__()
        self.rotary = rotary

    def forward(self, seqlen: int) -> torch.Tensor:
        return self.rotary(seqlen)


def test_one_exported_graph_serves_every_length(rotary, tmp_path):
    import onnxruntime

    program = torch.onnx.export(
        RotaryByLength(rotary).eval(),
        (40,),
        input_names=["seqlen"],
        output_names=["angles"],
        dynamic_shapes={"seqlen": torch.export.Dim.DYNAMIC},
        dynamo=True,
        verbose=False,
    )
    program.save(tmp_path / "rotary.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "rotary.onnx"), providers=["CPUExecutionProvider"])

    for length in [12, 40, 96, 97, 1000]:
        (angles,) = session.run(None, {"seqlen": np.array(length, dtype=np.int64)})
        # The same float32 products in the same order: equality, not closeness.
        np.testing.assert_array_equal(angles, arange_outer(length).numpy())


@pytest.mark.parametrize("grid", [[[1, 4, 100]], [[2, 6, 8], [1, 120, 2]]], ids=["wide image", "video and tall image"])
def test_the_vision_model_rotates_by_row_and_column(grid):
    torch.manual_seed(0)
    config = Qwen3VLVisionConfig(
        depth=1,
        hidden_size=128,
        num_heads=2,
        intermediate_size=64,
        out_hidden_size=32,
        deepstack_visual_indexes=[],
        num_position_embeddings=64,
        patch_size=2,
    )
    model = Qwen3VLVisionModel(config).eval()
    assert isinstance(model.rotary_pos_emb, VisionRotaryEmbedding) and model.rotary_pos_emb.dim == DIM

    captured = {}
    model.blocks[0].attn.register_forward_pre_hook(lambda module, args: captured.update(cos=args[1], sin=args[2]))
    grid_thw = torch.tensor(grid)
    with torch.no_grad():
        model(torch.randn(int(grid_thw.prod(-1).sum()), 3 * 2 * 2 * 2), grid_thw)

    # Row and column of every patch as transformers computes them, in merge-block order.
    rows, cols = get_vision_position_ids(grid_thw, 2).unbind(-1)
    table = arange_outer(int(grid_thw[:, 1:].max()))
    angles = torch.cat([table[rows], table[cols]], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    assert torch.equal(captured["cos"], angles.cos())
    assert torch.equal(captured["sin"], angles.sin())
