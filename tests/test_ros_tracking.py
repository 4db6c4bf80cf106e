"""Tracking in the node, without rclpy: lens_ros.engine with a tiny LENS model and its SAM2 memory weights (written by
make_tiny) follows the last result on every new camera frame (lens_ros.tracking_worker). Frames are cut from the
sample photo with the crop moving; everything the state machine decides is driven by the real tracker's outputs."""

import json
import shutil
import threading
import time

import numpy as np
import pytest
from conftest import moving_crop
from PIL import Image
from ros_helpers import image_msg, lens_test_typestore

from lens_ros.engine import SegmentationEngine
from lens_ros.params import NodeSettings
from lens_ros.tracking_worker import load_tracker

CLIP_HW = (120, 160)


def frame(i: int, hw=CLIP_HW) -> np.ndarray:
    return moving_crop(i, hw, origin=(50, 30), step=(4, 8))


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class Log:
    """A node logger that keeps its lines."""

    def __init__(self):
        self.lines = []

    def _add(self, level, text):
        self.lines.append((level, str(text)))

    def info(self, text, **_):
        self._add("info", text)

    def warning(self, text, **_):
        self._add("warning", text)

    def error(self, text, **_):
        self._add("error", text)


@pytest.fixture(scope="module")
def store():
    return lens_test_typestore()


@pytest.fixture(scope="module")
def pipeline(tiny_dir):
    from lens_model.inference.pipeline import LensPipeline

    return LensPipeline.from_pretrained(str(tiny_dir), device="cpu", max_new_tokens=8)


def settings(model, **values):
    base = {"model": str(model), "audio_enabled": False, "service_timeout_s": 120.0, "tracking": "on"}
    return NodeSettings.from_values({**base, **values})


@pytest.fixture
def make_engine(store, pipeline, tiny_dir):
    engines = []

    def make(slow_publish_s=0.0, **values):
        s = settings(tiny_dir, **values)
        log = Log()
        tracker = load_tracker(pipeline, s, log)
        assert tracker is not None, log.lines
        published, states = [], []

        def publish(outcome):
            if outcome.source == "tracking" and slow_publish_s:
                time.sleep(slow_publish_s)
            published.append(outcome)

        engine = SegmentationEngine(
            pipeline, s, publish=publish, log=log, clock=Clock(), types=store.types, tracker=tracker,
            publish_state=states.append,
        )  # fmt: skip
        engine.published, engine.states, engine.log_lines = published, states, log.lines
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def feed(engine, store, rgb, sec, nanosec=0, frame_id="cam"):
    """One camera frame; returns once the tracking thread has tracked it (or decided not to)."""
    worker = engine.tracking
    before = worker.frames_tracked + worker.frames_dropped
    engine.clock.now = sec + nanosec * 1e-9
    engine.on_image(image_msg(store, rgb, sec=sec, nanosec=nanosec, frame=frame_id))
    wait_until(lambda: worker._pending is None and worker.frames_tracked + worker.frames_dropped > before)
    time.sleep(0.02)  # the publish after the count


def command(engine, store, prompt, rgb, sec):
    """A command on the camera frame `rgb`; returns its outcome once tracking has started on it."""
    engine.clock.now = sec
    engine.on_image(image_msg(store, rgb, sec=sec, frame="cam"))
    return ground(engine, prompt)


def ground(engine, prompt):
    """A command on the latest camera frame; returns its outcome once tracking has started on it."""
    outcome = engine.submit(prompt).wait(120)
    assert outcome.success, outcome.message
    # the state is published once the tracking thread has started the targets
    wait_until(lambda: engine.states and engine.states[-1].prompt == prompt and not engine.tracking._groundings)
    return outcome


def tracked(engine):
    return [o for o in engine.published if o.source == "tracking"]


def stamp(header):
    return header.stamp.sec, header.stamp.nanosec, header.frame_id


def test_every_new_frame_is_tracked_and_published_with_its_header(make_engine, store, pipeline, tiny_dir):
    engine = make_engine(lost_score_threshold=-100.0)  # never lost: every frame reports its mask
    lens = command(engine, store, "the cup", frame(0), sec=10)
    for i in range(1, 6):
        feed(engine, store, frame(i), sec=10 + i)
    engine.stop()

    out = tracked(engine)
    assert engine.published[0] is lens and len(out) == 5  # one LENS result, then one result per frame
    for i, o in enumerate(out, start=1):
        for msg in (o.messages.mask, o.messages.detections):
            assert stamp(msg.header) == (10 + i, 0, "cam")
        assert o.result_msg is None and o.prompt == "the cup"
        assert o.tracked.targets[0].decision.state.value == "tracking"
        mask = np.frombuffer(bytes(o.messages.mask.data), np.uint8).reshape(CLIP_HW)
        assert np.array_equal(mask > 0, o.result.mask)
        assert len(o.messages.detections.detections) == (1 if o.result.mask.any() else 0)

    # the node's masks are the library tracker's on the same frames, from the same LENS mask
    from lens_model.model.sam_memory import load_sam_memory
    from lens_model.tracking.tracker import StreamingTracker

    direct = StreamingTracker.from_lens_model(pipeline.model, load_sam_memory(pipeline.config.sam, tiny_dir))
    direct.start("t", lens.result.mask, frame(0))
    for i, o in enumerate(out, start=1):
        want = direct.track(frame(i))["t"]
        assert np.array_equal(o.result.mask, want.mask), i
        assert o.tracked.targets[0].score == pytest.approx(want.object_score, abs=1e-5)

    status = engine.tracking.status()
    assert (status.state, status.prompt, status.frames_tracked, status.frames_dropped) == ("tracking", "the cup", 5, 0)
    first = json.loads(engine.states[0].to_json())
    assert first == {
        "state": "tracking",
        "prompt": "the cup",
        "frames_tracked": 0,
        "frames_dropped": 0,
        "reason": "1: grounded",
        "frames_skipped": 0,
        "targets": [{"id": 1, "phrase": "the cup", "state": "tracking", "reason": "grounded"}],
    }


def test_lost_after_n_missing_frames_then_reground_from_the_tracker_scores(make_engine, store):
    # every real object score is below the threshold: the object counts as missing on each frame
    engine = make_engine(lost_score_threshold=100.0, lost_after_frames=2)
    command(engine, store, "the cup", frame(0), sec=10)
    feed(engine, store, frame(1), sec=11)
    assert engine.tracking.state.value == "tracking"
    feed(engine, store, frame(2), sec=12)
    out = tracked(engine)
    assert all(o.tracked.targets[0].score < 100.0 for o in out)
    assert [o.tracked.targets[0].decision.state.value for o in out] == ["tracking", "lost"]
    assert out[1].tracked.targets[0].decision.reason == "object score below 100.0 for 2 frames"
    assert not out[1].result.mask.any() and out[1].messages.detections.detections == []  # lost: nothing reported
    # the loss submitted the prompt to the reasoning worker, which segmented the latest frame and restarted tracking
    wait_until(lambda: any(o.source == "reground" for o in engine.published))
    wait_until(lambda: engine.tracking.state.value == "tracking" and engine.tracking._reground_request is None)
    reground = next(o for o in engine.published if o.source == "reground")
    assert stamp(reground.header) == (12, 0, "cam") and reground.prompt == "the cup"
    assert [s.state for s in engine.states][-3:] == ["tracking", "lost", "tracking"]


def test_without_reground_on_loss_the_target_stays_lost(make_engine, store):
    engine = make_engine(lost_score_threshold=100.0, lost_after_frames=1, reground_on_loss=False)
    command(engine, store, "the cup", frame(0), sec=10)
    for i in (1, 2, 3):
        feed(engine, store, frame(i), sec=10 + i)
    assert [o.source for o in engine.published] == ["command", "tracking", "tracking", "tracking"]
    assert engine.tracking.status().state == "lost"


def test_a_slow_consumer_drops_frames_and_counts_them(make_engine, store):
    engine = make_engine(slow_publish_s=0.25, lost_score_threshold=-100.0)
    command(engine, store, "the cup", frame(0), sec=10)
    n = 12
    for i in range(1, n + 1):
        engine.clock.now = 10 + i
        engine.on_image(image_msg(store, frame(i % 4), sec=10 + i, frame="cam"))
        time.sleep(0.02)
    worker = engine.tracking
    wait_until(lambda: worker._pending is None and worker.frames_tracked + worker.frames_dropped == n)
    time.sleep(0.5)  # the last publish
    out = tracked(engine)
    assert worker.frames_dropped >= n // 2  # at ~50 frames/s against >= 0.25 s per tracked frame
    assert len(out) == worker.frames_tracked == n - worker.frames_dropped
    secs = [o.messages.mask.header.stamp.sec for o in out]
    assert secs == sorted(secs) and secs[-1] == 10 + n  # newest frames first: the last frame is always tracked
    assert worker.status().frames_dropped == worker.frames_dropped


def test_a_new_command_replaces_the_target(make_engine, store):
    engine = make_engine(lost_score_threshold=-100.0)
    command(engine, store, "the cup", frame(0), sec=10)
    feed(engine, store, frame(1), sec=11)
    feed(engine, store, frame(2), sec=12)  # tracked with the old target; the new command is reasoned on it
    ground(engine, "the plant")
    feed(engine, store, frame(3), sec=13)
    out = tracked(engine)
    assert [(o.prompt, o.messages.mask.header.stamp.sec) for o in out] == [
        ("the cup", 11),
        ("the cup", 12),
        ("the plant", 13),
    ]
    assert out[2].messages.detections.detections[0].results[0].hypothesis.class_id == "the plant"
    assert engine.states[-1].reason == "new command replaces 'the cup'"
    assert engine.tracking.status().prompt == "the plant"


def test_a_frame_of_another_size_resets_the_target_and_regrounds(make_engine, store):
    engine = make_engine(lost_score_threshold=-100.0)
    command(engine, store, "the cup", frame(0), sec=10)
    feed(engine, store, frame(1), sec=11)
    small = frame(2, hw=(96, 128))
    feed(engine, store, small, sec=12)
    out = tracked(engine)
    reset = out[-1].tracked.targets[0].decision
    assert reset.state.value == "lost" and reset.reset
    assert reset.reason == "frame size changed from 160x120 to 128x96: target reset"
    assert ("warning", f"tracking 'the cup' (target 1): {reset.reason}") in engine.log_lines
    # re-grounded on the new size: later frames of that size are tracked again
    wait_until(lambda: engine.tracking.state.value == "tracking" and engine.tracking._reground_request is None)
    assert engine.tracking.runner.machines[1].frame_hw == (96, 128)
    feed(engine, store, frame(3, hw=(96, 128)), sec=13)
    last = tracked(engine)[-1]
    assert last.tracked.targets[0].decision.state.value == "tracking" and last.result.mask.shape == (96, 128)


def test_after_a_size_reset_without_reground_later_frames_are_reported_lost(make_engine, store):
    engine = make_engine(lost_score_threshold=-100.0, reground_on_loss=False)
    command(engine, store, "the cup", frame(0), sec=10)
    for i in (1, 2, 3):
        feed(engine, store, frame(i, hw=(96, 128)), sec=10 + i)
    out = tracked(engine)
    assert [o.tracked.targets[0].decision.state.value for o in out] == ["lost", "lost", "lost"]
    assert [o.tracked.targets[0].source for o in out] == ["none", "none", "none"]  # the reset target is not tracked on
    assert all(o.result.mask.shape == (96, 128) and not o.result.mask.any() for o in out)
    assert not [line for level, line in engine.log_lines if level == "error"]
    assert engine.tracking.status().frames_tracked == 3 and engine.published[0].source == "command"


def test_frames_without_a_target_are_idle_with_one_log_line(make_engine, store):
    engine = make_engine()
    for i in range(3):
        engine.on_image(image_msg(store, frame(i), sec=10 + i, frame="cam"))
        wait_until(lambda: engine.tracking._pending is None)
        time.sleep(0.05)
    assert engine.published == []
    assert [line for _, line in engine.log_lines if "no target" in line] == [
        "tracking: no target yet; idle until a command is segmented"
    ]
    wait_until(lambda: engine.states)  # published periodically even without a change
    assert engine.states[-1].state == "idle" and engine.states[-1].prompt is None


def test_compressed_frames_are_idle_then_tracked(make_engine, store):
    import io

    def png(rgb, sec):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        data = np.frombuffer(buffer.getvalue(), np.uint8).copy()
        return store.types["sensor_msgs/msg/CompressedImage"](header=image_msg(store, rgb, sec=sec, frame="cam").header,
                                                              format="png", data=data)  # fmt: skip

    engine = make_engine(lost_score_threshold=-100.0, image_compressed=True)
    worker = engine.tracking
    engine.on_image(png(frame(0), 9))  # no target yet: idle
    wait_until(lambda: worker._pending is None and worker.command is None and engine.states)
    engine.clock.now = 10
    engine.on_image(png(frame(0), 10))
    ground(engine, "the cup")
    engine.clock.now = 11
    engine.on_image(png(frame(1), 11))
    wait_until(lambda: worker.frames_tracked == 1)
    wait_until(lambda: tracked(engine))
    assert stamp(tracked(engine)[0].messages.mask.header) == (11, 0, "cam")
    assert not [line for level, line in engine.log_lines if level == "error"]


def test_tracking_auto_is_off_on_cpu_and_missing_memory_weights_disable_it(pipeline, tiny_dir, tmp_path):
    log = Log()
    assert load_tracker(pipeline, settings(tiny_dir, tracking="auto"), log) is None
    assert load_tracker(pipeline, settings(tiny_dir, tracking="off"), log) is None
    assert log.lines[0] == ("info", "tracking off (tracking=auto, device cpu)")
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare, ignore=shutil.ignore_patterns("sam2_memory.safetensors"))
    log = Log()
    assert load_tracker(pipeline, settings(bare, tracking="on"), log) is None
    assert len(log.lines) == 1 and log.lines[0][0] == "error"
    assert "has no sam2_memory.safetensors" in log.lines[0][1]
    assert "set sam_memory_checkpoint to the official sam2_hiera_tiny.pt" in log.lines[0][1]
    log = Log()
    assert (
        load_tracker(pipeline, settings(bare, tracking="on", sam_memory_checkpoint=str(tmp_path / "no.pt")), log)
        is None
    )
    assert len(log.lines) == 1 and "no.pt" in log.lines[0][1]


def test_tracking_does_not_block_reasoning(make_engine, store):
    """A command is answered while the tracking thread is stuck publishing (a stalled consumer)."""
    release = threading.Event()
    engine = make_engine(lost_score_threshold=-100.0)
    publish = engine.publish

    def stalled(outcome):
        if outcome.source == "tracking":
            release.wait(120)
        publish(outcome)

    engine.publish = stalled
    command(engine, store, "the cup", frame(0), sec=10)
    engine.clock.now = 11
    engine.on_image(image_msg(store, frame(1), sec=11, frame="cam"))
    wait_until(lambda: engine.tracking.frames_tracked == 1)  # now stuck in its publish
    try:
        outcome = engine.submit("the plant").wait(30)
    finally:
        release.set()
    assert outcome.success, outcome.message
    assert stamp(outcome.header) == (11, 0, "cam") and outcome.prompt == "the plant"


def test_tracked_frames_carry_the_3d_target_of_their_mask(make_engine, store):
    from depth_scenes import render
    from test_ros_depth import H4, K4, W4, camera_info, depth_msg

    from lens_model.geometry.target3d import PinholeCamera, TargetOptions, depth_to_metres, estimate_target

    assert (H4, W4) == CLIP_HW
    depth_m = render(k=K4, width=W4, height=H4).depth
    engine = make_engine(lost_score_threshold=-100.0, depth_enabled=True)
    engine.on_camera_info(camera_info(store))
    for sec in range(10, 14):
        engine.on_depth(depth_msg(store, depth_m, sec=sec))
    command(engine, store, "the cup", frame(0), sec=10)
    for i in (1, 2, 3):
        feed(engine, store, frame(i), sec=10 + i)
    out = tracked(engine)
    assert len(out) == 3 and any(o.result.mask.any() for o in out)
    metres = depth_to_metres(np.rint(depth_m * 1000).astype(np.uint16))
    for i, o in enumerate(out, start=1):
        expected = estimate_target(o.result.mask, metres, PinholeCamera(W4, H4, K4), TargetOptions(erosion_px=2))
        assert o.target.ok == expected.ok
        if expected.ok:
            assert np.allclose(o.target.centroid, expected.centroid)
            point = o.messages.target.point
            assert (point.header.stamp.sec, point.header.frame_id) == (10 + i, "depth_optical")
        assert (o.messages.target.detections.header.stamp.sec, o.messages.target.detections.header.frame_id) == (
            10 + i,
            "depth_optical",
        )


def test_every_target_of_a_command_is_tracked_and_a_lost_one_is_regrounded_alone(make_engine, store):
    engine = make_engine(lost_score_threshold=-100.0)
    command(engine, store, "the cup and the plant", frame(0), sec=10)
    worker = engine.tracking
    assert sorted(worker.runner.tracker.targets) == [1, 2]
    feed(engine, store, frame(1), sec=11)
    (out,) = tracked(engine)
    ids = [(d.id, d.results[0].hypothesis.class_id) for d in out.messages.detections.detections]
    assert ids == [("1", "the cup"), ("2", "the plant")]
    labels = np.frombuffer(bytes(out.messages.labels.data), np.uint8).reshape(CLIP_HW)
    masks = [t.mask for t in out.tracked.targets]
    assert np.array_equal(labels == 1, masks[0]) and np.array_equal(labels == 2, masks[1] & ~masks[0])
    assert worker.runner.tracker.frame_index == 1  # the grounding frame and this one: one encoder pass each

    worker.runner.tracker.remove(2)  # the tracker drops target 2: it is lost and re-grounded on its own
    feed(engine, store, frame(2), sec=12)
    wait_until(lambda: any(o.source == "reground" for o in engine.published))
    wait_until(lambda: worker.runner.machines[2].state.value == "tracking" and worker._reground_request is None)
    reground = next(o for o in engine.published if o.source == "reground")
    assert reground.prompt == "the cup and the plant" and len(reground.command.targets) == 2
    assert worker.runner.tracker.targets[1].start_frame == 0  # target 1 kept its memory
    assert worker.runner.tracker.targets[2].start_frame > 0
    status = json.loads(worker.status().to_json())
    assert [(t["id"], t["phrase"], t["state"]) for t in status["targets"]] == [
        (1, "the cup", "tracking"),
        (2, "the plant", "tracking"),
    ]


def test_max_rate_hz_skips_frames_and_disabled_tracking_publishes_nothing(make_engine, store):
    engine = make_engine(lost_score_threshold=-100.0, max_rate_hz=2.0)
    command(engine, store, "the cup", frame(0), sec=10)
    worker = engine.tracking
    for i, t in enumerate((10.5, 10.7, 11.0, 11.2, 11.5), start=1):  # 0.5 s apart at most every other frame
        sec, nanosec = int(t), round((t % 1) * 1e9)
        engine.on_image(image_msg(store, frame(i), sec=sec, nanosec=nanosec, frame="cam"))
        # each frame tracked or skipped before the next (none dropped for being late, however loaded the machine)
        wait_until(lambda i=i: worker._pending is None and worker.frames_tracked + worker.frames_skipped == i)
    wait_until(lambda: len(tracked(engine)) >= worker.frames_tracked)  # the last publish, after the count
    assert [
        o.messages.mask.header.stamp.sec + o.messages.mask.header.stamp.nanosec * 1e-9 for o in tracked(engine)
    ] == [
        10.5,
        11.0,
        11.5,
    ]
    assert (worker.frames_tracked, worker.frames_skipped) == (3, 2)

    engine.update_settings(max_rate_hz=0.0)  # a runtime change: every frame from now on
    engine.set_enabled(False)
    before = len(engine.published)
    for i, sec in enumerate((12, 13), start=6):
        engine.on_image(image_msg(store, frame(i), sec=sec, frame="cam"))
        time.sleep(0.3)
    assert len(engine.published) == before and worker.frames_tracked == 3  # paused: not tracked, not published
    engine.set_enabled(True)
    feed(engine, store, frame(8), sec=14)
    feed(engine, store, frame(9), sec=14, nanosec=100_000_000)
    assert [o.messages.mask.header.stamp.sec for o in tracked(engine)][-2:] == [14, 14]


def test_an_unconfident_result_starts_no_tracking(make_engine, store, pipeline):
    """A command whose result is not confident (every result is, under a stability above any mask's) is answered
    and published, but the tracker does not start: later frames stay idle; as a new command it drops the target
    that was being tracked."""
    import dataclasses

    from lens_model.model.config import ConfidenceConfig

    engine = make_engine(lost_score_threshold=-100.0)
    command(engine, store, "the cup", frame(0), sec=10)
    feed(engine, store, frame(1), sec=11)
    kept = pipeline.confidence
    pipeline.confidence = dataclasses.replace(ConfidenceConfig.accept_all(), min_stability=1.01)
    try:
        outcome = engine.submit("the plant").wait(120)
    finally:
        pipeline.confidence = kept
    assert outcome.success and not outcome.result.confident
    worker = engine.tracking
    wait_until(lambda: worker.runner.command == "the plant" and not worker._groundings)
    for i in (2, 3):  # idle frames are not counted as tracked: wait until the worker took each
        engine.clock.now = 10 + i
        engine.on_image(image_msg(store, frame(i), sec=10 + i, frame="cam"))
        wait_until(lambda: engine.tracking._pending is None)
        time.sleep(0.05)
    assert [o.messages.mask.header.stamp.sec for o in tracked(engine)] == [11]  # nothing after the command
    assert worker.status().state == "idle" and worker.runner.machines[1].prompt is None
    assert any("'the plant' not grounded" in state.reason for state in engine.states)
    assert not worker.runner.tracker.targets
    assert any(level == "warning" and "not confident" in line for level, line in engine.log_lines)
