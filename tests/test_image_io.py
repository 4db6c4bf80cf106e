"""Image loading: conversions checked pixel by pixel, every bad input with its message."""
import io

import numpy as np
import pytest
from PIL import Image

from lens_model.errors import ImageError, PromptError
from lens_model.image_io import load_image, read_prompt

from conftest import SAMPLE_PHOTO


def test_rgb_path_pil_and_array_agree(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(rgb), rgb):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags["C_CONTIGUOUS"]
        assert np.array_equal(out, rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.full((5, 6), 77, np.uint8)).save(tmp_path / "g.png")
    assert (load_image(tmp_path / "g.png") == 77).all()
    assert load_image(np.full((5, 6), 77, np.uint8)).shape == (5, 6, 3)


def test_rgba_drops_alpha_keeping_colour(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[0, 0].tolist() == [10, 20, 30]
    assert load_image(rgba)[0, 0].tolist() == [10, 20, 30]


def test_16bit_keeps_the_high_byte(tmp_path):
    data = np.full((3, 4), 0x1234, np.uint16)
    Image.fromarray(data).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    assert (load_image(tmp_path / "d.png") == 0x12).all()
    assert (load_image(np.full((3, 4, 3), 0xABCD, np.uint16)) == 0xAB).all()


def test_palette_and_exif_rotation(tmp_path):
    Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (6, 8, 3)
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (20, 10, 3)


def test_sample_photo_is_a_real_photo():
    rgb = load_image(SAMPLE_PHOTO)
    assert rgb.shape == (512, 512, 3)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 5000


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.jpg", "image file not found"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "empty.png").write_bytes(b"") and None or d / "empty.png", "image file is empty"),
    (lambda d: (d / "noise.png").write_bytes(np.random.default_rng(0).bytes(500)) and None or d / "noise.png", "not a readable image"),
])
def test_bad_files(tmp_path, make, message):
    with pytest.raises(ImageError, match=message):
        load_image(make(tmp_path))


def test_truncated_jpeg_is_rejected_with_its_path(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=rf"{path}.*not a readable image \(corrupt or truncated"):
        load_image(path)


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 4, 3), np.float32), r"dtype float32 .*expected HxWx3 uint8"),
    (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\); expected HxWx3 uint8"),
    (np.zeros((0, 4, 3), np.uint8), "image array is empty"),
    (np.zeros((2, 4, 4, 3), np.uint8), r"shape \(2, 4, 4, 3\)"),
])
def test_bad_arrays(array, message):
    with pytest.raises(ImageError, match=message):
        load_image(array)


def test_unsupported_type():
    with pytest.raises(ImageError, match="unsupported image type list"):
        load_image([[1, 2, 3]])


@pytest.mark.parametrize("prompt", [None, "", "   \n\t", 3])
def test_empty_prompts(prompt):
    with pytest.raises(PromptError, match="prompt is empty"):
        read_prompt(prompt)


def test_prompt_is_stripped():
    assert read_prompt("  the red cup \n") == "the red cup"
