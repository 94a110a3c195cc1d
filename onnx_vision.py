"""Image files to Qwen3-VL visual features with the exported ONNX vision encoder, without torch or transformers.

    python onnx_vision.py photo.jpg other.png --model onnx/vision_encoder.onnx --save features.npz

Needs only onnxruntime, numpy and Pillow; the preprocessing reproduces the Qwen3-VL image processor exactly.
"""

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger("onnx_vision")

# The image processor settings that Qwen3-VL checkpoints publish (preprocessor_config.json).
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 256 * 256
MAX_PIXELS = 4096 * 4096
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
RESCALE_FACTOR = 1 / 255
MAX_ASPECT_RATIO = 200
CHANNELS = 3

DEFAULT_MODEL = "onnx/vision_encoder.onnx"
INPUT_NAMES = ("pixel_values", "image_grid_thw")
OUTPUT_NAMES = ("image_features", "deepstack_features")
# export_vision.GRAPH_CONTRACT_VERSION, repeated because importing export_vision would import torch.
GRAPH_CONTRACT_VERSION = "1"

ImageSource = str | os.PathLike | Image.Image


class VisionInputError(ValueError):
    """An image, a setting or an array the runner cannot use; the message names the file and the numbers."""


class Patches(NamedTuple):
    """What the image processor returns for a list of images."""

    pixel_values: np.ndarray  # [num_patches, channels * temporal_patch_size * patch_size**2] float32
    image_grid_thw: np.ndarray  # [num_images, 3] int64


@dataclass
class ImageFeatures:
    """The encoder's output for one image: its grid in patches and its rows of both outputs."""

    source: str
    grid_thw: tuple[int, int, int]
    image_features: np.ndarray  # [num_tokens, out_hidden_size]
    deepstack_features: np.ndarray  # [num_deepstack, num_tokens, out_hidden_size]

    @property
    def num_tokens(self) -> int:
        """Visual tokens the text model gets for this image: t*h*w / merge_size**2."""
        return self.image_features.shape[0]


def as_image_list(images: ImageSource | list[ImageSource]) -> list[ImageSource]:
    """One image or several, as a non-empty list."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    images = list(images)
    if not images:
        raise VisionInputError("no images given")
    return images


def describe(image: ImageSource, index: int) -> str:
    """How messages and results name an image: its path, else the file it was opened from, else its position."""
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or f"image {index} ({image.mode} {image.width}x{image.height})"
    return str(image)


def read_image_file(path: Path) -> Image.Image:
    """Open a file as transformers' `load_image` does: EXIF orientation applied, then a plain conversion to RGB."""
    if not path.is_file():
        raise VisionInputError(f"{path}: no such file")
    try:
        with Image.open(path) as opened:
            upright = ImageOps.exif_transpose(opened)
            try:
                return upright.convert("RGB")
            except ValueError as error:
                raise VisionInputError(f"{path}: mode {upright.mode} cannot be converted to RGB ({error})") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise VisionInputError(f"{path}: not a readable image ({error})") from None


def to_rgb(image: Image.Image, name: str) -> Image.Image:
    """RGB as the image processor makes it: anything with transparency is composited onto white first."""
    has_transparency = "A" in image.getbands() or image.info.get("transparency") is not None
    try:
        if not has_transparency:
            return image.convert("RGB")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    except ValueError as error:
        raise VisionInputError(f"{name}: mode {image.mode} cannot be converted to RGB ({error})") from None
    except OSError as error:  # a PIL image opened lazily from a damaged file fails only now
        raise VisionInputError(f"{name}: not a readable image ({error})") from None


def check_bounds(min_pixels: int, max_pixels: int, factor: int) -> None:
    """Reject pixel bounds that no image can meet."""
    if min_pixels < 1 or max_pixels < 1:
        raise VisionInputError(f"min_pixels {min_pixels} and max_pixels {max_pixels} must be positive")
    if min_pixels > max_pixels:
        raise VisionInputError(f"min_pixels {min_pixels} is larger than max_pixels {max_pixels}")
    if max_pixels < factor * factor:
        raise VisionInputError(
            f"max_pixels {max_pixels} is below one {factor}x{factor} block of merged patches "
            f"({factor * factor} pixels)"
        )


def resized_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, name: str) -> tuple[int, int]:
    """The processor's target size: sides rounded to multiples of `factor`, then scaled into the pixel bounds."""
    if min(height, width) == 0:
        raise VisionInputError(f"{name}: the image is {width}x{height} pixels, it has no area")
    aspect_ratio = max(height, width) / min(height, width)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise VisionInputError(
            f"{name}: aspect ratio {aspect_ratio:.1f} of {width}x{height} pixels is above the limit {MAX_ASPECT_RATIO}"
        )

    # Python's round() takes halves to the even side; transformers' sizes come from these very float expressions.
    target_height, target_width = round(height / factor) * factor, round(width / factor) * factor
    if target_height * target_width > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        target_height = max(factor, math.floor(height / shrink / factor) * factor)
        target_width = max(factor, math.floor(width / shrink / factor) * factor)
    elif target_height * target_width < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        target_height = math.ceil(height * grow / factor) * factor
        target_width = math.ceil(width * grow / factor) * factor

    # transformers returns such sizes silently; they arise only with extreme aspect ratios or narrow bounds.
    if not min_pixels <= target_height * target_width <= max_pixels:
        raise VisionInputError(
            f"{name}: {width}x{height} pixels resize to {target_width}x{target_height} = "
            f"{target_width * target_height} pixels, outside min_pixels {min_pixels} .. max_pixels {max_pixels}; "
            "widen the bounds"
        )
    return target_height, target_width


def normalization_table() -> np.ndarray:
    """Normalised value of each byte per channel, `[channels, 256]` float32.

    The steps and dtypes are the processor's (float64 rescale, cast to float32, float32 mean and std), so looking
    values up gives the same bits as computing them per pixel, without a float64 copy of the image.
    """
    rescaled = (np.arange(256, dtype=np.float64) * RESCALE_FACTOR).astype(np.float32)
    mean = np.array(IMAGE_MEAN, dtype=np.float32)[:, None]
    std = np.array(IMAGE_STD, dtype=np.float32)[:, None]
    return (rescaled[None, :] - mean) / std


def patchify(image: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    """Flat patches `[grid_h * grid_w, channels * temporal_patch_size * patch_size**2]` of a `[channels, height,
    width]` image, in merge-block order, the still image repeated in every temporal slot."""
    channels, height, width = image.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    blocks = image.reshape(
        channels, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
    )
    # [block_row, block_col, row_in_block, col_in_block, channel, y, x]
    blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)
    # [block_row, block_col, row_in_block, col_in_block, channel, frame, y, x]
    frames = np.repeat(blocks[:, :, :, :, :, None], temporal_patch_size, axis=5)
    return frames.reshape(grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)


def preprocess(
    images: ImageSource | list[ImageSource],
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    patch_size: int = PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
) -> Patches:
    """The Qwen3-VL image processor's `pixel_values` and `image_grid_thw`, bit for bit, without torch.

    Args:
        images: a path or PIL image, or a list of them. Files are read as transformers reads them (EXIF orientation
            applied, transparency dropped by the plain RGB conversion, except a single transparent color, which
            ends up white); transparency of a PIL image given directly is composited onto white.
        min_pixels, max_pixels: bounds on each resized image's pixel count; `None` means the published 256*256 and
            4096*4096.
        patch_size, merge_size, temporal_patch_size: the vision encoder's; the defaults are Qwen3-VL's.

    Returns:
        `Patches`: `pixel_values` `[sum of h*w, 3 * temporal_patch_size * patch_size**2]` float32, image after
        image in merge-block order, and `image_grid_thw` `[num_images, 3]` int64 rows `(1, h, w)` in patches.
    """
    min_pixels = MIN_PIXELS if min_pixels is None else int(min_pixels)
    max_pixels = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if min(patch_size, merge_size, temporal_patch_size) < 1:
        raise VisionInputError(
            f"patch_size {patch_size}, merge_size {merge_size} and temporal_patch_size {temporal_patch_size} "
            "must be positive"
        )
    factor = patch_size * merge_size
    check_bounds(min_pixels, max_pixels, factor)
    table = normalization_table()

    all_patches, grids = [], []
    for index, image in enumerate(as_image_list(images)):
        name = describe(image, index)
        if not isinstance(image, Image.Image):
            image = read_image_file(Path(image))
        rgb = to_rgb(image, name)
        height, width = resized_size(rgb.height, rgb.width, factor, min_pixels, max_pixels, name)
        resized = rgb.resize((width, height), resample=Image.Resampling.BICUBIC)
        pixels = np.asarray(resized).transpose(2, 0, 1)  # [channels, height, width] uint8
        normalized = table[np.arange(CHANNELS)[:, None, None], pixels]
        all_patches.append(patchify(normalized, patch_size, merge_size, temporal_patch_size))
        grids.append([1, height // patch_size, width // patch_size])
    return Patches(np.concatenate(all_patches), np.array(grids, dtype=np.int64))


def split_features(
    image_features: np.ndarray,
    deepstack_features: np.ndarray,
    image_grid_thw: np.ndarray,
    merge_size: int = MERGE_SIZE,
    sources: list[str] | None = None,
) -> list[ImageFeatures]:
    """Cut the graph's outputs into one `ImageFeatures` per grid row: row i owns t*h*w / merge_size**2 tokens.

    Args:
        image_features: `[num_tokens, out_hidden_size]`.
        deepstack_features: `[num_deepstack, num_tokens, out_hidden_size]`.
        image_grid_thw: `[num_images, 3]`, the grid the outputs were computed for.
        sources: a name per image; `None` numbers them.
    """
    sources = sources or [f"image {index}" for index in range(len(image_grid_thw))]
    results, start = [], 0
    for source, (frames, height, width) in zip(sources, image_grid_thw.tolist()):
        stop = start + frames * height * width // merge_size**2
        results.append(
            ImageFeatures(
                source, (frames, height, width), image_features[start:stop], deepstack_features[:, start:stop]
            )
        )
        start = stop
    return results


class VisionEncoder:
    """The exported vision encoder in ONNX Runtime, loaded once, with the processor settings of its graph."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        patch_size: int = PATCH_SIZE,
        merge_size: int = MERGE_SIZE,
        temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    ) -> None:
        import onnxruntime

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise VisionInputError(f"{self.model_path}: no such ONNX file; write one with python export_vision.py")
        self.patch_size, self.merge_size, self.temporal_patch_size = patch_size, merge_size, temporal_patch_size

        options = onnxruntime.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.model_path), options, providers=list(providers))
        except Exception as error:  # noqa: BLE001 - ONNX Runtime reports a bad file with several exception types
            raise VisionInputError(f"{self.model_path}: ONNX Runtime cannot load it ({error})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.patch_width = self.check_graph()
        if self.metadata.get("random_weights") == "true":
            logger.warning(
                "%s holds RANDOM weights (exported without a checkpoint): its features mean nothing.", self.model_path
            )

    def check_graph(self) -> int:
        """Verify the graph's names, contract version and patch width against this runner; return the width."""
        inputs = {node.name: node.shape for node in self.session.get_inputs()}
        outputs = [node.name for node in self.session.get_outputs()]
        if tuple(inputs) != INPUT_NAMES or tuple(outputs) != OUTPUT_NAMES:
            raise VisionInputError(
                f"{self.model_path}: inputs {list(inputs)} and outputs {outputs} are not those of the vision encoder "
                f"graph ({list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)})"
            )
        version = self.metadata.get("graph_contract_version", GRAPH_CONTRACT_VERSION)
        if version != GRAPH_CONTRACT_VERSION:
            raise VisionInputError(
                f"{self.model_path}: graph contract version {version}, this runner knows {GRAPH_CONTRACT_VERSION}"
            )
        expected = CHANNELS * self.temporal_patch_size * self.patch_size**2
        width = inputs["pixel_values"][1]
        if isinstance(width, int) and width != expected:
            raise VisionInputError(
                f"{self.model_path}: the graph takes patches of width {width}, but patch_size {self.patch_size} and "
                f"temporal_patch_size {self.temporal_patch_size} make {expected}; pass the encoder's patch_size"
            )
        return expected

    def check_inputs(self, pixel_values: np.ndarray, image_grid_thw: np.ndarray) -> None:
        """Raise `VisionInputError` with the disagreeing numbers unless the arrays fit the graph and each other."""
        if pixel_values.ndim != 2 or pixel_values.shape[1] != self.patch_width:
            raise VisionInputError(
                f"pixel_values must be [num_patches, {self.patch_width}], got {list(pixel_values.shape)}"
            )
        if image_grid_thw.ndim != 2 or image_grid_thw.shape[1] != 3 or image_grid_thw.shape[0] == 0:
            raise VisionInputError(
                f"image_grid_thw must be [num_images, 3] with at least one row, got {list(image_grid_thw.shape)}"
            )
        if not np.issubdtype(image_grid_thw.dtype, np.integer):
            raise VisionInputError(f"image_grid_thw must hold integers, got {image_grid_thw.dtype}")
        for index, (frames, height, width) in enumerate(image_grid_thw.tolist()):
            if min(frames, height, width) <= 0:
                raise VisionInputError(
                    f"image_grid_thw row {index} is {[frames, height, width]}: every entry must be positive"
                )
            if height % self.merge_size or width % self.merge_size:
                raise VisionInputError(
                    f"image_grid_thw row {index} is {[frames, height, width]}: height and width must be multiples "
                    f"of merge_size {self.merge_size}"
                )
        described = int(image_grid_thw.prod(axis=1).sum())
        if described != pixel_values.shape[0]:
            raise VisionInputError(
                f"image_grid_thw describes {described} patches (sum of t*h*w over {len(image_grid_thw)} rows), "
                f"but pixel_values has {pixel_values.shape[0]}"
            )

    def run(self, pixel_values: np.ndarray, image_grid_thw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Check the arrays, then run the graph once for all images.

        Args:
            pixel_values: `[num_patches, patch_width]` float32, as `preprocess` returns it.
            image_grid_thw: `[num_images, 3]` integers.

        Returns:
            `image_features` `[num_patches / merge_size**2, out_hidden_size]` and `deepstack_features`
            `[num_deepstack, num_patches / merge_size**2, out_hidden_size]`, rows in grid order.
        """
        pixel_values, image_grid_thw = np.asarray(pixel_values), np.asarray(image_grid_thw)
        self.check_inputs(pixel_values, image_grid_thw)
        feeds = {
            "pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32),
            "image_grid_thw": np.ascontiguousarray(image_grid_thw, dtype=np.int64),
        }
        image_features, deepstack_features = self.session.run(list(OUTPUT_NAMES), feeds)
        return image_features, deepstack_features

    def encode(
        self,
        images: ImageSource | list[ImageSource],
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> list[ImageFeatures]:
        """Preprocess and encode images in one graph call; one `ImageFeatures` per image, in order.

        Args:
            images: a path or PIL image, or a list of them.
            min_pixels, max_pixels: bounds on each resized image's pixel count, as in `preprocess`.
        """
        images = as_image_list(images)
        pixel_values, image_grid_thw = preprocess(
            images, min_pixels, max_pixels, self.patch_size, self.merge_size, self.temporal_patch_size
        )
        image_features, deepstack_features = self.run(pixel_values, image_grid_thw)
        sources = [describe(image, index) for index, image in enumerate(images)]
        return split_features(image_features, deepstack_features, image_grid_thw, self.merge_size, sources)


def save_features(path: str | os.PathLike, results: list[ImageFeatures]) -> None:
    """Write `image_features_<i>`, `deepstack_features_<i>`, `image_grid_thw` and `sources` to an .npz, whole or not
    at all: the arrays go to a temporary file in the same folder, which then replaces `path`."""
    path = Path(path)
    arrays = {"image_grid_thw": np.array([r.grid_thw for r in results], dtype=np.int64)}
    arrays["sources"] = np.array([r.source for r in results])
    for index, result in enumerate(results):
        arrays[f"image_features_{index}"] = result.image_features
        arrays[f"deepstack_features_{index}"] = result.deepstack_features
    temporary = None
    try:
        file = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
        temporary = Path(file.name)
        with file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    except OSError as error:
        raise VisionInputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def check_writable_folder(path: Path) -> None:
    """Fail before any work when an output file's folder is missing or read-only."""
    if not path.parent.is_dir():
        raise VisionInputError(f"cannot write {path}: {path.parent} is not an existing folder")
    if not os.access(path.parent, os.W_OK):
        raise VisionInputError(f"cannot write {path}: folder {path.parent} is not writable")


def configure_logging() -> None:
    """For the command line: this module's warnings on stderr, one plain line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python onnx_vision.py cat.jpg chart.png --model onnx/vision_encoder.onnx --save out.npz",
    )
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the exported graph (default: {DEFAULT_MODEL})")
    parser.add_argument("--save", type=Path, help="write the features to this .npz file")
    parser.add_argument("--min-pixels", type=int, help=f"smallest resized pixel count (default: {MIN_PIXELS})")
    parser.add_argument("--max-pixels", type=int, help=f"largest resized pixel count (default: {MAX_PIXELS})")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--patch-size", type=int, default=PATCH_SIZE, help=f"default: {PATCH_SIZE}")
    parser.add_argument("--merge-size", type=int, default=MERGE_SIZE, help=f"default: {MERGE_SIZE}")
    parser.add_argument(
        "--temporal-patch-size", type=int, default=TEMPORAL_PATCH_SIZE, help=f"default: {TEMPORAL_PATCH_SIZE}"
    )
    args = parser.parse_args(argv)
    settings = dict(
        patch_size=args.patch_size, merge_size=args.merge_size, temporal_patch_size=args.temporal_patch_size
    )

    try:
        if args.save is not None:
            check_writable_folder(args.save)
        patches, preprocess_seconds = [], []
        for image in args.images:
            started = time.perf_counter()
            patches.append(preprocess([image], args.min_pixels, args.max_pixels, **settings))
            preprocess_seconds.append(time.perf_counter() - started)
        pixel_values = np.concatenate([p.pixel_values for p in patches])
        image_grid_thw = np.concatenate([p.image_grid_thw for p in patches])

        encoder = VisionEncoder(args.model, intra_op_threads=args.threads, **settings)
        started = time.perf_counter()
        image_features, deepstack_features = encoder.run(pixel_values, image_grid_thw)
        encode_seconds = time.perf_counter() - started
        results = split_features(image_features, deepstack_features, image_grid_thw, args.merge_size, args.images)

        for result, seconds in zip(results, preprocess_seconds):
            print(
                f"{result.source}: grid (t, h, w) {result.grid_thw}, {result.num_tokens} tokens, image_features "
                f"{result.image_features.shape}, deepstack_features {result.deepstack_features.shape}, "
                f"preprocess {seconds:.3f} s"
            )
        print(f"encode: {len(results)} images, {len(pixel_values)} patches in {encode_seconds:.3f} s")
        if args.save is not None:
            save_features(args.save, results)
            print(f"saved {args.save}")
    except VisionInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
