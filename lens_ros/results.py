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
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_model.overlay import draw_overlay

from .conversions import ImageFields, array_to_fields, fill_image, message_class
from .errors import ImageConversionError

if TYPE_CHECKING:  # lens_model.pipeline imports torch; these helpers only read the result's attributes
    from lens_model.pipeline import SegmentationResult

__all__ = [
    "DetectionFields", "DetectionArrayFields", "ResultFields", "ResultMessages", "mask_fields", "detection_fields",
    "overlay_fields", "result_fields", "fill_image", "fill_detections", "fill_string", "fill_result", "MESSAGE_TYPES",
]

DETECTION_ARRAY_TYPE = "vision_msgs/msg/Detection2DArray"
# Every class fill_detections builds, by full name.
MESSAGE_TYPES = (
    "sensor_msgs/msg/Image", "std_msgs/msg/String", DETECTION_ARRAY_TYPE, "vision_msgs/msg/Detection2D",
    "vision_msgs/msg/BoundingBox2D", "vision_msgs/msg/Pose2D", "vision_msgs/msg/Point2D",
    "vision_msgs/msg/ObjectHypothesisWithPose", "vision_msgs/msg/ObjectHypothesis",
    "geometry_msgs/msg/PoseWithCovariance", "geometry_msgs/msg/Pose", "geometry_msgs/msg/Point",
    "geometry_msgs/msg/Quaternion",
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


def mask_fields(mask: np.ndarray, header: Any) -> ImageFields:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageConversionError(f"mask must be (H, W), got shape {mask.shape}")
    return array_to_fields(np.where(mask.astype(bool), np.uint8(255), np.uint8(0)), "mono8", header)


def detection_fields(result: SegmentationResult, header: Any) -> DetectionArrayFields:
    if result.box is None:
        return DetectionArrayFields(header, [])
    x1, y1, x2, y2 = (float(v) for v in result.box)
    detection = DetectionFields(header=header, class_id=result.prompt, score=float(result.score),
                                center_x=(x1 + x2) / 2, center_y=(y1 + y2) / 2, size_x=x2 - x1, size_y=y2 - y1)
    return DetectionArrayFields(header, [detection])


def overlay_fields(image_rgb: np.ndarray, result: SegmentationResult, header: Any) -> ImageFields:
    picture = draw_overlay(np.asarray(image_rgb), result.mask, result.box, result.prompt)
    return array_to_fields(np.asarray(picture, dtype=np.uint8), "rgb8", header)


def result_fields(result: SegmentationResult, header: Any, image_rgb: np.ndarray | None = None) -> ResultFields:
    return ResultFields(mask=mask_fields(result.mask, header), detections=detection_fields(result, header),
                        reasoning=result.text,
                        overlay=None if image_rgb is None else overlay_fields(image_rgb, result, header))


def _detection(d: DetectionFields, types: Mapping[str, type] | None) -> Any:
    t = lambda name: message_class(name, types)  # noqa: E731
    pose = t("geometry_msgs/msg/PoseWithCovariance")(
        pose=t("geometry_msgs/msg/Pose")(position=t("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0),
                                         orientation=t("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36, dtype=np.float64))
    hypothesis = t("vision_msgs/msg/ObjectHypothesisWithPose")(
        hypothesis=t("vision_msgs/msg/ObjectHypothesis")(class_id=str(d.class_id), score=float(d.score)), pose=pose)
    bbox = t("vision_msgs/msg/BoundingBox2D")(
        center=t("vision_msgs/msg/Pose2D")(position=t("vision_msgs/msg/Point2D")(x=float(d.center_x), y=float(d.center_y)),
                                           theta=float(d.theta)),
        size_x=float(d.size_x), size_y=float(d.size_y))
    return t("vision_msgs/msg/Detection2D")(header=d.header, results=[hypothesis], bbox=bbox, id=str(d.id))


def fill_detections(fields: DetectionArrayFields, types: Mapping[str, type] | None = None) -> Any:
    cls = message_class(DETECTION_ARRAY_TYPE, types)
    return cls(header=fields.header, detections=[_detection(d, types) for d in fields.detections])


def fill_string(text: str, types: Mapping[str, type] | None = None) -> Any:
    return message_class("std_msgs/msg/String", types)(data=str(text))


def fill_result(fields: ResultFields, types: Mapping[str, type] | None = None) -> ResultMessages:
    return ResultMessages(mask=fill_image(fields.mask, types), detections=fill_detections(fields.detections, types),
                          reasoning=fill_string(fields.reasoning, types),
                          overlay=None if fields.overlay is None else fill_image(fields.overlay, types))
