"""The lens_ros node's parameters: names, defaults, descriptions, ranges and choices (plain Python, no rclpy).

`lens_ros.node` declares exactly these (with rcl_interfaces ParameterDescriptor: description, integer/floating
point range, choices in the description), `config/lens.yaml` lists every one with its default, and the parameter
table of docs/ros.md is this module's `markdown_table()` (`python -m lens_ros.params` prints it; a test checks they
agree). `NodeSettings.from_values(values)` checks a full set of values (as read
back from the node) and returns them typed; an invalid value raises `ParameterError` naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from lens_model.errors import LensError
from lens_model.model.config import DEFAULT_MODEL_ID
from lens_model.vocab import ANSWER_FORMATS, BACKENDS, CONTEXT_PASS_MODES, DTYPES

from .conversions import SCALE16_MODES
from .policy import FRAME_MODES, QUEUE_POLICIES
from .whisper import SAMPLE_FORMATS

AUDIO_SAMPLE_FORMATS = tuple(SAMPLE_FORMATS)
DEPTH_QOS = ("sensor_data", "reliable")
TRACKING_MODES = ("auto", "on", "off")


class ParameterError(LensError):
    """A node parameter with a value outside its type, range or choices."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any  # its type is the parameter's type (bool, int, float or str)
    description: str
    choices: tuple[str, ...] = ()  # for strings; "" is allowed too when allow_empty
    range: tuple[float, float] | None = None  # inclusive, for int and float
    allow_empty: bool = False
    runtime: bool = False  # may change while the node is configured (the others are read on configure)

    @property
    def type_name(self) -> str:
        return {bool: "bool", int: "integer", float: "double", str: "string"}[type(self.default)]

    @property
    def constraint(self) -> str:
        """The choices as text ("one of: a, b or empty"); "" without choices."""
        if not self.choices:
            return ""
        return "one of: " + ", ".join(self.choices) + (" or empty" if self.allow_empty else "")

    def full_description(self) -> str:
        extra = []
        if self.choices:
            extra.append(self.constraint)
        if self.range is not None:
            extra.append(f"range {self.range[0]:g}..{self.range[1]:g}")
        if self.runtime:
            extra.append("settable at runtime")
        return self.description + (f" ({'; '.join(extra)})" if extra else "")

    def check(self, value: Any) -> Any:
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ParameterError(f"parameter {self.name} must be a {self.type_name}, got {value!r}")
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise ParameterError(
                f"parameter {self.name} must lie in [{self.range[0]:g}, {self.range[1]:g}], got {value!r}"
            )
        if self.choices and not (value in self.choices or (self.allow_empty and value == "")):
            raise ParameterError(
                f"parameter {self.name} must be one of {', '.join(self.choices)}"
                f"{' (or empty)' if self.allow_empty else ''}, got {value!r}"
            )
        if kind is str and not self.allow_empty and not self.choices and not value.strip():
            raise ParameterError(f"parameter {self.name} must not be empty")
        return value


PARAMETERS: tuple[ParamSpec, ...] = (
    # model
    ParamSpec(
        "model",
        DEFAULT_MODEL_ID,
        "LENS checkpoint: a Hugging Face Hub id or a local model directory; loaded on configure",
    ),
    ParamSpec("device", "auto", "where the model runs: auto (CUDA if available), cpu, cuda or cuda:N"),
    ParamSpec("dtype", "auto", "weights dtype; auto = bfloat16 on CUDA, float32 on CPU", choices=DTYPES),
    ParamSpec(
        "backend",
        "torch",
        "what runs SAM2 + the context head; onnxruntime and tensorrt run the export in "
        "backend_dir (lens export); the MLLM always runs in torch",
        choices=BACKENDS,
    ),
    ParamSpec("backend_dir", "", "export directory for backend onnxruntime or tensorrt", allow_empty=True),
    ParamSpec(
        "context_pass",
        "",
        "override the checkpoint's context-pass mode; empty = the checkpoint's",
        choices=CONTEXT_PASS_MODES,
        allow_empty=True,
    ),
    ParamSpec(
        "answer_format",
        "",
        "override the checkpoint's answer format; empty = the checkpoint's (think_answer for the CoT checkpoints)",
        choices=ANSWER_FORMATS,
        allow_empty=True,
    ),
    ParamSpec("max_new_tokens", 256, "generation budget of the MLLM per command", range=(1, 4096)),
    # inputs
    ParamSpec(
        "image_topic",
        "image",
        "camera topic (sensor_msgs/Image, or CompressedImage when image_compressed); sensor-data QoS",
    ),
    ParamSpec(
        "image_compressed",
        False,
        "subscribe to sensor_msgs/CompressedImage (JPEG/PNG) instead of "
        "sensor_msgs/Image; point image_topic at e.g. image/compressed",
    ),
    ParamSpec(
        "scale16",
        "high_byte",
        "how 16-bit images (mono16/16UC1) become 8 bits: high_byte (value >> 8) or minmax (per frame)",
        choices=SCALE16_MODES,
    ),
    ParamSpec("command_topic", "command", "text commands (std_msgs/String), e.g. 'the red cup'"),
    ParamSpec(
        "prompt",
        "",
        "a standing command: segmented (and tracked) as soon as a camera frame is there; setting it at runtime "
        "(ros2 param set /lens prompt 'the red cup') starts that command as the command topic would; empty = none",
        allow_empty=True,
        runtime=True,
    ),
    ParamSpec(
        "multi_target",
        True,
        "split a command that lists objects ('the cup and the spoon', 'the red block, the blue block') into target "
        "phrases and segment them in one batched call, one id each (at most 254); false: the whole command is one "
        "target",
        runtime=True,
    ),
    ParamSpec(
        "frame_selection",
        "latest",
        "which frame a command segments: latest (the newest received) or next "
        "(the first frame stamped at or after the command)",
        choices=FRAME_MODES,
    ),
    ParamSpec(
        "max_frame_age_s",
        1.0,
        "staleness bound in seconds: with latest, a frame older than the command by "
        "more is refused; with next, the longest wait for a frame; 0 = no bound",
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        "queue_policy",
        "queue",
        "commands arriving while the model is busy: queue (keep the newest "
        "queue_size, dropping the oldest) or drop (refuse them); every drop is logged",
        choices=QUEUE_POLICIES,
    ),
    ParamSpec("queue_size", 1, "pending commands kept with queue_policy queue", range=(1, 100)),
    ParamSpec(
        "service_timeout_s",
        120.0,
        "longest a /lens/segment call or Segment goal waits for its result "
        "(queueing + inference) before answering success=false",
        range=(1.0, 3600.0),
    ),
    # depth: the 3D target
    ParamSpec(
        "depth_enabled",
        False,
        "measure the object's 3D target from a registered depth image and its "
        "camera_info; publishes target_point, detections_3d, markers (and target_cloud)",
    ),
    ParamSpec(
        "depth_topic",
        "depth",
        "depth image registered (aligned) to the colour image: sensor_msgs/Image 16UC1 "
        "(units of depth_scale) or 32FC1 (metres), e.g. aligned_depth_to_color/image_raw",
    ),
    ParamSpec(
        "camera_info_topic",
        "camera_info",
        "sensor_msgs/CameraInfo of the depth image (for registered depth: the colour camera's)",
    ),
    ParamSpec(
        "depth_qos",
        "sensor_data",
        "QoS of depth_topic and camera_info_topic: sensor_data (best effort) or reliable",
        choices=DEPTH_QOS,
    ),
    ParamSpec(
        "depth_scale", 0.001, "metres per unit of 16UC1 depth (0.001: millimetres); 32FC1 is metres", range=(1e-6, 1.0)
    ),
    ParamSpec(
        "depth_rectified",
        False,
        "the depth image is rectified: use camera_info's P and ignore D; false: K, and D through cv2.undistortPoints",
    ),
    ParamSpec(
        "depth_edge_erosion_px",
        2,
        "pixels eroded off the mask's edge before measuring depth (flying pixels)",
        range=(0, 50),
    ),
    ParamSpec(
        "depth_slop_s",
        0.05,
        "largest stamp difference between the colour image and the depth image it is paired with, seconds",
        range=(0.0, 10.0),
    ),
    # tracking: SAM2 memory follows the last result on every new frame
    ParamSpec(
        "tracking",
        "auto",
        "after each result on a camera frame, track its object with SAM2's memory on every new frame (mask, "
        "detections and 3D outputs with that frame's header, on a separate thread; frames the tracker cannot keep up "
        "with are dropped and counted); auto = on when the model runs on a GPU, off on CPU",
        choices=TRACKING_MODES,
    ),
    ParamSpec(
        "sam_memory_checkpoint",
        "",
        "SAM2 memory weights for tracking: the official SAM2 .pt of the model's SAM2 size (sam2_hiera_large.pt for "
        "the released LENS); empty = sam2_memory.safetensors in the model directory. Missing: tracking is disabled "
        "with one log line",
        allow_empty=True,
    ),
    ParamSpec(
        "lost_score_threshold",
        0.0,
        "tracking: SAM2's object-presence logit below which the object counts as missing on a frame",
        range=(-100.0, 100.0),
    ),
    ParamSpec("lost_after_frames", 3, "tracking: missing frames in a row before the target is lost", range=(1, 1000)),
    ParamSpec(
        "reground_on_loss", True, "tracking: run LENS again on the latest frame when the target is lost or reset"
    ),
    ParamSpec(
        "reground_period_s",
        0.0,
        "tracking: also run LENS again this often while tracking, seconds; 0 = never",
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        "max_rate_hz",
        0.0,
        "tracking: track and publish at most this many camera frames per second (frames sooner after the last "
        "tracked one are skipped and counted); 0 = every frame",
        range=(0.0, 1000.0),
        runtime=True,
    ),
    ParamSpec(
        "tracking_state_topic",
        "tracking_state",
        "std_msgs/String JSON {state: idle|tracking|lost, prompt, frames_tracked, frames_dropped, reason}, on "
        "each change and every tracking_state_period_s (tracking on)",
    ),
    ParamSpec(
        "tracking_state_period_s", 1.0, "how often tracking_state is repeated without a change", range=(0.05, 60.0)
    ),
    # outputs
    ParamSpec("mask_topic", "mask", "mono8 mask (255 = any target), with the source image's header"),
    ParamSpec(
        "masks_topic",
        "masks",
        "mono8 label image with the source image's header: 0 = background, k = target k (at most 254 targets; "
        "where masks overlap, the lower k)",
    ),
    ParamSpec(
        "detections_topic",
        "detections",
        "vision_msgs/Detection2DArray: one Detection2D per target, id = target id, class_id = its phrase, box, score",
    ),
    ParamSpec("reasoning_topic", "reasoning", "std_msgs/String: the model's generated text"),
    ParamSpec("overlay_topic", "overlay", "rgb8 image with the tinted mask, box and prompt, for RViz"),
    ParamSpec("result_topic", "result", "lens_interfaces/SegmentationResult: everything above in one message"),
    ParamSpec("transcript_topic", "transcript", "std_msgs/String: what Whisper heard (each spoken command)"),
    ParamSpec("publish_overlay", True, "draw and publish the overlay image (costs a few ms per command)"),
    ParamSpec(
        "publish_unconfident",
        False,
        "publish the detections of a result that is not confident (SegmentationResult.confident false: the object is "
        "probably not in the image); false: detections and detections_3d are empty for it and no target point or "
        "cloud is sent (mask, reasoning, overlay and result still are)",
    ),
    ParamSpec(
        "target_point_topic",
        "target_point",
        "geometry_msgs/PointStamped: the object's 3D centroid in the depth frame (depth_enabled)",
    ),
    ParamSpec(
        "detections_3d_topic",
        "detections_3d",
        "vision_msgs/Detection3DArray: per target its 3D centroid, box, score, id, phrase as class_id (depth_enabled)",
    ),
    ParamSpec(
        "markers_topic",
        "markers",
        "visualization_msgs/MarkerArray for RViz (depth_enabled): per target a CUBE (3D box), a SPHERE (centroid) "
        "and a TEXT_VIEW_FACING label, in the target's overlay colour, in the depth frame",
    ),
    ParamSpec(
        "target_cloud_topic",
        "target_cloud",
        "sensor_msgs/PointCloud2 (x y z rgb) of the object's points (publish_target_cloud)",
    ),
    ParamSpec("publish_target_cloud", False, "publish the object's point cloud on target_cloud_topic"),
    # spoken commands
    ParamSpec(
        "audio_enabled",
        True,
        "transcribe spoken commands from audio_topic with Whisper, loaded in the background (text commands and the "
        "service never wait for it; a model that cannot be had turns speech off with one log line); needs "
        "audio_common_msgs (the subscription is skipped with a warning when it is missing)",
    ),
    ParamSpec(
        "audio_model",
        "openai/whisper-small",
        "Whisper model: a Hugging Face Hub id or a local directory (transformers WhisperForConditionalGeneration)",
    ),
    ParamSpec("audio_device", "", "device of the Whisper model; empty = device", allow_empty=True),
    ParamSpec(
        "audio_language",
        "",
        "spoken language for multilingual Whisper models, e.g. en or de; empty = detected",
        allow_empty=True,
    ),
    ParamSpec(
        "audio_topic",
        "audio",
        "raw PCM chunks (audio_common_msgs/AudioData, as audio_capture publishes with format wave)",
    ),
    ParamSpec(
        "audio_info_topic",
        "audio_info",
        "audio_common_msgs/AudioInfo; when received it overrides the three audio_* layout parameters below",
    ),
    ParamSpec("audio_sample_rate", 16000, "sample rate of audio_topic in Hz", range=(1000, 384000)),
    ParamSpec("audio_channels", 1, "interleaved channels of audio_topic (averaged to mono)", range=(1, 32)),
    ParamSpec("audio_sample_format", "S16LE", "sample format of audio_topic", choices=AUDIO_SAMPLE_FORMATS),
    ParamSpec(
        "audio_threshold",
        0.02,
        "speech detection: RMS level (full scale 1.0) that starts an utterance",
        range=(0.0, 1.0),
    ),
    ParamSpec("audio_silence_s", 0.8, "speech detection: silence that ends an utterance, seconds", range=(0.05, 10.0)),
    ParamSpec(
        "audio_max_utterance_s", 20.0, "longest utterance, seconds (Whisper hears at most 30)", range=(1.0, 30.0)
    ),
    # lifecycle
    ParamSpec(
        "autostart",
        True,
        "configure and activate on startup; false leaves the node unconfigured for a "
        "lifecycle manager (ros2 lifecycle set /lens configure)",
    ),
)

PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
RUNTIME_PARAMETERS: frozenset[str] = frozenset(p.name for p in PARAMETERS if p.runtime)
DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS}
_BY_NAME = {p.name: p for p in PARAMETERS}


def runtime_change_refusal(name: str, value: Any, configured: bool) -> str | None:
    """Why the running node refuses `name := value` (None: accepted). Unknown names and bad values are refused with
    the check's reason; while the node is configured (inactive or active) only the runtime parameters may change,
    since the others are read on configure."""
    spec = _BY_NAME.get(name)
    if spec is None:
        return f"unknown parameter {name}"
    try:
        spec.check(value)
    except ParameterError as exc:
        return str(exc)
    if configured and not spec.runtime:
        runtime = ", ".join(sorted(RUNTIME_PARAMETERS))
        return (
            f"parameter {name} is read on configure and cannot change while the node is configured: deactivate and "
            f"clean up the node (ros2 lifecycle set), set it, then configure and activate; at runtime only {runtime} "
            "change"
        )
    return None


@dataclass(frozen=True)
class NodeSettings:
    """All parameters, checked and typed (attribute names = parameter names)."""

    model: str
    device: str
    dtype: str
    backend: str
    backend_dir: str
    context_pass: str
    answer_format: str
    max_new_tokens: int
    image_topic: str
    image_compressed: bool
    scale16: str
    command_topic: str
    prompt: str
    multi_target: bool
    frame_selection: str
    max_frame_age_s: float
    queue_policy: str
    queue_size: int
    service_timeout_s: float
    depth_enabled: bool
    depth_topic: str
    camera_info_topic: str
    depth_qos: str
    depth_scale: float
    depth_rectified: bool
    depth_edge_erosion_px: int
    depth_slop_s: float
    tracking: str
    sam_memory_checkpoint: str
    lost_score_threshold: float
    lost_after_frames: int
    reground_on_loss: bool
    reground_period_s: float
    max_rate_hz: float
    tracking_state_topic: str
    tracking_state_period_s: float
    mask_topic: str
    masks_topic: str
    detections_topic: str
    reasoning_topic: str
    overlay_topic: str
    result_topic: str
    transcript_topic: str
    publish_overlay: bool
    publish_unconfident: bool
    target_point_topic: str
    detections_3d_topic: str
    markers_topic: str
    target_cloud_topic: str
    publish_target_cloud: bool
    audio_enabled: bool
    audio_model: str
    audio_device: str
    audio_language: str
    audio_topic: str
    audio_info_topic: str
    audio_sample_rate: int
    audio_channels: int
    audio_sample_format: str
    audio_threshold: float
    audio_silence_s: float
    audio_max_utterance_s: float
    autostart: bool

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> NodeSettings:
        unknown = set(values) - set(_BY_NAME)
        if unknown:
            raise ParameterError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        checked = {name: spec.check(values.get(name, spec.default)) for name, spec in _BY_NAME.items()}
        if checked["backend"] != "torch" and not checked["backend_dir"]:
            raise ParameterError(f"backend {checked['backend']} needs backend_dir (the `lens export` directory)")
        return cls(**checked)

    @property
    def frame_age_bound(self) -> float | None:
        """max_frame_age_s for lens_ros.policy.FrameBuffer (None: no bound)."""
        return self.max_frame_age_s or None

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of LensPipeline.from_pretrained."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "backend": self.backend,
            "backend_dir": self.backend_dir or None,
            "context_pass": self.context_pass or None,
            "answer_format": self.answer_format or None,
            "max_new_tokens": self.max_new_tokens,
        }


assert [f.name for f in fields(NodeSettings)] == list(PARAMETER_NAMES), "NodeSettings must mirror PARAMETERS"


def markdown_table() -> str:
    """The parameter table of docs/ros.md: name, default as in config/lens.yaml, description with its range or
    choices (a `|` inside a cell escaped, so that the table keeps three columns)."""
    rows = ["| parameter | default | meaning |", "| --- | --- | --- |"]
    for spec in PARAMETERS:
        default = spec.default
        shown = ("true" if default else "false") if isinstance(default, bool) else str(default) or '""'
        description = spec.full_description().replace("|", r"\|")
        rows.append(f"| `{spec.name}` | `{shown}` | {description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
