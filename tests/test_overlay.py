"""Overlay picture: tint inside the mask, outline, green box, caption band; everything else untouched."""
import numpy as np
import pytest

from lens_model.overlay import BOX_COLOR, draw_overlay


def test_overlay_pixels():
    image = np.full((200, 300, 3), 100, np.uint8)
    mask = np.zeros((200, 300), bool)
    mask[80:150, 50:120] = True
    out = np.asarray(draw_overlay(image, mask, box=(180, 60, 280, 180), prompt="the red cup"))
    assert out.shape == image.shape
    blend = np.round(0.55 * 100 + 0.45 * np.array([255, 64, 64])).astype(int)
    assert out[115, 85].tolist() == blend.tolist()  # mask interior
    assert out[80, 85].tolist() == [255, 64, 64]  # mask outline
    assert out[120, 180].tolist() == list(BOX_COLOR)  # box left edge
    assert out[190, 20].tolist() == [100, 100, 100]  # far from everything: unchanged
    band = out[:18, :]
    assert (band == 0).mean() > 0.5 and (band > 200).any()  # dark caption band with white text at the top


def test_overlay_without_mask_box_or_prompt_is_the_image():
    image = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(draw_overlay(image, None)), image)


def test_long_prompt_is_truncated_to_fit():
    out = draw_overlay(np.zeros((60, 80, 3), np.uint8), None, prompt="a very long referring expression " * 10)
    assert out.size == (80, 60)


def test_mask_shape_mismatch():
    with pytest.raises(ValueError, match=r"mask shape \(10, 10\) does not match image shape \(20, 20\)"):
        draw_overlay(np.zeros((20, 20, 3), np.uint8), np.zeros((10, 10), bool))
