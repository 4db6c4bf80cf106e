"""Image loading: conversions checked pixel by pixel, every bad input with its one-line message."""

import io
import re

import numpy as np
import pytest
from conftest import SAMPLE_PHOTO
from PIL import Image

from lens_model.errors import ImageError, LensError, PromptError
from lens_model.image_io import load_image, read_prompt

EXIF_ORIENTATION = 0x0112


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# --- accepted inputs and conversions ---------------------------------------------------------------------------


def test_rgb_path_pil_and_array_agree(tmp_path):
    rgb = _random_rgb(20, 30)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(rgb), rgb):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags["C_CONTIGUOUS"]
        assert np.array_equal(out, rgb)


def test_non_contiguous_array_comes_back_contiguous():
    rgb = _random_rgb(20, 30)
    view = rgb[:, ::2]
    out = load_image(view)
    assert out.flags["C_CONTIGUOUS"] and np.array_equal(out, view)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.full((5, 6), 77, np.uint8)).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "L"
    for source in (tmp_path / "g.png", np.full((5, 6), 77, np.uint8), np.full((5, 6, 1), 77, np.uint8)):
        out = load_image(source)
        assert out.shape == (5, 6, 3) and out.flags["C_CONTIGUOUS"]
        assert (out == 77).all()


def test_one_bit_image_becomes_black_and_white(tmp_path):
    bits = np.zeros((4, 8), bool)
    bits[:, 4:] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = load_image(tmp_path / "b.png")
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


def test_rgba_and_la_drop_alpha_keeping_colour(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[...] = (10, 20, 30, 0)  # fully transparent: the colour is kept, not replaced by a background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[0, 0].tolist() == [10, 20, 30]
    assert load_image(rgba)[0, 0].tolist() == [10, 20, 30]
    la = Image.fromarray(np.dstack([np.full((3, 3), 90, np.uint8), np.zeros((3, 3), np.uint8)]), "LA")
    assert (load_image(la) == 90).all()


def test_palette_with_transparency_drops_it(tmp_path):
    palette = Image.new("P", (6, 8))
    palette.putpalette([200, 100, 50, 0, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (8, 6, 3) and (out.reshape(-1, 3) == [200, 100, 50]).all()


def test_cmyk_and_ycbcr_become_rgb(tmp_path):
    cmyk = Image.new("CMYK", (4, 2), (255, 0, 0, 0))  # pure cyan ink
    cmyk.save(tmp_path / "c.tif")
    assert (load_image(tmp_path / "c.tif").reshape(-1, 3) == [0, 255, 255]).all()
    gray = load_image(Image.new("YCbCr", (4, 2), (128, 128, 128))).astype(int)
    assert np.abs(gray - 128).max() <= 1  # neutral chroma -> gray


def test_16bit_png_keeps_the_high_byte(tmp_path):
    Image.fromarray(np.full((3, 4), 0x1234, np.uint16)).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = load_image(tmp_path / "d.png")
    assert out.shape == (3, 4, 3) and (out == 0x12).all()


def test_16bit_modes_and_arrays():
    assert Image.fromarray(np.full((2, 2), 0x1234, ">u2")).mode == "I;16B"
    assert (load_image(Image.fromarray(np.full((2, 2), 0x1234, ">u2"))) == 0x12).all()
    assert (load_image(Image.fromarray(np.full((2, 2), 0xFF00, np.uint16))) == 0xFF).all()
    assert (load_image(np.full((3, 4, 3), 0xABCD, np.uint16)) == 0xAB).all()
    assert (load_image(np.full((3, 4), 0x0180, np.uint16)) == 0x01).all()


def test_32bit_integer_mode_is_clipped_to_16_bits():
    values = np.array([[-5, 0x1234, 70000]], np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    assert load_image(image)[0, :, 0].tolist() == [0, 0x12, 0xFF]


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :10] = (250, 0, 0)  # left half red, right half blue
    rgb[:, 10:] = (0, 0, 250)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6  # the camera was turned: rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (20, 10, 3)
    expected = np.rot90(rgb, k=-1)  # clockwise: the left (red) half ends up on top
    assert np.abs(out.astype(int) - expected).mean() < 8
    assert out[2, 5, 0] > 200 and out[17, 5, 2] > 200


def test_sample_photo_is_a_real_photo():
    rgb = load_image(SAMPLE_PHOTO)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 5000  # synthetic pictures have far fewer colours
    assert rgb.std() > 30


# --- bad files --------------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageError, match=f"^image file not found: {re.escape(str(path))}$"):
        load_image(path)
    with pytest.raises(ImageError, match="image file not found"):
        load_image(str(path))


def test_directory(tmp_path):
    with pytest.raises(ImageError, match=f"^{re.escape(str(tmp_path))} is a directory; pass an image file$"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=rf"^image file is empty \(0 bytes\): {re.escape(str(path))}$"):
        load_image(path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("noise.png", np.random.default_rng(0).bytes(500)),
        ("notes.jpg", b"not an image at all\n"),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"),
    ],
)
def test_unidentifiable_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))} is not a readable image \(unknown or unsupported"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    data = _jpeg_bytes(_random_rgb(64, 64))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))} is not a readable image \(corrupt or truncated: "):
        load_image(path)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_random_rgb(64, 64)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))} is not a readable image \(corrupt or truncated"):
        load_image(path)


def test_lazily_opened_truncated_pil_image(tmp_path):
    data = _jpeg_bytes(_random_rgb(64, 64))
    image = Image.open(io.BytesIO(data[: len(data) // 2]))  # opening only reads the header
    with pytest.raises(ImageError, match=r"^PIL image could not be decoded \(corrupt or truncated"):
        load_image(image)


def test_messages_are_one_line(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(_jpeg_bytes(_random_rgb(64, 64))[:400])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert "\n" not in str(info.value) and isinstance(info.value, LensError)


# --- bad PIL images and arrays ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.new("RGB", (0, 5)), r"^image is empty \(0x5 pixels\)"),
        (
            Image.new("F", (4, 4)),
            r"^image is a floating-point \(mode F\) image; expected 8-bit RGB or 8/16-bit grayscale",
        ),
        (Image.new("La", (4, 4)), r"^image has unsupported image mode La; expected RGB, RGBA or grayscale$"),
    ],
)
def test_bad_pil_images(image, message):
    with pytest.raises(ImageError, match=message):
        load_image(image)


@pytest.mark.parametrize(
    "array, message",
    [
        (
            np.zeros((4, 4, 3), np.float32),
            r"^image array has dtype float32 and shape \(4, 4, 3\); expected HxWx3 uint8 RGB",
        ),
        (np.ones((5, 6, 3), np.float64), r"dtype float64 and shape \(5, 6, 3\); expected HxWx3 uint8"),
        (np.zeros((4, 4, 3), bool), r"dtype bool and shape \(4, 4, 3\); expected HxWx3 uint8"),
        (np.zeros((4, 4, 3), np.int64), r"dtype int64 .*expected HxWx3 uint8"),
        (np.zeros((4, 4, 2), np.uint8), r"^image array has shape \(4, 4, 2\); expected HxWx3 uint8 RGB"),
        (np.zeros((4, 4, 5), np.uint16), r"shape \(4, 4, 5\); expected HxWx3 uint8"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"shape \(2, 4, 4, 3\); expected HxWx3 uint8"),
        (np.zeros(12, np.uint8), r"shape \(12,\); expected HxWx3 uint8"),
        (np.zeros((0, 4, 3), np.uint8), r"^image array is empty \(shape \(0, 4, 3\)\)"),
        (np.zeros((4, 0), np.uint8), r"^image array is empty \(shape \(4, 0\)\)"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(ImageError, match=message):
        load_image(array)


@pytest.mark.parametrize("value, name", [([[1, 2, 3]], "list"), (None, "NoneType"), (b"\x89PNG", "bytes"), (3, "int")])
def test_unsupported_types(value, name):
    with pytest.raises(ImageError, match=rf"^unsupported image type {name}; pass a file path, a PIL image"):
        load_image(value)


# --- prompts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [None, "", "   \n\t"])
def test_empty_prompts(prompt):
    with pytest.raises(PromptError, match=r"^prompt is empty: pass a text command such as 'the red cup'$"):
        read_prompt(prompt)


@pytest.mark.parametrize("prompt, name", [(3, "int"), (b"cup", "bytes"), (["cup"], "list")])
def test_non_text_prompts(prompt, name):
    with pytest.raises(PromptError, match=rf"^prompt must be text \(str\), got {name}"):
        read_prompt(prompt)


def test_prompt_is_stripped():
    assert read_prompt("  the red cup \n") == "the red cup"
    assert read_prompt("the astronaut's helmet") == "the astronaut's helmet"
