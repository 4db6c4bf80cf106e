"""gIoU / cIoU of a model on a dataset split, resumable and sharded (`lens eval`)."""

from __future__ import annotations

import sys
from pathlib import Path

from lens_model.errors import LensError
from lens_model.outputs import check_output_dir

from .options import add_device_dtype_arguments, add_model_argument, add_override_arguments


def add_parser(sub) -> None:
    from lens_model.data import DATASET_NAMES

    p = sub.add_parser(
        "eval",
        help="gIoU/cIoU of a model on a dataset split (resumable; shard with torchrun)",
        description="Evaluates with the LISA/LENS protocol and prints dataset, split, N, gIoU, cIoU, P@0.5. "
        "Per-sample results stream to OUT/samples-rank*.jsonl; re-running the same command "
        "resumes. Shard over processes/GPUs with: torchrun --nproc_per_node K -m lens_cli eval ...",
    )
    add_model_argument(p)
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset name")
    p.add_argument("--data-root", required=True, type=Path, help="dataset root (see README: Datasets)")
    p.add_argument(
        "--split",
        required=True,
        help="refcoco/refcoco+: val testA testB; refcocog: val test; "
        "reasonseg: val test; groundingsuite: eval; synthetic: as written",
    )
    p.add_argument("--image-dir", type=Path, help="image folder, when not in the standard place under --data-root")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples of the split")
    p.add_argument("--batch-size", type=int, default=1, help="samples per forward pass per process (default: 1)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/eval/DATASET-SPLIT)")
    p.add_argument(
        "--save-vis", type=int, default=0, metavar="K", help="save K GT|prediction overlay images (default: 0)"
    )
    p.add_argument(
        "--max-length", type=int, default=768, help="prompt + completion token budget (default: 768, as released)"
    )
    add_device_dtype_arguments(p, device_help="auto, cpu, cuda (with torchrun: each rank uses cuda:LOCAL_RANK)")
    add_override_arguments(p, "override the checkpoint's context-pass mode", "override the answer format")
    p.add_argument(
        "--ignore-as-background",
        action="store_true",
        help="ReasonSeg: count 'ignore' regions as background, as the released LENS script does "
        "(default: leave them out of I and U, as LISA does)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from lens_model.data import load_dataset
    from lens_model.distributed import dist_info
    from lens_model.eval.evaluate import (
        REASONSEG_MLLM_LONGEST_SIDE,
        EvalOptions,
        claim_out_dir,
        format_table,
        run_eval,
        run_identity,
    )
    from lens_model.inference.pipeline import LensPipeline
    from lens_model.model.checkpoint import resolve_model_dir

    for name in ("limit", "batch_size", "max_length"):  # max_length 0 must not mean "no bound"
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LensError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    out = args.out or Path("runs") / "eval" / f"{args.dataset}-{args.split}"
    check_output_dir(out, "--out", {"--data-root": args.data_root, "--model": args.model})
    records = load_dataset(args.dataset, args.data_root, args.split, image_dir=args.image_dir)
    if not records:
        raise LensError(f"{args.dataset} {args.split} under {args.data_root} has no samples")
    model_dir = resolve_model_dir(args.model)
    protocol = {
        "context_pass": args.context_pass,  # None: the checkpoint's own (fixed by the weights hash)
        "answer_format": args.answer_format,
        "max_length": args.max_length,
        "ignore_regions": "background" if args.ignore_as_background else "excluded",
        "mllm_longest_side": REASONSEG_MLLM_LONGEST_SIDE if args.dataset == "reasonseg" else None,
    }
    rank, world = dist_info()
    identity = run_identity(model_dir, str(args.model), args.dataset, args.split, records, protocol)
    claim_out_dir(out, identity, rank)  # before the model loads: another evaluation's folder is refused
    records = records[: args.limit] if args.limit else records
    device = args.device
    if world > 1 and device in ("auto", "cuda"):
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    pipe = LensPipeline.from_pretrained(
        str(model_dir),
        device=device,
        dtype=args.dtype,
        context_pass=args.context_pass,
        answer_format=args.answer_format,
        mllm_longest_side=protocol["mllm_longest_side"],
    )
    meta = {
        "dataset": args.dataset,
        "split": args.split,
        "model": str(args.model),
        "model_hash": identity["model_hash"],
        "context_pass": pipe.config.context_pass,
        "max_length": args.max_length,
        "ignore_regions": protocol["ignore_regions"],
    }
    options = EvalOptions(
        batch_size=args.batch_size,
        save_vis=args.save_vis,
        max_length=args.max_length,
        progress=not args.no_progress,
        ignore_as_background=args.ignore_as_background,
    )
    results = run_eval(pipe, records, out, options, rank=rank, world=world, meta=meta)
    if results is not None:
        print(format_table(results))
        if results["failed"]:
            print(
                f"{results['failed']} sample(s) failed and are not in the numbers; see {out / 'results.json'}",
                file=sys.stderr,
            )
        print(f"results: {out / 'results.json'}")
    return 0
