"""Depth for the 3D target (plain Python, no rclpy): depth messages, their pairing with colour frames by stamp, and
the measurement (lens_model.geometry.target3d) for one segmented frame.

    depth_message_to_metres(msg, scale=0.001) -> (H, W) float32 metres, NaN = invalid
        sensor_msgs/Image 16UC1 or mono16 (units of `scale` metres) or 32FC1 (metres); other encodings raise
        DepthError naming the encoding.
    camera_from_info(msg, rectified=False) -> lens_model.geometry.target3d.PinholeCamera   (sensor_msgs/CameraInfo)

    DepthBuffer(slop_s=0.05, history=30)   thread-safe; the node's depth and camera_info callbacks fill it
        put_depth(msg, stamp)              keep a depth image (stamp: float seconds of its header)
        put_camera_info(msg)               keep the newest camera_info
        select(image_stamp, final=False) -> DepthMatch
            the retained depth image whose stamp is nearest to the colour image's:
            "ok"       within slop_s, and no nearer one can still come (one stamped at or after the image has
                       arrived, or `final`), and a camera_info has arrived
            "wait"     no depth (or camera_info) yet that settles it, and not `final`
            "refused"  the reason: no depth image yet, the nearest is X s away (depth_slop_s), no camera_info
        wait_for_match(image_stamp, timeout) -> DepthMatch   select(), blocking while it answers "wait" for at
                                           most `timeout` real seconds, then select(final=True)

    CameraCache().get(camera_info, rectified) -> PinholeCamera
        the same camera object while the calibration is unchanged, so its undistortion table is built once
    measure(mask, match, scale=0.001, rectified=False, options=TargetOptions(), cameras=None) -> Target3D
        the depth of `match` in metres, its camera, and lens_model.geometry.target3d.estimate_target; a camera_info with
        K all zero or of another size, a depth image of another size than the mask, an unsupported encoding raise
        DepthError (the node logs it and reports it in the result; nothing else is affected).

Stamps are the messages' header stamps (lens_ros.conversions.stamp_to_seconds); the colour and depth images of an
RGB-D camera carry the same or nearly the same stamp.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from lens_model.errors import DepthError
from lens_model.geometry.target3d import PinholeCamera, Target3D, TargetOptions, depth_to_metres, estimate_target

from .conversions import EncodingSpec, image_to_array
from .errors import ImageConversionError

DEPTH_ENCODINGS: dict[str, EncodingSpec] = {
    "16UC1": EncodingSpec(np.uint16, 1),
    "mono16": EncodingSpec(np.uint16, 1),
    "32FC1": EncodingSpec(np.float32, 1),
}


def depth_message_to_metres(msg: Any, scale: float = 0.001) -> np.ndarray:
    """sensor_msgs/Image (16UC1, mono16, 32FC1) -> (H, W) float32 metres, NaN where there is no depth."""
    try:
        values = image_to_array(msg, DEPTH_ENCODINGS, "depth")
    except ImageConversionError as exc:
        raise DepthError(str(exc)) from None
    return depth_to_metres(values, scale)


def camera_from_info(msg: Any, rectified: bool = False) -> PinholeCamera:
    try:
        return PinholeCamera.from_camera_info(msg, rectified)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DepthError(f"camera_info is malformed: {exc}") from None


class CameraCache:
    """camera_info -> PinholeCamera, reusing the last camera while the calibration fields are unchanged (a driver
    publishes the same camera_info with every frame; the camera's undistortion table costs tens of ms)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._camera: PinholeCamera | None = None
        self._lock = threading.Lock()

    def get(self, msg: Any, rectified: bool = False) -> PinholeCamera:
        try:
            key = (
                int(msg.width),
                int(msg.height),
                str(msg.distortion_model),
                tuple(np.asarray(msg.k, float)),
                tuple(np.asarray(msg.d, float)),
                tuple(np.asarray(msg.p, float)),
                bool(rectified),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise DepthError(f"camera_info is malformed: {exc}") from None
        with self._lock:
            if key != self._key:
                self._camera, self._key = camera_from_info(msg, rectified), key
            return self._camera


@dataclass(frozen=True)
class DepthMatch:
    status: str  # "ok", "wait" or "refused"
    depth: Any = None  # the depth message (status ok)
    camera_info: Any = None  # the camera_info message (status ok)
    offset_s: float = 0.0  # depth stamp - image stamp
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class DepthBuffer:
    """The newest depth images and camera_info, and the rule that pairs a colour frame with one (module docstring)."""

    def __init__(self, slop_s: float = 0.05, history: int = 30) -> None:
        if slop_s < 0:
            raise ValueError(f"slop_s must be >= 0, got {slop_s}")
        self.slop_s = float(slop_s)
        self._depth: deque[tuple[float, Any]] = deque(maxlen=int(history))
        self._camera_info: Any = None
        self._cond = threading.Condition()

    def put_depth(self, msg: Any, stamp: float) -> None:
        with self._cond:
            self._depth.append((float(stamp), msg))
            self._cond.notify_all()

    def put_camera_info(self, msg: Any) -> None:
        with self._cond:
            self._camera_info = msg
            self._cond.notify_all()

    def select(self, image_stamp: float, final: bool = False) -> DepthMatch:
        with self._cond:
            return self._select(float(image_stamp), final)

    def _select(self, image_stamp: float, final: bool) -> DepthMatch:
        if not self._depth:
            return DepthMatch("wait" if not final else "refused", reason="no depth image has been received")
        stamp, msg = min(self._depth, key=lambda item: abs(item[0] - image_stamp))
        offset = stamp - image_stamp
        settled = final or any(s >= image_stamp for s, _ in self._depth)
        if abs(offset) > self.slop_s + 1e-9:
            if not settled:
                return DepthMatch("wait", reason="waiting for the depth image of this frame")
            return DepthMatch(
                "refused",
                offset_s=offset,
                reason=(
                    f"no depth image within depth_slop_s={self.slop_s:g} s of the colour image (nearest: "
                    f"{offset:+.3f} s); are the depth and colour streams synchronised?"
                ),
            )
        if not settled:
            return DepthMatch("wait", reason="waiting for a depth image at or after this frame")
        if self._camera_info is None:
            return DepthMatch("wait" if not final else "refused", reason="no camera_info has been received")
        return DepthMatch("ok", msg, self._camera_info, offset)

    def wait_for_match(self, image_stamp: float, timeout: float) -> DepthMatch:
        deadline = time.monotonic() + max(float(timeout), 0.0)
        with self._cond:
            while True:
                match = self._select(float(image_stamp), final=False)
                left = deadline - time.monotonic()
                if match.status != "wait" or left <= 0:
                    return self._select(float(image_stamp), final=True) if match.status == "wait" else match
                self._cond.wait(left)


def measure(
    mask: np.ndarray,
    match: DepthMatch,
    scale: float = 0.001,
    rectified: bool = False,
    options: TargetOptions | None = None,
    cameras: CameraCache | None = None,
) -> Target3D:
    """The 3D target of `mask` (the colour image's size) from a DepthMatch with status ok."""
    depth = depth_message_to_metres(match.depth, scale)
    camera = (cameras or CameraCache()).get(match.camera_info, rectified)
    camera.check(*depth.shape)
    return estimate_target(mask, depth, camera, options or TargetOptions())


__all__ = [
    "DEPTH_ENCODINGS",
    "CameraCache",
    "DepthBuffer",
    "DepthMatch",
    "camera_from_info",
    "depth_message_to_metres",
    "measure",
]
