"""Export the Qwen3-VL vision encoder to one ONNX graph that serves every input, then check it in ONNX Runtime.

    python export_vision.py                                   # this folder's model, fp32, into onnx/
    python export_vision.py --model Qwen/Qwen3-VL-4B-Instruct --output onnx/ --overwrite
    python export_vision.py --precision fp32 fp16 int8        # also the fp16 (GPU) and int8 (CPU) variants
    python export_vision.py --push-to-hub me/qwen3-vl-onnx    # then upload onnx/ with the model card and code

The graph takes `pixel_values` [num_patches, 1536] float32 and `image_grid_thw` [num_images, 3] int64 and returns
`image_features` [num_patches / 4, out_hidden_size] and `deepstack_features` [num_deepstack, num_patches / 4,
out_hidden_size]. Any number of images and videos of any size go through the same file.
"""

import argparse
import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from configuration_qwen3_vl import Qwen3VLConfig
from modeling_qwen3_vl import Qwen3VLVisionModel

logger = logging.getLogger("export_vision")

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILENAMES = {
    "fp32": "vision_encoder.onnx",
    "fp16": "vision_encoder_fp16.onnx",
    "int8": "vision_encoder_int8.onnx",
}
ONNX_FILENAME = ONNX_FILENAMES["fp32"]
# fp32 (and int8, quantized from it) runs each frame's attention as opset 23's Attention operator. fp16 targets GPU
# execution providers with opset 20 (native Gelu) and keeps matmul-softmax-matmul with the softmax in fp32.
ONNX_OPSETS = {"fp32": 23, "fp16": 20}
GRAPH_CONTRACT_VERSION = "1"
VISION_PREFIX = "model.visual."
# A protobuf file cannot exceed 2 GiB; weights above this size go to a side file so the graph stays small to read.
EXTERNAL_DATA_BYTES = 1 << 30
RANDOM_WEIGHTS_SEED = 0

# Two images of different sizes: a dynamic axis traced at size 1 would be fixed to 1, so the sample avoids it.
EXPORT_SAMPLE_GRID = [[1, 6, 10], [1, 4, 4]]
VALIDATION_GRIDS = {
    "single image 16x12": [[1, 16, 12]],
    "two images 8x8 + 12x20": [[1, 8, 8], [1, 12, 20]],
    "video, 2 frames of 8x12": [[2, 8, 12]],
}


@dataclass(frozen=True)
class Tolerance:
    """What a variant must meet against the PyTorch fp32 encoder on every validation case."""

    max_relative_error: float  # largest |onnx - torch| over the largest |torch|, over both outputs
    min_cosine: float  # smallest cosine between one token's features in ONNX Runtime and in PyTorch


TOLERANCES = {
    # The same fp32 math with other kernels and summation orders: about 1e-6 of the output scale.
    "fp32": Tolerance(max_relative_error=1e-4, min_cosine=0.99999),
    # fp16 keeps 11 significant bits in weights and activations; measured about 1e-3 of the output scale.
    "fp16": Tolerance(max_relative_error=1e-2, min_cosine=0.9999),
    # uint8 weights per output channel and activations per call; measured about 3e-2 and a worst cosine of 0.9993.
    "int8": Tolerance(max_relative_error=0.1, min_cosine=0.998),
}


class ExportError(Exception):
    """A problem with what the user asked for, reported as one message rather than a traceback."""


@dataclass
class LoadedEncoder:
    model: Qwen3VLVisionModel
    source: str  # Hub id or local path
    random_weights: bool
    revision: str = ""  # the Hub commit the files came from, when they came from the Hub
    config_sha256: str = ""


@dataclass
class CaseResult:
    name: str
    grid_thw: list
    max_abs_error: float
    relative_error: float
    min_cosine: float
    passed: bool


@dataclass
class VariantReport:
    precision: str
    onnx_path: Path  # where the file lands once every variant passed validation
    results: list[CaseResult]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)


class VisionEncoderGraph(nn.Module):
    """The exported contract: `(pixel_values, image_grid_thw) -> (image_features, deepstack_features)`."""

    def __init__(self, visual: Qwen3VLVisionModel) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.visual(pixel_values, image_grid_thw)
        image_features = output.pooler_output.float()
        if not output.deepstack_features:
            return image_features, image_features.new_zeros(0, *image_features.shape)
        return image_features, torch.stack(output.deepstack_features).float()


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder that hold vision weights, using the shard index when present."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({folder / shard for key, shard in weight_map.items() if key.startswith(VISION_PREFIX)})
    return sorted(folder.glob("*.safetensors"))


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """Fetch the config and the vision weight shards of a Hub model; raise `ExportError` when the Hub is out of reach.

    Returns the snapshot folder, whose name is the commit the files belong to.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    logger.info("downloading the config and vision weights of %s from the Hugging Face Hub", repo_id)
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=revision))
        try:
            index_path = Path(hf_hub_download(repo_id, "model.safetensors.index.json", revision=revision))
        except EntryNotFoundError:
            hf_hub_download(repo_id, "model.safetensors", revision=revision)
        else:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            for shard in sorted({shard for key, shard in weight_map.items() if key.startswith(VISION_PREFIX)}):
                hf_hub_download(repo_id, shard, revision=revision)
    except Exception as error:  # noqa: BLE001 - any failure to fetch is reported to the user the same way
        raise ExportError(
            f"cannot download {repo_id!r} from the Hugging Face Hub: {type(error).__name__}: {error}"
        ) from error
    return config_path.parent


def load_vision_encoder(model: str | Path | None = None, revision: str | None = None) -> LoadedEncoder:
    """Build the vision encoder of a model folder or Hub id, with its weights.

    Args:
        model: a folder with `config.json` and safetensors weights, or a Hub id. `None` means this repository's own
            folder, which in a source checkout has no weights: the encoder then gets seeded random weights.
        revision: branch, tag or commit of a Hub id.
    """
    explicit = model is not None
    folder = Path(model) if explicit else HERE
    from_hub = explicit and not folder.is_dir()
    if from_hub:
        if str(model).count("/") != 1 or str(model).startswith((".", "/")):
            raise ExportError(f"--model {model!r} is neither a folder nor a Hub id of the form 'org/name'")
        folder = download_from_hub(str(model), revision)
    if not (folder / "config.json").is_file():
        raise ExportError(f"no config.json in {folder}")

    config_path = folder / "config.json"
    try:
        config_dict = json.loads(config_path.read_text())
    except ValueError as error:
        raise ExportError(f"{config_path} is not valid JSON: {error}") from error
    if config_dict.get("model_type") != Qwen3VLConfig.model_type:
        raise ExportError(f"{config_path} describes a {config_dict.get('model_type')!r} model, not 'qwen3_vl'")
    config = Qwen3VLConfig.from_pretrained(folder)
    files = weight_files(folder)
    if not files and explicit:
        raise ExportError(f"no safetensors weights in {folder}; pass a folder that holds the checkpoint")

    torch.manual_seed(RANDOM_WEIGHTS_SEED)
    encoder = Qwen3VLVisionModel(config.vision_config).float().eval()
    provenance = {
        "source": str(model) if from_hub else str(folder.resolve()),
        "revision": folder.name if from_hub else "",
        # Canonical JSON, so the hash names the configuration rather than its formatting.
        "config_sha256": hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest(),
    }
    if not files:
        logger.warning(
            "No weights in %s: exporting with RANDOM weights. The graph is valid but its features mean nothing; "
            "put the checkpoint's safetensors files in the folder or pass --model.",
            folder,
        )
        return LoadedEncoder(encoder, random_weights=True, **provenance)

    load_vision_weights(encoder, files)
    return LoadedEncoder(encoder, random_weights=False, **provenance)


def load_vision_weights(encoder: Qwen3VLVisionModel, files: list[Path]) -> None:
    """Copy the `model.visual.*` tensors of `files` into `encoder`, requiring an exact match of names and shapes."""
    from safetensors import safe_open

    state = {}
    for path in files:
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():
                if key.startswith(VISION_PREFIX):
                    state[key[len(VISION_PREFIX) :]] = weights.get_tensor(key).float()
    expected = encoder.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ExportError(
            f"vision weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
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


def half_precision(encoder: Qwen3VLVisionModel) -> Qwen3VLVisionModel:
    """An fp16 copy of the encoder whose rotary frequencies stay fp32: positions of thousands need their mantissa."""
    half = copy.deepcopy(encoder).half()
    rotary = half.rotary_pos_emb
    rotary.inv_freq = rotary.compute_inv_freq()
    return half


def export_onnx(loaded: LoadedEncoder, output_dir: str | Path, precision: str = "fp32") -> Path:
    """Trace the encoder with dynamic patch and image counts and write the fp32 or fp16 graph into `output_dir`.

    Inputs and outputs are float32 in both: the fp16 graph casts after its inputs and before its outputs, and keeps
    position math and softmax in fp32 (layer norms accumulate in fp32 by the operator's definition).
    """
    from frame_attention_onnx import frame_attention, type_branch_outputs, use_attention_operator

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = output_dir / ONNX_FILENAMES[precision]
    encoder = half_precision(loaded.model) if precision == "fp16" else loaded.model
    graph = VisionEncoderGraph(encoder).eval()
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
            opset_version=ONNX_OPSETS[precision],
            dynamo=True,
            optimize=False,
            verbose=False,
        )

    simplify(program.model)
    type_branch_outputs(program.model)
    if precision == "fp32":
        use_attention_operator(program.model)
        simplify(program.model)
    for key, value in graph_metadata(loaded, precision).items():
        program.model.metadata_props[key] = value
    weight_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
    program.save(onnx_path, external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    return onnx_path


def check_onnx(onnx_path: str | Path) -> None:
    """The ONNX checker with full type and shape inference, on the file as written."""
    import onnx

    onnx.checker.check_model(str(onnx_path), full_check=True)


def simplify(model) -> None:
    """Inline, fold constants, drop what is unused, merge duplicates: the exporter's optimizer without its pattern
    rewrites, which take 10 s on the full-size tower and leave ONNX Runtime's speed unchanged."""
    import onnx_ir as ir
    import onnxscript.optimizer
    from onnx_ir.passes import common

    onnxscript.optimizer.inline(model)
    # The patch embedding's Conv3d weight is flattened in the graph; fold that however large, so ONNX Runtime sees a
    # constant weight it can pre-pack (and the int8 variant can quantize) instead of a reshape on every call.
    onnxscript.optimizer.fold_constants(
        model, should_fold=lambda node: True if node.op_type == "Reshape" and node.inputs[0].is_initializer() else None
    )
    onnxscript.optimizer.remove_unused_nodes(model)
    ir.passes.Sequential(
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.NameFixPass(),
    )(model)


def graph_metadata(loaded: LoadedEncoder, precision: str) -> dict[str, str]:
    """What a user of the ONNX file needs to know about where it came from, written into its `metadata_props`."""
    from importlib.metadata import version

    return {
        "source": loaded.source,
        "source_revision": loaded.revision,
        "config_sha256": loaded.config_sha256,
        "random_weights": str(loaded.random_weights).lower(),
        "precision": precision,
        "graph_contract_version": GRAPH_CONTRACT_VERSION,
        **{f"{package}_version": version(package) for package in ("torch", "transformers", "onnx", "onnxruntime")},
    }


def export_int8(loaded: LoadedEncoder, fp32_path: Path, output_dir: str | Path) -> Path:
    """Quantize the fp32 graph's linear layers to int8 weights and record the same metadata."""
    import onnx

    from onnx_int8 import quantize_int8

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    int8_path = quantize_int8(fp32_path, Path(output_dir) / ONNX_FILENAMES["int8"])
    model = onnx.load(str(int8_path))
    onnx.helper.set_model_props(model, graph_metadata(loaded, "int8"))
    onnx.save(model, str(int8_path))
    return int8_path


def token_cosines(expected: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Cosine between each token's feature vector in two outputs of the same shape, `[num_tokens]`."""
    expected, actual = expected.reshape(-1, expected.shape[-1]).double(), actual.reshape(-1, actual.shape[-1]).double()
    return torch.nn.functional.cosine_similarity(expected, actual, dim=-1, eps=1e-30)


def validate_onnx(
    onnx_path: str | Path,
    encoder: Qwen3VLVisionModel,
    grids: dict | None = None,
    tolerance: Tolerance = TOLERANCES["fp32"],
) -> list[CaseResult]:
    """Run the graph in ONNX Runtime on inputs unlike the export sample and compare both outputs with PyTorch fp32."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph = VisionEncoderGraph(encoder).eval()
    results = []
    for seed, (name, grid) in enumerate((grids or VALIDATION_GRIDS).items(), start=1):
        pixel_values, grid_thw = sample_inputs(encoder, grid, seed)
        with torch.no_grad():
            expected = graph(pixel_values, grid_thw)
        actual = session.run(None, {"pixel_values": pixel_values.numpy(), "image_grid_thw": grid_thw.numpy()})
        max_abs_error, relative_error, min_cosine = 0.0, 0.0, 1.0
        for reference, output in zip(expected, map(torch.from_numpy, actual)):
            difference = (output - reference).abs().max().item()
            max_abs_error = max(max_abs_error, difference)
            relative_error = max(relative_error, difference / max(reference.abs().max().item(), 1e-30))
            min_cosine = min(min_cosine, token_cosines(reference, output).min().item())
        passed = relative_error <= tolerance.max_relative_error and min_cosine >= tolerance.min_cosine
        results.append(CaseResult(name, grid, max_abs_error, relative_error, min_cosine, passed))
    return results


@contextmanager
def stage(name: str):
    """Log one progress line when the stage completes: its name and how long it took."""
    started = time.perf_counter()
    yield
    logger.info("%-16s %7.1f s", name, time.perf_counter() - started)


@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block is done, so files are never left half moved."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; elsewhere nobody can press Ctrl-C at us anyway
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def prepare_output(output_dir: Path, targets: list[Path], overwrite: bool) -> None:
    """Create the output folder and refuse to replace an existing export unless asked to."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"--output {output_dir} is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create the output folder {output_dir}: {error.strerror or error}") from error
    if not os.access(output_dir, os.W_OK):
        raise ExportError(f"cannot write to the output folder {output_dir}")
    existing = [path for path in targets if path.exists() or data_file(path).exists()]
    if existing and not overwrite:
        raise ExportError(f"{existing[0]} already exists; pass --overwrite to replace it")


def data_file(onnx_path: Path) -> Path:
    """Where an ONNX file keeps its weights when they are external."""
    return onnx_path.with_name(onnx_path.name + ".data")


def move_into_place(staged: Path, target: Path) -> None:
    """Replace `target` (and its data file) with the staged export: the old graph goes first, the new one last, so
    no visible `.onnx` ever reads a data file that is not its own."""
    target.unlink(missing_ok=True)
    data_file(target).unlink(missing_ok=True)
    if data_file(staged).exists():
        os.replace(data_file(staged), data_file(target))
    os.replace(staged, target)


def export_vision(
    model: str | Path | None = None,
    output_dir: str | Path = "onnx",
    precisions: tuple[str, ...] = ("fp32",),
    overwrite: bool = False,
    revision: str | None = None,
) -> list[VariantReport]:
    """Load, export each precision, check and validate it, and only then move the files into `output_dir`.

    Everything is written to a hidden staging folder inside `output_dir` and moved into place only when every variant
    passed validation: a failure, a full disk or Ctrl-C leaves no partial `.onnx` or data file behind. Reports whose
    validation failed come back with nothing written.
    """
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ExportError(f"unknown precision {unknown}; choose from {list(PRECISIONS)}")
    output_dir = Path(output_dir)
    targets = {precision: output_dir / ONNX_FILENAMES[precision] for precision in precisions}
    prepare_output(output_dir, list(targets.values()), overwrite)

    with stage("load"):
        loaded = load_vision_encoder(model, revision)

    # int8 is quantized from the fp32 graph, which is exported for it even when fp32 itself was not asked for.
    needed = [p for p in PRECISIONS if p in precisions or (p == "fp32" and "int8" in precisions)]
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        reports, staged = [], {}
        for precision in needed:
            with stage(f"export {precision}"):
                if precision == "int8":
                    staged[precision] = export_int8(loaded, staged["fp32"], staging)
                else:
                    staged[precision] = export_onnx(loaded, staging, precision)
            with stage(f"check {precision}"):
                check_onnx(staged[precision])
            if precision not in precisions:
                continue
            with stage(f"validate {precision}"):
                results = validate_onnx(staged[precision], loaded.model, tolerance=TOLERANCES[precision])
            reports.append(VariantReport(precision, targets[precision], results))

        if all(report.passed for report in reports):
            with stage("save"), deferred_interrupt():
                for precision, target in targets.items():
                    move_into_place(staged[precision], target)
        return reports
    except OSError as error:
        where = error.filename or staging
        raise ExportError(f"writing the export failed: {error.strerror or error} ({where})") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def configure_logging(verbosity: int = 0) -> None:
    """Progress lines from this tool; the libraries underneath keep their warnings and lose their chatter.

    Args:
        verbosity: -1 for errors only, 0 for one line per stage, 1 to also let the libraries speak.
    """
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # the stream of this call: a caller may have redirected it since
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if verbosity < 0 else logging.INFO)
    logger.propagate = False
    if verbosity < 1:
        # The exporter logs one line per optional torchvision operator it cannot register; none is used here.
        for library in ("torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(library).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")


def print_reports(reports: list[VariantReport]) -> None:
    for report in reports:
        tolerance = TOLERANCES[report.precision]
        print(
            f"{report.onnx_path}: against PyTorch fp32 (tolerance: relative error <= "
            f"{tolerance.max_relative_error:g}, token cosine >= {tolerance.min_cosine:g})"
        )
        for result in report.results:
            verdict = "ok" if result.passed else "FAILED"
            print(
                f"  {result.name:28s} abs {result.max_abs_error:.3e}  relative {result.relative_error:.3e}  "
                f"min cosine {result.min_cosine:.6f}  {verdict}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: this repository's folder)")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub id (default: main)")
    parser.add_argument("--output", default="onnx", help="output folder (default: onnx/)")
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=PRECISIONS, help="variants to write (default: fp32)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in the output folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload the files with the model card and code")
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", action="store_true", help="print errors only")
    chatter.add_argument("--verbose", action="store_true", help="library messages, and tracebacks on errors")
    args = parser.parse_args(argv)
    configure_logging(-1 if args.quiet else 1 if args.verbose else 0)

    try:
        reports = export_vision(args.model, args.output, tuple(args.precision), args.overwrite, args.revision)
        if not args.quiet or not all(report.passed for report in reports):
            print_reports(reports)
        if not all(report.passed for report in reports):
            print("error: validation failed, nothing was written", file=sys.stderr)
            return 1
        if args.push_to_hub:
            from hub_upload import UploadError, push_to_hub

            try:
                url = push_to_hub(args.push_to_hub, [report.onnx_path for report in reports])
            except UploadError as error:
                raise ExportError(str(error)) from error
            logger.info("uploaded: %s", url)
    except ExportError as error:
        if args.verbose:
            logger.exception("export failed")
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no partial file was left in the output folder", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - an unexpected failure still gets one line unless --verbose asks more
        if args.verbose:
            raise
        print(f"error: {type(error).__name__}: {error} (run with --verbose for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
