"""`lens track`: reason with LENS on a video's first frame (and when asked again), track with SAM2 in between.

Writes, under the output folder: masks/NNNNNN.png (0/255, frame size), tracks.jsonl (one line per frame) and
overlay.mp4 (each frame with its mask, box and state). The time base for `reground_period_s` is the video's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.records import mask_box
from ..errors import LensError
from ..inference.backends import BackendChoice
from ..inference.pipeline import SegmentationResult
from ..inference.result_files import save_mask_png
from ..overlay import draw_overlay
from .state import TrackingDecision, TrackingPolicy, TrackingStateMachine, TrackState
from .tracker import StreamingTracker
from .video_io import VideoSource, VideoWriter

TARGET_ID = "target"
TRACKS_FILE, OVERLAY_FILE, MASKS_DIR = "tracks.jsonl", "overlay.mp4", "masks"
_MASK_NAME = re.compile(r"\d{6}\.png")


def earlier_outputs(out_dir: Path) -> list[Path]:
    """The files an earlier `track_video` left in `out_dir` (tracks.jsonl, overlay.mp4, masks/NNNNNN.png): the only
    files a new run may replace; anything else in the folder is not ours."""
    files = [out_dir / name for name in (TRACKS_FILE, OVERLAY_FILE) if (out_dir / name).is_file()]
    masks = out_dir / MASKS_DIR
    if masks.is_dir():
        files += sorted(p for p in masks.iterdir() if p.is_file() and _MASK_NAME.fullmatch(p.name))
    return files


def remove_earlier_outputs(out_dir: Path) -> int:
    """Delete `earlier_outputs` (masks/ too once empty), so that no mask of a longer earlier run outlives it.
    -> the number of files removed."""
    files = earlier_outputs(out_dir)
    for path in files:
        path.unlink()
    masks = out_dir / MASKS_DIR
    if masks.is_dir() and not any(masks.iterdir()):
        masks.rmdir()
    return len(files)


@dataclass
class FrameRecord:
    """One line of tracks.jsonl."""

    frame: int
    time_s: float
    source: str  # "lens" (reasoned on this frame), "tracker" (SAM2 memory) or "none" (no target)
    state: str  # idle / tracking / lost, after this frame
    box: list[float] | None  # tight xyxy box of the mask in pixels, None when no mask is reported
    score: float | None  # lens: SAM2's predicted IoU; tracker: SAM2's object-presence logit
    present: bool  # a mask is reported on this frame
    mask_pixels: int
    mask_png: str
    reason: str = ""  # why the state changed on this frame
    answer_box: list[float] | None = None  # lens frames: the box in the MLLM's answer
    confident: bool | None = None  # lens frames: the LENS result is confident (tracking starts only then)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class TrackSummary:
    frames: int
    lens_queries: int
    lost_frames: int
    out_dir: Path


@dataclass
class FrameOutcome:
    """What one frame gave: a LENS result, a tracked mask, or nothing (lost / idle)."""

    index: int
    source: str  # "lens", "tracker" or "none"
    decision: TrackingDecision
    mask: np.ndarray  # (H, W) bool; all False when no mask is reported (lost, idle)
    box: tuple[float, float, float, float] | None  # tight box of `mask`
    score: float | None  # lens: SAM2's predicted IoU; tracker: SAM2's object-presence logit
    lens_result: SegmentationResult | None = None  # on LENS frames

    def as_segmentation(self, prompt: str) -> SegmentationResult:
        """The outcome in the single-image result type (for writers of LENS results: bags, the node). Tracked
        frames carry no text and score the object-presence probability (sigmoid of SAM2's logit)."""
        if self.lens_result is not None:
            return self.lens_result
        h, w = self.mask.shape
        presence = None if self.score is None else 1.0 / (1.0 + math.exp(-self.score))
        return SegmentationResult(
            prompt=prompt,
            mask=self.mask,
            box=self.box,
            score=0.0 if presence is None or self.box is None else presence,
            text="",
            num_tokens=0,
            image_size=(h, w),
            mllm_image_size=(0, 0),
            box_error=None if self.box is not None else f"no mask: target {self.decision.state.value}",
            format_ok=False,
            # a tracked mask follows a confident LENS result (ReasonAndTrack.ground); no mask means no target
            confident=self.box is not None,
            reason=None if self.box is not None else f"no mask: target {self.decision.state.value}",
        )


class ReasonAndTrack:
    """LENS on the first frame, every `reason_every` frames and when the state machine asks; SAM2 tracking on the
    frames in between. `step(rgb, now)` per frame, in order."""

    def __init__(
        self,
        pipe,
        tracker: StreamingTracker,
        prompt: str,
        reason_every: int | None = None,
        policy: TrackingPolicy | None = None,
    ) -> None:
        self.pipe, self.tracker, self.prompt, self.reason_every = pipe, tracker, prompt, reason_every
        self.machine = TrackingStateMachine(policy)
        self.decision: TrackingDecision | None = None
        self.frames = self.lens_queries = 0

    def step(self, rgb: np.ndarray, now: float) -> FrameOutcome:
        reason_now = (
            self.frames == 0
            or (self.reason_every is not None and self.frames % self.reason_every == 0)
            or (self.decision is not None and self.decision.reground)
        )
        if reason_now:
            self.lens_queries += 1
            return self.ground(rgb, self.pipe(rgb, self.prompt), now)
        return self.follow(rgb, now)

    def ground(self, rgb: np.ndarray, result: SegmentationResult, now: float) -> FrameOutcome:
        """A LENS result on `rgb` (the next frame): (re)start the tracker from its mask. `result.prompt` becomes the
        target (a new command replaces the old one). A result that is not confident (or has an empty mask) starts
        nothing: for a new prompt the old target is dropped (idle), for the target's own prompt (re-grounding) the
        state machine hears that grounding failed and asks again later."""
        index, hw = self.frames, rgb.shape[:2]
        self.frames += 1
        self.prompt = result.prompt
        if result.confident and result.mask.any():
            self.tracker.start(TARGET_ID, result.mask, rgb)
            self.decision = self.machine.grounded(self.prompt, hw, now)
        else:
            self.tracker.remove(TARGET_ID)
            why = f"LENS result not confident: {result.reason}" if not result.confident else "LENS gave an empty mask"
            if self.machine.prompt is not None and self.machine.prompt != result.prompt:
                self.decision = self.machine.clear(f"new command {result.prompt!r} not grounded: {why}")
            else:
                self.decision = self.machine.grounding_failed(why)
        return FrameOutcome(index, "lens", self.decision, result.mask, mask_box(result.mask), result.score, result)

    def follow(self, rgb: np.ndarray, now: float) -> FrameOutcome:
        """Track the target into `rgb` (the next frame) and let the state machine judge the result."""
        index, hw = self.frames, rgb.shape[:2]
        self.frames += 1
        size_ok = self.machine.frame_hw is None or tuple(hw) == self.machine.frame_hw
        tracked = self.tracker.track(rgb).get(TARGET_ID) if size_ok and TARGET_ID in self.tracker.targets else None
        self.decision = self.machine.observe(hw, tracked, now)
        if self.decision.reset:
            self.tracker.remove(TARGET_ID)
        source = "tracker" if tracked is not None else "none"
        if tracked is not None and self.decision.state is TrackState.TRACKING:
            return FrameOutcome(index, source, self.decision, tracked.mask, tracked.box, tracked.object_score)
        score = None if tracked is None else tracked.object_score  # lost or idle: no mask is reported
        return FrameOutcome(index, source, self.decision, np.zeros(hw, bool), None, score)


def tracking_memory(model_dir: Path, choice: BackendChoice, sam_memory_checkpoint: Path | None = None):
    """The SAM2 memory modules to track with, checked before the model loads (LensError if there are none).
    torch: a SamMemory from `sam_memory_checkpoint` or the model directory. An export: None, once its tracking
    graphs are found (they run on the backend the pipeline opens: pass `pipe.backend` to the tracker)."""
    from ..export.metadata import require_memory_graphs
    from ..model.sam_memory import load_model_sam_memory

    if choice.name == "torch":
        return load_model_sam_memory(model_dir, sam_memory_checkpoint)
    if sam_memory_checkpoint is not None:
        raise LensError(
            f"--sam-memory-checkpoint is not used with --backend {choice.name}: the memory graphs come from the "
            f"export in {choice.export_dir}"
        )
    require_memory_graphs(choice.meta, choice.export_dir)
    return None


def _box(box) -> list[float] | None:
    return None if box is None else [round(float(v), 2) for v in box]


def track_video(
    pipe,
    tracker: StreamingTracker,
    video: VideoSource,
    prompt: str,
    out_dir: Path,
    reason_every: int | None = None,
    policy: TrackingPolicy | None = None,
    progress: bool = True,
) -> TrackSummary:
    """Run LENS (`pipe`, a LensPipeline) and the tracker over `video`; write masks, JSONL and the overlay video.
    The caller clears an earlier run's outputs first (`remove_earlier_outputs`): masks are written per frame."""
    from tqdm import tqdm

    masks_dir = out_dir / MASKS_DIR
    masks_dir.mkdir(parents=True, exist_ok=True)
    runner = ReasonAndTrack(pipe, tracker, prompt, reason_every, policy)
    lost_frames = 0
    bar = tqdm(total=video.num_frames, desc="lens track", unit="frame", disable=not progress)
    with (out_dir / TRACKS_FILE).open("w") as jsonl, VideoWriter(out_dir / OVERLAY_FILE, video.fps) as writer:
        for index, rgb in enumerate(video):
            now = index / video.fps
            out = runner.step(rgb, now)
            state = out.decision.state
            lost_frames += state is TrackState.LOST
            png = masks_dir / f"{index:06d}.png"
            save_mask_png(out.mask, png)
            record = FrameRecord(
                frame=index,
                time_s=round(now, 4),
                source=out.source,
                state=state.value,
                box=_box(out.box),
                score=None if out.score is None else round(float(out.score), 4),
                present=bool(out.mask.any()),
                mask_pixels=int(out.mask.sum()),
                mask_png=str(png.relative_to(out_dir)),
                reason=out.decision.reason,
                answer_box=_box(out.lens_result.box if out.lens_result is not None else None),
                confident=out.lens_result.confident if out.lens_result is not None else None,
            )
            jsonl.write(record.to_json() + "\n")
            caption = f"{prompt} [{state.value}{', LENS' if out.source == 'lens' else ''}]"
            writer.write(np.asarray(draw_overlay(rgb, out.mask, out.box, caption)))
            bar.update(1)
    bar.close()
    return TrackSummary(runner.frames, runner.lens_queries, lost_frames, out_dir)
