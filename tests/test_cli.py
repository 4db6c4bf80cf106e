"""`lens` CLI end to end on the bundled photo, and every bad input the user can give it."""

import json
import shutil

import numpy as np
import pytest
from conftest import SAMPLE_PHOTO, run_cli
from PIL import Image

from lens_cli import main


def test_segment_sample_photo_end_to_end(tiny_dir, tmp_path):
    code, out, err = run_cli(
        "segment",
        "--model",
        tiny_dir,
        "--image",
        SAMPLE_PHOTO,
        "--prompt",
        "the astronaut's helmet",
        "--out-mask",
        tmp_path / "mask.png",
        "--out-overlay",
        tmp_path / "overlay.png",
        "--json",
        tmp_path / "result.json",
        "--device",
        "cpu",
        "--max-new-tokens",
        "6",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data == json.loads((tmp_path / "result.json").read_text())
    photo = Image.open(SAMPLE_PHOTO)
    assert data["image_size"] == [photo.height, photo.width]
    assert data["prompt"] == "the astronaut's helmet"
    assert set(data) >= {"box", "score", "text", "timings", "mask_pixels", "box_error", "mllm_image_size"}
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (photo.height, photo.width) and set(np.unique(mask)) <= {0, 255}
    assert int((mask == 255).sum()) == data["mask_pixels"]
    overlay = Image.open(tmp_path / "overlay.png")
    assert overlay.size == photo.size


def test_help_lists_commands_and_options():
    code, out, _ = run_cli("--help")
    assert code == 0 and "segment" in out and "make-tiny" in out
    code, out, _ = run_cli("segment", "--help")
    assert code == 0 and all(opt in out for opt in ("--out-overlay", "--device", "--max-new-tokens", "--context-pass"))


def test_help_lists_the_library_commands_and_those_built_on_training_and_lens_ros():
    code, out, _ = run_cli("--help")
    commands = out.split("positional arguments:")[1].split("options:")[0]
    listed = [
        line.split()[0] for line in commands.splitlines() if line.startswith("    ") and not line.startswith("     ")
    ]  # command names, not wrapped help
    library = ["segment", "track", "make-tiny", "export", "eval", "make-synthetic"]
    assert code == 0 and listed == [*library, "plot-run", "bag", "demo"]


def _expect_user_error(capsys, argv, pattern):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("lens ")]
    assert len(errors) == 1 and "Traceback" not in err, err  # (model-loading progress bars may precede it)
    assert pattern in errors[0], err


@pytest.fixture()
def seg(tiny_dir):
    return ["segment", "--model", tiny_dir, "--device", "cpu", "--max-new-tokens", "2"]


def test_missing_corrupt_and_unsupported_images(capsys, seg, tmp_path):
    _expect_user_error(capsys, seg + ["--image", tmp_path / "nope.jpg", "--prompt", "cup"], "image file not found")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(SAMPLE_PHOTO.read_bytes()[:2000])
    _expect_user_error(capsys, seg + ["--image", truncated, "--prompt", "cup"], "not a readable image")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    _expect_user_error(capsys, seg + ["--image", text, "--prompt", "cup"], "not a readable image")
    _expect_user_error(capsys, seg + ["--image", tmp_path, "--prompt", "cup"], "is a directory")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grayscale_rgba_and_16bit_images_are_converted(capsys, seg, tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16))
    elif mode == "L":
        image = Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8))
    else:
        image = Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8))
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    image.save(path)
    assert main([str(a) for a in seg + ["--image", path, "--prompt", "cup"]]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [40, 50]


def test_empty_prompt(capsys, seg):
    _expect_user_error(capsys, seg + ["--image", SAMPLE_PHOTO, "--prompt", "   "], "prompt is empty")


def test_prompt_longer_than_the_model_accepts(capsys, seg):
    _expect_user_error(
        capsys, seg + ["--image", SAMPLE_PHOTO, "--prompt", "cup " * 2500], "this model accepts at most 2048"
    )


def test_model_directory_missing_or_incomplete(capsys, tiny_dir, tmp_path):
    base = ["segment", "--image", SAMPLE_PHOTO, "--prompt", "cup", "--device", "cpu"]
    _expect_user_error(capsys, base + ["--model", tmp_path / "no-model"], "model directory not found")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    (partial / "tokenizer.json").unlink()
    (partial / "model.safetensors").unlink()
    _expect_user_error(capsys, base + ["--model", partial], "has no weights")


@pytest.mark.parametrize(
    "missing, message",
    [
        ("tokenizer.json", "has no tokenizer: expected tokenizer.json (or vocab.json and merges.txt)"),
        ("chat_template.jinja", "has no chat template: expected chat_template.jinja"),
        ("processor_config.json", "has no image-processor config: expected preprocessor_config.json"),
        ("model.safetensors", "has no weights: expected model.safetensors"),
    ],
)
def test_each_missing_model_file_is_named(capsys, tiny_dir, tmp_path, missing, message):
    """An otherwise complete model directory without one file: one line naming what is missing."""
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    (partial / missing).unlink()
    base = ["segment", "--image", SAMPLE_PHOTO, "--prompt", "cup", "--device", "cpu", "--max-new-tokens", "2"]
    _expect_user_error(capsys, base + ["--model", partial], f"{partial} {message}")


def test_weights_that_do_not_match_the_config(capsys, tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 96
    (bad / "config.json").write_text(json.dumps(cfg))
    _expect_user_error(
        capsys,
        ["segment", "--model", bad, "--image", SAMPLE_PHOTO, "--prompt", "cup", "--device", "cpu"],
        "do not match",
    )


def test_default_model_unreachable_offline_says_what_to_do(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _expect_user_error(
        capsys,
        ["segment", "--image", SAMPLE_PHOTO, "--prompt", "cup", "--device", "cpu"],
        "could not fetch 'OuyBin/LENS'",
    )


def test_cuda_requested_without_gpu(capsys, seg):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _expect_user_error(
        capsys,
        ["segment", "--model", seg[2], "--image", SAMPLE_PHOTO, "--prompt", "cup", "--device", "cuda"],
        "no CUDA GPU is available",
    )


def test_make_tiny_refuses_to_overwrite(capsys, tmp_path):
    out = tmp_path / "tiny"
    assert main(["make-tiny", "--out", str(out), "--seed", "1"]) == 0
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    _expect_user_error(capsys, ["make-tiny", "--out", str(out)], "pass --overwrite")
