"""The repository root is the `lens_ros` ament_python package; it also installs `lens_model`, `training` and
`lens_cli` (the `lens` command).

Works with `pip install -e .` (ML users) and `colcon build` (ROS 2 users).
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "lens_ros"
# `colcon build --symlink-install` runs a symlink of this file from its build folder, where README.md is absent.
_README = Path(__file__).resolve().parent / "README.md"


def _existing(pattern: str) -> list[str]:
    return sorted(glob(pattern))


data_files = [
    ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
    (f"share/{PACKAGE}", ["package.xml"]),
]
for folder, pattern in (
    (f"share/{PACKAGE}/launch", "launch/*.launch.py"),
    (f"share/{PACKAGE}/config", "config/*.yaml"),
):
    if _existing(pattern):
        data_files.append((folder, _existing(pattern)))

setup(
    name=PACKAGE,
    version="0.1.0",
    description="LENS text-prompted segmentation (Qwen2.5-VL reasoning + SAM2): library, training, ROS 2 node",
    long_description=_README.read_text(encoding="utf-8") if _README.is_file() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["lens_model*", "training*", "lens_ros*", "lens_cli*"]),
    data_files=data_files,
    package_data={"training": ["configs/*.yaml"], "lens_model.export": ["data/*.tsv"]},
    python_requires=">=3.10",
    install_requires=[
        # CPU machines: install torch first (see README), an unpinned torch resolves to a multi-GB CUDA build.
        "torch>=2.5.1",
        "torchvision>=0.20.1",
        "sam2>=1.1.0",
        "transformers>=5.24,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4.3",
        "huggingface_hub>=1.0",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm>=4.66",
        "pycocotools>=2.0.8",
        "opencv-python-headless>=4.8",  # ReasonSeg polygons are rasterised exactly as LISA does (cv2.fillPoly)
        "pyyaml>=6",  # training configs
        "omegaconf>=2.3",  # training configs: typed YAML + overrides (also a dependency of sam2, through hydra)
        "av>=14",  # lens track: video decoding and the overlay video (FFmpeg bundled in the wheels)
    ],
    extras_require={
        # the export tests run ONNX Runtime; the ROS tests write and read rosbag2 files with rosbags; the web demo's
        # test drives Debian's headless Chromium with Selenium (selenium 4.52 needs a certifi newer than PyPI has)
        "test": [
            "pytest>=8",
            "onnx>=1.17",
            "onnxscript>=0.4",
            "onnxruntime>=1.20",
            "rosbags>=0.10.9",
            "ruff==0.17.6",
            "selenium==4.51.0",
        ],
        # lens demo (the web page). gradio 6.31 wants pillow<13: it installs pillow 12.3 beside it.
        "demo": ["gradio==6.31.0"],
        # lens bag (rosbag2 in/out without a ROS installation); the node itself uses the ROS 2 Python packages
        "ros": ["rosbags>=0.10.9"],
        # lens export (torch's dynamo ONNX exporter needs onnxscript) and --backend onnxruntime. TensorRT is not
        # listed: it needs a CUDA GPU (pip install tensorrt there; onnxruntime-gpu for onnxruntime on a GPU).
        "export": ["onnx>=1.17", "onnxscript>=0.4", "onnxruntime>=1.20"],
        # training (python -m training.align / training.grpo); deepspeed builds against the installed torch:
        # install it with --no-build-isolation (scripts/setup_env.sh does)
        "train": ["deepspeed>=0.16", "tensorboard>=2.14", "pyyaml>=6"],
    },
    entry_points={"console_scripts": ["lens = lens_cli:main", "lens_node = lens_ros.node:main"]},
    zip_safe=False,
)
