"""What the lens_ros node does, without rclpy: frames and commands in, results out, on a worker thread.

    engine = SegmentationEngine(pipeline, settings, publish=..., log=node.get_logger(), clock=...)
    engine.start()
    engine.on_image(msg)                       # camera callback: keep the frame (sensor_msgs Image/CompressedImage)
    engine.on_depth(msg); engine.on_camera_info(msg)   # with depth_enabled: registered depth + its camera_info
    engine.submit("the red cup")               # command callback: queue it (policy, drops logged)
    engine.submit("the cup and the spoon")     # several targets (multi_target): one batched call, ids 1 and 2
    engine.set_enabled(False)                  # ~/enable: commands answer "disabled", tracking is silent
    engine.set_prompt("the red cup")           # the `prompt` parameter: now, or on the first frame
    engine.health(model=..., ...)              # lens_ros.diagnostics.Health for /diagnostics
    pending = engine.submit(prompt, image=msg_or_None, feedback=callback)   # service / action
    outcome = pending.wait(timeout)            # Outcome(success, message, result, messages, result_msg, header)
    engine.stop()

Each target is judged on its own: one that is not confident (lens_model.inference.confidence: the object is
probably not in the image) gets no detection, 3D detection, marker, target point (as the first target) or cloud
points unless `publish_unconfident` is set, and is logged as a warning; the mask, label image, reasoning, overlay
and result message (its `confident` false, with the reason) keep every target.

With a `tracker` (lens_model.tracking.tracker.StreamingTracker; see lens_ros.tracking_worker.load_tracker) every
confident target of a result on a camera frame starts SAM2 tracking of its mask, and each later camera frame is tracked
on a separate thread (lens_ros.tracking_worker.TrackingWorker): `publish(outcome)` then also gets one Outcome per
tracked frame (source "tracking": mask and detections, 3D with depth_enabled; no reasoning, overlay or result message)
with that frame's header, `publish_state(TrackingStatus)` the tracking state, and a lost target is re-grounded by
submitting its prompt as a command (source "reground").

The worker takes one command at a time (lens_ros.policy.CommandQueue), splits it into target phrases
(lens_model.inference.targets, with multi_target), picks its frame (FrameBuffer: latest or next, staleness bound)
unless the request brought its own image, converts it (lens_ros.conversions), runs the pipeline on every phrase in
one call (streaming the generated text to `feedback` when given, for one phrase), builds the output messages
(lens_ros.fields, then lens_ros.messages) and calls `publish(outcome)`. With depth_enabled it pairs the frame
with the depth image nearest in stamp (lens_ros.depth.DepthBuffer, within depth_slop_s) and measures each target's
3D target (lens_model.geometry.target3d) and its RViz markers (DELETEALL first when the shown targets change); a 3D
failure (no depth in time, unusable camera_info, sizes that disagree, no
valid depth in the mask) is logged and reported in the result (has_3d false, error_3d) while the 2D result stands.
Any failure — no frame, a stale frame, a bad image, an empty prompt, a model error — becomes
Outcome(success=False, message=reason), is logged, and the worker goes on with the next command.

`SpokenCommands` does the same for audio: chunks in (`feed`), utterances cut by lens_ros.whisper's end-pointer
and transcribed on their own thread, each transcript submitted as a command.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lens_model.errors import DepthError, LensError
from lens_model.geometry.target3d import Target3D, TargetOptions
from lens_model.inference.targets import CommandResult, command_targets

from .conversions import image_message_to_rgb, stamp_to_seconds
from .depth import CameraCache, DepthBuffer, measure
from .diagnostics import Health, TrackingCounts
from .errors import LensRosError
from .fields import MeasuredTarget, result_fields
from .messages import ResultMessages, TargetMessages, fill_result, fill_segmentation_result, fill_targets, target_header
from .params import NodeSettings
from .policy import Command, CommandQueue, FrameBuffer
from .streaming import TextSoFarStreamer
from .tracking_worker import TrackingStatus, TrackingWorker, tracking_policy
from .whisper import AudioError, UtteranceSegmenter, pcm_to_float, split_wav_header

LOG = logging.getLogger("lens_ros.engine")
Clock = Callable[[], float]
DEPTH_WAIT_S = 0.25  # beyond depth_slop_s: how long a frame waits for its depth image to arrive
NOT_ACTIVE = "node is inactive: the segmentation engine is not active (stopped or not started)"
DISABLED = "disabled"  # the answer while processing is paused (~/enable false)


@dataclass
class Outcome:
    success: bool
    message: str = ""  # why success is False
    prompt: str = ""  # the command
    source: str = ""  # command, audio, service, action, reground, prompt (the parameter), tracking
    command: CommandResult | None = None  # one lens_model SegmentationResult per target (`result`: the first)
    messages: ResultMessages | None = None  # mask, labels, detections, reasoning, overlay (3D: messages.target)
    result_msg: Any = None  # lens_interfaces/msg/SegmentationResult
    header: Any = None  # the segmented image's header
    seconds: float = 0.0  # queueing + inference
    targets_3d: list[Target3D] | None = None  # one per target (depth_enabled); not ok: its reason says why
    tracked: Any = None  # source "tracking": the frame's lens_model.tracking.track_video FrameOutcome

    @property
    def result(self):
        """The first target's lens_model SegmentationResult (the only one for a single phrase)."""
        return None if self.command is None else self.command.targets[0]

    @property
    def target(self) -> Target3D | None:
        """The first target's 3D measurement."""
        return None if not self.targets_3d else self.targets_3d[0]


@dataclass
class Request:
    """A command's payload: what the caller gave and how it hears back."""

    prompt: str
    source: str = "command"
    image: Any = None  # a sensor_msgs Image/CompressedImage given with the request, or None for the camera's
    feedback: Callable[[str, int], None] | None = None  # (text so far, tokens so far)
    reground_ids: list[int] | None = None  # source "reground": the targets that asked for it
    created: float = field(default_factory=time.monotonic)
    _done: threading.Event = field(default_factory=threading.Event)
    _outcome: Outcome | None = None

    def complete(self, outcome: Outcome) -> None:
        if self._done.is_set():
            return
        outcome.seconds = time.monotonic() - self.created
        self._outcome = outcome
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Outcome:
        if not self._done.wait(timeout):
            return Outcome(
                False,
                f"no result within {timeout:g} s (service_timeout_s); the command is still queued or running",
                self.prompt,
                self.source,
            )
        return self._outcome


class SegmentationEngine:
    def __init__(
        self,
        pipeline,
        settings: NodeSettings,
        publish: Callable[[Outcome], None] | None = None,
        log=LOG,
        clock: Clock = time.time,
        types: Mapping[str, type] | None = None,
        tracker=None,
        publish_state: Callable[[TrackingStatus], None] | None = None,
    ) -> None:
        self.pipeline = pipeline  # called as pipeline(rgb, prompt[, streamer=...]) -> SegmentationResult
        self.settings = settings
        self.publish = publish
        self.log = log
        self.clock = clock
        self.types = types  # message classes (None: the ROS 2 Python packages)
        self.frames = FrameBuffer(settings.frame_selection, settings.frame_age_bound, clock=clock)
        self.queue = CommandQueue(settings.queue_policy, settings.queue_size, clock=clock)
        self.depth = DepthBuffer(settings.depth_slop_s) if settings.depth_enabled else None
        self.cameras = CameraCache()  # the depth camera, rebuilt only when its camera_info changes
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._unstamped_warned = False
        self.enabled = True  # ~/enable: false pauses processing (commands refused, tracking silent)
        self._standing_prompt: str | None = None  # the `prompt` parameter, waiting for the first frame
        self._marker_targets: tuple | None = None  # (id, phrase) of the markers last published
        self._lock = threading.Lock()
        self.processed = 0
        self.failed = 0
        self.depth_failures = 0  # frames whose depth image could not be paired or used
        self.last: Outcome | None = None  # the last command's outcome (success or not)
        self.last_timings: dict[str, float] = {}  # seconds per stage of the last LENS query that ran
        self.tracking: TrackingWorker | None = None
        if tracker is not None:
            self.tracking = TrackingWorker(
                tracker,
                tracking_policy(settings),
                publish_frame=self._publish_tracked,
                publish_state=publish_state,
                reground=lambda command, ids: self.submit(command, source="reground", reground_ids=ids),
                log=log,
                clock=clock,
                scale16=settings.scale16,
                state_period_s=settings.tracking_state_period_s,
                max_rate_hz=settings.max_rate_hz,
            )

    # -- inputs (called from subscription / service callbacks: cheap, never raise) --
    def on_image(self, msg: Any) -> None:
        try:
            stamp = stamp_to_seconds(msg.header)
        except (AttributeError, TypeError, ValueError) as exc:
            self.log.warning(f"image without a usable header ({exc}); using its arrival time")
            stamp = 0.0
        if stamp == 0.0:
            if not self._unstamped_warned:
                self.log.warning("camera images have a zero header stamp; their arrival time is used for staleness")
                self._unstamped_warned = True
            stamp = self.clock()
        self.frames.put(msg, stamp)
        if self._standing_prompt is not None:
            prompt, self._standing_prompt = self._standing_prompt, None
            self.submit(prompt, source="prompt")
        if self.tracking is not None and self.enabled:
            self.tracking.offer(msg, stamp)

    def on_depth(self, msg: Any) -> None:
        if self.depth is None:
            return
        try:
            self.depth.put_depth(msg, stamp_to_seconds(msg.header))
        except (AttributeError, TypeError, ValueError) as exc:
            self.log.warning(f"depth image without a usable header ignored ({exc})")

    def on_camera_info(self, msg: Any) -> None:
        if self.depth is not None:
            self.depth.put_camera_info(msg)

    def submit(
        self,
        prompt: Any,
        image: Any = None,
        feedback: Callable[[str, int], None] | None = None,
        source: str = "command",
        reground_ids: list[int] | None = None,
    ) -> Request:
        """Queue a command; the returned Request completes with its Outcome (at once when it is refused)."""
        request = Request(prompt if isinstance(prompt, str) else "", source, image, feedback, reground_ids)
        if self._stop.is_set() or self._thread is None:
            request.complete(Outcome(False, NOT_ACTIVE, request.prompt, source))
            return request
        if not self.enabled:
            self.log.warning(f"{source} {request.prompt!r} refused: processing is disabled (~/enable)")
            request.complete(Outcome(False, DISABLED, request.prompt, source))
            return request
        submitted = self.queue.submit(prompt, stamp=self.clock(), payload=request)
        for dropped in submitted.dropped:
            if dropped.payload is not None:
                dropped.payload.complete(Outcome(False, submitted.dropped_reason, dropped.text, dropped.payload.source))
        if not submitted.accepted:
            self.log.warning(f"{source}: {submitted.reason}")
            request.complete(Outcome(False, submitted.reason, request.prompt, source))
        elif submitted.dropped:
            self.log.warning(f"{source}: {submitted.reason}")
        else:
            self.log.info(f"{source}: {submitted.reason}")
        return request

    # -- runtime control (the node's ~/enable service and runtime parameters) --
    def set_enabled(self, enabled: bool) -> str:
        """Pause (False) or resume (True) processing without a lifecycle transition. While paused, commands and
        requests answer success=false "disabled" (the queued ones too) and tracking neither tracks nor publishes;
        frames are still kept, so a command right after resuming has one. -> what changed, for the log."""
        enabled = bool(enabled)
        if enabled == self.enabled:
            return f"processing already {'enabled' if enabled else 'disabled'}"
        self.enabled = enabled
        if not enabled:
            for command in self.queue.drain():
                if command.payload is not None:
                    command.payload.complete(Outcome(False, DISABLED, command.text, command.payload.source))
        message = "processing enabled" if enabled else "processing disabled: commands answer success=false"
        self.log.info(message)
        return message

    def set_prompt(self, prompt: str) -> None:
        """The `prompt` parameter: segment (and track) `prompt` as a command would, now when a frame is there, else
        on the first frame. Empty: nothing."""
        if not prompt.strip():
            self._standing_prompt = None
        elif self.frames.latest() is None:
            self._standing_prompt = prompt
            self.log.info(f"prompt {prompt!r}: segmented when the first camera frame arrives")
        else:
            self.submit(prompt, source="prompt")

    def update_settings(self, **changes: Any) -> None:
        """Runtime parameters (lens_ros.params.RUNTIME_PARAMETERS other than prompt) take effect at once."""
        self.settings = replace(self.settings, **changes)
        if self.tracking is not None:
            self.tracking.max_rate_hz = self.settings.max_rate_hz

    def health(self, **node: Any) -> Health:
        """The engine's part of the node's health (lens_ros.diagnostics); `node` gives the rest (model, device,
        lifecycle, whisper, ...)."""
        last, tracking = self.last, self.tracking
        counts = None
        if tracking is not None:
            counts = TrackingCounts(
                tracking.state.value, tracking.frames_tracked, tracking.frames_dropped, tracking.frames_skipped
            )
        return Health(
            enabled=self.enabled,
            processed=self.processed,
            failed=self.failed,
            last_ok=None if last is None else last.success,
            last_error="" if last is None or last.success else last.message,
            last_command="" if last is None else last.prompt,
            last_timings=dict(self.last_timings),
            queue_depth=len(self.queue.pending),
            busy=self.queue.busy,
            depth_enabled=self.depth is not None,
            depth_failures=self.depth_failures,
            tracking=counts,
            **node,
        )

    # -- worker --
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="lens-worker", daemon=True)
        self._thread.start()
        if self.tracking is not None:
            self.tracking.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Refuse new commands, answer the pending ones with success=false, and end the worker (after the
        command it is running, if any). A command still running after `timeout` seconds is answered with
        success=false at once (its caller does not wait for it); the worker drops its result when it ends."""
        self._stop.set()
        if self.tracking is not None:
            self.tracking.stop(timeout)
        for command in self.queue.close():
            if command.payload is not None:
                command.payload.complete(
                    Outcome(False, "the node is shutting down", command.text, command.payload.source)
                )
        if self._thread is not None:
            self._thread.join(timeout)
            running = self.queue.current
            if self._thread.is_alive() and running is not None and running.payload is not None:
                running.payload.complete(
                    Outcome(
                        False,
                        f"the node stopped while this command was running (longer than {timeout:g} s)",
                        running.text,
                        running.payload.source,
                    )
                )
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _work(self) -> None:
        while not self._stop.is_set():
            command = self.queue.get(timeout=0.5)
            if command is None:
                continue
            try:
                outcome = self.process(command)
            except BaseException as exc:  # noqa: BLE001 - the worker outlives any command
                self.log.error(f"command {command.text!r}: unexpected error: {exc!r}\n{traceback.format_exc()}")
                outcome = Outcome(False, f"internal error: {exc!r}", command.text)
            finally:
                self.queue.task_done()
            request = command.payload
            if request is not None:
                request.complete(outcome)

    def process(self, command: Command) -> Outcome:
        """Segment one command (the worker calls this); never raises for a bad input or a model error."""
        request: Request = command.payload if command.payload is not None else Request(command.text)
        source = request.source
        try:
            frame_stamp = None  # a camera frame's stamp: tracking starts on camera frames only
            phrases = command_targets(command.text, self.settings.multi_target)  # empty phrase, too many: refused
            if request.image is not None:
                msg = request.image
            else:
                choice = self.frames.wait_for_frame(command.stamp, timeout=self.settings.service_timeout_s)
                if not choice.ok:
                    raise LensRosError(choice.reason)
                msg, frame_stamp = choice.frame.message, choice.frame.stamp
            rgb = image_message_to_rgb(msg, self.settings.scale16)
            header = msg.header
            if len(phrases) == 1:  # exactly the single-prompt call, streaming the text when asked
                kwargs = {}
                if request.feedback is not None:
                    kwargs["streamer"] = TextSoFarStreamer(self.pipeline, request.feedback)
                results = [self.pipeline(rgb, phrases[0], **kwargs)]
            else:  # every target in one batched call (one image encoding); the feedback comes once, at the end
                results = list(self.pipeline(rgb, phrases))
            result = CommandResult(command.text, results)
            if len(phrases) > 1 and request.feedback is not None:
                _send_feedback(request.feedback, result, self.log)
            unconfident = self.settings.publish_unconfident
            fields = result_fields(result, header, rgb if self.settings.publish_overlay else None, unconfident)
            messages = fill_result(fields, self.types)
            targets_3d, messages.target = self._measure_3d(result, header, rgb, source)
            result_msg = fill_segmentation_result(result, header, messages, self.types, targets_3d)
        except LensError as exc:  # bad image, stale or missing frame, unusable prompt, checkpoint problems
            return self._failed(Outcome(False, str(exc), command.text, source))
        except Exception as exc:  # noqa: BLE001 - a model error must not take the node down
            self.log.error(
                f"{source} {command.text!r}: model error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            )
            return self._failed(Outcome(False, f"model error: {type(exc).__name__}: {exc}", command.text, source))
        self.processed += 1
        outcome = Outcome(True, "", command.text, source, result, messages, result_msg, header, targets_3d=targets_3d)
        self.last, self.last_timings = outcome, dict(result.targets[0].timings)
        for k, target in zip(result.ids, result.targets):
            box = "no box" if target.box is None else "box [" + ", ".join(f"{v:.0f}" for v in target.box) + "]"
            name = f"{source} {command.text!r}" + (f" target {k} {target.prompt!r}" if len(phrases) > 1 else "")
            summary = (
                f"{name}: {box}, score {target.score:.2f}, {int(target.mask.sum())} mask pixels, "
                f"{target.timings.get('total', 0.0):.2f} s"
            )
            if target.confident:
                self.log.info(summary)
            else:
                withheld = (
                    "" if self.settings.publish_unconfident else " (detections withheld: publish_unconfident false)"
                )
                self.log.warning(f"{summary}; not confident: {target.reason}{withheld}")
        if self.publish is not None:
            try:
                self.publish(outcome)
            except Exception as exc:  # noqa: BLE001 - a failed publish still answers the caller
                self.log.error(f"publishing the result of {command.text!r} failed: {exc!r}")
        if self.tracking is not None and frame_stamp is not None:
            self.tracking.grounded(rgb, result, frame_stamp, source, request.reground_ids)
        return outcome

    def _failed(self, outcome: Outcome) -> Outcome:
        self.failed += 1
        self.last = outcome
        if not outcome.message.startswith("model error"):
            self.log.error(f"{outcome.source} {outcome.prompt!r} failed: {outcome.message}")
        return outcome

    def _publish_tracked(self, frame, msg: Any, rgb) -> None:
        """One tracked frame (a lens_model.tracking.track_video FrameOutcome) -> mask, labels, detections (3D), its
        header. Nothing while processing is disabled."""
        if not self.enabled:
            return
        result = frame.as_command()
        header = msg.header
        messages = fill_result(result_fields(result, header), self.types)
        targets_3d, messages.target = self._measure_3d(result, header, rgb, "tracking", quiet=True)
        outcome = Outcome(
            True, "", result.command, "tracking", result, messages, None, header, targets_3d=targets_3d, tracked=frame
        )
        if self.publish is not None:
            self.publish(outcome)

    def _measure_3d(
        self, result: CommandResult, header: Any, rgb, source: str, quiet: bool = False
    ) -> tuple[list[Target3D] | None, TargetMessages | None]:
        """Each target's 3D measurement on the frame and their messages (None, None without depth_enabled). A
        failure is a target that is not ok, with the reason (a depth image that cannot be paired fails them all);
        the 3D messages carry the source image's stamp and the depth frame_id. `quiet` (tracked frames, at camera
        rate): log nothing. A target that is not confident (and publish_unconfident false) is measured (the result
        message reports it) but gets no detection, marker, point or cloud."""
        if self.depth is None:
            return None, None
        s = self.settings
        frame_id = header.frame_id
        targets: list[Target3D] = []
        try:
            match = self.depth.wait_for_match(stamp_to_seconds(header), timeout=s.depth_slop_s + DEPTH_WAIT_S)
            if not match.ok:
                raise DepthError(match.reason)
            frame_id = match.depth.header.frame_id or match.camera_info.header.frame_id or frame_id
            for target in result.targets:
                try:
                    targets.append(
                        measure(
                            target.mask,
                            match,
                            s.depth_scale,
                            s.depth_rectified,
                            TargetOptions(erosion_px=s.depth_edge_erosion_px),
                            self.cameras,
                        )
                    )
                except LensError as exc:  # this target's mask: no valid depth inside it
                    targets.append(Target3D(False, str(exc)))
        except LensError as exc:  # the frame's depth: none in time, unusable camera_info, sizes
            self.depth_failures += 1
            targets = [Target3D(False, str(exc)) for _ in result.targets]
        for k, (phrase, target) in enumerate(zip(result.phrases, targets), start=1):
            name = f"{source} {phrase!r}" + (f" (target {k})" if len(targets) > 1 else "")
            if quiet:
                pass  # tracked frames: at camera rate, the state topic says enough
            elif target.ok:
                c = target.centroid
                self.log.info(
                    f"{name}: 3D target ({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}) m in {frame_id!r}, "
                    f"{target.num_points} points"
                )
            else:
                self.log.warning(f"{name}: no 3D target: {target.reason}")
        measured = [
            MeasuredTarget(k, t.prompt, t.score, target) for k, t, target in zip(result.ids, result.targets, targets)
        ]
        if not s.publish_unconfident:
            withheld = Target3D(False, "the result is not confident")
            measured = [m if t.confident else replace(m, target=withheld) for m, t in zip(measured, result.targets)]
        shown = tuple((m.id, m.phrase) for m in measured if m.target.ok)
        with self._lock:  # the reasoning and tracking threads both publish markers
            delete_all = self._marker_targets is not None and shown != self._marker_targets
            self._marker_targets = shown
        messages = fill_targets(
            measured,
            target_header(header, frame_id, self.types),
            rgb if s.publish_target_cloud else None,
            self.types,
            markers=True,
            delete_all=delete_all,
        )
        return targets, messages


def _send_feedback(feedback: Callable[[str, int], None], result: CommandResult, log) -> None:
    """Several targets are generated in one batch, which cannot stream: their text comes once, when it is done."""
    from .fields import reasoning_text

    try:
        feedback(reasoning_text(result), sum(t.num_tokens for t in result.targets))
    except Exception as exc:  # noqa: BLE001 - a failed feedback publish must not lose the result
        log.warning(f"reasoning feedback failed: {exc}")


class SpokenCommands:
    """Audio chunks -> utterances -> Whisper transcripts -> `on_text(transcript)`, on its own thread.

    `transcriber` is anything with `transcribe(float_audio, sample_rate) -> str` (a lens_ros.whisper
    WhisperTranscriber, or a BackgroundWhisper still loading: the audio thread waits for it). The stream's layout
    (rate, channels, sample format) comes from the settings until `set_format` (an audio_common_msgs/AudioInfo) or a
    WAV header says otherwise.
    """

    def __init__(
        self,
        transcriber,
        settings: NodeSettings,
        on_text: Callable[[str], None],
        log=LOG,
        max_pending_chunks: int = 2000,
    ) -> None:
        self.transcriber = transcriber
        self.settings = settings
        self.on_text = on_text
        self.log = log
        self.sample_rate = settings.audio_sample_rate
        self.channels = settings.audio_channels
        self.sample_format = settings.audio_sample_format
        self._segmenter = self._new_segmenter()
        self._chunks: queue.Queue = queue.Queue(maxsize=max_pending_chunks)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._overflow_warned = False
        self.transcripts: list[str] = []

    def _new_segmenter(self) -> UtteranceSegmenter:
        s = self.settings
        return UtteranceSegmenter(
            self.sample_rate,
            threshold=s.audio_threshold,
            silence_s=s.audio_silence_s,
            max_utterance_s=s.audio_max_utterance_s,
        )

    def set_format(self, sample_rate: int, channels: int, sample_format: str) -> None:
        """The stream's layout (from audio_common_msgs/AudioInfo); a change restarts the end-pointer."""
        sample_format = (sample_format or self.sample_format).upper()
        if (int(sample_rate), int(channels), sample_format) != (self.sample_rate, self.channels, self.sample_format):
            self._chunks.put(("format", (int(sample_rate), int(channels), sample_format)))

    def feed(self, data: bytes) -> None:
        """Subscription callback: hand over one chunk (never blocks; chunks beyond the backlog are dropped, and
        all of them once the transcriber has failed to load: see lens_ros.whisper.BackgroundWhisper)."""
        if getattr(self.transcriber, "failed", False):
            return
        try:
            self._chunks.put_nowait(("data", bytes(data)))
        except queue.Full:
            if not self._overflow_warned:
                self.log.warning("audio backlog full: transcription is slower than the microphone; dropping audio")
                self._overflow_warned = True

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, name="lens-audio", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self._chunks.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every chunk fed so far has been handled (tests, bag replay)."""
        done = threading.Event()
        self._chunks.put(("mark", done))
        done.wait(timeout)

    def _work(self) -> None:
        while not self._stop.is_set():
            kind, value = self._chunks.get()
            try:
                if kind == "stop":
                    return
                if kind == "mark":
                    utterance = self._segmenter.flush()
                    if utterance is not None:
                        self._transcribe(utterance)
                    value.set()
                elif kind == "format":
                    self.sample_rate, self.channels, self.sample_format = value
                    self._segmenter = self._new_segmenter()
                    self.log.info(
                        f"audio format: {self.sample_rate} Hz, {self.channels} channel(s), {self.sample_format}"
                    )
                else:
                    for utterance in self._segmenter.feed(self._decode(value)):
                        self._transcribe(utterance)
            except AudioError as exc:
                self.log.error(f"audio chunk skipped: {exc}")
            except Exception as exc:  # noqa: BLE001 - the audio thread outlives a bad chunk or a model error
                self.log.error(f"audio: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    def _decode(self, data: bytes):
        header, payload = split_wav_header(data)
        if header is not None and (header["sample_rate"], header["channels"], header["sample_format"]) != (
            self.sample_rate,
            self.channels,
            self.sample_format,
        ):
            self.sample_rate, self.channels, self.sample_format = (
                header["sample_rate"],
                header["channels"],
                header["sample_format"],
            )
            self._segmenter = self._new_segmenter()
        return pcm_to_float(payload, self.sample_format, self.channels)

    def _transcribe(self, utterance) -> None:
        seconds = utterance.shape[0] / self.sample_rate
        text = self.transcriber.transcribe(utterance, self.sample_rate)
        self.log.info(f"heard ({seconds:.1f} s): {text!r}")
        if text.strip():
            self.transcripts.append(text)
            self.on_text(text)
