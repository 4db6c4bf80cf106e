#!/usr/bin/env python
"""Does stage-2 GRPO raise the reward? Starting from a stage-1 tiny checkpoint (trained here first with
`training.align` on synthetic scenes), run `training.grpo` (one process, DeepSpeed ZeRO-2, CPU) and print the
mean reward and its components over training steps, first window vs last window.

The tiny MLLM is random: it does not produce Qwen's box format, so the format and box rewards start (and
likely stay) near 0 within CPU minutes; the segment-IoU reward is what moves, through the policy's answers'
masks and the segmentation loss on them. Example:

    .venv/bin/python benchmarks/learn_grpo.py                       # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/learn_grpo.py --align-steps 100 --grpo-steps 60    # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _smoke import parse_with_smoke


def digit_share(sample) -> float:
    """A reward the random tiny MLLM can learn within minutes: the share of its answer's characters that are
    digits (the first thing a model must do to write box coordinates). Registered by import string."""
    text = sample.text.strip()
    return sum(c.isdigit() for c in text) / len(text) if text else 0.0


def window_means(rows: list[dict], key: str, size: int) -> list[float]:
    values = [r[key] for r in rows]
    return [sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, len(values), size)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--align-steps", type=int, default=300, help="stage-1 steps before GRPO (default: 300)")
    parser.add_argument("--grpo-steps", type=int, default=200, help="GRPO steps (default: 200)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per GRPO step (default: 4)")
    parser.add_argument("--generations", type=int, default=4, help="G answers per prompt (default: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="answer length limit (default: 12)")
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate (default: 1e-4)")
    parser.add_argument(
        "--trainable",
        default="mllm,context,sam_decoder,sam_prompt_encoder",
        help="parts GRPO trains (default: mllm,context,sam_decoder,sam_prompt_encoder)",
    )
    parser.add_argument(
        "--rewards",
        choices=["paper", "paper+digits"],
        default="paper+digits",
        help="paper: format + box IoU² + mask IoU²; paper+digits adds digit_share, a reward the "
        "random tiny MLLM can learn on CPU (default: paper+digits)",
    )
    parser.add_argument("--window", type=int, default=20, help="steps per averaged window (default: 20)")
    parser.add_argument("--images", type=int, default=200, help="synthetic scenes (default: 200)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--workdir", type=Path, help="keep data, checkpoints and curves here (default: a temp dir)")
    args = parse_with_smoke(
        parser,
        dict(align_steps=2, grpo_steps=2, prompts=2, generations=2, max_new_tokens=4, window=1, images=10),
    )

    from _setup import prepare

    from training.align import main as align_main
    from training.grpo import main as grpo_main

    work, scenes, init = prepare(args.workdir, "learn_grpo-", args.images, 1, 128, args.threads)
    data = f"datasets=[{{name: synthetic, root: {scenes}}}]"
    stage1 = work / "align"
    start = time.perf_counter()
    if not (stage1 / "final" / "config.json").exists():
        code = align_main(
            [
                "--no-progress",
                f"init_from={init}",
                data,
                "trainable=[context,sam_decoder,sam_prompt_encoder]",
                "global_batch_size=8",
                f"max_steps={args.align_steps}",
                "lr=1e-3",
                "warmup_steps=20",
                f"save_every={args.align_steps}",
                "log_every=50",
                "num_workers=1",
                f"output_dir={stage1}",
            ]
        )
        if code:
            return code
    align_time = time.perf_counter() - start
    out = work / "grpo"
    start = time.perf_counter()
    code = grpo_main(
        [
            "--no-progress",
            f"init_from={stage1 / 'final'}",
            data,
            f"global_batch_size={args.prompts}",
            f"num_generations={args.generations}",
            f"max_completion_length={args.max_new_tokens}",
            f"max_steps={args.grpo_steps}",
            f"lr={args.lr}",
            f"trainable=[{args.trainable}]",
            "reward_weights={format: 1.0, box_iou: 1.0, segment_iou: 1.0"
            + (", 'learn_grpo:digit_share': 1.0}" if args.rewards == "paper+digits" else "}"),
            "log_every=1",
            f"save_every={args.grpo_steps}",
            "gradient_checkpointing=false",
            f"output_dir={out}",
        ]
    )
    if code:
        return code
    grpo_time = time.perf_counter() - start
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    keys = ["reward", "reward_format", "reward_box_iou", "reward_segment_iou"]
    keys += ["reward_learn_grpo:digit_share"] if args.rewards == "paper+digits" else []
    keys += ["mask_iou", "kl"]
    table = {k: window_means(rows, k, args.window) for k in keys}
    print(
        f"\nGRPO from a stage-1 tiny LENS: {args.prompts} prompts × G={args.generations} per step, "
        f"answers up to {args.max_new_tokens} tokens; means over windows of {args.window} steps"
    )
    print(f"{'steps':>11} " + " ".join(f"{k.replace('learn_grpo:', ''):>18}" for k in keys))
    for w in range(len(table["reward"])):
        first, last = w * args.window + 1, min((w + 1) * args.window, len(rows))
        print(f"{first:>5}-{last:<5} " + " ".join(f"{table[k][w]:>18.4f}" for k in keys))
    r0, r1 = table["reward"][0], table["reward"][-1]
    print(
        f"\nmean reward {r0:.4f} -> {r1:.4f} ({r1 / max(r0, 1e-9):.2f}x); stage 1 {align_time / 60:.1f} min, "
        f"GRPO {grpo_time / 60:.1f} min ({grpo_time / max(len(rows), 1):.2f} s/step); curves: {out / 'curves.png'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
