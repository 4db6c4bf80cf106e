"""sensor_msgs/Image and CompressedImage <-> numpy, checked on real ROS 2 messages serialised with rosbags' CDR."""

import array
import importlib.util
import io

import numpy as np
import pytest
import ros_helpers  # noqa: E402

# installed by the setup: a broken install must fail here, not skip these tests
import rosbags  # noqa: F401
from PIL import Image
from ros_helpers import cdr  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from lens_model.errors import ImageError, LensError  # noqa: E402
from lens_ros.conversions import (  # noqa: E402
    SUPPORTED_ENCODINGS,
    compressed_to_rgb,
    image_message_to_rgb,
    image_to_array,
    stamp_to_ns,
    stamp_to_seconds,
    to_rgb,
)
from lens_ros.errors import ImageConversionError, LensRosError  # noqa: E402
from lens_ros.fields import ImageFields, array_to_fields  # noqa: E402
from lens_ros.messages import array_to_image, fill_image, message_class  # noqa: E402

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


@pytest.fixture(scope="module", params=[Stores.ROS2_HUMBLE, Stores.ROS2_JAZZY], ids=["humble", "jazzy"])
def store(request):
    return get_typestore(request.param)


@pytest.fixture(scope="module")
def humble():
    return get_typestore(Stores.ROS2_HUMBLE)


def header(ts, sec=1712345678, nanosec=123456789, frame_id="camera_color_optical_frame"):
    return ros_helpers.header(ts, sec, nanosec, frame_id)


def raw_image(ts, data: bytes, height, width, encoding, step, is_bigendian=0, hdr=None):
    """An Image built field by field (not by the code under test)."""
    return ts.types[IMAGE](
        header=hdr or header(ts),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=is_bigendian,
        step=step,
        data=np.frombuffer(data, dtype=np.uint8).copy(),
    )


RNG = np.random.default_rng(0)
CASES = {  # encoding -> (array in the encoding's layout, bytes per pixel)
    "rgb8": (RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8), 3),
    "bgr8": (RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8), 3),
    "rgba8": (RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8), 4),
    "bgra8": (RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8), 4),
    "mono8": (RNG.integers(0, 256, (5, 7), dtype=np.uint8), 1),
    "8UC1": (RNG.integers(0, 256, (5, 7), dtype=np.uint8), 1),
    "16UC1": (RNG.integers(0, 65536, (5, 7), dtype=np.uint16), 2),
    "mono16": (RNG.integers(0, 65536, (5, 7), dtype=np.uint16), 2),
}


@pytest.mark.parametrize("encoding", list(CASES))
def test_raw_image_round_trips_through_cdr(store, encoding):
    values, bpp = CASES[encoding]
    data = values.astype(values.dtype.newbyteorder("<")).tobytes()
    msg = cdr(store, raw_image(store, data, 5, 7, encoding, 7 * bpp), IMAGE)
    got = image_to_array(msg)
    assert got.dtype == values.dtype and got.shape == values.shape
    assert np.array_equal(got, values)
    assert got.flags.writeable and got.flags.c_contiguous
    got[0, 0] = 0  # never a view of the message
    assert np.array_equal(image_to_array(msg), values)


@pytest.mark.parametrize("encoding", list(CASES))
def test_array_to_image_round_trips_through_cdr_and_keeps_the_header(store, encoding):
    values, bpp = CASES[encoding]
    hdr = header(store, sec=42, nanosec=999_999_999, frame_id="wrist_cam")
    msg = array_to_image(values, encoding, hdr, store.types)
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian) == (5, 7, 7 * bpp, encoding, 0)
    back = cdr(store, msg, IMAGE)
    assert (back.header.stamp.sec, back.header.stamp.nanosec, back.header.frame_id) == (42, 999_999_999, "wrist_cam")
    assert np.array_equal(image_to_array(back), values)


def test_to_rgb_orders_channels_drops_alpha_and_replicates_grey():
    bgr = np.array([[[10, 20, 30]]], np.uint8)
    assert to_rgb(bgr, "bgr8").tolist() == [[[30, 20, 10]]]
    assert to_rgb(bgr, "rgb8").tolist() == [[[10, 20, 30]]]
    assert to_rgb(np.array([[[10, 20, 30, 40]]], np.uint8), "bgra8").tolist() == [[[30, 20, 10]]]
    assert to_rgb(np.array([[[10, 20, 30, 40]]], np.uint8), "rgba8").tolist() == [[[10, 20, 30]]]
    assert to_rgb(np.array([[7, 200]], np.uint8), "mono8").tolist() == [[[7, 7, 7], [200, 200, 200]]]
    rgb = to_rgb(np.array([[[1, 2, 3]]], np.uint8), "rgb8")
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous


def test_sixteen_bit_scaling():
    depth = np.array([[0, 255, 256, 1000], [4096, 30000, 65280, 65535]], np.uint16)
    # high_byte: value >> 8
    assert to_rgb(depth, "16UC1")[..., 0].tolist() == [[0, 0, 1, 3], [16, 117, 255, 255]]
    assert np.array_equal(to_rgb(depth, "16UC1")[..., 0], to_rgb(depth, "16UC1")[..., 2])
    # minmax: min..max of the frame -> 0..255, rounded
    stretched = to_rgb(np.array([[1000, 1500, 2000]], np.uint16), "mono16", scale16="minmax")
    assert stretched[..., 1].tolist() == [[0, 128, 255]]
    assert to_rgb(np.full((2, 2), 777, np.uint16), "16UC1", scale16="minmax").max() == 0  # constant frame
    with pytest.raises(ValueError, match="scale16 must be one of high_byte, minmax"):
        to_rgb(depth, "16UC1", scale16="log")


def test_big_endian_sixteen_bit(humble):
    values = np.array([[1, 258], [4660, 65534]], np.uint16)
    be = raw_image(humble, values.astype(">u2").tobytes(), 2, 2, "16UC1", 4, is_bigendian=1)
    assert np.array_equal(image_to_array(cdr(humble, be, IMAGE)), values)
    same_bytes_little = raw_image(humble, values.astype(">u2").tobytes(), 2, 2, "16UC1", 4, is_bigendian=0)
    assert image_to_array(same_bytes_little).tolist() == [[256, 513], [13330, 65279]]  # bytes swapped
    # big-endian 8-bit data is just bytes
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(image_to_array(raw_image(humble, rgb.tobytes(), 2, 2, "rgb8", 6, is_bigendian=1)), rgb)


def test_row_padding_is_removed(humble):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = b"".join(row.tobytes() + b"\xee\xee\xee" for row in rgb)  # step 12 = 9 bytes of pixels + 3 padding
    msg = cdr(humble, raw_image(humble, padded, 2, 3, "rgb8", 12), IMAGE)
    assert np.array_equal(image_to_array(msg), rgb)
    depth = np.array([[1, 2, 3], [400, 500, 65535]], np.uint16)
    odd = b"".join(row.astype("<u2").tobytes() + b"\x07" for row in depth)  # step 7: odd padding after 16-bit rows
    assert np.array_equal(image_to_array(raw_image(humble, odd, 2, 3, "16UC1", 7)), depth)
    assert np.array_equal(image_message_to_rgb(msg), rgb)


def test_rclpy_style_data_containers_are_read():
    """rclpy gives uint8[] as array.array('B') (or bytes); plain objects with the fields are enough."""

    class Msg:
        def __init__(self, data):
            self.height, self.width, self.encoding, self.is_bigendian, self.step = 2, 2, "mono8", 0, 2
            self.data = data

    for data in (array.array("B", [1, 2, 3, 4]), bytes([1, 2, 3, 4]), bytearray([1, 2, 3, 4]), [1, 2, 3, 4]):
        assert image_to_array(Msg(data)).tolist() == [[1, 2], [3, 4]]


def test_fill_image_gives_rclpy_classes_array_array_and_rosbags_classes_numpy(humble):
    class RclpyLikeImage:  # rclpy message classes take every field as a keyword and are not dataclasses
        def __init__(self, **fields):
            self.__dict__.update(fields)

    mask = np.array([[0, 255], [255, 0]], np.uint8)
    msg = array_to_image(mask, "mono8", "HEADER", {IMAGE: RclpyLikeImage})
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B" and list(msg.data) == [0, 255, 255, 0]
    assert msg.header == "HEADER" and (msg.height, msg.width, msg.step) == (2, 2, 2)
    assert np.array_equal(image_to_array(msg), mask)
    ros = array_to_image(mask, "mono8", header(humble), humble.types)
    assert isinstance(ros.data, np.ndarray) and ros.data.dtype == np.uint8


def test_fields_dataclass_mirrors_the_message(humble):
    hdr = header(humble)
    fields = array_to_fields(np.zeros((3, 4, 3), np.uint8), "rgb8", hdr)
    assert isinstance(fields, ImageFields) and fields.header is hdr
    assert (fields.height, fields.width, fields.step, fields.is_bigendian, fields.data.size) == (3, 4, 12, 0, 36)
    assert fill_image(fields, humble.types).header is hdr


def _encode(array_, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array_).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def compressed(ts, data: bytes, fmt):
    return ts.types[COMPRESSED](header=header(ts), format=fmt, data=np.frombuffer(data, np.uint8).copy())


def test_compressed_png_round_trips_exactly(store):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    msg = cdr(store, compressed(store, _encode(rgb, "PNG"), "png"), COMPRESSED)
    assert np.array_equal(compressed_to_rgb(msg), rgb)
    assert np.array_equal(image_message_to_rgb(msg), rgb)
    grey = np.random.default_rng(2).integers(0, 256, (4, 5), dtype=np.uint8)
    got = compressed_to_rgb(cdr(store, compressed(store, _encode(grey, "PNG"), "mono8; png compressed "), COMPRESSED))
    assert got.shape == (4, 5, 3) and np.array_equal(got[..., 0], grey) and np.array_equal(got[..., 2], grey)


def test_compressed_jpeg_round_trips(store):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (200, 30, 40)
    rgb[:, 12:] = (20, 180, 60)
    data = _encode(rgb, "JPEG", quality=95)
    got = compressed_to_rgb(cdr(store, compressed(store, data, "rgb8; jpeg compressed bgr8"), COMPRESSED))
    assert got.shape == (16, 24, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))  # what a JPEG decoder gives
    assert np.abs(got.astype(int) - rgb).mean() < 3  # and close to the original colours (channel order kept)


@pytest.mark.parametrize("encoding", ["yuv422", "32FC1", "bayer_rggb8", "RGB8", ""])
def test_unsupported_encoding_lists_the_supported_ones(humble, encoding):
    msg = raw_image(humble, bytes(12), 2, 2, encoding, 6)
    with pytest.raises(ImageConversionError) as err:
        image_to_array(msg)
    assert f"unsupported image encoding {encoding!r}" in str(err.value)
    assert all(e in str(err.value) for e in SUPPORTED_ENCODINGS)
    with pytest.raises(ImageConversionError, match="unsupported image encoding"):
        image_message_to_rgb(msg)


def test_step_smaller_than_a_row(humble):
    with pytest.raises(ImageConversionError, match=r"step 8 is smaller than width × bytes per pixel = 3 × 3 = 9"):
        image_to_array(raw_image(humble, bytes(16), 2, 3, "rgb8", 8))
    with pytest.raises(ImageConversionError, match=r"step 5 is smaller than width × bytes per pixel = 3 × 2 = 6"):
        image_to_array(raw_image(humble, bytes(10), 2, 3, "16UC1", 5))


@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (0, 0)])
def test_zero_size_image(humble, height, width):
    with pytest.raises(ImageConversionError, match=rf"image is empty \({width}x{height} pixels"):
        image_to_array(raw_image(humble, b"", height, width, "rgb8", width * 3))


def test_truncated_and_oversized_data(humble):
    with pytest.raises(ImageConversionError, match=r"truncated: 17 bytes, expected step × height = 6 × 3 = 18"):
        image_to_array(cdr(humble, raw_image(humble, bytes(17), 3, 2, "rgb8", 6), IMAGE))
    with pytest.raises(ImageConversionError, match=r"truncated: 0 bytes"):
        image_to_array(raw_image(humble, b"", 3, 2, "rgb8", 6))
    with pytest.raises(ImageConversionError, match=r"19 bytes, more than step × height = 6 × 3 = 18"):
        image_to_array(raw_image(humble, bytes(19), 3, 2, "rgb8", 6))


@pytest.mark.parametrize(
    "data,fmt,match",
    [
        (b"", "jpeg", r"has no data \(0 bytes\)"),
        (b"definitely not an image" * 4, "jpeg", r"is not a JPEG or PNG image"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "png", r"corrupt or truncated|not a JPEG or PNG"),
        (bytes(12) + b"\x89PNG\r\n\x1a\n", "16UC1; compressedDepth png", r"compressedDepth\) is not supported"),
    ],
)
def test_bad_compressed_images(humble, data, fmt, match):
    with pytest.raises(ImageConversionError, match=match):
        compressed_to_rgb(cdr(humble, compressed(humble, data, fmt), COMPRESSED))


def test_truncated_jpeg_is_refused(humble):
    data = _encode(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    with pytest.raises(ImageConversionError, match=r"corrupt or truncated"):
        compressed_to_rgb(compressed(humble, data[: len(data) // 2], "jpeg"))


def test_errors_are_lens_errors_with_one_line():
    assert issubclass(ImageConversionError, LensRosError) and issubclass(ImageConversionError, LensError)
    assert issubclass(ImageConversionError, ImageError)


def test_array_to_fields_validates_its_input():
    with pytest.raises(ImageConversionError, match=r"mono8 image needs dtype uint8, got uint16"):
        array_to_fields(np.zeros((2, 2), np.uint16), "mono8", None)
    with pytest.raises(ImageConversionError, match=r"rgb8 image needs shape \(H, W, 3\), got \(2, 2\)"):
        array_to_fields(np.zeros((2, 2), np.uint8), "rgb8", None)
    with pytest.raises(ImageConversionError, match=r"image is empty"):
        array_to_fields(np.zeros((0, 2, 3), np.uint8), "rgb8", None)
    with pytest.raises(ImageConversionError, match=r"unsupported image encoding 'jpeg'"):
        array_to_fields(np.zeros((2, 2, 3), np.uint8), "jpeg", None)


def test_stamps(humble):
    hdr = header(humble, sec=12, nanosec=500_000_001)
    assert stamp_to_ns(hdr) == 12_500_000_001 and stamp_to_ns(hdr.stamp) == 12_500_000_001
    assert stamp_to_seconds(hdr) == pytest.approx(12.500000001)


def test_message_class_from_types_or_ros_packages(humble):
    assert message_class(IMAGE, humble.types) is humble.types[IMAGE]
    with pytest.raises(ImportError, match="vision_msgs/msg/Detection2D is not in the given types"):
        message_class("vision_msgs/msg/Detection2D", humble.types)
    if importlib.util.find_spec("sensor_msgs") is None:  # no sourced ROS 2 workspace
        with pytest.raises(ImportError, match="source the ROS 2 workspace that provides sensor_msgs"):
            message_class(IMAGE)
    else:
        assert message_class(IMAGE).__name__ == "Image"
