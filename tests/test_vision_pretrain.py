"""Stage 0 of the demo model (training/vision_pretrain.py): each merged token's labels are the object under it, read
off non-square scenes; a short run teaches the vision encoder colour and position (far above chance), changes only
the vision weights, and scenes without object colours are refused with a clear line."""

import json

import numpy as np
import pytest
import torch

from lens_model.data.synthetic import COLORS, SHAPES, SIZES, make_synthetic
from lens_model.model.checkpoint import load_model
from lens_model.model.tiny import make_tiny
from training.vision_pretrain import VisionPretrainConfig, load_scene_labels, main, train

HW = (96, 160)  # (H, W) of the scenes: wide, resized by the model to 84 x 140 (3 x 5 merged tokens)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vision-pretrain")
    scenes = make_synthetic(tmp / "scenes", 120, seed=1, task="reasoning", min_objects=3, max_objects=4,
                            image_size=HW, object_scale=1.1, background="texture")  # fmt: skip
    model = make_tiny(tmp / "tiny", sam_image_size=64, mllm_longest_side=140, absolute_positions=True, rope_theta=10)
    return tmp, scenes, model


def test_each_objects_centre_token_carries_its_colour_shape_size_and_centre(world):
    _, scenes, model = world
    lens, processor = load_model(model)
    data = json.loads((scenes / "synthetic" / "instances.json").read_text())
    categories = {c["id"]: c["name"] for c in data["categories"]}
    items = load_scene_labels(scenes, "train", lens.lens_config, processor, limit=10)
    train_ids = [im["id"] for im in sorted(data["images"], key=lambda im: im["id"]) if (im["id"] - 1) % 10 < 8][:10]
    rows, cols = 3, 5  # 84 x 140 px in 28-px merge blocks
    checked = 0
    for item, image_id in zip(items, train_ids):
        assert item.grid_thw.tolist() == [[1, rows * 2, cols * 2]] and item.shape.shape == (rows * cols,)
        for ann in (a for a in data["annotations"] if a["image_id"] == image_id):
            x, y, w, h = ann["bbox"]
            cx, cy = (x + w / 2) / HW[1], (y + h / 2) / HW[0]
            if max(w / HW[1], h / HW[0]) < 0.25:
                continue  # a small object may cover less than COVER_THRESHOLD (training.grounding) of every token
            t = int(cy * rows) * cols + int(cx * cols)
            assert item.color[t] == list(COLORS).index(ann["color"]) + 1
            assert item.shape[t] == SHAPES.index(categories[ann["category_id"]]) + 1
            assert item.size[t] == list(SIZES).index(ann["size"]) + 1
            np.testing.assert_allclose(item.centre[t].numpy(), [cx, cy], atol=1e-6)
            checked += 1
        t = np.arange(rows * cols)  # row-major: token t is row t // cols, column t % cols
        np.testing.assert_allclose(
            item.position.numpy(), np.stack([(t % cols + 0.5) / cols, (t // cols + 0.5) / rows], 1)
        )
        assert ((item.shape == 0) == (item.color == 0)).all() and (item.centre[item.shape == 0] == 0).all()
    assert checked >= 5


def test_a_short_run_teaches_colour_and_position_and_changes_only_the_vision_encoder(world):
    tmp, scenes, model = world
    torch.set_num_threads(1)
    metrics = train(VisionPretrainConfig(model, [scenes], tmp / "run", steps=200, progress=False))
    assert metrics["color accuracy"] >= 0.8, metrics  # chance 1/4 on object tokens
    assert metrics["position |error|"] <= 0.08, metrics  # a constant guess of the middle: 0.25
    assert json.loads((tmp / "run" / "metrics.json").read_text()) == metrics
    before, _ = load_model(model)
    after, _ = load_model(tmp / "run" / "final")
    old, new = before.state_dict(), after.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("mllm.model.visual.") for k in changed), sorted(changed)[:5]
    assert after.lens_config.mllm_absolute_positions
    rows = [json.loads(line) for line in (tmp / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 200 and rows[-1]["color"] < rows[0]["color"]


def test_scenes_without_object_colours_are_refused(world, capsys):
    tmp, scenes, model = world
    old = tmp / "old-scenes"
    (old / "synthetic").mkdir(parents=True)
    (old / "images").symlink_to(scenes / "images")
    data = json.loads((scenes / "synthetic" / "instances.json").read_text())
    for ann in data["annotations"]:
        del ann["color"]
    (old / "synthetic" / "instances.json").write_text(json.dumps(data))
    assert main(["--model", str(model), "--scenes", str(old), "--out", str(tmp / "refused"), "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "instances.json" in errors[0] and "'color'" in errors[0], errors
    assert "make-synthetic" in errors[0]
    assert not (tmp / "refused" / "final").exists()
