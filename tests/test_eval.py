"""`lens eval` on synthetic scenes with the tiny model: numbers, sharding, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from lens_cli import main

LIMIT = 8


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


NUMBERS = ("n", "gIoU", "cIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "box_acc")


@pytest.fixture(scope="module")
def single_run(tiny_dir, synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "single"
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
    env = dict(os.environ, HF_HUB_OFFLINE="1")
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
