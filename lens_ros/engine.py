"""What the lens_ros node does, without rclpy: frames and commands in, results out, on a worker thread.

    engine = SegmentationEngine(pipeline, settings, publish=..., log=node.get_logger(), clock=...)
    engine.start()
    engine.on_image(msg)                       # camera callback: keep the frame (sensor_msgs Image/CompressedImage)
    engine.on_depth(msg); engine.on_camera_info(msg)   # with depth_enabled: registered depth + its camera_info
    engine.submit("the red cup")               # command callback: queue it (policy, drops logged)
    pending = engine.submit(prompt, image=msg_or_None, feedback=callback)   # service / action
    outcome = pending.wait(timeout)            # Outcome(success, message, result, messages, result_msg, header)
    engine.stop()

A result that is not confident (lens_model.inference.confidence: the object is probably not in the image) is
published with empty detections, no 3D target point and no cloud unless `publish_unconfident` is set; its mask,
reasoning, overlay and result message (confident false, with the reason) are published, and it is logged as a
warning.

With a `tracker` (lens_model.tracking.tracker.StreamingTracker; see lens_ros.tracking_worker.load_tracker) every
confident result on a camera frame starts SAM2 tracking of its mask, and each later camera frame is tracked on a
separate thread (lens_ros.tracking_worker.TrackingWorker): `publish(outcome)` then also gets one Outcome per
tracked frame (source "tracking": mask and detections, 3D with depth_enabled; no reasoning, overlay or result message)
with that frame's header, `publish_state(TrackingStatus)` the tracking state, and a lost target is re-grounded by
submitting its prompt as a command (source "reground").

The worker takes one command at a time (lens_ros.policy.CommandQueue), picks its frame (FrameBuffer: latest or
next, staleness bound) unless the request brought its own image, converts it (lens_ros.conversions), runs the
pipeline (streaming the generated text to `feedback` when given), builds the output messages
(lens_ros.fields, then lens_ros.messages) and calls `publish(outcome)`. With depth_enabled it pairs the frame
with the depth image nearest in stamp (lens_ros.depth.DepthBuffer, within depth_slop_s) and measures the object's
3D target (lens_model.geometry.target3d); a 3D failure (no depth in time, unusable camera_info, sizes that disagree, no
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
from dataclasses import dataclass, field
from typing import Any

from lens_model.errors import DepthError, LensError
from lens_model.geometry.target3d import Target3D, TargetOptions

from .conversions import image_message_to_rgb, stamp_to_seconds
from .depth import CameraCache, DepthBuffer, measure
from .errors import LensRosError
from .fields import result_fields
from .messages import ResultMessages, TargetMessages, fill_result, fill_segmentation_result, fill_target, target_header
from .params import NodeSettings
from .policy import Command, CommandQueue, FrameBuffer
from .streaming import TextSoFarStreamer
from .tracking_worker import TrackingStatus, TrackingWorker, tracking_policy
from .whisper import AudioError, UtteranceSegmenter, pcm_to_float, split_wav_header

LOG = logging.getLogger("lens_ros.engine")
Clock = Callable[[], float]
DEPTH_WAIT_S = 0.25  # beyond depth_slop_s: how long a frame waits for its depth image to arrive
NOT_ACTIVE = "node is inactive: the segmentation engine is not active (stopped or not started)"


@dataclass
class Outcome:
    success: bool
    message: str = ""  # why success is False
    prompt: str = ""
    source: str = ""  # command, audio, service, action
    result: Any = None  # lens_model SegmentationResult
    messages: ResultMessages | None = None  # mask, detections, reasoning, overlay
    result_msg: Any = None  # lens_interfaces/msg/SegmentationResult
    header: Any = None  # the segmented image's header
    seconds: float = 0.0  # queueing + inference
    target: Any = None  # lens_model.geometry.target3d Target3D (depth_enabled); not ok: target.reason says why
    tracked: Any = (
        None  # source "tracking": the frame's lens_model.tracking.track_video FrameOutcome (state, object score)
    )


@dataclass
class Request:
    """A command's payload: what the caller gave and how it hears back."""

    prompt: str
    source: str = "command"
    image: Any = None  # a sensor_msgs Image/CompressedImage given with the request, or None for the camera's
    feedback: Callable[[str, int], None] | None = None  # (text so far, tokens so far)
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
        self.processed = 0
        self.failed = 0
        self.tracking: TrackingWorker | None = None
        if tracker is not None:
            self.tracking = TrackingWorker(
                tracker,
                tracking_policy(settings),
                publish_frame=self._publish_tracked,
                publish_state=publish_state,
                reground=lambda prompt: self.submit(prompt, source="reground"),
                log=log,
                clock=clock,
                scale16=settings.scale16,
                state_period_s=settings.tracking_state_period_s,
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
        if self.tracking is not None:
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
    ) -> Request:
        """Queue a command; the returned Request completes with its Outcome (at once when it is refused)."""
        request = Request(prompt if isinstance(prompt, str) else "", source, image, feedback)
        if self._stop.is_set() or self._thread is None:
            request.complete(Outcome(False, NOT_ACTIVE, request.prompt, source))
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
            if request.image is not None:
                msg = request.image
            else:
                choice = self.frames.wait_for_frame(command.stamp, timeout=self.settings.service_timeout_s)
                if not choice.ok:
                    raise LensRosError(choice.reason)
                msg, frame_stamp = choice.frame.message, choice.frame.stamp
            rgb = image_message_to_rgb(msg, self.settings.scale16)
            header = msg.header
            kwargs = {}
            if request.feedback is not None:
                kwargs["streamer"] = TextSoFarStreamer(self.pipeline, request.feedback)
            result = self.pipeline(rgb, command.text, **kwargs)
            detections = result.confident or self.settings.publish_unconfident
            fields = result_fields(result, header, rgb if self.settings.publish_overlay else None, detections)
            messages = fill_result(fields, self.types)
            target, messages.target = self._measure_3d(result, header, rgb, source, publish=detections)
            result_msg = fill_segmentation_result(
                result, header, messages, self.types, target, "" if target is None else target.reason
            )
        except LensError as exc:  # bad image, stale or missing frame, unusable prompt, checkpoint problems
            self.failed += 1
            self.log.error(f"{source} {command.text!r} failed: {exc}")
            return Outcome(False, str(exc), command.text, source)
        except Exception as exc:  # noqa: BLE001 - a model error must not take the node down
            self.failed += 1
            self.log.error(
                f"{source} {command.text!r}: model error: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            )
            return Outcome(False, f"model error: {type(exc).__name__}: {exc}", command.text, source)
        self.processed += 1
        outcome = Outcome(True, "", command.text, source, result, messages, result_msg, header, target=target)
        box = "no box" if result.box is None else "box [" + ", ".join(f"{v:.0f}" for v in result.box) + "]"
        summary = (
            f"{source} {command.text!r}: {box}, score {result.score:.2f}, "
            f"{int(result.mask.sum())} mask pixels, {result.timings.get('total', 0.0):.2f} s"
        )
        if result.confident:
            self.log.info(summary)
        else:
            withheld = "" if self.settings.publish_unconfident else " (detections withheld: publish_unconfident false)"
            self.log.warning(f"{summary}; not confident: {result.reason}{withheld}")
        if self.publish is not None:
            try:
                self.publish(outcome)
            except Exception as exc:  # noqa: BLE001 - a failed publish still answers the caller
                self.log.error(f"publishing the result of {command.text!r} failed: {exc!r}")
        if self.tracking is not None and frame_stamp is not None:
            self.tracking.grounded(rgb, result, frame_stamp, source)
        return outcome

    def _publish_tracked(self, frame, msg: Any, rgb) -> None:
        """One tracked frame (a lens_model.tracking.track_video FrameOutcome) -> mask, detections (3D), its header."""
        prompt = frame.decision.prompt
        result = frame.as_segmentation(prompt)
        header = msg.header
        messages = fill_result(result_fields(result, header), self.types)
        target, messages.target = self._measure_3d(result, header, rgb, "tracking", quiet=True)
        outcome = Outcome(True, "", prompt, "tracking", result, messages, None, header, target=target, tracked=frame)
        if self.publish is not None:
            self.publish(outcome)

    def _measure_3d(
        self, result, header: Any, rgb, source: str, quiet: bool = False, publish: bool = True
    ) -> tuple[Target3D | None, TargetMessages | None]:
        """The frame's 3D target and its messages (None, None without depth_enabled). A failure is a target that is
        not ok, with the reason; its Detection3DArray is empty and carries the source image's header. `quiet`
        (tracked frames, at camera rate): log nothing. `publish` False (a result that is not confident): the target
        is measured (the result message reports it) but its messages hold no detection, point or cloud."""
        if self.depth is None:
            return None, None
        s = self.settings
        frame_id = header.frame_id
        try:
            match = self.depth.wait_for_match(stamp_to_seconds(header), timeout=s.depth_slop_s + DEPTH_WAIT_S)
            if not match.ok:
                raise DepthError(match.reason)
            target = measure(
                result.mask,
                match,
                s.depth_scale,
                s.depth_rectified,
                TargetOptions(erosion_px=s.depth_edge_erosion_px),
                self.cameras,
            )
            frame_id = match.depth.header.frame_id or match.camera_info.header.frame_id or frame_id
        except LensError as exc:
            target = Target3D(False, str(exc))
        if quiet:
            pass  # tracked frames: at camera rate, the state topic says enough
        elif target.ok:
            c = target.centroid
            self.log.info(
                f"{source} {result.prompt!r}: 3D target ({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}) m in "
                f"{frame_id!r}, {target.num_points} points"
            )
        else:
            self.log.warning(f"{source} {result.prompt!r}: no 3D target: {target.reason}")
        messages = fill_target(
            target if publish else Target3D(False, "the result is not confident"),
            target_header(header, frame_id, self.types),
            result.prompt,
            result.score,
            rgb if s.publish_target_cloud else None,
            self.types,
        )
        return target, messages


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
