"""Qwen3-VL for transformers' remote code, with a vision encoder that exports to one ONNX graph for every input.

The vision encoder derives every per-patch quantity (entry, frame, row, column, interpolation taps, rotary angles,
attention segment) from `pixel_values` and `grid_thw` with tensor operations, so one traced graph serves any number of
images and videos of any size. The text decoder is transformers' own Qwen3-VL decoder; this file adds the glue that
places visual features and multimodal rotary positions into it.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    ModelOutput,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel
from transformers.utils import logging

try:
    from .configuration_qwen3_vl import Qwen3VLConfig, Qwen3VLVisionConfig
except ImportError:  # imported as a plain module (tests, export_vision.py) rather than through transformers' loader
    from configuration_qwen3_vl import Qwen3VLConfig, Qwen3VLVisionConfig

logger = logging.get_logger(__name__)

LAYER_NORM_EPS = 1e-6
TEXT_TOKEN, IMAGE_TOKEN, VIDEO_TOKEN = 0, 1, 2


class VisionRotaryEmbedding(nn.Module):
    """Rotary angles along one spatial axis: position times inverse frequency, for any position, with no table."""

    def __init__(self, dim: int, theta: float) -> None:
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        """Inverse frequencies `theta ** (-2i / dim)`, `[dim // 2]`."""
        return 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))

    def forward(self, seqlen: int | torch.SymInt) -> torch.Tensor:
        """Angles of positions `0 .. seqlen - 1`, `[seqlen, dim // 2]`; `seqlen` may be a symbolic size in export."""
        positions = torch.arange(seqlen, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        return torch.outer(positions, self.inv_freq)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Angles of integer `positions`, `[*positions.shape, dim // 2]`; equal to `forward(n)[positions]`."""
        return positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq


class PatchGrid(NamedTuple):
    """Where each patch sits: its row and column, its frame's size, and the index of its frame's first patch."""

    row: torch.Tensor
    col: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    frame_start: torch.Tensor


def locate_patches(grid_thw: torch.Tensor, num_patches: int | torch.SymInt, merge_size: int) -> PatchGrid:
    """Coordinates of patches packed entry after entry, frame after frame, each frame in merge-block order.

    Args:
        grid_thw: `[num_entries, 3]` int64, the (frames, rows, columns) of patches of each image or video.
        num_patches: rows of `pixel_values`; a symbolic size under export.
        merge_size: side of the square block of patches that the merger fuses into one token.

    Returns:
        A `PatchGrid` of `[num_patches]` int64 tensors.
    """
    frames, heights, widths = grid_thw.unbind(-1)
    entry_sizes = frames * heights * widths
    patch_index = torch.arange(num_patches, device=grid_thw.device)

    # Where each entry ends, read back through the patch indices: equal to the cumulative sizes, but a grid that
    # describes more patches than pixel_values holds makes this lookup go out of range. A patch belongs to the first
    # entry that ends after it; a patch beyond the last entry gets an entry index out of range in the lookups below.
    # Either way a graph fed inconsistent inputs fails instead of returning numbers.
    entry_ends = patch_index[entry_sizes.cumsum(0) - 1] + 1
    entry = (patch_index[:, None] >= entry_ends[None, :]).sum(-1)  # [num_patches]
    height, width = heights[entry], widths[entry]
    offset_in_entry = patch_index - (entry_ends - entry_sizes)[entry]
    offset_in_frame = offset_in_entry % (height * width)

    block, offset_in_block = offset_in_frame // merge_size**2, offset_in_frame % merge_size**2
    blocks_per_row = width // merge_size
    row = (block // blocks_per_row) * merge_size + offset_in_block // merge_size
    col = (block % blocks_per_row) * merge_size + offset_in_block % merge_size
    return PatchGrid(row, col, height, width, patch_index - offset_in_frame)


def bilinear_taps(index: torch.Tensor, size: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two source taps and weights for target `index` of `size` points resampled from `side` (aligned corners)."""
    source = index.to(torch.float32) * (side - 1) / (size - 1).clamp(min=1)
    lower = source.floor()
    upper_weight = source - lower
    lower_tap = lower.to(torch.int64)
    taps = torch.stack([lower_tap, (lower_tap + 1).clamp(max=side - 1)], dim=-1)
    return taps, torch.stack([1 - upper_weight, upper_weight], dim=-1)


def rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair `(i, i + d/2)` of `states` `[..., d]` by per-patch angles, in float32."""
    dtype = states.dtype
    states = states.float()
    first, second = states.chunk(2, dim=-1)
    return (states * cos + torch.cat([-second, first], dim=-1) * sin).to(dtype)


def check_vision_inputs(pixel_values: torch.Tensor, grid_thw: torch.Tensor, patch_dim: int, merge_size: int) -> None:
    """Raise a `ValueError` naming the numbers when `pixel_values` and `grid_thw` cannot describe the same patches."""
    if pixel_values.ndim != 2 or pixel_values.shape[1] != patch_dim:
        raise ValueError(f"pixel_values must be [num_patches, {patch_dim}], got {list(pixel_values.shape)}")
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3 or grid_thw.shape[0] == 0:
        raise ValueError(f"grid_thw must be [num_images, 3] with at least one row, got {list(grid_thw.shape)}")
    if grid_thw.is_floating_point() or grid_thw.is_complex():
        raise ValueError(f"grid_thw must hold integers, got {grid_thw.dtype}")

    # Validation reads the grid on the host; the encoder itself never does.
    rows = [[int(value) for value in row] for row in grid_thw.detach().cpu()]
    for index, (frames, height, width) in enumerate(rows):
        if min(frames, height, width) <= 0:
            raise ValueError(f"grid_thw row {index} is {[frames, height, width]}: every entry must be positive")
        if height % merge_size or width % merge_size:
            raise ValueError(
                f"grid_thw row {index} is {[frames, height, width]}: height and width must be multiples of "
                f"spatial_merge_size {merge_size}"
            )
    described = sum(frames * height * width for frames, height, width in rows)
    if described != pixel_values.shape[0]:
        raise ValueError(
            f"grid_thw describes {described} patches (sum of t*h*w over {len(rows)} rows), "
            f"but pixel_values has {pixel_values.shape[0]}"
        )


class VisionPatchEmbed(nn.Module):
    """Linear projection of flattened `[channels, frames, rows, cols]` patches, stored as the checkpoints' Conv3d."""

    def __init__(self, config: Qwen3VLVisionConfig) -> None:
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.hidden_size, kernel_size=kernel, stride=kernel, bias=True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # A convolution whose stride equals its kernel sees each patch once: it is a matrix product.
        weight = self.proj.weight.flatten(1)  # [hidden_size, patch_dim]
        return F.linear(pixel_values.to(weight.dtype), weight, self.proj.bias)


def dense_frame_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, frame_start: torch.Tensor
) -> torch.Tensor:
    """Attention of every patch to the patches of its own frame, through one mask over all patches.

    Args:
        query, key, value: `[num_heads, num_patches, head_dim]`.
        frame_start: `[num_patches]` int64, the index of the first patch of each patch's frame.

    Returns:
        `[num_heads, num_patches, head_dim]`.
    """
    same_frame = frame_start[:, None] == frame_start[None, :]  # [num_patches, num_patches]
    return F.scaled_dot_product_attention(query[None], key[None], value[None], attn_mask=same_frame)[0]


def register_frame_attention_op() -> None:
    """Register `qwen3_vl::frame_attention` once per process, even when this file is imported under two names."""
    if hasattr(torch.ops.qwen3_vl, "frame_attention"):
        return
    op = torch.library.custom_op("qwen3_vl::frame_attention", mutates_args=())(dense_frame_attention)
    op.register_fake(lambda query, key, value, frame_start: torch.empty_like(query))


register_frame_attention_op()


def attend_within_frames(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, frame_start: torch.Tensor
) -> torch.Tensor:
    """`dense_frame_attention`; under export, one `qwen3_vl::frame_attention` node with the same meaning.

    The export tool lowers that node to a loop over frames, so the graph's attention costs the sum of the squared frame
    sizes rather than the square of the total patch count. In PyTorch the dense mask is kept: it is differentiable.
    """
    if torch.compiler.is_exporting():
        return torch.ops.qwen3_vl.frame_attention(query, key, value, frame_start)
    return dense_frame_attention(query, key, value, frame_start)


class VisionAttention(nn.Module):
    """Multi-head self-attention of each patch to the patches of its own frame."""

    def __init__(self, config: Qwen3VLVisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(
        self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, frame_start: torch.Tensor
    ) -> torch.Tensor:
        num_patches = hidden_states.shape[0]
        qkv = self.qkv(hidden_states).view(num_patches, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(1, 2, 0, 3).unbind(0)  # each [num_heads, num_patches, head_dim]

        query, key = rotate(query, cos, sin), rotate(key, cos, sin)

        attn_output = attend_within_frames(query, key, value, frame_start)
        attn_output = attn_output.transpose(0, 1).reshape(num_patches, -1)  # [num_patches, hidden_size]
        return self.proj(attn_output)


class VisionMLP(nn.Module):
    def __init__(self, config: Qwen3VLVisionConfig) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act_fn(self.linear_fc1(hidden_states)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block: attention within each frame, then an MLP."""

    def __init__(self, config: Qwen3VLVisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, frame_start: torch.Tensor
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), cos, sin, frame_start)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class VisionPatchMerger(nn.Module):
    """Fuses each block of `spatial_merge_size**2` patches into one token of the text model's width."""

    def __init__(self, config: Qwen3VLVisionConfig, norm_after_merge: bool) -> None:
        super().__init__()
        self.merged_size = config.hidden_size * config.spatial_merge_size**2
        self.norm_after_merge = norm_after_merge
        self.norm = nn.LayerNorm(self.merged_size if norm_after_merge else config.hidden_size, eps=LAYER_NORM_EPS)
        self.linear_fc1 = nn.Linear(self.merged_size, self.merged_size)
        self.act_fn = nn.GELU()
        self.linear_fc2 = nn.Linear(self.merged_size, config.out_hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.norm_after_merge:
            hidden_states = self.norm(hidden_states.view(-1, self.merged_size))
        else:
            hidden_states = self.norm(hidden_states).view(-1, self.merged_size)  # [num_patches / merge**2, merged]
        return self.linear_fc2(self.act_fn(self.linear_fc1(hidden_states)))


@dataclass
class VisionEncoderOutput(ModelOutput):
    """
    last_hidden_state: `[num_patches, hidden_size]`, the patches after the last block.
    pooler_output: `[num_patches / merge**2, out_hidden_size]`, the merged tokens for the text model.
    deepstack_features: one `[num_patches / merge**2, out_hidden_size]` per layer in `deepstack_visual_indexes`.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | tuple[torch.Tensor, ...] | None = None
    deepstack_features: list | None = None


class Qwen3VLPreTrainedModel(PreTrainedModel):
    config_class = Qwen3VLConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    _no_split_modules = ["Qwen3VLTextDecoderLayer", "VisionBlock"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VisionRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


class Qwen3VLVisionModel(Qwen3VLPreTrainedModel):
    """The vision tower: patches of any number of images and videos in, merged tokens and DeepStack features out."""

    config_class = Qwen3VLVisionConfig
    input_modalities = ("image", "video")

    def __init__(self, config: Qwen3VLVisionConfig) -> None:
        super().__init__(config)
        self.spatial_merge_size = config.spatial_merge_size
        self.patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
        self.num_grid_per_side = math.isqrt(config.num_position_embeddings)
        if self.num_grid_per_side**2 != config.num_position_embeddings:
            raise ValueError(f"num_position_embeddings {config.num_position_embeddings} is not a square number")

        self.patch_embed = VisionPatchEmbed(config)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.rotary_pos_emb = VisionRotaryEmbedding(config.head_dim // 2, config.rope_theta)
        self.blocks = nn.ModuleList([VisionBlock(config) for _ in range(config.depth)])
        self.merger = VisionPatchMerger(config, norm_after_merge=False)
        self.deepstack_visual_indexes = list(config.deepstack_visual_indexes)
        self.deepstack_merger_list = nn.ModuleList(
            [VisionPatchMerger(config, norm_after_merge=True) for _ in self.deepstack_visual_indexes]
        )
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> VisionEncoderOutput:
        """
        Args:
            pixel_values: `[num_patches, in_channels * temporal_patch_size * patch_size**2]`, the patches of every
                image and video, entry after entry, frame after frame, in merge-block order.
            grid_thw: `[num_entries, 3]` int64, the (frames, rows, columns) of patches of each image or video.
        """
        if not torch.compiler.is_exporting():
            check_vision_inputs(pixel_values, grid_thw, self.patch_dim, self.spatial_merge_size)
        patches = locate_patches(grid_thw, pixel_values.shape[0], self.spatial_merge_size)

        hidden_states = self.patch_embed(pixel_values)
        hidden_states = hidden_states + self.position_embedding(patches).to(hidden_states.dtype)

        angles = torch.cat([self.rotary_pos_emb.angles(patches.row), self.rotary_pos_emb.angles(patches.col)], -1)
        angles = torch.cat([angles, angles], dim=-1)  # [num_patches, head_dim]
        cos, sin = angles.cos(), angles.sin()

        deepstack_features = []
        for layer, block in enumerate(self.blocks):
            hidden_states = block(hidden_states, cos, sin, patches.frame_start)
            if layer in self.deepstack_visual_indexes:
                merger = self.deepstack_merger_list[self.deepstack_visual_indexes.index(layer)]
                deepstack_features.append(merger(hidden_states))

        return VisionEncoderOutput(
            last_hidden_state=hidden_states,
            pooler_output=self.merger(hidden_states),
            deepstack_features=deepstack_features,
        )

    def position_embedding(self, patches: PatchGrid) -> torch.Tensor:
        """The learned square position grid resampled bilinearly to each frame's size, `[num_patches, hidden_size]`."""
        side = self.num_grid_per_side
        row_taps, row_weights = bilinear_taps(patches.row, patches.height, side)
        col_taps, col_weights = bilinear_taps(patches.col, patches.width, side)
        indices = (row_taps[:, :, None] * side + col_taps[:, None, :]).flatten(1)  # [num_patches, 4]
        weights = (row_weights[:, :, None] * col_weights[:, None, :]).flatten(1)  # [num_patches, 4]
        return (self.pos_embed(indices) * weights[..., None]).sum(1)


def multimodal_rope_index(
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    merge_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary positions on the (time, height, width) axes of every token, and how far each row's positions run ahead.

    Text tokens advance all three axes together. The tokens of one image, or of one video frame, take their merged
    (frame, row, column) coordinates shifted by the position where they start, and what follows resumes at that start
    plus the larger merged side. Each video frame is its own run of tokens, separated from the next by its timestamp.

    Args:
        input_ids: `[batch, seq]`, only for its shape and device.
        mm_token_type_ids: `[batch, seq]`, 0 for text, 1 for image and 2 for video tokens.
        image_grid_thw, video_grid_thw: `[num_entries, 3]` patch grids, in the order their tokens appear.
        attention_mask: `[batch, seq]` or None; padding gets position 0 and is skipped.

    Returns:
        position_ids `[3, batch, seq]` and rope_deltas `[batch, 1]`: the next position minus the unpadded length.
    """
    grids = {
        IMAGE_TOKEN: [] if image_grid_thw is None else image_grid_thw.tolist(),
        # Frames of a video are placed one at a time, each behind its own timestamp.
        VIDEO_TOKEN: []
        if video_grid_thw is None
        else [[1, h, w] for t, h, w in video_grid_thw.tolist() for _ in range(t)],
    }
    next_grid = {IMAGE_TOKEN: 0, VIDEO_TOKEN: 0}
    batch_size, seq_length = input_ids.shape
    position_ids = torch.zeros(3, batch_size, seq_length, dtype=torch.long)
    rope_deltas = []

    for row in range(batch_size):
        kept = torch.ones(seq_length, dtype=torch.bool) if attention_mask is None else attention_mask[row].bool().cpu()
        token_types = mm_token_type_ids[row].cpu()[kept]
        pieces, next_position = [], 0
        for kind, length in zip(*torch.unique_consecutive(token_types, return_counts=True)):
            kind, length = int(kind), int(length)
            if kind == TEXT_TOKEN:
                pieces.append(torch.arange(length).expand(3, -1) + next_position)
                next_position += length
                continue
            placed = 0
            while placed < length:
                if next_grid[kind] == len(grids[kind]):
                    raise ValueError(f"more {'image' if kind == IMAGE_TOKEN else 'video'} tokens than grid rows")
                frames, height, width = grids[kind][next_grid[kind]]
                next_grid[kind] += 1
                height, width = height // merge_size, width // merge_size
                coordinates = torch.stack(
                    torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
                ).flatten(1)  # [3, frames * height * width]
                pieces.append(coordinates + next_position)
                next_position += max(height, width)
                placed += coordinates.shape[1]
            if placed != length:
                raise ValueError(f"a run of {length} visual tokens does not match its grids, which hold {placed}")
        positions = torch.cat(pieces, dim=1)
        position_ids[:, row, kept] = positions
        rope_deltas.append(int(positions.max()) + 1 - len(token_types))

    device = input_ids.device
    return position_ids.to(device), torch.tensor(rope_deltas, device=device).unsqueeze(1)


class Qwen3VLModel(Qwen3VLPreTrainedModel):
    """Vision encoder and text decoder; visual tokens replace their placeholders, DeepStack adds to early layers."""

    def __init__(self, config: Qwen3VLConfig) -> None:
        super().__init__(config)
        self.visual = Qwen3VLVisionModel(config.vision_config)
        self.language_model = Qwen3VLTextModel(config.text_config)
        self.rope_deltas = None  # [batch, 1], kept from the prompt for the positions of generated tokens
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.embed_tokens = value

    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, **kwargs
    ) -> VisionEncoderOutput:
        """Encode images; `pooler_output` and each DeepStack layer come back split per image."""
        output = self.visual(pixel_values.to(self.visual.dtype), image_grid_thw)
        tokens_per_entry = (image_grid_thw.prod(-1) // self.visual.spatial_merge_size**2).tolist()
        output.pooler_output = torch.split(output.pooler_output, tokens_per_entry)
        output.deepstack_features = [torch.split(layer, tokens_per_entry) for layer in output.deepstack_features]
        return output

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor, **kwargs
    ) -> VisionEncoderOutput:
        """Encode videos; the vision encoder treats a video as an image with several frames."""
        return self.get_image_features(pixel_values_videos, video_grid_thw)

    def placeholder_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, token_id: int, num_features: int
    ) -> torch.Tensor:
        """`[batch, seq]` mask of the tokens `token_id`, checked against the number of features that replace them."""
        if input_ids is None:
            placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == placeholder).all(-1)
        else:
            mask = input_ids == token_id
        if int(mask.sum()) != num_features:
            raise ValueError(
                f"{int(mask.sum())} placeholder tokens of id {token_id} but {num_features} visual features"
            )
        return mask

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text 0, image 1, video 2 per token, read from the placeholder ids when the processor did not send them."""
        token_types = torch.zeros_like(input_ids)
        token_types[input_ids == self.config.image_token_id] = IMAGE_TOKEN
        token_types[input_ids == self.config.video_token_id] = VIDEO_TOKEN
        return token_types

    def rope_index(self, input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, attention_mask):
        """`multimodal_rope_index` for this model's merge size, with token types derived when missing."""
        if mm_token_type_ids is None:
            mm_token_type_ids = self.token_types(input_ids)
        return multimodal_rope_index(
            input_ids,
            mm_token_type_ids,
            image_grid_thw,
            video_grid_thw,
            attention_mask,
            self.config.vision_config.spatial_merge_size,
        )

    def compute_3d_position_ids(
        self, input_ids, inputs_embeds, image_grid_thw, video_grid_thw, attention_mask, cache, mm_token_type_ids
    ) -> torch.Tensor | None:
        """Positions `[3, batch, seq]` from the prompt, or from the deltas kept from it once the cache holds it."""
        past_length = 0 if cache is None else cache.get_seq_length()
        has_visual_grid = image_grid_thw is not None or video_grid_thw is not None
        if input_ids is not None and past_length == 0 and has_visual_grid:
            position_ids, self.rope_deltas = self.rope_index(
                input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, attention_mask
            )
            return position_ids
        if self.rope_deltas is None or (past_length == 0 and input_ids is not None):
            return None  # plain text: the decoder numbers the tokens itself

        batch_size, seq_length = inputs_embeds.shape[:2]
        if attention_mask is not None and attention_mask.ndim == 2:
            text_positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
            text_positions = text_positions[:, -seq_length:]
        else:
            text_positions = torch.arange(past_length, past_length + seq_length, device=inputs_embeds.device)
            text_positions = text_positions.expand(batch_size, -1)
        rope_deltas = self.rope_deltas.repeat_interleave(batch_size // self.rope_deltas.shape[0], dim=0)
        return (text_positions + rope_deltas.to(text_positions.device)).expand(3, -1, -1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> MultimodalBaseModelOutputWithPast:
        """
        Args:
            input_ids: `[batch, seq]` token ids, with one placeholder per merged visual token; or `inputs_embeds`.
            pixel_values, pixel_values_videos: `[num_patches, patch_dim]` patches of the images and of the videos.
            image_grid_thw, video_grid_thw: `[num_entries, 3]` int64 (frames, rows, columns) of patches per entry.
            mm_token_type_ids: `[batch, seq]` 0 text, 1 image, 2 video; derived from `input_ids` when missing.
            position_ids: `[3, batch, seq]` or `[4, batch, seq]` (text positions first); computed when missing.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        visual_masks, visual_deepstack = [], []
        image_outputs = video_outputs = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, image_grid_thw)
            inputs_embeds = self.place_features(
                input_ids, inputs_embeds, self.config.image_token_id, image_outputs, visual_masks, visual_deepstack
            )
        if pixel_values_videos is not None:
            video_outputs = self.get_video_features(pixel_values_videos, video_grid_thw)
            inputs_embeds = self.place_features(
                input_ids, inputs_embeds, self.config.video_token_id, video_outputs, visual_masks, visual_deepstack
            )
        visual_pos_masks, deepstack_visual_embeds = self.join_deepstack(visual_masks, visual_deepstack)

        if position_ids is None:
            position_ids = self.compute_3d_position_ids(
                input_ids, inputs_embeds, image_grid_thw, video_grid_thw, attention_mask, cache, mm_token_type_ids
            )

        outputs = self.language_model(
            input_ids=None,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache,
            visual_pos_masks=visual_pos_masks,
            deepstack_visual_embeds=deepstack_visual_embeds,
            **kwargs,
        )
        return MultimodalBaseModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
            video_outputs=video_outputs,
        )

    def place_features(self, input_ids, inputs_embeds, token_id, features, visual_masks, visual_deepstack):
        """Write the merged tokens over their placeholders; collect the mask and DeepStack layers for later."""
        merged = torch.cat(features.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
        mask = self.placeholder_mask(input_ids, inputs_embeds, token_id, merged.shape[0])
        visual_masks.append(mask)
        visual_deepstack.append([torch.cat(layer) for layer in features.deepstack_features])
        return inputs_embeds.masked_scatter(mask[..., None].expand_as(inputs_embeds), merged)

    @staticmethod
    def join_deepstack(visual_masks, visual_deepstack):
        """One mask over all visual tokens, and per DeepStack layer the features of those tokens in sequence order."""
        if not visual_masks:
            return None, None
        visual_pos_masks = torch.stack(visual_masks).any(0)  # [batch, seq]
        joined = []
        for layer_features in zip(*visual_deepstack):
            layer = layer_features[0].new_zeros(int(visual_pos_masks.sum()), layer_features[0].shape[-1])
            for mask, features in zip(visual_masks, layer_features):
                layer[mask[visual_pos_masks]] = features.to(layer.dtype)
            joined.append(layer)
        return visual_pos_masks, joined


class Qwen3VLForConditionalGeneration(Qwen3VLPreTrainedModel, GenerationMixin):
    """Qwen3-VL with its language-model head, for `generate`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: Qwen3VLConfig) -> None:
        super().__init__(config)
        self.model = Qwen3VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(self, pixel_values, image_grid_thw, **kwargs) -> VisionEncoderOutput:
        return self.model.get_image_features(pixel_values, image_grid_thw)

    def get_video_features(self, pixel_values_videos, video_grid_thw, **kwargs) -> VisionEncoderOutput:
        return self.model.get_video_features(pixel_values_videos, video_grid_thw)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MultimodalCausalLMOutputWithPast:
        """As `Qwen3VLModel.forward`; `labels` `[batch, seq]` adds the loss, `logits_to_keep` trims the logits."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            **kwargs,
        )

        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, kept])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        return MultimodalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
        )

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """Positions `[4, batch, seq]` for `generate`: text positions, then the three multimodal rotary axes."""
        text_positions = super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)  # [batch, seq]
        input_ids = model_kwargs.get("input_ids")
        if input_ids is None or input_ids.shape[1] == 0:
            input_ids = inputs_tensor

        cache = model_kwargs.get("cache")
        past_length = 0 if cache is None else cache.get_seq_length()
        has_visual_grid = (
            model_kwargs.get("image_grid_thw") is not None or model_kwargs.get("video_grid_thw") is not None
        )
        is_token_ids = input_ids.ndim == 2 and not input_ids.is_floating_point()
        if past_length > 0 and self.model.rope_deltas is not None:
            rope_positions = (text_positions + self.model.rope_deltas).expand(3, -1, -1)
        elif is_token_ids and has_visual_grid:
            rope_positions, self.model.rope_deltas = self.model.rope_index(
                input_ids,
                model_kwargs.get("mm_token_type_ids"),
                model_kwargs.get("image_grid_thw"),
                model_kwargs.get("video_grid_thw"),
                model_kwargs.get("attention_mask"),
            )
        else:
            rope_positions = text_positions.expand(3, -1, -1)
            self.model.rope_deltas = torch.zeros(
                text_positions.shape[0], 1, dtype=torch.long, device=text_positions.device
            )
        return torch.cat([text_positions[None], rope_positions.to(text_positions.device)], dim=0)


__all__ = [
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLModel",
    "Qwen3VLPreTrainedModel",
    "Qwen3VLVisionModel",
    "VisionRotaryEmbedding",
]
