"""Streaming tracker against sam2's own SAM2VideoPredictor on a clip cut from the sample photo (seeded random SAM2)."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from conftest import photo_clip
from PIL import Image

from lens_model.errors import CheckpointError, LensError
from lens_model.model.checkpoint import load_sam2_checkpoint
from lens_model.model.sam import MEMORY_MODULES, build_sam
from lens_model.model.sam_memory import attach_memory, load_sam_memory
from lens_model.model.tiny import tiny_lens_config
from lens_model.tracking.state import TrackingPolicy, TrackingStateMachine, TrackState
from lens_model.tracking.tracker import StreamingTracker

SAM_SIZE = 128  # tiny Hiera at 128 px: 8x8 memory tokens, 32x32 low-res masks
CLIP_HW = (150, 200)  # frames are larger than SAM's input and not square: resizing both ways is exercised
START_MASK_BOX = (30, 100, 50, 140)  # rows, rows, cols, cols of the first-frame mask


def clip_frames(n: int) -> list[np.ndarray]:
    return photo_clip(n, CLIP_HW)


def start_mask() -> np.ndarray:
    mask = np.zeros(CLIP_HW, bool)
    r0, r1, c0, c1 = START_MASK_BOX
    mask[r0:r1, c0:c1] = True
    return mask


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models do many small ops: with cores shared by other processes, one thread is far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sam2_setup(tmp_path_factory):
    """A seeded random SAM2 (tiny Hiera) as sam2's video predictor, and the same weights as an official-style .pt."""
    from sam2.build_sam import build_sam2_video_predictor

    config = tiny_lens_config(sam_image_size=SAM_SIZE).sam
    torch.manual_seed(0)
    predictor = build_sam2_video_predictor(
        config.config_name, None, device="cpu", hydra_overrides_extra=config.overrides
    )
    predictor.fill_hole_area = 0  # a CUDA-only post-processing; the tracker leaves holes as the decoder made them
    # Random weights score every object absent (logit ~ -0.01, so masks would be all "no object"): shift the
    # presence head so that the decoder's masks come through and the comparison has something to compare.
    with torch.no_grad():
        predictor.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 2.0
        # Random temporal encodings (std 0.02) barely move the masks; trained ones are larger. Scaled up, a memory
        # read with the wrong temporal slot shows in the logits.
        predictor.maskmem_tpos_enc *= 20
    checkpoint = tmp_path_factory.mktemp("sam2") / "sam2_tiny.pt"
    torch.save({"model": predictor.state_dict()}, checkpoint)
    return predictor, checkpoint, config


def lens_sam_with_memory(checkpoint, config):
    """What a tracker over a LENS model gets: SAM2 without memory (as LENS loads it) + memory from the SAM2 .pt."""
    sam = build_sam(config)
    load_sam2_checkpoint(sam, checkpoint)
    assert not hasattr(sam, "memory_attention")
    attach_memory(sam, load_sam_memory(config, weights=checkpoint))
    return sam


def stored_memory_dtypes(output_dict) -> set:
    """The dtypes of the memory features a SAM2 per-object output dict holds (cond and non-cond frames)."""
    return {
        out["maskmem_features"].dtype
        for outputs in output_dict.values()
        for out in outputs.values()
        if out["maskmem_features"] is not None
    }


def predictor_run(predictor, frames, tmp_path, memory_dtypes=None):
    """SAM2VideoPredictor on the frames written as JPEG: add_new_mask on frame 0, propagate_in_video.
    -> (frames as decoded from the JPEGs, [(mask at frame size, low-res logits (1, S/4, S/4), object logit)]).
    `memory_dtypes` (a set): gets the dtypes of the memory features the predictor's state stored."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    decoded = [np.asarray(Image.open(folder / f"{i:05d}.jpg").convert("RGB")) for i in range(len(frames))]
    state = predictor.init_state(str(folder))
    predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=start_mask())
    outputs = []
    for frame_idx, _, video_masks in predictor.propagate_in_video(state):
        stored = state["output_dict_per_obj"][0]
        out = stored["cond_frame_outputs"].get(frame_idx) or stored["non_cond_frame_outputs"][frame_idx]
        outputs.append(
            ((video_masks[0, 0] > 0).numpy(), out["pred_masks"][0].float(), float(out["object_score_logits"]))
        )
    if memory_dtypes is not None:
        memory_dtypes |= stored_memory_dtypes(state["output_dict_per_obj"][0])
    return decoded, outputs


def tracker_run(tracker, frames):
    results = [tracker.start("target", start_mask(), frames[0])]
    results += [tracker.track(frame)["target"] for frame in frames[1:]]
    return results


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def assert_parity(reference, results):
    for i, ((mask, logits, score), got) in enumerate(zip(reference, results)):
        assert got.frame_index == i
        assert got.mask.shape == CLIP_HW
        assert iou(mask, got.mask) >= 0.999, f"frame {i}: IoU {iou(mask, got.mask):.4f}"
        diff = (logits - got.low_res_logits).abs().max().item()
        assert diff <= 1e-4, f"frame {i}: low-res logits differ by {diff}"
        assert got.object_score == pytest.approx(score, abs=1e-4)


def assert_not_vacuous(reference):
    masks = [m for m, _, _ in reference]
    assert all(0.05 < m.mean() < 0.95 for m in masks), [round(float(m.mean()), 3) for m in masks]
    assert all(score > 0 for _, _, score in reference)  # the object is "present": masks come from the decoder
    # the masks follow the frames: consecutive frames give clearly different masks
    assert min(iou(a, b) for a, b in zip(masks[1:], masks[2:])) < 0.9


def test_tracker_matches_sam2_video_predictor_on_a_clip(sam2_setup, tmp_path):
    """Frame by frame the same masks, logits and object scores as the predictor, from memory stored as the
    predictor stores it: features in bfloat16 (half the bytes of float32; a float32 store moves the logits by less
    than the 1e-4 tolerance, so the dtype is checked itself)."""
    predictor, checkpoint, config = sam2_setup
    reference_dtypes = set()
    frames, reference = predictor_run(predictor, clip_frames(8), tmp_path, reference_dtypes)
    assert_not_vacuous(reference)
    tracker = StreamingTracker(lens_sam_with_memory(checkpoint, config), num_frames=len(frames))
    assert_parity(reference, tracker_run(tracker, frames))
    assert stored_memory_dtypes(tracker.targets["target"].output_dict) == reference_dtypes == {torch.bfloat16}


def test_unbounded_stream_matches_predictor_past_the_memory_bank(sam2_setup, tmp_path):
    """18 frames: the predictor reads 16 object pointers (min(frames, 16)), as a stream without a known length
    does. From frame 16 on the tracker drops old frames; frame 17 reads pointers back to frame 2, so a pruning
    that drops one frame too many fails there."""
    predictor, checkpoint, config = sam2_setup
    frames, reference = predictor_run(predictor, clip_frames(18), tmp_path)
    tracker = StreamingTracker(lens_sam_with_memory(checkpoint, config))
    results = tracker_run(tracker, frames)
    assert_parity(reference, results)
    stats = tracker.memory_stats()
    assert stats.stored_frames == 1 + tracker.lookback() == 16  # the conditioning frame + frames 3..17


def test_a_memory_window_keeps_sam2s_frames_until_the_bank_outgrows_it(sam2_setup, tmp_path):
    """memory_frames=3 reads the conditioning frame + the 2 latest: frame t reads min(t - 1, 2) earlier frames where
    SAM2 reads min(t - 1, 6), so frames 0-3 are the predictor's exactly (each memory kept its temporal encoding; a
    window that re-indexed the slots would differ from frame 2 on), and from frame 4 on the masks depart from it
    (less history). The effect on the parity test: with a window of k, it holds for frames 0..k only."""
    predictor, checkpoint, config = sam2_setup
    frames, reference = predictor_run(predictor, clip_frames(8), tmp_path)
    tracker = StreamingTracker(lens_sam_with_memory(checkpoint, config), num_frames=len(frames), memory_frames=3)
    results = tracker_run(tracker, frames)
    assert_parity(reference[:4], results[:4])
    later = [(logits - got.low_res_logits).abs().max().item() for (_, logits, _), got in zip(reference, results)][4:]
    assert min(later) > 1e-3, later
    assert tracker.sam.num_maskmem == 7 and tracker.sam.maskmem_tpos_enc.shape[0] == 7  # restored after each step
    assert tracker.lookback() == 15  # the object pointers still reach 15 frames back
    with pytest.raises(LensError, match="memory_frames must be between 1"):
        StreamingTracker(tracker.sam, memory_frames=8)


def test_memory_stays_flat_over_a_long_stream():
    config = tiny_lens_config(sam_image_size=64).sam  # 4x4 memory tokens: 120 frames in seconds
    sam = build_sam(config)
    attach_memory(sam, load_sam_memory(config, allow_random=True))
    tracker = StreamingTracker(sam)
    frames = clip_frames(6)
    tracker.start("target", start_mask(), frames[0])
    stored, nbytes = [], []
    for i in range(120):
        tracker.track(frames[i % len(frames)])
        stats = tracker.memory_stats()
        stored.append(stats.stored_frames)
        nbytes.append(stats.tensor_bytes)
    bound = 1 + tracker.lookback()
    assert max(stored) == bound == 16
    assert stored[-1] == bound and nbytes[-1] == nbytes[bound]  # flat once the bank is full
    assert nbytes[0] < nbytes[-1]


def test_targets_share_one_image_encoder_pass_and_track_independently(sam2_setup):
    _, checkpoint, config = sam2_setup
    frames = clip_frames(4)
    other = np.zeros(CLIP_HW, bool)
    other[80:140, 10:60] = True
    sam = lens_sam_with_memory(checkpoint, config)
    encoder_calls = []
    sam.image_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    both = StreamingTracker(sam)
    both.start("a", start_mask(), frames[0])
    both.start("b", other)  # same frame: no second encoder pass
    together = [both.track(f) for f in frames[1:]]
    assert len(encoder_calls) == len(frames)
    alone = StreamingTracker(sam)
    alone.start("b", other, frames[0])
    for out, frame in zip(together, frames[1:]):
        single = alone.track(frame)["b"]
        assert np.array_equal(out["b"].mask, single.mask)
        assert not np.array_equal(out["a"].mask, out["b"].mask)
    both.remove("a")
    assert list(both.track(frames[0])) == ["b"]


def test_tracker_refuses_bad_input(sam2_setup, tmp_path):
    _, checkpoint, config = sam2_setup
    tracker = StreamingTracker(lens_sam_with_memory(checkpoint, config))
    frames = clip_frames(2)
    with pytest.raises(LensError, match="earlier frame"):
        tracker.start("t", start_mask())
    with pytest.raises(LensError, match="mask of shape"):
        tracker.start("t", np.ones((10, 10), bool), frames[0])
    tracker.start("t", start_mask(), frames[0])
    with pytest.raises(LensError, match="started on 200x150"):
        tracker.track(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(LensError, match="attach memory"):
        StreamingTracker(build_sam(config))


def test_memory_weights_are_never_silently_random(sam2_setup, tmp_path):
    _, checkpoint, config = sam2_setup
    with pytest.raises(CheckpointError, match="sam-memory-checkpoint sam2_hiera_tiny.pt"):
        load_sam_memory(config, model_dir=tmp_path)
    no_memory = tmp_path / "no_memory.pt"
    state = torch.load(checkpoint, weights_only=True)["model"]
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith(MEMORY_MODULES)}}, no_memory)
    with pytest.raises(CheckpointError, match="holds no SAM2 memory weights"):
        load_sam_memory(config, weights=no_memory)
    other = tiny_lens_config(sam_image_size=SAM_SIZE).sam
    other.overrides = [*other.overrides, "++model.memory_encoder.out_dim=32"]
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_sam_memory(other, weights=checkpoint)
    random_a = load_sam_memory(config, allow_random=True, seed=3)
    random_b = load_sam_memory(config, allow_random=True, seed=3)
    assert torch.equal(random_a.maskmem_tpos_enc, random_b.maskmem_tpos_enc)


def test_state_machine_follows_real_tracker_outputs(sam2_setup, caplog):
    """idle -> tracking -> lost (score under the threshold for N frames) -> regained -> periodic re-grounding;
    non-finite logits -> lost at once; a frame of another size -> reset with its reason; one re-grounding
    request per need."""
    _, checkpoint, config = sam2_setup
    frames = clip_frames(10)
    tracker = StreamingTracker(lens_sam_with_memory(checkpoint, config))
    policy = TrackingPolicy(lost_score_threshold=0.0, lost_after_frames=2, reground_on_loss=True, reground_period_s=5)
    machine = TrackingStateMachine(policy)
    with caplog.at_level(logging.INFO, logger="lens_model.tracking.state"):
        first = machine.observe(CLIP_HW, None, now=0.0)
        machine.observe(CLIP_HW, None, now=0.1)
    assert first.state is TrackState.IDLE and not first.reground and first.prompt is None
    assert sum("no target" in r.message for r in caplog.records) == 1  # logged once, not on every frame

    tracker.start("cup", start_mask(), frames[0])
    assert machine.grounded("the cup", CLIP_HW, now=1.0).state is TrackState.TRACKING
    outputs = [tracker.track(frame)["cup"] for frame in frames[1:]]
    scores = [out.object_score for out in outputs]
    assert min(scores) > 1.0  # the shifted presence head: the object is there on every frame

    def observe(i, now):
        return machine.observe(CLIP_HW, outputs[i], now)

    assert observe(0, 1.1).state is TrackState.TRACKING
    policy.lost_score_threshold = max(scores) + 1  # a stricter threshold: the same outputs now count as missing
    still = observe(1, 1.2)
    assert still.state is TrackState.TRACKING and not still.reground  # one missing frame is not a loss
    lost = observe(2, 1.3)
    assert lost.state is TrackState.LOST and lost.reground and "below" in lost.reason
    assert not observe(3, 1.4).reground  # already asked: no second request while LENS runs
    policy.lost_score_threshold = 0.0
    regained = observe(4, 1.5)
    assert regained.state is TrackState.TRACKING and regained.reason == "regained"
    machine.grounding_failed("no box in the answer")  # the pending request ended
    assert observe(5, 5.9).reground is False  # 4.9 s after grounding
    periodic = observe(6, 6.0)
    assert periodic.reground and "periodic" in periodic.reason
    assert machine.grounded("the cup", CLIP_HW, now=6.5).state is TrackState.TRACKING

    broken = dataclasses.replace(outputs[7], low_res_logits=torch.full_like(outputs[7].low_res_logits, float("nan")))
    nonfinite = machine.observe(CLIP_HW, broken, now=6.6)
    assert nonfinite.state is TrackState.LOST and nonfinite.reground and nonfinite.reason == "non-finite mask logits"
    machine.grounded("the cup", CLIP_HW, now=6.7)

    resized = machine.observe((100, 120), None, now=6.8)
    assert resized.reset and resized.reground and resized.state is TrackState.LOST
    assert "frame size changed from 200x150 to 120x100" in resized.reason
    replaced = machine.grounded("the red bowl", (100, 120), now=7.0)
    assert replaced.prompt == "the red bowl" and "replaces 'the cup'" in replaced.reason
    cleared = machine.clear()
    assert cleared.state is TrackState.IDLE and cleared.reset


def test_state_machine_without_regrounding_only_reports():
    machine = TrackingStateMachine(TrackingPolicy(lost_after_frames=1, reground_on_loss=False))
    machine.grounded("the cup", CLIP_HW, now=0.0)
    resized = machine.observe((10, 10), None, now=0.1)
    assert resized.reset and not resized.reground and resized.state is TrackState.LOST
    with pytest.raises(ValueError, match="lost_after_frames"):
        TrackingPolicy(lost_after_frames=0)
    with pytest.raises(ValueError, match="reground_period_s"):
        TrackingPolicy(reground_period_s=0)


def lens_result(prompt: str, mask: np.ndarray, confident: bool, reason: str | None = None):
    """A LENS result as the pipeline returns it (the fields ReasonAndTrack reads), confident or not."""
    from lens_model.inference.pipeline import SegmentationResult

    return SegmentationResult(
        prompt=prompt, mask=mask, box=None, score=0.5, text="", num_tokens=0, image_size=mask.shape,
        mllm_image_size=(0, 0), confident=confident, reason=reason,
    )  # fmt: skip


def test_tracking_never_starts_from_an_unconfident_result(sam2_setup):
    """An unconfident first result leaves the tracker empty and the state idle; a confident one starts it; an
    unconfident new command then drops the old target (idle: the user asked for something else), while an
    unconfident result of the same command again only reports that grounding failed (lost: it asks again later).
    In a command of several targets only the confident ones start; the others are idle."""
    from lens_model.inference.targets import CommandResult
    from lens_model.tracking.track_video import ReasonAndTrack

    _, checkpoint, config = sam2_setup
    frames = clip_frames(6)
    runner = ReasonAndTrack(None, StreamingTracker(lens_sam_with_memory(checkpoint, config)), "")
    (first,) = runner.ground(
        frames[0], lens_result("the cup", start_mask(), False, "the mask is unstable"), 0.0
    ).targets
    assert not runner.tracker.targets and first.decision.state is TrackState.IDLE
    assert "not confident: the mask is unstable" in first.decision.reason
    assert runner.follow(frames[1], now=0.1).source == "none"  # nothing is tracked
    (started,) = runner.ground(frames[1], lens_result("the cup", start_mask(), True), now=0.2).targets
    assert list(runner.tracker.targets) == [1] and started.decision.state is TrackState.TRACKING
    assert runner.follow(frames[2], now=0.3).source == "tracker"
    (again,) = runner.ground(frames[3], lens_result("the cup", start_mask(), False, "x"), now=0.4).targets
    assert again.decision.state is TrackState.LOST and runner.machines[1].prompt == "the cup"  # asks again later
    (other,) = runner.ground(frames[4], lens_result("the plant", start_mask(), False, "x"), now=0.5).targets
    assert other.decision.state is TrackState.IDLE and runner.machines[1].prompt is None
    assert not runner.tracker.targets and "'the plant' not grounded" in other.decision.reason

    plant = np.zeros_like(start_mask())
    plant[-20:, -24:] = True
    two = CommandResult(
        "the plant and the cup",
        [lens_result("the plant", plant, False, "y"), lens_result("the cup", start_mask(), True)],
    )
    unsure, sure = runner.ground(frames[5], two, now=0.6).targets
    assert list(runner.tracker.targets) == [2]  # the confident second target only
    assert (unsure.decision.state, sure.decision.state) == (TrackState.IDLE, TrackState.TRACKING)
    assert runner.machines[1].prompt is None and runner.machines[2].prompt == "the cup"
