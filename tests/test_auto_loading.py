"""The repo's files plus tiny random weights load through the Auto classes with trust_remote_code, and round-trip."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import build_prompt, random_patches, reference_and_ours, tiny_config_dict
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from configuration_qwen3_vl import Qwen3VLConfig

REPO = Path(__file__).resolve().parent.parent
CODE_FILES = ["configuration_qwen3_vl.py", "modeling_qwen3_vl.py"]
# The same weights and code on both sides: only the loading path differs.
RELATIVE_TOLERANCE = 1e-6


def repo_config(config: dict) -> dict:
    """`config` with the repo's `auto_map`, which is what sends the Auto classes to this folder's code."""
    return {**config, "auto_map": json.loads((REPO / "config.json").read_text())["auto_map"]}


def make_model_folder(folder: Path, model, config: dict) -> Path:
    model.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(repo_config(config), indent=2))
    for name in CODE_FILES:
        shutil.copy(REPO / name, folder / name)
    return folder


def model_inputs() -> dict:
    image_grids, video_grids = [[1, 4, 6], [1, 2, 2]], [[2, 4, 4]]
    input_ids, token_types = build_prompt(image_grids, video_grids)
    pixel_values, image_grid_thw = random_patches(image_grids, seed=3)
    pixel_values_videos, video_grid_thw = random_patches(video_grids, seed=4)
    return dict(
        input_ids=input_ids,
        mm_token_type_ids=token_types,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        pixel_values_videos=pixel_values_videos,
        video_grid_thw=video_grid_thw,
    )


def relative_error(expected: torch.Tensor, actual: torch.Tensor) -> float:
    return ((expected - actual).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def reference_logits():
    reference, _ = reference_and_ours()
    with torch.no_grad():
        return reference(**model_inputs()).logits


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    _, ours = reference_and_ours()
    return make_model_folder(tmp_path_factory.mktemp("tiny_qwen3_vl"), ours, tiny_config_dict())


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_auto_config_uses_this_repos_class(model_folder):
    config = AutoConfig.from_pretrained(model_folder, trust_remote_code=True)
    assert type(config).__module__.endswith("configuration_qwen3_vl")
    assert type(config).__module__.startswith("transformers_modules")
    assert config.vision_config.deepstack_visual_indexes == [0, 2]
    assert config.text_config.rope_parameters["rope_theta"] == 5000000


def test_image_text_to_text_loads_with_no_missing_or_unexpected_keys(model_folder, reference_logits):
    model, info = AutoModelForImageTextToText.from_pretrained(
        model_folder, trust_remote_code=True, output_loading_info=True
    )
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(model).__module__.startswith("transformers_modules")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    rotary = model.model.visual.rotary_pos_emb
    assert torch.equal(rotary.inv_freq, rotary.compute_inv_freq()), "buffers must be rebuilt after a meta-device load"
    with torch.no_grad():
        logits = model.eval()(**model_inputs()).logits
    assert relative_error(reference_logits, logits) < 1e-5


def test_auto_model_is_the_base_model(model_folder):
    model, info = AutoModel.from_pretrained(model_folder, trust_remote_code=True, output_loading_info=True)
    assert type(model).__name__ == "Qwen3VLModel"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        hidden = model.eval()(**model_inputs()).last_hidden_state
    assert hidden.shape[-1] == 48 and torch.isfinite(hidden).all()


def test_save_pretrained_writes_a_folder_that_loads_the_same_way(model_folder, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(model_folder, trust_remote_code=True).eval()
    model.save_pretrained(tmp_path)

    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["auto_map"]["AutoModelForImageTextToText"].endswith("Qwen3VLForConditionalGeneration")
    assert all((tmp_path / name).is_file() for name in CODE_FILES)

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, trust_remote_code=True).eval()
    with torch.no_grad():
        expected, actual = model(**model_inputs()).logits, reloaded(**model_inputs()).logits
    assert relative_error(expected, actual) < RELATIVE_TOLERANCE


def test_a_checkpoint_saved_by_transformers_loads_with_this_code(tmp_path, reference_logits):
    """transformers 5 writes `rope_parameters` and vision `model_type` "qwen3_vl_vision": the other config form."""
    reference, _ = reference_and_ours()
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in config["text_config"] and "rope_scaling" not in config["text_config"]
    assert config["vision_config"]["model_type"] == "qwen3_vl_vision"
    (tmp_path / "config.json").write_text(json.dumps(repo_config(config)))
    for name in CODE_FILES:
        shutil.copy(REPO / name, tmp_path / name)

    model, info = AutoModelForImageTextToText.from_pretrained(
        tmp_path, trust_remote_code=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        logits = model.eval()(**model_inputs()).logits
    assert relative_error(reference_logits, logits) < 1e-5


def test_both_config_forms_read_the_same_values(tmp_path):
    published = Qwen3VLConfig(**tiny_config_dict())
    published.save_pretrained(tmp_path)
    resaved = Qwen3VLConfig.from_pretrained(tmp_path)
    for form in (published, resaved):
        assert form.text_config.rope_parameters == {
            "rope_type": "default",
            "rope_theta": 5000000,
            "mrope_section": [2, 2, 2],
            "mrope_interleaved": True,
        }
        assert form.vision_config.model_type == "qwen3_vl_vision"
        assert form.vision_config.rope_theta == 10000.0


def test_the_repos_config_is_the_published_4b_architecture():
    config = Qwen3VLConfig.from_pretrained(REPO)
    text, vision = config.text_config, config.vision_config
    assert config.architectures == ["Qwen3VLForConditionalGeneration"] and config.tie_word_embeddings
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert (text.vocab_size, text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (
        151936,
        36,
        2560,
        9728,
    )
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (32, 8, 128)
    assert text.rope_parameters["rope_theta"] == 5000000 and text.rope_parameters["mrope_section"] == [24, 20, 20]
    assert (text.bos_token_id, text.eos_token_id, text.max_position_embeddings) == (151643, 151645, 262144)
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (24, 1024, 4096, 16)
    assert (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) == (16, 2, 2)
    assert (vision.num_position_embeddings, vision.out_hidden_size) == (2304, 2560)
    assert vision.deepstack_visual_indexes == [5, 11, 17] and vision.hidden_act == "gelu_pytorch_tanh"
