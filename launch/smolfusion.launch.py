"""Start a smolfusion_ros profile on a robot: ros2 launch smolfusion_ros smolfusion.launch.py
profile:=cpu_demo|jetson_gguf|gpu_server|fleet_robot [namespace:=robot1] [params_file:=my.yaml]
[llm_url:=http://server:8080/v1] [vlm_url:=http://server:8081/v1] [llm_model_path:=/m/x.gguf]
[vision_model_path:=...] [vision_mmproj_path:=...] [stt_model_path:=...] [autostart:=false]

Thin on purpose: which nodes run, which parameter files they read and which nodes are
required come from config/profiles.yaml through smolfusion_ros.core.profile, the same
description the in-process bringup (make demo) uses and the tests check.

- params_file is layered over the profile's parameter file (both are passed, the profile's
  first): a file that sets only llm.model_path keeps every other profile setting.
- A required node (fusion_node in every profile) that exits, for example on a configuration
  error at start, shuts the whole launch down (on_exit=Shutdown) instead of leaving a robot
  that looks alive without its brain. Nodes are not respawned: a configuration error would
  only repeat, and the one-line reason is printed once above the shutdown.
- llm_url / vlm_url (a fleet robot's model servers) set fusion_node's llm.base_url /
  vision.base_url over every file; llm_model_path, vision_model_path, vision_mmproj_path and
  stt_model_path set the model files the same way.
- Managed (lifecycle) nodes reach active by themselves: the profiles set their `autostart`
  parameter, and each node configures and activates itself at start-up (nodes/managed.py), the
  way nav2's lifecycle manager would. Plain launch_ros Node actions are used, not LifecycleNode:
  the node's own autostart works on Humble too (Humble's LifecycleNode has no autostart), and
  `ros2 lifecycle get/set /robot1/fusion_node ...` works on them all the same.
  autostart:=false leaves them unconfigured for your own lifecycle manager or behaviour tree.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from smolfusion_ros.core.profile import (
    ARGUMENT_PARAMETERS,
    AUTOSTART_ARGUMENT,
    argument_overrides,
    get_profile,
)


def _nodes_for_profile(context, *_args, **_kwargs):
    profile = get_profile(LaunchConfiguration("profile").perform(context))
    user_file = LaunchConfiguration("params_file").perform(context)
    parameters = [str(path) for path in profile.parameter_files(user_file)]
    namespace = LaunchConfiguration("namespace").perform(context)
    names = [*ARGUMENT_PARAMETERS, AUTOSTART_ARGUMENT]
    arguments = {name: LaunchConfiguration(name).perform(context) for name in names}
    nodes = []
    for name in profile.nodes:
        overrides = argument_overrides(name, arguments)
        extra = {}
        if name in profile.required:
            extra["on_exit"] = Shutdown(reason=f"required node {name} exited")
        nodes.append(
            Node(
                package="smolfusion_ros",
                executable=name,
                name=name,
                namespace=namespace,
                parameters=parameters + ([overrides] if overrides else []),
                output="screen",
                emulate_tty=True,
                **extra,
            )
        )
    return nodes


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "profile",
                default_value="cpu_demo",
                description="cpu_demo, jetson_gguf, gpu_server or fleet_robot",
            ),
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="namespace for every node (one per robot)",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value="",
                description="parameter YAML layered over the profile's own (it overrides only "
                "the parameters it sets)",
            ),
            DeclareLaunchArgument(
                "llm_url",
                default_value="",
                description="OpenAI-compatible LLM server (sets fusion_node llm.base_url), "
                "e.g. http://server:8080/v1",
            ),
            DeclareLaunchArgument(
                "vlm_url",
                default_value="",
                description="OpenAI-compatible VLM server (sets fusion_node vision.base_url)",
            ),
            DeclareLaunchArgument(
                "llm_model_path",
                default_value="",
                description="GGUF file of the language model (sets fusion_node llm.model_path)",
            ),
            DeclareLaunchArgument(
                "vision_model_path",
                default_value="",
                description="vision model file or directory (sets fusion_node vision.model_path)",
            ),
            DeclareLaunchArgument(
                "vision_mmproj_path",
                default_value="",
                description="llama.cpp projector GGUF (sets fusion_node vision.mmproj_path)",
            ),
            DeclareLaunchArgument(
                "stt_model_path",
                default_value="",
                description="speech recognition model directory (sets speech_node stt.model_path)",
            ),
            DeclareLaunchArgument(
                "autostart",
                default_value="",
                description="true/false: managed nodes configure and activate themselves at "
                "start-up (empty = as the parameter files say: true in every profile)",
            ),
            OpaqueFunction(function=_nodes_for_profile),
        ]
    )
