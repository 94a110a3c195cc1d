"""Benchmark the Qwen3-VL vision encoder: transformers' PyTorch eager, this repo's PyTorch model, every ONNX variant.

    python bench_vision.py                          # full-size tower of config.json, random weights (about 75 min)
    python bench_vision.py --json bench.json        # the same numbers, also as JSON
    python bench_vision.py --rows torch-eager onnx-fp32 --inputs 448 4x448

One command measures every row side by side on this machine. Each (row, input) pair runs in its own process, so its
peak resident memory while running (VmHWM after loading, weights included) is its own; the weights are the same
seeded random ones everywhere (time does not depend on their values). Errors are against transformers' eager fp32
output; ratios are its latency over the row's.
"""

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BASELINE = "torch-eager"
ROWS = {
    BASELINE: "PyTorch eager fp32, transformers (sdpa)",
    "torch-fp32": "PyTorch fp32, this repo",
    "torch-bf16": "PyTorch bf16, this repo",
    "onnx-fp32": "ONNX Runtime fp32",
    "onnx-int8": "ONNX Runtime int8",
    "onnx-fp16": "ONNX Runtime fp16 (CPU: for GPU providers)",
}
SHARED_VISION_FIELDS = [
    "depth",
    "hidden_size",
    "hidden_act",
    "intermediate_size",
    "num_heads",
    "in_channels",
    "patch_size",
    "spatial_merge_size",
    "temporal_patch_size",
    "out_hidden_size",
    "num_position_embeddings",
    "deepstack_visual_indexes",
]
GEMM_PEAK_SIZES = [(2048, 2048, 2048), (4096, 4096, 4096), (784, 1024, 4096)]
# A cell stops repeating once it has spent this long, keeping at least MIN_REPEATS timed runs after the warm-up.
CELL_SECONDS = 90.0
MIN_REPEATS = 2
# Memory kept free for the system when estimating the largest image a row can run.
MEMORY_MARGIN_BYTES = 1 << 30

logger = logging.getLogger("bench_vision")


def benchmark_inputs(patch_size: int, image_pixels: int) -> dict[str, list]:
    """The four inputs, as patch grids: one image, one image of twice the side, four images, a four-frame video."""
    side = image_pixels // patch_size
    return {
        f"{image_pixels}": [[1, side, side]],
        f"{2 * image_pixels}": [[1, 2 * side, 2 * side]],
        f"4x{image_pixels}": [[1, side, side]] * 4,
        f"video4x{image_pixels}": [[4, side, side]],
    }


def encoder_flops(config, grid: list) -> float:
    """Floating-point operations of one forward pass: the linear layers and the attention products."""
    hidden, intermediate, merge = config.hidden_size, config.intermediate_size, config.spatial_merge_size
    patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
    num_patches = sum(t * h * w for t, h, w in grid)
    frame_squares = sum(t * (h * w) ** 2 for t, h, w in grid)
    per_block = 2 * num_patches * (3 * hidden * hidden + hidden * hidden + 2 * hidden * intermediate)
    attention = 4 * hidden * frame_squares  # scores and weighted sum, over every head
    merged, tokens = hidden * merge**2, num_patches // merge**2
    mergers = (
        (1 + len(config.deepstack_visual_indexes)) * 2 * tokens * (merged * merged + merged * config.out_hidden_size)
    )
    return 2 * num_patches * patch_dim * hidden + config.depth * (per_block + attention) + mergers


def measure_gemm_peak(threads: int) -> dict[str, float]:
    """Best fp32 matrix-product rate of this machine in GFLOP/s, through PyTorch and through ONNX Runtime."""
    import onnx
    import torch

    torch.set_num_threads(threads)
    best = {"torch": 0.0, "onnxruntime": 0.0}
    for m, k, n in GEMM_PEAK_SIZES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        best["torch"] = max(best["torch"], 2 * m * k * n / min(timed(partial(torch.mm, a, b), 5)) / 1e9)

        weight = onnx.numpy_helper.from_array(b.numpy(), "weight")
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("MatMul", ["x", "weight"], ["y"])],
            "gemm",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [m, k])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [m, n])],
            [weight],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        session = onnx_session(model.SerializeToString(), threads)
        feed = {"x": a.numpy()}
        best["onnxruntime"] = max(
            best["onnxruntime"], 2 * m * k * n / min(timed(partial(session.run, None, feed), 5)) / 1e9
        )
    return best


def timed(function, repeats: int) -> list[float]:
    """Seconds of `repeats` calls after one warm-up call."""
    function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return seconds


def onnx_session(model, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # keep ONNX Runtime's optimizer notes out of the table
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@dataclass
class Cell:
    """One row on one input: the timings, the error against the baseline, the memory."""

    row: str
    input: str
    grid: list
    seconds: list[float] = field(default_factory=list)
    peak_rss_bytes: int = 0  # while running, weights included
    load_peak_rss_bytes: int = 0  # while loading the model
    error: str = ""
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    min_cosine: float | None = None
    gflops: float = 0.0

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def build_runner(row: str, workdir: Path, threads: int):
    """A function `(pixel_values, grid_thw) -> (image_features, deepstack_features)` on float32 numpy arrays.

    ONNX rows never import torch, so their peak memory is the runtime's alone.
    """
    if row.startswith("onnx-"):
        session = onnx_session(str(workdir / json.loads((workdir / "onnx.json").read_text())[row]), threads)
        return lambda pixel_values, grid_thw: session.run(
            None, {"pixel_values": pixel_values, "image_grid_thw": grid_thw}
        )

    import torch
    from safetensors.torch import load_file

    from configuration_qwen3_vl import Qwen3VLConfig

    torch.set_num_threads(threads)
    config = Qwen3VLConfig.from_pretrained(workdir).vision_config
    if row == BASELINE:
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        fields = {name: getattr(config, name) for name in SHARED_VISION_FIELDS}
        model = Qwen3VLVisionModel(Qwen3VLVisionConfig(**fields, attn_implementation="sdpa"))
    else:
        from modeling_qwen3_vl import Qwen3VLVisionModel

        model = Qwen3VLVisionModel(config)
    model.load_state_dict(load_file(workdir / "vision.safetensors"))
    model = model.eval().to(torch.bfloat16 if row == "torch-bf16" else torch.float32)
    if row == "torch-bf16":
        model.rotary_pos_emb.inv_freq = model.rotary_pos_emb.compute_inv_freq()

    def run(pixel_values, grid_thw):
        with torch.no_grad():
            output = model(torch.from_numpy(pixel_values).to(model.dtype), grid_thw=torch.from_numpy(grid_thw))
        return output.pooler_output.float().numpy(), torch.stack(output.deepstack_features).float().numpy()

    return run


def run_cell(spec: dict) -> dict:
    """Worker side: time one row on one input and keep its outputs for the error computation."""
    workdir = Path(spec["workdir"])
    run = build_runner(spec["row"], workdir, spec["threads"])
    load_peak_rss_bytes = peak_resident_bytes()
    # Loading holds the weights twice for a moment; the peak that matters for serving is the one while running.
    gc.collect()
    reset_peak_resident()
    grid_thw = np.array(spec["grid"], dtype=np.int64)
    num_patches = int(grid_thw.prod(-1).sum())
    pixel_values = np.random.default_rng(0).random((num_patches, spec["patch_dim"]), dtype=np.float32) * 2 - 1

    started = time.perf_counter()
    outputs = run(pixel_values, grid_thw)  # warm-up: allocations, weight packing, first-call dispatch
    first = time.perf_counter() - started
    repeats = max(MIN_REPEATS, min(spec["repeats"], int(CELL_SECONDS / max(first, 1e-3))))
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = run(pixel_values, grid_thw)
        seconds.append(time.perf_counter() - started)
    np.savez(spec["outputs"], image_features=outputs[0], deepstack_features=outputs[1])
    return {"seconds": seconds, "peak_rss_bytes": peak_resident_bytes(), "load_peak_rss_bytes": load_peak_rss_bytes}


def reset_peak_resident() -> None:
    """Restart the VmHWM count from the current resident size (Linux); elsewhere the peak includes loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        logger.debug("cannot reset the peak resident size; it will include loading the model")


def peak_resident_bytes() -> int:
    """This process's peak resident memory since it started or since `reset_peak_resident`."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def launch_cell(cell: Cell, workdir: Path, patch_dim: int, repeats: int, threads: int) -> None:
    """Run one cell in a fresh process and record its timings and its peak resident memory."""
    outputs = workdir / f"{cell.row}-{cell.input}.npz"
    spec = {
        "row": cell.row,
        "grid": cell.grid,
        "workdir": str(workdir),
        "patch_dim": patch_dim,
        "repeats": repeats,
        "threads": threads,
        "outputs": str(outputs),
    }
    spec_path, result_path = workdir / "cell.json", workdir / "cell-result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(result_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = process.communicate()[1]
    if process.returncode != 0 or not result_path.is_file():
        cell.error = (stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1][:200]
        return
    result = json.loads(result_path.read_text())
    cell.seconds, cell.peak_rss_bytes = result["seconds"], result["peak_rss_bytes"]
    cell.load_peak_rss_bytes = result["load_peak_rss_bytes"]


def compare(reference: Path, candidate: Path, cell: Cell) -> None:
    """Max and mean absolute error, and the smallest per-token cosine, over both outputs."""
    expected, actual = np.load(reference), np.load(candidate)
    errors, cosines = [], []
    for name in ("image_features", "deepstack_features"):
        a = expected[name].reshape(-1, expected[name].shape[-1]).astype(np.float64)
        b = actual[name].reshape(-1, actual[name].shape[-1]).astype(np.float64)
        errors.append(np.abs(a - b).ravel())
        cosines.append((a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-300))
    errors = np.concatenate(errors)
    cell.max_abs_error, cell.mean_abs_error = float(errors.max()), float(errors.mean())
    cell.min_cosine = float(np.concatenate(cosines).min())


def prepare(model: str | None, workdir: Path, rows: list[str]) -> dict:
    """Weights for the PyTorch rows and every ONNX variant, from one encoder; returns export timings in seconds."""
    from safetensors.torch import save_file

    import export_vision

    loaded = export_vision.load_vision_encoder(model)
    # Every worker needs only the vision part of the config.
    (workdir / "config.json").write_text(json.dumps({"vision_config": loaded.model.config.to_dict()}))
    save_file(
        {name: tensor.contiguous() for name, tensor in loaded.model.state_dict().items()},
        workdir / "vision.safetensors",
    )

    exports, export_seconds = {}, {}
    for precision in ("fp32", "fp16", "int8"):
        if f"onnx-{precision}" not in rows and not (precision == "fp32" and "onnx-int8" in rows):
            continue
        started = time.perf_counter()
        if precision == "int8":
            path = export_vision.export_int8(loaded, workdir / exports["onnx-fp32"], workdir)
        else:
            path = export_vision.export_onnx(loaded, workdir, precision)
        export_seconds[precision] = time.perf_counter() - started
        exports[f"onnx-{precision}"] = path.name
        logger.info("exported %s in %.1f s", path.name, export_seconds[precision])
    (workdir / "onnx.json").write_text(json.dumps(exports))
    return export_seconds


def largest_square_image(cells: list[Cell], patch_size: int, merge_size: int, available_bytes: int) -> int | None:
    """Side in pixels of the largest single square image that fits in memory, from the measured peaks.

    Peak memory is fitted as a + b * patches + c * sum of squared frame sizes over the measured inputs (the quadratic
    term is attention), then solved for one square frame at the available memory.
    """
    points = [
        (sum(t * h * w for t, h, w in c.grid), sum(t * (h * w) ** 2 for t, h, w in c.grid), c.peak_rss_bytes)
        for c in cells
        if c.seconds
    ]
    if len(points) < 3:
        return None
    design = np.array([[1.0, patches, squares] for patches, squares, _ in points])
    (a, b, c), *_ = np.linalg.lstsq(design, np.array([peak for *_, peak in points], dtype=float), rcond=None)
    peaks = [peak for *_, peak in points]
    b, c = max(b, 0.0), max(c, 0.0)
    budget = available_bytes - a
    if budget <= 0 or (b == 0.0 and c == 0.0) or max(peaks) - min(peaks) < 0.02 * min(peaks):
        return None  # the inputs were too small for memory to grow measurably with them
    patches = budget / b if c == 0.0 else (-b + (b * b + 4 * c * budget) ** 0.5) / (2 * c)
    block = patch_size * merge_size  # the image processor resizes to multiples of this
    return int(patches**0.5 * patch_size) // block * block


def print_table(cells: list[Cell], baseline: dict[str, float], peak: float) -> None:
    header = (
        f"{'row':44s} {'input':>12s} {'median ms':>10s} {'spread ms':>14s} {'x eager':>8s} {'GFLOP/s':>8s} "
        f"{'% peak':>7s} {'max err':>9s} {'mean err':>9s} {'min cos':>9s} {'peak MB':>8s}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        if cell.error:
            print(f"{ROWS[cell.row]:44s} {cell.input:>12s}  failed: {cell.error}")
            continue
        spread = f"{min(cell.seconds) * 1e3:.0f}-{max(cell.seconds) * 1e3:.0f}"
        ratio = baseline[cell.input] / cell.median if cell.input in baseline else float("nan")
        errors = (
            f"{cell.max_abs_error:9.2e} {cell.mean_abs_error:9.2e} {cell.min_cosine:9.6f}"
            if cell.min_cosine is not None
            else f"{'':9s} {'':9s} {'':9s}"
        )
        print(
            f"{ROWS[cell.row]:44s} {cell.input:>12s} {cell.median * 1e3:10.0f} {spread:>14s} {ratio:8.2f} "
            f"{cell.gflops:8.1f} {100 * cell.gflops / peak:6.1f}% {errors} {cell.peak_rss_bytes / 2**20:8.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: this repository's config, random weights)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--inputs", nargs="+", help="input names to run (default: all four)")
    parser.add_argument("--image-pixels", type=int, default=448, help="side of the base image (default 448)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell after one warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every row (default: all)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec_path, result_path = map(Path, args.worker)
        Path(result_path).write_text(json.dumps(run_cell(json.loads(spec_path.read_text()))))
        return 0

    import export_vision

    export_vision.configure_logging()
    logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    rows = [BASELINE] + [row for row in args.rows if row != BASELINE]

    with tempfile.TemporaryDirectory(prefix="bench_vision_") as scratch:
        workdir = Path(scratch)
        export_seconds = prepare(args.model, workdir, rows)
        from configuration_qwen3_vl import Qwen3VLConfig

        config = Qwen3VLConfig.from_pretrained(workdir).vision_config
        patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
        inputs = benchmark_inputs(config.patch_size, args.image_pixels)
        inputs = {name: grid for name, grid in inputs.items() if not args.inputs or name in args.inputs}

        gemm_peak = measure_gemm_peak(args.threads)
        peak = max(gemm_peak.values())
        logger.info("fp32 GEMM peak: %s GFLOP/s", {k: round(v, 1) for k, v in gemm_peak.items()})

        cells = []
        for row in rows:
            for name, grid in inputs.items():
                cell = Cell(row, name, grid)
                logger.info("running %s on %s", row, name)
                launch_cell(cell, workdir, patch_dim, args.repeats, args.threads)
                if cell.seconds:
                    cell.gflops = encoder_flops(config, grid) / cell.median / 1e9
                    if row != BASELINE:
                        compare(workdir / f"{BASELINE}-{name}.npz", workdir / f"{row}-{name}.npz", cell)
                cells.append(cell)

    baseline = {cell.input: cell.median for cell in cells if cell.row == BASELINE and cell.seconds}
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") - MEMORY_MARGIN_BYTES
    largest = {
        row: largest_square_image(
            [c for c in cells if c.row == row], config.patch_size, config.spatial_merge_size, available
        )
        for row in rows
    }

    print()
    print(f"fp32 GEMM peak (best of torch.mm and ONNX Runtime MatMul): {peak:.1f} GFLOP/s, {args.threads} threads")
    print("export seconds: " + ", ".join(f"{p} {s:.1f}" for p, s in export_seconds.items()))
    print_table(cells, baseline, peak)
    print(f"largest single square image in {available / 2**30:.0f} GiB (estimated from the peaks while running):")
    for row, side in largest.items():
        print(f"  {ROWS[row]:44s} {f'{side}x{side} pixels' if side else 'n/a: memory did not grow with the input'}")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "gemm_peak_gflops": gemm_peak,
                    "threads": args.threads,
                    "export_seconds": export_seconds,
                    "cells": [asdict(cell) | {"median": cell.median} for cell in cells],
                    "largest_square_image_side_pixels": largest,
                    "memory_for_estimate_bytes": available,
                },
                indent=2,
            )
        )
    return 0 if all(not cell.error for cell in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
