"""package.xml: every dependency is a key rosdep can resolve, and every import is covered.

rosdep cannot resolve keys here (its index is not reachable), so the keys were checked by
hand against ros/rosdistro and are listed below with where each one is defined. A key that
is not in this list fails the test: check it in rosdistro before adding it here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from conftest import REPO

catkin_pkg = pytest.importorskip("catkin_pkg.package")

# ROS packages, released in every distribution (ros/rosdistro <distro>/distribution.yaml).
ROS_PACKAGES = {
    "ament_cmake",
    "ament_cmake_python",
    "rosidl_default_generators",
    "rosidl_default_runtime",
    "builtin_interfaces",
    "std_msgs",
    "std_srvs",
    "sensor_msgs",
    "action_msgs",
    "diagnostic_msgs",
    "lifecycle_msgs",  # ros2/rcl_interfaces, beside rcl_interfaces
    "rcl_interfaces",
    "rclpy",
    "ament_index_python",
    "launch",
    "launch_ros",
}
# System keys, with the rosdistro file that defines them.
ROSDEP_KEYS = {
    "python3-yaml": "rosdep/python.yaml",
    "python3-numpy": "rosdep/python.yaml",
    "python3-opencv": "rosdep/python.yaml",
    "python3-pytest": "rosdep/python.yaml",
    "python3-sounddevice-pip": "rosdep/python.yaml",
    "python3-sqlite-utils-pip": "rosdep/python.yaml (added by ros/rosdistro#39858)",
    "portaudio19-dev": "rosdep/base.yaml (Debian/Ubuntu: portaudio19-dev, brings libportaudio2)",
}
# Checked and absent from rosdistro: `espeak-ng` (only `espeak` and the library
# `libespeak-ng1`), `opencv-data`, faster-whisper, rapidocr, llama-cpp-python. The README's
# robot section installs them with one apt line and one pip line.
# python3-onnxruntime-pip exists (rosdep/python.yaml) but is not used: see package.xml.
README_INSTALLS = {"faster_whisper", "rapidocr", "llama_cpp", "onnxruntime"}

# Third-party modules the package imports -> how a robot gets them.
MODULE_SOURCES = {
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "std_msgs": "std_msgs",
    "std_srvs": "std_srvs",
    "sensor_msgs": "sensor_msgs",
    "diagnostic_msgs": "diagnostic_msgs",
    "lifecycle_msgs": "lifecycle_msgs",
    "builtin_interfaces": "builtin_interfaces",
    "ament_index_python": "ament_index_python",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "yaml": "python3-yaml",
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "sqlite_utils": "python3-sqlite-utils-pip",
    "sounddevice": "python3-sounddevice-pip",
    "onnxruntime": "README",  # with faster-whisper and rapidocr, under "numpy<2"
    "faster_whisper": "README",
    "rapidocr": "README",
    "llama_cpp": "README",
    # Optional back ends, used only when configured, each named by its error when missing:
    "vosk": "optional",  # stt.backend: vosk
    "mediapipe": "optional",  # extra perception detectors
    "transformers": "optional",  # vision.backend: transformers_vlm (gpu_server profile)
    "torch": "optional",
    "PIL": "optional",  # Pillow, with transformers' image processors
    "cv_bridge": "optional",  # used when a real ROS install has it
    "pypdf": "optional",  # knowledge-base PDF documents
    # gateway_node (HTTP gateway and web console): requirements/gateway.txt
    "fastapi": "optional",
    "uvicorn": "optional",
    "starlette": "optional",
    "pydantic": "optional",
    # Remote back ends (llm.backend: openai, vision.backend: openai_vlm): the README's pip line
    "httpx2": "optional",
    "httpx": "optional",  # the same API, used where only httpx is installed
}


def _package():
    return catkin_pkg.parse_package(str(REPO / "package.xml"))


def _keys(package) -> set[str]:
    deps = (
        package.buildtool_depends
        + package.build_depends
        + package.build_export_depends
        + package.exec_depends
        + package.test_depends
    )
    return {dep.name for dep in deps}


def test_package_xml_is_valid_format_3():
    package = _package()
    package.validate()
    assert package.package_format == 3 and package.name == "smolfusion_ros"


def test_every_dependency_is_a_key_that_exists_in_rosdistro():
    unknown = _keys(_package()) - ROS_PACKAGES - set(ROSDEP_KEYS)
    assert not unknown, f"not verified against ros/rosdistro: {sorted(unknown)}"
    # The key the robot integrator found broken must never come back.
    assert "python3-sqlite-utils" not in _keys(_package())


def test_every_third_party_import_is_declared_or_installed_by_the_readme():
    stdlib = set(sys.stdlib_module_names) | {"smolfusion_ros", "__future__"}
    imported: set[str] = set()
    for path in [*(REPO / "smolfusion_ros").rglob("*.py"), REPO / "launch/smolfusion.launch.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - stdlib
    unaccounted = third_party - set(MODULE_SOURCES)
    assert not unaccounted, f"imported but not declared anywhere: {sorted(unaccounted)}"
    keys = _keys(_package())
    for module, source in MODULE_SOURCES.items():
        if source not in ("README", "optional"):
            assert source in keys, f"{module}: {source} missing from package.xml"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    robot = readme[readme.index("## On the robot") :]
    robot = robot[: robot.index("\n## ", 5)]
    for package in (
        "llama-cpp-python",
        "faster-whisper",
        "rapidocr",
        "onnxruntime",
        "espeak-ng",
        "opencv-data",
        '"numpy<2"',
    ):
        assert package in robot, f"the README's robot section does not install {package}"
    assert {m for m, s in MODULE_SOURCES.items() if s == "README"} == README_INSTALLS


def test_package_xml_names_the_installed_entry_points():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in sorted((REPO / "scripts" / "nodes").iterdir()):
        assert f"scripts/nodes/{script.name}" in cmake
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
    assert Path(REPO / "launch" / "smolfusion.launch.py").is_file()
