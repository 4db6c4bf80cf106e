"""Tools the tests need but the Python environment may lack.

Locally a missing tool skips its tests (with the reason). `.ci/run` installs the tools these tests use (Debian's
rosidl parsers, colcon, and ROS 2 Jazzy's rclpy with the node's message packages from PyPI's wheels:
scripts/setup_ros_wheels.sh), so under CI=true a missing one is a broken setup: the test fails with the reason
instead of skipping silently. What CI cannot have (a GPU; `ros2 launch` and the `ros2` command, which are not
wheels) keeps skipping everywhere it is missing."""

import os

import pytest


def skip_or_fail(reason: str) -> None:
    """Skip the calling test, or fail it under CI=true, where `.ci/run` has installed the tool named in `reason`."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}: .ci/run installs it, so its setup failed", pytrace=False)
    pytest.skip(reason)
