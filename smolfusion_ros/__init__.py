"""smolfusion_ros: real-time multimodal conversation for humanoid robots on ROS 2.

Layout (dependencies point one way, top to bottom):
  bringup / nodes/   thin rclpy nodes: parameters, topics, services -> core calls
  core/              ROS-free logic: request validation, sessions, prompts, scheduling
  backends/          model back ends behind small protocols, chosen by name
  catalogue, paths   model resolution and installed data files
The generated interfaces live in smolfusion_ros.msg / .srv / .action.
"""
