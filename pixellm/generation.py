"""Answer generation with the KV cache: the image is encoded once, codebook hidden states are
collected step by step, and after `[SEG0]` the rest of the group is forced."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from .modeling.pixellm import PixelLM, run_language_model
from .modeling.vision import VisionFeatures


class CodebookGroupProcessor(LogitsProcessor):
    """Keeps codebook groups whole: after `[SEGk]` (k < K-1) only `[SEGk+1]` may follow; the
    later tokens of a group can never start one; and a group may start only if it fits in the
    remaining budget."""

    def __init__(self, seg_token_ids: list[int]) -> None:
        self.ids = torch.tensor(seg_token_ids)
        self.remaining = None  # set by the generation loop before each call

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = self.ids.to(scores.device)
        last = input_ids[:, -1]
        scores = scores.clone()
        scores[:, ids[1:]] = -float("inf")  # a group never starts mid-way
        if self.remaining is not None and self.remaining < len(ids):
            scores[:, ids[0]] = -float("inf")
        for k in range(len(ids) - 1):
            rows = last == ids[k]
            if rows.any():
                forced = torch.full_like(scores[rows], -float("inf"))
                forced[:, ids[k + 1]] = 0.0
                scores[rows] = forced
        return scores


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    use_cache: bool = True
    sync_ranks: bool = False
    """Keep stepping until every rank's answers have ended (torch.distributed all-reduce each
    step), so all ranks run the same forward passes: needed under ZeRO-3 (as transformers'
    `synced_gpus`). The extra steps of a rank whose answers ended change none of them."""


@dataclass
class Generated:
    """One generated answer. token_ids: new tokens (EOS excluded); seg_hidden: (G, K, H) last-layer
    states at the positions of each generated codebook group, in order."""

    token_ids: list[int]
    seg_hidden: torch.Tensor


def _left_pad(prompts: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (S_i,) -> left-padded (B, S) ids and attention mask, so all rows end together."""
    length = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - p.numel():] = p
        mask[i, length - p.numel():] = 1
    return ids, mask


class _Stepper:
    """Runs the LLM over a growing sequence, with or without the KV cache (same results)."""

    def __init__(self, model: PixelLM, embeds: torch.Tensor, mask: torch.Tensor, use_cache: bool) -> None:
        self.model, self.use_cache = model, use_cache
        self.embeds, self.mask = embeds, mask
        self.cache = DynamicCache() if use_cache else None

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, last: int = 1) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
        out, _ = run_language_model(
            self.model.language_model, self.cache, inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
            use_cache=self.use_cache,
        )
        return out.last_hidden_state[:, -last:].squeeze(1)

    def prefill(self, last: int = 1) -> torch.Tensor:
        """(B, H) state at the prompt's last position, or (B, last, H) for the last `last` ones."""
        return self._run(self.embeds, self.mask, last)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """token: (B,) -> (B, H) hidden state at the new position."""
        new = self.model.language_model.get_input_embeddings()(token[:, None])
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
        if self.use_cache:  # the cache holds the past: feed the new token only
            return self._run(new, self.mask)
        self.embeds = torch.cat([self.embeds, new], 1)
        return self._run(self.embeds, self.mask)


def all_done(done: bool, sync_ranks: bool, device: torch.device) -> bool:
    """`done` on this rank, or (sync_ranks) on every rank (`device`: where the process group's
    backend reduces, the GPU for NCCL)."""
    if not sync_ranks or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return done
    flag = torch.tensor([int(done)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag)


@torch.no_grad()
def generate(
    model: PixelLM,
    prompts: list[torch.Tensor],
    vision: VisionFeatures,
    image_index: torch.Tensor,
    config: GenerationConfig,
    generator: torch.Generator | None = None,
) -> list[Generated]:
    """Generate answers for B prompts over already-encoded images.

    prompts: B tensors (S_i,) from the processor (image block expanded); vision: features of I
    images; image_index: (B,) prompt -> image.
    """
    device = vision.llm_tokens.device
    tok = model.tokenizer
    ids, mask = _left_pad(prompts, tok.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    embeds = model.embed_inputs(ids, vision.llm_tokens, image_index.to(device))
    stepper = _Stepper(model, embeds, mask, config.use_cache)
    group = CodebookGroupProcessor(model.config.seg_token_ids)
    warpers = LogitsProcessorList([group])
    if config.do_sample:
        warpers += [TemperatureLogitsWarper(config.temperature), TopPLogitsWarper(config.top_p)]
    seg_ids = torch.tensor(model.config.seg_token_ids, device=device)
    b = ids.shape[0]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in range(b)]
    states: list[list[torch.Tensor]] = [[] for _ in range(b)]
    # the last W states: their mean at a group's [SEG0] joins every state of the group
    # (modeling.pixellm.codebook_states)
    window_size = model.config.settings.query_window
    window = stepper.prefill(window_size)
    window = window if window_size > 1 else window[:, None]
    hidden, history = window[:, -1], ids
    context = torch.zeros_like(hidden)  # (B, H) the current group's window mean
    for step in range(config.max_new_tokens):
        group.remaining = config.max_new_tokens - step
        scores = warpers(history, model.lm_head(hidden).float())
        if config.do_sample:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt = scores.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, tok.pad_token_id), nxt)
        for i in torch.isin(nxt, seg_ids).nonzero().flatten().tolist():
            # the state that predicts a codebook token represents it, plus (W > 1) the mean of
            # the W states before the group, taken when its [SEG0] comes
            if window_size > 1 and nxt[i] == seg_ids[0]:
                context[i] = window[i].mean(0)
            states[i].append(hidden[i] + context[i] if window_size > 1 else hidden[i])
        finished |= nxt == tok.eos_token_id
        for i in range(b):
            if nxt[i] != tok.pad_token_id and nxt[i] != tok.eos_token_id:
                tokens[i].append(int(nxt[i]))
        if all_done(bool(finished.all()), config.sync_ranks, device):
            break
        history = torch.cat([history, nxt[:, None]], 1)
        hidden = stepper.step(nxt)
        window = torch.cat([window[:, 1:], hidden[:, None]], 1)
    k = len(model.config.seg_token_ids)
    h = model.config.llava["text_config"]["hidden_size"]
    return [
        Generated(t, torch.stack(s).view(-1, k, h) if s else hidden.new_zeros(0, k, h))
        for t, s in zip(tokens, states)
    ]
