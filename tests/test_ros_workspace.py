"""The README's ROS 2 workspace layout, with colcon from PyPI (no ROS installation): colcon and rosdep's crawler
find both packages, and `colcon build --packages-select lens_ros` installs the node, the CLI, the launch file
and the config where `ros2 run` / `ros2 launch` look. (lens_interfaces needs ament_cmake and rosidl's generators
to build, which a ROS installation has, or PyPI's Jazzy wheels: scripts/setup_ros_wheels.sh builds it that way.)"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ci_tools import skip_or_fail
from conftest import REPO


@pytest.fixture(autouse=True, scope="module")
def colcon_installed() -> None:
    if importlib.util.find_spec("colcon_core") is None or importlib.util.find_spec("colcon_ros") is None:
        skip_or_fail("colcon is not installed: pip install colcon-common-extensions (.ci/run does)")


COLCON = [sys.executable, "-m", "colcon"]


def _readme_workspace_commands() -> list[str]:
    text = (REPO / "docs" / "ros.md").read_text()  # the workspace section that was the README's
    section = text[text.index("## In a ROS 2 workspace") :]
    block = section[section.index("```bash") + len("```bash") :]
    block = block[: block.index("```")]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines() if line.split("#", 1)[0].strip()]


def _copy_checkout(dest: Path) -> None:
    """What `git clone` gives: the tracked and not-ignored files of this checkout."""
    try:
        files = (
            subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(
            REPO,
            dest,
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "build", "install", "log", "runs", "__pycache__", "*.egg-info"
            ),
        )
        return
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """~/ros2_ws laid out by the README's commands (`git clone` replaced by a copy of this checkout)."""
    commands = _readme_workspace_commands()
    assert "git clone <this repository> lens" in commands
    assert "ln -s lens/lens_interfaces lens_interfaces" in commands
    assert "python -m colcon build --packages-up-to lens_ros" in commands
    ws = tmp_path_factory.mktemp("ros2_ws")
    src = ws / "src"
    src.mkdir()
    _copy_checkout(src / "lens")
    os.symlink("lens/lens_interfaces", src / "lens_interfaces")
    return ws


def _colcon(ws: Path, *args: str) -> str:
    proc = subprocess.run(
        [*COLCON, *args],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLCON_HOME": str(ws / ".colcon")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_colcon_finds_both_packages_and_the_build_order(workspace):
    listed = {line.split("\t")[0]: line.split("\t")[2] for line in _colcon(workspace, "list").splitlines()}
    assert listed == {"lens_interfaces": "(ros.ament_cmake)", "lens_ros": "(ros.ament_python)"}
    order = _colcon(workspace, "list", "--names-only", "--topological-order", "--packages-up-to", "lens_ros").split()
    assert order == ["lens_interfaces", "lens_ros"]


def test_without_the_link_colcon_misses_the_nested_package(tmp_path):
    """Why the README links lens_interfaces: colcon does not look inside a package for more packages."""
    src = tmp_path / "src" / "lens"
    src.mkdir(parents=True)
    for name in ("package.xml", "setup.py", "setup.cfg"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "lens_interfaces", src / "lens_interfaces")
    assert _colcon(tmp_path, "list", "--names-only").split() == ["lens_ros"]


def test_rosdeps_crawler_finds_both_packages(workspace):
    from catkin_pkg.packages import find_packages

    packages = find_packages(str(workspace / "src"))  # what `rosdep install --from-paths src` reads
    assert {pkg.name: path for path, pkg in packages.items()} == {
        "lens_ros": "lens",
        "lens_interfaces": "lens_interfaces",
    }
    assert "lens_interfaces" in {d.name for d in packages["lens"].exec_depends}


@pytest.fixture(scope="module")
def plain_workspace(tmp_path_factory) -> Path:
    """Only the clone in src/ (no link): lens_interfaces is then an external dependency, as if installed."""
    ws = tmp_path_factory.mktemp("plain_ws")
    (ws / "src").mkdir()
    _copy_checkout(ws / "src" / "lens")
    return ws


def test_colcon_build_installs_the_node_cli_launch_file_and_config(plain_workspace):
    # In the README's layout colcon first builds lens_interfaces (ament_cmake + rosidl, which need ROS).
    workspace = plain_workspace
    assert _colcon(workspace, "list", "--names-only").split() == ["lens_ros"]
    _colcon(workspace, "build", "--packages-select", "lens_ros")
    prefix = workspace / "install" / "lens_ros"
    share = prefix / "share" / "lens_ros"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "lens_ros").is_file()
    assert (share / "package.xml").read_text() == (REPO / "package.xml").read_text()
    assert (share / "launch" / "segment.launch.py").read_text() == (REPO / "launch" / "segment.launch.py").read_text()
    assert (share / "config" / "lens.yaml").read_text() == (REPO / "config" / "lens.yaml").read_text()
    for script in ("lens", "lens_node"):  # where `ros2 run lens_ros <script>` looks
        path = prefix / "lib" / "lens_ros" / script
        assert path.is_file() and os.access(path, os.X_OK), script
        first = path.read_text().splitlines()[0]
        assert first == f"#!{sys.executable}", first  # the Python that ran colcon: the README's venv
    site = next(prefix.glob("lib/python3*/site-packages"))
    entry_points = next(site.glob("lens_ros-*-info/entry_points.txt")).read_text()
    assert "lens_node = lens_ros.node:main" in entry_points and "lens = lens_cli:main" in entry_points
    for module in (
        "lens_ros/node.py",
        "lens_ros/engine.py",
        "lens_model/inference/pipeline.py",
        "training/__init__.py",
        "lens_cli/main.py",
    ):
        assert (site / module).is_file(), module

    # `source install/setup.bash`, then the installed CLI runs from the install tree
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    script = (
        "source install/setup.bash && echo AMENT=$AMENT_PREFIX_PATH && "
        "python -c 'import lens_ros; print(lens_ros.__file__)' && install/lens_ros/lib/lens_ros/lens --help"
    )
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(prefix) in proc.stdout  # AMENT_PREFIX_PATH: ros2 launch finds share/lens_ros through it
    assert str(site / "lens_ros" / "__init__.py") in proc.stdout
    assert "segment" in proc.stdout and "make-tiny" in proc.stdout

    if importlib.util.find_spec("rclpy") is None:  # the node script reaches lens_ros.node and says what is missing
        proc = subprocess.run(
            ["bash", "-c", "source install/setup.bash && install/lens_ros/lib/lens_ros/lens_node"],
            cwd=workspace,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode != 0 and "lens_node needs ROS 2" in proc.stderr, proc.stderr
