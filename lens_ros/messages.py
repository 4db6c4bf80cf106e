"""ROS messages from the fields of lens_ros.fields (the last step of result -> fields -> messages). No rclpy.

Messages are built with every field given as a keyword argument, which both rclpy and rosbags classes accept;
uint8[] fields get a numpy array for rosbags' dataclasses and an `array.array('B')` for rclpy classes. `types`
names where the classes come from: a mapping from full type names ("sensor_msgs/msg/Image") to classes —
rosbags' `typestore.types` is one (with the vision_msgs and lens_interfaces definitions registered, see
lens_ros.bag.lens_typestore and lens_ros.interfaces) — or None to import them from the ROS 2 Python packages
(`sensor_msgs.msg.Image`), as the node does.

Images and the 2D result
    fill_image(fields, types=None) -> sensor_msgs/msg/Image
    array_to_image(array, encoding, header, types=None) -> sensor_msgs/msg/Image   (array -> fields -> message)
    fill_detections(fields, types=None) -> vision_msgs/msg/Detection2DArray
    fill_string(text, types=None) -> std_msgs/msg/String
    fill_result(fields, types=None) -> ResultMessages(mask, detections, reasoning, overlay or None, labels)

3D target
    target_header(image_header, frame_id, types=None) -> std_msgs/msg/Header
        the source image's stamp with the depth image's frame_id (the frame the 3D numbers are in)
    fill_point_cloud(fields, types=None) -> sensor_msgs/msg/PointCloud2
    fill_targets(measured, header, colours_rgb=None, types=None, markers=False, delete_all=False) -> TargetMessages
        `measured`: one lens_ros.fields.MeasuredTarget (id, phrase, score, Target3D) per target of the command
        point:      geometry_msgs/PointStamped (the first target's centroid), None when it is not ok
        detections: vision_msgs/Detection3DArray with one Detection3D per target that is ok (id "k")
        cloud:      PointCloud2 of the ok targets' points, only when `colours_rgb` is given and one is ok
        markers:    visualization_msgs/MarkerArray (lens_ros.fields.marker_fields) when `markers`
    fill_target(target, header, prompt, score, colours_rgb=None, types=None) -> TargetMessages: one target

RViz and diagnostics
    fill_markers(markers, types=None) -> visualization_msgs/msg/MarkerArray (lens_ros.fields.marker_fields)
    fill_diagnostics(statuses, stamp, types=None) -> diagnostic_msgs/msg/DiagnosticArray (lens_ros.diagnostics)

lens_interfaces
    fill_segmentation_result(result, header, messages, types=None, targets_3d=None, error_3d="")
        -> lens_interfaces/msg/SegmentationResult; `result` a CommandResult (or one SegmentationResult); `messages`
        are the topic messages fill_result built for the same result (its mask and label messages are reused, not
        rebuilt) and, in `messages.target`, the 3D targets' (whose header the 3D detections take); `targets_3d` one
        Target3D per target; `error_3d` says why they are missing.
"""

from __future__ import annotations

import array
import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .conversions import IMAGE_TYPE
from .diagnostics import StatusFields
from .fields import (
    CloudFields,
    Detection3DFields,
    DetectionArrayFields,
    DetectionFields,
    ImageFields,
    MarkerFields,
    MeasuredTarget,
    ResultFields,
    TargetResultFields,
    array_to_fields,
    marker_fields,
    segmentation_result_fields,
    targets_fields,
)

if TYPE_CHECKING:  # lens_model.inference.pipeline imports torch
    from lens_model.geometry.target3d import Target3D
    from lens_model.inference.pipeline import SegmentationResult
    from lens_model.inference.targets import CommandResult

DETECTION_ARRAY_TYPE = "vision_msgs/msg/Detection2DArray"
RESULT_TYPE = "lens_interfaces/msg/SegmentationResult"
TARGET_TYPE = "lens_interfaces/msg/SegmentationTarget"
MARKER_ARRAY_TYPE = "visualization_msgs/msg/MarkerArray"
# Every class fill_result builds, by full name.
MESSAGE_TYPES = (
    IMAGE_TYPE,
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


@dataclass
class ResultMessages:
    mask: Any  # sensor_msgs/msg/Image
    detections: Any  # vision_msgs/msg/Detection2DArray
    reasoning: Any  # std_msgs/msg/String
    overlay: Any = None  # sensor_msgs/msg/Image or None
    labels: Any = None  # sensor_msgs/msg/Image mono8 label image (0 = background, k = target k)
    target: TargetMessages | None = None  # the 3D targets' messages, when depth was measured


@dataclass
class TargetMessages:
    header: Any  # std_msgs/msg/Header: the source image's stamp, the depth frame_id
    detections: Any  # vision_msgs/msg/Detection3DArray: one Detection3D per target that is ok
    point: Any = None  # geometry_msgs/msg/PointStamped: the first target's centroid, None when it is not ok
    cloud: Any = None  # sensor_msgs/msg/PointCloud2 when asked for and a target is ok
    markers: Any = None  # visualization_msgs/msg/MarkerArray when asked for


def message_class(name: str, types: Mapping[str, type] | None = None) -> type:
    """Full ROS type name ("vision_msgs/msg/Detection2D") -> class, from `types` or the ROS 2 Python package."""
    if types is not None:
        try:
            return types[name]
        except KeyError:
            raise ImportError(f"message type {name} is not in the given types; register it first") from None
    package, kind, cls = name.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), cls)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"cannot import message type {name} ({exc}); source the ROS 2 workspace that provides {package}"
        ) from None


def byte_sequence(cls: type, data: np.ndarray) -> Any:
    """A uint8[] field value for message class `cls`: numpy for rosbags' dataclasses, array.array for rclpy."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    if dataclasses.is_dataclass(cls):
        return data
    return array.array("B", data.tobytes())


def _float32_array(cls: type, values) -> Any:
    """A float32[] field value: numpy for rosbags' dataclasses, a list of floats for rclpy."""
    return np.asarray(values, dtype=np.float32) if dataclasses.is_dataclass(cls) else [float(v) for v in values]


# -- images and the 2D result --
def fill_image(fields: ImageFields, types: Mapping[str, type] | None = None) -> Any:
    cls = message_class(IMAGE_TYPE, types)
    return cls(
        header=fields.header,
        height=int(fields.height),
        width=int(fields.width),
        encoding=fields.encoding,
        is_bigendian=int(fields.is_bigendian),
        step=int(fields.step),
        data=byte_sequence(cls, fields.data),
    )


def array_to_image(array_: np.ndarray, encoding: str, header: Any, types: Mapping[str, type] | None = None) -> Any:
    """numpy array -> sensor_msgs/msg/Image with `header`; e.g. a (H, W) uint8 mask as mono8, an RGB overlay as rgb8."""
    return fill_image(array_to_fields(array_, encoding, header), types)


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
        labels=None if fields.labels is None else fill_image(fields.labels, types),
    )


# -- 3D target --
def target_header(image_header: Any, frame_id: str, types: Mapping[str, type] | None = None) -> Any:
    return message_class("std_msgs/msg/Header", types)(stamp=image_header.stamp, frame_id=str(frame_id))


def _point(xyz, types: Mapping[str, type] | None) -> Any:
    return message_class("geometry_msgs/msg/Point", types)(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


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


def fill_detection_3d(d: Detection3DFields, types: Mapping[str, type] | None = None) -> Any:
    t = lambda name: message_class(name, types)  # noqa: E731
    identity = lambda: t("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)  # noqa: E731
    pose = t("geometry_msgs/msg/PoseWithCovariance")(
        pose=t("geometry_msgs/msg/Pose")(position=_point(d.position, types), orientation=identity()),
        covariance=np.zeros(36, dtype=np.float64),
    )
    hypothesis = t("vision_msgs/msg/ObjectHypothesisWithPose")(
        hypothesis=t("vision_msgs/msg/ObjectHypothesis")(class_id=str(d.class_id), score=float(d.score)), pose=pose
    )
    size = d.box_size
    bbox = t("vision_msgs/msg/BoundingBox3D")(
        center=t("geometry_msgs/msg/Pose")(position=_point(d.box_center, types), orientation=identity()),
        size=t("geometry_msgs/msg/Vector3")(x=float(size[0]), y=float(size[1]), z=float(size[2])),
    )
    return t("vision_msgs/msg/Detection3D")(header=d.header, results=[hypothesis], bbox=bbox, id=str(d.id))


def fill_marker(m: MarkerFields, types: Mapping[str, type] | None = None) -> Any:
    t = lambda name: message_class(name, types)  # noqa: E731
    r, g, b, a = (float(v) for v in m.colour)
    cls = t("visualization_msgs/msg/Marker")
    values = dict(
        header=m.header,
        ns=m.ns,
        id=int(m.id),
        type=int(m.type),
        action=int(m.action),
        pose=t("geometry_msgs/msg/Pose")(
            position=_point(m.position, types),
            orientation=t("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0),
        ),
        scale=t("geometry_msgs/msg/Vector3")(x=float(m.scale[0]), y=float(m.scale[1]), z=float(m.scale[2])),
        color=t("std_msgs/msg/ColorRGBA")(r=r, g=g, b=b, a=a),
        lifetime=t("builtin_interfaces/msg/Duration")(sec=0, nanosec=0),
        frame_locked=False,
        points=[],
        colors=[],
        text=m.text,
        mesh_resource="",
        mesh_use_embedded_materials=False,
    )
    # Iron added texture and mesh_file: rosbags' classes need every field, rclpy's Humble Marker has none of them
    if not hasattr(cls, "get_fields_and_field_types") or "texture" in cls.get_fields_and_field_types():
        image, mesh = t("sensor_msgs/msg/CompressedImage"), t("visualization_msgs/msg/MeshFile")
        empty = np.zeros(0, np.uint8)
        values.update(
            texture_resource="",
            texture=image(header=m.header, format="", data=byte_sequence(image, empty)),
            uv_coordinates=[],
            mesh_file=mesh(filename="", data=byte_sequence(mesh, empty)),
        )
    return cls(**values)


def fill_markers(markers: list[MarkerFields], types: Mapping[str, type] | None = None) -> Any:
    return message_class(MARKER_ARRAY_TYPE, types)(markers=[fill_marker(m, types) for m in markers])


def fill_targets(
    measured: list[MeasuredTarget],
    header: Any,
    colours_rgb: np.ndarray | None = None,
    types: Mapping[str, type] | None = None,
    markers: bool = False,
    delete_all: bool = False,
) -> TargetMessages:
    fields = targets_fields(measured, header, colours_rgb)
    array_cls = message_class("vision_msgs/msg/Detection3DArray", types)
    messages = TargetMessages(
        header, array_cls(header=header, detections=[fill_detection_3d(d, types) for d in fields.detections])
    )
    if fields.point is not None:
        messages.point = message_class("geometry_msgs/msg/PointStamped", types)(
            header=header, point=_point(fields.point, types)
        )
    if fields.cloud is not None:
        messages.cloud = fill_point_cloud(fields.cloud, types)
    if markers:
        messages.markers = fill_markers(marker_fields(measured, header, delete_all), types)
    return messages


def fill_target(
    target: Target3D,
    header: Any,
    prompt: str,
    score: float,
    colours_rgb: np.ndarray | None = None,
    types: Mapping[str, type] | None = None,
) -> TargetMessages:
    return fill_targets([MeasuredTarget(1, prompt, score, target)], header, colours_rgb, types)


# -- lens_interfaces --
def _fill_target_result(f: TargetResultFields, types: Mapping[str, type] | None) -> Any:
    return message_class(TARGET_TYPE, types)(
        id=f.id,
        prompt=f.prompt,
        has_box=f.has_box,
        detection=_detection(f.detection, types),
        box_error=f.box_error,
        score=f.score,
        mask_pixels=f.mask_pixels,
        reasoning=f.reasoning,
        format_ok=f.format_ok,
        num_tokens=f.num_tokens,
        has_3d=f.has_3d,
        error_3d=f.error_3d,
        detection_3d=fill_detection_3d(f.detection_3d, types),
        num_points_3d=f.num_points_3d,
        valid_depth_fraction=f.valid_depth_fraction,
        confident=f.confident,
        reason=f.reason,
    )


def fill_segmentation_result(
    result: CommandResult | SegmentationResult,
    header: Any,
    messages: ResultMessages,
    types: Mapping[str, type] | None = None,
    targets_3d: list[Target3D] | None = None,
    error_3d: str = "",
) -> Any:
    header_3d = messages.target.header if messages.target is not None else header
    f = segmentation_result_fields(result, header, targets_3d, error_3d, header_3d)
    first = f.first
    cls = message_class(RESULT_TYPE, types)
    return cls(
        header=f.header,
        prompt=f.prompt,
        mask=messages.mask,
        has_box=first.has_box,
        detection=_detection(first.detection, types),
        box_error=first.box_error,
        score=first.score,
        reasoning=first.reasoning,
        format_ok=first.format_ok,
        num_tokens=first.num_tokens,
        timing_names=f.timing_names,
        timing_seconds=_float32_array(cls, f.timing_seconds),
        has_3d=first.has_3d,
        error_3d=first.error_3d,
        detection_3d=fill_detection_3d(first.detection_3d, types),
        num_points_3d=first.num_points_3d,
        valid_depth_fraction=first.valid_depth_fraction,
        confident=first.confident,
        reason=first.reason,
        label_mask=messages.labels,
        targets=[_fill_target_result(t, types) for t in f.targets],
    )


# -- diagnostic_msgs --
def fill_diagnostics(statuses: list[StatusFields], stamp: Any, types: Mapping[str, type] | None = None) -> Any:
    """diagnostic_msgs/msg/DiagnosticArray of `statuses` (lens_ros.diagnostics), header stamp `stamp`."""
    t = lambda name: message_class(name, types)  # noqa: E731
    status_cls, key_value = t("diagnostic_msgs/msg/DiagnosticStatus"), t("diagnostic_msgs/msg/KeyValue")
    # the `byte` level: an int in rosbags' classes, one byte (b"\x01") in rclpy's
    level = int if dataclasses.is_dataclass(status_cls) else lambda value: bytes([value])
    return t("diagnostic_msgs/msg/DiagnosticArray")(
        header=t("std_msgs/msg/Header")(stamp=stamp, frame_id=""),
        status=[
            status_cls(
                level=level(s.level),
                name=s.name,
                message=s.message,
                hardware_id=s.hardware_id,
                values=[key_value(key=k, value=v) for k, v in s.values],
            )
            for s in statuses
        ],
    )
