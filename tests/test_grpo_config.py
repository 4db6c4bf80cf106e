"""The shipped stage-2 recipe (training/configs/grpo.yaml) and GRPOConfig's validation."""

import pytest
from conftest import REPO

from training.config import ConfigError, DatasetSpec, GRPOConfig, dump_config, load_config

GRPO_YAML = REPO / "training" / "configs" / "grpo.yaml"


def test_shipped_recipe_loads_with_the_paper_and_released_values():
    cfg = load_config(GRPOConfig, GRPO_YAML, [])
    # model: stage-1 output, trained parts of the released script
    assert cfg.init_from == "runs/align/final" and cfg.reference is None
    assert sorted(cfg.trainable) == ["context", "mllm", "sam_decoder", "sam_prompt_encoder"]
    assert cfg.datasets == [DatasetSpec(n, "datasets") for n in ("refcoco", "refcoco+", "refcocog")]
    # rollouts (Table A2, released sampling)
    assert cfg.num_generations == 8
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (0.9, 0.9, 50)
    assert (cfg.max_prompt_length, cfg.max_completion_length) == (2048, 768)
    # rewards and objective
    assert cfg.reward_weights == {"format": 1.0, "box_iou": 1.0, "segment_iou": 1.0}
    assert cfg.beta == 0.04 and cfg.num_iterations == 1 and cfg.loss_aggregation == "sequence"
    assert cfg.advantage_eps == 1e-4
    assert cfg.seg_loss_answers == "all"  # every answer's mask, as in the paper
    assert cfg.seg_loss_weight == 1.0 and cfg.pixel_loss == "bce" and cfg.dice_weight == cfg.pixel_weight == 1.0
    # optimisation
    assert cfg.global_batch_size == 64 and cfg.epochs == 16.0 and cfg.seed == 42
    assert cfg.lr == 3e-6 and cfg.lr_scheduler == "linear" and cfg.warmup_steps == 0 and cfg.min_lr_ratio == 0.0
    # engine
    assert cfg.zero_stage == 3 and cfg.precision == "bf16" and cfg.gradient_checkpointing is True


def test_shipped_recipe_round_trips_and_takes_overrides(tmp_path):
    cfg = load_config(GRPOConfig, GRPO_YAML, [])
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(GRPOConfig, path, []) == cfg
    released = load_config(GRPOConfig, GRPO_YAML, ["reward_weights={box_iou: 1.0, segment_iou: 1.0}", "lr=1e-6"])
    assert released.reward_weights == {"box_iou": 1.0, "segment_iou": 1.0} and released.lr == 1e-6


@pytest.mark.parametrize(
    "override, key",
    [
        ("num_generations=1", "num_generations"),
        ("rollout_backend=sglang", "rollout_backend"),
        ("top_p=0", "top_p"),
        ("seg_loss_answers=best", "seg_loss_answers"),
        ("trainable=[context,sam_image_encoder]", "trainable"),  # masks reuse the rollout's image features
    ],
)
def test_invalid_values_are_rejected(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(GRPOConfig, GRPO_YAML, [override])
    assert key in str(e.value)
    assert e.value.key == key


def test_invalid_values_are_rejected_by_the_dataclass():
    with pytest.raises(ConfigError, match="num_generations"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ConfigError, match="rollout_backend"):
        GRPOConfig(rollout_backend="sglang")
    with pytest.raises(ConfigError, match="top_p"):
        GRPOConfig(top_p=0.0)


def test_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'num_generation'"):
        load_config(GRPOConfig, GRPO_YAML, ["num_generation=4"])
    path = tmp_path / "typo.yaml"
    path.write_text(GRPO_YAML.read_text() + "kl_beta: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'kl_beta'"):
        load_config(GRPOConfig, path, [])


def test_a_mapping_in_the_file_replaces_the_default_one(tmp_path):
    path = tmp_path / "released.yaml"
    path.write_text("reward_weights: {box_iou: 1.0, segment_iou: 2.0}\n")  # the released run: no format reward
    assert load_config(GRPOConfig, path, []).reward_weights == {"box_iou": 1.0, "segment_iou": 2.0}
    # a single key of the mapping is set on the default ones
    assert load_config(GRPOConfig, None, ["reward_weights.format=0.5"]).reward_weights == {
        "format": 0.5,
        "box_iou": 1.0,
        "segment_iou": 1.0,
    }


def test_stage_defaults_differ_where_the_recipes_do():
    from training.config import AlignConfig

    align, grpo = AlignConfig(), GRPOConfig()
    assert (align.lr, align.lr_scheduler, align.warmup_steps, align.context_pass) == (3e-5, "cosine", 150, "official")
    assert (grpo.lr, grpo.lr_scheduler, grpo.warmup_steps, grpo.context_pass) == (3e-6, "linear", 0, None)
    assert align.trainable == ["context"] and sorted(grpo.trainable) == sorted(
        ["context", "mllm", "sam_decoder", "sam_prompt_encoder"]
    )
    assert not hasattr(grpo, "num_workers")  # stage 2 reads its samples in the step itself (no DataLoader)
