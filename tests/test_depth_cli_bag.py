"""`lens segment --depth --camera-info` and `lens bag --depth-topic --camera-info-topic` end to end with the tiny
LENS model (random weights: its mask is arbitrary, so the 3D numbers are checked against lens_model.geometry.target3d
applied to the mask it wrote)."""

import json

import cv2
import numpy as np
import pytest
import yaml
from depth_scenes import render, rgb_of
from PIL import Image

from lens_cli import main
from lens_model.geometry.target3d import PinholeCamera, depth_to_metres, estimate_target

K4 = np.array([[131.25, 0.0, 79.5], [0.0, 131.25, 59.5], [0.0, 0.0, 1.0]])
W4, H4 = 160, 120
PROMPT = "the red box"


@pytest.fixture(scope="module")
def scene():
    return render(k=K4, width=W4, height=H4)


def calibration_yaml(path, width=W4, height=H4, k=K4):
    path.write_text(
        yaml.safe_dump(
            {
                "image_width": width,
                "image_height": height,
                "camera_name": "rgbd",
                "camera_matrix": {"rows": 3, "cols": 3, "data": np.asarray(k).ravel().tolist()},
                "distortion_model": "plumb_bob",
                "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.0] * 5},
                "rectification_matrix": {"rows": 3, "cols": 3, "data": np.eye(3).ravel().tolist()},
                "projection_matrix": {"rows": 3, "cols": 4, "data": np.hstack([k, np.zeros((3, 1))]).ravel().tolist()},
            }
        )
    )
    return path


def test_segment_with_depth_prints_the_3d_point_and_box(tiny_dir, tmp_path, scene, capsys):
    Image.fromarray(rgb_of(scene)).save(tmp_path / "rgb.png")
    millimetres = np.rint(scene.depth * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "depth.png"), millimetres)
    args = [
        "segment",
        "--model",
        str(tiny_dir),
        "--image",
        str(tmp_path / "rgb.png"),
        "--prompt",
        PROMPT,
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "--out-mask",
        str(tmp_path / "mask.png"),
        "--depth",
        str(tmp_path / "depth.png"),
        "--camera-info",
        str(calibration_yaml(tmp_path / "camera.yaml")),
    ]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 0
    assert mask.any(), "the tiny model's mask is empty: nothing to compare"
    expected = estimate_target(mask, depth_to_metres(millimetres), PinholeCamera(W4, H4, K4))
    target = data["target_3d"]
    assert target["ok"] and target["reason"] == "" and target["num_points"] == expected.num_points
    assert np.allclose(target["point"], expected.centroid, atol=1e-5)
    assert np.allclose(target["box_center"], expected.box_center, atol=1e-5)
    assert np.allclose(target["box_size"], expected.box_size, atol=1e-5)


def test_segment_refuses_bad_depth_input_before_loading_the_model(tmp_path, scene, capsys):
    Image.fromarray(rgb_of(scene)).save(tmp_path / "rgb.png")
    cv2.imwrite(str(tmp_path / "small.png"), np.full((60, 80), 1000, np.uint16))
    base = ["segment", "--model", str(tmp_path / "no-model"), "--image", str(tmp_path / "rgb.png"), "--prompt", PROMPT]
    cases = [
        (["--depth", str(tmp_path / "small.png")], "--depth and --camera-info go together"),
        (
            [
                "--depth",
                str(tmp_path / "small.png"),
                "--camera-info",
                str(calibration_yaml(tmp_path / "small.yaml", 80, 60, K4 / 2 + np.diag([0, 0, 0.5]))),
            ],
            "small.png is 80x60 but the image is 160x120",
        ),
        (
            ["--depth", str(tmp_path / "small.png"), "--camera-info", str(calibration_yaml(tmp_path / "c.yaml"))],
            "camera_info is for 160x120 images but the depth image is 80x60",
        ),
        (
            [
                "--depth",
                str(tmp_path / "small.png"),
                "--camera-info",
                str(calibration_yaml(tmp_path / "zero.yaml", 80, 60, np.zeros((3, 3)))),
            ],
            "K has fx=0, fy=0",
        ),
    ]
    for extra, message in cases:
        assert main(base + extra) == 1
        err = capsys.readouterr().err
        assert message in err and "no-model" not in err, err  # refused before the checkpoint is looked at


# --- lens bag ---

CAMERA, DEPTH, INFO = "/camera/color/image_raw", "/camera/aligned_depth_to_color/image_raw", "/camera/color/camera_info"


def _stamp(ts, sec, nanosec, frame):
    t = ts.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame)


def write_rgbd_bag(path, ts, scene):
    """Three frames: 0 with its depth before it in the bag, 1 with its depth 5 ms later and after it, 2 with its
    depth 0.5 s late (outside the slop). camera_info once, at the start."""
    from rosbags.rosbag2 import Writer

    from lens_ros.messages import array_to_image

    t = ts.types
    millimetres = np.rint(scene.depth * 1000).astype("<u2")
    with Writer(path, version=9) as writer:
        cam = writer.add_connection(CAMERA, "sensor_msgs/msg/Image", typestore=ts)
        depth = writer.add_connection(DEPTH, "sensor_msgs/msg/Image", typestore=ts)
        info = writer.add_connection(INFO, "sensor_msgs/msg/CameraInfo", typestore=ts)
        info_msg = t["sensor_msgs/msg/CameraInfo"](
            header=_stamp(ts, 10, 0, "depth_optical"),
            height=H4,
            width=W4,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=K4.ravel(),
            r=np.eye(3).ravel(),
            p=np.hstack([K4, np.zeros((3, 1))]).ravel(),
            binning_x=0,
            binning_y=0,
            roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
        writer.write(info, 1, bytes(ts.serialize_cdr(info_msg, "sensor_msgs/msg/CameraInfo")))

        def write_depth(time_ns, sec, nanosec):
            msg = t["sensor_msgs/msg/Image"](
                header=_stamp(ts, sec, nanosec, "depth_optical"),
                height=H4,
                width=W4,
                encoding="16UC1",
                is_bigendian=0,
                step=2 * W4,
                data=np.frombuffer(millimetres.tobytes(), np.uint8),
            )
            writer.write(depth, time_ns, bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/Image")))

        def write_frame(time_ns, sec):
            msg = array_to_image(rgb_of(scene), "rgb8", _stamp(ts, sec, 0, "color_optical"), t)
            writer.write(cam, time_ns, bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/Image")))

        write_depth(10, 10, 0)
        write_frame(11, 10)
        write_frame(20, 11)
        write_depth(21, 11, 5_000_000)
        write_frame(30, 12)
        write_depth(31, 12, 500_000_000)
    return path


def test_bag_with_depth_writes_the_3d_targets(tiny_dir, tmp_path, scene, capsys):
    from rosbags.rosbag2 import Reader

    from lens_ros.bag import lens_typestore
    from lens_ros.conversions import cloud_to_arrays, image_to_array

    ts = lens_typestore()
    src = write_rgbd_bag(tmp_path / "in", ts, scene)
    out = tmp_path / "out"
    assert (
        main(
            [
                "bag",
                "--in",
                str(src),
                "--out",
                str(out),
                "--image-topic",
                CAMERA,
                "--prompt",
                PROMPT,
                "--model",
                str(tiny_dir),
                "--device",
                "cpu",
                "--max-new-tokens",
                "4",
                "--no-progress",
                "--depth-topic",
                DEPTH,
                "--camera-info-topic",
                INFO,
                "--target-cloud",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["segmented"] == 3 and summary["depth_topic"] == DEPTH and summary["camera_info_topic"] == INFO
    got = {}
    with Reader(out) as reader:
        for conn, timestamp, raw in reader.messages():
            got.setdefault(conn.topic, []).append((timestamp, ts.deserialize_cdr(raw, conn.msgtype)))
    masks = [image_to_array(m) > 0 for _, m in got["/lens/mask"]]
    assert all(m.any() for m in masks), "the tiny model's mask is empty: nothing to compare"
    expected = estimate_target(
        masks[0], depth_to_metres(np.rint(scene.depth * 1000).astype(np.uint16)), PinholeCamera(W4, H4, K4)
    )

    # frames 0 and 1 have their depth (before and after them in the bag); frame 2's is 0.5 s late
    assert summary["with_3d"] == 2 and [f["frame"] for f in summary["failed_3d"]] == [2]
    assert (
        "no depth image within depth_slop_s=0.05 s of the colour image (nearest: +0.500 s)"
        in summary["failed_3d"][0]["error"]
    )
    assert [t for t, _ in got["/lens/detections_3d"]] == [11, 20, 30]  # the source images' bag times
    assert [t for t, _ in got["/lens/target_point"]] == [11, 20]
    frames = ("depth_optical", "depth_optical", "color_optical")  # without a depth image: the colour image's
    for (_, detections), sec, frame in zip(got["/lens/detections_3d"], (10, 11, 12), frames):
        assert (detections.header.stamp.sec, detections.header.stamp.nanosec, detections.header.frame_id) == (
            sec,
            0,
            frame,
        )
    assert got["/lens/detections_3d"][2][1].detections == []
    point = got["/lens/target_point"][0][1]
    assert np.allclose([point.point.x, point.point.y, point.point.z], expected.centroid, atol=1e-6)
    (detection,) = got["/lens/detections_3d"][0][1].detections
    assert detection.results[0].hypothesis.class_id == PROMPT
    assert np.allclose([detection.bbox.size.x, detection.bbox.size.y, detection.bbox.size.z], expected.box_size)
    points, _ = cloud_to_arrays(got["/lens/target_cloud"][0][1])
    assert np.array_equal(points, expected.points)
    assert summary["topics"]["/lens/target_cloud"] == 2 and summary["topics"][DEPTH] == 3


def test_bag_depth_topics_are_checked(tmp_path, scene):
    from lens_ros.bag import BagError, DepthInputs, depth_inputs, lens_typestore, process_bag

    ts = lens_typestore()
    src = write_rgbd_bag(tmp_path / "in", ts, scene)
    with pytest.raises(BagError, match="--depth-topic and --camera-info-topic go together"):
        depth_inputs(DEPTH, None)
    with pytest.raises(BagError, match="topic '/depth' is not in"):
        process_bag(src, tmp_path / "out", CAMERA, PROMPT, pipeline=object(), depth=DepthInputs("/depth", INFO))
    with pytest.raises(BagError, match=f"topic {INFO} has type sensor_msgs/msg/CameraInfo; expected sensor_msgs/msg/"):
        process_bag(src, tmp_path / "out", CAMERA, PROMPT, pipeline=object(), depth=DepthInputs(INFO, INFO))
    assert depth_inputs(None, None) is None
