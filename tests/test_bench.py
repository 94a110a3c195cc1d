"""The benchmark runs end to end on a tiny checkpoint: every row, two inputs, numbers where numbers belong."""

import importlib.util
import json

import pytest
from tiny_models import PATCH_SIZE, reference_and_ours

import bench_vision

INPUTS = ["32", "4x32"]  # one 32-pixel image (8x8 patches of 4 pixels) and four of them in one call


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    _, model = reference_and_ours()
    model.save_pretrained(folder)
    return folder


def test_benchmark_runs_every_row_on_a_tiny_model(checkpoint, tmp_path, capsys):
    report = tmp_path / "bench.json"
    arguments = ["--model", str(checkpoint), "--image-pixels", "32", "--repeats", "2", "--inputs", *INPUTS]
    assert bench_vision.main([*arguments, "--json", str(report)]) == 0

    results = json.loads(report.read_text())
    cells = {(cell["row"], cell["input"]): cell for cell in results["cells"]}
    assert set(cells) == {(row, name) for row in bench_vision.ROWS for name in INPUTS}
    for (row, name), cell in cells.items():
        assert not cell["error"], f"{row} on {name}: {cell['error']}"
        assert len(cell["seconds"]) >= bench_vision.MIN_REPEATS and cell["median"] > 0
        assert cell["gflops"] > 0 and cell["peak_rss_bytes"] > 0
        if row != bench_vision.BASELINE:
            assert 0.9 < cell["min_cosine"] <= 1.0 + 1e-9 and cell["max_abs_error"] >= cell["mean_abs_error"]
    assert min(results["gemm_peak_gflops"].values()) > 0
    assert set(results["export_seconds"]) == {"fp32", "fp16", "int8"}

    table = capsys.readouterr().out
    assert all(label in table for label in bench_vision.ROWS.values()) and "GEMM peak" in table


def test_flop_count_of_the_full_size_tower():
    from configuration_qwen3_vl import Qwen3VLConfig

    config = Qwen3VLConfig.from_pretrained(bench_vision.HERE).vision_config
    one_image = bench_vision.encoder_flops(config, [[1, 28, 28]])
    # 24 blocks of 12.6M weights over 784 patches, attention over one frame of 784, four mergers over 196 tokens.
    assert 570e9 < one_image < 590e9
    four_images = bench_vision.encoder_flops(config, [[1, 28, 28]] * 4)
    assert four_images == pytest.approx(4 * one_image, rel=1e-9), "no attention across images"


def test_largest_square_image_from_memory_that_grows_with_the_input():
    def cell(grid: list, peak_bytes: float) -> bench_vision.Cell:
        return bench_vision.Cell("onnx-fp32", "", grid, seconds=[1.0], peak_rss_bytes=int(peak_bytes))

    grids = [[[1, 28, 28]], [[1, 56, 56]], [[1, 28, 28]] * 4]

    def quadratic(grid: list) -> float:  # 1 GB of weights, 100 kB per patch, 64 bytes per pair of patches in a frame
        return 1e9 + 1e5 * sum(t * h * w for t, h, w in grid) + 64 * sum(t * (h * w) ** 2 for t, h, w in grid)

    # Solving 1e9 + 1e5 p + 64 p**2 = 9e9 gives p = 10426 patches, a side of 102.1 patches: 1633 pixels, cut to 1632.
    side = bench_vision.largest_square_image([cell(g, quadratic(g)) for g in grids], 16, 2, 9e9)
    assert side == 1632
    flat = [cell(g, 1e9) for g in grids]
    assert bench_vision.largest_square_image(flat, 16, 2, 9e9) is None, "flat memory says nothing about the limit"


def test_profile_sums_kernel_time_by_operator_outside_control_flow(tiny_export, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("profile_onnx", bench_vision.HERE / "benchmarks" / "profile_onnx.py")
    profile_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_onnx)
    onnx_path = tiny_export[0]
    side = 32 // PATCH_SIZE

    report = tmp_path / "profile.json"
    assert profile_onnx.main([str(onnx_path), "--grid", "1", str(side), str(side), "--json", str(report)]) == 0

    kernels = json.loads(report.read_text())[str(onnx_path)]["kernel_seconds"]
    assert kernels and all(seconds >= 0 for seconds in kernels.values())
    assert "Attention" in kernels, "the single-frame branch's attention is counted under its own type"
    assert not set(kernels) & profile_onnx.CONTROL_FLOW, "If and Loop would count their bodies twice"
    assert "kernels" in capsys.readouterr().out
