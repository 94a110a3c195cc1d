"""Where an exported vision graph spends its time in ONNX Runtime: milliseconds per operator type for one input.

    python benchmarks/profile_onnx.py onnx/vision_encoder.onnx onnx/vision_encoder_int8.onnx --grid 1 28 28

Runs each graph once to warm up, then once with ONNX Runtime's profiler, and sums the kernel times of the profiled
run by operator type; nodes inside a Loop or If body count under their own type, not under the Loop or If. Kernels
run in parallel over the intra-op threads, so their sum can be close to, not equal to, the wall time beside it.
"""

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime

ROWS = 12
# Their kernel time spans the nodes of their bodies, which the profile also lists one by one.
CONTROL_FLOW = {"If", "Loop", "Scan"}


def profile(model_path: Path, grid_thw: np.ndarray, threads: int | None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one profiled run and kernel seconds per operator type."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="profile_onnx_") as scratch:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        num_patches = int(grid_thw.prod(axis=1).sum())
        patch_dim = session.get_inputs()[0].shape[1]  # 1536 for Qwen3-VL: 3 channels x 2 frames x 16 x 16 pixels
        feeds = {
            "pixel_values": np.random.default_rng(0).random((num_patches, patch_dim), dtype=np.float32),
            "image_grid_thw": grid_thw,
        }
        session.run(None, feeds)  # warm-up: weight prepacking and first-call allocations stay out of the profile
        started = time.perf_counter()
        session.run(None, feeds)
        wall = time.perf_counter() - started
        events = json.loads(Path(session.end_profiling()).read_text())

    # The profile holds both runs; keep the kernels of the second.
    runs = [event for event in events if event.get("cat") == "Session" and event["name"] == "model_run"]
    last_run_start = runs[-1]["ts"] if runs else 0
    per_operator = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < last_run_start:
            continue
        if event["args"]["op_name"] not in CONTROL_FLOW:
            per_operator[event["args"]["op_name"]] += event["dur"] / 1e6
    return wall, dict(per_operator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="exported .onnx files")
    parser.add_argument("--grid", nargs="+", type=int, default=[1, 28, 28], help="t h w [t h w ...] (default 1 28 28)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if len(args.grid) % 3:
        parser.error(f"--grid takes triples t h w; got {len(args.grid)} numbers")
    grid_thw = np.array(args.grid, dtype=np.int64).reshape(-1, 3)

    report = {}
    for model_path in args.models:
        if not model_path.is_file():
            parser.error(f"{model_path}: no such file")
        wall, per_operator = profile(model_path, grid_thw, args.threads)
        total = sum(per_operator.values())
        report[str(model_path)] = {"wall_seconds": wall, "kernel_seconds": per_operator}
        print(f"{model_path}: grid {grid_thw.tolist()}, wall {wall * 1e3:.0f} ms, kernels {total * 1e3:.0f} ms")
        for name, seconds in sorted(per_operator.items(), key=lambda item: -item[1])[:ROWS]:
            print(f"  {name:32s} {seconds * 1e3:9.1f} ms {100 * seconds / total:6.1f}%")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
