"""`lens track`: reason with LENS on a video's first frame (and when asked again), track with SAM2 in between.

Writes, under the output folder: masks/NNNNNN.png (0/255, frame size), tracks.jsonl (one line per frame) and
overlay.mp4 (each frame with its mask, box and state). The time base for `reground_period_s` is the video's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data.records import mask_box
from .overlay import draw_overlay
from .tracking import StreamingTracker
from .tracking_state import TrackingDecision, TrackingPolicy, TrackingStateMachine, TrackState
from .video_io import VideoSource, VideoWriter

TARGET_ID = "target"


@dataclass
class FrameRecord:
    """One line of tracks.jsonl."""

    frame: int
    time_s: float
    source: str  # "lens" (reasoned on this frame), "tracker" (SAM2 memory) or "none" (no target)
    state: str  # idle / tracking / lost, after this frame
    box: list[float] | None  # tight xyxy box of the mask in pixels, None when no mask is reported
    score: float | None  # lens: SAM2's predicted IoU; tracker: SAM2's object-presence logit
    present: bool
    mask_pixels: int
    mask_png: str
    reason: str = ""  # why the state changed on this frame
    answer_box: list[float] | None = None  # lens frames: the box in the MLLM's answer

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class TrackSummary:
    frames: int
    lens_queries: int
    lost_frames: int
    out_dir: Path


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
    """Run LENS (`pipe`, a LensPipeline) and the tracker over `video`; write masks, JSONL and the overlay video."""
    from tqdm import tqdm

    masks_dir = out_dir / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    machine = TrackingStateMachine(policy)
    decision: TrackingDecision | None = None
    lens_queries = lost_frames = 0
    bar = tqdm(total=video.num_frames, desc="lens track", unit="frame", disable=not progress)
    with (out_dir / "tracks.jsonl").open("w") as jsonl, VideoWriter(out_dir / "overlay.mp4", video.fps) as writer:
        index = -1
        for index, rgb in enumerate(video):
            now = index / video.fps
            hw = rgb.shape[:2]
            reason_now = (
                index == 0
                or (reason_every is not None and index % reason_every == 0)
                or (decision is not None and decision.reground)
            )
            if reason_now:
                lens_queries += 1
                result = pipe(rgb, prompt)
                if result.mask.any():
                    tracker.start(TARGET_ID, result.mask, rgb)
                    decision = machine.grounded(prompt, hw, now)
                else:
                    tracker.remove(TARGET_ID)
                    decision = machine.grounding_failed("LENS gave an empty mask")
                mask, score, present, source = result.mask, result.score, bool(result.mask.any()), "lens"
                box, answer_box = mask_box(mask), result.box
            else:
                size_ok = machine.frame_hw is None or tuple(hw) == machine.frame_hw
                tracked = tracker.track(rgb).get(TARGET_ID) if size_ok and TARGET_ID in tracker.targets else None
                decision = machine.observe(hw, tracked, now)
                if decision.reset:
                    tracker.remove(TARGET_ID)
                answer_box = None
                if tracked is not None and decision.state is TrackState.TRACKING:
                    mask, box, score, present = tracked.mask, tracked.box, tracked.object_score, tracked.present
                else:  # lost or idle: no mask is reported
                    mask, box, present = np.zeros(hw, bool), None, False
                    score = None if tracked is None else tracked.object_score
                source = "tracker" if tracked is not None else "none"
            lost_frames += decision.state is TrackState.LOST
            png = masks_dir / f"{index:06d}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(png)
            record = FrameRecord(
                frame=index,
                time_s=round(now, 4),
                source=source,
                state=decision.state.value,
                box=_box(box),
                score=None if score is None else round(float(score), 4),
                present=present,
                mask_pixels=int(mask.sum()),
                mask_png=str(png.relative_to(out_dir)),
                reason=decision.reason,
                answer_box=_box(answer_box),
            )
            jsonl.write(record.to_json() + "\n")
            caption = f"{prompt} [{decision.state.value}{', LENS' if source == 'lens' else ''}]"
            writer.write(np.asarray(draw_overlay(rgb, mask, box, caption)))
            bar.update(1)
    bar.close()
    return TrackSummary(frames=index + 1, lens_queries=lens_queries, lost_frames=lost_frames, out_dir=out_dir)
