"""Export the Qwen3-VL vision encoder to one ONNX graph that serves every input, then check it in ONNX Runtime.

    python export_vision.py                                   # this folder's model
    python export_vision.py --model Qwen/Qwen3-VL-4B-Instruct --output onnx/

The graph takes `pixel_values` [num_patches, 1536] float32 and `image_grid_thw` [num_images, 3] int64 and returns
`image_features` [num_patches / 4, out_hidden_size] and `deepstack_features` [num_deepstack, num_patches / 4,
out_hidden_size]. Any number of images and videos of any size go through the same file.
"""

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from configuration_qwen3_vl import Qwen3VLConfig
from modeling_qwen3_vl import Qwen3VLVisionModel

logger = logging.getLogger("export_vision")

HERE = Path(__file__).resolve().parent
ONNX_FILENAME = "vision_encoder.onnx"
ONNX_OPSET = 20  # the first opset with a native Gelu; LayerNormalization needs 17
GRAPH_CONTRACT_VERSION = "1"
VISION_PREFIX = "model.visual."
# A protobuf file cannot exceed 2 GiB; weights above this size go to a side file so the graph stays small to read.
EXTERNAL_DATA_BYTES = 1 << 30
# ONNX Runtime and PyTorch sum in different orders; fp32 results differ by about 1e-6 of the output's scale.
RELATIVE_TOLERANCE = 1e-4
RANDOM_WEIGHTS_SEED = 0

# Two images of different sizes: a dynamic axis traced at size 1 would be fixed to 1, so the sample avoids it.
EXPORT_SAMPLE_GRID = [[1, 6, 10], [1, 4, 4]]
VALIDATION_GRIDS = {
    "single image 16x12": [[1, 16, 12]],
    "two images 8x8 + 12x20": [[1, 8, 8], [1, 12, 20]],
    "video, 2 frames of 8x12": [[2, 8, 12]],
}


class ExportError(Exception):
    """A problem with what the user asked for, reported as one message rather than a traceback."""


@dataclass
class LoadedEncoder:
    model: Qwen3VLVisionModel
    source: str
    random_weights: bool


@dataclass
class CaseResult:
    name: str
    grid_thw: list
    max_abs_error: float
    relative_error: float
    passed: bool


class VisionEncoderGraph(nn.Module):
    """The exported contract: `(pixel_values, image_grid_thw) -> (image_features, deepstack_features)`."""

    def __init__(self, visual: Qwen3VLVisionModel) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.visual(pixel_values, image_grid_thw)
        deepstack = output.deepstack_features
        if not deepstack:
            return output.pooler_output, output.pooler_output.new_zeros(0, *output.pooler_output.shape)
        return output.pooler_output, torch.stack(deepstack)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder that hold vision weights, using the shard index when present."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({folder / shard for key, shard in weight_map.items() if key.startswith(VISION_PREFIX)})
    return sorted(folder.glob("*.safetensors"))


def download_from_hub(repo_id: str) -> Path:
    """Fetch the config and the vision weight shards of a Hub model; raise `ExportError` when the Hub is out of reach."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    logger.info("downloading the config and vision weights of %s from the Hugging Face Hub", repo_id)
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json"))
        try:
            index_path = Path(hf_hub_download(repo_id, "model.safetensors.index.json"))
        except EntryNotFoundError:
            hf_hub_download(repo_id, "model.safetensors")
        else:
            shards = {s for k, s in json.loads(index_path.read_text())["weight_map"].items() if k.startswith(VISION_PREFIX)}
            for shard in sorted(shards):
                hf_hub_download(repo_id, shard)
    except Exception as error:  # noqa: BLE001 - any failure to fetch is reported to the user the same way
        raise ExportError(f"cannot download {repo_id!r} from the Hugging Face Hub: {type(error).__name__}: {error}")
    return config_path.parent


def load_vision_encoder(model: str | Path | None = None) -> LoadedEncoder:
    """Build the vision encoder of a model folder or Hub id, with its weights.

    Args:
        model: a folder with `config.json` and safetensors weights, or a Hub id. `None` means this repository's own
            folder, which in a source checkout has no weights: the encoder then gets seeded random weights.
    """
    explicit = model is not None
    folder = Path(model) if explicit else HERE
    if explicit and not folder.is_dir():
        if str(model).count("/") != 1 or str(model).startswith((".", "/")):
            raise ExportError(f"--model {model!r} is neither a folder nor a Hub id of the form 'org/name'")
        folder = download_from_hub(str(model))
    if not (folder / "config.json").is_file():
        raise ExportError(f"no config.json in {folder}")

    config = Qwen3VLConfig.from_pretrained(folder)
    files = weight_files(folder)
    if not files and explicit:
        raise ExportError(f"no safetensors weights in {folder}; pass a folder that holds the checkpoint")

    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    encoder = Qwen3VLVisionModel(config.vision_config).float().eval()
    source = str(model) if explicit else str(HERE)
    if not files:
        logger.warning(
            "No weights in %s: exporting with RANDOM weights. The graph is valid but its features mean nothing; "
            "put the checkpoint's safetensors files in the folder or pass --model.", folder,
        )
        return LoadedEncoder(encoder, source, random_weights=True)

    load_vision_weights(encoder, files)
    return LoadedEncoder(encoder, source, random_weights=False)


def load_vision_weights(encoder: Qwen3VLVisionModel, files: list[Path]) -> None:
    """Copy the `model.visual.*` tensors of `files` into `encoder`, requiring an exact match of names and shapes."""
    from safetensors import safe_open

    state = {}
    for path in files:
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():
                if key.startswith(VISION_PREFIX):
                    state[key[len(VISION_PREFIX):]] = weights.get_tensor(key).float()
    expected = encoder.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ExportError(f"vision weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong_shapes = [key for key in state if state[key].shape != expected[key].shape]
    if wrong_shapes:
        key = wrong_shapes[0]
        raise ExportError(f"{key} has shape {list(state[key].shape)}, the config expects {list(expected[key].shape)}")
    encoder.load_state_dict(state)


def sample_inputs(encoder: Qwen3VLVisionModel, grid: list, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random `pixel_values` for `grid`, in the value range of normalised images, and the grid as int64."""
    grid_thw = torch.tensor(grid, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    num_patches = int(grid_thw.prod(-1).sum())
    return torch.rand(num_patches, encoder.patch_dim, generator=generator) * 2 - 1, grid_thw


def export_onnx(loaded: LoadedEncoder, output_dir: str | Path) -> Path:
    """Trace the encoder with dynamic patch and image counts, write `vision_encoder.onnx` and run the ONNX checker."""
    import onnx

    from frame_attention_onnx import frame_attention

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = output_dir / ONNX_FILENAME
    graph = VisionEncoderGraph(loaded.model).eval()
    pixel_values, grid_thw = sample_inputs(loaded.model, EXPORT_SAMPLE_GRID)

    num_patches, num_images = torch.export.Dim("num_patches"), torch.export.Dim("num_images")
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (pixel_values, grid_thw),
            input_names=["pixel_values", "image_grid_thw"],
            output_names=["image_features", "deepstack_features"],
            dynamic_shapes={"pixel_values": {0: num_patches}, "image_grid_thw": {0: num_images}},
            custom_translation_table={torch.ops.qwen3_vl.frame_attention.default: frame_attention},
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )

    metadata = {
        "source": loaded.source,
        "random_weights": str(loaded.random_weights).lower(),
        "graph_contract_version": GRAPH_CONTRACT_VERSION,
    }
    for key, value in metadata.items():
        program.model.metadata_props[key] = value
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    for stale in (onnx_path, output_dir / f"{ONNX_FILENAME}.data"):
        stale.unlink(missing_ok=True)
    program.save(onnx_path, external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    onnx.checker.check_model(str(onnx_path), full_check=True)
    return onnx_path


def validate_onnx(onnx_path: str | Path, encoder: Qwen3VLVisionModel, grids: dict | None = None) -> list[CaseResult]:
    """Run the graph in ONNX Runtime on inputs unlike the export sample and compare both outputs with PyTorch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph = VisionEncoderGraph(encoder).eval()
    results = []
    for seed, (name, grid) in enumerate((grids or VALIDATION_GRIDS).items(), start=1):
        pixel_values, grid_thw = sample_inputs(encoder, grid, seed)
        with torch.no_grad():
            expected = graph(pixel_values, grid_thw)
        actual = session.run(None, {"pixel_values": pixel_values.numpy(), "image_grid_thw": grid_thw.numpy()})
        max_abs_error, relative_error = 0.0, 0.0
        for reference, output in zip(expected, actual):
            difference = (torch.from_numpy(output) - reference).abs().max().item()
            max_abs_error = max(max_abs_error, difference)
            relative_error = max(relative_error, difference / max(reference.abs().max().item(), 1e-30))
        results.append(CaseResult(name, grid, max_abs_error, relative_error, relative_error <= RELATIVE_TOLERANCE))
    return results


def export_vision(model: str | Path | None = None, output_dir: str | Path = "onnx") -> tuple[Path, list[CaseResult]]:
    """Load, export, check and validate; return the ONNX path and the per-case validation results."""
    started = time.perf_counter()
    loaded = load_vision_encoder(model)
    logger.info("loaded %s in %.1f s", loaded.source, time.perf_counter() - started)

    started = time.perf_counter()
    onnx_path = export_onnx(loaded, output_dir)
    logger.info("exported and checked %s in %.1f s", onnx_path, time.perf_counter() - started)

    started = time.perf_counter()
    results = validate_onnx(onnx_path, loaded.model)
    logger.info("validated in ONNX Runtime in %.1f s", time.perf_counter() - started)
    return onnx_path, results


def configure_logging() -> None:
    """Progress lines from this tool only; the libraries underneath keep their warnings and lose their chatter."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # The exporter logs one line per optional torchvision operator it cannot register; none is used here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: this repository's folder)")
    parser.add_argument("--output", default="onnx", help="output folder (default: onnx/)")
    args = parser.parse_args(argv)
    configure_logging()

    try:
        onnx_path, results = export_vision(args.model, args.output)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"{onnx_path}: max error against PyTorch per case (tolerance {RELATIVE_TOLERANCE:g} of the output scale)")
    for result in results:
        verdict = "ok" if result.passed else "FAILED"
        print(f"  {result.name:28s} abs {result.max_abs_error:.3e}  relative {result.relative_error:.3e}  {verdict}")
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
