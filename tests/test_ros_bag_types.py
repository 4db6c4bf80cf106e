"""The message types `lens bag` registers and writes, checked against ROS 2 Jazzy without a ROS installation.

A Jazzy bag names each topic's type by its RIHS01 hash (type_description_hash, computed from the full nested type
description), so a definition that differs from Jazzy's in one field gives a different hash. The hashes below are
pinned to what a real Jazzy generates; tests with ROS 2 re-read them (and the .msg text) from the installed packages
(an apt or source install, or PyPI's wheels with the packages scripts/setup_ros_wheels.sh builds from ros_deps/).
"""

import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import ros_helpers
import yaml
from ci_tools import skip_or_fail
from conftest import REPO
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg

from lens_model.inference.pipeline import LensPipeline
from lens_ros.bag import OUTPUT_TYPES, VISION_MSGS_DEFINITIONS, lens_typestore, process_bag
from lens_ros.conversions import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE
from lens_ros.interfaces import lens_interfaces_definitions
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
            rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
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
        "/lens/masks": JAZZY_RIHS01[IMAGE_TYPE],
        "/lens/overlay": JAZZY_RIHS01[IMAGE_TYPE],
        "/lens/detections": JAZZY_RIHS01["vision_msgs/msg/Detection2DArray"],
        "/lens/reasoning": JAZZY_RIHS01["std_msgs/msg/String"],
    }

    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 8 and info["storage_identifier"] == storage
    assert {"compression_format", "compression_mode", "relative_file_paths", "files", "custom_data"} <= set(info)
    assert isinstance(info["ros_distro"], str) and isinstance(info["custom_data"], dict | None)
    assert isinstance(info["duration"]["nanoseconds"], int) and info["message_count"] == 2 + 5 * 2
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


# audio_common_msgs as Jazzy ships it (ros-drivers/audio_common 0.3.18; the node's spoken commands): generated by
# Jazzy's rosidl (rosidl_generator_type_description 4.6.6, from PyPI's wheels) from upstream's own package sources
# (branch ros2, 06c280a, the same fields as the release). The same tool chain, given vision_msgs 4.1.1's sources,
# reproduces every vision_msgs hash in JAZZY_RIHS01 above.
AUDIO_COMMON_MSGS_RIHS01 = {
    "audio_common_msgs/msg/AudioData": "RIHS01_a9742fba1567e649bbdba6ae034a72c7ef129b97c7a4da50fd2f3e1bfd8ffa86",
    "audio_common_msgs/msg/AudioDataStamped": (
        "RIHS01_6fc679d5a868ed68e4d301f1ef42abecc86140afb57d255656ff2d9e476ea9e3"
    ),
    "audio_common_msgs/msg/AudioInfo": "RIHS01_b3494d204e513d2cceefae1888e5be3da7c8c8ca31eb277f7b5b62f364bcb1fb",
}
ROS_DEPS = REPO / "ros_deps"  # the message packages scripts/setup_ros_wheels.sh builds (not PyPI wheels)


def _msg_fields(text: str) -> list[str]:
    """A .msg text without comments and blank lines (what `ros2 interface show --no-comments` keeps)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())  # none of these types has "#" in values
    return [line for line in lines if line]


def _package_definitions(package: str) -> dict[str, str]:
    return {f"{package}/msg/{p.stem}": p.read_text() for p in sorted((ROS_DEPS / package / "msg").glob("*.msg"))}


def test_the_vision_msgs_package_built_without_ros_holds_lens_bags_definitions():
    built = _package_definitions("vision_msgs")
    assert {name: _msg_fields(text) for name, text in built.items()} == {
        name: _msg_fields(text) for name, text in VISION_MSGS_DEFINITIONS.items()
    }


def test_the_audio_common_msgs_package_built_without_ros_has_jazzys_hashes():
    store = lens_typestore()
    types = {}
    for name, text in _package_definitions("audio_common_msgs").items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    assert {name: store.hash_rihs01(name) for name in types} == AUDIO_COMMON_MSGS_RIHS01


def _jazzy_installed() -> None:
    ros_helpers.require_ros()
    distro = ros_helpers.installed_ros_distro()
    if distro is None:
        skip_or_fail("cannot tell which ROS 2 distribution is installed: ROS_DISTRO is not set")
    if distro != "jazzy":
        pytest.skip(f"the pinned hashes are Jazzy's; the installed ROS 2 is {distro!r}")


def test_installed_packages_have_jazzys_hashes_and_vision_msgs_definitions():
    """The type descriptions rosidl generated where the node's messages are installed: apt's or a source build's,
    or with PyPI's wheels those of the wheels (sensor_msgs, std_msgs, geometry_msgs) and of the packages built from
    ros_deps/ (vision_msgs, audio_common_msgs)."""
    _jazzy_installed()
    installed = {}
    for name in {**JAZZY_RIHS01, **AUDIO_COMMON_MSGS_RIHS01}:
        package = name.split("/")[0]
        installed[name] = ros_helpers.installed_type_hashes(package).get(name)
    assert installed == {**JAZZY_RIHS01, **AUDIO_COMMON_MSGS_RIHS01}
    for name, text in VISION_MSGS_DEFINITIONS.items():
        package, _, typ = name.split("/")
        msg_file = ros_helpers.share_dir(package) / "msg" / f"{typ}.msg"
        assert _msg_fields(text) == _msg_fields(msg_file.read_text()), name


def test_installed_lens_interfaces_hashes_equal_the_typestores():
    """lens_interfaces as built by colcon (rosidl's own hashes) and as the ROS-free tests register it (rosbags'
    RIHS01 of lens_interfaces_definitions) are the same types: its message, the service's request and response,
    the action's goal, result and feedback."""
    _jazzy_installed()
    store = lens_typestore()
    types = {}
    for name, text in lens_interfaces_definitions().items():
        (fields,) = get_types_from_msg(text, name).values()  # under the rosidl name (rosbags files srv parts apart)
        types[name] = fields
    store.register(types)
    installed = ros_helpers.installed_type_hashes("lens_interfaces")
    assert {name: installed.get(name) for name in types} == {name: store.hash_rihs01(name) for name in types}
    assert installed["vision_msgs/msg/Detection2D"] == JAZZY_RIHS01["vision_msgs/msg/Detection2D"]
    assert installed["sensor_msgs/msg/Image"] == JAZZY_RIHS01["sensor_msgs/msg/Image"]
