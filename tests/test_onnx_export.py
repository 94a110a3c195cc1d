"""One exported vision graph serves every input: sizes, several images of different sizes, video, the 2x2 minimum."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from tiny_models import PATCH_DIM, reference_and_ours, tiny_config_dict

import export_vision
from configuration_qwen3_vl import Qwen3VLConfig
from export_vision import validate_onnx
from modeling_qwen3_vl import Qwen3VLForConditionalGeneration

REPO = Path(__file__).resolve().parent.parent
# ONNX Runtime and PyTorch run the same fp32 math with different kernels; the tiny model lands below 1e-6.
RELATIVE_TOLERANCE = 1e-5

ORT_CASES = {
    "smallest image 2x2": [[1, 2, 2]],
    "single image 6x10": [[1, 6, 10]],
    "single tall image 20x4": [[1, 20, 4]],
    "two images of different sizes": [[1, 4, 6], [1, 12, 8]],
    "the same two images reversed": [[1, 12, 8], [1, 4, 6]],
    "same patch count as 6x10, laid out 10x6": [[1, 10, 6]],
    "four images": [[1, 2, 2], [1, 4, 4], [1, 8, 2], [1, 6, 6]],
    "video of two frames": [[2, 8, 6]],
    "video of four frames": [[4, 4, 4]],
    "images and videos mixed": [[1, 6, 4], [3, 4, 2], [1, 2, 2], [2, 2, 8]],
}


@pytest.fixture
def exported(tiny_export):
    return tiny_export


def test_every_input_matches_pytorch_in_onnx_runtime(exported):
    onnx_path, encoder = exported
    results = validate_onnx(onnx_path, encoder, ORT_CASES)
    assert [result.name for result in results] == list(ORT_CASES)
    for result in results:
        assert result.relative_error < RELATIVE_TOLERANCE, f"{result.name}: relative error {result.relative_error:.2e}"


def test_graph_contract(exported):
    onnx_path, encoder = exported
    model = onnx.load(str(onnx_path))

    def signature(values):
        return {
            value.name: (
                value.type.tensor_type.elem_type,
                [dim.dim_value or dim.dim_param for dim in value.type.tensor_type.shape.dim],
            )
            for value in values
        }

    inputs, outputs = signature(model.graph.input), signature(model.graph.output)
    assert list(inputs) == ["pixel_values", "image_grid_thw"]
    assert list(outputs) == ["image_features", "deepstack_features"]
    assert (
        inputs["pixel_values"][0] == onnx.TensorProto.FLOAT and inputs["image_grid_thw"][0] == onnx.TensorProto.INT64
    )
    num_patches, width = inputs["pixel_values"][1]
    num_images, three = inputs["image_grid_thw"][1]
    assert isinstance(num_patches, str) and isinstance(num_images, str), "both first axes must be dynamic"
    assert (width, three) == (PATCH_DIM, 3)
    num_tokens, out_hidden = outputs["image_features"][1]
    assert isinstance(num_tokens, str) and out_hidden == 48
    assert outputs["deepstack_features"][1][0] == 2 and outputs["deepstack_features"][1][2] == 48

    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["random_weights"] == "true"
    assert metadata["graph_contract_version"] == export_vision.GRAPH_CONTRACT_VERSION


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A folder holding a tiny checkpoint sharded into several safetensors files with an index."""
    folder = tmp_path_factory.mktemp("checkpoint")
    _, model = reference_and_ours()
    model.save_pretrained(folder, max_shard_size="100KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder, model


def test_cli_exports_a_checkpoint_folder_with_its_weights(tiny_checkpoint, tmp_path, capsys):
    folder, model = tiny_checkpoint
    assert export_vision.main(["--model", str(folder), "--output", str(tmp_path)]) == 0

    printed = capsys.readouterr().out
    assert all(name in printed for name in export_vision.VALIDATION_GRIDS)
    onnx_model = onnx.load(str(tmp_path / export_vision.ONNX_FILENAME))
    metadata = {prop.key: prop.value for prop in onnx_model.metadata_props}
    assert metadata["random_weights"] == "false" and metadata["source"] == str(folder)

    # The graph holds the checkpoint's weights, not fresh random ones.
    results = validate_onnx(tmp_path / export_vision.ONNX_FILENAME, model.model.visual, {"one image": [[1, 4, 4]]})
    assert results[0].passed


def test_only_shards_with_vision_weights_are_read(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    vision_shards = {folder / shard for key, shard in weight_map.items() if key.startswith("model.visual.")}
    assert set(export_vision.weight_files(folder)) == vision_shards
    assert len(vision_shards) < len(set(weight_map.values()))


def test_explicit_folder_without_weights_is_a_clear_error(tmp_path, capsys):
    Qwen3VLConfig(**tiny_config_dict()).save_pretrained(tmp_path)
    assert export_vision.main(["--model", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "no safetensors weights" in error and str(tmp_path) in error
    assert "Traceback" not in error


def test_unreachable_hub_id_is_a_clear_error(tmp_path):
    # An offline Hub and a refused connection are both 'cannot be reached'; offline mode answers without waiting.
    environment = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [sys.executable, str(REPO / "export_vision.py"), "--model", "nobody/no-such-model", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "cannot download 'nobody/no-such-model'" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / export_vision.ONNX_FILENAME).exists()


def test_model_argument_that_is_neither_folder_nor_hub_id(tmp_path, capsys):
    assert export_vision.main(["--model", str(tmp_path / "missing" / "folder"), "--output", str(tmp_path)]) == 2
    assert "neither a folder nor a Hub id" in capsys.readouterr().err


def test_loading_reports_mismatched_weights(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint
    config = tiny_config_dict()
    config["vision_config"]["depth"] = 4
    for path in folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(export_vision.ExportError, match="missing"):
        export_vision.load_vision_encoder(tmp_path)


def test_loaded_encoder_equals_the_full_models_visual(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    loaded = export_vision.load_vision_encoder(folder)
    full = Qwen3VLForConditionalGeneration.from_pretrained(folder)
    for name, tensor in full.model.visual.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("num_rows", [0, 4, 16, 18, 24, 40], ids=lambda rows: f"{rows} rows for 20")
def test_graph_refuses_pixel_values_that_disagree_with_the_grid(exported, num_rows):
    import numpy as np
    import onnxruntime

    onnx_path, _ = exported
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failure is expected: keep ONNX Runtime's own error log quiet
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    grid_thw = np.array([[1, 4, 4], [1, 2, 2]], dtype=np.int64)  # 20 patches
    pixel_values = np.zeros((num_rows, PATCH_DIM), dtype=np.float32)

    with pytest.raises(Exception, match="out of|invalid|INVALID"):
        session.run(None, {"pixel_values": pixel_values, "image_grid_thw": grid_thw})
