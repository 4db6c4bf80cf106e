"""The rclpy node itself, with a tiny LENS model: lifecycle, /lens/segment, the command topic and the outputs.
Needs a sourced ROS 2 (Humble or Jazzy) environment with lens_interfaces built (see the README); skips
otherwise — everything the node does is also tested without ROS in test_ros_engine.py."""

import numpy as np
import pytest
from ros_helpers import needs_ros, running_node, wait_for

pytestmark = needs_ros

RGB = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.fixture
def ros(tiny_dir):
    with running_node(tiny_dir, "lens_test_client") as started:
        yield started


def _image(client, rgb=RGB, frame="camera", encoding="rgb8"):
    from std_msgs.msg import Header

    from lens_ros.messages import array_to_image

    return array_to_image(rgb, encoding, Header(stamp=client.get_clock().now().to_msg(), frame_id=frame))


def _call(client, service, request, timeout=120.0):
    future = service.call_async(request)
    assert wait_for(future.done, timeout), "no answer"
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
    assert wait_for(lambda: camera.publish(frame) or node.engine.frames.latest() is not None, 30)

    response = _call(client, service, Segment.Request(prompt="the red cup"))
    assert response.success, response.message
    assert response.result.header.frame_id == "front" and response.result.mask.encoding == "mono8"
    assert (response.result.mask.height, response.result.mask.width) == (48, 64)
    assert wait_for(lambda: masks, 30) and masks[0].header == response.result.header

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
    assert wait_for(lambda: camera.publish(frame) or node.engine.frames.latest() is not None, 30)
    assert wait_for(lambda: commands.get_subscription_count() > 0, 30)
    commands.publish(String(data="the red cup"))
    assert wait_for(lambda: all(got.values()), 120)
    assert got["mask"][0].header == frame.header and got["detections"][0].header == frame.header


def test_an_inactive_node_answers_the_service_and_survives_lifecycle_cycles_with_calls_in_flight(ros):
    import threading

    from rclpy.lifecycle import TransitionCallbackReturn

    from lens_interfaces.srv import Segment

    node, client = ros
    service = client.create_client(Segment, "/lens/segment")
    assert service.wait_for_service(timeout_sec=30)
    own = Segment.Request(prompt="the cup", has_image=True, image=_image(client))

    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    response = _call(client, service, own, timeout=10)  # the service still exists and answers at once
    assert not response.success and response.message.startswith("node is inactive: activate it with `ros2 lifecycle")
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert _call(client, service, own).success

    stop, answers = threading.Event(), []

    def calls():
        while not stop.is_set():
            answers.append(_call(client, service, own, timeout=60))

    caller = threading.Thread(target=calls, daemon=True)
    caller.start()
    for _ in range(30):  # each transition runs here while the executor spins on its own thread
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    stop.set()
    caller.join(60)
    assert answers and all(a.success or a.message.startswith(("node is inactive", "the node")) for a in answers)
    assert _call(client, service, own).success


def test_the_spin_loop_survives_action_servers_destroyed_under_the_executor():
    """rclpy's race (issue 12): an action server destroyed while a MultiThreadedExecutor builds its wait set raises
    out of executor.spin() (InvalidHandle, or RCLError "action server pointer is invalid"). A plain spin() dies of
    it within a few hundred create/destroy cycles; lens_ros.lifecycle.spin, which main() uses, must go on."""
    import threading
    import time

    import rclpy
    from rclpy.action import ActionServer
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from lens_interfaces.action import Segment as SegmentAction
    from lens_ros.lifecycle import SpinGuard, spin

    class Log(list):
        def warning(self, text):
            self.append(text)

        def error(self, text):
            self.append(text)

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("lens_spin_race", context=context)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    log, ended = Log(), []
    guard = SpinGuard(max_errors=100_000, window_s=1.0)  # the race here is far more frequent than in the node
    spinner = threading.Thread(
        target=lambda: ended.append(spin(executor, log, stop_on=(ExternalShutdownException,), guard=guard)),
        daemon=True,
    )
    spinner.start()
    deadline, cycles = time.monotonic() + 30, 0
    try:
        while time.monotonic() < deadline and spinner.is_alive() and (len(log) < 5 or cycles < 200):
            server = ActionServer(node, SegmentAction, "race", lambda goal: SegmentAction.Result())
            time.sleep(0.002)
            server.destroy()
            cycles += 1
        assert spinner.is_alive(), f"spin ended after {cycles} cycles: {log[-1:]}"
        assert log and all(line.startswith("executor: ") and line.endswith("; spinning on") for line in log)
    finally:
        executor.shutdown()
        spinner.join(10)
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert ended == [len(log)]  # spin returned on shutdown, having survived every error
