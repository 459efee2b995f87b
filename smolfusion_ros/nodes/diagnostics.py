"""One /diagnostics status per node, in the form rqt_robot_monitor shows."""

from __future__ import annotations

from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.publisher import Publisher

from smolfusion_ros.nodes.parameters import (
    STARTUP,
    ParamSpec,
    at_least,
    declare_parameter_specs,
)

# Every node that publishes /diagnostics declares this one spec (same name, default, range):
# read once, since it sizes the timer.
DIAGNOSTICS_PERIOD_SPEC = ParamSpec(
    "diagnostics_period_s",
    1.0,
    "period of /diagnostics messages",
    at_least(0.1),
    applies=STARTUP,
)


def create_diagnostics(
    node: Node, publish: Callable[[], None], period_s: float | None = None
) -> Publisher:
    """The node's /diagnostics publisher and the timer that calls `publish` every
    diagnostics_period_s (declared from DIAGNOSTICS_PERIOD_SPEC when the node has not yet).

    The timer runs in every lifecycle state (a monitor sees an unconfigured node too), in a
    callback group of its own so a slow service callback never delays it.
    """
    if period_s is None:
        if not node.has_parameter(DIAGNOSTICS_PERIOD_SPEC.name):
            declare_parameter_specs(node, [DIAGNOSTICS_PERIOD_SPEC])
        period_s = node.get_parameter(DIAGNOSTICS_PERIOD_SPEC.name).value
    publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    node.create_timer(period_s, publish, callback_group=MutuallyExclusiveCallbackGroup())
    return publisher


def diagnostic_array(
    node: Node,
    component: str,
    level: bytes,
    message: str,
    hardware_id: str,
    values: dict[str, object],
) -> DiagnosticArray:
    """A DiagnosticArray with one status named '<node's full name>: <component>'.

    A managed node's status also carries its lifecycle state ("lifecycle" value), and the
    message says so when the node is not active, so a monitor tells a node that was
    deactivated on purpose from one that is working.
    """
    state = getattr(node, "lifecycle_state", None)
    if isinstance(state, str):
        values = {**values, "lifecycle": state}
        if state != "active":
            message = f"{state}: {message}" if message else state
    status = DiagnosticStatus(
        level=level,
        name=f"{node.get_fully_qualified_name()}: {component}",
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    return array
