"""core.profile states facts about the node classes (which nodes exist, which are managed);
these tests read the classes themselves, so the statement cannot drift from the code.

The classes are found as the bringup finds them (bringup._node_factories) and as `ros2 run`
does (the class each module's main() hands to run_node); both must agree.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from smolfusion_ros.core.profile import KNOWN_NODES, MANAGED_NODES


def run_node_class_name(module) -> str:
    """The class name main() passes to run_node in a node module (what `ros2 run` starts)."""
    tree = ast.parse(Path(module.__file__).read_text(), module.__file__)
    for function in tree.body:
        if isinstance(function, ast.FunctionDef) and function.name == "main":
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "run_node"
                    and node.args
                    and isinstance(node.args[0], ast.Name)
                ):
                    return node.args[0].id
    raise AssertionError(f"{module.__name__}: main() does not call run_node(<class>)")


def node_classes() -> dict[str, type]:
    from smolfusion_ros.bringup import _node_factories

    return _node_factories()


def test_the_bringup_knows_exactly_the_profile_nodes():
    assert set(node_classes()) == set(KNOWN_NODES)
    assert set(MANAGED_NODES) <= set(KNOWN_NODES)


@pytest.mark.parametrize("name", KNOWN_NODES)
def test_managed_nodes_are_exactly_the_managed_node_subclasses(name):
    from smolfusion_ros.nodes.managed import ManagedNode

    module = importlib.import_module(f"smolfusion_ros.nodes.{name}")
    cls = node_classes()[name]
    # The bringup and `ros2 run` (the module's main) start the same class.
    assert getattr(module, run_node_class_name(module)) is cls, name
    managed = issubclass(cls, ManagedNode)
    if name in MANAGED_NODES:
        assert managed, f"{name} is in core.profile.MANAGED_NODES but {cls.__name__} is not managed"
    else:
        assert not managed, f"{cls.__name__} is a ManagedNode: add {name} to MANAGED_NODES"
