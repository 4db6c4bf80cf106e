"""Start the LENS segmentation node (lens_ros lens_node, a lifecycle node that activates itself).

    ros2 launch lens_ros segment.launch.py image:=/camera/color/image_raw
    ros2 launch lens_ros segment.launch.py model:=~/models/LENS device:=cuda backend:=tensorrt \
        backend_dir:=~/models/LENS-trt namespace:=robot1 params_file:=my_lens.yaml audio_enabled:=false
    ros2 launch lens_ros segment.launch.py image:=/camera/color/image_raw depth_enabled:=true \
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info

Arguments left empty keep the value from `params_file` (default: this package's config/lens.yaml, which lists
every parameter with its default); `image` remaps the node's `image` topic.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription

# launch argument -> node parameter, applied only when the argument is not empty
PARAMETER_ARGUMENTS = (
    "model",
    "device",
    "backend",
    "backend_dir",
    "audio_enabled",
    "tracking",
    "sam_memory_checkpoint",
    "depth_enabled",
    "depth_topic",
    "camera_info_topic",
)
BOOL_ARGUMENTS = {"audio_enabled", "depth_enabled"}
BOOL_WORDS = {"true": True, "false": False}


def parameter_value(name: str, text: str):
    """A launch argument's text as the node parameter's type: paths expanded, true/false as a bool."""
    if name in BOOL_ARGUMENTS:
        if text.strip().lower() not in BOOL_WORDS:
            raise ValueError(f"launch argument {name} must be true or false, got {text!r}")
        return BOOL_WORDS[text.strip().lower()]
    return os.path.expanduser(text) if name.endswith(("model", "_dir", "_checkpoint")) else text


def _node(context, *args, **kwargs):
    value = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {name: parameter_value(name, value(name)) for name in PARAMETER_ARGUMENTS if value(name)}
    parameters = [os.path.expanduser(value("params_file"))] + ([overrides] if overrides else [])
    return [
        LifecycleNode(
            package="lens_ros",
            executable="lens_node",
            name=value("node_name"),
            namespace=value("namespace"),
            parameters=parameters,
            remappings=[("image", value("image"))],
            arguments=["--ros-args", "--log-level", value("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("lens_ros"), "config", "lens.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "model",
                default_value="",
                description="LENS checkpoint: Hub id or local directory (empty: params_file's, default OuyBin/LENS)",
            ),
            DeclareLaunchArgument(
                "device", default_value="", description="auto, cpu, cuda or cuda:N (empty: params_file's)"
            ),
            DeclareLaunchArgument(
                "backend", default_value="", description="torch, onnxruntime or tensorrt (empty: params_file's)"
            ),
            DeclareLaunchArgument(
                "backend_dir", default_value="", description="lens export directory for onnxruntime/tensorrt"
            ),
            DeclareLaunchArgument(
                "audio_enabled",
                default_value="",
                description="spoken commands (Whisper, loaded in the background): true or false "
                "(empty: params_file's, default true)",
            ),
            DeclareLaunchArgument(
                "tracking",
                default_value="",
                description="SAM2 tracking between LENS results: auto (GPU only), on or off (empty: params_file's)",
            ),
            DeclareLaunchArgument(
                "sam_memory_checkpoint",
                default_value="",
                description="official SAM2 .pt with the memory modules for tracking, e.g. sam2_hiera_large.pt "
                "(empty: params_file's)",
            ),
            DeclareLaunchArgument(
                "depth_enabled",
                default_value="",
                description="3D target from a registered depth image: true or false (empty: params_file's, "
                "default false)",
            ),
            DeclareLaunchArgument(
                "depth_topic",
                default_value="",
                description="registered depth image topic, e.g. /camera/aligned_depth_to_color/image_raw "
                "(empty: params_file's)",
            ),
            DeclareLaunchArgument(
                "camera_info_topic",
                default_value="",
                description="camera_info of that depth image, e.g. /camera/color/camera_info (empty: params_file's)",
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
            DeclareLaunchArgument(
                "node_name",
                default_value="lens",
                description="node name (the service is /<namespace>/<node_name>/segment)",
            ),
            DeclareLaunchArgument(
                "image",
                default_value="image",
                description="camera topic the node's `image` input is remapped to, e.g. /camera/color/image_raw",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params,
                description="parameters YAML (start from a copy of config/lens.yaml)",
            ),
            DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
            OpaqueFunction(function=_node),
        ]
    )
