"""`lens track` on short clips written by the tests (tiny LENS model with its SAM2 memory weights)."""

import json
import shutil

import numpy as np
import pytest
from conftest import REPO, photo_clip, run_cli
from PIL import Image

from lens_model.model.config import SamConfig
from lens_model.model.sam_memory import custom_sam2_note
from lens_model.tracking.video_io import VideoWriter, count_frames, open_video

CLIP_HW = (120, 160)
JSONL_FIELDS = {
    "frame",
    "time_s",
    "target_id",
    "phrase",
    "source",
    "state",
    "box",
    "score",
    "present",
    "mask_pixels",
    "mask_png",
    "reason",
    "answer_box",
    "confident",
}


def clip(n: int) -> list[np.ndarray]:
    return photo_clip(n, CLIP_HW, origin=(50, 30), step=(4, 8))


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocess' tiny models run faster on one thread


def frame_folder(tmp_path, n: int):
    """tmp_path/frames holding clip(n) as 0.png, 1.png, ..."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip(n)):
        Image.fromarray(frame).save(frames / f"{i}.png")
    return frames


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_track_frame_folder_writes_masks_jsonl_and_video(tiny_dir, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip(6)):
        Image.fromarray(frame).save(frames / f"frame_{i}.png")  # natural order: frame_10 would follow frame_9
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "track", "--model", tiny_dir, "--video", frames, "--prompt", "the cup", "--out-dir", out,
        "--reason-every", "4", "--fps", "10",
    )  # fmt: skip
    assert code == 0, stderr
    assert "6 frames, 2 LENS queries" in stdout
    records = read_jsonl(out / "tracks.jsonl")
    assert [r["frame"] for r in records] == list(range(6))
    assert all(set(r) == JSONL_FIELDS for r in records)
    assert [r["source"] for r in records] == ["lens", "tracker", "tracker", "tracker", "lens", "tracker"]
    assert [r["time_s"] for r in records] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(r["state"] in ("tracking", "lost") for r in records)
    assert [r["confident"] for r in records] == [True, None, None, None, True, None]  # tiny_dir accepts every result
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks] == [f"{i:06d}.png" for i in range(6)]
    for record, path in zip(records, masks):
        mask = np.asarray(Image.open(path))
        assert mask.shape == CLIP_HW and set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == record["mask_pixels"]
        if record["mask_pixels"]:
            ys, xs = np.nonzero(mask)
            assert record["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    video = open_video(out / "overlay.mp4")
    assert count_frames(out / "overlay.mp4") == 6 and video.fps == pytest.approx(10)
    assert next(iter(video)).shape == (*CLIP_HW, 3)


def test_track_video_file(tiny_dir, tmp_path):
    source = tmp_path / "clip.mp4"
    with VideoWriter(source, fps=15) as writer:
        for frame in clip(4):
            writer.write(frame)
    assert count_frames(source) == 4
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "track", "--model", tiny_dir, "--video", source, "--prompt", "the cup", "--out-dir", out, "--no-progress"
    )
    assert code == 0, stderr
    records = read_jsonl(out / "tracks.jsonl")
    assert [r["source"] for r in records] == ["lens", "tracker", "tracker", "tracker"]
    assert len(list((out / "masks").iterdir())) == 4 and count_frames(out / "overlay.mp4") == 4


def test_track_starts_no_tracking_from_an_unconfident_result(tiny_dir, tmp_path):
    """The same model judged by the default thresholds (its random answers fail them): the first frame's LENS result
    is written, flagged, and no frame after it is tracked — masks empty, state idle, the reason in tracks.jsonl."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    config = json.loads((model / "config.json").read_text())
    del config["lens"]["confidence"]  # the defaults
    (model / "config.json").write_text(json.dumps(config))
    frames = frame_folder(tmp_path, 3)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "track", "--model", model, "--video", frames, "--prompt", "the cup", "--out-dir", out, "--no-progress"
    )
    assert code == 0, stderr
    first, *rest = read_jsonl(out / "tracks.jsonl")
    assert first["source"] == "lens" and first["confident"] is False
    assert first["reason"].startswith("grounding failed: LENS result not confident: ")
    assert [(r["source"], r["state"], r["mask_pixels"]) for r in rest] == [("none", "idle", 0)] * 2


@pytest.mark.parametrize(
    "case, expected",
    [
        ("garbage", "cannot decode video"),
        ("empty_folder", "holds no frame images"),
        ("no_memory", "has no SAM2 memory weights"),
        ("reason_every", "--reason-every must be >= 1"),
    ],
)
def test_track_bad_input_is_one_clear_line(tiny_dir, tmp_path, case, expected):
    video, model, extra = tmp_path / "clip.mp4", tiny_dir, []
    if case == "garbage":
        video.write_bytes(b"this is not a video\n" * 50)
    else:
        frames = tmp_path / "frames"
        frames.mkdir()
        video = frames
        if case != "empty_folder":
            Image.fromarray(clip(1)[0]).save(frames / "0.png")
    if case == "no_memory":
        model = tmp_path / "model"
        shutil.copytree(tiny_dir, model, ignore=shutil.ignore_patterns("sam2_memory.safetensors"))
    if case == "reason_every":
        extra = ["--reason-every", "0"]
    out = tmp_path / "out"
    code, _, stderr = run_cli("track", "--model", model, "--video", video, "--prompt", "x", "--out-dir", out, *extra)
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], stderr
    assert not out.exists()  # nothing written before the inputs are known to be good
    if case == "no_memory":
        assert "--sam-memory-checkpoint sam2_hiera_tiny.pt" in lines[0]


def test_track_with_the_demo_model_says_why_it_cannot_and_what_tracks_offline(tmp_path):
    """The demo model ships no SAM2 memory weights and its SAM2 is no Meta SAM2: the one error line says so, and
    names the offline way to try tracking (a tiny model, which carries its own memory weights)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(REPO / "assets" / "demo-scene.png", frames / "0.png")
    out = tmp_path / "out"
    model = REPO / "assets" / "demo-model"
    code, _, stderr = run_cli("track", "--model", model, "--video", frames, "--prompt", "x", "--out-dir", out)
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1 and not out.exists(), stderr
    for part in ("has no SAM2 memory weights", "custom build", "7 overrides, 128-px input", "not Meta's"):
        assert part in lines[0], part
    assert "lens make-tiny --out DIR` builds a tiny model with its own sam2_memory.safetensors" in lines[0]


def test_a_sam2_built_as_metas_gets_no_custom_build_note():
    assert custom_sam2_note(SamConfig()) == ""  # the released LENS: Hiera-L as Meta built it
    assert custom_sam2_note(SamConfig("configs/sam2/sam2_hiera_t.yaml", ["++model.image_size=128"], 128)) != ""


def test_track_help_lists_its_options():
    code, stdout, _ = run_cli("track", "--help")
    assert code == 0
    for option in ("--video", "--prompt", "--out-dir", "--reason-every", "--sam-memory-checkpoint", "--lost-after"):
        assert option in stdout
    code, stdout, _ = run_cli("--help")
    assert code == 0 and "track" in stdout


def test_track_resets_and_regrounds_when_the_frame_size_changes(tiny_dir, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip(4)):
        Image.fromarray(frame if i < 2 else frame[:100, :140]).save(frames / f"{i}.png")
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        "track", "--model", tiny_dir, "--video", frames, "--prompt", "the cup", "--out-dir", out, "--no-progress"
    )
    assert code == 0, stderr
    records = read_jsonl(out / "tracks.jsonl")
    assert [r["source"] for r in records] == ["lens", "tracker", "none", "lens"]
    assert records[2]["state"] == "lost" and records[2]["mask_pixels"] == 0
    assert records[2]["reason"] == "frame size changed from 160x120 to 140x100: target reset"
    assert records[3]["state"] == "tracking" and records[3]["reason"] == "grounded"
    assert [np.asarray(Image.open(out / r["mask_png"])).shape for r in records] == [CLIP_HW] * 2 + [(100, 140)] * 2
    assert count_frames(out / "overlay.mp4") == 4


def test_several_targets_are_tracked_together_and_each_is_regrounded_on_its_own(tiny_dir):
    """ReasonAndTrack with a command naming two objects: one image-encoder pass per frame for both, the masks of a
    tracker that follows both from the LENS masks; a target the tracker drops is lost and re-grounded alone, the
    other keeps its memory (its conditioning frame stays the first one)."""
    from lens_model.inference.pipeline import LensPipeline
    from lens_model.model.sam_memory import load_sam_memory
    from lens_model.tracking.track_video import ReasonAndTrack
    from lens_model.tracking.tracker import StreamingTracker

    pipe = LensPipeline.from_pretrained(str(tiny_dir), device="cpu", max_new_tokens=8)
    memory = load_sam_memory(pipe.config.sam, tiny_dir)
    frames = clip(5)
    runner = ReasonAndTrack(pipe, StreamingTracker.from_lens_model(pipe.model, memory), "the cup and the plant",
                            multi_target=True)  # fmt: skip
    first = runner.step(frames[0], 0.0)
    assert [(t.target_id, t.phrase, t.source) for t in first.targets] == [
        (1, "the cup", "lens"),
        (2, "the plant", "lens"),
    ]
    direct = StreamingTracker.from_lens_model(pipe.model, memory)
    direct.start(1, first.targets[0].mask, frames[0])
    direct.start(2, first.targets[1].mask, None)
    second = runner.step(frames[1], 0.1)
    want = direct.track(frames[1])
    assert runner.tracker.frame_index == direct.frame_index == 1  # two frames, one encoder pass each
    for t in second.targets:
        assert t.source == "tracker" and np.array_equal(t.mask, want[t.target_id].mask)
    assert np.array_equal(second.as_command().label_image() > 0, want[1].mask | want[2].mask)

    runner.tracker.remove(2)  # the tracker drops target 2: lost at once (no mask), re-grounding asked for it alone
    third = runner.step(frames[2], 0.2)
    assert [t.decision.state.value for t in third.targets] == ["tracking", "lost"]
    assert runner.reground_ids == [2] and third.targets[1].decision.reason == "no mask"
    fourth = runner.step(frames[3], 0.3)  # LENS on the command; only target 2 restarts from it
    assert [t.source for t in fourth.targets] == ["tracker", "lens"]
    assert [t.decision.state.value for t in fourth.targets] == ["tracking", "tracking"]
    assert runner.tracker.targets[1].start_frame == 0 and runner.tracker.targets[2].start_frame == 3
    assert runner.tracker.frame_index == 3 and runner.lens_queries == 2  # the re-grounding reused the frame's pass


def test_track_multi_target_writes_labels_and_a_line_per_target(tiny_dir, tmp_path):
    frames = frame_folder(tmp_path, 3)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "track", "--model", tiny_dir, "--video", frames, "--prompt", "the cup and the plant", "--multi-target",
        "--out-dir", out, "--fps", "10",
    )  # fmt: skip
    assert code == 0, stderr
    records = read_jsonl(out / "tracks.jsonl")
    assert [(r["frame"], r["target_id"], r["phrase"]) for r in records] == [
        (f, k, p) for f in range(3) for k, p in ((1, "the cup"), (2, "the plant"))
    ]
    for f in range(3):
        labels = np.asarray(Image.open(out / "labels" / f"{f:06d}.png"))
        union = np.asarray(Image.open(out / "masks" / f"{f:06d}.png"))
        assert np.array_equal(labels > 0, union == 255) and set(np.unique(labels)) <= {0, 1, 2}
        first = [r for r in records if r["frame"] == f and r["target_id"] == 1][0]
        assert first["mask_pixels"] == int((labels == 1).sum())  # the first named keeps overlapping pixels
    code, _, stderr = run_cli(
        "track", "--model", tiny_dir, "--video", frames, "--prompt", "the cup,, the plant", "--multi-target",
        "--out-dir", tmp_path / "bad",
    )  # fmt: skip
    assert code != 0 and "empty target phrase inside ',,'" in stderr and not (tmp_path / "bad").exists()
