"""pixellm: a trainable PixelLM-style pixel-reasoning large multimodal model.

LLaVA-1.5 (CLIP + projector + LoRA-tuned LLM) emits a group of segmentation codebook tokens per
referenced object; a light pixel decoder turns each group into a mask.
"""

from .build import build_pixellm, load_pixellm, save_pixellm, setup_trainable
from .config import Config, ConfigError, DataConfig, EvalConfig, ModelConfig, TrainConfig, load_config
from .constants import IGNORE_INDEX, IMAGE_TOKEN, NO_TARGET_ANSWER, SEG_PLACEHOLDER
from .data.batch import Batch, ImageMeta, Sample, collate
from .data.records import QARecord
from .losses import LossOutput, compute_losses
from .modeling.pixellm import InputMismatchError, PixelLM, PixelLMConfig, PixelLMOutput
from .presets import PRESETS
from .processor import PixelLMProcessor

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "ImageMeta",
    "InputMismatchError",
    "LossOutput",
    "ModelConfig",
    "NO_TARGET_ANSWER",
    "PRESETS",
    "PixelLM",
    "PixelLMConfig",
    "PixelLMOutput",
    "PixelLMProcessor",
    "QARecord",
    "SEG_PLACEHOLDER",
    "Sample",
    "TrainConfig",
    "build_pixellm",
    "collate",
    "compute_losses",
    "load_config",
    "load_pixellm",
    "save_pixellm",
    "setup_trainable",
]
