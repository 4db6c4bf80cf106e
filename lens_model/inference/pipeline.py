"""Inference: image + text prompt(s) -> mask, box, score, generated text, per-stage timings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..devices import resolve_device, resolve_dtype
from ..errors import NonFiniteOutputError, PromptError
from ..image_io import load_image, read_prompt
from ..model.config import LensConfig
from ..model.modeling import LensModel
from ..model.sam import preprocess_for_sam
from .backends import SegmentationBackend, TorchBackend, check_backend_args, open_backend
from .confidence import ConfidenceSignals, answer_name, judge, names_prompt, unknown_words
from .generation import PromptRows, generate_and_segment
from .prompting import box_in_image, build_chat, mllm_image, special_token_ids
from .timing import StageTimer

DEFAULT_MAX_PROMPT_TOKENS = 2048  # released training/eval bound on the prompt length


@dataclass
class SegmentationResult:
    prompt: str
    mask: np.ndarray  # (H, W) bool at the original image resolution
    box: tuple[float, float, float, float] | None  # xyxy in original pixels, None if the answer had no valid box
    score: float  # SAM2's predicted IoU of the returned mask
    text: str  # the generated completion (special tokens other than padding/end kept)
    num_tokens: int  # generated tokens up to and including the end token
    image_size: tuple[int, int]  # (H, W) of the input image
    mllm_image_size: tuple[int, int]  # (h, w) the MLLM saw after smart resize
    box_error: str | None = None  # why `box` is None
    format_ok: bool = False  # the answer followed the prompt format's template
    # Is the result meaningful (lens_model.inference.confidence)? When not, `reason` says which checks failed.
    confident: bool = False
    reason: str | None = "not judged"
    named: bool = False  # the answer names the asked-for object (confidence.names_prompt)
    stability: float = 0.0  # SAM's stability score of the mask (confidence.stability_score)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("mask")
        data["mask_pixels"] = int(self.mask.sum())
        data["box"] = None if self.box is None else [round(float(v), 2) for v in self.box]
        data["stability"] = round(self.stability, 4)
        data["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return data


def check_finite(finite: torch.Tensor, prompts: Sequence[str]) -> None:
    """Refuse results computed from non-finite numbers: NaN mask logits give an empty mask and a NaN score, which
    looks like "nothing found" and is not valid JSON. `finite` (R,) bool per prompt row."""
    bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
    if bad:
        raise NonFiniteOutputError(
            f"the model computed non-finite (NaN or inf) mask logits or scores for prompt {prompts[bad[0]]!r}"
            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}: its weights (or a backend's graphs) hold NaN or "
            "inf values, or overflowed in this dtype; check the checkpoint (or try --dtype float32)"
        )


class LensPipeline:
    """`LensPipeline.from_pretrained(model)(image, "the red cup")` -> SegmentationResult."""

    def __init__(
        self,
        model: LensModel,
        processor,
        max_new_tokens: int = 256,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
        mllm_longest_side: int | None = None,
        backend: SegmentationBackend | None = None,
    ) -> None:
        self.model = model.eval()
        # Runs SAM2 + the context head (see lens_model.inference.backends); the MLLM always runs in transformers.
        self.backend = backend if backend is not None else TorchBackend(self.model)
        # The MLLM image's longest side before the smart resize (ReasonSeg's protocol: 640); None: the model's own
        # `mllm_longest_side`, the size it was trained for (released models: none, the image as given)
        self.mllm_longest_side = mllm_longest_side
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.pad_token_id, self.eos_token_ids = special_token_ids(processor.tokenizer)
        # When a result is `confident`: the model's config (lens.confidence); replace it to judge differently.
        self.confidence = self.model.lens_config.confidence

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        device: str = "auto",
        dtype: str = "auto",
        context_pass: str | None = None,
        answer_format: str | None = None,
        backend: str = "torch",
        backend_dir: str | None = None,
        **kwargs,
    ) -> LensPipeline:
        """`backend`: torch, onnxruntime or tensorrt for SAM2 + the context head; the last two run the export in
        `backend_dir` (`lens export`), which must come from the same weights (sha256 of the weight files)."""
        from ..model.checkpoint import load_model, resolve_model_dir

        dev = resolve_device(device)
        backend_choice = check_backend_args(backend, backend_dir)  # before loading a multi-GB model
        model_dir = resolve_model_dir(name_or_path)
        model, processor = load_model(
            model_dir,
            device=dev,
            dtype=resolve_dtype(dtype, dev),
            context_pass=context_pass,
            answer_format=answer_format,
        )
        segmenter = open_backend(backend_choice, model, model_dir=model_dir)
        return cls(model, processor, backend=segmenter, **kwargs)

    @property
    def config(self) -> LensConfig:
        return self.model.lens_config

    def build_chat(self, prompt: str) -> str:
        return build_chat(self.processor, self.config.prompt, prompt)

    @torch.inference_mode()
    def __call__(self, image, prompt: str | Sequence[str], max_new_tokens: int | None = None, streamer=None):
        """One prompt -> SegmentationResult; a list of prompts -> list (one shared image encoding).

        `streamer`: a transformers streamer (`put(token_ids)`, `end()`) that sees the tokens as they are generated,
        e.g. lens_ros.streaming.TextSoFarStreamer; one prompt only."""
        single = isinstance(prompt, str) or prompt is None
        prompts = [prompt] if single else list(prompt)
        results = self.segment_batch([image], prompts, [0] * len(prompts), max_new_tokens, streamer=streamer)
        return results[0] if single else results

    def _prepare_image(self, image) -> tuple[np.ndarray, Image.Image]:
        rgb = load_image(image)
        return rgb, mllm_image(rgb, self.config, self.mllm_longest_side)

    @torch.inference_mode()
    def segment_batch(
        self,
        images: Sequence,
        prompts: Sequence[str],
        image_index: Sequence[int],
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        streamer=None,
    ) -> list[SegmentationResult]:
        """Row i segments prompts[i] in images[image_index[i]]; each distinct image is encoded once (MLLM and SAM2).

        max_length bounds prompt + completion tokens instead of max_new_tokens (the released evaluation uses 768).
        """
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 (prompt + completion tokens), got {max_length}")
        if streamer is not None and len(prompts) != 1:
            raise ValueError(f"a streamer follows one prompt, got {len(prompts)}")
        if len(prompts) != len(image_index) or not prompts:
            raise PromptError(
                f"need one image index per prompt and at least one prompt; got {len(prompts)} prompts, "
                f"{len(image_index)} indices"
            )
        if min(image_index) < 0 or max(image_index) >= len(images):
            raise ValueError(f"image_index must lie in [0, {len(images) - 1}], got {sorted(set(image_index))}")
        device = self.model.device
        timer = StageTimer(device)
        with timer.stage("preprocess"):
            prompts = [read_prompt(p) for p in prompts]
            prepared = [self._prepare_image(image) for image in images]
            texts = [self.build_chat(p) for p in prompts]
            batch = self.processor(
                text=texts, images=[prepared[i][1] for i in image_index], padding=True, return_tensors="pt"
            )
            longest = int(batch["attention_mask"].sum(1).max())
            if longest > self.max_prompt_tokens:
                raise PromptError(
                    f"prompt is {longest} tokens with the image; this model accepts at most {self.max_prompt_tokens}"
                )
            if max_length is not None and batch["input_ids"].shape[1] >= max_length:
                raise PromptError(f"prompt is {batch['input_ids'].shape[1]} tokens, not below max_length={max_length}")
            unique = self.processor.image_processor(images=[llm for _, llm in prepared], return_tensors="pt")
            grid = unique["image_grid_thw"]  # (num_images, 3)
            patch = self.processor.image_processor.patch_size
            sam_images = torch.stack([preprocess_for_sam(rgb, self.backend.image_size) for rgb, _ in prepared])
            rows = PromptRows(
                batch["input_ids"],
                batch["attention_mask"],
                batch["mm_token_type_ids"],
                unique["pixel_values"],
                grid,
                torch.tensor(image_index),
                sam_images,
                [rgb.shape[:2] for rgb, _ in prepared],
            )
        length = (
            {"max_length": max_length}
            if max_length is not None
            else {"max_new_tokens": max_new_tokens or self.max_new_tokens}
        )
        out = generate_and_segment(
            self.model,
            self.processor.tokenizer,
            rows,
            self.pad_token_id,
            self.eos_token_ids,
            generation_kwargs=dict(length, do_sample=False),
            segmenter=self.backend,
            streamer=streamer,
            timer=timer,
        )
        answer_format = self.config.prompt.answer_format
        with timer.stage("postprocess"):
            check_finite(out.finite, prompts)
            results = []
            for i, (prompt, j) in enumerate(zip(prompts, image_index)):
                image_hw = prepared[j][0].shape[:2]
                llm_hw = (int(grid[j, 1]) * patch, int(grid[j, 2]) * patch)  # the size the MLLM actually saw
                parsed = out.answers[i]
                box, box_error = box_in_image(parsed, llm_hw, image_hw)
                signals = ConfidenceSignals(
                    format_ok=parsed.format_ok,
                    named=names_prompt(parsed, prompt, answer_format),
                    answer_name=answer_name(parsed, answer_format),
                    mask_fraction=float(out.masks[i].mean()),
                    stability=out.stabilities[i],
                    score=float(out.scores[i, 0]),
                    unknown_words=unknown_words(prompt, self.confidence.vocabulary),
                )
                confident, reason = judge(signals, self.confidence)
                results.append(
                    SegmentationResult(
                        prompt=prompt,
                        mask=out.masks[i],
                        box=box,
                        score=float(out.scores[i, 0]),
                        text=out.texts[i],
                        num_tokens=int(out.completion_mask[i].sum()),
                        image_size=tuple(image_hw),
                        mllm_image_size=llm_hw,
                        box_error=box_error,
                        format_ok=parsed.format_ok,
                        confident=confident,
                        reason=reason,
                        named=signals.named,
                        stability=signals.stability,
                    )
                )
        timer.times["total"] = sum(timer.times.values())
        for r in results:
            r.timings = dict(timer.times)
        return results
