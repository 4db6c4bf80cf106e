"""The rclpy node tracking with a tiny LENS model (its SAM2 memory weights from make_tiny): after a command, every new
camera frame yields a tracked mask and detections with that frame's header, and tracking_state says so. Needs ROS 2
with lens_interfaces built (as test_ros_node.py); skips otherwise, fails under CI=true (the logic is tested without
ROS in test_ros_tracking.py)."""

import json

import numpy as np
import pytest
from conftest import SAMPLE_PHOTO
from PIL import Image as PILImage
from ros_helpers import needs_ros, running_node, wait_for

pytestmark = needs_ros

PHOTO = np.asarray(PILImage.open(SAMPLE_PHOTO).convert("RGB"))


def frame(i: int) -> np.ndarray:
    return np.ascontiguousarray(PHOTO[50 + 4 * i : 170 + 4 * i, 30 + 8 * i : 190 + 8 * i])


@pytest.fixture
def ros(tiny_dir):
    with running_node(tiny_dir, "lens_tracking_client", tracking="on", lost_score_threshold=-100.0) as started:
        yield started


def test_frames_after_a_command_are_tracked_with_their_headers(ros):
    from builtin_interfaces.msg import Time
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from vision_msgs.msg import Detection2DArray

    from lens_ros.messages import array_to_image

    node, client = ros
    assert node.engine.tracking is not None
    got = {"mask": [], "detections": [], "reasoning": [], "state": []}
    client.create_subscription(Image, "/mask", got["mask"].append, 50)
    client.create_subscription(Detection2DArray, "/detections", got["detections"].append, 50)
    client.create_subscription(String, "/reasoning", got["reasoning"].append, 50)
    client.create_subscription(String, "/tracking_state", lambda m: got["state"].append(json.loads(m.data)), 50)
    camera = client.create_publisher(Image, "/image", qos_profile_sensor_data)
    commands = client.create_publisher(String, "/command", 10)
    now = client.get_clock().now().nanoseconds // 10**9

    def image(i):
        return array_to_image(frame(i), "rgb8", Header(stamp=Time(sec=now + i), frame_id="cam"))

    first = image(0)
    assert wait_for(lambda: camera.publish(first) or node.engine.frames.latest() is not None, 30)
    assert wait_for(lambda: commands.get_subscription_count() > 0, 30)
    commands.publish(String(data="the red cup"))
    assert wait_for(lambda: got["reasoning"] and node.engine.tracking.command == "the red cup", 120)
    assert wait_for(lambda: any(s["state"] == "tracking" for s in got["state"]), 30)

    worker = node.engine.tracking
    for i in (1, 2, 3):
        msg = image(i)
        camera.publish(msg)
        assert wait_for(lambda i=i: worker.frames_tracked + worker.frames_dropped >= i, 60), i
    assert wait_for(lambda: len(got["mask"]) == 1 + worker.frames_tracked, 30)
    tracked_secs = [m.header.stamp.sec - now for m in got["mask"][1:]]
    assert worker.frames_tracked >= 1 and tracked_secs == sorted(tracked_secs) and set(tracked_secs) <= {1, 2, 3}
    assert all(m.header.frame_id == "cam" and (m.height, m.width) == (120, 160) for m in got["mask"])
    assert wait_for(lambda: len(got["detections"]) == len(got["mask"]), 30)
    assert [d.header for d in got["detections"]] == [m.header for m in got["mask"]]
    assert len(got["reasoning"]) == 1  # tracked frames publish no text
    state = got["state"][-1]
    assert state["state"] == "tracking" and state["prompt"] == "the red cup"
