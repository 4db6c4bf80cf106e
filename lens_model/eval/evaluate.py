"""`lens eval`: gIoU / cIoU (and P@k, box accuracy) on a dataset split, resumable and shardable.

Protocol (LISA / LENS, see README "Evaluation protocol"): greedy decoding with a total length of 768 tokens,
then the context pass; masks resized bilinearly to the original image, logit > 0. Every sentence of every
RefCOCO-family ref is a sample; ReasonSeg uses the first sentence and an MLLM image whose longest side is
640; GroundingSuite captions are used as written.

Each process appends one JSON line per finished sample to OUT/samples-rank{R}.jsonl; a restarted run skips
samples already in any of those files. The split's numbers are computed from the per-sample intersections
and unions of all files, so N processes give exactly the single-process cIoU.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import Record
from ..distributed import barrier
from ..errors import LensError
from ..image_io import load_image
from ..overlay import draw_overlay
from .metrics import SampleScore, SplitMetrics, score_sample

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
REASONSEG_MLLM_LONGEST_SIDE = 640


@dataclass
class EvalOptions:
    batch_size: int = 1
    save_vis: int = 0
    max_length: int = 768  # prompt + completion tokens, as the released evaluation
    progress: bool = True
    # ReasonSeg "ignore" regions: left out of I and U (LISA); True counts them as background (released script)
    ignore_as_background: bool = False


# ---------------------------------------------------------------------------- per-sample files
def _repair_tail(path: Path) -> None:
    """Drop a last line cut off by an interruption, so that appending starts on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_finished(out_dir: Path) -> dict[str, dict]:
    finished: dict[str, dict] = {}
    for path in sorted(out_dir.glob("samples-rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that sample is simply redone
            finished[row["sample_id"]] = row
    return finished


def _batches(records: Sequence[Record], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield list(records[start : start + size])


# ---------------------------------------------------------------------------- one batch
def _evaluate_batch(
    pipe, batch: list[Record], options: EvalOptions
) -> list[tuple[dict, np.ndarray | None, np.ndarray | None]]:
    """-> per record: (JSON row, predicted mask, GT mask); failed records carry an "error" and no masks."""
    out: list = [None] * len(batch)
    images: dict[Path, np.ndarray] = {}
    ready = []
    for i, record in enumerate(batch):
        try:
            if record.image_path not in images:
                images[record.image_path] = load_image(record.image_path)
            gt = record.mask()
            ignore = None if options.ignore_as_background else record.ignore_mask()
            ready.append((i, gt, ignore))
        except (LensError, ValueError) as exc:
            log.warning("sample %s failed: %s", record.sample_id, exc)
            out[i] = ({"sample_id": record.sample_id, "error": str(exc)}, None, None)
    if ready:
        paths = list(dict.fromkeys(batch[i].image_path for i, _, _ in ready))
        results = pipe.segment_batch(
            [images[p] for p in paths],
            [batch[i].expression for i, _, _ in ready],
            [paths.index(batch[i].image_path) for i, _, _ in ready],
            max_length=options.max_length,
        )
        for (i, gt, ignore), result in zip(ready, results):
            record = batch[i]
            score = score_sample(result.mask, gt, result.box, record.box, ignore=ignore)
            row = {
                "sample_id": record.sample_id,
                "expression": record.expression,
                "intersection": score.intersection,
                "union": score.union,
                "gt_pixels": int(gt.sum()),
                "pred_pixels": int(result.mask.sum()),
                "ignored_pixels": 0 if ignore is None else int(ignore.sum()),
                "pred_box": None if result.box is None else [round(v, 2) for v in result.box],
                "gt_box": None if record.box is None else [round(v, 2) for v in record.box],
                "box_iou": score.box_iou,
                "score": round(result.score, 5),
                "format_ok": result.format_ok,
                "text": result.text,
            }
            out[i] = (row, result.mask, gt)
    return out


def _save_vis(out_dir: Path, record: Record, pred: np.ndarray, gt: np.ndarray, row: dict) -> None:
    rgb = load_image(record.image_path)
    left = draw_overlay(rgb, gt, record.box, f"GT: {record.expression}", color=(64, 200, 64))
    right = draw_overlay(rgb, pred, row["pred_box"], f"pred IoU {row['intersection'] / max(row['union'], 1):.2f}")
    from PIL import Image

    canvas = Image.new("RGB", (left.width * 2, left.height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    (out_dir / "vis").mkdir(exist_ok=True)
    canvas.save(out_dir / "vis" / (re.sub(r"[^\w.-]+", "_", record.sample_id) + ".png"))


# ---------------------------------------------------------------------------- the run
def summarize(records: Sequence[Record], finished: dict[str, dict]) -> tuple[dict, list[dict]]:
    metrics = SplitMetrics()
    failed = []
    for record in records:
        row = finished.get(record.sample_id)
        if row is None:
            raise LensError(f"sample {record.sample_id} has no result; run the evaluation again to finish it")
        if "error" in row:
            failed.append({"sample_id": row["sample_id"], "error": row["error"]})
            continue
        metrics.add(
            SampleScore(
                row["intersection"],
                row["union"],
                row["box_iou"],
                has_gt_box=row["gt_box"] is not None,
                has_pred_box=row["pred_box"] is not None,
            )
        )
    return metrics.summary(), failed


def run_eval(
    pipe,
    records: Sequence[Record],
    out_dir: str | Path,
    options: EvalOptions,
    rank: int = 0,
    world: int = 1,
    meta: dict | None = None,
) -> dict | None:
    """Evaluate this process's shard; rank 0 returns (and writes) the split's results after all shards finish."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finished = read_finished(out)
    todo = [r for i, r in enumerate(records) if i % world == rank and r.sample_id not in finished]
    own = out / f"samples-rank{rank}.jsonl"
    if own.exists():
        _repair_tail(own)
    from tqdm import tqdm

    vis_left = options.save_vis - (len(list((out / "vis").glob("*.png"))) if (out / "vis").exists() else 0)
    bar = tqdm(
        total=len(todo),
        desc=f"eval rank {rank}" if world > 1 else "eval",
        unit="sample",
        disable=not options.progress,
        position=rank,
    )
    with own.open("a") as stream:
        for batch in _batches(todo, options.batch_size):
            for record, (row, pred, gt) in zip(batch, _evaluate_batch(pipe, batch, options)):
                stream.write(json.dumps(row) + "\n")
                stream.flush()  # a killed run loses at most the sample being written
                if rank == 0 and vis_left > 0 and pred is not None:
                    _save_vis(out, record, pred, gt, row)
                    vis_left -= 1
            bar.update(len(batch))
    bar.close()
    barrier(world)
    if rank != 0:
        return None
    summary, failed = summarize(records, read_finished(out))
    results = {**(meta or {}), **summary, "failed": len(failed), "failed_samples": failed}
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: dict) -> str:
    cols = [
        ("dataset", "{}"),
        ("split", "{}"),
        ("n", "{}"),
        ("gIoU", "{:.4f}"),
        ("cIoU", "{:.4f}"),
        ("P@0.5", "{:.4f}"),
        ("box_acc", "{:.4f}"),
        ("failed", "{}"),
    ]
    cells = [fmt.format(results.get(k, "")) if results.get(k) is not None else "-" for k, fmt in cols]
    widths = [max(len(k), len(c)) for (k, _), c in zip(cols, cells)]
    head = "  ".join(k.ljust(w) for (k, _), w in zip(cols, widths))
    row = "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return head + "\n" + row
