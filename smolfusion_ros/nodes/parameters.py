"""Parameters of every node: one spec table per node, declared with descriptors that rqt and
`ros2 param describe` show, validated once, and a shared way to take `ros2 param set`.

Each node module exposes `parameter_specs()` (all of its ParamSpecs); the profile test checks
every key of every profile's file against it with `check_value`, the check the node applies.

When a value is read decides what `ros2 param set` may do (ParamSpec.applies):
- STARTUP: read once when the node is constructed (topic names, queue depths, the
  /diagnostics period): declared read_only, so rclpy refuses a set with its own reason.
- CONFIGURE: read by a managed node's configure (models, devices, limits): can be set while
  the node is unconfigured (deactivate, cleanup, set, configure: nav2's pattern); a set in
  another state is refused with a reason instead of being stored and silently ignored.
- ACTIVATE: read by a managed node's activate (speech_node's VAD settings): can be set
  while the node is not active (deactivate, set, activate).
- LIVE: applied at once through `watch_parameters` (vision interval, voice, volume).
The default (None) is STARTUP in a plain node and CONFIGURE in a managed node.

Numeric checks (at_least, between) carry their bounds, so the descriptor gets an
integer_range / floating_point_range (step 0) that rqt shows as a slider; one_of choices go
into additional_constraints. A value outside the range given at start (a YAML file, -p) ends
as the same one-line ConfigError the node printed before ranges were declared.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node


class ConfigError(ValueError):
    """A parameter value is wrong or a required file is missing; one line for the operator."""


Check = Callable[[Any], str | None]

STARTUP = "startup"
CONFIGURE = "configure"
ACTIVATE = "activate"
LIVE = "live"
APPLIES = (STARTUP, CONFIGURE, ACTIVATE, LIVE)

# The descriptor of an open upper bound: rcl ranges have no "unbounded", so the largest
# finite value of the type (every value the check accepts stays inside it).
INT_RANGE_MAX = 2**63 - 1
FLOAT_RANGE_MAX = sys.float_info.max


@dataclass(frozen=True)
class Bounds:
    """low <= value (<= high): a check that also gives the descriptor its range."""

    low: float
    high: float | None = None

    def __call__(self, value: Any) -> str | None:
        if self.high is None:
            return None if value >= self.low else f"must be >= {self.low}"
        if self.low <= value <= self.high:
            return None
        return f"must be between {self.low} and {self.high}"


@dataclass(frozen=True)
class Choices:
    """One of a fixed list of strings (back-end names, modes)."""

    choices: tuple[str, ...]

    def __call__(self, value: Any) -> str | None:
        return None if value in self.choices else f"must be one of {self.text()}"

    def text(self) -> str:
        return ", ".join(choice or "''" for choice in self.choices)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    check: Check | None = None
    # STARTUP, CONFIGURE, ACTIVATE or LIVE; None = the node's kind decides (module docstring).
    applies: str | None = None
    # Accept any type (a device given as an index or a path); no type check.
    dynamic_typing: bool = False

    def __post_init__(self) -> None:
        if self.applies is not None and self.applies not in APPLIES:
            raise ValueError(f"{self.name}: applies must be one of {', '.join(APPLIES)}")


def at_least(minimum: float) -> Bounds:
    return Bounds(minimum)


def between(low: float, high: float) -> Bounds:
    return Bounds(low, high)


def one_of(*choices: str) -> Choices:
    return Choices(tuple(choices))


def _is_managed(node: Node) -> bool:
    # Not an isinstance check: managed.py imports this module.
    return isinstance(getattr(node, "lifecycle_state", None), str)


def applies(spec: ParamSpec, managed: bool) -> str:
    """When the node reads this parameter (STARTUP, CONFIGURE, ACTIVATE or LIVE)."""
    if spec.applies is not None:
        return spec.applies
    return CONFIGURE if managed else STARTUP


_WHEN_TEXT = {
    STARTUP: "read once at start-up (read-only)",
    CONFIGURE: "read at configure: set it while the node is unconfigured",
    ACTIVATE: "read at activate: set it while the node is not active",
    LIVE: "ros2 param set takes effect at once",
}


def descriptor_for(spec: ParamSpec, managed: bool) -> ParameterDescriptor:
    """The descriptor rqt and `ros2 param describe` show for a spec."""
    when = applies(spec, managed)
    descriptor = ParameterDescriptor(
        description=spec.description,
        read_only=when == STARTUP,
        dynamic_typing=spec.dynamic_typing,
    )
    constraints = []
    check = spec.check
    kind = type(spec.default)
    if isinstance(check, Bounds) and kind in (int, float) and not spec.dynamic_typing:
        if kind is int:
            high = INT_RANGE_MAX if check.high is None else math.floor(check.high)
            descriptor.integer_range = [
                IntegerRange(from_value=math.ceil(check.low), to_value=high, step=0)
            ]
        else:
            high = FLOAT_RANGE_MAX if check.high is None else float(check.high)
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(check.low), to_value=high, step=0.0)
            ]
    elif isinstance(check, Choices):
        constraints.append(f"one of: {check.text()}")
    constraints.append(_WHEN_TEXT[when])
    descriptor.additional_constraints = "; ".join(constraints)
    return descriptor


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        inner = {type(v).__name__ for v in value}
        return f"list of {', '.join(sorted(inner))}" if inner else "list"
    return type(value).__name__


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """What is wrong with `value` for this spec (its type as ROS would declare it, then its
    check), or None. The profile test checks every YAML value with this."""
    if not spec.dynamic_typing:
        expected = type(spec.default)
        # ROS types are strict: an integer is not a double, a bool is not an integer.
        if type(value) is not expected:
            return f"expected {expected.__name__}, got {_type_name(value)}"
        if isinstance(value, list) and spec.default:
            item = type(spec.default[0])
            if any(type(v) is not item for v in value):
                return f"expected a list of {item.__name__}, got {_type_name(value)}"
    if spec.check is not None:
        return spec.check(value)
    return None


def declare_parameters(node: Node, specs: list[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter with its descriptor, read it once and validate it."""
    declare_parameter_specs(node, specs)
    return read_parameters(node, specs)


class _NodeParameters:
    """What the set-parameters guard of one node knows: its specs and live appliers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.managed = _is_managed(node)
        self.specs: dict[str, ParamSpec] = {}
        self.appliers: list[Callable[[dict[str, Any]], None]] = []

    def on_set(self, parameters: list) -> SetParametersResult:
        """rclpy's on-set callback: the range, type and read_only were checked by rclpy from
        the descriptor already; here the spec's own check, the lifecycle state, then the
        live appliers (any exception refuses the whole set with its message)."""
        live: dict[str, Any] = {}
        for parameter in parameters:
            spec = self.specs.get(parameter.name)
            if spec is None:  # use_sim_time and others: not ours
                continue
            value = parameter.value
            if spec.check is not None and value is not None:
                problem = spec.check(value)
                if problem:
                    return _refused(f"parameter {spec.name}={value!r}: {problem}")
            when = applies(spec, self.managed)
            if when == CONFIGURE:
                state = self.node.lifecycle_state
                if state != "unconfigured":
                    return _refused(
                        f"parameter {spec.name} is read at configure and the node is {state}: "
                        "deactivate and clean it up, set it, then configure again"
                    )
            elif when == ACTIVATE:
                state = self.node.lifecycle_state
                if state == "active":
                    return _refused(
                        f"parameter {spec.name} is read at activate and the node is active: "
                        "deactivate it, set it, then activate again"
                    )
            elif when == LIVE:
                live[spec.name] = value
        if live:
            for apply in self.appliers:
                try:
                    apply(live)
                except Exception as exc:
                    return _refused(str(exc) or type(exc).__name__)
        return SetParametersResult(successful=True)


def _refused(reason: str) -> SetParametersResult:
    return SetParametersResult(successful=False, reason=reason)


def _node_parameters(node: Node) -> _NodeParameters:
    state = getattr(node, "_smolfusion_parameters", None)
    if state is None:
        state = _NodeParameters(node)
        node._smolfusion_parameters = state
        node.add_on_set_parameters_callback(state.on_set)
    return state


def declare_parameter_specs(node: Node, specs: list[ParamSpec]) -> None:
    """Declare every parameter with its descriptor (a value of the wrong type or out of
    range is a ConfigError) and guard later sets (see the module docstring). Managed nodes
    declare in __init__ and read in configure (read_parameters), so a value set while the
    node is unconfigured is used by the next configure. A name already declared
    (managed.AUTOSTART_SPEC, declared by the base) is skipped."""
    state = _node_parameters(node)
    for spec in specs:
        if node.has_parameter(spec.name):
            continue
        descriptor = descriptor_for(spec, state.managed)
        try:
            node.declare_parameter(spec.name, spec.default, descriptor)
        except InvalidParameterTypeException as exc:
            raise ConfigError(
                f"parameter {spec.name}: expected {type(spec.default).__name__} ({exc})"
            ) from None
        except InvalidParameterValueException as exc:
            raise _out_of_range(node, spec, descriptor, exc) from None
        state.specs[spec.name] = spec


def _out_of_range(
    node: Node, spec: ParamSpec, descriptor: ParameterDescriptor, exc: Exception
) -> ConfigError:
    """The given value is outside the descriptor's range: the spec's one line, as before
    ranges were declared. The value is read by declaring the name again without a range
    (the node stops with this error, so the parameter is never used)."""
    plain = ParameterDescriptor(description=spec.description, dynamic_typing=True)
    try:
        value = node.declare_parameter(spec.name, spec.default, plain).value
    except Exception:
        return ConfigError(f"parameter {spec.name}: {exc}")
    problem = spec.check(value) if spec.check is not None else None
    return ConfigError(f"parameter {spec.name}={value!r}: {problem or exc}")


def watch_parameters(node: Node, apply: Callable[[dict[str, Any]], None]) -> None:
    """Apply `ros2 param set` of the node's LIVE parameters: `apply` gets {name: value} of
    the changed ones after their checks passed, and raises (ValueError, ConfigError, ...) to
    refuse the set with its message as the reason. It runs on the executor thread of the
    ~/set_parameters service: it must only hand the value over (no model work)."""
    _node_parameters(node).appliers.append(apply)


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
