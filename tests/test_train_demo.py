"""`python -m training.demo`, the demo model's recipe, as a smoke run (--quick: a few steps of every phase): it
writes the ablation report with every row and metric, intervals and the logged stage-2 statistics, resumes without
redoing anything, refuses to ship a model that is worse on attribute expressions than the one it replaces, and
ships an fp16 model directory that loads like any LENS checkpoint."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from training.demo import (
    GRPO_LOGGED,
    DemoRecipe,
    SampleOutcome,
    held_out_records,
    main,
    ship,
    summarize,
    tables_of,
    targets,
    write_demo_scene,
)

METRICS = [
    "referred-object accuracy",
    "gIoU",
    "P@0.5",
    "format",
    "object named",
    "mask on the named object",
    "box accuracy (IoU>=0.5)",
    "mask on the anchor (relational)",
    "all-objects mask gIoU (baseline)",
    "chance of picking the referred object",
    "cIoU",
]
ARGS = ["--quick", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["--out", str(out), *ARGS]) == 0
    return out


def test_quick_run_reports_every_row_of_the_ablation_by_kind_with_intervals(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    assert list(results["test"]) == ["stage1", "warmup", "grpo-box", "grpo"]
    for row in results["test"].values():
        assert list(row) == ["all", "attribute", "relational"]
        for kind, table in row.items():
            assert list(table) == METRICS
            for name, cell in table.items():
                if kind == "attribute" and name == "mask on the anchor (relational)":
                    assert np.isnan(cell["value"])  # no anchor in attribute expressions
                elif name == "mask on the named object" and table["object named"]["value"] == 0:
                    assert np.isnan(cell["value"])  # no answer named its object (a few quick steps)
                else:
                    assert cell["low"] <= cell["value"] <= cell["high"], (kind, name)
    assert list(results["sizes"]) == ["128 px", "384 px", "640 × 480"]
    assert list(results["grpo_logs"]) == ["grpo-box", "grpo"]
    assert set(GRPO_LOGGED) - {"reward_segment_iou"} <= set(results["grpo_logs"]["grpo-box"])
    assert set(GRPO_LOGGED) <= set(results["grpo_logs"]["grpo"])
    report = (quick_run / "report.md").read_text()
    for text in ("(a) stage 1 only", "(d) + GRPO", "all-objects mask (baseline)", "chance", "## Targets", "wall time"):
        assert text in report, text
    rows = json.loads((quick_run / "eval-grpo.json").read_text())
    assert len(rows) == 8 and all(0.0 <= r["iou"] <= 1.0 for r in rows)
    assert {r["kind"] for r in rows} <= {"attribute", "relational"}


def test_the_two_grpo_runs_differ_only_in_the_rewards(quick_run):
    import yaml

    box, full = (yaml.safe_load((quick_run / name / "config.yaml").read_text()) for name in ("grpo-box", "grpo"))
    assert box["reward_weights"] == {"format": 1.0, "box_iou": 1.0}
    assert full["reward_weights"] == {"format": 1.0, "box_iou": 1.0, "segment_iou": 1.0}
    assert box["init_from"] == full["init_from"] and box["init_from"].endswith("warmup/final")
    assert box["compat"] == full["compat"] == "lens" and full["num_generations"] >= 4
    assert full["seg_loss_answers"] == "grounded"  # the mask loss only under answers that found the object
    assert {k: v for k, v in box.items() if k not in ("reward_weights", "output_dir")} == {
        k: v for k, v in full.items() if k not in ("reward_weights", "output_dir")
    }
    # relational rationales are taught in the warm-up only; stage 1 teaches attribute expressions' think blocks
    warmup = yaml.safe_load((quick_run / "warmup" / "config.yaml").read_text())
    assert [(d["rationale"], d["rationale_kinds"]) for d in warmup["datasets"]] == [(True, None), (True, None)]
    assert warmup["datasets"][0]["root"].endswith("main") and warmup["datasets"][1]["root"].endswith("rationales")
    stage1 = yaml.safe_load((quick_run / "stage1" / "config.yaml").read_text())
    assert [(d["rationale"], d["rationale_kinds"]) for d in stage1["datasets"]] == [(True, ["attribute"]), (True, None)]
    assert "attribute" in stage1["datasets"][1]["root"]
    assert stage1["grounding_weight"] > 0 and "mllm_language" in stage1["trainable"] and "mllm" not in full["trainable"]


def test_a_rerun_resumes_without_redoing_anything(quick_run):
    before = {p: p.stat().st_mtime_ns for p in quick_run.rglob("model.safetensors")}
    times = (quick_run / "times.json").read_text()
    assert main(["--out", str(quick_run), *ARGS]) == 0
    assert {p: p.stat().st_mtime_ns for p in quick_run.rglob("model.safetensors")} == before
    assert (quick_run / "times.json").read_text() == times


def test_a_phase_stopped_while_saving_resumes_from_its_last_complete_checkpoint(quick_run, caplog, tmp_path):
    """A stop while final/ was being written: the phase is not marked done. The rerun resumes it from its last
    complete checkpoint, writes final/ and marks it done, without touching the phases before it. A checkpoint the
    stop tore (its run file is written last) is passed over."""
    from training.demo import last_complete_checkpoint
    from training.engine import RUN_FILE

    warmup = quick_run / "warmup"
    complete = sorted((warmup / "checkpoints").glob("step-*"))[-1]
    assert last_complete_checkpoint(warmup) == complete
    (warmup / "phase-done.json").unlink()
    shutil.rmtree(warmup / "final")
    stage1 = {p: p.stat().st_mtime_ns for p in (quick_run / "stage1").rglob("model.safetensors")}
    with caplog.at_level(logging.INFO, logger="training.demo"):
        assert main(["--out", str(quick_run), *ARGS]) == 0
    assert f"resuming from {complete}" in caplog.text
    assert (warmup / "phase-done.json").exists() and (warmup / "final" / "model.safetensors").exists()
    assert {p: p.stat().st_mtime_ns for p in (quick_run / "stage1").rglob("model.safetensors")} == stage1

    shutil.copytree(complete, tmp_path / "checkpoints" / complete.name)
    torn = tmp_path / "checkpoints" / "step-0000004"
    shutil.copytree(complete, torn)
    (torn / RUN_FILE).unlink()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoints" / complete.name
    shutil.rmtree(tmp_path / "checkpoints" / complete.name)
    assert last_complete_checkpoint(tmp_path) is None


def test_evaluate_scores_a_phase_checkpoint_by_kind_like_the_recipe_does(quick_run, capsys):
    """--evaluate MODEL_DIR scores one model on the first --samples test expressions, without training: the same
    outcomes as the recipe's own evaluation of that model, a table by kind of expression with chance, and one line
    for a folder that is not a model."""
    model = quick_run / "stage1" / "final"
    assert main(["--out", str(quick_run), *ARGS, "--evaluate", str(model), "--samples", "8"]) == 0
    table = capsys.readouterr().out
    assert "| metric | all | attribute | relational |" in table and "chance of picking the referred object" in table
    [filed] = (quick_run / "checkpoint-evals").glob("stage1-final-*-n8.json")
    assert json.loads(filed.read_text()) == json.loads((quick_run / "eval-stage1.json").read_text())
    # the scores are filed under the weights they came from: the same model trained again is scored afresh
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert main(["--out", str(quick_run), *ARGS, "--evaluate", str(model), "--samples", "8"]) == 0
    assert len(list((quick_run / "checkpoint-evals").glob("stage1-final-*-n8.json"))) == 2
    assert main(["--out", str(quick_run), *ARGS, "--evaluate", str(quick_run / "stage1"), "--samples", "8"]) == 2
    assert "is not a model directory" in capsys.readouterr().err
    assert all(np.isnan(cell["value"]) for cell in summarize([], n_boot=50).values())  # a kind with no expression


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
    assert half.config.mllm_longest_side == 128 and half.config.prompt.answer_format == "think_answer"
    a, b = full(scene, "the red circle"), half(scene, "the red circle")
    assert np.mean(a.mask == b.mask) >= 0.99


def test_ship_is_refused_when_the_new_model_is_worse_on_attribute_expressions(quick_run, tmp_path, capsys):
    """--compare scores another model on the same test split; --ship then refuses when the new model's attribute
    accuracy is below it (here: the quick model against itself passes, a perfect stand-in fails)."""
    same = tmp_path / "same"
    assert (
        main(["--out", str(quick_run), *ARGS, "--compare", str(quick_run / "grpo" / "final"), "--ship", str(same)]) == 0
    )
    assert (same / "README.md").exists() and "## Targets" in (same / "README.md").read_text()
    # its confidence section lists the training prompts' words: exactly those of the train splits it trained on
    from lens_model.data import load_dataset
    from lens_model.model.config import LensConfig

    vocabulary = LensConfig.from_dict(json.loads((same / "config.json").read_text())["lens"]).confidence.vocabulary
    expressions = [r.expression for name in ("attribute", "main", "rationales")
                   for r in load_dataset("synthetic", quick_run / "scenes" / name, "train")]  # fmt: skip
    assert set(vocabulary) == {w for e in expressions for w in e.lower().split()}
    assert {"shape", "left", "above", "red", "circle"} <= set(vocabulary) and "purple" not in vocabulary
    rows = json.loads((quick_run / "eval-compare.json").read_text())
    for row in rows:
        row["referred"] = True  # a compared model that gets every expression right
    (quick_run / "eval-compare.json").write_text(json.dumps(rows))
    better = tmp_path / "better"
    assert (
        main(["--out", str(quick_run), *ARGS, "--compare", str(quick_run / "grpo" / "final"), "--ship", str(better)])
        == 1
    )
    assert "not shipped: attribute referred-object accuracy" in capsys.readouterr().err and not better.exists()


def _outcome(record, right, kind=None):
    return SampleOutcome(
        record.sample_id, kind or record.annotations["kind"], 0.9 if right else 0.1, 9, 10, right, False, True,
        True, True, 0.5, 3, "",
    )  # fmt: skip


def test_mask_on_the_named_object_counts_only_answers_that_name_the_referred_object():
    """Referred-object accuracy splits into the MLLM's part (the answer names the object) and the mask path's (its
    mask is the object it named): 3 of 4 answers name the object, 2 of those 3 masks are it, plus one lucky mask."""

    def outcome(named, referred):
        return SampleOutcome("0/0", "attribute", 0.5, 1, 2, referred, False, True, named, True, 0.3, 3, "")

    rows = [outcome(True, True), outcome(True, True), outcome(True, False), outcome(False, True)]
    table = summarize(rows, n_boot=50)
    assert table["object named"]["value"] == pytest.approx(0.75)
    assert table["mask on the named object"]["value"] == pytest.approx(2 / 3)
    assert table["referred-object accuracy"]["value"] == pytest.approx(0.75)
    assert np.isnan(summarize([outcome(False, True)], n_boot=50)["mask on the named object"]["value"])


def test_the_demo_scene_is_one_the_model_got_entirely_right_with_a_relational_expression(quick_run, tmp_path):
    """write_demo_scene picks, among test scenes with a relational expression whose every expression was answered
    right, the one with the most expressions, and records each expression's kind, object and anchor; with none it
    refuses."""
    records = held_out_records(quick_run / "scenes" / "main", DemoRecipe().quick().test_samples)
    with pytest.raises(RuntimeError, match="no test scene"):
        write_demo_scene(records, [_outcome(r, False) for r in records], tmp_path)
    with pytest.raises(RuntimeError, match="no test scene"):  # right, but attribute expressions only
        write_demo_scene(records, [_outcome(r, True, "attribute") for r in records], tmp_path)
    images = [r.ids["image_id"] for r in records if r.annotations["kind"] == "relational"]
    chosen = max(set(images), key=lambda i: (images.count(i), -i))
    write_demo_scene(records, [_outcome(r, r.ids["image_id"] == chosen) for r in records], tmp_path)
    spec = json.loads((tmp_path / "demo-scene.json").read_text())
    wanted = [r for r in records if r.ids["image_id"] == chosen]
    assert [o["expression"] for o in spec["objects"]] == [r.expression for r in wanted]
    assert [o["kind"] for o in spec["objects"]] == [r.annotations["kind"] for r in wanted]
    assert all(("anchor_segmentation" in o) == (o["kind"] == "relational") for o in spec["objects"])
    assert (tmp_path / "demo-scene.png").read_bytes() == wanted[0].image_path.read_bytes()
    assert summarize([_outcome(r, True) for r in records], n_boot=50)["gIoU"]["value"] == pytest.approx(0.9)


def test_targets_say_which_are_met(quick_run):
    """The targets table compares the numbers with the issue's thresholds, e.g. stage 2's gain needs both the size
    and intervals that do not overlap."""
    records = held_out_records(quick_run / "scenes" / "main", DemoRecipe().quick().test_samples)

    def row(p_attribute, p_relational, n=200):
        outcomes = [
            _outcome(r, right, kind)
            for kind, p in (("attribute", p_attribute), ("relational", p_relational))
            for right in [True] * int(n * p) + [False] * (n - int(n * p))
            for r in records[:1]
        ]
        return tables_of(outcomes, 200)

    tables = {"warmup": row(0.96, 0.60), "grpo": row(0.96, 0.85), "stage1": row(0.9, 0.3), "grpo-box": row(1, 1)}
    met = {t: ok for t, _, ok in targets(tables, {"128 px": tables["grpo"]["all"]})}
    assert met["relational referred-object accuracy >= 0.80"]
    assert met["attribute referred-object accuracy >= 0.95 (colours repeat)"]
    assert met["stage 2 adds >= 0.10 relational accuracy over (b), intervals apart"]
    tables["grpo"] = row(0.94, 0.68)
    met = {t: ok for t, _, ok in targets(tables, {"128 px": tables["grpo"]["all"]})}
    assert not met["relational referred-object accuracy >= 0.80"]
    assert not met["attribute referred-object accuracy >= 0.95 (colours repeat)"]
    assert not met["stage 2 adds >= 0.10 relational accuracy over (b), intervals apart"]  # +0.08
