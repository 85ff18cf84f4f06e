"""PixelLM: LLaVA-1.5 (CLIP + projector + LLM) + segmentation codebook + light pixel decoder."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from ..config import LossWeights, ModelConfig
from ..conversation import ChatTemplate
from ..data.batch import Batch, ImageMeta
from ..losses import LossOutput, compute_losses
from .codebook import CodebookFusion, find_codebook_groups
from .pixel_decoder import PixelDecoder, postprocess_masks
from .vision import VisionFeatures, encode_images


class InputMismatchError(ValueError):
    """Inputs that disagree with each other (image tokens vs images, masks vs codebook groups)."""


@dataclass
class PixelLMConfig:
    """Everything needed to rebuild a model; saved as `pixellm_config.json` next to the weights."""

    settings: ModelConfig
    llava: dict
    seg_tokens: list[str]
    seg_token_ids: list[int]
    image_token_id: int
    image_size: int
    num_image_tokens: int
    template: ChatTemplate = dataclasses.field(default_factory=ChatTemplate)

    @property
    def group_size(self) -> int:
        return len(self.seg_token_ids)


@dataclass
class PixelLMOutput:
    """hidden_states: (B, S, H) last LLM layer (after the final norm).
    mask_logits: per row (n_b, R/4, R/4) logits in the padded input frame, in text order.
    past_key_values: the LLM cache when requested.
    layer_states: the embeddings and every layer's (B, S, H) output (before the final norm) when
    requested; codebook_groups: per row the (G, K) codebook positions.
    anchor: a zero scalar that depends on every output of the codebook fusion and the decoder
    (a placeholder query's too, when the batch has no target); the losses add it, so those
    parameters are in the graph of every batch, whatever it holds.
    loss: the training losses, when the forward was given loss weights."""

    hidden_states: torch.Tensor
    mask_logits: list[torch.Tensor]
    anchor: torch.Tensor | None = None
    past_key_values: object | None = None
    layer_states: tuple[torch.Tensor, ...] | None = None
    codebook_groups: list[torch.Tensor] | None = None
    loss: LossOutput | None = None


class PixelLM(nn.Module):
    def __init__(self, *, config: PixelLMConfig, llava: LlavaForConditionalGeneration) -> None:
        super().__init__()
        self.config = config
        self.llava = llava
        s = config.settings
        self.codebook = CodebookFusion(
            hidden_size=llava.config.text_config.hidden_size, dim=s.decoder.dim,
            num_scales=s.num_scales, tokens_per_scale=s.tokens_per_scale,
        )
        self.decoder = PixelDecoder(
            vision_dim=llava.config.vision_config.hidden_size, num_scales=s.num_scales, dim=s.decoder.dim,
            depth=s.decoder.depth, heads=s.decoder.heads, mlp_dim=s.decoder.mlp_dim,
            conv_stem=s.decoder.conv_stem, stem_dim=s.decoder.stem_dim,
        )
        self.tokenizer = None  # attached by build / from_pretrained; not a module

    # -- parts of the LLaVA composition (transformers 5 layout)
    @property
    def vision_tower(self) -> nn.Module:
        return self.llava.model.vision_tower

    @property
    def projector(self) -> nn.Module:
        return self.llava.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    @property
    def lm_head(self) -> nn.Module:
        return self.llava.lm_head

    def encode_images(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """pixel_values: (I, 3, R, R) -> VisionFeatures (LLM tokens and decoder scales)."""
        s = self.config.settings
        return encode_images(
            self.vision_tower, self.projector, pixel_values.to(self.llava.dtype),
            llm_layer=s.llm_feature_layer, decoder_layers=s.decoder_layers, pool=s.image_token_pool,
            native_size=self.llava.config.vision_config.image_size,
        )

    def embed_inputs(self, input_ids: torch.Tensor, image_tokens: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each row's `<image>` positions replaced by its image's tokens.

        input_ids: (B, S); image_tokens: (I, T, H); image_index: (B,). Returns (B, S, H).
        """
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.image_token_id
        counts = is_image.sum(1)
        expected = image_tokens.shape[1]
        bad = (counts != expected).nonzero().flatten().tolist()
        if bad:
            raise InputMismatchError(
                f"row {bad[0]} has {int(counts[bad[0]])} image tokens but each image gives {expected} "
                f"(rows with a mismatch: {bad}); expand <image> with the processor of this model"
            )
        if int(image_index.max()) >= image_tokens.shape[0]:
            raise InputMismatchError(f"image_index {image_index.tolist()} refers past the {image_tokens.shape[0]} images")
        feats = image_tokens[image_index].to(embeds.dtype)  # (B, T, H)
        return embeds.masked_scatter(is_image.unsqueeze(-1), feats)

    def forward(self, batch: Batch, *, loss_weights: LossWeights | None = None, past_key_values=None,
                use_cache: bool = False, output_layer_states: bool = False) -> PixelLMOutput:
        """Teacher-forced pass: text hidden states and one mask per codebook group in each row.

        With `loss_weights`, the training losses are computed here too (`output.loss`): inside
        the forward, every module the losses use (the LM head, the final norm) runs while
        DeepSpeed ZeRO-3 has its parameters gathered, as part of the engine's forward.
        """
        region = loss_weights is not None and loss_weights.region_words > 0
        output_layer_states = output_layer_states or region
        vision = self.encode_images(batch.pixel_values)
        embeds = self.embed_inputs(batch.input_ids, vision.llm_tokens, batch.image_index)
        out, cache = run_language_model(
            self.language_model, past_key_values, inputs_embeds=embeds, attention_mask=batch.attention_mask,
            use_cache=use_cache, output_hidden_states=output_layer_states,
        )
        hidden = out.last_hidden_state
        groups = [find_codebook_groups(row, self.config.seg_token_ids) for row in batch.input_ids]
        if batch.masks is not None:
            check_masks_match_groups(groups, batch.masks)
        seg_hidden = [codebook_states(hidden[b], g, self.config.settings.query_window) for b, g in enumerate(groups)]
        mask_logits, anchor = self._decode(seg_hidden, vision, batch.image_index, batch.pixel_values)
        output = PixelLMOutput(
            hidden_states=hidden, mask_logits=mask_logits, anchor=anchor, past_key_values=cache,
            layer_states=out.hidden_states if output_layer_states else None, codebook_groups=groups,
        )
        if loss_weights is not None:
            output.loss = compute_losses(self, output, batch, loss_weights)
        return output

    def decode_masks(
        self, seg_hidden: list[torch.Tensor], vision: VisionFeatures, image_index: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[torch.Tensor]:
        """seg_hidden: per row (n_b, K, H) codebook hidden states -> per row (n_b, R/4, R/4) logits."""
        return self._decode(seg_hidden, vision, image_index, pixel_values)[0]

    def _decode(
        self, seg_hidden: list[torch.Tensor], vision: VisionFeatures, image_index: torch.Tensor, pixel_values: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-row mask logits and the anchor (PixelLMOutput). The fusion and the decoder run for
        every batch: with no target at all, on one placeholder query (a zero state on image 0)
        whose mask is thrown away. So the modules that run, and the order in which they run, never
        depend on what a batch holds: DeepSpeed reduces the same gradients on every rank, and
        ZeRO-3 gathers the same parameters on every rank, text-only micro-batches included."""
        counts = [h.shape[0] for h in seg_hidden]
        dtype = next(self.codebook.parameters()).dtype
        hidden = torch.cat(seg_hidden).to(dtype)
        target_image = torch.repeat_interleave(image_index, torch.tensor(counts, device=image_index.device))
        if hidden.shape[0] == 0:
            hidden = hidden.new_zeros(1, *hidden.shape[1:])
            target_image = image_index.new_zeros(1)
        size = pixel_values.shape[-1] // 4
        logits = self.decoder(
            self.codebook(hidden), [f.to(dtype) for f in vision.scales], target_image, (size, size),
            images=pixel_values.to(dtype),
        )
        anchor = logits.sum() * 0.0
        return list(logits[: sum(counts)].split(counts)), anchor

    def postprocess_masks(self, logits: torch.Tensor, meta: ImageMeta) -> torch.Tensor:
        """(n, R/4, R/4) logits -> (n, H, W) logits at the image's original size."""
        return postprocess_masks(logits, self.config.image_size, meta.valid_size, meta.original_size)

    def save_pretrained(self, path) -> None:
        from ..build import save_pixellm

        save_pixellm(self, path)

    @classmethod
    def from_pretrained(cls, path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> PixelLM:
        from ..build import load_pixellm

        return load_pixellm(path, device=device, dtype=dtype)


@functools.cache
def _cache_argument(model_class: type) -> str:
    """transformers 5.25 renamed the LLM's `past_key_values` argument and output to `cache` (the
    old name warns, and goes in 5.40); earlier 5.x releases know only the old name."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def run_language_model(language_model: nn.Module, cache, **kwargs):
    """language_model(**kwargs) with the KV cache passed under this transformers' name.
    Returns (output, the cache it returned)."""
    name = _cache_argument(type(language_model))
    out = language_model(**kwargs, **{name: cache})
    return out, getattr(out, name, None)


def codebook_states(hidden: torch.Tensor, groups: torch.Tensor, window: int) -> torch.Tensor:
    """The states that represent one row's codebook groups: (S, H) states, (G, K) positions -> (G, K, H).

    Each codebook token is represented by the state that predicts it (the position before it), as
    in PixelLM/LISA; for [SEG0] that is the phrase's last word. With `window` W > 1, every state of
    a group also gets the mean of the W states before the group added, so the phrase's other
    words (a colour before a shape) reach every decoder scale without the LLM having to learn to
    move them into the codebook positions first. Generation collects the same states
    (generation.py).
    """
    states = hidden[groups - 1]
    if window > 1 and groups.shape[0]:
        span = groups[:, :1] - torch.arange(1, window + 1, device=groups.device)  # (G, W)
        states = states + hidden[span.clamp(min=0)].mean(1, keepdim=True)
    return states


def check_masks_match_groups(groups: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """Every row needs exactly one ground-truth mask per codebook group in its text."""
    if len(groups) != len(masks):
        raise InputMismatchError(f"{len(groups)} rows but {len(masks)} mask lists")
    for b, (g, m) in enumerate(zip(groups, masks)):
        if g.shape[0] != m.shape[0]:
            raise InputMismatchError(
                f"row {b}: {g.shape[0]} codebook groups in the text but {m.shape[0]} ground-truth masks"
            )
