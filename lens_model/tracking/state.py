"""When to trust the tracker and when to ask LENS again: a small state machine, plain Python (no ROS, no torch).

States: idle (no target), tracking, lost. The driver (the ROS node, `lens track`) reports what happened and acts on
the returned `TrackingDecision`:
    grounded(prompt, frame_hw, now)   LENS found the target on a frame and the tracker was started on it
    observe(frame_hw, tracked, now)   one tracker output for a new frame (or None when nothing is tracked)
    grounding_failed(reason)          a re-grounding request gave no usable mask
    clear(reason)                     the command was withdrawn
A new command simply calls `grounded` again: the new target replaces the old one.

Rules: the object counts as missing on a frame when SAM2's object-presence logit is below `lost_score_threshold`;
`lost_after_frames` missing frames in a row make the target lost, one present frame brings it back. Non-finite
logits make it lost at once. A frame of another size resets the target (the tracker cannot continue it). Each
`TrackingDecision.reground` is raised once per need (loss, reset, `reground_period_s` elapsed) and not again until
the driver reports `grounded` or `grounding_failed`, so a slow LENS query is never queued twice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)


class TrackState(str, Enum):
    IDLE = "idle"
    TRACKING = "tracking"
    LOST = "lost"


@dataclass
class TrackingPolicy:
    lost_score_threshold: float = 0.0  # SAM2 object-presence logit below which the object counts as missing
    lost_after_frames: int = 3  # missing frames in a row before the target is lost
    reground_on_loss: bool = True  # ask LENS again when the target is lost or had to be reset
    reground_period_s: float | None = None  # also ask LENS again this often while tracking (None: never)

    def __post_init__(self) -> None:
        if self.lost_after_frames < 1:
            raise ValueError(f"lost_after_frames must be >= 1, got {self.lost_after_frames}")
        if self.reground_period_s is not None and not self.reground_period_s > 0:
            raise ValueError(f"reground_period_s must be > 0 (or None for never), got {self.reground_period_s}")


@dataclass
class TrackingDecision:
    state: TrackState
    prompt: str | None  # the target's command, None when idle
    reground: bool = False  # run LENS on the latest frame and call `grounded` with its result
    reset: bool = False  # the tracker's target is unusable (frame size changed): remove it
    reason: str = ""  # why the state or the decision changed on this frame ("" when nothing changed)


class TrackingStateMachine:
    def __init__(self, policy: TrackingPolicy | None = None) -> None:
        self.policy = policy or TrackingPolicy()
        self.state = TrackState.IDLE
        self.prompt: str | None = None
        self.frame_hw: tuple[int, int] | None = None
        self.missing_frames = 0
        self.grounded_at: float | None = None
        self.reground_pending = False
        self._idle_logged = False

    def grounded(self, prompt: str, frame_hw: tuple[int, int], now: float) -> TrackingDecision:
        """LENS grounded `prompt` on a frame of size `frame_hw` and the tracker was (re)started on it."""
        replaced = self.prompt is not None and prompt != self.prompt
        reason = f"new command replaces {self.prompt!r}" if replaced else "grounded"
        self.state, self.prompt, self.frame_hw = TrackState.TRACKING, prompt, tuple(frame_hw)
        self.missing_frames, self.grounded_at, self.reground_pending = 0, now, False
        self._idle_logged = False
        log.info("tracking %r (%s)", prompt, reason)
        return self._decision(reason=reason)

    def grounding_failed(self, reason: str) -> TrackingDecision:
        """A re-grounding gave no mask: stay lost (or idle without a target); a later need asks again."""
        self.reground_pending = False
        if self.state is TrackState.TRACKING:
            self.state = TrackState.LOST
        log.warning("re-grounding %r failed: %s", self.prompt, reason)
        return self._decision(reason=f"grounding failed: {reason}")

    def clear(self, reason: str = "command cleared") -> TrackingDecision:
        self.state, self.prompt, self.frame_hw, self.reground_pending = TrackState.IDLE, None, None, False
        log.info("tracking stopped: %s", reason)
        return self._decision(reset=True, reason=reason)

    def observe(self, frame_hw: tuple[int, int], tracked, now: float) -> TrackingDecision:
        """One new frame and the tracker's output for the target on it (`tracking.TrackedMask`, or None when the
        tracker has no target)."""
        if self.prompt is None:
            if not self._idle_logged:
                log.info("tracking requested but there is no target: idle until a command is grounded")
                self._idle_logged = True
            return self._decision(reason="no target" if tracked is None else "tracker output without a target")
        if self.frame_hw is not None and tuple(frame_hw) != self.frame_hw:
            reason = f"frame size changed from {self._size(self.frame_hw)} to {self._size(frame_hw)}: target reset"
            self.state, self.frame_hw, self.missing_frames = TrackState.LOST, None, 0
            log.warning("%s", reason)
            return self._decision(reset=True, reground=self._want_reground(self.policy.reground_on_loss), reason=reason)
        if tracked is None:
            if self.state is TrackState.TRACKING:  # the tracker lost its target (reset elsewhere)
                self.state = TrackState.LOST
                return self._decision(reground=self._want_reground(self.policy.reground_on_loss), reason="no mask")
            return self._decision(reground=self._want_reground(self.policy.reground_on_loss))
        if not (tracked.finite and math.isfinite(tracked.object_score)):
            return self._lose("non-finite mask logits")
        if tracked.object_score < self.policy.lost_score_threshold:
            self.missing_frames += 1
            if self.state is TrackState.TRACKING and self.missing_frames >= self.policy.lost_after_frames:
                return self._lose(
                    f"object score below {self.policy.lost_score_threshold} for {self.missing_frames} frames"
                )
            reground = self.state is TrackState.LOST and self._want_reground(self.policy.reground_on_loss)
            return self._decision(reground=reground)
        self.missing_frames = 0
        if self.state is TrackState.LOST:
            self.state = TrackState.TRACKING
            log.info("target %r found again", self.prompt)
            return self._decision(reason="regained")
        period = self.policy.reground_period_s
        due = period is not None and self.grounded_at is not None and now - self.grounded_at >= period
        if due and self._want_reground(True):
            return self._decision(reground=True, reason=f"periodic re-grounding ({period:g} s)")
        return self._decision()

    # ------------------------------------------------------------------ internals
    def _lose(self, reason: str) -> TrackingDecision:
        if self.state is TrackState.LOST:  # already reported
            return self._decision(reground=self._want_reground(self.policy.reground_on_loss))
        self.state = TrackState.LOST
        log.warning("lost %r: %s", self.prompt, reason)
        return self._decision(reground=self._want_reground(self.policy.reground_on_loss), reason=reason)

    def _want_reground(self, enabled: bool) -> bool:
        """True once per need: later frames do not ask again while a grounding is under way."""
        if not enabled or self.reground_pending:
            return False
        self.reground_pending = True
        return True

    @staticmethod
    def _size(hw) -> str:
        return f"{hw[1]}x{hw[0]}"

    def _decision(self, reground: bool = False, reset: bool = False, reason: str = "") -> TrackingDecision:
        return TrackingDecision(self.state, self.prompt, reground=reground, reset=reset, reason=reason)
