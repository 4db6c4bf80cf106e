"""What the node does with commands and frames: queueing, dropping, frame choice and staleness. Pure logic.

Time is whatever the caller says it is: every stamp is float seconds, and the `clock` used for "now" is
injectable (default `time.time`, i.e. ROS time without sim time). Frames and commands must be stamped on the
same time base — an rclpy node passes `stamp_to_seconds(msg.header)` for frames and
`node.get_clock().now().nanoseconds * 1e-9` for commands, with `clock` reading the node's clock too.

Commands
    CommandQueue(policy="queue", size=1, clock=time.time)   thread-safe; one worker takes commands
        policy "queue": bounded FIFO of `size` pending commands; when full, the OLDEST pending command is dropped
                        to make room (like a ROS KEEP_LAST history: the newest intent wins).
        policy "drop":  a command arriving while the worker is busy (or one is already pending) is dropped.
        submit(text, stamp=None, payload=None) -> SubmitResult   (empty/whitespace text is refused, never queued)
        get(timeout=None) -> Command | None      worker: waits for the next command and marks the queue busy;
                                                 None on timeout or after close(). timeout=0 polls.
        task_done()                              worker: finished the command it got (the queue is idle again)
        close()                                  wakes a waiting get(); later submits are refused
        busy, pending, closed                    properties
    Drops are also logged on the `lens_ros.policy` logger; the returned SubmitResult says the same, for the node's
    own logger.

Frames
    FrameBuffer(mode="latest", max_frame_age_s=1.0, history=8, clock=time.time)   thread-safe
        put(message, stamp) -> Frame             keep a frame (the newest `history` frames are retained)
        latest() -> Frame | None
        select(command_stamp) -> FrameChoice     non-blocking decision for a command made at `command_stamp`:
            mode "latest": the newest frame; refused if there is none or if it is older than the command by more
                           than max_frame_age_s (command_stamp - frame.stamp > max_frame_age_s).
            mode "next":   the first retained frame stamped at or after the command; while there is none the
                           choice is "wait", until clock() - command_stamp >= max_frame_age_s, then refused.
                           (A frame after the command is never stale; the bound limits the wait.)
        wait_for_frame(command_stamp, timeout=None) -> FrameChoice   select(), blocking while it says "wait"
    max_frame_age_s=None disables the bound ("next" then waits until `timeout`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOG = logging.getLogger("lens_ros.policy")

QUEUE_POLICIES = ("queue", "drop")
FRAME_MODES = ("latest", "next")

Clock = Callable[[], float]


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


@dataclass(frozen=True)
class Command:
    text: str  # stripped
    stamp: float  # seconds: when the command was given
    id: int  # 1, 2, ... in submission order
    payload: Any = field(default=None, compare=False)  # anything the node wants back with it (e.g. a request)


@dataclass(frozen=True)
class SubmitResult:
    accepted: bool  # the new command is pending
    command: Command | None  # the new command (None when its text was empty or the queue was closed)
    dropped: tuple[Command, ...] = ()  # commands this submission discarded (the new one under "drop")
    reason: str = ""  # one line for the log
    dropped_reason: str = ""  # what the dropped command's caller is told: names that command, and why

    def __post_init__(self) -> None:
        if self.dropped and not self.dropped_reason:
            object.__setattr__(self, "dropped_reason", self.reason)


class CommandQueue:
    """Pending text commands for one worker thread; see the module docstring."""

    def __init__(self, policy: str = "queue", size: int = 1, clock: Clock = time.time) -> None:
        if policy not in QUEUE_POLICIES:
            raise ValueError(f"queue policy must be one of {', '.join(QUEUE_POLICIES)}, got {policy!r}")
        if int(size) < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.policy = policy
        self.size = int(size)
        self._clock = clock
        self._pending: deque[Command] = deque()
        self._current: Command | None = None
        self._closed = False
        self._next_id = 1
        self._cond = threading.Condition()

    @property
    def busy(self) -> bool:
        """The worker holds a command (between get() and task_done())."""
        with self._cond:
            return self._current is not None

    @property
    def current(self) -> Command | None:
        with self._cond:
            return self._current

    @property
    def pending(self) -> tuple[Command, ...]:
        with self._cond:
            return tuple(self._pending)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def submit(self, text: Any, stamp: float | None = None, payload: Any = None) -> SubmitResult:
        if not isinstance(text, str) or not text.strip():
            got = "it is empty" if isinstance(text, str) or text is None else f"got {type(text).__name__}, not text"
            return SubmitResult(False, None, (), f"command refused: {got}; send a text command such as 'the red cup'")
        with self._cond:
            if self._closed:
                return SubmitResult(False, None, (), f"command {_quote(text.strip())} refused: shutting down")
            command = Command(text.strip(), float(self._clock() if stamp is None else stamp), self._next_id, payload)
            self._next_id += 1
            if self.policy == "drop":
                if self._current is not None or self._pending:
                    busy_with = self._current or self._pending[0]
                    reason = f"dropped command {_quote(command.text)}: busy with {_quote(busy_with.text)} (policy drop)"
                    LOG.warning(reason)
                    return SubmitResult(False, command, (command,), reason)
                self._pending.append(command)
                self._cond.notify_all()
                return SubmitResult(True, command, (), f"accepted command {_quote(command.text)}")
            dropped: tuple[Command, ...] = ()
            if len(self._pending) >= self.size:
                dropped = (self._pending.popleft(),)
            self._pending.append(command)
            waiting = len(self._pending)
            self._cond.notify_all()
        if dropped:
            reason = (
                f"queued command {_quote(command.text)}; queue full (size {self.size}): dropped the oldest "
                f"pending command {_quote(dropped[0].text)}"
            )
            LOG.warning(reason)
        else:
            reason = f"queued command {_quote(command.text)} ({waiting} pending)"
        told = ""
        if dropped:
            told = (
                f"dropped command {_quote(dropped[0].text)}: the queue (queue_size {self.size}) was full and the newer "
                f"command {_quote(command.text)} took its place (queue_policy queue)"
            )
        return SubmitResult(True, command, dropped, reason, told)

    def get(self, timeout: float | None = None) -> Command | None:
        """Worker: the next pending command (oldest first), marking the queue busy; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed, timeout=timeout)
            if self._closed or not self._pending:
                return None
            self._current = self._pending.popleft()
            return self._current

    def task_done(self) -> None:
        with self._cond:
            self._current = None
            self._cond.notify_all()

    def close(self) -> tuple[Command, ...]:
        """Refuse further commands and wake a waiting get(); pending commands are discarded and returned."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return self.drain()

    def drain(self) -> tuple[Command, ...]:
        """Discard the pending commands (not the running one) and return them; the queue stays open."""
        with self._cond:
            discarded, self._pending = tuple(self._pending), deque()
        return discarded


@dataclass(frozen=True)
class Frame:
    message: Any  # the image message as received
    stamp: float  # seconds (header stamp, or arrival time)
    seq: int  # 1, 2, ... in arrival order


@dataclass(frozen=True)
class FrameChoice:
    status: str  # "ok", "wait" or "refused"
    frame: Frame | None = None  # set when status == "ok"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class FrameBuffer:
    """The most recent frames and the rule that picks one for a command; see the module docstring."""

    def __init__(
        self, mode: str = "latest", max_frame_age_s: float | None = 1.0, history: int = 8, clock: Clock = time.time
    ) -> None:
        if mode not in FRAME_MODES:
            raise ValueError(f"frame mode must be one of {', '.join(FRAME_MODES)}, got {mode!r}")
        if max_frame_age_s is not None and not max_frame_age_s > 0:
            raise ValueError(f"max_frame_age_s must be > 0 (or None for no bound), got {max_frame_age_s}")
        if int(history) < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.mode = mode
        self.max_frame_age_s = max_frame_age_s
        self._clock = clock
        self._frames: deque[Frame] = deque(maxlen=int(history))
        self._seq = 0
        self._cond = threading.Condition()

    def put(self, message: Any, stamp: float) -> Frame:
        with self._cond:
            self._seq += 1
            frame = Frame(message, float(stamp), self._seq)
            self._frames.append(frame)
            self._cond.notify_all()
            return frame

    def latest(self) -> Frame | None:
        with self._cond:
            return self._frames[-1] if self._frames else None

    def clear(self) -> None:
        with self._cond:
            self._frames.clear()

    def select(self, command_stamp: float) -> FrameChoice:
        with self._cond:
            return self._select(float(command_stamp))

    def _select(self, command_stamp: float) -> FrameChoice:
        bound = self.max_frame_age_s
        if self.mode == "latest":
            if not self._frames:
                return FrameChoice("refused", None, "no image has been received yet")
            frame = self._frames[-1]
            age = command_stamp - frame.stamp
            if bound is not None and age > bound:
                return FrameChoice(
                    "refused", None, f"latest image is {age:.3f} s older than the command (max_frame_age_s={bound:g})"
                )
            return FrameChoice("ok", frame)
        for frame in self._frames:  # oldest first: the first frame at or after the command
            if frame.stamp >= command_stamp:
                return FrameChoice("ok", frame)
        waited = self._clock() - command_stamp
        if bound is not None and waited >= bound:
            return FrameChoice(
                "refused",
                None,
                f"no image arrived within max_frame_age_s={bound:g} s after the command ({waited:.3f} s passed)",
            )
        return FrameChoice("wait", None, f"waiting for the next image ({waited:.3f} s since the command)")

    def wait_for_frame(self, command_stamp: float, timeout: float | None = None) -> FrameChoice:
        """select(), blocking while it answers "wait" (mode "next") for at most `timeout` real seconds; the
        answer is "wait" if the timeout ends first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                choice = self._select(float(command_stamp))
                if choice.status != "wait":
                    return choice
                waits = []
                if deadline is not None:
                    waits.append(deadline - time.monotonic())
                if self.max_frame_age_s is not None:
                    waits.append(self.max_frame_age_s - (self._clock() - command_stamp))
                wait = min(waits) if waits else None
                if wait is not None and wait <= 0:
                    if deadline is not None and time.monotonic() >= deadline:
                        return choice
                    continue  # the age bound has passed: select() refuses now
                self._cond.wait(wait)
