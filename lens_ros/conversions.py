"""Input messages -> numpy, without rclpy or cv_bridge: sensor_msgs/Image and CompressedImage, PointCloud2, stamps.
(The way out, result -> message fields -> messages, is lens_ros.fields and lens_ros.messages.)

Messages are duck-typed: anything with the message's attributes works, so the same code serves rclpy messages
(`data` is an `array.array('B')` or `bytes`) and rosbags' message dataclasses (`data` is a numpy uint8 array).

Images
    image_to_array(msg) -> np.ndarray
        sensor_msgs/Image -> (H, W) for mono8/8UC1/mono16/16UC1, (H, W, 3) for rgb8/bgr8, (H, W, 4) for
        rgba8/bgra8; uint8, or native-endian uint16 for the 16-bit encodings. Channel order is the encoding's
        (a bgr8 image comes back as BGR). Row padding (`step` > width × bytes per pixel) is removed and
        `is_bigendian` honoured. Always a fresh, writable, C-contiguous array (never a view of the message).
    compressed_to_rgb(msg) -> np.ndarray
        sensor_msgs/CompressedImage (JPEG or PNG, as compressed_image_transport writes them; other formats
        Pillow decodes also work) -> (H, W, 3) uint8 RGB. `format` is informational: the bytes say what they are.
        image_transport's `compressedDepth` format is refused (it prefixes the PNG with a depth header).
    to_rgb(array, encoding, scale16="high_byte") -> np.ndarray
        an array from image_to_array -> (H, W, 3) uint8 RGB for the pipeline: bgr/bgra reordered, alpha dropped,
        mono replicated into three channels. 16-bit (mono16/16UC1) is scaled to 8 bits by `scale16`:
          "high_byte" (default, as lens_model.image_io does for 16-bit files): value >> 8, i.e. 0..65535 -> 0..255;
          "minmax": per frame, min..max of the frame -> 0..255 (rounded; a constant frame gives 0), useful for
                    depth images in millimetres, whose high byte is nearly black.
    image_message_to_rgb(msg, scale16="high_byte") -> np.ndarray
        either message type -> (H, W, 3) uint8 RGB (a message with `format` and no `encoding` is a CompressedImage).

Point clouds
    cloud_to_arrays(msg) -> (points (N, 3) float32, colours (N, 3) uint8)

Stamps
    stamp_to_ns(header_or_time) -> int;  stamp_to_seconds(header_or_time) -> float

Every problem with a message raises `lens_ros.errors.ImageConversionError` with a one-line reason.
"""

from __future__ import annotations

import array
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from lens_model.errors import ImageError
from lens_model.image_io import gray_to_rgb, load_image, uint16_high_byte

from .errors import ImageConversionError


@dataclass(frozen=True)
class EncodingSpec:
    dtype: type  # numpy element type
    channels: int

    @property
    def bytes_per_pixel(self) -> int:
        return np.dtype(self.dtype).itemsize * self.channels


ENCODINGS: dict[str, EncodingSpec] = {
    "rgb8": EncodingSpec(np.uint8, 3),
    "bgr8": EncodingSpec(np.uint8, 3),
    "rgba8": EncodingSpec(np.uint8, 4),
    "bgra8": EncodingSpec(np.uint8, 4),
    "mono8": EncodingSpec(np.uint8, 1),
    "8UC1": EncodingSpec(np.uint8, 1),
    "mono16": EncodingSpec(np.uint16, 1),
    "16UC1": EncodingSpec(np.uint16, 1),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(ENCODINGS)
SCALE16_MODES = ("high_byte", "minmax")

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"


def encoding_spec(
    encoding: str, encodings: Mapping[str, EncodingSpec] = ENCODINGS, what: str = "image"
) -> EncodingSpec:
    spec = encodings.get(encoding)
    if spec is None:
        raise ImageConversionError(f"unsupported {what} encoding {encoding!r}; supported: {', '.join(encodings)}")
    return spec


def _byte_buffer(data: Any, what: str) -> np.ndarray:
    """The message's uint8[] field as a 1-D uint8 array (a view where possible)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageConversionError(f"{what} data has dtype {data.dtype}; expected uint8 bytes")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    try:
        return np.asarray(list(data), dtype=np.uint8)
    except (TypeError, ValueError, OverflowError):
        raise ImageConversionError(f"{what} data is a {type(data).__name__}, not a sequence of bytes") from None


def image_to_array(msg: Any, encodings: Mapping[str, EncodingSpec] = ENCODINGS, what: str = "image") -> np.ndarray:
    """sensor_msgs/Image -> numpy array in the encoding's channel order (see the module docstring); `encodings`
    are the ones accepted (lens_ros.depth passes the depth encodings)."""
    encoding = str(msg.encoding)
    spec = encoding_spec(encoding, encodings, what)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image is empty ({width}x{height} pixels, encoding {encoding})")
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width × bytes per pixel = {width} × {spec.bytes_per_pixel} = {row_bytes} "
            f"({encoding}); the message is inconsistent"
        )
    buffer = _byte_buffer(msg.data, "image")
    expected = step * height
    if buffer.size < expected:
        raise ImageConversionError(
            f"image data is truncated: {buffer.size} bytes, expected step × height = {step} × {height} = {expected}"
        )
    if buffer.size > expected:
        raise ImageConversionError(
            f"image data has {buffer.size} bytes, more than step × height = {step} × {height} = {expected}; "
            "the message is inconsistent"
        )
    rows = buffer.reshape(height, step)[:, :row_bytes].copy()  # drops the padding; never aliases the message
    dtype = np.dtype(spec.dtype)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    values = rows.view(dtype).reshape((height, width) if spec.channels == 1 else (height, width, spec.channels))
    if values.dtype.itemsize > 1:
        values = values.astype(values.dtype.newbyteorder("="))  # native byte order
    return values


def _scale16(values: np.ndarray, scale16: str) -> np.ndarray:
    if scale16 == "high_byte":
        return uint16_high_byte(values)
    if scale16 == "minmax":
        low, high = int(values.min()), int(values.max())
        if high == low:
            return np.zeros(values.shape, np.uint8)
        return np.rint((values.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.uint8)
    raise ValueError(f"scale16 must be one of {', '.join(SCALE16_MODES)}, got {scale16!r}")


def to_rgb(array_: np.ndarray, encoding: str, scale16: str = "high_byte") -> np.ndarray:
    """An array from image_to_array (or of that layout) -> (H, W, 3) uint8 RGB for LensPipeline."""
    spec = encoding_spec(encoding)
    values = np.asarray(array_)
    if values.dtype != np.dtype(spec.dtype):
        raise ImageConversionError(f"{encoding} array must have dtype {np.dtype(spec.dtype)}, got {values.dtype}")
    if spec.channels == 1:
        if values.ndim == 3 and values.shape[2] == 1:
            values = values[..., 0]
        if values.ndim != 2:
            raise ImageConversionError(f"{encoding} array must be (H, W), got shape {values.shape}")
        grey = _scale16(values, scale16) if spec.dtype == np.uint16 else values
        return gray_to_rgb(grey)
    if values.ndim != 3 or values.shape[2] != spec.channels:
        raise ImageConversionError(f"{encoding} array must be (H, W, {spec.channels}), got shape {values.shape}")
    if encoding.startswith("bgr"):
        values = values[..., 2::-1]
    return np.ascontiguousarray(values[..., :3])


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage -> (H, W, 3) uint8 RGB (see the module docstring)."""
    fmt = str(getattr(msg, "format", "") or "")
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(
            f"compressed image format {fmt!r} (image_transport compressedDepth) is not supported; "
            "subscribe to the raw depth image (sensor_msgs/Image 16UC1) instead"
        )
    data = _byte_buffer(msg.data, "compressed image")
    if data.size == 0:
        raise ImageConversionError(f"compressed image (format {fmt!r}) has no data (0 bytes)")
    try:
        with PILImage.open(io.BytesIO(data.tobytes())) as image:
            image.load()
            return load_image(image)
    except UnidentifiedImageError:
        raise ImageConversionError(
            f"compressed image data (format {fmt!r}, {data.size} bytes) is not a JPEG or PNG image"
        ) from None
    except ImageError as exc:
        raise ImageConversionError(f"compressed image (format {fmt!r}): {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageConversionError(
            f"compressed image (format {fmt!r}, {data.size} bytes) is corrupt or truncated: {reason}"
        ) from None


def is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def image_message_to_rgb(msg: Any, scale16: str = "high_byte") -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> (H, W, 3) uint8 RGB. ImageConversionError naming the message type for
    anything else (a message without the fields of either)."""
    try:
        if is_compressed(msg):
            return compressed_to_rgb(msg)
        return to_rgb(image_to_array(msg), str(msg.encoding), scale16)
    except AttributeError as exc:
        if getattr(exc, "obj", None) is not msg:
            raise
        raise ImageConversionError(
            f"expected a sensor_msgs/Image or CompressedImage, got {message_type(msg)}, which has no {exc.name!r} field"
        ) from None


def message_type(msg: Any) -> str:
    """'std_msgs/msg/String' for a rosbags message, 'std_msgs/String' for an rclpy one, else the Python type."""
    kind = type(msg)
    if getattr(kind, "__msgtype__", None):
        return kind.__msgtype__
    package = kind.__module__.split(".")[0]
    return f"{package}/{kind.__name__}" if ".msg" in kind.__module__ else kind.__name__


def cloud_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """PointCloud2 with float32 x, y, z and rgb fields (any offsets, little-endian) -> (N, 3) float32 points,
    (N, 3) uint8 colours (the inverse of lens_ros.fields.cloud_fields)."""
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


def _time_of(header_or_time: Any) -> Any:
    return getattr(header_or_time, "stamp", header_or_time)


def stamp_to_ns(header_or_time: Any) -> int:
    """std_msgs/Header or builtin_interfaces/Time -> integer nanoseconds."""
    stamp = _time_of(header_or_time)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_to_seconds(header_or_time: Any) -> float:
    """std_msgs/Header or builtin_interfaces/Time -> float seconds (what lens_ros.policy compares)."""
    stamp = _time_of(header_or_time)
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9
