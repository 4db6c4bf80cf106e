"""Grounding attention: a stage-1 training signal that points attention heads of the MLLM's language model at the
object its answer is about (not in the paper; AlignConfig.grounding_weight, docs/design.md "Grounding attention").

A language model trained from scratch on a few thousand answers does not learn to *select* the object an
expression names among several (the demo model's probes: the named object's place 0.1, chance 0.11), although it
reads a lone object's place at 0.97. Supervising where one head looks makes the selection a dense target: the
state that predicts each answer token should put its attention on the image tokens of the object that token is
about — the anchor for the rationale's first clause ("the red circle is at the top right;"), the target for the
rest; and, in the mask pass, every context query at the target, whose features it then carries to SAM2's prompt.
Nothing changes at inference: the heads are the model's own, the signal only trains them.

Token order: Qwen2-VL's processor emits an image's merged tokens row by row (merged rows of `merge` × `merge`
patches of `patch` pixels), which `token_cover` follows.
"""

from __future__ import annotations

from contextlib import contextmanager

import cv2
import numpy as np
import torch

ANCHOR, TARGET = 0, 1  # rows of the key masks
NO_OBJECT = -1  # query label of a position whose attention is not supervised
COVER_THRESHOLD = 0.2  # a merged token belongs to an object when this share of its pixels does


def token_cover(mask: np.ndarray, mllm_hw: tuple[int, int], patch: int = 14, merge: int = 2) -> np.ndarray:
    """(H, W) bool mask in the original image's pixels -> (gh · gw,) float: the share of each merged image token's
    pixels inside the mask, for the MLLM image of `mllm_hw` = (h, w) pixels (multiples of patch · merge), in the
    processor's token order (row-major)."""
    h, w = mllm_hw
    side = patch * merge
    if h % side or w % side:
        raise ValueError(f"MLLM image {h}x{w} is not a whole number of {side}-pixel merged tokens")
    small = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)  # cv2 takes (width, height)
    return small.reshape(h // side, side, w // side, side).mean(axis=(1, 3)).reshape(-1)


def object_tokens(cover: np.ndarray) -> np.ndarray:
    """(T,) cover -> (T,) bool: the tokens at least COVER_THRESHOLD inside the object, or its most covered token
    when none is (a small object still has one)."""
    tokens = cover >= COVER_THRESHOLD
    if not tokens.any():
        tokens[int(cover.argmax())] = True
    return tokens


def box_mask(box: tuple[float, float, float, float], hw: tuple[int, int]) -> np.ndarray:
    """xyxy box in pixels -> (H, W) bool, the pixels whose centres lie inside it."""
    ys = np.arange(hw[0]) + 0.5
    xs = np.arange(hw[1]) + 0.5
    x0, y0, x1, y1 = box
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def answer_objects(token_starts: list[int], clause_end: int | None) -> np.ndarray:
    """(A,) int8: which object (ANCHOR / TARGET) each answer token is about, from the tokens' character offsets in
    the answer. `clause_end`: the character index of the rationale's first clause end (";" after "the red circle
    is at the top right") when the expression has an anchor: the tokens starting up to it are about the anchor, the
    rest about the target; None: all of them about the target."""
    starts = np.asarray(token_starts)
    if clause_end is None:
        return np.full(len(starts), TARGET, dtype=np.int8)
    return np.where(starts <= clause_end, ANCHOR, TARGET).astype(np.int8)


def sequence_targets(
    input_ids: torch.Tensor, image_token_id: int, answer_labels: np.ndarray, objects: dict[int, np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One example's supervision over its token sequence (L,), the answer being its last A tokens:
    -> keys (2, L) bool, the image tokens of [anchor, target] (a row is all False when that object is absent);
       queries (L,) long, the object the state at each position must look at: the state at i predicts token i + 1,
       so answer token j's label sits one position before it; NO_OBJECT elsewhere."""
    length = input_ids.shape[0]
    image_positions = (input_ids == image_token_id).nonzero().flatten()
    keys = torch.zeros((2, length), dtype=torch.bool)
    for row, tokens in objects.items():
        if len(tokens) != len(image_positions):
            raise ValueError(f"{len(tokens)} object-token labels for {len(image_positions)} image tokens")
        keys[row, image_positions[torch.from_numpy(tokens)]] = True
    queries = torch.full((length,), NO_OBJECT, dtype=torch.long)
    labels = torch.from_numpy(answer_labels.astype(np.int64))
    queries[length - len(labels) - 1 : length - 1] = labels
    for row in (ANCHOR, TARGET):
        if row not in objects:
            queries[queries == row] = NO_OBJECT
    return keys, queries


def with_context_queries(queries: torch.Tensor, keys: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets of a pass with N context queries appended after the sequence (the mask pass): (B, L) labels and
    (B, 2, L) keys -> (B, L + N), (B, 2, L + N), every query looking at the target (they are to prompt SAM2 with it)."""
    b = queries.shape[0]
    queries = torch.cat([queries, queries.new_full((b, n), TARGET)], dim=1)
    keys = torch.cat([keys, keys.new_zeros((b, 2, n))], dim=2)
    return queries, keys


def grounding_attention_loss(
    weights: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, heads: int
) -> torch.Tensor:
    """weights (B, H, Lq, L): one layer's attention probabilities, queries the last Lq of the L positions (a pass
    over a cached prefix has Lq < L); queries (B, L) long (NO_OBJECT or a row of keys); keys (B, 2, L) bool ->
    −log(attention mass on the object's tokens), averaged over the first `heads` heads and every supervised position
    of the batch (0 with a gradient path when none is)."""
    queries = queries[:, queries.shape[1] - weights.shape[2] :]  # a pass over the last Lq positions only
    rows, positions = (queries >= 0).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return weights.sum() * 0.0
    wanted = keys[rows, queries[rows, positions]].to(weights.dtype)  # (N, L)
    mass = (weights[rows, :heads, positions, :] * wanted[:, None, :]).sum(-1)  # (N, heads)
    return -torch.log(mass.float().clamp_min(1e-6)).mean()


@contextmanager
def captured_attention(mllm, layer: int):
    """Yields a dict whose "weights" is set to the attention probabilities (B, H, L, L) of the language model's
    decoder layer `layer` by each forward run inside the block. Needs eager attention (sdpa returns none)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        if output[1] is None:
            raise RuntimeError("grounding attention needs the MLLM's eager attention (set_attn_implementation)")
        captured["weights"] = output[1]

    handle = mllm.model.language_model.layers[layer].self_attn.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()
