"""ROS-free logic: request validation, personas, sessions, prompt assembly, scheduling."""
