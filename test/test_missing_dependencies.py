"""A robot without one of the Python packages: every node says what to install, in one line.

Each node runs through its installed entry script (what `ros2 run smolfusion_ros <node>`
executes) with one module made unimportable by a hidden-module shim: a sitecustomize.py on
PYTHONPATH whose import hook raises ModuleNotFoundError for the named modules, exactly what
Python raises when the package is not installed. The real package stays installed for the
other tests; the shim is the stand-in for "not installed".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CPU_DEMO_PARAMS

pytestmark = pytest.mark.ros

ENTRY_DIR = Path(sys.prefix) / "lib" / "smolfusion_ros"

HIDE_SHIM = '''
import os, sys
from importlib.abc import MetaPathFinder

HIDDEN = {m for m in os.environ.get("SMOLFUSION_TEST_HIDE_MODULES", "").split(",") if m}


class HiddenModuleShim(MetaPathFinder):
    """Stand-in for a package that is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HiddenModuleShim())
'''


@pytest.fixture(scope="module")
def shim_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hidden_module_shim")
    (directory / "sitecustomize.py").write_text(HIDE_SHIM)
    return directory


def run_without(node: str, module: str, shim_dir: Path, tmp_path: Path):
    script = ENTRY_DIR / node
    if not script.is_file():
        pytest.skip(f"{script} is not installed (scripts/bootstrap.sh installs it)")
    env = os.environ | {
        "PYTHONPATH": str(shim_dir),
        "SMOLFUSION_TEST_HIDE_MODULES": module,
        "ROS_HOME": str(tmp_path / "ros_home"),
    }
    args = [sys.executable, str(script), "--ros-args", "--params-file", str(CPU_DEMO_PARAMS)]
    args += ["-p", f"database_path:={tmp_path / 'memory.db'}"]
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return done.returncode, (done.stdout + done.stderr).strip().splitlines()


@pytest.mark.parametrize(
    ("node", "module", "says"),
    [
        ("fusion_node", "sqlite_utils", "pip install sqlite-utils"),
        ("memory_node", "sqlite_utils", "pip install sqlite-utils"),
        ("fusion_node", "llama_cpp", "pip install llama-cpp-python"),
        ("fusion_node", "numpy", "apt-get install python3-numpy"),
        ("fusion_node", "cv2", "apt-get install python3-opencv"),
        ("camera_node", "cv2", "apt-get install python3-opencv"),
        ("text_input_node", "yaml", "apt-get install python3-yaml"),
        ("speech_node", "faster_whisper", "pip install faster-whisper"),
        ("tts_node", "sounddevice", "pip install sounddevice"),
        ("microphone_node", "sounddevice", "sounddevice"),
        ("memory_node", "rclpy", "source /opt/ros/"),
    ],
)
def test_a_missing_package_is_one_line_naming_it(node, module, says, shim_dir, tmp_path):
    code, lines = run_without(node, module, shim_dir, tmp_path)
    text = "\n".join(lines)
    assert code == 2, text
    assert "Traceback" not in text, text
    complaints = [line for line in lines if says in line]
    assert len(complaints) == 1, text
    # Nothing else but ROS's own INFO lines (fusion_node says which model it loads first).
    assert all(line == complaints[0] or "[INFO]" in line for line in lines), text


def test_the_message_names_the_step_for_ros_and_for_an_unbuilt_workspace():
    from smolfusion_ros.entry import missing_module_message

    def line(name: str) -> str:
        return missing_module_message("memory_node", ModuleNotFoundError(f"No {name}", name=name))

    assert "colcon build --packages-select smolfusion_ros" in line("smolfusion_ros.srv")
    assert "source /opt/ros/" in line("diagnostic_msgs.msg")
    assert "pip install sqlite-utils" in line("sqlite_utils")
    assert "'some_new_dep'" in line("some_new_dep")
    # A package that is there but broken: its own message, still on one line.
    broken = missing_module_message("fusion_node", ImportError("numpy.core failed\nto import"))
    assert broken.endswith("import failed: numpy.core failed to import") and "\n" not in broken
