"""Inference: image + text prompt(s) -> mask, box, score, generated text, per-stage timings."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .answer import clip_box, parse_answer, rescale_box, smart_resize
from .backends import SegmentationBackend, TorchBackend, check_backend_args, open_backend
from .config import LensConfig
from .errors import LensError, PromptError
from .image_io import load_image, read_prompt
from .modeling import ContextInputs, LensModel, completion_mask
from .sam import preprocess_for_sam, upsample_logits
from .vocab import canonical_dtype

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
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("mask")
        data["mask_pixels"] = int(self.mask.sum())
        data["box"] = None if self.box is None else [round(float(v), 2) for v in self.box]
        data["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return data


def box_from_answer(text: str, answer_format: str, mllm_hw: tuple[int, int], image_hw: tuple[int, int]):
    """Generated text -> (box in original-image pixels or None, why None, format followed)."""
    parsed = parse_answer(text, answer_format)
    if parsed.box is None:
        return None, parsed.error, parsed.format_ok
    box = clip_box(rescale_box(parsed.box, mllm_hw, image_hw), image_hw)
    return box, (None if box is not None else "box lies outside the image"), parsed.format_ok


def special_token_ids(tok) -> tuple[int, list[int]]:
    """(padding id, end-of-answer ids) of a Qwen tokenizer: generation stops at <|im_end|> or <|endoftext|>."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
    eos = sorted({tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")} - {None, tok.unk_token_id})
    return pad, eos


def build_chat(processor, prompt_config, question_text: str) -> str:
    """System + user turn (image, templated question) + the assistant header, as the released models saw it."""
    question = prompt_config.question_template.format(question=question_text)
    if not question.endswith("."):  # the released data pipeline ends every question with a period
        question += "."
    messages = [
        {"role": "system", "content": prompt_config.system_prompt},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def mllm_image(rgb: np.ndarray, config: LensConfig, longest_side: int | None = None) -> Image.Image:
    """HxWx3 uint8 -> the PIL image the MLLM sees: optionally capped to `longest_side`, then smart-resized
    (multiples of 28 within the config's pixel bounds), so that box coordinates are pixels of this image."""
    image = Image.fromarray(rgb)
    if longest_side and max(image.size) != longest_side:
        scale = longest_side / max(image.size)
        image = image.resize((int(image.width * scale), int(image.height * scale)), Image.BICUBIC)
    h, w = smart_resize(image.height, image.width, 28, config.min_pixels, config.max_pixels)
    return image.resize((w, h), Image.BICUBIC)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LensError(f"--device {device} requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, canonical_dtype(dtype))


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


class LensPipeline:
    """`LensPipeline.from_pretrained(model)(image, "the red cup")` -> SegmentationResult."""

    def __init__(self, model: LensModel, processor, max_new_tokens: int = 256,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, mllm_longest_side: int | None = None,
                 backend: SegmentationBackend | None = None) -> None:
        self.model = model.eval()
        # Runs SAM2 + the context head (see lens_model.backends); the MLLM always runs in transformers.
        self.backend = backend if backend is not None else TorchBackend(self.model)
        # Optional cap on the MLLM image's longest side before the smart resize (ReasonSeg's protocol: 640).
        self.mllm_longest_side = mllm_longest_side
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.pad_token_id, self.eos_token_ids = special_token_ids(processor.tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "auto", dtype: str = "auto",
                        context_pass: str | None = None, answer_format: str | None = None,
                        backend: str = "torch", backend_dir: str | None = None, **kwargs) -> "LensPipeline":
        """`backend`: torch, onnxruntime or tensorrt for SAM2 + the context head; the last two run the export in
        `backend_dir` (`lens export`), which must come from the same weights (sha256 of the weight files)."""
        from .checkpoint import load_model, resolve_model_dir

        dev = resolve_device(device)
        backend_choice = check_backend_args(backend, backend_dir)  # before loading a multi-GB model
        model_dir = resolve_model_dir(name_or_path)
        model, processor = load_model(model_dir, device=dev, dtype=resolve_dtype(dtype, dev),
                                      context_pass=context_pass, answer_format=answer_format)
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
    def segment_batch(self, images: Sequence, prompts: Sequence[str], image_index: Sequence[int],
                      max_new_tokens: int | None = None, max_length: int | None = None,
                      streamer=None) -> list[SegmentationResult]:
        """Row i segments prompts[i] in images[image_index[i]]; each distinct image is encoded once (MLLM and SAM2).

        max_length bounds prompt + completion tokens instead of max_new_tokens (the released evaluation uses 768).
        """
        if streamer is not None and len(prompts) != 1:
            raise ValueError(f"a streamer follows one prompt, got {len(prompts)}")
        if len(prompts) != len(image_index) or not prompts:
            raise PromptError(f"need one image index per prompt and at least one prompt; got {len(prompts)} prompts, "
                              f"{len(image_index)} indices")
        if min(image_index) < 0 or max(image_index) >= len(images):
            raise ValueError(f"image_index must lie in [0, {len(images) - 1}], got {sorted(set(image_index))}")
        device = self.model.device
        timer = _Timer(device)
        with timer.stage("preprocess"):
            prompts = [read_prompt(p) for p in prompts]
            prepared = [self._prepare_image(image) for image in images]
            rows = torch.tensor(image_index, device=device)
            texts = [self.build_chat(p) for p in prompts]
            batch = self.processor(text=texts, images=[prepared[i][1] for i in image_index], padding=True, return_tensors="pt")
            longest = int(batch["attention_mask"].sum(1).max())
            if longest > self.max_prompt_tokens:
                raise PromptError(f"prompt is {longest} tokens with the image; this model accepts at most {self.max_prompt_tokens}")
            if max_length and batch["input_ids"].shape[1] >= max_length:
                raise PromptError(f"prompt is {batch['input_ids'].shape[1]} tokens, not below max_length={max_length}")
            unique = self.processor.image_processor(images=[llm for _, llm in prepared], return_tensors="pt")
            grid = unique["image_grid_thw"].to(device)  # (num_images, 3)
            patch = self.processor.image_processor.patch_size
            sam_input = torch.stack([preprocess_for_sam(rgb, self.backend.image_size) for rgb, _ in prepared]).to(device)
        with timer.stage("mllm_vision"):
            # once per distinct image, one shared entry per prompt row
            image_outputs = self.model.encode_mllm_images(unique["pixel_values"].to(device, self.model.dtype), grid, rows)
            grid_rows = grid[rows]
        with timer.stage("generate"):
            gen = self.model.mllm.generate(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                mm_token_type_ids=batch["mm_token_type_ids"].to(device), image_grid_thw=grid_rows,
                mm_encoder_outputs={"image": image_outputs},
                **({"max_length": max_length} if max_length else {"max_new_tokens": max_new_tokens or self.max_new_tokens}),
                do_sample=False,
                eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id,
                return_dict_in_generate=True, use_cache=True,
                **({"streamer": streamer} if streamer is not None else {}),
            )
        prompt_len = batch["input_ids"].shape[1]
        completion = gen.sequences[:, prompt_len:]
        completion_valid = completion_mask(completion, self.eos_token_ids)
        with timer.stage("context"):
            ctx = ContextInputs(
                input_ids=gen.sequences,
                attention_mask=torch.cat([batch["attention_mask"].to(device), completion_valid], dim=1),
                mm_token_type_ids=torch.cat([batch["mm_token_type_ids"].to(device), torch.zeros_like(completion)], dim=1),
                image_grid_thw=grid_rows,
            )
            if self.config.context_pass == "cached":
                states = self.model.query_states_cached(ctx, gen.cache)
            else:
                states = self.model.query_states_full(ctx, image_outputs, positions="1d")
        with timer.stage("sam_encode"):
            features = self.backend.encode_images(sam_input)
        with timer.stage("sam_decode"):
            low_res, iou = self.backend.masks_from_query_states(states, features.select(rows))
            masks = [(upsample_logits(low_res[i:i + 1], prepared[j][0].shape[:2])[0] > 0).cpu().numpy()
                     for i, j in enumerate(image_index)]
        with timer.stage("postprocess"):
            texts_out = self._decode(completion)
            results = []
            for i, (prompt, j) in enumerate(zip(prompts, image_index)):
                image_hw = prepared[j][0].shape[:2]
                llm_hw = (int(grid[j, 1]) * patch, int(grid[j, 2]) * patch)  # the size the MLLM actually saw
                box, box_error, format_ok = box_from_answer(texts_out[i], self.config.prompt.answer_format, llm_hw, image_hw)
                results.append(SegmentationResult(
                    prompt=prompt, mask=masks[i], box=box, score=float(iou[i, 0]), text=texts_out[i],
                    num_tokens=int(completion_valid[i].sum()), image_size=tuple(image_hw), mllm_image_size=llm_hw,
                    box_error=box_error, format_ok=format_ok,
                ))
        timer.times["total"] = sum(timer.times.values())
        for r in results:
            r.timings = dict(timer.times)
        return results

    def _decode(self, completion: torch.Tensor) -> list[str]:
        drop = {self.pad_token_id, *self.eos_token_ids}
        return [
            self.processor.tokenizer.decode([t for t in row.tolist() if t not in drop], skip_special_tokens=False)
            for row in completion
        ]
