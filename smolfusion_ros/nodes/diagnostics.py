"""One /diagnostics status per node, in the form rqt_robot_monitor shows."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node


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
