"""The node's lifecycle as its ROS callbacks see it, and the guard of its spin loop (plain Python, no rclpy).

The node keeps its ROS entities (publishers, subscriptions, the service, the action server) from configure to
cleanup, so that deactivate destroys nothing while the executor builds its wait set (rclpy raises InvalidHandle out
of `executor.spin()` when an entity is destroyed at that moment). Instead the callbacks ask a `ServingGate`:

    gate = ServingGate("/lens")
    gate.set_state("inactive")                 # on configure; "active" on activate, "inactive" on deactivate, ...
    with gate.request() as refusal:            # a service call or an action goal
        if refusal: answer success=false, message=refusal      # "node is inactive: activate it with ..."
        else: serve it
    gate.wait_idle(timeout)                    # cleanup: the calls in flight have returned

Cleanup still destroys the entities, and a destroyed entity can still race the executor: `spin(executor, log)`
goes on spinning after an exception escaped `executor.spin()`, unless a `SpinGuard` sees such errors repeat faster
than `max_errors` within `window_s` (something broken for good: the last one ends the process).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

STATES = ("unconfigured", "inactive", "active", "finalized")


class ServingGate:
    """Whether the node serves requests now, and how many service/action calls are running (thread-safe)."""

    def __init__(self, node_name: str = "/lens") -> None:
        self.node_name = node_name
        self._state = "unconfigured"
        self._in_flight = 0
        self._cond = threading.Condition()

    @property
    def state(self) -> str:
        with self._cond:
            return self._state

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def set_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"lifecycle state must be one of {', '.join(STATES)}, got {state!r}")
        with self._cond:
            self._state = state
            self._cond.notify_all()

    def refusal(self) -> str | None:
        """None while active; otherwise the message a caller gets."""
        state = self.state
        if state == "active":
            return None
        if state == "inactive":
            return f"node is inactive: activate it with `ros2 lifecycle set {self.node_name} activate`"
        return (
            f"node is inactive ({state}): configure and activate it with `ros2 lifecycle set {self.node_name} "
            "configure` and `... activate`"
        )

    @contextlib.contextmanager
    def request(self) -> Iterator[str | None]:
        """Count a call in flight for its duration; yields None (serve it) or the refusal message."""
        with self._cond:
            self._in_flight += 1
        try:
            yield self.refusal()
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no call is in flight (True) or `timeout` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout)


class SpinGuard:
    """Counts the exceptions that escaped the executor's spin: keep spinning unless more than `max_errors` of them
    came within `window_s` seconds (then the caller lets the last one end the process). An exception object counts
    once: rclpy's MultiThreadedExecutor can queue one callback's task several times while its threads are busy, and
    then re-raises that task's one failure once per entry (seen in CI: one "action server pointer is invalid"
    re-raised past `max_errors`, which ended the node)."""

    def __init__(self, max_errors: int = 20, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if max_errors < 1 or window_s <= 0:
            raise ValueError(f"SpinGuard needs max_errors >= 1 and window_s > 0, got {max_errors}, {window_s}")
        self.max_errors = max_errors
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._counted: deque[BaseException] = deque(maxlen=max_errors + 1)  # identity, not equality
        self.total = 0

    def counted(self, error: BaseException) -> bool:
        """Whether this very exception object was counted before (raised again, not a new failure)."""
        return any(error is seen for seen in self._counted)

    def keep_spinning(self, error: BaseException | None = None) -> bool:
        """Record one escaped exception (`error`, if given, for `counted`); True while they stay under the rate
        limit."""
        if error is not None:
            self._counted.append(error)
        now = self._clock()
        self.total += 1
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times) <= self.max_errors


def spin(executor, log, stop_on: tuple[type[BaseException], ...] = (), guard: SpinGuard | None = None) -> int:
    """`executor.spin()` until it returns (shutdown) or raises one of `stop_on`; any other exception is logged and
    spinning goes on, while `guard` allows. Returns how many exceptions it survived."""
    guard = guard or SpinGuard()
    survived = 0
    while True:
        try:
            executor.spin()
            return survived
        except stop_on:
            return survived
        except Exception as exc:  # noqa: BLE001 - e.g. rclpy InvalidHandle: an entity destroyed under the executor
            if guard.counted(exc):  # the same failure raised again: logged and counted already
                continue
            if not guard.keep_spinning(exc):
                log.error(f"executor: {type(exc).__name__}: {exc}; {guard.max_errors} errors in {guard.window_s:g} s")
                raise
            survived += 1
            log.warning(f"executor: {type(exc).__name__}: {exc}; spinning on")
