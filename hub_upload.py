"""Upload exported ONNX files to a Hugging Face Hub model repo, with the model card and the code that loads the model.

Used by `python export_vision.py --push-to-hub REPO_ID`. The repo receives `README.md`, `config.json`, the
configuration and modeling files, and the ONNX files under `onnx/`; the checkpoint's weights are not uploaded.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path

from export_vision import data_file

logger = logging.getLogger("export_vision")

HERE = Path(__file__).resolve().parent
MODEL_FILES = ["README.md", "config.json", "configuration_qwen3_vl.py", "modeling_qwen3_vl.py"]
ONNX_FOLDER = "onnx"


class UploadError(Exception):
    """The upload could not happen: no token, no network, or the Hub refused it."""


def stage_upload(onnx_files: list[Path], staging: Path) -> list[str]:
    """Lay out the repo's files in `staging` as they will appear on the Hub; return their paths in the repo."""
    staged = []
    for name in MODEL_FILES:
        shutil.copy2(HERE / name, staging / name)
        staged.append(name)
    (staging / ONNX_FOLDER).mkdir()
    for onnx_path in onnx_files:
        # A graph with external weights is useless without its data file next to it.
        data_path = data_file(onnx_path)
        for path in (onnx_path, data_path) if data_path.is_file() else (onnx_path,):
            target = staging / ONNX_FOLDER / path.name
            try:
                os.link(path, target)  # gigabytes of weights: share them rather than copy when the filesystem allows
            except OSError:
                shutil.copy2(path, target)
            staged.append(f"{ONNX_FOLDER}/{path.name}")
    return staged


def push_to_hub(repo_id: str, onnx_files: list[Path], token: str | None = None) -> str:
    """Create `repo_id` if needed and upload the staged files in one commit; return the commit's URL."""
    import huggingface_hub

    token = token or huggingface_hub.get_token()
    if not token:
        raise UploadError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise UploadError("HF_HUB_OFFLINE is set: unset it to upload")

    api = huggingface_hub.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix=".hub-upload-", dir=onnx_files[0].parent) as staging:
        staged = stage_upload(onnx_files, Path(staging))
        logger.info("uploading %s to %s", ", ".join(staged), repo_id)
        try:
            api.create_repo(repo_id, repo_type="model", exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=staging,
                commit_message=f"Upload the ONNX vision encoder ({', '.join(path.name for path in onnx_files)})",
            )
        except Exception as error:  # noqa: BLE001 - network, authentication and Hub errors all end the same way
            raise UploadError(f"cannot upload to {repo_id}: {type(error).__name__}: {error}") from error
    return str(getattr(commit, "commit_url", commit))
