"""`python -m training.demo`, the demo model's recipe, as a smoke run (--quick: a few steps of every stage):
it writes the report with every metric for every stage, resumes without redoing anything, and ships an fp16
model directory that loads like any LENS checkpoint."""

import json
import os

import numpy as np
import pytest
from safetensors import safe_open

from training.demo import SampleOutcome, main, ship, summarize, write_demo_scene

METRICS = [
    "referred-object accuracy",
    "gIoU",
    "P@0.5",
    "format",
    "expression named",
    "box accuracy (IoU>=0.5)",
    "all-objects mask gIoU (baseline)",
    "chance of picking the referred object",
    "cIoU",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["--out", str(out), "--quick", "--no-progress", "--threads", "1"]) == 0
    return out


def test_quick_run_reports_every_metric_of_every_stage_with_intervals(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    assert list(results["test"]) == ["stage 1a", "stage 1b", "stage 1", "stage 2"]
    for table in results["test"].values():
        assert list(table) == METRICS
        for cell in table.values():
            assert cell["low"] <= cell["value"] <= cell["high"]
    assert {"reward", "reward_format", "reward_box_iou", "reward_segment_iou", "mask_iou"} <= set(
        results["grpo_rewards"]
    )
    report = (quick_run / "report.md").read_text()
    assert all(f"| {m} |" in report for m in METRICS) and "wall time" in report
    rows = json.loads((quick_run / "eval-stage-2.json").read_text())
    assert len(rows) == 8 and all(0.0 <= r["iou"] <= 1.0 for r in rows)


def test_a_rerun_resumes_without_redoing_anything(quick_run):
    before = {p: p.stat().st_mtime_ns for p in quick_run.rglob("model.safetensors")}
    times = (quick_run / "times.json").read_text()
    assert main(["--out", str(quick_run), "--quick", "--no-progress", "--threads", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in quick_run.rglob("model.safetensors")} == before
    assert (quick_run / "times.json").read_text() == times


def test_ship_writes_an_fp16_lens_directory_that_segments_like_the_trained_one(quick_run, tmp_path):
    from lens_model.data.synthetic import make_synthetic
    from lens_model.inference.pipeline import LensPipeline

    dest = tmp_path / "demo-model"
    ship(quick_run / "grpo" / "final", dest)
    with safe_open(dest / "model.safetensors", "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"F16"}
    assert not (dest / "sam2_memory.safetensors").exists()  # untrained memory weights are not shipped
    scene = make_synthetic(tmp_path / "scene", 1, seed=4) / "images" / "synthetic_000000.png"
    full = LensPipeline.from_pretrained(str(quick_run / "grpo" / "final"), device="cpu", max_new_tokens=16)
    half = LensPipeline.from_pretrained(str(dest), device="cpu", max_new_tokens=16)
    a, b = full(scene, "the red circle"), half(scene, "the red circle")
    assert np.mean(a.mask == b.mask) >= 0.99


def test_the_demo_scene_is_a_scene_the_model_got_entirely_right(quick_run, tmp_path):
    """write_demo_scene picks, among test scenes whose every expression was answered right, the one with the most
    objects; with none right it refuses."""
    from training.demo import DemoRecipe, held_out_records

    records = held_out_records(quick_run / "scenes" / "phase-b", DemoRecipe().quick().test_samples)

    def outcome(record, right):
        return SampleOutcome(record.sample_id, 0.9 if right else 0.1, 9, 10, right, True, True, True, 0.5, 3, "")

    with pytest.raises(RuntimeError, match="no test scene"):
        write_demo_scene(records, [outcome(r, False) for r in records], tmp_path)
    images = [r.ids["image_id"] for r in records]
    chosen = max(set(images), key=lambda i: (images.count(i), -i))
    write_demo_scene(records, [outcome(r, r.ids["image_id"] == chosen) for r in records], tmp_path)
    spec = json.loads((tmp_path / "demo-scene.json").read_text())
    wanted = [r for r in records if r.ids["image_id"] == chosen]
    assert [o["expression"] for o in spec["objects"]] == [r.expression for r in wanted]
    assert (tmp_path / "demo-scene.png").read_bytes() == wanted[0].image_path.read_bytes()
    assert summarize([outcome(r, True) for r in records], n_boot=50)["gIoU"]["value"] == pytest.approx(0.9)
