"""GRPO rollouts sampled by vLLM (`rollout_backend: vllm`, GPU servers): one engine per rank, as released.

For K prompts of a micro-batch (one image each), `VLLMRollouts.generate(prompts, G)`:
    sync the policy's Qwen-VL weights into the engine (when the policy changed, see `policy_version`)
    vLLM: K requests {chat text, smart-resized image}, SamplingParams(n=G, ...) -> K·G completion token ids
    check that vLLM's prompt tokens equal ours (same number of image placeholders, see below)
    `training.rollout.rollout_from_completions`: our prompt ids + vLLM's completion ids -> the same `Rollout` as
        the in-process sampler, through the same step (`lens_model.inference.generation.generate_and_segment`); the
        masks come from a full context pass at the model's positions (vLLM keeps no KV cache we could reuse).

Prompt alignment. Our processor expands the chat's single <|image_pad|> into one token per merged patch
(image_grid_thw.prod() / merge_size²); vLLM's Qwen2.5-VL input processor does the same expansion from the
same preprocessor config (we hand it our processor files) and the same smart-resized image, so both sides
see identical prompt ids. The training forward keeps OUR left-padded prompt ids and takes only the
completion ids from vLLM; `check_prompt_alignment` compares vLLM's returned `prompt_token_ids` with ours and
turns any drift (e.g. a vLLM version that resizes differently) into an error naming both image-token counts,
instead of silently training on misaligned sequences.

Engine. `vllm.LLM` in the trainer's process (distributed_executor_backend="external_launcher", tensor
parallel 1: every rank samples its own prompts), pointed at a rank-local temporary directory holding only
the MLLM's config.json and our processor/tokenizer files, with `load_format="dummy"`; the real weights are
pushed right away by `sync_weights` (no multi-GB checkpoint write per rank). A weight sync copies every
Qwen-VL tensor (~3.8B parameters for the 3B model, ~7.5 GB in bf16) device-to-device into the engine and
resets its prefix cache: about a second per call. Under ZeRO-3 the full weights are gathered first (for the
sync and for the context pass), as the in-process backend does for generation. Sampling randomness comes
from the engine's seed (`seed + rank`), so unlike the in-process backend a `--resume`d run does not redraw
identical answers.

This backend needs vLLM on a CUDA machine; it was written against the documented vLLM API and the released
code's usage and is exercised here only with a stand-in engine (tests/test_vllm_rollout.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lens_model.errors import LensError
from lens_model.image_io import load_image
from lens_model.inference.prompting import build_chat, mllm_image, special_token_ids
from lens_model.inference.timing import StageTimer
from lens_model.model.modeling import MLLM_CLASSES, LensModel

from .engine import gathered
from .rollout import PromptBatch, Rollout, completion_end_for, rollout_from_completions

log = logging.getLogger("training.vllm_rollout")

INSTALL_HINT = "rollout_backend=vllm needs vLLM on a CUDA machine: pip install vllm (or set rollout_backend=generate)"
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
# Where the released code and TRL's colocate mode reach the engine's nn.Module (in-process executor).
_MODEL_PATH = "llm.llm_engine.model_executor.driver_worker.model_runner.model"


def check_prompt_alignment(prompts: PromptBatch, engine_prompt_ids: list[list[int] | None], image_token_id: int) -> int:
    """Raise LensError unless the engine's prompt ids equal our (unpadded) ones; returns how many were
    compared (an engine that does not report prompt ids cannot be checked: None entries are skipped)."""
    checked = 0
    for i, theirs in enumerate(engine_prompt_ids):
        if theirs is None:
            continue
        theirs = [int(t) for t in theirs]
        ours = prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist()
        checked += 1
        if theirs == ours:
            continue
        n_ours, n_theirs = ours.count(image_token_id), theirs.count(image_token_id)
        if n_ours != n_theirs:
            what = f"{n_theirs} image placeholder tokens where our processor has {n_ours}"
        else:
            what = f"the same {n_ours} image placeholder tokens but different text tokens"
        record = prompts.records[i]
        raise LensError(
            f"vLLM tokenized the prompt of {record.dataset}/{record.sample_id} into {len(theirs)} tokens with {what} "
            f"(ours: {len(ours)} tokens, image grid {prompts.image_grid_thw[i].tolist()}); its completions would not "
            f"line up with the training sequence. Make vLLM's image preprocessing match the processor's "
            f"(min_pixels/max_pixels) or set rollout_backend=generate"
        )
    return checked


def _engine_completions(outputs, k: int, group_size: int, eos: set[int]) -> tuple[list[list[list[int]]], list]:
    """vLLM RequestOutputs (one per prompt, in order) -> completion ids [k][g] and the engine's prompt ids."""
    if len(outputs) != k:
        raise LensError(f"vLLM returned {len(outputs)} results for {k} prompts")
    completions, prompt_ids = [], []
    for out in outputs:
        answers = list(out.outputs)
        if answers and all(hasattr(a, "index") for a in answers):
            answers.sort(key=lambda a: a.index)
        if len(answers) != group_size:
            raise LensError(f"vLLM returned {len(answers)} completions for a prompt, expected n={group_size}")
        group = []
        for answer in answers:
            ids = [int(t) for t in answer.token_ids]
            # A stop token ends the answer like EOS does; should an engine leave it out of token_ids, put it
            # back so the completion (and its log-prob) ends where sampling ended.
            reason = getattr(answer, "stop_reason", None)
            if (
                getattr(answer, "finish_reason", None) == "stop"
                and isinstance(reason, int)
                and reason in eos
                and (not ids or ids[-1] != reason)
            ):
                ids.append(reason)
            group.append(ids)
        completions.append(group)
        ids = getattr(out, "prompt_token_ids", None)
        prompt_ids.append(None if ids is None else list(ids))
    return completions, prompt_ids


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


class VLLMRollouts:
    """One vLLM engine on this rank, sampling the policy's answers; `generate` returns a training `Rollout`.

    `policy_version`: the trainer may set it (e.g. to the optimizer step) so that the micro-batches of one step
    share one weight sync; left None, every `generate` call syncs first (always correct, ~1 s per call).
    `llm_factory` / `sampling_params_factory` replace `vllm.LLM` / `vllm.SamplingParams` (tests).
    """

    def __init__(
        self,
        cfg,
        lens: LensModel,
        processor,
        device,
        llm_factory: Callable[..., Any] | None = None,
        sampling_params_factory: Callable[..., Any] | None = None,
    ):
        if lens.lens_config.mllm_absolute_positions:
            raise LensError(
                "rollout_backend=vllm runs vLLM's own Qwen2-VL vision encoder, which has no absolute patch "
                "positions (lens.mllm_absolute_positions: true in this model); set rollout_backend=generate"
            )
        if llm_factory is None or sampling_params_factory is None:
            try:
                import vllm
            except ImportError as exc:
                raise LensError(f"{INSTALL_HINT} ({exc})") from None
            if torch.device(device).type != "cuda":
                raise LensError(
                    f"rollout_backend=vllm runs vLLM on a CUDA GPU, but this rank's device is {device}; "
                    f"set rollout_backend=generate to sample in-process"
                )
            llm_factory = llm_factory or vllm.LLM
            sampling_params_factory = sampling_params_factory or vllm.SamplingParams
        self.cfg = cfg
        self.lens = lens
        self.processor = processor
        self.device = torch.device(device)
        self.pad_token_id, self.eos_token_ids = special_token_ids(processor.tokenizer)
        self.image_token_id = lens.mllm.config.image_token_id
        self.policy_version: int | None = None
        self._synced_version: int | None = None
        self._unchecked_warned = False
        self._sampling_params_factory = sampling_params_factory
        self.rank = _rank()
        self.model_dir = Path(tempfile.mkdtemp(prefix=f"lens-vllm-rank{self.rank}-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.model_dir), True)
        self._write_model_dir()
        self.engine_kwargs = self._engine_kwargs()
        self.llm = llm_factory(**self.engine_kwargs)
        self._sync_weights()  # the engine starts from dummy weights

    # ------------------------------------------------------------------ engine
    def _write_model_dir(self) -> None:
        """config.json of the MLLM (transformers' class name as architecture) + our processor files: all vLLM
        reads from disk; weights arrive through `sync_weights`."""
        config = self.lens.mllm.config.to_dict()
        config["architectures"] = [MLLM_CLASSES[self.lens.mllm.config.model_type]]
        (self.model_dir / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
        self.processor.save_pretrained(str(self.model_dir))

    def _engine_kwargs(self) -> dict[str, Any]:
        cfg = self.cfg
        dtype = self.lens.dtype
        if dtype not in _DTYPE_NAMES:
            raise LensError(f"rollout_backend=vllm: unsupported policy dtype {dtype}")
        max_model_len = cfg.max_prompt_length + cfg.max_completion_length
        return dict(
            model=str(self.model_dir),
            tokenizer=str(self.model_dir),
            dtype=_DTYPE_NAMES[dtype],
            load_format="dummy",
            seed=cfg.seed + self.rank,
            tensor_parallel_size=1,
            distributed_executor_backend="external_launcher",  # engine inside this rank's process
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_batched_tokens=max(4096, max_model_len),  # the V1 profiler overestimates at its default
            limit_mm_per_prompt={"image": 1, "video": 0},
            enable_prefix_caching=True,
        )

    def _engine_model(self):
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            return None

    def _load_into_engine(self, weights: list[tuple[str, torch.Tensor]]) -> tuple[Any, set[str]]:
        model = self._engine_model()
        if model is not None:
            return model.load_weights(weights), {name for name, _ in model.named_parameters()}
        if hasattr(self.llm, "apply_model"):  # newer vLLM: run a function on the worker's model
            results = self.llm.apply_model(
                lambda m: (m.load_weights(weights), {name for name, _ in m.named_parameters()})
            )
            return results[0] if isinstance(results, list) else results
        raise LensError(
            f"cannot reach the model inside this vLLM version to update its weights (neither "
            f"{_MODEL_PATH} nor LLM.apply_model exists); use a vLLM release with one of them or set "
            f"rollout_backend=generate"
        )

    def _sync_weights(self) -> None:
        weights = [(name, param.detach()) for name, param in self.lens.mllm.named_parameters()]
        with torch.no_grad():
            loaded, expected = self._load_into_engine(weights)
        if isinstance(loaded, (set, frozenset, list, tuple)) and expected:
            missing = sorted(expected - set(loaded))
            if missing:
                raise LensError(
                    f"vLLM kept {len(missing)} of its {len(expected)} tensors at their dummy values after "
                    f"the weight sync (e.g. {', '.join(missing[:3])}): the policy's parameter names do not "
                    f"map onto this vLLM version's {self.lens.mllm.config.model_type} loader; set "
                    f"rollout_backend=generate"
                )
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()  # cached prompt states were computed with the old weights

    def sync_weights(self) -> None:
        """Push the current policy's Qwen-VL weights into the engine (gathered first under ZeRO-3)."""
        with self._gathered():
            self._sync_weights()
        self._synced_version = self.policy_version

    def _gathered(self):
        return gathered(self.lens, getattr(self.cfg, "zero_stage", 0))

    def close(self) -> None:
        """Remove the engine's temporary directory (also done when this object is collected)."""
        self._cleanup()

    # ------------------------------------------------------------------ sampling
    def requests(self, prompts: PromptBatch) -> list[dict[str, Any]]:
        """One vLLM request per prompt: the chat text and the smart-resized image, built as prepare_prompts did."""
        out = []
        for i, record in enumerate(prompts.records):
            image = mllm_image(load_image(record.image_path), self.lens.lens_config)
            if (image.height, image.width) != tuple(prompts.mllm_sizes[i]):
                raise LensError(
                    f"{record.sample_id}: the MLLM image is now {image.height}x{image.width}, the prompt "
                    f"was built for {prompts.mllm_sizes[i]}"
                )
            chat = build_chat(self.processor, self.lens.lens_config.prompt, record.expression)
            out.append({"prompt": chat, "multi_modal_data": {"image": image}})
        return out

    def sampling_params(self, group_size: int):
        cfg = self.cfg
        return self._sampling_params_factory(
            n=group_size,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k if cfg.top_k > 0 else -1,
            max_tokens=cfg.max_completion_length,
            stop_token_ids=list(self.eos_token_ids),
        )

    @torch.no_grad()
    def generate(self, prompts: PromptBatch, group_size: int) -> Rollout:
        """K prompts -> K·G sampled answers with their masks (row r belongs to prompt r // G)."""
        timer = StageTimer(self.device)
        with timer.stage("generate"):  # weight sync + sampling
            if self.policy_version is None or self.policy_version != self._synced_version:
                with timer.stage("sync_weights"):
                    self.sync_weights()
            outputs = self.llm.generate(
                self.requests(prompts), sampling_params=self.sampling_params(group_size), use_tqdm=False
            )
        eos = set(self.eos_token_ids)
        completions, engine_prompt_ids = _engine_completions(outputs, len(prompts), group_size, eos)
        if check_prompt_alignment(prompts, engine_prompt_ids, self.image_token_id) == 0 and not self._unchecked_warned:
            log.warning("vLLM reported no prompt token ids: cannot check that its image placeholders match ours")
            self._unchecked_warned = True
        with self._gathered():
            return rollout_from_completions(
                self.lens,
                self.processor,
                prompts,
                completions,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                max_new_tokens=self.cfg.max_completion_length,
                timings=timer.times,
                completion_end=completion_end_for(self.cfg.compat),
            )
