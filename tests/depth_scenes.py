"""Analytic RGB-D scenes for the 3D-target tests: a box in front of a tilted plane, seen by a known pinhole camera,
ray-cast into a depth image (z along the optical axis, metres) with the box's mask and true surface points."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 640, 480
# A wall 1.5 m away on the optical axis, tilted so that its depth changes across the image.
PLANE_NORMAL = np.array([0.0, -0.2, 1.0]) / np.linalg.norm([0.0, -0.2, 1.0])
PLANE_POINT = np.array([0.0, 0.0, 1.5])


@dataclass
class Scene:
    depth: np.ndarray  # (H, W) float32 metres
    mask: np.ndarray  # (H, W) bool: the box is the first surface hit
    points: np.ndarray  # (H, W, 3) float64: the surface point seen at each pixel


def box_bounds(center, size) -> tuple[np.ndarray, np.ndarray]:
    center, size = np.asarray(center, float), np.asarray(size, float)
    return center - size / 2, center + size / 2


def cast(rays: np.ndarray, center, size) -> tuple[np.ndarray, np.ndarray]:
    """Rays (..., 3) with z = 1 from the origin -> (depth t along them (= z), hit-the-box mask)."""
    low, high = box_bounds(center, size)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = low / rays, high / rays
    t_near = np.max(np.minimum(t1, t2), axis=-1)
    t_far = np.min(np.maximum(t1, t2), axis=-1)
    on_box = (t_far >= t_near) & (t_near > 0)
    t_plane = (PLANE_NORMAL @ PLANE_POINT) / (rays @ PLANE_NORMAL)
    return np.where(on_box, t_near, t_plane), on_box


def render(center=(0.05, -0.02, 1.0), size=(0.2, 0.15, 0.1), k=K, width=WIDTH, height=HEIGHT) -> Scene:
    """The ideal (undistorted) pinhole image: one ray through each pixel centre."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)
    t, on_box = cast(rays, center, size)
    return Scene(t.astype(np.float32), on_box, rays * t[..., None])


def render_distorted(d, center, size, k=K, width=WIDTH, height=HEIGHT, oversample=2) -> Scene:
    """The image a camera with distortion `d` sees: surface points of a finer undistorted ray grid (reaching past
    the image) projected with cv2.projectPoints and z-buffered into pixels."""
    margin = 0.15
    us = np.linspace(-margin * width, (1 + margin) * width, int(width * (1 + 2 * margin) * oversample))
    vs = np.linspace(-margin * height, (1 + margin) * height, int(height * (1 + 2 * margin) * oversample))
    u, v = np.meshgrid(us, vs)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1).reshape(-1, 3)
    t, on_box = cast(rays, center, size)
    points = rays * t[:, None]
    pixels, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), k, np.asarray(d, float))
    cols, rows = np.rint(pixels.reshape(-1, 2)).astype(np.int64).T
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    flat, t, on_box, points = rows[inside] * width + cols[inside], t[inside], on_box[inside], points[inside]
    order = np.lexsort((t, flat))  # by pixel, nearest first
    pixel, first = np.unique(flat[order], return_index=True)
    won = order[first]  # the nearest sample of each pixel
    assert pixel.size == width * height, "oversample more: some pixels got no sample"
    depth, mask, seen = t[won], on_box[won], points[won]
    return Scene(
        depth.reshape(height, width).astype(np.float32), mask.reshape(height, width), seen.reshape(height, width, 3)
    )


def rgb_of(scene: Scene) -> np.ndarray:
    """A colour image of the scene: red box, grey wall."""
    rgb = np.full(scene.mask.shape + (3,), 120, np.uint8)
    rgb[scene.mask] = (200, 30, 30)
    return rgb
