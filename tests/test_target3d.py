"""lens_model.geometry.target3d on analytic scenes (tests/depth_scenes.py): a box in front of a tilted wall rendered
into depth with a known pinhole camera, with and without lens distortion, noise and flying pixels."""

import cv2
import numpy as np
import pytest
import yaml
from depth_scenes import HEIGHT, WIDTH, K, render, render_distorted

from lens_model.errors import DepthError
from lens_model.geometry.target3d import PinholeCamera, TargetOptions, depth_to_metres, estimate_target, load_depth

CENTER, SIZE = (0.05, -0.02, 1.0), (0.2, 0.15, 0.1)
FRONT = np.array([0.05, -0.02, 0.95])  # centre of the only visible face (the box straddles the optical axis)
CAMERA = PinholeCamera(WIDTH, HEIGHT, K)


@pytest.fixture(scope="module")
def scene():
    return render(CENTER, SIZE)


def test_clean_depth_gives_the_visible_face_centre_and_extent_within_5_mm(scene):
    target = estimate_target(scene.mask, scene.depth, CAMERA)
    assert target.ok and target.reason == ""
    assert np.abs(target.centroid - FRONT).max() < 0.005
    assert target.median_depth == pytest.approx(0.95, abs=1e-6)
    # the box of the trimmed (2..98 %) points of the eroded face: 0.2 x 0.15 m, flat in z
    assert target.box_size == pytest.approx([0.2, 0.15, 0.0], abs=0.02)
    assert np.abs(target.box_center - FRONT).max() < 0.005
    assert target.valid_fraction == 1.0 and target.num_points == len(target.points) == len(target.pixels)
    # erosion took the 2-pixel rim off: fewer points than mask pixels, all of them on the face
    assert 0.85 * scene.mask.sum() < target.num_points < scene.mask.sum()
    assert np.allclose(target.points[:, 2], 0.95) and (np.abs(target.points[:, 0] - 0.05) <= 0.1).all()
    rows, cols = target.pixels.T
    assert np.allclose(target.points, scene.points[rows, cols], atol=1e-5)


def test_noise_flying_pixels_and_a_loose_mask_stay_within_2_cm(scene):
    rng = np.random.default_rng(0)
    depth = scene.depth + rng.normal(0, 0.004, scene.depth.shape).astype(np.float32)  # 4 mm sensor noise
    # flying pixels: a 3-pixel band around the box with depths between the box and the wall
    band = cv2.dilate(scene.mask.view(np.uint8), np.ones((7, 7), np.uint8)).view(bool) & ~cv2.erode(
        scene.mask.view(np.uint8), np.ones((3, 3), np.uint8)
    ).view(bool)
    mix = rng.uniform(0, 1, band.sum()).astype(np.float32)
    depth[band] = 0.95 * (1 - mix) + scene.depth[band] * mix
    depth[rng.random(depth.shape) < 0.05] = 0  # 5 % holes
    depth[rng.random(depth.shape) < 0.01] = 4.0  # 1 % far outliers
    loose = cv2.dilate(scene.mask.view(np.uint8), np.ones((7, 7), np.uint8)).view(bool)  # mask 3 px too large
    target = estimate_target(loose, depth, CAMERA)
    assert target.ok
    assert np.abs(target.centroid - FRONT).max() < 0.02
    assert 0.9 < target.valid_fraction < 0.97  # the holes
    # the same points without erosion and outlier rejection: the flying pixels and the wall pull the mean back
    naive = estimate_target(loose, depth, CAMERA, TargetOptions(erosion_px=0, mad_k=1e6))
    assert np.abs(naive.centroid - FRONT).max() > 2 * np.abs(target.centroid - FRONT).max()


def test_16uc1_millimetres_and_32fc1_metres_give_the_same_target(scene):
    millimetres = np.rint(scene.depth * 1000).astype(np.uint16)
    millimetres[:10] = 0  # invalid in both
    metres = millimetres.astype(np.float32) / 1000
    metres[:10] = np.nan
    a = estimate_target(scene.mask, depth_to_metres(millimetres), CAMERA)
    b = estimate_target(scene.mask, depth_to_metres(metres), CAMERA)
    assert a.ok and b.ok and a.num_points == b.num_points
    for name in ("centroid", "box_center", "box_size", "points"):
        assert np.allclose(getattr(a, name), getattr(b, name), atol=1e-6), name
    # another depth unit: 16UC1 in tenths of a millimetre
    c = estimate_target(scene.mask, depth_to_metres(millimetres * 10, scale=0.0001), CAMERA)
    assert np.allclose(c.centroid, a.centroid, atol=1e-6)


def test_depth_to_metres_marks_invalid_values_and_refuses_other_types():
    out = depth_to_metres(np.array([[0, 1500]], np.uint16))
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(1.5)
    out = depth_to_metres(np.array([[np.nan, -1.0, np.inf, 0.75]], np.float32))
    assert np.isnan(out[0, :3]).all() and out[0, 3] == 0.75
    with pytest.raises(DepthError, match="dtype uint8; supported: 16UC1"):
        depth_to_metres(np.zeros((4, 4), np.uint8))
    with pytest.raises(DepthError, match=r"must be \(H, W\)"):
        depth_to_metres(np.zeros((4, 4, 3), np.uint16))


D_PLUMB_BOB = [-0.25, 0.08, 0.001, -0.0015, -0.01]
D_RATIONAL = [-0.25, 0.08, 0.001, -0.0015, -0.01, 0.02, 0.0, 0.001]
SMALL_K = np.array([[262.5, 0.0, 159.5], [0.0, 262.5, 119.5], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("model,d", [("plumb_bob", D_PLUMB_BOB), ("rational_polynomial", D_RATIONAL)])
def test_a_distorted_camera_gives_the_same_3d_points_as_the_rectified_equivalent(model, d):
    center, size = (0.25, 0.1, 1.0), (0.2, 0.15, 0.1)  # off-axis, where distortion moves pixels most
    distorted = render_distorted(d, center, size, k=SMALL_K, width=320, height=240)
    ideal = render(center, size, k=SMALL_K, width=320, height=240)
    camera = PinholeCamera(320, 240, SMALL_K, d, model)
    assert camera.undistorts
    # every pixel's point equals the surface point the camera saw there (up to the half-pixel splat rounding)
    rows, cols = np.nonzero(np.ones((240, 320), bool))
    points = camera.backproject(rows, cols, distorted.depth[rows, cols])
    pixel = distorted.depth[rows, cols] / SMALL_K[0, 0]  # metres per pixel at each depth
    error = np.linalg.norm(points - distorted.points[rows, cols], axis=1) / pixel  # in pixels
    assert np.median(error) < 0.6 and np.percentile(error, 99) < 1.0  # the samples are up to half a pixel off
    ignored = PinholeCamera(320, 240, SMALL_K).backproject(rows, cols, distorted.depth[rows, cols])
    assert np.percentile(np.linalg.norm(ignored - distorted.points[rows, cols], axis=1) / pixel, 99) > 10
    # the target equals the one of the undistorted camera
    a = estimate_target(distorted.mask, distorted.depth, camera)
    b = estimate_target(ideal.mask, ideal.depth, PinholeCamera(320, 240, SMALL_K))
    assert np.abs(a.centroid - b.centroid).max() < 0.005 and np.abs(a.box_size - b.box_size).max() < 0.015
    wrong = estimate_target(distorted.mask, distorted.depth, PinholeCamera(320, 240, SMALL_K))
    assert np.abs(wrong.centroid - b.centroid).max() > np.abs(a.centroid - b.centroid).max()


def test_rectified_images_use_p_and_ignore_d():
    p = np.hstack([K * [[1.1], [1.1], [1]], np.zeros((3, 1))])
    camera = PinholeCamera.from_matrices(WIDTH, HEIGHT, K, D_PLUMB_BOB, "plumb_bob", p, rectified=True)
    assert not camera.undistorts and np.allclose(camera.k, p[:, :3])
    raw = PinholeCamera.from_matrices(WIDTH, HEIGHT, K, D_PLUMB_BOB, "plumb_bob", p)
    assert raw.undistorts and np.allclose(raw.k, K)


def test_camera_from_camera_info_fields_and_calibration_yaml(tmp_path):
    class Info:  # sensor_msgs/CameraInfo's fields
        width, height, distortion_model = 640, 480, "plumb_bob"
        k, d = K.ravel().tolist(), D_PLUMB_BOB
        p = np.hstack([K, np.zeros((3, 1))]).ravel().tolist()

    from_info = PinholeCamera.from_camera_info(Info())
    assert (from_info.width, from_info.height) == (640, 480) and np.allclose(from_info.k, K)
    assert np.allclose(from_info.d, D_PLUMB_BOB) and from_info.distortion_model == "plumb_bob"

    calibration = {  # what camera_calibration writes (ost.yaml)
        "image_width": 640,
        "image_height": 480,
        "camera_name": "narrow_stereo",
        "camera_matrix": {"rows": 3, "cols": 3, "data": K.ravel().tolist()},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": D_PLUMB_BOB},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": np.eye(3).ravel().tolist()},
        "projection_matrix": {"rows": 3, "cols": 4, "data": Info.p},
    }
    path = tmp_path / "camera.yaml"
    path.write_text(yaml.safe_dump(calibration))
    camera = PinholeCamera.from_calibration_yaml(path)
    assert np.allclose(camera.k, K) and np.allclose(camera.d, D_PLUMB_BOB) and camera.undistorts
    assert np.allclose(camera.rays(), from_info.rays())

    del calibration["camera_matrix"]
    path.write_text(yaml.safe_dump(calibration))
    with pytest.raises(DepthError, match="lacks camera_matrix"):
        PinholeCamera.from_calibration_yaml(path)
    with pytest.raises(DepthError, match="cannot read camera calibration"):
        PinholeCamera.from_calibration_yaml(tmp_path / "missing.yaml")


def test_bad_cameras_and_depth_are_refused_with_the_reason(scene):
    with pytest.raises(DepthError, match="K has fx=0, fy=0"):
        estimate_target(scene.mask, scene.depth, PinholeCamera(WIDTH, HEIGHT, np.zeros((3, 3))))
    with pytest.raises(DepthError, match="camera_info is for 320x240 images but the depth image is 640x480"):
        estimate_target(scene.mask, scene.depth, PinholeCamera(320, 240, SMALL_K))
    with pytest.raises(DepthError, match="depth image is 320x240 but the mask .* is 640x480"):
        estimate_target(scene.mask, scene.depth[::2, ::2].copy(), CAMERA)
    with pytest.raises(DepthError, match="distortion model 'equidistant' is not supported"):
        PinholeCamera(WIDTH, HEIGHT, K, [0.1, 0.01, 0, 0], "equidistant")
    assert PinholeCamera(WIDTH, HEIGHT, K, [0, 0, 0, 0], "equidistant").distortion_model == "none"


def test_no_valid_depth_and_too_few_points_are_not_ok_with_the_reason(scene):
    holes = np.where(scene.mask, np.float32(np.nan), scene.depth)
    target = estimate_target(scene.mask, holes, CAMERA)
    assert not target.ok and target.reason == "no valid depth inside the mask (all 0 or NaN)"
    assert target.centroid is None and target.valid_fraction == 0.0

    tiny = np.zeros_like(scene.mask)
    tiny[240, 300:305] = True  # 5 pixels: too thin to erode, too few to measure
    target = estimate_target(tiny, scene.depth, CAMERA)
    assert not target.ok and "only 5 valid depth points inside the mask (at least 20 needed)" in target.reason
    assert target.to_json_dict()["point"] is None

    empty = estimate_target(np.zeros_like(scene.mask), scene.depth, CAMERA)
    assert not empty.ok and "mask is empty" in empty.reason


def test_a_thin_mask_is_measured_without_erosion(scene):
    thin = np.zeros_like(scene.mask)
    thin[200:203, 300:340] = True  # 3 rows: the 2-pixel erosion would remove all of it
    target = estimate_target(thin, scene.depth, CAMERA)
    assert target.ok and target.num_points == 120


def test_load_depth_reads_16_bit_png_float_tiff_and_npy(tmp_path, scene):
    millimetres = np.rint(scene.depth * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), millimetres)
    cv2.imwrite(str(tmp_path / "d.tiff"), millimetres.astype(np.float32) / 1000)
    np.save(tmp_path / "d.npy", millimetres)
    for name in ("d.png", "d.tiff", "d.npy"):
        assert np.allclose(load_depth(tmp_path / name), millimetres / 1000, atol=1e-6), name
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DepthError, match="rgb.png: depth image must be"):
        load_depth(tmp_path / "rgb.png")
    with pytest.raises(DepthError, match="depth image not found"):
        load_depth(tmp_path / "none.png")


def test_specks_at_the_objects_depth_are_trimmed_from_the_box(scene):
    """Two 11 × 11-pixel specks of mask far from the box, on surfaces at the face's own depth (a segmentation that
    leaked onto other objects at the same distance): erosion keeps their centres and the depth test keeps them (same
    depth), so only the box's 2-98 % percentile trimming takes them out. They are 1 % of the points."""
    mask, depth = scene.mask.copy(), scene.depth.copy()
    for row, col in ((60, 150), (400, 520)):  # above-left and below-right of the box
        mask[row : row + 11, col : col + 11] = True
        depth[row : row + 11, col : col + 11] = 0.95
    target = estimate_target(mask, depth, CAMERA)
    assert target.ok
    outliers = np.abs(target.points[:, 0] - FRONT[0]) > 0.15  # the face spans +-0.1 m in x
    assert 0.005 < outliers.mean() < 0.02, outliers.mean()  # kept by erosion and the depth test, under 2 %
    assert target.box_size == pytest.approx([0.2, 0.15, 0.0], abs=0.02)
    assert np.abs(target.box_center[:2] - FRONT[:2]).max() < 0.005
    # the same points boxed without trimming span both specks
    untrimmed = estimate_target(mask, depth, CAMERA, TargetOptions(trim_percent=0))
    assert untrimmed.box_size[0] > 0.6 and untrimmed.box_size[1] > 0.5
