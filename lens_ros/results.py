"""A SegmentationResult as the node's output messages: first plain dataclasses that mirror the message fields,
then `fill_*` helpers that build the actual messages from them. No rclpy.

Fields (pure, tested without ROS)
    mask_fields(mask, header) -> ImageFields
        (H, W) bool/0-1 mask -> sensor_msgs/Image mono8, 0 = background, 255 = object, with the source `header`.
    detection_fields(result, header) -> DetectionArrayFields
        vision_msgs/Detection2DArray with the source header and one Detection2D for result.box = (x1, y1, x2, y2):
        bbox.center.position = ((x1 + x2) / 2, (y1 + y2) / 2), theta 0, size = (x2 - x1, y2 - y1) in pixels;
        one ObjectHypothesisWithPose: class_id = the prompt, score = result.score (SAM2's predicted IoU of the
        mask, not clipped), identity pose with zero covariance; Detection2D.header = the source header, id "".
        No detection (an empty array, still with the header) when result.box is None.
    overlay_fields(image_rgb, result, header) -> ImageFields
        rgb8 picture for RViz: lens_model.overlay.draw_overlay (tinted mask, box, prompt caption).
    result_fields(result, header, image_rgb=None) -> ResultFields(mask, detections, reasoning, overlay)
        reasoning = result.text (the generated answer: chain of thought and/or box tokens); overlay is None unless
        image_rgb (the (H, W, 3) uint8 RGB the pipeline segmented) is given.

Messages (duck-typed classes; see lens_ros.conversions for `types`: rosbags' `typestore.types`, or None to import
from the ROS 2 Python packages)
    fill_image(fields, types=None) -> sensor_msgs/msg/Image                 (re-exported from conversions)
    fill_detections(fields, types=None) -> vision_msgs/msg/Detection2DArray
    fill_string(text, types=None) -> std_msgs/msg/String
    fill_result(fields, types=None) -> ResultMessages(mask, detections, reasoning, overlay or None)

The header object is passed through untouched, so output messages carry the source image's stamp and frame_id.

3D target (lens_model.geometry.target3d.Target3D; the node's depth_enabled, `lens bag --depth-topic`)
    target_header(image_header, frame_id, types=None) -> std_msgs/msg/Header
        the source image's stamp with the depth image's frame_id (the frame the 3D numbers are in)
    cloud_fields(points, header, colours=None) -> CloudFields
        (N, 3) float32 points (+ (N, 3) uint8 RGB) -> sensor_msgs/PointCloud2 fields: height 1, width N,
        fields x y z (FLOAT32 at offsets 0, 4, 8) and rgb (FLOAT32 at 12 holding the bits of 0x00RRGGBB, the PCL
        and RViz convention), point_step 16, row_step 16 N, little-endian, is_dense (no NaN points)
    cloud_to_arrays(msg) -> (points (N, 3) float32, colours (N, 3) uint8)      the inverse, from the fields
    fill_point_cloud(fields, types=None) -> sensor_msgs/msg/PointCloud2
    fill_target(target, header, prompt, score, colours_rgb=None, types=None) -> TargetMessages
        point:      geometry_msgs/PointStamped (the centroid), None when the target is not ok
        detections: vision_msgs/Detection3DArray: one Detection3D (bbox center = box centre, identity
                    orientation, size = box size; results[0]: class_id = prompt, score, pose.position =
                    centroid), none when the target is not ok
        cloud:      PointCloud2 of the target's points coloured from `colours_rgb` ((H, W, 3) uint8 image the
                    mask came from), only when given and the target is ok
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_model.overlay import draw_overlay

from .conversions import ImageFields, array_to_fields, byte_sequence, fill_image, message_class
from .errors import ImageConversionError

if TYPE_CHECKING:  # lens_model.inference.pipeline imports torch; these helpers only read the result's attributes
    from lens_model.geometry.target3d import Target3D
    from lens_model.inference.pipeline import SegmentationResult

__all__ = [
    "DetectionFields",
    "DetectionArrayFields",
    "ResultFields",
    "ResultMessages",
    "mask_fields",
    "detection_fields",
    "overlay_fields",
    "result_fields",
    "fill_image",
    "fill_detections",
    "fill_string",
    "fill_result",
    "MESSAGE_TYPES",
    "CloudFields",
    "TargetMessages",
    "target_header",
    "cloud_fields",
    "cloud_to_arrays",
    "fill_point_cloud",
    "fill_detection_3d",
    "fill_target",
]

DETECTION_ARRAY_TYPE = "vision_msgs/msg/Detection2DArray"
# Every class fill_detections builds, by full name.
MESSAGE_TYPES = (
    "sensor_msgs/msg/Image",
    "std_msgs/msg/String",
    DETECTION_ARRAY_TYPE,
    "vision_msgs/msg/Detection2D",
    "vision_msgs/msg/BoundingBox2D",
    "vision_msgs/msg/Pose2D",
    "vision_msgs/msg/Point2D",
    "vision_msgs/msg/ObjectHypothesisWithPose",
    "vision_msgs/msg/ObjectHypothesis",
    "geometry_msgs/msg/PoseWithCovariance",
    "geometry_msgs/msg/Pose",
    "geometry_msgs/msg/Point",
    "geometry_msgs/msg/Quaternion",
)
# Every class fill_target builds.
TARGET_MESSAGE_TYPES = (
    "std_msgs/msg/Header",
    "geometry_msgs/msg/PointStamped",
    "vision_msgs/msg/Detection3DArray",
    "vision_msgs/msg/Detection3D",
    "vision_msgs/msg/BoundingBox3D",
    "geometry_msgs/msg/Vector3",
    "sensor_msgs/msg/PointCloud2",
    "sensor_msgs/msg/PointField",
)
POINTFIELD_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
CLOUD_DTYPE = np.dtype(
    {"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"], "offsets": [0, 4, 8, 12], "itemsize": 16}
)


@dataclass
class DetectionFields:
    """One vision_msgs/Detection2D with a single hypothesis (flattened)."""

    header: Any
    class_id: str  # the prompt
    score: float
    center_x: float  # pixels, x right
    center_y: float  # pixels, y down
    size_x: float
    size_y: float
    theta: float = 0.0
    id: str = ""


@dataclass
class DetectionArrayFields:
    header: Any
    detections: list[DetectionFields] = field(default_factory=list)


@dataclass
class ResultFields:
    mask: ImageFields  # mono8
    detections: DetectionArrayFields
    reasoning: str
    overlay: ImageFields | None = None  # rgb8


@dataclass
class ResultMessages:
    mask: Any  # sensor_msgs/msg/Image
    detections: Any  # vision_msgs/msg/Detection2DArray
    reasoning: Any  # std_msgs/msg/String
    overlay: Any = None  # sensor_msgs/msg/Image or None
    target: TargetMessages | None = None  # the 3D target's messages, when depth was measured


@dataclass
class TargetMessages:
    header: Any  # std_msgs/msg/Header: the source image's stamp, the depth frame_id
    detections: Any  # vision_msgs/msg/Detection3DArray (empty when the target is not ok)
    point: Any = None  # geometry_msgs/msg/PointStamped, None when the target is not ok
    cloud: Any = None  # sensor_msgs/msg/PointCloud2 when asked for and the target is ok


@dataclass
class CloudFields:
    """The fields of a sensor_msgs/PointCloud2 (an unordered cloud: height 1)."""

    header: Any
    width: int
    fields: list[tuple[str, int, int, int]]  # (name, offset, datatype, count) per PointField
    point_step: int
    row_step: int
    data: np.ndarray  # 1-D uint8, row_step bytes
    height: int = 1
    is_bigendian: bool = False
    is_dense: bool = True


def mask_fields(mask: np.ndarray, header: Any) -> ImageFields:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageConversionError(f"mask must be (H, W), got shape {mask.shape}")
    return array_to_fields(np.where(mask.astype(bool), np.uint8(255), np.uint8(0)), "mono8", header)


def detection_fields(result: SegmentationResult, header: Any) -> DetectionArrayFields:
    if result.box is None:
        return DetectionArrayFields(header, [])
    x1, y1, x2, y2 = (float(v) for v in result.box)
    detection = DetectionFields(
        header=header,
        class_id=result.prompt,
        score=float(result.score),
        center_x=(x1 + x2) / 2,
        center_y=(y1 + y2) / 2,
        size_x=x2 - x1,
        size_y=y2 - y1,
    )
    return DetectionArrayFields(header, [detection])


def overlay_fields(image_rgb: np.ndarray, result: SegmentationResult, header: Any) -> ImageFields:
    picture = draw_overlay(np.asarray(image_rgb), result.mask, result.box, result.prompt)
    return array_to_fields(np.asarray(picture, dtype=np.uint8), "rgb8", header)


def result_fields(result: SegmentationResult, header: Any, image_rgb: np.ndarray | None = None) -> ResultFields:
    return ResultFields(
        mask=mask_fields(result.mask, header),
        detections=detection_fields(result, header),
        reasoning=result.text,
        overlay=None if image_rgb is None else overlay_fields(image_rgb, result, header),
    )


def _detection(d: DetectionFields, types: Mapping[str, type] | None) -> Any:
    t = lambda name: message_class(name, types)  # noqa: E731
    pose = t("geometry_msgs/msg/PoseWithCovariance")(
        pose=t("geometry_msgs/msg/Pose")(
            position=t("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0),
            orientation=t("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0),
        ),
        covariance=np.zeros(36, dtype=np.float64),
    )
    hypothesis = t("vision_msgs/msg/ObjectHypothesisWithPose")(
        hypothesis=t("vision_msgs/msg/ObjectHypothesis")(class_id=str(d.class_id), score=float(d.score)), pose=pose
    )
    bbox = t("vision_msgs/msg/BoundingBox2D")(
        center=t("vision_msgs/msg/Pose2D")(
            position=t("vision_msgs/msg/Point2D")(x=float(d.center_x), y=float(d.center_y)), theta=float(d.theta)
        ),
        size_x=float(d.size_x),
        size_y=float(d.size_y),
    )
    return t("vision_msgs/msg/Detection2D")(header=d.header, results=[hypothesis], bbox=bbox, id=str(d.id))


def fill_detections(fields: DetectionArrayFields, types: Mapping[str, type] | None = None) -> Any:
    cls = message_class(DETECTION_ARRAY_TYPE, types)
    return cls(header=fields.header, detections=[_detection(d, types) for d in fields.detections])


def fill_string(text: str, types: Mapping[str, type] | None = None) -> Any:
    return message_class("std_msgs/msg/String", types)(data=str(text))


def fill_result(fields: ResultFields, types: Mapping[str, type] | None = None) -> ResultMessages:
    return ResultMessages(
        mask=fill_image(fields.mask, types),
        detections=fill_detections(fields.detections, types),
        reasoning=fill_string(fields.reasoning, types),
        overlay=None if fields.overlay is None else fill_image(fields.overlay, types),
    )


# -- 3D target --
def target_header(image_header: Any, frame_id: str, types: Mapping[str, type] | None = None) -> Any:
    return message_class("std_msgs/msg/Header", types)(stamp=image_header.stamp, frame_id=str(frame_id))


def cloud_fields(points: np.ndarray, header: Any, colours: np.ndarray | None = None) -> CloudFields:
    points = np.asarray(points, np.float32).reshape(-1, 3)
    cloud = np.zeros(len(points), CLOUD_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = points.T
    if colours is not None:
        rgb = np.asarray(colours, np.uint32).reshape(-1, 3)
        cloud["rgb"] = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    names = CLOUD_DTYPE.names
    return CloudFields(
        header=header,
        width=len(points),
        fields=[(n, CLOUD_DTYPE.fields[n][1], POINTFIELD_FLOAT32, 1) for n in names],
        point_step=CLOUD_DTYPE.itemsize,
        row_step=CLOUD_DTYPE.itemsize * len(points),
        data=cloud.view(np.uint8).reshape(-1),
    )


def cloud_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """PointCloud2 with float32 x, y, z and rgb fields (any offsets, little-endian) -> (N, 3) float32 points,
    (N, 3) uint8 colours."""
    offsets = {f.name: int(f.offset) for f in msg.fields}
    n = int(msg.width) * int(msg.height)
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "rgb"],
            "formats": ["<f4", "<f4", "<f4", "<u4"],
            "offsets": [offsets[k] for k in ("x", "y", "z", "rgb")],
            "itemsize": int(msg.point_step),
        }
    )
    cloud = np.frombuffer(np.asarray(msg.data, np.uint8).tobytes(), dtype, count=n)
    rgb = cloud["rgb"]
    colours = np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], axis=1).astype(np.uint8)
    return np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=1), colours


def fill_point_cloud(fields: CloudFields, types: Mapping[str, type] | None = None) -> Any:
    cls = message_class("sensor_msgs/msg/PointCloud2", types)
    point_field = message_class("sensor_msgs/msg/PointField", types)
    return cls(
        header=fields.header,
        height=int(fields.height),
        width=int(fields.width),
        fields=[point_field(name=n, offset=int(o), datatype=int(d), count=int(c)) for n, o, d, c in fields.fields],
        is_bigendian=bool(fields.is_bigendian),
        point_step=int(fields.point_step),
        row_step=int(fields.row_step),
        data=byte_sequence(cls, fields.data),
        is_dense=bool(fields.is_dense),
    )


def fill_detection_3d(
    target: Target3D, header: Any, prompt: str, score: float, types: Mapping[str, type] | None = None
) -> Any:
    """One vision_msgs/Detection3D (all zero when the target is not ok; the hypothesis is filled either way)."""
    t = lambda name: message_class(name, types)  # noqa: E731
    zero = np.zeros(3)
    centroid = target.centroid if target.ok else zero
    center, size = (target.box_center, target.box_size) if target.ok else (zero, zero)
    point = lambda xyz: t("geometry_msgs/msg/Point")(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))  # noqa: E731
    identity = lambda: t("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)  # noqa: E731
    pose = t("geometry_msgs/msg/PoseWithCovariance")(
        pose=t("geometry_msgs/msg/Pose")(position=point(centroid), orientation=identity()),
        covariance=np.zeros(36, dtype=np.float64),
    )
    hypothesis = t("vision_msgs/msg/ObjectHypothesisWithPose")(
        hypothesis=t("vision_msgs/msg/ObjectHypothesis")(class_id=str(prompt), score=float(score)), pose=pose
    )
    bbox = t("vision_msgs/msg/BoundingBox3D")(
        center=t("geometry_msgs/msg/Pose")(position=point(center), orientation=identity()),
        size=t("geometry_msgs/msg/Vector3")(x=float(size[0]), y=float(size[1]), z=float(size[2])),
    )
    return t("vision_msgs/msg/Detection3D")(header=header, results=[hypothesis], bbox=bbox, id="")


def fill_target(
    target: Target3D,
    header: Any,
    prompt: str,
    score: float,
    colours_rgb: np.ndarray | None = None,
    types: Mapping[str, type] | None = None,
) -> TargetMessages:
    detections = [fill_detection_3d(target, header, prompt, score, types)] if target.ok else []
    messages = TargetMessages(
        header, message_class("vision_msgs/msg/Detection3DArray", types)(header=header, detections=detections)
    )
    if not target.ok:
        return messages
    c = target.centroid
    point = message_class("geometry_msgs/msg/Point", types)(x=float(c[0]), y=float(c[1]), z=float(c[2]))
    messages.point = message_class("geometry_msgs/msg/PointStamped", types)(header=header, point=point)
    if colours_rgb is not None:
        rows, cols = target.pixels.T
        messages.cloud = fill_point_cloud(cloud_fields(target.points, header, colours_rgb[rows, cols]), types)
    return messages
