"""SegmentationResult -> output message fields and real messages (rosbags CDR; rclpy-style classes)."""

import array

import numpy as np
import pytest
import ros_helpers  # noqa: E402

# installed by the setup: a broken install must fail here, not skip these tests
import rosbags  # noqa: F401
from ros_helpers import cdr  # noqa: E402

from lens_model.inference.pipeline import SegmentationResult  # noqa: E402
from lens_model.overlay import draw_overlay  # noqa: E402
from lens_ros.bag import lens_typestore  # noqa: E402
from lens_ros.conversions import image_to_array
from lens_ros.errors import ImageConversionError  # noqa: E402
from lens_ros.fields import (  # noqa: E402
    DetectionArrayFields,
    detection_fields,
    mask_fields,
    overlay_fields,
    result_fields,
)
from lens_ros.messages import (  # noqa: E402
    MESSAGE_TYPES,
    fill_detections,
    fill_result,
    fill_string,
)


@pytest.fixture(scope="module")
def ts():
    return lens_typestore()


def header(ts, sec=1700000000, nanosec=250, frame_id="head_camera"):
    return ros_helpers.header(ts, sec, nanosec, frame_id)


def result(box=(10.0, 20.0, 50.0, 80.0), score=0.875, prompt="the red cup"):
    mask = np.zeros((90, 120), bool)
    mask[20:80, 10:50] = True
    return SegmentationResult(
        prompt=prompt,
        mask=mask,
        box=box,
        score=score,
        text="<|object_ref_start|>the red cup<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>",
        num_tokens=12,
        image_size=(90, 120),
        mllm_image_size=(84, 112),
    )


def test_detection_fields_box_arithmetic(ts):
    hdr = header(ts)
    fields = detection_fields(result(box=(10.0, 20.0, 50.0, 80.0)), hdr)
    assert fields.header is hdr and len(fields.detections) == 1
    d = fields.detections[0]
    assert (d.center_x, d.center_y, d.size_x, d.size_y, d.theta) == (30.0, 50.0, 40.0, 60.0, 0.0)
    assert d.class_id == "the red cup" and d.score == 0.875 and d.header is hdr and d.id == "1"
    odd = detection_fields(result(box=(0.5, 1.25, 3.0, 2.0)), hdr).detections[0]
    assert (odd.center_x, odd.center_y, odd.size_x, odd.size_y) == (1.75, 1.625, 2.5, 0.75)


def test_no_box_gives_an_empty_detection_array_with_the_header(ts):
    hdr = header(ts)
    fields = detection_fields(result(box=None), hdr)
    assert fields == DetectionArrayFields(hdr, [])
    msg = cdr(ts, fill_detections(fields, ts.types), "vision_msgs/msg/Detection2DArray")
    assert msg.detections == [] and msg.header.stamp.sec == 1700000000 and msg.header.frame_id == "head_camera"


def test_mask_is_mono8_0_255_with_the_source_header(ts):
    hdr = header(ts)
    r = result()
    fields = mask_fields(r.mask, hdr)
    assert (fields.encoding, fields.height, fields.width, fields.step, fields.is_bigendian) == (
        "mono8",
        90,
        120,
        120,
        0,
    )
    assert fields.header is hdr
    values = image_to_array(fields)
    assert set(np.unique(values)) == {0, 255} and np.array_equal(values == 255, r.mask)
    assert mask_fields(np.array([[0, 1], [2, 0]]), hdr).data.tolist() == [0, 255, 255, 0]
    with pytest.raises(ImageConversionError, match=r"mask must be \(H, W\), got shape \(2, 2, 1\)"):
        mask_fields(np.zeros((2, 2, 1), bool), hdr)


def test_overlay_is_the_library_overlay_as_rgb8(ts):
    rgb = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    r = result()
    fields = overlay_fields(rgb, r, header(ts))
    assert (fields.encoding, fields.height, fields.width, fields.step) == ("rgb8", 90, 120, 360)
    assert np.array_equal(image_to_array(fields), np.asarray(draw_overlay(rgb, r.mask, r.box, r.prompt)))


def test_full_result_as_real_messages_through_cdr(ts):
    rgb = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    r = result()
    fields = result_fields(r, header(ts, sec=7, nanosec=8, frame_id="cam"), rgb)
    assert fields.reasoning == r.text and fields.overlay is not None
    messages = fill_result(fields, ts.types)
    mask = cdr(ts, messages.mask, "sensor_msgs/msg/Image")
    dets = cdr(ts, messages.detections, "vision_msgs/msg/Detection2DArray")
    text = cdr(ts, messages.reasoning, "std_msgs/msg/String")
    overlay = cdr(ts, messages.overlay, "sensor_msgs/msg/Image")
    for msg in (mask, dets, dets.detections[0], overlay):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (7, 8, "cam")
    assert np.array_equal(image_to_array(mask) == 255, r.mask)
    assert overlay.encoding == "rgb8" and image_to_array(overlay).shape == (90, 120, 3)
    assert text.data == r.text
    (det,) = dets.detections
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.center.theta) == (30.0, 50.0, 0.0)
    assert (det.bbox.size_x, det.bbox.size_y) == (40.0, 60.0)
    (hyp,) = det.results
    assert hyp.hypothesis.class_id == "the red cup" and hyp.hypothesis.score == 0.875
    q = hyp.pose.pose.orientation
    assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)  # identity pose, as ROS 2 defaults it
    assert hyp.pose.covariance.shape == (36,) and not hyp.pose.covariance.any()
    assert det.id == "1"


def test_without_an_image_there_is_no_overlay(ts):
    fields = result_fields(result(), header(ts))
    assert fields.overlay is None and fill_result(fields, ts.types).overlay is None


def test_fill_with_rclpy_style_classes():
    """rclpy message classes take keyword arguments and are not dataclasses; uint8[] gets array.array('B')."""

    def message_type(name):
        return type(name.rsplit("/", 1)[1], (), {"__init__": lambda self, **kw: self.__dict__.update(kw)})

    types = {name: message_type(name) for name in MESSAGE_TYPES}
    messages = fill_result(result_fields(result(), "HEADER"), types)
    assert type(messages.mask) is types["sensor_msgs/msg/Image"]
    assert isinstance(messages.mask.data, array.array) and messages.mask.data.typecode == "B"
    assert len(messages.mask.data) == 90 * 120 and messages.mask.header == "HEADER"
    det = messages.detections.detections[0]
    assert det.bbox.center.position.x == 30.0 and det.results[0].hypothesis.class_id == "the red cup"
    assert messages.reasoning.data.startswith("<|object_ref_start|>")
    assert fill_string("hello", types).data == "hello"
