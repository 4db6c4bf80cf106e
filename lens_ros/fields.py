"""A segmentation result as the fields of the node's output messages: plain dataclasses that mirror the messages,
built from a SegmentationResult (2D), a Target3D (3D) and numpy images. No message classes and no rclpy here;
lens_ros.messages turns these fields into messages. Data goes one way: result -> fields -> messages.

Images
    array_to_fields(array, encoding, header) -> ImageFields
        numpy array in the encoding's layout -> sensor_msgs/Image fields (little-endian, is_bigendian 0, no padding)
    mask_fields(mask, header) -> ImageFields
        (H, W) bool/0-1 mask -> sensor_msgs/Image mono8, 0 = background, 255 = object, with the source `header`.
    overlay_fields(image_rgb, result, header) -> ImageFields
        rgb8 picture for RViz: lens_model.overlay.draw_overlay (tinted mask, box, prompt caption).

2D
    detection_fields(result, header) -> DetectionArrayFields
        vision_msgs/Detection2DArray with the source header and one Detection2D for result.box = (x1, y1, x2, y2):
        bbox.center.position = ((x1 + x2) / 2, (y1 + y2) / 2), theta 0, size = (x2 - x1, y2 - y1) in pixels;
        one ObjectHypothesisWithPose: class_id = the prompt, score = result.score (SAM2's predicted IoU of the
        mask, not clipped), identity pose with zero covariance; Detection2D.header = the source header, id "".
        No detection (an empty array, still with the header) when result.box is None.
    result_fields(result, header, image_rgb=None, detections=True) -> ResultFields(mask, detections, reasoning, overlay)
        reasoning = result.text (the generated answer: chain of thought and/or box tokens); overlay is None unless
        image_rgb (the (H, W, 3) uint8 RGB the pipeline segmented) is given; detections=False: an empty array (the
        node's choice for a result that is not confident).

3D (lens_model.geometry.target3d.Target3D; the node's depth_enabled, `lens bag --depth-topic`)
    detection_3d_fields(target, header, prompt, score) -> Detection3DFields
        one vision_msgs/Detection3D: bbox center = box centre, identity orientation, size = box size;
        results[0]: class_id = prompt, score, pose.position = centroid; all zero when the target is not ok
    cloud_fields(points, header, colours=None) -> CloudFields
        (N, 3) float32 points (+ (N, 3) uint8 RGB) -> sensor_msgs/PointCloud2 fields: height 1, width N,
        fields x y z (FLOAT32 at offsets 0, 4, 8) and rgb (FLOAT32 at 12 holding the bits of 0x00RRGGBB, the PCL
        and RViz convention), point_step 16, row_step 16 N, little-endian, is_dense (no NaN points)
    target_fields(target, header, prompt, score, colours_rgb=None) -> TargetFields
        the centroid (geometry_msgs/PointStamped) and the Detection3D when the target is ok, and its point cloud
        coloured from `colours_rgb` ((H, W, 3) uint8 image the mask came from) when given

lens_interfaces/SegmentationResult
    segmentation_result_fields(result, header, target=None, error_3d="", header_3d=None)
        -> SegmentationResultFields: the 2D result (with a detection whose box is all zero, and has_box false, when
        the answer had no box: consumers read the prompt and mask score the same way), whether it is confident
        (and why not), the timings, and the 3D target (has_3d false, detection_3d all zero and `error_3d` when there
        is none or it is not ok).

The header object is passed through untouched, so output messages carry the source image's stamp and frame_id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_model.geometry.target3d import Target3D
from lens_model.overlay import draw_overlay

from .conversions import encoding_spec, image_to_array
from .errors import ImageConversionError

if TYPE_CHECKING:  # lens_model.inference.pipeline imports torch; these helpers only read the result's attributes
    from lens_model.inference.pipeline import SegmentationResult

POINTFIELD_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
CLOUD_DTYPE = np.dtype(
    {"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"], "offsets": [0, 4, 8, 12], "itemsize": 16}
)


@dataclass
class ImageFields:
    """The fields of a sensor_msgs/Image; `data` is 1-D uint8 of length step × height."""

    header: Any
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray

    def to_array(self) -> np.ndarray:
        return image_to_array(self)


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
class Detection3DFields:
    """One vision_msgs/Detection3D with a single hypothesis (flattened); metres, in the header's frame."""

    header: Any
    class_id: str  # the prompt
    score: float
    position: np.ndarray  # (3,) the hypothesis pose's position: the centroid
    box_center: np.ndarray  # (3,)
    box_size: np.ndarray  # (3,)


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


@dataclass
class TargetFields:
    header: Any  # the source image's stamp, the depth frame_id
    detections: list[Detection3DFields]  # one when the target is ok, else none
    point: np.ndarray | None = None  # (3,) centroid, None when the target is not ok
    cloud: CloudFields | None = None  # when asked for and the target is ok


@dataclass
class SegmentationResultFields:
    """The fields of a lens_interfaces/SegmentationResult (the mask message is the topic's, built beside it)."""

    header: Any
    prompt: str
    has_box: bool
    detection: DetectionFields
    box_error: str
    score: float
    reasoning: str
    format_ok: bool
    num_tokens: int
    timing_names: list[str]
    timing_seconds: list[float]
    has_3d: bool
    error_3d: str
    detection_3d: Detection3DFields
    num_points_3d: int
    valid_depth_fraction: float
    confident: bool
    reason: str  # why confident is false; "" otherwise


# -- images --
def array_to_fields(array_: np.ndarray, encoding: str, header: Any) -> ImageFields:
    """numpy array in `encoding`'s layout (as image_to_array returns) -> ImageFields with `header` (kept as is)."""
    spec = encoding_spec(encoding)
    values = np.asarray(array_)
    if values.dtype != np.dtype(spec.dtype):
        raise ImageConversionError(f"{encoding} image needs dtype {np.dtype(spec.dtype)}, got {values.dtype}")
    if spec.channels == 1 and values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    want = "(H, W)" if spec.channels == 1 else f"(H, W, {spec.channels})"
    if values.ndim != (2 if spec.channels == 1 else 3) or (spec.channels > 1 and values.shape[2] != spec.channels):
        raise ImageConversionError(f"{encoding} image needs shape {want}, got {values.shape}")
    height, width = values.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"image is empty (shape {values.shape})")
    if values.dtype.itemsize > 1:
        values = values.astype(values.dtype.newbyteorder("<"))
    data = np.frombuffer(np.ascontiguousarray(values).tobytes(), dtype=np.uint8).copy()
    return ImageFields(
        header=header,
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=0,
        step=int(width * spec.bytes_per_pixel),
        data=data,
    )


def mask_fields(mask: np.ndarray, header: Any) -> ImageFields:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageConversionError(f"mask must be (H, W), got shape {mask.shape}")
    return array_to_fields(np.where(mask.astype(bool), np.uint8(255), np.uint8(0)), "mono8", header)


def overlay_fields(image_rgb: np.ndarray, result: SegmentationResult, header: Any) -> ImageFields:
    picture = draw_overlay(np.asarray(image_rgb), result.mask, result.box, result.prompt)
    return array_to_fields(np.asarray(picture, dtype=np.uint8), "rgb8", header)


# -- 2D --
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


def result_fields(
    result: SegmentationResult, header: Any, image_rgb: np.ndarray | None = None, detections: bool = True
) -> ResultFields:
    return ResultFields(
        mask=mask_fields(result.mask, header),
        detections=detection_fields(result, header) if detections else DetectionArrayFields(header, []),
        reasoning=result.text,
        overlay=None if image_rgb is None else overlay_fields(image_rgb, result, header),
    )


# -- 3D --
def detection_3d_fields(target: Target3D, header: Any, prompt: str, score: float) -> Detection3DFields:
    zero = np.zeros(3)
    return Detection3DFields(
        header=header,
        class_id=str(prompt),
        score=float(score),
        position=target.centroid if target.ok else zero,
        box_center=target.box_center if target.ok else zero,
        box_size=target.box_size if target.ok else zero,
    )


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


def target_fields(
    target: Target3D, header: Any, prompt: str, score: float, colours_rgb: np.ndarray | None = None
) -> TargetFields:
    if not target.ok:
        return TargetFields(header, [])
    out = TargetFields(header, [detection_3d_fields(target, header, prompt, score)], point=target.centroid)
    if colours_rgb is not None:
        rows, cols = target.pixels.T
        out.cloud = cloud_fields(target.points, header, colours_rgb[rows, cols])
    return out


# -- lens_interfaces/SegmentationResult --
def segmentation_result_fields(
    result: SegmentationResult,
    header: Any,
    target: Target3D | None = None,
    error_3d: str = "",
    header_3d: Any = None,
) -> SegmentationResultFields:
    """`header_3d`: the header of the 3D detection (the depth frame), by default `header`."""
    detections = detection_fields(result, header).detections
    if detections:
        detection = detections[0]
    else:  # keep the hypothesis (prompt, mask score) so that consumers can read them the same way
        detection = DetectionFields(header, result.prompt, float(result.score), 0.0, 0.0, 0.0, 0.0)
    measured = target if target is not None else Target3D(False, error_3d)
    header_3d = header if header_3d is None else header_3d
    names = list(result.timings)
    return SegmentationResultFields(
        header=header,
        prompt=str(result.prompt),
        has_box=result.box is not None,
        detection=detection,
        box_error=str(result.box_error or ""),
        score=float(result.score),
        reasoning=str(result.text),
        format_ok=bool(result.format_ok),
        num_tokens=int(result.num_tokens),
        timing_names=names,
        timing_seconds=[float(result.timings[n]) for n in names],
        has_3d=bool(measured.ok),
        error_3d=str(error_3d if not measured.ok else ""),
        detection_3d=detection_3d_fields(measured, header_3d, result.prompt, float(result.score)),
        num_points_3d=int(measured.num_points),
        valid_depth_fraction=float(measured.valid_fraction),
        confident=bool(result.confident),
        reason=str(result.reason or ""),
    )
