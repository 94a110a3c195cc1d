"""The export command: progress, safe writes, metadata, clear user errors, the Hub upload with its network stubbed."""

import hashlib
import json
import os
import re
import shutil
import signal
from importlib.metadata import version
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_config_dict

import export_vision
import hub_upload
from configuration_qwen3_vl import Qwen3VLConfig
from modeling_qwen3_vl import Qwen3VLVisionModel

REPO = Path(__file__).resolve().parent.parent
STAGES = ["load", "export fp32", "check fp32", "validate fp32", "save"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A folder with the tiny config and vision weights, as a checkpoint on disk would hold them."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    model = Qwen3VLVisionModel(Qwen3VLConfig(**tiny_config_dict()).vision_config)
    (folder / "config.json").write_text(json.dumps(tiny_config_dict()))
    save_file(
        {f"model.visual.{name}": tensor for name, tensor in model.state_dict().items()}, folder / "model.safetensors"
    )
    return folder


def export(checkpoint: Path, output: Path, *extra: str) -> int:
    return export_vision.main(["--model", str(checkpoint), "--output", str(output), *extra])


def leftovers(folder: Path) -> list[str]:
    """Anything an interrupted or failed export could have left: ONNX files, data files, staging folders."""
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_one_progress_line_per_stage_with_its_time(checkpoint, tmp_path, capsys):
    assert export(checkpoint, tmp_path / "onnx") == 0
    progress = capsys.readouterr().err.splitlines()
    for name in STAGES:
        assert any(re.fullmatch(rf"{name}\s+\d+\.\d s", line) for line in progress), f"no progress line for {name}"


def test_quiet_prints_nothing_on_success(checkpoint, tmp_path, capsys):
    assert export(checkpoint, tmp_path / "onnx", "--quiet") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert leftovers(tmp_path / "onnx") == ["vision_encoder.onnx"]


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_vision.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "python export_vision.py --precision fp32 fp16 int8" in help_text and "--overwrite" in help_text


def test_metadata_names_the_source_the_config_and_the_versions(checkpoint, tmp_path):
    assert export(checkpoint, tmp_path / "onnx", "--quiet") == 0
    metadata = {
        prop.key: prop.value for prop in onnx.load(str(tmp_path / "onnx" / "vision_encoder.onnx")).metadata_props
    }

    config = json.loads((checkpoint / "config.json").read_text())
    assert metadata["source"] == str(checkpoint.resolve()) and metadata["source_revision"] == ""
    assert metadata["config_sha256"] == hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    assert metadata["random_weights"] == "false" and metadata["precision"] == "fp32"
    assert metadata["graph_contract_version"] == export_vision.GRAPH_CONTRACT_VERSION
    for package in ("torch", "transformers", "onnx", "onnxruntime"):
        assert metadata[f"{package}_version"] == version(package)


def test_an_existing_export_is_kept_unless_overwrite(checkpoint, tmp_path, capsys):
    output = tmp_path / "onnx"
    assert export(checkpoint, output, "--quiet") == 0
    before = (output / "vision_encoder.onnx").read_bytes()
    (output / "vision_encoder.onnx").write_bytes(before + b"")  # same content, new modification time

    assert export(checkpoint, output, "--quiet") == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (output / "vision_encoder.onnx").read_bytes() == before

    assert export(checkpoint, output, "--quiet", "--overwrite") == 0
    assert leftovers(output) == ["vision_encoder.onnx"]


def test_a_full_disk_leaves_nothing_behind(checkpoint, tmp_path, monkeypatch, capsys):
    def disk_full(path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(export_vision, "check_onnx", disk_full)
    assert export(checkpoint, tmp_path / "onnx") == 2
    error = capsys.readouterr().err
    assert "No space left on device" in error and "Traceback" not in error
    assert leftovers(tmp_path / "onnx") == []


def test_ctrl_c_during_the_export_leaves_nothing_behind(checkpoint, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_vision, "validate_onnx", interrupted)
    assert export(checkpoint, tmp_path / "onnx") == 130
    assert "interrupted" in capsys.readouterr().err
    assert leftovers(tmp_path / "onnx") == []


def test_ctrl_c_while_saving_waits_until_the_files_are_complete(checkpoint, tmp_path, monkeypatch):
    real_replace = os.replace

    def replace_then_interrupt(source, target):
        real_replace(source, target)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(export_vision.os, "replace", replace_then_interrupt)
    assert export(checkpoint, tmp_path / "onnx", "--quiet", "--precision", "fp32", "int8") == 130
    # Both variants landed whole: each loads and runs.
    for name in ("vision_encoder.onnx", "vision_encoder_int8.onnx"):
        onnx.checker.check_model(str(tmp_path / "onnx" / name), full_check=True)
    assert leftovers(tmp_path / "onnx") == ["vision_encoder.onnx", "vision_encoder_int8.onnx"]


def test_a_failed_validation_writes_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(export_vision.TOLERANCES, "fp32", export_vision.Tolerance(0.0, 1.1))
    assert export(checkpoint, tmp_path / "onnx") == 1
    assert "validation failed, nothing was written" in capsys.readouterr().err
    assert leftovers(tmp_path / "onnx") == []


@pytest.mark.parametrize(
    "make_output, message",
    [
        (lambda tmp: tmp / "a_file", "is a file, not a folder"),
        (lambda tmp: tmp / "a_file" / "onnx", "cannot create the output folder"),
    ],
    ids=["output is a file", "output under a file"],
)
def test_unwritable_output_is_a_user_error(checkpoint, tmp_path, capsys, make_output, message):
    (tmp_path / "a_file").write_text("not a folder")
    assert export(checkpoint, make_output(tmp_path)) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_bad_option_values_exit_2_with_the_reason(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_vision.main(["--precision", "int4"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config_text, message",
    [('{"model_type": "llama"', "is not valid JSON"), ('{"model_type": "llama"}', "describes a 'llama' model")],
    ids=["broken json", "another model"],
)
def test_a_config_that_is_not_qwen3_vl_is_a_user_error(tmp_path, capsys, config_text, message):
    (tmp_path / "config.json").write_text(config_text)
    assert export_vision.main(["--model", str(tmp_path), "--output", str(tmp_path / "onnx")]) == 2
    assert message in capsys.readouterr().err


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert export_vision.main(["--model", str(tmp_path), "--output", str(tmp_path / "onnx"), "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


class FakeHub:
    """Stands in for `huggingface_hub.HfApi`: records the calls and what the staged folder held at upload time."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = sorted(str(path.relative_to(folder_path)) for path in Path(folder_path).rglob("*") if path.is_file())
        FakeHub.calls.append(("upload_folder", repo_id, kwargs, files))
        FakeHub.snapshot = Path(folder_path).parent / "uploaded"
        shutil.copytree(folder_path, FakeHub.snapshot)
        return "https://huggingface.co/me/qwen3-vl-onnx/commit/0123"


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return FakeHub


def test_push_to_hub_stages_the_card_the_code_and_the_onnx_files(checkpoint, tmp_path, fake_hub):
    assert export(checkpoint, tmp_path / "onnx", "--quiet", "--push-to-hub", "me/qwen3-vl-onnx") == 0

    (create, repo_id, create_args), (upload, upload_repo, upload_args, files) = fake_hub.calls
    assert (create, repo_id, create_args["exist_ok"]) == ("create_repo", "me/qwen3-vl-onnx", True)
    assert (upload, upload_repo, upload_args["repo_type"]) == ("upload_folder", "me/qwen3-vl-onnx", "model")
    assert files == sorted([*hub_upload.MODEL_FILES, "onnx/vision_encoder.onnx"])
    assert "vision_encoder.onnx" in upload_args["commit_message"]
    assert not any(path.name.startswith(".hub-upload-") for path in (tmp_path / "onnx").iterdir())


def test_a_graph_with_external_weights_is_staged_with_its_data_file(tmp_path):
    graph, data = tmp_path / "vision_encoder.onnx", tmp_path / "vision_encoder.onnx.data"
    graph.write_bytes(b"graph")
    data.write_bytes(b"weights")
    staging = tmp_path / "staging"
    staging.mkdir()

    staged = hub_upload.stage_upload([graph], staging)

    assert staged == [*hub_upload.MODEL_FILES, "onnx/vision_encoder.onnx", "onnx/vision_encoder.onnx.data"]
    assert (staging / "onnx" / "vision_encoder.onnx.data").read_bytes() == b"weights"


def test_push_without_a_token_is_a_user_error(checkpoint, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert export(checkpoint, tmp_path / "onnx", "--quiet", "--push-to-hub", "me/qwen3-vl-onnx") == 2
    assert "no Hugging Face token" in capsys.readouterr().err


def test_uploaded_files_alone_load_with_the_auto_classes_offline(checkpoint, tmp_path, fake_hub, monkeypatch):
    from huggingface_hub import ModelCard
    from tiny_models import reference_and_ours
    from transformers import AutoModelForImageTextToText

    assert export(checkpoint, tmp_path / "onnx", "--quiet", "--push-to-hub", "me/qwen3-vl-onnx") == 0
    uploaded = fake_hub.snapshot

    card = ModelCard.load(uploaded / "README.md")
    assert card.data.base_model == "Qwen/Qwen3-VL-4B-Instruct" and "onnx" in card.data.tags

    # The uploaded config is the 4B architecture; a tiny one with the same auto_map stands in for the test's weights.
    folder = tmp_path / "from_hub"
    shutil.copytree(uploaded, folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    _, model = reference_and_ours()
    model.save_pretrained(folder / "weights")
    for path in (folder / "weights").glob("*.safetensors*"):  # the weights only: the code is the uploaded code
        path.replace(folder / path.name)
    (folder / "config.json").write_text(json.dumps({**tiny_config_dict(), "auto_map": auto_map}))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded, info = AutoModelForImageTextToText.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True
    )
    assert type(loaded).__module__.startswith("transformers_modules")
    assert not info["missing_keys"] and not info["unexpected_keys"]
