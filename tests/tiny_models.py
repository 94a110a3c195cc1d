"""Tiny random Qwen3-VL checkpoints and prompts, built inside the tests: nothing is downloaded.

The configs use the published `config.json` form (text `rope_theta` + `rope_scaling`, vision `model_type` "qwen3_vl")
with widths of 32 to 48 and three layers, and small token ids so the vocabulary stays at 256.
"""

import copy

import torch
from transformers import Qwen3VLConfig as ReferenceConfig
from transformers import Qwen3VLForConditionalGeneration as ReferenceModel

from configuration_qwen3_vl import Qwen3VLConfig
from modeling_qwen3_vl import Qwen3VLForConditionalGeneration

SEED = 0
PATCH_SIZE = 4
PATCH_DIM = 3 * 2 * PATCH_SIZE**2
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 250, 251, 252, 253

TINY_CONFIG = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "model_type": "qwen3_vl",
    "text_config": {
        "model_type": "qwen3_vl_text",
        "vocab_size": 256,
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 12,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "rope_theta": 5000000,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [2, 2, 2], "rope_type": "default"},
        # Wider than usual so that a random model's greedy tokens vary instead of repeating one id.
        "initializer_range": 0.5,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "vision_config": {
        "model_type": "qwen3_vl",
        "depth": 3,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "hidden_act": "gelu_pytorch_tanh",
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "in_channels": 3,
        "num_position_embeddings": 64,
        "out_hidden_size": 48,
        "deepstack_visual_indexes": [0, 2],
        "initializer_range": 0.2,
    },
    "image_token_id": IMAGE_TOKEN,
    "video_token_id": VIDEO_TOKEN,
    "vision_start_token_id": VISION_START,
    "vision_end_token_id": VISION_END,
    "tie_word_embeddings": True,
}


def tiny_config_dict() -> dict:
    """A fresh copy of the tiny published-form config, safe to modify."""
    return copy.deepcopy(TINY_CONFIG)


def reference_and_ours(seed: int = SEED) -> tuple[ReferenceModel, Qwen3VLForConditionalGeneration]:
    """transformers' Qwen3-VL and this repo's, in eval mode, holding the same random weights."""
    torch.manual_seed(seed)
    reference = ReferenceModel(ReferenceConfig(**tiny_config_dict())).eval()
    ours = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**tiny_config_dict())).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def random_patches(grid_thw: list, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values` `[sum t*h*w, PATCH_DIM]` in the range of normalised pixels, and the grid as int64."""
    grid = torch.tensor(grid_thw, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(int(grid.prod(-1).sum()), PATCH_DIM, generator=generator) * 2 - 1, grid


def build_prompt(image_grids: list, video_grids: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids `[1, seq]` and token types in the chat layout: each image and each video frame between vision
    start and end markers, video frames behind a timestamp token, text around them."""
    ids, types = [1, 17, 18], [0, 0, 0]

    def add_visual(count: int, token: int, kind: int) -> None:
        ids.extend([VISION_START] + [token] * count + [VISION_END])
        types.extend([0] + [kind] * count + [0])

    for frames, height, width in image_grids:
        add_visual(frames * height * width // 4, IMAGE_TOKEN, 1)
        ids.extend([30, 31])
        types.extend([0, 0])
    for frames, height, width in video_grids:
        for frame in range(frames):
            ids.append(40 + frame)
            types.append(0)
            add_visual(height * width // 4, VIDEO_TOKEN, 2)
    ids.extend([50, 51, 52])
    types.extend([0, 0, 0])
    return torch.tensor([ids]), torch.tensor([types])
