"""training.config: YAML + overrides -> dataclasses, error messages, batch derivation, LR schedule."""

import math
from dataclasses import dataclass, field

import pytest
from conftest import REPO

from lens_model.errors import LensError
from training.config import (
    AlignConfig,
    ConfigError,
    DatasetSpec,
    derive_batch,
    dump_config,
    load_config,
    total_steps,
)
from training.schedule import lr_at

ALIGN_YAML = REPO / "training" / "configs" / "align.yaml"


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(AlignConfig, path, list(overrides))
    return str(e.value)


# ---------------------------------------------------------------------------------------------- loading
def test_defaults_without_a_file():
    cfg = load_config(AlignConfig, None, [])
    assert cfg == AlignConfig()
    assert [d.name for d in cfg.datasets] == ["refcoco", "refcoco+", "refcocog"]
    assert cfg.trainable == ["context"] and cfg.adam_betas == (0.9, 0.999)


def test_yaml_and_overrides_build_nested_values(tmp_path):
    path = _write(
        tmp_path,
        """
lr: 1e-4            # YAML 1.1 would read this as a string
epochs: 3           # int -> float
adam_betas: [0.8, 0.95]
datasets:
  - {name: refcoco, root: /a}
  - {name: refcocog, root: /a, split: train, ratio: 2}
""",
    )
    cfg = load_config(
        AlignConfig,
        path,
        [
            "datasets.1.root=/data",
            "trainable=[context,mllm]",
            "max_steps=100",
            "val_dataset.name=refcocog",
            "val_dataset.root=/v",
            "val_dataset.split=val",
            "output_dir=2024",
            "per_device_batch_size=null",
            "gradient_checkpointing=false",
        ],
    )
    assert cfg.lr == 1e-4 and isinstance(cfg.epochs, float) and cfg.epochs == 3.0
    assert cfg.adam_betas == (0.8, 0.95)
    assert cfg.datasets == [DatasetSpec("refcoco", "/a"), DatasetSpec("refcocog", "/data", "train", 2.0)]
    assert cfg.val_dataset == DatasetSpec("refcocog", "/v", "val")
    assert cfg.trainable == ["context", "mllm"] and cfg.max_steps == 100
    assert cfg.output_dir == "2024"  # a str field keeps the text as typed
    assert cfg.per_device_batch_size is None and cfg.gradient_checkpointing is False


def test_override_into_a_default_list_and_later_overrides_win():
    cfg = load_config(AlignConfig, None, ["datasets.2.root=/x", "lr=1", "lr=2.5e-5"])
    assert [d.root for d in cfg.datasets] == ["datasets", "datasets", "/x"]
    assert cfg.lr == 2.5e-5


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(AlignConfig, _write(tmp_path, "# nothing\n"), []) == AlignConfig()


def test_round_trip(tmp_path):
    cfg = load_config(
        AlignConfig,
        None,
        [
            "lr=3e-5",
            "val_dataset={name: refcoco, root: /d, split: val}",
            "output_dir=1e-4",
            "init_from=runs/x",
            "adam_betas=[0.9, 0.95]",
        ],
    )
    again = load_config(AlignConfig, _write(tmp_path, dump_config(cfg)), [])
    assert again == cfg and again.output_dir == "1e-4"


# ---------------------------------------------------------------------------------------------- errors
def test_config_error_is_a_lens_error():
    assert issubclass(ConfigError, LensError)


def test_missing_file_names_the_path(tmp_path):
    assert str(tmp_path / "nope.yaml") in _error(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = _write(tmp_path, "lr: 1\nseed: [1, 2\nepochs: 3\n")
    msg = _error(path)
    assert str(path) in msg and "invalid YAML" in msg
    assert f"{path}:3:" in msg or f"{path}:4:" in msg  # the unclosed flow list is detected on the next lines


def test_top_level_must_be_a_mapping(tmp_path):
    assert "mapping" in _error(_write(tmp_path, "- 1\n- 2\n"))


def test_unknown_key_in_file_suggests_close_match(tmp_path):
    path = _write(tmp_path, "learning_rate: 1e-4\n")
    msg = _error(path)
    assert "unknown config key 'learning_rate'; did you mean: lr?" in msg and str(path) in msg


def test_unknown_nested_key_in_file(tmp_path):
    path = _write(tmp_path, "datasets:\n  - {name: refcoco, root: /d, ratoi: 2}\n")
    msg = _error(path)
    assert "unknown config key 'datasets.0.ratoi'; did you mean: datasets.0.ratio?" in msg and str(path) in msg


def test_unknown_keys_in_overrides():
    msg = _error(None, ["warmup=10"])
    assert "unknown config key 'warmup'; did you mean: warmup_steps?" in msg and "override 'warmup=10'" in msg
    msg = _error(None, ["datasets.0.rot=/x"])
    assert "unknown config key 'datasets.0.rot'; did you mean: datasets.0.root?" in msg
    assert "valid keys" in _error(None, ["zzzzzz=1"])


def test_override_without_equals_and_bad_paths():
    assert "not key=value" in _error(None, ["lr"])
    assert "index must be 0..2" in _error(None, ["datasets.3.root=/x"])
    assert "no sub-key" in _error(None, ["lr.x=1"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("lr=fast", "lr: expected float, got 'fast'"),
        ("num_queries=6.5", "num_queries: expected int, got 6.5"),
        ("gradient_checkpointing=1", "gradient_checkpointing: expected bool, got 1"),
        ("per_device_batch_size=many", "per_device_batch_size: expected int or null, got 'many'"),
        ("adam_betas=[0.9]", "adam_betas: expected tuple[float, float] (2 items)"),
        ("trainable=context", "trainable: expected list[str], got 'context'"),
        ("datasets.0.ratio=x", "datasets.0.ratio: expected float, got 'x'"),
        ("val_dataset=5", "val_dataset: expected mapping (DatasetSpec) or null, got 5"),
        ("lr=null", "lr: expected float, got null"),
    ],
)
def test_type_errors_name_key_type_and_value(override, expected):
    msg = _error(None, [override])
    assert expected in msg and f"override {override!r}" in msg


def test_type_error_in_file_names_the_file(tmp_path):
    path = _write(tmp_path, "seed: forty-two\n")
    msg = _error(path)
    assert msg.startswith(f"{path}: ") and "seed: expected int, got 'forty-two'" in msg
    assert load_config(AlignConfig, path, ["seed=1"]).seed == 1  # an override can fix the file


@pytest.mark.parametrize(
    "override, expected",
    [
        ("context_pass=fast", "context_pass: expected one of official, cached"),
        ("trainable=[context,sam]", "trainable: expected one of context, sam_decoder, sam_prompt_encoder, mllm"),
        ("trainable=[]", "trainable: expected at least one of"),
        ("pixel_loss=l2", "pixel_loss: expected one of bce, focal"),
        ("lr_scheduler=step", "lr_scheduler: expected one of cosine, linear, constant"),
        ("precision=int8", "precision: expected one of auto, bf16, fp16, fp32"),
        ("zero_stage=4", "zero_stage: expected one of 0, 1, 2, 3"),
        ("global_batch_size=0", "global_batch_size: expected > 0"),
        ("lr=0", "lr: expected > 0"),
        ("max_steps=0", "max_steps: expected > 0 or null"),
        ("val_samples=-1", "val_samples: expected >= 0"),
        ("datasets.1.name=coco", "datasets.1.name: expected one of refcoco, refcoco+, refcocog, reasonseg"),
        ("datasets.0.ratio=0", "datasets.0.ratio: expected > 0"),
        ("val_dataset.name=refcoco", "val_dataset.root: missing required value"),
        ("lm_weight=-1", "lm_weight: expected >= 0"),
        ("expression_weight=-0.5", "expression_weight: expected >= 0"),
        (
            "lm_weight=0.5",
            "lm_weight: a language-modelling loss trains the MLLM: add mllm or mllm_language to trainable",
        ),
        (
            "grounding_weight=1",
            "grounding_weight: the grounding-attention loss rides on the answer's language-modelling",
        ),
        ("grounding_heads=0", "grounding_heads: expected > 0"),
    ],
)
def test_value_validation_names_key_and_valid_values(override, expected):
    assert expected in _error(None, [override])


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match="name: expected one of"):
        DatasetSpec("coco", "/d")
    with pytest.raises(ConfigError, match="zero_stage"):
        AlignConfig(zero_stage=5)


def test_loader_is_generic():
    @dataclass
    class Inner:
        a: int = 1

    @dataclass
    class Outer:
        inners: list[Inner] = field(default_factory=lambda: [Inner()])
        weights: dict[str, float] = field(default_factory=dict)
        pair: tuple[int, ...] = (1, 2)

    cfg = load_config(Outer, None, ["inners.0.a=5", "weights.box=2", "pair=[3, 4, 5]"])
    assert cfg == Outer([Inner(5)], {"box": 2.0}, (3, 4, 5))


# ---------------------------------------------------------------------------------------------- shipped recipe
def test_shipped_align_yaml_is_the_paper_recipe():
    cfg = load_config(AlignConfig, ALIGN_YAML, [])
    assert cfg.num_queries == 64 and cfg.seed == 42 and cfg.lr == 3e-5 and cfg.lr_scheduler == "cosine"
    assert cfg.warmup_steps == 150 and cfg.epochs == 25 and cfg.zero_stage == 3 and cfg.precision == "bf16"
    assert cfg.max_pixels == 1_000_000 and cfg.gradient_checkpointing and cfg.trainable == ["context"]
    assert cfg.sam_overrides == [] and cfg.sam_checkpoint.endswith("sam2_hiera_large.pt")
    assert [(d.name, d.split) for d in cfg.datasets] == [
        ("refcoco", "train"),
        ("refcoco+", "train"),
        ("refcocog", "train"),
    ]
    assert cfg.global_batch_size == 128  # Table A1
    assert derive_batch(cfg.global_batch_size, 16, cfg.per_device_batch_size) == (8, 1)
    assert derive_batch(1024, 16, 32) == (32, 2)  # the released run: 16 GPUs × 32 × grad-accum 2


# ---------------------------------------------------------------------------------------------- batch
@pytest.mark.parametrize(
    "global_batch, world, per_device, max_per_device, expected",
    [
        (128, 16, None, 32, (8, 1)),
        (1024, 16, 32, 32, (32, 2)),
        (1024, 16, None, 32, (32, 2)),
        (1024, 8, None, 32, (32, 4)),
        (128, 1, None, 32, (32, 4)),
        (128, 1, None, 6, (4, 32)),
        (96, 4, None, 32, (24, 1)),
        (60, 2, None, 8, (6, 5)),
        (7, 1, None, 32, (7, 1)),
        (128, 1, 128, 32, (128, 1)),  # an explicit per-device size may exceed max_per_device
        (64, 2, 4, 32, (4, 8)),
    ],
)
def test_derive_batch(global_batch, world, per_device, max_per_device, expected):
    per, accum = derive_batch(global_batch, world, per_device, max_per_device)
    assert (per, accum) == expected and per * world * accum == global_batch


def test_derive_batch_errors_say_what_works():
    with pytest.raises(ConfigError, match=r"not divisible by the world size 16.*e\.g\. 112 or 128"):
        derive_batch(120, 16, None)
    with pytest.raises(ConfigError, match=r"valid per_device_batch_size: 1, 2, 4, 8"):
        derive_batch(128, 16, 3)
    with pytest.raises(ConfigError, match="positive"):
        derive_batch(128, 0, None)
    with pytest.raises(ConfigError, match="per_device_batch_size"):
        derive_batch(128, 16, 0)


# ---------------------------------------------------------------------------------------------- LR schedule
def _sched(kind, warmup=10, min_lr_ratio=0.0):
    return AlignConfig(lr_scheduler=kind, warmup_steps=warmup, min_lr_ratio=min_lr_ratio)


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_schedule(min_ratio):
    cfg, total = _sched("cosine", 10, min_ratio), 110
    assert lr_at(0, cfg, total) == 0.0
    assert lr_at(5, cfg, total) == pytest.approx(0.5)
    assert lr_at(10, cfg, total) == pytest.approx(1.0)  # warm-up end
    assert lr_at(60, cfg, total) == pytest.approx((1 + min_ratio) / 2)  # midpoint of the decay
    assert lr_at(35, cfg, total) == pytest.approx(min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg, total) == pytest.approx(min_ratio)  # end
    assert lr_at(500, cfg, total) == pytest.approx(min_ratio)  # past the end: stays at the floor


def test_linear_and_constant_schedules():
    lin = _sched("linear", 10, 0.2)
    assert lr_at(10, lin, 110) == pytest.approx(1.0)
    assert lr_at(60, lin, 110) == pytest.approx(0.6)
    assert lr_at(85, lin, 110) == pytest.approx(0.2 + 0.8 * 0.25)
    assert lr_at(110, lin, 110) == pytest.approx(0.2)
    const = _sched("constant", 4)
    assert [lr_at(s, const, 100) for s in (0, 2, 4, 50, 100)] == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_no_warmup_starts_at_full_lr():
    assert lr_at(0, _sched("cosine", 0), 100) == 1.0


def test_total_steps():
    cfg = AlignConfig(global_batch_size=128, epochs=2.5)
    assert total_steps(cfg, 1000) == math.ceil(2.5 * 1000 / 128)
    assert total_steps(AlignConfig(max_steps=7), 10**6) == 7
