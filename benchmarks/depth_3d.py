"""3D target and point-cloud speed (lens_model.geometry.target3d, lens_ros.fields): numpy + OpenCV, no torch, no GPU.

    python benchmarks/depth_3d.py [--repeats 50] [--threads 2]

For 640x480 and 1280x720 depth images of a box in front of a wall (tests/depth_scenes.py; the mask covers about a
sixth of the image, with noise, holes and a distorted camera) it prints the time per mask of estimate_target (goal:
<= 5 ms on 2 CPU cores) next to a baseline measured in the same run: the same steps written per pixel in Python
(erosion test, validity, back-projection) on a 64x64 crop, scaled to the mask's pixel count, and the ratio. Then
the points per second of the PointCloud2 packing (cloud_fields) against a per-point struct.pack loop.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _smoke import parse_with_smoke  # noqa: E402
from depth_scenes import render  # noqa: E402

from lens_model.geometry.target3d import PinholeCamera, TargetOptions, estimate_target  # noqa: E402
from lens_ros.fields import cloud_fields

D = [-0.25, 0.08, 0.001, -0.0015, -0.01]


def best_of(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def per_pixel_target(mask, depth, camera, erosion_px=2):
    """The naive baseline: each step as a Python loop over pixels (no outlier rejection beyond the median)."""
    h, w = mask.shape
    rays = camera.rays()
    zs, points = [], []
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            inside = all(
                0 <= r + dr < h and 0 <= c + dc < w and mask[r + dr, c + dc]
                for dr in range(-erosion_px, erosion_px + 1)
                for dc in range(-erosion_px, erosion_px + 1)
                if dr * dr + dc * dc <= erosion_px * erosion_px
            )
            z = float(depth[r, c])
            if inside and z > 0 and np.isfinite(z):
                zs.append(z)
                points.append((rays[r, c, 0] * z, rays[r, c, 1] * z, z))
    median = sorted(zs)[len(zs) // 2] if zs else float("nan")
    n = max(len(points), 1)
    return median, tuple(sum(p[i] for p in points) / n for i in range(3))


def per_point_cloud(points, colours) -> bytes:
    out = bytearray()
    for (x, y, z), (r, g, b) in zip(points.tolist(), colours.tolist()):
        out += struct.pack("<fffI", x, y, z, (r << 16) | (g << 8) | b)
    return bytes(out)


def scene_at(width: int, height: int, rng):
    scale = width / 640
    k = np.array([[525.0 * scale, 0, (width - 1) / 2], [0, 525.0 * scale, (height - 1) / 2], [0, 0, 1]])
    scene = render(center=(0.05, -0.02, 0.8), size=(0.35, 0.3, 0.1), k=k, width=width, height=height)
    depth = scene.depth + rng.normal(0, 0.004, scene.depth.shape).astype(np.float32)
    depth[rng.random(depth.shape) < 0.03] = np.nan
    mask = cv2.dilate(scene.mask.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool)
    return mask, depth, PinholeCamera(width, height, k, D, "plumb_bob")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="OpenCV threads (numpy here is single-threaded)")
    args = parse_with_smoke(parser, dict(repeats=2))
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, OpenCV {cv2.__version__}, {args.threads} OpenCV thread(s), best of {args.repeats}")
    for width, height in ((640, 480), (1280, 720)):
        mask, depth, camera = scene_at(width, height, rng)
        start = time.perf_counter()
        camera.rays()  # once per camera: the undistortion table
        table = time.perf_counter() - start
        seconds = best_of(lambda: estimate_target(mask, depth, camera, TargetOptions()), args.repeats)
        target = estimate_target(mask, depth, camera)
        rows, cols = np.nonzero(mask)
        r0, c0 = rows.min() + (rows.max() - rows.min()) // 2 - 32, cols.min() + (cols.max() - cols.min()) // 2 - 32
        crop = np.s_[r0 : r0 + 64, c0 : c0 + 64]
        crop_camera = PinholeCamera(64, 64, camera.k - [[0, 0, c0], [0, 0, r0], [0, 0, 0]], camera.d, "plumb_bob")
        crop_camera.rays()
        naive = best_of(lambda: per_pixel_target(mask[crop], depth[crop], crop_camera), 1)
        naive_per_mask = naive * mask.sum() / mask[crop].sum()
        print(
            f"{width}x{height}: mask {mask.sum()} px ({mask.mean():.0%}), {target.num_points} points: "
            f"{seconds * 1e3:.2f} ms per mask (goal <= 5 ms: {'met' if seconds <= 0.005 else 'NOT met'}); "
            f"per-pixel Python baseline {naive_per_mask * 1e3:.0f} ms per mask (from a 64x64 crop), "
            f"ratio {naive_per_mask / seconds:.0f}x; undistortion table once per camera {table * 1e3:.0f} ms"
        )
        colours = rng.integers(0, 256, (target.num_points, 3), dtype=np.uint8)
        packed = best_of(lambda: cloud_fields(target.points, None, colours), args.repeats)
        slow = best_of(lambda: per_point_cloud(target.points, colours), 1)
        same = bytes(cloud_fields(target.points, None, colours).data) == per_point_cloud(target.points, colours)
        print(
            f"    PointCloud2 packing: {target.num_points / packed / 1e6:.1f} M points/s "
            f"(per-point struct.pack {target.num_points / slow / 1e6:.2f} M points/s, ratio {slow / packed:.0f}x, "
            f"identical bytes: {same})"
        )


if __name__ == "__main__":
    main()
