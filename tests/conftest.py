"""Shared test setup: the command lines configure logging for a terminal; each test starts from the same state."""

import logging

import pytest

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
