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
# Wall-clock reads allowed in nodes/, each with why it is not a message stamp.
WALL_CLOCK_READS = {
    # The gateway reports how long ago it received the newest scene: its own receive times.
    "gateway_node.py",
}
# core/ objects that compare times with received header stamps take a `now` clock instead.
CLOCKED_CORE = ("scene.py", "transcriber.py")


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


def calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Call)]


def is_call_of(call: ast.Call, dotted: str) -> bool:
    func, parts = call.func, dotted.split(".")
    if len(parts) == 1:
        return isinstance(func, ast.Name) and func.id == parts[0]
    return (
        isinstance(func, ast.Attribute)
        and func.attr == parts[1]
        and isinstance(func.value, ast.Name)
        and func.value.id == parts[0]
    )


@pytest.mark.parametrize("path", modules_of("nodes"), ids=lambda p: p.name)
def test_node_stamps_come_from_the_node_clock(path):
    own = calls(path)
    # stamp_from_wall(x) converts a stored wall time (a turn's date); with no argument it
    # would stamp a message with the wall clock's now.
    bare = [c.lineno for c in own if is_call_of(c, "stamp_from_wall") and not c.args]
    assert not bare, f"{path.name}: stamp_from_wall() at lines {bare}: use get_clock().now()"
    if path.name != "conversions.py" and path.name not in WALL_CLOCK_READS:
        wall = [c.lineno for c in own if is_call_of(c, "time.time")]
        assert not wall, f"{path.name}: time.time() at lines {wall}: use the node clock"


@pytest.mark.parametrize("name", CLOCKED_CORE)
def test_core_compares_stamps_on_the_given_clock(name):
    wall = [c.lineno for c in calls(PACKAGE / "core" / name) if is_call_of(c, "time.time")]
    assert not wall, f"core/{name}: time.time() at lines {wall}: call the `now` clock it takes"
