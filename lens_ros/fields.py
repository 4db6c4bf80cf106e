"""A segmentation result as the fields of the node's output messages: plain dataclasses that mirror the messages,
built from a command's result (lens_model.inference.targets.CommandResult: one SegmentationResult per target; a
single SegmentationResult is taken as a one-target command), its Target3Ds (3D) and numpy images. No message classes
and no rclpy here; lens_ros.messages turns these fields into messages. Data goes one way: result -> fields ->
messages. Target k (1-based, the order the command names them) has the id k everywhere: Detection2D/3D.id "k",
value k in the label image, marker id k, colour lens_model.overlay.target_colour(k).

Images
    array_to_fields(array, encoding, header) -> ImageFields
        numpy array in the encoding's layout -> sensor_msgs/Image fields (little-endian, is_bigendian 0, no padding)
    mask_fields(mask, header) -> ImageFields
        (H, W) bool/0-1 mask -> sensor_msgs/Image mono8, 0 = background, 255 = object, with the source `header`.
    labels_fields(labels, header) -> ImageFields
        (H, W) uint8 label image (0 = background, k = target k) -> sensor_msgs/Image mono8 with the source `header`.
    overlay_fields(image_rgb, result, header) -> ImageFields
        rgb8 picture for RViz: lens_model.overlay.draw_targets_overlay (each target's tinted mask and box in its
        colour, the command as caption; one target: draw_overlay's picture).

2D
    detection_fields(result, header, target_id=1) -> DetectionArrayFields
        vision_msgs/Detection2DArray with the source header and one Detection2D for result.box = (x1, y1, x2, y2):
        bbox.center.position = ((x1 + x2) / 2, (y1 + y2) / 2), theta 0, size = (x2 - x1, y2 - y1) in pixels;
        one ObjectHypothesisWithPose: class_id = the prompt, score = result.score (SAM2's predicted IoU of the
        mask, not clipped), identity pose with zero covariance; Detection2D.header = the source header, id =
        str(target_id). No detection (an empty array, still with the header) when result.box is None.
    command_detection_fields(result, header, unconfident=True) -> DetectionArrayFields: one Detection2D per target
        with a box; unconfident=False: none for a target that is not confident (the node's publish_unconfident)
    result_fields(result, header, image_rgb=None, unconfident=True) -> ResultFields(mask, detections, reasoning,
        overlay, labels)
        mask = the union of the targets; labels = the label image (both hold every target, confident or not);
        detections as command_detection_fields; reasoning = the generated answer (chain of thought and/or box
        tokens), with several targets each one's as "[k] phrase: text" on its own line; overlay is None unless
        image_rgb (the (H, W, 3) uint8 RGB the pipeline segmented) is given.

3D (lens_model.geometry.target3d.Target3D; the node's depth_enabled, `lens bag --depth-topic`)
    detection_3d_fields(target, header, prompt, score) -> Detection3DFields
        one vision_msgs/Detection3D: bbox center = box centre, identity orientation, size = box size;
        results[0]: class_id = prompt, score, pose.position = centroid; all zero when the target is not ok
    cloud_fields(points, header, colours=None) -> CloudFields
        (N, 3) float32 points (+ (N, 3) uint8 RGB) -> sensor_msgs/PointCloud2 fields: height 1, width N,
        fields x y z (FLOAT32 at offsets 0, 4, 8) and rgb (FLOAT32 at 12 holding the bits of 0x00RRGGBB, the PCL
        and RViz convention), point_step 16, row_step 16 N, little-endian, is_dense (no NaN points)
    targets_fields(measured, header, colours_rgb=None) -> TargetFields
        `measured`: one MeasuredTarget (id, phrase, score, Target3D) per target. One Detection3D per target that
        is ok (id "k"), the first target's centroid (geometry_msgs/PointStamped, when it is ok), and the points of
        every ok target in one cloud coloured from `colours_rgb` ((H, W, 3) uint8 image the masks came from)
    target_fields(target, header, prompt, score, colours_rgb=None) -> TargetFields: one target (id 1)
    marker_fields(measured, header, delete_all) -> list[MarkerFields]
        visualization_msgs/Marker per ok target: a CUBE (the 3D box), a SPHERE at the centroid and a
        TEXT_VIEW_FACING label "k: phrase score" above the box, namespaces lens_box / lens_centroid / lens_label, id
        k, colour target_colour(k); first a DELETEALL marker when `delete_all` (the targets changed)

lens_interfaces/SegmentationResult
    segmentation_result_fields(result, header, targets_3d=None, error_3d="", header_3d=None)
        -> SegmentationResultFields: per target (TargetResultFields) the 2D result (with a detection whose box is
        all zero, and has_box false, when the answer had no box: consumers read the prompt and mask score the same
        way), whether it is confident (and why not), and the 3D target (has_3d false, detection_3d all zero and its
        reason, or `error_3d`, when there is none or it is not ok); the command and the timings. `targets_3d`: one
        Target3D per target, or None.

The header object is passed through untouched, so output messages carry the source image's stamp and frame_id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lens_model.geometry.target3d import Target3D
from lens_model.inference.targets import CommandResult
from lens_model.overlay import draw_targets_overlay, target_colour

from .conversions import encoding_spec, image_to_array
from .errors import ImageConversionError

if TYPE_CHECKING:  # lens_model.inference.pipeline imports torch; these helpers only read the result's attributes
    from lens_model.inference.pipeline import SegmentationResult

POINTFIELD_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
MARKER_CUBE, MARKER_SPHERE, MARKER_TEXT = 1, 2, 9  # visualization_msgs/Marker.CUBE, SPHERE, TEXT_VIEW_FACING
MARKER_ADD, MARKER_DELETEALL = 0, 3  # visualization_msgs/Marker.ADD, DELETEALL
MARKER_NAMESPACES = ("lens_box", "lens_centroid", "lens_label")
CENTROID_DIAMETER_M = 0.03  # the SPHERE marker's size
LABEL_HEIGHT_M = 0.04  # the TEXT marker's letter height
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
    mask: ImageFields  # mono8, the union of the targets
    detections: DetectionArrayFields
    reasoning: str
    overlay: ImageFields | None = None  # rgb8
    labels: ImageFields | None = None  # mono8 label image: 0 = background, k = target k


@dataclass
class Detection3DFields:
    """One vision_msgs/Detection3D with a single hypothesis (flattened); metres, in the header's frame."""

    header: Any
    class_id: str  # the prompt
    score: float
    position: np.ndarray  # (3,) the hypothesis pose's position: the centroid
    box_center: np.ndarray  # (3,)
    box_size: np.ndarray  # (3,)
    id: str = ""  # the target id


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
class MeasuredTarget:
    """One target's 3D measurement with what its messages name: id k, phrase, score."""

    id: int
    phrase: str
    score: float
    target: Target3D


@dataclass
class TargetFields:
    header: Any  # the source image's stamp, the depth frame_id
    detections: list[Detection3DFields]  # one per target that is ok
    point: np.ndarray | None = None  # (3,) the first target's centroid, None when it is not ok
    cloud: CloudFields | None = None  # when asked for and a target is ok: the points of every ok target


@dataclass
class MarkerFields:
    """One visualization_msgs/Marker (frame_locked false, lifetime 0: shown until replaced or deleted)."""

    header: Any
    ns: str
    id: int
    type: int
    action: int
    position: np.ndarray  # (3,) metres
    scale: np.ndarray  # (3,) metres: box size, sphere diameter, text height in z
    colour: tuple[float, float, float, float]  # r g b a, 0..1
    text: str = ""


@dataclass
class TargetResultFields:
    """The fields of one lens_interfaces/SegmentationTarget."""

    id: int
    prompt: str
    has_box: bool
    detection: DetectionFields
    box_error: str
    score: float
    mask_pixels: int
    reasoning: str
    format_ok: bool
    num_tokens: int
    has_3d: bool
    error_3d: str
    detection_3d: Detection3DFields
    num_points_3d: int
    valid_depth_fraction: float
    confident: bool
    reason: str  # why confident is false; "" otherwise


@dataclass
class SegmentationResultFields:
    """The fields of a lens_interfaces/SegmentationResult (the mask and label images are the topics', built beside
    it): the command, its timings and every target; the single-object fields of the message are the first one's."""

    header: Any
    prompt: str
    timing_names: list[str]
    timing_seconds: list[float]
    targets: list[TargetResultFields]

    @property
    def first(self) -> TargetResultFields:
        return self.targets[0]


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


def labels_fields(labels: np.ndarray, header: Any) -> ImageFields:
    return array_to_fields(np.asarray(labels, np.uint8), "mono8", header)


def as_command(result: CommandResult | SegmentationResult) -> CommandResult:
    """A CommandResult as it is; a single SegmentationResult as a command of one target."""
    return result if isinstance(result, CommandResult) else CommandResult(result.prompt, [result])


def overlay_fields(image_rgb: np.ndarray, result: CommandResult | SegmentationResult, header: Any) -> ImageFields:
    command = as_command(result)
    masks, boxes = [t.mask for t in command.targets], [t.box for t in command.targets]
    picture = draw_targets_overlay(np.asarray(image_rgb), masks, boxes, command.command)
    return array_to_fields(np.asarray(picture, dtype=np.uint8), "rgb8", header)


# -- 2D --
def detection_fields(result: SegmentationResult, header: Any, target_id: int = 1) -> DetectionArrayFields:
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
        id=str(target_id),
    )
    return DetectionArrayFields(header, [detection])


def command_detection_fields(
    result: CommandResult | SegmentationResult, header: Any, unconfident: bool = True
) -> DetectionArrayFields:
    command = as_command(result)
    published = [(k, t) for k, t in zip(command.ids, command.targets) if unconfident or t.confident]
    return DetectionArrayFields(header, [d for k, t in published for d in detection_fields(t, header, k).detections])


def reasoning_text(result: CommandResult) -> str:
    """The generated text: one target's as it is; several as "[k] phrase: text" lines."""
    if len(result.targets) == 1:
        return result.targets[0].text
    return "\n".join(f"[{k}] {t.prompt}: {t.text}" for k, t in zip(result.ids, result.targets))


def result_fields(
    result: CommandResult | SegmentationResult,
    header: Any,
    image_rgb: np.ndarray | None = None,
    unconfident: bool = True,
) -> ResultFields:
    command = as_command(result)
    labels = command.label_image()
    return ResultFields(
        mask=mask_fields(labels > 0, header),
        detections=command_detection_fields(command, header, unconfident),
        reasoning=reasoning_text(command),
        overlay=None if image_rgb is None else overlay_fields(image_rgb, command, header),
        labels=labels_fields(labels, header),
    )


# -- 3D --
def detection_3d_fields(
    target: Target3D, header: Any, prompt: str, score: float, target_id: int = 1
) -> Detection3DFields:
    zero = np.zeros(3)
    return Detection3DFields(
        header=header,
        class_id=str(prompt),
        score=float(score),
        position=target.centroid if target.ok else zero,
        box_center=target.box_center if target.ok else zero,
        box_size=target.box_size if target.ok else zero,
        id=str(target_id),
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


def targets_fields(measured: list[MeasuredTarget], header: Any, colours_rgb: np.ndarray | None = None) -> TargetFields:
    ok = [m for m in measured if m.target.ok]
    out = TargetFields(header, [detection_3d_fields(m.target, header, m.phrase, m.score, m.id) for m in ok])
    if measured and measured[0].target.ok:
        out.point = measured[0].target.centroid
    if colours_rgb is not None and ok:
        rows, cols = np.concatenate([m.target.pixels for m in ok]).T
        out.cloud = cloud_fields(np.concatenate([m.target.points for m in ok]), header, colours_rgb[rows, cols])
    return out


def target_fields(
    target: Target3D, header: Any, prompt: str, score: float, colours_rgb: np.ndarray | None = None
) -> TargetFields:
    return targets_fields([MeasuredTarget(1, prompt, score, target)], header, colours_rgb)


def marker_fields(measured: list[MeasuredTarget], header: Any, delete_all: bool = False) -> list[MarkerFields]:
    """RViz markers of the targets that are ok (module docstring); the text sits above the box (-y: up in an
    optical frame)."""
    zero = np.zeros(3)
    markers = [MarkerFields(header, "", 0, MARKER_CUBE, MARKER_DELETEALL, zero, zero, (0.0, 0.0, 0.0, 0.0))]
    markers = markers if delete_all else []
    for m in measured:
        t = m.target
        if not t.ok:
            continue
        r, g, b = (c / 255.0 for c in target_colour(m.id))
        box_ns, centroid_ns, label_ns = MARKER_NAMESPACES
        above = t.box_center - np.array([0.0, t.box_size[1] / 2 + LABEL_HEIGHT_M, 0.0])
        markers += [
            MarkerFields(header, box_ns, m.id, MARKER_CUBE, MARKER_ADD, t.box_center, t.box_size, (r, g, b, 0.35)),
            MarkerFields(
                header,
                centroid_ns,
                m.id,
                MARKER_SPHERE,
                MARKER_ADD,
                t.centroid,
                np.full(3, CENTROID_DIAMETER_M),
                (r, g, b, 1.0),
            ),
            MarkerFields(
                header,
                label_ns,
                m.id,
                MARKER_TEXT,
                MARKER_ADD,
                above,
                np.array([0.0, 0.0, LABEL_HEIGHT_M]),
                (r, g, b, 1.0),
                f"{m.id}: {m.phrase} {m.score:.2f}",
            ),
        ]
    return markers


# -- lens_interfaces/SegmentationResult --
def target_result_fields(
    result: SegmentationResult,
    target_id: int,
    header: Any,
    target: Target3D | None = None,
    error_3d: str = "",
    header_3d: Any = None,
    mask_pixels: int | None = None,
) -> TargetResultFields:
    """One target's fields; `header_3d`: the header of the 3D detection (the depth frame), by default `header`."""
    detections = detection_fields(result, header, target_id).detections
    if detections:
        detection = detections[0]
    else:  # keep the hypothesis (prompt, mask score) so that consumers can read them the same way
        detection = DetectionFields(header, result.prompt, float(result.score), 0.0, 0.0, 0.0, 0.0, id=str(target_id))
    measured = target if target is not None else Target3D(False, error_3d)
    header_3d = header if header_3d is None else header_3d
    return TargetResultFields(
        id=int(target_id),
        prompt=str(result.prompt),
        has_box=result.box is not None,
        detection=detection,
        box_error=str(result.box_error or ""),
        score=float(result.score),
        mask_pixels=int(result.mask.sum() if mask_pixels is None else mask_pixels),
        reasoning=str(result.text),
        format_ok=bool(result.format_ok),
        num_tokens=int(result.num_tokens),
        has_3d=bool(measured.ok),
        error_3d=str((measured.reason or error_3d) if not measured.ok else ""),
        detection_3d=detection_3d_fields(measured, header_3d, result.prompt, float(result.score), target_id),
        num_points_3d=int(measured.num_points),
        valid_depth_fraction=float(measured.valid_fraction),
        confident=bool(result.confident),
        reason=str(result.reason or ""),
    )


def segmentation_result_fields(
    result: CommandResult | SegmentationResult,
    header: Any,
    targets_3d: list[Target3D] | None = None,
    error_3d: str = "",
    header_3d: Any = None,
) -> SegmentationResultFields:
    """`targets_3d`: one Target3D per target (None: 3D off, `error_3d` says why when it is not empty)."""
    command = as_command(result)
    if targets_3d is not None and len(targets_3d) != len(command.targets):
        raise ValueError(f"{len(targets_3d)} 3D targets for {len(command.targets)} targets")
    first = command.targets[0]
    names = list(first.timings)
    return SegmentationResultFields(
        header=header,
        prompt=str(command.command),
        timing_names=names,
        timing_seconds=[float(first.timings[n]) for n in names],
        targets=[
            target_result_fields(t, k, header, None if targets_3d is None else targets_3d[k - 1], error_3d, header_3d)
            for k, t in zip(command.ids, command.targets)
        ],
    )
