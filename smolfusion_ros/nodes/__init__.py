"""Thin rclpy nodes: parameters, topics, services and actions translated to core calls."""
