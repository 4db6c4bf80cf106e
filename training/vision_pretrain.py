"""Stage 0 of the demo model (not in the paper): pretrain a tiny MLLM's vision encoder on synthetic scenes.

LENS starts from a pretrained Qwen2.5-VL, whose vision encoder already sees shapes and where they are. The demo
model's tiny encoder starts from random weights, and the answer loss alone (a few image-dependent tokens per sample)
taught it colour but hardly shape and not location in thousands of samples (docs/design.md, "The demo model's
vision encoder"). Here every merged image token of every scene is a label — the colour, shape and size of the object
under it (or background), that object's centre and the token's own position — so the encoder learns in minutes what
the answer loss could not. Linear heads read the labels off the merged tokens (the features the language model
gets) and are dropped afterwards; the checkpoint written is the input LENS checkpoint with the new vision weights.

    python -m training.vision_pretrain --model runs/demo/init --scenes runs/demo/scenes/main --out runs/demo/vision

Scenes: `lens make-synthetic --task reasoning` folders (their instances.json holds each object's colour and size).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .grounding import COVER_THRESHOLD, token_cover

log = logging.getLogger(__name__)

CENTRE_WEIGHT = 10.0  # the regressions' squared errors (in image fractions, ~0.01) against the classifications' ~1


@dataclass
class VisionPretrainConfig:
    model: Path  # a LENS checkpoint (its vision encoder is trained; everything else is copied)
    scenes: list[Path]  # synthetic scene folders (train split for training, val split for the reported accuracies)
    out: Path  # OUT/final: the checkpoint; OUT/metrics.json, OUT/log.jsonl
    steps: int = 3000
    batch: int = 16  # images per step
    lr: float = 2e-3
    warmup_steps: int = 20
    seed: int = 0
    val_images: int = 200
    log_every: int = 25
    progress: bool = True


@dataclass
class DenseLabels:
    """One image as the MLLM sees it and the label of each of its T merged tokens."""

    pixel_values: torch.Tensor  # (patches, C·2·14·14) as the image processor writes them
    grid_thw: torch.Tensor  # (1, 3)
    color: torch.Tensor  # (T,) 0 background, 1.. COLORS
    shape: torch.Tensor  # (T,) 0 background, 1.. SHAPES
    size: torch.Tensor  # (T,) 0 background, 1.. SIZES
    centre: torch.Tensor  # (T, 2) [x, y] of the token's object centre, fractions of the image (background: 0)
    position: torch.Tensor  # (T, 2) [x, y] of the token's own centre, fractions of the image
    on_object: torch.Tensor = field(default=None)  # (T,) bool

    def __post_init__(self):
        self.on_object = self.shape > 0


def _object_labels(annotation: dict, categories: dict[int, str], source: Path) -> tuple[int, int, int]:
    from lens_model.data.synthetic import COLORS, SHAPES, SIZES

    if "color" not in annotation or "size" not in annotation:
        raise ValueError(
            f"{source}: annotation {annotation.get('id')} has no 'color'/'size' field; vision pretraining needs "
            "scenes written by `lens make-synthetic --task reasoning` of this version"
        )
    return (
        list(COLORS).index(annotation["color"]) + 1,
        SHAPES.index(categories[annotation["category_id"]]) + 1,
        list(SIZES).index(annotation["size"]) + 1,
    )


def dense_labels(image_path: Path, annotations: list[dict], categories: dict[int, str], lens_config, processor,
                 source: Path) -> DenseLabels:  # fmt: skip
    """An image and its objects -> the MLLM's input for it (`mllm_image`: the model's own resize) and each merged
    token's labels. Token t covers a (14·m)² block of the resized image (m = 2, row-major, as the encoder's output)."""
    from PIL import Image, ImageDraw

    from lens_model.image_io import load_image
    from lens_model.inference.prompting import mllm_image

    rgb = load_image(image_path)
    h0, w0 = rgb.shape[:2]
    image = mllm_image(rgb, lens_config)
    block = 28
    rows, cols = image.height // block, image.width // block
    covers, labels = [], []
    for ann in annotations:
        canvas = Image.new("L", (w0, h0))
        ImageDraw.Draw(canvas).polygon(ann["segmentation"][0], fill=1)
        covers.append(token_cover(np.asarray(canvas, bool), (image.height, image.width)))  # (T,)
        x, y, w, h = ann["bbox"]
        labels.append((*_object_labels(ann, categories, source), (x + w / 2) / w0, (y + h / 2) / h0))
    cover = np.stack(covers)  # (objects, T)
    owner, on = cover.argmax(0), cover.max(0) >= COVER_THRESHOLD
    table = np.asarray(labels, np.float64)[owner]  # (T, 5)
    ty, tx = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    feats = processor.image_processor(images=[image], return_tensors="pt")
    return DenseLabels(
        pixel_values=feats["pixel_values"],
        grid_thw=feats["image_grid_thw"],
        color=torch.from_numpy(np.where(on, table[:, 0], 0)).long(),
        shape=torch.from_numpy(np.where(on, table[:, 1], 0)).long(),
        size=torch.from_numpy(np.where(on, table[:, 2], 0)).long(),
        centre=torch.from_numpy(np.where(on[:, None], table[:, 3:5], 0)).float(),
        position=torch.from_numpy(np.stack([tx.reshape(-1), ty.reshape(-1)], 1)).float(),
    )


def load_scene_labels(scenes: Path, split: str, lens_config, processor, limit: int | None = None) -> list[DenseLabels]:
    """Every image of `split` in a synthetic scene folder (SPLIT_OF_INDEX) -> DenseLabels, at most `limit`."""
    from lens_model.data.synthetic import SPLIT_OF_INDEX

    source = scenes / "synthetic" / "instances.json"
    data = json.loads(source.read_text())
    categories = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        if SPLIT_OF_INDEX.get((image["id"] - 1) % 10, "train") != split or image["id"] not in by_image:
            continue
        path = scenes / "images" / image["file_name"]
        out.append(dense_labels(path, by_image[image["id"]], categories, lens_config, processor, source))
        if limit is not None and len(out) == limit:
            break
    return out


class DenseHeads(torch.nn.Module):
    """Linear read-outs of the merged tokens (T, hidden): class logits and [x, y] regressions."""

    def __init__(self, hidden: int):
        super().__init__()
        from lens_model.data.synthetic import COLORS, SHAPES, SIZES

        self.color = torch.nn.Linear(hidden, len(COLORS) + 1)
        self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)
        self.size = torch.nn.Linear(hidden, len(SIZES) + 1)
        self.centre = torch.nn.Linear(hidden, 2)
        self.position = torch.nn.Linear(hidden, 2)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(tokens) for name, head in self.named_children()}


def batch_of(items: list[DenseLabels]) -> DenseLabels:
    return DenseLabels(**{k: torch.cat([getattr(i, k) for i in items]) for k in asdict(items[0]) if k != "on_object"})


def dense_losses(visual, heads: DenseHeads, batch: DenseLabels) -> tuple[dict[str, torch.Tensor], dict]:
    """Cross-entropy of colour, shape and size on every token; squared error of the object centre on object tokens
    and of the token's own position on every token (× CENTRE_WEIGHT). -> (losses, head outputs)."""
    tokens = visual(batch.pixel_values, grid_thw=batch.grid_thw).pooler_output  # (T_total, hidden)
    out = heads(tokens)
    on = batch.on_object
    ce = torch.nn.functional.cross_entropy
    losses = {name: ce(out[name], getattr(batch, name)) for name in ("color", "shape", "size")}
    losses["centre"] = CENTRE_WEIGHT * ((out["centre"][on] - batch.centre[on]) ** 2).mean()
    losses["position"] = CENTRE_WEIGHT * ((out["position"] - batch.position) ** 2).mean()
    return losses, out


@torch.no_grad()
def dense_metrics(visual, heads: DenseHeads, items: list[DenseLabels]) -> dict[str, float]:
    """Held-out images: accuracy of colour / shape / size on object tokens, object vs background on all tokens,
    mean |error| of the object centre and of the token position (image fractions)."""
    batch = batch_of(items)
    _, out = dense_losses(visual, heads, batch)
    on = batch.on_object
    metrics = {f"{n} accuracy": float((out[n].argmax(-1)[on] == getattr(batch, n)[on]).float().mean()) for n in
               ("color", "shape", "size")}  # fmt: skip
    metrics["object/background accuracy"] = float(((out["shape"].argmax(-1) > 0) == on).float().mean())
    metrics["centre |error|"] = float((out["centre"][on] - batch.centre[on]).abs().mean())
    metrics["position |error|"] = float((out["position"] - batch.position).abs().mean())
    metrics["object tokens"] = int(on.sum())
    return metrics


def train(cfg: VisionPretrainConfig) -> dict[str, float]:
    """Train the vision encoder of cfg.model; write OUT/final (the whole checkpoint), OUT/metrics.json and
    OUT/log.jsonl; -> the held-out metrics."""
    from tqdm.auto import tqdm

    from lens_model.model.checkpoint import load_model, save_model

    torch.manual_seed(cfg.seed)
    lens, processor = load_model(cfg.model, dtype=torch.float32)
    visual = lens.mllm.model.visual
    t0 = time.perf_counter()
    train_items = [x for s in cfg.scenes for x in load_scene_labels(s, "train", lens.lens_config, processor)]
    val_items = [x for s in cfg.scenes for x in load_scene_labels(s, "val", lens.lens_config, processor)]
    val_items = val_items[: cfg.val_images]
    if not train_items or not val_items:
        raise ValueError(f"no train or val images in {', '.join(map(str, cfg.scenes))}")
    log.info("%d train / %d val images labelled in %.0f s", len(train_items), len(val_items), time.perf_counter() - t0)
    heads = DenseHeads(lens.hidden_size)
    params = [*visual.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 0
        return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))

    cfg.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    visual.train()
    with open(cfg.out / "log.jsonl", "w") as log_file:
        for step in tqdm(range(cfg.steps), desc="vision pretraining", unit="step", disable=not cfg.progress):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            batch = batch_of([train_items[i] for i in rng.integers(0, len(train_items), cfg.batch)])
            losses, _ = dense_losses(visual, heads, batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                row = {"step": step + 1, "lr": lr_at(step), **{k: float(v.detach()) for k, v in losses.items()}}
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                if not cfg.progress:
                    log.info("step %d: %s", step + 1, " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "step"))
    visual.eval()
    metrics = dense_metrics(visual, heads, val_items)
    log.info("held-out tokens: %s", json.dumps(metrics))
    save_model(lens, cfg.out / "final", processor=processor)
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.vision_pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="LENS checkpoint whose vision encoder is trained")
    parser.add_argument("--scenes", type=Path, nargs="+", required=True, help="synthetic reasoning scene folders")
    parser.add_argument("--out", type=Path, required=True, help="output folder (OUT/final is the checkpoint)")
    defaults = VisionPretrainConfig(Path(), [], Path())
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"default {defaults.steps}")
    parser.add_argument("--batch", type=int, default=defaults.batch, help=f"images per step (default {defaults.batch})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if (args.out / "final" / "config.json").exists():
        print(f"error: {args.out / 'final'} exists; choose another --out or delete it first", file=sys.stderr)
        return 2
    cfg = VisionPretrainConfig(args.model, args.scenes, args.out, args.steps, args.batch, args.lr,
                               seed=args.seed, progress=not args.no_progress)  # fmt: skip
    try:
        train(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
