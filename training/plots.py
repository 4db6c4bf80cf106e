"""Training-curve pictures drawn with PIL (no plotting library needed on a training server)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from lens_model.errors import LensError
from lens_model.outputs import save_image

PANEL_W, PANEL_H, MARGIN = 520, 300, 48
COLORS = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
]


@dataclass
class MetricRows:
    """The rows of a metrics.jsonl."""

    rows: list[dict]  # one JSON object per line, each with an integer "step"
    torn_line: int | None = None  # number of a cut-off last line (a run killed mid-write): left out


def read_metrics(metrics_file: Path) -> MetricRows:
    """metrics.jsonl -> its rows; LensError naming the line of a corrupt one. A last line that lacks its newline and
    does not parse is what a run killed mid-write leaves: it is left out and reported in `torn_line`."""
    path = Path(metrics_file)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise LensError(f"{path} is not text: expected JSON lines as training writes them") from None
    lines = text.splitlines()
    rows, torn = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                torn = number
                continue
            raise LensError(
                f"{path} line {number} is not valid JSON ({exc.msg} at column {exc.colno}); expected one JSON "
                "object per line as training writes them"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise LensError(f"{path} line {number}: expected a JSON object with an integer 'step', got {line[:80]!r}")
        _check_row_values(row, path, number)
        rows.append(row)
    return MetricRows(rows, torn)


def _check_row_values(row: dict, path: Path, number: int) -> None:
    """A metrics row holds numbers (null for a value that was not measured) and a `split` name."""
    if not isinstance(row.get("split", "train"), str):
        raise LensError(f"{path} line {number}: 'split' must be a name such as \"train\", got {row['split']!r}")
    for key, value in row.items():
        if key != "split" and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise LensError(
                f"{path} line {number}: {key!r} is a {type(value).__name__} ({json.dumps(value)[:40]}); expected a "
                "number, as training writes them"
            )


def _fraction(value: float, low: float, high: float) -> float:
    """Where `value` lies between `low` and `high` (0..1), without overflow: halves first, so that a range such as
    -1e308..1e308 stays finite."""
    return (value / 2 - low / 2) / (high / 2 - low / 2)


def value_axis(values: list[float]) -> tuple[float, float]:
    """Finite values -> the (low, high) of their axis: their range, widened around a single value; finite for any
    finite values, the largest floats included (the widening is capped at the largest float)."""
    low, high = min(values), max(values)
    if low == high:
        low = max(low - max(0.5, abs(low) * 1e-6), -sys.float_info.max)
        high = min(high + max(0.5, abs(high) * 1e-6), sys.float_info.max)
    return low, high


TICK_FRACTIONS = (0.0, 0.5, 1.0)  # where the value axis is labelled: bottom, middle, top


def tick_labels(low: float, high: float) -> list[str]:
    """The labels of the value axis at TICK_FRACTIONS: weighted means of the ends, which stay finite where
    low + frac * (high - low) would overflow (-1e308..1e308)."""
    return [f"{low * (1 - frac) + high * frac:.3g}" for frac in TICK_FRACTIONS]


def read_curves(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """metrics rows -> {split: {name: [(step, value), ...]}} (non-finite values dropped)."""
    curves: dict = {}
    for row in rows:
        split = row.get("split", "train")
        for key, value in row.items():
            if key in ("step", "split") or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            curves.setdefault(split, {}).setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def _panel(title: str, series: dict[str, list[tuple[int, float]]]) -> Image.Image:
    image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    points = [p for values in series.values() for p in values]
    draw.text((MARGIN, 8), title, fill="black")
    if not points:
        draw.text((MARGIN, PANEL_H // 2), "no data", fill="gray")
        return image
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    y0, y1 = value_axis([p[1] for p in points])
    left, top, right, bottom = MARGIN, 28, PANEL_W - 12, PANEL_H - 28
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    for frac, label in zip(TICK_FRACTIONS, tick_labels(y0, y1)):
        y = bottom - frac * (bottom - top)
        draw.text((4, y - 6), label, fill="black")
    draw.text((left, bottom + 6), f"step {x0}", fill="black")
    draw.text((right - 70, bottom + 6), f"step {x1}", fill="black")

    def xy(step, value):
        return left + (step - x0) / (x1 - x0) * (right - left), bottom - _fraction(value, y0, y1) * (bottom - top)

    for k, (name, values) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        coords = [xy(s, v) for s, v in values]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for cx, cy in coords if len(coords) < 40 else coords[-1:]:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)
        draw.text((right - 120, top + 6 + 14 * k), name, fill=color)
    return image


def draw_curves(rows: list[dict], out_png: Path, source: str = "the metrics") -> Path:
    """Loss parts (train) and validation scores side by side in one PNG; LensError, writing nothing, when the
    rows hold no value to plot (`source` names them in the message)."""
    curves = read_curves(rows)
    if not curves:
        what = "no rows" if not rows else f"{len(rows)} row(s) but no finite numeric value"
        raise LensError(f"nothing to plot: {source} has {what}; no figure written")
    train = curves.get("train", {})
    panels = [
        _panel("train loss", {k: v for k, v in train.items() if k in ("loss", "dice", "pixel", "policy", "kl", "seg")})
    ]
    if "reward" in train or any(k.startswith("reward") for k in train):
        panels.append(_panel("rewards", {k: v for k, v in train.items() if k.startswith("reward")}))
    if "val" in curves:
        panels.append(_panel("validation", {k: v for k, v in curves["val"].items() if k in ("gIoU", "cIoU", "P@0.5")}))
    canvas = Image.new("RGB", (PANEL_W * len(panels), PANEL_H), "white")
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * PANEL_W, 0))
    save_image(canvas, out_png, "the figure")
    return out_png


def plot_curves(metrics_file: Path, out_png: Path) -> Path:
    """A run's metrics.jsonl -> its curves PNG (`read_metrics` + `draw_curves`)."""
    return draw_curves(read_metrics(metrics_file).rows, out_png, str(metrics_file))
