"""Configuration of Qwen3-VL: a vision encoder, a text decoder with multimodal rotary positions, and their glue.

Reads both forms of `config.json` found in the wild: the one the checkpoints were published with (text `rope_theta`
plus `rope_scaling`, vision `"model_type": "qwen3_vl"`) and the transformers 5 form (`rope_parameters`).
Defaults are those of Qwen/Qwen3-VL-4B-Instruct.
"""

from transformers import PreTrainedConfig

VISION_ROPE_THETA = 10000.0


class Qwen3VLVisionConfig(PreTrainedConfig):
    """Vision tower: patch embedding, `depth` transformer blocks, a 2x2 patch merger and DeepStack mergers."""

    model_type = "qwen3_vl_vision"
    base_config_key = "vision_config"
    default_theta = VISION_ROPE_THETA
    default_rope_type = "axial"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "depth"}

    depth: int = 24
    hidden_size: int = 1024
    hidden_act: str = "gelu_pytorch_tanh"
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    out_hidden_size: int = 2560
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: list[int] | tuple[int, ...] = (5, 11, 17)
    initializer_range: float = 0.02
    rope_parameters: dict | None = None

    def __post_init__(self, **kwargs):
        # The published checkpoints label the vision block with the composite model's type; the class decides.
        kwargs.pop("model_type", None)
        self.deepstack_visual_indexes = list(self.deepstack_visual_indexes)
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rope_theta(self) -> float:
        return (self.rope_parameters or {}).get("rope_theta", VISION_ROPE_THETA)


class Qwen3VLTextConfig(PreTrainedConfig):
    """Text decoder: Qwen3 layers with interleaved multimodal rotary positions over (t, h, w) sections."""

    model_type = "qwen3_vl_text"
    base_config_key = "text_config"
    default_theta = 5000000.0
    # The text rotary embedding reads these two keys; the generic rope validation does not know them.
    ignore_keys_at_rope_validation = {"mrope_section", "mrope_interleaved"}

    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 262144
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    pad_token_id: int | None = None
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters is None and "rope_scaling" not in kwargs:
            self.rope_parameters = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True}
        super().__post_init__(**kwargs)


class Qwen3VLConfig(PreTrainedConfig):
    """The whole model: `vision_config`, `text_config` and the ids of the tokens that mark images and videos."""

    model_type = "qwen3_vl"
    sub_configs_defaults = {"vision_config": Qwen3VLVisionConfig, "text_config": Qwen3VLTextConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = True
