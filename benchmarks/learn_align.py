#!/usr/bin/env python
"""Does stage-1 training learn? Train a tiny LENS on synthetic scenes on CPU through the real entry point
(`training.align`, DeepSpeed ZeRO-2, one process) and print teacher-forced validation gIoU/cIoU at step 0 (the
untrained model) and every --eval-every steps, next to baselines on the same validation samples.

Validation is teacher-forced like training: the GT answer, and with it the GT box, is in the model's context. So
the reference to beat is the GT-box mask (a model that only reads the box off its context and fills it); the empty
and full-image masks are printed as sanity floors. Also printed: the all-objects mask (every shape in the scene:
segmenting shapes without picking the referred one) and, at step 0 and at the end, how often the predicted mask
overlaps the referred object more than any other object of the scene (referred-object accuracy).

A tiny model starts untrained (random MLLM and SAM2), so besides the context module this benchmark also
trains the SAM2 mask decoder and prompt encoder and the tiny MLLM by default (--trainable); the SAM2 image
encoder stays frozen and random. Example:

    .venv/bin/python benchmarks/learn_align.py                      # ~13 min on 2 CPU cores
    .venv/bin/python benchmarks/learn_align.py --steps 100 --eval-every 25 --trainable context   # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _smoke import parse_with_smoke


def referred_object_accuracy(preds, records, objects) -> float:
    """Share of samples whose predicted mask has its largest IoU with the referred object (0 when it overlaps
    nothing): did the model pick the right shape, however well it outlined it."""
    from lens_model.data.synthetic import referred_object_index

    hits = sum(referred_object_index(p, objects[r.ids["image_id"]]) == r.ids["ann_id"] for p, r in zip(preds, records))
    return hits / len(records)


def summarize(preds, records) -> dict[str, float]:
    from lens_model.eval.metrics import SplitMetrics, score_sample

    metrics = SplitMetrics()
    for pred, record in zip(preds, records):
        gt = record.mask()
        metrics.add(score_sample(pred if pred is not None else np.zeros_like(gt), gt))
    summary = metrics.summary()
    return {"gIoU": summary["gIoU"], "cIoU": summary["cIoU"]}


def baselines(records, objects) -> dict[str, dict[str, float]]:
    """Masks built without a model: empty, full image, every object of the scene, the GT box filled."""
    preds: dict[str, list[np.ndarray]] = {"empty mask": [], "full-image mask": [], "all-objects mask": []}
    preds["GT-box mask"] = []
    for record in records:
        gt = record.mask()
        preds["empty mask"].append(np.zeros_like(gt))
        preds["full-image mask"].append(np.ones_like(gt))
        preds["all-objects mask"].append(np.logical_or.reduce(list(objects[record.ids["image_id"]].values())))
        box = np.zeros_like(gt)
        x1, y1, x2, y2 = (int(round(v)) for v in record.box)
        box[y1:y2, x1:x2] = True
        preds["GT-box mask"].append(box)
    return {name: summarize(p, records) for name, p in preds.items()}


def teacher_forced_masks(model_dir: Path, records) -> list[np.ndarray | None]:
    """Predicted masks of the model in `model_dir` on `records`, computed as training's validation computes them
    (training.align: AlignExamples + Collator + mask_logits, the model in eval mode, its stage-1 context pass)."""
    import torch

    from lens_model.model.checkpoint import load_model
    from lens_model.model.sam import upsample_logits
    from training.align import mask_logits
    from training.config import AlignConfig
    from training.data import AlignExamples, Collator

    model, processor = load_model(model_dir, device=torch.device("cpu"), dtype=torch.float32)
    model.lens_config.context_pass = AlignConfig.context_pass  # as training.align sets it
    model.eval()
    max_length = AlignConfig.max_prompt_length + AlignConfig.max_completion_length
    examples = AlignExamples([records], [(0, i) for i in range(len(records))], processor, model.lens_config, max_length)
    collate = Collator(processor.tokenizer.pad_token_id)
    preds = []
    with torch.no_grad():
        for i in range(len(records)):
            batch = collate([examples[i]])
            if batch["size"] == 0:  # a sample that cannot be built: no prediction, as validation counts it
                preds.append(None)
                continue
            low_res = mask_logits(model, batch, torch.device("cpu"))
            gt = batch["gt_masks"][0].numpy()
            preds.append((upsample_logits(low_res, gt.shape)[0] > 0).cpu().numpy())
    return preds


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
    args = parse_with_smoke(
        parser,
        dict(steps=2, batch=2, eval_every=1, val_samples=4, train_images=10, trainable="context"),
    )

    from _setup import prepare

    from lens_model.data import load_dataset
    from lens_model.data.synthetic import scene_object_masks
    from training.align import main as align_main

    work, scenes, init = prepare(args.workdir, "learn_align-", args.train_images, 0, args.image_size, args.threads)
    val_records = load_dataset("synthetic", scenes, "val")[: args.val_samples]
    objects = scene_object_masks(val_records)
    reference = baselines(val_records, objects)
    trainable = [p for p in args.trainable.split(",") if p]
    print(
        f"training {', '.join(trainable)} of a tiny LENS (SAM2 image encoder frozen) on "
        f"{len(load_dataset('synthetic', scenes, 'train'))} synthetic expressions; "
        f"validating on {len(val_records)} (teacher-forced)"
    )
    start_preds = teacher_forced_masks(init, val_records)
    step0 = summarize(start_preds, val_records)
    step0_referred = referred_object_accuracy(start_preds, val_records, objects)
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
    val = [{"step": 0, **step0}] + [r for r in rows if r["split"] == "val"]
    train = {r["step"]: r for r in rows if r["split"] == "train"}
    final_preds = teacher_forced_masks(out / "final", val_records)
    final_referred = referred_object_accuracy(final_preds, val_records, objects)
    recomputed = summarize(final_preds, val_records)  # must equal training's last validation: same computation
    if abs(recomputed["gIoU"] - val[-1]["gIoU"]) > 1e-4:
        print(f"warning: final gIoU recomputed here {recomputed['gIoU']:.4f} != training's {val[-1]['gIoU']:.4f}")

    print(f"\n{'step':>6} {'train loss':>11} {'val gIoU':>9} {'val cIoU':>9}")
    for r in val:
        loss = train.get(r["step"], {}).get("loss", float("nan"))
        print(f"{r['step']:>6} {loss:>11.4f} {r['gIoU']:>9.4f} {r['cIoU']:>9.4f}")
    print(f"\n{'baseline':<18} {'gIoU':>7} {'cIoU':>7}")
    for name, values in reference.items():
        print(f"{name:<18} {values['gIoU']:>7.4f} {values['cIoU']:>7.4f}")
    final, box = val[-1], reference["GT-box mask"]
    print(
        f"\nreferred-object accuracy: step 0 {step0_referred:.3f}, step {args.steps} {final_referred:.3f} "
        f"(largest IoU with the referred object rather than another shape of the scene)"
    )
    print(
        f"final val gIoU {final['gIoU']:.4f} / cIoU {final['cIoU']:.4f} = {final['gIoU'] / box['gIoU']:.2f} / "
        f"{final['cIoU'] / box['cIoU']:.2f} of the GT-box mask ({box['gIoU']:.4f} / {box['cIoU']:.4f}), the "
        f"baseline a teacher-forced model can reach by filling the box in its context; step 0: "
        f"{step0['gIoU']:.4f} / {step0['cIoU']:.4f}; wall time {wall / 60:.1f} min for {args.steps} steps; "
        f"curves: {out / 'loss.png'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
