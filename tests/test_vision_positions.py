"""Absolute 2-D patch positions (LensConfig.mllm_absolute_positions): the positions follow the image processor's
patch order, the sinusoid is its closed form, and a model with the option tells image positions apart where one
without it cannot (a uniform image gives every merged token the same feature under rotary positions alone)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lens_model.model.checkpoint import load_model
from lens_model.model.tiny import make_tiny
from lens_model.model.vision_positions import patch_positions, sinusoid_2d

PATCH, MERGE = 14, 2


def _coded_image(h_patches: int, w_patches: int) -> Image.Image:
    """Every 14-px patch filled with one colour that spells its (row, column)."""
    rgb = np.zeros((h_patches * PATCH, w_patches * PATCH, 3), np.uint8)
    for r in range(h_patches):
        for c in range(w_patches):
            rgb[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = (10 * r + 5, 10 * c + 5, 128)
    return Image.fromarray(rgb)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return load_model(make_tiny(tmp_path_factory.mktemp("plain") / "m", sam_image_size=64))[1]


def test_patch_positions_follow_the_image_processors_patch_order(processor):
    """Two images of different, non-square sizes in one call: each patch's decoded (row, column) colour matches the
    position `patch_positions` gives it."""
    sizes = [(4, 6), (8, 2)]  # (rows, columns) of 14-px patches: wide, then tall (above min_pixels)
    feats = processor.image_processor(images=[_coded_image(*s) for s in sizes], return_tensors="pt")
    grid = feats["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 6], [1, 8, 2]]
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    patches = feats["pixel_values"].reshape(-1, 3, 2, PATCH, PATCH)  # (P, C, T, 14, 14)
    pixel = patches[:, :, 0, PATCH // 2, PATCH // 2].numpy() * np.array(std)[None] + np.array(mean)[None]  # (P, 3)
    rows, cols = np.rint((pixel[:, 0] * 255 - 5) / 10), np.rint((pixel[:, 1] * 255 - 5) / 10)
    yx = patch_positions(grid, MERGE).numpy()
    heights, widths = np.repeat([4, 8], [24, 16]), np.repeat([6, 2], [24, 16])
    np.testing.assert_allclose(yx[:, 0], (rows + 0.5) / heights, atol=1e-6)
    np.testing.assert_allclose(yx[:, 1], (cols + 0.5) / widths, atol=1e-6)


def test_sinusoid_is_its_closed_form():
    yx = torch.tensor([[0.25, 0.75], [0.5, 0.125]])
    emb = sinusoid_2d(yx, 8)  # two frequencies: pi/2 and pi
    y, x = 0.25, 0.75
    want = [math.sin(y * math.pi / 2), math.sin(y * math.pi), math.cos(y * math.pi / 2), math.cos(y * math.pi)]
    want += [math.sin(x * math.pi / 2), math.sin(x * math.pi), math.cos(x * math.pi / 2), math.cos(x * math.pi)]
    np.testing.assert_allclose(emb[0].numpy(), want, atol=1e-6)
    assert len({tuple(np.round(r, 6)) for r in sinusoid_2d(torch.rand(500, 2), 64).numpy()}) == 500
    with pytest.raises(ValueError, match="divisible by 4"):
        sinusoid_2d(yx, 6)


def _merged_tokens(model, processor, image: Image.Image) -> torch.Tensor:
    feats = processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.encode_mllm_images(feats["pixel_values"], feats["image_grid_thw"])
    return out.pooler_output[0]  # (tokens, hidden)


def test_a_model_with_absolute_positions_tells_positions_apart_and_keeps_the_option(tmp_path, processor):
    """Same seed, same weights: on a uniform (non-square) image every merged token is the same without the option
    and different with it; the option survives save/load; the weights are the same tensors either way."""
    uniform = Image.fromarray(np.full((56, 112, 3), 120, np.uint8))
    plain, _ = load_model(make_tiny(tmp_path / "plain", sam_image_size=64))
    placed, proc = load_model(make_tiny(tmp_path / "abs", sam_image_size=64, absolute_positions=True))
    assert placed.lens_config.mllm_absolute_positions and not plain.lens_config.mllm_absolute_positions
    assert plain.state_dict().keys() == placed.state_dict().keys()
    assert all(torch.equal(v, placed.state_dict()[k]) for k, v in plain.state_dict().items())
    same = _merged_tokens(plain, processor, uniform)
    moved = _merged_tokens(placed, proc, uniform)
    assert same.shape == moved.shape == (8, plain.hidden_size)  # 2 x 4 merge blocks
    assert torch.allclose(same, same[:1].expand_as(same), atol=1e-5)
    distances = torch.cdist(moved, moved)
    assert distances[~torch.eye(len(moved), dtype=torch.bool)].min() > 1e-3
