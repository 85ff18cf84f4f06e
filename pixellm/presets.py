"""Model presets: one builder per size, a dict from name to builder (segment-anything style).

The 7B/13B builders give the exact architecture of the llava-hf checkpoints, so the model can be
built on the `meta` device without a download (architecture reports); real runs load the
checkpoint itself, whose own config wins.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from .config import ModelConfig

DEFAULT_CHECKPOINTS = {
    "pixellm-7b": "llava-hf/llava-1.5-7b-hf",
    "pixellm-13b": "llava-hf/llava-1.5-13b-hf",
}
"""Hub ids loaded when `model.llava_path` is not set."""

LLAVA_HF_IMAGE_TOKEN_ID = 32000
LLAVA_HF_VOCAB = 32064  # the llava-hf checkpoints pad their vocabulary to a multiple of 64


def clip_vit_l_336() -> CLIPVisionConfig:
    """openai/clip-vit-large-patch14-336 vision tower."""
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )


def _llava(text: LlamaConfig, vision: CLIPVisionConfig, image_token_id: int) -> LlavaConfig:
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def llava_7b(cfg: ModelConfig) -> LlavaConfig:
    text = LlamaConfig(
        vocab_size=LLAVA_HF_VOCAB, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=32001, tie_word_embeddings=False,
    )
    return _llava(text, clip_vit_l_336(), LLAVA_HF_IMAGE_TOKEN_ID)


def llava_13b(cfg: ModelConfig) -> LlavaConfig:
    text = LlamaConfig(
        vocab_size=LLAVA_HF_VOCAB, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=32001, tie_word_embeddings=False,
    )
    return _llava(text, clip_vit_l_336(), LLAVA_HF_IMAGE_TOKEN_ID)


def llava_tiny(cfg: ModelConfig, vocab_size: int = 512, image_token_id: int = 0) -> LlavaConfig:
    """A random LLaVA of `cfg.tiny` sizes: CPU, seconds."""
    t = cfg.tiny
    image_size = cfg.image_size or 64
    num_layers = t.vision_layers + 1
    for layer in cfg.decoder_layers + [cfg.llm_feature_layer]:
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"CLIP layer {layer} does not exist in a {t.vision_layers}-layer tiny tower")
    vision = CLIPVisionConfig(
        hidden_size=t.vision_hidden_size, intermediate_size=4 * t.vision_hidden_size,
        num_hidden_layers=t.vision_layers, num_attention_heads=t.vision_heads, image_size=image_size,
        patch_size=t.patch_size, projection_dim=t.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
        max_position_embeddings=2048, tie_word_embeddings=False,
    )
    return _llava(text, vision, image_token_id)


PRESETS: dict[str, Callable[..., LlavaConfig]] = {
    "tiny": llava_tiny,
    "pixellm-7b": llava_7b,
    "pixellm-13b": llava_13b,
}
