"""training.vllm_rollout on CPU without vLLM: the install/device errors, the conversion of sampled token ids
into the in-process backend's Rollout (bit-identical for an `official` tiny model), and `generate` end to end
against a stand-in engine (requests, SamplingParams arguments, weight sync, prompt-alignment check)."""

import importlib.util
import json
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lens_model.data import load_dataset
from lens_model.errors import LensError
from lens_model.inference.prompting import build_chat, special_token_ids
from lens_model.model.checkpoint import load_model
from training.config import GRPOConfig
from training.rollout import generate_rollouts, prepare_prompts, rollout_from_completions
from training.vllm_rollout import VLLMRollouts, check_prompt_alignment

G = 4
MAX_NEW = 12
EOS_BIAS = 2.0  # on <|im_end|>: the untrained tiny model then ends some answers and runs others to the limit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lens_model.data.synthetic import make_synthetic
    from lens_model.model.tiny import make_tiny

    tmp = tmp_path_factory.mktemp("vllm-rollout")
    model, processor = load_model(make_tiny(tmp / "tiny", context_pass="official"))
    model.eval()
    scenes = make_synthetic(tmp / "scenes", n_images=2, image_size=64)
    records, seen = [], set()
    for record in load_dataset("synthetic", scenes, "train"):  # one expression per image
        if record.image_path not in seen:
            seen.add(record.image_path)
            records.append(record)
    prompts, failed = prepare_prompts(records, processor, model.lens_config, max_prompt_length=4096)
    assert not failed and len(prompts) == 2
    pad, eos = special_token_ids(processor.tokenizer)
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    hook = model.mllm.lm_head.register_forward_hook(
        lambda m, i, out: out.index_add(
            -1, torch.tensor([im_end]), torch.full((*out.shape[:-1], 1), EOS_BIAS, dtype=out.dtype)
        )
    )
    try:
        torch.manual_seed(0)
        ro = generate_rollouts(
            model,
            processor,
            prompts,
            G,
            max_new_tokens=MAX_NEW,
            temperature=0.9,
            top_p=0.9,
            top_k=50,
            eos_token_ids=eos,
            pad_token_id=pad,
            context_pass="official",
        )
    finally:
        hook.remove()
    assert ro.truncated.any() and not ro.truncated.all()  # both kinds of answer are covered
    return model, processor, prompts, ro, pad, eos


def _answers(ro, eos):
    """The in-process rollout's answers as a sampler returns them: ids up to and including the first end token."""
    out = []
    for row in ro.completion_ids.tolist():
        ends = [j for j, t in enumerate(row) if t in eos]
        out.append(row[: ends[0] + 1] if ends else row)
    return out


def _grouped(rows):
    return [rows[k * G : (k + 1) * G] for k in range(len(rows) // G)]


def _assert_same_rollout(got, want):
    assert got.group_size == want.group_size and got.prompt_length == want.prompt_length
    for name in ("sequences", "attention_mask", "mm_token_type_ids", "completion_mask", "rows", "truncated"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.texts == want.texts
    assert len(got.pred_masks) == len(want.pred_masks)
    for a, b in zip(got.pred_masks, want.pred_masks):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    assert torch.equal(got.sam_features.image_embed, want.sam_features.image_embed)


# ---------------------------------------------------------------------------- errors before any engine
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_error_says_how_to_install_or_switch_backend(setup):
    model, processor, *_ = setup
    with pytest.raises(LensError) as err:
        VLLMRollouts(GRPOConfig(rollout_backend="vllm"), model, processor, torch.device("cpu"))
    assert "pip install vllm" in str(err.value) and "rollout_backend=generate" in str(err.value)


def test_refuses_a_non_cuda_device(setup, monkeypatch):
    model, processor, *_ = setup
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # importable, never reached
    with pytest.raises(LensError, match="CUDA.*rollout_backend=generate"):
        VLLMRollouts(GRPOConfig(rollout_backend="vllm"), model, processor, torch.device("cpu"))


def test_refuses_a_model_with_absolute_vision_positions(setup, monkeypatch):
    """vLLM's Qwen2-VL vision encoder has no absolute patch positions: its answers would not be the policy's."""
    model, processor, *_ = setup
    monkeypatch.setattr(model.lens_config, "mllm_absolute_positions", True)
    with pytest.raises(LensError, match="absolute patch positions.*rollout_backend=generate"):
        VLLMRollouts(GRPOConfig(rollout_backend="vllm"), model, processor, torch.device("cuda"))


# ---------------------------------------------------------------------------- the pure conversion
def test_completion_ids_give_the_in_process_rollout(setup):
    model, processor, prompts, ro, pad, eos = setup
    got = rollout_from_completions(
        model,
        processor,
        prompts,
        _grouped(_answers(ro, eos)),
        eos_token_ids=eos,
        pad_token_id=pad,
        context_pass="official",
        max_new_tokens=MAX_NEW,
    )
    _assert_same_rollout(got, ro)
    assert set(got.timings) == {"context_sam"}


def test_tokens_after_the_end_are_ignored(setup):
    model, processor, prompts, ro, pad, eos = setup
    answers = _answers(ro, eos)
    noisy = [a + [7, 8, pad, 9] if a[-1] in eos else a + [7] * 3 for a in answers]  # junk / over the limit
    got = rollout_from_completions(
        model,
        processor,
        prompts,
        _grouped(noisy),
        eos_token_ids=eos,
        pad_token_id=pad,
        context_pass="official",
        max_new_tokens=MAX_NEW,
    )
    _assert_same_rollout(got, ro)


def test_an_answer_cut_short_without_end_token_is_truncated_and_padding_stays_out_of_the_mask(setup):
    model, processor, prompts, ro, pad, eos = setup
    answers = [[5, 6, 7], [5, 6, eos[-1]]] + [[9] * MAX_NEW] * (2 * G - 2)  # row 0: stopped by the length cap
    got = rollout_from_completions(
        model, processor, prompts, _grouped(answers), eos_token_ids=eos, pad_token_id=pad, context_pass="official"
    )
    assert got.completion_ids.shape == (2 * G, MAX_NEW)
    assert got.completion_ids[0, 3:].eq(pad).all()  # pad is an end token for Qwen: it must not count as one
    assert got.completion_mask[0].tolist() == [1, 1, 1] + [0] * (MAX_NEW - 3)
    assert got.completion_mask[1].tolist() == [1, 1, 1] + [0] * (MAX_NEW - 3)
    assert got.truncated.tolist()[:3] == [True, False, True]
    assert torch.equal(got.attention_mask[:, got.prompt_length :], got.completion_mask)


def test_conversion_rejects_uneven_groups(setup):
    model, processor, prompts, ro, pad, eos = setup
    with pytest.raises(ValueError, match="same number"):
        rollout_from_completions(
            model,
            processor,
            prompts,
            [[[1]] * G, [[1]] * (G - 1)],
            eos_token_ids=eos,
            pad_token_id=pad,
            context_pass="official",
        )
    with pytest.raises(ValueError, match="completion groups"):
        rollout_from_completions(
            model, processor, prompts, [[[1]] * G], eos_token_ids=eos, pad_token_id=pad, context_pass="official"
        )


def test_prompt_alignment_names_both_image_token_counts(setup):
    model, _, prompts, *_ = setup
    image = model.mllm.config.image_token_id
    ours = [prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist() for i in range(len(prompts))]
    assert check_prompt_alignment(prompts, ours, image) == 2
    assert check_prompt_alignment(prompts, [None, None], image) == 0
    fewer = list(ours[1])
    fewer.remove(image)
    with pytest.raises(LensError) as err:
        check_prompt_alignment(prompts, [ours[0], fewer], image)
    n = ours[1].count(image)
    assert f"{n - 1} image placeholder tokens where our processor has {n}" in str(err.value)
    assert "rollout_backend=generate" in str(err.value)


# ---------------------------------------------------------------------------- generate against a stand-in engine
class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeEngineModel:
    """The engine's nn.Module as the weight sync sees it: vLLM parameter names, `load_weights` -> loaded names."""

    def __init__(self, names, drop=0):
        self.names, self.drop, self.loads = names, drop, []

    def named_parameters(self):
        return [(n, None) for n in self.names]

    def load_weights(self, weights):
        self.loads.append(list(weights))
        return set(self.names[self.drop :])


class FakeLLM:
    def __init__(self, answers, prompt_ids, eos, drop=0, **kwargs):
        self.kwargs, self.answers, self.prompt_ids, self.eos = kwargs, answers, prompt_ids, set(eos)
        self.model = FakeEngineModel([f"vllm.{i}" for i in range(5)], drop)
        runner = SimpleNamespace(model=self.model)
        worker = SimpleNamespace(model_runner=runner)
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))
        self.calls, self.resets = [], 0

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, requests, sampling_params=None, use_tqdm=True):
        self.calls.append((requests, sampling_params, use_tqdm))
        out = []
        for k, group in enumerate(self.answers):
            completions = []
            for g, ids in enumerate(group):
                ids = list(ids)
                ended = ids[-1] in self.eos
                stop = None
                if ended and g == 1:  # an engine that leaves the stop token out of token_ids
                    stop = ids.pop()
                completions.append(
                    SimpleNamespace(
                        index=g, token_ids=ids, finish_reason="stop" if ended else "length", stop_reason=stop
                    )
                )
            out.append(SimpleNamespace(prompt_token_ids=self.prompt_ids[k], outputs=completions[::-1]))
        return out


def _cfg(**kw):
    values = dict(
        rollout_backend="vllm",
        num_generations=G,
        max_completion_length=MAX_NEW,
        max_prompt_length=500,
        temperature=0.9,
        top_p=0.9,
        top_k=50,
        seed=7,
        vllm_gpu_memory_utilization=0.25,
    )
    return GRPOConfig(**{**values, **kw})


def _engine(setup, prompt_ids=None, drop=0, cfg=None):
    model, processor, prompts, ro, pad, eos = setup
    ours = [prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist() for i in range(len(prompts))]
    made = []

    def factory(**kwargs):
        made.append(FakeLLM(_grouped(_answers(ro, eos)), prompt_ids or ours, eos, drop, **kwargs))
        return made[-1]

    engine = VLLMRollouts(
        cfg or _cfg(),
        model,
        processor,
        torch.device("cpu"),
        llm_factory=factory,
        sampling_params_factory=FakeSamplingParams,
    )
    return engine, made[0]


def test_engine_is_built_from_config_and_processor_files_then_given_the_policy_weights(setup):
    model, processor, *_ = setup
    engine, llm = _engine(setup)
    kw = llm.kwargs
    assert kw["model"] == str(engine.model_dir) and kw["load_format"] == "dummy"
    assert kw["max_model_len"] == 500 + MAX_NEW and kw["gpu_memory_utilization"] == 0.25
    assert kw["limit_mm_per_prompt"]["image"] == 1 and kw["enable_prefix_caching"] is True
    assert kw["dtype"] == "float32" and kw["seed"] == 7 and kw["tensor_parallel_size"] == 1
    config = json.loads((engine.model_dir / "config.json").read_text())
    assert config["model_type"] == model.mllm.config.model_type
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert (engine.model_dir / "tokenizer_config.json").exists()
    assert not list(engine.model_dir.glob("*.safetensors"))  # weights go through the sync, not the disk
    (sent,) = llm.model.loads
    expected = list(model.mllm.named_parameters())
    assert [n for n, _ in sent] == [n for n, _ in expected]
    assert all(torch.equal(t, p) for (_, t), (_, p) in zip(sent, expected)) and llm.resets == 1
    engine.close()
    assert not engine.model_dir.exists()


def test_generate_samples_with_the_configured_parameters_and_returns_the_same_rollout(setup):
    model, processor, prompts, ro, pad, eos = setup
    engine, llm = _engine(setup)
    got = engine.generate(prompts, G)
    _assert_same_rollout(got, ro)  # incl. the answer whose stop token the engine left out
    assert {"generate", "context_sam", "sync_weights"} <= set(got.timings)
    ((requests, params, use_tqdm),) = llm.calls
    assert use_tqdm is False
    assert params.kwargs == dict(n=G, temperature=0.9, top_p=0.9, top_k=50, max_tokens=MAX_NEW, stop_token_ids=eos)
    assert len(requests) == 2
    for i, request in enumerate(requests):
        assert request["prompt"] == build_chat(processor, model.lens_config.prompt, prompts.records[i].expression)
        image = request["multi_modal_data"]["image"]
        assert (image.height, image.width) == tuple(prompts.mllm_sizes[i])


def test_weights_sync_every_call_unless_the_trainer_sets_a_policy_version(setup):
    _, _, prompts, *_ = setup
    engine, llm = _engine(setup)
    engine.generate(prompts, G)
    engine.generate(prompts, G)
    assert len(llm.model.loads) == 3 and llm.resets == 3  # init + one per call
    engine.policy_version = 5
    engine.generate(prompts, G)
    engine.generate(prompts, G)  # same step: no new sync
    assert len(llm.model.loads) == 4
    engine.policy_version = 6
    engine.generate(prompts, G)
    assert len(llm.model.loads) == 5 and llm.resets == 5


def test_top_k_zero_means_no_top_k(setup):
    _, _, prompts, *_ = setup
    engine, llm = _engine(setup, cfg=_cfg(top_k=0))
    engine.generate(prompts, G)
    assert llm.calls[0][1].kwargs["top_k"] == -1


def test_generate_refuses_misaligned_engine_prompts(setup):
    model, _, prompts, *_ = setup
    image = model.mllm.config.image_token_id
    ours = [prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist() for i in range(len(prompts))]
    more = ours[0][:1] + [image] + ours[0][1:]
    engine, _ = _engine(setup, prompt_ids=[more, ours[1]])
    with pytest.raises(LensError, match="image placeholder tokens where our processor has"):
        engine.generate(prompts, G)


def test_weights_the_engine_did_not_take_are_an_error(setup):
    with pytest.raises(LensError, match="kept 2 of its 5 tensors at their dummy values"):
        _engine(setup, drop=2)


def test_compat_released_reads_answers_as_the_released_trainer(setup):
    """`compat: released`: answers that stop on <|endoftext|> are not ended — their padding (up to the longest
    answer) is counted and attended by the mask step; answers ending on <|im_end|> read the same in both settings."""
    model, processor, prompts, ro, pad, eos = setup
    tok = processor.tokenizer
    im_end, endoftext = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    answers = _answers(ro, eos)
    answers = [a[:-1] + [endoftext] if r % 2 and a[-1] == im_end else a for r, a in enumerate(answers)]
    switched = [r for r, a in enumerate(answers) if a[-1] == endoftext]
    width = max(len(a) for a in answers)
    assert switched and any(len(answers[r]) < width for r in switched)  # some of them are padded

    ours = [prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist() for i in range(len(prompts))]

    def run(compat):
        engine = VLLMRollouts(
            _cfg(compat=compat),
            model,
            processor,
            torch.device("cpu"),
            llm_factory=lambda **kw: FakeLLM(_grouped(answers), ours, eos, **kw),
            sampling_params_factory=FakeSamplingParams,
        )
        return engine.generate(prompts, G)

    released, lens = run("released"), run("lens")
    p = released.prompt_length
    for r, answer in enumerate(answers):
        ends = [j for j, t in enumerate(answer) if t == im_end]
        counted = ends[0] + 1 if ends else width  # up to <|im_end|>, else the whole padded row
        assert released.completion_mask[r].tolist() == [1] * counted + [0] * (width - counted), r
        assert released.attention_mask[r, p:].tolist() == released.completion_mask[r].tolist()
        assert lens.completion_mask[r].sum() == len(answer)
        assert lens.attention_mask[r, p:].sum() == len(answer) - (answer[-1] == endoftext)
    assert torch.equal(released.sequences, lens.sequences)
