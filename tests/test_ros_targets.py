"""What a robot team expects from the node, without rclpy (lens_ros.engine, .fields, .messages, .diagnostics, .params
with rosbags' message classes): several objects per command with the demo model (detections, label image, result,
3D targets, RViz markers), bad commands, ~/enable, runtime parameters and the health report."""

import json

import numpy as np
import pytest
from conftest import REPO
from ros_helpers import cdr, header, image_msg, lens_test_typestore, wait_for
from test_ros_depth import camera_info, depth_msg

from lens_model.data.refer import decode_segmentation
from lens_model.geometry.target3d import PinholeCamera, TargetOptions, depth_to_metres, estimate_target
from lens_model.image_io import load_image
from lens_model.overlay import target_colour
from lens_ros.conversions import image_to_array
from lens_ros.diagnostics import ERROR, OK, WARN, DiagnosticsReporter, Health, TrackingCounts, diagnostic_status
from lens_ros.engine import DISABLED, SegmentationEngine
from lens_ros.fields import MARKER_CUBE, MARKER_DELETEALL, MARKER_SPHERE, MARKER_TEXT, MeasuredTarget, marker_fields
from lens_ros.messages import RESULT_TYPE, fill_diagnostics
from lens_ros.params import NodeSettings, runtime_change_refusal

DEMO_MODEL = REPO / "assets" / "demo-model"
DEMO_SCENE = REPO / "assets" / "demo-scene.json"
TWO = "the green triangle and the red triangle"
K = np.array([[110.0, 0.0, 63.5], [0.0, 110.0, 63.5], [0.0, 0.0, 1.0]])  # the 128 x 128 demo scene's camera
DEPTHS = {"the green triangle": 0.8, "the red triangle": 0.9}  # each object at its own distance; the rest 1.5 m


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class Log:
    def __init__(self):
        self.lines = []

    def info(self, text, **_):
        self.lines.append(("info", str(text)))

    def warning(self, text, **_):
        self.lines.append(("warning", str(text)))

    def error(self, text, **_):
        self.lines.append(("error", str(text)))


@pytest.fixture(scope="module")
def store():
    return lens_test_typestore()


@pytest.fixture(scope="module")
def scene():
    spec = json.loads(DEMO_SCENE.read_text())
    rgb = load_image(DEMO_SCENE.parent / spec["image"])
    h, w = rgb.shape[:2]
    gt = {o["expression"]: decode_segmentation(o["segmentation"], h, w) for o in spec["objects"]}
    depth = np.full((h, w), 1.5, np.float32)
    for expression, metres in DEPTHS.items():
        depth[gt[expression]] = metres
    return rgb, gt, depth


@pytest.fixture(scope="module")
def demo_pipe():
    from lens_model.inference.pipeline import LensPipeline

    return LensPipeline.from_pretrained(str(DEMO_MODEL), device="cpu", dtype="float32")


@pytest.fixture
def make_engine(store, demo_pipe):
    engines = []

    def make(**values):
        s = NodeSettings.from_values(
            {"audio_enabled": False, "service_timeout_s": 120.0, "model": str(DEMO_MODEL), **values}
        )
        published, log = [], Log()
        engine = SegmentationEngine(demo_pipe, s, publish=published.append, log=log, clock=Clock(), types=store.types)
        engine.published, engine.log_lines = published, log.lines
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def iou(a, b):
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def test_two_objects_in_one_command_give_one_detection_and_label_each(make_engine, store, scene):
    rgb, gt, _ = scene
    engine = make_engine(publish_overlay=True)
    engine.on_image(image_msg(store, rgb, sec=100, frame="head"))
    outcome = engine.submit(TWO).wait(120)
    assert outcome.success, outcome.message
    m = outcome.messages

    detections = cdr(store, m.detections, "vision_msgs/msg/Detection2DArray").detections
    assert [(d.id, d.results[0].hypothesis.class_id) for d in detections] == [
        ("1", "the green triangle"),
        ("2", "the red triangle"),
    ]
    labels = image_to_array(cdr(store, m.labels, "sensor_msgs/msg/Image"))
    assert m.labels.encoding == "mono8" and (m.labels.header.stamp.sec, m.labels.header.frame_id) == (100, "head")
    assert iou(labels == 1, gt["the green triangle"]) >= 0.5 and iou(labels == 2, gt["the red triangle"]) >= 0.5
    assert iou(labels == 1, gt["the red triangle"]) < 0.2
    union = image_to_array(m.mask)
    assert np.array_equal(union == 255, labels > 0)  # `mask` stays the union (mono8)
    assert m.reasoning.data.splitlines()[0].startswith("[1] the green triangle: ")
    assert m.reasoning.data.splitlines()[1].startswith("[2] the red triangle: ")

    msg = cdr(store, outcome.result_msg, RESULT_TYPE)
    assert msg.prompt == TWO and [t.id for t in msg.targets] == [1, 2]
    assert [t.prompt for t in msg.targets] == ["the green triangle", "the red triangle"]
    assert [t.detection.id for t in msg.targets] == ["1", "2"]
    assert np.array_equal(image_to_array(msg.label_mask), labels)
    for t, target in zip(msg.targets, outcome.command.targets):
        assert t.mask_pixels == int(target.mask.sum()) and t.reasoning == target.text
        assert t.score == pytest.approx(target.score, abs=1e-6)
    # the single-object fields are the first target's
    assert msg.detection.results[0].hypothesis.class_id == "the green triangle"
    assert msg.reasoning == msg.targets[0].reasoning and msg.score == msg.targets[0].score
    overlay = image_to_array(m.overlay)  # each target tinted in its own colour
    for k, phrase in ((1, "the green triangle"), (2, "the red triangle")):
        inside = overlay[gt[phrase] & (labels == k)].astype(float).mean(0)
        colour = np.asarray(target_colour(k), float)
        others = np.asarray(target_colour(3 - k), float)
        assert np.linalg.norm(inside - rgb[gt[phrase]].mean(0) * 0.55 - 0.45 * colour) < np.linalg.norm(
            inside - rgb[gt[phrase]].mean(0) * 0.55 - 0.45 * others
        )


def test_a_single_phrase_is_one_target_as_before(make_engine, store, scene, demo_pipe):
    rgb, gt, _ = scene
    engine = make_engine()
    engine.on_image(image_msg(store, rgb, sec=100))
    outcome = engine.submit("the blue circle").wait(120)
    alone = demo_pipe(rgb, "the blue circle")
    assert outcome.success and len(outcome.command.targets) == 1 and outcome.result.text == alone.text
    assert outcome.messages.reasoning.data == alone.text
    assert np.array_equal(image_to_array(outcome.messages.mask) == 255, alone.mask)
    assert np.array_equal(image_to_array(outcome.messages.labels), alone.mask.astype(np.uint8))
    off = make_engine(multi_target=False)
    off.on_image(image_msg(store, rgb, sec=100))
    whole = off.submit(TWO).wait(120)
    assert whole.success and [t.prompt for t in whole.command.targets] == [TWO]


@pytest.mark.parametrize(
    "command,reason",
    [
        ("the cup and", "nothing after 'and' at the end of 'the cup and'"),
        (", ".join(f"the object {i}" for i in range(255)), "255 targets in one command; at most 254"),
    ],
    ids=["empty phrase", "too many"],
)
def test_bad_commands_are_answered_with_the_reason_and_the_engine_goes_on(make_engine, store, scene, command, reason):
    rgb, _, _ = scene
    engine = make_engine()
    engine.on_image(image_msg(store, rgb, sec=100))
    outcome = engine.submit(command, source="service").wait(60)
    assert not outcome.success and reason in outcome.message and engine.published == []
    assert ("error", f"service {command!r} failed: {outcome.message}") in engine.log_lines
    assert engine.submit("the blue circle").wait(120).success


def test_each_object_gets_its_3d_target_and_markers_in_its_colour(make_engine, store, scene):
    rgb, gt, depth = scene
    engine = make_engine(depth_enabled=True, depth_slop_s=0.05)
    engine.on_camera_info(camera_info(store, k=K, width=128, height=128, frame="depth_optical"))
    # the frames' stamp is not the engine's clock (100.0 s): the 3D outputs must carry the source stamp
    stamp = dict(sec=100, nanosec=250_000_000)
    engine.on_depth(depth_msg(store, depth, encoding="32FC1", frame="depth_optical", **stamp))
    engine.on_image(image_msg(store, rgb, frame="color_optical", **stamp))
    outcome = engine.submit(TWO).wait(120)
    assert outcome.success, outcome.message
    camera = PinholeCamera(128, 128, K)
    expected = [
        estimate_target(t.mask, depth_to_metres(depth), camera, TargetOptions(erosion_px=2))
        for t in outcome.command.targets
    ]
    assert all(e.ok for e in expected) and len(outcome.targets_3d) == 2
    for target, want, metres in zip(outcome.targets_3d, expected, DEPTHS.values()):
        assert np.allclose(target.centroid, want.centroid) and target.centroid[2] == pytest.approx(metres, abs=0.02)

    target_msgs = outcome.messages.target
    d3 = cdr(store, target_msgs.detections, "vision_msgs/msg/Detection3DArray")
    assert [(d.id, d.results[0].hypothesis.class_id) for d in d3.detections] == [
        ("1", "the green triangle"),
        ("2", "the red triangle"),
    ]
    for d, want in zip(d3.detections, expected):
        c = d.bbox.center.position
        assert np.allclose([c.x, c.y, c.z], want.box_center)
    assert (d3.header.stamp.sec, d3.header.stamp.nanosec, d3.header.frame_id) == (100, 250_000_000, "depth_optical")
    point = target_msgs.point.point  # target_point: the first target's centroid
    assert np.allclose([point.x, point.y, point.z], expected[0].centroid)

    markers = cdr(store, target_msgs.markers, "visualization_msgs/msg/MarkerArray").markers
    assert [(mk.ns, mk.id, mk.type) for mk in markers] == [
        ("lens_box", 1, MARKER_CUBE),
        ("lens_centroid", 1, MARKER_SPHERE),
        ("lens_label", 1, MARKER_TEXT),
        ("lens_box", 2, MARKER_CUBE),
        ("lens_centroid", 2, MARKER_SPHERE),
        ("lens_label", 2, MARKER_TEXT),
    ]  # the first publish: nothing to delete
    for mk in markers:
        stamped = (mk.header.stamp.sec, mk.header.stamp.nanosec, mk.header.frame_id)
        assert stamped == (100, 250_000_000, "depth_optical")  # depth frame, source stamp
        want = expected[mk.id - 1]
        r, g, b = (c / 255 for c in target_colour(mk.id))
        assert (mk.color.r, mk.color.g, mk.color.b) == pytest.approx((r, g, b))
        p, s = mk.pose.position, mk.scale
        if mk.type == MARKER_CUBE:
            assert np.allclose([p.x, p.y, p.z], want.box_center) and np.allclose([s.x, s.y, s.z], want.box_size)
        elif mk.type == MARKER_SPHERE:
            assert np.allclose([p.x, p.y, p.z], want.centroid)
        else:
            phrase = outcome.command.targets[mk.id - 1].prompt
            score = outcome.command.targets[mk.id - 1].score
            assert mk.text == f"{mk.id}: {phrase} {score:.2f}"
            assert p.y < want.box_center[1] - want.box_size[1] / 2  # above the box (y is down in optical frames)

    # the same targets again: no DELETEALL; other targets: DELETEALL first, then theirs
    engine.on_image(image_msg(store, rgb, frame="color_optical", **stamp))
    again = engine.submit(TWO).wait(120).messages.target.markers.markers
    assert [mk.action for mk in again] == [0] * 6
    other = engine.submit("the red triangle").wait(120).messages.target.markers.markers
    assert other[0].action == MARKER_DELETEALL and [(mk.ns, mk.id) for mk in other[1:]] == [
        ("lens_box", 1),
        ("lens_centroid", 1),
        ("lens_label", 1),
    ]
    assert other[1].pose.position.z == pytest.approx(DEPTHS["the red triangle"], abs=0.05)


UNSURE = "the purple square and the green triangle"  # the demo model never learnt "purple": not confident


@pytest.mark.parametrize("publish_unconfident", [False, True])
def test_each_target_is_judged_alone_and_an_unconfident_one_is_withheld(make_engine, store, scene, publish_unconfident):
    """Default thresholds: target 1 names an object that is not there (not confident), target 2 is right. Target 1
    gets no detection, 3D detection, marker, target point (it is the first) or cloud points unless
    publish_unconfident; target 2 is published either way; the masks, the result and its targets keep both, and
    the result's single-object confident/reason are the first target's."""
    rgb, gt, depth = scene
    engine = make_engine(
        depth_enabled=True, depth_slop_s=0.05, publish_target_cloud=True, publish_unconfident=publish_unconfident
    )
    engine.on_camera_info(camera_info(store, k=K, width=128, height=128, frame="depth_optical"))
    engine.on_depth(depth_msg(store, depth, encoding="32FC1", frame="depth_optical", sec=100))
    engine.on_image(image_msg(store, rgb, frame="color_optical", sec=100))
    outcome = engine.submit(UNSURE).wait(120)
    assert outcome.success, outcome.message
    unsure, sure = outcome.command.targets
    assert not unsure.confident and "'purple'" in unsure.reason and sure.confident

    msg = cdr(store, outcome.result_msg, RESULT_TYPE)
    assert [(t.id, t.confident, t.reason) for t in msg.targets] == [(1, False, unsure.reason), (2, True, "")]
    assert (msg.confident, msg.reason) == (False, unsure.reason)  # the first target's, like has_box ...
    assert msg.has_3d and all(t.has_3d for t in msg.targets)  # both measured, and reported
    labels = image_to_array(cdr(store, outcome.messages.labels, "sensor_msgs/msg/Image"))
    assert np.array_equal(labels == 1, unsure.mask) and iou(labels == 2, gt["the green triangle"]) >= 0.5
    assert np.array_equal(image_to_array(outcome.messages.mask) == 255, labels > 0)

    published = [1, 2] if publish_unconfident else [2]
    m = outcome.messages
    assert [d.id for d in cdr(store, m.detections, "vision_msgs/msg/Detection2DArray").detections] == [
        str(k) for k in published
    ]
    d3 = cdr(store, m.target.detections, "vision_msgs/msg/Detection3DArray").detections
    assert [d.id for d in d3] == [str(k) for k in published]
    markers = cdr(store, m.target.markers, "visualization_msgs/msg/MarkerArray").markers
    assert sorted({mk.id for mk in markers}) == published and all(mk.action == 0 for mk in markers)
    first = outcome.targets_3d[0]
    if publish_unconfident:
        assert np.allclose([m.target.point.point.x, m.target.point.point.y, m.target.point.point.z], first.centroid)
    else:
        assert m.target.point is None  # target_point is the first target's: withheld
    assert m.target.cloud.width == sum(outcome.targets_3d[k - 1].num_points for k in published)
    warnings = [line for level, line in engine.log_lines if level == "warning" and "not confident" in line]
    assert len(warnings) == 1 and "target 1 'the purple square'" in warnings[0]
    assert ("withheld" in warnings[0]) is not publish_unconfident


def test_a_target_without_depth_has_no_markers_and_says_why(store):
    mask, camera = np.pad(np.ones((10, 10), bool), 7), PinholeCamera(24, 24, K / 5)
    ok = estimate_target(mask, np.full((24, 24), 1.0, np.float32), camera)
    holes = estimate_target(mask, np.full((24, 24), np.nan, np.float32), camera)
    assert ok.ok and not holes.ok
    hdr = header(store)
    measured = [MeasuredTarget(1, "a", 0.5, holes), MeasuredTarget(2, "b", 0.7, ok)]
    markers = marker_fields(measured, hdr)
    assert [(m.ns, m.id) for m in markers] == [("lens_box", 2), ("lens_centroid", 2), ("lens_label", 2)]
    assert markers[2].text == "2: b 0.70"
    assert [m.action for m in marker_fields(measured, hdr, delete_all=True)][:1] == [MARKER_DELETEALL]


def test_enable_false_pauses_processing_and_true_resumes(make_engine, store, scene):
    rgb, _, _ = scene
    engine = make_engine()
    engine.on_image(image_msg(store, rgb, sec=100))
    assert engine.set_enabled(False) == "processing disabled: commands answer success=false"
    outcome = engine.submit("the blue circle", source="service").wait(5)
    assert (outcome.success, outcome.message) == (False, DISABLED) == (False, "disabled")
    assert engine.published == [] and not engine.health(model="m", device="cpu", lifecycle="active").enabled
    assert engine.set_enabled(False) == "processing already disabled"
    assert engine.set_enabled(True) == "processing enabled"
    assert engine.submit("the blue circle").wait(120).success


def test_the_prompt_parameter_runs_as_a_command_on_the_first_frame(make_engine, store, scene):
    rgb, gt, _ = scene
    engine = make_engine()
    engine.set_prompt(TWO)  # no frame yet: it waits for one
    assert engine.published == []
    engine.on_image(image_msg(store, rgb, sec=100))
    assert wait_for(lambda: engine.published, 120)
    (outcome,) = engine.published
    assert outcome.source == "prompt" and outcome.prompt == TWO and len(outcome.command.targets) == 2
    engine.set_prompt("the blue circle")  # a frame is there: at once
    assert wait_for(lambda: len(engine.published) == 2, 120)
    assert engine.published[1].prompt == "the blue circle"


def test_runtime_parameter_changes_and_refusals():
    assert runtime_change_refusal("prompt", "the red cup", configured=True) is None
    assert runtime_change_refusal("max_rate_hz", 5.0, configured=True) is None
    assert runtime_change_refusal("multi_target", False, configured=True) is None
    refusal = runtime_change_refusal("model", "other/model", configured=True)
    assert refusal.startswith("parameter model is read on configure and cannot change while the node is configured")
    assert "only max_rate_hz, multi_target, prompt change" in refusal
    assert runtime_change_refusal("model", "other/model", configured=False) is None  # read on the next configure
    assert runtime_change_refusal("max_rate_hz", -1.0, configured=True).startswith("parameter max_rate_hz must lie")
    assert runtime_change_refusal("nope", 1, configured=False) == "unknown parameter nope"


# --- health ---


def _health(**values):
    return Health(**{"model": "assets/demo-model", "device": "cpu", "lifecycle": "active", **values})


def test_diagnostics_levels():
    assert diagnostic_status(_health(), "lens: /lens").level == OK
    failed = diagnostic_status(_health(last_ok=False, last_error="no image has been received yet"), "n")
    assert failed.level == WARN and failed.message == "the last command failed: no image has been received yet"
    broken = diagnostic_status(_health(lifecycle="unconfigured", model_error="no such model"), "n")
    assert broken.level == ERROR and broken.message == "configure failed, no model loaded: no such model"
    assert ("model error", "no such model") in broken.values

    reporter = DiagnosticsReporter("lens: /lens")
    tracking = TrackingCounts("tracking", tracked=10, dropped=0)
    assert reporter.report(_health(tracking=tracking), now=0.0).level == OK  # the first report: no rate yet
    half = reporter.report(_health(tracking=TrackingCounts("tracking", tracked=20, dropped=10)), now=1.0)
    assert half.level == OK and ("tracking rate Hz", "10.00") in half.values  # 10 of 20 dropped: not more than half
    assert ("dropped fraction (last period)", "0.50") in half.values
    worse = reporter.report(_health(tracking=TrackingCounts("tracking", tracked=24, dropped=21)), now=3.0)
    assert worse.level == WARN and worse.message == "tracking dropped 73% of the camera frames"
    assert ("tracking rate Hz", "2.00") in worse.values and ("frames dropped", "21") in worse.values


def test_diagnostics_report_what_the_engine_did(make_engine, store, scene):
    rgb, _, _ = scene
    engine = make_engine(depth_enabled=True, depth_slop_s=0.01)
    engine.on_image(image_msg(store, rgb, sec=100))
    outcome = engine.submit("the blue circle").wait(120)  # no depth image: a pairing failure, the 2D result stands
    assert outcome.success and not outcome.target.ok
    status = diagnostic_status(engine.health(model="m", device="cpu", lifecycle="active", whisper="off"), "lens")
    values = dict(status.values)
    assert status.level == OK and values["commands processed"] == "1" and values["depth pairing failures"] == "1"
    assert values["last command"] == "the blue circle" and values["queue depth"] == "0"
    timings = outcome.result.timings
    assert values["last LENS latency s"] == f"{timings['total']:.3f}"
    assert values["stage generate s"] == f"{timings['generate']:.3f}"
    engine.submit("the cup and").wait(30)
    status = diagnostic_status(engine.health(model="m", device="cpu", lifecycle="active"), "lens")
    assert status.level == WARN and "nothing after 'and'" in status.message
    array = fill_diagnostics([status], header(store).stamp, store.types)
    msg = cdr(store, array, "diagnostic_msgs/msg/DiagnosticArray")
    (s,) = msg.status
    assert s.level == WARN and s.name == "lens" and s.hardware_id == "cpu"
    assert {kv.key: kv.value for kv in s.values}["commands failed"] == "1"
