"""`lens track`: reason with LENS on a video's first frame (and when asked again), track with SAM2 in between.

Writes, under the output folder: masks/NNNNNN.png (0/255, frame size), tracks.jsonl (one line per frame and target)
and overlay.mp4 (each frame with its masks, boxes and state); with several targets also labels/NNNNNN.png (0 =
background, k = target k). The time base for `reground_period_s` is the video's.
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
from ..inference.result_files import save_label_png, save_mask_png
from ..inference.targets import CommandResult, command_targets
from ..overlay import draw_targets_overlay
from .state import TrackingDecision, TrackingPolicy, TrackingStateMachine, TrackState
from .tracker import StreamingTracker
from .video_io import VideoSource, VideoWriter

TRACKS_FILE, OVERLAY_FILE, MASKS_DIR, LABELS_DIR = "tracks.jsonl", "overlay.mp4", "masks", "labels"
_MASK_NAME = re.compile(r"\d{6}\.png")


def earlier_outputs(out_dir: Path) -> list[Path]:
    """The files an earlier `track_video` left in `out_dir` (tracks.jsonl, overlay.mp4, masks/NNNNNN.png,
    labels/NNNNNN.png): the only files a new run may replace; anything else in the folder is not ours."""
    files = [out_dir / name for name in (TRACKS_FILE, OVERLAY_FILE) if (out_dir / name).is_file()]
    for folder in (out_dir / MASKS_DIR, out_dir / LABELS_DIR):
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.is_file() and _MASK_NAME.fullmatch(p.name))
    return files


def remove_earlier_outputs(out_dir: Path) -> int:
    """Delete `earlier_outputs` (masks/ and labels/ too once empty), so that no mask of a longer earlier run
    outlives it. -> the number of files removed."""
    files = earlier_outputs(out_dir)
    for path in files:
        path.unlink()
    for folder in (out_dir / MASKS_DIR, out_dir / LABELS_DIR):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return len(files)


@dataclass
class FrameRecord:
    """One line of tracks.jsonl: one target on one frame (a command naming several objects gives one line per
    target and frame; `mask_png`, the union of the targets, is the frame's)."""

    frame: int
    time_s: float
    target_id: int  # 1, 2, ... in the order the command names the targets
    phrase: str  # the target's phrase
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
class TargetOutcome:
    """What one frame gave for one target: a LENS result, a tracked mask, or nothing (lost / idle)."""

    target_id: int
    phrase: str
    source: str  # "lens", "tracker" or "none"
    decision: TrackingDecision
    mask: np.ndarray  # (H, W) bool; all False when no mask is reported (lost, idle)
    box: tuple[float, float, float, float] | None  # tight box of `mask`
    score: float | None  # lens: SAM2's predicted IoU; tracker: SAM2's object-presence logit
    lens_result: SegmentationResult | None = None  # on LENS frames

    def as_segmentation(self) -> SegmentationResult:
        """The outcome in the single-image result type (for writers of LENS results: bags, the node). Tracked
        frames carry no text and score the object-presence probability (sigmoid of SAM2's logit)."""
        if self.lens_result is not None:
            return self.lens_result
        h, w = self.mask.shape
        presence = None if self.score is None else 1.0 / (1.0 + math.exp(-self.score))
        return SegmentationResult(
            prompt=self.phrase,
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


@dataclass
class FrameOutcome:
    """One frame: an outcome per target of the command (target k = targets[k - 1])."""

    index: int
    command: str
    targets: list[TargetOutcome]

    @property
    def source(self) -> str:
        """ "lens" when LENS reasoned on this frame (for any target), else "tracker" or "none"."""
        sources = {t.source for t in self.targets}
        return next((s for s in ("lens", "tracker") if s in sources), "none")

    @property
    def state(self) -> TrackState:
        """tracking when any target is tracked, else lost when any is lost, else idle."""
        states = {t.decision.state for t in self.targets}
        return next((s for s in (TrackState.TRACKING, TrackState.LOST) if s in states), TrackState.IDLE)

    @property
    def mask(self) -> np.ndarray:
        return self.as_command().union_mask()

    def as_command(self) -> CommandResult:
        return CommandResult(self.command, [t.as_segmentation() for t in self.targets])


class ReasonAndTrack:
    """LENS on the first frame, every `reason_every` frames and when a target's state machine asks; SAM2 tracking of
    every target on the frames in between. `step(rgb, now)` per frame, in order.

    `command` names one target, or several with `multi_target` (lens_model.inference.targets: "the cup and the
    spoon"). Each target has its own state machine and is lost and re-grounded on its own: a re-grounding runs LENS
    on the whole command (one batched call) and restarts only the targets that asked, from their new masks; the
    others keep their memory. One image-encoder pass per frame serves every target."""

    def __init__(
        self,
        pipe,
        tracker: StreamingTracker,
        command: str,
        reason_every: int | None = None,
        policy: TrackingPolicy | None = None,
        multi_target: bool = False,
    ) -> None:
        self.pipe, self.tracker, self.reason_every, self.policy = pipe, tracker, reason_every, policy
        self.multi_target = multi_target
        self.command = command
        self.phrases: list[str] = command_targets(command, multi_target) if command else []
        self.machines: dict[int, TrackingStateMachine] = {}  # target id -> its state machine
        self.decisions: dict[int, TrackingDecision] = {}  # target id -> its latest decision
        self.frames = self.lens_queries = 0
        self._encoded = False  # the last follow() ran the image encoder on its frame

    @property
    def reground_ids(self) -> list[int]:
        """Targets whose latest decision asked for LENS again."""
        return [k for k, d in self.decisions.items() if d.reground]

    def step(self, rgb: np.ndarray, now: float) -> FrameOutcome:
        reason_all = self.frames == 0 or (self.reason_every is not None and self.frames % self.reason_every == 0)
        if reason_all:
            self.lens_queries += 1
            return self.ground(rgb, self.segment(rgb), now)
        regrounds = self.reground_ids
        outcome = self.follow(rgb, now)
        if not regrounds:
            return outcome
        self.lens_queries += 1
        grounded = self.ground(rgb, self.segment(rgb), now, ids=regrounds, followed=True)
        by_id = {t.target_id: t for t in grounded.targets}
        outcome.targets = [by_id.get(t.target_id, t) for t in outcome.targets]
        outcome.command = grounded.command
        return outcome

    def segment(self, rgb: np.ndarray) -> CommandResult:
        """LENS on every target of the command, in one batched call."""
        return CommandResult(self.command, list(self.pipe(rgb, self.phrases)))

    def ground(
        self,
        rgb: np.ndarray,
        result: CommandResult | SegmentationResult,
        now: float,
        ids: list[int] | None = None,
        followed: bool = False,
    ) -> FrameOutcome:
        """LENS results on `rgb`: (re)start targets from their masks. ids=None: a new command (result.command)
        replaces every target (the same command again keeps the targets' state machines); else only targets `ids`
        restart (result.targets[k - 1]: the same command's), and the others are not reported on this call.
        `followed`: `rgb` is the frame `follow` just tracked (same frame index, and no second image-encoder pass);
        otherwise it is the next frame.

        A target whose result is not confident (lens_model.inference.confidence) or has an empty mask starts nothing:
        in a new command that replaces another one it is idle (dropped: the user asked for something else); else
        its state machine hears that grounding failed (a re-grounding target stays lost and asks again later)."""
        if not isinstance(result, CommandResult):
            result = CommandResult(result.prompt, [result])
        hw = rgb.shape[:2]
        replaced = ids is None and result.command != self.command and any(m.prompt for m in self.machines.values())
        if ids is None:
            for target_id in list(self.tracker.targets):
                self.tracker.remove(target_id)
            if result.command != self.command or list(self.machines) != result.ids:  # else: the command again
                self.machines = {k: TrackingStateMachine(self.policy) for k in result.ids}
                self.decisions = {}
            self.command, self.phrases = result.command, result.phrases
            ids = result.ids
        if not followed:
            self.frames += 1
        encoded = followed and self._encoded
        index = self.frames - 1
        outcomes = []
        for k in ids:
            target = result.targets[k - 1]
            machine = self.machines[k]
            if target.confident and target.mask.any():
                self.tracker.start(k, target.mask, None if encoded else rgb)
                encoded = True  # the frame is the tracker's latest now: the other targets reuse its encoding
                decision = machine.grounded(target.prompt, hw, now)
            else:
                self.tracker.remove(k)
                why = (
                    f"LENS result not confident: {target.reason}" if not target.confident else "LENS gave an empty mask"
                )
                if replaced:
                    decision = machine.clear(f"new command's {target.prompt!r} not grounded: {why}")
                else:
                    decision = machine.grounding_failed(why)
            self.decisions[k] = decision
            outcomes.append(
                TargetOutcome(
                    k, target.prompt, "lens", decision, target.mask, mask_box(target.mask), target.score, target
                )
            )
        return FrameOutcome(index, self.command, outcomes)

    def follow(self, rgb: np.ndarray, now: float) -> FrameOutcome:
        """Track every target into `rgb` (the next frame; one image-encoder pass) and let each target's state
        machine judge its result."""
        index, hw = self.frames, tuple(rgb.shape[:2])
        self.frames += 1
        sizes_ok = all(m.frame_hw is None or m.frame_hw == hw for m in self.machines.values())
        tracked = self.tracker.track(rgb) if sizes_ok and self.tracker.targets else {}
        self._encoded = bool(tracked)
        outcomes = []
        for k, machine in self.machines.items():
            mask = tracked.get(k)
            decision = machine.observe(hw, mask, now)
            self.decisions[k] = decision
            if decision.reset:
                self.tracker.remove(k)
            source = "tracker" if mask is not None else "none"
            phrase = self.phrases[k - 1]
            if mask is not None and decision.state is TrackState.TRACKING:
                outcomes.append(TargetOutcome(k, phrase, source, decision, mask.mask, mask.box, mask.object_score))
            else:  # lost or idle: no mask is reported
                score = None if mask is None else mask.object_score
                outcomes.append(TargetOutcome(k, phrase, source, decision, np.zeros(hw, bool), None, score))
        return FrameOutcome(index, self.command, outcomes)


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
    multi_target: bool = False,
) -> TrackSummary:
    """Run LENS (`pipe`, a LensPipeline) and the tracker over `video`; write masks, JSONL and the overlay video.
    With `multi_target` a command naming several objects tracks each (masks/ holds their union, labels/ the label
    image, tracks.jsonl a line per target and frame). The caller clears an earlier run's outputs first
    (`remove_earlier_outputs`): masks are written per frame."""
    from tqdm import tqdm

    masks_dir = out_dir / MASKS_DIR
    masks_dir.mkdir(parents=True, exist_ok=True)
    runner = ReasonAndTrack(pipe, tracker, prompt, reason_every, policy, multi_target)
    labels_dir = out_dir / LABELS_DIR if len(runner.phrases) > 1 else None
    if labels_dir is not None:
        labels_dir.mkdir(exist_ok=True)
    lost_frames = 0
    bar = tqdm(total=video.num_frames, desc="lens track", unit="frame", disable=not progress)
    with (out_dir / TRACKS_FILE).open("w") as jsonl, VideoWriter(out_dir / OVERLAY_FILE, video.fps) as writer:
        for index, rgb in enumerate(video):
            now = index / video.fps
            out = runner.step(rgb, now)
            state = out.state
            lost_frames += state is TrackState.LOST
            command = out.as_command()
            png = masks_dir / f"{index:06d}.png"
            save_mask_png(command.union_mask(), png)
            if labels_dir is not None:
                save_label_png(command.label_image(), labels_dir / f"{index:06d}.png")
            for target in out.targets:
                record = FrameRecord(
                    frame=index,
                    time_s=round(now, 4),
                    target_id=target.target_id,
                    phrase=target.phrase,
                    source=target.source,
                    state=target.decision.state.value,
                    box=_box(target.box),
                    score=None if target.score is None else round(float(target.score), 4),
                    present=bool(target.mask.any()),
                    mask_pixels=int(target.mask.sum()),
                    mask_png=str(png.relative_to(out_dir)),
                    reason=target.decision.reason,
                    answer_box=_box(target.lens_result.box if target.lens_result is not None else None),
                    confident=target.lens_result.confident if target.lens_result is not None else None,
                )
                jsonl.write(record.to_json() + "\n")
            caption = f"{prompt} [{state.value}{', LENS' if out.source == 'lens' else ''}]"
            masks, boxes = [t.mask for t in out.targets], [t.box for t in out.targets]
            writer.write(np.asarray(draw_targets_overlay(rgb, masks, boxes, caption)))
            bar.update(1)
    bar.close()
    return TrackSummary(runner.frames, runner.lens_queries, lost_frames, out_dir)
