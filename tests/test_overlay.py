"""Overlay picture: tint inside the mask, outline, green box, caption band; everything else untouched."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from lens_model.overlay import BOX_COLOR, ELLIPSIS, draw_overlay, fit_text

RED = (255, 64, 64)
BAND = 18  # caption band height at scale 1 (images up to ~600 px)


def _photo_like(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(30, 220, (h, w, 3), dtype=np.uint8)


def _scene():
    image = _photo_like(200, 300)
    mask = np.zeros((200, 300), bool)
    mask[80:150, 50:120] = True
    box = (180, 60, 280, 180)
    out = np.asarray(draw_overlay(image, mask, box=box, prompt="the red cup"))
    return image, mask, box, out


def test_output_is_an_rgb_image_of_the_input_size():
    image, _, _, _ = _scene()
    picture = draw_overlay(image, None, box=(1, 2, 30, 40), prompt="cup")
    assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == (300, 200)


def test_mask_interior_is_the_alpha_blend():
    image, mask, _, out = _scene()
    interior = np.zeros_like(mask)
    interior[81:149, 51:119] = True  # inside the one-pixel contour
    blend = np.round(0.55 * image[interior].astype(float) + 0.45 * np.array(RED))
    assert np.abs(out[interior].astype(int) - blend).max() <= 1
    assert (out[interior, 0].astype(int) >= image[interior, 0]).all()  # tinted toward red


def test_mask_contour_is_drawn_in_the_colour():
    _, mask, _, out = _scene()
    for y, x in [(80, 85), (149, 85), (115, 50), (115, 119), (80, 50)]:
        assert out[y, x].tolist() == list(RED), (y, x)


def test_box_outline_is_green():
    _, _, (x0, y0, x1, y1), out = _scene()
    for y, x in [(120, x0), (120, x0 + 1), (120, x1), (y0, 230), (y1, 230), (y1 - 1, 230)]:
        assert out[y, x].tolist() == list(BOX_COLOR), (y, x)


def test_pixels_away_from_mask_box_and_caption_are_unchanged():
    image, mask, (x0, y0, x1, y1), out = _scene()
    touched = np.zeros(mask.shape, bool)
    touched[:BAND] = True
    touched[79:151, 49:121] = True
    touched[y0 - 1 : y1 + 2, x0 - 1 : x0 + 3] = touched[y0 - 1 : y1 + 2, x1 - 2 : x1 + 2] = True
    touched[y0 - 1 : y0 + 3, x0 - 1 : x1 + 2] = touched[y1 - 2 : y1 + 2, x0 - 1 : x1 + 2] = True
    assert np.array_equal(out[~touched], image[~touched])
    assert np.array_equal(out[120, x0 + 5 : x1 - 5], image[120, x0 + 5 : x1 - 5])  # box interior untouched


def test_caption_band_is_dark_with_white_text():
    image, _, _, out = _scene()
    band = out[:BAND]
    assert (band.max(axis=2) < 40).mean() > 0.8  # mostly dark across the full width
    assert (band.min(axis=2) > 200).sum() > 20  # white text pixels
    assert (band[:, -60:] < 40).all()  # a short prompt leaves the right of the band plain dark
    assert np.array_equal(out[BAND : BAND + 20, :40], image[BAND : BAND + 20, :40])


def test_caption_also_readable_on_a_dark_image():
    out = np.asarray(draw_overlay(np.zeros((100, 200, 3), np.uint8), None, prompt="the bolt"))
    assert (out[:BAND].min(axis=2) > 200).sum() > 10


def test_nothing_to_draw_gives_the_image_back_unchanged():
    image = _photo_like(30, 40)
    copy = image.copy()
    assert np.array_equal(np.asarray(draw_overlay(image, None)), image)
    assert np.array_equal(np.asarray(draw_overlay(image, np.zeros((30, 40), bool))), image)
    draw_overlay(image, np.ones((30, 40), bool), (1, 1, 20, 20), "cup")
    assert np.array_equal(image, copy)  # the caller's array is not painted on


def test_colour_and_alpha_are_respected():
    image = np.full((50, 60, 3), 100, np.uint8)
    mask = np.zeros((50, 60), bool)
    mask[20:40, 20:40] = True
    out = np.asarray(draw_overlay(image, mask, None, None, color=(0, 0, 255), alpha=1.0))
    assert out[30, 30].tolist() == [0, 0, 255]
    out = np.asarray(draw_overlay(image, mask, None, None, color=(0, 200, 0), alpha=0.0))
    assert out[30, 30].tolist() == [100, 100, 100] and out[20, 30].tolist() == [0, 200, 0]


def test_mask_touching_the_border_and_uint8_masks():
    image = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[:, :10] = 255
    out = np.asarray(draw_overlay(image, mask, None, None))
    assert out[20, 0].tolist() == list(RED)  # image border is an edge of the mask
    assert out[20, 9].tolist() == list(RED)
    assert out[20, 5].tolist() == np.round(0.55 * 100 + 0.45 * np.array(RED)).astype(int).tolist()


def test_lines_and_caption_scale_with_image_size():
    image = np.full((1200, 1600, 3), 128, np.uint8)  # scale 4: box 8 px wide, band 72 px
    out = np.asarray(draw_overlay(image, None, box=(400, 400, 1000, 900), prompt="the gripper"))
    assert (out[600, 400:408] == BOX_COLOR).all() and out[600, 409].tolist() == [128, 128, 128]
    assert (out[:72].max(axis=2) < 40).mean() > 0.8 and out[80, 10].tolist() == [128, 128, 128]
    assert (out[:72].min(axis=2) > 200).sum() > 16 * 20  # bigger glyphs


def test_box_is_ordered_and_clipped():
    image = np.full((50, 60, 3), 100, np.uint8)
    out = np.asarray(draw_overlay(image, None, box=(40, 45, 10, -20)))  # corners swapped, partly outside
    assert out[30, 10].tolist() == list(BOX_COLOR) and out[30, 40].tolist() == list(BOX_COLOR)
    assert out[0, 25].tolist() == list(BOX_COLOR)
    np.asarray(draw_overlay(image, None, box=np.array([5.5, 6.2, 30.1, 20.9])))  # numpy boxes work too


def test_long_prompt_is_truncated_with_an_ellipsis():
    image = np.zeros((60, 80, 3), np.uint8)
    out = draw_overlay(image, None, prompt="a very long referring expression " * 10)
    assert out.size == (80, 60)
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = ImageFont.load_default(size=12)
    text = fit_text(draw, "the small red cup to the left of the blue plate", font, 72)
    assert text.endswith(ELLIPSIS) and text.startswith("the") and draw.textlength(text, font=font) <= 72
    assert fit_text(draw, "cup", font, 72) == "cup"


def test_huge_prompt_is_cut_to_the_image_width():
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = ImageFont.load_default(size=12)
    text = fit_text(draw, "cup " * 50_000, font, 190)
    assert text.endswith(ELLIPSIS) and draw.textlength(text, font=font) <= 190
    assert draw_overlay(np.zeros((100, 200, 3), np.uint8), None, prompt="cup " * 50_000).size == (200, 100)


def test_mask_shape_mismatch():
    with pytest.raises(ValueError, match=r"^mask shape \(10, 10\) does not match image shape \(20, 20\)$"):
        draw_overlay(np.zeros((20, 20, 3), np.uint8), np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match=r"mask shape \(1, 20, 20\) does not match image shape \(20, 20\)"):
        draw_overlay(np.zeros((20, 20, 3), np.uint8), np.zeros((1, 20, 20), bool))


@pytest.mark.parametrize("image", [np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.float32)])
def test_bad_image(image):
    with pytest.raises(ValueError, match="image_rgb must be HxWx3 uint8"):
        draw_overlay(image, None)


@pytest.mark.parametrize("box", [(1, 2, 3), (0, 0, float("nan"), 5)])
def test_bad_box(box):
    with pytest.raises(ValueError, match=r"box must be 4 finite pixel coordinates"):
        draw_overlay(np.zeros((20, 20, 3), np.uint8), None, box=box)
