"""Stage-2 forward passes with autograd: completion log-probs (under the sampling positions, or the released
trainer's 1-D ones), mask logits.

`PolicyModel` is the module DeepSpeed wraps in stage 2 (so ZeRO-3 gathers weights inside its forward);
`sequence_logprobs` also serves the frozen reference policy, which is a bare Qwen-VL model.
"""

from __future__ import annotations

import torch
from torch import nn

from lens_model.model.modeling import ContextInputs, LensModel, embed_with_images, mrope_positions, positions_1d
from lens_model.model.sam import SamImageFeatures


def token_logprobs(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """hidden (B, T, H) states *before* each target token, targets (B, T) -> (B, T) float32 log p(target).

    Logits are divided by the sampling temperature (the distribution the tokens were drawn from, as TRL does)
    and computed one row at a time so the (T, vocab) float32 block exists for one row only.
    """
    rows = []
    for h, t in zip(hidden, targets):
        logits = lm_head(h).float() / temperature  # (T, V)
        rows.append(logits.log_softmax(-1).gather(-1, t.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def sequence_logprobs(
    mllm,
    ctx: ContextInputs,
    image_outputs,
    prompt_length: int,
    temperature: float,
    extra_embeds: torch.Tensor | None = None,
    positions: str = "mrope",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T) of the completion tokens of prompt + completion, under the M-RoPE positions generation
    used (`positions="1d"`: the 1-D positions of the released trainer's policy pass). `extra_embeds` (B, N, hidden)
    are appended after the sequence (the context queries, at the same positions scheme); their last-layer states
    are returned too (else None)."""
    embeds = embed_with_images(mllm, ctx.input_ids, image_outputs, ctx.mm_token_type_ids)
    n = 0 if extra_embeds is None else extra_embeds.shape[1]
    if n:
        embeds = torch.cat([embeds, extra_embeds.to(embeds.dtype)], dim=1)
    if positions == "mrope":
        pos, mask = mrope_positions(mllm, ctx, n)
    elif positions == "1d":
        mask = torch.cat([ctx.attention_mask, ctx.attention_mask.new_ones(ctx.input_ids.shape[0], n)], dim=1)
        pos = positions_1d(mask)
    else:
        raise ValueError(f"positions must be 'mrope' or '1d', got {positions!r}")
    hidden = mllm.model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False
    ).last_hidden_state
    length = ctx.input_ids.shape[1]
    # the state at position i predicts token i + 1: completion tokens P..L-1 come from states P-1..L-2
    logp = token_logprobs(
        mllm.lm_head, hidden[:, prompt_length - 1 : length - 1], ctx.input_ids[:, prompt_length:], temperature
    )
    return logp, (hidden[:, length:] if n else None)


class PolicyModel(nn.Module):
    """LENS as a policy: one forward gives the completion log-probs (for the GRPO term) and the mask logits of
    each completion's context pass (for the segmentation loss), both with autograd."""

    def __init__(self, lens: LensModel) -> None:
        super().__init__()
        self.lens = lens

    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        rows: torch.Tensor,
        prompt_length: int,
        sam_features: SamImageFeatures,
        temperature: float,
        vision_grad: bool = True,
        logp_positions: str = "mrope",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sequences (K·G, P+T) with `rows` (K·G,) naming each row's image among the K in pixel_values /
        image_grid_thw (K, 3) and sam_features (K images, frozen encoder) -> log-probs (K·G, T) float32 and
        low-res mask logits (K·G, 1, S/4, S/4). The log-probs are taken under `logp_positions` ("mrope": the
        sampling positions; "1d": the released trainer's) with logits / `temperature`; the query states follow
        the model's context pass."""
        lens = self.lens
        ctx = ContextInputs(sequences, attention_mask, mm_token_type_ids, image_grid_thw[rows])
        with torch.set_grad_enabled(vision_grad and torch.is_grad_enabled()):
            image_outputs = lens.encode_mllm_images(pixel_values.to(lens.dtype), image_grid_thw, rows)
        if logp_positions == lens.query_positions:  # log-probs and queries share positions: one pass gives both
            queries = lens.context.query_embeds(sequences.shape[0], lens.dtype)
            logp, states = sequence_logprobs(
                lens.mllm, ctx, image_outputs, prompt_length, temperature, queries, logp_positions
            )
        else:  # e.g. released checkpoints under lens: log-probs under M-RoPE (as sampled), queries at 1-D positions
            logp, _ = sequence_logprobs(
                lens.mllm, ctx, image_outputs, prompt_length, temperature, positions=logp_positions
            )
            states = lens.query_states_full(ctx, image_outputs, lens.query_positions)
        low_res, _ = lens.masks_from_query_states(states, sam_features.select(rows))
        return logp, low_res

    def external_parameters(self) -> list[nn.Parameter]:
        return self.lens.external_parameters()
