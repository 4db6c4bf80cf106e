"""The rclpy node as a robot team drives it (issue 27), with the demo model on the demo scene: two objects in one
command on /masks, /detections and /result; RViz markers with depth; ~/enable; the `prompt` parameter and a refused
read-only parameter; /diagnostics. Needs ROS 2 with lens_interfaces built (as test_ros_node.py); skips otherwise
(fails under CI=true) — the same logic is tested without ROS in test_ros_targets.py."""

import json

import numpy as np
import pytest
from conftest import REPO
from ros_helpers import needs_ros, running_node, wait_for

from lens_model.data.refer import decode_segmentation
from lens_model.image_io import load_image
from lens_ros.conversions import image_to_array

pytestmark = needs_ros

DEMO_MODEL = REPO / "assets" / "demo-model"
DEMO_SCENE = REPO / "assets" / "demo-scene.json"
TWO = "the green triangle and the red triangle"
K = np.array([[110.0, 0.0, 63.5], [0.0, 110.0, 63.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def scene():
    spec = json.loads(DEMO_SCENE.read_text())
    rgb = load_image(DEMO_SCENE.parent / spec["image"])
    h, w = rgb.shape[:2]
    gt = {o["expression"]: decode_segmentation(o["segmentation"], h, w) for o in spec["objects"]}
    depth = np.full((h, w), 1.5, np.float32)
    depth[gt["the green triangle"]], depth[gt["the red triangle"]] = 0.8, 0.9
    return rgb, gt, depth


def demo_node(name, **parameters):
    return running_node(DEMO_MODEL, name, max_new_tokens=64, dtype="float32", **parameters)


def iou(a, b):
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def _call(service, request, timeout=120.0):
    return _call_future(service.call_async(request), timeout)


def _call_future(future, timeout=120.0):
    assert wait_for(future.done, timeout), "no answer"
    return future.result()


def _frame(client, rgb, frame_id="camera"):
    from std_msgs.msg import Header

    from lens_ros.messages import array_to_image

    return array_to_image(rgb, "rgb8", Header(stamp=client.get_clock().now().to_msg(), frame_id=frame_id))


def _camera_ready(node, client, rgb):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    camera = client.create_publisher(Image, "/image", qos_profile_sensor_data)
    frame = _frame(client, rgb)
    assert wait_for(lambda: camera.publish(frame) or node.engine.frames.latest() is not None, 30)
    return camera, frame


def test_two_objects_in_one_command_come_back_as_two_targets(scene):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from vision_msgs.msg import Detection2DArray

    from lens_interfaces.msg import SegmentationResult

    rgb, gt, _ = scene
    with demo_node("lens_robot_targets") as (node, client):
        got = {"masks": [], "mask": [], "detections": [], "result": []}
        client.create_subscription(Image, "/masks", got["masks"].append, 10)
        client.create_subscription(Image, "/mask", got["mask"].append, 10)
        client.create_subscription(Detection2DArray, "/detections", got["detections"].append, 10)
        client.create_subscription(SegmentationResult, "/result", got["result"].append, 10)
        _, frame = _camera_ready(node, client, rgb)
        commands = client.create_publisher(String, "/command", 10)
        assert wait_for(lambda: commands.get_subscription_count() > 0, 30)
        commands.publish(String(data=TWO))
        assert wait_for(lambda: all(got.values()), 120)

        labels = image_to_array(got["masks"][0])
        assert got["masks"][0].encoding == "mono8" and got["masks"][0].header == frame.header
        assert iou(labels == 1, gt["the green triangle"]) >= 0.5 and iou(labels == 2, gt["the red triangle"]) >= 0.5
        assert np.array_equal(image_to_array(got["mask"][0]) == 255, labels > 0)
        detections = got["detections"][0].detections
        assert [(d.id, d.results[0].hypothesis.class_id) for d in detections] == [
            ("1", "the green triangle"),
            ("2", "the red triangle"),
        ]
        result = got["result"][0]
        assert result.prompt == TWO and [(t.id, t.prompt) for t in result.targets] == [
            (1, "the green triangle"),
            (2, "the red triangle"),
        ]
        assert np.array_equal(image_to_array(result.label_mask), labels)

        from lens_interfaces.srv import Segment

        service = client.create_client(Segment, "/lens/segment")
        assert service.wait_for_service(timeout_sec=30)
        response = _call(service, Segment.Request(prompt="the green triangle and"))
        assert not response.success and "nothing after 'and'" in response.message  # the node stays up
        two = ["the red triangle", "the blue circle"]
        response = _call(service, Segment.Request(prompt=", ".join(two)))
        assert response.success and [t.prompt for t in response.result.targets] == two
        labels = image_to_array(response.result.label_mask)
        for k, phrase in enumerate(two, start=1):
            assert iou(labels == k, gt[phrase]) >= 0.5, phrase
            assert response.result.targets[k - 1].mask_pixels == int((labels == k).sum())

        # the action: both targets in its result; their text comes as one feedback once the batch is done
        from rclpy.action import ActionClient

        from lens_interfaces.action import Segment as SegmentAction

        action = ActionClient(client, SegmentAction, "/lens/segment_action")
        assert action.wait_for_server(timeout_sec=30)
        feedback = []
        sent = action.send_goal_async(
            SegmentAction.Goal(prompt=TWO), feedback_callback=lambda msg: feedback.append(msg.feedback.reasoning)
        )
        assert wait_for(sent.done, 30) and sent.result().accepted
        answer = _call_future(sent.result().get_result_async()).result
        assert answer.success, answer.message
        assert [(t.id, t.prompt) for t in answer.result.targets] == [(1, "the green triangle"), (2, "the red triangle")]
        labels = image_to_array(answer.result.label_mask)
        assert iou(labels == 1, gt["the green triangle"]) >= 0.5 and iou(labels == 2, gt["the red triangle"]) >= 0.5
        assert wait_for(lambda: feedback, 10)
        assert feedback[-1].splitlines()[0].startswith("[1] the green triangle: ")
        action.destroy()


def test_markers_show_each_target_in_the_depth_frame(scene):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header, String
    from visualization_msgs.msg import Marker, MarkerArray

    from lens_model.overlay import target_colour
    from lens_ros.conversions import stamp_to_seconds

    rgb, _, depth = scene
    with demo_node("lens_robot_markers", depth_enabled=True, depth_qos="reliable", depth_slop_s=0.05) as (node, client):
        markers = []
        client.create_subscription(MarkerArray, "/markers", markers.append, 10)
        camera = client.create_publisher(Image, "/image", qos_profile_sensor_data)
        depth_pub = client.create_publisher(Image, "/depth", 10)
        info_pub = client.create_publisher(CameraInfo, "/camera_info", 10)
        commands = client.create_publisher(String, "/command", 10)
        stamp = client.get_clock().now().to_msg()
        colour = _frame(client, rgb, "color_optical")
        colour.header.stamp = stamp
        depth_msg = Image(
            header=Header(stamp=stamp, frame_id="depth_optical"), height=128, width=128, encoding="32FC1",
            is_bigendian=0, step=512, data=depth.astype("<f4").tobytes(),
        )  # fmt: skip
        info = CameraInfo(
            header=Header(stamp=stamp, frame_id="depth_optical"), height=128, width=128, distortion_model="plumb_bob",
            d=[0.0] * 5, k=K.ravel().tolist(), p=np.hstack([K, np.zeros((3, 1))]).ravel().tolist(),
        )  # fmt: skip

        def received():
            camera.publish(colour)
            depth_pub.publish(depth_msg)
            info_pub.publish(info)
            engine = node.engine
            return engine.frames.latest() is not None and engine.depth.select(stamp_to_seconds(stamp), final=True).ok

        assert wait_for(received, 30)
        assert wait_for(lambda: commands.get_subscription_count() > 0, 30)
        commands.publish(String(data=TWO))
        assert wait_for(lambda: markers, 120), "no markers"
        shown = markers[0].markers
        assert [(m.ns, m.id, m.type) for m in shown] == [
            ("lens_box", 1, Marker.CUBE),
            ("lens_centroid", 1, Marker.SPHERE),
            ("lens_label", 1, Marker.TEXT_VIEW_FACING),
            ("lens_box", 2, Marker.CUBE),
            ("lens_centroid", 2, Marker.SPHERE),
            ("lens_label", 2, Marker.TEXT_VIEW_FACING),
        ]
        for m in shown:
            assert m.header.frame_id == "depth_optical" and m.header.stamp == stamp and m.action == Marker.ADD
            r, g, b = (c / 255 for c in target_colour(m.id))
            assert (m.color.r, m.color.g, m.color.b) == pytest.approx((r, g, b), abs=1e-6)
        assert shown[1].pose.position.z == pytest.approx(0.8, abs=0.03)  # the green triangle's centroid
        assert shown[4].pose.position.z == pytest.approx(0.9, abs=0.03)
        assert shown[2].text.startswith("1: the green triangle ")


def test_enable_the_prompt_parameter_a_refused_parameter_and_diagnostics(scene):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.lifecycle import TransitionCallbackReturn
    from std_msgs.msg import String
    from std_srvs.srv import SetBool

    from lens_interfaces.msg import SegmentationResult
    from lens_interfaces.srv import Segment

    rgb, gt, _ = scene
    with demo_node("lens_robot_control") as (node, client):
        results, diagnostics = [], []
        client.create_subscription(SegmentationResult, "/result", results.append, 10)
        client.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        _camera_ready(node, client, rgb)
        enable = client.create_client(SetBool, "/lens/enable")
        segment = client.create_client(Segment, "/lens/segment")
        parameters = client.create_client(SetParameters, "/lens/set_parameters")
        for service in (enable, segment, parameters):
            assert service.wait_for_service(timeout_sec=30)

        answer = _call(enable, SetBool.Request(data=False))
        assert answer.success and answer.message == "processing disabled: commands answer success=false"
        response = _call(segment, Segment.Request(prompt="the blue circle"))
        assert (response.success, response.message) == (False, "disabled")
        assert _call(enable, SetBool.Request(data=True)).success
        assert _call(segment, Segment.Request(prompt="the blue circle")).success

        def string_parameter(name, value):
            value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
            return SetParameters.Request(parameters=[Parameter(name=name, value=value)])

        (refused,) = _call(parameters, string_parameter("model", "another/model")).results
        assert not refused.successful
        assert refused.reason.startswith("parameter model is read on configure and cannot change")
        assert node.get_parameter("model").value == str(DEMO_MODEL)
        sim_time = Parameter(name="use_sim_time", value=ParameterValue(type=ParameterType.PARAMETER_BOOL))
        (rclpys,) = _call(parameters, SetParameters.Request(parameters=[sim_time])).results
        assert rclpys.successful, rclpys.reason  # rclpy's own parameters are not lens's to refuse
        (accepted,) = _call(parameters, string_parameter("prompt", "the yellow square")).results
        assert accepted.successful
        assert wait_for(lambda: any(r.prompt == "the yellow square" for r in results), 120)
        square = next(r for r in results if r.prompt == "the yellow square")
        assert iou(image_to_array(square.mask) == 255, gt["the yellow square"]) >= 0.5

        # 1 Hz, as diagnostic_updater: six reports from now span five periods (each report's stamp is when its
        # callback ran, late by the executor's load, so one gap alone can be short)
        del diagnostics[:]
        assert wait_for(lambda: len(diagnostics) >= 6, 30)
        stamps = [a.header.stamp.sec + a.header.stamp.nanosec * 1e-9 for a in diagnostics[:6]]
        assert 0.8 <= (stamps[-1] - stamps[0]) / 5 <= 1.2, np.diff(stamps)
        (status,) = diagnostics[-1].status
        values = {kv.key: kv.value for kv in status.values}
        assert status.name == "lens: /lens" and status.level == DiagnosticStatus.OK
        assert values["lifecycle state"] == "active" and values["model"] == str(DEMO_MODEL)
        assert values["last command"] == "the yellow square" and float(values["last LENS latency s"]) > 0

        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        answer = _call(enable, SetBool.Request(data=True))
        assert not answer.success and answer.message.startswith("node is inactive")
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS  # the refusal left the node working
        commands = client.create_publisher(String, "/command", 10)
        assert wait_for(lambda: commands.get_subscription_count() > 0, 30)
        assert _call(enable, SetBool.Request(data=True)).message == "processing already enabled"


def test_a_model_that_fails_to_load_is_an_error_on_diagnostics(tmp_path):
    import threading

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from lens_ros.node import LensNode

    rclpy.init()
    overrides = {"model": str(tmp_path / "missing"), "audio_enabled": False, "device": "cpu"}
    node = LensNode(parameter_overrides=[Parameter(name, value=value) for name, value in overrides.items()])
    client = rclpy.create_node("lens_robot_diagnostics")
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    executor.add_node(client)
    got = []
    client.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert wait_for(lambda: any(a.status[0].level == DiagnosticStatus.ERROR for a in got), 30)
        status = next(a.status[0] for a in got if a.status[0].level == DiagnosticStatus.ERROR)
        assert status.message.startswith("configure failed, no model loaded: ") and "missing" in status.message
        assert {kv.key: kv.value for kv in status.values}["lifecycle state"] == "unconfigured"
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown()
