"""The node's parameters, config/lens.yaml, the launch file and the tables of docs/ros.md agree — checked without ROS
(node.py and the launch file are read with `ast`; the launch file is also imported when `launch` is installed)."""

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lens_ros.params import DEFAULTS, PARAMETER_NAMES, PARAMETERS, NodeSettings, ParameterError, markdown_table

NODE = REPO / "lens_ros" / "node.py"
ENGINE = REPO / "lens_ros" / "engine.py"
LAUNCH = REPO / "launch" / "segment.launch.py"
CONFIG = REPO / "config" / "lens.yaml"


def test_config_lists_every_parameter_with_its_default_and_type():
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == ["/**"]
    values = data["/**"]["ros__parameters"]
    assert list(values) == list(PARAMETER_NAMES)
    for name, default in DEFAULTS.items():
        assert values[name] == default and type(values[name]) is type(default), name
    assert NodeSettings.from_values(values) == NodeSettings.from_values({})


def _declared_parameters(tree: ast.Module) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("declare_parameter", "declare_parameters")
    ]


def test_node_declares_exactly_the_parameter_table_with_descriptors():
    tree = ast.parse(NODE.read_text())
    calls = _declared_parameters(tree)
    assert calls, "node.py declares no parameters"
    for call in calls:
        assert call.func.attr == "declare_parameter"
        name, default, desc = call.args[:3]
        # every declaration is driven by lens_ros.params.PARAMETERS: name, default and a ParameterDescriptor
        assert ast.unparse(name) == "spec.name" and ast.unparse(default) == "spec.default"
        assert ast.unparse(desc) == "descriptor(spec)"
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and ast.unparse(n.iter) == "PARAMETERS"]
    assert any(any(c in ast.walk(loop) for c in calls) for loop in loops)
    # the parameters are read back by name from the same table
    assert "self.get_parameter(p.name).value for p in PARAMETERS" in NODE.read_text()


@pytest.mark.parametrize("path", [NODE, ENGINE], ids=["node", "engine"])
def test_every_setting_the_code_reads_is_a_declared_parameter(path):
    tree = ast.parse(path.read_text())
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("s", "settings", "self.settings"):
            read.add(node.attr)
    methods = {"from_values", "frame_age_bound", "pipeline_kwargs"}
    assert read and read - methods <= set(PARAMETER_NAMES), read - methods - set(PARAMETER_NAMES)


def test_every_default_satisfies_its_own_range_and_choices():
    for spec in PARAMETERS:
        assert spec.check(spec.default) == spec.default
        assert spec.description and spec.full_description().startswith(spec.description)
        if spec.range is not None:
            assert isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool)


@pytest.mark.parametrize(
    "values,match",
    [
        ({"queue_size": 0}, r"queue_size must lie in \[1, 100\]"),
        ({"max_new_tokens": 1.5}, "max_new_tokens must be a integer"),
        ({"backend": "openvino"}, "backend must be one of torch, onnxruntime, tensorrt"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"queue_policy": "latest"}, "queue_policy must be one of queue, drop"),
        ({"frame_selection": "oldest"}, "frame_selection must be one of latest, next"),
        ({"max_frame_age_s": -1.0}, "max_frame_age_s must lie in"),
        ({"image_compressed": "yes"}, "image_compressed must be a bool"),
        ({"model": " "}, "model must not be empty"),
        ({"backend": "tensorrt"}, "backend tensorrt needs backend_dir"),
        ({"modle": "x"}, "unknown parameter"),
    ],
)
def test_bad_parameter_values_are_refused_naming_the_parameter(values, match):
    with pytest.raises(ParameterError, match=match):
        NodeSettings.from_values(values)


def test_settings_convert_for_the_pipeline_and_the_policies():
    s = NodeSettings.from_values(
        {"max_frame_age_s": 0, "backend": "onnxruntime", "backend_dir": "/x", "context_pass": "official"}
    )
    assert s.max_frame_age_s == 0.0 and s.frame_age_bound is None  # 0 = no bound
    assert s.pipeline_kwargs() == {
        "device": "auto",
        "dtype": "auto",
        "backend": "onnxruntime",
        "backend_dir": "/x",
        "context_pass": "official",
        "answer_format": None,
        "max_new_tokens": 256,
    }


def _choices(name: str) -> tuple:
    return next(spec.choices for spec in PARAMETERS if spec.name == name)


def test_every_parameter_choice_is_accepted_by_the_code_that_uses_it():
    """Each choice offered by a parameter works in the function that receives it (and a wrong one does not), so a
    choice list and its user cannot drift apart."""
    import numpy as np
    import torch

    from lens_model.devices import resolve_dtype
    from lens_model.errors import LensError
    from lens_model.inference.backends import check_backend_args
    from lens_model.model.config import DEFAULT_MODEL_ID
    from lens_ros.conversions import to_rgb
    from lens_ros.whisper import AudioError, pcm_to_float

    assert DEFAULTS["model"] == DEFAULT_MODEL_ID  # the node and `lens segment` start the same model
    gray16 = np.array([[0, 1000], [30000, 65535]], np.uint16)
    for mode in _choices("scale16"):
        assert to_rgb(gray16, "mono16", scale16=mode).shape == (2, 2, 3), mode
    with pytest.raises(ValueError, match="scale16 must be one of"):
        to_rgb(gray16, "mono16", scale16="gamma")
    for fmt in _choices("audio_sample_format"):
        assert pcm_to_float(b"\x00" * 8, fmt).size > 0, fmt
    with pytest.raises(AudioError, match="unsupported sample format"):
        pcm_to_float(b"\x00" * 8, "MP3")
    for dtype in _choices("dtype"):
        assert isinstance(resolve_dtype(dtype, torch.device("cpu")), torch.dtype), dtype
    assert check_backend_args("torch", None).name == "torch"
    for backend in set(_choices("backend")) - {"torch"}:  # the exported backends need an export directory
        with pytest.raises(LensError, match=f"--backend {backend} needs"):
            check_backend_args(backend, None)


# --- launch file ---


def _launch_tree():
    return ast.parse(LAUNCH.read_text())


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_launch_file_declares_the_arguments_and_starts_the_installed_executable():
    tree = _launch_tree()
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    arguments = {n.args[0].value for n in calls if ast.unparse(n.func) == "DeclareLaunchArgument"}
    assert {"model", "device", "backend", "namespace", "image", "params_file"} <= arguments
    node = next(n for n in calls if ast.unparse(n.func) == "LifecycleNode")
    assert _keyword(node, "package").value == "lens_ros"
    executable = _keyword(node, "executable").value
    assert f"{executable} = lens_ros.node:main" in (REPO / "setup.py").read_text()
    assert ast.unparse(_keyword(node, "remappings")) == "[('image', value('image'))]"
    # arguments that become parameters are real parameter names
    overrides = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "PARAMETER_ARGUMENTS"
    )
    names = ast.literal_eval(overrides.value)
    assert set(names) <= set(PARAMETER_NAMES) and set(names) <= arguments
    # the default params file is the installed config/lens.yaml
    assert 'get_package_share_directory("lens_ros"), "config", "lens.yaml"' in LAUNCH.read_text()


def _launch_functions() -> dict:
    """The launch file's plain-Python helpers (its constants and parameter_value), without importing `launch`."""
    tree = _launch_tree()
    keep = [
        n
        for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name == "parameter_value")
        or (isinstance(n, ast.Assign) and ast.unparse(n.targets[0]).isupper())
    ]
    namespace = {"os": __import__("os")}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(LAUNCH), "exec"), namespace)
    return namespace


def test_launch_arguments_become_typed_parameters():
    launch = _launch_functions()
    value = launch["parameter_value"]
    assert value("audio_enabled", "false") is False and value("audio_enabled", "True") is True
    with pytest.raises(ValueError, match="launch argument audio_enabled must be true or false, got 'off'"):
        value("audio_enabled", "off")
    assert value("model", "~/models/LENS") == str(Path.home() / "models" / "LENS")
    assert value("device", "cuda:1") == "cuda:1"
    assert value("depth_enabled", "true") is True and value("depth_topic", "/cam/depth") == "/cam/depth"
    kinds = {name: type(DEFAULTS[name]) for name in launch["PARAMETER_ARGUMENTS"]}
    assert (
        {name for name, kind in kinds.items() if kind is bool}
        == launch["BOOL_ARGUMENTS"]
        == {"audio_enabled", "depth_enabled"}
    )
    assert all(kind is str for name, kind in kinds.items() if name not in launch["BOOL_ARGUMENTS"])


@pytest.mark.skipif(
    importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None,
    reason="ROS 2 launch / launch_ros not installed (source a ROS 2 workspace to run this)",
)
def test_launch_file_builds_a_launch_description(monkeypatch):
    import ament_index_python.packages as index

    from launch import LaunchDescription

    monkeypatch.setattr(index, "get_package_share_directory", lambda name: str(REPO))
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {a.name for a in description.get_launch_arguments()}
    assert {
        "model",
        "device",
        "backend",
        "namespace",
        "image",
        "params_file",
        "audio_enabled",
        "depth_enabled",
    } <= names


# --- docs/ros.md (the ROS section that was the README's) ---


def _readme_section() -> str:
    text = (REPO / "docs" / "ros.md").read_text()
    return text[text.index("## In a ROS 2 workspace") :][len("## In a ROS 2 workspace") :].split("\n## ", 1)[0]


def test_readme_parameter_table_lists_every_parameter_with_its_default():
    section = _readme_section()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z0-9_]+)` \| `([^`]*)` \|", section, re.M)}
    assert set(PARAMETER_NAMES) <= set(rows)
    for name, default in DEFAULTS.items():
        shown = ("true" if default else "false") if isinstance(default, bool) else str(default) or '""'
        assert rows[name] == shown, name


def test_the_parameter_table_is_the_one_the_code_writes():
    """docs/ros.md holds `python -m lens_ros.params`'s table as it is: descriptions, ranges and choices included."""
    assert markdown_table() in _readme_section()


def test_readme_topic_table_and_service_call():
    section = _readme_section()
    for topic in (
        "image",
        "command",
        "audio",
        "audio_info",
        "mask",
        "masks",
        "detections",
        "reasoning",
        "overlay",
        "result",
        "transcript",
        "markers",
        "/diagnostics",
        "~/enable",
    ):
        assert re.search(rf"^\| `{topic}` \|", section, re.M), topic
    assert "ros2 service call /lens/segment lens_interfaces/srv/Segment \"{prompt: 'the red cup'}\"" in section
    assert "ros2 launch lens_ros segment.launch.py" in section


def test_readme_topic_table_lists_the_depth_inputs_and_3d_outputs():
    section = _readme_section()
    for topic, kind in (
        ("depth", "sensor_msgs/Image"),
        ("camera_info", "sensor_msgs/CameraInfo"),
        ("target_point", "geometry_msgs/PointStamped"),
        ("detections_3d", "vision_msgs/Detection3DArray"),
        ("target_cloud", "sensor_msgs/PointCloud2"),
    ):
        assert re.search(rf"^\| `{topic}` \| {kind} \|", section, re.M), topic


@pytest.mark.parametrize(
    "values,match",
    [
        ({"depth_qos": "best_effort"}, "depth_qos must be one of sensor_data, reliable"),
        ({"depth_scale": 0.0}, r"depth_scale must lie in \[1e-06, 1\]"),
        ({"depth_slop_s": -0.1}, "depth_slop_s must lie in"),
        ({"depth_edge_erosion_px": 2.0}, "depth_edge_erosion_px must be a integer"),
        ({"depth_enabled": 1}, "depth_enabled must be a bool"),
    ],
)
def test_bad_depth_parameter_values_are_refused(values, match):
    with pytest.raises(ParameterError, match=match):
        NodeSettings.from_values(values)


def test_node_subscribes_to_depth_and_publishes_3d_outputs_only_when_enabled():
    text = NODE.read_text()
    start = text.index("def _create_io")
    body = re.sub(r"\s+", " ", text[start : text.index("def stop_io")]).replace("( ", "(")  # layout-free
    assert "if s.depth_enabled:" in body
    for call in (
        "create_subscription(Image, s.depth_topic",
        "create_subscription(CameraInfo, s.camera_info_topic",
        "create_publisher(PointStamped, s.target_point_topic",
        "create_publisher(Detection3DArray, s.detections_3d_topic",
        "create_publisher(PointCloud2, s.target_cloud_topic",
    ):
        assert call in body, call
