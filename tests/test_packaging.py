"""The repository is both a pip package and the `lens_ros` ament_python package."""

import subprocess
import sys
import xml.etree.ElementTree as ET

from conftest import REPO


def test_packages_import_from_anywhere_and_resolve_to_this_repository(tmp_path):
    code = (
        "import lens_model, training, lens_ros, lens_cli; print(lens_model.__file__); print(training.__file__); "
        "print(lens_ros.__file__); print(lens_cli.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    for line in out.split():
        assert line.startswith(str(REPO)), out  # sam2's stray top-level `training` must not shadow ours


def test_package_xml_is_an_ament_python_package_named_like_setup_py():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "lens_ros"
    assert root.find("export/build_type").text == "ament_python"
    assert {"rclpy", "sensor_msgs", "vision_msgs"} <= {e.text for e in root.findall("exec_depend")}
    assert (REPO / "resource" / "lens_ros").exists()
    assert 'PACKAGE = "lens_ros"' in (REPO / "setup.py").read_text()


def test_console_script_is_installed():
    lens = REPO / ".venv" / "bin" / "lens"
    exe = lens if lens.exists() else "lens"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "segment" in out and "make-tiny" in out


# ROS packages that lens_ros needs without importing them itself
USED_WITHOUT_IMPORT = {"lifecycle_msgs": "rclpy.lifecycle's services, `ros2 lifecycle set`"}


def _imported_top_level_modules(*folders: str) -> set[str]:
    import ast

    names = set()
    for folder in folders:
        for path in (REPO / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def test_package_xml_declares_exactly_the_ros_packages_lens_ros_and_its_launch_file_use():
    """What rosdep installs follows package.xml: a ROS dependency nobody imports (cv_bridge pulled OpenCV for
    nothing) or an import nobody declared is caught here."""
    root = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for e in root.findall("exec_depend")} - {"python3-numpy", "python3-pil"}
    imported = _imported_top_level_modules("lens_ros", "launch")
    ros_imports = {
        name
        for name in imported
        if name.endswith(("_msgs", "_srvs", "_interfaces"))
        or name in {"rclpy", "launch", "launch_ros", "ament_index_python"}
    }
    assert declared == ros_imports | set(USED_WITHOUT_IMPORT), (declared, ros_imports)
    assert "cv_bridge" not in declared
