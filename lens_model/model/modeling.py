"""The LENS model: reasoning MLLM (Qwen2.5-VL / Qwen2-VL) + context head + SAM2.

Data flow for one batch of prompts (B rows, left-padded prompt length P, T generated tokens, N queries):

    pixel_values --vision encoder (once)--> image_outputs
    prompt ids (B, P) --generate--> sequences (B, P+T) [+ KV cache over the first P+T-1 tokens]
    context pass: queries appended after prompt + completion -> last-layer states (B, N, hidden)
    context head -> (B, 1, 256) sparse prompt -> SAM2 mask decoder -> low-res logits (B, 1, S/4, S/4)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import LensConfig
from .context import ContextHead
from .sam import SamImageFeatures, build_sam, decode_masks, encode_image
from .vision_positions import add_absolute_positions

# The positions the context queries see in each context-pass mode: `official` as the released checkpoints were
# trained (1-D, see docs/design.md), `cached` continuing the M-RoPE positions generation used.
QUERY_POSITIONS = {"official": "1d", "cached": "mrope"}

MLLM_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}


def mllm_class(model_type: str):
    import transformers

    if model_type not in MLLM_CLASSES:
        raise ValueError(f"unsupported reasoning model type {model_type!r}; supported: {sorted(MLLM_CLASSES)}")
    return getattr(transformers, MLLM_CLASSES[model_type])


def positions_1d(attention_mask: torch.Tensor) -> torch.Tensor:
    """Plain 1-D positions (3, B, L) as transformers 4.51 fell back to when given only inputs_embeds."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 1)
    return pos.unsqueeze(0).expand(3, -1, -1)


def image_features_per_row(
    mllm, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, rows: torch.Tensor | None = None
):
    """Vision encoder once per image; with `rows`, its output repeated (shared tensors) for every row of that
    image, in row order, as `embed_with_images` expects."""
    outputs = mllm.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
    if rows is not None:
        per_image = tuple(outputs.pooler_output)
        outputs.pooler_output = tuple(per_image[i] for i in rows.tolist())
    return outputs


def embed_with_images(
    mllm, input_ids: torch.Tensor, image_outputs, mm_token_type_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, L) ids -> (B, L, hidden) token embeddings with the image features (one entry of
    `image_outputs.pooler_output` per row) scattered into the image placeholder tokens. With
    `mm_token_type_ids` only the prompt's image slots (type 1) are filled: a sampled completion may itself
    contain the image-pad token id, which is then just a token."""
    embeds = mllm.get_input_embeddings()(input_ids)
    if image_outputs is not None:
        image_embeds = torch.cat(list(image_outputs.pooler_output), dim=0).to(embeds)
        slots = (input_ids == mllm.config.image_token_id) if mm_token_type_ids is None else (mm_token_type_ids == 1)
        image_mask = slots.unsqueeze(-1)
        if int(image_mask.sum()) != image_embeds.shape[0]:
            raise ValueError(
                f"{int(image_mask.sum())} image tokens in the prompt but {image_embeds.shape[0]} image features"
            )
        embeds = embeds.masked_scatter(image_mask.expand_as(embeds), image_embeds)
    return embeds


def mrope_positions(mllm, ctx: ContextInputs, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions (3, B, L+extra) for prompt + completion + `extra` text tokens, and the full mask —
    the positions generation used for every valid token."""
    b = ctx.input_ids.shape[0]
    device = ctx.input_ids.device
    # Queries are text tokens for M-RoPE: any text id works as a placeholder for the position computation.
    ids = torch.cat([ctx.input_ids, ctx.input_ids.new_zeros(b, extra)], dim=1)
    types = torch.cat([ctx.mm_token_type_ids, ctx.mm_token_type_ids.new_zeros(b, extra)], dim=1)
    mask = torch.cat([ctx.attention_mask, ctx.attention_mask.new_ones(b, extra)], dim=1)
    pos, _ = mllm.model.get_rope_index(
        ids, mm_token_type_ids=types, image_grid_thw=ctx.image_grid_thw, attention_mask=mask
    )
    return pos.to(device), mask


@dataclass
class ContextInputs:
    """Everything the context pass needs about prompt + completion (L = P + T)."""

    input_ids: torch.Tensor  # (B, L) prompt + completion ids
    attention_mask: torch.Tensor  # (B, L) 0 for left padding and for padding after EOS
    mm_token_type_ids: torch.Tensor  # (B, L) 1 on image tokens
    image_grid_thw: torch.Tensor  # (num_images, 3)


class LensModel(nn.Module):
    def __init__(
        self, mllm_config, lens_config: LensConfig, mllm: nn.Module | None = None, sam: nn.Module | None = None
    ):
        super().__init__()
        self.lens_config = lens_config
        self.mllm = mllm if mllm is not None else mllm_class(mllm_config.model_type)(mllm_config)
        if lens_config.mllm_absolute_positions:
            add_absolute_positions(self.mllm.model.visual)
        self.hidden_size = self.mllm.config.get_text_config().hidden_size
        self.context = ContextHead(self.hidden_size, lens_config)
        self.sam = sam if sam is not None else build_sam(lens_config.sam)

    @property
    def device(self) -> torch.device:
        return self.context.learnable_query.device

    @property
    def dtype(self) -> torch.dtype:
        return self.context.learnable_query.dtype

    # ------------------------------------------------------------------ MLLM
    def encode_mllm_images(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, rows: torch.Tensor | None = None
    ):
        """Run the MLLM vision encoder once per image; the result feeds generation and the context pass.
        `rows` (R,): the image of each prompt row — the output then holds one (shared) entry per row."""
        return image_features_per_row(self.mllm, pixel_values, image_grid_thw, rows)

    def _embed(
        self, input_ids: torch.Tensor, image_outputs, mm_token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return embed_with_images(self.mllm, input_ids, image_outputs, mm_token_type_ids)

    def mrope_positions(self, ctx: ContextInputs, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mrope_positions(self.mllm, ctx, extra)

    def context_positions(self, ctx: ContextInputs, positions: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (3, B, L+N) and attention mask (B, L+N) of prompt + completion + the N queries:
        "1d" as the released checkpoints saw them (docs/design.md, "Context positions"), "mrope" continuing the
        sampling positions."""
        n = self.context.num_queries
        if positions == "mrope":
            return self.mrope_positions(ctx, n)
        if positions == "1d":
            mask = torch.cat([ctx.attention_mask, ctx.attention_mask.new_ones(ctx.input_ids.shape[0], n)], dim=1)
            return positions_1d(mask), mask
        raise ValueError(f"positions must be 'mrope' or '1d', got {positions!r}")

    @property
    def query_positions(self) -> str:
        """ "1d" or "mrope": where this model's queries sit, in inference and in training (from its context pass)."""
        return QUERY_POSITIONS[self.lens_config.context_pass]

    def query_states(self, ctx: ContextInputs, image_outputs, cache=None) -> torch.Tensor:
        """The context pass of this model's mode -> (B, N, hidden) query states. `cached` reuses the generation
        KV `cache` when there is one (else re-runs the sequence at the same M-RoPE positions); `official` re-runs
        prompt + completion + queries at 1-D positions, as the released code."""
        if self.lens_config.context_pass == "cached" and cache is not None:
            return self.query_states_cached(ctx, cache)
        return self.query_states_full(ctx, image_outputs, self.query_positions)

    def query_states_full(self, ctx: ContextInputs, image_outputs, positions: str) -> torch.Tensor:
        """One LLM pass over prompt + completion + queries -> (B, N, hidden) last-layer query states.

        positions="1d" reproduces the released checkpoints (docs/design.md, "Context positions"); "mrope" continues
        the M-RoPE sequence.
        The vision encoder is not run: `image_outputs` come from `encode_mllm_images`.
        """
        n = self.context.num_queries
        embeds = self._embed(ctx.input_ids, image_outputs, ctx.mm_token_type_ids)
        embeds = torch.cat([embeds, self.context.query_embeds(embeds.shape[0], embeds.dtype)], dim=1)
        pos, mask = self.context_positions(ctx, positions)
        out = self.mllm.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False
        )
        return out.last_hidden_state[:, -n:]

    def query_states_after_prefix(self, ctx: ContextInputs, image_outputs, positions: str) -> torch.Tensor:
        """Same states as `query_states_full`, computing prompt + completion without autograd (frozen MLLM).

        The prefix does not depend on anything trainable when the MLLM is frozen, so its keys/values are built
        under no_grad and only the N queries run with autograd: the gradient reaching the queries, connector and
        SAM2 is unchanged, at a fraction of the activation memory (stage 1 trains only the context module).
        """
        n = self.context.num_queries
        b = ctx.input_ids.shape[0]
        pos, mask = self.context_positions(ctx, positions)
        length = ctx.input_ids.shape[1]
        lm = self.mllm.model.language_model
        with torch.no_grad():
            prefix = lm(
                inputs_embeds=self._embed(ctx.input_ids, image_outputs, ctx.mm_token_type_ids),
                attention_mask=mask[:, :length],
                position_ids=pos[:, :, :length],
                use_cache=True,
            )
        queries = self.context.query_embeds(b, self.dtype)
        out = lm(
            inputs_embeds=queries,
            attention_mask=mask,
            position_ids=pos[:, :, length:],
            cache=prefix.cache,
            use_cache=True,
        )
        return out.last_hidden_state[:, -n:]

    def query_states_cached(self, ctx: ContextInputs, cache) -> torch.Tensor:
        """Context pass reusing the generation KV cache (which holds all but the last generated token).

        Only the last generated token and the N queries are processed, at the M-RoPE positions that
        continue the sequence; masked (post-EOS) tokens stay in the cache but are not attended.
        """
        n = self.context.num_queries
        b, length = ctx.input_ids.shape
        if cache.get_seq_length() != length - 1:
            raise ValueError(
                f"KV cache holds {cache.get_seq_length()} tokens, expected {length - 1} (prompt + completion - 1)"
            )
        last = self.mllm.get_input_embeddings()(ctx.input_ids[:, -1:])
        embeds = torch.cat([last, self.context.query_embeds(b, last.dtype)], dim=1)
        pos, mask = self.mrope_positions(ctx, n)
        out = self.mllm.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=pos[:, :, -(n + 1) :], cache=cache, use_cache=True
        )
        return out.last_hidden_state[:, -n:]

    # ------------------------------------------------------------------ training forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        sam_images: torch.Tensor,
        positions: str | None = None,
        mllm_grad: bool = False,
        sam_encoder_grad: bool = False,
        return_query_states: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Teacher-forced pass used in training: (B, L) prompt + answer ids with one image per row -> low-res
        mask logits (B, 1, S/4, S/4) and SAM2's IoU predictions (B, 1); with `return_query_states` also the
        (B, N, hidden) query states the SAM2 prompt was made from (for auxiliary losses on them).

        `positions`: "1d" or "mrope"; None (default) the model's own (`query_positions`). `mllm_grad=False`
        (frozen MLLM) runs the vision encoder and the prompt + answer tokens without autograd; likewise
        `sam_encoder_grad=False` (frozen SAM2 image encoder, as released) its features. Everything runs inside
        this forward so that DeepSpeed ZeRO-3 can gather partitioned weights with its module hooks.
        """
        ctx = ContextInputs(input_ids, attention_mask, mm_token_type_ids, image_grid_thw)
        positions = positions or self.query_positions
        with torch.set_grad_enabled(mllm_grad and torch.is_grad_enabled()):
            image_outputs = self.encode_mllm_images(pixel_values.to(self.dtype), image_grid_thw)
        if mllm_grad:
            states = self.query_states_full(ctx, image_outputs, positions)
        else:
            states = self.query_states_after_prefix(ctx, image_outputs, positions)
        with torch.set_grad_enabled(sam_encoder_grad and torch.is_grad_enabled()):
            features = self.encode_sam_images(sam_images)
        low_res, iou = self.masks_from_query_states(states, features)
        return (low_res, iou, states) if return_query_states else (low_res, iou)

    def external_parameters(self) -> list[nn.Parameter]:
        """Parameters read directly (not through their own module's forward); ZeRO-3 must gather them for forward."""
        return [self.context.learnable_query] + ([self.sam.no_mem_embed] if hasattr(self.sam, "no_mem_embed") else [])

    # ------------------------------------------------------------------ SAM2
    def to(self, *args, **kwargs):
        # SAM2 keeps float32 weights (its position encodings mix dtypes); reduced precision comes from
        # autocast in the SAM2 calls below, as SAM2's own predictors do.
        super().to(*args, **kwargs)
        self.sam.float()
        return self

    def sam_autocast(self):
        """Autocast for SAM2 calls: the model's dtype when it is bf16/fp16 (SAM2 keeps float32 weights)."""
        low_precision = self.dtype in (torch.bfloat16, torch.float16)
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=low_precision)

    def encode_sam_images(self, sam_images: torch.Tensor) -> SamImageFeatures:
        """(B, 3, S, S) normalised images -> SAM2 image features (computed once per image)."""
        with self.sam_autocast():
            return encode_image(self.sam, sam_images.float())

    def masks_from_query_states(
        self, query_states: torch.Tensor, features: SamImageFeatures
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, hidden) query states + per-row SAM features -> low-res logits (B, 1, h, w), IoU scores (B, 1)."""
        prompt = self.context(query_states)  # (B, 1, 256)
        with self.sam_autocast():
            return decode_masks(self.sam, features, prompt)
