"""HTTP gateway and web console (served by nodes/gateway_node.py)."""
