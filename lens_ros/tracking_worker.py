"""Tracking in the node, without rclpy: after a LENS result, follow its object on every new camera frame.

    worker = TrackingWorker(tracker, policy, publish_frame=..., publish_state=..., reground=..., log=..., clock=...)
    worker.start()
    worker.offer(msg, stamp)                 # camera callback: the newest frame replaces an untracked one
    worker.grounded(rgb, result, stamp)      # the reasoning worker found the command's targets on a camera frame
    worker.stop()

The worker runs on its own thread, so tracking never waits for the MLLM and reasoning never waits for tracking. It
holds one pending frame (latest-frame policy): a frame that arrives before the previous one was taken replaces it
and counts as dropped, so a tracker slower than the camera falls behind by at most one frame and memory stays
bounded. Frames stamped at or before the grounding frame are not tracked (the target starts there).

Per frame it reuses lens_model.tracking.track_video.ReasonAndTrack (`ground` on a LENS result, `follow` on a camera
frame: the SAM2 streaming tracker, one image-encoder pass for every target of the command, each target judged by its own
lens_model.tracking.state machine; only confident targets start) and hands the FrameOutcome to `publish_frame(outcome,
msg, rgb)`. When a target's state machine asks for re-grounding (it was lost, a frame of another size reset it, or
reground_period_s elapsed) it calls `reground(command, ids)`, which submits the command to the reasoning worker (all its
targets in one batched call) and returns its lens_ros.engine Request; only targets `ids` restart from the result, the
others keep their memory. A re-grounding that fails or is dropped from the command queue is reported back to those
targets' state machines, so a later need asks again. With `max_rate_hz` > 0 frames stamped less than 1/max_rate_hz after
the last tracked one are left out (counted as skipped). `publish_state(TrackingStatus)` runs on every change of state
and every `state_period_s`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lens_model.errors import LensError
from lens_model.tracking.state import TrackingDecision, TrackingPolicy, TrackState
from lens_model.tracking.track_video import FrameOutcome, ReasonAndTrack

from .conversions import image_message_to_rgb
from .params import TRACKING_MODES

LOG = logging.getLogger("lens_ros.tracking")


@dataclass
class TrackingStatus:
    """What `tracking_state` carries (as JSON)."""

    state: str  # idle, tracking (any target tracked) or lost (targets, none tracked)
    prompt: str | None  # the command being tracked; None when idle
    frames_tracked: int  # camera frames the tracker has followed the targets into
    frames_dropped: int  # camera frames replaced by a newer one before the tracker took them
    reason: str  # why the state last changed
    frames_skipped: int = 0  # camera frames left out to keep to max_rate_hz
    targets: list[dict] = field(default_factory=list)  # per target: id, phrase, state, reason

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def tracking_wanted(mode: str, device) -> bool:
    """The `tracking` parameter: on, off, or auto = on when the model runs on a GPU."""
    if mode not in TRACKING_MODES:
        raise LensError(f"tracking must be one of {', '.join(TRACKING_MODES)}, got {mode!r}")
    return mode == "on" or (mode == "auto" and getattr(device, "type", str(device)) == "cuda")


def tracking_policy(settings) -> TrackingPolicy:
    """The state machine's policy from the node's parameters."""
    return TrackingPolicy(
        lost_score_threshold=settings.lost_score_threshold,
        lost_after_frames=settings.lost_after_frames,
        reground_on_loss=settings.reground_on_loss,
        reground_period_s=settings.reground_period_s or None,
    )


def load_tracker(pipeline, settings, log=LOG):
    """The node's StreamingTracker on `pipeline`'s SAM2, or None when tracking is off or cannot run (one log line
    saying why; reasoning is unaffected)."""
    model = pipeline.model
    if not tracking_wanted(settings.tracking, model.device):
        log.info(f"tracking off (tracking={settings.tracking}, device {model.device})")
        return None
    if settings.backend != "torch":
        log.warning(f"tracking disabled: it runs SAM2 in torch, and backend is {settings.backend}")
        return None
    from lens_model.model.checkpoint import MEMORY_WEIGHTS_FILE, resolve_model_dir
    from lens_model.model.sam_memory import custom_sam2_note, load_sam_memory, official_checkpoint_name
    from lens_model.tracking.tracker import StreamingTracker

    sam_config = model.lens_config.sam
    weights = settings.sam_memory_checkpoint or None
    try:
        model_dir = resolve_model_dir(settings.model)
        if weights is None and not (model_dir / MEMORY_WEIGHTS_FILE).is_file():
            raise LensError(
                f"{settings.model} has no {MEMORY_WEIGHTS_FILE} (LENS checkpoints keep SAM2 without its video-memory "
                f"modules); set sam_memory_checkpoint to the official {official_checkpoint_name(sam_config)}"
                f"{custom_sam2_note(sam_config)}"
            )
        memory = load_sam_memory(sam_config, model_dir=model_dir, weights=weights)
    except (LensError, OSError, RuntimeError, ValueError) as exc:  # unusable weights must not stop reasoning
        log.error(f"tracking disabled: {exc}")
        return None
    tracker = StreamingTracker.from_lens_model(model, memory)
    log.info(f"tracking on: SAM2 memory ({memory.num_maskmem} memory frames)")
    return tracker


class TrackingWorker:
    def __init__(
        self,
        tracker,
        policy: TrackingPolicy,
        publish_frame: Callable[[FrameOutcome, Any, np.ndarray], None],
        publish_state: Callable[[TrackingStatus], None] | None = None,
        reground: Callable[[str, list[int]], Any] | None = None,
        log=LOG,
        clock: Callable[[], float] = time.time,
        scale16: str = "auto",
        state_period_s: float = 1.0,
        max_rate_hz: float = 0.0,
    ) -> None:
        self.runner = ReasonAndTrack(None, tracker, "", policy=policy)  # LENS runs on the reasoning worker
        self.publish_frame, self.publish_state, self.reground = publish_frame, publish_state, reground
        self.log, self.clock, self.scale16, self.state_period_s = log, clock, scale16, state_period_s
        self.max_rate_hz = max_rate_hz  # 0: every frame; changeable at runtime (the node's max_rate_hz)
        self.frames_tracked = self.frames_dropped = self.frames_skipped = 0
        self._cond = threading.Condition()
        self._pending: tuple[Any, float] | None = None  # (message, stamp): the one frame waiting to be tracked
        self._groundings: list[tuple] = []  # (rgb, result, stamp, source, ids), in arrival order
        self._since: float | None = None  # stamp of the grounding frame: only later frames are tracked
        self._last_tracked: float | None = None  # stamp of the last tracked frame (max_rate_hz)
        self._reground_request = None
        self._reground_ids: list[int] = []
        self._reason = ""
        self._idle_logged = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def command(self) -> str | None:
        """The command whose targets are tracked; None when idle (no target yet)."""
        return self.runner.command if self.runner.machines else None

    @property
    def state(self) -> TrackState:
        states = {m.state for m in self.runner.machines.values()}
        return next((s for s in (TrackState.TRACKING, TrackState.LOST) if s in states), TrackState.IDLE)

    def status(self) -> TrackingStatus:
        targets = [
            {"id": k, "phrase": m.prompt or self.runner.phrases[k - 1], "state": m.state.value, "reason": r.reason}
            for k, m in self.runner.machines.items()
            for r in [self.runner.decisions.get(k) or TrackingDecision(m.state, m.prompt)]
        ]
        return TrackingStatus(
            self.state.value,
            self.command,
            self.frames_tracked,
            self.frames_dropped,
            self._reason,
            self.frames_skipped,
            targets,
        )

    # -- inputs (any thread; cheap) --
    def offer(self, msg: Any, stamp: float) -> None:
        with self._cond:
            if self._pending is not None and self.runner.machines:
                self.frames_dropped += 1
            self._pending = (msg, float(stamp))
            self._cond.notify()

    def grounded(self, rgb: np.ndarray, result, stamp: float, source: str = "command", ids=None) -> None:
        """LENS segmented the command `result` (a lens_model CommandResult) on the camera frame `rgb` stamped
        `stamp`: (re)start its targets there, all of them (a new command replaces the old one), or with `ids` only
        those (a re-grounding; ignored when a new command has replaced the targets since)."""
        with self._cond:
            self._groundings.append((rgb, result, float(stamp), source, None if ids is None else list(ids)))
            self._cond.notify()

    # -- thread --
    def start(self) -> None:
        if self._thread is None:
            self.runner.tracker.reset()  # a target from before a deactivate is not continued
            self.runner.machines, self.runner.decisions = {}, {}
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, name="lens-tracking", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _snapshot(self) -> tuple:
        return (self.command, tuple((k, m.state) for k, m in self.runner.machines.items()))

    def _work(self) -> None:
        last_state_at = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stop.is_set() or self._groundings or self._pending is not None,
                    timeout=max(0.0, last_state_at + self.state_period_s - time.monotonic()),
                )
                groundings, self._groundings = self._groundings, []
                frame, self._pending = self._pending, None
            before = self._snapshot()
            try:
                for grounding in groundings:
                    self._ground(*grounding)
                self._check_reground()
                if frame is not None:
                    self._follow(*frame)
            except Exception as exc:  # noqa: BLE001 - the tracking thread outlives a bad frame or a model error
                self.log.error(f"tracking: {type(exc).__name__}: {exc}")
            changed = self._snapshot() != before
            if changed or time.monotonic() - last_state_at >= self.state_period_s:
                last_state_at = time.monotonic()
                self._publish_state()

    def _ground(self, rgb: np.ndarray, result, stamp: float, source: str, ids) -> None:
        if source == "reground":
            if result.command != self.runner.command or not self.runner.machines:
                return  # a new command replaced the targets since
            ids = [k for k in (ids or result.ids) if k in self.runner.machines]
            if not ids:
                return
        else:
            ids = None
        replaced = self.command if ids is None and self.command not in (None, result.command) else None
        outcome = self.runner.ground(rgb, result, self.clock(), ids=ids)
        if ids is None:
            self._since = stamp
        self._reground_request, self._reground_ids = None, []
        self._reason = "; ".join(f"{t.target_id}: {t.decision.reason}" for t in outcome.targets if t.decision.reason)
        if replaced is not None:  # and why targets of the new command did not start (not confident, empty mask)
            started = all(t.decision.state is TrackState.TRACKING for t in outcome.targets)
            self._reason = f"new command replaces {replaced!r}" + ("" if started else f" ({self._reason})")

    def _check_reground(self) -> None:
        """A re-grounding that ended without a result (failed, or dropped from the command queue)."""
        request = self._reground_request
        if request is None or not request.done:
            return
        self._reground_request, ids = None, self._reground_ids
        outcome = request.wait(0)
        if not outcome.success and outcome.prompt == self.runner.command:
            for k in ids:
                if k in self.runner.machines:
                    self.runner.decisions[k] = self.runner.machines[k].grounding_failed(outcome.message)
            self._reason = f"grounding failed: {outcome.message}"

    def _follow(self, msg: Any, stamp: float) -> None:
        if not self.runner.machines:  # nothing to track: idle
            if not self._idle_logged:
                self.log.info("tracking: no target yet; idle until a command is segmented")
                self._idle_logged = True
            self._reason = "no target"
            return
        if self._since is not None and stamp <= self._since:
            return  # not newer than the frame the targets were found on
        rate = self.max_rate_hz
        if rate > 0 and self._last_tracked is not None and stamp - self._last_tracked < 1.0 / rate:
            self.frames_skipped += 1
            return
        try:
            rgb = image_message_to_rgb(msg, self.scale16)
        except LensError as exc:
            self.log.warning(f"tracking: frame skipped: {exc}")
            return
        outcome = self.runner.follow(rgb, self.clock())
        self.frames_tracked += 1
        self._last_tracked = stamp
        for target in outcome.targets:
            decision = target.decision
            if decision.reason:  # the target's state changed on this frame
                self._reason = f"{target.target_id}: {decision.reason}"
                level = self.log.info if decision.state is TrackState.TRACKING else self.log.warning
                level(f"tracking {target.phrase!r} (target {target.target_id}): {decision.reason}")
        regrounds = self.runner.reground_ids
        if regrounds and self.reground is not None:
            self.log.info(f"re-grounding target(s) {regrounds} of {self.runner.command!r}")
            self._reground_request, self._reground_ids = self.reground(self.runner.command, regrounds), regrounds
        if outcome.state is not TrackState.IDLE:
            self.publish_frame(outcome, msg, rgb)

    def _publish_state(self) -> None:
        if self.publish_state is None:
            return
        try:
            self.publish_state(self.status())
        except Exception as exc:  # noqa: BLE001
            self.log.error(f"publishing the tracking state failed: {exc!r}")
