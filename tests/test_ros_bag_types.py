"""The message types `lens bag` registers and writes, checked against ROS 2 Jazzy without a ROS installation.

A Jazzy bag names each topic's type by its RIHS01 hash (type_description_hash, computed from the full nested type
description), so a definition that differs from Jazzy's in one field gives a different hash. The hashes below are
pinned to what a real Jazzy generates; a ROS-only test re-reads them (and the .msg text) from the sourced install.
"""

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import ros_helpers
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from lens_model.inference.pipeline import LensPipeline
from lens_ros.bag import OUTPUT_TYPES, VISION_MSGS_DEFINITIONS, lens_typestore, process_bag
from lens_ros.conversions import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE
from lens_ros.messages import array_to_image

# Read off ROS 2 Jazzy built from source (ros2/ros2 branch jazzy, ros2.repos: common_interfaces jazzy 5283bd9;
# vision_msgs 4.1.1 from ros-perception/vision_msgs branch ros2, e77fa2d): the `type_hashes` entry of each type in
# install/share/<package>/msg/<Type>.json, written by rosidl_generator_type_description at build time.
JAZZY_RIHS01 = {
    "vision_msgs/msg/Point2D": "RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "vision_msgs/msg/Pose2D": "RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "vision_msgs/msg/BoundingBox2D": "RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "vision_msgs/msg/ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc"
    ),
    "vision_msgs/msg/Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "vision_msgs/msg/Detection2DArray": "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "vision_msgs/msg/BoundingBox3D": "RIHS01_bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "vision_msgs/msg/Detection3D": "RIHS01_ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "vision_msgs/msg/Detection3DArray": "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "sensor_msgs/msg/Image": "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47",
    "sensor_msgs/msg/CompressedImage": "RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a",
    "sensor_msgs/msg/CameraInfo": "RIHS01_b3dfd68ff46c9d56c80fd3bd4ed22c7a4ddce8c8348f2f59c299e73118e7e275",
    "sensor_msgs/msg/PointCloud2": "RIHS01_9198cabf7da3796ae6fe19c4cb3bdd3525492988c70522628af5daa124bae2b5",
    "std_msgs/msg/String": "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18",
    "geometry_msgs/msg/PointStamped": "RIHS01_4c0296af86e01e562e9e0405d138a01537247580076c58ea38d7923ac1045897",
}
# what lens bag reads (image, depth and camera_info inputs; a Humble input without hashes gets them from the
# typestore) and writes
BAG_TYPES = {*VISION_MSGS_DEFINITIONS, *OUTPUT_TYPES.values(), IMAGE_TYPE, COMPRESSED_IMAGE_TYPE}
CAMERA = "/camera/image_raw"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


def test_every_type_lens_bag_handles_is_pinned():
    assert BAG_TYPES | {"sensor_msgs/msg/CameraInfo"} == set(JAZZY_RIHS01)


def test_typestore_hashes_equal_jazzys():
    store = lens_typestore()
    assert {name: store.hash_rihs01(name) for name in JAZZY_RIHS01} == JAZZY_RIHS01


@pytest.fixture(scope="module")
def tiny_pipe(tiny_dir):
    return LensPipeline.from_pretrained(str(tiny_dir), device="cpu", max_new_tokens=4)


def _input_bag(path: Path, storage: str) -> Path:
    """Two rgb8 camera frames, recorded as Jazzy would (definition and hash from the typestore)."""
    store = lens_typestore()
    rng = np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        cam = writer.add_connection(CAMERA, IMAGE_TYPE, typestore=store)
        for i in range(2):
            rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            msg = array_to_image(rgb, "rgb8", ros_helpers.header(store, sec=10 + i), store.types)
            writer.write(cam, 1_000 + i, bytes(store.serialize_cdr(msg, IMAGE_TYPE)))
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_lens_bag_output_has_the_fields_jazzy_reads(tmp_path, tiny_pipe, storage):
    """Every topic's type_description_hash is Jazzy's, and metadata.yaml has each field rosbag2 (Jazzy) decodes
    for the bag's version (rosbag2_storage/yaml.hpp: a missing one is a read error there)."""
    out = tmp_path / "out"
    process_bag(
        _input_bag(tmp_path / "in", storage), out, CAMERA, "the cup", pipeline=tiny_pipe, overlay=True, progress=False
    )
    want = {
        CAMERA: JAZZY_RIHS01[IMAGE_TYPE],
        "/lens/mask": JAZZY_RIHS01[IMAGE_TYPE],
        "/lens/overlay": JAZZY_RIHS01[IMAGE_TYPE],
        "/lens/detections": JAZZY_RIHS01["vision_msgs/msg/Detection2DArray"],
        "/lens/reasoning": JAZZY_RIHS01["std_msgs/msg/String"],
    }

    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 8 and info["storage_identifier"] == storage
    assert {"compression_format", "compression_mode", "relative_file_paths", "files", "custom_data"} <= set(info)
    assert isinstance(info["ros_distro"], str) and isinstance(info["custom_data"], dict | None)
    assert isinstance(info["duration"]["nanoseconds"], int) and info["message_count"] == 2 + 4 * 2
    assert isinstance(info["starting_time"]["nanoseconds_since_epoch"], int)
    assert [set(f) for f in info["files"]] == [{"path", "starting_time", "duration", "message_count"}]
    topics = [t["topic_metadata"] for t in info["topics_with_message_count"]]
    assert all(
        set(t) == {"name", "type", "serialization_format", "offered_qos_profiles", "type_description_hash"}
        for t in topics
    )
    assert all(isinstance(t["offered_qos_profiles"], str) for t in topics)  # version 8: a YAML string
    assert {t["name"]: t["type_description_hash"] for t in topics} == want
    with Reader(out) as reader:
        assert {c.topic: c.digest for c in reader.connections} == want

    if storage == "sqlite3":  # Jazzy's reader takes the hash from the database (schema version 4)
        (db,) = out.glob("*.db3")
        with contextlib.closing(sqlite3.connect(db)) as con:
            assert con.execute("SELECT schema_version FROM schema").fetchall() == [(4,)]
            assert dict(con.execute("SELECT name, type_description_hash FROM topics")) == want
            definitions = dict(con.execute("SELECT topic_type, type_description_hash FROM message_definitions"))
        assert definitions == {
            IMAGE_TYPE: JAZZY_RIHS01[IMAGE_TYPE],
            "vision_msgs/msg/Detection2DArray": JAZZY_RIHS01["vision_msgs/msg/Detection2DArray"],
            "std_msgs/msg/String": JAZZY_RIHS01["std_msgs/msg/String"],
        }


def _msg_fields(text: str) -> list[str]:
    """A .msg text without comments and blank lines (what `ros2 interface show --no-comments` keeps)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())  # vision_msgs has no "#" in values
    return [line for line in lines if line]


@ros_helpers.needs_ros
def test_pins_and_definitions_match_the_sourced_ros_install():
    from ament_index_python.packages import get_package_share_directory

    if os.environ.get("ROS_DISTRO") != "jazzy":
        pytest.skip(f"the pinned hashes are Jazzy's; ROS_DISTRO is {os.environ.get('ROS_DISTRO')!r}")
    installed = {}
    for name in JAZZY_RIHS01:
        package, _, typ = name.split("/")
        description = json.loads((Path(get_package_share_directory(package)) / "msg" / f"{typ}.json").read_text())
        installed[name] = {t["type_name"]: t["hash_string"] for t in description["type_hashes"]}[name]
    assert installed == JAZZY_RIHS01
    for name, text in VISION_MSGS_DEFINITIONS.items():
        package, _, typ = name.split("/")
        msg_file = Path(get_package_share_directory(package)) / "msg" / f"{typ}.msg"
        assert _msg_fields(text) == _msg_fields(msg_file.read_text()), name
