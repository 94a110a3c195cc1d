"""Shared test setup: the command lines configure logging for a terminal; each test starts from the same state."""

import logging
from pathlib import Path

import pytest
import torch
from tiny_models import SEED, tiny_config_dict

from configuration_qwen3_vl import Qwen3VLConfig
from export_vision import LoadedEncoder, export_onnx
from modeling_qwen3_vl import Qwen3VLVisionModel

# Loggers that `export_vision.configure_logging` changes when a test runs the command line in-process.
CONFIGURED_LOGGERS = ("export_vision", "onnx_vision", "torch.onnx", "onnxscript", "onnx_ir")


@pytest.fixture(autouse=True)
def restore_logging():
    """Undo handlers, levels and propagation set by a command line run inside a test, so `caplog` sees records."""
    saved = {}
    for name in CONFIGURED_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> tuple[Path, Qwen3VLVisionModel]:
    """The seeded tiny vision encoder and its fp32 graph, exported once for every test that only reads them."""
    torch.manual_seed(SEED)
    encoder = Qwen3VLVisionModel(Qwen3VLConfig(**tiny_config_dict()).vision_config).eval()
    loaded = LoadedEncoder(encoder, "tiny test model", random_weights=True)
    return export_onnx(loaded, tmp_path_factory.mktemp("tiny")), encoder
