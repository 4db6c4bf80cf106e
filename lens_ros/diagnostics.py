"""The node's health for /diagnostics (diagnostic_msgs/DiagnosticArray, as diagnostic_updater publishes it), in plain
Python: what the node knows -> one DiagnosticStatus's fields. lens_ros.messages.fill_diagnostics makes the message;
the node publishes it every DIAGNOSTICS_PERIOD_S (1 Hz, diagnostic_updater's default), also while unconfigured, so
that a model that failed to load shows as ERROR in `rqt_robot_monitor` or `ros2 topic echo /diagnostics`.

    health = engine.health(model=..., device=..., lifecycle="active", whisper=...)   # a Health snapshot
    status = DiagnosticsReporter("lens: /lens").report(health, time.monotonic())     # rates since the last report
    status = diagnostic_status(health, name="lens: /lens")          # -> StatusFields(level, message, values)

Level: ERROR when the model failed to load (configure failed); else WARN when tracking dropped more than half of the
camera frames since the previous report (MAX_DROPPED_FRACTION) or the last command failed; else OK. The message says
why. Values (key, text) list the model and device, the lifecycle state, whether processing is enabled, the last LENS
latency and its stages, the tracking state, rate and frame counts, the command queue's depth, depth-pairing failures,
Whisper's state, and commands processed and failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
DIAGNOSTICS_PERIOD_S = 1.0
MAX_DROPPED_FRACTION = 0.5  # tracking: more frames dropped than this fraction of those that arrived -> WARN


@dataclass
class TrackingCounts:
    """Tracking frame counters at one moment (lens_ros.tracking_worker.TrackingWorker)."""

    state: str  # idle, tracking, lost
    tracked: int
    dropped: int
    skipped: int = 0  # left out for max_rate_hz (not a problem)


@dataclass
class Health:
    """What the node reports, at one moment."""

    model: str
    device: str
    lifecycle: str  # unconfigured, inactive, active, finalized
    enabled: bool = True
    model_error: str = ""  # why configure failed (the model did not load), "" when it did
    processed: int = 0
    failed: int = 0
    last_ok: bool | None = None  # the last command succeeded (None: no command yet)
    last_error: str = ""  # why the last command failed
    last_command: str = ""
    last_timings: dict[str, float] = field(default_factory=dict)  # seconds per stage of the last LENS query
    queue_depth: int = 0  # commands waiting (not counting the running one)
    busy: bool = False  # a command is running
    depth_enabled: bool = False
    depth_failures: int = 0  # frames whose depth could not be paired or used
    whisper: str = "off"  # off, loading, ready, failed: <reason>
    tracking: TrackingCounts | None = None  # None: tracking off
    tracking_rate_hz: float = 0.0  # frames tracked per second since the previous report
    tracking_dropped_fraction: float = 0.0  # dropped / (tracked + dropped) since the previous report


@dataclass
class StatusFields:
    """One diagnostic_msgs/DiagnosticStatus: level, name, message, hardware_id, values (key, value) as text."""

    level: int
    name: str
    message: str
    hardware_id: str
    values: list[tuple[str, str]]


class TrackingRate:
    """Frames tracked per second and the fraction dropped between two reports (the counters only grow)."""

    def __init__(self) -> None:
        self._last: tuple[float, int, int] | None = None  # (time, tracked, dropped)

    def update(self, now: float, counts: TrackingCounts | None) -> tuple[float, float]:
        if counts is None:
            self._last = None
            return 0.0, 0.0
        last, self._last = self._last, (now, counts.tracked, counts.dropped)
        if last is None or now <= last[0] or counts.tracked < last[1] or counts.dropped < last[2]:
            return 0.0, 0.0  # the first report, or counters reset (a new activation)
        tracked, dropped = counts.tracked - last[1], counts.dropped - last[2]
        arrived = tracked + dropped
        return tracked / (now - last[0]), (dropped / arrived if arrived else 0.0)


def diagnostic_status(health: Health, name: str) -> StatusFields:
    level, message = _level(health)
    h = health
    values = [
        ("model", h.model),
        ("device", h.device),
        ("lifecycle state", h.lifecycle),
        ("processing", "enabled" if h.enabled else "disabled (~/enable)"),
        ("commands processed", str(h.processed)),
        ("commands failed", str(h.failed)),
        ("last command", h.last_command or "none yet"),
        ("last command ok", "none yet" if h.last_ok is None else str(h.last_ok).lower()),
    ]
    if h.last_error:
        values.append(("last error", h.last_error))
    if h.last_timings:
        stages = {stage: seconds for stage, seconds in h.last_timings.items() if stage != "total"}
        total = h.last_timings.get("total", sum(stages.values()))
        values.append(("last LENS latency s", f"{total:.3f}"))
        values += [(f"stage {stage} s", f"{seconds:.3f}") for stage, seconds in stages.items()]
    values += [("queue depth", str(h.queue_depth)), ("busy", str(h.busy).lower())]
    if h.tracking is None:
        values.append(("tracking", "off"))
    else:
        t = h.tracking
        values += [
            ("tracking", t.state),
            ("tracking rate Hz", f"{h.tracking_rate_hz:.2f}"),
            ("frames tracked", str(t.tracked)),
            ("frames dropped", str(t.dropped)),
            ("frames skipped (max_rate_hz)", str(t.skipped)),
            ("dropped fraction (last period)", f"{h.tracking_dropped_fraction:.2f}"),
        ]
    values.append(("depth pairing failures", str(h.depth_failures) if h.depth_enabled else "depth off"))
    values.append(("whisper", h.whisper))
    if h.model_error:
        values.append(("model error", h.model_error))
    return StatusFields(level, name, message, h.device, values)


def _level(h: Health) -> tuple[int, str]:
    if h.model_error:
        return ERROR, f"configure failed, no model loaded: {h.model_error}"
    problems = []
    if h.tracking is not None and h.tracking_dropped_fraction > MAX_DROPPED_FRACTION:
        problems.append(f"tracking dropped {h.tracking_dropped_fraction:.0%} of the camera frames")
    if h.last_ok is False:
        problems.append(f"the last command failed: {h.last_error}")
    if problems:
        return WARN, "; ".join(problems)
    if h.lifecycle != "active":
        return OK, f"{h.lifecycle}: not serving"
    if not h.enabled:
        return OK, "active, processing disabled"
    return OK, "active" + (f", tracking {h.tracking.state}" if h.tracking is not None else "")


class DiagnosticsReporter:
    """Health snapshots -> DiagnosticStatus fields, with the tracking rate and dropped fraction over the time since
    the previous report."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._rate = TrackingRate()

    def report(self, health: Health, now: float) -> StatusFields:
        health.tracking_rate_hz, health.tracking_dropped_fraction = self._rate.update(now, health.tracking)
        return diagnostic_status(health, self.name)
