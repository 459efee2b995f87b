"""Which layer may import which, read from the source (ast), so a shortcut fails here.

core/ and io/ are ROS-free; memory/ sits below core/ (core's session store uses it, never the
other way round); smolfusion_ros.ids and smolfusion_ros.turns are leaves both use. Message
stamps in the node files come from the node clock (use_sim_time and bag replay must agree),
never from the wall clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import smolfusion_ros

PACKAGE = Path(smolfusion_ros.__file__).parent

# Leaf modules: core/ and memory/ both import them, so they import nothing from this package.
LEAF_MODULES = ("ids.py", "turns.py")
ROS_MODULES = ("rclpy", "rcl_interfaces", "std_msgs", "sensor_msgs", "diagnostic_msgs")
CLOCK_STAMPED_NODES = ("tts_node.py", "camera_node.py", "microphone_node.py")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_of(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).glob("*.py"))


@pytest.mark.parametrize("path", modules_of("memory"), ids=lambda p: p.name)
def test_memory_does_not_import_core(path):
    core = {m for m in imported_modules(path) if m.startswith("smolfusion_ros.core")}
    assert not core, f"memory/{path.name} imports {sorted(core)}"


@pytest.mark.parametrize("name", LEAF_MODULES)
def test_leaf_modules_import_nothing_of_the_package(name):
    own = {m for m in imported_modules(PACKAGE / name) if m.startswith("smolfusion_ros")}
    assert not own, own


def test_turn_record_is_one_class():
    # core.sessions re-exports the leaf's class; a second definition would make isinstance
    # checks and type hints disagree between the layers.
    from smolfusion_ros.core.sessions import TurnRecord as from_core
    from smolfusion_ros.turns import TurnRecord as from_leaf

    assert from_core is from_leaf


@pytest.mark.parametrize(
    "path", modules_of("core") + modules_of("io"), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_core_and_io_are_ros_free(path):
    ros = {m for m in imported_modules(path) if m.split(".")[0] in ROS_MODULES}
    nodes = {m for m in imported_modules(path) if m.startswith("smolfusion_ros.nodes")}
    assert not ros and not nodes, f"{path.parent.name}/{path.name} imports {sorted(ros | nodes)}"


@pytest.mark.parametrize("name", CLOCK_STAMPED_NODES)
def test_node_stamps_come_from_the_node_clock(name):
    source = (PACKAGE / "nodes" / name).read_text()
    assert "stamp_from_wall" not in source
    assert "time.time()" not in source
