"""`lens eval` on synthetic scenes with the tiny model: numbers, sharding, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from lens_cli import main
from lens_model.data import load_dataset
from lens_model.inference.pipeline import LensPipeline

LIMIT = 8


@pytest.fixture(scope="module")
def tiny_dir(tiny_grounding_dir):
    """The grounding tiny model: answers with boxes that depend on the input, so box numbers are not all 0 and
    rows differ between samples."""
    return tiny_grounding_dir


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from lens_model.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synthetic") / "scenes", n_images=12, seed=0)


def _eval_args(tiny_dir, root, out, *extra):
    return [
        "eval",
        "--model",
        str(tiny_dir),
        "--dataset",
        "synthetic",
        "--data-root",
        str(root),
        "--split",
        "train",
        "--limit",
        str(LIMIT),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *map(str, extra),
    ]


def _rows(out):
    rows = []
    for path in sorted(out.glob("samples-rank*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@contextmanager
def one_thread():
    """Every run compared below uses one thread (the sharded processes get OMP_NUM_THREADS=1): the same float
    summation order, so the same masks to the pixel (the grounding model's answers move its masks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


NUMBERS = ("n", "gIoU", "cIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "box_acc")


@pytest.fixture(scope="module")
def single_run(tiny_dir, synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "single"
    with one_thread():
        assert main(_eval_args(tiny_dir, synthetic_root, out, "--save-vis", 2)) == 0
    return out, json.loads((out / "results.json").read_text())


def test_eval_writes_per_sample_rows_and_exact_split_numbers(single_run, capsys):
    out, results = single_run
    rows = _rows(out)
    assert results["n"] == len(rows) == LIMIT and results["failed"] == 0
    assert len({r["sample_id"] for r in rows}) == LIMIT
    # recompute the protocol's numbers from the streamed per-sample intersections and unions
    ious = [r["intersection"] / (r["union"] + 1e-5) if r["union"] else 1.0 for r in rows]
    assert results["gIoU"] == pytest.approx(sum(ious) / len(ious), abs=1e-12)
    assert results["cIoU"] == pytest.approx(
        sum(r["intersection"] for r in rows) / (sum(r["union"] for r in rows) + 1e-8), abs=1e-12
    )
    assert all(0 <= r["intersection"] <= min(r["gt_pixels"], r["pred_pixels"]) for r in rows)
    assert len(list((out / "vis").glob("*.png"))) == 2
    assert results["dataset"] == "synthetic" and results["split"] == "train"


def _box_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _check_rows_against_records_and_pipeline(tiny_dir, rows, records, recompute):
    """Each row's GT numbers come from its record's own mask and box; for the samples in `recompute`, I and U are
    recomputed from a fresh pipeline run (the released protocol: max_length 768, greedy)."""
    by_id = {r.sample_id: r for r in records}
    for row in rows:
        record = by_id[row["sample_id"]]
        gt = record.mask()
        assert row["gt_pixels"] == int(gt.sum()) > 0, row["sample_id"]
        assert row["gt_box"] == pytest.approx(list(record.box), abs=0.006)
        if row["pred_box"] is not None:
            assert row["box_iou"] == pytest.approx(_box_iou(row["pred_box"], row["gt_box"]), abs=1e-3)
    pipe = LensPipeline.from_pretrained(str(tiny_dir), device="cpu")
    if "reason" in records[0].dataset:
        from lens_model.eval.evaluate import REASONSEG_MLLM_LONGEST_SIDE

        pipe.mllm_longest_side = REASONSEG_MLLM_LONGEST_SIDE
    for row in [r for r in rows if r["sample_id"] in recompute]:
        record = by_id[row["sample_id"]]
        with one_thread():
            (result,) = pipe.segment_batch([record.image_path], [record.expression], [0], max_length=768)
        gt = record.mask()
        assert row["text"] == result.text
        assert (row["intersection"], row["union"]) == (int((result.mask & gt).sum()), int((result.mask | gt).sum()))
        assert row["pred_pixels"] == int(result.mask.sum())


def test_eval_rows_match_the_records_and_the_pipeline(tiny_dir, synthetic_root, single_run):
    out, results = single_run
    rows = _rows(out)
    records = load_dataset("synthetic", synthetic_root, "train")
    assert any(r["pred_box"] is not None for r in rows) and len({r["text"] for r in rows}) >= 3
    _check_rows_against_records_and_pipeline(tiny_dir, rows, records, {rows[0]["sample_id"], rows[-1]["sample_id"]})


@pytest.fixture(scope="module")
def large_targets_root(tmp_path_factory):
    """ReasonSeg-layout val split whose targets fill much of the image: the grounding tiny model's boxes (corners
    in [0, 90] and [100, 190] of the MLLM image) hit some of them (box IoU >= 0.5) and miss others."""
    root = tmp_path_factory.mktemp("reasonseg")
    split = root / "val"
    split.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(split / f"scene{k}.png")
        x0, y0 = (int(v) for v in rng.integers(0, 30, 2))
        x1, y1 = (int(v) for v in rng.integers(80, 127, 2))
        shape = {"label": "target", "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}
        anno = {"text": [f"the large block number {k}"], "is_sentence": False, "shapes": [shape]}
        (split / f"scene{k}.json").write_text(json.dumps(anno))
    return root


def test_box_accuracy_and_rows_on_large_targets(tiny_dir, large_targets_root, tmp_path):
    out = tmp_path / "large"
    args = _eval_args(tiny_dir, large_targets_root, out)
    args[args.index("synthetic")] = "reasonseg"
    args[args.index("train")] = "val"
    with one_thread():
        assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    rows = _rows(out)
    assert results["n"] == len(rows) == 6
    hits = [r["pred_box"] is not None and _box_iou(r["pred_box"], r["gt_box"]) >= 0.5 for r in rows]
    assert 0 < sum(hits) < len(rows), [(r["pred_box"], r["gt_box"]) for r in rows]
    assert results["box_acc"] == pytest.approx(sum(hits) / len(rows))
    records = load_dataset("reasonseg", large_targets_root, "val")
    _check_rows_against_records_and_pipeline(tiny_dir, rows, records, {rows[0]["sample_id"]})


@pytest.fixture(scope="module")
def mixed_sizes_root(tmp_path_factory):
    """ReasonSeg-layout val split of 8 different noise images, one sample each, alternating between a 192 × 256 image
    whose target is nearly all of it and a 64 × 80 image whose target is a 12-pixel square: every batch mixes images
    of different sizes, and the model's masks (about 60 % of any image) overlap the large targets far more than the
    small ones, whose pixels count little when pooled, so the mean of per-sample IoUs (gIoU) and the pooled IoU
    (cIoU) differ clearly."""
    root = tmp_path_factory.mktemp("mixed")
    split = root / "val"
    split.mkdir()
    rng = np.random.default_rng(1)
    for k in range(8):
        (h, w), large = ((192, 256), True) if k % 2 == 0 else ((64, 80), False)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(split / f"scene{k}.png")
        if large:
            x0, y0, x1, y1 = 2, 2, w - 2, h - 2
        else:
            x0, y0 = int(rng.integers(4, w - 16)), int(rng.integers(4, h - 16))
            x1, y1 = x0 + 12, y0 + 12
        shape = {"label": "target", "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}
        anno = {"text": [f"block number {k}"], "is_sentence": False, "shapes": [shape]}
        (split / f"scene{k}.json").write_text(json.dumps(anno))
    return root


def _mixed_eval(tiny_dir, root, out, *extra):
    args = _eval_args(tiny_dir, root, out, *extra)
    args[args.index("synthetic")] = "reasonseg"
    args[args.index("train")] = "val"
    with one_thread():
        assert main(args) == 0
    return json.loads((out / "results.json").read_text()), {r["sample_id"]: r for r in _rows(out)}


def test_batched_eval_gives_each_prompt_its_own_image_and_keeps_giou_apart_from_ciou(
    tiny_dir, mixed_sizes_root, tmp_path
):
    """`lens eval --batch-size 4` over samples of 8 different images gives every sample the row an unbatched run
    gives it (answer text, and the mask within 1 % IoU: left padding changes the float summation order only), and
    both runs report gIoU as the mean of the rows' IoUs and cIoU as their pooled IoU — on a split where the two
    differ by more than 0.1, so that reporting one as the other fails."""
    single, single_rows = _mixed_eval(tiny_dir, mixed_sizes_root, tmp_path / "single")
    batched, batched_rows = _mixed_eval(tiny_dir, mixed_sizes_root, tmp_path / "batched", "--batch-size", 4)
    assert len(single_rows) == len(batched_rows) == 8
    assert len({r["text"] for r in single_rows.values()}) >= 3  # answers depend on the image: a mix-up shows
    for sample_id, want in single_rows.items():
        got = batched_rows[sample_id]
        assert got["text"] == want["text"], sample_id
        assert got["gt_pixels"] == want["gt_pixels"], sample_id
        assert got["intersection"] / got["union"] == pytest.approx(want["intersection"] / want["union"], abs=0.01)
    for results, rows in ((single, single_rows), (batched, batched_rows)):
        ious = [r["intersection"] / (r["union"] + 1e-5) for r in rows.values()]
        ciou = sum(r["intersection"] for r in rows.values()) / (sum(r["union"] for r in rows.values()) + 1e-8)
        assert abs(np.mean(ious) - ciou) > 0.1, (np.mean(ious), ciou)
        assert results["gIoU"] == pytest.approx(np.mean(ious), abs=1e-9)
        assert results["cIoU"] == pytest.approx(ciou, abs=1e-9)


def test_sharded_over_two_processes_gives_the_single_process_numbers(tiny_dir, synthetic_root, single_run, tmp_path):
    out = tmp_path / "sharded"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29731",
        "-m",
        "lens_cli",
        *_eval_args(tiny_dir, synthetic_root, out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads((out / "results.json").read_text())
    assert sorted(p.name for p in out.glob("samples-rank*.jsonl")) == ["samples-rank0.jsonl", "samples-rank1.jsonl"]
    for key in NUMBERS:
        assert sharded[key] == single_run[1][key], key


def test_interrupted_eval_resumes_to_the_same_numbers(tiny_dir, synthetic_root, single_run, tmp_path):
    out = tmp_path / "resumed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lens_cli", *_eval_args(tiny_dir, synthetic_root, out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file = out / "samples-rank0.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if rows_file.exists() and rows_file.read_text().count("\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    done_before = len(_rows(out))
    assert 2 <= done_before < LIMIT and not (out / "results.json").exists()
    with rows_file.open("a") as f:
        f.write('{"sample_id": "cut-off mid-wri')  # what a kill during a write leaves behind
    with one_thread():
        assert main(_eval_args(tiny_dir, synthetic_root, out)) == 0
    rows = _rows(out)
    assert len(rows) == LIMIT and len({r["sample_id"] for r in rows}) == LIMIT  # nothing redone twice
    resumed = json.loads((out / "results.json").read_text())
    for key in NUMBERS:
        assert resumed[key] == single_run[1][key], key


def test_corrupt_image_is_counted_listed_and_excluded(tiny_dir, synthetic_root, tmp_path, capsys):
    import shutil

    from lens_model.data import load_dataset

    root = tmp_path / "scenes"
    shutil.copytree(synthetic_root, root)
    first = load_dataset("synthetic", root, "train")[0]
    first.image_path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    assert main(_eval_args(tiny_dir, root, out)) == 0
    results = json.loads((out / "results.json").read_text())
    broken = {s["sample_id"] for s in results["failed_samples"]}
    assert first.sample_id in broken and results["failed"] == len(broken)
    assert results["n"] == LIMIT - len(broken)
    assert all("not a readable image" in s["error"] for s in results["failed_samples"])
    assert "failed and are not in the numbers" in capsys.readouterr().err


def test_unknown_dataset_split_and_missing_root(tiny_dir, synthetic_root, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_dir),
                "--dataset",
                "synthetic",
                "--data-root",
                str(synthetic_root),
                "--split",
                "testB",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert "unknown split 'testB' for synthetic; valid:" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_dir),
                "--dataset",
                "refcoco",
                "--data-root",
                str(tmp_path / "none"),
                "--split",
                "val",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert "data root not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "refclef", "--data-root", ".", "--split", "val"])
    assert "invalid choice: 'refclef'" in capsys.readouterr().err
