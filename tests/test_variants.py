"""Every precision export_vision.py writes exports, loads in ONNX Runtime and meets its accuracy bound."""

import onnx
import pytest
import torch
from tiny_models import tiny_config_dict

import export_vision
from configuration_qwen3_vl import Qwen3VLConfig
from export_vision import TOLERANCES, LoadedEncoder
from modeling_qwen3_vl import Qwen3VLVisionModel

CASES = {
    "smallest image 2x2": [[1, 2, 2]],
    "two images of different sizes": [[1, 4, 6], [1, 12, 8]],
    "video of three frames": [[3, 4, 4]],
    "images and a video": [[1, 6, 4], [2, 2, 8]],
}


@pytest.fixture(scope="module")
def variants(tiny_export, tmp_path_factory):
    fp32, encoder = tiny_export
    loaded = LoadedEncoder(encoder, "tiny test model", random_weights=True)
    output_dir = tmp_path_factory.mktemp("variants")
    paths = {
        "fp32": fp32,
        "fp16": export_vision.export_onnx(loaded, output_dir, "fp16"),
        "int8": export_vision.export_int8(loaded, fp32, output_dir),
    }
    return encoder, paths


@pytest.mark.parametrize("precision", export_vision.PRECISIONS)
def test_variant_meets_its_tolerance_in_onnx_runtime(variants, precision):
    encoder, paths = variants
    assert paths[precision].name == export_vision.ONNX_FILENAMES[precision]
    for result in export_vision.validate_onnx(paths[precision], encoder, CASES, TOLERANCES[precision]):
        assert result.passed, (
            f"{precision} {result.name}: relative {result.relative_error:.2e}, cos {result.min_cosine}"
        )


@pytest.mark.parametrize("precision", export_vision.PRECISIONS)
def test_variant_keeps_the_graph_contract_and_records_its_precision(variants, precision):
    model = onnx.load(str(variants[1][precision]))
    types = {value.name: value.type.tensor_type.elem_type for value in [*model.graph.input, *model.graph.output]}
    assert types == {
        "pixel_values": onnx.TensorProto.FLOAT,
        "image_grid_thw": onnx.TensorProto.INT64,
        "image_features": onnx.TensorProto.FLOAT,
        "deepstack_features": onnx.TensorProto.FLOAT,
    }
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["precision"] == precision and metadata["random_weights"] == "true"


def all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attribute.g)


def test_fp32_attends_with_the_standard_attention_operator(variants):
    model = onnx.load(str(variants[1]["fp32"]))
    op_types = [node.op_type for node in all_nodes(model.graph)]
    # One Attention per layer on the single-frame branch and one inside the loop over frames.
    assert op_types.count("Attention") == 2 * 3 and "Softmax" not in op_types
    assert {opset.domain for opset in model.opset_import} == {""}, "no contrib operators in the standard graph"


def test_fp16_stores_fp16_weights_and_keeps_the_softmax_in_fp32(variants):
    model = onnx.load(str(variants[1]["fp16"]))
    weights = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
    assert weights["visual.blocks.0.attn.qkv.weight"] == onnx.TensorProto.FLOAT16
    softmax_inputs = [node.input[0] for node in all_nodes(model.graph) if node.op_type == "Softmax"]
    casts_to_fp32 = {
        node.output[0]
        for node in all_nodes(model.graph)
        if node.op_type == "Cast" and onnx.helper.get_attribute_value(node.attribute[0]) == onnx.TensorProto.FLOAT
    }
    assert softmax_inputs and set(softmax_inputs) <= casts_to_fp32


def test_int8_quantizes_the_blocks_and_keeps_the_mergers_fp32(variants):
    model = onnx.load(str(variants[1]["int8"]))
    weights = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
    quantized = [
        name for name, dtype in weights.items() if dtype == onnx.TensorProto.UINT8 and name.endswith("_quantized")
    ]
    # qkv, proj, fc1 and fc2 of each of the three blocks, and the patch embedding.
    assert len(quantized) == 3 * 4 + 1 and all("merger" not in name for name in quantized)
    assert weights["visual.merger.linear_fc1.weight"] == onnx.TensorProto.FLOAT
    assert any(node.op_type == "MatMulInteger" for node in model.graph.node)


def test_cli_writes_only_the_requested_precisions(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    torch.manual_seed(0)
    model = Qwen3VLVisionModel(Qwen3VLConfig(**tiny_config_dict()).vision_config)
    Qwen3VLConfig(**tiny_config_dict()).save_pretrained(checkpoint)
    from safetensors.torch import save_file

    save_file(
        {f"model.visual.{name}": tensor for name, tensor in model.state_dict().items()},
        checkpoint / "model.safetensors",
    )
    output = tmp_path / "onnx"

    assert export_vision.main(["--model", str(checkpoint), "--output", str(output), "--precision", "int8"]) == 0
    assert sorted(path.name for path in output.iterdir()) == ["vision_encoder_int8.onnx"]
    assert "vision_encoder_int8.onnx: against PyTorch fp32" in capsys.readouterr().out
