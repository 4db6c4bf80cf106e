"""The 3D target of a segmented object: mask + registered depth + pinhole camera -> points, centroid, box.

numpy and OpenCV only (no torch, no ROS), so the node, `lens bag` and `lens segment --depth` share it.

Camera (the camera's optical frame: x right, y down, z forward, metres)
    PinholeCamera(width, height, k (3, 3), d (n,), distortion_model, rectified=False)
        from_camera_info(msg)          sensor_msgs/CameraInfo fields: width, height, k, d, distortion_model, p
        from_calibration_yaml(path)    the YAML `camera_calibration` writes (image_width, image_height,
                                       camera_matrix, distortion_model, distortion_coefficients, projection_matrix)
        rectified=True: the images are already rectified, so the intrinsics are P's left 3x3 and D is ignored
        (ROS's image_rect convention); otherwise K, and D through cv2.undistortPoints when D is non-zero.
        Distortion models: plumb_bob (k1 k2 t1 t2 k3), rational_polynomial (k1 k2 t1 t2 k3 k4 k5 k6), none.
        rays() -> (H, W, 2) float32 normalised image coordinates (x/z, y/z) of every pixel, computed once.
        check(height, width)           refuses zero intrinsics or a size other than the image's

Depth
    depth_to_metres(depth, scale=0.001) -> (H, W) float32, NaN = invalid
        uint16 (16UC1, in units of `scale` metres: millimetres by default) or float32 (32FC1, metres);
        0, negative and non-finite values are invalid.

Target
    estimate_target(mask (H, W) bool, depth_m (H, W) float32, camera, options=TargetOptions()) -> Target3D
        1. erode the mask by `erosion_px` (flying pixels at depth edges mix object and background); a mask too
           thin to survive erosion is used as it is
        2. keep pixels with valid depth; median depth; reject depths farther than `mad_k` robust standard
           deviations (1.4826 MAD, at least `min_sigma_m`) from the median
        3. back-project the rest through the camera: points (N, 3) = (x/z, y/z, 1) * z
        4. centroid = mean of the points (the visible surface's centre); axis-aligned box from the
           `trim_percent` and 100 - `trim_percent` percentiles per axis
        Median, MAD and percentiles use at most 20 000 evenly spread values (bounded time on large masks).
        `ok` is False with a `reason` when fewer than `min_points` points remain.
    Target3D.to_json_dict() -> the numbers as plain lists (what `lens segment --depth` prints)
    DepthInput.from_files(depth_path, camera_yaml, image_hw, scale=0.001).target(mask) -> Target3D
        `lens segment --depth D.png --camera-info camera.yaml`: loads and checks both before the model loads

Shapes and units are checked: a depth image of another size than the mask or camera raises DepthError.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DepthError

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "none")
DEPTH_DTYPES = {np.dtype(np.uint16): "16UC1 (uint16, millimetres by default)", np.dtype(np.float32): "32FC1 (metres)"}


@dataclass(frozen=True, eq=False)
class PinholeCamera:
    width: int
    height: int
    k: np.ndarray  # (3, 3) intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] of the images the rays are for
    d: np.ndarray = field(default_factory=lambda: np.zeros(0))  # distortion coefficients (OpenCV order)
    distortion_model: str = "none"
    rectified: bool = False  # the images are rectified: D does not apply

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", np.asarray(self.k, np.float64).reshape(3, 3))
        object.__setattr__(self, "d", np.asarray(self.d, np.float64).reshape(-1))
        model = self.distortion_model or "none"
        if model not in DISTORTION_MODELS:
            if np.any(self.d):
                raise DepthError(
                    f"distortion model {model!r} is not supported (supported: "
                    f"{', '.join(DISTORTION_MODELS)}); rectify the images or use a pinhole calibration"
                )
            model = "none"  # e.g. "" with all-zero D: no distortion whatever the name
        object.__setattr__(self, "distortion_model", model)

    # -- construction --
    @classmethod
    def from_matrices(
        cls, width: int, height: int, k, d=(), distortion_model: str = "plumb_bob", p=None, rectified: bool = False
    ) -> PinholeCamera:
        """K, D and P as ROS gives them (9, n and 12 numbers); rectified images use P[:, :3] (or K when P is zero)."""
        k = np.asarray(k, np.float64).reshape(-1)
        if k.size != 9:
            raise DepthError(f"camera matrix K needs 9 numbers, got {k.size}")
        if rectified:
            if p is not None and np.asarray(p, np.float64).size == 12 and np.any(p):
                k = np.asarray(p, np.float64).reshape(3, 4)[:, :3]
            return cls(int(width), int(height), k, np.zeros(0), "none", rectified=True)
        return cls(int(width), int(height), k, np.asarray(d, np.float64), distortion_model or "none")

    @classmethod
    def from_camera_info(cls, msg: Any, rectified: bool = False) -> PinholeCamera:
        """sensor_msgs/CameraInfo (ROS 2 field names k, d, p; ROS 1's K, D, P also accepted)."""
        get = lambda name: list(getattr(msg, name) if hasattr(msg, name) else getattr(msg, name.upper()))  # noqa: E731
        return cls.from_matrices(
            int(msg.width), int(msg.height), get("k"), get("d"), str(msg.distortion_model), get("p"), rectified
        )

    @classmethod
    def from_calibration_yaml(cls, path: str | os.PathLike, rectified: bool = False) -> PinholeCamera:
        """The camera_calibration / camera_info_manager YAML (image_width, camera_matrix: {rows, cols, data}, ...)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise DepthError(f"cannot read camera calibration {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise DepthError(f"camera calibration {path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise DepthError(f"camera calibration {path} must be a mapping (image_width, camera_matrix, ...)")

        def matrix(name: str, size: int | None, required: bool = True):
            entry = data.get(name)
            if entry is None and not required:
                return None
            values = entry.get("data") if isinstance(entry, dict) else None
            if values is None:
                raise DepthError(f"camera calibration {path}: {name} needs a `data` list (camera_calibration format)")
            values = np.asarray(values, np.float64).reshape(-1)
            if size is not None and values.size != size:
                raise DepthError(f"camera calibration {path}: {name} has {values.size} numbers, expected {size}")
            return values

        missing = [name for name in ("image_width", "image_height", "camera_matrix") if name not in data]
        if missing:
            raise DepthError(f"camera calibration {path} lacks {', '.join(missing)}")
        return cls.from_matrices(
            data["image_width"],
            data["image_height"],
            matrix("camera_matrix", 9),
            matrix("distortion_coefficients", None, required=False) if data.get("distortion_coefficients") else (),
            str(data.get("distortion_model") or "none"),
            matrix("projection_matrix", 12, required=False),
            rectified,
        )

    # -- use --
    @property
    def undistorts(self) -> bool:
        """Pixels go through cv2.undistortPoints (not rectified and a non-zero D)."""
        return not self.rectified and self.distortion_model != "none" and bool(np.any(self.d))

    def check(self, height: int, width: int, what: str = "depth image") -> None:
        fx, fy = self.k[0, 0], self.k[1, 1]
        if not np.all(np.isfinite(self.k)) or fx <= 0 or fy <= 0:
            raise DepthError(
                f"camera_info is unusable: K has fx={fx:g}, fy={fy:g} (an uncalibrated camera sends "
                "K all zero); calibrate the camera or publish its intrinsics"
            )
        if (self.width, self.height) != (int(width), int(height)):
            raise DepthError(
                f"camera_info is for {self.width}x{self.height} images but the {what} is "
                f"{int(width)}x{int(height)}; use the camera_info of the registered (aligned) depth "
                "stream"
            )

    @functools.cached_property
    def _rays(self) -> np.ndarray:
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)  # (H, W) each
        if self.undistorts:
            points = np.stack([u.ravel(), v.ravel()], axis=-1).reshape(-1, 1, 2)
            normalised = cv2.undistortPoints(points, self.k, self.d).reshape(self.height, self.width, 2)
        else:
            normalised = np.stack([(u - self.k[0, 2]) / self.k[0, 0], (v - self.k[1, 2]) / self.k[1, 1]], axis=-1)
        return normalised.astype(np.float32)

    @functools.cached_property
    def _ray_planes(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(self._rays[..., 0]), np.ascontiguousarray(self._rays[..., 1])  # (H, W) each

    def rays(self) -> np.ndarray:
        """(H, W, 2) float32: x/z and y/z in the optical frame for every pixel (computed once per camera)."""
        self.check(self.height, self.width, "camera")
        return self._rays

    def window_rays(self, window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """x/z and y/z of the pixels of an image window (row slice, column slice): (h, w) float32 views each."""
        self.check(self.height, self.width, "camera")
        return self._ray_planes[0][window], self._ray_planes[1][window]

    def backproject(self, rows: np.ndarray, cols: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Pixels (rows, cols) with depths z (metres) -> (N, 3) float32 points in the optical frame."""
        self.check(self.height, self.width, "camera")
        ray_x, ray_y = self._ray_planes
        z = np.asarray(z, np.float32)
        return np.stack([ray_x[rows, cols] * z, ray_y[rows, cols] * z, z], axis=1)


def depth_to_metres(depth: np.ndarray, scale: float = 0.001) -> np.ndarray:
    """(H, W) uint16 in `scale` metres or float32 metres -> (H, W) float32 metres, NaN where invalid."""
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise DepthError(f"depth image must be (H, W), got shape {depth.shape}")
    if depth.dtype not in DEPTH_DTYPES:
        raise DepthError(f"depth image has dtype {depth.dtype}; supported: {', '.join(DEPTH_DTYPES.values())}")
    if not scale > 0:
        raise DepthError(f"depth scale must be > 0 metres per unit, got {scale}")
    metres = depth.astype(np.float32)
    if depth.dtype == np.uint16:
        metres *= np.float32(scale)
    metres[~(metres > 0)] = np.nan  # 0 (no return), negatives and NaN alike; +inf stays and is dropped below
    metres[np.isinf(metres)] = np.nan
    return metres


def load_depth(path: str | os.PathLike, scale: float = 0.001) -> np.ndarray:
    """A depth file -> (H, W) float32 metres: 16-bit PNG (units of `scale`, millimetres by default), 32-bit float
    TIFF (metres) or .npy (uint16 or float32)."""
    path = Path(path)
    if not path.is_file():
        raise DepthError(f"depth image not found: {path}")
    if path.suffix.lower() == ".npy":
        expected = "expected a .npy of uint16 (units of the depth scale) or float32 metres"
        with path.open("rb") as stream:
            if stream.read(6) != b"\x93NUMPY":
                raise DepthError(f"{path} is not a .npy file (no NumPy header); {expected}")
        try:
            depth = np.load(path, allow_pickle=False)  # an object array would unpickle (run) code from the file
        except ValueError as exc:
            what = "an object array (pickled Python objects)" if "allow_pickle" in str(exc) else f"unreadable ({exc})"
            raise DepthError(f"{path} is {what}; {expected}") from None
        except (OSError, EOFError) as exc:
            raise DepthError(f"cannot read depth image {path}: {exc}") from None
    else:
        depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if depth is None:
            raise DepthError(f"cannot read depth image {path} (expected a 16-bit PNG, a float32 TIFF or .npy)")
    try:
        return depth_to_metres(depth, scale)
    except DepthError as exc:
        raise DepthError(f"{path}: {exc}") from None


@dataclass(frozen=True, eq=False)
class DepthInput:
    """A registered depth image and its camera, checked against the colour image (`lens segment --depth`)."""

    depth_m: np.ndarray  # (H, W) float32 metres, NaN = invalid
    camera: PinholeCamera

    @classmethod
    def from_files(
        cls, depth_path, camera_yaml, image_hw: tuple[int, int], scale: float = 0.001, rectified: bool = False
    ) -> DepthInput:
        if not depth_path or not camera_yaml:
            raise DepthError(
                "--depth and --camera-info go together: the depth image registered to --image and the "
                "camera_calibration YAML of that camera"
            )
        depth = load_depth(depth_path, scale)
        camera = PinholeCamera.from_calibration_yaml(camera_yaml, rectified)
        camera.check(*depth.shape)
        if depth.shape != tuple(image_hw):
            raise DepthError(
                f"depth image {depth_path} is {_size(depth)} but the image is "
                f"{image_hw[1]}x{image_hw[0]}; "
                "the depth must be registered (aligned) to the colour image"
            )
        return cls(depth, camera)

    def target(self, mask: np.ndarray, options: TargetOptions | None = None) -> Target3D:
        return estimate_target(mask, self.depth_m, self.camera, options or TargetOptions())


@dataclass(frozen=True)
class TargetOptions:
    erosion_px: int = 2  # mask pixels removed at the edge before measuring (flying pixels)
    mad_k: float = 3.0  # depth inliers: |z - median| <= mad_k * max(1.4826 MAD, min_sigma_m)
    min_sigma_m: float = 0.005  # lower bound of the robust sigma (a flat surface has MAD ~ 0)
    trim_percent: float = 2.0  # box from the trim_percent .. 100 - trim_percent percentiles per axis
    min_points: int = 20  # fewer inliers: ok=False

    def __post_init__(self) -> None:
        if self.erosion_px < 0 or self.min_points < 1 or not 0 <= self.trim_percent < 50 or self.mad_k <= 0:
            raise DepthError(f"invalid target options {self}")


@dataclass
class Target3D:
    ok: bool
    reason: str = ""  # why ok is False
    centroid: np.ndarray | None = None  # (3,) metres, optical frame
    box_center: np.ndarray | None = None  # (3,)
    box_size: np.ndarray | None = None  # (3,)
    median_depth: float = float("nan")
    num_points: int = 0  # inliers behind centroid and box
    valid_fraction: float = 0.0  # measured mask pixels with a valid depth
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32), repr=False)  # (N, 3) float32
    # The pixels of `points` as a mask over the window of the image that starts at `pixel_origin` (row, col)
    pixel_mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)  # (h, w) bool
    pixel_origin: tuple[int, int] = (0, 0)

    @property
    def pixels(self) -> np.ndarray:
        """(N, 2) image row, col of each point, in the order of `points` (computed on demand: the cloud's colours)."""
        rows, cols = np.nonzero(self.pixel_mask)
        return np.stack([rows + self.pixel_origin[0], cols + self.pixel_origin[1]], axis=1)

    def to_json_dict(self) -> dict[str, Any]:
        as_list = lambda a: None if a is None else [round(float(v), 5) for v in a]  # noqa: E731
        return {
            "ok": self.ok,
            "reason": self.reason,
            "point": as_list(self.centroid),
            "box_center": as_list(self.box_center),
            "box_size": as_list(self.box_size),
            "median_depth": None if not np.isfinite(self.median_depth) else round(float(self.median_depth), 5),
            "num_points": int(self.num_points),
            "valid_fraction": round(float(self.valid_fraction), 4),
        }


def _eroded(mask: np.ndarray, erosion_px: int) -> np.ndarray:
    if erosion_px == 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erosion_px + 1, 2 * erosion_px + 1))
    return cv2.erode(mask.view(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def estimate_target(
    mask: np.ndarray, depth_m: np.ndarray, camera: PinholeCamera, options: TargetOptions = TargetOptions()
) -> Target3D:
    """The object's 3D points, centroid and box (module docstring); never raises for an empty or depthless mask."""
    mask = np.asarray(mask)
    depth_m = np.asarray(depth_m)
    if mask.ndim != 2 or depth_m.shape != mask.shape:
        raise DepthError(
            f"depth image is {_size(depth_m)} but the mask (colour image) is {_size(mask)}; the depth "
            "must be registered (aligned) to the colour image"
        )
    if depth_m.dtype != np.float32:
        raise DepthError(f"depth must be float32 metres (depth_to_metres), got {depth_m.dtype}")
    camera.check(*mask.shape)
    mask = np.ascontiguousarray(mask.astype(bool, copy=False))
    if not mask.any():
        return Target3D(False, "the mask is empty: nothing to measure")
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))  # work on the mask's box (one pixel wider) only
    top, left = max(y - 1, 0), max(x - 1, 0)
    window = np.s_[top : y + h + 1, left : x + w + 1]
    crop, depth_crop = np.ascontiguousarray(mask[window]), depth_m[window]
    measured = _eroded(crop, options.erosion_px)
    has_depth = np.isfinite(depth_crop) & (depth_crop > 0)
    valid = measured & has_depth
    if np.count_nonzero(valid) < options.min_points:  # too thin for the erosion: measure the whole mask
        measured = crop
        valid = crop & has_depth
    z = depth_crop[valid]  # (N,) in row-major order of the window
    valid_fraction = z.size / max(int(np.count_nonzero(measured)), 1)
    if z.size == 0:
        return Target3D(False, "no valid depth inside the mask (all 0 or NaN)", valid_fraction=0.0)
    median = float(np.median(_spread(z)))
    deviation = np.abs(z - median)
    sigma = max(1.4826 * float(np.median(_spread(deviation))), options.min_sigma_m)
    inlier = deviation <= options.mad_k * sigma
    z = z[inlier]
    if z.size < options.min_points:
        return Target3D(
            False,
            f"only {z.size} valid depth points inside the mask (at least {options.min_points} needed)",
            median_depth=median,
            num_points=int(z.size),
            valid_fraction=valid_fraction,
        )
    valid[valid] = inlier  # the window's pixels behind `z`, same order
    ray_x, ray_y = camera.window_rays(window)  # (h, w) views
    # Back-projection per coordinate on contiguous arrays, then one interleave into (N, 3): at 720p this is
    # about twice as fast as gathering pixel indices and writing strided columns.
    x, y = ray_x[valid], ray_y[valid]
    np.multiply(x, z, out=x)
    np.multiply(y, z, out=y)
    centroid = np.array([np.sum(c, dtype=np.float64) for c in (x, y, z)]) / z.size
    points = np.stack([x, y, z], axis=1)  # (N, 3) float32
    sample = _spread(points)
    low, high = np.percentile(sample, [options.trim_percent, 100.0 - options.trim_percent], axis=0)  # (3,) each
    return Target3D(
        True,
        "",
        centroid=centroid,
        box_center=(low + high) / 2,
        box_size=high - low,
        median_depth=median,
        num_points=int(z.size),
        valid_fraction=valid_fraction,
        points=points,
        pixel_mask=valid,
        pixel_origin=(top, left),
    )


STATISTICS_SAMPLE = 20_000  # median, MAD and percentiles from at most this many evenly spread values


def _spread(values: np.ndarray) -> np.ndarray:
    """At most STATISTICS_SAMPLE values evenly spread over `values` (all of them when fewer): robust statistics of
    a large mask cost a bounded time and differ from the full set's by far less than the sensor noise."""
    step = max(1, -(-len(values) // STATISTICS_SAMPLE))
    return values[::step]


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}" if array.ndim >= 2 else f"shape {array.shape}"


__all__ = [
    "DISTORTION_MODELS",
    "DepthInput",
    "PinholeCamera",
    "TargetOptions",
    "Target3D",
    "depth_to_metres",
    "load_depth",
    "estimate_target",
]
