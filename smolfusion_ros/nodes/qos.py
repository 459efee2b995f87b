"""QoS profiles that several nodes must agree on."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

# persona_events (knowledge_node -> fusion_node): reliable and latched, so an event published
# before the subscriber has matched (right after either node restarted) is still delivered.
PERSONA_EVENTS_QOS = QoSProfile(
    depth=16,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
