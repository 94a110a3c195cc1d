"""Bad input to the vision encoder gets a ValueError that names the numbers that disagree."""

import pytest
import torch
from tiny_models import PATCH_DIM, random_patches, tiny_config_dict

from configuration_qwen3_vl import Qwen3VLConfig
from modeling_qwen3_vl import Qwen3VLVisionModel


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Qwen3VLVisionModel(Qwen3VLConfig(**tiny_config_dict()).vision_config).eval()


def run(encoder, pixel_values, grid_thw):
    with torch.no_grad():
        return encoder(pixel_values, torch.as_tensor(grid_thw))


def test_patch_count_disagreeing_with_the_grid(encoder):
    pixel_values, _ = random_patches([[1, 4, 4], [1, 2, 2]])
    with pytest.raises(ValueError, match=r"describes 24 patches .* 2 rows.*pixel_values has 20"):
        run(encoder, pixel_values, [[1, 4, 4], [1, 2, 4]])
    with pytest.raises(ValueError, match=r"describes 16 patches .*pixel_values has 20"):
        run(encoder, pixel_values, [[1, 4, 4]])


@pytest.mark.parametrize("row", [[1, 3, 4], [1, 4, 5], [2, 6, 7]])
def test_sides_not_divisible_by_the_merge_size(encoder, row):
    frames, height, width = row
    pixel_values = torch.zeros(frames * height * width, PATCH_DIM)
    with pytest.raises(
        ValueError, match=rf"row 0 is \[{frames}, {height}, {width}\].*multiples of spatial_merge_size 2"
    ):
        run(encoder, pixel_values, [row])


@pytest.mark.parametrize("row", [[0, 4, 4], [1, 0, 4], [1, 4, -2], [-1, 2, 2]])
def test_zero_or_negative_entries(encoder, row):
    with pytest.raises(ValueError, match=rf"row 1 is \[{row[0]}, {row[1]}, {row[2]}\]: every entry must be positive"):
        run(encoder, torch.zeros(4, PATCH_DIM), [[1, 2, 2], row])


def test_wrong_feature_width(encoder):
    with pytest.raises(ValueError, match=rf"pixel_values must be \[num_patches, {PATCH_DIM}\], got \[4, 95\]"):
        run(encoder, torch.zeros(4, PATCH_DIM - 1), [[1, 2, 2]])


def test_wrong_rank(encoder):
    with pytest.raises(ValueError, match=r"got \[4, 3, 32\]"):
        run(encoder, torch.zeros(4, 3, PATCH_DIM // 3), [[1, 2, 2]])
    with pytest.raises(ValueError, match=r"grid_thw must be \[num_images, 3\] .* got \[3\]"):
        run(encoder, torch.zeros(4, PATCH_DIM), [1, 2, 2])
    with pytest.raises(ValueError, match=r"grid_thw must be \[num_images, 3\] .* got \[1, 2\]"):
        run(encoder, torch.zeros(4, PATCH_DIM), [[2, 2]])


def test_empty_grid(encoder):
    with pytest.raises(ValueError, match=r"at least one row, got \[0, 3\]"):
        run(encoder, torch.zeros(0, PATCH_DIM), torch.zeros(0, 3, dtype=torch.int64))


def test_floating_point_grid(encoder):
    with pytest.raises(ValueError, match="must hold integers, got torch.float32"):
        run(encoder, torch.zeros(4, PATCH_DIM), torch.tensor([[1.0, 2.0, 2.0]]))
