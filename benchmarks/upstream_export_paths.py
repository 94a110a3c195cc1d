"""Measure how transformers' own ONNX export paths handle the stock Qwen3-VL vision encoder, on a small random model.

    python benchmarks/upstream_export_paths.py [--json results.json]

Each path is exported once and run in ONNX Runtime on images and videos unlike its export sample; every output is
compared with eager PyTorch. Files go to a temporary folder only.
"""

import argparse
import contextlib
import io
import json
import logging
import re
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

MODEL_CONFIG = dict(
    depth=3,
    hidden_size=64,
    num_heads=4,
    intermediate_size=128,
    out_hidden_size=64,
    deepstack_visual_indexes=[0, 2],
    num_position_embeddings=64,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
)
WEIGHTS_SEED = 0
PIXELS_SEED = 1
PATCH_DIM = 3 * 2 * 16 * 16  # channels * temporal_patch_size * patch_size ** 2
# ONNX Runtime and PyTorch sum in different orders; correct graphs land near 1e-6 of the output's scale.
RELATIVE_TOLERANCE = 1e-4

# Two images of different sizes: a dynamic axis traced at size 1 would be fixed to 1, and equal sizes would hide
# any assumption that all images have the same length.
TWO_IMAGE_SAMPLE = [[1, 8, 8], [1, 12, 20]]
SINGLE_IMAGE_SAMPLE = [[1, 8, 12]]
TEST_GRIDS = {
    "single 8x12": [[1, 8, 12]],
    "single 12x8": [[1, 12, 8]],  # same 96 patches as 8x12, other layout
    "single 16x16": [[1, 16, 16]],
    "two 8x8+12x20": [[1, 8, 8], [1, 12, 20]],
    "two 12x20+8x8": [[1, 12, 20], [1, 8, 8]],  # same 304 patches, reversed order
    "three 2x2+4x4+2x8": [[1, 2, 2], [1, 4, 4], [1, 2, 8]],
    "video 2x8x12": [[2, 8, 12]],
    "tiny 2x2": [[1, 2, 2]],
}
OUTPUT_NAMES = ["pooler_output"] + [f"deepstack_{i}" for i in range(len(MODEL_CONFIG["deepstack_visual_indexes"]))]


@dataclass
class PathResult:
    """One export path: how its export went, and per test grid either an ONNX Runtime error or the error vs PyTorch."""

    name: str
    column: str
    export_sample: list
    exported: bool = False
    export_seconds: float = 0.0
    export_error: str = ""
    export_error_cause: str = ""
    failing_call: str = ""
    graph_inputs: list = field(default_factory=list)
    grids: dict = field(default_factory=dict)


class PlainInputs(nn.Module):
    """`(pixel_values, grid_thw) -> (pooler_output, *deepstack_features)`, the encoder's own forward."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple:
        output = self.encoder(pixel_values, grid_thw)
        return (output.pooler_output, *output.deepstack_features)


class PrecomputedInputs(PlainInputs):
    """The same, with the grid-derived tensors passed in so the encoder skips its `grid_thw.tolist()` loops."""

    def forward(self, pixel_values, grid_thw, cu_seqlens, position_ids, interp_indices, interp_weights) -> tuple:
        output = self.encoder(
            pixel_values,
            grid_thw,
            cu_seqlens=cu_seqlens,
            position_ids=position_ids,
            interp_indices=interp_indices,
            interp_weights=interp_weights,
        )
        return (output.pooler_output, *output.deepstack_features)


def build_encoder(attention: str = "sdpa") -> nn.Module:
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    config = Qwen3VLVisionConfig(**MODEL_CONFIG)
    config._attn_implementation = attention
    torch.manual_seed(WEIGHTS_SEED)
    return Qwen3VLVisionModel(config).eval()


def sample_inputs(grid: list) -> tuple[torch.Tensor, torch.Tensor]:
    grid_thw = torch.tensor(grid, dtype=torch.int64)
    generator = torch.Generator().manual_seed(PIXELS_SEED)
    num_patches = int(grid_thw.prod(-1).sum())
    return torch.rand(num_patches, PATCH_DIM, generator=generator) * 2 - 1, grid_thw


def plain_feeds(encoder: nn.Module, grid: list) -> dict:
    pixel_values, grid_thw = sample_inputs(grid)
    return {"pixel_values": pixel_values, "grid_thw": grid_thw}


def precomputed_feeds(encoder: nn.Module, grid: list) -> dict:
    """Plain inputs plus the grid-derived tensors, computed on the host with transformers' vision helpers."""
    from transformers.vision_utils import (
        get_vision_attention_seqlens,
        get_vision_interpolation_indices_and_weights,
        get_vision_position_ids,
    )

    feeds = plain_feeds(encoder, grid)
    grid_thw = feeds["grid_thw"]
    feeds["cu_seqlens"], _ = get_vision_attention_seqlens(grid_thw, encoder.config)
    feeds["position_ids"] = get_vision_position_ids(grid_thw, encoder.spatial_merge_size)
    feeds["interp_indices"], feeds["interp_weights"] = get_vision_interpolation_indices_and_weights(
        grid_thw,
        num_grid_per_side=encoder.num_grid_per_side,
        mode=encoder.interpolation_mode,
        align_corners=encoder.interpolation_align_corners,
        spatial_merge_size=encoder.config.spatial_merge_size,
    )
    return feeds


def exporter_feeds(encoder: nn.Module, grid: list) -> dict:
    """What a host must give the `transformers.exporters` graph: forward kwargs plus the exporter's own precompute."""
    from transformers.exporters.utils import precompute_export_inputs

    pixel_values, grid_thw = sample_inputs(grid)
    feeds = {"hidden_states": pixel_values, "grid_thw": grid_thw}
    with torch.no_grad():
        precompute_export_inputs(encoder, feeds)
    return feeds


def describe_exception(error: BaseException | None) -> str:
    if error is None:
        return ""
    # torch.onnx colours parts of its messages for terminals.
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first_line}"


def failing_call(error: BaseException) -> str:
    """The model line that torch.export names after 'The following call raised this error:', if any."""
    lines = str(error).splitlines()
    for index, line in enumerate(lines[:-2]):
        if "The following call raised this error" in line:
            location = re.search(r'([\w.]+\.py)", line (\d+)', lines[index + 1])
            where = f"{location[1]}:{location[2]}" if location else lines[index + 1].strip()
            return f"{where}: {lines[index + 2].strip()}"
    return ""


def short_ort_error(error: BaseException) -> str:
    """One line of an ONNX Runtime failure: which input or node, and why."""
    message = " ".join(str(error).split())
    message = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", message)
    dims = re.search(r"invalid dimensions for input: (\S+) .*?index: (\d+) Got: (\d+) Expected: (\d+)", message)
    if dims:
        name, axis, got, expected = dims.groups()
        return f"input {name}: axis {axis} is {got}, the graph fixes it to {expected}"
    node = re.search(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", message)
    if node:
        op_type, node_name, status = node.groups()
        status = re.sub(r" \(must equal [^)]*\)", "", status)
        return f"{op_type} {node_name}: {status}"
    return message[:160]


def reference_outputs(encoder: nn.Module, feeds: dict) -> list[torch.Tensor]:
    pixel_values = feeds.get("pixel_values", feeds.get("hidden_states"))
    with torch.no_grad():
        output = encoder(pixel_values, feeds["grid_thw"])
    return [output.pooler_output, *output.deepstack_features]


def relative_error(actual: list, expected: list[torch.Tensor]) -> float:
    """max |onnx - torch| / max |torch|, the worst over pooler_output and every deepstack feature."""
    worst = 0.0
    for output, reference in zip(actual, expected, strict=True):
        output = torch.from_numpy(output)
        if output.shape != reference.shape:
            return float("inf")
        worst = max(worst, ((output - reference).abs().max() / reference.abs().max()).item())
    return worst


def run_test_grids(onnx_path: Path, encoder: nn.Module, make_feeds) -> dict:
    """Run the graph on every test grid; `make_feeds(encoder, grid)` builds what the host would feed it."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_names = [graph_input.name for graph_input in session.get_inputs()]
    # The exporters graph also returns last_hidden_state; only the features the language model consumes are compared.
    compared = [index for index, out in enumerate(session.get_outputs()) if out.name.startswith(("pooler", "deep"))]
    results = {}
    for grid_name, grid in TEST_GRIDS.items():
        feeds = make_feeds(encoder, grid)
        try:
            outputs = session.run(None, {name: feeds[name].numpy() for name in input_names})
        except Exception as error:  # noqa: BLE001 - every runtime failure is a measurement, not a crash
            results[grid_name] = {"status": "ERR", "ort_error": short_ort_error(error)}
            continue
        error = relative_error([outputs[index] for index in compared], reference_outputs(encoder, feeds))
        status = "OK" if error < RELATIVE_TOLERANCE else "WRONG"
        results[grid_name] = {"status": status, "relative_error": error}
    return results


@contextlib.contextmanager
def quiet():
    """Swallow what the exporters print on the way (graph dumps, progress lines, deprecation notes)."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def timed_export(result: PathResult, export, *args) -> Path | None:
    """Run `export(*args)`, fill in the export fields of `result`, and return the ONNX path or None when it raised."""
    import onnx

    started = time.perf_counter()
    try:
        with quiet(), torch.no_grad():
            onnx_path = export(*args)
    except Exception as error:  # noqa: BLE001 - an export failure is one of the findings
        result.export_seconds = time.perf_counter() - started
        result.export_error = describe_exception(error)
        result.export_error_cause = describe_exception(error.__cause__)
        result.failing_call = failing_call(error)
        return None
    result.export_seconds = time.perf_counter() - started
    result.exported = True
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    result.graph_inputs = [
        f"{value.name}[{','.join(d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim)}]"
        for value in graph.input
    ]
    return onnx_path


def official_exporter(workdir: Path) -> PathResult:
    """Path 1: `transformers.exporters.OnnxExporter` with `OnnxConfig(dynamic=True)`."""
    from transformers.exporters import OnnxConfig, OnnxExporter

    result = PathResult("1 transformers.exporters OnnxExporter", "1 OnnxExporter", TWO_IMAGE_SAMPLE)
    encoder = build_encoder()

    def export() -> Path:
        pixel_values, grid_thw = sample_inputs(TWO_IMAGE_SAMPLE)
        exported = OnnxExporter().export(
            encoder, {"hidden_states": pixel_values, "grid_thw": grid_thw}, config=OnnxConfig(dynamic=True)
        )
        exported.save_pretrained(workdir / "official")
        return workdir / "official" / "model.onnx"

    onnx_path = timed_export(result, export)
    if onnx_path:
        result.grids = run_test_grids(onnx_path, encoder, exporter_feeds)
    return result


def dynamo_export(onnx_path: Path, wrapper: nn.Module, feeds: dict, dynamic_shapes: tuple) -> Path:
    program = torch.onnx.export(
        wrapper.eval(),
        tuple(feeds.values()),
        input_names=list(feeds),
        output_names=OUTPUT_NAMES,
        dynamic_shapes=dynamic_shapes,
        dynamo=True,
        report=False,
    )
    program.save(onnx_path)
    return onnx_path


def dynamo_plain(workdir: Path) -> PathResult:
    """Path 2: `torch.onnx.export(dynamo=True)` of the encoder as it is."""
    result = PathResult("2 torch.onnx dynamo, plain inputs", "2 dynamo plain", TWO_IMAGE_SAMPLE)
    encoder = build_encoder()
    feeds = plain_feeds(encoder, TWO_IMAGE_SAMPLE)
    num_patches = torch.export.Dim("num_patches", min=4, max=65536)
    num_images = torch.export.Dim("num_images", min=1, max=64)
    dynamic_shapes = ({0: num_patches}, {0: num_images})
    onnx_path = timed_export(
        result, dynamo_export, workdir / "dynamo_plain.onnx", PlainInputs(encoder), feeds, dynamic_shapes
    )
    if onnx_path:
        result.grids = run_test_grids(onnx_path, encoder, plain_feeds)
    return result


def dynamo_precomputed(workdir: Path) -> PathResult:
    """Path 3: `torch.onnx.export(dynamo=True)` with host-precomputed kwargs and eager attention.

    With sdpa the export stops on the data-dependent `q_length > 1` test in transformers' sdpa wrapper; eager gets
    through.
    """
    result = PathResult("3 torch.onnx dynamo, precomputed inputs, eager", "3 dynamo precomp", TWO_IMAGE_SAMPLE)
    encoder = build_encoder(attention="eager")
    feeds = precomputed_feeds(encoder, TWO_IMAGE_SAMPLE)
    num_patches = torch.export.Dim("num_patches", min=4, max=65536)
    num_images = torch.export.Dim("num_images", min=1, max=64)
    num_boundaries = torch.export.Dim("num_segments_plus_1", min=2, max=4096)
    dynamic_shapes = (
        {0: num_patches},
        {0: num_images},
        {0: num_boundaries},
        {0: num_patches},
        {0: num_patches},
        {0: num_patches},
    )
    onnx_path = timed_export(
        result, dynamo_export, workdir / "dynamo_precomputed.onnx", PrecomputedInputs(encoder), feeds, dynamic_shapes
    )
    if onnx_path:
        result.grids = run_test_grids(onnx_path, encoder, precomputed_feeds)
    return result


def torchscript_legacy(workdir: Path, sample: list, label: str) -> PathResult:
    """Path 4: the legacy tracer, `torch.onnx.export(dynamo=False, dynamic_axes=...)`, with plain inputs."""
    result = PathResult("4 legacy TorchScript, plain inputs", f"4 legacy {label}", sample)
    encoder = build_encoder()
    onnx_path = workdir / f"legacy_{label}.onnx"
    dynamic_axes = {"pixel_values": {0: "num_patches"}, "grid_thw": {0: "num_images"}}
    dynamic_axes.update({name: {0: "num_tokens"} for name in OUTPUT_NAMES})

    def export() -> Path:
        feeds = plain_feeds(encoder, sample)
        torch.onnx.export(
            PlainInputs(encoder).eval(),
            tuple(feeds.values()),
            str(onnx_path),
            input_names=list(feeds),
            output_names=OUTPUT_NAMES,
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )
        return onnx_path

    if timed_export(result, export):
        result.grids = run_test_grids(onnx_path, encoder, plain_feeds)
    return result


def format_cell(measurement: dict | None, notes: list[str]) -> str:
    if measurement is None:
        return "-"
    if measurement["status"] == "ERR":
        if measurement["ort_error"] not in notes:
            notes.append(measurement["ort_error"])
        return f"ERR [{notes.index(measurement['ort_error']) + 1}]"
    return f"{measurement['status']} {measurement['relative_error']:.1e}"


def print_report(results: list[PathResult]) -> None:
    print(f"Qwen3VLVisionModel {MODEL_CONFIG}")
    print(
        f"relative error = max|onnx - torch| / max|torch| over pooler_output and deepstack features; "
        f"OK below {RELATIVE_TOLERANCE:g}, WRONG = ran without error but above it\n"
    )
    for result in results:
        if result.exported:
            print(f"{result.name}, sample {result.export_sample}: exported in {result.export_seconds:.1f} s")
            print(f"    graph inputs: {', '.join(result.graph_inputs)}")
            continue
        print(f"{result.name}, sample {result.export_sample}: export FAILED after {result.export_seconds:.1f} s")
        for detail in (result.export_error, result.export_error_cause, result.failing_call):
            if detail:
                print(f"    {detail}")

    notes: list[str] = []
    grid_width = max(map(len, TEST_GRIDS)) + 2
    column_width = max(len(result.column) for result in results) + 2
    print("\n" + "test grid".ljust(grid_width) + "".join(result.column.ljust(column_width) for result in results))
    for grid_name in TEST_GRIDS:
        cells = [format_cell(result.grids.get(grid_name), notes) for result in results]
        print(grid_name.ljust(grid_width) + "".join(cell.ljust(column_width) for cell in cells))
    if notes:
        print("\nONNX Runtime errors:")
        for number, note in enumerate(notes, start=1):
            print(f"  [{number}] {note}")


def silence_libraries() -> None:
    import onnxruntime

    warnings.simplefilter("ignore")
    # Failed runs are caught and reported in the table; ONNX Runtime would also log each one to stderr.
    onnxruntime.set_default_logger_severity(4)
    for name in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)
    silence_libraries()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="upstream_export_paths_") as folder:
        workdir = Path(folder)
        results = [
            official_exporter(workdir),
            dynamo_plain(workdir),
            dynamo_precomputed(workdir),
            torchscript_legacy(workdir, TWO_IMAGE_SAMPLE, "2img"),
            torchscript_legacy(workdir, SINGLE_IMAGE_SAMPLE, "8x12"),
        ]
    print_report(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
