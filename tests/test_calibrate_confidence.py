"""scripts/calibrate_confidence.py, which makes the calibration tables of docs/design.md ("When a result is
meaningless"): its ROC areas against the rank-sum closed form, the threshold it picks (highest Youden's J, the
lowest of equals), the fractions it reports, and a rerun on collected samples that re-makes the report and, with
--write, stores the thresholds where the pipeline reads them. The collection itself (scenes, photo crops, the demo
model on each prompt) takes minutes; it is run by the script's users, not here."""

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "assets" / "demo-model"


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("calibrate_confidence", REPO / "scripts" / "calibrate_confidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rank_sum_auc(positive, negative) -> float:
    """Mann-Whitney: (rank sum of the positives - n_p (n_p + 1) / 2) / (n_p n_n), ties at their mean rank."""
    values = np.concatenate([positive, negative]).astype(float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    n_p, n_n = len(positive), len(negative)
    return float((ranks[:n_p].sum() - n_p * (n_p + 1) / 2) / (n_p * n_n))


def test_auc_is_the_rank_sum_statistic(calibrate):
    rng = np.random.default_rng(0)
    positive, negative = rng.integers(0, 6, 37), rng.integers(0, 6, 23) - 1  # many ties, unequal sizes
    assert calibrate.auc(positive, negative) == pytest.approx(_rank_sum_auc(positive, negative), abs=1e-12)
    assert calibrate.auc([2, 3], [0, 1]) == 1.0 and calibrate.auc([0, 1], [2, 3]) == 0.0
    assert calibrate.auc([1, 1], [1, 1]) == 0.5


def _row(kind, stability, iou=None, named=True):
    return dict(
        set=kind,
        iou=iou,
        format_ok=True,
        named=named,
        mask_fraction=0.05,
        stability=stability,
        score=0.5,
        object_score=0,
    )


def _rows():
    """Right in-scene answers at stability 0.8 (one wrong at 0.3), absent colours at 0.1, absent shapes at 0.9 (as
    crisp as right answers), photos at 0.62, one photo answer naming another object. Youden's J over the grid:
    0.5-0.6 -> 1 + (1 + 0 + 0.25) / 3 - 1, 0.65-0.8 -> 1 + (1 + 0 + 1) / 3 - 1 (the plateau), >= 0.85 -> right lost."""
    return (
        [_row("in scene", 0.8, iou=0.9) for _ in range(6)]
        + [_row("in scene", 0.3, iou=0.1)]
        + [_row("absent colour", 0.1) for _ in range(4)]
        + [_row("absent shape", 0.9) for _ in range(4)]
        + [_row("photo", 0.62) for _ in range(3)]
        + [_row("photo", 0.95, named=False)]
    )


def test_the_threshold_is_the_lowest_with_the_highest_youden_j(calibrate):
    from lens_model.model.config import ConfidenceConfig

    base = ConfidenceConfig()
    chosen = calibrate.choose(_rows(), base)
    assert chosen == dataclasses.replace(base, min_stability=0.65)  # the plateau 0.65-0.8 starts at 0.65
    rates = calibrate.rates(_rows(), chosen)
    assert rates == {"right": 1.0, "wrong": 1.0, "absent colour": 1.0, "absent shape": 0.0, "photo": 1.0}
    assert calibrate.youden(rates) == pytest.approx(2 / 3)
    low = calibrate.rates(_rows(), dataclasses.replace(base, min_stability=0.6))
    assert low["photo"] == 0.25 and calibrate.youden(low) == pytest.approx(0.25 / 3 + 1 / 3)


def test_a_rerun_remakes_the_report_and_write_stores_the_thresholds(calibrate, tmp_path, capsys):
    """Collected samples are reused (nothing is run again); the report has the AUC, threshold, outcome and ablation
    tables; --write puts the chosen thresholds into the model's config.json, which the pipeline then uses."""
    from lens_model.inference.pipeline import LensPipeline

    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(DEMO_MODEL, model)
    out.mkdir()
    for draw in ("calibration", "evaluation"):
        (out / f"samples-{draw}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    assert calibrate.main(["--model", str(model), "--out", str(out), "--write"]) == 0
    report = (out / "report.md").read_text()
    assert report.strip() in capsys.readouterr().out
    assert "| stability | 1.00 | 0.00 | 0.64 |" in report  # in-scene stability vs each set: 18 of 28 pairs vs photos
    assert "Chosen (highest J): " in report and "min_stability 0.65," in report
    assert "| absent shape: flagged | 4 | 0.000 [0.000, 0.000] |" in report
    assert "| all mismatched pairs: flagged | 12 | 0.667" in report
    assert "| stability only | 1.000 | 1.000 | 1.000 | 0.000 | 0.750 |" in report
    assert sorted(p.name for p in out.iterdir()) == [
        "report.md",
        "samples-calibration.jsonl",
        "samples-evaluation.jsonl",
    ]
    assert json.loads((model / "config.json").read_text())["lens"]["confidence"]["min_stability"] == 0.65
    assert LensPipeline.from_pretrained(str(model), device="cpu").confidence.min_stability == 0.65


def test_the_draws_are_the_demo_recipes_scenes_with_both_kinds_of_expression(calibrate, tmp_path):
    """draw_scenes renders fresh scenes of the recipe's main kind from the draw's seed: every split's records,
    attribute and relational expressions, colours repeating within a scene."""
    from training.demo import expression_kind

    records = calibrate.draw_scenes(tmp_path, "calibration", 10, calibrate.DRAW_SEEDS["calibration"])
    assert {r.image_path.parent for r in records} == {tmp_path / "scenes" / "calibration" / "images"}
    assert len({r.image_path for r in records}) == 10
    assert {expression_kind(r) for r in records} == {"attribute", "relational"}
    colours = [[o["color"] for o in objs] for objs in calibrate.scene_objects(records).values()]
    assert any(len(set(c)) < len(c) for c in colours)  # colour alone does not decide
