"""Random mixes of images and videos through one exported graph, and several ONNX Runtime sessions in threads."""

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime
import pytest

import export_vision

NUM_RANDOM_MIXES = 60
SEED = 1234
# The same fp32 math in two runtimes; the tiny model lands below 1e-6 of the output scale.
RELATIVE_TOLERANCE = 1e-5


def random_grids(rng: random.Random) -> list[list[int]]:
    """One to four entries; sides from 2 (the smallest the merger accepts) upward in steps of 2; t up to 4."""
    return [
        [rng.choice([1, 1, 2, 3, 4]), 2 * rng.randint(1, 9), 2 * rng.randint(1, 9)] for _ in range(rng.randint(1, 4))
    ]


@pytest.fixture
def exported(tiny_export):
    return tiny_export


def test_random_mixes_of_images_and_videos_match_pytorch(exported):
    onnx_path, encoder = exported
    rng = random.Random(SEED)
    mixes = {
        f"mix {index}: {grids}": grids
        for index, grids in enumerate(random_grids(rng) for _ in range(NUM_RANDOM_MIXES))
    }
    assert any(len(grids) == 1 and grids[0][0] == 1 for grids in mixes.values()), "the single-image branch is covered"
    assert any(any(t > 1 for t, _, _ in grids) for grids in mixes.values()), "videos are covered"

    results = export_vision.validate_onnx(onnx_path, encoder, mixes, export_vision.TOLERANCES["fp32"])
    failures = [f"{r.name} relative {r.relative_error:.1e}" for r in results if r.relative_error >= RELATIVE_TOLERANCE]
    assert len(results) == NUM_RANDOM_MIXES and not failures


def test_sessions_in_threads_give_identical_results(exported):
    onnx_path, encoder = exported
    grid_thw = np.array([[1, 6, 4], [2, 4, 4]], dtype=np.int64)
    pixel_values = np.random.default_rng(0).random((int(grid_thw.prod(-1).sum()), encoder.patch_dim), np.float32)

    def run_in_own_session(_):
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        return [session.run(None, {"pixel_values": pixel_values, "image_grid_thw": grid_thw}) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = [outputs for session_runs in pool.map(run_in_own_session, range(4)) for outputs in session_runs]
    for outputs in runs[1:]:
        for first, other in zip(runs[0], outputs):
            np.testing.assert_array_equal(first, other)


def test_one_session_shared_by_threads_gives_identical_results(exported):
    onnx_path, encoder = exported
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = []
    for seed, grid in enumerate([[[1, 4, 4]], [[1, 8, 2], [3, 2, 2]], [[2, 6, 6]]]):
        grid_thw = np.array(grid, dtype=np.int64)
        pixels = np.random.default_rng(seed).random((int(grid_thw.prod(-1).sum()), encoder.patch_dim), np.float32)
        feeds.append({"pixel_values": pixels, "image_grid_thw": grid_thw})
    expected = [session.run(None, feed) for feed in feeds]

    with ThreadPoolExecutor(max_workers=4) as pool:
        actual = list(pool.map(lambda index: (index % 3, session.run(None, feeds[index % 3])), range(24)))
    for index, outputs in actual:
        for first, other in zip(expected[index], outputs):
            np.testing.assert_array_equal(first, other)
