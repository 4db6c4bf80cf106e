"""The rclpy node's 3D target: a colour + depth + camera_info triple published on the node's topics comes back as
`target_point` and `detections_3d`. Needs a sourced ROS 2 (Humble or Jazzy) with lens_interfaces built; skips
otherwise — the same path is tested without ROS in test_ros_depth.py (engine, messages, bad input)."""

import threading
import time

import numpy as np
import pytest
from depth_scenes import render, rgb_of
from test_ros_node import MISSING

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs ROS 2 with lens_interfaces built ({', '.join(MISSING)} "
    "not importable): source /opt/ros/<distro>/setup.bash and the "
    "workspace's install/setup.bash",
)

K4 = np.array([[131.25, 0.0, 79.5], [0.0, 131.25, 59.5], [0.0, 0.0, 1.0]])


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def ros(tiny_dir):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from lens_ros.node import LensNode

    rclpy.init()
    node = LensNode(
        parameter_overrides=[
            Parameter("model", value=str(tiny_dir)),
            Parameter("device", value="cpu"),
            Parameter("audio_enabled", value=False),
            Parameter("max_new_tokens", value=8),
            Parameter("max_frame_age_s", value=30.0),
            Parameter("depth_enabled", value=True),
            Parameter("depth_qos", value="reliable"),
            Parameter("depth_slop_s", value=0.05),
        ]
    )
    client = rclpy.create_node("lens_depth_test_client")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(client)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node, client
    finally:
        executor.shutdown()
        node._stop_io()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown()


def test_a_colour_depth_camera_info_triple_gives_target_point_and_detections_3d(ros):
    from geometry_msgs.msg import PointStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header, String
    from vision_msgs.msg import Detection3DArray

    from lens_ros.conversions import array_to_image, stamp_to_seconds

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

    assert _wait(received, 30)
    assert _wait(lambda: commands.get_subscription_count() > 0, 30)
    commands.publish(String(data="the red box"))
    assert _wait(lambda: detections, 120), "no detections_3d"
    assert detections[0].header.stamp == stamp and detections[0].header.frame_id == "depth_optical"
    if detections[0].detections:  # the tiny model's mask is arbitrary; when it has depth, a point is published too
        assert _wait(lambda: points, 30)
        assert points[0].header == detections[0].header and 0.9 < points[0].point.z < 1.6
