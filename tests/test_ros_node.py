"""The rclpy node itself, with a tiny LENS model: lifecycle, /lens/segment, the command topic and the outputs.
Needs a sourced ROS 2 (Humble or Jazzy) environment with lens_interfaces built (see the README); skips
otherwise — everything the node does is also tested without ROS in test_ros_engine.py."""

import importlib
import importlib.util
import threading
import time

import numpy as np
import pytest


def _missing() -> list[str]:
    missing = [m for m in ("rclpy", "sensor_msgs", "vision_msgs") if importlib.util.find_spec(m) is None]
    try:  # the source folder lens_interfaces/ imports as an empty namespace package: ask for the generated class
        _ = importlib.import_module("lens_interfaces.srv").Segment
    except (ImportError, AttributeError):
        missing.append("lens_interfaces")
    return missing


MISSING = _missing()
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs ROS 2 with lens_interfaces built ({', '.join(MISSING)} "
    "not importable): source /opt/ros/<distro>/setup.bash and the "
    "workspace's install/setup.bash",
)

RGB = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


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
        ]
    )
    client = rclpy.create_node("lens_test_client")
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
        node.stop_io()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown()


def _image(client, rgb=RGB, frame="camera", encoding="rgb8"):
    from std_msgs.msg import Header

    from lens_ros.conversions import array_to_image

    return array_to_image(rgb, encoding, Header(stamp=client.get_clock().now().to_msg(), frame_id=frame))


def _call(client, service, request, timeout=120.0):
    future = service.call_async(request)
    assert _wait(future.done, timeout), "no answer"
    return future.result()


def test_parameters_are_declared_with_descriptions_and_ranges(ros):
    node, _ = ros
    from lens_ros.params import PARAMETERS

    for spec in PARAMETERS:
        assert node.has_parameter(spec.name)
    [desc] = node.describe_parameters(["queue_size"])
    assert desc.description and desc.integer_range[0].from_value == 1 and desc.integer_range[0].to_value == 100


def test_service_segments_the_latest_frame_and_the_node_survives_bad_input(ros):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from lens_interfaces.srv import Segment

    node, client = ros
    service = client.create_client(Segment, "/lens/segment")
    assert service.wait_for_service(timeout_sec=30)

    response = _call(client, service, Segment.Request(prompt="the red cup"))
    assert not response.success and "no image has been received yet" in response.message

    masks = []
    client.create_subscription(Image, "/mask", masks.append, 10)
    camera = client.create_publisher(Image, "/image", qos_profile_sensor_data)
    frame = _image(client, frame="front")
    assert _wait(lambda: camera.publish(frame) or node.engine.frames.latest() is not None, 30)

    response = _call(client, service, Segment.Request(prompt="the red cup"))
    assert response.success, response.message
    assert response.result.header.frame_id == "front" and response.result.mask.encoding == "mono8"
    assert (response.result.mask.height, response.result.mask.width) == (48, 64)
    assert _wait(lambda: masks, 30) and masks[0].header == response.result.header

    bad = _image(client)
    bad.encoding = "yuv422"
    response = _call(client, service, Segment.Request(prompt="the cup", has_image=True, image=bad))
    assert not response.success and "unsupported image encoding 'yuv422'" in response.message
    response = _call(client, service, Segment.Request(prompt="  "))
    assert not response.success and "empty" in response.message
    assert _call(client, service, Segment.Request(prompt="the cup", has_image=True, image=_image(client))).success


def test_command_topic_publishes_mask_detections_and_reasoning(ros):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from vision_msgs.msg import Detection2DArray

    node, client = ros
    got = {"mask": [], "detections": [], "reasoning": []}
    client.create_subscription(Image, "/mask", got["mask"].append, 10)
    client.create_subscription(Detection2DArray, "/detections", got["detections"].append, 10)
    client.create_subscription(String, "/reasoning", got["reasoning"].append, 10)
    camera = client.create_publisher(Image, "/image", qos_profile_sensor_data)
    commands = client.create_publisher(String, "/command", 10)
    frame = _image(client, frame="wrist")
    assert _wait(lambda: camera.publish(frame) or node.engine.frames.latest() is not None, 30)
    assert _wait(lambda: commands.get_subscription_count() > 0, 30)
    commands.publish(String(data="the red cup"))
    assert _wait(lambda: all(got.values()), 120)
    assert got["mask"][0].header == frame.header and got["detections"][0].header == frame.header
