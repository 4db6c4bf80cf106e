"""Offline processing of a rosbag2 with LENS (`lens bag`), using rosbags — no ROS installation needed.

    process_bag(in_bag, out_bag, image_topic, prompt, *, every=1, pipeline=None, model=DEFAULT_MODEL_ID,
                device="auto", dtype="auto", max_new_tokens=256, overlay=False, storage=None, progress=True,
                out_prefix="/lens", depth=None) -> BagSummary

reads sensor_msgs/Image or sensor_msgs/CompressedImage messages on `image_topic` from a rosbag2 (directory with
metadata.yaml, mcap or sqlite3 storage; a bare .mcap/.db3 file also works), segments frames 0, N, 2N, ... of
that topic (N = `every`) with `prompt`, and writes a new rosbag2 with every input connection and message
(copied byte for byte) plus, per segmented frame:

    {out_prefix}/mask        sensor_msgs/msg/Image, mono8 0/255 (the union of the targets)
    {out_prefix}/masks       sensor_msgs/msg/Image, mono8 label image: 0 = background, k = target k
    {out_prefix}/detections  vision_msgs/msg/Detection2DArray (one detection per target with a box, id = k)
    {out_prefix}/reasoning   std_msgs/msg/String, the generated text
    {out_prefix}/overlay     sensor_msgs/msg/Image rgb8 (only with overlay=True)

With `multi_target` a prompt that names several objects ("the cup and the spoon") is split into targets as the node
splits commands (lens_model.inference.targets), all segmented in one batched call per frame.

With `depth=DepthInputs(depth_topic, camera_info_topic, ...)` (a registered depth image, sensor_msgs/Image
16UC1 or 32FC1, and its sensor_msgs/CameraInfo) each segmented frame is paired with the depth image nearest in
stamp (within `slop_s`, lens_ros.depth.DepthBuffer) and its 3D target is written too:

    {out_prefix}/target_point   geometry_msgs/msg/PointStamped (the first target's, only when measured)
    {out_prefix}/detections_3d  vision_msgs/msg/Detection3DArray (one per measured target; empty when none)
    {out_prefix}/target_cloud   sensor_msgs/msg/PointCloud2 x y z rgb (only with DepthInputs.cloud)

stamped with the source image's stamp and the depth image's frame_id; frames without a 3D target are listed in
BagSummary.failed_3d with the reason (no depth within slop_s, unusable camera_info, sizes, no valid depth).

Their header is the source image's header (stamp and frame_id) and their bag timestamp is the source message's.
The output storage is the input's unless `storage` ("mcap" or "sqlite3") says otherwise; rosbag2 format version 8
(the oldest rosbags writes; Iron/Jazzy and later read it, Humble's own recorder writes version 5).
Input connections without a definition or hash (Humble recordings) get them from the Humble typestore; a
non-standard type without a definition in the bag cannot be written and is listed in BagSummary.skipped_topics.
The bag is written under a temporary directory next to `out_bag` and renamed to `out_bag` only when complete:
an error or Ctrl-C leaves no output. A frame that cannot be decoded (bad encoding, corrupt JPEG, ...) is skipped
and listed in BagSummary.failed; the run goes on.

With `track=True` every frame gets outputs: LENS runs on the first frame (and on frames 0, N, 2N, ... when
`every` N > 1, and again when the target is lost), SAM2's video memory tracks the object on the frames in between
(lens_model.tracking.track_video.ReasonAndTrack); tracked frames write mask and detections (score: the object-presence
probability) but no reasoning. The SAM2 memory weights come from `sam_memory_checkpoint` or the model directory
(lens_model.model.sam_memory); without them the run stops before the model loads.

`pipeline` is anything called as `pipeline(rgb, prompt) -> SegmentationResult` (a LensPipeline); without it the
model is loaded with LensPipeline.from_pretrained(model, device, dtype, max_new_tokens) after the inputs are
checked. Errors (lens_ros.errors.BagError): input bag missing or unreadable, topic not in the bag (the message
lists the bag's topics and types), topic not an image type, output already exists, output topics already in the
input bag.

vision_msgs is not in rosbags' built-in type stores: `lens_typestore()` registers the vision_msgs 4.x
definitions (Humble and Jazzy) kept in VISION_MSGS_DEFINITIONS. Their RIHS01 type hashes, and those of the other
types written, equal the ones a Jazzy build generates (pinned in tests/test_ros_bag_types.py). rosbags stores the
hash in metadata.yaml (mcap and sqlite3) and in the sqlite3 tables, but not in the mcap channel records
("topic_type_hash"), where Jazzy's mcap plugin looks for it: Jazzy reads an mcap output with empty type hashes
(its player and `ros2 bag info` do not use them; only its recorder fills them in).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import TypesysError

from lens_model.errors import ImageError, LensError
from lens_model.geometry.target3d import Target3D, TargetOptions
from lens_model.image_io import read_prompt
from lens_model.inference.targets import CommandResult, command_targets, segment_command
from lens_model.outputs import check_writable_folder

from .conversions import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, image_message_to_rgb, stamp_to_seconds
from .depth import CameraCache, DepthBuffer, measure
from .errors import BagError
from .fields import MeasuredTarget, result_fields
from .messages import fill_result, fill_targets, target_header

# vision_msgs 4.1.1 (ros-perception/vision_msgs, branch ros2; the version Humble and Jazzy ship), comments removed.
VISION_MSGS_DEFINITIONS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\nstring id\n"
    ),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
    "vision_msgs/msg/Detection3D": (
        "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox3D bbox\nstring id\n"
    ),
    "vision_msgs/msg/Detection3DArray": "std_msgs/Header header\nDetection3D[] detections\n",
}
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
BAG_VERSION = 8  # the oldest version rosbags writes (QoS stored as numbers; version 9 switched to names)
OUTPUT_TYPES = {
    "mask": IMAGE_TYPE,
    "masks": IMAGE_TYPE,
    "detections": "vision_msgs/msg/Detection2DArray",
    "reasoning": "std_msgs/msg/String",
    "overlay": IMAGE_TYPE,
    "target_point": "geometry_msgs/msg/PointStamped",
    "detections_3d": "vision_msgs/msg/Detection3DArray",
    "target_cloud": "sensor_msgs/msg/PointCloud2",
}
TARGET_OUTPUTS = ("target_point", "detections_3d", "target_cloud")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
MAX_PENDING_TARGETS = 100  # frames waiting for depth; beyond, the oldest is paired with what has arrived


@dataclass(frozen=True)
class DepthInputs:
    """Where `lens bag` finds depth for the 3D target, and how it measures it (the node's depth_* parameters)."""

    depth_topic: str  # sensor_msgs/Image 16UC1 / 32FC1, registered to the image topic
    camera_info_topic: str  # sensor_msgs/CameraInfo of the depth image
    scale: float = 0.001  # metres per 16UC1 unit
    slop_s: float = 0.05  # largest stamp difference between a frame and its depth image
    rectified: bool = False  # the depth image is rectified: P, not K and D
    erosion_px: int = 2
    cloud: bool = False  # also write target_cloud


def lens_typestore(store: Stores = Stores.ROS2_HUMBLE):
    """A rosbags typestore of `store` (a fresh one) with the vision_msgs types registered."""
    typestore = get_typestore(store)
    types: dict = {}
    for name, text in VISION_MSGS_DEFINITIONS.items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


@dataclass
class BagSummary:
    in_bag: str
    out_bag: str
    storage: str
    image_topic: str
    image_type: str
    prompt: str
    every: int
    frames: int = 0  # messages on the image topic
    segmented: int = 0  # frames segmented and written
    failed: list[dict] = field(default_factory=list)  # {"frame": index, "stamp_ns": ..., "error": reason}
    skipped_topics: list[str] = field(default_factory=list)  # input topics that could not be copied (no type info)
    topics: dict[str, int] = field(default_factory=dict)  # output topic -> messages written
    with_box: int = 0  # segmented frames whose answer had a box (a detection was written)
    depth_topic: str | None = None
    camera_info_topic: str | None = None
    with_3d: int = 0  # segmented frames with a 3D target
    failed_3d: list[dict] = field(default_factory=list)  # {"frame", "stamp_ns", "error"}: no 3D target, why
    track: bool = False
    targets: list[str] = field(default_factory=list)  # the prompt's target phrases (one without multi_target)
    lens_queries: int = 0  # with track: frames LENS reasoned on (the others were tracked)
    lost_frames: int = 0  # with track: frames on which the target was lost (no mask written)
    warnings: list[str] = field(default_factory=list)  # what could not be checked (e.g. chunks without a CRC)

    def to_json_dict(self) -> dict:
        return asdict(self)


def _storage_of(path: Path) -> str:
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    try:
        import yaml

        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        storage = str(info.get("storage_identifier", ""))
    except Exception:  # noqa: BLE001 - the Reader reports a broken bag with its own message
        storage = ""
    if storage in STORAGES:
        return storage
    return "mcap" if any(path.glob("*.mcap*")) else "sqlite3"


def _check_paths(in_bag: Path, out_bag: Path) -> None:
    if not in_bag.exists():
        raise BagError(f"input bag not found: {in_bag}")
    if in_bag.is_dir() and not (in_bag / "metadata.yaml").is_file():
        raise BagError(f"{in_bag} is not a rosbag2 directory (no metadata.yaml)")
    if out_bag.exists() or out_bag.is_symlink():
        raise BagError(f"output {out_bag} already exists; remove it or choose another --out")
    if not out_bag.parent.is_dir():
        raise BagError(f"output folder does not exist: {out_bag.parent}")
    if out_bag.resolve() == in_bag.resolve():
        raise BagError("--out must differ from --in")
    check_writable_folder(out_bag.parent, f"--out {out_bag}")


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_CHUNK, _MCAP_FOOTER, _MCAP_DATA_END = 0x06, 0x02, 0x0F


def mcap_chunk_crcs(path: Path) -> tuple[int, int]:
    """(chunks, chunks that carry a CRC) of an .mcap file, read from the record headers of its data section only
    (fast). rosbags verifies each chunk's CRC, when it has one, as it decompresses the chunk; a chunk written
    without one (CRC 0: rosbags' own writer, for one) cannot be checked. BagError for a file that is not MCAP or
    whose records run past its end (truncated or corrupted)."""
    size = path.stat().st_size
    chunks = with_crc = 0
    with path.open("rb") as stream:
        if stream.read(len(_MCAP_MAGIC)) != _MCAP_MAGIC:
            raise BagError(f"{path} is not an MCAP file (no MCAP magic bytes at its start)")
        while True:
            head = stream.read(9)
            if len(head) < 9 or head[0] in (_MCAP_FOOTER, _MCAP_DATA_END):
                break
            start, length = stream.tell(), int.from_bytes(head[1:], "little")
            if start + length > size:
                raise BagError(
                    f"{path} is corrupted: the record at byte {start - 9} claims {length} bytes, past the end of the "
                    "file (truncated, or its length field was damaged)"
                )
            if head[0] == _MCAP_CHUNK:
                chunks += 1
                with_crc += stream.read(28)[24:28] != b"\0\0\0\0"  # start, end, size (u64 each), then the CRC
            stream.seek(start + length)
    return chunks, with_crc


def _check_mcap_files(in_bag: Path, summary: BagSummary) -> None:
    """Scan the bag's .mcap files (`mcap_chunk_crcs`); chunks without a CRC become a warning in the summary."""
    files = [in_bag] if in_bag.is_file() else sorted(in_bag.glob("*.mcap"))
    for path in (f for f in files if f.suffix == ".mcap"):
        chunks, with_crc = mcap_chunk_crcs(path)
        if with_crc < chunks:
            summary.warnings.append(
                f"{path}: {chunks - with_crc} of {chunks} chunk(s) carry no CRC (their writer did not compute one), "
                "so corrupted bytes in them cannot be detected"
            )


def _topic_list(reader: Reader) -> str:
    topics = reader.topics
    return ", ".join(f"{name} ({info.msgtype or 'mixed types'})" for name, info in sorted(topics.items())) or "none"


def _check_topic(reader: Reader, in_bag: Path, image_topic: str, out_topics: list[str]) -> str:
    topics = reader.topics
    if image_topic not in topics:
        raise BagError(f"topic {image_topic!r} is not in {in_bag}; its topics: {_topic_list(reader)}")
    types = {c.msgtype for c in topics[image_topic].connections}
    if not types <= set(IMAGE_TYPES) or len(types) != 1:
        raise BagError(
            f"topic {image_topic} has type {', '.join(sorted(types))}; expected {IMAGE_TYPE} or "
            f"{COMPRESSED_IMAGE_TYPE}. Image topics in the bag: "
            + (", ".join(t for t, i in sorted(topics.items()) if i.msgtype in IMAGE_TYPES) or "none")
        )
    if clash := sorted(set(out_topics) & set(topics)):
        raise BagError(
            f"input bag already has output topic(s) {', '.join(clash)} (was it made by lens bag?); "
            "use the original bag or another output prefix"
        )
    return types.pop()


def depth_inputs(depth_topic: str | None, camera_info_topic: str | None, cloud: bool = False) -> DepthInputs | None:
    """DepthInputs from `lens bag`'s --depth-topic / --camera-info-topic / --target-cloud (None without them)."""
    if not depth_topic and not camera_info_topic:
        if cloud:
            raise BagError("--target-cloud needs --depth-topic and --camera-info-topic")
        return None
    if not depth_topic or not camera_info_topic:
        raise BagError("--depth-topic and --camera-info-topic go together (the depth image and its camera_info)")
    return DepthInputs(depth_topic, camera_info_topic, cloud=cloud)


def _check_depth_topics(reader: Reader, in_bag: Path, depth: DepthInputs) -> None:
    topics = reader.topics
    for topic, expected in ((depth.depth_topic, IMAGE_TYPE), (depth.camera_info_topic, CAMERA_INFO_TYPE)):
        if topic not in topics:
            raise BagError(f"topic {topic!r} is not in {in_bag}; its topics: {_topic_list(reader)}")
        if topics[topic].msgtype != expected:
            raise BagError(f"topic {topic} has type {topics[topic].msgtype or 'mixed types'}; expected {expected}")


def _copy_connection(writer: Writer, conn, typestore) -> Any:
    """Output connection for an input connection, keeping its definition, hash and QoS."""
    ext = conn.ext
    kwargs = {"serialization_format": ext.serialization_format, "offered_qos_profiles": ext.offered_qos_profiles}
    msgdef = conn.msgdef
    if msgdef.format != MessageDefinitionFormat.NONE and msgdef.data and conn.digest:
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=msgdef.data, rihs01=conn.digest, **kwargs)
    if conn.msgtype not in typestore.fielddefs and msgdef.format == MessageDefinitionFormat.MSG and msgdef.data:
        typestore.register(get_types_from_msg(msgdef.data, conn.msgtype))  # definition without a hash (Humble mcap)
    if conn.msgtype in typestore.fielddefs:
        return writer.add_connection(conn.topic, conn.msgtype, typestore=typestore, **kwargs)
    return None


def _load_pipeline(model: str, device: str, dtype: str, max_new_tokens: int):
    from lens_model.inference.pipeline import LensPipeline

    return LensPipeline.from_pretrained(str(model), device=device, dtype=dtype, max_new_tokens=max_new_tokens)


def process_bag(
    in_bag: str | os.PathLike,
    out_bag: str | os.PathLike,
    image_topic: str,
    prompt: str,
    *,
    every: int = 1,
    pipeline: Callable | None = None,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 256,
    overlay: bool = False,
    storage: str | None = None,
    progress: bool = True,
    out_prefix: str = "/lens",
    depth: DepthInputs | None = None,
    track: bool = False,
    sam_memory_checkpoint: str | os.PathLike | None = None,
    tracker=None,
    multi_target: bool = False,
) -> BagSummary:
    """Segment every `every`-th frame of `image_topic` in `in_bag` and write `out_bag` (module docstring); with
    `track`, reason with LENS and track in between (`tracker`: a lens_model StreamingTracker on `pipeline`'s model,
    built from the model and its SAM2 memory weights when not given)."""
    from tqdm.auto import tqdm

    in_bag, out_bag = Path(in_bag), Path(out_bag)
    prompt = read_prompt(prompt)
    phrases = command_targets(prompt, multi_target)  # an empty phrase or too many targets: before any work
    if int(every) < 1:
        raise BagError(f"--every must be >= 1, got {every}")
    if storage is not None and storage not in STORAGES:
        raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if max_new_tokens < 1:
        raise BagError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    _check_paths(in_bag, out_bag)
    prefix = "/" + out_prefix.strip("/")
    names = ["mask", "masks", "detections", "reasoning"] + (["overlay"] if overlay else [])
    if depth is not None:
        if not depth.scale > 0 or depth.slop_s < 0:
            raise BagError(f"depth scale must be > 0 and slop >= 0, got {depth.scale} and {depth.slop_s}")
        names += ["target_point", "detections_3d"] + (["target_cloud"] if depth.cloud else [])
    out_topics = {name: f"{prefix}/{name}" for name in names}
    storage_of_input = _storage_of(in_bag)
    storage = storage or storage_of_input
    typestore = lens_typestore()
    try:
        reader = Reader(in_bag)
        reader.open()
    except (ReaderError, FileNotFoundError, OSError, KeyError, ValueError) as exc:
        raise BagError(f"cannot read bag {in_bag}: {' '.join(str(exc).split())}") from None
    try:
        image_type = _check_topic(reader, in_bag, image_topic, list(out_topics.values()))
        if depth is not None:
            _check_depth_topics(reader, in_bag, depth)
        summary = BagSummary(
            str(in_bag),
            str(out_bag),
            storage,
            image_topic,
            image_type,
            prompt,
            int(every),
            depth_topic=depth and depth.depth_topic,
            camera_info_topic=depth and depth.camera_info_topic,
            track=track,
            targets=phrases,
        )
        if storage_of_input == "mcap":
            _check_mcap_files(in_bag, summary)  # before the model loads
        total = reader.message_count
        if model is None:
            from lens_model.model.config import DEFAULT_MODEL_ID

            model = DEFAULT_MODEL_ID
        memory = _sam_memory(pipeline, model, sam_memory_checkpoint) if track and tracker is None else None
        if pipeline is None:
            pipeline = _load_pipeline(model, device, dtype, max_new_tokens)
        segmenter = _CommandSegmenter(pipeline, multi_target)
        if track:
            from lens_model.tracking.tracker import StreamingTracker

            if tracker is None:
                tracker = StreamingTracker.from_lens_model(pipeline.model, memory)
            segmenter = _TrackingSegmenter(pipeline, tracker, prompt, every, summary, multi_target)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_bag.name}.", suffix=".partial", dir=out_bag.parent))
        try:
            target = staging / out_bag.name
            try:
                _write(
                    reader,
                    Writer(target, version=BAG_VERSION, storage_plugin=STORAGES[storage]),
                    typestore,
                    summary,
                    segmenter,
                    out_topics,
                    tqdm(total=total, unit="msg", desc="lens bag", disable=not progress),
                    depth,
                )
            except ReaderError as exc:
                reason = " ".join(str(exc).split())
                corrupt = "checksum" in reason.lower() or "size mismatch" in reason.lower()
                raise BagError(
                    f"{in_bag} is corrupted: {reason}"
                    + (" (a chunk's bytes do not match the CRC recorded with it)" if corrupt else "")
                    + f"; nothing was written to {out_bag}"
                ) from None
            except WriterError as exc:
                raise BagError(f"cannot convert {in_bag} to {out_bag}: {' '.join(str(exc).split())}") from None
            if out_bag.exists():
                raise BagError(f"output {out_bag} appeared while processing; the result is not written")
            os.replace(target, out_bag)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        reader.close()
    return summary


def _sam_memory(pipeline, model, weights):
    """SAM2 memory weights for tracking, checked before the model loads (lens_model.model.sam_memory)."""
    from lens_model.model.sam_memory import load_model_sam_memory, load_sam_memory

    if pipeline is not None:
        return load_sam_memory(pipeline.config.sam, weights=weights)
    return load_model_sam_memory(model, weights)


class _CommandSegmenter:
    """`segmenter(rgb, prompt) -> CommandResult` for the frames of a bag: every target in one batched call."""

    tracking = False

    def __init__(self, pipeline, multi_target: bool) -> None:
        self.pipeline, self.multi_target = pipeline, multi_target

    def __call__(self, rgb, prompt: str) -> CommandResult:
        return segment_command(self.pipeline, rgb, prompt, self.multi_target)


class _TrackingSegmenter:
    """`segmenter(rgb, prompt) -> CommandResult` for every frame of a tracked bag: LENS or SAM2 tracking of every
    target (ReasonAndTrack), the bag timestamp of the frame (set before each call) as the clock."""

    tracking = True

    def __init__(self, pipeline, tracker, prompt: str, every: int, summary: BagSummary, multi_target: bool) -> None:
        from lens_model.tracking.track_video import ReasonAndTrack

        reason_every = every if every > 1 else None
        self.runner = ReasonAndTrack(pipeline, tracker, prompt, reason_every, multi_target=multi_target)
        self.summary = summary
        self.timestamp = 0

    def __call__(self, rgb, prompt: str) -> CommandResult:
        from lens_model.tracking.state import TrackState

        outcome = self.runner.step(rgb, self.timestamp * 1e-9)
        self.summary.lens_queries += outcome.source == "lens"
        self.summary.lost_frames += outcome.state is TrackState.LOST
        return outcome.as_command()


@dataclass
class _PendingTarget:
    """A segmented frame waiting for its depth image (which may come later in the bag)."""

    index: int
    timestamp: int  # bag time of the source image
    header: Any
    result: Any
    rgb: Any


def _write(
    reader: Reader,
    writer: Writer,
    typestore,
    summary: BagSummary,
    segmenter: _CommandSegmenter | _TrackingSegmenter,
    out_topics: dict[str, str],
    bar,
    depth: DepthInputs | None = None,
) -> None:
    written: Counter = Counter()
    buffer = DepthBuffer(depth.slop_s, history=60) if depth is not None else None
    cameras = CameraCache()
    pending: list[_PendingTarget] = []
    with bar, writer:
        connections = {}
        for conn in reader.connections:
            out = _copy_connection(writer, conn, typestore)
            if out is None:
                summary.skipped_topics.append(conn.topic)
            connections[conn.id] = out
        outputs = {
            name: writer.add_connection(topic, OUTPUT_TYPES[name], typestore=typestore)
            for name, topic in out_topics.items()
        }
        for conn, timestamp, raw in reader.messages():
            if (out := connections.get(conn.id)) is not None:
                writer.write(out, timestamp, raw)
                written[conn.topic] += 1
            if conn.topic == summary.image_topic:
                index = summary.frames
                summary.frames += 1
                if segmenter.tracking or index % summary.every == 0:
                    segmenter.timestamp = timestamp
                    segmented = _segment_frame(
                        typestore,
                        conn.msgtype,
                        raw,
                        timestamp,
                        index,
                        summary,
                        segmenter,
                        writer,
                        outputs,
                        written,
                    )
                    if segmented is not None and buffer is not None:
                        pending.append(_PendingTarget(index, timestamp, *segmented))
            elif buffer is not None and conn.topic in (depth.depth_topic, depth.camera_info_topic):
                _buffer_depth(typestore, conn, raw, buffer, depth)
            if pending:
                _write_targets(
                    pending, buffer, cameras, depth, typestore, summary, writer, outputs, written, final=False
                )
            bar.update(1)
            bar.set_postfix(segmented=summary.segmented, failed=len(summary.failed), refresh=False)
        if pending:
            _write_targets(pending, buffer, cameras, depth, typestore, summary, writer, outputs, written, final=True)
    summary.topics = dict(sorted(written.items()))


def _segment_frame(
    typestore,
    msgtype: str,
    raw,
    timestamp: int,
    index: int,
    summary: BagSummary,
    pipeline,
    writer: Writer,
    outputs: dict,
    written: Counter,
) -> tuple[Any, Any, Any] | None:
    """Segment one frame and write its 2D outputs; -> (header, result, rgb), or None when it could not be read."""
    try:
        msg = typestore.deserialize_cdr(raw, msgtype)
        rgb = image_message_to_rgb(msg)
    except (SerdeError, TypesysError, ImageError) as exc:
        summary.failed.append({"frame": index, "stamp_ns": timestamp, "error": " ".join(str(exc).split())})
        return None
    result = pipeline(rgb, summary.prompt)
    messages = fill_result(result_fields(result, msg.header, rgb if "overlay" in outputs else None), typestore.types)
    for name, conn in outputs.items():
        if name == "reasoning" and not any(t.num_tokens for t in result.targets):
            continue  # a tracked frame: nothing was reasoned
        if name not in TARGET_OUTPUTS:
            message = getattr(messages, "labels" if name == "masks" else name)
            writer.write(conn, timestamp, typestore.serialize_cdr(message, conn.msgtype))
            written[conn.topic] += 1
    summary.segmented += 1
    summary.with_box += int(any(t.box is not None for t in result.targets))
    return msg.header, result, rgb


def _buffer_depth(typestore, conn, raw, buffer: DepthBuffer, depth: DepthInputs) -> None:
    try:
        msg = typestore.deserialize_cdr(raw, conn.msgtype)
    except (SerdeError, TypesysError):
        return  # an unreadable depth message is no match for any frame: the frame's 3D failure says so
    if conn.topic == depth.depth_topic:
        buffer.put_depth(msg, stamp_to_seconds(msg.header))
    else:
        buffer.put_camera_info(msg)


def _write_targets(
    pending: list[_PendingTarget],
    buffer: DepthBuffer,
    cameras: CameraCache,
    depth: DepthInputs,
    typestore,
    summary: BagSummary,
    writer: Writer,
    outputs: dict,
    written: Counter,
    final: bool,
) -> None:
    """Measure and write the 3D targets of the pending frames whose depth pairing is settled (all when `final`)."""
    while pending:
        frame = pending[0]
        match = buffer.select(stamp_to_seconds(frame.header), final=final or len(pending) > MAX_PENDING_TARGETS)
        if match.status == "wait":
            return
        pending.pop(0)
        frame_id = frame.header.frame_id
        options = TargetOptions(erosion_px=depth.erosion_px)
        try:
            if not match.ok:
                raise LensError(match.reason)
            frame_id = match.depth.header.frame_id or match.camera_info.header.frame_id or frame_id
            targets = [_measure(t.mask, match, depth, options, cameras) for t in frame.result.targets]
        except LensError as exc:
            targets = [Target3D(False, str(exc)) for _ in frame.result.targets]
        if any(t.ok for t in targets):
            summary.with_3d += 1
        else:
            summary.failed_3d.append({"frame": frame.index, "stamp_ns": frame.timestamp, "error": targets[0].reason})
        measured = [
            MeasuredTarget(k, t.prompt, t.score, target)
            for k, t, target in zip(frame.result.ids, frame.result.targets, targets)
        ]
        messages = fill_targets(
            measured,
            target_header(frame.header, frame_id, typestore.types),
            frame.rgb if depth.cloud else None,
            typestore.types,
        )
        for name, msg in (
            ("detections_3d", messages.detections),
            ("target_point", messages.point),
            ("target_cloud", messages.cloud),
        ):
            if msg is not None and name in outputs:
                conn = outputs[name]
                writer.write(conn, frame.timestamp, typestore.serialize_cdr(msg, conn.msgtype))
                written[conn.topic] += 1


def _measure(mask, match, depth: DepthInputs, options: TargetOptions, cameras: CameraCache) -> Target3D:
    """One target's 3D measurement; a mask without valid depth is a target that is not ok, with the reason."""
    try:
        return measure(mask, match, depth.scale, depth.rectified, options, cameras)
    except LensError as exc:
        return Target3D(False, str(exc))


__all__ = [
    "BagSummary",
    "DepthInputs",
    "depth_inputs",
    "VISION_MSGS_DEFINITIONS",
    "lens_typestore",
    "process_bag",
    "BagError",
]
