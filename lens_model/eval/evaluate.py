"""`lens eval`: gIoU / cIoU (and P@k, box accuracy) on a dataset split, resumable and shardable.

Protocol (LISA / LENS, see README "Evaluation protocol"): greedy decoding with a total length of 768 tokens,
then the context pass; masks resized bilinearly to the original image, logit > 0. Every sentence of every
RefCOCO-family ref is a sample; ReasonSeg uses the first sentence and an MLLM image whose longest side is
640; GroundingSuite captions are used as written.

Each process appends one JSON line per finished sample to OUT/samples-rank{R}.jsonl; a restarted run skips
samples already in any of those files, and retries those that failed (an image that was missing may be there
now). The split's numbers are computed from the per-sample intersections and unions of all files, so N processes
give exactly the single-process cIoU. OUT/eval_run.json records what the results belong to (weights hash, dataset
split, protocol options): a run into a folder of another evaluation is refused (`claim_out_dir`). A sample that
cannot be evaluated (an unreadable image, an image whose size is not its annotation's, an empty expression, an
undecodable mask) is a failed sample, named in results.json; the split goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import Record
from ..distributed import barrier
from ..errors import LensError
from ..image_io import load_image, read_prompt
from ..inference.prompting import check_mllm_image_size
from ..outputs import write_json
from ..overlay import draw_overlay
from .metrics import SampleScore, SplitMetrics, score_sample

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"
RUN_FILE = "eval_run.json"  # what the folder's results belong to: weights hash, dataset split, protocol
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
    """{sample_id: row} of every OUT/samples-rank*.jsonl. A sample with a result and a failure keeps the result
    (a failed sample is retried on resume); a line cut off at the end of a file (an interrupted run) is skipped and
    redone. Any other unreadable line is corruption: LensError naming the file and line."""
    finished: dict[str, dict] = {}
    for path in sorted(out_dir.glob("samples-rank*.jsonl")):
        lines = path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if number == len(lines):  # no newline after it: cut off by an interruption
                    continue
                what = "UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "valid JSON"
                raise LensError(
                    f"{path} line {number} is not {what}; this file holds lens eval's per-sample results, one JSON "
                    "object per line: delete that line (its sample is redone) or pass another --out"
                ) from None
            missing = _missing_fields(row)
            if missing:
                raise LensError(
                    f"{path} line {number} has no {missing!r}; expected a per-sample result of lens eval: delete that "
                    "line (its sample is redone) or pass another --out"
                )
            old = finished.get(row["sample_id"])
            if old is None or "error" in old:  # a result is never replaced by a later failure
                finished[row["sample_id"]] = row
    return finished


def _missing_fields(row) -> str | None:
    if not isinstance(row, dict) or not isinstance(row.get("sample_id"), str):
        return "sample_id"
    needed = ("error",) if "error" in row else ("intersection", "union", "box_iou", "gt_box", "pred_box")
    return next((key for key in needed if key not in row), None)


# ---------------------------------------------------------------------------- what an output folder belongs to
def run_identity(
    model_dir: Path, model: str, dataset: str, split: str, records: Sequence[Record], protocol: dict
) -> dict:
    """What an evaluation's numbers depend on: the weights (sha256 of the weight files), the dataset split (a hash
    of its samples: ids, expressions and image files, so a moved dataset is still the same one) and the protocol
    options. `model` (the path or Hub id given) is recorded, not compared."""
    from ..export.metadata import model_hash

    samples = hashlib.sha256()
    for record in records:
        samples.update(f"{record.sample_id}\t{record.expression}\t{record.image_path.name}\n".encode())
    return {
        "model": model,
        "model_hash": model_hash(model_dir)[0],
        "dataset": dataset,
        "split": split,
        "samples_hash": samples.hexdigest(),
        "protocol": protocol,
    }


def claim_out_dir(out: Path, identity: dict, rank: int = 0) -> None:
    """Refuse an output folder that holds another evaluation's results (another model, dataset, split or protocol):
    resuming into it would mix their numbers. A new folder gets OUT/eval_run.json (rank 0 writes it)."""
    if out.exists() and not out.is_dir():
        raise LensError(f"--out {out} is a file; pass a folder for the evaluation's results")
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LensError(f"{run_file} is not valid JSON ({exc}); pass another --out") from None
        for key in ("model_hash", "dataset", "split", "samples_hash", "protocol"):
            if not isinstance(saved, dict) or saved.get(key) != identity[key]:
                there = saved.get(key) if isinstance(saved, dict) else None
                raise LensError(
                    f"--out {out} holds the results of another evaluation ({key}: {there!r} there, "
                    f"{identity[key]!r} now; model {saved.get('model') if isinstance(saved, dict) else '?'}); "
                    "resuming would mix their numbers: pass another --out"
                )
        return
    if any(out.glob("samples-rank*.jsonl")) or (out / RESULTS_FILE).exists():
        raise LensError(
            f"--out {out} holds evaluation results without {RUN_FILE} (written by another tool or an older lens "
            "eval), so they cannot be matched to this model and dataset: pass another --out"
        )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(run_file, identity, "the evaluation's identity")


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
            expression = read_prompt(record.expression)
            if record.image_path not in images:
                images[record.image_path] = load_image(record.image_path)
            record.check_image(images[record.image_path])
            check_mllm_image_size(images[record.image_path].shape[:2], str(record.image_path))
            gt = record.mask()
            ignore = None if options.ignore_as_background else record.ignore_mask()
            ready.append((i, gt, ignore, expression))
        except (LensError, ValueError) as exc:
            prefix = f"{record.dataset}/{record.sample_id}: "
            message = str(exc) if str(exc).startswith(prefix) else prefix + str(exc)
            log.warning("sample %s failed: %s", record.sample_id, message)
            out[i] = ({"sample_id": record.sample_id, "error": message}, None, None)
    if ready:
        paths = list(dict.fromkeys(batch[i].image_path for i, _, _, _ in ready))
        results = pipe.segment_batch(
            [images[p] for p in paths],
            [expression for _, _, _, expression in ready],
            [paths.index(batch[i].image_path) for i, _, _, _ in ready],
            max_length=options.max_length,
        )
        for (i, gt, ignore, _), result in zip(ready, results):
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
    todo = [
        r
        for i, r in enumerate(records)
        if i % world == rank and (r.sample_id not in finished or "error" in finished[r.sample_id])
    ]
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
    # an undefined mean (no sample scored) is null, never NaN: results.json stays valid JSON
    summary = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}
    results = {**(meta or {}), **summary, "failed": len(failed), "failed_samples": failed}
    write_json(out / RESULTS_FILE, results, "the results")
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
