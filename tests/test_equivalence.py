"""Same numbers as the installed transformers' Qwen3-VL for the same weights: vision, DeepStack, logits, generate."""

import pytest
import torch
from tiny_models import build_prompt, random_patches, reference_and_ours

# Two fp32 implementations of the same math: they differ only in summation order and fused kernels.
RELATIVE_TOLERANCE = 1e-5

VISION_GRIDS = {
    "one image": [[1, 4, 6]],
    "two images of different sizes": [[1, 4, 6], [1, 8, 4]],
    "video of three frames": [[3, 4, 4]],
    "images and a video": [[1, 2, 2], [2, 6, 4], [1, 10, 2]],
    "large grid beyond the position table": [[1, 2, 120]],
}


def relative_error(expected: torch.Tensor, actual: torch.Tensor) -> float:
    return ((expected - actual).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def models():
    return reference_and_ours()


@pytest.mark.parametrize("grid", VISION_GRIDS.values(), ids=VISION_GRIDS.keys())
def test_vision_and_deepstack_features_match(models, grid):
    reference, ours = models
    pixel_values, grid_thw = random_patches(grid)

    with torch.no_grad():
        expected = reference.model.visual(pixel_values, grid_thw=grid_thw)
        actual = ours.model.visual(pixel_values, grid_thw)

    assert relative_error(expected.last_hidden_state, actual.last_hidden_state) < RELATIVE_TOLERANCE
    assert relative_error(expected.pooler_output, actual.pooler_output) < RELATIVE_TOLERANCE
    assert len(actual.deepstack_features) == len(expected.deepstack_features) == 2
    for expected_layer, actual_layer in zip(expected.deepstack_features, actual.deepstack_features):
        assert relative_error(expected_layer, actual_layer) < RELATIVE_TOLERANCE


def multimodal_inputs() -> dict:
    """A prompt with two images of different sizes and a two-frame video, as the processor would send it."""
    image_grids, video_grids = [[1, 4, 6], [1, 8, 4]], [[2, 4, 4]]
    input_ids, token_types = build_prompt(image_grids, video_grids)
    pixel_values, image_grid_thw = random_patches(image_grids, seed=1)
    pixel_values_videos, video_grid_thw = random_patches(video_grids, seed=2)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": token_types,
        "pixel_values": pixel_values,
        "image_grid_thw": image_grid_thw,
        "pixel_values_videos": pixel_values_videos,
        "video_grid_thw": video_grid_thw,
    }


def test_logits_match_for_two_images_and_a_video(models):
    reference, ours = models
    inputs = multimodal_inputs()

    with torch.no_grad():
        expected = reference(**inputs).logits
        actual = ours(**inputs).logits

    assert actual.shape == expected.shape
    assert relative_error(expected, actual) < RELATIVE_TOLERANCE


def test_token_types_are_derived_when_missing(models):
    reference, ours = models
    inputs = multimodal_inputs()

    with torch.no_grad():
        expected = reference(**inputs).logits
        inputs.pop("mm_token_type_ids")
        actual = ours(**inputs).logits

    assert relative_error(expected, actual) < RELATIVE_TOLERANCE


def test_left_padded_batch_logits_match(models):
    reference, ours = models
    single = multimodal_inputs()
    padding = 5
    inputs = dict(single)
    inputs["input_ids"] = torch.cat([torch.zeros(1, padding, dtype=torch.long), single["input_ids"]], dim=1)
    inputs["attention_mask"] = torch.cat([torch.zeros(1, padding, dtype=torch.long), single["attention_mask"]], 1)
    inputs["mm_token_type_ids"] = torch.cat(
        [torch.zeros(1, padding, dtype=torch.long), single["mm_token_type_ids"]], 1
    )

    with torch.no_grad():
        expected = reference(**inputs).logits[:, padding:]
        actual = ours(**inputs).logits[:, padding:]

    assert relative_error(expected, actual) < RELATIVE_TOLERANCE


def test_greedy_generation_matches(models):
    reference, ours = models
    inputs = multimodal_inputs()
    settings = {"max_new_tokens": 12, "do_sample": False}

    with torch.no_grad():
        expected = reference.generate(**inputs, **settings)
        actual = ours.generate(**inputs, **settings)

    new_tokens = expected[0, inputs["input_ids"].shape[1] :]
    assert len(set(new_tokens.tolist())) > 1, "the tiny model repeats one token: the comparison would prove little"
    assert torch.equal(expected, actual)


def test_text_only_generation_matches(models):
    reference, ours = models
    input_ids = torch.tensor([[1, 17, 18, 19, 20]])
    settings = {"max_new_tokens": 8, "do_sample": False}

    with torch.no_grad():
        expected = reference.generate(input_ids=input_ids, **settings)
        actual = ours.generate(input_ids=input_ids, **settings)

    assert torch.equal(expected, actual)


def test_parameter_names_and_shapes_match_the_checkpoints(models):
    reference, ours = models
    expected = {name: tuple(tensor.shape) for name, tensor in reference.state_dict().items()}
    actual = {name: tuple(tensor.shape) for name, tensor in ours.state_dict().items()}
    assert actual == expected
    assert any(name.startswith("model.visual.deepstack_merger_list.") for name in actual)
    assert "lm_head.weight" in actual
