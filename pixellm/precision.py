"""Inference precision: one rule for `evaluate.py`, `pixellm chat` and the predictor.

Kept free of heavy imports at module level (torch is imported when a choice is resolved), so
command-line parsers can list the choices cheaply.
"""

from __future__ import annotations

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
"""Values of the `--dtype` flags."""


def resolve_dtype(name: str, device):
    """`--dtype` -> torch dtype. auto: bf16 on a CUDA GPU that supports it, fp16 on other CUDA
    GPUs, fp32 on CPU (where bf16 is emulated and slow). Half precision is what makes the
    flash-attention kernel eligible (`build.resolve_attn_implementation`)."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name in table:
        return table[name]
    if name != "auto":
        raise ValueError(f"dtype {name!r} is not one of {list(DTYPE_CHOICES)}")
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
