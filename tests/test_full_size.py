"""The full-size vision encoder of this repo's config.json, exported as `python export_vision.py` does, checked in ORT.

Random weights: the graph and its numerics do not depend on their values. This is the one slow test (about a minute
on two cores, most of it the export of 400M parameters).
"""

import logging
from pathlib import Path

import onnx

import export_vision

REPO = Path(__file__).resolve().parent.parent


def test_full_size_vision_encoder_exports_and_matches_pytorch(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="export_vision"):
        loaded = export_vision.load_vision_encoder(None)
    config = loaded.model.config
    assert (config.depth, config.hidden_size, config.out_hidden_size) == (24, 1024, 2560)
    # A source checkout has no weights: the export goes ahead with random ones and says so, in the log and the file.
    assert loaded.random_weights == (not export_vision.weight_files(REPO))
    assert ("RANDOM weights" in caplog.text) == loaded.random_weights

    onnx_path = export_vision.export_onnx(loaded, tmp_path)
    results = export_vision.validate_onnx(
        onnx_path, loaded.model, {"one image 8x12": [[1, 8, 12]], "image and 2-frame video": [[1, 4, 4], [2, 6, 4]]}
    )
    for result in results:
        assert result.passed, f"{result.name}: relative error {result.relative_error:.2e}"

    graph = onnx.load(str(onnx_path), load_external_data=False)
    outputs = {value.name: value.type.tensor_type.shape.dim for value in graph.graph.output}
    assert outputs["image_features"][1].dim_value == 2560
    assert [outputs["deepstack_features"][0].dim_value, outputs["deepstack_features"][2].dim_value] == [3, 2560]
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    assert metadata["random_weights"] == str(loaded.random_weights).lower()
