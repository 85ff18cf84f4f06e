"""pixellm: a trainable PixelLM-style pixel-reasoning large multimodal model.

LLaVA-1.5 (CLIP + projector + LoRA-tuned LLM) emits a group of segmentation codebook tokens per
referenced object; a light pixel decoder turns each group into a mask.

Names are imported on first use, so `pixellm validate-data` and friends start without loading
torch/transformers.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

__all__, __getattr__ = lazy_exports(__name__, globals(), {
    "build": ["build_pixellm", "load_pixellm", "save_pixellm", "setup_trainable"],
    "config": ["Config", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "TrainConfig", "load_config"],
    "constants": ["IGNORE_INDEX", "IMAGE_TOKEN", "NO_TARGET_ANSWER", "SEG_PLACEHOLDER"],
    "data.batch": ["Batch", "ImageMeta", "Sample", "collate"],
    "data.records": ["QARecord"],
    "losses": ["LossOutput", "compute_losses"],
    "modeling.pixellm": ["InputMismatchError", "PixelLM", "PixelLMConfig", "PixelLMOutput"],
    "predictor": ["PixelLMPredictor", "Prediction", "Segment"],
    "presets": ["PRESETS"],
    "processor": ["PixelLMProcessor"],
})


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
