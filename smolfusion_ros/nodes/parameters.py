"""Parameter declaration with descriptions and validation, shared by every node."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node


class ConfigError(ValueError):
    """A parameter value is wrong or a required file is missing; one line for the operator."""


Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    check: Check | None = None


def at_least(minimum: float) -> Check:
    return lambda v: None if v >= minimum else f"must be >= {minimum}"


def between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def declare_parameters(node: Node, specs: list[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter with its description, read it once and validate it."""
    declare_parameter_specs(node, specs)
    return read_parameters(node, specs)


def declare_parameter_specs(node: Node, specs: list[ParamSpec]) -> None:
    """Declare every parameter with its description (a value of the wrong type is a
    ConfigError). Managed nodes declare in __init__ and read in configure (read_parameters),
    so a value set while the node is unconfigured is used by the next configure. A name
    already declared (managed.AUTOSTART_SPEC, declared by the base) is skipped."""
    for spec in specs:
        if node.has_parameter(spec.name):
            continue
        descriptor = ParameterDescriptor(description=spec.description)
        try:
            node.declare_parameter(spec.name, spec.default, descriptor)
        except InvalidParameterTypeException as exc:
            raise ConfigError(
                f"parameter {spec.name}: expected {type(spec.default).__name__} ({exc})"
            ) from None


def read_parameters(node: Node, specs: list[ParamSpec]) -> dict[str, Any]:
    """The current value of every (declared) parameter, validated: ConfigError when bad."""
    values = {}
    for spec in specs:
        value = node.get_parameter(spec.name).value
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise ConfigError(f"parameter {spec.name}={value!r}: {problem}")
        values[spec.name] = value
    return values
