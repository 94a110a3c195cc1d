"""The torch-free runner: preprocessing equal bit for bit to transformers' Qwen3-VL image processor, per-image
outputs of the exported graph, clear errors, and a command line that writes its features whole or not at all."""

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image
from tiny_models import PATCH_DIM, PATCH_SIZE

import export_vision
import onnx_vision
from onnx_vision import VisionEncoder, VisionInputError, preprocess

REPO = Path(__file__).resolve().parent.parent
# How Qwen3-VL checkpoints configure the processor (their preprocessor_config.json), written out in full.
QWEN3_VL_PROCESSOR = {
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": Image.Resampling.BICUBIC,
    "do_convert_rgb": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
}
MIN_PIXELS, MAX_PIXELS = 65536, 16777216
# A lower bound than the published one takes the downscaling branch without writing a 17-megapixel file.
SMALL_MAX_PIXELS = 200_000
# The tiny encoder's patches are 4 pixels; these bounds keep its images at tens of patches.
TINY_SETTINGS = {"patch_size": PATCH_SIZE, "merge_size": 2, "temporal_patch_size": 2}
TINY_BOUNDS = {"min_pixels": 256, "max_pixels": 48 * 48}


def random_array(shape: tuple, seed: int, dtype=np.uint8, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=dtype)


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """Noise in `mode`; noise makes every bicubic tap and every rounding step visible."""
    if mode == "RGB":
        return Image.fromarray(random_array((height, width, 3), seed))
    if mode == "RGBA":
        return Image.fromarray(random_array((height, width, 4), seed))
    if mode == "I;16":
        return Image.fromarray(random_array((height, width), seed, np.uint16, 1 << 16))
    if mode == "P":
        palette_image = random_image("RGB", width, height, seed).quantize(colors=64)
        palette_image.info["transparency"] = 5
        return palette_image
    bands = [Image.fromarray(random_array((height, width), seed + band)) for band in range(len(mode))]
    return Image.merge(mode, bands)


def write_image(folder: Path, name: str, mode: str, width: int, height: int, seed: int, **options) -> Path:
    path = folder / name
    image = random_image(mode, width, height, seed)
    if mode == "P":
        options["transparency"] = image.info["transparency"]
    image.save(path, **options)
    return path


def rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return exif


# name -> (file name, mode, width, height, max_pixels, save options)
FILE_CASES = {
    "RGB JPEG 640x480": ("landscape.jpg", "RGB", 640, 480, MAX_PIXELS, {"quality": 90}),
    "RGB JPEG 480x640": ("portrait.jpg", "RGB", 480, 640, MAX_PIXELS, {"quality": 90}),
    "RGBA PNG 1000x200": ("wide.png", "RGBA", 1000, 200, MAX_PIXELS, {}),
    "L PNG 47x33, upscaled to the minimum": ("tiny.png", "L", 47, 33, MAX_PIXELS, {}),
    "P PNG with a transparent color": ("palette.png", "P", 300, 200, MAX_PIXELS, {}),
    "LA PNG 200x300": ("gray_alpha.png", "LA", 200, 300, MAX_PIXELS, {}),
    "I;16 PNG 96x64": ("sixteen_bit.png", "I;16", 96, 64, MAX_PIXELS, {}),
    "CMYK JPEG 320x256": ("print.jpg", "CMYK", 320, 256, MAX_PIXELS, {}),
    "JPEG with EXIF rotation": ("rotated.jpg", "RGB", 400, 240, MAX_PIXELS, {"exif": rotated_exif()}),
    "720x464, sides at half a block": ("halves.png", "RGB", 720, 464, MAX_PIXELS, {}),
    "1000x800 above max_pixels": ("large.png", "RGB", 1000, 800, SMALL_MAX_PIXELS, {}),
}


@pytest.fixture(scope="module")
def reference():
    """transformers' Pillow image processor configured as Qwen3-VL, for given pixel bounds."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    def process(images, max_pixels: int = MAX_PIXELS):
        processor = Qwen2VLImageProcessorPil(
            **QWEN3_VL_PROCESSOR, size={"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels}
        )
        output = processor(images, return_tensors=None)
        return np.asarray(output["pixel_values"]), np.asarray(output["image_grid_thw"])

    return process


@pytest.fixture
def tiny_graph(tiny_export) -> Path:
    return tiny_export[0]


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("tiny_images")
    return [
        write_image(folder, "first.png", "RGB", 40, 24, seed=1),
        write_image(folder, "second.jpg", "RGB", 23, 31, seed=2),
        write_image(folder, "third.png", "RGBA", 56, 32, seed=3),
    ]


def assert_same_patches(actual, expected) -> None:
    pixel_values, image_grid_thw = actual
    expected_pixel_values, expected_grid = expected
    np.testing.assert_array_equal(image_grid_thw, expected_grid)
    assert image_grid_thw.dtype == np.int64 and pixel_values.dtype == np.float32
    assert pixel_values.shape == expected_pixel_values.shape
    # Exact: the same Pillow resize on the same uint8 image, then the same float64 and float32 steps.
    assert np.array_equal(pixel_values, expected_pixel_values), (
        f"{np.count_nonzero(pixel_values != expected_pixel_values)} values differ, "
        f"largest by {np.abs(pixel_values - expected_pixel_values).max()}"
    )


@pytest.mark.parametrize("case", FILE_CASES)
def test_file_preprocessing_matches_transformers_exactly(case, reference, tmp_path):
    file_name, mode, width, height, max_pixels, options = FILE_CASES[case]
    path = write_image(tmp_path, file_name, mode, width, height, seed=list(FILE_CASES).index(case), **options)
    actual = preprocess(path, max_pixels=max_pixels)
    assert_same_patches(actual, reference(str(path), max_pixels=max_pixels))
    assert actual.pixel_values.shape[1] == 3 * 2 * 16 * 16


def test_cases_reach_every_resize_branch():
    def grid(width: int, height: int, max_pixels: int = MAX_PIXELS) -> list:
        return preprocess(Image.new("RGB", (width, height)), max_pixels=max_pixels).image_grid_thw[0].tolist()

    assert grid(47, 33) == [1, 14, 20]  # 1 block by 1 is below min_pixels: scaled up, sides rounded up
    assert grid(720, 464) == [1, 28, 44]  # 22.5 and 14.5 blocks: Python's round() goes to the even neighbour
    assert grid(1000, 800, SMALL_MAX_PIXELS) == [1, 24, 30]  # above max_pixels: scaled down, sides rounded down


def test_pil_images_composite_transparency_like_transformers(reference):
    images = [
        random_image("RGBA", 120, 90, seed=1),
        random_image("P", 64, 96, seed=2),
        random_image("LA", 90, 60, seed=3),
        random_image("RGB", 33, 200, seed=4),
    ]
    assert_same_patches(preprocess(images), reference(images))


def test_several_files_in_one_call(reference, tmp_path):
    paths = [
        write_image(tmp_path, "a.jpg", "RGB", 640, 480, seed=1),
        write_image(tmp_path, "b.png", "RGBA", 90, 300, seed=2),
        write_image(tmp_path, "c.png", "L", 512, 256, seed=3),
    ]
    together = preprocess(paths)
    assert_same_patches(together, reference([str(path) for path in paths]))

    one_by_one = [preprocess(path) for path in paths]
    np.testing.assert_array_equal(together.image_grid_thw, np.concatenate([p.image_grid_thw for p in one_by_one]))
    assert np.array_equal(together.pixel_values, np.concatenate([p.pixel_values for p in one_by_one]))


@pytest.mark.parametrize(
    "image, bounds, message",
    [
        (Image.new("RGB", (402, 2)), {}, r"aspect ratio 201\.0 of 402x2 pixels is above the limit 200"),
        (Image.new("RGB", (64, 64)), {"min_pixels": 10_000, "max_pixels": 5_000}, r"min_pixels 10000 is larger"),
        (Image.new("RGB", (64, 64)), {"min_pixels": 100, "max_pixels": 500}, r"max_pixels 500 is below one 32x32"),
        (
            Image.new("RGB", (640, 480)),
            {"min_pixels": MIN_PIXELS, "max_pixels": MIN_PIXELS},
            r"640x480 pixels resize to 288x192 = 55296 pixels, outside min_pixels 65536 \.\. max_pixels 65536",
        ),
        (Image.new("La", (8, 8)), {}, r"mode La cannot be converted to RGB"),
    ],
    ids=["aspect ratio", "min above max", "max below one block", "bounds the resize misses", "mode La"],
)
def test_unusable_images_and_bounds(image, bounds, message):
    with pytest.raises(VisionInputError, match=message):
        preprocess(image, **bounds)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(VisionInputError, match=re.escape(f"{tmp_path / 'nowhere.png'}: no such file")):
        preprocess(tmp_path / "nowhere.png")

    noise = tmp_path / "noise.png"
    noise.write_bytes(random_array((4096,), seed=0).tobytes())
    truncated = tmp_path / "truncated.png"
    encoded = io.BytesIO()
    random_image("RGB", 64, 64, seed=0).save(encoded, format="PNG")
    truncated.write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    for path in (noise, truncated):
        with pytest.raises(VisionInputError, match=re.escape(f"{path}: not a readable image")):
            preprocess([path])


def test_encoder_splits_per_image_what_onnx_runtime_computes(tiny_graph, tiny_images):
    encoder = VisionEncoder(tiny_graph, intra_op_threads=1, **TINY_SETTINGS)
    results = encoder.encode(tiny_images, **TINY_BOUNDS)

    pixel_values, image_grid_thw = preprocess(tiny_images, **TINY_BOUNDS, **TINY_SETTINGS)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(tiny_graph), options, providers=["CPUExecutionProvider"])
    image_features, deepstack_features = session.run(
        None, {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}
    )

    assert [result.source for result in results] == [str(path) for path in tiny_images]
    assert [result.grid_thw for result in results] == [tuple(row) for row in image_grid_thw.tolist()]
    for result in results:
        frames, height, width = result.grid_thw
        assert result.num_tokens == frames * height * width // 4
        assert result.image_features.shape == (result.num_tokens, 48)
        assert result.deepstack_features.shape == (2, result.num_tokens, 48)
    # One thread in both sessions: the same kernels in the same order give the same bits.
    assert np.array_equal(np.concatenate([r.image_features for r in results]), image_features)
    assert np.array_equal(np.concatenate([r.deepstack_features for r in results], axis=1), deepstack_features)


@pytest.mark.parametrize(
    "rows, pixel_rows, width, message",
    [
        ([[1, 4, 6], [1, 6, 4]], 44, PATCH_DIM, r"describes 48 patches \(sum of t\*h\*w over 2 rows\).*has 44"),
        ([[1, 4, 6]], 24, PATCH_DIM - 1, rf"pixel_values must be \[num_patches, {PATCH_DIM}\], got \[24, 95\]"),
        ([[1, 3, 4]], 12, PATCH_DIM, r"row 0 is \[1, 3, 4\]: height and width must be multiples of merge_size 2"),
        ([[1, 2, 2], [0, 2, 2]], 4, PATCH_DIM, r"row 1 is \[0, 2, 2\]: every entry must be positive"),
        ([1, 2, 2], 4, PATCH_DIM, r"image_grid_thw must be \[num_images, 3\] with at least one row, got \[3\]"),
    ],
    ids=["patch count", "patch width", "odd side", "zero entry", "rank"],
)
def test_arrays_that_disagree_are_rejected_before_onnx_runtime(tiny_graph, rows, pixel_rows, width, message):
    encoder = VisionEncoder(tiny_graph, **TINY_SETTINGS)
    with pytest.raises(VisionInputError, match=message):
        encoder.run(np.zeros((pixel_rows, width), np.float32), np.array(rows, dtype=np.int64))
    with pytest.raises(VisionInputError, match=r"must hold integers, got float32"):
        encoder.run(np.zeros((4, PATCH_DIM), np.float32), np.array([[1, 2, 2]], dtype=np.float32))


def test_graph_checks_and_random_weights_warning(tiny_graph, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="onnx_vision"):
        encoder = VisionEncoder(tiny_graph, **TINY_SETTINGS)
    assert "RANDOM weights" in caplog.text and str(tiny_graph) in caplog.text
    assert encoder.metadata["random_weights"] == "true" and encoder.patch_width == PATCH_DIM
    assert onnx_vision.GRAPH_CONTRACT_VERSION == export_vision.GRAPH_CONTRACT_VERSION

    with pytest.raises(VisionInputError, match=r"patches of width 96, but patch_size 16 .* make 1536"):
        VisionEncoder(tiny_graph)
    with pytest.raises(VisionInputError, match=r"no such ONNX file"):
        VisionEncoder(tmp_path / "missing.onnx")


def test_runner_never_imports_torch_or_transformers(tiny_graph, tiny_images):
    script = (
        "import sys, onnx_vision\n"
        f"images = {[str(path) for path in tiny_images]!r}\n"
        f"patches = onnx_vision.preprocess(images, **{TINY_BOUNDS!r}, **{TINY_SETTINGS!r})\n"
        f"encoder = onnx_vision.VisionEncoder({str(tiny_graph)!r}, **{TINY_SETTINGS!r})\n"
        f"results = encoder.encode(images, **{TINY_BOUNDS!r})\n"
        "assert sum(r.num_tokens for r in results) * 4 == len(patches.pixel_values)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr


def tiny_cli_arguments(tiny_graph: Path) -> list[str]:
    return [
        "--model",
        str(tiny_graph),
        "--patch-size",
        str(PATCH_SIZE),
        "--threads",
        "1",
        "--min-pixels",
        str(TINY_BOUNDS["min_pixels"]),
        "--max-pixels",
        str(TINY_BOUNDS["max_pixels"]),
    ]


def run_cli(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "onnx_vision.py"), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_line_prints_and_saves(tiny_graph, tiny_images, tmp_path):
    images = [str(path) for path in tiny_images[:2]]
    output = tmp_path / "features.npz"
    completed = run_cli([*images, *tiny_cli_arguments(tiny_graph), "--save", str(output)], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr

    expected = VisionEncoder(tiny_graph, intra_op_threads=1, **TINY_SETTINGS).encode(images, **TINY_BOUNDS)
    for result in expected:
        assert f"{result.source}: grid (t, h, w) {result.grid_thw}, {result.num_tokens} tokens" in completed.stdout
    assert "preprocess" in completed.stdout and "encode: 2 images" in completed.stdout

    with np.load(output) as saved:
        assert sorted(saved.files) == sorted(
            [
                "image_grid_thw",
                "sources",
                "image_features_0",
                "deepstack_features_0",
                "image_features_1",
                "deepstack_features_1",
            ]
        )
        np.testing.assert_array_equal(saved["image_grid_thw"], [result.grid_thw for result in expected])
        assert list(saved["sources"]) == images
        for index, result in enumerate(expected):
            assert np.array_equal(saved[f"image_features_{index}"], result.image_features)
            assert np.array_equal(saved[f"deepstack_features_{index}"], result.deepstack_features)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["features.npz"]


def test_command_line_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        onnx_vision.main(["--help"])
    assert exit_info.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_command_line_missing_file_is_one_error_line(tiny_graph, tmp_path):
    completed = run_cli([str(tmp_path / "absent.jpg"), *tiny_cli_arguments(tiny_graph)], cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [f"error: {tmp_path / 'absent.jpg'}: no such file"]


def test_command_line_corrupt_file(tiny_graph, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(random_array((1000,), seed=1).tobytes())
    assert onnx_vision.main([str(corrupt), *tiny_cli_arguments(tiny_graph)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {corrupt}: not a readable image") and error.count("\n") == 1


@pytest.mark.parametrize("folder", ["missing", "a_file"])
def test_command_line_save_into_an_unusable_folder(tiny_graph, tiny_images, tmp_path, capsys, folder):
    (tmp_path / "a_file").write_text("not a folder")
    output = tmp_path / folder / "features.npz"
    assert onnx_vision.main([str(tiny_images[0]), *tiny_cli_arguments(tiny_graph), "--save", str(output)]) == 2
    assert capsys.readouterr().err == f"error: cannot write {output}: {output.parent} is not an existing folder\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into a read-only folder, so nothing fails"
)
def test_command_line_save_into_a_read_only_folder(tiny_graph, tiny_images, tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o500)
    output = folder / "features.npz"
    assert onnx_vision.main([str(tiny_images[0]), *tiny_cli_arguments(tiny_graph), "--save", str(output)]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


def test_failed_save_leaves_the_old_file_and_no_scratch(tiny_graph, tiny_images, tmp_path, monkeypatch):
    results = VisionEncoder(tiny_graph, **TINY_SETTINGS).encode(tiny_images[0], **TINY_BOUNDS)
    output = tmp_path / "features.npz"
    output.write_bytes(b"previous features")

    def write_half_then_fail(file, **arrays):
        file.write(b"PK half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_vision.np, "savez", write_half_then_fail)
    with pytest.raises(VisionInputError, match=re.escape(f"cannot write {output}: No space left on device")):
        onnx_vision.save_features(output, results)
    assert output.read_bytes() == b"previous features"
    assert [path.name for path in tmp_path.iterdir()] == ["features.npz"]
