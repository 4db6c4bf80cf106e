"""save_model / load_model round trips, the Qwen2-VL (LENS-2B) family, SAM2 .pt loading, bad checkpoints."""

import json
import shutil

import pytest
import torch

from lens_model.errors import CheckpointError
from lens_model.model.checkpoint import (
    load_model,
    load_sam2_checkpoint,
    resolve_model_dir,
    save_model,
    state_dict_for_saving,
)
from lens_model.model.sam import build_sam
from lens_model.model.tiny import make_tiny, tiny_lens_config


def test_round_trip_keeps_every_tensor_and_config(tiny_dir, tmp_path):
    model, processor = load_model(tiny_dir)
    model.lens_config.prompt.system_prompt = "custom system prompt"
    save_model(model, tmp_path / "copy", processor=processor)
    again, processor2 = load_model(tmp_path / "copy")
    a, b = state_dict_for_saving(model), state_dict_for_saving(again)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.lens_config == model.lens_config
    assert processor2.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    saved = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert saved["model_type"] == "qwen2_5_vl" and saved["lens"]["num_queries"] == 8
    assert str(tiny_dir) not in (tmp_path / "copy" / "config.json").read_text()  # no path of this machine


def test_make_tiny_is_deterministic_per_seed(tmp_path):
    a = state_dict_for_saving(load_model(make_tiny(tmp_path / "a", seed=3), load_processor=False)[0])
    b = state_dict_for_saving(load_model(make_tiny(tmp_path / "b", seed=3), load_processor=False)[0])
    c = state_dict_for_saving(load_model(make_tiny(tmp_path / "c", seed=4), load_processor=False)[0])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["learnable_query"], c["learnable_query"])


def test_qwen2_vl_family_builds_saves_and_runs_the_context_pass(tmp_path):
    import numpy as np

    from lens_model.inference.pipeline import LensPipeline

    path = make_tiny(tmp_path / "lens2b-tiny", mllm_type="qwen2_vl")
    pipe = LensPipeline.from_pretrained(str(path), device="cpu", max_new_tokens=4)
    assert type(pipe.model.mllm).__name__ == "Qwen2VLForConditionalGeneration"
    result = pipe(np.full((64, 96, 3), 128, np.uint8), "the grey wall")
    assert result.mask.shape == (64, 96)


def test_missing_directory_and_files_are_named(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found: .*nope"):
        resolve_model_dir(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors"):
        load_model(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_model(broken)


def test_unreachable_hub_id_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"could not fetch 'OuyBin/LENS'.*pass the local directory"):
        resolve_model_dir("OuyBin/LENS")


def test_weights_not_matching_the_config_are_rejected(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["lens"]["num_queries"] = 16  # weights were saved with 8 queries
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"context-module weights do not match.*learnable_query"):
        load_model(bad)
    cfg["lens"]["num_queries"] = 8
    cfg["text_config"]["intermediate_size"] = 512  # MLLM shapes differ from the tensors
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="reasoning-model weights do not match config.json shapes"):
        load_model(bad)


def test_invalid_lens_section_is_reported(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["lens"]["num_querys"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown keys in the 'lens' config section: \['num_querys'\]"):
        load_model(bad)


def test_official_sam2_pt_checkpoint_loads_and_ignores_memory_modules(tmp_path):
    config = tiny_lens_config().sam
    source = build_sam(config)
    state = dict(source.state_dict())
    state["memory_attention.layers.0.linear1.weight"] = torch.zeros(2, 2)  # what an official .pt also holds
    state["maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)
    torch.save({"model": state}, tmp_path / "sam2_tiny.pt")
    target = build_sam(config)
    load_sam2_checkpoint(target, tmp_path / "sam2_tiny.pt")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    with pytest.raises(CheckpointError, match="SAM2 checkpoint not found"):
        load_sam2_checkpoint(target, tmp_path / "missing.pt")
    del state["sam_mask_decoder.iou_token.weight"]
    torch.save({"model": state}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing \['sam_mask_decoder.iou_token.weight'\]"):
        load_sam2_checkpoint(target, tmp_path / "partial.pt")
