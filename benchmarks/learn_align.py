#!/usr/bin/env python
"""Does stage-1 training learn? Train a tiny LENS on synthetic scenes on CPU through the real entry point
(`training.align`, DeepSpeed ZeRO-2, one process) and print validation gIoU/cIoU over steps next to trivial
baselines on the same validation samples: an empty mask, a full-image mask, and a mask filling the GT box.

A tiny model starts untrained (random MLLM and SAM2), so besides the context module this benchmark also
trains the SAM2 mask decoder and prompt encoder and the tiny MLLM by default (--trainable); the SAM2 image
encoder stays frozen and random. Validation is teacher-forced like training (the GT answer is in the context),
so the GT-box mask is the reference a model that only read the box off the answer would reach. Example:

    .venv/bin/python benchmarks/learn_align.py                      # ~13 min on 2 CPU cores
    .venv/bin/python benchmarks/learn_align.py --steps 100 --eval-every 25 --trainable context   # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def baselines(records) -> dict[str, dict[str, float]]:
    from lens_model.metrics import SplitMetrics, score_sample

    out = {}
    for name in ("empty mask", "full-image mask", "GT-box mask"):
        metrics = SplitMetrics()
        for record in records:
            gt = record.mask()
            if name == "empty mask":
                pred = np.zeros_like(gt)
            elif name == "full-image mask":
                pred = np.ones_like(gt)
            else:
                pred = np.zeros_like(gt)
                x1, y1, x2, y2 = (int(round(v)) for v in record.box)
                pred[y1:y2, x1:x2] = True
            metrics.add(score_sample(pred, gt))
        summary = metrics.summary()
        out[name] = {"gIoU": summary["gIoU"], "cIoU": summary["cIoU"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps (default: 800)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (default: 8)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: 5e-4)")
    parser.add_argument("--eval-every", type=int, default=100, help="validation interval in steps (default: 100)")
    parser.add_argument("--val-samples", type=int, default=100, help="validation samples (default: 100)")
    parser.add_argument("--train-images", type=int, default=400, help="synthetic training scenes (default: 400)")
    parser.add_argument("--image-size", type=int, default=128, help="scene side in pixels (default: 128)")
    parser.add_argument(
        "--trainable",
        default="context,sam_decoder,sam_prompt_encoder,mllm",
        help="parts to train (default: context,sam_decoder,sam_prompt_encoder,mllm)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--workdir", type=Path, help="keep data, checkpoints and curves here (default: a temp dir)")
    args = parser.parse_args()

    from _setup import prepare

    from lens_model.data import load_dataset
    from training.align import main as align_main

    work, scenes, init = prepare(args.workdir, "learn_align-", args.train_images, 0, args.image_size, args.threads)
    val_records = load_dataset("synthetic", scenes, "val")[: args.val_samples]
    reference = baselines(val_records)
    trainable = [p for p in args.trainable.split(",") if p]
    print(
        f"training {', '.join(trainable)} of a tiny LENS (SAM2 image encoder frozen) on "
        f"{len(load_dataset('synthetic', scenes, 'train'))} synthetic expressions; "
        f"validating on {len(val_records)} (teacher-forced)"
    )
    out = work / "run"
    overrides = [
        f"init_from={init}",
        f"datasets=[{{name: synthetic, root: {scenes}}}]",
        f"val_dataset={{name: synthetic, root: {scenes}, split: val}}",
        f"val_samples={args.val_samples}",
        f"trainable=[{','.join(trainable)}]",
        f"global_batch_size={args.batch}",
        f"max_steps={args.steps}",
        f"lr={args.lr}",
        "warmup_steps=20",
        f"eval_every={args.eval_every}",
        "log_every=10",
        f"save_every={args.steps}",
        "keep_last=1",
        "num_workers=1",
        "gradient_checkpointing=false",
        f"output_dir={out}",
    ]
    start = time.perf_counter()
    code = align_main(["--no-progress", *overrides])
    wall = time.perf_counter() - start
    if code != 0:
        return code
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    train = {r["step"]: r for r in rows if r["split"] == "train"}

    print(f"\n{'step':>6} {'train loss':>11} {'val gIoU':>9} {'val cIoU':>9}")
    for r in val:
        loss = train.get(r["step"], {}).get("loss", float("nan"))
        print(f"{r['step']:>6} {loss:>11.4f} {r['gIoU']:>9.4f} {r['cIoU']:>9.4f}")
    print(f"\n{'baseline':<18} {'gIoU':>7} {'cIoU':>7}")
    for name, values in reference.items():
        print(f"{name:<18} {values['gIoU']:>7.4f} {values['cIoU']:>7.4f}")
    final = val[-1]
    trivial = max(reference["empty mask"]["gIoU"], reference["full-image mask"]["gIoU"])
    print(
        f"\nfinal val gIoU {final['gIoU']:.4f} = {final['gIoU'] / max(trivial, 1e-9):.1f}x the best trivial baseline "
        f"({trivial:.4f}); {final['gIoU'] / reference['GT-box mask']['gIoU']:.2f} of the GT-box mask; "
        f"wall time {wall / 60:.1f} min for {args.steps} steps; curves: {out / 'loss.png'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
