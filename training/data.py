"""Training data: a seeded mixture over dataset readers, per-rank sample order, teacher-forced examples.

The whole run's sample order is a pure function of (seed, dataset sizes, ratios, global batch, world size),
so a resumed run sees exactly the samples the uninterrupted run would have seen from that step on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from lens_model.data import Record, load_dataset
from lens_model.errors import LensError
from lens_model.image_io import load_image, read_prompt
from lens_model.inference.answer import format_answer, rescale_box
from lens_model.inference.prompting import build_chat, mllm_image
from lens_model.model.config import LensConfig
from lens_model.model.sam import preprocess_for_sam

from .grounding import ANCHOR, NO_OBJECT, TARGET, answer_objects, box_mask, object_tokens, sequence_targets, token_cover

log = logging.getLogger(__name__)
END_OF_TURN = "<|im_end|>"


def load_mixture(specs: Sequence) -> list[list[Record]]:
    """One record list per DatasetSpec (name, root, split, image_dir); errors name the dataset entry."""
    datasets = []
    for k, spec in enumerate(specs):
        try:
            records = load_dataset(spec.name, spec.root, spec.split, image_dir=spec.image_dir)
        except LensError as exc:
            raise LensError(f"datasets[{k}] ({spec.name} {spec.split}): {exc}") from None
        if not records:
            raise LensError(f"datasets[{k}] ({spec.name} {spec.split} in {spec.root}) has no samples")
        datasets.append(records)
    return datasets


def load_sample(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """-> (H, W, 3) uint8 image and (H, W) bool GT mask; LensError/ValueError naming the file when the expression is
    not plain text, the image is unreadable, the mask undecodable, or the image's size not the annotation's."""
    read_prompt(record.expression)  # plain text: no chat control tokens (docs/design.md, "Prompts are text")
    rgb = load_image(record.image_path)
    record.check_image(rgb)
    return rgb, record.mask()


def epoch_order(sizes: Sequence[int], ratios: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """(M, 2) [dataset, record] pairs for one epoch, M = Σ sizes: each position draws its dataset with
    probability ∝ ratio; within a dataset records come from a fresh permutation (cycled if drawn more often)."""
    rng = np.random.default_rng([seed, epoch])
    total = int(sum(sizes))
    p = np.asarray(ratios, dtype=np.float64)
    which = rng.choice(len(sizes), size=total, p=p / p.sum())
    order = np.empty((total, 2), dtype=np.int64)
    order[:, 0] = which
    for k, size in enumerate(sizes):
        slots = np.nonzero(which == k)[0]
        perm = np.concatenate([rng.permutation(size) for _ in range(-(-len(slots) // size) or 1)])
        order[slots, 1] = perm[: len(slots)]
    return order


@dataclass(frozen=True)
class Schedule:
    """How samples map onto steps: global batch = per_device × world × grad_accum."""

    sizes: tuple[int, ...]
    ratios: tuple[float, ...]
    seed: int
    global_batch: int
    per_device: int
    world: int
    grad_accum: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, sum(self.sizes) // self.global_batch)

    def rank_positions(self, rank: int, start_step: int, end_step: int) -> list[tuple[int, int]]:
        """[dataset, record] of every sample `rank` processes in steps [start, end), in micro-batch order:
        within a step, micro-batch m of rank r is global slice (m·world + r)·per_device ... + per_device."""
        out: list[tuple[int, int]] = []
        cache: dict[int, np.ndarray] = {}
        per_epoch = self.steps_per_epoch * self.global_batch
        for step in range(start_step, end_step):
            for micro in range(self.grad_accum):
                first = step * self.global_batch + (micro * self.world + rank) * self.per_device
                for g in range(first, first + self.per_device):
                    epoch, pos = divmod(g, per_epoch)
                    if epoch not in cache:
                        cache = {epoch: epoch_order(self.sizes, self.ratios, self.seed, epoch)}
                    out.append(tuple(int(v) for v in cache[epoch][pos]))
        return out


def teacher_answer(record: Record, box_llm, answer_format: str, rationale: bool = False) -> str:
    """The answer stage 1 teaches for `record` (without the end of turn): `format_answer`, and in the think_answer
    format the object's own name when the dataset gives one ("the large red circle", synthetic reasoning scenes)
    and, with `rationale`, the dataset's rationale in the think block."""
    notes = record.annotations
    name = f"the {notes['target_name']}" if notes.get("target_name") else None
    reasoning = notes.get("rationale", "") if rationale else ""
    return format_answer(record.expression, box_llm, answer_format, reasoning=reasoning, name=name)


def named_object(record: Record) -> str:
    """The words that name the referred object: the dataset's name for it when it gives one (the answer writes
    that name; a relational expression's words are mostly about another object), else the expression."""
    return record.annotations.get("target_name") or record.expression


class AlignExamples(Dataset):
    """Teacher-forced stage-1 examples: chat prompt + GT answer tokens, MLLM and SAM2 images, GT mask.

    A sample that cannot be used (unreadable image or mask, too long) yields {"error": ...} instead of raising,
    so one bad file does not kill a multi-day run; the trainer logs and counts it. `rationales[k]`: dataset k's
    answers carry its rationales (`teacher_answer`), only for expressions of `rationale_kinds[k]` when given.
    """

    def __init__(
        self,
        datasets: list[list[Record]],
        positions: list[tuple[int, int]],
        processor,
        lens_config: LensConfig,
        max_length: int,
        rationales: Sequence[bool] = (),
        rationale_kinds: Sequence[Sequence[str] | None] = (),
    ) -> None:
        self.datasets, self.positions = datasets, positions
        self.processor, self.lens_config, self.max_length = processor, lens_config, max_length
        self.rationales = list(rationales) + [False] * (len(datasets) - len(rationales))
        # dataset k's rationales only for these expression kinds (None: all of them)
        self.rationale_kinds = list(rationale_kinds) + [None] * (len(datasets) - len(rationale_kinds))
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict:
        k, i = self.positions[index]
        record = self.datasets[k][i]
        try:
            kinds = self.rationale_kinds[k]
            rationale = self.rationales[k] and (kinds is None or record.annotations.get("kind") in kinds)
            return self._example(record, rationale)
        except (LensError, ValueError, OSError) as exc:
            return {"error": f"{record.dataset}/{record.sample_id}: {exc}", "sample_id": record.sample_id}

    def _example(self, record: Record, rationale: bool) -> dict:
        rgb, mask = load_sample(record)
        if record.box is None:
            raise ValueError("empty target: stage 1 needs a box to put in the answer")
        llm = mllm_image(rgb, self.lens_config)
        box = rescale_box(record.box, rgb.shape[:2], (llm.height, llm.width))
        answer = teacher_answer(record, box, self.lens_config.prompt.answer_format, rationale) + END_OF_TURN
        text = build_chat(self.processor, self.lens_config.prompt, record.expression) + answer
        enc = self.processor(text=[text], images=[llm], return_tensors="pt")
        length = enc["input_ids"].shape[1]
        if length > self.max_length:
            raise ValueError(f"{length} tokens with the image, over the limit of {self.max_length}")
        tokenizer = self.processor.tokenizer
        answer_tokens = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        answer_ids = answer_tokens["input_ids"]
        expression_ids = tokenizer(named_object(record), add_special_tokens=False)["input_ids"]
        if not expression_ids:
            raise ValueError("empty expression")
        if enc["input_ids"][0, -len(answer_ids) :].tolist() != answer_ids:  # a token merged across the boundary
            raise ValueError("the answer's tokens differ inside the chat from alone; cannot tell where it starts")
        mllm_hw = (llm.height, llm.width)
        keys, queries = self._grounding(record, rgb, mask, mllm_hw, enc["input_ids"][0], answer, answer_tokens)
        return {
            "input_ids": enc["input_ids"][0],  # (L,)
            "mm_token_type_ids": enc["mm_token_type_ids"][0],  # (L,)
            "pixel_values": enc["pixel_values"],  # (patches, C·T·P·P)
            "image_grid_thw": enc["image_grid_thw"],  # (1, 3)
            "sam_image": preprocess_for_sam(rgb, self.lens_config.sam.image_size),  # (3, S, S)
            "gt_mask": torch.from_numpy(mask),  # (H, W) bool
            "answer_length": len(answer_ids),  # the last tokens of input_ids (for the answer lm loss)
            "expression_ids": torch.tensor(expression_ids),  # (E,) the object's words (expression-token loss)
            "grounding_keys": keys,  # (2, L) bool: the image tokens of [anchor, target] (training/grounding.py)
            "grounding_queries": queries,  # (L,) long: which of them the state at each position is to look at
            "sample_id": record.sample_id,
        }

    def _grounding(self, record: Record, rgb, mask, mllm_hw, input_ids, answer: str, answer_tokens):
        """The grounding-attention targets of one example: the target's image tokens from its mask, the anchor's
        (a relational expression's, when the dataset names one) from its box."""
        image = self.processor.image_processor
        objects = {TARGET: object_tokens(token_cover(mask, mllm_hw, image.patch_size, image.merge_size))}
        anchor = record.annotations.get("anchor_box")
        if anchor is not None:
            cover = token_cover(box_mask(anchor, rgb.shape[:2]), mllm_hw, image.patch_size, image.merge_size)
            objects[ANCHOR] = object_tokens(cover)
        clause_end = answer.find(";") if anchor is not None and ";" in answer else None
        starts = [start for start, _ in answer_tokens["offset_mapping"]]
        return sequence_targets(input_ids, self.image_token_id, answer_objects(starts, clause_end), objects)


class Collator:
    """Left-pads token rows (as generation does) and stacks images; failed samples are passed on by id."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        good = [e for e in examples if "error" not in e]
        batch: dict = {"failed": [(e["sample_id"], e["error"]) for e in examples if "error" in e], "size": len(good)}
        if not good:
            return batch
        length = max(len(e["input_ids"]) for e in good)
        ids = torch.full((len(good), length), self.pad_token_id, dtype=torch.long)
        types = torch.zeros((len(good), length), dtype=torch.long)
        attention = torch.zeros((len(good), length), dtype=torch.long)
        answer = torch.zeros((len(good), length), dtype=torch.bool)
        grounding_keys = torch.zeros((len(good), 2, length), dtype=torch.bool)
        grounding_queries = torch.full((len(good), length), NO_OBJECT, dtype=torch.long)
        words = max(len(e["expression_ids"]) for e in good)
        expression = torch.zeros((len(good), words), dtype=torch.long)
        expression_mask = torch.zeros((len(good), words), dtype=torch.bool)
        for row, e in enumerate(good):
            n = len(e["input_ids"])
            ids[row, length - n :] = e["input_ids"]
            types[row, length - n :] = e["mm_token_type_ids"]
            attention[row, length - n :] = 1
            answer[row, length - e["answer_length"] :] = True
            grounding_keys[row, :, length - n :] = e["grounding_keys"]
            grounding_queries[row, length - n :] = e["grounding_queries"]
            expression[row, : len(e["expression_ids"])] = e["expression_ids"]
            expression_mask[row, : len(e["expression_ids"])] = True
        batch.update(
            input_ids=ids,
            attention_mask=attention,
            answer_mask=answer,
            expression_ids=expression,  # (B, E) right-padded with 0
            expression_mask=expression_mask,  # (B, E) True on real tokens
            grounding_keys=grounding_keys,  # (B, 2, L) image tokens of [anchor, target]
            grounding_queries=grounding_queries,  # (B, L) which the state at each position is to look at
            mm_token_type_ids=types,
            pixel_values=torch.cat([e["pixel_values"] for e in good]),
            image_grid_thw=torch.cat([e["image_grid_thw"] for e in good]),
            sam_images=torch.stack([e["sam_image"] for e in good]),
            gt_masks=[e["gt_mask"] for e in good],
            sample_ids=[e["sample_id"] for e in good],
        )
        return batch
