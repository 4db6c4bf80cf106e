"""The rclpy node's 3D target: a colour + depth + camera_info triple published on the node's topics comes back as
`target_point` and `detections_3d`. Needs ROS 2 with lens_interfaces built (as test_ros_node.py); skips otherwise
(fails under CI=true) — the same path is tested without ROS in test_ros_depth.py (engine, messages, bad input)."""

import numpy as np
import pytest
from depth_scenes import render, rgb_of
from ros_helpers import needs_ros, running_node, wait_for

pytestmark = needs_ros

K4 = np.array([[131.25, 0.0, 79.5], [0.0, 131.25, 59.5], [0.0, 0.0, 1.0]])


@pytest.fixture
def ros(tiny_dir):
    with running_node(
        tiny_dir, "lens_depth_test_client", depth_enabled=True, depth_qos="reliable", depth_slop_s=0.05
    ) as started:
        yield started


def test_a_colour_depth_camera_info_triple_gives_target_point_and_detections_3d(ros):
    from geometry_msgs.msg import PointStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header, String
    from vision_msgs.msg import Detection3DArray

    from lens_ros.conversions import stamp_to_seconds
    from lens_ros.messages import array_to_image

    node, client = ros
    scene = render(k=K4, width=160, height=120)
    stamp = client.get_clock().now().to_msg()
    colour = array_to_image(rgb_of(scene), "rgb8", Header(stamp=stamp, frame_id="color_optical"))
    millimetres = np.rint(scene.depth * 1000).astype("<u2")
    depth = Image(
        header=Header(stamp=stamp, frame_id="depth_optical"),
        height=120,
        width=160,
        encoding="16UC1",
        is_bigendian=0,
        step=320,
        data=millimetres.tobytes(),
    )
    info = CameraInfo(
        header=Header(stamp=stamp, frame_id="depth_optical"),
        height=120,
        width=160,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=K4.ravel().tolist(),
        p=np.hstack([K4, np.zeros((3, 1))]).ravel().tolist(),
    )
    points, detections = [], []
    client.create_subscription(PointStamped, "/target_point", points.append, 10)
    client.create_subscription(Detection3DArray, "/detections_3d", detections.append, 10)
    camera = client.create_publisher(Image, "/image", qos_profile_sensor_data)
    depth_pub = client.create_publisher(Image, "/depth", 10)
    info_pub = client.create_publisher(CameraInfo, "/camera_info", 10)
    commands = client.create_publisher(String, "/command", 10)

    def received() -> bool:
        camera.publish(colour)
        depth_pub.publish(depth)
        info_pub.publish(info)
        engine = node.engine
        return engine.frames.latest() is not None and engine.depth.select(stamp_to_seconds(stamp), final=True).ok

    assert wait_for(received, 30)
    assert wait_for(lambda: commands.get_subscription_count() > 0, 30)
    commands.publish(String(data="the red box"))
    assert wait_for(lambda: detections, 120), "no detections_3d"
    assert detections[0].header.stamp == stamp and detections[0].header.frame_id == "depth_optical"
    if detections[0].detections:  # the tiny model's mask is arbitrary; when it has depth, a point is published too
        assert wait_for(lambda: points, 30)
        assert points[0].header == detections[0].header and 0.9 < points[0].point.z < 1.6
