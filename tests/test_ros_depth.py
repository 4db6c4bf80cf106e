"""The 3D target in the ROS layer, without rclpy: depth and camera_info messages (rosbags classes), pairing by
stamp (lens_ros.depth), the output messages (PointStamped, Detection3DArray, PointCloud2 through CDR), bad input,
and the engine with a tiny LENS model on a colour + depth + camera_info triple."""

import threading
import time

import numpy as np
import pytest
from depth_scenes import render, rgb_of
from ros_helpers import cdr, header, image_msg, lens_test_typestore

from lens_model.errors import DepthError
from lens_model.geometry.target3d import PinholeCamera, TargetOptions, depth_to_metres, estimate_target
from lens_ros.conversions import cloud_to_arrays
from lens_ros.depth import CameraCache, DepthBuffer, DepthMatch, camera_from_info, depth_message_to_metres, measure
from lens_ros.messages import fill_target, target_header

# a 160x120 camera (the 640x480 one scaled by 1/4) looking at the box in front of the wall
K4 = np.array([[131.25, 0.0, 79.5], [0.0, 131.25, 59.5], [0.0, 0.0, 1.0]])
W4, H4 = 160, 120


@pytest.fixture(scope="module")
def store():
    return lens_test_typestore()


@pytest.fixture(scope="module")
def scene():
    return render(k=K4, width=W4, height=H4)


def depth_msg(store, depth_m, encoding="16UC1", sec=100, nanosec=0, frame="depth_optical", bigendian=False):
    """sensor_msgs/Image of a depth map in metres: 16UC1 millimetres or 32FC1 metres."""
    values = np.rint(depth_m * 1000).astype(np.uint16) if encoding == "16UC1" else np.asarray(depth_m, np.float32)
    values = values.astype(values.dtype.newbyteorder(">" if bigendian else "<"))
    data = np.frombuffer(values.tobytes(), np.uint8).copy()
    return store.types["sensor_msgs/msg/Image"](
        header=header(store, sec, nanosec, frame),
        height=values.shape[0],
        width=values.shape[1],
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=values.shape[1] * values.itemsize,
        data=data,
    )


def camera_info(store, k=K4, d=(), model="plumb_bob", width=W4, height=H4, frame="depth_optical", sec=100):
    t = store.types
    p = np.hstack([np.asarray(k, float), np.zeros((3, 1))]).ravel()
    return t["sensor_msgs/msg/CameraInfo"](
        header=header(store, sec, 0, frame),
        height=height,
        width=width,
        distortion_model=model,
        d=np.asarray(d, np.float64),
        k=np.asarray(k, np.float64).ravel(),
        r=np.eye(3).ravel(),
        p=p,
        binning_x=0,
        binning_y=0,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


# --- depth messages and camera_info ---


@pytest.mark.parametrize("bigendian", [False, True])
def test_16uc1_and_32fc1_messages_give_the_same_metres(store, scene, bigendian):
    millimetres = np.rint(scene.depth * 1000) / 1000
    a = depth_message_to_metres(depth_msg(store, millimetres, "16UC1", bigendian=bigendian))
    b = depth_message_to_metres(depth_msg(store, millimetres, "32FC1", bigendian=bigendian))
    assert a.dtype == b.dtype == np.float32 and np.allclose(a, b, atol=1e-6) and np.allclose(a, scene.depth, atol=6e-4)
    tenths = depth_message_to_metres(depth_msg(store, millimetres * 10, "16UC1"), scale=0.0001)
    assert np.allclose(tenths, a, atol=1e-6)


def test_camera_info_gives_the_camera(store):
    info = camera_info(store, d=[-0.2, 0.05, 0.001, -0.001, 0.0])
    camera = camera_from_info(info)
    assert (camera.width, camera.height) == (W4, H4) and np.allclose(camera.k, K4) and camera.undistorts
    assert not camera_from_info(info, rectified=True).undistorts
    assert not camera_from_info(camera_info(store, d=[0.0] * 5)).undistorts  # D all zero: plain pinhole


def test_the_camera_is_built_once_per_calibration(store):
    cameras = CameraCache()
    first = cameras.get(camera_info(store, d=[-0.2, 0.05, 0.0, 0.0, 0.0]))
    rays = first.rays()
    again = cameras.get(camera_info(store, d=[-0.2, 0.05, 0.0, 0.0, 0.0], sec=200))  # same calibration, new stamp
    assert again is first and again.rays() is rays
    changed = cameras.get(camera_info(store, d=[-0.1, 0.05, 0.0, 0.0, 0.0]))
    assert changed is not first and np.allclose(changed.d[:2], [-0.1, 0.05])
    assert cameras.get(camera_info(store, d=[-0.1, 0.05, 0.0, 0.0, 0.0]), rectified=True).rectified


# --- pairing by stamp ---


def test_depth_is_paired_with_the_nearest_stamp_within_the_slop(store):
    buffer = DepthBuffer(slop_s=0.02)
    assert buffer.select(100.0).status == "wait"
    assert buffer.select(100.0, final=True).reason == "no depth image has been received"
    for name, stamp in (("a", 99.95), ("b", 99.99), ("c", 100.03)):
        buffer.put_depth(name, stamp)
    assert buffer.select(100.0).status == "wait" and "camera_info" in buffer.select(100.0, final=True).reason
    buffer.put_camera_info("info")
    match = buffer.select(100.0)
    assert match.ok and match.depth == "b" and match.camera_info == "info" and match.offset_s == pytest.approx(-0.01)
    assert buffer.select(100.02).depth == "c"  # 10 ms from c, 30 ms from b
    # a newer frame: nothing within the slop yet, and a nearer depth image may still come
    assert buffer.select(100.5).status == "wait"
    refused = buffer.select(100.5, final=True)
    assert refused.status == "refused" and refused.offset_s == pytest.approx(-0.47)
    assert "no depth image within depth_slop_s=0.02 s of the colour image (nearest: -0.470 s)" in refused.reason
    # a frame older than every retained depth image by more than the slop is refused at once
    assert buffer.select(99.5).status == "refused"
    assert buffer.select(99.94).depth == "a"


def test_a_frame_waits_for_its_depth_image_until_the_timeout(store):
    buffer = DepthBuffer(slop_s=0.05)
    buffer.put_camera_info("info")
    buffer.put_depth("old", 99.0)
    timer = threading.Timer(0.2, buffer.put_depth, ("new", 100.01))
    timer.start()
    started = time.monotonic()
    match = buffer.wait_for_match(100.0, timeout=5.0)
    assert match.ok and match.depth == "new" and time.monotonic() - started < 4.0
    started = time.monotonic()
    late = buffer.wait_for_match(101.0, timeout=0.3)  # nothing comes
    assert not late.ok and "nearest: -0.990 s" in late.reason and 0.25 < time.monotonic() - started < 3.0


# --- output messages ---


def _target(scene):
    return estimate_target(scene.mask, scene.depth, PinholeCamera(W4, H4, K4))


def test_target_messages_carry_the_source_stamp_and_the_depth_frame(store, scene):
    source = header(store, sec=1234, nanosec=5678, frame="color_optical")
    target = _target(scene)
    out = fill_target(
        target, target_header(source, "depth_optical", store.types), "the red box", 0.75, rgb_of(scene), store.types
    )
    point = cdr(store, out.point, "geometry_msgs/msg/PointStamped")
    detections = cdr(store, out.detections, "vision_msgs/msg/Detection3DArray")
    for msg in (point, detections, detections.detections[0]):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (1234, 5678, "depth_optical")
    assert np.allclose([point.point.x, point.point.y, point.point.z], target.centroid)
    [detection] = detections.detections
    hypothesis = detection.results[0]
    assert hypothesis.hypothesis.class_id == "the red box" and hypothesis.hypothesis.score == 0.75
    p = hypothesis.pose.pose.position
    assert np.allclose([p.x, p.y, p.z], target.centroid)
    c, size = detection.bbox.center, detection.bbox.size
    assert np.allclose([c.position.x, c.position.y, c.position.z], target.box_center)
    assert np.allclose([size.x, size.y, size.z], target.box_size) and c.orientation.w == 1.0


def test_point_cloud_layout_and_cdr_round_trip(store, scene):
    target = _target(scene)
    rgb = rgb_of(scene)
    out = fill_target(target, target_header(header(store), "depth_optical", store.types), "box", 1.0, rgb, store.types)
    cloud = cdr(store, out.cloud, "sensor_msgs/msg/PointCloud2")
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ("x", 0, 7, 1),
        ("y", 4, 7, 1),
        ("z", 8, 7, 1),
        ("rgb", 12, 7, 1),
    ]  # 7 = PointField.FLOAT32
    n = target.num_points
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, n, 16, 16 * n)
    assert len(cloud.data) == 16 * n and not cloud.is_bigendian and cloud.is_dense
    points, colours = cloud_to_arrays(cloud)
    assert np.array_equal(points, target.points)
    assert (colours == (200, 30, 30)).all()  # the box's colour (its eroded mask is all box)
    raw = np.asarray(cloud.data, np.uint8)[:16]  # the first point, byte by byte: x y z as float32, then 0x00RRGGBB
    assert np.array_equal(raw[:12].view("<f4"), target.points[0]) and raw[12:].view("<u4")[0] == 0xC81E1E


def test_a_target_that_is_not_ok_publishes_an_empty_detection_array_and_no_point(store, scene):
    holes = np.where(scene.mask, np.float32(np.nan), scene.depth)
    target = estimate_target(scene.mask, holes, PinholeCamera(W4, H4, K4))
    out = fill_target(
        target, target_header(header(store), "depth_optical", store.types), "box", 1.0, rgb_of(scene), store.types
    )
    assert out.point is None and out.cloud is None and list(out.detections.detections) == []
    assert out.detections.header.frame_id == "depth_optical"


# --- bad input: one clear reason each ---


def _match(store, depth, info):
    return DepthMatch("ok", depth, info)


def test_bad_camera_info_depth_size_and_encoding_are_refused(store, scene):
    depth = depth_msg(store, scene.depth)
    with pytest.raises(DepthError, match="camera_info is unusable: K has fx=0, fy=0"):
        measure(scene.mask, _match(store, depth, camera_info(store, k=np.zeros((3, 3)))))
    with pytest.raises(DepthError, match="camera_info is for 320x240 images but the depth image is 160x120"):
        measure(scene.mask, _match(store, depth, camera_info(store, width=320, height=240)))
    small = depth_msg(store, scene.depth[::2, ::2])
    with pytest.raises(DepthError, match="depth image is 80x60 but the mask .colour image. is 160x120"):
        measure(
            scene.mask, _match(store, small, camera_info(store, k=K4 / 2 + np.diag([0, 0, 0.5]), width=80, height=60))
        )
    rgb = image_msg(store, rgb_of(scene))
    with pytest.raises(DepthError, match="unsupported depth encoding 'rgb8'; supported: 16UC1, mono16, 32FC1"):
        measure(scene.mask, _match(store, rgb, camera_info(store)))
    target = measure(scene.mask, _match(store, depth_msg(store, np.zeros_like(scene.depth)), camera_info(store)))
    assert not target.ok and target.reason == "no valid depth inside the mask (all 0 or NaN)"


def test_measure_equals_the_library_on_the_same_arrays(store, scene):
    info = camera_info(store, d=[-0.1, 0.01, 0.0, 0.0, 0.0])
    target = measure(
        scene.mask, _match(store, depth_msg(store, scene.depth), info), options=TargetOptions(erosion_px=1)
    )
    expected = estimate_target(
        scene.mask,
        depth_to_metres(np.rint(scene.depth * 1000).astype(np.uint16)),
        PinholeCamera(W4, H4, K4, [-0.1, 0.01, 0.0, 0.0, 0.0], "plumb_bob"),
        TargetOptions(erosion_px=1),
    )
    assert np.allclose(target.centroid, expected.centroid) and target.num_points == expected.num_points


# --- the engine: colour + depth + camera_info -> the 3D result (tiny LENS, random weights) ---


@pytest.fixture(scope="module")
def pipeline(tiny_dir):
    from lens_model.inference.pipeline import LensPipeline

    return LensPipeline.from_pretrained(str(tiny_dir), device="cpu", max_new_tokens=8)


@pytest.fixture
def engine(store, pipeline):
    from lens_ros.engine import SegmentationEngine
    from lens_ros.params import NodeSettings

    published = []
    settings = NodeSettings.from_values(
        {
            "audio_enabled": False,
            "service_timeout_s": 60.0,
            "depth_enabled": True,
            "publish_target_cloud": True,
            "depth_slop_s": 0.02,
            "max_frame_age_s": 0.0,
        }
    )
    engine = SegmentationEngine(pipeline, settings, publish=published.append, clock=lambda: 100.0, types=store.types)
    engine.published = published
    engine.start()
    yield engine
    engine.stop()


def _feed(engine, store, scene, depth=None, info=None, sec=100, depth_nanosec=10_000_000):
    """A colour frame stamped `sec`, its camera_info and a depth image `depth_nanosec` later."""
    engine.on_image(image_msg(store, rgb_of(scene), sec=sec, frame="color_optical"))
    engine.on_camera_info(info if info is not None else camera_info(store))
    engine.on_depth(depth if depth is not None else depth_msg(store, scene.depth, sec=sec, nanosec=depth_nanosec))


def test_the_engine_measures_the_3d_target_of_the_mask_it_returns(engine, store, scene):
    _feed(engine, store, scene)
    outcome = engine.submit("the red box").wait(60)
    assert outcome.success, outcome.message
    mask = outcome.result.mask
    assert mask.any(), "the tiny model returned an empty mask: the 3D numbers below would not be tested"
    expected = estimate_target(
        mask, depth_to_metres(np.rint(scene.depth * 1000).astype(np.uint16)), PinholeCamera(W4, H4, K4)
    )
    target = outcome.target
    assert target.ok and np.allclose(target.centroid, expected.centroid)
    assert np.allclose(target.box_size, expected.box_size) and target.num_points == expected.num_points

    msg = cdr(store, outcome.result_msg, "lens_interfaces/msg/SegmentationResult")
    assert msg.has_3d and msg.error_3d == "" and msg.num_points_3d == target.num_points
    assert msg.valid_depth_fraction == pytest.approx(target.valid_fraction)
    p = msg.detection_3d.results[0].pose.pose.position
    assert np.allclose([p.x, p.y, p.z], target.centroid, atol=1e-9)
    assert (msg.detection_3d.header.stamp.sec, msg.detection_3d.header.frame_id) == (100, "depth_optical")
    assert (msg.header.stamp.sec, msg.header.frame_id) == (100, "color_optical")  # the 2D result: the image's

    published = engine.published[-1].messages.target
    for out in (published.point, published.detections, published.cloud):
        assert (out.header.stamp.sec, out.header.stamp.nanosec, out.header.frame_id) == (100, 0, "depth_optical")
    assert published.cloud.width == target.num_points
    assert np.allclose([published.point.point.x, published.point.point.y, published.point.point.z], target.centroid)


@pytest.mark.parametrize(
    "case,reason",
    [
        ("late depth", "no depth image within depth_slop_s=0.02 s of the colour image (nearest: +0.500 s)"),
        ("K zero", "camera_info is unusable: K has fx=0, fy=0"),
        ("camera_info size", "camera_info is for 320x240 images but the depth image is 160x120"),
        ("depth size", "depth image is 80x60 but the mask (colour image) is 160x120"),
        ("encoding", "unsupported depth encoding 'bgr8'"),
        ("no valid depth", "no valid depth inside the mask (all 0 or NaN)"),
    ],
)
def test_bad_depth_input_is_reported_in_the_result_and_the_engine_goes_on(engine, store, scene, case, reason):
    depth, info, depth_nanosec = None, None, 10_000_000
    if case == "late depth":
        depth_nanosec = 500_000_000
    elif case == "K zero":
        info = camera_info(store, k=np.zeros((3, 3)))
    elif case == "camera_info size":
        info = camera_info(store, width=320, height=240)
    elif case == "depth size":
        depth = depth_msg(store, scene.depth[::2, ::2], sec=100)
        info = camera_info(store, k=np.diag([0.5, 0.5, 1.0]) @ K4, width=80, height=60)
    elif case == "encoding":
        depth = image_msg(store, rgb_of(scene), sec=100, encoding="bgr8")
    elif case == "no valid depth":
        depth = depth_msg(store, np.zeros_like(scene.depth), sec=100)
    _feed(engine, store, scene, depth, info, depth_nanosec=depth_nanosec)
    outcome = engine.submit("the red box").wait(60)
    assert outcome.success  # the 2D result stands
    assert not outcome.target.ok and reason in outcome.target.reason
    msg = outcome.result_msg
    assert not msg.has_3d and reason in msg.error_3d and msg.num_points_3d == 0
    target = outcome.messages.target
    assert target.point is None and target.cloud is None and list(target.detections.detections) == []
    assert target.detections.header.stamp.sec == 100
    # the engine is alive and measures the next good triple
    _feed(engine, store, scene, sec=101)
    assert engine.submit("the red box").wait(60).target.ok


def test_an_unconfident_result_is_measured_but_publishes_no_3d_target(engine, store, scene, pipeline):
    """Every result judged unconfident (a stability above any mask's): the result message still reports the 3D
    measurement, flagged; the published target has no detection, point or cloud (publish_unconfident false)."""
    import dataclasses

    from lens_model.model.config import ConfidenceConfig

    kept = pipeline.confidence
    pipeline.confidence = dataclasses.replace(ConfidenceConfig.accept_all(), min_stability=1.01)
    try:
        _feed(engine, store, scene)
        outcome = engine.submit("the red box").wait(60)
    finally:
        pipeline.confidence = kept
    assert outcome.success and not outcome.result.confident and "unstable" in outcome.result.reason
    assert outcome.target.ok  # measured as always ...
    msg = cdr(store, outcome.result_msg, "lens_interfaces/msg/SegmentationResult")
    assert msg.has_3d and not msg.confident and msg.num_points_3d == outcome.target.num_points
    target = outcome.messages.target  # ... and not published
    assert target.point is None and target.cloud is None and list(target.detections.detections) == []
    assert (target.detections.header.stamp.sec, target.detections.header.frame_id) == (100, "depth_optical")
