"""What `ros2 run smolfusion_ros <node>` executes (scripts/nodes/*): the node's main(), with a
missing Python package reported as one line that says what to install, not a traceback.

Nodes import their core dependencies (numpy, yaml, OpenCV) at module level and their optional
back ends (llama.cpp, faster-whisper, sounddevice, ...) when configured; a robot that skipped
a step of the install gets, from either kind, one line naming the package and exit code 2,
the same as a configuration error. Only the standard library is imported here.
"""

from __future__ import annotations

import importlib
import sys

_ROS = "source /opt/ros/$ROS_DISTRO/setup.bash (ROS 2 itself)"
_WORKSPACE = "colcon build --packages-select smolfusion_ros && source install/setup.bash"
# Top-level module -> how to install it on a robot with ROS 2 from apt (see the README).
INSTALL = {
    "numpy": "sudo apt-get install python3-numpy (rosdep key python3-numpy)",
    "yaml": "sudo apt-get install python3-yaml (rosdep key python3-yaml)",
    "cv2": "sudo apt-get install python3-opencv (rosdep key python3-opencv)",
    "sqlite_utils": "pip install sqlite-utils (rosdep key python3-sqlite-utils-pip)",
    "sounddevice": "pip install sounddevice (rosdep key python3-sounddevice-pip)",
    "onnxruntime": 'pip install onnxruntime "numpy<2"',
    "faster_whisper": "pip install faster-whisper",
    "ctranslate2": "pip install faster-whisper",
    "rapidocr": "pip install rapidocr",
    "llama_cpp": "pip install llama-cpp-python",
    "vosk": "pip install vosk",
    "mediapipe": "pip install mediapipe",
    "transformers": "pip install transformers torch",
    "torch": "pip install torch",
    "fastapi": "pip install -r requirements/gateway.txt (fastapi, uvicorn, python-multipart)",
    "uvicorn": "pip install -r requirements/gateway.txt (fastapi, uvicorn, python-multipart)",
    "starlette": "pip install -r requirements/gateway.txt (fastapi, uvicorn, python-multipart)",
    "pydantic": "pip install -r requirements/gateway.txt (fastapi, uvicorn, python-multipart)",
    "multipart": "pip install -r requirements/gateway.txt (fastapi, uvicorn, python-multipart)",
    "smolfusion_ros": _WORKSPACE,
    "ament_index_python": _ROS,
}
_ROS_MODULES = (
    "rclpy",
    "rcl_interfaces",
    "std_msgs",
    "std_srvs",
    "sensor_msgs",
    "diagnostic_msgs",
    "builtin_interfaces",
    "action_msgs",
    "lifecycle_msgs",
)


def install_hint(module: str) -> str:
    top = module.split(".")[0]
    if module.startswith("smolfusion_ros.msg") or module.startswith("smolfusion_ros.srv"):
        return f"the package's interfaces are not built: {_WORKSPACE}"
    if top in _ROS_MODULES:
        return _ROS
    return INSTALL.get(top, f"install the Python package that provides '{top}'")


def import_failure(exc: ImportError) -> str:
    """What an ImportError means, in one line: which module, and the command that installs it."""
    module = getattr(exc, "name", None) or ""
    if isinstance(exc, ModuleNotFoundError) and module:
        return f"Python module '{module}' is missing; {install_hint(module)}"
    # A module that is there but fails to import (a binary built for another numpy, a
    # missing shared library): say which, on one line.
    return "import failed: " + " ".join(str(exc).split())


def missing_module_message(program: str, exc: ImportError) -> str:
    """One line for an ImportError at start-up."""
    return f"[smolfusion_ros] {program} cannot start: {import_failure(exc)}"


def run(module: str, program: str = "") -> None:
    """Import `module` and run its main(); exit 2 with one line when an import fails."""
    program = program or module.rsplit(".", 1)[-1]
    try:
        main = importlib.import_module(module).main
        code = main()
    except ImportError as exc:
        print(missing_module_message(program, exc), file=sys.stderr, flush=True)
        sys.exit(2)
    if isinstance(code, int):  # bringup's main returns its exit code; nodes exit themselves
        sys.exit(code)
