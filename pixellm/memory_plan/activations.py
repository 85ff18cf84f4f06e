"""Activation memory: the tensors autograd saves for backward, counted while the training forward
of the meta model runs at the config's micro-batch, length and dtype (`estimate_activations`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .counts import _gb

if TYPE_CHECKING:  # torch & co. load when a function runs, not with the parser
    import torch

    from ..modeling.pixellm import PixelLM



@dataclass(frozen=True)
class ActivationInputs:
    """What one micro-batch holds, per GPU. Rows are padded to `seq_len` (the worst case: every
    row as long as data.max_length), each row has its own image, every text position after the
    image is scored by the LM head (an upper bound: prompts are not), and each row has
    `targets_per_row` masks scored at `mask_hw` (the original image size)."""

    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    targets_per_row: int = 3
    mask_hw: tuple[int, int] = (480, 640)


VISION, EMBEDDINGS, LLM = "vision tower + projector", "embeddings", "language model"
LM_HEAD, MASKS = "LM head + cross-entropy", "codebook + pixel decoder + mask losses"


@dataclass
class ActivationEstimate:
    """Activation bytes per GPU. saved: what each part of the forward saves for backward;
    largest: the largest saved tensor; with checkpointing, layer: one decoder layer's saved
    tensors without checkpointing (the mean over the layers) and layer_largest: its largest."""

    saved: dict[str, int]
    largest: int
    layer: int = 0
    layer_largest: int = 0

    @property
    def forward_end(self) -> int:
        """When backward starts: everything saved, plus the gradient of the largest saved tensor."""
        return sum(self.saved.values()) + self.largest

    @property
    def recompute(self) -> int:
        """Checkpointing: when backward recomputes a layer, the LM head's and the mask branch's
        saved tensors are gone; the vision, embedding and LLM (layer inputs) ones remain, plus the
        recomputed layer's saved tensors and the gradient of its largest one."""
        if not self.layer:
            return 0
        kept = sum(self.saved.get(k, 0) for k in (VISION, EMBEDDINGS, LLM))
        return kept + self.layer + self.layer_largest

    @property
    def total(self) -> int:
        return max(self.forward_end, self.recompute)

    def to_dict(self) -> dict:
        return {
            "gb": _gb(self.total),
            "saved_gb": {k: _gb(v) for k, v in self.saved.items()},
            "largest_saved_gb": _gb(self.largest),
            "forward_end_gb": _gb(self.forward_end),
            "recompute_peak_gb": _gb(self.recompute),
            "one_layer_gb": _gb(self.layer),
            "formula": ACTIVATION_FORMULA,
        }


ACTIVATION_FORMULA = (
    "activations = max(forward end, recompute peak). Saved = the bytes of the tensors autograd "
    "saves for backward (once per storage, parameters excluded) while the training forward of the "
    "meta model runs: CLIP + projector (nothing when frozen), the embeddings and the LLM on B x S "
    "tokens (with checkpointing only each layer's input), the LM head + cross-entropy on "
    "B x (S - image tokens) positions, the codebook fusion, pixel decoder and BCE/Dice on "
    "B x targets masks at the original image size; attention saves what flash / memory-efficient "
    "kernels save (q, k, v, output, fp32 logsumexp; no S x S matrix). Forward end = saved + the "
    "largest saved tensor (its gradient). Recompute peak (checkpointing) = the vision, embedding "
    "and LLM saved tensors + one layer's saved tensors without checkpointing + that layer's "
    "largest tensor"
)


class _SavedTensors:
    """Counts the storages autograd saves for backward, once each, parameters and buffers out."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.excluded = {
            t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]
        }
        self.sizes: dict[int, int] = {}
        self.keep: list = []  # saved tensors stay alive until counted: storage ids are never reused

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.keep.append(tensor)
        if storage._cdata not in self.excluded:
            self.sizes.setdefault(storage._cdata, storage.nbytes())
        return tensor

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @contextmanager
    def counting(self) -> Iterator[None]:
        import torch

        with (
            torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t),
            _training_attention(),
        ):
            yield


@contextmanager
def _training_attention() -> Iterator[None]:
    """During the count, attention saves what the GPU kernels save (flash-attention 2 and SDPA's
    flash / memory-efficient kernels: q, k, v, the output and an fp32 logsumexp per query and head)
    rather than what PyTorch's math fallback on the meta device would (the S x S probabilities);
    transformers' packed-sequence check, which reads values, is skipped (rows are not packed)."""
    from unittest import mock

    import torch

    class FlashLike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, grad):  # pragma: no cover - the count never runs backward
            raise NotImplementedError

    def attention(query, key, value, *args, **kwargs):
        return FlashLike.apply(query, key, value)

    from transformers import masking_utils

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", attention)
        )
        if hasattr(masking_utils, "find_packed_sequence_indices"):  # transformers >= 5.x only
            stack.enter_context(
                mock.patch.object(
                    masking_utils, "find_packed_sequence_indices", lambda *a, **k: None
                )
            )
        yield


def _scored(model: PixelLM, states: torch.Tensor, positions: int) -> torch.Tensor:
    """text_loss on `positions` rows of `states`: the LM head on the scored states only, fp32
    logits, cross-entropy (the selection is a gather, as the boolean indexing of text_loss is)."""
    import torch
    import torch.nn.functional as F

    flat = states.reshape(-1, states.shape[-1])
    index = torch.zeros(positions, dtype=torch.long, device=states.device)
    logits = model.lm_head(flat.index_select(0, index)).float()
    return F.cross_entropy(logits, torch.zeros(positions, dtype=torch.long, device=states.device))


def _mask_branch(
    model: PixelLM, hidden: torch.Tensor, vision, pixels: torch.Tensor, a: ActivationInputs
):
    """Codebook fusion + pixel decoder for B x targets masks, upsampled to the original size and
    scored by BCE (with refinement weights) and Dice, as PixelLM.forward and compute_losses do."""
    import torch

    from ..losses import mask_losses

    rows, per_row, group = a.batch_size, a.targets_per_row, model.config.group_size
    device, size = hidden.device, model.config.image_size
    flat = hidden.reshape(-1, hidden.shape[-1])
    states = flat.index_select(
        0, torch.zeros(rows * per_row * group, dtype=torch.long, device=device)
    )
    dtype = next(model.codebook.parameters()).dtype
    target_image = torch.arange(rows, device=device).repeat_interleave(per_row)
    logits = model.decoder(
        model.codebook(states.view(rows * per_row, group, -1).to(dtype)),
        [f.to(dtype) for f in vision.scales],
        target_image,
        (size // 4, size // 4),
        images=pixels.to(dtype),
    )
    h, w = a.mask_hw
    valid = (round(h * size / max(h, w)), round(w * size / max(h, w)))
    per_image = [_postprocess(model, lg, valid, (h, w)) for lg in logits.split(per_row)]
    targets = [torch.zeros(per_row, h, w, dtype=torch.bool, device=device) for _ in per_image]
    bce, dice, _ = mask_losses(per_image, targets, 2.0)
    return bce + dice


def _postprocess(model: PixelLM, logits, valid: tuple[int, int], original: tuple[int, int]):
    from ..modeling.pixel_decoder import postprocess_masks

    return postprocess_masks(logits, model.config.image_size, valid, original)


def training_forward(
    model: PixelLM,
    a: ActivationInputs,
    counter: _SavedTensors | None = None,
    region_words: bool = False,
) -> dict[str, tuple[int, int]]:
    """Run the training forward of `model` (meta or real) on a synthetic micro-batch shaped as `a`
    says, in train mode; with `counter`, returns per part (in order) the bytes it newly saved for
    backward and its largest saved tensor."""
    import torch

    from ..modeling.pixellm import run_language_model

    device = next(model.parameters()).device
    rows, length, size = a.batch_size, a.seq_len, model.config.image_size
    image_tokens = model.config.num_image_tokens
    parts: dict[str, tuple[int, int]] = {}
    seen = 0

    def mark(name: str) -> None:
        nonlocal seen
        if counter is not None:
            new = list(counter.sizes.values())[seen:]
            parts[name], seen = (sum(new), max(new, default=0)), len(counter.sizes)

    pixels = torch.zeros(rows, 3, size, size, device=device)
    vision = model.encode_images(pixels)
    mark(VISION)
    ids = torch.zeros(rows, length, dtype=torch.long, device=device)
    embeds = model.language_model.get_input_embeddings()(ids)
    is_image = torch.zeros(rows, length, 1, dtype=torch.bool, device=device)
    embeds = embeds.masked_scatter(is_image, vision.llm_tokens.to(embeds.dtype))
    if not embeds.requires_grad:  # enable_input_require_grads does this under checkpointing
        embeds.requires_grad_(True)
    mark(EMBEDDINGS)
    out, _ = run_language_model(
        model.language_model,
        None,
        inputs_embeds=embeds,
        use_cache=False,
        output_hidden_states=region_words,
    )
    hidden = out.last_hidden_state
    mark(LLM)
    loss = _scored(model, hidden, rows * max(length - image_tokens, 1))
    if region_words:  # image tokens under masks predict their words: the LM head on image positions
        loss = loss + _scored(
            model, out.hidden_states[len(out.hidden_states) // 2], rows * image_tokens
        )
    mark(LM_HEAD)
    loss = loss + _mask_branch(model, hidden, vision, pixels, a)
    mark(MASKS)
    return parts


@contextmanager
def _checkpointing(model: PixelLM, enabled: bool) -> Iterator[None]:
    """The model in train mode (dropout on, as in training), its LLM with or without gradient
    checkpointing (non-reentrant, as make_engine sets it up); the LLM's setting is put back."""
    lm = model.language_model
    was = lm.is_gradient_checkpointing
    _set_checkpointing(lm, enabled)
    model.train()
    try:
        yield
    finally:
        _set_checkpointing(lm, was)


def _set_checkpointing(lm, enabled: bool) -> None:
    if enabled:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_disable()


def estimate_activations(
    model: PixelLM, a: ActivationInputs, region_words: bool = False
) -> ActivationEstimate:
    """Activation bytes per GPU for one micro-batch (ACTIVATION_FORMULA): the saved tensors of the
    training forward of `model` and its largest one; with checkpointing, also one decoder layer's
    saved tensors (the mean over the layers of a run without checkpointing) and its largest."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' checkpointing rename notices
        counter = _SavedTensors(model)
        with _checkpointing(model, a.gradient_checkpointing), counter.counting():
            parts = training_forward(model, a, counter, region_words)
        estimate = ActivationEstimate(
            {k: v[0] for k, v in parts.items()}, max(counter.sizes.values(), default=0)
        )
        if a.gradient_checkpointing:
            plain = _SavedTensors(model)
            with _checkpointing(model, False), plain.counting():
                llm, largest = training_forward(model, a, plain)[LLM]
            estimate.layer = llm // model.llava.config.text_config.num_hidden_layers
            estimate.layer_largest = largest
    return estimate


# ----------------------------------------------------------------------------- the plan
