"""lens_interfaces: every .msg/.srv/.action parses with the real rosidl parsers, the package's build files name
what the definitions use, and the messages the node fills serialise as ROS 2 CDR (rosbags) and read back."""

import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from ci_tools import skip_or_fail
from conftest import REPO

IFACE = REPO / "lens_interfaces"
DEFINITIONS = sorted(
    p.relative_to(IFACE).as_posix() for kind in ("msg", "srv", "action") for p in (IFACE / kind).glob(f"*.{kind}")
)
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin") or "/usr/bin/python3"


def _system_python_has(module: str) -> bool:
    try:
        return (
            subprocess.run([SYSTEM_PYTHON, "-c", f"import {module}"], capture_output=True, timeout=60).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


ROSIDL_MISSING = (
    "rosidl parsers not available: install Debian's python3-rosidl (apt-get install python3-rosidl "
    "python3-empy; .ci/run does) — it provides rosidl_adapter and rosidl_parser for /usr/bin/python3"
)


@pytest.fixture(scope="module")
def rosidl_parsers() -> None:
    if not _system_python_has("rosidl_adapter.parser"):
        skip_or_fail(ROSIDL_MISSING)


needs_rosidl = pytest.mark.usefixtures("rosidl_parsers")


def test_the_package_has_the_result_message_the_service_and_the_action():
    assert DEFINITIONS == [
        "action/Segment.action",
        "msg/SegmentationResult.msg",
        "msg/SegmentationTarget.msg",
        "srv/Segment.srv",
    ]


@needs_rosidl
def test_rosidl_adapter_parses_every_definition_with_the_expected_fields():
    script = textwrap.dedent("""
        import json, pathlib, sys
        from rosidl_adapter.parser import parse_action_string, parse_message_string, parse_service_string
        root = pathlib.Path(sys.argv[1])
        def fields(spec):
            return [[f.type.pkg_name, f.type.type, f.type.is_array, f.name] for f in spec.fields]
        out = {}
        for rel in sys.argv[2:]:
            path = root / rel
            text = path.read_text(encoding="utf-8")
            kind = path.suffix[1:]
            if kind == "msg":
                out[rel] = [fields(parse_message_string("lens_interfaces", path.stem, text))]
            elif kind == "srv":
                spec = parse_service_string("lens_interfaces", path.stem, text)
                out[rel] = [fields(spec.request), fields(spec.response)]
            else:
                spec = parse_action_string("lens_interfaces", path.stem, text)
                out[rel] = [fields(spec.goal), fields(spec.result), fields(spec.feedback)]
        print(json.dumps(out))
    """)
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", script, str(IFACE), *DEFINITIONS], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    import json

    parsed = json.loads(proc.stdout)
    names = {rel: [[f[3] for f in part] for part in parts] for rel, parts in parsed.items()}
    assert names["srv/Segment.srv"] == [["prompt", "has_image", "image"], ["success", "message", "result"]]
    assert names["action/Segment.action"] == [
        ["prompt", "has_image", "image"],
        ["success", "message", "result"],
        ["reasoning", "num_tokens"],
    ]
    result_fields = {f[3]: f for f in parsed["msg/SegmentationResult.msg"][0]}
    assert result_fields["header"][:2] == ["std_msgs", "Header"]
    assert result_fields["mask"][:2] == ["sensor_msgs", "Image"]
    assert result_fields["detection"][:2] == ["vision_msgs", "Detection2D"]
    assert result_fields["timing_seconds"][1:3] == ["float32", True]
    # the result type inside the service and the action resolves to this package's message
    assert parsed["srv/Segment.srv"][1][2][:2] == ["lens_interfaces", "SegmentationResult"]
    assert parsed["action/Segment.action"][1][2][:2] == ["lens_interfaces", "SegmentationResult"]


@needs_rosidl
def test_rosidl_generates_idl_and_rosidl_parser_reads_it_as_rosidl_generate_interfaces_does(tmp_path):
    if not _system_python_has("em"):
        skip_or_fail(
            "empy not available for /usr/bin/python3 (apt-get install python3-empy): rosidl_adapter needs it "
            "to write .idl files"
        )
    script = textwrap.dedent("""
        import json, pathlib, sys
        from rosidl_adapter import convert_to_idl
        from rosidl_parser.definition import Action, IdlLocator, Message, Service
        from rosidl_parser.parser import parse_idl_file
        pkg, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
        result = {}
        for rel in sys.argv[3:]:
            idl = convert_to_idl(pkg, "lens_interfaces", pathlib.Path(rel), out)
            content = parse_idl_file(IdlLocator(out, idl.relative_to(out))).content
            kinds = {"Message": Message, "Service": Service, "Action": Action}
            result[rel] = {k: [e.namespaced_type.name if hasattr(e, "namespaced_type") else
                               e.structure.namespaced_type.name for e in content.get_elements_of_type(c)]
                           for k, c in kinds.items()}
            result[rel]["includes"] = sorted(i.locator for i in content.get_elements_of_type(
                __import__("rosidl_parser.definition", fromlist=["Include"]).Include))
        print(json.dumps(result))
    """)
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", script, str(IFACE), str(tmp_path), *DEFINITIONS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed["msg/SegmentationResult.msg"]["Message"] == ["SegmentationResult"]
    assert parsed["srv/Segment.srv"]["Service"] == ["Segment"]
    assert parsed["action/Segment.action"]["Action"] == ["Segment"]
    assert "vision_msgs/msg/Detection2D.idl" in parsed["msg/SegmentationResult.msg"]["includes"]
    assert (tmp_path / "action" / "Segment.idl").is_file()


def _referenced_packages() -> set[str]:
    packages = set()
    for rel in DEFINITIONS:
        for line in (IFACE / rel).read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words and "/" in words[0]:
                packages.add(words[0].split("/")[0])
    return packages


def test_build_files_declare_every_package_the_definitions_use():
    used = _referenced_packages()
    assert used == {"std_msgs", "sensor_msgs", "vision_msgs"}
    root = ET.parse(IFACE / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "lens_interfaces"
    assert root.findtext("export/build_type") == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    buildtool = {e.text for e in root.findall("buildtool_depend")}
    assert {"ament_cmake", "rosidl_default_generators"} <= buildtool
    assert "rosidl_default_runtime" in {e.text for e in root.findall("exec_depend")}
    depends = {e.text for e in root.findall("depend")}
    assert used | {"action_msgs"} <= depends  # actions need action_msgs

    cmake = (IFACE / "CMakeLists.txt").read_text()
    assert re.search(r"project\(lens_interfaces\)", cmake)
    call = re.search(r"rosidl_generate_interfaces\(\$\{PROJECT_NAME\}(.*?)\)", cmake, re.S).group(1)
    assert sorted(re.findall(r'"([^"]+)"', call)) == DEFINITIONS
    assert used <= set(call.split("DEPENDENCIES", 1)[1].split())
    for package in used:
        assert f"find_package({package} REQUIRED)" in cmake


def test_lens_ros_depends_on_the_interfaces_package():
    root = ET.parse(REPO / "package.xml").getroot()
    assert {"lens_interfaces", "rclpy", "lifecycle_msgs", "audio_common_msgs"} <= {
        e.text for e in root.findall("exec_depend")
    }


# --- the messages the node fills, through ROS 2 CDR (rosbags), no ROS installation ---


@pytest.fixture(scope="module")
def typestore():
    from ros_helpers import lens_test_typestore

    return lens_test_typestore()


def _header(store):
    from ros_helpers import header

    return header(store, sec=12, nanosec=345)


def _result(box=(10.0, 20.0, 50.0, 40.0)):
    from lens_model.inference.pipeline import SegmentationResult

    mask = np.zeros((48, 64), bool)
    mask[20:40, 10:50] = True
    return SegmentationResult(
        prompt="the red cup",
        mask=mask,
        box=box,
        score=0.875,
        text="<think>red</think> box",
        num_tokens=7,
        image_size=(48, 64),
        mllm_image_size=(56, 56),
        box_error=None if box else "no box in the answer",
        format_ok=bool(box),
        timings={"generate": 0.5, "total": 0.75},
    )


@pytest.mark.parametrize("box", [(10.0, 20.0, 50.0, 40.0), None])
def test_segmentation_result_round_trips_through_cdr(typestore, box):
    from lens_ros.fields import result_fields
    from lens_ros.messages import RESULT_TYPE, fill_result, fill_segmentation_result

    types = typestore.types
    header = _header(typestore)
    result = _result(box)
    messages = fill_result(result_fields(result, header), types)
    msg = fill_segmentation_result(result, header, messages, types)
    back = typestore.deserialize_cdr(typestore.serialize_cdr(msg, RESULT_TYPE), RESULT_TYPE)

    assert (back.header.stamp.sec, back.header.stamp.nanosec, back.header.frame_id) == (12, 345, "camera_optical")
    assert back.mask.header.frame_id == "camera_optical" and back.mask.encoding == "mono8"
    mask = np.asarray(back.mask.data).reshape(48, 64)
    assert set(np.unique(mask)) == {0, 255} and ((mask == 255) == result.mask).all()
    assert back.prompt == "the red cup" and back.reasoning == result.text and back.num_tokens == 7
    assert back.score == pytest.approx(0.875)
    assert back.detection.results[0].hypothesis.class_id == "the red cup"
    assert list(back.timing_names) == ["generate", "total"]
    assert np.allclose(back.timing_seconds, [0.5, 0.75])
    if box is None:
        assert not back.has_box and back.box_error == "no box in the answer"
        assert (back.detection.bbox.size_x, back.detection.bbox.size_y) == (0.0, 0.0)
    else:
        assert back.has_box and back.box_error == "" and back.format_ok
        bbox = back.detection.bbox
        assert (bbox.center.position.x, bbox.center.position.y, bbox.size_x, bbox.size_y) == (30.0, 30.0, 40.0, 20.0)


def test_service_and_action_parts_serialise_with_the_filled_result(typestore):
    from lens_ros.fields import result_fields
    from lens_ros.messages import array_to_image, fill_result, fill_segmentation_result

    t = typestore.types
    header = _header(typestore)
    image = array_to_image(np.full((48, 64, 3), 7, np.uint8), "rgb8", header, t)
    names = typestore.lens_names
    request_type = names["lens_interfaces/srv/Segment_Request"]
    request = t[request_type](prompt="the red cup", has_image=True, image=image)
    back = typestore.deserialize_cdr(typestore.serialize_cdr(request, request_type), request_type)
    assert back.has_image and back.image.width == 64 and back.prompt == "the red cup"

    result = _result()
    msg = fill_segmentation_result(result, header, fill_result(result_fields(result, header), t), t)
    for name, values in (
        ("lens_interfaces/srv/Segment_Response", {"success": True, "message": "", "result": msg}),
        ("lens_interfaces/action/Segment_Result", {"success": True, "message": "", "result": msg}),
        ("lens_interfaces/action/Segment_Feedback", {"reasoning": "<think>re", "num_tokens": 3}),
    ):
        name = names[name]
        data = typestore.serialize_cdr(t[name](**values), name)
        again = typestore.deserialize_cdr(data, name)
        for key, value in values.items():
            if key != "result":
                assert getattr(again, key) == value
        if "result" in values:
            assert again.result.prompt == "the red cup" and again.result.mask.width == 64


@needs_rosidl
def test_segmentation_result_appends_the_3d_fields_then_confidence_then_the_targets():
    script = textwrap.dedent("""
        import json, pathlib, sys
        from rosidl_adapter.parser import parse_message_string
        path = pathlib.Path(sys.argv[1])
        spec = parse_message_string("lens_interfaces", path.stem, path.read_text(encoding="utf-8"))
        print(json.dumps([[f.type.pkg_name, f.type.type, f.name] for f in spec.fields]))
    """)
    import json

    def parsed_fields(name: str) -> list[list]:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", script, str(IFACE / "msg" / f"{name}.msg")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    fields = parsed_fields("SegmentationResult")
    names = [f[2] for f in fields]
    # appended: the fields of the 2D result keep their order and come first (compatible for existing users)
    assert names[: names.index("timing_seconds") + 1] == [
        "header",
        "prompt",
        "mask",
        "has_box",
        "detection",
        "box_error",
        "score",
        "reasoning",
        "format_ok",
        "num_tokens",
        "timing_names",
        "timing_seconds",
    ]
    # then the 3D fields, whether the (first target's) result is confident (issue 25), then every target (issue 27):
    # each addition at the end, so older readers of the first fields keep working
    then_3d_and_confidence = [
        [None, "bool", "has_3d"],
        [None, "string", "error_3d"],
        ["vision_msgs", "Detection3D", "detection_3d"],
        [None, "uint32", "num_points_3d"],
        [None, "float32", "valid_depth_fraction"],
        [None, "bool", "confident"],
        [None, "string", "reason"],
    ]
    assert fields[names.index("timing_seconds") + 1 :] == then_3d_and_confidence + [
        ["sensor_msgs", "Image", "label_mask"],
        ["lens_interfaces", "SegmentationTarget", "targets"],
    ]
    # each target ends the same way: its 3D fields, then whether it is confident
    target = parsed_fields("SegmentationTarget")
    assert target[-len(then_3d_and_confidence) :] == then_3d_and_confidence
